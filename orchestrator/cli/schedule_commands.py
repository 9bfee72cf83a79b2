"""``orch plan`` (where each queued job would go now, or why it waits and until when) and
``orch quota`` (each platform's budget: used, reserved, left, reset)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import click

from .. import windows
from ..durations import format_duration
from ..errors import OrchError
from .common import console, json_option, pass_app, print_json, untrusted

if TYPE_CHECKING:  # pragma: no cover
    from ..app import App
    from ..quota import SiteUsage

log = logging.getLogger(__name__)


def register(main: click.Group) -> None:
    main.add_command(plan)
    main.add_command(quota_command)


@click.command()
@json_option
@pass_app
def plan(app: App, as_json: bool) -> None:
    """Explain where each queued job would run now, or why it waits and when that changes.

    The same placement `orch tick` makes (capability, availability, session length,
    quota headroom in every window an attempt would touch, failover back-off, speed);
    nothing is changed. Jobs already placed but waiting in a platform's own queue (a
    Slurm cluster's PENDING) are listed with the platform's reason.

    \b
    Example:
      orch plan
      orch plan --json
    """
    from rich.table import Table

    from .. import planning, scheduler

    planner = planning.Planner(app)
    queued = app.store.queued()
    waits: dict[str, str] = {}
    offers = planner.offers() if queued else {}
    decisions = planner.plan(queued=queued, waits=waits, offers=offers) if queued else []
    by_id = {d.job_id: d for d in decisions}
    now = time.time()
    rows = []
    for job in queued:
        d = by_id.get(job.id)
        doc = {"id": job.id, "name": job.name, "priority": job.priority, "platform": None, "reason": "",
               "until": None, "verdicts": {}}
        if isinstance(d, scheduler.Place):
            doc.update(platform=d.platform, reason=d.why, max_runtime_s=d.max_runtime_s, session_s=d.session_s,
                       estimate_s=d.estimate_s, gpu=d.gpu)
        elif isinstance(d, scheduler.Wait):
            doc.update(reason=d.reason, until=d.until)
        else:
            doc.update(reason=waits.get(job.id, "not placeable"))
        doc["verdicts"] = dict(d.verdicts) if d is not None else {}
        rows.append(doc)
    from ..states import AttemptState

    for att in app.store.attempts_in([AttemptState.PENDING]):  # placed, waiting in a platform's own queue
        if att.message:
            job = app.store.job(att.job_id)
            rows.append({"id": job.id, "name": job.name, "priority": job.priority, "platform": None,
                         "queued_on": att.platform, "reason": att.message, "until": None, "verdicts": {}})
    if as_json:
        print_json(rows)
        return
    if not rows:
        console.print("the queue is empty — `orch submit job.yaml` queues a job")
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("ID", "NAME", "PRI", "WOULD", "WHY"):
        table.add_column(col, overflow="fold" if col == "WHY" else "ellipsis", no_wrap=col != "WHY")
    for r in rows:
        if r.get("queued_on"):
            would = f"[yellow]queued on {untrusted(r['queued_on'])}[/]"
        elif r["platform"]:
            would = f"[green]run on {untrusted(r['platform'])}[/]"
        elif r["until"]:
            would = f"[yellow]wait[/] until {windows.format_when(r['until'], now)}"
        else:
            would = "[yellow]wait[/]"
        table.add_row(r["id"][:8], untrusted(r["name"]), str(r["priority"]), would, untrusted(r["reason"]))
    console.print(table)
    for name, offer in offers.items():  # a platform's own problem, said once, not per job
        if not offer.available:
            console.print(f"[dim]{untrusted(name)} is unavailable: {untrusted(offer.reason)}[/]")


def _site_usage(app: App, name: str) -> SiteUsage | None:
    """The platform's own site usage figure, or None (an error shows nothing: it is logged)."""
    from ..planning import PlatformOverrun, answer_deadline

    try:
        with answer_deadline(app, name):
            return app.platform(name).site_usage()
    except (OrchError, PlatformOverrun) as exc:
        log.info("%s: no site usage: %s", name, exc)
        return None


@click.command("quota")
@click.option("--refresh", is_flag=True, help="Read each platform's live quota now instead of the cached reading.")
@json_option
@pass_app
def quota_command(app: App, refresh: bool, as_json: bool) -> None:
    """Show each platform's budget: used, reserved by running attempts, left, and the reset.

    Budgets come from config (`budget:` of a platform, or its type's default, e.g.
    Kaggle's 30 GPU hours a week); a live reading from the platform overrides them.
    Where a site keeps its own count (a Slurm cluster's sshare), it is shown beside.

    \b
    Example:
      orch quota
      orch quota --refresh --json
    """
    from rich.table import Table

    from .. import planning, quota

    planner = planning.Planner(app)
    now = time.time()
    if refresh:
        for name in app.config.names:
            planner.live_quota(name, refresh=True)
    states, _running = planner.budget_states(now, usage_for_all=True)
    docs = []
    for name, st in states.items():
        b = st.budget
        left = st.left()
        docs.append({
            "platform": name, "unit": b.unit, "used": round(st.used, 6), "reserved": round(st.reserved(), 6),
            "left": None if left is None else round(left, 6), "limit": st.limit,
            "window": b.window.describe(), "window_start": st.window_start if st.window_start > -quota.INF else None,
            "resets_at": st.resets_at if st.resets_at < quota.INF else None, "source": st.source,
        })
        if b.unit == "dollars" and left is not None:  # what is left, in hours of each GPU
            docs[-1]["hours_left"] = {g: round(left / r, 2) for g, r in b.hourly_rates().items() if r > 0}
        site = _site_usage(app, name)
        if site is not None:
            docs[-1]["site"] = {"unit": site.unit, "used": round(site.used, 6), "limit": site.limit,
                                "source": site.source}
    if as_json:
        print_json(docs)
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("PLATFORM", "USED", "RSVD", "LEFT", "LIMIT", "", "RESETS"):
        table.add_column(col, no_wrap=True, justify="right" if col in ("USED", "RSVD", "LEFT", "LIMIT") else "left")
    for d in docs:
        unit = quota.UNIT_NAMES.get(d["unit"], d["unit"])
        num = lambda v: "-" if v is None else (f"{v:.2g}" if 0 < abs(v) < 0.1 else f"{v:.1f}")  # noqa: E731
        resets = "-" if d["resets_at"] is None else (
            f"{time.strftime('%a %H:%M', time.gmtime(d['resets_at']))} (in {format_duration(d['resets_at'] - now)})")
        bar = quota.bar(d["used"], d["reserved"], d["limit"], width=12)
        table.add_row(d["platform"], num(d["used"]), num(d["reserved"]), num(d["left"]),
                      "unlimited" if d["limit"] is None else f"{d['limit']:g} {unit}", untrusted(f"[{bar}]"), resets)
    console.print(table)
    for d in docs:
        if d.get("hours_left"):
            hours = ", ".join(f"{h:.1f} h {g}" for g, h in d["hours_left"].items())
            console.print(untrusted(f"{d['platform']}: ${d['left']:.2f} left is about {hours}"))
    for d in docs:
        if d.get("site"):
            s = d["site"]
            unit = quota.UNIT_NAMES.get(s["unit"], s["unit"])
            of = f" of {s['limit']:g}" if s["limit"] is not None else ""
            console.print(untrusted(f"{d['platform']}: the site counts {s['used']:.1f}{of} {unit} used ({s['source']})"))
    console.print("[dim]times UTC; bar: # used, + reserved by running attempts, . free; "
                  "--json adds the window and where each number comes from[/]")
