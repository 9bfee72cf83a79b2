"""Jobs longer than a session run as chains of checkpointed segments, across platforms,
and end with the result of one uninterrupted run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from orchestrator.states import AttemptState, JobState
from tests.conftest import REPO, make_job, submit, tick_until

DEMO = REPO / "jobs" / "chain-demo"

# Two local "GPU" platforms with 7.2-second sessions. `a` has budget for one segment
# only, so the chain has to move on to `b` (the runner sees no real GPU here, so usage
# is charged at the GPU count the job reserved).
CONFIG = """\
platforms:
  a: {type: local, gpu: T4, session_hours: 0.002, min_segment: 3s, budget: {limit: 0.0022, per_gpu: false, window: none}}
  b: {type: local, gpu: T4, session_hours: 0.002, min_segment: 3s}
"""

JOB = """\
name: chain
run: python train.py
checkpoint: ckpt
grace: 1s
env:
  STEPS: "25"
  STEP_SECONDS: "0.02"
  STEPS_PER_SESSION: "10"   # each segment idles after 10 steps until its session ends
resources:
  gpu: any
  max_runtime: 2m
"""


def uninterrupted(tmp_path: Path) -> dict:
    """What train.py gives in one go, with the same steps."""
    out, ckpt = tmp_path / "ref-out", tmp_path / "ref-ckpt"
    env = {**os.environ, "STEPS": "25", "STEP_SECONDS": "0", "ORCH_OUTPUT_DIR": str(out),
           "ORCH_CHECKPOINT_DIR": str(ckpt), "ORCH_ATTEMPT": "1"}
    subprocess.run([sys.executable, str(DEMO / "train.py")], env=env, check=True, capture_output=True, timeout=60)
    return json.loads((out / "model.json").read_text())


def test_a_chain_of_three_segments_across_two_platforms_ends_with_the_uninterrupted_result(
        orch, orch_home, tmp_path, config):
    config(CONFIG)
    code = tmp_path / "job"
    shutil.copytree(DEMO, code)
    path = make_job(code, JOB)
    job_id = submit(orch, path)

    app = tick_until(lambda app: app.store.job(job_id).state.terminal, timeout=90, interval=0.3)

    job = app.store.job(job_id)
    attempts = app.store.attempts_of(job_id)
    assert job.state == JobState.SUCCEEDED, job.message
    assert [a.state for a in attempts] == [AttemptState.CHECKPOINTED, AttemptState.CHECKPOINTED,
                                           AttemptState.SUCCEEDED]
    assert attempts[0].platform == "a" and {a.platform for a in attempts} == {"a", "b"}
    # Each segment got a session (7.2 s, or what a's budget had left) and resumed where the last stopped.
    assert all(a.session_s is not None and a.session_s <= 7.2 for a in attempts)
    out = tmp_path / "out"
    assert orch("fetch", job_id, "-o", str(out)).exit_code == 0
    model = json.loads((out / "outputs" / "model.json").read_text())
    assert [(s["from"], s["to"]) for s in model["segments"]] == [(0, 10), (10, 20), (20, 25)]
    ref = uninterrupted(tmp_path)
    assert (model["steps"], model["w"], model["b"]) == (ref["steps"], ref["w"], ref["b"])
    # The job was told when SIGTERM would come: its session end less the job's 1 s grace.
    for seg, att in zip(model["segments"], attempts):
        started = att.result["started_at"]
        assert abs(seg["deadline"] - (started + att.session_s - 1.0)) <= 1.0, (seg, started, att.session_s)
    # a's budget was never overrun, though the chain went on.
    used_a = sum(r["amount"] for r in app.store.ledger_rows("a") if r["kind"] == "charge")
    assert 0 < used_a <= 0.0022
    app.close()

    status = orch("status")
    line = next(ln for ln in status.output.splitlines() if ln.startswith(job_id[:8]))
    assert "SUCCEEDED" in line and "3 (2 seg)" in line
    detail = orch("status", job_id).output
    assert "2 checkpointed segment(s)" in detail and "seg 3" in detail
    # Every segment's log: in the fetched folder, and by `orch logs --attempt N`.
    assert sorted(p.name for p in (out / "logs").iterdir()) == ["attempt-1.log", "attempt-2.log", "attempt-3.log"]
    assert "resuming at step 10" in (out / "logs" / "attempt-2.log").read_text()
    second = orch("logs", job_id, "--attempt", "2")
    assert second.exit_code == 0 and "resuming at step 10" in second.output
    assert "resuming at step 20" not in second.output
    assert orch("logs", job_id, "--attempt", "9").exit_code == 1


def test_a_job_longer_than_every_session_without_checkpoint_is_refused_or_waits_with_the_fix(
        orch, orch_home, tmp_path, config):
    config("platforms:\n  a: {type: local, session_hours: 0.002}\n")
    path = make_job(tmp_path / "job", "name: long\nrun: sleep 1\nresources: {max_runtime: 1m}\n")
    r = orch("submit", str(path), "--json")  # no platform could ever run it: refused, not queued
    assert r.exit_code == 2
    assert "sessions last 7s, job needs 1m" in r.output and "declare checkpoint:" in r.output
    # queued before the sessions were shortened, it waits with the same explanation
    config("platforms:\n  a: {type: local}\n")
    job_id = submit(orch, path)
    config("platforms:\n  a: {type: local, session_hours: 0.002}\n")
    orch("tick")
    r = orch("plan", "--json")
    doc = json.loads(r.output)[0]
    assert doc["id"] == job_id and doc["platform"] is None
    assert "sessions last 7s, job needs 1m" in doc["reason"] and "declare checkpoint:" in doc["reason"]


def test_a_status_read_between_a_segments_last_heartbeat_and_its_result_keeps_it_running(
        orch, orch_home, tmp_path, config):
    import signal
    import time

    from orchestrator.controller import Controller
    from tests.conftest import open_app

    config("platforms:\n  a: {type: local}\ncontroller: {grace: 1s}\n")
    path = make_job(tmp_path / "job", "name: s\nrun: sleep 30\n")
    job_id = submit(orch, path)
    tick_until(lambda app: app.store.job(job_id).state == JobState.RUNNING)
    attempt_dir = next((orch_home / "platforms" / "a" / "attempts").iterdir())
    pid = json.loads((attempt_dir / "runner.pid.json").read_text())["pid"]
    os.kill(pid, signal.SIGSTOP)  # frozen right after its final heartbeat, before result.json
    try:
        (attempt_dir / "heartbeat.json").write_text(json.dumps({"time": time.time(), "phase": "done"}))
        app = open_app()
        try:
            report = Controller(app).tick()
            assert app.store.attempts_of(job_id)[-1].state == AttemptState.RUNNING, report.problems
        finally:
            app.close()
    finally:
        os.kill(pid, signal.SIGCONT)
    assert orch("cancel", job_id).exit_code == 0
