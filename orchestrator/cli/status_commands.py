"""`orch status` and `orch logs`: what every job is doing, and what it printed."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import click

from .. import sweep as sweep_mod
from ..durations import format_duration
from ..errors import NotFoundError, UsageError
from .common import (ago, console, err_console, json_option, pass_app, print_json, strip_controls, styled_state,
                     untrusted)

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # pragma: no cover
    from rich.table import Table

    from ..app import App
    from ..store import JobRow

COLUMNS = ("ID", "NAME", "STATE", "PLATFORM", "GPU", "TRIES", "TIME", "AGE", "NOTE")


# ---------------------------------------------------------------------------- status


def job_json(job: JobRow, att, segments: int = 0) -> dict:
    result = att.result if att else None
    return {
        "id": job.id, "name": job.name, "state": job.state.value, "platform": job.platform,
        "attempts": job.attempts, "created_at": job.created_at, "updated_at": job.updated_at,
        "message": job.message, "priority": job.priority,
        "gpu": (att.gpu_name if att else None), "runtime_s": (att.runtime_s if att else None),
        "exit_code": result.get("exit_code") if result else None,
        "submitted_by": job.submitted_by, "submitted_host": job.submitted_host,
        "sweep_id": job.sweep_id, "sweep_params": (job.extra.get("sweep") or {}).get("params"),
        "segments": segments,
    }


@click.command()
@click.argument("job", required=False)
@click.option("--all", "show_all", is_flag=True, help="Show every job, not only the latest 50.")
@click.option("--expand", is_flag=True, help="List each point of a sweep under its line.")
@click.option("--mine", is_flag=True, help="Only jobs I submitted (user name, or $ORCH_USER).")
@json_option
@pass_app(lazy=True)
def status(app: App, job: str | None, show_all: bool, expand: bool, mine: bool, as_json: bool) -> None:
    """Show every job (or one job's attempts and events, or one sweep's points).

    A sweep is one line with its progress (--expand lists its points); a job that runs as
    a chain of checkpointed segments is one line whose TRIES counts its segments.

    \b
    Example:
      orch status
      orch status 3f9c --json
      orch status --expand
      orch status --mine
    """
    if job:
        _status_ref(app, job, as_json)
        return
    if not app.has_state():  # nothing was ever queued here: no database to read (or create)
        print_json([]) if as_json else console.print(NO_JOBS)
        return
    from ..store import user

    settle(app, local_only=True)
    rows = app.store.jobs(limit=None if show_all else 50, submitted_by=user() if mine else None)
    latest = app.store.latest_attempts([j.id for j in rows])
    chains, chain_time = _chains(app, rows)
    if as_json:
        print_json([job_json(j, latest.get(j.id), chains.get(j.id, 0)) for j in rows])
        return
    if not rows:
        others = sum(app.store.counts().values()) if mine else 0
        console.print(f"no jobs submitted by {untrusted(user())} ({others} by others; `orch status` lists them)"
                      if others else NO_JOBS)
        return
    console.print(fit_table(_jobs_table(app, rows, latest, chains, chain_time, expand), console.width))
    counts = app.store.counts()
    if not show_all and sum(counts.values()) > len(rows):
        console.print(f"[dim]showing the latest {len(rows)} of {sum(counts.values())} jobs; --all for every one[/]")


NO_JOBS = "no jobs yet — `orch submit job.yaml` queues one"


def settle(app: App, job_ids: list[str] | None = None, local_only: bool = False) -> None:
    """Poll the running attempts of ``job_ids`` (all, when None) so that a job that ended is
    shown ended without waiting for a tick. ``local_only``: only attempts on this machine's
    ``local`` platforms (a cheap read of a file); never another host's. Best effort: a
    failure here leaves the reading to the next tick."""
    from ..controller import Controller
    from ..planning import PlatformOverrun, answer_deadline
    from ..states import ACTIVE_ATTEMPT_STATES
    from ..store import host

    try:
        kinds = {name: s.type for name, s in app.config.platforms.items()}
        atts = [a for a in app.store.attempts_in(ACTIVE_ATTEMPT_STATES)
                if (job_ids is None or a.job_id in job_ids) and a.platform in kinds
                and not (local_only and (kinds[a.platform] != "local" or (a.host and a.host != host())))]
        if atts:
            with answer_deadline(app, ", ".join(sorted({a.platform for a in atts}))):
                Controller(app).settle([a.job_id for a in atts])
    except (Exception, PlatformOverrun):  # noqa: BLE001 -- showing the queue must never fail on a poll
        log.warning("settling %s before showing it failed", job_ids or "the queue", exc_info=True)


#: How often `logs -f` polls a job on a remote platform itself (a local one: every read).
REMOTE_POLL_S = 15.0


def _is_local(app: App, row: JobRow) -> bool:
    settings = app.config.platforms.get(row.platform or "")
    return settings is None or settings.type == "local"


def _status_ref(app: App, ref: str, as_json: bool) -> None:
    """`orch status REF`: one job, or one sweep when REF names a sweep."""
    from .. import actions

    row, found = actions.resolve_job_or_sweep(app, ref)
    if found is not None:
        settle(app, [r.id for r in found[1]], local_only=True)
        _status_sweep(app, found[0], [app.store.job(r.id) for r in found[1]], as_json)
        return
    settle(app, [row.id], local_only=True)
    _status_one(app, app.store.job(row.id), as_json)


def _chains(app: App, rows: list[JobRow]) -> tuple[dict[str, int], dict[str, float]]:
    """For each job that runs as a chain: its checkpointed segments, and their time added up."""
    chains: dict[str, int] = {}
    chain_time: dict[str, float] = {}
    for j in rows:
        if j.checkpoint:
            atts = app.store.attempts_of(j.id)
            chains[j.id] = sum(1 for a in atts if a.state.value == "CHECKPOINTED")
            chain_time[j.id] = sum(a.runtime_s or 0 for a in atts)
    return chains, chain_time


def _table() -> Table:
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in COLUMNS:  # one line per job at any width (like squeue): long text ends in "…";
        # the whole NOTE is in `orch status JOB` and --json
        table.add_column(col, overflow="ellipsis", no_wrap=True)
    return table


FLEXIBLE = ("NAME", "NOTE")  # the columns that give way when the terminal is narrow


def fit_table(table: Table, width: int) -> Table:
    """Cap NAME and NOTE so that the table fits ``width`` columns and every other column
    keeps its full text (rich would otherwise shrink them all, "CANCE…" and "PLAT…")."""
    from rich.text import Text

    def natural(col) -> int:
        cells = [Text.from_markup(c).cell_len if isinstance(c, str) else 0 for c in col.cells]
        return max([len(str(col.header)), *cells])

    sizes = {col.header: natural(col) for col in table.columns}
    fixed = sum(n for h, n in sizes.items() if h not in FLEXIBLE) + 2 * (len(table.columns) - 1)
    room = max(width - fixed, 20)
    name = min(sizes.get("NAME", 0), max(10, room // 3))
    if "NAME" in sizes:
        table.columns[COLUMNS.index("NAME")].max_width = name
    if "NOTE" in sizes:
        table.columns[COLUMNS.index("NOTE")].max_width = max(room - name, 8)
    return table


def _jobs_table(app: App, rows: list[JobRow], latest: dict, chains: dict[str, int], chain_time: dict[str, float],
                expand: bool) -> Table:
    """One line per job, and one per sweep (with its points under it when ``expand``)."""
    sweeps = app.store.sweep_counts({j.sweep_id for j in rows if j.sweep_id})
    table = _table()
    shown: set[str] = set()
    for j in rows:
        if not j.sweep_id:
            _status_row(table, j, latest.get(j.id), chains.get(j.id, 0), total=chain_time.get(j.id))
            continue
        if j.sweep_id in shown:
            continue
        shown.add(j.sweep_id)
        points = [r for r in rows if r.sweep_id == j.sweep_id]
        _sweep_row(table, j, points, sweeps.get(j.sweep_id, {}))
        if expand:
            for r in sorted(points, key=lambda r: r.created_at):
                _status_row(table, r, latest.get(r.id), chains.get(r.id, 0), indent=True, total=chain_time.get(r.id))
    return table


def _sweep_row(table: Table, first: JobRow, points: list[JobRow], counts: dict[str, int]) -> None:
    """The one line of a sweep: its overall state, where its points run, its progress."""
    name = (first.extra.get("sweep") or {}).get("name", first.name)
    state = sweep_mod.overall_state(counts)
    where = sorted({r.platform for r in points if r.platform})
    table.add_row(first.sweep_id[:8], f"{untrusted(name)} [dim](sweep)[/]", styled_state(state), ",".join(where) or "-", "-",
                  str(sum(r.attempts for r in points)), "-", ago(min(r.created_at for r in points)),
                  sweep_mod.progress(counts))


def _status_row(table: Table, j: JobRow, a, segments: int, indent: bool = False, total: float | None = None) -> None:
    runtime = a.runtime_s if a and a.runtime_s else (time.time() - a.started_at if a and a.started_at and j.state.active else None)
    if segments and total is not None:  # a chain: the time of all its segments
        runtime = total + (runtime if j.state.active and runtime and not (a and a.runtime_s) else 0.0)
    tries = f"{j.attempts} ({segments} seg)" if segments else str(j.attempts)
    params = (j.extra.get("sweep") or {}).get("params")
    note = untrusted(j.message)
    if indent and params:
        note = untrusted(sweep_mod.label(params)) + (f" — {note}" if note else "")
    table.add_row(("  " if indent else "") + j.short_id, untrusted(j.name), styled_state(j.state.value), j.platform or "-",
                  untrusted(a.gpu_name or "-") if a else "-", tries, format_duration(runtime), ago(j.created_at), note)


def _status_sweep(app: App, sweep_id: str, rows: list[JobRow], as_json: bool) -> None:
    latest = app.store.latest_attempts([j.id for j in rows])
    counts = app.store.sweep_counts([sweep_id]).get(sweep_id, {})
    name = (rows[0].extra.get("sweep") or {}).get("name", rows[0].name)
    if as_json:
        print_json({"sweep_id": sweep_id, "name": name, "state": sweep_mod.overall_state(counts),
                    "counts": counts, "jobs": [job_json(j, latest.get(j.id)) for j in rows]})
        return
    console.print(f"[bold]{untrusted(name)}[/] sweep {sweep_id}: {styled_state(sweep_mod.overall_state(counts))} — "
                  f"{sweep_mod.progress(counts)}")
    table = _table()
    for j in rows:
        _status_row(table, j, latest.get(j.id), 0, indent=True)
    console.print(fit_table(table, console.width))


def _status_one(app: App, job: JobRow, as_json: bool) -> None:
    """`orch status JOB`: the job, its attempts (segments of a chain) and its events."""
    from .. import actions

    attempts = app.store.attempts_of(job.id)
    events = app.store.events_of(job.id)
    results = actions.results_dir(app, job)
    if as_json:
        print_json(_one_json(job, attempts, events, results))
        return
    segments = [a for a in attempts if a.state.value == "CHECKPOINTED"]
    _print_summary(job, attempts, segments)
    if attempts:
        console.print(_attempts_table(attempts, segments))
    console.print(_events_table(events))
    if results:
        console.print(f"  results stored in {results} — `orch fetch {job.short_id}` copies them here")


def _one_json(job: JobRow, attempts: list, events: list, results) -> dict:
    doc = job_json(job, attempts[-1] if attempts else None)
    doc["spec"] = job.spec
    doc["attempts_detail"] = [
        {"number": a.number, "key": a.key, "platform": a.platform, "state": a.state.value,
         "exit_code": a.exit_code, "failure_class": a.failure_class, "message": a.message,
         "runtime_s": a.runtime_s, "gpu": a.gpu_name, "created_at": a.created_at, "ended_at": a.ended_at}
        for a in attempts]
    doc["events"] = [{k: e[k] for k in ("at", "kind", "from_state", "to_state", "reason", "actor")} for e in events]
    doc["results"] = str(results) if results else None
    return doc


def _print_summary(job: JobRow, attempts: list, segments: list) -> None:
    """The job's header lines: state, platform, who submitted it, what it needs, its sweep or chain."""
    console.print(f"[bold]{untrusted(job.name)}[/] {job.id}")
    console.print(f"  state     {styled_state(job.state.value)}" + (f" — {untrusted(job.message)}" if job.message else ""))
    console.print(f"  platform  {job.platform or '-'}   attempts {job.attempts}   priority {job.priority}")
    console.print(f"  submitted {ago(job.created_at)} by {untrusted(job.submitted_by)}@{untrusted(job.submitted_host)}")
    res = job.spec.get("resources", {})
    gpu = "/".join(res.get("gpu") or []) or "none"
    console.print(f"  needs     gpu {gpu}, max_runtime {format_duration(res.get('max_runtime'))}")
    params = (job.extra.get("sweep") or {}).get("params")
    if params:
        console.print(f"  sweep     {job.sweep_id[:8]} point {job.extra['sweep']['index']}: {untrusted(sweep_mod.label(params))}")
    if segments:
        total = sum(a.runtime_s or 0 for a in attempts if a.state.value in ("CHECKPOINTED", "SUCCEEDED", "FAILED"))
        console.print(f"  chain     {len(segments)} checkpointed segment(s) so far, {format_duration(total)} run of "
                      f"{format_duration(res.get('max_runtime'))} max_runtime, on "
                      f"{', '.join(dict.fromkeys(a.platform for a in segments))}")


