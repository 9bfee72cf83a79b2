"""Placement: a pure function from (queued jobs, platform offers, ledger, running attempts,
now) to one decision per job — a platform, or a reason to wait and when that may change.

No clock, store or network in here, so a week of ticks can be simulated in milliseconds
(``bench/simulate.py``) and every decision can be explained (``orch plan``).

For each job, in queue order (priority, then FIFO), every allowed platform is checked:
capability (GPU type and memory, count, internet, secrets), availability, the job's
failover back-off, session length against ``max_runtime`` (unless the job checkpoints,
when it runs as a chain of segments), and quota headroom in every window the attempt
would touch. The platforms left are ranked by the job's ``platforms:`` preference, then by
estimated finish time, using per-GPU speed factors (defaults below, refined from finished
attempts by :func:`learn_speeds`). A job waits for a busy platform only when that is
expected to finish it clearly sooner than a free one.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from .durations import format_duration
from .platforms.base import Feature, Offer
from .gpus import DEFAULT_SPEEDS, GPU_TYPES
from .quota import BudgetState, pick_gpu, reservation_rate
from .spec import JobSpec
from .windows import format_when

#: Wait for a busy platform only if it is expected to finish the job in at most this
#: fraction of the time a free platform would take.
WAIT_GAIN = 0.75


@dataclass(frozen=True)
class Candidate:
    """What placement needs to know about one queued job.

    Attributes:
        remaining: max runtime left (a chain's later segments get what earlier ones left).
        history: GPU type ("CPU" for none) -> runtime (s) of this job's bundle in earlier
            successful runs; the best estimate of how long it takes there.
        digest: the job's bundle digest (what ``history`` is looked up by).
    """

    id: str
    spec: JobSpec
    pin: str | None = None
    avoid: Mapping[str, float] = field(default_factory=dict)  # platform -> avoided until (epoch)
    remaining: float | None = None
    history: Mapping[str, float] = field(default_factory=dict)
    digest: str = ""
    refused: Mapping[str, str] = field(default_factory=dict)  # platform -> why this controller may not use it

    @property
    def runtime(self) -> float:
        return self.spec.resources.max_runtime if self.remaining is None else self.remaining


@dataclass(frozen=True)
class Running:
    """An active attempt, for concurrency and for when its slot should free up
    (``expected_end``: an estimate, or the end of its reservation as an upper bound)."""

    platform: str
    expected_end: float


@dataclass(frozen=True)
class Place:
    """Run the job on ``platform`` now.

    Attributes:
        max_runtime_s: the runner's deadline (what is left of ``max_runtime``).
        session_s: stop this long after start with a checkpoint (a chain segment); None =
            run to the end.
        reserve_s: how long the ledger reserves (the segment, or ``max_runtime_s``).
        gpu, gpus, rate: the GPU type and count reserved and the budget units per hour.
        estimate_s: expected runtime there.
        why: a sentence for ``orch plan``.
        verdicts: (platform, why not) for the platforms passed over.
    """

    job_id: str
    platform: str
    max_runtime_s: float | None = None
    session_s: float | None = None
    reserve_s: float | None = None
    gpu: str | None = None
    gpus: int = 0
    rate: float = 0.0
    estimate_s: float | None = None
    why: str = ""
    verdicts: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Wait:
    """Keep the job queued: ``reason`` names each platform's obstacle; ``until`` is the
    earliest time one of them is expected to lift (None when nothing will change by itself)."""

    job_id: str
    reason: str
    until: float | None = None
    verdicts: tuple[tuple[str, str], ...] = ()


Decision = Place | Wait


def allowed_platforms(c: Candidate, configured: Sequence[str]) -> list[str]:
    """The job's candidate platforms in preference order."""
    if c.pin:
        return [c.pin] if c.pin in configured else []
    if c.spec.platforms:
        return [p for p in c.spec.platforms if p in configured]
    return list(configured)


def misfit(spec: JobSpec, offer: Offer) -> str | None:
    """Why ``offer`` can never run ``spec`` as it stands (None when it can); quota and
    session time are judged by :func:`place`."""
    res = spec.resources
    if res.wants_gpu and not offer.gpus and not res.cpu_fallback:
        return "has no GPU"
    if res.wants_gpu and offer.gpus:
        wanted = [g for g in res.gpu if g != "any"]
        if wanted and "any" not in res.gpu and not set(wanted) & set(offer.gpus):
            return f"offers {'/'.join(offer.gpus)}, job needs {'/'.join(wanted)}"
        if res.min_gpu_memory_gb and offer.gpu_memory_gb and offer.gpu_memory_gb < res.min_gpu_memory_gb:
            return f"GPU has {offer.gpu_memory_gb:g} GB, job needs {res.min_gpu_memory_gb:g} GB"
        if offer.gpu_count and res.gpu_count > offer.gpu_count:
            return f"has {offer.gpu_count} GPU(s), job needs {res.gpu_count}"
    if spec.internet and (not offer.internet or Feature.INTERNET in offer.unsupported):
        why = offer.unsupported.get(Feature.INTERNET) or "has no internet"
        return f"{why}; the job sets internet: true (the default)"
    if not spec.internet and Feature.OFFLINE_SETUP in offer.unsupported and setup_downloads(spec):
        return offer.unsupported[Feature.OFFLINE_SETUP]
    if spec.secrets and Feature.SECRETS in offer.unsupported:
        return offer.unsupported[Feature.SECRETS]
    if not chains(spec, offer) and offer.session_seconds and res.max_runtime > offer.session_seconds:
        fix = (offer.unsupported[Feature.CHECKPOINT] if spec.checkpoint is not None
               else "declare checkpoint: to run it as a chain")
        return (f"sessions last {format_duration(offer.session_seconds)}, job needs "
                f"{format_duration(res.max_runtime)}; {fix}")
    return None


def setup_downloads(spec: JobSpec) -> bool:
    """Whether the job's ``setup:`` needs a package index: anything but local wheel or
    sdist paths, unless pip is told ``--no-index`` (a wheelhouse in the code or a dataset)."""
    setup = spec.setup
    if "--no-index" in (r.strip() for r in setup.requirements):
        return False
    if setup.file:
        return True
    local = (".whl", ".tar.gz", ".zip")
    return any(not (r.startswith(("./", "/", "../")) or r.endswith(local)) for r in setup.requirements
               if not r.lstrip().startswith("-"))


def chains(spec: JobSpec, offer: Offer) -> bool:
    """Whether ``spec`` may run on ``offer`` as a chain of checkpointed segments."""
    return spec.checkpoint is not None and Feature.CHECKPOINT not in offer.unsupported


# ---------------------------------------------------------------------------- speeds


def learn_speeds(observations: Iterable[tuple[str, str, float]],
                 defaults: Mapping[str, float] = DEFAULT_SPEEDS, weight: float = 1.0) -> dict[str, float]:
    """Per-GPU speed factors refined from finished runs.

    Args:
        observations: (job digest, GPU type or "CPU", runtime seconds) of successful,
            unchained attempts. Only digests that ran on two or more GPU types say
            anything about relative speed.
        defaults: the prior (T4 = 1.0 is the fixed reference).
        weight: how many observations the prior is worth.

    Returns:
        GPU type -> speed relative to a T4.

    Design choice: a least-squares fit of log-speeds to every observed ratio, pulled
    towards the defaults, rather than one ratio per GPU: it uses chains of evidence
    (T4 vs L4 and L4 vs A100 say something about T4 vs A100) and one odd run cannot
    swing a factor far.
    """
    runtimes: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for digest, gpu, seconds in observations:
        if gpu and seconds and seconds > 0:
            runtimes[digest][gpu].append(float(seconds))
    pairs: dict[str, list[tuple[str, float]]] = defaultdict(list)  # g -> [(h, log(r_h / r_g))]
    for per_gpu in runtimes.values():
        med = {g: sorted(v)[len(v) // 2] for g, v in per_gpu.items()}
        for g in med:
            for h in med:
                if g != h:
                    pairs[g].append((h, math.log(med[h] / med[g])))
    x = {g: math.log(defaults.get(g, 1.0)) for g in set(defaults) | set(pairs)}
    for _ in range(30):
        for g, obs in pairs.items():
            if g == "T4":
                continue
            prior = math.log(defaults.get(g, 1.0))
            x[g] = (weight * prior + sum(x[h] + d for h, d in obs)) / (weight + len(obs))
    return {g: round(math.exp(v), 4) for g, v in x.items()}


def estimate(c: Candidate, gpu: str | None, speeds: Mapping[str, float]) -> float:
    """Expected runtime (s) of ``c`` on ``gpu`` (None = CPU), never above what is left.

    From this job's own history when there is one (scaled by the speed ratio when it ran
    on another GPU); otherwise ``max_runtime`` is taken as the time on the slowest GPU the
    job accepts, so faster GPUs are expected to finish proportionally sooner.
    """
    left = c.runtime
    if not c.spec.resources.wants_gpu:
        seen = list(c.history.values())
        return min(left, sorted(seen)[len(seen) // 2]) if seen else left
    key = gpu or "CPU"
    s = speeds.get(key, 1.0)
    if key in c.history:
        return min(left, c.history[key])
    for other, seconds in c.history.items():
        return min(left, seconds * speeds.get(other, 1.0) / s)
    accepted = [g for g in c.spec.resources.gpu if g != "any"] or list(GPU_TYPES)
    slowest = min(speeds.get(g, 1.0) for g in accepted)
    return min(left, left * slowest / s)


# ---------------------------------------------------------------------------- placement


@dataclass
class _Option:
    name: str
    pref: int
    order: int
    start: float
    duration: float
    max_runtime: float
    session: float | None
    reserve: float
    gpu: str | None
    gpus: int
    rate: float
    note: str = ""

    @property
    def finish(self) -> float:
        return self.start + self.duration


def place(jobs: Sequence[Candidate], offers: Mapping[str, Offer],
          running: Mapping[str, int] | Sequence[Running], now: float,
          ledger: Mapping[str, BudgetState] | None = None,
          speeds: Mapping[str, float] | None = None) -> list[Decision]:
    """Decide, in queue order, where each job goes now.

    Args:
        jobs: queued jobs, already in dispatch order (priority, then FIFO).
        offers: platform name -> what it offers now (config order = default preference).
        running: active attempts (``Running``), or just their count per platform.
        now: epoch seconds.
        ledger: platform -> its budget state; a platform without one is unlimited.
        speeds: GPU type -> speed relative to a T4 (defaults: gpus.DEFAULT_SPEEDS).

    Returns:
        One Place or Wait per job, in the same order. Each Place is booked against the
        ledger and the platform's concurrency before the next job is considered.
    """
    book = _Book(jobs, offers, running, now, ledger, speeds)
    decisions: list[Decision] = []
    for c in jobs:
        decisions.append(_decide(c, offers, book))
    return decisions


class _Book:
    """What one pass of :func:`place` has booked so far: slots taken on each platform,
    budget reserved, and the budget kept for captive jobs. Each decision updates it
    before the next job is considered."""

    def __init__(self, jobs: Sequence[Candidate], offers: Mapping[str, Offer],
                 running: Mapping[str, int] | Sequence[Running], now: float,
                 ledger: Mapping[str, BudgetState] | None, speeds: Mapping[str, float] | None):
        self.now = now
        self.speeds = {**DEFAULT_SPEEDS, **(speeds or {})}
        self.budgets = dict(ledger or {})
        self.used: dict[str, int] = defaultdict(int)
        self.slots: dict[str, list[float]] = defaultdict(list)  # expected end of each occupied slot
        if isinstance(running, Mapping):
            self.used.update(running)
        else:
            for r in running:
                self.used[r.platform] += 1
                self.slots[r.platform].append(max(r.expected_end, now))
        self.offer_quota = {n: o.quota_left_seconds for n, o in offers.items()}
        self.configured = list(offers)
        self.demand = _captive_demand(jobs, offers, self.budgets, self.speeds, self.configured)
        self.kept = {n: _keepable(per_job, self.budgets.get(n)) for n, per_job in self.demand.items()}

    def keep(self, c: Candidate, name: str) -> float:
        """What ``c`` must leave on ``name`` for captive jobs (a captive job itself may use it all)."""
        return 0.0 if c.id in self.demand.get(name, {}) else self.kept.get(name, 0.0)

    def full(self, name: str, offer: Offer) -> tuple[str, float | None] | None:
        """None when ``name`` has a free slot; else (why, when the first slot frees, if known)."""
        used = self.used[name]
        if used < offer.max_concurrent:
            return None
        taken = sorted(self.slots[name])
        free_at = taken[0] if len(taken) >= used and taken else None
        hint = f"; a slot frees by {format_when(free_at, self.now)}" if free_at and free_at > self.now else ""
        return f"busy ({used}/{offer.max_concurrent} running{hint})", free_at

    def hold(self, target: _Option) -> None:
        """Hold a busy slot for a waiting job, so that the next job does not count on it too."""
        taken = sorted(self.slots[target.name])
        taken[0] = target.finish
        self.slots[target.name] = taken

    def take(self, c: Candidate, best: _Option) -> None:
        """Book ``c`` on ``best``: a slot, its reservation, and no more captive demand."""
        self.used[best.name] += 1
        self.slots[best.name].append(best.finish)
        for n, per_job in self.demand.items():
            if c.id in per_job:
                per_job.pop(c.id)
                self.kept[n] = _keepable(per_job, self.budgets.get(n))
        if best.rate > 0 and best.name in self.budgets:
            self.budgets[best.name] = self.budgets[best.name].reserve(self.now, self.now + best.reserve, best.rate)
        if self.offer_quota.get(best.name) is not None and c.spec.resources.wants_gpu:
            self.offer_quota[best.name] = max(0.0, self.offer_quota[best.name] - best.reserve)


@dataclass
class _Survey:
    """One job against each platform it allows: the options free now, those behind a
    busy slot, why each other platform was passed over, and when an obstacle may lift."""

    free: list[_Option] = field(default_factory=list)
    busy: list[_Option] = field(default_factory=list)
    verdicts: list[tuple[str, str]] = field(default_factory=list)
    untils: list[float] = field(default_factory=list)


def _rank(o: _Option) -> tuple[int, float, int]:
    return (o.pref, o.finish, o.order)


def _decide(c: Candidate, offers: Mapping[str, Offer], book: _Book) -> Decision:
    """Where ``c`` goes now, booked in ``book`` when it is placed (or waits for a busy slot)."""
    names = allowed_platforms(c, book.configured)
    if not names:
        wanted = c.pin or ", ".join(c.spec.platforms)
        return Wait(c.id, f"none of the job's platforms ({wanted}) is configured")
    survey = _survey(c, names, offers, book)
    now = book.now
    best = min(survey.free, key=_rank) if survey.free else None
    target = _worth_waiting_for(survey.busy, best, now)
    if target is not None and best is not None:
        book.hold(target)
        return Wait(c.id, f"waiting for {target.name}: expected to finish it {format_when(target.finish, now)}, "
                          f"sooner than {best.name} ({format_when(best.finish, now)})",
                    until=target.start, verdicts=tuple(survey.verdicts))
    if best is None:
        return Wait(c.id, "; ".join(f"{n}: {w}" for n, w in survey.verdicts),
                    until=min(survey.untils) if survey.untils else None, verdicts=tuple(survey.verdicts))
    book.take(c, best)
    return _placed(c, best, survey.verdicts)


def _survey(c: Candidate, names: list[str], offers: Mapping[str, Offer], book: _Book) -> _Survey:
    """Consider ``c`` on each of ``names`` (in preference order)."""
    ranked = bool(c.pin or c.spec.platforms)
    now = book.now
    out = _Survey()
    for pref, name in enumerate(names):
        offer = offers[name]
        option, why, until = _consider(c, offer, book.budgets.get(name), book.offer_quota.get(name), now,
                                       book.speeds, book.keep(c, name))
        if option is None:
            out.verdicts.append((name, why))
            if until is not None and until > now:
                out.untils.append(until)
            continue
        option.pref = pref if ranked else 0
        option.order = book.configured.index(name)
        full = book.full(name, offer)
        if full is None:
            out.free.append(option)
            continue
        why, free_at = full
        out.verdicts.append((name, why))
        if free_at is not None:
            option.start = max(free_at, now)
            out.busy.append(option)
            out.untils.append(max(free_at, now))
    return out


def _worth_waiting_for(busy: list[_Option], best: _Option | None, now: float) -> _Option | None:
    """The busy option expected to finish the job clearly sooner (``WAIT_GAIN``) than the
    best free one, if any; None when there is no free option to compare with."""
    if best is None:
        return None
    better = [b for b in busy if b.pref <= best.pref and b.finish - now < WAIT_GAIN * (best.finish - now)]
    return min(better, key=_rank) if better else None


def _placed(c: Candidate, best: _Option, verdicts: list[tuple[str, str]]) -> Place:
    why = f"est. {format_duration(best.duration)} on {best.gpu or 'CPU'}"
    if best.session is not None:
        why += f"; segment of {format_duration(best.session)} ({format_duration(best.max_runtime)} left)"
    if best.note:
        why += f"; {best.note}"
    return Place(
        c.id, best.name, max_runtime_s=best.max_runtime, session_s=best.session, reserve_s=best.reserve,
        gpu=best.gpu, gpus=best.gpus, rate=best.rate, estimate_s=best.duration, why=why,
        verdicts=tuple(verdicts))


def _unlimited(budget: BudgetState | None) -> bool:
    return budget is None or budget.limit is None


def _captive_demand(jobs: Sequence[Candidate], offers: Mapping[str, Offer], budgets: Mapping[str, BudgetState],
                    speeds: Mapping[str, float], configured: list[str]) -> dict[str, dict[str, float]]:
    """platform -> {job id: budget units} that queued jobs which can run on no unlimited
    platform (a session too short for them, a GPU too small) will need from it.

    Design choice: a job that could also run on an unlimited platform (a lab machine at
    night) does not take budget that such captive jobs need: spending Kaggle's weekly hours
    on work the lab could have done leaves the long jobs nowhere to go until the reset.
    Only platforms that are available now, or will be at a known time, count as places a
    job can go.
    """
    open_unlimited = [n for n, o in offers.items() if _unlimited(budgets.get(n)) and
                      (o.available or o.available_at is not None)]
    out: dict[str, dict[str, float]] = {}
    for c in jobs:
        names = allowed_platforms(c, configured)
        if any(n in open_unlimited and misfit(c.spec, offers[n]) is None for n in names):
            continue
        for n in names:
            b = budgets.get(n)
            if _unlimited(b) or misfit(c.spec, offers[n]) is not None:
                continue
            _gpu, _count, rate = reservation_rate(b.budget, c.spec, offers[n], speeds)
            session = offers[n].session_seconds
            length = min(c.runtime, session) if (chains(c.spec, offers[n]) and session) else c.runtime
            if rate > 0:
                out.setdefault(n, {})[c.id] = rate * length / 3600
    return out


def _keepable(demand: Mapping[str, float], budget: BudgetState | None) -> float:
    """Budget units other jobs must leave for these captive jobs.

    Design choice: a captive job that does not fit in what is left *now* still keeps its
    share: running attempts usually end before their reservation does, and the budget they
    free must not be taken by work that could have gone elsewhere (in the simulation,
    keeping only what fits now made the median makespan 12 % longer). A job that needs
    more than the whole limit could never fit, so it keeps nothing.
    """
    if budget is None or budget.limit is None:
        return 0.0
    return sum(units for units in demand.values() if units <= budget.limit)


def _consider(c: Candidate, offer: Offer, budget: BudgetState | None, offer_quota: float | None, now: float,
              speeds: Mapping[str, float], keep: float = 0.0) -> tuple[_Option | None, str, float | None]:
    """One job on one platform: an option, or (None, why not, when that may change).
    ``keep``: budget units this job must leave for jobs that can run nowhere else."""
    why = misfit(c.spec, offer)
    if why is not None:
        return None, why, None
    if offer.platform in c.refused:
        return None, c.refused[offer.platform], None
    if not offer.available:
        return None, offer.reason or "unavailable", offer.available_at
    if c.avoid.get(offer.platform, 0) > now:
        until = c.avoid[offer.platform]
        return None, f"lost an attempt of this job; avoided for {format_duration(until - now)}", until
    remaining = c.runtime
    caps = [s for s in (offer.session_seconds, offer.time_left_seconds) if s is not None]
    cap = min(caps) if caps else None
    chain = chains(c.spec, offer)
    if cap is not None and cap < remaining:
        if not chain:
            return None, f"{format_duration(cap)} left in its session, job needs {format_duration(remaining)}", \
                offer.available_at
        if cap < min(remaining, offer.min_segment_seconds):
            return None, (f"{format_duration(cap)} left in its session, shorter than a useful segment "
                          f"({format_duration(offer.min_segment_seconds)})"), offer.available_at
    length = min(remaining, cap) if (chain and cap is not None) else remaining
    note = ""
    gpu, gpus, rate = (reservation_rate(budget.budget, c.spec, offer, speeds) if budget is not None
                       else (pick_gpu(c.spec, offer, None, speeds), 0, 0.0))
    gpu_job = c.spec.resources.wants_gpu
    if rate > 0 or (gpu_job and offer_quota is not None):
        fits = length
        short = budget.shortfall(now, now + length, rate) if budget is not None else None
        if short is not None:
            fits = budget.longest(now, now + length, rate) if chain else 0.0
        if gpu_job and offer_quota is not None and offer_quota < fits:
            fits = offer_quota if chain else 0.0
        kept = False
        if keep > 0 and budget is not None and budget.limit is not None and fits > 0:
            spare = max(0.0, (budget.left() or 0.0) - keep) / rate * 3600
            if spare < fits:
                fits, kept = (spare if chain else 0.0), True
        if fits < length:
            if not chain or fits < min(remaining, offer.min_segment_seconds):
                if kept:
                    return None, (f"its {budget.describe()} is kept for queued jobs that can run nowhere else "
                                  f"({budget.budget.fmt(keep)})"), budget.resets_at if budget.resets_at != math.inf else None
                return _quota_reason(budget, short, offer, offer_quota, length, now)
            note = "segment cut to the quota left"
            length = fits
    session = length if length < remaining else None
    duration = estimate(c, gpu, speeds)
    return _Option(offer.platform, 0, 0, now, duration, remaining, session, length, gpu, gpus, rate, note), "", None


def _quota_reason(budget: BudgetState | None, short: tuple[float, float, float, float] | None, offer: Offer,
                  offer_quota: float | None, length: float, now: float) -> tuple[None, str, float | None]:
    """(None, "1.2 GPU h left this week, job needs 3.0 GPU h — refresh Sat 00:00 UTC", reset)."""
    if budget is not None and short is not None:
        left, need, lo, hi = short
        fmt = budget.budget.fmt
        if lo <= budget.window_start or lo <= now:
            period = {"weekly": " this week", "monthly": " this month", "daily": " today"}.get(
                budget.budget.window.kind, "")
            text = f"{fmt(left)} left{period}, job needs {fmt(need)}"
        else:  # it fits now but would overrun the window after the reset it runs into
            text = (f"it would run past the reset into a window with {fmt(left)} left "
                    f"(already reserved by running attempts), needing {fmt(need)} there")
        until = hi if hi != math.inf else None
        if lo > now and lo != math.inf:
            until = lo  # after the next reset the job fits in one window, or finds more room
        if until is not None:
            text += f" — refresh {format_when(until, now)}"
        return None, text, until
    left = offer_quota or 0.0
    text = f"GPU quota: {format_duration(left)} left, job may need {format_duration(length)}"
    if offer.quota_resets_at:
        text += f" — refresh {format_when(offer.quota_resets_at, now)}"
    return None, text, offer.quota_resets_at
