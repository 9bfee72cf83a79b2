"""The paramiko layer shared by every platform reached over SSH (``ssh``, ``colab``).

What it adds to paramiko, and why (see ``docs/platforms/ssh.md``):

* **Pinned host keys only** (``hostkeys``): a key that is not pinned, or that
  changed, refuses the connection with the fingerprint shown (PrecheckError).
* **A ProxyCommand that notices EOF** (``proxy``): a dead proxy ends the
  connection instead of spinning a core.
* **A deadline on everything.** connect, banner, auth and channel-open have paramiko
  timeouts; exec reads and SFTP replies get a channel timeout; and because some
  paramiko waits have no timeout at all (``exec_command``'s request wait,
  ``invoke_subsystem``), every operation also runs under a watchdog that aborts the
  connection when it overruns. A timed-out connection is given up. Liveness is
  probed with a short ``exec("true")``; keepalives are on but do not detect a dead
  tunnel.
* **Resumable, verified transfers** (``sftp``): ``.part`` files, sha256, then rename.
* **Quoting** (``shell``): remote commands are fixed ``/bin/sh`` scripts; every variable
  part is a positional argument quoted with :func:`shlex.quote`.
* **One error edge.** :func:`ssh_errors` maps paramiko/socket errors onto
  ``orchestrator.errors`` once, with ``raise ... from exc``.
Reconnection with backoff lives in ``link``, detached runs in ``runs``.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import paramiko
from paramiko.ssh_exception import (
    AuthenticationException,
    BadHostKeyException,
    NoValidConnectionsError,
    PasswordRequiredException,
    ProxyCommandFailure,
    SSHException,
)

from ...errors import PlatformError, PrecheckError, TransientError
from .sftp import SFTPFiles
from .hostkeys import PinFirstContact, RejectUnknown, UnknownHostKey, fingerprint, load_pins
from .proxy import EOFProxyCommand

#: Key types orch accepts for logging in (Colab's ``colab ssh`` rejects RSA outright).
ACCEPTED_KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521")

#: The most output a remote command may send back (orch's commands print a few lines).
MAX_ANSWER_BYTES = 4 << 20


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


def pinned_keys(endpoint: Endpoint) -> list[paramiko.PKey]:
    """The keys pinned for ``endpoint`` (its known_hosts entries + ``pinned``)."""
    return load_pins(endpoint.known_hosts, endpoint.key_name, endpoint.pinned)


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
        return f"connection closed ({exc})" if str(exc) else "connection closed"
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


class Connection(SFTPFiles):
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
        if self._proxy is not None and self._proxy.broken:
            return False  # a cut tunnel, before the transport thread notices
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

        Raises TransientError when it cannot start, does not finish within
        ``timeout`` (default ``Timeouts.command``), or ends without an exit status
        (the session was cut): a :class:`Completed` is always the host's own answer.
        A non-zero exit is not an error.
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
            if len(out) + len(err) > MAX_ANSWER_BYTES:
                raise SSHException(f"the command's answer is over {MAX_ANSWER_BYTES} bytes; not read")
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
        # paramiko marks the status "ready" with -1 when the channel closes without one
        # (an "exit-status" is unsigned, so -1 never comes from the host): the session was
        # cut (sshd killed, tunnel dropped) or the command died by a signal. Whatever
        # output came is partial, so it is not an answer: the caller must ask again.
        rc = chan.recv_exit_status() if chan.exit_status_ready() else -1
        if rc == -1:
            raise EOFError("the channel closed without an exit status")
        return Completed(rc=rc, stdout=bytes(out), stderr=bytes(err))

    def probe(self, timeout: float | None = None) -> None:
        """Prove the connection carries traffic now (``exec true``); TransientError if not."""
        timeout = timeout or self.endpoint.timeouts.probe
        result = self.run("true", timeout=timeout, what="liveness probe")
        if result.rc != 0:
            raise TransientError(f"{self.endpoint.label}: liveness probe exited {result.rc}", self.endpoint.name)


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
        client.set_missing_host_key_policy(PinFirstContact(Path(endpoint.known_hosts).expanduser()))
    else:
        client.set_missing_host_key_policy(RejectUnknown())
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
                transport = client.get_transport()
                if isinstance(exc, AuthenticationException) and (transport is None or not transport.is_active()):
                    # paramiko reports a connection cut during auth as an auth failure
                    # ("transport shut down or saw EOF"): not a refusal, a dropped link.
                    raise EOFError("the connection closed during authentication") from exc
                if isinstance(exc, AuthenticationException) and str(exc) == "Authentication timeout.":
                    raise socket.timeout() from exc  # the server did not answer: not a refusal
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


__all__ = [
    "ACCEPTED_KEY_TYPES",
    "Completed",
    "Connection",
    "Endpoint",
    "Timeouts",
    "connect",
    "load_key",
    "pinned_keys",
    "scan_host_key",
    "ssh_errors",
]
