"""Kaggle kernels as a platform: each attempt is one private kernel, pushed with the
unmodified ``kaggle`` client.

What orch creates in the account (all private, all named so ``orch gc`` can find
them and nothing else):

* ``orch-<attempt key>``: one kernel per attempt. The slug is derived from the
  attempt, so ``find(key)`` can adopt a push whose answer a crash lost; 2.2.4
  always reads the latest version of a slug, so a slug is never pushed twice.
* ``orch-data-<content hash>``: one dataset per distinct dataset content, uploaded
  once and reused by every later job with the same content. When Kaggle no longer
  allows that slug (orch gc deleted it, Kaggle failed to process it) the same content
  goes to ``orch-data-<content hash>-1``, ``-2``, ... (see ``transfer.place_dataset``).
* ``orch-code-<bundle hash>``: the job's bundle, only when it is too big to embed in
  the kernel script (``script.EMBED_LIMIT``).
* ``orch-ckpt-<sha256>``: a local checkpoint for a retry that did not start on Kaggle.
  A retry that follows a Kaggle attempt attaches that kernel instead
  (``kernel_sources``), so its checkpoint is read on Kaggle with no re-upload.

Kaggle has no cancel API and cannot receive secrets (a push has no field for them
and Kaggle Secrets are attached per notebook by hand); both are declared in
``Offer.unsupported`` so the scheduler and ``orch cancel`` can say so.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

from pydantic import field_validator

from ...bundle import sha256_file
from ...durations import format_duration
from ...errors import CapacityError, LostError, PrecheckError, TransientError
from . import script as kaggle_script
from ..base import (
    Feature, Handle, Launch, LogChunk, Offer, PlatformBase, QuotaReading, RemoteState, RemoteStatus, runner_path,
)
from ...quota import Budget
from ...windows import Window
from ...settings import Duration, PlatformSettings, PositiveDuration
from .client import CALLS, KaggleAccount, KernelState, MissingError
from .credentials import CREDENTIALS_FIX, find_credentials, permission_warning
from .transfer import download_outputs, log_text, place_dataset

log = logging.getLogger(__name__)

DOCS = "docs/platforms/kaggle.md"
KERNEL_PREFIX = "orch-"
DATASET_KINDS = ("data", "code", "ckpt")
#: Names orch gives what it creates; `orch gc` touches nothing else.
OWNED_KERNEL = re.compile(r"^orch-o[0-9a-z]+-\d+$")
OWNED_DATASET = re.compile(r"^orch-(data|code|ckpt)-[0-9a-f]{32}(-\d+)?$")

#: Kaggle machine shapes (notes §8) -> (GPU types offered, GPUs per session, GB per GPU).
ACCELERATORS: dict[str, tuple[tuple[str, ...], int, float]] = {
    "NvidiaTeslaT4": (("T4",), 2, 16.0),  # "GPU T4 x2", Kaggle's default GPU
    "NvidiaL4": (("L4",), 1, 24.0),
    "NvidiaL4X1": (("L4",), 1, 24.0),
    "NvidiaTeslaA100": (("A100",), 1, 40.0),
    "NvidiaH100": (("H100",), 1, 80.0),
    "NvidiaRtxPro6000": (("RTXPRO6000",), 1, 96.0),
}
_ALIASES = {"t4": "NvidiaTeslaT4", "t4x2": "NvidiaTeslaT4", "l4": "NvidiaL4", "a100": "NvidiaTeslaA100",
            "h100": "NvidiaH100"}
_RETIRED = {name: "P100 was retired by Kaggle (requests run on T4 x2); use NvidiaTeslaT4"
            for name in ("nvidiateslap100", "p100")}

_STATES = {
    "QUEUED": RemoteState.PENDING,
    "NEW_SCRIPT": RemoteState.PENDING,
    "RUNNING": RemoteState.RUNNING,
    "CANCEL_REQUESTED": RemoteState.RUNNING,
    "COMPLETE": RemoteState.EXITED,
    "ERROR": RemoteState.EXITED,
    "CANCEL_ACKNOWLEDGED": RemoteState.LOST,
}

SECRETS_REFUSED = (
    "Kaggle cannot receive secrets: a kernel push carries none, and Kaggle Secrets must be attached to each "
    "notebook by hand in its editor, which the new kernel of every attempt never is; run jobs with secrets "
    f"on another platform (see {DOCS})"
)
OFFLINE_SETUP_REFUSED = (
    "a Kaggle kernel with internet: false cannot download setup: packages; ship them as wheels "
    "(setup: [./wheels/pkg-1.0-py3-none-any.whl] in the code directory, or --no-index --find-links "
    "to a dataset) or set internet: true"
)
CANCEL_UNSUPPORTED = (
    "Kaggle has no API to stop a running kernel: it runs until its own deadline (max_runtime) and orch "
    "ignores its results"
)


class KaggleSettings(PlatformSettings):
    """``type: kaggle`` in config.yaml. Credentials are never written here."""

    type: Literal["kaggle"] = "kaggle"
    #: Kaggle machine shape (or T4, L4, A100, H100); NvidiaTeslaT4 is "GPU T4 x2".
    accelerator: str = "NvidiaTeslaT4"
    weekly_gpu_hours: float = 30.0
    max_concurrent: int = 2
    session_hours: float = 12.0
    #: First retry delay of Kaggle calls (doubles per try, with jitter).
    retry_base: PositiveDuration = 1.0
    #: The longest one Kaggle request may go without an answer (then it is retried).
    call_timeout: PositiveDuration = 60.0
    #: How long a submit waits for a new dataset to be processed before trying again next tick.
    dataset_wait: Duration = 900.0
    dataset_poll: PositiveDuration = 5.0
    #: Outputs per listing page.
    page_size: int = 50
    #: How long Kaggle's session clock may run before the kernel script starts; the
    #: runner plans its end from script start + session timeout - this (at most a
    #: tenth of the timeout).
    startup_allowance: Duration = 60.0

    @field_validator("accelerator")
    @classmethod
    def _accelerator(cls, value: str) -> str:
        return machine_shape(value)


def machine_shape(name: str) -> str:
    """The Kaggle machine shape for a configured accelerator; ValueError lists the valid ones."""
    key = name.strip()
    if key in ACCELERATORS:
        return key
    if key.lower() in _ALIASES:
        return _ALIASES[key.lower()]
    if key.lower() in _RETIRED:
        raise ValueError(_RETIRED[key.lower()])
    raise ValueError(f"unknown accelerator '{name}'; expected one of {', '.join(ACCELERATORS)} (or T4, L4, A100, H100)")


# --------------------------------------------------------------------------- names


def kernel_slug(key: str) -> str:
    """The kernel slug of an attempt (the title is the same text, so Kaggle keeps it)."""
    return f"{KERNEL_PREFIX}{key}"


def dataset_slug(kind: str, digest: str) -> str:
    """A content-addressed dataset slug: the same content always gets the same slug (its
    first generation; ``transfer.place_dataset`` moves on to ``-1``, ``-2``... when
    Kaggle no longer allows it)."""
    assert kind in DATASET_KINDS
    return f"orch-{kind}-{digest[:32]}"


# --------------------------------------------------------------------------- status


#: Kaggle refuses a ``sessionTimeoutSeconds`` that is not lower than its global maximum
#: (12 h for CPU/GPU sessions); orch asks for at most this.
MAX_SESSION_TIMEOUT_S = 12 * 3600 - 60


def remote_status(state: KernelState) -> RemoteStatus:
    """Kaggle's worker status -> orch's view; ERROR carries Kaggle's failure message."""
    mapped = _STATES.get(state.status.upper(), RemoteState.UNKNOWN)
    message = ""
    if state.status == "ERROR":
        message = f"Kaggle: {state.failure_message or 'the kernel ended with ERROR'}"
    elif state.status == "CANCEL_ACKNOWLEDGED":
        message = "the kernel was cancelled on kaggle.com"
    elif mapped == RemoteState.UNKNOWN:
        message = f"Kaggle reported an unknown kernel status {state.status!r}"
    return RemoteStatus(mapped, message=message)