def _attempts_table(attempts: list, segments: list) -> Table:
    from rich.table import Table

    t = Table(box=None, header_style="bold", title="attempts" if not segments else "segments and attempts",
              title_justify="left")
    for col in ("#", "PLATFORM", "STATE", "EXIT", "RUNTIME", "GPU", "MESSAGE"):
        t.add_column(col)
    seg = 0
    for a in attempts:
        label = str(a.number)
        if segments and a.state.value in ("CHECKPOINTED", "SUCCEEDED"):
            seg += 1
            label += f" seg {seg}"
        t.add_row(label, a.platform, styled_state(a.state.value),
                  "-" if a.exit_code is None else str(a.exit_code), format_duration(a.runtime_s),
                  untrusted(a.gpu_name or "-"), untrusted(a.message))
    return t


def _events_table(events: list) -> Table:
    from rich.table import Table

    t = Table(box=None, header_style="bold", title="events", title_justify="left")
    for col in ("WHEN", "WHAT", "CHANGE", "REASON"):
        t.add_column(col)
    for e in events:
        change = f"{e['from_state'] or '·'} → {e['to_state']}"
        t.add_row(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["at"])), e["kind"], change, untrusted(e["reason"]))
    return t


# ---------------------------------------------------------------------------- logs


@click.command()
@click.argument("job")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new output until the job ends.")
@click.option("--interval", type=float, default=2.0, show_default=True, help="Seconds between reads with -f.")
@click.option("--attempt", type=click.IntRange(min=1), metavar="N",
              help="The log of attempt N (a retry, or a segment of a chain; `orch status JOB` lists them).")
