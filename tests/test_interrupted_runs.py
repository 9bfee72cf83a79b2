"""Only `orch cancel` cancels: a runner stopped from outside orch ends its attempt LOST
(or CHECKPOINTED with a checkpoint) and the job is retried (issue 15, point 2)."""

from __future__ import annotations

import json
import os
import signal

from orchestrator.states import JobState
from tests.conftest import make_job, submit, tick_until, wait_until


def test_a_runner_sigtermed_from_outside_orch_is_lost_and_retried_not_cancelled(orch, orch_home, tmp_path, config):
    config("platforms:\n  local: {type: local}\ncontroller: {grace: 1s, failover_backoff: 0}\n")
    path = make_job(tmp_path / "job", "name: stopped\nrun: if [ \"$ORCH_ATTEMPT\" = 1 ]; then sleep 60; fi\n")
    job_id = submit(orch, path)
    tick_until(lambda app: app.store.job(job_id).state == JobState.RUNNING)
    attempt_dir = next((orch_home / "platforms" / "local" / "attempts").iterdir())
    pid_file = attempt_dir / "runner.pid.json"
    wait_until(pid_file.is_file, 15, "the runner started")

    os.kill(json.loads(pid_file.read_text())["pid"], signal.SIGTERM)  # e.g. the machine shutting down
    app = tick_until(lambda app: app.store.job(job_id).state.terminal, timeout=60)

    first, second = app.store.attempts_of(job_id)
    assert first.state.value == "LOST" and "stopped from outside orch" in first.message
    assert second.state.value == "SUCCEEDED" and app.store.job(job_id).state == JobState.SUCCEEDED
