"""Team mode on PostgreSQL: jobs dispatched per second with 1, 2 and 4 controllers sharing
one database (local platform, empty jobs), and tick time with 100,000 finished jobs.

Targets: dispatch throughput grows with controllers; tick stays <= 0.3 s.
Baseline in the same process: one controller's throughput, and a tick over an empty DB.
Needs the PostgreSQL server binaries (apt-get install postgresql).

    python bench/team.py [--jobs 120] [--finished 100000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import best_of, scratch_home  # noqa: E402
from tests.pg import PostgresServer, _bindir  # noqa: E402

DISPATCHER = textwrap.dedent("""\
    import time
    from orchestrator import leases
    from orchestrator.app import App
    from orchestrator.controller import Controller
    from orchestrator.states import JobState
    deadline = time.time() + 300
    while time.time() < deadline:
        app = App.open()
        try:
            ctl = Controller(app)  # the dispatch step of a tick alone
            ctl.owner = leases.owner_id()
            ctl.dispatch()
            leases.release(app.store, ctl.owner)
            if not app.store.jobs([JobState.QUEUED], limit=1):
                break
        finally:
            app.close()
""")


def dispatch_rate(server: PostgresServer, controllers: int, n_jobs: int) -> float:
    from orchestrator import actions, controller
    from orchestrator.app import App
    from orchestrator.states import JobState

    with scratch_home() as root:
        os.environ["ORCH_STATE_URL"] = server.new_database()
        home = Path(os.environ["ORCH_HOME"])
        home.mkdir(parents=True)
        (home / "config.yaml").write_text("platforms:\n  local: {type: local, max_concurrent: 100000, gpu: none}\n")
        job = root / "job"
        job.mkdir()
        (job / "job.yaml").write_text("name: empty\nrun: 'true'\n")
        app = App.open()
        res = actions.submit(app, job / "job.yaml")
        spec, bundle = app.store.job(res.job_id).spec, res.bundle.digest
        app.store.add_jobs([dict(name="empty", spec=spec, bundle=bundle)] * (n_jobs - 1))
        app.close()
        t = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "-c", DISPATCHER], env=os.environ.copy()) for _ in range(controllers)]
        for p in procs:
            p.wait(timeout=600)
        elapsed = time.perf_counter() - t
        app = App.open()
        left = len(app.store.jobs([JobState.QUEUED]))
        # let the empty jobs finish before the home is removed
        deadline = time.time() + 120
        while time.time() < deadline and any(not j.state.terminal for j in app.store.jobs()):
            controller.Controller(app).tick()
        app.close()
        os.environ.pop("ORCH_STATE_URL")
        assert left == 0, f"{left} jobs were not dispatched"
        return n_jobs / elapsed


def tick_time(server: PostgresServer, finished: int) -> tuple[float, float]:
    from bench.tick import populate
    from orchestrator.app import App
    from orchestrator.controller import Controller

    with scratch_home():
        os.environ["ORCH_STATE_URL"] = server.new_database()
        home = Path(os.environ["ORCH_HOME"])
        home.mkdir(parents=True)
        (home / "config.yaml").write_text("platforms:\n  local: {type: local, max_concurrent: 100, gpu: none}\n")
        app = App.open()
        empty = best_of(lambda: Controller(app).tick(), 5)
        held = populate(app, finished, 50)
        busy = best_of(lambda: Controller(app).tick(), 5)
        for fd in held:
            os.close(fd)
        app.close()
        os.environ.pop("ORCH_STATE_URL")
    return empty, busy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=120)
    ap.add_argument("--finished", type=int, default=100_000)
    args = ap.parse_args()
    if _bindir() is None:
        sys.exit("PostgreSQL server binaries not found (apt-get install postgresql)")
    server = PostgresServer(_bindir())
    server.start()
    try:
        rates = {n: dispatch_rate(server, n, args.jobs) for n in (1, 2, 4)}
        empty, busy = tick_time(server, args.finished)
    finally:
        server.stop()
    print(f"dispatch, {args.jobs} empty jobs on the local platform, one PostgreSQL database ({os.cpu_count()} CPUs):")
    for n, rate in rates.items():
        print(f"  {n} controller(s): {rate:7.1f} jobs/s   ({rate / rates[1]:.2f}x one controller)")
    print(f"tick, empty DB (baseline)                               {empty * 1000:7.1f} ms")
    print(f"tick, {args.finished} finished + 50 running jobs        {busy * 1000:7.1f} ms   "
          f"({busy / empty:.1f}x baseline)  target <= 300 ms")


if __name__ == "__main__":
    main()
