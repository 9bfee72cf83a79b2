"""Replay a synthetic week of GPU jobs through the real scheduler with a virtual clock.

The platforms are the issue's: Kaggle (30 GPU hours a week, refilled Saturday 00:00 UTC,
12-hour sessions, 2 at once), Colab Pro (100 compute units a month at the T4/L4/A100
rates, 24-hour sessions, 2 at once) and a lab machine over SSH (one A100 80 GB, free
22:00-06:00 UTC). The jobs are a seeded mix of ~60 of 0.5 to 10 T4-hours, some
checkpointing (they run as chains of segments), some needing 40 GB of GPU memory.

``orch`` placement is ``orchestrator.scheduler.place`` itself, fed by the real quota
code (``quota.state`` over the ledger of this run); the two baselines are FIFO on a
single platform (Kaggle) and round-robin over all three, both blind to quotas. Every
platform enforces its own limits as the real ones do: a session that exhausts the
quota, or outlives the lab's hours, is killed (counted as an overrun) and its job
starts again from its last checkpoint.

Printed per policy: GPU hours used / available while the queue is deep, overruns,
jobs finished, makespan against a lower bound (a fluid relaxation: the work that can only run on
a set of platforms may split at will across that set at its best speed, within its
quotas and hours; and no job can end before it arrives plus its fastest possible run),
and the wall time of the run.

    python bench/simulate.py [--seed 7] [--jobs 60] [--weeks 6]
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator import gpus as gpu_catalogue, quota, scheduler, windows  # noqa: E402
from orchestrator.platforms.base import Offer  # noqa: E402
from orchestrator.spec import JobSpec  # noqa: E402

HOUR = 3600.0
#: Monday 2025-01-06 00:00 UTC: the Kaggle reset falls on the fifth day.
START = datetime(2025, 1, 6, tzinfo=timezone.utc).timestamp()
SPEEDS = gpu_catalogue.DEFAULT_SPEEDS


# ---------------------------------------------------------------------------- model


@dataclass(frozen=True)
class SimPlatform:
    """A platform as the scheduler sees it (its Offer) plus what it enforces (budget, hours)."""

    name: str
    gpus: tuple[str, ...]
    gpu_memory_gb: float
    max_concurrent: int
    session_s: float | None
    budget: quota.Budget
    hours: str | None = None
    gpu_count: int = 1
    min_segment: float = 600.0

    def offer(self, now: float) -> Offer:
        o = Offer(platform=self.name, type="sim", gpus=self.gpus, gpu_memory_gb=self.gpu_memory_gb,
                  gpu_count=self.gpu_count, max_concurrent=self.max_concurrent, session_seconds=self.session_s,
                  min_segment_seconds=self.min_segment)
        if self.hours:  # as the controller shapes it (planning.with_settings)
            o = Offer(**{**o.__dict__, "session_seconds": min(self.session_s or math.inf, windows.hours_length(self.hours))})
            inside, change = windows.open_hours(self.hours, now)
            if not inside:
                return Offer(**{**o.__dict__, "available": False, "available_at": change, "reason": "closed"})
            return Offer(**{**o.__dict__, "time_left_seconds": change - now})
        return o


def default_platforms() -> list[SimPlatform]:
    return [
        SimPlatform("kaggle", ("T4",), 15.0, 2, 12 * HOUR,
                    quota.Budget(limit=30.0, window=windows.Window("weekly", 5), per_gpu=False, source="kaggle"),
                    gpu_count=2),
        SimPlatform("colab", ("T4", "L4", "A100"), 40.0, 2, 24 * HOUR,
                    quota.Budget(unit="compute_units", limit=100.0, window=windows.Window("monthly"), source="colab")),
        SimPlatform("lab", ("A100",), 80.0, 1, None, quota.Budget(source="lab"), hours="22:00-06:00"),
    ]


@dataclass
class SimJob:
    id: str
    arrival: float
    work: float               # T4-seconds of work
    spec: JobSpec
    priority: int = 0
    left: float = 0.0         # work left (T4-seconds)
    runtime_left: float = 0.0  # max_runtime left (a chain's segments use it up)
    done_at: float | None = None
    failed: bool = False
    tries: int = 0
    rr: str | None = None      # round-robin assignment

    def __post_init__(self) -> None:
        self.left = self.work
        self.runtime_left = self.spec.resources.max_runtime

    @property
    def big(self) -> bool:
        return bool(self.spec.resources.min_gpu_memory_gb)


def make_jobs(seed: int = 7, n: int = 60, start: float = START) -> list[SimJob]:
    """A seeded mix: 0.5-10 T4-hours (uniform), max_runtime 1.2-1.5x that, 30 % with a
    checkpoint (and every job that no session could hold), 15 % needing 40 GB, 10 % at
    priority 5; two thirds queued at the start of the week, the rest arriving over its
    first five days."""
    rng = random.Random(seed)
    jobs = []
    for i in range(n):
        hours = rng.uniform(0.5, 10.0)
        max_runtime = hours * rng.uniform(1.2, 1.5) * HOUR
        big = rng.random() < 0.15
        # Users of free platforms checkpoint what no session could hold: anything over
        # Kaggle's 12 h, and 40 GB jobs over the lab's 8-hour night.
        ckpt = rng.random() < 0.3 or max_runtime > 12 * HOUR or (big and max_runtime > 8 * HOUR)
        res = {"gpu": "any", "max_runtime": f"{int(max_runtime)}s"}
        if big:
            res["min_gpu_memory_gb"] = 40
        spec = JobSpec.model_validate({"name": f"job{i:02d}", "run": "train", "resources": res,
                                       "checkpoint": "ckpt" if ckpt else None,
                                       "priority": 5 if rng.random() < 0.1 else 0})
        arrival = start if rng.random() < 2 / 3 else start + rng.uniform(0, 5 * 86400)
        jobs.append(SimJob(f"j{i:02d}", arrival, hours * HOUR, spec, spec.priority))
    return jobs


@dataclass
class Run:
    job: SimJob
    platform: SimPlatform
    gpu: str | None
    start: float
    end: float
    reserve_end: float
    rate: float
    outcome: str              # succeeded | checkpointed | failed
    work: float               # T4-seconds done if it ends as planned


@dataclass
class Report:
    policy: str
    finished: int
    total: int
    makespan_h: float | None
    bound_h: float
    used_h: float
    available_h: float
    overruns: int
    worst_window: float       # max over budget windows of used / limit
    wall_s: float
    deep_h: float             # hours with at least as many jobs waiting as there are slots
    windows: dict = field(default_factory=dict)

    @property
    def utilisation(self) -> float:
        return self.used_h / self.available_h if self.available_h else 0.0


# ---------------------------------------------------------------------------- the run


class Sim:
    """One policy over one job mix; ``run()`` returns a Report."""

    def __init__(self, jobs: list[SimJob], platforms: list[SimPlatform], policy: str = "orch",
                 start: float = START, weeks: float = 6.0, grace: float = 60.0):
        self.jobs = jobs
        self.platforms = {p.name: p for p in platforms}
        self.policy = policy
        self.start = start
        self.horizon = start + weeks * 7 * 86400
        self.grace = grace
        self.charges: dict[str, list[tuple[float, float, float]]] = {p.name: [] for p in platforms}
        self.running: list[Run] = []
        self.queue: list[SimJob] = []
        self.arrivals = sorted(jobs, key=lambda j: j.arrival)
        self.overruns = 0
        self.deep: list[tuple[float, float]] = []  # intervals with at least `slots` jobs waiting
        self.slots = sum(p.max_concurrent for p in platforms)
        self.rr_next = 0

    # -- accounting
    def usage(self, p: SimPlatform, lo: float, hi: float, now: float) -> float:
        """Units used in [lo, hi) by charges and by runs up to ``now``."""
        used = sum(quota.overlap(a, s, e, lo, hi) for a, s, e in self.charges[p.name])
        for r in self.running:
            if r.platform is p:
                used += quota.Span(r.start, min(now, r.end), r.rate).within(lo, hi)
        return used

    def exhaustion(self, p: SimPlatform, now: float) -> float | None:
        """When the running attempts on ``p`` use up its current window, if before they end."""
        if p.budget.limit is None:
            return None
        lo, hi = p.budget.window.bounds(now)
        rate = sum(r.rate for r in self.running if r.platform is p)
        if rate <= 0:
            return None
        left = p.budget.limit - self.usage(p, lo, hi, now)
        t = now + max(0.0, left) / rate * HOUR
        return t if t < hi and t < max(r.end for r in self.running if r.platform is p) else None

    def charge(self, r: Run, end: float) -> None:
        self.charges[r.platform.name].append((quota.Span(r.start, end, r.rate).amount, r.start, end))

    # -- starting a run
    def launch(self, job: SimJob, p: SimPlatform, gpu: str | None, now: float, max_runtime: float,
               session: float | None, reserve: float, rate: float) -> None:
        speed = SPEEDS.get(gpu or "CPU", 1.0)
        need = job.left / speed
        if session is not None and need > session - self.grace:
            run = session - self.grace + 0.1 * self.grace  # stopped, writes its checkpoint within the grace
            outcome, work = "checkpointed", (session - self.grace) * speed
        elif need <= max_runtime:
            run, outcome, work = need, "succeeded", job.left
        else:
            run, outcome, work = max_runtime + self.grace, "failed", 0.0
        job.tries += 1
        self.running.append(Run(job, p, gpu, now, now + run, now + reserve, rate, outcome, work))

    # -- ending runs
    def finish(self, r: Run, now: float, killed: bool = False) -> None:
        self.running.remove(r)
        self.charge(r, now)
        job = r.job
        if killed:  # the platform stopped it: work since the last checkpoint is lost
            self.overruns += 1
            job.runtime_left = max(job.runtime_left, 60.0)
            if job.tries > 20:
                job.failed = True
            else:
                self.queue.append(job)
            return
        job.runtime_left = max(60.0, job.runtime_left - (now - r.start))
        if r.outcome == "succeeded":
            job.left, job.done_at = 0.0, now
        elif r.outcome == "checkpointed":
            job.left = max(0.0, job.left - r.work)
            self.queue.append(job)
        else:
            job.failed = True

    # -- policies
    def place_orch(self, now: float) -> float | None:
        order = sorted(self.queue, key=lambda j: (-j.priority, j.arrival, j.id))
        cands = [scheduler.Candidate(j.id, j.spec, remaining=j.runtime_left) for j in order]
        offers = {name: p.offer(now) for name, p in self.platforms.items()}
        ledger = {}
        for name, p in self.platforms.items():
            spans = [quota.Span(r.start, r.reserve_end, r.rate) for r in self.running if r.platform is p]
            ledger[name] = quota.state(name, p.budget, now, self.charges[name], spans)
        running = [scheduler.Running(r.platform.name, r.end) for r in self.running]
        by_id = {j.id: j for j in order}
        wake = None
        for d in scheduler.place(cands, offers, running, now, ledger, SPEEDS):
            if isinstance(d, scheduler.Place):
                job = by_id[d.job_id]
                self.queue.remove(job)
                self.launch(job, self.platforms[d.platform], d.gpu, now, d.max_runtime_s or job.runtime_left,
                            d.session_s, d.reserve_s or d.max_runtime_s or job.runtime_left, d.rate)
            elif d.until is not None and d.until > now:
                wake = d.until if wake is None else min(wake, d.until)
        return wake

    def place_naive(self, now: float) -> None:
        """FIFO per platform, blind to quotas; the platform refuses a start only when its
        quota is already spent or it is closed."""
        order = sorted(self.queue, key=lambda j: (-j.priority, j.arrival, j.id))
        names = ["kaggle"] if self.policy == "fifo" else list(self.platforms)
        busy = {n: sum(1 for r in self.running if r.platform.name == n) for n in names}
        for job in order:
            if self.policy == "round-robin" and job.rr is None:
                fitting = [n for n in names if scheduler.misfit(job.spec, self.platforms[n].offer(now)) is None
                           or self.platforms[n].hours]
                fitting = [n for n in fitting if not (job.big and self.platforms[n].gpu_memory_gb < 40)]
                job.rr = fitting[self.rr_next % len(fitting)] if fitting else "none"
                self.rr_next += 1
            targets = [job.rr] if self.policy == "round-robin" else names
            for n in targets:
                p = self.platforms.get(n)
                if p is None or busy[n] >= p.max_concurrent:
                    continue
                offer = p.offer(now)
                if not offer.available or scheduler.misfit(job.spec, Offer(**{**offer.__dict__, "session_seconds": None})):
                    continue
                if p.budget.limit is not None:
                    lo, hi = p.budget.window.bounds(now)
                    if self.usage(p, lo, hi, now) >= p.budget.limit - 1e-9:
                        continue
                gpu = quota.pick_gpu(job.spec, offer, p.budget)
                count = 1
                rate = p.budget.rate(gpu, count)
                session = p.session_s if (job.spec.checkpoint and p.session_s and job.runtime_left > p.session_s) else None
                self.queue.remove(job)
                self.launch(job, p, gpu, now, min(job.runtime_left, p.session_s or math.inf), session,
                            job.runtime_left, rate)
                busy[n] += 1
                break

    # -- the loop
    def run(self) -> Report:
        wall = time.perf_counter()
        now = self.start
        i = 0
        while now < self.horizon:
            while i < len(self.arrivals) and self.arrivals[i].arrival <= now:
                self.queue.append(self.arrivals[i])
                i += 1
            for r in sorted(self.running, key=lambda r: r.end):
                if r.end <= now:
                    self.finish(r, r.end)
            for p in self.platforms.values():  # platforms enforce their own limits
                t = self.exhaustion(p, now - 1e-6)
                if t is not None and t <= now:
                    for r in [r for r in self.running if r.platform is p]:
                        self.finish(r, now, killed=True)
                if p.hours and not windows.open_hours(p.hours, now)[0]:
                    for r in [r for r in self.running if r.platform is p]:
                        self.finish(r, now, killed=True)
            wake = None
            if self.queue:
                if self.policy == "orch":
                    wake = self.place_orch(now)
                else:
                    self.place_naive(now)
            if not self.queue and not self.running and i >= len(self.arrivals):
                break
            later = self.next_event(now, i, wake)
            if len(self.queue) >= self.slots:
                self.deep.append((now, later))
            now = later
        return self.report(time.perf_counter() - wall)

    def next_event(self, now: float, i: int, wake: float | None) -> float:
        times = [r.end for r in self.running]
        if i < len(self.arrivals):
            times.append(self.arrivals[i].arrival)
        if wake is not None:
            times.append(wake)
        for p in self.platforms.values():
            if p.budget.limit is not None and self.queue:
                times.append(p.budget.window.bounds(now)[1])
            t = self.exhaustion(p, now)
            if t is not None:
                times.append(t)
            if p.hours:
                times.append(windows.open_hours(p.hours, now)[1])
        later = [t for t in times if t > now + 1e-6]
        return min(later) if later else self.horizon

    # -- results
    def report(self, wall: float) -> Report:
        done = [j for j in self.jobs if j.done_at is not None]
        makespan = (max(j.done_at for j in done) - self.start) / HOUR if len(done) == len(self.jobs) else None
        used = avail = 0.0
        windows = {}
        for p in self.platforms.values():
            u_h, a_h = platform_hours(p, self.charges[p.name], self.deep)
            used += u_h
            avail += a_h
            windows[p.name] = (u_h, a_h)
        worst = max((window_use(p, self.charges[p.name]) for p in self.platforms.values()), default=0.0)
        return Report(self.policy, len(done), len(self.jobs), makespan,
                      lower_bound(self.jobs, self.platforms, self.start) / HOUR, used, avail, self.overruns, worst,
                      wall, sum(b - a for a, b in self.deep) / HOUR, windows)


def window_use(p: SimPlatform, charges: list[tuple[float, float, float]]) -> float:
    """The fullest budget window: max of units charged in it / its limit (0 when unlimited)."""
    if p.budget.limit is None or not charges:
        return 0.0
    starts = sorted({p.budget.window.bounds(t)[0] for _, s, e in charges for t in (s, max(s, e - 1e-6))})
    worst = 0.0
    for lo in starts:
        hi = p.budget.window.bounds(lo)[1]
        worst = max(worst, sum(quota.overlap(a, s, e, lo, hi) for a, s, e in charges) / p.budget.limit)
    return worst


def platform_hours(p: SimPlatform, charges: list[tuple[float, float, float]],
                   intervals: list[tuple[float, float]]) -> tuple[float, float]:
    """(GPU hours used, GPU hours available) within ``intervals`` (when the queue was deep).

    Available: the platform's slots while it is open, except that a budget window cannot
    give the intervals more than its limit less what was used outside them; compute units
    are turned into hours at the rate this run paid on average (a T4's if it paid nothing).
    """
    used_units = used_hours = avail_units = 0.0
    for a, s, e in charges:
        for lo, hi in intervals:
            used_units += quota.overlap(a, s, e, lo, hi)
            used_hours += max(0.0, min(e, hi) - max(s, lo)) / HOUR
    per_hour = used_units / used_hours if used_hours > 0 else (p.budget.rate("T4", 1) or 1.0)
    pieces: dict[float, list[tuple[float, float]]] = {}  # budget window start -> deep pieces in it
    for lo, hi in intervals:
        t = lo
        while t < hi:
            w_lo, w_hi = p.budget.window.bounds(t)
            pieces.setdefault(w_lo, []).append((t, min(w_hi, hi)))
            t = min(w_hi, hi)
    for w_lo, parts in pieces.items():
        slots_units = sum(open_hours_between(p, a, b) for a, b in parts) * p.max_concurrent * per_hour
        if p.budget.limit is None:
            avail_units += slots_units
            continue
        w_hi = p.budget.window.bounds(w_lo)[1]
        in_window = sum(quota.overlap(a, s, e, w_lo, w_hi) for a, s, e in charges)
        in_deep = sum(quota.overlap(a, s, e, lo, hi) for a, s, e in charges for lo, hi in parts)
        # what the window's budget could give the deep pieces: its limit less what was used outside them
        avail_units += min(max(0.0, p.budget.limit - (in_window - in_deep)), slots_units)
    return used_hours, avail_units / per_hour


def open_hours_between(p: SimPlatform, lo: float, hi: float) -> float:
    if not p.hours:
        return max(0.0, hi - lo) / HOUR
    total, t = 0.0, lo
    while t < hi:
        inside, change = windows.open_hours(p.hours, t)
        nxt = min(change, hi)
        if inside:
            total += nxt - t
        t = nxt
    return total / HOUR


def eligible(job: SimJob, p: SimPlatform) -> bool:
    """Whether ``job`` could ever run on ``p`` (GPU memory; a session, or the lab's night,
    long enough unless the job checkpoints)."""
    offer = p.offer(START)
    offer = Offer(**{**offer.__dict__, "available": True})
    return scheduler.misfit(job.spec, offer) is None


def lower_bound(jobs: list[SimJob], platforms: dict[str, SimPlatform], start: float, step: float = 1800.0) -> float:
    """Seconds from ``start``: no schedule can finish every job sooner.

    The largest of: each job's arrival plus its fastest run; and, for every set S of
    platforms and every arrival time a, the first T by which S could have done all the
    work that can run only on S and arrives at or after a, if that work could be split
    at will across S at the fastest GPU it may use, within S's hours and quotas (a quota
    of compute units spent at its most work-per-unit GPU)."""
    names = list(platforms)
    bound = 0.0
    for j in jobs:
        fastest = max(SPEEDS[g] for p in platforms.values() for g in p.gpus
                      if not j.big or gpu_catalogue.MAX_MEMORY_GB.get(g, 0) >= 40 and p.gpu_memory_gb >= 40)
        bound = max(bound, j.arrival - start + j.work / fastest)
    where = {j.id: frozenset(n for n in names if eligible(j, platforms[n])) for j in jobs}

    def rates(p: SimPlatform, big: bool) -> tuple[float, float]:
        """(T4-seconds of work per second while open, T4-seconds per budget unit)."""
        gpus = [g for g in p.gpus if not big or gpu_catalogue.MAX_MEMORY_GB.get(g, 0) >= 40 and p.gpu_memory_gb >= 40]
        if not gpus:
            return 0.0, 0.0
        speed = max(SPEEDS[g] for g in gpus)
        per_unit = max(SPEEDS[g] / (p.budget.rate(g, 1) or math.inf) for g in gpus) * HOUR
        return speed * p.max_concurrent, per_unit

    horizon = start + 26 * 7 * 86400
    for size in range(1, len(names) + 1):
        for subset in _subsets(names, size):
            for big in (False, True):
                pool = [j for j in jobs if where[j.id] <= subset and (j.big or not big)]
                if not pool:
                    continue
                cap = {n: rates(platforms[n], big) for n in subset}
                for a in sorted({j.arrival for j in pool}):
                    work = sum(j.work for j in pool if j.arrival >= a)
                    t, done, spent = a, 0.0, {}
                    while done < work - 1e-6 and t < horizon:
                        for n in subset:
                            p = platforms[n]
                            if p.hours and not windows.open_hours(p.hours, t)[0]:
                                continue
                            w = cap[n][0] * step
                            if p.budget.limit is not None:
                                key = (n, p.budget.window.bounds(t)[0])
                                w = min(w, max(0.0, p.budget.limit * cap[n][1] - spent.get(key, 0.0)))
                                spent[key] = spent.get(key, 0.0) + w
                            done += w
                        t += step
                    bound = max(bound, t - step - start)  # at t - step the work was not done yet
    return bound


def _subsets(names: list[str], size: int) -> list[frozenset[str]]:
    import itertools

    return [frozenset(c) for c in itertools.combinations(names, size)]


def simulate(policy: str = "orch", seed: int = 7, n: int = 60, weeks: float = 6.0,
             platforms: list[SimPlatform] | None = None, jobs: list[SimJob] | None = None) -> Report:
    jobs = make_jobs(seed, n) if jobs is None else jobs
    return Sim(jobs, platforms or default_platforms(), policy, weeks=weeks).run()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--jobs", type=int, default=60)
    ap.add_argument("--weeks", type=float, default=6.0, help="give up after this many simulated weeks")
    ap.add_argument("--seeds", type=int, default=0, help="also summarise orch over seeds 1..N")
    args = ap.parse_args()
    print(f"{args.jobs} jobs (seed {args.seed}); platforms: kaggle 30 GPU h/week x2, colab 100 CU/month x2, "
          f"lab A100 22:00-06:00 UTC")
    print(f"{'policy':<12} {'GPU h used/avail':>17} {'util':>5} {'overruns':>8} {'finished':>8} "
          f"{'makespan':>9} {'bound':>7} {'ratio':>6} {'wall':>6}")
    for policy in ("orch", "fifo", "round-robin"):
        r = simulate(policy, args.seed, args.jobs, args.weeks)
        ms = f"{r.makespan_h:.1f}h" if r.makespan_h is not None else "-"
        ratio = f"{r.makespan_h / r.bound_h:.2f}" if r.makespan_h is not None else "-"
        print(f"{policy:<12} {r.used_h:>8.1f}/{r.available_h:<8.1f} {r.utilisation:>5.0%} {r.overruns:>8} "
              f"{r.finished:>4}/{r.total:<3} {ms:>9} {r.bound_h:>6.1f}h {ratio:>6} {r.wall_s:>5.2f}s")
        if policy == "orch":
            detail = ", ".join(f"{n} {u:.1f}/{a:.1f} h" for n, (u, a) in r.windows.items())
            print(f"{'':<12} per platform while the queue was deep ({r.deep_h:.0f} h): {detail}; "
                  f"fullest budget window {r.worst_window:.0%}")
    if args.seeds:
        rows = [simulate("orch", seed, args.jobs, args.weeks) for seed in range(1, args.seeds + 1)]
        ratios = sorted(r.makespan_h / r.bound_h for r in rows if r.makespan_h is not None)
        utils = sorted(r.utilisation for r in rows)
        print(f"\norch over seeds 1..{args.seeds}: all finished in {sum(r.finished == r.total for r in rows)}, "
              f"overruns {sum(r.overruns for r in rows)}, fullest window {max(r.worst_window for r in rows):.0%}; "
              f"utilisation >= 95 % in {sum(u >= 0.95 for u in utils)} (min {utils[0]:.0%}, median "
              f"{utils[len(utils) // 2]:.0%}); makespan <= 1.15x bound in {sum(x <= 1.15 for x in ratios)} "
              f"(median {ratios[len(ratios) // 2]:.2f}x, worst {ratios[-1]:.2f}x); "
              f"slowest run {max(r.wall_s for r in rows):.2f}s")


if __name__ == "__main__":
    main()
