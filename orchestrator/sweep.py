"""Sweeps: one job.yaml with ``sweep:`` becomes one job per parameter set.

Every point shares the one bundle (the code and data are packaged and uploaded once) and
differs only in its environment: each parameter is an environment variable, plus
``ORCH_SWEEP_ID`` and ``ORCH_SWEEP_INDEX`` (0-based). Points are ordinary jobs tied by
``jobs.sweep_id``: they are placed, retried and failed over one by one, ``orch status``
folds them into one line, and ``orch cancel SWEEP`` cancels all that have not ended.
"""

from __future__ import annotations

import itertools
import uuid
from collections import Counter
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:  # pragma: no cover
    from .app import App
    from .spec import JobSpec, Sweep
    from .store import JobRow, Store


def expand(sweep: "Sweep") -> list[dict[str, str]]:
    """The parameter sets of a sweep, in a stable order (a grid varies its last key fastest)."""
    if sweep.points:
        return [dict(p) for p in sweep.points]
    names = list(sweep.grid)
    return [dict(zip(names, values)) for values in itertools.product(*(sweep.grid[n] for n in names))]


def point_name(name: str, index: int, size: int) -> str:
    """``name-03`` style point names that sort in order and fit the 64-character limit."""
    suffix = f"-{index:0{len(str(size - 1))}d}"
    return name[: 64 - len(suffix)] + suffix


def submit(store: "Store", spec: "JobSpec", digest: str, points: list[dict[str, str]],
           pin: str | None) -> tuple[str, list[str]]:
    """Queue every point in one transaction; returns (sweep id, job ids in point order)."""
    sweep_id = uuid.uuid4().hex
    doc = spec.public_dict()
    entries = []
    for i, params in enumerate(points):
        env = {**params, "ORCH_SWEEP_ID": sweep_id, "ORCH_SWEEP_INDEX": str(i)}
        entries.append(dict(name=point_name(spec.name, i, len(points)), spec=doc, bundle=digest,
                            priority=spec.priority, pin=pin, sweep_id=sweep_id,
                            extra={"env": env, "sweep": {"name": spec.name, "index": i, "size": len(points),
                                                         "params": params}}))
    return sweep_id, store.add_jobs(entries)


def label(params: Mapping[str, str]) -> str:
    """``LR=0.1 BATCH=32`` for tables."""
    return " ".join(f"{k}={v}" for k, v in params.items())


def progress(counts: Mapping[str, int]) -> str:
    """``4/6 done (3 succeeded, 1 failed), 1 running, 1 queued`` from state counts."""
    total = sum(counts.values())
    done = {s: n for s, n in counts.items() if s in ("SUCCEEDED", "FAILED", "LOST", "CANCELLED") and n}
    active = sum(n for s, n in counts.items() if s in ("SUBMITTING", "PENDING", "RUNNING", "UNKNOWN", "FETCHING"))
    parts = [f"{sum(done.values())}/{total} done"
             + (f" ({', '.join(f'{n} {s.lower()}' for s, n in sorted(done.items()))})" if done else "")]
    if active:
        parts.append(f"{active} running")
    if counts.get("QUEUED"):
        parts.append(f"{counts['QUEUED']} queued")
    return ", ".join(parts)


def overall_state(counts: Mapping[str, int]) -> str:
    """One word for a sweep: RUNNING while any point is active, QUEUED while any waits,
    else SUCCEEDED if all succeeded, else the worst ending (FAILED > LOST > CANCELLED)."""
    c = Counter({k: v for k, v in counts.items() if v})
    for state in ("RUNNING", "FETCHING", "PENDING", "SUBMITTING", "UNKNOWN"):
        if c[state]:
            return "RUNNING"
    if c["QUEUED"]:
        return "QUEUED"
    for state in ("FAILED", "LOST", "CANCELLED"):
        if c[state]:
            return state
    return "SUCCEEDED"


def resolve(app: "App", ref: str) -> tuple[str, list["JobRow"]] | None:
    """(sweep id, its points) when ``ref`` names a sweep (id prefix, or the name of a
    sweep's job.yaml when no job has that name), else None."""
    sweep_id = app.store.resolve_sweep(ref)
    if sweep_id is None:
        return None
    rows = app.store.sweep_jobs(sweep_id)
    return (sweep_id, rows) if rows else None
