"""The core commands: submit, status, logs, fetch, cancel, retry, tick, platforms, cron, init."""

from __future__ import annotations

import contextlib
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import click
from click import UsageError
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from .. import actions, controller
from .. import sweep as sweep_mod
from ..app import App
from ..config import STARTER, Home
from ..durations import format_duration
from ..errors import ConfigError, NotFoundError, OrchError
from ..platforms.base import Handle
from ..scheduler import Place
from ..states import JobState
from ..store import JobRow, user
from . import main
from .common import ago, console, err_console, json_option, pass_app, print_json, styled_state, transfer_bars


# ---------------------------------------------------------------------------- submit


@main.command()
@click.argument("job_yaml", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--wait", is_flag=True, help="Tick until the job ends, then fetch its results.")
@click.option("--platform", "pin", metavar="NAME", help="Run only on this configured platform.")
@click.option("--dry-run", is_flag=True, help="Show the bundle and where the job would go; queue nothing.")
@click.option("--allow-file", multiple=True, metavar="NAME",
              help="Bundle this credential-looking file anyway (it holds no secret).")
@click.option("--interval", type=float, default=2.0, show_default=True, help="Seconds between ticks with --wait.")
@json_option
@pass_app
def submit(app: App, job_yaml: Path, wait: bool, pin: str | None, dry_run: bool, allow_file: tuple[str, ...],
           interval: float, as_json: bool) -> None:
    """Package a job (code + datasets), queue it, and place it where capacity is left.

    \b
    Example:
      orch submit jobs/els-pricer/job.yaml --wait
      orch submit job.yaml --platform kaggle --json
    """
    with _bundle_progress(quiet=as_json) as (progress, total):
        res = actions.submit(app, job_yaml, pin=pin, allow_files=allow_file, dry_run=dry_run,
                                progress=progress, total=total)
    b = res.bundle
    if dry_run:
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
        return
    job_id = res.job_id
    assert job_id
    if res.sweep_id:
        if wait:
            raise UsageError("--wait follows one job; for a sweep, follow it with `orch status SWEEP`")
        if as_json:
            print_json({"id": res.sweep_id, "sweep_id": res.sweep_id, "jobs": res.job_ids})
        else:
            console.print(f"queued sweep [bold]{res.sweep_id[:8]}[/] ({res.name}): {len(res.job_ids)} jobs sharing "
                          f"bundle {b.digest[:12]}, {_size(b.size)} — `orch status {res.sweep_id[:8]}` shows them")
        return
    if as_json and not wait:
        print_json({"id": job_id})
        return
    if not as_json:
        console.print(f"queued [bold]{job_id[:8]}[/] ({res.name}), bundle {b.digest[:12]}, {_size(b.size)}")
    if not wait:
        return
    job = _wait(app, job_id, interval, quiet=as_json)
    target = None
    try:
        target = actions.fetch(app, job, None)
    except NotFoundError:
        pass
    att = app.store.attempts_of(job.id)
    result = att[-1].result if att else None
    if as_json:
        print_json({"id": job.id, "state": job.state.value, "results": str(target) if target else None,
                    "exit_code": result.get("exit_code") if result else None})
    else:
        _print_outcome(job, result, target)
    if job.state != JobState.SUCCEEDED:
        sys.exit(1)


def _wait(app: App, job_id: str, interval: float, quiet: bool) -> JobRow:
    """Tick until the job is terminal, with a live status line."""
    ctl_status = None if quiet else console.status("starting", spinner="dots")
    if ctl_status:
        ctl_status.start()
    started = time.time()

    @contextlib.contextmanager
    def spinner_paused():
        ctl_status.stop()
        try:
            yield
        finally:
            ctl_status.start()

    try:
        while True:
            with transfer_bars(not quiet, spinner_paused if ctl_status else None):
                controller.Controller(app).tick()
            job = app.store.job(job_id)
            if job.state.terminal:
                return job
            if ctl_status:
                where = f" on {job.platform}" if job.platform else ""
                note = f" — {job.message}" if job.message else ""
                ctl_status.update(f"{job.name} {styled_state(job.state.value)}{where} "
                                  f"[dim]{format_duration(time.time() - started)}{note}[/]")
            time.sleep(interval)
    finally:
        if ctl_status:
            ctl_status.stop()


def _print_outcome(job: JobRow, result: dict | None, target: Path | None) -> None:
    console.print(f"{job.name} {job.short_id}: {styled_state(job.state.value)}"
                  + (f" — {job.message}" if job.message else ""))
    if result:
        gpu = result.get("gpu") or {}
        gpu_text = f"{gpu.get('count', 1)}x {gpu['name']}" if gpu.get("name") else "no GPU"
        console.print(f"  exit code {result.get('exit_code')}, ran {format_duration(result.get('runtime_s'))} "
                      f"on {job.platform} ({gpu_text})")
    if target and (target / "job.log").is_file():
        lines = [ln for ln in (target / "job.log").read_text(errors="replace").splitlines()
                 if ln.strip() and not ln.startswith("[orch]")]
        if lines:
            console.print("  last lines of its output:")
            for ln in lines[-8:]:
                console.print(f"    {ln}", markup=False)
    if target:
        outputs = sorted(p.relative_to(target / "outputs").as_posix() for p in (target / "outputs").rglob("*") if p.is_file()) \
            if (target / "outputs").is_dir() else []
        console.print(f"  results: [bold]{target}/[/] ({len(outputs)} output files, job.log, result.json)")
        for name in outputs[:10]:
            console.print(f"    outputs/{name}")
        if len(outputs) > 10:
            console.print(f"    ... and {len(outputs) - 10} more")
        summary = target / "outputs" / "summary.txt"
        if summary.is_file() and summary.stat().st_size < 4000:
            console.print(summary.read_text(errors="replace").rstrip(), markup=False)


class _bundle_progress:
    """A progress bar for archiving large datasets; silent for small ones."""

    THRESHOLD = 64 * 1024 * 1024

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.progress: Progress | None = None
        self.task = None

    def __enter__(self):
        return self._advance, self._total

    def _total(self, n: int) -> None:
        if self.quiet or n < self.THRESHOLD:
            return
        if self.progress is None:
            self.progress = Progress(TextColumn("archiving datasets"), BarColumn(), DownloadColumn(),
                                     TransferSpeedColumn(), TimeRemainingColumn(), console=err_console)
            self.progress.start()
            self.task = self.progress.add_task("datasets", total=n)
        else:
            self.progress.update(self.task, total=(self.progress.tasks[0].total or 0) + n)

    def _advance(self, n: int) -> None:
        if self.progress is not None:
            self.progress.advance(self.task, n)

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.stop()
        return False


def _size(n: int | float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


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


@main.command()
@click.argument("job", required=False)
@click.option("--all", "show_all", is_flag=True, help="Show every job, not only the latest 50.")
@click.option("--expand", is_flag=True, help="List each point of a sweep under its line.")
@click.option("--mine", is_flag=True, help="Only jobs I submitted (user name, or $ORCH_USER).")
@json_option
@pass_app
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
        try:
            row = app.store.resolve(job)
        except NotFoundError:
            found = sweep_mod.resolve(app, job)
            if found is None:
                raise
            _status_sweep(app, found[0], found[1], as_json)
            return
        _status_one(app, row, as_json)
        return
    rows = app.store.jobs(limit=None if show_all else 50, submitted_by=user() if mine else None)
    latest = app.store.latest_attempts([j.id for j in rows])
    chains: dict[str, int] = {}
    chain_time: dict[str, float] = {}
    for j in rows:
        if j.checkpoint:  # a chain: count its segments and add up their time
            atts = app.store.attempts_of(j.id)
            chains[j.id] = sum(1 for a in atts if a.state.value == "CHECKPOINTED")
            chain_time[j.id] = sum(a.runtime_s or 0 for a in atts)
    if as_json:
        print_json([job_json(j, latest.get(j.id), chains.get(j.id, 0)) for j in rows])
        return
    if not rows:
        console.print("no jobs yet — `orch submit job.yaml` queues one")
        return
    sweeps = app.store.sweep_counts({j.sweep_id for j in rows if j.sweep_id})
    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("ID", "NAME", "STATE", "PLATFORM", "GPU", "TRIES", "TIME", "AGE", "NOTE"):
        table.add_column(col, overflow="fold" if col == "NOTE" else "ellipsis", no_wrap=col != "NOTE")
    shown: set[str] = set()
    for j in rows:
        if j.sweep_id:
            if j.sweep_id in shown:
                continue
            shown.add(j.sweep_id)
            points = [r for r in rows if r.sweep_id == j.sweep_id]
            counts = sweeps.get(j.sweep_id, {})
            name = (j.extra.get("sweep") or {}).get("name", j.name)
            state = sweep_mod.overall_state(counts)
            where = sorted({r.platform for r in points if r.platform})
            table.add_row(j.sweep_id[:8], f"{name} [dim](sweep)[/]", styled_state(state), ",".join(where) or "-", "-",
                          str(sum(r.attempts for r in points)), "-", ago(min(r.created_at for r in points)),
                          sweep_mod.progress(counts))
            if expand:
                for r in sorted(points, key=lambda r: r.created_at):
                    _status_row(table, r, latest.get(r.id), chains.get(r.id, 0), indent=True,
                                total=chain_time.get(r.id))
            continue
        _status_row(table, j, latest.get(j.id), chains.get(j.id, 0), total=chain_time.get(j.id))
    console.print(table)
    counts = app.store.counts()
    if not show_all and sum(counts.values()) > len(rows):
        console.print(f"[dim]showing the latest {len(rows)} of {sum(counts.values())} jobs; --all for every one[/]")


def _status_row(table: Table, j: JobRow, a, segments: int, indent: bool = False, total: float | None = None) -> None:
    runtime = a.runtime_s if a and a.runtime_s else (time.time() - a.started_at if a and a.started_at and j.state.active else None)
    if segments and total is not None:  # a chain: the time of all its segments
        runtime = total + (runtime if j.state.active and runtime and not (a and a.runtime_s) else 0.0)
    tries = f"{j.attempts} ({segments} seg)" if segments else str(j.attempts)
    params = (j.extra.get("sweep") or {}).get("params")
    note = _escape(j.message)
    if indent and params:
        note = _escape(sweep_mod.label(params)) + (f" — {note}" if note else "")
    table.add_row(("  " if indent else "") + j.short_id, j.name, styled_state(j.state.value), j.platform or "-",
                  (a.gpu_name or "-") if a else "-", tries, format_duration(runtime), ago(j.created_at), note)


def _status_sweep(app: App, sweep_id: str, rows: list[JobRow], as_json: bool) -> None:
    latest = app.store.latest_attempts([j.id for j in rows])
    counts = app.store.sweep_counts([sweep_id]).get(sweep_id, {})
    name = (rows[0].extra.get("sweep") or {}).get("name", rows[0].name)
    if as_json:
        print_json({"sweep_id": sweep_id, "name": name, "state": sweep_mod.overall_state(counts),
                    "counts": counts, "jobs": [job_json(j, latest.get(j.id)) for j in rows]})
        return
    console.print(f"[bold]{name}[/] sweep {sweep_id}: {styled_state(sweep_mod.overall_state(counts))} — "
                  f"{sweep_mod.progress(counts)}")
    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("ID", "NAME", "STATE", "PLATFORM", "GPU", "TRIES", "TIME", "AGE", "NOTE"):
        table.add_column(col, overflow="fold" if col == "NOTE" else "ellipsis", no_wrap=col != "NOTE")
    for j in rows:
        _status_row(table, j, latest.get(j.id), 0, indent=True)
    console.print(table)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text or "")


def _status_one(app: App, job: JobRow, as_json: bool) -> None:
    attempts = app.store.attempts_of(job.id)
    events = app.store.events_of(job.id)
    if as_json:
        doc = job_json(job, attempts[-1] if attempts else None)
        doc["spec"] = job.spec
        doc["attempts_detail"] = [
            {"number": a.number, "key": a.key, "platform": a.platform, "state": a.state.value,
             "exit_code": a.exit_code, "failure_class": a.failure_class, "message": a.message,
             "runtime_s": a.runtime_s, "gpu": a.gpu_name, "created_at": a.created_at, "ended_at": a.ended_at}
            for a in attempts]
        doc["events"] = [{k: e[k] for k in ("at", "kind", "from_state", "to_state", "reason", "actor")} for e in events]
        results = actions.results_dir(app, job)
        doc["results"] = str(results) if results else None
        print_json(doc)
        return
    console.print(f"[bold]{job.name}[/] {job.id}")
    console.print(f"  state     {styled_state(job.state.value)}" + (f" — {_escape(job.message)}" if job.message else ""))
    console.print(f"  platform  {job.platform or '-'}   attempts {job.attempts}   priority {job.priority}")
    console.print(f"  submitted {ago(job.created_at)} by {job.submitted_by}@{job.submitted_host}")
    res = job.spec.get("resources", {})
    gpu = "/".join(res.get("gpu") or []) or "none"
    console.print(f"  needs     gpu {gpu}, max_runtime {format_duration(res.get('max_runtime'))}")
    params = (job.extra.get("sweep") or {}).get("params")
    if params:
        console.print(f"  sweep     {job.sweep_id[:8]} point {job.extra['sweep']['index']}: {_escape(sweep_mod.label(params))}")
    segments = [a for a in attempts if a.state.value == "CHECKPOINTED"]
    if segments:
        total = sum(a.runtime_s or 0 for a in attempts if a.state.value in ("CHECKPOINTED", "SUCCEEDED", "FAILED"))
        console.print(f"  chain     {len(segments)} checkpointed segment(s) so far, {format_duration(total)} run of "
                      f"{format_duration(res.get('max_runtime'))} max_runtime, on "
                      f"{', '.join(dict.fromkeys(a.platform for a in segments))}")
    if attempts:
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
                      a.gpu_name or "-", _escape(a.message))
        console.print(t)
    t = Table(box=None, header_style="bold", title="events", title_justify="left")
    for col in ("WHEN", "WHAT", "CHANGE", "REASON"):
        t.add_column(col)
    for e in events:
        change = f"{e['from_state'] or '·'} → {e['to_state']}"
        t.add_row(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["at"])), e["kind"], change, _escape(e["reason"]))
    console.print(t)
    results = actions.results_dir(app, job)
    if results:
        console.print(f"  results stored in {results} — `orch fetch {job.short_id}` copies them here")


