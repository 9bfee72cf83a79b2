"""The paramiko layer shared by every platform reached over SSH (``ssh``, ``colab``).

What it adds to paramiko, and why (see ``docs/platforms/ssh.md``):

* **Pinned host keys only.** A key that is not pinned, or that changed, refuses the
  connection with the fingerprint shown (:class:`PrecheckError`); nothing is ever
  auto-added. ``orch ssh trust`` pins a key with :func:`scan_host_key` +
  :func:`pin_host_key`.
* **A ProxyCommand that notices EOF.** paramiko 5.1's ``ProxyCommand.recv`` spins at
  100 % CPU once the proxy exits (upstream PR #1180 is still open) and its ``send``
  blocks forever on a stalled proxy. :class:`EOFProxyCommand` returns EOF (so the
  transport closes), times out sends, never lets an unread stderr pipe fill, and
  reaps the proxy process on close.
* **A deadline on everything.** connect, banner, auth and channel-open have paramiko
  timeouts; exec reads and SFTP replies get a channel timeout; and because some
  paramiko waits have no timeout at all (``exec_command``'s request wait,
  ``invoke_subsystem``), every operation also runs under a watchdog that aborts the
  connection when it overruns. Liveness is probed with a short ``exec("true")`` —
  keepalives are on but do not detect a dead tunnel.
* **Resumable, verified transfers.** SFTP uploads and downloads go to ``.part`` files,
  resume from the size already there, are checked by sha256 (``sha256sum`` on the
  host), and only then renamed into place — so a final name always means "complete".
* **Detached runs.** :meth:`Connection.start_detached` starts a command with ``setsid
  nohup`` in its own directory, feeding it stdin through a pipe (secrets never touch
  the disk or the command line), and writes its exit code atomically to ``rc``.
* **Quoting.** Remote commands are fixed ``/bin/sh`` scripts; every variable part is
  passed as a positional argument quoted with :func:`shlex.quote` (:func:`sh`).
* **One error edge.** :func:`ssh_errors` maps paramiko/socket errors onto
  ``orchestrator.errors`` once, with ``raise ... from exc``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import select
import shlex
import signal
import socket
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence, TypeVar

import paramiko
from paramiko.ssh_exception import (
    AuthenticationException,
    BadHostKeyException,
    NoValidConnectionsError,
    PasswordRequiredException,
    ProxyCommandFailure,
    SSHException,
)

from ..errors import LostError, PlatformError, PrecheckError, TransientError

T = TypeVar("T")

#: Key types orch accepts for logging in (Colab's ``colab ssh`` rejects RSA outright).
ACCEPTED_KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521")
_CHUNK = 1 << 20


# --------------------------------------------------------------------------- quoting


def quote(value: object) -> str:
    """One shell word, safe whatever it contains (spaces, quotes, ``$(...)``)."""
    return shlex.quote(str(value))


def join(argv: Sequence[object]) -> str:
    """A command line whose words reach the program exactly as given."""
    return " ".join(quote(a) for a in argv)


def sh(script: str, *args: object) -> str:
    """``/bin/sh -c SCRIPT orch ARGS...``: a fixed script, variable parts as ``$1..$n``.

    Design choice: values are never interpolated into the script text; the login
    shell only ever sees single-quoted words, so a job name like ``$(rm -rf ~)`` is
    just a string to the remote side.
    """
    return join(["/bin/sh", "-c", script, "orch", *args])


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Timeouts:
    """Seconds allowed for each kind of operation (tests use short ones)."""

    connect: float = 15.0   # TCP connect, and the key exchange
    banner: float = 15.0    # the server's SSH banner (the one that matters behind a proxy)
    auth: float = 20.0
    channel: float = 15.0   # opening a channel (exec, sftp)
    command: float = 60.0   # a whole short remote command
    sftp: float = 30.0      # one SFTP reply; transfers abort after this long without progress
    probe: float = 10.0     # the liveness probe
    keepalive: float = 15.0  # interval of keepalive@ packets (keeps NATs warm only)


@dataclass(frozen=True)
class Endpoint:
    """Where and how to connect. Holds no secret: ``key`` is a path.

    Attributes:
        name: the platform name, used in every message.
        host, port, user: the SSH server. Behind ``proxy`` the host is only a name.
        key: private key file; None = ssh-agent / default keys.
        known_hosts: file of pinned host keys (OpenSSH format).
        pinned: extra pinned keys for this host, ``"ssh-ed25519 AAAA..."`` strings
            (Colab sessions pin their key in the attempt's handle).
        proxy: a ProxyCommand as an argument list (no shell involved).
        host_key_name: the known_hosts name to check; default ``host`` (port 22) or
            ``[host]:port``, as OpenSSH does.
        proxy_errors: maps the proxy's stderr text to an error class (Colab's 404/429).
        pin_first_contact: when nothing is pinned for ``key_name`` yet, pin the key the
            server presents into ``known_hosts`` and go on. Only for a host whose channel
            is authenticated some other way (a Colab runtime orch just created, reached
            through Google's authenticated tunnel); never for a user-configured host.
    """

    name: str
    host: str
    port: int = 22
    user: str | None = None
    key: Path | None = None
    known_hosts: Path | None = None
    pinned: tuple[str, ...] = ()
    proxy: tuple[str, ...] | None = None
    host_key_name: str | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    proxy_errors: Callable[[str], type[PlatformError] | None] | None = None
    pin_first_contact: bool = False

    @property
    def key_name(self) -> str:
        if self.host_key_name:
            return self.host_key_name
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    @property
    def label(self) -> str:
        where = f"{self.user + '@' if self.user else ''}{self.host}"
        where += " via proxy" if self.proxy else f":{self.port}"
        return f"ssh {self.name} ({where})"


# --------------------------------------------------------------------------- host keys


def fingerprint(key: paramiko.PKey) -> str:
    """``ssh-ed25519 SHA256:...``, as ``ssh-keygen -lf`` shows it."""
    return f"{key.get_name()} {key.fingerprint}"


def key_from_line(line: str) -> paramiko.PKey:
    """A public key from ``"<type> <base64>"`` (trailing comment ignored)."""
    key_type, b64 = line.split()[:2]
    return paramiko.PKey.from_type_string(key_type, base64.b64decode(b64))


class UnknownHostKey(SSHException):
    """The server's key is not pinned for this host name."""

    def __init__(self, name: str, key: paramiko.PKey):
        super().__init__(f"host key for {name} is not pinned")
        self.name = name
        self.key = key


class _RejectUnknown(paramiko.MissingHostKeyPolicy):
    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise UnknownHostKey(hostname, key)


class _PinFirstContact(paramiko.MissingHostKeyPolicy):
    """Pin the first key seen (see ``Endpoint.pin_first_contact``); later contacts are checked."""

    def __init__(self, known_hosts: Path):
        self.known_hosts = known_hosts

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        pin_host_key(self.known_hosts, hostname, key)


def _host_matches(field_: str, name: str) -> bool:
    for pattern in field_.split(","):
        if pattern.startswith("|1|"):
            try:
                salt = pattern.split("|")[2]
                if paramiko.HostKeys.hash_host(name, salt) == pattern:
                    return True
            except (IndexError, ValueError):
                continue
        elif pattern == name:
            return True
    return False


def pin_host_key(path: Path, name: str, key: paramiko.PKey) -> None:
    """Make ``key`` the only pinned key for ``name`` in the known_hosts file ``path``.

    Other hosts' lines (comments, hashed entries, markers) are kept byte for byte;
    the file is replaced atomically and kept private (0600).
    """
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    kept: list[str] = []
    if path.exists():
        for line in path.read_text().splitlines(keepends=True):
            words = line.split()
            if words and not line.lstrip().startswith("#"):
                host_field = words[1] if words[0].startswith("@") and len(words) > 1 else words[0]
                if _host_matches(host_field, name):
                    continue
            kept.append(line if line.endswith("\n") else line + "\n")
    kept.append(f"{name} {key.get_name()} {key.get_base64()}\n")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".known_hosts.")
    try:
        with os.fdopen(fd, "w") as f:
            f.writelines(kept)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def pinned_keys(endpoint: Endpoint) -> list[paramiko.PKey]:
    """The keys pinned for ``endpoint`` (its known_hosts entries + ``pinned``)."""
    keys = paramiko.HostKeys()
    if endpoint.known_hosts and Path(endpoint.known_hosts).expanduser().exists():
        keys.load(str(Path(endpoint.known_hosts).expanduser()))
    found = list((keys.lookup(endpoint.key_name) or {}).values())
    return found + [key_from_line(line) for line in endpoint.pinned]


