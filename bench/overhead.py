"""An empty job end to end on the local platform (submit -> tick -> fetched) vs running the
same command directly. Target overhead <= 1 s.

    python bench/overhead.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import scratch_home  # noqa: E402

COMMAND = "python -c pass"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    from orchestrator import actions, controller
    from orchestrator.app import App

    direct = min(_time(lambda: subprocess.run(COMMAND, shell=True, check=True)) for _ in range(args.repeat))
    ends = []
    with scratch_home() as root:
        job = root / "job"
        job.mkdir()
        (job / "job.yaml").write_text(f"name: empty\nrun: {COMMAND}\n")
        for _ in range(args.repeat):
            app = App.open()
            t = time.perf_counter()
            res = actions.submit(app, job / "job.yaml")
            while not app.store.job(res.job_id).state.terminal:
                controller.Controller(app).tick()
                time.sleep(0.02)
            ends.append(time.perf_counter() - t)
            assert app.store.job(res.job_id).state.value == "SUCCEEDED"
            app.close()
    best = min(ends)
    print(f"command run directly (baseline)      {direct * 1000:7.0f} ms")
    print(f"same command as an orch job (local)  {best * 1000:7.0f} ms   overhead {best - direct:.2f} s  "
          f"({best / direct:.1f}x baseline)  target overhead <= 1 s")


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
