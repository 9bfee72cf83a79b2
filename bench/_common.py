"""Helpers shared by the benchmarks: a throwaway ORCH_HOME and a timer."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def scratch_home():
    """A temporary ORCH_HOME (and working dir), removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="orch-bench-"))
    old_home, old_cwd = os.environ.get("ORCH_HOME"), os.getcwd()
    os.environ["ORCH_HOME"] = str(root / "home")
    os.chdir(root)
    try:
        yield root
    finally:
        os.chdir(old_cwd)
        if old_home is None:
            os.environ.pop("ORCH_HOME", None)
        else:
            os.environ["ORCH_HOME"] = old_home
        shutil.rmtree(root, ignore_errors=True)


def best_of(fn, repeat: int = 5) -> float:
    """Best wall time of ``repeat`` calls, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best