# --------------------------------------------------------------------------- platform


class KagglePlatform(PlatformBase):
    """Runs attempts as private Kaggle kernels (see the module docstring)."""

    settings_model = KaggleSettings
    settings: KaggleSettings

    def __init__(self, name: str, settings: KaggleSettings, home: Any):
        super().__init__(name, settings, home)
        base = settings.retry_base
        self.account = KaggleAccount(CALLS.replace(base=base, cap=max(base * 60, 1.0)), name,
                                     timeout_s=settings.call_timeout)
        #: Status reads retry briefly: a read that keeps failing makes the attempt
        #: UNKNOWN for this tick, and the next tick reads again.
        self.poll_backoff = CALLS.replace(base=base, cap=max(base * 8, 1.0), attempts=3, budget=base * 20)
        self.root: Path = home.platform_dir(name)
        self.sleep: Callable[[float], None] = time.sleep
        self.clock: Callable[[], float] = time.monotonic
        self._followers: dict[str, "_LogFollower"] = {}
        self._quota: tuple[float, QuotaReading | None] | None = None

    # ------------------------------------------------------------------ describe
    @classmethod
    def default_budget(cls, settings: PlatformSettings) -> Budget:
        """Kaggle's weekly GPU quota: it refills on Saturday 00:00 UTC and counts session
        hours, whatever the GPU count (T4 x2 uses one hour per hour)."""
        assert isinstance(settings, KaggleSettings)
        return Budget(limit=float(settings.weekly_gpu_hours), window=Window("weekly", 5), per_gpu=False,
                      source="default for kaggle")

    def offer(self) -> Offer:
        """Kaggle's machine and limits. The weekly GPU quota reaches the scheduler through
        the controller's ledger (``quota()``, cached), so this makes no network call."""
        gpus, count, memory = ACCELERATORS[self.settings.accelerator]
        missing = find_credentials() is None  # a platform problem, never a job outcome
        return Offer(
            platform=self.name, type="kaggle", gpus=gpus, gpu_memory_gb=memory, gpu_count=count,
            max_concurrent=self.settings.max_concurrent, session_seconds=self.settings.session_hours * 3600,
            internet=True, tier="free",
            unsupported={Feature.SECRETS: SECRETS_REFUSED, Feature.CANCEL: CANCEL_UNSUPPORTED,
                         Feature.OFFLINE_SETUP: OFFLINE_SETUP_REFUSED},
            # No credentials, or a key Kaggle rejected this tick: no new work until it is fixed.
            available=not missing and self.account.auth_failure is None,
            reason=f"no Kaggle credentials found; {CREDENTIALS_FIX}" if missing else (self.account.auth_failure or ""),
        )

    def refused_login(self) -> str | None:
        """Kaggle answered 401 to a call of this command."""
        return self.account.auth_failure

    def _cached_quota(self, ttl: float = 60.0) -> QuotaReading | None:
        """One quota read a minute at most, one try each."""
        now = self.clock()
        if self._quota is None or now - self._quota[0] > ttl:
            try:
                reading = self.account.quota(retry=False)
            except (TransientError, PrecheckError) as exc:
                log.info("%s: quota read failed: %s", self.name, exc)
                reading = None
            self._quota = (now, reading)
        return self._quota[1]

    def quota(self) -> QuotaReading | None:
        """The live weekly GPU quota; None when it cannot be read (never excludes Kaggle)."""
        try:
            reading = self.account.quota()
        except (TransientError, PrecheckError) as exc:
            log.info("%s: quota read failed: %s", self.name, exc)
            return None
        self._quota = (self.clock(), reading)
        return reading

    def check(self) -> list[str]:
        problems = []
        found = find_credentials()
        if found is None:
            return [f"no Kaggle credentials found; {CREDENTIALS_FIX}"]
        if found.path is not None:  # kaggle.json or an access_token file
            warning = permission_warning(found.path)
            if warning:
                problems.append(warning)
        return problems

    # ------------------------------------------------------------------ submit
    def _ref(self, key: str) -> str:
        return f"{self.account.username}/{kernel_slug(key)}"

    def _handle(self, key: str, ref: str, **extra: Any) -> Handle:
        data = {"ref": ref, "url": f"https://www.kaggle.com/code/{ref}", **extra}
        return Handle(key, data)

    def _exists(self, ref: str) -> KernelState | None:
        try:
            return self.account.kernel_status(ref)
        except MissingError:
            return None

    def submit(self, launch: Launch) -> Handle:
        spec = launch.spec
        if spec.secrets:
            raise PrecheckError(f"job uses secrets ({', '.join(spec.secrets)}): {SECRETS_REFUSED}", self.name)
        ref = self._ref(launch.key)
        if self._exists(ref) is not None:  # pushed before a crash: adopt, never push twice
            return self._handle(launch.key, ref, adopted=True)
        wants_gpu = spec.resources.wants_gpu
        if wants_gpu:  # a checkpointed chain needs one session's worth now
            self._check_quota(min(launch.max_runtime_s, launch.session_seconds or launch.max_runtime_s))
        staging = self.root / "staging"
        staging.mkdir(parents=True, exist_ok=True)
        sources, pairs, uploaded = self._upload_datasets(launch, staging)
        bundle_files, bundle_slug = self._place_bundle(launch, staging, sources)
        kernel_sources, ckpt_source, ckpt_file = self._place_checkpoint(launch, staging, sources)
        timeout = self._session_timeout(launch)
        plan = kaggle_script.ScriptPlan(
            key=launch.key, runner_args=launch.runner_args() + ([] if spec.internet else ["--offline"]),
            env=dict(launch.env), datasets=pairs,
            bundle_files=bundle_files, bundle_slug=bundle_slug, checkpoint_source=ckpt_source,
            checkpoint_file=ckpt_file, session_timeout=timeout, startup_allowance=min(self.settings.startup_allowance, timeout / 10),
        )
        folder = self._write_kernel_folder(launch, staging, plan, ref, {
            "enable_gpu": wants_gpu, "enable_internet": bool(spec.internet),
            "dataset_sources": sources, "kernel_sources": kernel_sources,
        })
        try:
            # A dataset wait can outlast a lease: still this controller's job, and not pushed
            # meanwhile by another tick? Only then push (issue 12 point 3).
            launch.guard()
            if self._exists(ref) is not None:
                return self._handle(launch.key, ref, adopted=True)
            version = self._push(folder, ref, timeout, self.settings.accelerator if wants_gpu else None)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return self._handle(launch.key, ref, version=version, datasets=sources, uploaded=uploaded,
                            submitted_at=time.time())

    def _ensure(self, ref: str, files: Mapping[str, Path], staging: Path) -> tuple[str, bool]:
        """``place_dataset`` with this platform's waits: (the ref used, whether it uploaded)."""
        return place_dataset(self.account, ref, files, staging, self.settings.dataset_wait,
                             self.settings.dataset_poll, self.sleep, self.clock)

    def _upload_datasets(self, launch: Launch, staging: Path) -> tuple[list[str], list[tuple[str, str]], list[str]]:
        """One content-addressed dataset per job dataset: (sources, (digest, slug) pairs, newly uploaded)."""
        owner = self.account.username
        sources, pairs, uploaded = [], [], []
        for blob in launch.bundle.datasets:
            ds_ref, fresh = self._ensure(f"{owner}/{dataset_slug('data', blob.digest)}",
                                         {blob.filename: blob.archive}, staging)
            if fresh:
                uploaded.append(ds_ref)
            sources.append(ds_ref)
            pairs.append((blob.digest, ds_ref.split("/")[1]))
        return sources, pairs, uploaded

    def _place_bundle(self, launch: Launch, staging: Path, sources: list[str]) -> tuple[dict[str, bytes], str | None]:
        """Embed a small bundle in the script; upload a big one as a dataset (appended to ``sources``)."""
        bundle = launch.bundle
        if bundle.manifest_path.stat().st_size + bundle.code_archive.stat().st_size <= kaggle_script.EMBED_LIMIT:
            return {"manifest.json": bundle.manifest_path.read_bytes(),
                    bundle.code_archive.name: bundle.code_archive.read_bytes()}, None
        bundle_ref, _ = self._ensure(f"{self.account.username}/{dataset_slug('code', bundle.digest)}",
                                     {"manifest.json": bundle.manifest_path,
                                      bundle.code_archive.name: bundle.code_archive}, staging)
        sources.append(bundle_ref)
        return {}, bundle_ref.split("/")[1]

    def _place_checkpoint(self, launch: Launch, staging: Path,
                          sources: list[str]) -> tuple[list[str], str | None, str | None]:
        """Where the kernel finds the checkpoint it resumes from: the previous Kaggle
        kernel's outputs, or an uploaded dataset. (kernel_sources, source slug, file)."""
        owner = self.account.username
        previous = launch.previous.data.get("ref") if launch.previous is not None else None
        if previous and str(previous).startswith(f"{owner}/"):
            return [str(previous)], str(previous).split("/")[1], "checkpoint.tar.gz"
        if launch.checkpoint is None:
            return [], None, None
        ckpt_ref, _ = self._ensure(f"{owner}/{dataset_slug('ckpt', sha256_file(launch.checkpoint))}",
                                   {"checkpoint.tar.gz": launch.checkpoint}, staging)
        sources.append(ckpt_ref)
        return [], ckpt_ref.split("/")[1], "checkpoint.tar.gz"

    def _write_kernel_folder(self, launch: Launch, staging: Path, plan: kaggle_script.ScriptPlan, ref: str,
                             metadata: dict[str, Any]) -> Path:
        """The folder ``kaggle kernels push`` reads: the script and kernel-metadata.json."""
        folder = staging / kernel_slug(launch.key)
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        code_file = f"{kernel_slug(launch.key)}.py"
        (folder / code_file).write_text(kaggle_script.render_for(plan, runner_path()), encoding="utf-8")
        (folder / "kernel-metadata.json").write_text(json.dumps({
            "id": ref, "title": kernel_slug(launch.key), "code_file": code_file, "language": "python",
            "kernel_type": "script", "is_private": True, "enable_tpu": False,
            "competition_sources": [], "model_sources": [], **metadata,
        }, indent=2))
        return folder

    def _session_timeout(self, launch: Launch) -> int:
        """The kernel's ``sessionTimeoutSeconds``: the job's runtime with room to set up and pack."""
        wanted = min(self.settings.session_hours * 3600, launch.max_runtime_s + 2 * launch.grace_s + 600)
        return int(min(wanted, MAX_SESSION_TIMEOUT_S))

    def _check_quota(self, need_s: float) -> None:
        """The scheduler keeps jobs that do not fit off Kaggle using a cached reading;
        this re-checks with a reading at most a minute old just before pushing. An
        unclear read never excludes Kaggle."""
        reading = self._cached_quota()
        if reading is None:
            return
        limit = reading.limit if reading.limit is not None else self.settings.weekly_gpu_hours  # live wins
        left = max(0.0, limit - reading.used - reading.reserved) * 3600
        if left < need_s:
            when = reading.resets_at.strftime("%a %Y-%m-%d %H:%M UTC") if reading.resets_at else "at the weekly reset"
            raise CapacityError(
                f"Kaggle GPU quota: {format_duration(left)} left this week, the job may need "
                f"{format_duration(need_s)}; it resets {when}", self.name)

    def _push(self, folder: Path, ref: str, timeout: int, shape: str | None) -> int:
        """Push once; after an unclear failure (timeout, 5xx, dropped answer) read the
        status first, because the push may have landed: a slug is never pushed twice."""
        # The account's tries and delays, waited with this platform's sleep and no budget.
        tries = self.account.backoff.replace(sleep=self.sleep, budget=math.inf).begin()
        while True:
            try:
                return self.account.push(folder, ref, timeout, shape)
            except TransientError as exc:
                if not tries.wait(exc):
                    raise
                if self._exists(ref) is not None:
                    return 0

    def find(self, key: str) -> Handle | None:
        ref = self._ref(key)
        return self._handle(key, ref, adopted=True) if self._exists(ref) is not None else None

    # ------------------------------------------------------------------ watch
    def poll(self, handle: Handle) -> RemoteStatus:
        ref = handle.data.get("ref") or self._ref(handle.key)
        try:
            state = self.account.kernel_status(ref, retry=self.poll_backoff)
        except MissingError as exc:
            submitted = float(handle.data.get("submitted_at") or 0)
            if time.time() - submitted < 600:  # just pushed: Kaggle may not list it yet
                return RemoteStatus(RemoteState.UNKNOWN, str(exc))
            return RemoteStatus(RemoteState.LOST, f"kernel {ref} no longer exists on Kaggle")
        return remote_status(state)

    def logs(self, handle: Handle, offset: int = 0) -> LogChunk:
        """The kernel's log from byte ``offset``: the stored log once the kernel ended,
        else what a background reader of Kaggle's live log stream has received."""
        ref = handle.data.get("ref") or self._ref(handle.key)
        state = self.account.kernel_status(ref)
        if _STATES.get(state.status) in (RemoteState.EXITED, RemoteState.LOST):
            self._followers.pop(ref, None)
            text = log_text(self.account.output_page(ref, "", 1).log)
            complete = True
        else:
            follower = self._followers.get(ref)
            if follower is None or follower.failed:
                follower = self._followers[ref] = _LogFollower(self.account, ref)
                follower.arrived.wait(2.0)  # a one-off `orch logs` should see something
            text, complete = follower.text(), False
        data = text.encode("utf-8")[offset:]
        return LogChunk(data.decode("utf-8", "replace"), offset + len(data), complete=complete)

    def fetch(self, handle: Handle, dest: Path) -> None:
        ref = handle.data.get("ref") or self._ref(handle.key)
        try:
            report = download_outputs(self.account, ref, dest, self.settings.page_size)
        except MissingError as exc:  # deleted on kaggle.com (or by another gc) before orch had the outputs
            raise LostError(f"kernel {ref} was deleted before its outputs were fetched ({exc})", self.name) from exc
        text = log_text(report.log)
        if text:
            (dest / "kaggle.log").write_text(text, encoding="utf-8")
            if not (dest / "job.log").exists():
                (dest / "job.log").write_text(text, encoding="utf-8")
        if report.skipped:
            (dest / "fetch-skipped.txt").write_text("".join(f"{s}\n" for s in report.skipped))

    def cancel(self, handle: Handle) -> None:
        """Kaggle cannot stop a kernel: nothing to do (see ``CANCEL_UNSUPPORTED``)."""
        log.info("%s: %s", handle.data.get("ref", handle.key), CANCEL_UNSUPPORTED)

    # ------------------------------------------------------------------ clean-up
    def garbage(self, older_than_s: float, keep: set[str] = frozenset(),
                last_used: Mapping[str, float] | None = None) -> list[tuple[str, str, datetime | None]]:
        """What orch created in the account and has not used for ``older_than_s``:
        (kind, ref, last use). Only names of orch's own shapes, owned by this account,
        are ever listed; kernels of attempt keys in ``keep`` never are.

        ``last_used`` maps refs to the last time an attempt used them (from the state
        store), so a dataset created long ago but reused yesterday is kept.
        """
        now = datetime.now(timezone.utc)
        used = dict(last_used or {})
        out: list[tuple[str, str, datetime | None]] = []
        owner = self.account.username

        def stale(ref: str, when: datetime | None) -> tuple[bool, datetime | None]:
            if ref in used:
                seen = datetime.fromtimestamp(used[ref], timezone.utc)
                when = max(when, seen) if when else seen
            return (when is None or (now - when).total_seconds() >= older_than_s), when

        for meta in self.account.list_kernels(KERNEL_PREFIX):
            ref = str(getattr(meta, "ref", "") or "")
            slug = str(getattr(meta, "slug", "") or ref.split("/")[-1])
            author = str(getattr(meta, "author", "") or ref.split("/")[0])
            if author != owner or not OWNED_KERNEL.fullmatch(slug) or slug[len(KERNEL_PREFIX):] in keep:
                continue
            old, when = stale(f"{owner}/{slug}", _aware(getattr(meta, "last_run_time", None)))
            if old:
                out.append(("kernel", f"{owner}/{slug}", when))
        for ds in self.account.list_datasets("orch-"):
            ref = str(getattr(ds, "ref", ""))
            if "/" not in ref or ref.split("/")[0] != owner or not OWNED_DATASET.fullmatch(ref.split("/")[1]):
                continue
            old, when = stale(ref, _aware(getattr(ds, "last_updated", None)))
            if old:
                out.append(("dataset", ref, when))
        return out

    def delete(self, kind: str, ref: str) -> None:
        """Delete one thing ``garbage`` listed; refuses anything orch did not create."""
        slug = ref.split("/")[-1]
        if kind == "kernel" and OWNED_KERNEL.fullmatch(slug):
            self.account.delete_kernel(ref)
        elif kind == "dataset" and OWNED_DATASET.fullmatch(slug):
            self.account.delete_dataset(ref)
        else:
            raise PrecheckError(f"refusing to delete {kind} {ref}: orch did not create it")


def _aware(value: Any) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


class _LogFollower:
    """Reads Kaggle's live log stream on a daemon thread (the stream blocks until the
    session ends), so ``logs()`` can return what arrived so far at once."""

    def __init__(self, account: KaggleAccount, ref: str):
        self._parts: list[str] = []
        self._lock = threading.Lock()
        self.failed = False
        #: Set at the first event, or when the stream ends or breaks.
        self.arrived = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(account, ref), name=f"kaggle-log-{ref}", daemon=True)
        self._thread.start()

    def _read(self, account: KaggleAccount, ref: str) -> None:
        try:
            for text in account.log_stream(ref):
                with self._lock:
                    self._parts.append(text)
                self.arrived.set()
        except Exception as exc:  # any failure: the next logs() call starts a new reader
            log.info("log stream of %s broke: %s", ref, exc)
            self.failed = True
        finally:
            self.arrived.set()

    def text(self) -> str:
        with self._lock:
            return "".join(self._parts)