# ---------------------------------------------------------------------------- logs


@main.command()
@click.argument("job")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new output until the job ends.")
@click.option("--interval", type=float, default=2.0, show_default=True, help="Seconds between reads with -f.")
@pass_app
def logs(app: App, job: str, follow: bool, interval: float) -> None:
    """Print a job's log (the latest attempt), optionally following it.

    \b
    Example:
      orch logs 3f9c -f
    """
    row = app.store.resolve(job)
    offset = 0
    current_key = None
    while True:
        row = app.store.job(row.id)
        done = row.state.terminal
        attempts = app.store.attempts_of(row.id)
        att = attempts[-1] if attempts else None
        if att is not None and att.key != current_key:
            if current_key is not None:
                click.echo(f"\n[orch] --- attempt {att.number} on {att.platform} ---")
            current_key, offset = att.key, 0
        stored = app.home.results / row.id / f"attempt-{att.number}" / "job.log" if att else None
        if stored is not None and stored.is_file():
            data = stored.read_bytes()[offset:]
            offset += len(data)
            click.echo(data.decode("utf-8", "replace"), nl=False)
        elif att is not None and att.handle:
            try:
                chunk = app.platform(att.platform).logs(Handle.from_json(att.handle), offset)
            except OrchError as exc:
                if not follow:
                    raise
                err_console.print(f"[dim]log not readable yet: {_escape(str(exc))}[/]")
            else:
                click.echo(chunk.text, nl=False)
                offset = chunk.offset
        elif not follow:
            raise NotFoundError(f"job {row.short_id} has no log yet ({row.state.value}); use -f to wait for it")
        if not follow or done:
            return
        time.sleep(interval)


