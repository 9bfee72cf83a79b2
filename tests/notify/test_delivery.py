"""Events reach real receivers on loopback once in normal operation, at least once when
ticks are SIGKILLed, and never carry a secret; a dead receiver never fails a tick."""

from __future__ import annotations

import json
import time

from orchestrator.app import App
from orchestrator.controller import Controller
from orchestrator.notify import delivery, outbox
from orchestrator.schema import outbox as outbox_table
from orchestrator.states import JobState
from tests.conftest import make_job, orch_process, submit, tick_until
from tests.notify.conftest import SECRET


def webhook_config(config, url: str, **extra) -> None:
    channel = {"type": "webhook", "url": f"{url}/hook", "secret_env": "HOOK_SECRET", **extra}
    config(platforms={"local": {"type": "local", "max_concurrent": 4}}, notify={"channels": {"ops": channel}})


def ended(job_ids):
    return lambda app: all(app.store.job(j).state.terminal for j in job_ids)


def tick() -> list[str]:
    app = App.open()
    try:
        return Controller(app).tick().problems
    finally:
        app.close()


def test_a_success_and_a_failure_reach_a_signed_webhook_exactly_once(orch, config, receiver, tmp_path,
                                                                     monkeypatch):
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    monkeypatch.setenv("MY_TOKEN", "tok-9f8e7d6c5b")
    webhook_config(config, receiver.url)
    good = submit(orch, make_job(tmp_path / "good", """\
        name: good
        run: echo 42 > $ORCH_OUTPUT_DIR/answer.txt
        outputs: [answer.txt]
        """))
    bad = submit(orch, make_job(tmp_path / "bad", """\
        name: bad
        secrets: [MY_TOKEN]
        retries_on_error: 0
        run: echo "using $MY_TOKEN"; echo boom >&2; exit 3
        """))
    tick_until(ended([good, bad]), what="both jobs end")
    tick()
    tick()  # later ticks send nothing again
    events = receiver.events()
    by_type = {e["type"]: e for e in events}
    assert sorted(by_type) == ["job.failed", "job.succeeded"]
    assert all(n == 1 for n in receiver.ids().values()), receiver.ids()
    ok, failed = by_type["job.succeeded"], by_type["job.failed"]
    assert ok["schema"] == "orch.event/1" and ok["job"]["id"] == good and ok["job"]["name"] == "good"
    assert ok["result"]["exit_code"] == 0 and ok["outputs"]["fetch"] == f"orch fetch {good[:8]}"
    assert ok["outputs"]["path"].endswith(f"{good}/attempt-1/outputs")
    assert failed["job"]["state"] == "FAILED" and "exit code 3" in failed["reason"] or failed["result"]["exit_code"] == 3
    assert any("boom" in line for line in failed["log_tail"])
    assert any("using ***" in line for line in failed["log_tail"])
    raw = b"".join(r["body"] for r in receiver.requests) + json.dumps([r["headers"] for r in receiver.requests]).encode()
    assert b"tok-9f8e7d6c5b" not in raw and SECRET.encode() not in raw
    app = App.open()
    try:
        assert outbox.pending_count(app.store) == 0  # pruned after delivery
        assert {r["channel"] for r in outbox.recent(app.store)} == {"ops"}
    finally:
        app.close()


def test_a_dead_receiver_never_fails_a_tick_and_gets_the_event_once_it_is_back(orch, config, receiver, tmp_path,
                                                                                monkeypatch):
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    webhook_config(config, receiver.url)
    receiver.fail_with = 503
    job = submit(orch, make_job(tmp_path / "j", "run: 'true'\n"))
    tick_until(ended([job]), what="job ends")  # the tick that ends the job tries the send, and goes on
    assert tick() == []  # the event waits out its backoff: later ticks do not hammer the receiver
    assert receiver.events() == []
    app = App.open()
    try:
        (failure,) = outbox.recent(app.store)
        assert not failure["ok"] and "HTTP 503" in failure["error"] and failure["channel"] == "ops"
        assert outbox.pending_count(app.store) == 1
        receiver.fail_with = None
        # The event is due again after its backoff: send as that later tick would.
        sent = delivery.deliver(app, "test", now=time.time() + 7200)
        assert len(sent.sent) == 1
        assert outbox.pending_count(app.store) == 0
    finally:
        app.close()
    assert [e["type"] for e in receiver.events()] == ["job.succeeded"]


