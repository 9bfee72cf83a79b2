"""What a user does to jobs and sweeps: submit them, cancel them, retry them, fetch their results.

The CLI calls these; ``controller.py`` moves the jobs along in between.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import bundle as bundle_mod
from . import notebooks
from . import scheduler
from . import spec as spec_mod
from . import sweep as sweep_mod
from .app import App
from .blobstore import BlobStore, restore_artifacts, share_bundle
from .controller import Controller
from .planning import Planner
from .errors import NotFoundError, SpecError, StateError, UsageError
from .platforms.base import Feature, Handle, RemoteState
from .results import install_attempt
from .states import AttemptState, JobState
from .store import Conflict, JobRow

A, J = AttemptState, JobState


@dataclass
class SubmitResult:
    job_id: str | None
    name: str
    bundle: bundle_mod.Bundle
    decision: scheduler.Decision | None
    #: For a sweep: its id (also in ``job_id``) and the id of every point.
    sweep_id: str | None = None
    job_ids: list[str] = field(default_factory=list)
    #: What the job will wait on where it may run (``Platform.submit_warnings``).
    warnings: list[str] = field(default_factory=list)


def submit(app: App, path: Path, pin: str | None = None, allow_files: tuple[str, ...] = (),
           dry_run: bool = False, single: bool = False, gitignore: bool = True) -> SubmitResult:
    """Validate ``path``, bundle it and queue it (or, with ``dry_run``, only explain).

    Every refusal comes before anything is queued, and ``dry_run`` refuses exactly what
    a real submit refuses; ``single`` (``--wait``) refuses a sweep.
    """
    spec = spec_mod.load(path)
    configured = app.config.names
    for i, name in enumerate(spec.platforms):
        if name not in configured:
            raise SpecError(_unknown_platform(spec.where("platforms", i), name, configured))
    if pin is not None and pin not in configured:
        raise UsageError(_unknown_platform("--platform", pin, configured))
    if single and spec.sweep:
        raise UsageError(f"{spec.where('sweep')}: --wait follows one job and this job.yaml is a sweep; "
                         "submit it without --wait and follow it with `orch status SWEEP`")
    allowed = _check_feasible(app, spec, pin)
    check_job_notify(spec, list(app.config.notify.channels))
    warnings = [f"{name}: {w}" for name in allowed for w in app.platform(name).submit_warnings()]
    cache = bundle_mod.DatasetCache(app.home.blobs, app.home.index)
    bundle = bundle_mod.build(spec, app.home.bundles, cache, allow_files, exclude=[app.home.root],
                              gitignore=gitignore, extra_files=notebooks.bundle_files(spec))
    points = sweep_mod.expand(spec.sweep) if spec.sweep else []
    if not dry_run and app.store.shared:
        share_bundle(BlobStore(app.store), bundle)  # any team controller may dispatch it
    if dry_run:
        candidate = scheduler.Candidate(id="(new)", spec=spec, pin=pin)
        decision = Planner(app).plan([candidate])[0]
        return SubmitResult(None, spec.name, bundle, decision, warnings=warnings)
    if points:
        sweep_id, job_ids = sweep_mod.submit(app.store, spec, bundle.digest, points, pin)
        return SubmitResult(sweep_id, spec.name, bundle, None, sweep_id=sweep_id, job_ids=job_ids, warnings=warnings)
    job_id = app.store.add_job(name=spec.name, spec=spec.public_dict(), bundle=bundle.digest,
                               priority=spec.priority, pin=pin)
    return SubmitResult(job_id, spec.name, bundle, None, job_ids=[job_id], warnings=warnings)


def check_job_notify(spec: spec_mod.JobSpec, channels: list[str]) -> None:
    """Refuse a job.yaml ``notify:`` that names a channel config.yaml does not have."""
    for part in ("add", "silence"):
        for name in getattr(spec.notify, part):
            if name != "all" and name not in channels:
                raise SpecError(f"{spec.where('notify')}: notify: unknown channel '{name}' (configured in "
                                f"config.yaml notify.channels: {', '.join(channels) or 'none'})")


def _check_feasible(app: App, spec: spec_mod.JobSpec, pin: str | None) -> list[str]:
    """Refuse a job that no allowed platform could ever run as configured (a GPU job and
    only CPU platforms, say): queued, it would wait forever. Returns the platforms that fit."""
    offers = Planner(app).offers()
    names = scheduler.allowed_platforms(scheduler.Candidate("(new)", spec, pin), list(offers))
    notebooks.check_executor(spec, [offers[n] for n in names])
    fitting, reasons = [], []
    for name in names:
        why = scheduler.misfit(spec, offers[name])
        if why is None:
            fitting.append(name)
        else:
            reasons.append(f"{name}: {why}")
    if fitting:
        return fitting
    hint = " — configure a platform that has one, or accept the CPU with gpu: [any, none]" \
        if spec.resources.wants_gpu else ""
    raise SpecError(f"{spec.where('resources')}: no configured platform can run this job "
                    f"({'; '.join(reasons)}){hint}")


def _unknown_platform(where: str, name: str, configured: list[str]) -> str:
    import difflib

    hint = difflib.get_close_matches(name, configured, n=1)
    did = f" — did you mean '{hint[0]}'?" if hint else ""
    return f"{where}: platforms: unknown platform '{name}'{did} (configured: {', '.join(configured)})"


def cancel(app: App, job: JobRow) -> str:
    """Cancel a queued or running job; returns a sentence for the user."""
    ctl = Controller(app)
    for _ in range(10):
        job = app.store.job(job.id)
        if job.state.terminal:
            raise StateError(f"job {job.short_id} already ended ({job.state.value})")
        try:
            if job.state == J.QUEUED:
                with app.store.transaction() as tx:
                    tx.move_job(job.id, J.QUEUED, J.CANCELLED, "cancelled by user", message="cancelled")
                return f"cancelled {job.short_id} ({job.name}) before it started"
            att = app.store.attempts_of(job.id)[-1]
            note = ""
            if att.handle:
                platform = app.platform(att.platform)
                offer = platform.offer()
                if Feature.CANCEL in offer.unsupported:
                    note = f"; {offer.unsupported[Feature.CANCEL]}"
                ctl.best_effort_cancel(att.platform, Handle.from_json(att.handle))
            # A run that cannot be stopped goes on to its deadline: charge all of it.
            closing = ctl.ledger_close(att, None, time.time(), charge=bool(att.handle), whole=bool(note))
            with app.store.transaction() as tx:
                tx.move_attempt(att.id, job.id, att.state, A.CANCELLED, "cancelled by user", ended_at=time.time())
                tx.move_job(job.id, job.state, J.CANCELLED, "cancelled by user", message="cancelled")
                closing(tx)
            return f"cancelled {job.short_id} ({job.name}) on {att.platform}{note}"
        except Conflict:
            time.sleep(0.05)
    raise StateError(f"job {job.short_id} keeps changing state; try again")


def resolve_job_or_sweep(app: App, ref: str) -> tuple[JobRow | None, tuple[str, list[JobRow]] | None]:
    """``(job, None)`` when ``ref`` names a job, else ``(None, (sweep id, points))`` when it
    names a sweep; NotFoundError (about the job) when it names neither."""
    try:
        return app.store.resolve(ref), None
    except NotFoundError:
        found = sweep_mod.resolve(app, ref)
        if found is None:
            raise
        return None, found


def cancel_sweep(app: App, sweep_id: str) -> list[str]:
    """Cancel every point of the sweep that has not ended; one sentence per point."""
    rows = app.store.sweep_jobs(sweep_id)
    if not rows:
        raise NotFoundError(f"no sweep {sweep_id}")
    out = []
    for row in rows:
        if row.state.terminal:
            continue
        try:
            out.append(cancel(app, row))
        except StateError as exc:  # it ended meanwhile
            out.append(str(exc))
    if not out:
        raise StateError(f"every point of sweep {sweep_id[:8]} has already ended")
    return out


def retry(app: App, job: JobRow) -> str:
    if job.state not in (J.FAILED, J.LOST, J.CANCELLED):
        raise StateError(f"job {job.short_id} is {job.state.value}; only FAILED, LOST or CANCELLED jobs can be retried")
    with app.store.transaction() as tx:
        tx.move_job(job.id, job.state, J.QUEUED, "retry requested", lost_count=0, error_count=0, avoid={},
                    message="retry requested")
    return f"requeued {job.short_id} ({job.name})"


def retry_sweep(app: App, sweep_id: str) -> list[str]:
    """Requeue every FAILED, LOST or CANCELLED point of the sweep; one sentence per point."""
    out = [retry(app, row) for row in app.store.sweep_jobs(sweep_id)
           if row.state in (J.FAILED, J.LOST, J.CANCELLED)]
    if not out:
        raise StateError(f"no point of sweep {sweep_id[:8]} ended FAILED, LOST or CANCELLED; nothing to retry")
    return out


@dataclass
class SweepFetch:
    """What ``fetch_sweep`` wrote: the folder, each point's sub-folder (or why it has none)
    and the summary table (``summary.csv``: the parameters and result fields per point)."""

    target: Path
    fetched: dict[str, Path]
    missing: dict[str, str]
    summary: list[dict[str, str]]


SUMMARY_FIELDS = ("point", "id", "state", "exit_code", "runtime_s", "gpu", "platform")


#: ``outputs/metrics.json`` larger than this, or with more keys, is not summarised.
MAX_METRICS_BYTES, MAX_METRICS = 65536, 50


def recorded_metrics(folder: Path) -> dict[str, str]:
    """What a point recorded in ``$ORCH_OUTPUT_DIR/metrics.json`` (a flat JSON object; a
    notebook's scrapbook ``glue`` values land there too), as summary.csv columns.
    Untrusted: size-capped, scalars only, names and values one printable line."""
    path = folder / "outputs" / "metrics.json"
    try:
        if not path.is_file() or path.is_symlink() or path.stat().st_size > MAX_METRICS_BYTES:
            return {}
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict):
        return {}
    line = lambda v: "".join(ch for ch in str(v) if ch.isprintable())[:200]  # noqa: E731
    return {line(k)[:64]: line(v) for k, v in list(doc.items())[:MAX_METRICS]
            if isinstance(v, (str, int, float, bool)) and line(k)}


def fetch_sweep(app: App, sweep_id: str, rows: list[JobRow], dest: Path | None, force: bool = False) -> SweepFetch:
    """Fetch every point that has results into ``dest/<point name>/`` (default
    ``./results/<sweep name>-<id8>/``) and write ``summary.csv`` there: one row per point,
    its parameters, then its state and result fields."""
    import csv

    name = (rows[0].extra.get("sweep") or {}).get("name", rows[0].name)
    target = dest or Path("results") / f"{name}-{sweep_id[:8]}"
    fetched, missing, summary = {}, {}, []
    params = list(dict.fromkeys(k for r in rows for k in ((r.extra.get("sweep") or {}).get("params") or {})))
    for row in sorted(rows, key=lambda r: (r.extra.get("sweep") or {}).get("index", 0)):
        try:
            fetched[row.name] = fetch(app, row, target / row.name, force=force)
        except NotFoundError as exc:
            missing[row.name] = str(exc)
        atts = app.store.attempts_of(row.id)
        result = (atts[-1].result if atts else None) or {}
        gpu = result.get("gpu") if isinstance(result.get("gpu"), dict) else {}
        point = (row.extra.get("sweep") or {}).get("params") or {}
        recorded = recorded_metrics(fetched[row.name]) if row.name in fetched else {}
        summary.append({**{k: str(point.get(k, "")) for k in params}, "point": row.name, "id": row.short_id,
                        "state": row.state.value, "exit_code": str(result.get("exit_code", "")),
                        "runtime_s": str(result.get("runtime_s", "")), "gpu": str(gpu.get("name") or ""),
                        "platform": row.platform or "",
                        **{k: v for k, v in recorded.items() if k not in params and k not in SUMMARY_FIELDS}})
    target.mkdir(parents=True, exist_ok=True)
    taken = {*params, *SUMMARY_FIELDS}
    metrics = list(dict.fromkeys(k for r in summary for k in r if k not in taken))
    with open(target / "summary.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=[*params, *SUMMARY_FIELDS, *metrics], restval="")
        writer.writeheader()
        writer.writerows(summary)
    return SweepFetch(target, fetched, missing, summary)


def results_dir(app: App, job: JobRow) -> Path | None:
    """The stored results of the job's latest fetched attempt, if any."""
    root = app.home.results / job.id
    if not root.is_dir():
        return None
    done = sorted((p for p in root.iterdir() if p.is_dir() and p.name.startswith("attempt-") and not p.name.endswith(".partial")),
                  key=lambda p: int(p.name.split("-")[1]))
    return done[-1] if done else None


def fetch(app: App, job: JobRow, dest: Path | None, force: bool = False) -> Path:
    """Copy the job's results into ``dest`` (default ``./results/<name>-<id8>``). Idempotent;
    files the user changed there since are never overwritten unless ``force``."""
    from .results import changed_files, copy_tree

    src = results_dir(app, job)
    if src is None and app.store.shared:
        src = _results_from_team(app, job)
    if src is None:
        if job.state == J.CANCELLED:
            raise NotFoundError(f"job {job.short_id} was cancelled: it has no results; `orch fetch {job.short_id} "
                                "--partial` gets what it wrote before it was stopped")
        if job.state.terminal:
            raise NotFoundError(f"job {job.short_id} ended {job.state.value} without results to fetch ({job.message})")
        raise NotFoundError(f"job {job.short_id} is {job.state.value}; results arrive when it ends "
                            f"(`orch logs -f {job.short_id}` to follow it)")
    target = dest or Path("results") / f"{job.name}-{job.short_id}"
    changed = [] if force or not target.exists() else changed_files(src, target)
    if changed:
        shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
        raise UsageError(f"{target}/ has files that differ from the job's results ({shown}); nothing was "
                         "copied: fetch into another folder with -o DIR, or overwrite them with --force")
    copy_tree(src, target)
    _copy_attempt_logs(src.parent, target)
    return target


def fetch_partial(app: App, job: JobRow, dest: Path | None, force: bool = False) -> Path:
    """A cancelled job's partial outputs (the runner packs what the job wrote when it is
    stopped), read from its platform while the platform still holds the attempt, into
    ``dest`` (default ``./results/<name>-<id8>-partial``)."""
    from .errors import OrchError
    from .results import changed_files, copy_tree

    if job.state != J.CANCELLED:
        raise StateError(f"job {job.short_id} is {job.state.value}; --partial is for a cancelled job "
                         f"(`orch fetch {job.short_id}` gets a finished job's results)")
    started = [a for a in app.store.attempts_of(job.id) if a.handle]
    if not started:
        raise NotFoundError(f"job {job.short_id} was cancelled before it started: it has no outputs")
    att = started[-1]
    stored = app.home.results / job.id / f"partial-{att.number}"
    if not stored.is_dir():
        staging = app.home.staging / f"partial-{att.key}"
        staging.mkdir(parents=True, exist_ok=True)
        platform, handle = app.platform(att.platform), Handle.from_json(att.handle)
        try:
            stopping = platform.poll(handle).state in (RemoteState.PENDING, RemoteState.RUNNING)
            if not stopping:
                platform.fetch(handle, staging)
        except OrchError as exc:
            raise NotFoundError(f"job {job.short_id}'s partial outputs cannot be read from {att.platform}: {exc} "
                                "(a platform keeps a cancelled attempt only until a tick cleans it up)") from None
        if stopping:
            raise StateError(f"job {job.short_id} is still stopping on {att.platform} (its runner packs what it "
                             "wrote); try again in a few seconds")
        install_attempt(staging, stored)
        shutil.rmtree(staging, ignore_errors=True)
    target = dest or Path("results") / f"{job.name}-{job.short_id}-partial"
    changed = [] if force or not target.exists() else changed_files(stored, target)
    if changed:
        raise UsageError(f"{target}/ has files that differ from the job's partial outputs ({', '.join(changed[:3])}); "
                         "nothing was copied: use -o DIR, or --force to overwrite them")
    copy_tree(stored, target)
    return target


def _copy_attempt_logs(root: Path, target: Path) -> None:
    """With more than one fetched attempt (retries, a chain's segments): each one's log as
    ``logs/attempt-N.log`` beside the latest results."""
    logs = sorted(root.glob("attempt-*/job.log"))
    if len(logs) < 2:
        return
    (target / "logs").mkdir(exist_ok=True)
    for log in logs:
        there = target / "logs" / f"{log.parent.name}.log"
        if log.parent.name.endswith(".partial") or log.is_symlink() or there.exists():
            continue  # a fetched attempt's log never changes: one copy, never overwritten
        shutil.copyfile(log, there)


def _results_from_team(app: App, job: JobRow) -> Path | None:
    """Results fetched by another member's controller, copied here from the shared store."""
    done = [a for a in app.store.attempts_of(job.id) if a.artifacts]
    if not done:
        return None
    att = done[-1]
    staging = app.home.staging / f"team-{att.key}"
    shutil.rmtree(staging, ignore_errors=True)
    restore_artifacts(BlobStore(app.store), att.artifacts, staging)
    install_attempt(staging, app.home.results / job.id / f"attempt-{att.number}")
    shutil.rmtree(staging, ignore_errors=True)
    return results_dir(app, job)
