"""A job that notes, when it starts, whether the processes of its earlier attempts
still run: the check that a retry never starts beside an orphan."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

SCRIPT = """\
import os, pathlib, time
ledger = pathlib.Path({ledger!r})

def alive(pid):
    try:
        stat = open(f"/proc/{{pid}}/stat").read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"

earlier = [int(l.split()[1]) for l in ledger.read_text().splitlines() if l.startswith("pid ")] if ledger.exists() else []
with open(ledger, "a") as f:
    f.write(f"start {{os.environ['ORCH_ATTEMPT']}} orphans={{sum(alive(p) for p in earlier)}}\\n")
    f.write(f"pid {{os.getpid()}}\\n")
if os.environ["ORCH_ATTEMPT"] == "1":
    time.sleep(300)  # a quiet job: it would keep the GPU busy for ever
"""


def script(ledger: Path) -> str:
    return SCRIPT.format(ledger=str(ledger))


def job_pids(ledger: Path) -> list[int]:
    return [int(line.split()[1]) for line in ledger.read_text().splitlines() if line.startswith("pid ")]


def kill_runners(attempts: Path) -> int:
    """SIGKILL the runner (only the runner) of every attempt under ``attempts``."""
    killed = 0
    for pid_file in attempts.glob("*/runner.pid.json"):
        doc = json.loads(pid_file.read_text())
        if doc.get("job_pgid"):
            os.kill(int(doc["pid"]), signal.SIGKILL)
            killed += 1
    return killed


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"
