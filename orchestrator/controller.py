"""The controller: ``submit`` puts jobs in the queue, ``tick`` moves everything along.

One tick = reconcile (adopt or resubmit attempts a crashed tick left SUBMITTING,
re-fetch attempts left FETCHING), poll active attempts (fetching finished ones and
requeueing lost ones), then dispatch queued jobs. Every step writes its intent to
the store before the remote call and records the outcome after it, so a tick killed
at any point is finished by the next one. Overlapping ticks are kept apart by a
lock, and every transition is a compare-and-set, so even without the lock no
attempt could be submitted twice.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from filelock import FileLock, Timeout

from . import bundle as bundle_mod
from . import failpoints, scheduler
from . import spec as spec_mod
from .app import App
from .errors import (
    CapacityError, ConfigError, LostError, NotFoundError, OrchError, PlatformError, PrecheckError, SpecError,
    StateError, TransientError,
)
from .platforms.base import Handle, Launch, Offer, RemoteState, RemoteStatus, platform_class
from .results import install_attempt, read_result
from .states import ACTIVE_ATTEMPT_STATES, AttemptState, JobState
from .store import AttemptRow, Conflict, JobRow, attempt_key

A, J = AttemptState, JobState


@dataclass
class SubmitResult:
    job_id: str | None
    name: str
    bundle: bundle_mod.Bundle
    decision: scheduler.Decision | None


@dataclass
class TickReport:
    skipped: str = ""
    dispatched: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    requeued: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {"skipped": self.skipped, "dispatched": self.dispatched, "finished": self.finished,
                "requeued": self.requeued, "problems": self.problems, "seconds": round(self.seconds, 3)}


# ---------------------------------------------------------------------------- submit


def submit(app: App, path: Path, pin: str | None = None, allow_files: tuple[str, ...] = (),
           dry_run: bool = False, progress: Callable[[int], None] | None = None,
           total: Callable[[int], None] | None = None) -> SubmitResult:
    """Validate ``path``, bundle it and queue it (or, with ``dry_run``, only explain)."""
    spec = spec_mod.load(path)
    configured = app.config.names
    for i, name in enumerate(spec.platforms):
        if name not in configured:
            raise SpecError(_unknown_platform(spec.where("platforms", i), name, configured))
    if pin and pin not in configured:
        raise NotFoundError(_unknown_platform("--platform", pin, configured))
    cache = bundle_mod.DatasetCache(app.home.blobs, app.home.index)
    bundle = bundle_mod.build(spec, app.home.bundles, cache, allow_files, progress, total)
    candidate = scheduler.Candidate(id="(new)", spec=spec, pin=pin)
    decision = None
    if dry_run:
        offers = Controller(app).offers()
        decision = scheduler.place([candidate], offers, app.store.active_counts(), time.time())[0]
        return SubmitResult(None, spec.name, bundle, decision)
    job_id = app.store.add_job(name=spec.name, spec=spec.public_dict(), bundle=bundle.digest,
                               priority=spec.priority, pin=pin)
    return SubmitResult(job_id, spec.name, bundle, decision)


def _unknown_platform(where: str, name: str, configured: list[str]) -> str:
    import difflib

    hint = difflib.get_close_matches(name, configured, n=1)
    did = f" — did you mean '{hint[0]}'?" if hint else ""
    return f"{where}: platforms: unknown platform '{name}'{did} (configured: {', '.join(configured)})"


# ---------------------------------------------------------------------------- tick


class Controller:
    """Runs ticks over one App."""

    def __init__(self, app: App):
        self.app = app
        self.store = app.store
        self.settings = app.config.controller
        self.report = TickReport()

    # ------------------------------------------------------------------ helpers
    def offers(self) -> dict[str, Offer]:
        """Every configured platform's offer; a platform that cannot even describe
        itself is shown unavailable with the reason, never dropped silently."""
        out: dict[str, Offer] = {}
        for name, settings in self.app.config.platforms.items():
            try:
                out[name] = self.app.platform(name).offer()
            except OrchError as exc:
                out[name] = Offer(platform=name, type=settings.type, available=False, reason=str(exc))
        return out

    def _spec(self, job: JobRow) -> spec_mod.JobSpec:
        return spec_mod.from_public_dict(job.spec)

    def _launch(self, job: JobRow, number: int, platform_name: str, offer: Offer | None) -> Launch:
        spec = self._spec(job)
        directory = self.app.home.bundles / job.bundle
        if not (directory / "manifest.json").is_file():
            raise PrecheckError(f"the bundle of job {job.short_id} is missing from {directory}; resubmit the job")
        bundle = bundle_mod.load_bundle(directory, self.app.home.blobs)
        secrets = {name: os.environ[name] for name in spec.secrets if name in os.environ}
        previous = [a for a in self.store.attempts_of(job.id) if a.state == A.CHECKPOINTED]
        used = sum(a.runtime_s or 0 for a in previous)
        # A chain's later segments get what is left of max_runtime (at least a minute).
        remaining = max(spec.resources.max_runtime - used, 60.0) if used else spec.resources.max_runtime
        session = offer.session_seconds if offer else None
        chain = spec.checkpoint is not None and session is not None and remaining > session
        checkpoint = self.app.home.blobs / f"checkpoint-{job.checkpoint}.tar.gz" if job.checkpoint else None
        return Launch(
            key=attempt_key(job.id, number), job_id=job.id, job_name=job.name, attempt=number, spec=spec,
            bundle=bundle, max_runtime_s=remaining, session_seconds=session if chain else None,
            grace_s=self.settings.grace, env=job.extra.get("env", {}), secrets=secrets,
            checkpoint=checkpoint if checkpoint and checkpoint.is_file() else None,
            previous=Handle.from_json(previous[-1].handle) if previous and previous[-1].handle else None,
        )

    def _problem(self, text: str) -> None:
        self.report.problems.append(text)

    # ------------------------------------------------------------------ tick
    def tick(self, lock_timeout: float | None = None) -> TickReport:
        """One pass. Returns at once (``skipped``) if another tick holds the lock."""
        started = time.time()
        timeout = self.settings.lock_timeout if lock_timeout is None else lock_timeout
        lock = FileLock(str(self.app.home.tick_lock))
        try:
            lock.acquire(timeout=timeout)
        except Timeout:
            self.report.skipped = "another tick is running"
            return self.report
        try:
            self.reconcile()
            self.poll()
            self.dispatch()
            self.platform_cleanup()
        finally:
            lock.release()
        self.report.seconds = time.time() - started
        return self.report

    # ------------------------------------------------------------------ reconcile
    def reconcile(self) -> None:
        """Finish what a crashed tick left half-done."""
        for att in self.store.attempts_in([A.SUBMITTING]):
            job = self.store.job(att.job_id)
            if job.state != J.SUBMITTING:
                continue
            try:
                platform = self.app.platform(att.platform)
                handle = platform.find(att.key)
            except (TransientError, ConfigError) as exc:
                self._problem(f"{att.key}: cannot check {att.platform} yet: {exc}")
                continue
            if handle is None:
                offer = self.offers().get(att.platform)
                self._submit(job, att, offer)
            else:
                self._record_submitted(job, att, handle, "adopted after a controller crash")
        for att in self.store.attempts_in([A.FETCHING]):
            self._finish(att)

    def _record_submitted(self, job: JobRow, att: AttemptRow, handle: Handle, reason: str) -> None:
        try:
            with self.store.transaction() as tx:
                tx.move_attempt(att.id, job.id, A.SUBMITTING, A.PENDING, reason, handle=handle.to_json(),
                                started_at=time.time())
                tx.move_job(job.id, J.SUBMITTING, J.PENDING, reason, message="")
        except Conflict:
            # Cancelled while we were submitting: stop what we just started.
            self._best_effort_cancel(att.platform, handle)

    def _best_effort_cancel(self, platform_name: str, handle: Handle) -> None:
        try:
            platform = self.app.platform(platform_name)
            platform.cancel(handle)
        except OrchError as exc:
            self._problem(f"{handle.key}: cancel on {platform_name} failed: {exc}")

    # ------------------------------------------------------------------ dispatch
    def dispatch(self) -> None:
        queued = self.store.queued()
        if not queued:
            return
        offers = self.offers()
        now = time.time()
        waits: dict[str, str] = {}
        candidates = []
        for job in queued:
            try:
                spec = self._spec(job)
            except Exception as exc:  # a stored spec this version cannot read
                waits[job.id] = f"stored spec unreadable: {exc}"
                continue
            missing = [s for s in spec.secrets if s not in os.environ]
            if missing:
                waits[job.id] = (f"secret {', '.join(missing)} is not set in this controller's environment "
                                 f"(export it where `orch tick` runs)")
                continue
            candidates.append(scheduler.Candidate(job.id, spec, job.pin, job.avoid))
        decisions = scheduler.place(candidates, offers, self.store.active_counts(), now)
        by_id = {j.id: j for j in queued}
        for decision in decisions:
            if isinstance(decision, scheduler.Wait):
                waits[decision.job_id] = decision.reason
                continue
            job = by_id[decision.job_id]
            number = job.attempts + 1
            try:
                with self.store.transaction() as tx:
                    tx.move_job(job.id, J.QUEUED, J.SUBMITTING, f"placed on {decision.platform}",
                                platform=decision.platform, attempts=number, message="")
                    attempt_id = tx.add_attempt(job.id, number, decision.platform, f"placed on {decision.platform}",
                                                max_runtime_s=self._spec(job).resources.max_runtime)
            except Conflict:
                continue  # cancelled (or taken) meanwhile
            failpoints.hit("after_intent")
            att = self.store.attempt(attempt_id)
            self._submit(self.store.job(job.id), att, offers.get(decision.platform))
        self.store.note_many({k: v for k, v in waits.items() if by_id.get(k) and by_id[k].message != v})

    def _submit(self, job: JobRow, att: AttemptRow, offer: Offer | None) -> None:
        """The remote call of a dispatch (or of its reconcile)."""
        try:
            platform = self.app.platform(att.platform)
            launch = self._launch(job, att.number, att.platform, offer)
            handle = platform.submit(launch)
        except TransientError as exc:
            # Stays SUBMITTING: the next tick's reconcile finds or resubmits it.
            self.store.note(job.id, f"{att.platform}: submit will be retried: {exc}")
            self._problem(f"{job.short_id}: {exc}")
            return
        except (CapacityError, LostError) as exc:
            self._reject(job, att, str(exc), requeue=True)
            return
        except (PrecheckError, ConfigError, SpecError) as exc:
            self._reject(job, att, str(exc), requeue=False)
            return
        failpoints.hit("after_submit")
        self._record_submitted(job, att, handle, f"submitted to {att.platform}")
        self.report.dispatched.append(job.id)

    def _reject(self, job: JobRow, att: AttemptRow, message: str, requeue: bool) -> None:
        try:
            with self.store.transaction() as tx:
                tx.move_attempt(att.id, job.id, A.SUBMITTING, A.REJECTED, message, message=message, ended_at=time.time())
                if requeue:
                    avoid = dict(job.avoid)
                    avoid[att.platform] = time.time() + self.settings.failover_backoff
                    tx.move_job(job.id, J.SUBMITTING, J.QUEUED, f"{att.platform} refused: {message}",
                                avoid=avoid, message=f"{att.platform} refused: {message}")
                else:
                    tx.move_job(job.id, J.SUBMITTING, J.FAILED, f"precheck failed on {att.platform}",
                                message=f"{att.platform}: {message}")
        except Conflict:
            pass
        self._problem(f"{job.short_id}: {att.platform}: {message}")

    # ------------------------------------------------------------------ poll
    def poll(self) -> None:
        for att in self.store.attempts_in([A.PENDING, A.RUNNING, A.UNKNOWN]):
            self._poll_one(att)

    def _poll_one(self, att: AttemptRow) -> None:
        now = time.time()
        handle = Handle.from_json(att.handle or {"key": att.key})
        try:
            status = self.app.platform(att.platform).poll(handle)
        except (TransientError, ConfigError) as exc:
            status = RemoteStatus(RemoteState.UNKNOWN, str(exc))
        except LostError as exc:
            status = RemoteStatus(RemoteState.LOST, str(exc))
        failpoints.hit("mid_poll")
        job_state = J(att.state.value)
        try:
            if status.state in (RemoteState.PENDING, RemoteState.RUNNING):
                new = A(status.state.value)
                with self.store.transaction() as tx:
                    if new != att.state:
                        tx.move_attempt(att.id, att.job_id, att.state, new, status.message or "status read",
                                        unknown_since=None, heartbeat_at=status.heartbeat_at)
                        tx.move_job(att.job_id, job_state, J(new.value), status.message or "status read")
                    elif status.heartbeat_at:
                        tx.update_attempt(att.id, att.state, heartbeat_at=status.heartbeat_at)
            elif status.state == RemoteState.UNKNOWN:
                if att.state != A.UNKNOWN:
                    with self.store.transaction() as tx:
                        tx.move_attempt(att.id, att.job_id, att.state, A.UNKNOWN, status.message, unknown_since=now,
                                        message=status.message)
                        tx.move_job(att.job_id, job_state, J.UNKNOWN, status.message, message=status.message)
                elif now - (att.unknown_since or now) > self.settings.unknown_window:
                    self._lost(att, f"no status for {int(now - att.unknown_since)}s: {status.message}")
            elif status.state == RemoteState.LOST:
                self._lost(att, status.message or "the platform lost the run")
            elif status.state == RemoteState.EXITED:
                with self.store.transaction() as tx:
                    tx.move_attempt(att.id, att.job_id, att.state, A.FETCHING, status.message or "run ended",
                                    message=status.message)
                    tx.move_job(att.job_id, job_state, J.FETCHING, "run ended")
                self._finish(self.store.attempt(att.id))
        except Conflict:
            pass  # cancelled meanwhile

    def _lost(self, att: AttemptRow, reason: str) -> None:
        job = self.store.job(att.job_id)
        spec = self._spec(job)
        now = time.time()
        with self.store.transaction() as tx:
            tx.move_attempt(att.id, job.id, att.state, A.LOST, reason, message=reason, ended_at=now)
            if job.lost_count < spec.retries:
                avoid = dict(job.avoid)
                avoid[att.platform] = now + self.settings.failover_backoff
                tx.move_job(job.id, job.state, J.QUEUED, f"lost on {att.platform}; retrying",
                            lost_count=job.lost_count + 1, avoid=avoid, message=f"lost on {att.platform}: {reason}")
                self.report.requeued.append(job.id)
            else:
                tx.move_job(job.id, job.state, J.LOST, reason, lost_count=job.lost_count + 1,
                            message=f"lost on {att.platform} and no retries left: {reason}")
        self._release(att)

    # ------------------------------------------------------------------ fetch
    def _finish(self, att: AttemptRow) -> None:
        """Fetch a finished attempt's artefacts and decide what happens to its job."""
        job = self.store.job(att.job_id)
        if job.state != J.FETCHING:
            return
        handle = Handle.from_json(att.handle or {"key": att.key})
        staging = self.app.home.staging / att.key
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            self.app.platform(att.platform).fetch(handle, staging)
        except (TransientError, ConfigError) as exc:
            self.store.note(job.id, f"fetch will be retried: {exc}")
            self._problem(f"{job.short_id}: fetch from {att.platform}: {exc}")
            return
        except LostError as exc:
            self._lost(att, f"outputs could not be fetched: {exc}")
            return
        failpoints.hit("mid_fetch")
        result = read_result(staging / "result.json")
        dest = self.app.home.results / job.id / f"attempt-{att.number}"
        install_attempt(staging, dest)
        checkpoint = self._keep_checkpoint(staging / "checkpoint.tar.gz")
        failpoints.hit("after_fetch")
        self._settle(job, att, result, checkpoint)
        shutil.rmtree(staging, ignore_errors=True)

    def _keep_checkpoint(self, archive: Path) -> str | None:
        if not archive.is_file() or archive.is_symlink():
            return None
        digest = bundle_mod.sha256_file(archive)
        target = self.app.home.blobs / f"checkpoint-{digest}.tar.gz"
        if not target.exists():
            self.app.home.blobs.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(archive, target)
        return digest

    def _settle(self, job: JobRow, att: AttemptRow, result: dict | None, checkpoint: str | None) -> None:
        now = time.time()
        if result is None:
            self._lost(att, att.message or "the run ended without writing result.json")
            return
        spec = self._spec(job)
        status = result.get("status")
        gpu = result.get("gpu") or {}
        fields = dict(result=result, exit_code=result.get("exit_code"), failure_class=result.get("failure_class"),
                      message=result.get("message") or "", runtime_s=result.get("runtime_s"), ended_at=now,
                      gpu_name=gpu.get("name"), gpu_count=gpu.get("count"))
        job_fields: dict = {"checkpoint": checkpoint or job.checkpoint}
        if status == "succeeded":
            a_new, j_new, why = A.SUCCEEDED, J.SUCCEEDED, "succeeded"
        elif status == "checkpointed":
            a_new, j_new, why = A.CHECKPOINTED, J.QUEUED, "checkpointed; the next segment is queued"
        elif status == "cancelled":
            a_new, j_new, why = A.CANCELLED, J.CANCELLED, "cancelled"
        else:
            why = result.get("message") or f"exit code {result.get('exit_code')}"
            a_new = A.FAILED
            retriable = result.get("failure_class") in ("user", "timeout", "setup")
            if retriable and job.error_count < spec.retries_on_error:
                j_new = J.QUEUED
                job_fields["error_count"] = job.error_count + 1
                why = f"{why}; retrying (retries_on_error)"
            else:
                j_new = J.FAILED
        job_fields["message"] = "" if j_new == J.SUCCEEDED else why
        try:
            with self.store.transaction() as tx:
                tx.move_attempt(att.id, job.id, A.FETCHING, a_new, why, **fields)
                tx.move_job(job.id, J.FETCHING, j_new, why, **job_fields)
        except Conflict:
            return
        self.report.finished.append(job.id)
        self._release(att)

    def _release(self, att: AttemptRow) -> None:
        if not att.handle:
            return
        try:
            self.app.platform(att.platform).release(Handle.from_json(att.handle))
        except OrchError as exc:
            self._problem(f"{att.key}: release on {att.platform} failed: {exc}")

    # ------------------------------------------------------------------ platforms
    def platform_cleanup(self) -> None:
        active = {a.key for a in self.store.attempts_in(ACTIVE_ATTEMPT_STATES)}
        for name in self.app.config.names:
            settings = self.app.config.platforms[name]
            # Untouched this tick: nothing of ours to clean, unless the platform asks to be
            # swept every tick (Colab: a runtime left by a crashed tick costs money).
            if name not in self.app._platforms and not getattr(
                    platform_class(settings.type), "reconcile_every_tick", False):
                continue
            try:
                self.app.platform(name).reconcile(active)
            except OrchError as exc:
                self._problem(f"{name}: clean-up failed: {exc}")


