"""`orch fetch`, `orch cancel`, `orch retry` and `orch tick`: acting on jobs and on the queue."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from .common import console, err_console, json_option, pass_app, print_json, styled_state, transfer_bars, untrusted

if TYPE_CHECKING:  # pragma: no cover
    from ..app import App


# ---------------------------------------------------------------------------- fetch / cancel / retry


@click.command()
@click.argument("job")
@click.option("-o", "--output", "dest", type=click.Path(file_okay=False, path_type=Path),
              help="Directory to write into (default ./results/<name>-<id>/).")
@click.option("--force", is_flag=True, help="Overwrite files there that differ from the job's results.")
@click.option("--partial", is_flag=True, help="A cancelled job's outputs as far as it got (while its platform "
              "still holds them).")
@json_option
@pass_app
def fetch(app: App, job: str, dest: Path | None, force: bool, partial: bool, as_json: bool) -> None:
    """Copy a finished job's outputs, log and result.json to a local directory.

    Results are downloaded from the platform by `orch tick` as soon as a job ends;
    this copies them out of the orch home. Safe to run twice: a file you changed in
    the folder since is never overwritten (exit 2, nothing copied) unless --force.

    For a sweep: one folder per point that has results, and summary.csv (each point's
    parameters, state, exit code, run time, GPU), shown as a table.

    \b
    Example:
      orch fetch 3f9c -o ./out
      orch fetch SWEEP_ID
    """
    from .. import actions

    row, found = actions.resolve_job_or_sweep(app, job)
    if found is not None:
        _fetch_sweep(app, actions, found, dest, force, as_json)
        return
    target = (actions.fetch_partial if partial else actions.fetch)(app, row, dest, force=force)
    if as_json:
        print_json({"id": row.id, "state": row.state.value, "path": str(target)})
    else:
        console.print(f"{untrusted(row.name)} {row.short_id} ({styled_state(row.state.value)}): results in [bold]{target}/[/]")


def _fetch_sweep(app: App, actions, found, dest: Path | None, force: bool, as_json: bool) -> None:
    """`orch fetch SWEEP`: a folder per point that has results, and summary.csv."""
    sweep_id, rows = found
    res = actions.fetch_sweep(app, sweep_id, rows, dest, force=force)
    if as_json:
        print_json({"sweep_id": sweep_id, "path": str(res.target), "summary": res.summary,
                    "fetched": {k: str(v) for k, v in res.fetched.items()}, "missing": res.missing})
        return
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in res.summary[0]:
        table.add_column(col.upper(), overflow="ellipsis", no_wrap=True)
    for line in res.summary:
        table.add_row(*(untrusted(v) for v in line.values()))
    console.print(table)
    console.print(f"{len(res.fetched)} of {len(rows)} points fetched into [bold]{res.target}/[/] "
                  f"(one folder per point, summary.csv)"
                  + (f"; {len(res.missing)} without results yet" if res.missing else ""))


@click.command()
@click.argument("jobs", nargs=-1, required=True)
@json_option
@pass_app
def cancel(app: App, jobs: tuple[str, ...], as_json: bool) -> None:
    """Cancel queued or running jobs, or every point of a sweep (the process group is killed
    where the platform allows).

    Each reference is handled on its own: one that matches nothing is reported and the
    others are still cancelled, and the exit code is non-zero.

    \b
    Example:
      orch cancel 3f9c 8a1e
      orch cancel SWEEP_ID
    """
    from .. import actions
    from ..errors import OrchError

    out, worst = [], 0
    for ref in jobs:
        try:
            messages = _cancel_one(app, actions, ref)
        except OrchError as exc:  # a bad id never stops the others: report it and go on
            worst = max(worst, exc.exit_code)
            out.append({"ref": ref, "error": str(exc)})
            if not as_json:
                err_console.print(f"[bold red]Error:[/] {untrusted(str(exc))}")
            continue
        for job_id, msg in messages:
            out.append({"id": job_id, "message": msg})
            if not as_json:
                console.print(untrusted(msg))
    if as_json:
        print_json(out)
    if worst:
        raise click.exceptions.Exit(worst)


def _cancel_one(app: App, actions, ref: str) -> list[tuple[str, str]]:
    """Cancel the job or sweep ``ref`` names: ``(id, sentence)`` for each job touched."""
    row, found = actions.resolve_job_or_sweep(app, ref)
    if found is not None:
        return [(found[0], msg) for msg in actions.cancel_sweep(app, found[0])]
    return [(row.id, actions.cancel(app, row))]


@click.command()
@click.argument("job")
@json_option
@pass_app
def retry(app: App, job: str, as_json: bool) -> None:
    """Put a FAILED, LOST or CANCELLED job back in the queue (of a sweep: each such point).

    \b
    Example:
      orch retry 3f9c
      orch retry SWEEP_ID
    """
    from .. import actions

    row, found = actions.resolve_job_or_sweep(app, job)
    if found is not None:  # a sweep: its points that ended badly
        messages = actions.retry_sweep(app, found[0])
        if as_json:
            print_json({"sweep_id": found[0], "requeued": len(messages)})
        for msg in [] if as_json else messages:
            console.print(msg)
        return
    msg = actions.retry(app, row)
    print_json({"id": row.id, "state": "QUEUED"}) if as_json else console.print(msg)


# ---------------------------------------------------------------------------- tick


@click.command()
@click.option("--quiet", "-q", is_flag=True, help="Print only problems (for cron).")
@json_option
@pass_app
def tick(app: App, quiet: bool, as_json: bool) -> None:
    """Run one scheduler pass: reconcile, poll, fetch, retry, dispatch.

    Safe to run from cron and by hand at the same time, and from several machines
    sharing one PostgreSQL queue: each tick works only on jobs it has claimed.
    A job whose step fails unexpectedly is named on stderr and the tick goes on with
    the others; the exit code is then 1 (0 when nothing went wrong beyond warnings).
    With --quiet (cron) the same warning is printed at most once an hour.

    \b
    Example:
      orch tick
      */5 * * * * orch tick --quiet   (see `orch cron`)
    """
    from .. import controller

    ctl = controller.Controller(app)
    try:
        with transfer_bars(not (quiet or as_json)), \
                controller.tick_deadline(controller.hard_stop_after(app.config.controller.tick_budget)):
            report = ctl.tick()
    except controller.TickOverrun as exc:
        report = ctl.report
        report.errors.append(str(exc))
    if as_json:
        print_json(report.to_json())
    else:
        for p in _not_said_lately(app, report.problems) if quiet else report.problems:
            err_console.print(f"[yellow]warning:[/] {untrusted(p)}")
        for e in report.errors:
            err_console.print(f"[bold red]error:[/] {untrusted(e)}")
        if not quiet:
            console.print(f"tick: {len(report.dispatched)} dispatched, {len(report.finished)} finished, "
                          f"{len(report.requeued)} requeued ({report.seconds:.2f}s)")
    if report.errors:
        raise click.exceptions.Exit(1)


#: How often `orch tick --quiet` (cron) repeats the same warning: a platform without a
#: token says so every tick otherwise, and cron mails every line.
REPEAT_WARNINGS_S = 3600.0


def _not_said_lately(app: App, problems: list[str]) -> list[str]:
    """The warnings not printed by a quiet tick within the last REPEAT_WARNINGS_S (each is
    still in the tick's --json report and in logs/orch.log); remembered in the home."""
    import hashlib
    import json
    import time

    path = app.home.root / "logs" / "warned.json"
    now = time.time()
    try:
        said = {k: float(v) for k, v in json.loads(path.read_text()).items()}
    except (OSError, ValueError, TypeError, AttributeError):
        said = {}
    said = {k: t for k, t in said.items() if now - t < REPEAT_WARNINGS_S}
    fresh = []
    for p in problems:
        key = hashlib.sha256(p.encode()).hexdigest()[:16]
        if key not in said:
            said[key] = now
            fresh.append(p)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(said))
        tmp.replace(path)
    except OSError:
        return problems  # cannot remember: say everything rather than nothing
    return fresh


def register(main: click.Group) -> None:
    """Attach ``fetch``, ``cancel``, ``retry``, ``tick`` to the CLI."""
    main.add_command(fetch)
    main.add_command(cancel)
    main.add_command(retry)
    main.add_command(tick)
