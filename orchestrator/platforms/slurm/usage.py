"""A Slurm site's own usage figure for ``orch quota``: ``sshare``'s GPU minutes (pure).

``sshare -U -h -P -o Account,User,GrpTRESRaw,GrpTRESMins`` lists the user's
associations; ``GrpTRESRaw`` is the TRES-minutes their jobs used (decayed where the
site sets PriorityDecayHalfLife), ``GrpTRESMins`` the limit set there, if any. Sites
without accounting list nothing, and then nothing is shown.
"""

from __future__ import annotations

import math

from ...quota import SiteUsage

SSHARE_FORMAT = "Account,User,GrpTRESRaw,GrpTRESMins"
_CAP = 64 << 10  # the longest sshare answer read (one row per association)


def _gpu_minutes(tres: str) -> float | None:
    """``gres/gpu`` of a TRES list ("cpu=10,...,gres/gpu=600"); None when absent."""
    for item in tres.split(","):
        name, _, value = item.strip().partition("=")
        if name == "gres/gpu":
            try:
                number = float(value)
            except ValueError:
                return None
            return number if math.isfinite(number) and number >= 0 else None
    return None


def parse_sshare(text: str, account: str | None) -> SiteUsage | None:
    """The GPU hours the site counts for this user (the rows of ``account`` when set,
    else all of theirs); None when no row gives a GPU figure."""
    used, limits, accounts = 0.0, [], []
    for line in text[:_CAP].splitlines():
        parts = line.strip().split("|")
        if len(parts) < 4 or (account and parts[0].strip() != account):
            continue
        minutes = _gpu_minutes(parts[2])
        if minutes is None:
            continue
        used += minutes / 60
        accounts.append(parts[0].strip()[:64])
        limit = _gpu_minutes(parts[3])
        if limit is not None:
            limits.append(limit / 60)
    if not accounts:
        return None
    source = f"sshare, account {', '.join(sorted(set(accounts)))}"
    return SiteUsage(unit="gpu_hours", used=used, limit=min(limits) if limits else None, source=source)
