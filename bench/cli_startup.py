"""Start-up time of `orch --version`, `orch --help` and `orch status` on an empty home.

Target: each under 0.2 s. Baseline in the same process: `python -c pass` (the interpreter's
own start-up, which no CLI can go below). Every run is a fresh subprocess of this
checkout (`python -m orchestrator`), and every `orch status` gets a new, empty ORCH_HOME.

    python bench/cli_startup.py [--repeat 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = (("--version",), ("--help",), ("status",))
TARGET_S = 0.2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=10, help="runs of each command (best and median shown)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="orch-bench-") as tmp:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "ORCH_HOME": str(Path(tmp) / "home")}
        env.pop("ORCH_STATE_URL", None)
        base = _runs([sys.executable, "-c", "pass"], env, args.repeat, Path(tmp))
        print(f"{'python -c pass (baseline)':28} best {base[0] * 1000:5.0f} ms  median {base[1] * 1000:5.0f} ms")
        for argv in COMMANDS:
            best, median = _runs([sys.executable, "-m", "orchestrator", *argv], env, args.repeat, Path(tmp))
            verdict = "ok" if median < TARGET_S else "OVER"
            print(f"{'orch ' + ' '.join(argv):28} best {best * 1000:5.0f} ms  median {median * 1000:5.0f} ms  "
                  f"({median / base[1]:.1f}x baseline, {(median - base[1]) * 1000:.0f} ms above it)  "
                  f"target < {TARGET_S * 1000:.0f} ms: {verdict}")


def _runs(argv: list[str], env: dict[str, str], repeat: int, tmp: Path) -> tuple[float, float]:
    """(best, median) wall time of ``repeat`` runs, each in a new empty ORCH_HOME."""
    times = []
    for i in range(repeat):
        home = tmp / f"home-{argv[-1].strip('-')}-{i}"
        t = time.perf_counter()
        subprocess.run(argv, env={**env, "ORCH_HOME": str(home)}, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times)


if __name__ == "__main__":
    main()
