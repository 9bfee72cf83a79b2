"""``orch doctor``: will my queue run tonight? One checklist, each item ✓, ! or ✗ with its fix.

Checks, in order: config.yaml parses; the state database is intact; the disk has
room; cron runs ``orch tick`` and when the last tick was; each platform's
credentials work (its own ``check()``: an SSH connect with the pinned key, ``colab
usage``, a Drive listing; and Kaggle's live quota read); logins that die soon (a
Drive token of an OAuth app in Testing); notification channels that failed lately;
jobs stuck in UNKNOWN or queued for more than a day; and a quota forecast: at the
queue's demand, whether each limited platform's window holds the queued work or
when it runs out before its reset.

Design choice: every check returns a value and none raises, so one broken platform
never hides the rest of the list; only ✗ (something that stops work) makes the
command exit 1, a ! (a risk) does not.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Callable

from .durations import format_duration
from .errors import OrchError
from .planning import PlatformOverrun, answer_deadline

if TYPE_CHECKING:  # pragma: no cover
    from .app import App

OK, WARN, FAIL = "ok", "warn", "fail"
#: The meta key where every tick records when it ran (Controller.tick).
LAST_TICK = "tick:last"
#: Free space below these (bytes) is a warning, then a failure.
DISK_WARN, DISK_FAIL = 5 * 1024**3, 1024**3
STUCK_QUEUED_S = 86400.0


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


def run(app: App, now: float | None = None) -> list[Check]:
    """Every check, in order; a config that does not parse ends the list early."""
    now = time.time() if now is None else now
    try:
        config = app.config
    except OrchError as exc:
        return [Check("config", FAIL, str(exc), "edit the line the message names (docs/operations.md)")]
    where = config.source or f"{app.home.config_path} (absent: the implicit local platform)"
    checks = [Check("config", OK, f"{where}: {len(config.platforms)} platform(s), "
                                  f"{len(config.notify.channels)} notify channel(s)")]
    for step in (_state, _disk, _cron, _platforms, _logins, _notify, _stuck, _forecast):
        checks.extend(_guarded(step, app, now))
    return checks


def _guarded(step: Callable, app: App, now: float) -> list[Check]:
    try:
        return step(app, now)
    except Exception as exc:  # noqa: BLE001 - one failed check never hides the others
        return [Check(step.__name__.strip("_"), FAIL, f"the check itself failed: {type(exc).__name__}: {exc}")]


def _state(app: App, now: float) -> list[Check]:
    from sqlalchemy import text

    store = app.store
    with store.read() as conn:
        if store.is_sqlite:
            result = conn.execute(text("PRAGMA quick_check")).scalar()
        else:
            result = "ok" if conn.execute(text("SELECT 1")).scalar() == 1 else "no answer"
    if result != "ok":
        return [Check("state", FAIL, f"the state database is damaged: {result}",
                      "stop cron, copy state.db aside, and restore a backup (docs/operations.md)")]
    return [Check("state", OK, f"state database intact (schema version {store.schema_version})")]


def _disk(app: App, now: float) -> list[Check]:
    free = shutil.disk_usage(app.home.root).free
    text = f"{free / 1024**3:.1f} GiB free under {app.home.root}"
    if free < DISK_FAIL:
        return [Check("disk", FAIL, text, "free space or run `orch gc` (results and caches live here)")]
    if free < DISK_WARN:
        return [Check("disk", WARN, text, "fetched results and dataset caches need room: `orch gc`")]
    return [Check("disk", OK, text)]


def _cron(app: App, now: float) -> list[Check]:
    from .cli.setup_commands import CRON_MARK

    out = []
    if shutil.which("crontab") is None:
        out.append(Check("cron", WARN, "`crontab` is not installed here",
                         "run `orch tick` from your scheduler (`orch cron` prints the line)"))
    else:
        listed = subprocess.run(["crontab", "-l"], capture_output=True, text=True, timeout=10)
        mine = [ln for ln in listed.stdout.splitlines() if ln.rstrip().endswith(CRON_MARK)] \
            if listed.returncode == 0 else []
        if mine and str(app.home.root) in mine[0]:
            out.append(Check("cron", OK, "crontab runs `orch tick`"))
        elif mine:
            out.append(Check("cron", WARN, "the crontab's orch line is for another orch home",
                             "run `orch cron --install` with this ORCH_HOME"))
        else:
            out.append(Check("cron", WARN, "no crontab line runs `orch tick`: the queue moves only when you tick",
                             "orch cron --install"))
    last = app.store.meta_get(LAST_TICK)
    if not last:
        out.append(Check("last tick", WARN, "no tick has run yet", "orch tick"))
    else:
        age = now - float(last)
        status = OK if age < 3600 else WARN
        out.append(Check("last tick", status, f"the last tick ran {format_duration(age)} ago ({_iso(float(last))})",
                         "" if status == OK else f"check {app.home.root / 'cron.log'}"))
    return out


def _platforms(app: App, now: float) -> list[Check]:
    out = []
    for name in app.config.names:
        try:
            with answer_deadline(app, name):
                platform = app.platform(name)
                problems = platform.check()
                reading = platform.quota() if app.settings(name).type == "kaggle" and not problems else None
        except (OrchError, PlatformOverrun) as exc:
            problems, reading = [str(exc)], None
        if problems:
            out.extend(Check(f"platform {name}", FAIL, p, _first_fix(p)) for p in problems)
            continue
        detail = f"{app.settings(name).type}: ready"
        if app.settings(name).type == "kaggle":
            if reading is None:
                out.append(Check(f"platform {name}", WARN, "kaggle: the authenticated quota read failed",
                                 "check the network and your API token (docs/platforms/kaggle.md)"))
                continue
            detail += f", credentials work ({reading.used:.1f}/{reading.limit or 0:.0f} GPU h used)"
        out.append(Check(f"platform {name}", OK, detail))
    return out


def _logins(app: App, now: float) -> list[Check]:
    from .logins import expiries

    out = []
    for item in expiries(app):
        label = f"login {item.platform}"
        if item.expires_at == 0.0:
            out.append(Check(label, FAIL, f"no {item.what}", item.fix))
        elif item.if_testing and item.expires_at is not None:
            days = (item.age_s or 0) / 86400
            dies = "died" if item.expires_at <= now else "dies"
            out.append(Check(label, WARN if item.expires_at - now < 2 * 86400 else OK,
                             f"{item.what} is {days:.1f} days old; if the OAuth app is in Testing it {dies} "
                             f"{_iso(item.expires_at)}", item.fix))
    return out


def _notify(app: App, now: float) -> list[Check]:
    from .notify import outbox

    if not app.config.notify.channels:
        return [Check("notifications", WARN, "no notify channels: nobody hears when a job ends",
                      "add notify: channels: to config.yaml (docs/notifications.md)")]
    recent = [r for r in outbox.recent(app.store, 200) if r["at"] > now - 86400]
    failing = sorted({r["channel"] for r in recent if not r["ok"]} - {r["channel"] for r in recent if r["ok"]})
    if failing:
        last = next(r for r in recent if r["channel"] == failing[0] and not r["ok"])
        return [Check("notifications", WARN, f"channel(s) {', '.join(failing)} failed every send today: "
                                              f"{last['error']}", f"orch notify test {failing[0]}")]
    return [Check("notifications", OK, f"{len(app.config.notify.channels)} channel(s); "
                                       f"{outbox.pending_count(app.store)} event(s) waiting")]


def _stuck(app: App, now: float) -> list[Check]:
    from .states import JobState

    out = []
    for job in app.store.jobs([JobState.UNKNOWN]):
        out.append(Check(f"job {job.short_id}", WARN, f"{job.name} is UNKNOWN since {format_duration(now - job.updated_at)}"
                                                      f" ago: {job.message}", f"orch status {job.short_id}"))
    for job in app.store.jobs([JobState.QUEUED]):
        if now - job.updated_at > STUCK_QUEUED_S:
            out.append(Check(f"job {job.short_id}", WARN, f"{job.name} has waited {format_duration(now - job.updated_at)}: "
                                                          f"{job.message or 'not placed yet'}",
                             f"orch plan  (why it waits), orch cancel {job.short_id}"))
    return out or [Check("jobs", OK, "no job stuck in UNKNOWN or queued for more than a day")]


def _forecast(app: App, now: float) -> list[Check]:
    """At the queue's demand (each queued job's reservation on each platform it may use),
    does each limited platform's window hold it, and if not when does it run out?"""
    from .launch import job_spec
    from .planning import Planner
    from .quota import reservation_rate

    planner = Planner(app, [])
    offers = planner.offers()
    states, _ = planner.budget_states(now)
    queued = app.store.queued()
    out = []
    for name, st in states.items():
        if st.limit is None or name not in offers:
            continue
        offer, budget = offers[name], app.budget(name)
        demand, rates = 0.0, []
        for job in queued:
            try:
                spec = job_spec(job)
            except OrchError:
                continue
            if (spec.platforms and name not in spec.platforms) or (job.pin and job.pin != name):
                continue
            _, _, rate = reservation_rate(budget, spec, offer)
            demand += rate * spec.resources.max_runtime / 3600
            rates.append(rate)
        left = st.left() or 0.0
        resets = "" if math.isinf(st.resets_at) else f"; resets {_iso(st.resets_at)}"
        label = f"quota {name}"
        if demand <= left:
            out.append(Check(label, OK, f"{budget.fmt(left)} left holds the queued work ({budget.fmt(demand)}){resets}"))
            continue
        burn = sum(sorted(rates, reverse=True)[:offer.max_concurrent])  # units per hour at full concurrency
        runs_out = now + 3600 * left / burn if burn > 0 else math.inf
        before = not math.isinf(st.resets_at) and runs_out < st.resets_at
        out.append(Check(label, WARN, f"the queue wants {budget.fmt(demand)}, {budget.fmt(left)} left: it runs out "
                                      f"about {_iso(runs_out) if not math.isinf(runs_out) else 'never'}"
                                      f"{' before the reset' if before else ''}{resets}",
                         "the rest waits for the reset or goes to another platform (`orch plan`)"))
    return out


# ---------------------------------------------------------------------------- helpers


SYMBOL = {OK: "✓", WARN: "!", FAIL: "✗"}


def to_json(checks: list[Check]) -> dict:
    return {"ok": not any(c.status == FAIL for c in checks), "checks": [asdict(c) for c in checks]}


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _first_fix(problem: str) -> str:
    """The fix a platform's own sentence gives (after 'run:' or ';'), else a pointer to its docs."""
    for marker in ("run: ", "run `", "; "):
        if marker in problem:
            return problem.split(marker, 1)[1].strip().rstrip(".").strip("`")
    return "see docs/platforms/ for this platform type"
