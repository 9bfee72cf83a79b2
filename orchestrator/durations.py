"""Human durations ("2h30m", "90m", "1d", "01:30:00") to seconds and back."""

from __future__ import annotations

import re

_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_PART = re.compile(r"(\d+(?:\.\d+)?)([dhms])")
_WHOLE = re.compile(r"^(?:\d+(?:\.\d+)?[dhms])+$")
_CLOCK = re.compile(r"^(\d{1,6}):([0-5]\d):([0-5]\d)$")
#: The longest duration orch takes (a year and a day); past it a typo is likelier than intent.
MAX_SECONDS = 366 * 86400


def parse_duration(text: object) -> float:
    """Seconds in ``text``; raises ValueError with a hint on anything else.

    A bare number is refused: Slurm reads it as minutes, others as seconds, so orch
    asks for a unit instead of guessing.
    """
    if isinstance(text, bool):
        raise ValueError(f"{text!r} is not a duration; write e.g. '2h30m', '90m' or '45s'")
    if isinstance(text, (int, float)):
        raise ValueError(f"{text} has no unit; write e.g. '{int(text)}s' or '{int(text)}m'")
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not a duration; write e.g. '2h30m', '90m' or '45s'")
    s = text.strip().lower().replace(" ", "")
    text = text if len(text) <= 40 else text[:37] + "..."
    clock = _CLOCK.fullmatch(s)
    if clock:
        h, m, sec = (int(g) for g in clock.groups())
        return _checked(text, float(h * 3600 + m * 60 + sec))
    if not s or len(s) > 64 or not _WHOLE.fullmatch(s):
        raise ValueError(f"'{text}' is not a duration; write e.g. '2h30m', '90m', '45s' or '1d'")
    return _checked(text, sum(float(n) * _UNITS[u] for n, u in _PART.findall(s)))


def _checked(text: str, total: float) -> float:
    """Refuse zero (every way of writing it) and anything past MAX_SECONDS (or inf)."""
    if total <= 0:
        raise ValueError(f"'{text}' must be longer than zero")
    if not total <= MAX_SECONDS:
        raise ValueError(f"'{text}' is longer than {MAX_SECONDS // 86400} days, the most orch takes")
    return total


def format_duration(seconds: float | None) -> str:
    """Short form for tables: 45s, 12m, 2h05m, 1d03h."""
    if seconds is None:
        return "-"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s" if s % 60 and s < 600 else f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"
