"""This machine as a platform: the default, so orch works with no account at all.

Each attempt runs ``kernels/runner.py`` detached in its own session (it outlives the
controller), in a fresh directory under ``$ORCH_HOME/platforms/<name>/attempts/<key>``,
exactly as a remote host would run it. Liveness is the runner's ``runner.lock``
(an flock held for the runner's life): it cannot be fooled by a recycled pid or a
zombie, and a second runner for the same attempt refuses to start.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Literal

from kernels.runner import CANCEL_MARKER

from ..errors import TransientError
from ..gpus import reported_type
from ..results import copy_regular, keep_capped_file
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
        if result.is_file():
            try:
                code = json.loads(result.read_text()).get("exit_code")
            except (OSError, ValueError):
                code = None
            return RemoteStatus(RemoteState.EXITED, exit_code=code)
        beat = _read_json(d / "heartbeat.json")
        if _lock_held(d):
            state = RemoteState.RUNNING if beat.get("phase") in ("running", "packing") else RemoteState.PENDING
            return RemoteStatus(state, heartbeat_at=beat.get("time"), telemetry={"gpus": beat.get("gpus", [])})
        if result.is_file():  # finished between the two checks
            return RemoteStatus(RemoteState.EXITED)
        if not d.exists():
            return RemoteStatus(RemoteState.LOST, "the attempt directory is gone")
        return RemoteStatus(RemoteState.LOST, "the runner process died without writing result.json")

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
        if pid and _lock_held(d):
            (d / CANCEL_MARKER).touch()  # so the runner reports "cancelled", not "interrupted"
            try:
                os.kill(int(pid), signal.SIGTERM)
            except ProcessLookupError:
                pass

    def release(self, handle: Handle) -> None:
        d = Path(handle.data["dir"])
        if d.is_dir() and not _lock_held(d):
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
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}
