"""The scheduler's inputs, read from one App, and the plan they give.

``scheduler.place`` is pure; this module gathers what it needs from the config, the
platforms and the store: each platform's offer as its generic settings shape it
(``min_segment``, ``available_hours``), the queued jobs that could run now, each
platform's budget in its current window with the reservations of active attempts (and
the platform's live quota reading, cached in the store), the job's own runtime history
and the GPU speeds learned from finished runs. ``orch tick``, ``orch plan``, ``orch
quota``, ``orch platforms`` and ``submit --dry-run`` all read through a :class:`Planner`,
so they agree on what dispatch would do.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time

from . import quota, scheduler, trust, windows
from .app import App
from .deadline import Overrun, hard_deadline
from .errors import OrchError, SpecError
from .gpus import gpu_type
from .launch import job_spec, remaining
from .platforms.base import Offer
from .settings import PlatformSettings
from .states import ACTIVE_ATTEMPT_STATES
from .store import AttemptRow, JobRow, host

log = logging.getLogger(__name__)


class PlatformOverrun(Overrun):
    """One platform did not describe itself within ``controller.answer_deadline``."""


def answer_deadline(app: App, name: str):
    """A hard stop for platform ``name`` describing itself (its offer, checks, quota):
    raises :class:`PlatformOverrun`, which the caller turns into "unavailable for now"."""
    seconds = app.config.controller.answer_deadline
    return hard_deadline(seconds, f"{name} did not answer within {seconds:g}s (controller.answer_deadline); "
                         "it is left out for now and asked again next time", PlatformOverrun)


class Planner:
    """Reads the scheduler's inputs from ``app``; nothing is changed but the cache of
    live quota readings.

    Attributes:
        problems: what went wrong on the way (a quota read that failed), one sentence
            each; a tick passes its report's list.
    """

    def __init__(self, app: App, problems: list[str] | None = None):
        self.app = app
        self.store = app.store
        self.problems: list[str] = [] if problems is None else problems

    def plan(self, extra: list[scheduler.Candidate] | None = None,
             queued: list[JobRow] | None = None, offers: dict[str, Offer] | None = None,
             waits: dict[str, str] | None = None) -> list[scheduler.Decision]:
        """Placement decisions for the queue (or only for ``extra`` candidates, as
        ``submit --dry-run`` asks), with the ledger, running attempts and learned speeds:
        exactly what dispatch would do now. Pure reads; nothing is changed."""
        now = time.time()
        offers = self.offers() if offers is None else offers
        ledger, running = self.budget_states(now)
        if extra is not None:
            candidates = extra
        else:
            candidates = self.candidates(self.store.queued() if queued is None else queued, waits)
        history = self.history(candidates)
        candidates = [dataclasses.replace(c, history=history.get(c.id, {})) for c in candidates]
        return scheduler.place(candidates, offers, running, now, ledger, self.speeds())

    def offers(self) -> dict[str, Offer]:
        """Every configured platform's offer; a platform that cannot even describe
        itself is shown unavailable with the reason, never dropped silently."""
        out: dict[str, Offer] = {}
        now = time.time()
        for name, settings in self.app.config.platforms.items():
            try:
                with answer_deadline(self.app, name):
                    offer = self.app.platform(name).offer()
            except PlatformOverrun as exc:
                offer = Offer(platform=name, type=settings.type, available=False, reason=str(exc))
            except OrchError as exc:
                offer = Offer(platform=name, type=settings.type, available=False, reason=str(exc))
            except Exception as exc:  # noqa: BLE001 -- one platform's bug must not stop dispatch
                log.exception("%s: offer() failed", name)
                offer = Offer(platform=name, type=settings.type, available=False,
                              reason=f"{name} could not describe itself: {type(exc).__name__}: {exc}"[:300])
            out[name] = with_settings(offer, settings, now)
        return out

    def candidates(self, queued: list[JobRow], waits: dict[str, str] | None = None) -> list[scheduler.Candidate]:
        """Queued jobs that could run now, as placement candidates; the others get a reason in ``waits``."""
        waits = {} if waits is None else waits
        out = []
        for job in queued:
            try:
                spec = job_spec(job)
            except Exception as exc:  # a stored spec this version cannot read
                waits[job.id] = str(exc) if isinstance(exc, SpecError) else f"stored spec unreadable: {exc}"
                continue
            refused = trust.refused_secrets(job, spec.secrets, self.app.config.team)
            if refused:
                waits[job.id] = trust.refusal_reason(job, refused)
                continue
            missing = [s for s in spec.secrets if s not in os.environ] if spec.secrets_from == "local" else []
            if missing:
                waits[job.id] = (f"secret {', '.join(missing)} is not set in the environment of the controller "
                                 f"on {host()} (export it where `orch tick` runs)")
                continue
            out.append(scheduler.Candidate(job.id, spec, job.pin, job.avoid, remaining=remaining(self.store, job, spec),
                                           digest=job.bundle, refused=self._refused_platforms(job)))
        return out

    def _refused_platforms(self, job: JobRow) -> dict[str, str]:
        """platform -> why this controller may not run ``job`` there (team trust model)."""
        why = trust.local_refusal(job, self.app.config.team)
        if why is None:
            return {}
        return {name: why for name, s in self.app.config.platforms.items() if s.type == "local"}

    def budget_states(self, now: float, usage_for_all: bool = False
                      ) -> tuple[dict[str, quota.BudgetState], list[scheduler.Running]]:
        """Each platform's budget in its current window, and the active attempts (only
        these and the current windows' charges are read, never the whole history).
        Charges are read for limited platforms only, unless ``usage_for_all`` (``orch quota``)."""
        active = self.store.attempts_in(ACTIVE_ATTEMPT_STATES)
        budgets = {name: self.app.budget(name) for name in self.app.config.platforms}
        limited = [n for n, b in budgets.items() if b.limit is not None or (usage_for_all and b.window.kind != "none")]
        charges = self._charges(budgets, limited, now)
        running, spans = self._reservations(active)
        states = {
            name: quota.state(name, budget, now, charges.get(name, []), spans.get(name, []),
                              self.live_quota(name) if budget.limit is not None else None)
            for name, budget in budgets.items()
        }
        return states, running

    def _charges(self, budgets: dict[str, quota.Budget], limited: list[str],
                 now: float) -> dict[str, list[tuple[float, float, float]]]:
        """platform -> (amount, start, end) of the ledger's charges in its current window."""
        since = min((budgets[n].window.bounds(now)[0] for n in limited), default=now)
        charges: dict[str, list[tuple[float, float, float]]] = {}
        for platform, amount, start, end in self.store.ledger_charges(limited, since):
            charges.setdefault(platform, []).append((amount, start, end))
        return charges

    def _reservations(self, active: list[AttemptRow]
                      ) -> tuple[list[scheduler.Running], dict[str, list[quota.Span]]]:
        """The active attempts as the scheduler sees them, and their reservations per platform."""
        reserved = self.store.reservations([a.id for a in active])
        spans: dict[str, list[quota.Span]] = {}
        running = []
        for a in active:
            row = reserved.get(a.id)
            end = row["end"] if row else (a.started_at or a.created_at) + (a.session_s or a.max_runtime_s or 3600.0)
            running.append(scheduler.Running(a.platform, end))
            if row and row["amount"] > 0 and row["end"] > row["start"]:
                rate = row["amount"] * 3600 / (row["end"] - row["start"])
                spans.setdefault(a.platform, []).append(quota.Span(row["start"], row["end"], rate))
        return running, spans

    def live_quota(self, name: str, refresh: bool = False, ttl: float = 600.0) -> quota.QuotaReading | None:
        """The platform's own quota reading, read at most every ``ttl`` seconds (cached in
        the store, so cron ticks share it); None when it has none or the read failed."""
        key = f"quota:{name}"
        cached = self.store.meta_get(key)
        now = time.time()
        if cached and not refresh:
            doc = json.loads(cached)
            if now - doc.get("at", 0) < ttl:
                return quota.reading_from_json(doc.get("reading"))
        try:
            with answer_deadline(self.app, name):
                reading = self.app.platform(name).quota()
        except (OrchError, PlatformOverrun) as exc:  # an unclear read never excludes a platform
            self.problems.append(f"{name}: quota read failed: {exc}")
            reading = None
        self.store.meta_set(key, json.dumps({"at": now, "reading": quota.reading_to_json(reading)}))
        return reading

    def history(self, candidates: list[scheduler.Candidate]) -> dict[str, dict[str, float]]:
        """job id -> {GPU type: median runtime} of earlier successful runs of its bundle."""
        digests = {c.id: c.digest for c in candidates if c.digest}
        if not digests:
            return {}
        runs: dict[str, dict[str, list[float]]] = {}
        for digest, gpu_name, seconds in self.store.runtimes(set(digests.values()), limit=5000):
            runs.setdefault(digest, {}).setdefault(gpu_type(gpu_name) or "CPU", []).append(seconds)
        medians = {d: {g: sorted(v)[len(v) // 2] for g, v in per.items()} for d, per in runs.items()}
        return {job_id: medians.get(digest, {}) for job_id, digest in digests.items()}

    def speeds(self) -> dict[str, float]:
        """GPU speed factors learned from the latest finished runs of GPU jobs."""
        rows = self.store.runtimes(None, limit=2000, gpu_jobs_only=True)
        return scheduler.learn_speeds((d, gpu_type(g), r) for d, g, r in rows if gpu_type(g))


def with_settings(offer: Offer, settings: PlatformSettings, now: float) -> Offer:
    """The offer as the generic platform settings shape it: ``min_segment``, and
    ``available_hours`` (closed: unavailable until it opens; open: attempts must end,
    or checkpoint, before it closes)."""
    offer = dataclasses.replace(offer, min_segment_seconds=settings.min_segment)
    if not settings.available_hours:
        return offer
    inside, change = windows.open_hours(settings.available_hours, now)
    # No attempt can outlast the daily window: it is this platform's longest session.
    window = windows.hours_length(settings.available_hours)
    if offer.session_seconds is None or offer.session_seconds > window:
        offer = dataclasses.replace(offer, session_seconds=window)
    if not inside:
        if not offer.available:
            return offer
        return dataclasses.replace(offer, available=False, available_at=change,
                                   reason=f"outside its hours ({settings.available_hours} UTC); opens "
                                          f"{windows.format_when(change, now)}")
    left = change - now
    if offer.time_left_seconds is not None:
        left = min(left, offer.time_left_seconds)
    return dataclasses.replace(offer, time_left_seconds=left)
