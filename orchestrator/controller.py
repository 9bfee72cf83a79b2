"""The controller: ``submit`` puts jobs in the queue, ``tick`` moves everything along.

One tick = reconcile (adopt or resubmit attempts a crashed tick left SUBMITTING,
re-fetch attempts left FETCHING), poll active attempts (fetching finished ones and
requeueing lost ones), then dispatch queued jobs. Every step writes its intent to
the store before the remote call and records the outcome after it, so a tick killed
at any point is finished by the next one.

Several ticks may run at once — cron plus a manual run on one machine, or a team's
controllers on several machines sharing a PostgreSQL queue. They divide the work by
leases on job rows (``leases.py``): a tick works only on jobs it has claimed, and
every transition is still a compare-and-set, so no attempt is ever submitted twice.
"""

from __future__ import annotations

import logging
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import bundle as bundle_mod
from . import failpoints, leases, quota, scheduler
from . import launch as launch_mod
from . import spec as spec_mod
from .app import App
from .blobstore import BlobStore, share_artifacts
from .deadline import Overrun, hard_deadline
from .errors import (
    CapacityError, ConfigError, CredentialsError, LeaseLost, LostError, OrchError, PrecheckError, SpecError,
    TransientError,
)
from .doctor import LAST_TICK
from .launch import job_spec
from .notify import delivery as notify
from .planning import Planner
from .platforms.base import Feature, Handle, Offer, RemoteState, RemoteStatus
from .releases import Unreleased
from .results import ResultRead, install_attempt, read_result
from .states import ACTIVE_ATTEMPT_STATES, AttemptState, JobState
from .store import AttemptRow, Conflict, JobRow, host

A, J = AttemptState, JobState
log = logging.getLogger(__name__)


@dataclass
class TickReport:
    """What one tick did, as recorded in the store (never what it merely tried).

    ``problems`` are expected trouble the next tick retries (a host that does not
    answer); ``errors`` are job steps that failed in a way orch did not expect, each
    naming its job: the tick went on with the other jobs, and ``orch tick`` exits 1.
    """

    dispatched: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    requeued: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {"dispatched": self.dispatched, "finished": self.finished, "requeued": self.requeued,
                "problems": self.problems, "errors": self.errors, "seconds": round(self.seconds, 3)}


# ---------------------------------------------------------------------------- tick


class TickOverrun(Overrun):
    """The tick ran past its hard deadline (see :func:`tick_deadline`). What it
    interrupts is finished by the next tick, exactly as after a killed tick."""


def hard_stop_after(budget: float) -> float:
    """When a tick over its ``budget`` is stopped: a minute later at most."""
    return budget + min(60.0, budget / 2)


def tick_deadline(seconds: float):
    """Raise :class:`TickOverrun` once ``seconds`` have passed, whatever the tick is
    blocked in (a remote call with no timeout of its own)."""
    return hard_deadline(seconds, f"the tick was stopped after {seconds:g}s, over its budget "
                         "(controller.tick_budget); what it was doing is finished by the next tick", TickOverrun)


