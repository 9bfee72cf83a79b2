"""Any machine reached over SSH as a platform: a lab server, Paperspace, a cloud VM.

One attempt = one directory on the host, ``<remote_dir>/attempts/<key>``, where
``kernels/runner.py`` runs detached (``setsid nohup``, see
``runs.start_detached``): it survives dropped tunnels and the
controller's exit, and its exit code lands atomically in ``rc``. Everything the runner
needs is content-addressed on the host and uploaded once, resumably and verified::

    <remote_dir>/runner/runner-<sha12>.py     the runner script
    <remote_dir>/bundles/<digest>/            manifest.json + code archive
    <remote_dir>/blobs/data-<digest>.tar      datasets (never sent twice), checkpoints
    <remote_dir>/cache/                       the runner's own cache (unpacked datasets, pip)
    <remote_dir>/attempts/<key>/              result.json, job.log, outputs, heartbeat

Status reads cost one round trip (``detached_status``). A host that cannot be reached
is UNKNOWN (the controller declares LOST after its window); a reachable host whose
runner stopped refreshing ``heartbeat.json`` for ``heartbeat_timeout`` is LOST at once.
The Colab backend (``colab.py``) reuses all of this through ``colab ssh --proxy-mode``.
"""

from __future__ import annotations

import json
import os
import shlex
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict

from ...errors import LostError, PlatformError, PrecheckError, TransientError
from ..base import ARTIFACTS, Feature, Handle, Launch, LogChunk, Offer, PlatformBase, RemoteState, RemoteStatus, runner_path
from ...settings import PlatformSettings, PositiveDuration
from . import runs
from .link import RECONNECT, Link
from ...bundle import sha256_file
from ...partfile import PartFile
from ...results import MAX_HEARTBEAT_BYTES, keep_capped, over_cap, parse_heartbeat
from .connection import Connection, Endpoint, Timeouts, connect, pinned_keys

#: Files whose age and size one status read reports.
_WATCHED = ("heartbeat.json", "result.json", "job.log", "runner.out", ".started")


class TimeoutSettings(BaseModel):
    """Per-operation deadlines (``timeouts:`` in a platform entry)."""

    model_config = ConfigDict(extra="forbid")

    connect: PositiveDuration = 15.0
    banner: PositiveDuration = 15.0
    auth: PositiveDuration = 20.0
    channel: PositiveDuration = 15.0
    command: PositiveDuration = 60.0
    sftp: PositiveDuration = 30.0
    probe: PositiveDuration = 10.0
    keepalive: PositiveDuration = 15.0

    def to_timeouts(self) -> Timeouts:
        return Timeouts(**self.model_dump())


class RemoteSettings(PlatformSettings):
    """What every SSH-reached platform accepts (``ssh`` and ``colab``)."""

    #: Private key (Ed25519 or ECDSA); unset = ssh-agent. Never a password.
    key: str | None = None
    #: Pinned host keys (OpenSSH format); default ``$ORCH_HOME/ssh/known_hosts``.
    known_hosts: str | None = None
    #: Where orch keeps its files on the host.
    remote_dir: str = "~/.orch"
    #: Interpreter that runs the runner (>= 3.9); e.g. ~/venv/bin/python.
    python: str = "python3"
    #: A run whose heartbeat is older than this while the host answers is LOST.
    heartbeat_timeout: PositiveDuration = 120.0
    #: How often the runner refreshes heartbeat.json.
    heartbeat_interval: PositiveDuration = 5.0
    #: Connection attempts per operation, with exponential backoff from ``reconnect_delay``.
    reconnect_tries: int = 3
    reconnect_delay: PositiveDuration = 1.0
    timeouts: TimeoutSettings = TimeoutSettings()