# ---------------------------------------------------------------------------- fetch / cancel / retry


@main.command()
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
    row = app.store.resolve(job)
    target = actions.fetch(app, row, dest)
    if as_json:
        print_json({"id": row.id, "state": row.state.value, "path": str(target)})
    else:
        console.print(f"{row.name} {row.short_id} ({styled_state(row.state.value)}): results in [bold]{target}/[/]")


@main.command()
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
    out = []
    for ref in jobs:
        try:
            row = app.store.resolve(ref)
        except NotFoundError:
            found = sweep_mod.resolve(app, ref)
            if found is None:
                raise
            for msg in sweep_mod.cancel(app, found[0]):
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


@main.command()
@click.argument("job")
@json_option
@pass_app
def retry(app: App, job: str, as_json: bool) -> None:
    """Put a FAILED, LOST or CANCELLED job back in the queue.

    \b
    Example:
      orch retry 3f9c
    """
    row = app.store.resolve(job)
    msg = actions.retry(app, row)
    print_json({"id": row.id, "state": "QUEUED"}) if as_json else console.print(msg)


# ---------------------------------------------------------------------------- tick


@main.command()
@click.option("--quiet", "-q", is_flag=True, help="Print only problems (for cron).")
@json_option
@pass_app
def tick(app: App, quiet: bool, as_json: bool) -> None:
    """Run one scheduler pass: reconcile, poll, fetch, retry, dispatch.

    Safe to run from cron and by hand at the same time, and from several machines
    sharing one PostgreSQL queue: each tick works only on jobs it has claimed.

    \b
    Example:
      orch tick
      */5 * * * * orch tick --quiet   (see `orch cron`)
    """
    with transfer_bars(not (quiet or as_json)):
        report = controller.Controller(app).tick()
    if as_json:
        print_json(report.to_json())
        return
    for p in report.problems:
        err_console.print(f"[yellow]warning:[/] {_escape(p)}")
    if quiet:
        return
    console.print(f"tick: {len(report.dispatched)} dispatched, {len(report.finished)} finished, "
                  f"{len(report.requeued)} requeued ({report.seconds:.2f}s)")