# ---------------------------------------------------------------------------- user actions


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
                if "cancel" in offer.unsupported:
                    note = f"; {offer.unsupported['cancel']}"
                ctl._best_effort_cancel(att.platform, Handle.from_json(att.handle))
            with app.store.transaction() as tx:
                tx.move_attempt(att.id, job.id, att.state, A.CANCELLED, "cancelled by user", ended_at=time.time())
                tx.move_job(job.id, job.state, J.CANCELLED, "cancelled by user", message="cancelled")
            return f"cancelled {job.short_id} ({job.name}) on {att.platform}{note}"
        except Conflict:
            time.sleep(0.05)
    raise StateError(f"job {job.short_id} keeps changing state; try again")


def retry(app: App, job: JobRow) -> str:
    if job.state not in (J.FAILED, J.LOST, J.CANCELLED):
        raise StateError(f"job {job.short_id} is {job.state.value}; only FAILED, LOST or CANCELLED jobs can be retried")
    with app.store.transaction() as tx:
        tx.move_job(job.id, job.state, J.QUEUED, "retry requested", lost_count=0, error_count=0, avoid={},
                    message="retry requested")
    return f"requeued {job.short_id} ({job.name})"


def results_dir(app: App, job: JobRow) -> Path | None:
    """The stored results of the job's latest fetched attempt, if any."""
    root = app.home.results / job.id
    if not root.is_dir():
        return None
    done = sorted((p for p in root.iterdir() if p.is_dir() and p.name.startswith("attempt-") and not p.name.endswith(".partial")),
                  key=lambda p: int(p.name.split("-")[1]))
    return done[-1] if done else None


def fetch(app: App, job: JobRow, dest: Path | None) -> Path:
    """Copy the job's results into ``dest`` (default ``./results/<name>-<id8>``). Idempotent."""
    from .results import copy_tree

    src = results_dir(app, job)
    if src is None:
        if job.state.terminal:
            raise NotFoundError(f"job {job.short_id} ended {job.state.value} without results to fetch ({job.message})")
        raise NotFoundError(f"job {job.short_id} is {job.state.value}; results arrive when it ends "
                            f"(`orch logs -f {job.short_id}` to follow it)")
    target = dest or Path("results") / f"{job.name}-{job.short_id}"
    copy_tree(src, target)
    return target
