"""The controller killed with SIGKILL at each step of a tick, then restarted: every
job completes exactly once and nothing fetched is lost."""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest

from orchestrator.failpoints import POINTS
from orchestrator.states import JobState
from tests.conftest import (
    backends,
    make_job,
    open_app,
    orch_process,
    submit,
    wait_until,
)

#: The core end-to-end suite must pass on PostgreSQL (team mode) as well as SQLite.
state_backend = backends


def all_done(job_ids: list[str]) -> bool:
    app = open_app()
    try:
        return all(app.store.job(j).state.terminal for j in job_ids)
    finally:
        app.close()


@pytest.mark.parametrize("point", POINTS)
def test_tick_killed_at_each_step_completes_every_job_exactly_once(point, orch, orch_home, tmp_path, config):
    config("platforms:\n  local: {type: local, max_concurrent: 3}\n")
    runs = tmp_path / "runs.log"
    path = make_job(tmp_path / "job", f"""\
        name: once
        run: echo "$ORCH_JOB_ID $ORCH_ATTEMPT" >> {runs}; echo done > $ORCH_OUTPUT_DIR/out.txt
        """)
    job_ids = [submit(orch, path) for _ in range(3)]

    crashed = 0
    deadline = time.time() + 60
    while not crashed and time.time() < deadline:
        proc = orch_process("tick", env={"ORCH_FAILPOINTS": point})
        if proc.returncode == -9:
            crashed += 1
        else:
            assert proc.returncode == 0, proc.stderr
            time.sleep(0.3)  # let the runs finish so that poll/fetch points are reached
    assert crashed, f"the failpoint {point} was never reached"

    while not all_done(job_ids) and time.time() < deadline:
        proc = orch_process("tick")
        assert proc.returncode == 0, proc.stderr
        time.sleep(0.2)

    app = open_app()
    try:
        for job_id in job_ids:
            job = app.store.job(job_id)
            assert job.state == JobState.SUCCEEDED, (job.state, job.message)
            assert [a.state.value for a in app.store.attempts_of(job_id)] == ["SUCCEEDED"]
            stored = orch_home / "results" / job_id / "attempt-1" / "outputs" / "out.txt"
            assert stored.read_text() == "done\n"
    finally:
        app.close()
    lines = Counter(runs.read_text().split("\n")[:-1])
    assert sorted(lines) == sorted(f"{j} 1" for j in job_ids)
    assert set(lines.values()) == {1}, "a job ran more than once"


def test_results_fetched_before_a_crash_are_kept(orch, orch_home, tmp_path):
    path = make_job(tmp_path / "job", "name: keep\nrun: echo kept > $ORCH_OUTPUT_DIR/k.txt\n")
    job_id = submit(orch, path)
    wait_until(lambda: orch_process("tick", env={"ORCH_FAILPOINTS": "after_fetch"}).returncode == -9, 30,
               "a tick killed after the fetch", interval=0.2)
    stored = orch_home / "results" / job_id / "attempt-1" / "outputs" / "k.txt"
    assert stored.read_text() == "kept\n"
    assert orch_process("tick").returncode == 0
    assert stored.read_text() == "kept\n"
    assert json.loads(orch("status", job_id, "--json").output)["state"] == "SUCCEEDED"