# ---------------------------------------------------------------------------- platforms


@main.command()
@json_option
@pass_app
def platforms(app: App, as_json: bool) -> None:
    """List configured platforms with what they offer, their quota, and any problem.

    \b
    Example:
      orch platforms
    """
    ctl = controller.Controller(app)
    offers = ctl.offers()
    running = app.store.active_counts()
    docs = []
    for name, offer in offers.items():
        problems: list[str] = []
        quota = None
        try:
            p = app.platform(name)
            problems = p.check()
            quota = p.quota()
        except OrchError as exc:
            problems = [str(exc)]
        docs.append({
            "name": name, "type": offer.type, "gpus": list(offer.gpus), "gpu_memory_gb": offer.gpu_memory_gb,
            "max_concurrent": offer.max_concurrent, "running": running.get(name, 0),
            "session_seconds": offer.session_seconds, "internet": offer.internet, "tier": offer.tier,
            "available": offer.available, "reason": offer.reason, "problems": problems,
            "quota": None if quota is None else {
                "unit": quota.unit, "used": quota.used, "limit": quota.limit, "reserved": quota.reserved,
                "resets_at": quota.resets_at.isoformat() if quota.resets_at else None, "source": quota.source},
        })
    if as_json:
        print_json(docs)
        return
    table = Table(box=None, header_style="bold")
    for col in ("NAME", "TYPE", "GPU", "RUNNING", "SESSION", "QUOTA", "STATUS"):
        table.add_column(col, overflow="fold")
    for d in docs:
        q = d["quota"]
        quota = "-" if q is None else (
            f"{q['used']:.1f}/{q['limit']:.0f} {q['unit'].replace('_', ' ')}, "
            f"{max(0.0, q['limit'] - q['used'] - q['reserved']):.1f} left" if q["limit"] else f"{q['used']:.1f} {q['unit']}")
        if q and q.get("resets_at"):
            quota += f", resets {q['resets_at'][:16].replace('T', ' ')} UTC"
        status_text = "ready" if d["available"] and not d["problems"] else "; ".join(d["problems"] or [d["reason"]])
        table.add_row(d["name"], d["type"], "/".join(d["gpus"]) or "CPU", f"{d['running']}/{d['max_concurrent']}",
                      format_duration(d["session_seconds"]) if d["session_seconds"] else "none", quota,
                      ("[green]ready[/]" if status_text == "ready" else f"[yellow]{_escape(status_text)}[/]"))
    console.print(table)