class Controller:
    """Runs ticks over one App."""

    def __init__(self, app: App):
        self.app = app
        self.store = app.store
        self.settings = app.config.controller
        self.report = TickReport()
        self.owner = leases.owner_id()
        self.void_owners: list[str] = []
        self.started = time.time()
        self.keeper = leases.Keeper(self.store, self.owner, self.settings.lease_seconds)
        self.planner = Planner(app, self.report.problems)

    # ------------------------------------------------------------------ helpers
    def _spec(self, job: JobRow) -> spec_mod.JobSpec:
        return job_spec(job)

    def _problem(self, text: str) -> None:
        log.warning("%s", text)  # logs/orch.log has every one; a quiet tick repeats one hourly
        self.report.problems.append(text)

    @contextmanager
    def _contained(self, job_id: str, what: str):
        """Run one job's step; an exception orch did not expect is that job's alone.

        It is logged with its traceback (``logs/orch.log``), noted on the job as its
        status line, and named in the tick's ``errors``; the tick goes on with the
        next job. Design choice: the job is not failed for it, since the cause may be
        orch's own bug or a passing fault; a step that keeps failing shows on every
        tick, by job, until someone looks.
        """
        try:
            yield
        except Exception as exc:  # noqa: BLE001 -- one job's bad data must never stop the tick
            log.exception("job %s: %s failed", job_id, what)
            text = f"{what} failed: {type(exc).__name__}: {exc}"[:500]
            self.report.errors.append(f"job {job_id[:8]}: {text}")
            try:
                self.store.note(job_id, f"{text} (see {self.app.home.root}/logs/orch.log)")
            except Exception:  # noqa: BLE001 -- the store itself may be what failed
                log.exception("job %s: could not note the failure", job_id)

    # ------------------------------------------------------------------ tick
    def tick(self) -> TickReport:
        """One pass over the work that no other controller holds right now.

        Once ``controller.tick_budget`` is spent no new job step starts: the rest is
        left to the next tick (the CLI also puts a hard deadline on the whole tick).
        """
        started = self.started = time.time()
        self.owner = leases.owner_id()
        self.void_owners = leases.dead_local_owners(self.store)
        self.keeper = leases.Keeper(self.store, self.owner, self.settings.lease_seconds).start()
        try:
            self.reconcile()
            self.poll()
            self.dispatch()
            self.platform_cleanup()
        finally:
            self.keeper.stop()
            leases.release(self.store, self.owner)
            self.report.seconds = time.time() - started
        notify.deliver(self.app, self.owner, self.report.problems, refused=self._refused_logins())
        self.store.meta_set(LAST_TICK, f"{time.time():.3f}")  # what `orch doctor` shows
        return self.report

    def _refused_logins(self) -> dict[str, str]:
        """platform -> the refusal of orch's key or token this tick ran into (notified)."""
        out = {}
        for name in self.app.config.platforms:
            if not self.app.in_use(name):
                continue
            try:
                refused = self.app.platform(name).refused_login()
            except Exception:  # noqa: BLE001 -- a best-effort look, never a failed tick
                log.warning("%s: refused_login() failed", name, exc_info=True)
                continue
            if refused:
                out[name] = refused
        return out

    def settle(self, job_ids: list[str]) -> None:
        """Poll just these jobs' running attempts (fetching those that ended): how `orch logs
        -f` and `orch status` see a job end without waiting for cron's tick. It claims the
        jobs' leases as a tick does, so a tick running meanwhile simply skips them."""
        wanted = set(job_ids)
        atts = [a for a in self.store.attempts_in([A.PENDING, A.RUNNING, A.UNKNOWN, A.FETCHING])
                if a.job_id in wanted]
        self.started = time.time()
        self.owner = leases.owner_id()
        self.void_owners = leases.dead_local_owners(self.store)
        self.keeper = leases.Keeper(self.store, self.owner, self.settings.lease_seconds).start()
        try:
            for att in self._claimed(atts):
                with self._contained(att.job_id, f"polling {att.platform}"):
                    if att.state == A.FETCHING:
                        self._finish(att)
                    elif att.state in (A.PENDING, A.RUNNING, A.UNKNOWN):
                        self._poll_one(att)
        finally:
            self.keeper.stop()
            leases.release(self.store, self.owner)

    def _spent(self) -> bool:
        """Whether the tick's budget is spent (said once in the report)."""
        if time.time() - self.started <= self.settings.tick_budget:
            return False
        note = f"tick budget of {self.settings.tick_budget:g}s spent: the rest is left to the next tick"
        if note not in self.report.problems:
            self._problem(note)
        return True

    def _claimed(self, atts: list[AttemptRow]):
        """Yield (freshly re-read) attempts whose jobs this tick claims, a batch at a
        time, skipping attempts another machine must handle (see ``host_bound``), until
        the tick's budget is spent."""
        me = host()
        mine = [a for a in atts if not (a.host and a.host != me and self.app.host_bound(a.platform))]
        batch = max(1, self.settings.claim_batch)
        for i in range(0, len(mine), batch):
            if self._spent():
                return
            chunk = mine[i:i + batch]
            got = leases.claim(self.store, [a.job_id for a in chunk], self.owner, self.settings.lease_seconds,
                               self.void_owners)
            for a in chunk:
                if a.job_id in got:
                    yield self.store.attempt(a.id)

    # ------------------------------------------------------------------ reconcile
    def reconcile(self) -> None:
        """Finish what a crashed tick left half-done."""
        for att in self._claimed(self.store.attempts_in([A.SUBMITTING])):
            with self._contained(att.job_id, "resuming its submit"):
                self._resume_submit(att)
        for att in self._claimed(self.store.attempts_in([A.FETCHING])):
            with self._contained(att.job_id, "fetching"):
                self._finish(att)

    def _resume_submit(self, att: AttemptRow) -> None:
        """Adopt the run a crashed tick started for ``att``, or start it now."""
        job = self.store.job(att.job_id)
        if job.state != J.SUBMITTING or att.state != A.SUBMITTING:
            return
        try:
            platform = self.app.platform(att.platform)
            handle = platform.find(att.key)
        except (TransientError, ConfigError, PrecheckError) as exc:
            self._problem(f"{att.key}: cannot check {att.platform} yet: {exc}")
            return
        if handle is None:
            offer = self.planner.offers().get(att.platform)
            self._submit(job, att, offer)
        elif self._record_submitted(job, att, handle, "adopted after a controller crash"):
            self.report.dispatched.append(job.id)

    def _record_submitted(self, job: JobRow, att: AttemptRow, handle: Handle, reason: str) -> bool:
        """Record the run ``handle`` as ``att``'s; False when the store no longer agrees
        (the job was cancelled or taken meanwhile), after stopping that run."""
        try:
            with self.store.transaction() as tx:
                tx.move_attempt(att.id, job.id, A.SUBMITTING, A.PENDING, reason, handle=handle.to_json(),
                                started_at=time.time())
                tx.move_job(job.id, J.SUBMITTING, J.PENDING, reason, message="")
        except Conflict:
            # Cancelled while we were submitting: stop what we just started.
            self.best_effort_cancel(att.platform, handle)
            return False
        return True

    def best_effort_cancel(self, platform_name: str, handle: Handle) -> None:
        """Ask the platform to stop the run; a failure is reported, never raised."""
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
        offers = self.planner.offers()
        waits: dict[str, str] = {}
        decisions = self.planner.plan(queued=queued, offers=offers, waits=waits)
        by_id = {j.id: j for j in queued}
        placed = []
        for decision in decisions:
            if isinstance(decision, scheduler.Wait):
                waits[decision.job_id] = decision.reason
            else:
                placed.append(decision)
        if placed:
            leases.ensure_platform_rows(self.store, {d.platform for d in placed})
        batch = max(1, self.settings.claim_batch)
        for i in range(0, len(placed), batch):
            if self._spent():
                break
            chunk = placed[i:i + batch]
            got = leases.claim(self.store, [d.job_id for d in chunk], self.owner, self.settings.lease_seconds,
                               self.void_owners)
            for decision in chunk:
                if decision.job_id in got:  # else another controller is on it
                    with self._contained(decision.job_id, f"dispatching to {decision.platform}"):
                        self._dispatch_one(decision, offers)
        self.store.note_many({k: v for k, v in waits.items() if by_id.get(k) and by_id[k].message != v})

    def _dispatch_one(self, decision: scheduler.Place, offers: dict[str, Offer]) -> None:
        job = self.store.job(decision.job_id)
        if job.state != J.QUEUED:
            return
        number = job.attempts + 1
        budget = self.app.budget(decision.platform)
        reserve = decision.reserve_s or decision.max_runtime_s or 0.0
        now = time.time()
        try:
            with self.store.transaction() as tx:
                # Under the platform's lock, re-check what placement assumed: another
                # controller may have taken the last slot or the quota since.
                leases.lock_platform(tx.conn, decision.platform)
                full = self._no_room(decision, offers[decision.platform], budget, reserve, now)
                if full:
                    raise _NoRoom(full)
                tx.move_job(job.id, J.QUEUED, J.SUBMITTING, f"placed on {decision.platform}",
                            platform=decision.platform, attempts=number, message="")
                why = f"placed on {decision.platform}" + (f": {decision.why}" if decision.why else "")
                attempt_id = tx.add_attempt(job.id, number, decision.platform, why,
                                            max_runtime_s=decision.max_runtime_s, session_s=decision.session_s,
                                            host=host())
                # The reservation is written with the attempt, so a crash never leaves one without the other.
                tx.add_ledger(decision.platform, attempt_id, "reserve", decision.rate * reserve / 3600,
                              budget.unit, now, now + reserve)
        except Conflict:
            return  # cancelled (or taken) meanwhile
        except _NoRoom as exc:
            self.store.note(job.id, str(exc))
            return
        failpoints.hit("after_intent")
        att = self.store.attempt(attempt_id)
        self._submit(self.store.job(job.id), att, offers.get(decision.platform))

    def _no_room(self, decision: scheduler.Place, offer: Offer, budget: quota.Budget, reserve: float,
                 now: float) -> str | None:
        """Why ``decision`` no longer fits (None when it does); read inside the locked transaction."""
        running = self.store.active_counts().get(decision.platform, 0)
        if running >= offer.max_concurrent:
            return f"{decision.platform}: busy ({running}/{offer.max_concurrent} running)"
        if budget.limit is not None and reserve > 0:
            states, _ = self.planner.budget_states(now)
            if states[decision.platform].shortfall(now, now + reserve, decision.rate) is not None:
                return f"{decision.platform}: its quota was taken by another job meanwhile"
        return None

    def _submit(self, job: JobRow, att: AttemptRow, offer: Offer | None) -> None:
        """The remote call of a dispatch (or of its reconcile)."""
        try:
            platform = self.app.platform(att.platform)
            launch = launch_mod.build(self.app, job, att, offer, guard=lambda: self.keeper.check(job.id))
            self.keeper.check(job.id)
            handle = platform.submit(launch)
        except LeaseLost as exc:
            # Another controller holds the job now and finishes this submit (its
            # reconcile finds the run, or starts it): nothing is recorded here.
            self._problem(str(exc))
            return
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
        if self._record_submitted(job, att, handle, f"submitted to {att.platform}"):
            self.report.dispatched.append(job.id)

    def _reject(self, job: JobRow, att: AttemptRow, message: str, requeue: bool) -> None:
        closing = self.ledger_close(att, None, time.time(), charge=False)
        try:
            with self.store.transaction() as tx:
                tx.move_attempt(att.id, job.id, A.SUBMITTING, A.REJECTED, message, message=message, ended_at=time.time())
                closing(tx)
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
        for att in self._claimed(self.store.attempts_in([A.PENDING, A.RUNNING, A.UNKNOWN])):
            if att.state in (A.PENDING, A.RUNNING, A.UNKNOWN):
                with self._contained(att.job_id, f"polling {att.platform}"):
                    self._poll_one(att)

    def _poll_one(self, att: AttemptRow) -> None:
        now = time.time()
        handle = Handle.from_json(att.handle or {"key": att.key})
        held = False
        try:
            status = self.app.platform(att.platform).poll(handle)
        except CredentialsError as exc:
            # We cannot hear the remote because our own key or token is refused; the run is
            # not silent. It stays UNKNOWN, and no window runs out, until the user fixes it.
            status, held = RemoteStatus(RemoteState.UNKNOWN, str(exc)), True
        except (TransientError, ConfigError, PrecheckError) as exc:
            # A refused read (changed host key, revoked token) is not the job's failure.
            status = RemoteStatus(RemoteState.UNKNOWN, str(exc))
        except LostError as exc:
            status = RemoteStatus(RemoteState.LOST, str(exc))
        failpoints.hit("mid_poll")
        job_state = J(att.state.value)
        try:
            if status.state in (RemoteState.PENDING, RemoteState.RUNNING):
                new = A(status.state.value)
                if new == A.PENDING and att.state == A.RUNNING:
                    # A run never goes back to pending; a read between the runner's last
                    # heartbeat ("done") and its result.json can look so. Still running.
                    new = A.RUNNING
                beat = _epoch(status.heartbeat_at)
                with self.store.transaction() as tx:
                    if new != att.state:
                        waited = {"message": ""} if att.state == A.PENDING and att.message else {}  # reason gone
                        tx.move_attempt(att.id, att.job_id, att.state, new, status.message or "status read",
                                        unknown_since=None, heartbeat_at=beat, **waited)
                        tx.move_job(att.job_id, job_state, J(new.value), status.message or "status read", **waited)
                    elif new == A.PENDING and status.message and status.message != att.message:
                        # Why a run still waits can change (a cluster's Priority -> Resources):
                        # `orch status` and `orch plan` show the latest reason.
                        tx.update_attempt(att.id, att.state, message=status.message)
                        tx.update_job(att.job_id, job_state, message=status.message)
                    elif beat:
                        tx.update_attempt(att.id, att.state, heartbeat_at=beat)
            elif status.state == RemoteState.UNKNOWN:
                if att.state != A.UNKNOWN:
                    with self.store.transaction() as tx:
                        tx.move_attempt(att.id, att.job_id, att.state, A.UNKNOWN, status.message, unknown_since=now,
                                        message=status.message)
                        tx.move_job(att.job_id, job_state, J.UNKNOWN, status.message, message=status.message)
                elif held:
                    with self.store.transaction() as tx:
                        tx.update_attempt(att.id, att.state, unknown_since=now, message=status.message)
                elif now - (att.unknown_since or now) > self.settings.unknown_window:
                    self._lost(att, f"no status for {int(now - att.unknown_since)}s: {status.message}",
                               maybe_running=True)
            elif status.state == RemoteState.LOST:
                self._lost(att, status.message or "the platform lost the run")
            elif status.state == RemoteState.EXITED:
                with self.store.transaction() as tx:
                    tx.move_attempt(att.id, att.job_id, att.state, A.FETCHING, status.message or "run ended",
                                    message=status.message, unknown_since=None)
                    tx.move_job(att.job_id, job_state, J.FETCHING, "run ended")
                self._finish(self.store.attempt(att.id))
        except Conflict:
            pass  # cancelled meanwhile

    def _lost(self, att: AttemptRow, reason: str, maybe_running: bool = False) -> None:
        job = self.store.job(att.job_id)
        spec = self._spec(job)
        now = time.time()
        # Unheard is not gone: on a platform that cannot stop a run (Kaggle) it may go on
        # to its deadline, still using quota, so its whole reservation is charged.
        closing = self.ledger_close(att, None, now, whole=maybe_running and not self._can_cancel(att.platform))
        with self.store.transaction() as tx:
            tx.move_attempt(att.id, job.id, att.state, A.LOST, reason, message=reason, ended_at=now)
            closing(tx)
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
        # Kept across ticks (removed only once the attempt is settled), so a platform
        # resumes a partial download (``<file>.part``, see partfile.py) instead of
        # starting at zero after a dropped link or a killed tick.
        staging = self.app.home.staging / att.key
        staging.mkdir(parents=True, exist_ok=True)
        try:
            self.app.platform(att.platform).fetch(handle, staging)
        except (TransientError, ConfigError, PrecheckError) as exc:
            # Not heard, or refused while looking (a revoked token): retried next tick,
            # for as long as status reads may fail (``unknown_window``), then LOST.
            now = time.time()
            since = att.unknown_since or now
            if now - since > self.settings.unknown_window:
                self._lost(att, f"outputs could not be fetched for {int(now - since)}s: {exc}")
                shutil.rmtree(staging, ignore_errors=True)
                return
            if att.unknown_since is None:
                with self.store.transaction() as tx:
                    tx.update_attempt(att.id, A.FETCHING, unknown_since=now)
            self.store.note(job.id, f"fetch will be retried: {exc}")
            self._problem(f"{job.short_id}: fetch from {att.platform}: {exc}")
            return
        except LostError as exc:
            self._lost(att, f"outputs could not be fetched: {exc}")
            shutil.rmtree(staging, ignore_errors=True)
            return
        failpoints.hit("mid_fetch")
        result = read_result(staging / "result.json")
        if result.problem:
            # Refused (wrong types, over the cap, a link): never stored, never installed.
            (staging / "result.json").unlink(missing_ok=True)
        dest = self.app.home.results / job.id / f"attempt-{att.number}"
        install_attempt(staging, dest)
        checkpoint = self._keep_checkpoint(staging / "checkpoint.tar.gz")
        artifacts = share_artifacts(BlobStore(self.store), staging) if self.store.shared else None
        failpoints.hit("after_fetch")
        self._settle(job, att, result, checkpoint, artifacts)
        shutil.rmtree(staging, ignore_errors=True)

    def _keep_checkpoint(self, archive: Path) -> str | None:
        if not archive.is_file() or archive.is_symlink():
            return None
        digest = bundle_mod.sha256_file(archive)
        target = self.app.home.blobs / f"checkpoint-{digest}.tar.gz"
        if not target.exists():
            self.app.home.blobs.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(archive, target)
        if self.store.shared:
            BlobStore(self.store).put(target, digest)
        return digest

    def _settle(self, job: JobRow, att: AttemptRow, read: ResultRead, checkpoint: str | None,
                artifacts: dict[str, str] | None = None) -> None:
        now = time.time()
        if read.problem:
            self._unbelievable_result(att, read.problem, now)
            return
        if read.doc is None:
            self._lost(att, att.message or "the run ended without writing result.json")
            return
        result = read.doc
        spec = self._spec(job)
        status = result.get("status")
        gpu = result.get("gpu") or {}
        fields = dict(result=result, exit_code=result.get("exit_code"), failure_class=result.get("failure_class"),
                      message=result.get("message") or "", runtime_s=result.get("runtime_s"), ended_at=now,
                      gpu_name=gpu.get("name"), gpu_count=gpu.get("count"), artifacts=artifacts)
        job_fields: dict = {"checkpoint": checkpoint or job.checkpoint}
        if status == "succeeded":
            a_new, j_new, why = A.SUCCEEDED, J.SUCCEEDED, "succeeded"
        elif status == "checkpointed":
            a_new, j_new, why = A.CHECKPOINTED, J.QUEUED, "checkpointed; the next segment is queued"
        elif status in ("cancelled", "interrupted"):
            # Only `orch cancel` cancels, and it ends the attempt before any fetch: a runner
            # stopped from outside (an agent or VM shutting down) was interrupted, not
            # cancelled. With a checkpoint the next segment goes on; without, it is lost.
            if not checkpoint:
                self._lost(att, f"the run was stopped from outside orch ({result.get('message') or status})")
                return
            a_new, j_new, why = A.CHECKPOINTED, J.QUEUED, "interrupted with a checkpoint; the next segment is queued"
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
        closing = self.ledger_close(att, result, now)
        try:
            with self.store.transaction() as tx:
                tx.move_attempt(att.id, job.id, A.FETCHING, a_new, why, **fields)
                tx.move_job(job.id, J.FETCHING, j_new, why, **job_fields)
                closing(tx)
        except Conflict:
            return
        self.report.finished.append(job.id)
        self._release(att)

    def _unbelievable_result(self, att: AttemptRow, problem: str, now: float) -> None:
        """The run's result.json is malformed (wrong types, oversized, a link): an answer
        orch cannot believe, which affects this attempt only. It goes UNKNOWN with the
        reason, is fetched again on later ticks (a copy cut short heals), and is LOST
        once that has lasted ``unknown_window``, as when the remote cannot be heard."""
        since = att.result.get("refused_since") if isinstance(att.result, dict) else None
        since = float(since) if isinstance(since, (int, float)) else now
        window = self.settings.unknown_window
        if now - since > window:
            self._lost(att, f"{problem} (for {int(now - since)}s)")
            return
        why = f"{problem}; read again each tick, LOST after {window:g}s (controller.unknown_window)"
        try:
            with self.store.transaction() as tx:
                tx.move_attempt(att.id, att.job_id, A.FETCHING, A.UNKNOWN, why, message=why,
                                unknown_since=since, result={"refused_since": since})
                tx.move_job(att.job_id, J.FETCHING, J.UNKNOWN, why, message=why)
        except Conflict:
            return
        self._problem(f"{att.key}: {problem}")

    def ledger_close(self, att: AttemptRow, result: dict | None, now: float, charge: bool = True,
                      whole: bool = False) -> Callable:
        """What to write to the ledger when ``att`` ends: a charge for what it ran (none
        when it never started) and the release of its reservation. Returned as a function
        of the transaction that records the attempt's end, so both land together or not
        at all: a crash or a lost race never charges twice."""
        reserve = self.store.reservations([att.id]).get(att.id)
        if reserve is None:
            return lambda tx: None
        budget = self.app.budget(att.platform) if att.platform in self.app.config.platforms else None
        span = quota.charge_span(reserve, budget, result, att.started_at, now, whole=whole) if charge else None

        def write(tx) -> None:
            if span is not None:
                tx.add_ledger(att.platform, att.id, "charge", span.amount, reserve["unit"], span.start, span.end)
            tx.add_ledger(att.platform, att.id, "release", reserve["amount"], reserve["unit"], reserve["start"],
                          reserve["end"])

        return write

    def _can_cancel(self, platform: str) -> bool:
        try:
            return Feature.CANCEL not in self.app.platform(platform).offer().unsupported
        except OrchError:
            return True

    def _release(self, att: AttemptRow) -> None:
        """Free the ended attempt's remote side; on failure, again on later ticks."""
        if not att.handle:
            return
        handle = Handle.from_json(att.handle)
        try:
            self.app.platform(att.platform).release(handle)
        except OrchError as exc:
            if att.platform in self.app.config.platforms:
                Unreleased(self.app.home.platform_dir(att.platform)).add(handle)
            self._problem(f"{att.key}: release on {att.platform} failed (retried next tick): {exc}")

    def _retry_releases(self, name: str) -> None:
        """Try again the releases on ``name`` that failed on earlier ticks."""
        pending = Unreleased(self.app.home.platform_dir(name))
        for handle in pending.handles()[:20]:
            try:
                self.app.platform(name).release(handle)
            except OrchError as exc:
                self._problem(f"{handle.key}: release on {name} failed again (retried next tick): {exc}")
                return  # the platform is still down: the rest waits too
            pending.remove(handle.key)

    # ------------------------------------------------------------------ platforms
    def platform_cleanup(self) -> None:
        active = {a.key for a in self.store.attempts_in(ACTIVE_ATTEMPT_STATES)}
        for name in self.app.config.names:
            with self._contained_platform(name, "retrying failed releases"):
                self._retry_releases(name)
            # Untouched this tick: nothing of ours to clean, unless the platform asks to be
            # swept every tick (Colab: a runtime left by a crashed tick costs money).
            if not self.app.in_use(name) and not self.app.reconcile_every_tick(name):
                continue
            with self._contained_platform(name, "clean-up"):
                self.app.platform(name).reconcile(active)

    @contextmanager
    def _contained_platform(self, name: str, what: str):
        """Like :meth:`_contained`, for a step of one platform rather than one job."""
        try:
            yield
        except OrchError as exc:
            self._problem(f"{name}: {what} failed: {exc}")
        except Exception as exc:  # noqa: BLE001 -- one platform's bug must not stop the tick
            log.exception("%s: %s failed", name, what)
            self.report.errors.append(f"platform {name}: {what} failed: {type(exc).__name__}: {exc}"[:500])


def _epoch(value: object) -> float | None:
    """A heartbeat time a platform reported, if it is one (a number of seconds)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else None


class _NoRoom(Exception):
    """A placement no longer fits once the platform is locked (see _dispatch_one)."""
