"""One job's bad data is that job's problem alone: a job that corrupts its own
result.json or heartbeat ends with a clear reason (or, for a heartbeat, is simply not
believed), and the other queued job still runs to SUCCEEDED in the same ticks."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import update

from orchestrator.schema import attempts
from tests.conftest import make_job, open_app, orch_process, submit, tick_until

GOOD = "name: good\nrun: echo fine > $ORCH_OUTPUT_DIR/ok.txt\n"

#: Shell that leaves a corrupt result.json in the job's attempt directory, then kills
#: the runner so that it cannot write its own: the job "rewrote its result.json".
CORRUPTIONS = {
    "wrong types": "printf '{\"status\": \"succeeded\", \"gpu\": \"T4\", \"exit_code\": \"zero\"}' > $R",
    "100 MB": "truncate -s 100M $R",
    "binary garbage": "head -c 4096 /dev/urandom > $R",
    "not an object": "echo '[1, 2, 3]' > $R",
    "a symlink": "ln -s /etc/passwd $R",
}


def _corrupting_job(how: str) -> str:
    return ("name: bad\nretries: 0\nrun: |\n"
            "  R=$ORCH_OUTPUT_DIR/../../result.json\n"
            f"  {CORRUPTIONS[how]}\n"
            "  kill -9 $PPID\n")


def _state(app, job_id):
    job = app.store.job(job_id)
    return job.state.value, job.message


@pytest.mark.parametrize("how", sorted(CORRUPTIONS))
def test_a_job_that_corrupts_its_result_json_ends_with_the_reason_and_the_other_job_succeeds(
        how, orch, config, tmp_path):
    config("platforms:\n  local: {type: local, max_concurrent: 2}\ncontroller: {unknown_window: 2s}\n")
    bad = submit(orch, make_job(tmp_path / "bad", _corrupting_job(how)))
    good = submit(orch, make_job(tmp_path / "good", GOOD))

    app = tick_until(lambda app: app.store.job(bad).state.terminal and app.store.job(good).state.terminal,
                     timeout=60, what="both jobs end")
    try:
        assert _state(app, good)[0] == "SUCCEEDED"
        # an answer orch cannot believe: UNKNOWN with the reason, then LOST after the window
        state, message = _state(app, bad)
        moves = [(e["from_state"], e["to_state"]) for e in app.store.events_of(bad) if e["kind"] == "attempt"]
        if how == "a symlink":  # never fetched (links are not followed): no result.json at all
            assert state == "LOST" and "without writing result.json" in message, (state, message)
        else:
            assert state == "LOST" and "result.json refused" in message, (state, message)
            assert ("FETCHING", "UNKNOWN") in moves, moves
        assert moves[-1][1] == "LOST", moves
        stored = app.store.attempts_of(bad)[-1].result
        assert stored is None or len(json.dumps(stored)) < 10_000  # the bad file never reached the DB
    finally:
        app.close()


def test_a_job_scribbling_over_its_heartbeat_is_not_believed_and_still_succeeds(orch, config, tmp_path):
    config("platforms:\n  local: {type: local, max_concurrent: 2}\n")
    scribble = ("name: scribble\nrun: |\n  H=$ORCH_OUTPUT_DIR/../../heartbeat.json\n"
                "  for i in 1 2 3 4 5 6; do\n"
                "    printf '{\"time\": \"soon\", \"phase\": [1], \"gpus\": \"T4\"}' > $H; sleep 0.2\n"
                "    head -c 2048 /dev/urandom > $H; sleep 0.2\n"
                "    truncate -s 1M $H; sleep 0.2\n"
                "  done\n")
    job_id = submit(orch, make_job(tmp_path / "s", scribble))
    good = submit(orch, make_job(tmp_path / "good", GOOD))
    app = tick_until(lambda app: app.store.job(job_id).state.terminal and app.store.job(good).state.terminal,
                     timeout=60, interval=0.1, what="both jobs end")
    try:
        assert _state(app, job_id)[0] == "SUCCEEDED", _state(app, job_id)
        assert _state(app, good)[0] == "SUCCEEDED"
    finally:
        app.close()


def test_an_unexpected_error_in_one_jobs_step_names_the_job_exits_1_and_the_tick_goes_on(
        orch, config, orch_home, tmp_path):
    config("platforms:\n  local: {type: local, max_concurrent: 2}\n")
    broken = submit(orch, make_job(tmp_path / "b", "name: broken\nrun: sleep 2\n"))
    tick_until(lambda app: app.store.job(broken).state.value in ("PENDING", "RUNNING"), timeout=30)
    app = open_app()
    try:  # a row this version cannot read (written by a newer orch, or by hand)
        with app.store.transaction() as tx:
            tx.conn.execute(update(attempts).where(attempts.c.job_id == broken).values(handle='["not a handle"]'))
    finally:
        app.close()
    good = submit(orch, make_job(tmp_path / "good", GOOD))

    for _ in range(40):
        proc = orch_process("tick")
        assert "Traceback" not in proc.stderr, proc.stderr
        app = open_app()
        try:
            if app.store.job(good).state.terminal:
                break
        finally:
            app.close()
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert f"job {broken[:8]}: polling local failed" in proc.stderr, proc.stderr
    app = open_app()
    try:
        assert _state(app, good)[0] == "SUCCEEDED"
        assert "polling local failed" in _state(app, broken)[1]
    finally:
        app.close()
    assert "Traceback" in (orch_home / "logs" / "orch.log").read_text()  # kept for whoever looks
