"""Events that come from looking rather than from a state change: a quota running low,
a login about to expire, a job waiting too long.

Each has an id derived from what it is about (the platform and its window's reset
time, the credential and its expiry date, the job and the time it was queued), so a
condition seen on every tick is queued once: ``events.add`` ignores an id it has.
A failed look is skipped quietly; the doctor (``orch doctor``) reports it.
"""

from __future__ import annotations

import math
import uuid
from typing import TYPE_CHECKING

from .events import add, iso, new_event

if TYPE_CHECKING:  # pragma: no cover
    from ..app import App
    from .config import NotifySettings


def check(app: App, settings: NotifySettings, now: float, refused: dict[str, str] | None = None) -> None:
    """Queue the watched events due now; ``refused``: platform -> a refusal of orch's
    credentials the tick ran into (a revoked Kaggle key, a Drive token Google refused)."""
    wanted = {t for ch in settings.channels.values()
              for t in ("quota.low", "job.waiting", "login.expiring") if ch.wants(t)}
    if "quota.low" in wanted:
        _quota(app, settings, now)
    if "job.waiting" in wanted:
        _waiting(app, settings, now)
    if "login.expiring" in wanted:
        told = _logins(app, settings, now)
        _refused(app, {p: m for p, m in (refused or {}).items() if p not in told}, now)


def _id(*parts: object) -> str:
    return uuid.uuid5(uuid.NAMESPACE_URL, "orch:" + ":".join(str(p) for p in parts)).hex


def _queue(app: App, event: dict) -> None:
    with app.store.transaction() as tx:
        add(tx.conn, event)


def _quota(app: App, settings: NotifySettings, now: float) -> None:
    from ..planning import Planner

    states, _ = Planner(app, []).budget_states(now)
    for name, st in states.items():
        left = st.left()
        if left is None or not st.limit:
            continue
        percent = 100.0 * left / st.limit
        if percent >= settings.quota_low_percent:
            continue
        resets = None if math.isinf(st.resets_at) else st.resets_at
        _queue(app, new_event("quota.low", {"quota": {
            "platform": name, "unit": st.budget.unit, "left": round(left, 2), "limit": st.limit,
            "left_percent": round(percent, 1), "resets_at": iso(resets) if resets else None}},
            event_id=_id("quota.low", name, int(resets or 0)), now=now))


def _waiting(app: App, settings: NotifySettings, now: float) -> None:
    from ..states import JobState

    limit = settings.waiting * 3600
    for job in app.store.jobs([JobState.QUEUED]):
        waited = now - job.updated_at
        if waited < limit:
            continue
        _queue(app, new_event("job.waiting", {
            "job": {"id": job.id, "name": job.name, "state": job.state.value, "platform": job.platform,
                    "attempt": job.attempts, "sweep": job.sweep_id, "submitted_by": job.submitted_by},
            "reason": job.message or "waiting for a platform", "waited_hours": round(waited / 3600, 1)},
            event_id=_id("job.waiting", job.id, round(job.updated_at, 3)), now=now))


def _logins(app: App, settings: NotifySettings, now: float) -> set[str]:
    """Queue what dies soon; returns the platforms whose login is already gone (a
    refusal seen this tick is then the same news, not told twice)."""
    from ..logins import expiries

    gone = set()
    for item in expiries(app):
        # A date that holds only for an OAuth app in Testing is the doctor's to show, not a page.
        if item.expires_at is None or item.if_testing or item.expires_at - now > settings.login_expiring * 3600:
            continue
        _queue(app, new_event("login.expiring", {"login": {
            "platform": item.platform, "what": item.what, "expires_at": iso(item.expires_at),
            "expired": item.expires_at <= now, "fix": item.fix}},
            event_id=_id("login.expiring", item.platform, item.what, int(item.expires_at)), now=now))
        if item.expires_at <= now:
            gone.add(item.platform)
    return gone


def _refused(app: App, refused: dict[str, str], now: float) -> None:
    """A credential the platform refused mid-tick: the login is dead now, whatever its
    date said. Once a day per platform while it lasts (the id carries the UTC date)."""
    day = iso(now)[:10]
    for platform, message in refused.items():
        _queue(app, new_event("login.expiring", {"login": {
            "platform": platform, "what": "credentials (refused by the platform)", "expires_at": iso(now),
            "expired": True, "fix": message[:500]}},
            event_id=_id("login.refused", platform, day), now=now))
