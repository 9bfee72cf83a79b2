"""A real OpenSSH ``sshd`` on 127.0.0.1, with a generated host key and one authorised key.

The SSH platform is tested against the real server, not a fake: paramiko speaks the
real protocol to it, commands run in a real shell, SFTP is OpenSSH's own
``internal-sftp``. The server listens on a free high port of 127.0.0.1 only and runs
from a private directory (its config, keys, pid file and log); ``stop()`` ends it.

Contract: ``SSHD.start(workdir)`` returns once the server answers with an SSH banner,
or raises ``SSHDUnavailable`` (no ``/usr/sbin/sshd``, privilege-separation dir
missing) so fixtures can skip with the reason.
"""

from __future__ import annotations

import getpass
import os
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

SSHD_BIN = os.environ.get("ORCH_TEST_SSHD", "/usr/sbin/sshd")
SFTP_SERVER = "internal-sftp"


class SSHDUnavailable(RuntimeError):
    """sshd cannot run on this machine; the message says why (tests skip on it)."""


@dataclass(frozen=True)
class KeyPair:
    """An Ed25519 key pair in OpenSSH formats: ``private`` is a file, ``public`` a line."""

    private: Path
    public: str  # "ssh-ed25519 AAAA... comment"

    @property
    def key_type(self) -> str:
        return self.public.split()[0]

    @property
    def base64(self) -> str:
        return self.public.split()[1]


def generate_ed25519(path: Path, comment: str = "orch-test") -> KeyPair:
    """Write a fresh Ed25519 private key (OpenSSH format, mode 0600) and its ``.pub``."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    path.write_bytes(private)
    path.chmod(0o600)
    line = f"{public.decode()} {comment}"
    path.with_name(path.name + ".pub").write_text(line + "\n")
    return KeyPair(private=path, public=line)


def _install_key(path: Path, pem: str) -> KeyPair:
    key = serialization.load_ssh_private_key(pem.encode(), password=None)
    path.write_text(pem.strip() + "\n")
    path.chmod(0o600)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return KeyPair(private=path, public=public.decode())


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (the caller binds it soon after)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_banner(port: int, deadline_s: float = 10.0) -> bool:
    """True once something on ``port`` speaks the SSH banner."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
                if s.recv(64).startswith(b"SSH-2.0"):
                    return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


@dataclass
class SSHD:
    """One running sshd. ``user`` may log in with ``client_key``; its host key is ``host_key``."""

    workdir: Path
    port: int
    host_key: KeyPair
    client_key: KeyPair
    user: str = field(default_factory=getpass.getuser)
    host: str = "127.0.0.1"
    process: subprocess.Popen | None = None
    #: Environment every session gets (``SetEnv``), e.g. SLURM_CONF for a test cluster.
    env: dict[str, str] = field(default_factory=dict)

    @property
    def host_key_name(self) -> str:
        """The name known_hosts files use for this server (``[host]:port``)."""
        return f"[{self.host}]:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "sshd.log"

    def known_hosts_line(self, name: str | None = None) -> str:
        return f"{name or self.host_key_name} {self.host_key.key_type} {self.host_key.base64}\n"

    def write_known_hosts(self, path: Path, name: str | None = None) -> Path:
        path.write_text(self.known_hosts_line(name))
        return path

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    @classmethod
    def start(cls, workdir: Path, host_key_pem: str | None = None, env: dict[str, str] | None = None) -> "SSHD":
        """Generate keys and a config under ``workdir`` and start sshd on a free port.

        ``host_key_pem`` (an OpenSSH private key) replaces the generated host key;
        ``env`` is set in every session.
        """
        if not os.access(SSHD_BIN, os.X_OK):
            raise SSHDUnavailable(f"{SSHD_BIN} not found: install openssh-server (apt-get install -y openssh-server)")
        privsep = Path("/run/sshd")
        if not privsep.is_dir():
            try:
                privsep.mkdir(mode=0o755, parents=True)
            except OSError as exc:
                raise SSHDUnavailable(f"sshd needs {privsep}: {exc}") from exc
        workdir.mkdir(parents=True, exist_ok=True)
        host_key = generate_ed25519(workdir / "ssh_host_ed25519_key", "orch-test-host")
        if host_key_pem is not None:
            host_key = _install_key(workdir / "ssh_host_ed25519_key", host_key_pem)
        client_key = generate_ed25519(workdir / "id_ed25519", "orch-test-client")
        (workdir / "authorized_keys").write_text(client_key.public + "\n")
        last_log = ""
        for _ in range(5):  # a free port can be taken between probe and bind
            server = cls(workdir=workdir, port=free_port(), host_key=host_key, client_key=client_key, env=dict(env or {}))
            server._launch()
            if wait_for_banner(server.port, deadline_s=10.0):
                return server
            last_log = server.log()
            server.stop()
        raise SSHDUnavailable(f"sshd did not start: {last_log.strip()[-500:]}")

    def _launch(self) -> None:
        config = self.workdir / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {self.host_key.private}",
                    f"PidFile {self.workdir / 'sshd.pid'}",
                    f"AuthorizedKeysFile {self.workdir / 'authorized_keys'}",
                    "StrictModes no",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "PermitRootLogin prohibit-password",
                    f"Subsystem sftp {SFTP_SERVER}",
                    # Tests open many short connections at once; the default 10:30:100
                    # would randomly drop some of them.
                    "MaxStartups 200",
                    "MaxSessions 100",
                    "LogLevel INFO",
                    *(f"SetEnv {k}={v}" for k, v in self.env.items()),
                    "",
                ]
            )
        )
        log = open(self.log_path, "ab")
        try:
            self.process = subprocess.Popen(
                [SSHD_BIN, "-D", "-e", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        finally:
            log.close()

    def stop(self) -> None:
        """Stop the listener. Sessions still open end when their clients disconnect."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def restart(self) -> None:
        """Start the same server again on the same port (after ``stop``)."""
        self.stop()
        self._launch()
        if not wait_for_banner(self.port, deadline_s=10.0):
            raise SSHDUnavailable(f"sshd did not restart: {self.log()[-500:]}")

    def __enter__(self) -> "SSHD":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