class SSHSettings(RemoteSettings):
    """A ``type: ssh`` entry of config.yaml."""

    type: Literal["ssh"] = "ssh"
    host: str
    port: int = 22
    user: str | None = None
    #: e.g. "cloudflared access ssh --hostname %h"; %h %p %r expand as in ssh_config.
    proxy_command: str | None = None
    #: Name the host key is pinned under, when ``host`` changes (a tunnel's random name).
    host_key_alias: str | None = None
    #: GPU type of the host ("A100"), or unset for CPU only.
    gpu: str | None = None
    gpu_count: int = 1
    gpu_memory_gb: float | None = None
    internet: bool = True


def expand_proxy_command(template: str, host: str, port: int, user: str | None) -> tuple[str, ...]:
    """Split ``template`` like a shell would, then expand %h %p %r %% in each word.

    Splitting first means a host name can never add words to the command.
    """
    table = {"h": host, "p": str(port), "r": user or "", "%": "%"}

    def expand(word: str) -> str:
        out, i = [], 0
        while i < len(word):
            if word[i] == "%" and i + 1 < len(word) and word[i + 1] in table:
                out.append(table[word[i + 1]])
                i += 2
            else:
                out.append(word[i])
                i += 1
        return "".join(out)

    return tuple(expand(os.path.expanduser(w) if w.startswith("~") else w) for w in shlex.split(template))


def _close_links(links: dict[str, Link]) -> None:
    for link in list(links.values()):
        link.close()
    links.clear()


