"""Calendar maths for quota windows and opening hours, all in UTC.

A **window** repeats weekly (with a reset such as Saturday 00:00), monthly (a day of the
month), daily, or never ("none": one window forever). ``available_hours`` is a daily
range of hours ("22:00-06:00") when a platform may run work. ``quota.py`` counts usage
inside these windows; this module only knows the calendar.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from .durations import format_duration

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
INF = float("inf")


@dataclass(frozen=True)
class Window:
    """A repeating accounting window in UTC.

    Attributes:
        kind: "weekly", "monthly", "daily" or "none" (one window forever).
        weekday: weekly reset day, Monday = 0 (Saturday = 5).
        day: monthly reset day of the month (clamped to the month's length).
        minute: minutes after midnight UTC of the reset.
    """

    kind: str = "weekly"
    weekday: int = 5
    day: int = 1
    minute: int = 0

    def bounds(self, now: float) -> tuple[float, float]:
        """``[start, end)`` of the window holding ``now`` (epoch seconds)."""
        if self.kind == "none":
            return -INF, INF
        t = datetime.fromtimestamp(now, timezone.utc)
        if self.kind == "daily":
            start = t.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(minutes=self.minute)
            if start > t:
                start -= timedelta(days=1)
            return start.timestamp(), (start + timedelta(days=1)).timestamp()
        if self.kind == "weekly":
            midnight = t.replace(hour=0, minute=0, second=0, microsecond=0)
            start = midnight - timedelta(days=(t.weekday() - self.weekday) % 7) + timedelta(minutes=self.minute)
            if start > t:
                start -= timedelta(days=7)
            return start.timestamp(), (start + timedelta(days=7)).timestamp()
        # monthly
        start = self._month_reset(t.year, t.month)
        if start > t:
            year, month = (t.year - 1, 12) if t.month == 1 else (t.year, t.month - 1)
            start = self._month_reset(year, month)
        year, month = (start.year + 1, 1) if start.month == 12 else (start.year, start.month + 1)
        return start.timestamp(), self._month_reset(year, month).timestamp()

    def _month_reset(self, year: int, month: int) -> datetime:
        day = min(self.day, calendar.monthrange(year, month)[1])
        return datetime(year, month, day, tzinfo=timezone.utc) + timedelta(minutes=self.minute)

    def spans(self, start: float, end: float) -> list[tuple[float, float]]:
        """The windows ``[start, end)`` touches, in order."""
        out = []
        t = start
        while True:
            lo, hi = self.bounds(t)
            out.append((lo, hi))
            if hi >= end or hi == INF:
                return out
            t = hi

    def describe(self) -> str:
        """e.g. "weekly, resets Sat 00:00 UTC"."""
        at = f"{self.minute // 60:02d}:{self.minute % 60:02d} UTC"
        if self.kind == "none":
            return "no reset"
        if self.kind == "daily":
            return f"daily, resets {at}"
        if self.kind == "weekly":
            return f"weekly, resets {WEEKDAYS[self.weekday].title()} {at}"
        return f"monthly, resets on day {self.day} {at}"


_CLOCK = re.compile(r"^(\d{1,2}):(\d{2})$")


def _minutes(text: str) -> int:
    m = _CLOCK.fullmatch(text)
    if not m or int(m.group(1)) > 23 or int(m.group(2)) > 59:
        raise ValueError(f"'{text}' is not a time of day; write HH:MM (UTC)")
    return int(m.group(1)) * 60 + int(m.group(2))


def parse_reset(kind: str, text: str | None) -> Window:
    """A window from config: ``reset`` is "sat 00:00" (weekly), "1 00:00" (monthly, day of
    month) or "00:00" (daily), all UTC; the time may be left out (midnight).

    Raises:
        ValueError: naming the accepted forms.
    """
    words = (text or "").strip().lower().split()
    if kind == "none":
        return Window("none")
    if kind == "daily":
        if len(words) > 1:
            raise ValueError(f"reset '{text}': a daily window resets at a time, e.g. '04:00' (UTC)")
        return Window("daily", minute=_minutes(words[0]) if words else 0)
    if kind == "weekly":
        if not words:
            return Window("weekly")
        day = words[0][:3]
        if day not in WEEKDAYS or len(words) > 2:
            raise ValueError(f"reset '{text}': a weekly window resets on a day and time, e.g. 'sat 00:00' (UTC)")
        return Window("weekly", weekday=WEEKDAYS.index(day), minute=_minutes(words[1]) if len(words) > 1 else 0)
    if kind == "monthly":
        if not words:
            return Window("monthly")
        if not words[0].isdigit() or not 1 <= int(words[0]) <= 31 or len(words) > 2:
            raise ValueError(f"reset '{text}': a monthly window resets on a day of the month, e.g. '1 00:00' (UTC)")
        return Window("monthly", day=int(words[0]), minute=_minutes(words[1]) if len(words) > 1 else 0)
    raise ValueError(f"unknown window '{kind}'; expected weekly, monthly, daily or none")


def parse_hours(text: str) -> tuple[int, int]:
    """``available_hours: "22:00-06:00"`` -> (start, end) in minutes after midnight UTC."""
    parts = text.replace(" ", "").split("-")
    if len(parts) != 2:
        raise ValueError(f"'{text}' is not a range of hours; write e.g. '22:00-06:00' (UTC)")
    start, end = (_minutes(p) for p in parts)
    if start == end:
        raise ValueError(f"'{text}' is empty; leave available_hours out for a platform that is always available")
    return start, end


def hours_length(text: str) -> float:
    """Seconds in the daily range ``text`` ("22:00-06:00" -> 8 h)."""
    start, end = parse_hours(text)
    return ((end - start) % 1440) * 60.0


def open_hours(text: str, now: float) -> tuple[bool, float]:
    """Whether ``now`` falls in the daily UTC range ``text``, and when that next changes."""
    start, end = parse_hours(text)
    t = datetime.fromtimestamp(now, timezone.utc)
    midnight = t.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    minute = (now - midnight) / 60
    inside = (start <= minute < end) if start < end else (minute >= start or minute < end)
    target = end if inside else start
    change = midnight + target * 60
    if change <= now:
        change += 86400
    return inside, change


def format_reset(ts: float | None) -> str:
    if ts is None or ts == INF:
        return "never"
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%a %Y-%m-%d %H:%M UTC")


def format_when(ts: float, now: float) -> str:
    """"Sat 00:00 UTC (in 2d03h)" for messages about when a wait ends (with the date
    when it is more than a week away)."""
    when = datetime.fromtimestamp(ts, timezone.utc)
    if ts - now > 7 * 86400:
        day = when.strftime("%a %Y-%m-%d ")
    elif ts - now < 86400 and when.day == datetime.fromtimestamp(now, timezone.utc).day:
        day = ""
    else:
        day = when.strftime("%a ")
    return f"{day}{when:%H:%M} UTC (in {format_duration(max(0.0, ts - now))})"
