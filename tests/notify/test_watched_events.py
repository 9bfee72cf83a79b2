"""Events that come from looking (quota low, a job waiting long) and from a whole sweep:
each is sent once however many ticks see it."""

from __future__ import annotations

import json
import time

from orchestrator.app import App
from orchestrator.notify import delivery
from tests.conftest import make_job, submit, submitted, tick_until
from tests.notify.conftest import SECRET


def hook(**notify):
    return {"channels": {"ops": {"type": "webhook", "url": notify.pop("url"), "secret_env": "HOOK_SECRET"}},
            **notify}


def test_quota_low_and_a_long_wait_are_each_told_once(orch, config, receiver, tmp_path, monkeypatch):
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    config(platforms={"local": {"type": "local", "budget": {"unit": "gpu_hours", "limit": 10, "window": "daily",
                                                             "reset": "00:00"}}},
           notify=hook(url=f"{receiver.url}/hook", quota_low_percent=25, waiting="1h"))
    job = submit(orch, make_job(tmp_path / "j", "name: waits\nrun: 'true'\n"))
    app = App.open()
    try:
        now = time.time()
        with app.store.transaction() as tx:
            tx.add_ledger("local", None, "charge", 8.0, "gpu_hours", now - 60, now - 30)
        for _ in range(3):
            delivery.deliver(app, "test", now=now)
        later = now + 2 * 3600
        for _ in range(2):
            delivery.deliver(app, "test", now=later)
    finally:
        app.close()
    events = receiver.events()
    kinds = sorted(e["type"] for e in events)
    assert kinds == ["job.waiting", "quota.low"], kinds
    q = next(e for e in events if e["type"] == "quota.low")["quota"]
    assert q["platform"] == "local" and q["left"] == 2.0 and q["left_percent"] == 20.0 and q["resets_at"].endswith("Z")
    w = next(e for e in events if e["type"] == "job.waiting")
    assert w["job"]["id"] == job and w["waited_hours"] >= 2.0


def test_a_finished_sweep_is_told_once_with_a_table_of_its_points(orch, config, receiver, tmp_path, monkeypatch):
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    config(platforms={"local": {"type": "local", "max_concurrent": 2}}, notify=hook(url=f"{receiver.url}/hook"))
    doc = submitted(orch, make_job(tmp_path / "s", """\
        name: grid
        sweep: {grid: {LR: [0.1, 0.2]}}
        run: test "$LR" = 0.1
        """))
    ids = [j if isinstance(j, str) else j["id"] for j in doc["jobs"]]
    tick_until(lambda app: all(app.store.job(j).state.terminal for j in ids), what="sweep ends")
    tick_until(lambda app: True)
    (sweep,) = [e for e in receiver.events() if e["type"] == "sweep.finished"]
    assert sweep["sweep"]["name"] == "grid" and sweep["sweep"]["counts"] == {"SUCCEEDED": 1, "FAILED": 1}
    assert sorted(p["params"]["LR"] for p in sweep["sweep"]["points"]) == ["0.1", "0.2"]


def test_a_missing_drive_token_is_told_once_not_once_as_gone_and_again_as_refused(orch, config, tmp_path):
    events = tmp_path / "events.jsonl"
    receiver = tmp_path / "on-event.sh"
    receiver.write_text(f"#!/bin/sh\ncat >> {events}\necho >> {events}\n")
    receiver.chmod(0o755)
    secrets = tmp_path / "client_secret.json"  # the OAuth client; no sign-in yet, so no token
    secrets.write_text(json.dumps({"installed": {"client_id": "x", "client_secret": "y",
                                                 "auth_uri": "https://accounts.google.com/o/oauth2/auth",
                                                 "token_uri": "https://oauth2.googleapis.com/token"}}))
    config(platforms={"colab": {"type": "colab_drive", "tier": "pro", "credentials": str(secrets)}},
           notify={"channels": {"me": {"type": "command", "command": [str(receiver)], "events": ["login.expiring"]}}})
    queued = orch("submit", str(make_job(tmp_path / "j", "name: waits\nplatforms: [colab]\nrun: 'true'\n")))
    assert queued.exit_code == 0 and "orch auth drive" in queued.output, queued.output  # warned at submit
    for _ in range(2):
        assert orch("tick").exit_code == 0
    told = [json.loads(line) for line in events.read_text().splitlines() if line.strip()]
    assert [(e["type"], e["login"]["platform"], e["login"]["expired"]) for e in told] == [
        ("login.expiring", "colab", True)], told
