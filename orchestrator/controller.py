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

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import bundle as bundle_mod
from . import failpoints, leases, quota, scheduler, windows
from . import spec as spec_mod
from .app import App
from .blobstore import BlobStore, materialize_bundle, share_artifacts
from .gpus import gpu_type
from .errors import (
    CapacityError, ConfigError, LostError, NotFoundError, OrchError, PrecheckError, SpecError, TransientError,
)
from .platforms.base import Handle, Launch, Offer, RemoteState, RemoteStatus, platform_class
from .results import install_attempt, read_result
from .states import ACTIVE_ATTEMPT_STATES, AttemptState, JobState
from .store import AttemptRow, Conflict, JobRow, attempt_key, host

A, J = AttemptState, JobState


@dataclass
class TickReport:
    dispatched: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    requeued: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {"dispatched": self.dispatched, "finished": self.finished,
                "requeued": self.requeued, "problems": self.problems, "seconds": round(self.seconds, 3)}


# ---------------------------------------------------------------------------- tick


class Controller:
    """Runs ticks over one App."""

    def __init__(self, app: App):
        self.app = app
        self.store = app.store
        self.settings = app.config.controller
        self.report = TickReport()
        self.owner = leases.owner_id()
        self.void_owners: list[str] = []

    # ------------------------------------------------------------------ helpers
    def offers(self) -> dict[str, Offer]:
        """Every configured platform's offer; a platform that cannot even describe
        itself is shown unavailable with the reason, never dropped silently."""
        out: dict[str, Offer] = {}
        now = time.time()
        for name, settings in self.app.config.platforms.items():
            try:
                offer = self.app.platform(name).offer()
            except OrchError as exc:
                offer = Offer(platform=name, type=settings.type, available=False, reason=str(exc))
            out[name] = _with_settings(offer, settings, now)
        return out

    def _spec(self, job: JobRow) -> spec_mod.JobSpec:
        return spec_mod.from_public_dict(job.spec)

    def _remaining(self, job: JobRow, spec: spec_mod.JobSpec) -> float:
        """What is left of ``max_runtime`` for a chain's next segment (at least a minute)."""
        if not job.checkpoint:
            return spec.resources.max_runtime
        used = sum(a.runtime_s or 0 for a in self.store.attempts_of(job.id) if a.state == A.CHECKPOINTED)
        return max(spec.resources.max_runtime - used, 60.0) if used else spec.resources.max_runtime

    def grace(self, spec: spec_mod.JobSpec, platform_name: str) -> float:
        """The job's ``grace:``, else the platform's, else ``controller.grace``."""
        if spec.grace is not None:
            return spec.grace
        settings = self.app.config.platforms.get(platform_name)
        if settings is not None and settings.grace is not None:
            return settings.grace
        return self.settings.grace

    def _launch(self, job: JobRow, att: AttemptRow, offer: Offer | None) -> Launch:
        spec = self._spec(job)
        directory = self.app.home.bundles / job.bundle
        if not (directory / "manifest.json").is_file() and self.store.shared:
            try:  # submitted on another machine of the team
                materialize_bundle(BlobStore(self.store), job.bundle, self.app.home.bundles, self.app.home.blobs)
            except NotFoundError as exc:
                raise PrecheckError(f"the bundle of job {job.short_id} is not in the shared store ({exc}); "
                                    "resubmit the job") from exc
        if not (directory / "manifest.json").is_file():
            raise PrecheckError(f"the bundle of job {job.short_id} is missing from {directory}; resubmit the job")
        bundle = bundle_mod.load_bundle(directory, self.app.home.blobs)
        # With secrets_from: kaggle the values are read inside the kernel, never here.
        secrets = ({} if spec.secrets_from == "kaggle" else
                   {name: os.environ[name] for name in spec.secrets if name in os.environ})
        previous = [a for a in self.store.attempts_of(job.id) if a.state == A.CHECKPOINTED]
        if self.store.reservations([att.id]):
            # Placement decided the deadline and the segment at dispatch (see dispatch()).
            remaining = att.max_runtime_s or self._remaining(job, spec)
            session = att.session_s
        else:  # an attempt written before schema v2
            remaining = self._remaining(job, spec)
            session = offer.session_seconds if offer else None
            if not (spec.checkpoint is not None and session is not None and remaining > session):
                session = None
        checkpoint = self.app.home.blobs / f"checkpoint-{job.checkpoint}.tar.gz" if job.checkpoint else None
        if checkpoint is not None and not checkpoint.is_file() and self.store.shared:
            try:  # the previous segment was fetched by another controller
                BlobStore(self.store).get(job.checkpoint, checkpoint)
            except NotFoundError:
                pass
        return Launch(
            key=attempt_key(job.id, att.number), job_id=job.id, job_name=job.name, attempt=att.number, spec=spec,
            bundle=bundle, max_runtime_s=remaining, session_seconds=session,
            grace_s=self.grace(spec, att.platform), env=job.extra.get("env", {}), secrets=secrets,
            checkpoint=checkpoint if checkpoint and checkpoint.is_file() else None,
            previous=Handle.from_json(previous[-1].handle) if previous and previous[-1].handle else None,
        )

    def _problem(self, text: str) -> None:
        self.report.problems.append(text)

    # ------------------------------------------------------------------ tick
    def tick(self) -> TickReport:
        """One pass over the work that no other controller holds right now."""
        started = time.time()
        self.owner = leases.owner_id()
        self.void_owners = leases.dead_local_owners(self.store)
        try:
            self.reconcile()
            self.poll()
            self.dispatch()
            self.platform_cleanup()
        finally:
            leases.release(self.store, self.owner)
        self.report.seconds = time.time() - started
        return self.report

    def _claimed(self, atts: list[AttemptRow]):
        """Yield (freshly re-read) attempts whose jobs this tick claims, a batch at a
        time, skipping attempts another machine must handle (see ``host_bound``)."""
        me = host()
        mine = [a for a in atts if not (a.host and a.host != me and self._host_bound(a.platform))]
        batch = max(1, self.settings.claim_batch)
        for i in range(0, len(mine), batch):
            chunk = mine[i:i + batch]
            got = leases.claim(self.store, [a.job_id for a in chunk], self.owner, self.settings.lease_seconds,
                               self.void_owners)
            for a in chunk:
                if a.job_id in got:
                    yield self.store.attempt(a.id)

    def _host_bound(self, platform_name: str) -> bool:
        """Runs on this platform live on the machine that started them (``local``)."""
        settings = self.app.config.platforms.get(platform_name)
        return settings is not None and getattr(platform_class(settings.type), "host_bound", False)

    # ------------------------------------------------------------------ reconcile
    def reconcile(self) -> None:
        """Finish what a crashed tick left half-done."""
        for att in self._claimed(self.store.attempts_in([A.SUBMITTING])):
            job = self.store.job(att.job_id)
            if job.state != J.SUBMITTING or att.state != A.SUBMITTING:
                continue
            try:
                platform = self.app.platform(att.platform)
                handle = platform.find(att.key)
            except (TransientError, ConfigError, PrecheckError) as exc:
                self._problem(f"{att.key}: cannot check {att.platform} yet: {exc}")
                continue
            if handle is None:
                offer = self.offers().get(att.platform)
                self._submit(job, att, offer)
            else:
                self._record_submitted(job, att, handle, "adopted after a controller crash")
        for att in self._claimed(self.store.attempts_in([A.FETCHING])):
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
    def plan(self, extra: list[scheduler.Candidate] | None = None,
             queued: list[JobRow] | None = None, offers: dict[str, Offer] | None = None,
             waits: dict[str, str] | None = None) -> list[scheduler.Decision]:
        """Placement decisions for the queue (or only for ``extra`` candidates, as
        ``submit --dry-run`` asks), with the ledger, running attempts and learned speeds:
        exactly what dispatch would do now. Pure reads; nothing is changed."""
        now = time.time()
        offers = self.offers() if offers is None else offers
        ledger, running = self.budget_states(now)
        if extra is not None:
            candidates = extra
        else:
            candidates = self.candidates(self.store.queued() if queued is None else queued, waits)
        history = self._history(candidates)
        candidates = [dataclasses.replace(c, history=history.get(c.id, {})) for c in candidates]
        return scheduler.place(candidates, offers, running, now, ledger, self.speeds())

    def candidates(self, queued: list[JobRow], waits: dict[str, str] | None = None) -> list[scheduler.Candidate]:
        """Queued jobs that could run now, as placement candidates; the others get a reason in ``waits``."""
        waits = {} if waits is None else waits
        out = []
        for job in queued:
            try:
                spec = self._spec(job)
            except Exception as exc:  # a stored spec this version cannot read
                waits[job.id] = f"stored spec unreadable: {exc}"
                continue
            missing = [s for s in spec.secrets if s not in os.environ] if spec.secrets_from == "local" else []
            if missing:
                waits[job.id] = (f"secret {', '.join(missing)} is not set in the environment of the controller "
                                 f"on {host()} (export it where `orch tick` runs)")
                continue
            out.append(scheduler.Candidate(job.id, spec, job.pin, job.avoid, remaining=self._remaining(job, spec),
                                           digest=job.bundle))
        return out

    def budget_states(self, now: float, usage_for_all: bool = False
                      ) -> tuple[dict[str, quota.BudgetState], list[scheduler.Running]]:
        """Each platform's budget in its current window, and the active attempts (only
        these and the current windows' charges are read, never the whole history).
        Charges are read for limited platforms only, unless ``usage_for_all`` (``orch quota``)."""
        active = self.store.attempts_in(ACTIVE_ATTEMPT_STATES)
        reserved = self.store.reservations([a.id for a in active])
        budgets = {name: quota.default_budget(s) for name, s in self.app.config.platforms.items()}
        limited = [n for n, b in budgets.items() if b.limit is not None or (usage_for_all and b.window.kind != "none")]
        since = min((budgets[n].window.bounds(now)[0] for n in limited), default=now)
        charges: dict[str, list[tuple[float, float, float]]] = {}
        for platform, amount, start, end in self.store.ledger_charges(limited, since):
            charges.setdefault(platform, []).append((amount, start, end))
        spans: dict[str, list[quota.Span]] = {}
        running = []
        for a in active:
            row = reserved.get(a.id)
            end = row["end"] if row else (a.started_at or a.created_at) + (a.session_s or a.max_runtime_s or 3600.0)
            running.append(scheduler.Running(a.platform, end))
            if row and row["amount"] > 0 and row["end"] > row["start"]:
                rate = row["amount"] * 3600 / (row["end"] - row["start"])
                spans.setdefault(a.platform, []).append(quota.Span(row["start"], row["end"], rate))
        states = {
            name: quota.state(name, budget, now, charges.get(name, []), spans.get(name, []),
                              self.live_quota(name) if budget.limit is not None else None)
            for name, budget in budgets.items()
        }
        return states, running

    def live_quota(self, name: str, refresh: bool = False, ttl: float = 600.0):
        """The platform's own quota reading, read at most every ``ttl`` seconds (cached in
        the store, so cron ticks share it); None when it has none or the read failed."""
        key = f"quota:{name}"
        cached = self.store.meta_get(key)
        now = time.time()
        if cached and not refresh:
            doc = json.loads(cached)
            if now - doc.get("at", 0) < ttl:
                return quota.reading_from_json(doc.get("reading"))
        try:
            reading = self.app.platform(name).quota()
        except OrchError as exc:  # an unclear read never excludes a platform
            self._problem(f"{name}: quota read failed: {exc}")
            reading = None
        self.store.meta_set(key, json.dumps({"at": now, "reading": quota.reading_to_json(reading)}))
        return reading

    def _history(self, candidates: list[scheduler.Candidate]) -> dict[str, dict[str, float]]:
        """job id -> {GPU type: median runtime} of earlier successful runs of its bundle."""
        digests = {c.id: c.digest for c in candidates if c.digest}
        if not digests:
            return {}
        runs: dict[str, dict[str, list[float]]] = {}
        for digest, gpu_name, seconds in self.store.runtimes(set(digests.values()), limit=5000):
            runs.setdefault(digest, {}).setdefault(gpu_type(gpu_name) or "CPU", []).append(seconds)
        medians = {d: {g: sorted(v)[len(v) // 2] for g, v in per.items()} for d, per in runs.items()}
        return {job_id: medians.get(digest, {}) for job_id, digest in digests.items()}

    def speeds(self) -> dict[str, float]:
        """GPU speed factors learned from the latest finished runs of GPU jobs."""
        rows = self.store.runtimes(None, limit=2000, gpu_jobs_only=True)
        return scheduler.learn_speeds((d, gpu_type(g), r) for d, g, r in rows if gpu_type(g))

    def dispatch(self) -> None:
        queued = self.store.queued()
        if not queued:
            return
        offers = self.offers()
        waits: dict[str, str] = {}
        decisions = self.plan(queued=queued, offers=offers, waits=waits)
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
            chunk = placed[i:i + batch]
            got = leases.claim(self.store, [d.job_id for d in chunk], self.owner, self.settings.lease_seconds,
                               self.void_owners)
            for decision in chunk:
                if decision.job_id in got:  # else another controller is on it
                    self._dispatch_one(decision, offers)
        self.store.note_many({k: v for k, v in waits.items() if by_id.get(k) and by_id[k].message != v})

    def _dispatch_one(self, decision: scheduler.Place, offers: dict[str, Offer]) -> None:
        job = self.store.job(decision.job_id)
        if job.state != J.QUEUED:
            return
        number = job.attempts + 1
        budget = quota.default_budget(self.app.config.platforms[decision.platform])
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
                attempt_id = tx.add_attempt(job.id, number, decision.platform, f"placed on {decision.platform}",
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
            states, _ = self.budget_states(now)
            if states[decision.platform].shortfall(now, now + reserve, decision.rate) is not None:
                return f"{decision.platform}: its quota was taken by another job meanwhile"
        return None

    def _submit(self, job: JobRow, att: AttemptRow, offer: Offer | None) -> None:
        """The remote call of a dispatch (or of its reconcile)."""
        try:
            platform = self.app.platform(att.platform)
            launch = self._launch(job, att, offer)
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
        closing = self._ledger_close(att, None, time.time(), charge=False)
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
                self._poll_one(att)

    def _poll_one(self, att: AttemptRow) -> None:
        now = time.time()
        handle = Handle.from_json(att.handle or {"key": att.key})
        try:
            status = self.app.platform(att.platform).poll(handle)
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
        closing = self._ledger_close(att, None, now)
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

    def _settle(self, job: JobRow, att: AttemptRow, result: dict | None, checkpoint: str | None,
                artifacts: dict[str, str] | None = None) -> None:
        now = time.time()
        if result is None:
            self._lost(att, att.message or "the run ended without writing result.json")
            return
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
        closing = self._ledger_close(att, result, now)
        try:
            with self.store.transaction() as tx:
                tx.move_attempt(att.id, job.id, A.FETCHING, a_new, why, **fields)
                tx.move_job(job.id, J.FETCHING, j_new, why, **job_fields)
                closing(tx)
        except Conflict:
            return
        self.report.finished.append(job.id)
        self._release(att)

    def _ledger_close(self, att: AttemptRow, result: dict | None, now: float, charge: bool = True,
                      whole: bool = False) -> Callable:
        """What to write to the ledger when ``att`` ends: a charge for what it ran (none
        when it never started) and the release of its reservation. Returned as a function
        of the transaction that records the attempt's end, so both land together or not
        at all: a crash or a lost race never charges twice."""
        reserve = self.store.reservations([att.id]).get(att.id)
        if reserve is None:
            return lambda tx: None
        settings = self.app.config.platforms.get(att.platform)
        budget = quota.default_budget(settings) if settings is not None else None
        span = quota.charge_span(reserve, budget, result, att.started_at, now, whole=whole) if charge else None

        def write(tx) -> None:
            if span is not None:
                tx.add_ledger(att.platform, att.id, "charge", span.amount, reserve["unit"], span.start, span.end)
            tx.add_ledger(att.platform, att.id, "release", reserve["amount"], reserve["unit"], reserve["start"],
                          reserve["end"])

        return write

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


class _NoRoom(Exception):
    """A placement no longer fits once the platform is locked (see _dispatch_one)."""


def _with_settings(offer: Offer, settings, now: float) -> Offer:
    """The offer as the generic platform settings shape it: ``min_segment``, and
    ``available_hours`` (closed: unavailable until it opens; open: attempts must end,
    or checkpoint, before it closes)."""
    offer = dataclasses.replace(offer, min_segment_seconds=settings.min_segment)
    if not settings.available_hours:
        return offer
    inside, change = windows.open_hours(settings.available_hours, now)
    # No attempt can outlast the daily window: it is this platform's longest session.
    window = windows.hours_length(settings.available_hours)
    if offer.session_seconds is None or offer.session_seconds > window:
        offer = dataclasses.replace(offer, session_seconds=window)
    if not inside:
        if not offer.available:
            return offer
        return dataclasses.replace(offer, available=False, available_at=change,
                                   reason=f"outside its hours ({settings.available_hours} UTC); opens "
                                          f"{windows.format_when(change, now)}")
    left = change - now
    if offer.time_left_seconds is not None:
        left = min(left, offer.time_left_seconds)
    return dataclasses.replace(offer, time_left_seconds=left)