def test_a_receiver_that_hangs_costs_a_tick_its_timeout_not_its_work(orch, config, tmp_path, monkeypatch):
    import socket

    monkeypatch.setenv("HOOK_SECRET", SECRET)
    silent = socket.socket()  # accepts connections (the backlog) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        webhook_config(config, f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=0.5)
        job = submit(orch, make_job(tmp_path / "j", "run: 'true'\n"))
        started = time.monotonic()
        tick_until(ended([job]), what="job ends")
        assert time.monotonic() - started < 60
        app = App.open()
        try:
            (failure,) = outbox.recent(app.store)
            assert not failure["ok"] and "cannot reach 127.0.0.1" in failure["error"], failure
        finally:
            app.close()
    finally:
        silent.close()


def test_sigkilled_ticks_deliver_every_event_at_least_once(orch, config, receiver, tmp_path, monkeypatch):
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    webhook_config(config, receiver.url)
    jobs = [submit(orch, make_job(tmp_path / f"j{i}", f"name: j{i}\nrun: 'true'\n")) for i in range(3)]
    killed = 0
    deadline = time.time() + 90
    while time.time() < deadline and killed < 2:  # each killed tick dies right after one send
        proc = orch_process("tick", env={"ORCH_FAILPOINTS": "after_notify_send"})
        if proc.returncode == -9:
            killed += 1
        else:
            assert proc.returncode == 0, proc.stderr
            time.sleep(0.2)
    assert killed, "no tick was killed after a send"
    for _ in range(3):
        proc = orch_process("tick")  # no failpoint: whatever a killed tick left is sent now
        assert proc.returncode == 0, proc.stderr
    ids = receiver.ids()
    got = {e["job"]["id"] for e in receiver.events() if e["type"] == "job.succeeded"}
    assert got == set(jobs)  # every event arrived ...
    assert sum(ids.values()) - len(ids) <= killed  # ... and only a killed send was repeated
    app = App.open()
    try:
        assert outbox.pending_count(app.store) == 0
    finally:
        app.close()


def test_the_outbox_row_is_written_in_the_transaction_of_the_state_change(store):
    from sqlalchemy import select

    from orchestrator.states import AttemptState as A

    def to_fetching():
        job_id = store.add_job(name="x", spec={"run": "true"}, bundle="b" * 64)
        with store.transaction() as tx:
            tx.move_job(job_id, JobState.QUEUED, JobState.SUBMITTING)
            att = tx.add_attempt(job_id, 1, "local", "placed")
            tx.move_attempt(att, job_id, A.SUBMITTING, A.FETCHING)
            tx.move_job(job_id, JobState.SUBMITTING, JobState.FETCHING)
        return job_id, att

    def rows():
        with store.read() as conn:
            return [(r.type, json.loads(r.payload)) for r in conn.execute(select(outbox_table))]

    job_id, att = to_fetching()
    assert rows() == []
    try:
        with store.transaction() as tx:
            tx.move_attempt(att, job_id, A.FETCHING, A.FAILED, "exit 1", result={"exit_code": 1})
            tx.move_job(job_id, JobState.FETCHING, JobState.FAILED, "exit 1")
            raise RuntimeError("crash before commit")
    except RuntimeError:
        pass
    assert rows() == []  # rolled back with the move
    with store.transaction() as tx:
        tx.move_attempt(att, job_id, A.FETCHING, A.LOST, "session dropped")
        tx.move_job(job_id, JobState.FETCHING, JobState.QUEUED, "lost on local; retrying")
    (kind, event), = rows()
    assert kind == "job.retried" and event["cause"] == "lost" and event["job"]["id"] == job_id



def test_a_checkpointed_segment_and_a_failure_retried_are_told_apart_from_a_failure(store):
    from sqlalchemy import select

    from orchestrator.states import AttemptState as A

    def segment(end: A, job_end: JobState, number: int, job_id: str | None = None) -> str:
        job_id = job_id or store.add_job(name="chain", spec={"run": "true"}, bundle="b" * 64)
        with store.transaction() as tx:
            tx.move_job(job_id, JobState.QUEUED, JobState.SUBMITTING)
            att = tx.add_attempt(job_id, number, "local", "placed")
            tx.move_attempt(att, job_id, A.SUBMITTING, A.FETCHING)
            tx.move_job(job_id, JobState.SUBMITTING, JobState.FETCHING)
            tx.move_attempt(att, job_id, A.FETCHING, end, "segment over")
            tx.move_job(job_id, JobState.FETCHING, job_end, "segment over")
        return job_id

    job_id = segment(A.CHECKPOINTED, JobState.QUEUED, 1)
    segment(A.FAILED, JobState.QUEUED, 2, job_id)
    segment(A.SUCCEEDED, JobState.SUCCEEDED, 3, job_id)
    with store.read() as conn:
        got = [(r.type, json.loads(r.payload).get("cause")) for r in conn.execute(
            select(outbox_table).order_by(outbox_table.c.id))]
    assert got == [("job.checkpointed", None), ("job.retried", "error"), ("job.succeeded", None)]
