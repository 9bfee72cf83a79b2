"""`orch tick` with 10,000 finished and 50 running jobs in the DB: local time per tick.

Target: <= 0.2 s. Baseline in the same process: a tick over an empty DB.

    python bench/tick.py [--finished 10000] [--running 50]
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import best_of, scratch_home  # noqa: E402


def populate(app, finished: int, running: int) -> list[int]:
    """Insert finished jobs directly, and `running` attempts whose runner lock this process
    holds (so the local platform sees live runners without starting 50 processes)."""
    from sqlalchemy import insert

    from orchestrator.store import attempt_key, attempts, events, jobs

    now = time.time()
    spec = json.dumps({"name": "b", "run": "true", "code": "/tmp", "resources": {"max_runtime": 60.0}})
    job_rows, att_rows, ev_rows = [], [], []
    for i in range(finished + running):
        jid = uuid.uuid4().hex
        done = i < finished
        state = "SUCCEEDED" if done else "RUNNING"
        job_rows.append(dict(id=jid, name=f"job{i}", state=state, spec=spec, bundle="0" * 64, priority=0,
                             created_at=now - i, updated_at=now, platform="local", pin=None, attempts=1,
                             lost_count=0, error_count=0, message="", checkpoint=None, avoid="{}",
                             submitted_by="bench", submitted_host="h", sweep_id=None, extra="{}"))
        key = attempt_key(jid, 1)
        d = app.home.platform_dir("local") / "attempts" / key
        att_rows.append(dict(job_id=jid, number=1, key=key, platform="local", state=state,
                             handle=json.dumps({"key": key, "data": {"dir": str(d)}}), created_at=now - i,
                             message="", runtime_s=1.0 if done else None))
        ev_rows.append(dict(job_id=jid, at=now, kind="job", from_state="QUEUED", to_state=state, reason="", actor="b"))
    with app.store.engine.begin() as conn:
        conn.execute(insert(jobs), job_rows)
        conn.execute(insert(attempts), att_rows)
        conn.execute(insert(events), ev_rows)
    held = []
    for row in att_rows[finished:]:
        d = Path(json.loads(row["handle"])["data"]["dir"])
        d.mkdir(parents=True)
        (d / "heartbeat.json").write_text(json.dumps({"time": now, "phase": "running"}))
        fd = os.open(d / "runner.lock", os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        held.append(fd)
    return held


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--finished", type=int, default=10_000)
    ap.add_argument("--running", type=int, default=50)
    args = ap.parse_args()
    from orchestrator.app import App
    from orchestrator.controller import Controller

    with scratch_home():
        app = App.open()
        (app.home.config_path).write_text("platforms:\n  local: {type: local, max_concurrent: 100, gpu: none}\n")
        app.close()
        app = App.open()
        empty = best_of(lambda: Controller(app).tick(), 5)
        held = populate(app, args.finished, args.running)
        busy = best_of(lambda: Controller(app).tick(), 5)
        report = Controller(app).tick()
        assert not report.problems, report.problems
        for fd in held:
            os.close(fd)
        app.close()
    print(f"tick, empty DB (baseline)                         {empty * 1000:7.1f} ms")
    print(f"tick, {args.finished} finished + {args.running} running jobs   {busy * 1000:7.1f} ms   "
          f"({busy / empty:.1f}x baseline)  target <= 200 ms")


if __name__ == "__main__":
    main()