class SSHPlatform(PlatformBase):
    """Runs attempts on one SSH host. Holds at most one connection per endpoint."""

    settings_model = SSHSettings
    settings: RemoteSettings

    def __init__(self, name: str, settings: RemoteSettings, home: Any):
        super().__init__(name, settings, home)
        self.state_dir: Path = home.platform_dir(name)
        self._links: dict[str, Link] = {}
        self._roots: dict[str, str] = {}
        # Connections are closed when the platform object goes away (one CLI command).
        self._finalizer = weakref.finalize(self, _close_links, self._links)

    # ------------------------------------------------------------------ connecting
    @property
    def known_hosts(self) -> Path:
        if self.settings.known_hosts:
            return Path(self.settings.known_hosts).expanduser()
        return self.home.root / "ssh" / "known_hosts"

    def endpoint(self, handle: Handle | None = None) -> Endpoint:
        """Where this platform's runs live (one host for ``ssh``)."""
        s = self.settings
        assert isinstance(s, SSHSettings)
        return Endpoint(
            name=self.name,
            host=s.host,
            port=s.port,
            user=s.user,
            key=Path(s.key).expanduser() if s.key else None,
            known_hosts=self.known_hosts,
            proxy=expand_proxy_command(s.proxy_command, s.host, s.port, s.user) if s.proxy_command else None,
            host_key_name=s.host_key_alias,
            timeouts=s.timeouts.to_timeouts(),
        )

    def link(self, endpoint: Endpoint) -> Link:
        link = self._links.get(endpoint.key_name)
        if link is None or link.endpoint != endpoint:
            if link is not None:
                link.close()
            backoff = RECONNECT.replace(attempts=max(1, self.settings.reconnect_tries),
                                        base=self.settings.reconnect_delay)
            link = self._links[endpoint.key_name] = Link(endpoint, backoff=backoff)
        return link

    def drop_link(self, endpoint: Endpoint) -> None:
        link = self._links.pop(endpoint.key_name, None)
        if link is not None:
            link.close()

    def close(self) -> None:
        """Close every connection this platform holds (also done on garbage collection)."""
        _close_links(self._links)

    def call(self, handle: Handle | None, fn: Callable[[Connection], Any], *, starting: bool = False,
             endpoint: Endpoint | None = None) -> Any:
        """``fn(connection)``: every remote operation of this platform goes through here.

        A refusal while looking at a run (host key changed, key no longer authorised)
        is not the job's fault: it becomes a TransientError, so the attempt goes
        UNKNOWN (and LOST after the controller's window) instead of failing, while the
        message still says what to fix. Only a submit (``starting``) fails fast on a
        PrecheckError, and only one the host really gave (a dropped channel is a
        TransientError by then, see ``Connection.run``). ``endpoint`` overrides
        ``self.endpoint(handle)`` (Colab's first contact with a new runtime).
        """
        try:
            return self.link(endpoint or self.endpoint(handle)).call(fn)
        except PrecheckError as exc:
            if starting:
                raise
            raise TransientError(str(exc), self.name) from exc

    def root(self, conn: Connection) -> str:
        """``remote_dir`` as an absolute path on the host (``~`` = the login directory)."""
        key = conn.endpoint.key_name
        if key not in self._roots:
            raw = self.settings.remote_dir
            if raw.startswith("/"):
                self._roots[key] = raw.rstrip("/") or "/"
            else:
                home = conn.home().rstrip("/")
                rest = raw[1:].lstrip("/") if raw.startswith("~") else raw
                self._roots[key] = f"{home}/{rest}".rstrip("/") if rest else home
        return self._roots[key]

    # ------------------------------------------------------------------ describe
    def offer(self) -> Offer:
        s = self.settings
        assert isinstance(s, SSHSettings)
        problems = self.setup_problems()
        return Offer(
            platform=self.name, type="ssh", gpus=(s.gpu,) if s.gpu else (), gpu_memory_gb=s.gpu_memory_gb,
            gpu_count=s.gpu_count if s.gpu else 0, max_concurrent=s.max_concurrent,
            session_seconds=s.session_hours * 3600 if s.session_hours else None, internet=s.internet,
            unsupported={} if s.internet else {
                Feature.INTERNET: f"platform {self.name} has no internet (internet: false in config.yaml)"},
            available=not problems, reason="; ".join(problems),
        )

    def setup_problems(self) -> list[str]:
        """What is wrong on this machine before any connection: a key file that does not
        exist, a host key never pinned. A platform with such a problem is unavailable
        (placement skips it, `orch plan` says why); it is never a job's outcome."""
        endpoint = self.endpoint()
        problems = []
        if endpoint.key is not None and not endpoint.key.is_file():
            problems.append(f"key {endpoint.key} does not exist; create one with `ssh-keygen -t ed25519`")
        if not pinned_keys(endpoint):
            problems.append(f"host key of {endpoint.key_name} is not pinned; run `orch ssh trust {self.name}`")
        return problems

    def check(self) -> list[str]:
        """Problems that stop this host from working: missing key, unpinned host key, no login."""
        problems = self.setup_problems()
        if problems:
            return problems
        try:  # one attempt, no backoff: `orch platforms` must answer quickly
            connect(self.endpoint()).close()
        except PlatformError as exc:
            return [str(exc)]
        return []

    # ------------------------------------------------------------------ submit
    def attempt_dir(self, conn: Connection, key: str) -> str:
        return f"{self.root(conn)}/attempts/{key}"

    def submit(self, launch: Launch) -> Handle:
        return self.call(None, lambda conn: self.start(conn, launch, {}), starting=True)

    def start(self, conn: Connection, launch: Launch, extra: dict[str, Any]) -> Handle:
        """Upload what the run needs (skipping what the host has) and start it detached.

        Idempotent: an attempt directory that already holds a run is adopted as is.
        """
        root = self.root(conn)
        workdir = self.attempt_dir(conn, launch.key)
        data = {"dir": workdir, "root": root, "grace": launch.grace_s, **extra}
        status = runs.detached_status(conn, workdir)
        if status.exists and status.pid is not None:
            return Handle(launch.key, {**data, "pid": status.pid})
        argv = self.stage(conn, launch, workdir)
        env = json.dumps(launch.runner_env()).encode()
        # Uploads may have taken long: still this controller's job? (No re-check of the
        # directory is needed: start_detached adopts a run already there, atomically.)
        launch.guard()
        pid = runs.start_detached(conn, workdir, argv, stdin=env, discard_stdout=True)
        return Handle(launch.key, {**data, "pid": pid})

    def stage(self, conn: Connection, launch: Launch, workdir: str) -> list[str]:
        """Upload what the run needs (runner, bundle, datasets, checkpoint) by content,
        skipping what the host has; returns the runner's command line (``--env-stdin``
        last). The ``slurm`` platform puts the same command in its batch script."""
        root = self.root(conn)
        conn.makedirs(f"{root}/blobs", private=root)
        runner = runner_path()
        runner_sha = sha256_file(runner)
        remote_runner = f"{root}/runner/runner-{runner_sha[:12]}.py"
        bundle_dir = f"{root}/bundles/{launch.bundle.digest}"
        uploads = [(runner, remote_runner, runner_sha),
                   (launch.bundle.manifest_path, f"{bundle_dir}/manifest.json", sha256_file(launch.bundle.manifest_path)),
                   (launch.bundle.code_archive, f"{bundle_dir}/{launch.bundle.code_archive.name}", launch.bundle.code_sha256)]
        uploads += [(d.archive, f"{root}/blobs/{d.filename}", d.sha256) for d in launch.bundle.datasets]
        argv = ["env", f"ORCH_HEARTBEAT_SECONDS={self.settings.heartbeat_interval:g}", self.settings.python,
                remote_runner, "--attempt-dir", workdir, "--bundle", bundle_dir, "--data-path", f"{root}/blobs",
                "--cache-dir", f"{root}/cache", *launch.runner_args(), "--env-stdin"]
        if launch.checkpoint is not None:
            digest = sha256_file(launch.checkpoint)
            remote_ckpt = f"{root}/blobs/checkpoint-{digest}.tar.gz"
            uploads.append((launch.checkpoint, remote_ckpt, digest))
            argv += ["--checkpoint", remote_ckpt]
        for local, remote, digest in uploads:
            self.upload(conn, local, remote, digest)
        return argv

    def upload(self, conn: Connection, local: Path, remote: str, digest: str) -> int:
        """Send ``local`` unless the host already has it under its content address."""
        have = conn.stat(remote)
        if have is not None and have.st_size == local.stat().st_size:
            return 0
        conn.makedirs(remote.rsplit("/", 1)[0])
        return conn.put(local, remote, digest)

    def find(self, key: str) -> Handle | None:
        def look(conn: Connection) -> Handle | None:
            workdir = self.attempt_dir(conn, key)
            status = runs.detached_status(conn, workdir)
            if not status.exists or status.pid is None:
                return None
            return Handle(key, {"dir": workdir, "root": self.root(conn), "pid": status.pid})

        return self.call(None, look)

    # ------------------------------------------------------------------ watch
    def poll(self, handle: Handle) -> RemoteStatus:
        """One status read. Raises TransientError when the host cannot be reached."""
        return self.call(handle, lambda conn: self.read_status(conn, handle))

    def read_status(self, conn: Connection, handle: Handle) -> RemoteStatus:
        workdir = handle.data["dir"]
        st = runs.detached_status(conn, workdir, _WATCHED)
        if not st.exists:
            return RemoteStatus(RemoteState.LOST, f"the attempt directory {workdir} is gone from the host")
        if st.rc is not None or "result.json" in st.files:
            message = ""
            if "result.json" not in st.files:
                tail = conn.read_from(f"{workdir}/runner.out", max(0, st.files.get("runner.out", (0, 0))[1] - 500))
                message = f"the runner exited {st.rc} without result.json: {tail.decode('utf-8', 'replace').strip()[-300:]}"
            return RemoteStatus(RemoteState.EXITED, message, exit_code=st.rc)
        if not st.alive:
            runs.kill_detached(conn, workdir, grace_s=1)  # the job may outlive its runner: never beside a retry
            return RemoteStatus(RemoteState.LOST, "the runner is gone without an exit code (host rebooted or process killed)")
        timeout = self.settings.heartbeat_timeout
        age = st.age("heartbeat.json")
        if age is None:
            started = st.age(".started") or 0.0
            if started > timeout:
                runs.kill_detached(conn, workdir, grace_s=1)
                return RemoteStatus(RemoteState.LOST, f"the runner wrote no heartbeat in {started:.0f}s")
            return RemoteStatus(RemoteState.PENDING, "starting")
        if age > timeout:
            runs.kill_detached(conn, workdir, grace_s=1)  # never let a silent run finish behind a retry
            return RemoteStatus(RemoteState.LOST, f"no heartbeat for {age:.0f}s (limit {timeout:.0f}s)")
        beat = parse_heartbeat(conn.read_from(f"{workdir}/heartbeat.json", 0, MAX_HEARTBEAT_BYTES))
        phase = beat.phase if beat else ""
        state = RemoteState.RUNNING if phase in ("running", "packing") else RemoteState.PENDING
        return RemoteStatus(state, phase, heartbeat_at=time.time() - age, telemetry={"gpus": beat.gpus if beat else []})

    def logs(self, handle: Handle, offset: int = 0) -> LogChunk:
        """The job log from ``offset``: one status read plus one SFTP read, up to 1 MiB."""

        def read(conn: Connection) -> LogChunk:
            workdir = handle.data["dir"]
            st = runs.detached_status(conn, workdir)
            done = st.rc is not None or not st.alive
            data = conn.read_from(f"{workdir}/job.log", offset, 1 << 20)
            if len(data) == 1 << 20:
                done = False
            data = data if done else _whole_utf8(data)
            return LogChunk(data.decode("utf-8", "replace"), offset + len(data), complete=done)

        return self.call(handle, read)

    # ------------------------------------------------------------------ results
    def fetch(self, handle: Handle, dest: Path) -> None:
        """Download the artefacts into ``dest``, resuming partial files across calls.

        ``dest`` is the controller's ``staging/<key>``, kept across ticks, so a fetch
        cut by a dropped tunnel (or a killed tick) resumes where it stopped: a file
        there under its final name is complete, a ``.part`` is continued.
        """
        dest.mkdir(parents=True, exist_ok=True)

        def pull(conn: Connection) -> None:
            workdir = handle.data["dir"]
            if conn.stat(workdir) is None:
                raise LostError(f"{self.name}: the attempt directory {workdir} is gone from the host", self.name)
            for name in ARTIFACTS:
                if PartFile(dest / name).complete():
                    continue
                st = conn.stat(f"{workdir}/{name}")
                if st is None:
                    continue
                if over_cap(name, st.st_size or 0):  # a sparse job.log can read back as GBs
                    keep_capped(dest, name, st.st_size, lambda at, n: conn.read_from(f"{workdir}/job.log", max(0, at), n))
                    continue
                conn.get(f"{workdir}/{name}", dest / name)

        self.call(handle, pull)

    def cancel(self, handle: Handle) -> None:
        """SIGTERM the run's process group; the runner stops the job (grace, SIGKILL)."""
        grace = float(handle.data.get("grace", 30.0)) + 5
        self.call(handle, lambda conn: runs.kill_detached(conn, handle.data["dir"], grace_s=grace, cancel=True))

    def release(self, handle: Handle) -> None:
        """Remove the attempt directory from the host (killing anything left)."""
        workdir = handle.data.get("dir")
        if workdir:
            def clean(conn: Connection) -> None:
                runs.kill_detached(conn, workdir, grace_s=1)
                conn.remove(workdir)

            self.call(handle, clean)


def _whole_utf8(data: bytes) -> bytes:
    """``data`` without a trailing incomplete UTF-8 sequence (read again next time)."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 != 0x80:  # a lead byte (or ASCII)
            need = 1 if byte < 0x80 else 2 if byte >> 5 == 0b110 else 3 if byte >> 4 == 0b1110 else 4
            return data if need <= back else data[:-back]
    return data


__all__ = ["RemoteSettings", "SSHPlatform", "SSHSettings", "TimeoutSettings", "expand_proxy_command"]