# ---------------------------------------------------------------------------- cron / init


CRON_MARK = "# orch tick"


def cron_line(home: Home, every: int) -> str:
    exe = shutil.which("orch") or f"{sys.executable} -m orchestrator"
    log = home.root / "cron.log"
    return (f"*/{every} * * * * ORCH_HOME={shlex.quote(str(home.root))} {shlex.quote(exe)} tick --quiet "
            f">> {shlex.quote(str(log))} 2>&1 {CRON_MARK}")


@main.command()
@click.option("--install", is_flag=True, help="Add the line to your crontab (idempotent).")
@click.option("--every", type=click.IntRange(1, 59), default=5, show_default=True, help="Minutes between ticks.")
@pass_app
def cron(app: App, install: bool, every: int) -> None:
    """Print (or install) the crontab line that runs `orch tick` every few minutes.

    \b
    Example:
      orch cron --install --every 5
    """
    line = cron_line(app.home, every)
    if not install:
        click.echo(line)
        return
    if shutil.which("crontab") is None:
        raise ConfigError("`crontab` is not installed; add this line with your scheduler instead:\n" + line)
    current = subprocess.run(["crontab", "-l"], capture_output=True, text=True)
    lines = current.stdout.splitlines() if current.returncode == 0 else []
    kept = [ln for ln in lines if not ln.rstrip().endswith(CRON_MARK)]
    if line in lines and len(kept) == len(lines) - 1:
        console.print("crontab already has the orch tick line")
        return
    new = "\n".join(kept + [line]) + "\n"
    done = subprocess.run(["crontab", "-"], input=new, capture_output=True, text=True)
    if done.returncode != 0:
        raise OrchError(f"crontab refused the new table: {done.stderr.strip()}")
    console.print(f"installed: {line}")


@main.command()
@click.option("--force", is_flag=True, help="Overwrite an existing config.yaml.")
@click.option("--state", "state_url", metavar="URL", help="State database URL (default: SQLite in the orch home).")
def init(force: bool, state_url: str | None) -> None:
    """Write a commented starter config.yaml into the orch home and create the state DB.

    \b
    Example:
      orch init
      ORCH_HOME=~/orch-team orch init --state postgresql+psycopg://me@db/orch
    """
    home = Home.discover()
    home.ensure()
    path = home.config_path
    if path.exists() and not force:
        console.print(f"{path} already exists (use --force to overwrite)")
    else:
        text = STARTER.format(home=home.root)
        if state_url:
            text = text.replace(f"# state: sqlite:///{home.root}/state.db", f"state: {state_url}", 1)
        path.write_text(text)
        console.print(f"wrote {path}")
    app = App.open(home)
    try:
        console.print(f"state database ready (schema version {app.store.schema_version})")
    finally:
        app.close()
