"""`orch ui` pages with 10,000 finished and 50 running jobs (and a ledger charge per job)
in the DB: server time per page (routing, reads, rendering; no network).

Target: <= 300 ms per page. Baseline in the same process: each page on an empty DB.

    python bench/ui.py [--finished 10000] [--running 50] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import best_of, scratch_home  # noqa: E402
from bench.tick import populate  # noqa: E402

PORT = 8765
TOKEN = "bench"


def pages(app) -> dict[str, str]:
    """Page name -> path, for one finished and one running job of this DB."""
    from orchestrator.states import JobState

    done = app.store.jobs(states=[JobState.SUCCEEDED], limit=1)
    running = app.store.jobs(states=[JobState.RUNNING], limit=1)
    paths = {"queue": "/", "queue, state filter": "/?state=SUCCEEDED", "queue, platform filter": "/?platform=local"}
    total = app.store.count_jobs()
    if total > 50:
        paths["queue, last page"] = f"/?page={-(-total // 50)}"
    if done:
        paths["job (finished)"] = f"/jobs/{done[0].id}"
    if running:
        paths["job (running)"] = f"/jobs/{running[0].id}"
        paths["log tail (running)"] = f"/jobs/{running[0].id}/log"
    paths.update({"quota": "/quota", "platforms": "/platforms"})
    return paths


def charge_all(app, n: int) -> None:
    """One ledger charge per finished job over the last four weeks."""
    now = time.time()
    with app.store.transaction() as tx:
        for i in range(n):
            end = now - (i * 241) % (28 * 86400)
            tx.add_ledger("local", None, "charge", 0.5, "gpu_hours", end - 1800, end)


def timed(app, repeat: int) -> dict[str, float]:
    from orchestrator.ui import server

    client = server.create(app, TOKEN, PORT).test_client()
    client.set_cookie(f"orch_ui_{PORT}", TOKEN, domain="127.0.0.1")
    out = {}
    for name, path in pages(app).items():
        def get(path=path):
            resp = client.get(path, base_url=f"http://127.0.0.1:{PORT}")
            assert resp.status_code == 200, (path, resp.status_code)
        out[name] = best_of(get, repeat)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--finished", type=int, default=10_000)
    ap.add_argument("--running", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    from orchestrator.app import App

    with scratch_home():
        app = App.open()
        app.home.config_path.write_text("platforms:\n  local: {type: local, max_concurrent: 100, gpu: none,\n"
                                        "    budget: {unit: gpu_hours, limit: 30, window: weekly}}\n")
        app.close()
        app = App.open()
        empty = timed(app, args.repeat)
        held = populate(app, args.finished, args.running)
        charge_all(app, args.finished)
        busy = timed(app, args.repeat)
        for fd in held:
            os.close(fd)
        app.close()
    print(f"orch ui, server time per page (best of {args.repeat}), {args.finished} finished + "
          f"{args.running} running jobs:")
    print(f"  {'page':<26} {'empty DB':>10} {'10k jobs':>10}")
    for name, seconds in busy.items():
        base = f"{empty[name] * 1000:.1f} ms" if name in empty else "-"
        flag = "" if seconds <= 0.3 else "   over the 300 ms target"
        print(f"  {name:<26} {base:>10} {seconds * 1000:>7.1f} ms{flag}")


if __name__ == "__main__":
    main()
