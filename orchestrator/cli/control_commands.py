"""`orch fetch`, `orch cancel`, `orch retry` and `orch tick`: acting on jobs and on the queue."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from .common import console, err_console, escape_markup as _escape, json_option, pass_app, print_json, styled_state, transfer_bars

if TYPE_CHECKING:  # pragma: no cover
    from ..app import App


# ---------------------------------------------------------------------------- fetch / cancel / retry


@click.command()
@click.argument("job")
@click.option("-o", "--output", "dest", type=click.Path(file_okay=False, path_type=Path),
              help="Directory to write into (default ./results/<name>-<id>/).")
@json_option
@pass_app
def fetch(app: App, job: str, dest: Path | None, as_json: bool) -> None:
    """Copy a finished job's outputs, log and result.json to a local directory.

    Results are downloaded from the platform by `orch tick` as soon as a job ends;
    this copies them out of the orch home. Safe to run twice.

    \b
    Example:
      orch fetch 3f9c -o ./out
    """
    from .. import actions

    row = app.store.resolve(job)
    target = actions.fetch(app, row, dest)
    if as_json:
        print_json({"id": row.id, "state": row.state.value, "path": str(target)})
    else:
        console.print(f"{row.name} {row.short_id} ({styled_state(row.state.value)}): results in [bold]{target}/[/]")


@click.command()
@click.argument("jobs", nargs=-1, required=True)
@json_option
@pass_app
def cancel(app: App, jobs: tuple[str, ...], as_json: bool) -> None:
    """Cancel queued or running jobs, or every point of a sweep (the process group is killed
    where the platform allows).

    \b
    Example:
      orch cancel 3f9c 8a1e
      orch cancel SWEEP_ID
    """
    from .. import actions

    out = []
    for ref in jobs:
        row, found = actions.resolve_job_or_sweep(app, ref)
        if found is not None:
            for msg in actions.cancel_sweep(app, found[0]):
                out.append({"id": found[0], "message": msg})
                if not as_json:
                    console.print(msg)
            continue
        msg = actions.cancel(app, row)
        out.append({"id": row.id, "message": msg})
        if not as_json:
            console.print(msg)
    if as_json:
        print_json(out)


@click.command()
@click.argument("job")
@json_option
@pass_app
def retry(app: App, job: str, as_json: bool) -> None:
    """Put a FAILED, LOST or CANCELLED job back in the queue.

    \b
    Example:
      orch retry 3f9c
    """
    from .. import actions

    row = app.store.resolve(job)
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
        for p in report.problems:
            err_console.print(f"[yellow]warning:[/] {_escape(p)}")
        for e in report.errors:
            err_console.print(f"[bold red]error:[/] {_escape(e)}")
        if not quiet:
            console.print(f"tick: {len(report.dispatched)} dispatched, {len(report.finished)} finished, "
                          f"{len(report.requeued)} requeued ({report.seconds:.2f}s)")
    if report.errors:
        raise click.exceptions.Exit(1)


def register(main: click.Group) -> None:
    """Attach ``fetch``, ``cancel``, ``retry``, ``tick`` to the CLI."""
    main.add_command(fetch)
    main.add_command(cancel)
    main.add_command(retry)
    main.add_command(tick)