# --------------------------------------------------------------------------- the proxy


class EOFProxyCommand(paramiko.ProxyCommand):
    """A ProxyCommand that ends the connection when the proxy dies, instead of spinning.

    Contract (what paramiko's Packetizer expects of a socket): ``recv`` returns at
    least one byte, ``b""`` at EOF, or raises ``socket.timeout`` after ``timeout``;
    ``send`` returns the bytes written or raises ``socket.timeout`` (paramiko then
    retries until the transport is closed); ``close`` kills the proxy's process group
    and reaps it. The proxy's stderr goes to a temp file, readable with ``stderr()``.
    """

    def __init__(self, argv: Sequence[str]):  # noqa: D107 -- base __init__ skipped on purpose
        self.cmd = list(argv)
        self._stderr = tempfile.TemporaryFile()
        try:
            self.process = subprocess.Popen(
                self.cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                bufsize=0,
                start_new_session=True,  # close() can kill what the proxy spawned
            )
        except OSError as exc:
            self._stderr.close()
            raise ProxyCommandFailure(" ".join(self.cmd), exc.strerror or str(exc)) from exc
        os.set_blocking(self.process.stdin.fileno(), False)
        self.timeout: float | None = None
        self._lock = threading.Lock()
        self._released = False

    def send(self, content: bytes) -> int:
        if self.process.stdin.closed:
            raise ProxyCommandFailure(" ".join(self.cmd), "closed")
        fd = self.process.stdin.fileno()
        # Wait in short slices so a transport close() is noticed promptly.
        wait = 1.0 if self.timeout is None else min(self.timeout, 1.0)
        _, writable, _ = select.select([], [fd], [], wait)
        if not writable:
            raise socket.timeout()
        try:
            return os.write(fd, content)
        except BlockingIOError:
            raise socket.timeout() from None
        except OSError as exc:
            raise ProxyCommandFailure(" ".join(self.cmd), exc.strerror or str(exc)) from exc

    def recv(self, size: int) -> bytes:
        if self._released:
            raise EOFError()
        fd = self.process.stdout.fileno()
        try:
            ready, _, _ = select.select([fd], [], [], self.timeout)
        except (OSError, ValueError) as exc:  # closed under us
            raise EOFError() from exc
        if not ready:
            raise socket.timeout()
        try:
            return os.read(fd, size)  # b"" at EOF: the Packetizer raises EOFError
        except OSError as exc:
            raise ProxyCommandFailure(" ".join(self.cmd), exc.strerror or str(exc)) from exc

    def close(self) -> None:
        """End the proxy: EOF on its stdin first (a clean goodbye), then SIGTERM, SIGKILL.

        The stdout pipe stays open: the transport thread may still be reading it, and a
        closed descriptor number could be reused under it. ``release`` closes it.
        """
        with self._lock:
            proc = self.process
            try:
                proc.stdin.close()
            except OSError:
                pass
            if proc.poll() is None:
                for sig, wait in ((None, 0.5), (signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
                    if sig is not None:
                        try:
                            os.killpg(proc.pid, sig)
                            if sig == signal.SIGTERM:  # a stopped proxy only acts on it once continued
                                os.killpg(proc.pid, signal.SIGCONT)
                        except (ProcessLookupError, PermissionError):
                            pass
                    try:
                        proc.wait(timeout=wait)
                        break
                    except subprocess.TimeoutExpired:
                        continue

    def stderr(self, limit: int = 2000) -> str:
        """The last ``limit`` characters the proxy wrote to stderr."""
        try:
            self._stderr.seek(0)
            text = self._stderr.read().decode("utf-8", "replace")
        except (OSError, ValueError):
            return ""
        return text.strip()[-limit:]

    def release(self) -> None:
        """Close everything, once the transport thread no longer reads from the proxy."""
        self.close()
        self._released = True
        for f in (self.process.stdout, self._stderr):
            try:
                f.close()
            except OSError:
                pass

    @property
    def closed(self) -> bool:
        return self.process.returncode is not None or self.process.poll() is not None


# --------------------------------------------------------------------------- the error edge


class _Aborted(Exception):
    """Raised where the watchdog cut an operation that overran its deadline."""


@contextmanager
def ssh_errors(endpoint: Endpoint, what: str, proxy: EOFProxyCommand | None = None) -> Iterator[None]:
    """Map paramiko / socket errors raised inside onto orch's error tree, once."""
    label = f"{endpoint.label}: {what}"
    try:
        yield
    except PlatformError:
        raise
    except UnknownHostKey as exc:
        raise PrecheckError(
            f"{label}: host key {fingerprint(exc.key)} is not pinned for '{exc.name}'; "
            f"if that fingerprint is the server's, run `orch ssh trust {endpoint.name}`",
            endpoint.name,
        ) from exc
    except BadHostKeyException as exc:
        raise PrecheckError(
            f"{label}: host key CHANGED: server sent {fingerprint(exc.key)}, pinned "
            f"{fingerprint(exc.expected_key)}; the host was reinstalled or the connection is "
            f"intercepted: check out of band, then run `orch ssh trust {endpoint.name}`",
            endpoint.name,
        ) from exc
    except PasswordRequiredException as exc:
        raise PrecheckError(
            f"{label}: key {endpoint.key} is passphrase-protected and orch stores no "
            "passphrases: load it into ssh-agent and remove `key:`, or use a dedicated key",
            endpoint.name,
        ) from exc
    except AuthenticationException as exc:
        raise PrecheckError(
            f"{label}: authentication as '{endpoint.user}' failed ({exc}); add the public key "
            f"of {endpoint.key or 'your ssh-agent key'} to ~/.ssh/authorized_keys on the host",
            endpoint.name,
        ) from exc
    except PermissionError as exc:
        raise PrecheckError(f"{label}: permission denied ({exc}); check `remote_dir`", endpoint.name) from exc
    except (ProxyCommandFailure, SSHException, EOFError, OSError, socket.timeout, _Aborted) as exc:
        detail = _describe(exc)
        cls: type[PlatformError] = TransientError
        if proxy is not None:
            said = proxy.stderr()
            if said:
                detail += f"; proxy said: {said.splitlines()[-1]}"
                if endpoint.proxy_errors is not None:
                    cls = endpoint.proxy_errors(said) or TransientError
        raise cls(f"{label}: {detail}", endpoint.name) from exc


def _is_timeout(exc: BaseException) -> bool:
    return isinstance(exc, (socket.timeout, TimeoutError)) or (
        isinstance(exc, SSHException) and "timeout" in str(exc).lower())


def _describe(exc: BaseException) -> str:
    if isinstance(exc, _Aborted):
        return str(exc)
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(exc, SSHException) and "timeout" in str(exc).lower():
        return f"timed out ({exc})"
    if isinstance(exc, EOFError):
        return "connection closed"
    if isinstance(exc, NoValidConnectionsError):
        return f"cannot connect ({exc.strerror or exc})"
    if isinstance(exc, ProxyCommandFailure):
        return "the proxy command failed"
    text = str(exc) or type(exc).__name__
    return text[:300]


class _Watchdog:
    """Aborts a connection when an operation makes no progress for ``seconds``.

    paramiko has waits without timeouts (``exec_command``'s request, ``invoke_subsystem``,
    pipelined SFTP closes); closing the transport from here wakes them all up.
    """

    def __init__(self, seconds: float, on_fire: Callable[[], None]):
        self.seconds = seconds
        self._on_fire = on_fire
        self._last = time.monotonic()
        self._done = threading.Event()
        self.fired = False
        self._thread = threading.Thread(target=self._run, name="orch-ssh-watchdog", daemon=True)
        self._thread.start()

    def kick(self) -> None:
        self._last = time.monotonic()

    def _run(self) -> None:
        while not self._done.wait(min(self.seconds, 0.25)):
            if time.monotonic() - self._last > self.seconds:
                self.fired = True
                self._on_fire()
                return

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


# --------------------------------------------------------------------------- connection


@dataclass(frozen=True)
class Completed:
    """A finished remote command."""

    rc: int
    stdout: bytes
    stderr: bytes

    @property
    def out(self) -> str:
        return self.stdout.decode("utf-8", "replace")

    @property
    def err(self) -> str:
        return self.stderr.decode("utf-8", "replace")


@dataclass(frozen=True)
class DetachedStatus:
    """What :meth:`Connection.detached_status` saw in a detached run's directory.

    ``now`` is the remote clock and ``files`` maps a name to ``(mtime, size)`` on that
    clock, so ages never depend on the two machines' clocks agreeing.
    """

    exists: bool
    pid: int | None = None
    alive: bool = False
    rc: int | None = None
    now: float = 0.0
    files: Mapping[str, tuple[float, int]] = field(default_factory=dict)

    def age(self, name: str) -> float | None:
        """Seconds since ``name`` last changed, or None when it does not exist."""
        if name not in self.files:
            return None
        return max(0.0, self.now - self.files[name][0])


_START_DETACHED = r"""
d=$1; n=$2; out=$3; shift 3
mkdir -p -- "$d" && cd -- "$d" || { echo "cannot create $d" >&2; exit 97; }
if ! mkdir .started 2>/dev/null; then
  i=0; while [ ! -f pid ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
  cat pid; exit $?
fi
# An asynchronous command's stdin is /dev/null unless redirected explicitly, hence fd 3.
head -c "$n" | ( exec 3<&0; setsid nohup /bin/sh -c 'trap : TERM INT; "$@"; echo $? > rc.tmp && mv -f rc.tmp rc' \
    orch-run "$@" <&3 3<&- > "$out" 2>> runner.out & echo $! > pid.tmp && mv -f pid.tmp pid )
cat pid
"""

# Members of the run's session (setsid made the run's pid its session id), zombies
# excluded: a container's init may never reap them, and `kill -0` counts them alive.
_SESSION_FN = r"""
members() {
  for f in /proc/[0-9]*/stat; do
    read -r line < "$f" 2>/dev/null || continue
    set -- ${line##*) }
    [ "$1" != Z ] && [ "$4" = "$sid" ] && echo "${f#/proc/}" | cut -d/ -f1
  done
}
"""

_STATUS = _SESSION_FN + r"""
cd -- "$1" 2>/dev/null || { echo "exists 0"; exit 0; }
shift
echo "exists 1"
echo "now $(date +%s)"
if [ -f pid ]; then
  sid=$(cat pid); echo "pid $sid"
  [ -n "$(members)" ] && echo "alive 1"
fi
[ -f rc ] && echo "rc $(cat rc)"
for f in "$@"; do [ -e "$f" ] && echo "file $(stat -c '%Y %s' -- "$f") $f"; done
exit 0
"""

_KILL = _SESSION_FN + r"""
cd -- "$1" 2>/dev/null || exit 0
[ -f pid ] || exit 0
sid=$(cat pid); limit=$(($2 * 10))
kill -TERM "-$sid" 2>/dev/null  # no "--": dash's kill refuses it
i=0; while [ -n "$(members)" ] && [ $i -lt $limit ]; do sleep 0.1; i=$((i+1)); done
for p in $(members); do kill -KILL "$p" 2>/dev/null; done
exit 0
"""

_SHA256 = r"""
if command -v sha256sum >/dev/null; then sha256sum -- "$1"
else python3 -c 'import hashlib,sys;h=hashlib.sha256();f=open(sys.argv[1],"rb")
for b in iter(lambda:f.read(1<<20),b""):h.update(b)
print(h.hexdigest())' "$1"; fi
"""


class Connection:
    """One authenticated SSH connection. Not thread-safe; one operation at a time.

    Every method raises only ``orchestrator.errors`` classes; after a TransientError
    the connection may be dead (``alive`` is then False) — :class:`Link` reconnects.
    """

    def __init__(self, endpoint: Endpoint, client: paramiko.SSHClient, proxy: EOFProxyCommand | None):
        self.endpoint = endpoint
        self._client = client
        self._proxy = proxy
        self._sftp: paramiko.SFTPClient | None = None
        self.last_ok = time.monotonic()

    # -- lifecycle

    @property
    def alive(self) -> bool:
        transport = self._client.get_transport()
        return transport is not None and transport.is_active()

    def host_key(self) -> paramiko.PKey:
        return self._client.get_transport().get_remote_server_key()

    def close(self) -> None:
        """Close the connection and reap the proxy. Idempotent."""
        sftp, self._sftp = self._sftp, None
        if sftp is not None:
            try:
                sftp.get_channel().close()
            except Exception:  # noqa: BLE001 -- best effort on a dying connection
                pass
        transport = self._client.get_transport()
        self._client.close()
        _join(transport)
        if self._proxy is not None:
            self._proxy.release()

    def _abort(self) -> None:
        transport = self._client.get_transport()
        if transport is not None:
            transport.close()

    @contextmanager
    def _op(self, what: str, seconds: float) -> Iterator[_Watchdog]:
        """Run one operation under the error edge and a watchdog of ``seconds``.

        A timeout of any kind gives the connection up (a stalled tunnel does not
        recover by itself), so that ``Link`` reconnects instead of reusing it.
        """
        dog = _Watchdog(seconds, self._abort)
        try:
            with ssh_errors(self.endpoint, what, self._proxy):
                try:
                    yield dog
                except Exception as exc:
                    if dog.fired:
                        raise _Aborted(f"timed out after {seconds:g}s") from exc
                    if _is_timeout(exc):
                        self._abort()
                    raise
                if dog.fired:
                    raise _Aborted(f"timed out after {seconds:g}s")
        finally:
            dog.stop()
        self.last_ok = time.monotonic()

    # -- commands

    def run(self, command: str, *, stdin: bytes | None = None, timeout: float | None = None, what: str = "") -> Completed:
        """Run ``command`` (already quoted: use :func:`sh`) and collect its output.

        Raises TransientError when it cannot start or does not finish within
        ``timeout`` (default ``Timeouts.command``). A non-zero exit is not an error.
        """
        timeout = timeout or self.endpoint.timeouts.command
        slack = self.endpoint.timeouts.channel
        with self._op(what or "remote command", timeout + slack):
            transport = self._client.get_transport()
            if transport is None or not transport.is_active():
                raise EOFError()
            chan = transport.open_session(timeout=self.endpoint.timeouts.channel)
            try:
                chan.settimeout(timeout)
                chan.exec_command(command)
                if stdin:
                    chan.sendall(stdin)
                chan.shutdown_write()
                return self._collect(chan, timeout)
            finally:
                chan.close()

    @staticmethod
    def _collect(chan: paramiko.Channel, timeout: float) -> Completed:
        out, err = bytearray(), bytearray()
        deadline = time.monotonic() + timeout
        while True:
            while chan.recv_ready():
                out += chan.recv(65536)
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(65536)
            if chan.closed or (chan.eof_received and chan.exit_status_ready()):
                while chan.recv_ready():
                    out += chan.recv(65536)
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise socket.timeout()
            select.select([chan], [], [], min(remaining, 0.5))
        rc = chan.recv_exit_status() if chan.exit_status_ready() else -1
        return Completed(rc=rc, stdout=bytes(out), stderr=bytes(err))

    def probe(self, timeout: float | None = None) -> None:
        """Prove the connection carries traffic now (``exec true``); TransientError if not."""
        timeout = timeout or self.endpoint.timeouts.probe
        result = self.run("true", timeout=timeout, what="liveness probe")
        if result.rc != 0:
            raise TransientError(f"{self.endpoint.label}: liveness probe exited {result.rc}", self.endpoint.name)

    # -- SFTP

    def sftp(self) -> paramiko.SFTPClient:
        """The connection's SFTP session, opened on first use, replies timed out."""
        if self._sftp is None:
            t = self.endpoint.timeouts
            with self._op("opening SFTP", t.channel + t.sftp):
                chan = self._client.get_transport().open_session(timeout=t.channel)
                chan.settimeout(t.sftp)
                chan.invoke_subsystem("sftp")
                self._sftp = paramiko.SFTPClient(chan)
        return self._sftp

    def home(self) -> str:
        """The login directory (where relative remote paths start)."""
        sftp = self.sftp()
        with self._op("resolving the home directory", self.endpoint.timeouts.sftp):
            return sftp.normalize(".")

    def stat(self, path: str) -> paramiko.SFTPAttributes | None:
        """The remote file's attributes, or None when it does not exist."""
        sftp = self.sftp()
        with self._op(f"stat {path}", self.endpoint.timeouts.sftp):
            try:
                return sftp.stat(path)
            except FileNotFoundError:
                return None

    def makedirs(self, path: str) -> None:
        result = self.run(sh('mkdir -p -- "$1"', path), what=f"mkdir {path}")
        if result.rc != 0:
            raise PrecheckError(f"{self.endpoint.label}: cannot create {path}: {result.err.strip()}", self.endpoint.name)

    def remove(self, path: str) -> None:
        """Remove a file or a whole directory tree; a missing path is fine."""
        result = self.run(sh('rm -rf -- "$1"', path), what=f"removing {path}")
        if result.rc != 0:
            raise TransientError(f"{self.endpoint.label}: cannot remove {path}: {result.err.strip()}", self.endpoint.name)

    def sha256(self, path: str) -> str | None:
        """sha256 of a remote file (computed on the host), or None when it is missing."""
        result = self.run(sh(_SHA256, path), what=f"sha256 {path}", timeout=max(self.endpoint.timeouts.command, 300))
        if result.rc != 0:
            return None
        words = result.out.split()
        return words[0] if words and len(words[0]) == 64 else None

    def put(self, local: Path, remote: str, sha256: str, *, progress: Callable[[int], None] | None = None) -> int:
        """Upload ``local`` to ``remote``, resuming a ``.part`` left by an earlier try.

        The file appears under ``remote`` only once its sha256 matches, so an existing
        ``remote`` is always complete. Returns the bytes sent this time.

        Raises:
            TransientError: the connection dropped (call again to resume) or the
                upload arrived corrupted (the partial file is discarded).
        """
        size = local.stat().st_size
        part = remote + ".part"
        sftp = self.sftp()
        sent = 0
        with self._op(f"uploading {local.name}", self.endpoint.timeouts.sftp) as dog:
            try:
                have = sftp.stat(part).st_size or 0
            except FileNotFoundError:
                have = 0
            if have > size:
                sftp.remove(part)
                have = 0
            with open(local, "rb") as src, sftp.open(part, "r+" if have else "w") as dst:
                dst.set_pipelined(True)
                dst.seek(have)
                src.seek(have)
                while chunk := src.read(_CHUNK):
                    dst.write(chunk)
                    sent += len(chunk)
                    dog.kick()
                    if progress:
                        progress(have + sent)
        remote_sha = self.sha256(part)
        if remote_sha != sha256:
            self.remove(part)
            raise TransientError(
                f"{self.endpoint.label}: upload of {local.name} arrived corrupted "
                f"(sha256 {remote_sha} != {sha256}); it will be sent again",
                self.endpoint.name,
            )
        with self._op(f"publishing {remote}", self.endpoint.timeouts.sftp):
            sftp.posix_rename(part, remote)
        return sent

    def get(self, remote: str, local: Path, *, sha256: str | None = None) -> int:
        """Download ``remote`` to ``local``, resuming ``local.part``; verified by sha256.

        ``sha256`` defaults to the hash computed on the host. Returns the bytes
        received this time. Raises LostError when ``remote`` does not exist.
        """
        part = local.with_name(local.name + ".part")
        sftp = self.sftp()
        want = sha256 or self.sha256(remote)
        if want is None:
            raise LostError(f"{self.endpoint.label}: {remote} does not exist", self.endpoint.name)
        received = 0
        with self._op(f"downloading {remote}", self.endpoint.timeouts.sftp) as dog:
            try:
                size = sftp.stat(remote).st_size or 0
            except FileNotFoundError as exc:
                raise LostError(f"{self.endpoint.label}: {remote} does not exist", self.endpoint.name) from exc
            have = part.stat().st_size if part.exists() else 0
            if have > size:
                have = 0
            with sftp.open(remote, "rb") as src, open(part, "ab" if have else "wb") as dst:
                src.seek(have)
                src.prefetch(size, max_concurrent_requests=64)
                while chunk := src.read(_CHUNK):
                    dst.write(chunk)
                    received += len(chunk)
                    dog.kick()
        got = file_sha256(part)
        if got != want:
            part.unlink(missing_ok=True)
            raise TransientError(
                f"{self.endpoint.label}: download of {remote} arrived corrupted "
                f"(sha256 {got} != {want}); it will be fetched again",
                self.endpoint.name,
            )
        os.replace(part, local)
        return received

    def read_from(self, remote: str, offset: int, limit: int = 1 << 20) -> bytes:
        """Up to ``limit`` bytes of ``remote`` from ``offset`` (b"" when missing or at end)."""
        sftp = self.sftp()
        with self._op(f"reading {remote}", self.endpoint.timeouts.sftp):
            try:
                with sftp.open(remote, "rb") as f:
                    f.seek(offset)
                    return f.read(limit)
            except FileNotFoundError:
                return b""

    # -- detached runs

    def start_detached(self, workdir: str, argv: Sequence[str], *, stdin: bytes = b"",
                       discard_stdout: bool = False) -> int:
        """Start ``argv`` in ``workdir``, detached from this connection; returns its pid.

        The run survives disconnects and the controller's exit (``setsid nohup``); its
        stderr (and stdout, unless ``discard_stdout``) goes to ``runner.out``; when it
        ends its exit code is written to ``rc`` atomically (``mv``). ``stdin`` reaches
        it through a pipe, never a file or a command line. Idempotent on ``workdir``:
        a second call returns the first run's pid and starts nothing.
        """
        out = "/dev/null" if discard_stdout else "runner.out"
        result = self.run(sh(_START_DETACHED, workdir, len(stdin), out, *argv), stdin=stdin, what="starting the run")
        try:
            return int(result.out.split()[-1])
        except (IndexError, ValueError):
            raise TransientError(
                f"{self.endpoint.label}: could not start the run in {workdir}: "
                f"{(result.err or result.out).strip()[:300] or f'exit {result.rc}'}",
                self.endpoint.name,
            ) from None

    def detached_status(self, workdir: str, files: Sequence[str] = ()) -> DetachedStatus:
        """One round trip: is the run alive, has it written ``rc``, how old are ``files``."""
        result = self.run(sh(_STATUS, workdir, *files), what="reading the run's status")
        values: dict[str, str] = {}
        found: dict[str, tuple[float, int]] = {}
        for line in result.out.splitlines():
            key, _, rest = line.partition(" ")
            if key == "file":
                mtime, size, name = rest.split(" ", 2)
                found[name] = (float(mtime), int(size))
            else:
                values[key] = rest.strip()
        if values.get("exists") != "1":
            return DetachedStatus(exists=False)
        rc = values.get("rc")
        return DetachedStatus(
            exists=True,
            pid=int(values["pid"]) if values.get("pid", "").isdigit() else None,
            alive=values.get("alive") == "1",
            rc=int(rc) if rc and rc.lstrip("-").isdigit() else None,
            now=float(values.get("now") or 0),
            files=found,
        )

    def kill_detached(self, workdir: str, grace_s: float = 10.0) -> None:
        """SIGTERM the run's process group, SIGKILL whatever is left after ``grace_s``."""
        grace = max(0, int(round(grace_s)))
        self.run(sh(_KILL, workdir, grace), timeout=grace + self.endpoint.timeouts.command, what="cancelling the run")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- connecting


def load_key(endpoint: Endpoint) -> paramiko.PKey | None:
    """The endpoint's private key, checked for an accepted type; None = use the agent."""
    if endpoint.key is None:
        return None
    path = Path(endpoint.key).expanduser()
    with ssh_errors(endpoint, f"reading key {path}"):
        try:
            key = paramiko.PKey.from_path(path)
        except FileNotFoundError as exc:
            raise PrecheckError(
                f"{endpoint.label}: key file {path} not found; set `key:` to your private key "
                "(create one with `ssh-keygen -t ed25519`)",
                endpoint.name,
            ) from exc
        except (SSHException, ValueError) as exc:
            if isinstance(exc, PasswordRequiredException):
                raise
            raise PrecheckError(f"{endpoint.label}: cannot read key {path}: {exc}", endpoint.name) from exc
    if key.get_name() not in ACCEPTED_KEY_TYPES:
        raise PrecheckError(
            f"{endpoint.label}: key {path} is {key.get_name()}; orch accepts Ed25519 or ECDSA keys "
            "(create one with `ssh-keygen -t ed25519`)",
            endpoint.name,
        )
    return key


def _open_socket(endpoint: Endpoint) -> tuple[socket.socket | EOFProxyCommand, EOFProxyCommand | None]:
    t = endpoint.timeouts
    if endpoint.proxy:
        with ssh_errors(endpoint, "starting the proxy command"):
            proxy = EOFProxyCommand(endpoint.proxy)
        return proxy, proxy
    with ssh_errors(endpoint, "connecting"):
        sock = socket.create_connection((endpoint.host, endpoint.port), timeout=t.connect)
    return sock, None


def connect(endpoint: Endpoint) -> Connection:
    """Connect and authenticate, accepting only a pinned host key.

    Raises:
        PrecheckError: unknown or changed host key (fingerprint shown), refused key,
            unreadable key file.
        TransientError: unreachable, timed out, proxy died (its stderr is quoted).
    """
    pkey = load_key(endpoint)
    t = endpoint.timeouts
    client = paramiko.SSHClient()
    if endpoint.pin_first_contact and endpoint.known_hosts is not None:
        client.set_missing_host_key_policy(_PinFirstContact(Path(endpoint.known_hosts).expanduser()))
    else:
        client.set_missing_host_key_policy(_RejectUnknown())
    for key in pinned_keys(endpoint):
        client.get_host_keys().add(endpoint.key_name, key.get_name(), key)
    sock, proxy = _open_socket(endpoint)
    dog = _Watchdog(t.connect + t.banner + t.auth, lambda: _close_quietly(client, sock))
    try:
        with ssh_errors(endpoint, "connecting", proxy):
            try:
                # With port 22 paramiko looks the key up under the bare host name, so
                # a custom host_key_name is honoured by connecting with it as the host.
                host = endpoint.host_key_name or endpoint.host
                port = 22 if endpoint.host_key_name else endpoint.port
                client.connect(
                    host,
                    port=port,
                    username=endpoint.user,
                    pkey=pkey,
                    sock=sock,
                    timeout=t.connect,
                    banner_timeout=t.banner,
                    auth_timeout=t.auth,
                    channel_timeout=t.channel,
                    allow_agent=pkey is None,
                    look_for_keys=pkey is None,
                )
            except Exception as exc:
                if dog.fired:
                    raise _Aborted(f"timed out after {dog.seconds:g}s") from exc
                raise
        client.get_transport().set_keepalive(int(max(1, t.keepalive)))
    except BaseException:
        dog.stop()
        transport = client.get_transport()
        _close_quietly(client, sock)
        _join(transport)
        if proxy is not None:
            proxy.release()
        raise
    dog.stop()
    return Connection(endpoint, client, proxy)


def _join(transport: paramiko.Transport | None) -> None:
    """Wait (briefly) for a closed transport's thread, so its proxy can be released."""
    if transport is not None and transport is not threading.current_thread() and transport.is_alive():
        transport.join(5)


def _close_quietly(client: paramiko.SSHClient, sock: object) -> None:
    try:
        client.close()
    finally:
        try:
            sock.close()  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 -- already failing
            pass


def scan_host_key(endpoint: Endpoint) -> paramiko.PKey:
    """The key the server presents, without authenticating (for ``orch ssh trust``)."""
    t = endpoint.timeouts
    sock, proxy = _open_socket(endpoint)
    transport = paramiko.Transport(sock)
    transport.banner_timeout = t.banner
    dog = _Watchdog(t.connect + t.banner, transport.close)
    try:
        with ssh_errors(endpoint, "reading the host key", proxy):
            try:
                transport.start_client(timeout=t.connect)
                return transport.get_remote_server_key()
            except Exception as exc:
                if dog.fired:
                    raise _Aborted(f"timed out after {dog.seconds:g}s") from exc
                raise
    finally:
        dog.stop()
        transport.close()
        _join(transport)
        if proxy is not None:
            proxy.release()


# --------------------------------------------------------------------------- the link


@dataclass
class Backoff:
    """Reconnect schedule: ``tries`` attempts, sleeping ``first * factor**n`` (capped)."""

    tries: int = 3
    first: float = 0.5
    factor: float = 2.0
    cap: float = 8.0

    def delays(self) -> Iterator[float]:
        delay = self.first
        for _ in range(self.tries - 1):
            yield min(delay, self.cap)
            delay *= self.factor


class Link:
    """A reusable connection to one endpoint, re-established with backoff when it drops.

    Design choice: one connection per endpoint per process, reused across calls —
    Colab allows a single SSH connection per runtime (HTTP 429 otherwise), and a
    fresh handshake per poll would be slow through a tunnel. An idle connection is
    probed before reuse because keepalives do not notice a dead tunnel. Once the
    backoff is spent, calls fail at once for ``down_for_s`` seconds, so a tick that
    polls many attempts on an unreachable host does not wait out the backoff for each.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        backoff: Backoff | None = None,
        probe_after_s: float = 5.0,
        down_for_s: float = 30.0,
        connector: Callable[[Endpoint], Connection] = connect,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.endpoint = endpoint
        self.backoff = backoff or Backoff()
        self.probe_after_s = probe_after_s
        self.down_for_s = down_for_s
        self._connector = connector
        self._sleep = sleep
        self._conn: Connection | None = None
        self._down: tuple[float, TransientError] | None = None
        self.connects = 0

    def connection(self) -> Connection:
        """A live connection: the current one if it still answers, else a new one."""
        if self._down is not None:
            until, error = self._down
            if time.monotonic() < until:
                raise TransientError(f"{error} (not retried for {self.down_for_s:g}s)", self.endpoint.name)
            self._down = None
        conn = self._conn
        if conn is not None:
            if conn.alive and time.monotonic() - conn.last_ok < self.probe_after_s:
                return conn
            if conn.alive:
                try:
                    conn.probe()
                    return conn
                except TransientError:
                    pass
            self.drop()
        last: TransientError | None = None
        for delay in [*self.backoff.delays(), None]:
            try:
                self._conn = self._connector(self.endpoint)
                self.connects += 1
                return self._conn
            except TransientError as exc:
                last = exc
                if delay is None or (exc.__class__ is not TransientError):
                    break
                self._sleep(delay)
        assert last is not None
        if last.__class__ is TransientError:
            self._down = (time.monotonic() + self.down_for_s, last)
        raise last

    def call(self, fn: Callable[[Connection], T]) -> T:
        """``fn(connection)``, retried on a fresh connection when the link drops.

        ``fn`` must be safe to repeat (every operation here is: uploads resume,
        starts are idempotent on their directory).
        """
        last: TransientError | None = None
        for delay in [*self.backoff.delays(), None]:
            conn = self.connection()
            try:
                return fn(conn)
            except TransientError as exc:
                if exc.__class__ is not TransientError:
                    raise
                last = exc
                if conn.alive:
                    raise  # the connection is fine: the operation itself failed
                self.drop()
                if delay is None:
                    break
                self._sleep(delay)
        assert last is not None
        raise last

    def drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def close(self) -> None:
        self.drop()

    def __enter__(self) -> "Link":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = [
    "ACCEPTED_KEY_TYPES",
    "Backoff",
    "Completed",
    "Connection",
    "DetachedStatus",
    "EOFProxyCommand",
    "Endpoint",
    "Link",
    "Timeouts",
    "UnknownHostKey",
    "connect",
    "file_sha256",
    "fingerprint",
    "join",
    "key_from_line",
    "pin_host_key",
    "pinned_keys",
    "quote",
    "scan_host_key",
    "sh",
    "ssh_errors",
]
