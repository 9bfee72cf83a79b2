"""bench/els.py runs, and its re-implementation of the public pricer shows that pricer's known defect."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_prints_our_time_the_seed_algorithm_and_ratios():
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "els.py"), "--grids", "20x20x40", "--repeats", "1", "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    row = json.loads(run.stdout)["rows"][0]
    assert row["grid"] == "20x20x40" and row["cpu_blocks"]["best_s"] > 0
    assert row["seed_here"]["seconds"] > 0 and row["seed_here_ratio"] > 0
    # Without the cross term, at half strength and with knock-in only at maturity, it overprices.
    assert row["seed_here"]["price"] > 1.05 * row["cpu_blocks"]["price"]
