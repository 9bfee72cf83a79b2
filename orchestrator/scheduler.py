"""Placement: a pure function from (queued jobs, platform offers, running counts, now)
to one decision per job — a platform, or a reason to wait.

No clock, store or network in here, so a week of ticks can be simulated in
milliseconds and every decision can be explained (``orch submit --dry-run``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Mapping, Sequence

from .durations import format_duration
from .platforms.base import Offer
from .spec import JobSpec


@dataclass(frozen=True)
class Candidate:
    """What placement needs to know about one queued job."""

    id: str
    spec: JobSpec
    pin: str | None = None
    avoid: Mapping[str, float] = field(default_factory=dict)  # platform -> avoided until (epoch)


@dataclass(frozen=True)
class Place:
    job_id: str
    platform: str


@dataclass(frozen=True)
class Wait:
    job_id: str
    reason: str


Decision = Place | Wait


def allowed_platforms(c: Candidate, configured: Sequence[str]) -> list[str]:
    """The job's candidate platforms in preference order."""
    if c.pin:
        return [c.pin]
    if c.spec.platforms:
        return [p for p in c.spec.platforms if p in configured]
    return list(configured)


def misfit(spec: JobSpec, offer: Offer) -> str | None:
    """Why ``offer`` can never run ``spec`` as it stands (None when it can)."""
    res = spec.resources
    if res.wants_gpu:
        if not offer.gpus:
            return "has no GPU"
        wanted = [g for g in res.gpu if g != "any"]
        if wanted and "any" not in res.gpu and not set(wanted) & set(offer.gpus):
            return f"offers {'/'.join(offer.gpus)}, job needs {'/'.join(wanted)}"
        if res.min_gpu_memory_gb and offer.gpu_memory_gb and offer.gpu_memory_gb < res.min_gpu_memory_gb:
            return f"GPU has {offer.gpu_memory_gb:g} GB, job needs {res.min_gpu_memory_gb:g} GB"
        if offer.gpu_count and res.gpu_count > offer.gpu_count:
            return f"has {offer.gpu_count} GPU(s), job needs {res.gpu_count}"
    if res.wants_gpu and offer.quota_left_seconds is not None:
        # A checkpointed chain needs only one session's worth now.
        need = min(res.max_runtime, offer.session_seconds) if spec.checkpoint and offer.session_seconds else res.max_runtime
        if offer.quota_left_seconds < need:
            resets = ""
            if offer.quota_resets_at:
                when = datetime.fromtimestamp(offer.quota_resets_at, timezone.utc)
                resets = when.strftime(" (resets %a %Y-%m-%d %H:%M UTC)")
            return (f"GPU quota: {format_duration(offer.quota_left_seconds)} left{resets}, "
                    f"job may need {format_duration(need)}")
    if spec.internet and not offer.internet and "internet" in offer.unsupported:
        return offer.unsupported["internet"]
    if spec.secrets and "secrets" in offer.unsupported:
        return offer.unsupported["secrets"]
    if spec.checkpoint is None and offer.session_seconds and res.max_runtime > offer.session_seconds:
        return (f"sessions last {format_duration(offer.session_seconds)}, job needs "
                f"{format_duration(res.max_runtime)}; declare checkpoint: to run it as a chain")
    return None


def place(jobs: Sequence[Candidate], offers: Mapping[str, Offer], running: Mapping[str, int],
          now: float) -> list[Decision]:
    """Decide, in queue order, where each job goes now.

    Args:
        jobs: queued jobs, already in dispatch order (priority, then FIFO).
        offers: platform name -> what it offers now (config order = default preference).
        running: platform name -> attempts active there.
        now: epoch seconds (for failover back-off).

    Returns:
        One Place or Wait per job, in the same order.
    """
    used = dict(running)
    decisions: list[Decision] = []
    configured = list(offers)
    for c in jobs:
        reasons: list[str] = []
        chosen = None
        names = allowed_platforms(c, configured)
        if not names:
            wanted = c.pin or ", ".join(c.spec.platforms)
            decisions.append(Wait(c.id, f"none of the job's platforms ({wanted}) is configured"))
            continue
        for name in names:
            offer = offers[name]
            why = misfit(c.spec, offer)
            if why is None and not offer.available:
                why = offer.reason or "unavailable"
            if why is None and c.avoid.get(name, 0) > now:
                why = f"lost an attempt of this job; avoided for {format_duration(c.avoid[name] - now)}"
            if why is None and offer.time_left_seconds is not None and c.spec.checkpoint is None \
                    and offer.time_left_seconds < c.spec.resources.max_runtime:
                why = f"{format_duration(offer.time_left_seconds)} left in its session"
            if why is None and used.get(name, 0) >= offer.max_concurrent:
                why = f"busy ({used.get(name, 0)}/{offer.max_concurrent} running)"
            if why is None:
                chosen = name
                break
            reasons.append(f"{name}: {why}")
        if chosen:
            used[chosen] = used.get(chosen, 0) + 1
            decisions.append(Place(c.id, chosen))
        else:
            decisions.append(Wait(c.id, "; ".join(reasons)))
    return decisions
