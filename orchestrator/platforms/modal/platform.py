"""Modal as a platform: each attempt is one Modal Sandbox running the unmodified runner.

What orch creates in the workspace (docs/platforms/modal.md):

* the app ``app`` (default ``orch``), looked up or created once per command;
* one volume ``volume`` (default ``orch``) holding, by content, ``runner/<sha>.py``,
  ``bundles/<digest>/`` and ``blobs/data-<digest>.tar`` (uploaded once, shared by every
  job with the same content, kept until ``orch gc``), ``ckpt/<sha>.tar.gz`` and one
  ``attempts/<key>/`` per attempt (deleted by ``release``);
* one sandbox per attempt named by the attempt key: names are unique among an app's
  running sandboxes, so a retried submit never starts a second one, and ``find`` adopts
  it by name after a controller crash. Each is tagged with this orch home's controller
  id and its key, and noted in ``sandboxes.json`` before it is created, so ``reconcile``
  terminates the ones no active attempt owns (an orphan of a crashed tick).

The job's secrets and env reach the runner through the sandbox's environment (an
ephemeral Modal secret, held by Modal in memory for the sandbox's life), never a volume.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import shlex
import tempfile
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from filelock import FileLock

from ...bundle import sha256_file
from ...errors import CapacityError, ConfigError, LostError, PrecheckError, TransientError
from ...gpus import CPU_RATE, MODAL_DOLLARS_PER_HOUR, MODAL_FREE_CREDIT
from ...quota import Budget, QuotaReading
from ...partfile import PartFile
from ...results import ARTIFACT_CAPS, LOG_TAIL, keep_capped, over_cap
from ...settings import PlatformSettings
from ...windows import Window
from ..base import ARTIFACTS, Handle, Launch, LogChunk, Offer, PlatformBase, RemoteState, RemoteStatus, runner_path
from .client import AuthRefused, MissingError, ModalAccount
from .settings import ModalSettings

log = logging.getLogger(__name__)

DOCS = "docs/platforms/modal.md"
MOUNT = "/orch"
#: How often a running sandbox commits the volume (heartbeats, the log).
COMMIT_EVERY_S = 20
#: A heartbeat older than this, with no sandbox to ask, means the run is gone.
STALE_HEARTBEAT_S = 600.0
#: How long a rejected token keeps the platform unavailable before orch asks again.
AUTH_PAUSE_S = 900.0
#: What ``orch gc`` may delete on the volume: orch's own paths, by kind; nothing else.
OWNED = {
    "runner": re.compile(r"runner/[0-9a-f]{64}\.py"),
    "bundle": re.compile(r"bundles/[0-9a-f]{8,64}"),
    "data": re.compile(r"blobs/data-[0-9a-f]{8,64}\.tar"),
    "checkpoint": re.compile(r"ckpt/[0-9a-f]{64}\.tar\.gz"),
    "attempt": re.compile(r"attempts/[A-Za-z0-9][A-Za-z0-9._-]{0,127}"),
}
#: The artefacts' sha256 (``sha256sum`` lines), written by the sandbox after the runner.
SUMS = "sha256sums"
#: Volume entries ``orch gc`` reads at most, and running sandboxes a sweep reads at most
#: (a listing is untrusted).
MAX_LISTED = 200_000
MAX_SANDBOXES = 1000


class ModalPlatform(PlatformBase):
    """Runs attempts as Modal Sandboxes (see the module docstring)."""

    settings_model = ModalSettings
    settings: ModalSettings
    #: Swept every tick while ``sandboxes.json`` lists any: an orphaned sandbox bills by
    #: the second. With none listed ``reconcile`` makes no call.
    reconcile_every_tick = True

    def __init__(self, name: str, settings: ModalSettings, home: Any):
        super().__init__(name, settings, home)
        self.root: Path = home.platform_dir(name)
        self._account: ModalAccount | None = None
        self._app: Any = None
        self._volume: Any = None

    # ------------------------------------------------------------------ describe
    @classmethod
    def default_budget(cls, settings: PlatformSettings) -> Budget:
        """The Starter plan's monthly credit, in dollars, at Modal's published GPU prices;
        it refills with the billing cycle (the 1st, 00:00 UTC)."""
        cpu = settings.cpu_rate if isinstance(settings, ModalSettings) else ModalSettings().cpu_rate
        return Budget(unit="dollars", limit=MODAL_FREE_CREDIT, window=Window("monthly", day=1),
                      rates={**MODAL_DOLLARS_PER_HOUR, CPU_RATE: cpu}, source="default for modal (Starter credit)")

    @property
    def account(self) -> ModalAccount:
        if self._account is None:
            self._account = ModalAccount(self.name, deadline=self.settings.call_deadline)
        return self._account

    def offer(self) -> Offer:
        """Modal's GPUs and limits; no network call. A token Modal rejected lately makes
        the platform unavailable (never a job outcome) until ``AUTH_PAUSE_S`` passed."""
        refused = self._auth_refused()
        try:
            self.account
        except ConfigError as exc:  # no client, or an untested one: say so, run nothing here
            refused = str(exc)
        return Offer(
            platform=self.name, type="modal", gpus=tuple(self.settings.gpu), gpu_count=1,
            max_concurrent=self.settings.max_concurrent, session_seconds=self.settings.timeout,
            internet=True, tier="starter", available=refused is None,
            reason=refused or "", available_at=None,
        )

    def refused_login(self) -> str | None:
        """Modal rejected the token lately (kept for ``AUTH_PAUSE_S``)."""
        return self._auth_refused()

    def check(self) -> list[str]:
        try:
            self.account
        except ConfigError as exc:
            return [str(exc)]
        refused = self._auth_refused()
        return [refused] if refused else []

    def quota(self) -> QuotaReading | None:
        """This billing cycle's spend from the workspace's billing summary; None when the
        workspace does not allow it (the ledger is used instead) or Modal cannot be heard."""
        modal = self.account.modal
        try:
            summary = self.account.call("billing summary",
                                        lambda: modal.Workspace.from_context().billing.summary(),
                                        retry=self.account.backoff.replace(attempts=1))
            used = float(summary.metered_cost)
        except Exception as exc:  # a refused or unheard read never excludes Modal
            log.info("%s: billing read failed: %s", self.name, exc)
            return None
        if not 0 <= used < 1e7:
            return None
        now = datetime.now(timezone.utc)
        month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        resets = month.replace(year=month.year + 1, month=1) if month.month == 12 else month.replace(month=month.month + 1)
        limit = self.settings.budget.limit if self.settings.budget else MODAL_FREE_CREDIT
        return QuotaReading(unit="dollars", used=used, limit=limit, resets_at=resets, source="modal billing")

    # ------------------------------------------------------------------ remote objects
    def _remote(self) -> tuple[Any, Any]:
        """(app, volume), looked up (or created) once per command."""
        modal = self.account.modal
        env = self.settings.environment
        if self._app is None:
            self._app = self._call("app lookup", lambda: modal.App.lookup(
                self.settings.app, create_if_missing=True, environment_name=env))
        if self._volume is None:
            vol = modal.Volume.from_name(self.settings.volume, create_if_missing=True, environment_name=env,
                                         version=2)
            self._call("volume lookup", lambda: vol.hydrate())
            self._volume = vol
        return self._app, self._volume

    def _call(self, what: str, fn: Any, **kw: Any) -> Any:
        try:
            value = self.account.call(what, fn, **kw)
        except AuthRefused as exc:
            self._note_auth(str(exc))
            raise
        self._clear_auth()
        return value

    def _exists(self, vol: Any, path: str) -> bool:
        try:
            return bool(self._call(f"list {path}", lambda: vol.listdir(path)))
        except MissingError:
            return False

    def _upload(self, vol: Any, files: dict[str, Path]) -> list[str]:
        """Put each ``remote path: local file`` not already there (content-named paths)."""
        todo = {r: p for r, p in files.items() if not self._exists(vol, r)}
        if todo:
            def put() -> None:
                with vol.batch_upload(force=True) as batch:
                    for remote, local in todo.items():
                        batch.put_file(str(local), remote)
            self._call("volume upload", put, deadline=max(self.settings.call_deadline, 600.0))
        return sorted(todo)

    # ------------------------------------------------------------------ submit
    def _image(self, launch: Launch) -> Any:
        """Debian slim plus the job's pip requirements; Modal caches an image by its
        definition, so an unchanged setup is not rebuilt."""
        image = self.account.modal.Image.debian_slim(python_version="3.11")
        reqs = list(launch.spec.setup.requirements)
        return image.pip_install(*reqs) if reqs else image

    def _command(self, launch: Launch, runner: str) -> list[str]:
        bundle = f"{MOUNT}/bundles/{launch.bundle.digest}"
        args = ["python3", f"{MOUNT}/{runner}", "--attempt-dir", f"{MOUNT}/attempts/{launch.key}", "--bundle", bundle,
                "--data-path", f"{MOUNT}/blobs", "--cache-dir", "/tmp/orch-cache", *launch.runner_args(), "--env-stdin"]
        if launch.checkpoint is not None:
            args += ["--checkpoint", f"{MOUNT}/ckpt/{sha256_file(launch.checkpoint)}.tar.gz"]
        # env + secrets arrive in ORCH_ENV_DOC (the sandbox's environment) and reach the
        # runner on stdin, as on every platform. `sync` on the mount point commits the
        # volume (Modal's way from a sandbox), so heartbeats show while it runs.
        # Before the last commit, the artefacts' sha256 go to SUMS: fetch checks every byte.
        here = shlex.quote(f"{MOUNT}/attempts/{launch.key}")
        sums = (f'(cd {here} && for f in {" ".join(ARTIFACTS)}; do [ -f "$f" ] && sha256sum "$f"; done '
                f'> {SUMS}.tmp; mv {SUMS}.tmp {SUMS}) 2>/dev/null')
        script = (f'(while sleep {COMMIT_EVERY_S}; do sync {MOUNT} 2>/dev/null; done) & loop=$!; '
                  'd="$ORCH_ENV_DOC"; unset ORCH_ENV_DOC; printf %s "$d" | ' + shlex.join(args)
                  + f'; code=$?; kill $loop 2>/dev/null; {sums}; sync {MOUNT} 2>/dev/null; exit $code')
        return ["sh", "-c", script]

    def submit(self, launch: Launch) -> Handle:
        try:
            return self._submit(launch)
        except AuthRefused as exc:  # the platform's problem, not the job's: go elsewhere
            raise CapacityError(str(exc), self.name) from exc

    def _submit(self, launch: Launch) -> Handle:
        found = self.find(launch.key)
        if found is not None:  # started before a crash: adopt, never start twice
            return found
        modal = self.account.modal
        app, vol = self._remote()
        runner = f"runner/{sha256_file(runner_path())}.py"
        files = {runner: runner_path(),
                 f"bundles/{launch.bundle.digest}/manifest.json": launch.bundle.manifest_path,
                 f"bundles/{launch.bundle.digest}/{launch.bundle.code_archive.name}": launch.bundle.code_archive}
        for blob in launch.bundle.datasets:
            files[f"blobs/{blob.filename}"] = blob.archive
        if launch.checkpoint is not None:
            files[f"ckpt/{sha256_file(launch.checkpoint)}.tar.gz"] = launch.checkpoint
        uploaded = self._upload(vol, files)
        gpu = self._gpu(launch)
        timeout = int(min(self.settings.timeout, launch.max_runtime_s + 2 * launch.grace_s + 300))
        doc = json.dumps(launch.runner_env())
        image = self._image(launch)
        created = round(time.time(), 3)  # the tag and sandboxes.json hold the same number
        self._sandboxes(add={launch.key: created})  # intent first: reconcile sweeps it if orphaned
        tags = {"orch-job": launch.job_id, "orch-attempt": str(launch.attempt), "orch-key": launch.key,
                "orch-controller": self.controller_id, "orch-created": f"{created:.3f}"}

        def create() -> Any:
            return modal.Sandbox.create(
                *self._command(launch, runner), app=app, name=launch.key, image=image, gpu=gpu, timeout=timeout,
                volumes={MOUNT: vol}, secrets=[modal.Secret.from_dict({"ORCH_ENV_DOC": doc})], tags=tags,
                **self._size(gpu))
        try:
            sb = self._call("sandbox create", create, deadline=max(self.settings.call_deadline, 300.0),
                            retry=self.account.backoff.replace(attempts=1))
        except TransientError:
            # The create may have landed before the answer was lost: adopt it if so.
            found = self.find(launch.key)
            if found is not None:
                return found
            raise
        except Exception as exc:
            if type(exc).__name__ == "AlreadyExistsError" or "already exists" in str(exc):
                found = self.find(launch.key)
                if found is not None:
                    return found
            raise
        # "datasets": the volume paths this run reads; `orch gc` keeps them while it is active.
        return Handle(launch.key, {"sandbox_id": sb.object_id, "gpu": gpu, "uploaded": uploaded,
                                   "datasets": sorted({_top(r) for r in files}), "submitted_at": time.time()})

    def _size(self, gpu: str | None) -> dict[str, Any]:
        """A sandbox without a GPU: ``cpu``/``memory`` as request and limit, so it costs
        ``cpu_rate`` an hour at most. A GPU sandbox keeps Modal's defaults."""
        if gpu is not None:
            return {}
        s = self.settings
        return {"cpu": (s.cpu, s.cpu), "memory": (s.memory, s.memory)}

    def _gpu(self, launch: Launch) -> str | None:
        res = launch.spec.resources
        if not res.wants_gpu:
            return None
        kind = next((g for g in res.gpu if g in self.settings.gpu), self.settings.gpu[0])
        return f"{kind}:{res.gpu_count}" if res.gpu_count > 1 else kind

    def find(self, key: str) -> Handle | None:
        """The running sandbox named ``key``; else, when the attempt left files on the
        volume (its sandbox already ended: names are unique among *running* sandboxes
        only), a handle without a sandbox, so the run is read, never started twice."""
        modal = self.account.modal
        try:
            sb = self._call("sandbox lookup", lambda: modal.Sandbox.from_name(
                self.settings.app, key, environment_name=self.settings.environment))
        except MissingError:
            _, vol = self._remote()
            if self._exists(vol, f"attempts/{key}"):
                return Handle(key, {"sandbox_id": None, "adopted": True, "submitted_at": time.time()})
            return None
        return Handle(key, {"sandbox_id": sb.object_id, "adopted": True, "submitted_at": time.time()})

    # ------------------------------------------------------------------ watch
    def _sandbox(self, handle: Handle) -> Any:
        modal = self.account.modal
        return modal.Sandbox.from_id(str(handle.data["sandbox_id"]))

    def _read(self, path: str, limit: int = 64 * 1024 * 1024) -> bytes | None:
        _, vol = self._remote()

        def read() -> bytes:
            out = bytearray()
            for chunk in vol.read_file(path):
                out += chunk
                if len(out) > limit:
                    raise LostError(f"{path} on the Modal volume is larger than {limit} bytes", self.name)
            return bytes(out)
        try:
            return self._call(f"read {path}", read)
        except MissingError:
            return None

    def poll(self, handle: Handle) -> RemoteStatus:
        base = f"attempts/{handle.key}"
        result = self._read(f"{base}/result.json", 1024 * 1024)
        beat = _json(self._read(f"{base}/heartbeat.json", 1024 * 1024) or b"")
        at = beat.get("time") if isinstance(beat.get("time"), (int, float)) else None
        if result is not None:
            if handle.data.get("sandbox_id") and not self._exists(self._remote()[1], f"{base}/{SUMS}") \
                    and self._call("sandbox poll", lambda: self._sandbox(handle).poll()) is None:
                # The runner is done; the sandbox is still writing the checksums and committing.
                return RemoteStatus(RemoteState.RUNNING, heartbeat_at=at)
            code = _json(result).get("exit_code")
            return RemoteStatus(RemoteState.EXITED, exit_code=code if isinstance(code, int) else None)
        if not handle.data.get("sandbox_id"):  # adopted from the volume: the heartbeat decides
            if at is not None and time.time() - at < STALE_HEARTBEAT_S:
                return RemoteStatus(RemoteState.RUNNING, heartbeat_at=at)
            return RemoteStatus(RemoteState.LOST, "the attempt's sandbox is gone and left no result")
        code = self._call("sandbox poll", lambda: self._sandbox(handle).poll())
        if code is None:
            # Alive. Without a committed heartbeat yet it is setting up (or not committed).
            phase = beat.get("phase")
            state = RemoteState.RUNNING if phase in ("running", "packing") else RemoteState.PENDING
            return RemoteStatus(state, heartbeat_at=at)
        # Ended without result.json: the runner never finished (killed by its timeout,
        # preempted, terminated). A volume commit may lag the end: read once more.
        if self._read(f"{base}/result.json", 1024 * 1024) is not None:
            return self.poll(handle)
        why = {124: "Modal ended the sandbox at its timeout", 137: "the sandbox was terminated or preempted"}.get(
            code, f"the sandbox exited ({code}) before the runner wrote result.json")
        return RemoteStatus(RemoteState.LOST, f"{why}, without a result")

    def logs(self, handle: Handle, offset: int = 0) -> LogChunk:
        """The runner's ``job.log`` on the volume from byte ``offset`` (resumable)."""
        base = f"attempts/{handle.key}"
        data = self._read(f"{base}/job.log") or b""
        done = self._read(f"{base}/result.json", 1024 * 1024) is not None
        tail = data[offset:]
        return LogChunk(tail.decode("utf-8", "replace"), offset + len(tail), complete=done)

    def fetch(self, handle: Handle, dest: Path) -> None:
        """The attempt's artefacts, each checked against the size the volume lists;
        one over its cap is noted (``job.log``: its tail kept), never downloaded whole."""
        _, vol = self._remote()
        base = f"attempts/{handle.key}"
        try:
            entries = self._call(f"list {base}", lambda: vol.listdir(base))
        except MissingError:
            raise LostError(f"the attempt's files are gone from the Modal volume ({base})", self.name) from None
        sizes = {Path(e.path).name: int(e.size) for e in entries}
        sums = self._sums(handle, base, listed=SUMS in sizes)
        dest.mkdir(parents=True, exist_ok=True)
        for name in ARTIFACTS:
            if name not in sizes:
                continue
            if over_cap(name, sizes[name]) is not None:
                data = self._read(f"{base}/{name}", limit=ARTIFACT_CAPS.get(name, sizes[name]) + LOG_TAIL) \
                    if name == "job.log" else b""
                keep_capped(dest, name, sizes[name], lambda off, n: (data or b"")[max(0, off):max(0, off) + n])
                continue
            self._download(vol, f"{base}/{name}", dest / name, sizes[name], sums.get(name))

    def _sums(self, handle: Handle, base: str, listed: bool) -> dict[str, str]:
        """{artefact: sha256} from the sandbox's ``sha256sums``. Not there while the sandbox
        still runs: the volume has not seen its last commit, so wait (TransientError).
        Not there once it ended (killed mid-write, an older orch): sizes alone are checked."""
        data = self._read(f"{base}/{SUMS}", 64 * 1024) if listed else None
        if data is None:
            if handle.data.get("sandbox_id") and self._call("sandbox poll", lambda: self._sandbox(handle).poll()) is None:
                raise TransientError(f"{base}: the sandbox has not committed its checksums yet", self.name)
            log.info("%s: %s has no %s; checking sizes only", self.name, base, SUMS)
            return {}
        sums = {}
        for line in data.decode("utf-8", "replace").splitlines():
            digest, _, name = line.partition("  ")
            if name in ARTIFACTS and re.fullmatch(r"[0-9a-f]{64}", digest):
                sums[name] = digest
        return sums

    def _download(self, vol: Any, path: str, target: Path, size: int, sha256: str | None = None) -> None:
        """One file through ``<target>.part``, checked against the listed size and the
        sandbox's sha256 (a mismatch removes the part: the next tick fetches it again).

        Design choice: resumable per file, not per byte. The client's ``read_file``
        always streams from the start (``VolumeGetFile2`` has ``start``/``len``, but no
        public call of modal 1.6 passes them), so a file a cut fetch completed is kept
        and the one it was reading is fetched again whole.
        """
        part = PartFile(target, size=size, sha256=sha256, what=f"Modal {path}", platform=self.name)
        if part.complete():
            return

        def get() -> None:
            with part.open(resume=False):
                for chunk in vol.read_file(path):
                    if part.offset + len(chunk) > size:
                        raise TransientError(f"Modal {path}: more bytes than the {size} listed", self.name)
                    part.write(chunk)
        self._call(f"read {path}", get, deadline=max(self.settings.call_deadline, 600.0))
        part.commit()

    def cancel(self, handle: Handle) -> None:
        if handle.data.get("sandbox_id"):
            self._call("sandbox terminate", lambda: self._sandbox(handle).terminate())

    def release(self, handle: Handle) -> None:
        """Delete the attempt's files; shared bundles and data stay until ``orch gc``."""
        _, vol = self._remote()
        try:
            self._call("volume remove", lambda: vol.remove_file(f"attempts/{handle.key}", recursive=True))
        except MissingError:
            pass

    # ------------------------------------------------------------------ clean-up (orch gc)
    def garbage(self, older_than_s: float, keep: set[str] = frozenset(),
                last_used: Mapping[str, float] | None = None) -> list[tuple[str, str, datetime | None]]:
        """orch's files on the volume that nothing used for ``older_than_s``: (kind, ref,
        last use). A file's last use is the later of its upload (the volume's mtime) and
        the last time an attempt read it (``last_used``, from the state store: the
        ``datasets`` of each attempt's handle, now for an active one). The directories of
        attempts in ``keep`` are never listed; nothing outside ``OWNED`` ever is.

        Design choice: one recursive listing of the volume, grouped by top-level item, so
        a bundle directory counts from its newest file.
        """
        _, vol = self._remote()
        entries = self._call("volume list", lambda: _capped(vol.iterdir("/", recursive=True), MAX_LISTED),
                             deadline=max(self.settings.call_deadline, 300.0))
        newest: dict[str, float] = {}
        for e in entries:
            ref = _top(str(e.path).lstrip("/"))
            if _kind(ref) is not None:
                newest[ref] = max(newest.get(ref, 0.0), float(e.mtime or 0))
        used = dict(last_used or {})
        now = time.time()
        out: list[tuple[str, str, datetime | None]] = []
        for ref, mtime in sorted(newest.items()):
            kind = _kind(ref)
            if kind == "attempt" and ref.split("/", 1)[1] in keep:
                continue
            when = max(mtime, used.get(ref, 0.0))
            if now - when >= older_than_s:
                out.append((str(kind), ref, datetime.fromtimestamp(when, timezone.utc) if when else None))
        return out

    def delete(self, kind: str, ref: str) -> None:
        """Delete one thing ``garbage`` listed; refuses any path orch does not own."""
        if _kind(ref) != kind:
            raise PrecheckError(f"refusing to delete {kind} {ref}: not a path orch owns on the volume", self.name)
        _, vol = self._remote()
        try:
            self._call(f"volume remove {ref}", lambda: vol.remove_file(ref, recursive=True))
        except MissingError:
            pass  # already gone (another gc)

    # ------------------------------------------------------------------ orphans
    @property
    def controller_id(self) -> str:
        """This orch home's identity in the app's sandbox tags (made once, kept here)."""
        path = self.root / "controller-id"
        if not path.is_file():
            self.root.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_hex(6) + "\n")
        return path.read_text().strip()

    def _sandboxes(self, add: dict[str, float] | None = None, keep: Any = None) -> dict[str, float]:
        """``sandboxes.json``: {attempt key: create time} of sandboxes this home created
        that may still run. ``add`` notes one; ``keep(key, created)`` filters the rest."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / "sandboxes.json"
        with FileLock(str(self.root / "sandboxes.lock")):
            doc = _json(path.read_bytes()) if path.is_file() else {}
            noted = {k: float(v) for k, v in doc.items() if isinstance(v, (int, float))}
            if add is None and keep is None:
                return noted
            noted.update(add or {})
            if keep is not None:
                noted = {k: t for k, t in noted.items() if keep(k, t)}
            tmp = path.with_name("sandboxes.json.tmp")
            tmp.write_text(json.dumps(noted))
            tmp.replace(path)
            return noted

    def reconcile(self, active_keys: set[str]) -> None:
        """Terminate this home's sandboxes that no active attempt owns: a controller that
        crashed after the create, then the attempt was cancelled, retried elsewhere or
        released. Only sandboxes tagged with this home's controller id are touched (other
        homes may share the app), none younger than ``orphan_grace``.

        Design choice: a sweep costs one listing, so it runs only while ``sandboxes.json``
        notes a sandbox (it is written before every create); a failed listing raises, so
        nothing is read into "nothing is running".
        """
        if not self._sandboxes():
            return
        modal = self.account.modal
        app, _ = self._remote()
        now, grace = time.time(), self.settings.orphan_grace
        mine = {"orch-controller": self.controller_id}
        running = self._call("sandbox list", lambda: [
            (sb, sb.get_tags()) for sb in _capped(modal.Sandbox.list(app_id=app.app_id, tags=mine), MAX_SANDBOXES)],
            deadline=max(self.settings.call_deadline, 300.0))
        ended: set[str] = set()
        for sb, tags in running:
            key = tags.get("orch-key", "")
            try:
                created = float(tags.get("orch-created", "0"))
            except ValueError:
                created = 0.0
            if key in active_keys or now - created < grace:
                continue
            log.warning("%s: terminating sandbox %s (attempt %s): no active attempt owns it",
                        self.name, sb.object_id, key[:80])
            self._call("sandbox terminate", sb.terminate)
            ended.add(key)
        # Swept: what stays noted is what may still be live (active, or too young to judge).
        self._sandboxes(keep=lambda k, t: k not in ended and (k in active_keys or now - t < grace))

    # ------------------------------------------------------------------ a refused token
    def _auth_file(self) -> Path:
        return self.root / "auth-refused.json"

    def _note_auth(self, message: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=self.root, delete=False) as f:
            json.dump({"at": time.time(), "message": message}, f)
        Path(f.name).replace(self._auth_file())

    def _clear_auth(self) -> None:
        self._auth_file().unlink(missing_ok=True)

    def _auth_refused(self) -> str | None:
        doc = _json(self._auth_file().read_bytes()) if self._auth_file().is_file() else {}
        at = doc.get("at")
        if not isinstance(at, (int, float)) or time.time() - at > AUTH_PAUSE_S:
            return None
        return str(doc.get("message") or "Modal rejected the token")[:300]


def _top(path: str) -> str:
    """The item a volume path belongs to: ``bundles/<digest>/x`` -> ``bundles/<digest>``."""
    return "/".join(path.split("/")[:2])


def _kind(ref: str) -> str | None:
    return next((kind for kind, shape in OWNED.items() if shape.fullmatch(ref)), None)


def _capped(items: Any, limit: int) -> list:
    """A listing read into a list, refused (not cut short) past ``limit`` items."""
    out = []
    for item in items:
        if len(out) >= limit:
            raise TransientError(f"Modal lists more than {limit} items; orch reads at most that many")
        out.append(item)
    return out


def _json(data: bytes) -> dict:
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}
