"""This machine as a platform: the default, so orch works with no account at all.

Each attempt runs ``kernels/runner.py`` detached in its own session (it outlives the
controller), in a fresh directory under ``$ORCH_HOME/platforms/<name>/attempts/<key>``,
exactly as a remote host would run it. Liveness is the runner's ``runner.lock``
(an flock held for the runner's life): it cannot be fooled by a recycled pid or a
zombie, and a second runner for the same attempt refuses to start.

The job runs in a session of its own (the runner's ``start_new_session``), so a
runner killed outright leaves the job behind; whenever orch gives up on an attempt
(LOST, cancel, release) it kills that session itself (:func:`stop_orphans`), so a
retry never runs beside the orphan.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

from kernels.runner import CANCEL_MARKER

from ..errors import TransientError
from ..gpus import reported_type
from ..results import MAX_HEARTBEAT_BYTES, copy_regular, keep_capped_file, parse_heartbeat, read_capped, read_result
from .base import ARTIFACTS, Handle, Launch, LogChunk, Offer, PlatformBase, RemoteState, RemoteStatus, runner_path
from ..settings import PlatformSettings


class LocalSettings(PlatformSettings):
    type: Literal["local"] = "local"
    max_concurrent: int = 1
    #: GPU of this machine: "auto" asks nvidia-smi; "none" for CPU only; or a type.
    gpu: str = "auto"


def detect_gpus() -> tuple[tuple[str, ...], float | None]:
    """GPU types and memory (GB) from nvidia-smi, or ((), None) without one."""
    if shutil.which("nvidia-smi") is None:
        return (), None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return (), None
    names, mem = [], None
    for line in out.strip().splitlines():
        name, _, total = line.partition(",")
        kind = reported_type(name)
        names.append(kind)
        try:
            mem = float(total) / 1024
        except ValueError:
            pass
    return tuple(dict.fromkeys(names)), mem


#: What a login shell needs; nothing else of the controller's environment reaches a job.
LOGIN_ENV = ("HOME", "USER", "LOGNAME", "SHELL", "PATH", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM",
             "CUDA_VISIBLE_DEVICES", "ORCH_HEARTBEAT_SECONDS")


def clean_env() -> dict[str, str]:
    """The runner's (and so the job's) environment: the login basics and ``LC_*``.

    The controller's environment holds its user's secrets (``PGPASSWORD``,
    ``KAGGLE_KEY``, a team's tokens); a job gets only its ``env:`` and the secrets the
    runner is handed on stdin, exactly as on a remote host.
    """
    return {k: v for k, v in os.environ.items() if k in LOGIN_ENV or k.startswith("LC_")}


class LocalPlatform(PlatformBase):
    """Runs attempts as detached processes on this machine."""

    settings_model = LocalSettings
    settings: LocalSettings
    #: Its runs live on this machine: only controllers here may poll or adopt them.
    host_bound = True

    def __init__(self, name, settings, home):
        super().__init__(name, settings, home)
        self.root = home.platform_dir(name)
        self.attempts = self.root / "attempts"
        self._gpus: tuple[tuple[str, ...], float | None] | None = None

    # ------------------------------------------------------------------ describe
    def offer(self) -> Offer:
        if self._gpus is None:
            if self.settings.gpu == "auto":
                self._gpus = detect_gpus()
            elif self.settings.gpu.lower() in ("none", "cpu"):
                self._gpus = ((), None)
            else:
                self._gpus = ((self.settings.gpu,), None)
        gpus, mem = self._gpus
        return Offer(
            platform=self.name, type="local", gpus=gpus, gpu_memory_gb=mem, gpu_count=len(gpus) and 1,
            max_concurrent=self.settings.max_concurrent,
            session_seconds=self.settings.session_hours * 3600 if self.settings.session_hours else None,
            internet=True,
        )

    # ------------------------------------------------------------------ lifecycle
    def _dir(self, key: str) -> Path:
        return self.attempts / key

    def submit(self, launch: Launch) -> Handle:
        d = self._dir(launch.key)
        if self._started(d):
            return Handle(launch.key, {"dir": str(d)})
        if d.exists():  # a crash between mkdir and launch: start clean
            shutil.rmtree(d)
        d.mkdir(parents=True)
        cmd = [sys.executable, str(runner_path()), "--attempt-dir", str(d), "--bundle", str(launch.bundle.directory),
               "--data-path", str(self.home.blobs), "--cache-dir", str(self.root / "cache"),
               *launch.runner_args(), "--env-stdin", "--detach"]
        if launch.checkpoint:
            cmd += ["--checkpoint", str(launch.checkpoint)]
        launch.guard()  # still this controller's job? (a second runner would refuse anyway: runner.lock)
        try:
            proc = subprocess.run(cmd, input=json.dumps(launch.runner_env()), capture_output=True, text=True,
                                  timeout=60, start_new_session=True, env=clean_env())
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise TransientError(f"could not start the runner: {exc}", self.name) from exc
        if proc.returncode not in (0, 75):
            raise TransientError(f"runner failed to start (exit {proc.returncode}): {proc.stderr.strip()[-300:]}", self.name)
        return Handle(launch.key, {"dir": str(d)})

    def find(self, key: str) -> Handle | None:
        d = self._dir(key)
        return Handle(key, {"dir": str(d)}) if self._started(d) else None

    def poll(self, handle: Handle) -> RemoteStatus:
        d = Path(handle.data["dir"])
        result = d / "result.json"
        if os.path.lexists(result):
            return RemoteStatus(RemoteState.EXITED, exit_code=(read_result(result).doc or {}).get("exit_code"))
        beat = parse_heartbeat(read_capped(d / "heartbeat.json", MAX_HEARTBEAT_BYTES)[0])
        if _lock_held(d):
            phase = beat.phase if beat else ""
            state = RemoteState.RUNNING if phase in ("running", "packing") else RemoteState.PENDING
            return RemoteStatus(state, heartbeat_at=beat.time if beat else None,
                                telemetry={"gpus": beat.gpus if beat else []})
        if os.path.lexists(result):  # finished between the two checks
            return RemoteStatus(RemoteState.EXITED)
        if not d.exists():
            return RemoteStatus(RemoteState.LOST, "the attempt directory is gone")
        killed = stop_orphans(d)
        return RemoteStatus(RemoteState.LOST, "the runner process died without writing result.json"
                            + ("; its job's processes were killed" if killed else ""))

    def logs(self, handle: Handle, offset: int = 0) -> LogChunk:
        d = Path(handle.data["dir"])
        try:
            with open(d / "job.log", "rb") as f:
                f.seek(offset)
                data = f.read()
        except FileNotFoundError:
            data = b""
        return LogChunk(data.decode("utf-8", "replace"), offset + len(data), complete=(d / "result.json").is_file())

    def fetch(self, handle: Handle, dest: Path) -> None:
        d = Path(handle.data["dir"])
        dest.mkdir(parents=True, exist_ok=True)
        for name in ARTIFACTS:
            if not keep_capped_file(d / name, dest, name):  # a sparse job.log can read back as GBs
                copy_regular(d / name, dest / name)

    def cancel(self, handle: Handle) -> None:
        """SIGTERM the runner: it stops the job's process group (SIGTERM, grace,
        SIGKILL) and still writes result.json."""
        d = Path(handle.data["dir"])
        pid = _read_json(d / "runner.pid.json").get("pid")
        if isinstance(pid, int) and pid > 1 and _lock_held(d):
            (d / CANCEL_MARKER).touch()  # so the runner reports "cancelled", not "interrupted"
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        else:
            stop_orphans(d)

    def release(self, handle: Handle) -> None:
        """Remove the attempt directory, once no runner holds it; a job its dead runner
        left behind is killed first."""
        d = Path(handle.data["dir"])
        if d.is_dir() and not _lock_held(d):
            stop_orphans(d)
            shutil.rmtree(d, ignore_errors=True)

    def _started(self, d: Path) -> bool:
        return (d / "result.json").is_file() or _lock_held(d)


def _lock_held(d: Path) -> bool:
    """True while a runner holds ``runner.lock`` in ``d``."""
    try:
        fd = os.open(d / "runner.lock", os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def _read_json(path: Path) -> dict:
    data, _ = read_capped(path, MAX_HEARTBEAT_BYTES)
    try:
        doc = json.loads(data or b"")
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def stop_orphans(d: Path, grace_s: float = 2.0) -> bool:
    """Kill the job session a dead runner left in attempt dir ``d``: SIGTERM, then
    SIGKILL after ``grace_s``. Returns whether there was one.

    The session id comes from the runner's ``runner.pid.json``; it is killed only when
    one of its processes still carries this attempt's ``ORCH_OUTPUT_DIR`` (Linux
    ``/proc``), so a recycled id never hits a stranger. Without ``/proc`` (macOS) the
    group is trusted as recorded.
    """
    pgid = _read_json(d / "runner.pid.json").get("job_pgid")
    if not isinstance(pgid, int) or isinstance(pgid, bool) or pgid <= 1:
        return False
    if not _is_our_group(pgid, d):
        return False
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            return True
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and _is_our_group(pgid, d):
            time.sleep(0.05)
        if not _is_our_group(pgid, d):
            return True
    return True


def _is_our_group(pgid: int, d: Path) -> bool:
    """Whether process group ``pgid`` is alive and belongs to attempt ``d``."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    marker = f"ORCH_OUTPUT_DIR={d}{os.sep}".encode()
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            if fields[0] == "Z" or int(fields[2]) != pgid:
                continue
            if marker in (entry / "environ").read_bytes():
                return True
        except (OSError, ValueError, IndexError):
            continue
    return False
