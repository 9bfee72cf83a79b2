"""Sweep points as one ``sbatch --array``: the staging files and their grouping.

A sweep point's ``submit`` uploads and writes its batch script as for any job, plus
``staged`` (its sbatch resource options and sweep index, one JSON line), and returns: the attempt is
recorded PENDING. At the end of the tick (``SlurmPlatform.reconcile``) every staged
point is submitted, one array per set of points with the same options; task ``i`` runs
the ``i``-th point (by sweep index) with its own batch script, unchanged.

Crash-safety, as for one job: before ``sbatch`` each point's directory gets
``array.name`` and ``array.index`` (the intent); after it, ``slurm.jobid`` =
``<array id>_<index>``. A point with an intent but no id is looked up by the array's
name (``squeue``, ``sacct``) before anything is submitted again; a point whose array
sbatch refused gets ``refused`` (its status read says LOST, with sbatch's words).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

#: A point's resource options (``batch.options``) must be equal for it to join an array.
STAGE = r"""
d=$1; umask 077
mkdir -p -- "$d" && cd -- "$d" || { echo "fail cannot create $d"; exit 0; }
cat > job.sbatch.tmp && chmod 700 job.sbatch.tmp && mv -f job.sbatch.tmp job.sbatch || { echo "fail cannot write job.sbatch"; exit 0; }
printf '%s\n' "$2" > staged.tmp && mv -f staged.tmp staged && echo "ok"
"""

#: Every staged point still to submit: key, array name and index (or -), options.
LIST = r"""
for f in "$1"/attempts/*/staged; do
  [ -f "$f" ] || continue
  d=${f%/staged}
  [ -e "$d/slurm.jobid" ] || [ -e "$d/orch-cancelled" ] || [ -e "$d/refused" ] && continue
  name=-; index=-
  [ -s "$d/array.name" ] && name=$(head -c 200 "$d/array.name")
  [ -s "$d/array.index" ] && index=$(head -c 20 "$d/array.index")
  printf 'point\t%s\t%s\t%s\t%s\n' "${d##*/}" "$name" "$index" "$(head -c 2000 "$f")"
done
exit 0
"""

#: The intent, before sbatch: each point's array name and index ($1 = name, then dirs).
INTENT = r"""
name=$1; shift; i=0
for d; do
  printf '%s\n' "$name" > "$d/array.name.tmp" && mv -f "$d/array.name.tmp" "$d/array.name" || exit 1
  echo "$i" > "$d/array.index.tmp" && mv -f "$d/array.index.tmp" "$d/array.index" || exit 1
  i=$((i+1))
done
echo ok
"""

#: The outcome, after sbatch: ``<id>_<index>`` ($1 = array id, then pairs: dir index).
BIND = r"""
id=$1; shift
while [ $# -ge 2 ]; do
  d=$1; i=$2; shift 2
  [ -s "$d/slurm.jobid" ] || { echo "${id}_$i" > "$d/slurm.jobid.tmp" && mv -f "$d/slurm.jobid.tmp" "$d/slurm.jobid"; }
done
echo ok
"""

#: sbatch refused the array: each point says so to its status read ($1 = words, then dirs).
REFUSE = r"""
words=$1; shift
for d; do printf '%s\n' "$words" > "$d/refused"; done
echo ok
"""


@dataclass(frozen=True)
class Point:
    """One staged sweep point as the login node lists it (untrusted text, capped)."""

    key: str
    name: str | None
    index: int | None  # the point's task id in its array, once given one
    options: tuple[str, ...]
    order: int = 0  # ORCH_SWEEP_INDEX: task ids follow the sweep's order


def staged_line(options: list[str], order: int) -> str:
    """What ``staged`` holds: the options that must match, and the point's order."""
    return json.dumps({"options": options, "order": order}, separators=(",", ":"))


def parse_listing(text: str, active: set[str]) -> list[Point]:
    """``LIST``'s lines -> the points of active attempts (others are left alone)."""
    points = []
    for line in text.splitlines()[:10_000]:
        parts = line.split("\t")
        if len(parts) != 5 or parts[0] != "point" or parts[1] not in active:
            continue
        try:
            doc = json.loads(parts[4])
        except ValueError:
            continue
        options, order = (doc.get("options"), doc.get("order")) if isinstance(doc, dict) else (None, None)
        if not isinstance(options, list) or not all(isinstance(o, str) and o.startswith("--") for o in options):
            continue
        index = int(parts[3]) if parts[3].isdigit() else None
        points.append(Point(parts[1], None if parts[2] == "-" else parts[2], index, tuple(options),
                            order if isinstance(order, int) and not isinstance(order, bool) else 0))
    return points


def groups(points: list[Point]) -> tuple[dict[str, list[Point]], list[list[Point]]]:
    """(points already given to an array, by its name, in index order; new arrays:
    points with the same options, in sweep order)."""
    named: dict[str, list[Point]] = {}
    fresh: dict[tuple[str, ...], list[Point]] = {}
    for p in points:
        if p.name and p.index is not None:
            named.setdefault(p.name, []).append(p)
        else:
            fresh.setdefault(p.options, []).append(p)
    for name in named:
        named[name].sort(key=lambda p: p.index or 0)
    return named, [sorted(g, key=lambda p: (p.order, p.key)) for _, g in sorted(fresh.items())]