@click.option("--raw", is_flag=True, help="Print the log byte for byte, terminal escape sequences included.")
@pass_app
def logs(app: App, job: str, follow: bool, interval: float, attempt: int | None, raw: bool) -> None:
    """Print a job's log (the latest attempt), optionally following it; of a sweep, every
    point's log, each under a header with its parameters.

    With -f it ends when the job ends, whatever the platform: it polls the job itself, so
    it needs no `orch tick` (nor cron) to see the end. `orch status` likewise sees a job on
    this machine's local platform end without a tick.

    The log is the job's own output: control characters (terminal escape sequences
    that could repaint the screen) are stripped unless --raw.

    \b
    Example:
      orch logs 3f9c -f
      orch logs 3f9c --attempt 2
      orch logs 3f9c --raw > job.log
    """
    from .. import actions
    from ..logtail import LogTail

    def show(text: str) -> None:
        # color=True: click would otherwise drop some escape sequences itself when piped
        click.echo(text if raw else strip_controls(text, keep_newlines=True), nl=False, color=raw or None)

    row, found = actions.resolve_job_or_sweep(app, job)
    if found is not None:
        _sweep_logs(app, found, follow, show)
        return
    if attempt is not None and not any(a.number == attempt for a in app.store.attempts_of(row.id)):
        raise NotFoundError(f"job {row.short_id} has no attempt {attempt}; `orch status {row.short_id}` lists its attempts")
    tail = LogTail(app, row.id, attempt)
    polled = float("-inf")
    while True:
        # See the job end (and its last lines) without waiting for a tick; a remote platform's
        # API is polled at most every REMOTE_POLL_S (Kaggle answers 429 to a poll every 2 s).
        if follow and time.monotonic() - polled >= (interval if _is_local(app, row) else REMOTE_POLL_S):
            settle(app, [row.id])
            polled = time.monotonic()
        row = app.store.job(row.id)
        done = row.state.terminal
        piece = tail.read(strict=not follow)
        show(piece.text)
        if piece.problem:
            err_console.print(f"[dim]log not readable yet: {untrusted(piece.problem)}[/]")
        if not piece.found and not follow:
            raise NotFoundError(f"job {row.short_id} has no log yet ({row.state.value}); use -f to wait for it")
        if not follow or done:
            return
        time.sleep(interval)


def _sweep_logs(app: App, found, follow: bool, show) -> None:
    """`orch logs SWEEP`: each point's log under a header line with its parameters."""
    from ..logtail import LogTail

    sweep_id, rows = found
    if follow:
        raise UsageError(f"-f follows one job and {sweep_id[:8]} is a sweep; follow one point "
                         f"(`orch status {sweep_id[:8]}` lists them), or drop -f to print every point's log")
    for row in sorted(rows, key=lambda r: (r.extra.get("sweep") or {}).get("index", 0)):
        params = (row.extra.get("sweep") or {}).get("params") or {}
        click.echo(strip_controls(f"[orch] === {row.name} {row.short_id} ({sweep_mod.label(params)}): "
                                  f"{row.state.value} ==="))
        piece = LogTail(app, row.id).read()
        show(piece.text if piece.found else "[orch] no log yet\n")
        if piece.problem:
            err_console.print(f"[dim]{row.short_id}: log not readable yet: {untrusted(piece.problem)}[/]")
        if piece.text and not piece.text.endswith("\n"):
            click.echo()


def register(main: click.Group) -> None:
    """Attach ``status``, ``logs`` to the CLI."""
    main.add_command(status)
    main.add_command(logs)
