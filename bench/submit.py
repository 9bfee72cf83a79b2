"""`orch submit` of a job with a 1 GB, 10,000-file dataset: first submit vs unchanged re-submit.

Target: re-submit <= 0.3 s. Baseline in the same process: reading the dataset's bytes once
(what a re-submit without the stat index would at least cost).

    python bench/submit.py [--mb 1024] [--files 10000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import best_of, scratch_home  # noqa: E402


def make_dataset(root: Path, total_mb: int, files: int) -> None:
    size = total_mb * 1024 * 1024 // files
    block = os.urandom(size)
    for i in range(files):
        d = root / f"d{i // 500:03d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:05d}.bin").write_bytes(block[i % 97:] + block[:i % 97])
    old = time.time() - 3600
    for p in root.rglob("*.bin"):
        os.utime(p, (old, old))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=1024)
    ap.add_argument("--files", type=int, default=10_000)
    args = ap.parse_args()
    from orchestrator import actions
    from orchestrator.app import App

    with scratch_home() as root:
        data = root / "data"
        print(f"creating a {args.mb} MB dataset of {args.files} files ...", flush=True)
        make_dataset(data, args.mb, args.files)
        job = root / "job"
        job.mkdir()
        (job / "main.py").write_text("print('hi')\n")
        (job / "job.yaml").write_text(f"name: big\nrun: python main.py\ndatasets:\n  - {{path: {data}, name: data}}\n")

        def read_all() -> None:
            for p in data.rglob("*.bin"):
                with open(p, "rb") as f:
                    while f.read(1 << 20):
                        pass

        baseline = best_of(read_all, 3)
        app = App.open()
        t = time.perf_counter()
        actions.submit(app, job / "job.yaml")
        first = time.perf_counter() - t
        resubmit = best_of(lambda: actions.submit(app, job / "job.yaml"), 5)
        app.close()
        env = {**os.environ}
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "orchestrator", "submit", str(job / "job.yaml"), "--json"],
                       check=True, capture_output=True, env=env)
        cli = time.perf_counter() - t
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import orchestrator.cli"], check=True, env=env)
        startup = time.perf_counter() - t

    print(f"dataset: {args.mb} MB in {args.files} files")
    print(f"baseline: read every byte once          {baseline:8.3f} s")
    print(f"first submit (hash + archive)           {first:8.3f} s   ({first / baseline:5.2f}x baseline)")
    print(f"unchanged re-submit (library call)      {resubmit:8.3f} s   ({resubmit / baseline:5.3f}x baseline)  target <= 0.3 s")
    print(f"unchanged re-submit (`orch submit` CLI) {cli:8.3f} s   of which Python + import startup {startup:.3f} s")


if __name__ == "__main__":
    main()
