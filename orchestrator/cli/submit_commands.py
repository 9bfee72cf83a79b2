"""`orch submit`: package a job, queue it, and with --wait see it through to its results."""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..durations import format_duration
from ..errors import NotFoundError
from ..states import JobState
from .common import (console, err_console, json_option, pass_app, print_json, strip_controls, styled_state,
                     transfer_bars, untrusted)

if TYPE_CHECKING:  # pragma: no cover
    from ..actions import SubmitResult
    from ..app import App
    from ..store import JobRow


# ---------------------------------------------------------------------------- submit


@click.command()
@click.argument("job_yaml", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--wait", is_flag=True, help="Tick until the job ends, showing its output as it comes, then fetch its results.")
@click.option("--platform", "pin", metavar="NAME", help="Run only on this configured platform.")
@click.option("--dry-run", is_flag=True, help="Show the bundle and where the job would go; queue nothing.")
@click.option("--allow-file", multiple=True, metavar="NAME",
              help="Bundle this credential-looking file anyway (it holds no secret).")
@click.option("--no-gitignore", is_flag=True,
              help="Bundle what .gitignore leaves out (only .orchignore and the defaults apply).")
@click.option("--interval", type=click.FloatRange(min=0.1), default=2.0, show_default=True,
              help="Seconds between ticks with --wait.")
@json_option
@pass_app
def submit(app: App, job_yaml: Path, wait: bool, pin: str | None, dry_run: bool, allow_file: tuple[str, ...],
           no_gitignore: bool, interval: float, as_json: bool) -> None:
    """Package a job (code + datasets), queue it, and place it where capacity is left.

    JOB_YAML is a job.yaml, or a notebook (x.ipynb) to run as a job of its own
    (docs/notebooks.md).

    \b
    Example:
      orch submit jobs/els-pricer/job.yaml --wait
      orch submit job.yaml --platform kaggle --json
      orch submit train.ipynb --wait
    """
    from .. import actions

    with transfer_bars(not as_json):  # archiving a large dataset shows a bar
        res = actions.submit(app, job_yaml, pin=pin, allow_files=allow_file, dry_run=dry_run, single=wait,
                             gitignore=not no_gitignore)
    _warn_about(res.bundle)
    for warning in res.warnings:
        err_console.print(f"warning: {warning}", markup=False, highlight=False)
    if dry_run:
        _print_dry_run(res, as_json)
        return
    job_id = res.job_id
    assert job_id
    if res.sweep_id:
        _print_sweep_queued(res, as_json)
        return
    if as_json and not wait:
        print_json({"id": job_id})
        return
    if not as_json:
        b = res.bundle
        console.print(f"queued [bold]{job_id[:8]}[/] ({res.name}), bundle {b.digest[:12]}, {_size(b.size)}")
    if not wait:
        return
    _see_through(app, job_id, interval, as_json)


#: A file this large is probably data that belongs in `datasets:` (cached, uploaded once).
LARGE_FILE = 1 << 30


def _warn_about(bundle) -> None:
    """On stderr (so --json stays clean): what was left out of the bundle, and huge files."""
    from .common import err_console

    for rel in bundle.skipped:
        err_console.print(f"warning: {rel} was not bundled (a link out of its code or dataset directory or to an "
                          "ignored file, a FIFO, socket or device)", markup=False, highlight=False)
    for rel, size in bundle.code_files:
        if size >= LARGE_FILE:
            err_console.print(f"warning: {rel} is {_size(size)}; data this large is better as a dataset "
                              "(cached, uploaded once)", markup=False, highlight=False)
    for d in bundle.datasets:
        if d.size >= LARGE_FILE:
            err_console.print(f"warning: dataset {d.name} is {_size(d.size)}; uploads to remote platforms take a while",
                              markup=False, highlight=False)


def _print_dry_run(res: SubmitResult, as_json: bool) -> None:
    """What --dry-run found: the bundle's files and datasets, and where the job would go."""
    from ..scheduler import Place

    b = res.bundle
    where = res.decision.platform if isinstance(res.decision, Place) else None
    doc = {"name": res.name, "digest": b.digest, "size": b.size, "files": [f for f, _ in b.code_files],
           "datasets": [{"name": d.name, "digest": d.digest, "size": d.size, "files": len(d.files)} for d in b.datasets],
           "placement": {"platform": where, "reason": getattr(res.decision, "reason", "")}}
    if as_json:
        print_json(doc)
        return
    console.print(f"[bold]{res.name}[/]  bundle {b.digest[:16]}  {_size(b.size)}")
    for rel, size in b.code_files:
        console.print(f"  {_size(size):>9}  {rel}")
    for d in b.datasets:
        console.print(f"  {_size(d.size):>9}  $ORCH_DATA/{d.name}/  ({len(d.files)} files, {d.digest[:12]})")
    if where:
        console.print(f"would run on [bold]{where}[/]")
    else:
        console.print(f"would wait: {res.decision.reason}")


def _print_sweep_queued(res: SubmitResult, as_json: bool) -> None:
    b = res.bundle
    if as_json:
        print_json({"id": res.sweep_id, "sweep_id": res.sweep_id, "jobs": res.job_ids})
    else:
        console.print(f"queued sweep [bold]{res.sweep_id[:8]}[/] ({res.name}): {len(res.job_ids)} jobs sharing "
                      f"bundle {b.digest[:12]}, {_size(b.size)} — `orch status {res.sweep_id[:8]}` shows them")


def _see_through(app: App, job_id: str, interval: float, as_json: bool) -> None:
    """--wait: tick until the job ends, fetch its results, show the outcome; exit 1 unless it succeeded."""
    from .. import actions

    job, streamed = _wait(app, job_id, interval, quiet=as_json)
    target = None
    try:
        target = actions.fetch(app, job, None)
    except NotFoundError:
        pass
    att = app.store.attempts_of(job.id)
    result = att[-1].result if att else None
    segments = [a for a in att if a.state.value == "CHECKPOINTED"]
    if result and segments:  # a chain: its run time is all its segments'
        result = {**result, "runtime_s": sum(a.runtime_s or 0 for a in att), "segments": len(segments) + 1}
    if as_json:
        print_json({"id": job.id, "state": job.state.value, "results": str(target) if target else None,
                    "exit_code": result.get("exit_code") if result else None})
    else:
        _print_outcome(job, result, target, tail=not streamed)
    if job.state != JobState.SUCCEEDED:
        sys.exit(1)


def _wait(app: App, job_id: str, interval: float, quiet: bool) -> tuple[JobRow, bool]:
    """Tick until the job is terminal, printing the job's own output as it comes (like
    `orch logs -f`) under a live status line on a terminal, or with each state change as a
    line when not on one (a pipe, CI, cron). Returns the job and whether any output showed."""
    from .. import controller
    from ..logtail import LogTail

    live = not quiet and console.is_terminal
    ctl_status = console.status("starting", spinner="dots") if live else None
    if ctl_status:
        ctl_status.start()
    started = time.time()
    tail = LogTail(app, job_id)
    shown, said = False, ""

    @contextlib.contextmanager
    def spinner_paused():
        ctl_status.stop()
        try:
            yield
        finally:
            ctl_status.start()

    try:
        while True:
            try:
                with transfer_bars(not quiet, spinner_paused if ctl_status else None), \
                        controller.tick_deadline(controller.hard_stop_after(app.config.controller.tick_budget)):
                    controller.Controller(app).tick()
            except controller.TickOverrun as exc:  # a stalled remote: say so, and tick again
                if not quiet:
                    err_console.print(f"[yellow]warning:[/] {untrusted(str(exc))}")
            job = app.store.job(job_id)
            if not quiet:
                text = tail.read().text
                if text:
                    console.out(strip_controls(text.rstrip("\n"), keep_newlines=True), highlight=False)
                    shown = True
            if job.state.terminal:
                return job, shown
            where = f" on {job.platform}" if job.platform else ""
            if ctl_status:
                note = f" — {untrusted(job.message)}" if job.message else ""
                ctl_status.update(f"{untrusted(job.name)} {styled_state(job.state.value)}{where} "
                                  f"[dim]{format_duration(time.time() - started)}{note}[/]")
            elif not quiet and job.state.value + where != said:
                said = job.state.value + where
                console.out(strip_controls(f"[orch] {job.name} {job.short_id}: {said} "
                                           f"({format_duration(time.time() - started)})"), highlight=False)
            time.sleep(interval)
    finally:
        if ctl_status:
            ctl_status.stop()


def _print_outcome(job: JobRow, result: dict | None, target: Path | None, tail: bool = True) -> None:
    console.print(f"{untrusted(job.name)} {job.short_id}: {styled_state(job.state.value)}"
                  + (f" — {untrusted(job.message)}" if job.message else ""))
    if result:
        gpu = result.get("gpu") or {}
        gpu_text = f"{untrusted(gpu.get('count', 1))}x {untrusted(gpu['name'])}" if gpu.get("name") else "no GPU"
        chain = f" in {result['segments']} segments" if result.get("segments") else ""
        console.print(f"  exit code {untrusted(result.get('exit_code'))}, ran {format_duration(result.get('runtime_s'))}{chain} "
                      f"on {job.platform} ({gpu_text})")
    if tail and target and (target / "job.log").is_file():  # unless it was followed live
        lines = [ln for ln in (target / "job.log").read_text(errors="replace").splitlines()
                 if ln.strip() and not ln.startswith("[orch]")]
        if lines:
            console.print("  last lines of its output:")
            for ln in lines[-8:]:
                console.print(f"    {untrusted(ln)}", soft_wrap=True)
    if target:
        outputs = sorted(p.relative_to(target / "outputs").as_posix() for p in (target / "outputs").rglob("*") if p.is_file()) \
            if (target / "outputs").is_dir() else []
        console.print(f"  results: [bold]{target}/[/] ({len(outputs)} output files, job.log, result.json)")
        for name in outputs[:10]:
            console.print(f"    outputs/{untrusted(name)}")
        if len(outputs) > 10:
            console.print(f"    ... and {len(outputs) - 10} more")
        summary = target / "outputs" / "summary.txt"
        if summary.is_file() and summary.stat().st_size < 4000:
            console.print(strip_controls(summary.read_text(errors="replace").rstrip(), keep_newlines=True),
                          markup=False)


def _size(n: int | float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def register(main: click.Group) -> None:
    """Attach ``submit`` to the CLI."""
    main.add_command(submit)
