"""Budgets, windows and the quota ledger: how much of each platform orch may still use.

A platform's **budget** is a limit per **window** (weekly with a reset such as Saturday
00:00 UTC, monthly, daily, or none) in a **unit** (GPU hours, or compute units at a
rate per GPU type). Defaults come from config (``budget:`` of a platform entry, or the
type's ``default_budget``: Kaggle 30 GPU hours a week); a live reading from the platform
(Kaggle's quota endpoint, ``colab usage``) overrides them when present. This module
knows no platform type: each platform class supplies its own defaults as data.

The **ledger** (the ``ledger`` table) holds one ``reserve`` row per attempt, written in
the same transaction as the attempt itself, for the longest it may run; when the attempt
ends, a ``charge`` row for what it really ran (from ``result.json``) and a ``release`` row
are written in the same transaction as its final state. So a crash at any point leaves
either an active attempt with its reservation, or a finished one with exactly one charge.

Headroom is computed per window from charges *overlapping* that window, pro rata, so a
charge that spans a reset is split between the two windows it touches; reservations of
running attempts are counted the same way. Only the current window's rows are read.

Design choice: a reservation is checked against every window it touches, not only the
current one. Checking only the current window would let a job started just before the
reset run most of its time in the next window unaccounted, and the next window could be
overrun by the reservations that spill into it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from .gpus import CPU_RATE, CU_RATES, DEFAULT_SPEEDS, MAX_MEMORY_GB, MODAL_DOLLARS_PER_HOUR, gpu_type
from .windows import INF, Window, parse_reset

if TYPE_CHECKING:  # pragma: no cover
    from .platforms.base import Offer
    from .settings import BudgetSettings
    from .spec import JobSpec

UNIT_NAMES = {"gpu_hours": "GPU h", "compute_units": "CU", "dollars": "$"}
#: Units charged per hour at a rate per GPU type (the rest count GPU hours).
RATED_UNITS = ("compute_units", "dollars")


# ---------------------------------------------------------------------------- budgets


@dataclass(frozen=True)
class Budget:
    """How one platform's use is counted and limited.

    Attributes:
        unit: "gpu_hours" or "compute_units".
        limit: units per window; None = unlimited (usage is still recorded).
        window: when the limit refills.
        per_gpu: gpu_hours only: multiply hours by the job's GPU count.
        rates: compute_units only: units per hour per GPU type.
        source: where the numbers come from ("config", "default for kaggle", ...).
    """

    unit: str = "gpu_hours"
    limit: float | None = None
    window: Window = Window()
    per_gpu: bool = True
    rates: Mapping[str, float] = field(default_factory=dict)
    source: str = "config"

    def rate(self, gpu: str | None, count: int) -> float:
        """Units per hour of a session with ``count`` GPUs of type ``gpu``."""
        if self.unit in RATED_UNITS:
            if not gpu or count <= 0:  # no GPU: dollars may rate the CPU (Modal's rates["CPU"])
                return self.rates.get(CPU_RATE, 0.0) if self.unit == "dollars" else 0.0
            rates = self.hourly_rates()
            rate = rates.get(gpu, max(rates.values()))  # an unknown GPU: charged at the highest
            return rate * count if self.unit == "dollars" else rate
        if count <= 0:
            return 0.0
        return float(count) if self.per_gpu else 1.0

    def hourly_rates(self) -> dict[str, float]:
        """compute_units / dollars: units per hour of one GPU of each type (config over defaults)."""
        return {**(CU_RATES if self.unit == "compute_units" else MODAL_DOLLARS_PER_HOUR), **self.rates}

    def fmt(self, units: float) -> str:
        if self.unit == "dollars":
            return f"${units:.2f}"
        return f"{units:.1f} {UNIT_NAMES.get(self.unit, self.unit)}"

    @classmethod
    def monthly_units(cls, units: float | None, source: str) -> "Budget | None":
        """A plan's compute units a month (Colab's tiers), or None for a plan without any,
        so a platform falls back to its base default."""
        if units is None:
            return None
        return cls(unit="compute_units", limit=units, window=Window("monthly"), source=source)

    @classmethod
    def from_settings(cls, b: "BudgetSettings") -> "Budget":
        """The ``budget:`` of a platform entry."""
        return cls(unit=b.unit, limit=b.limit, window=parse_reset(b.window, b.reset), per_gpu=b.per_gpu,
                   rates=dict(b.rates), source="config")


@dataclass(frozen=True)
class QuotaReading:
    """A live quota reading from the platform itself (it overrides config defaults)."""

    unit: str  # "gpu_hours" or "compute_units"
    used: float
    limit: float | None
    reserved: float = 0.0
    resets_at: datetime | None = None
    source: str = ""


@dataclass(frozen=True)
class SiteUsage:
    """What the site itself says this account used (a Slurm cluster's ``sshare``):
    shown beside orch's own count by ``orch quota``, never used for placement (a
    site's figure may be decayed for fair share, or cover other people's jobs)."""

    unit: str  # "gpu_hours"
    used: float
    limit: float | None = None
    source: str = ""  # e.g. "sshare, account proj-1234"


def reservation_rate(budget: Budget, spec: "JobSpec", offer: "Offer",
                     speeds: Mapping[str, float] = DEFAULT_SPEEDS) -> tuple[str | None, int, float]:
    """(GPU type, GPU count, units per hour) reserved for ``spec`` on ``offer``.

    A job that wants no GPU consumes no GPU hours (rate 0), wherever it runs.
    """
    gpu = pick_gpu(spec, offer, budget, speeds)
    count = spec.resources.gpu_count if (offer.gpus and spec.resources.wants_gpu) else 0
    return gpu, count, budget.rate(gpu, count)


def pick_gpu(spec: "JobSpec", offer: "Offer", budget: Budget | None = None,
             speeds: Mapping[str, float] = DEFAULT_SPEEDS) -> str | None:
    """The GPU type the job would get on ``offer``.

    The job's first listed preference that is on offer; for ``gpu: any`` the type that
    does the most work per budget unit (on compute units a T4 does 2.2x more work per
    unit than an A100), ties going to the fastest. Types too small for
    ``min_gpu_memory_gb`` are left out.
    """
    if not offer.gpus:
        return None
    for g in spec.resources.gpu:
        if g in offer.gpus:
            return g
    need = spec.resources.min_gpu_memory_gb or 0
    fits = [g for g in offer.gpus if MAX_MEMORY_GB.get(g, 1e9) >= need] or list(offer.gpus)
    if budget is None:
        return max(fits, key=lambda g: speeds.get(g, 1.0))

    def value(g: str) -> tuple[float, float]:
        rate = budget.rate(g, 1)
        speed = speeds.get(g, 1.0)
        return (speed / rate if rate > 0 else float("inf"), speed)

    return max(fits, key=value)


# ---------------------------------------------------------------------------- headroom


@dataclass(frozen=True)
class Span:
    """Units consumed at a constant rate over ``[start, end)`` (a reservation or a charge)."""

    start: float
    end: float
    rate: float  # units per hour

    @property
    def amount(self) -> float:
        return self.rate * max(0.0, self.end - self.start) / 3600

    def within(self, lo: float, hi: float) -> float:
        """Units of this span inside ``[lo, hi)``."""
        a, b = max(self.start, lo), min(self.end, hi)
        return self.rate * (b - a) / 3600 if b > a else 0.0


def overlap(amount: float, start: float, end: float, lo: float, hi: float) -> float:
    """The part of a charge of ``amount`` over ``[start, end]`` that falls in ``[lo, hi)``;
    a zero-length charge counts where it happened."""
    if end <= start:
        return amount if lo <= start < hi else 0.0
    a, b = max(start, lo), min(end, hi)
    return amount * (b - a) / (end - start) if b > a else 0.0


@dataclass(frozen=True)
class BudgetState:
    """One platform's budget as placement sees it: a pure value, copied on each reservation.

    Attributes:
        platform: configured name.
        budget: unit, limit, window, rates.
        now: when the snapshot was taken.
        used: units charged in the current window (the live reading's ``used`` when live).
        reservations: spans of active attempts (from ``now`` on when live, since the live
            ``used`` already counts what they ran so far).
        limit: the effective limit (a live reading overrides config).
        resets_at: end of the current window (a live reading's refresh time overrides).
        source: "ledger" or the live reading's source.
    """

    platform: str
    budget: Budget
    now: float
    used: float = 0.0
    reservations: tuple[Span, ...] = ()
    limit: float | None = None
    window_start: float = -INF
    resets_at: float = INF
    source: str = "ledger"

    @property
    def unlimited(self) -> bool:
        return self.limit is None

    def _windows(self, start: float, end: float) -> list[tuple[float, float, float]]:
        """(lo, hi, already used) for each window ``[start, end)`` touches."""
        out = [(self.window_start, self.resets_at, self.used)]
        t = self.resets_at
        while t < end and t != INF:
            lo, hi = self.budget.window.bounds(t)
            if hi <= lo or hi <= t:  # a live refresh time off the config grid: step a whole window
                hi = t + (self.resets_at - self.window_start if self.window_start > -INF else 7 * 86400)
            out.append((t, hi, 0.0))
            t = hi
        return out

    def reserved(self, lo: float | None = None, hi: float | None = None) -> float:
        lo = self.window_start if lo is None else lo
        hi = self.resets_at if hi is None else hi
        return sum(s.within(lo, hi) for s in self.reservations)

    def left(self) -> float | None:
        """Units left in the current window after charges and reservations (None = unlimited)."""
        if self.limit is None:
            return None
        return max(0.0, self.limit - self.used - self.reserved())

    def shortfall(self, start: float, end: float, rate: float) -> tuple[float, float, float, float] | None:
        """None when a new span ``[start, end)`` at ``rate`` fits every window it touches;
        else (units left, units needed, window start, window end) for the first window it
        would overrun."""
        if self.limit is None or rate <= 0 or end <= start:
            return None
        new = Span(start, end, rate)
        for lo, hi, used in self._windows(start, end):
            need = new.within(lo, hi)
            left = self.limit - used - self.reserved(lo, hi)
            if need > left + 1e-9:
                return max(0.0, left), need, lo, hi
        return None

    def longest(self, start: float, end: float, rate: float) -> float:
        """The longest ``d <= end - start`` such that ``[start, start + d)`` fits (seconds)."""
        if self.shortfall(start, end, rate) is None:
            return end - start
        lo, hi = 0.0, end - start
        for _ in range(40):  # usage grows with d, so bisect
            mid = (lo + hi) / 2
            if self.shortfall(start, start + mid, rate) is None:
                lo = mid
            else:
                hi = mid
        return lo

    def reserve(self, start: float, end: float, rate: float) -> "BudgetState":
        """A copy with one more reservation (placement's bookkeeping within one pass)."""
        return replace(self, reservations=self.reservations + (Span(start, end, rate),))

    def describe(self) -> str:
        """e.g. "1.2 GPU h left this week" for messages."""
        left = self.left()
        if left is None:
            return "unlimited"
        period = {"weekly": "this week", "monthly": "this month", "daily": "today"}.get(self.budget.window.kind, "")
        return f"{self.budget.fmt(left)} left {period}".rstrip()


def state(platform: str, budget: Budget, now: float, charges: Iterable[tuple[float, float, float]],
          reservations: Iterable[Span], live: "QuotaReading | None" = None) -> BudgetState:
    """Build a BudgetState from ledger rows (charges as (amount, start, end)) and the
    reservations of active attempts; a live reading, when present, replaces the charged
    ``used``, the limit and the reset time."""
    lo, hi = budget.window.bounds(now)
    if live is not None and live.unit == budget.unit and (live.limit is not None or budget.limit is not None):
        resets = live.resets_at.timestamp() if live.resets_at else hi
        if resets <= now:
            resets = hi
        live_lo = lo
        if resets != hi and resets != INF:
            a, b = budget.window.bounds(resets - 1)
            live_lo = resets - (b - a) if b != INF else -INF
        return BudgetState(
            platform=platform, budget=budget, now=now, used=live.used + live.reserved,
            reservations=tuple(Span(max(s.start, now), s.end, s.rate) for s in reservations if s.end > now),
            limit=live.limit if live.limit is not None else budget.limit,
            window_start=live_lo, resets_at=resets, source=live.source or "live",
        )
    used = sum(overlap(amount, start, end, lo, hi) for amount, start, end in charges)
    return BudgetState(platform=platform, budget=budget, now=now, used=used, reservations=tuple(reservations),
                       limit=budget.limit, window_start=lo, resets_at=hi, source=budget.source)


# ---------------------------------------------------------------------------- charges


def charge_span(reserve: Mapping[str, Any], budget: Budget | None, result: Mapping[str, Any] | None,
                started: float | None, ended: float, whole: bool = False) -> Span:
    """What one attempt is charged, given its reservation row.

    The time is the runner's own (``result.json`` ``started_at``/``ended_at``: the whole
    session, setup included) or, with no result (LOST, cancelled), from when the attempt
    started to ``ended``; ``whole`` charges the whole reservation (a run that cannot be
    stopped keeps running). The rate is the reservation's, except that compute units
    follow the GPU the run really got. A platform that knows what its site charged
    writes ``billed`` (``start``, ``end``, ``gpus``) into the result (Slurm, from
    ``sacct``): that time, and for GPU hours that GPU count, are charged instead.
    """
    r_start, r_end, amount = float(reserve["start"]), float(reserve["end"]), float(reserve["amount"])
    hours = (r_end - r_start) / 3600
    rate = amount / hours if hours > 0 else 0.0
    if result and budget is not None and budget.unit in RATED_UNITS:
        gpu = gpu_type((result.get("gpu") or {}).get("name"))
        if gpu and rate > 0:
            rate = budget.rate(gpu, 1)
    if whole:
        return Span(started or r_start, max(r_end, started or r_start), rate)
    site = _billed(result)
    if site is not None:
        start, end, gpus = site
        if gpus is not None and budget is not None and budget.unit == "gpu_hours":
            rate = budget.rate(None, gpus)
        return Span(start, end, rate)
    start = end = None
    if result:
        start, end = result.get("started_at"), result.get("ended_at")
    if not isinstance(start, (int, float)) or not isinstance(end, (int, float)) or end < start:
        start, end = (started or r_start), ended
    return Span(float(start), float(max(start, end)), rate)


def _billed(result: Mapping[str, Any] | None) -> tuple[float, float, int | None] | None:
    """``result["billed"]`` as (start, end, GPUs), or None when absent or malformed."""
    doc = (result or {}).get("billed")
    if not isinstance(doc, Mapping):
        return None
    start, end, gpus = doc.get("start"), doc.get("end"), doc.get("gpus")
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    if not (number(start) and number(end)) or end < start:
        return None
    gpus = gpus if isinstance(gpus, int) and not isinstance(gpus, bool) and 0 <= gpus <= 1024 else None
    return float(start), float(end), gpus


def bar(used: float, reserved: float, limit: float | None, width: int = 20) -> str:
    """A text bar: '#' used, '+' reserved, '.' free."""
    if not limit:
        return "-" * width
    u = min(width, round(width * used / limit))
    r = min(width - u, round(width * reserved / limit))
    return "#" * u + "+" * r + "." * (width - u - r)


def reading_to_json(reading: "QuotaReading | None") -> dict | None:
    if reading is None:
        return None
    return {"unit": reading.unit, "used": reading.used, "limit": reading.limit, "reserved": reading.reserved,
            "resets_at": reading.resets_at.timestamp() if reading.resets_at else None, "source": reading.source}


def reading_from_json(doc: Mapping[str, Any] | None) -> "QuotaReading | None":
    if not doc:
        return None
    resets = datetime.fromtimestamp(doc["resets_at"], timezone.utc) if doc.get("resets_at") else None
    return QuotaReading(unit=doc["unit"], used=float(doc["used"]), limit=doc.get("limit"),
                        reserved=float(doc.get("reserved") or 0.0), resets_at=resets, source=doc.get("source", ""))
