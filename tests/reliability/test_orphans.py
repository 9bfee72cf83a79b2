"""A runner killed outright leaves its job running in a session of its own; the
attempt is LOST, and the job's processes are gone before the retry starts."""

from __future__ import annotations

from tests.conftest import make_job, submit, tick_until, wait_until
from tests.reliability.orphans import alive, job_pids, kill_runners, script


def test_a_killed_local_runners_job_is_gone_before_the_retry_starts(orch, config, orch_home, tmp_path):
    config("platforms:\n  local: {type: local, max_concurrent: 2}\ncontroller: {failover_backoff: 0s}\n")
    ledger = tmp_path / "ledger.txt"
    job_id = submit(orch, make_job(tmp_path / "j", "name: quiet\nretries: 1\nrun: python job.py\n",
                                   {"job.py": script(ledger)}))
    tick_until(lambda app: app.store.job(job_id).state.value == "RUNNING", timeout=30)
    wait_until(lambda: ledger.exists() and job_pids(ledger), 10, "the job started")
    assert kill_runners(orch_home / "platforms" / "local" / "attempts") == 1

    app = tick_until(lambda app: app.store.job(job_id).state.terminal, timeout=60, what="the retry ends")
    try:
        assert app.store.job(job_id).state.value == "SUCCEEDED", app.store.job(job_id).message
        assert [a.state.value for a in app.store.attempts_of(job_id)] == ["LOST", "SUCCEEDED"]
    finally:
        app.close()
    assert "start 2 orphans=0" in ledger.read_text(), ledger.read_text()
    assert not alive(job_pids(ledger)[0])
