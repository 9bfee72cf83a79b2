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


def test_submit_wait_streams_the_jobs_output_live_without_a_tty(orch_home, tmp_path):
    """Without a TTY (a pipe, CI) `submit --wait` prints the job's output as it comes, and
    each state change as a line (issue 17, Major 9): the job below waits until the test has
    seen its first line, so the line cannot have come from the final summary."""
    import os
    import subprocess
    import sys

    go = tmp_path / "go"
    job = make_job(tmp_path / "live", f"name: live\nrun: echo first-line; while [ ! -e {go} ]; do sleep 0.1; done; "
                                      "echo second-line\n")
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "submit", str(job), "--wait", "--interval", "0.2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        seen = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            seen.append(line)
            if "first-line" in line:
                break
        assert any("first-line" in s for s in seen), "".join(seen)
        go.touch()
        rest, err = proc.communicate(timeout=60)
        assert "\n[orch] live " in "".join(seen) + rest  # each state change, a line
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "second-line" in rest and "SUCCEEDED" in rest
    assert rest.index("second-line") < rest.index("SUCCEEDED")
    assert "last lines of its output" not in rest  # it was shown live already
