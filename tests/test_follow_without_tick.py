"""`orch logs -f` and `orch status` see a job on this machine end without a tick (issue 17,
Major 5): cron may not be installed yet, and a newcomer's first `logs -f` must not hang."""

from __future__ import annotations

import json
import time

from tests.conftest import make_job, orch_process, submit, wait_until


def _dispatched(orch, tmp_path, run):
    job_id = submit(orch, make_job(tmp_path / "job", f"name: quick\nrun: {run}\n"))
    assert orch("tick").exit_code == 0  # dispatch only: no tick after this
    return job_id


def test_logs_follow_ends_when_the_job_ends_without_a_tick(orch, orch_home, tmp_path):
    job_id = _dispatched(orch, tmp_path, "sleep 1; echo the-last-line")
    started = time.monotonic()
    proc = orch_process("logs", job_id, "-f", "--interval", "0.2", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "the-last-line" in proc.stdout
    assert time.monotonic() - started < 30
    row, = json.loads(orch("status", "--json").output)
    assert row["state"] == "SUCCEEDED"


def test_status_sees_a_local_job_end_without_a_tick(orch, orch_home, tmp_path):
    job_id = _dispatched(orch, tmp_path, "echo fast")

    def ended():
        rows = json.loads(orch("status", "--json").output)
        return rows[0]["state"] == "SUCCEEDED"

    wait_until(ended, timeout=20, what="status shows the job SUCCEEDED", interval=0.2)
    one = json.loads(orch("status", job_id, "--json").output)
    assert one["state"] == "SUCCEEDED"
    assert orch("fetch", job_id, "-o", str(tmp_path / "out")).exit_code == 0
    assert "fast" in (tmp_path / "out" / "job.log").read_text()
