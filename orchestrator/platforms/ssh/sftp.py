"""Files on an SSH host through SFTP: resumable, verified transfers and small reads.

Uploads and downloads go to ``.part`` files, resume from the size already there, are
checked by sha256 (``sha256sum`` on the host), and only then renamed into place, so a
final name always means "complete" (downloads through :class:`orchestrator.partfile.PartFile`). Mixed into :class:`connection.Connection`, whose
watchdog (``_op``) puts a deadline on every SFTP reply.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

import paramiko

from ...errors import LostError, PrecheckError, TransientError
from ...partfile import PartFile
from ...progress import transfer
from .shell import sh

if TYPE_CHECKING:  # pragma: no cover
    from .connection import Endpoint

_CHUNK = 1 << 20

_SHA256 = r"""
[ -e "$1" ] || { echo missing; exit 0; }
if command -v sha256sum >/dev/null; then sha256sum -- "$1"
else python3 -c 'import hashlib,sys;h=hashlib.sha256();f=open(sys.argv[1],"rb")
for b in iter(lambda:f.read(1<<20),b""):h.update(b)
print(h.hexdigest())' "$1"; fi
"""


class SFTPFiles:
    """The file half of a connection (``Connection`` supplies ``run``, ``_op``, ``_client``)."""

    endpoint: "Endpoint"
    _sftp: paramiko.SFTPClient | None

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

    def makedirs(self, path: str, private: str | None = None) -> None:
        """``mkdir -p`` with owner-only modes (umask 077: others on a shared host must not
        read code, data or logs); ``private`` (the remote root) is made 0700 as well, for
        a root an older orch created 0755."""
        script = 'umask 077 && mkdir -p -- "$1"' + (' && chmod 700 -- "$2"' if private else "")
        result = self.run(sh(script, path, *([private] if private else [])), what=f"mkdir {path}")
        if result.rc != 0:
            raise PrecheckError(f"{self.endpoint.label}: cannot create {path}: {result.err.strip()}", self.endpoint.name)

    def remove(self, path: str) -> None:
        """Remove a file or a whole directory tree; a missing path is fine."""
        result = self.run(sh('rm -rf -- "$1"', path), what=f"removing {path}")
        if result.rc != 0:
            raise TransientError(f"{self.endpoint.label}: cannot remove {path}: {result.err.strip()}", self.endpoint.name)

    def sha256(self, path: str) -> str | None:
        """sha256 of a remote file (computed on the host), or None when the host says it
        is missing. Anything else that is not a digest raises TransientError: a hash
        that could not be read is never "the file does not exist"."""
        result = self.run(sh(_SHA256, path), what=f"sha256 {path}", timeout=max(self.endpoint.timeouts.command, 300))
        words = result.out.split()
        if result.rc == 0 and words == ["missing"]:
            return None
        if result.rc == 0 and words and len(words[0]) == 64 and all(c in "0123456789abcdef" for c in words[0]):
            return words[0]
        raise TransientError(f"{self.endpoint.label}: cannot hash {path} (exit {result.rc}): "
                             f"{(result.err or result.out).strip()[:200]}", self.endpoint.name)

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
            with open(local, "rb") as src, sftp.open(part, "r+" if have else "w") as dst, \
                    transfer(f"{self.endpoint.name}: upload {local.name}", size, have) as advance:
                if not have:
                    dst.chmod(0o600)  # sftp-server creates files with its own umask (usually 0644)
                dst.set_pipelined(True)
                dst.seek(have)
                src.seek(have)
                while chunk := src.read(_CHUNK):
                    dst.write(chunk)
                    sent += len(chunk)
                    dog.kick()
                    advance(len(chunk))
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
        sftp = self.sftp()
        want = sha256 or self.sha256(remote)
        if want is None:
            raise LostError(f"{self.endpoint.label}: {remote} does not exist", self.endpoint.name)
        part = PartFile(local, sha256=want, what=f"{self.endpoint.label}: download of {remote}",
                        platform=self.endpoint.name)
        received = 0
        with self._op(f"downloading {remote}", self.endpoint.timeouts.sftp) as dog:
            try:
                part.size = size = sftp.stat(remote).st_size or 0
            except FileNotFoundError as exc:
                raise LostError(f"{self.endpoint.label}: {remote} does not exist", self.endpoint.name) from exc
            with sftp.open(remote, "rb") as src, part.open() as dst, \
                    transfer(f"{self.endpoint.name}: download {local.name}", size, part.offset) as advance:
                src.seek(part.offset)
                src.prefetch(size, max_concurrent_requests=64)
                while chunk := src.read(_CHUNK):
                    dst.write(chunk)
                    received += len(chunk)
                    dog.kick()
                    advance(len(chunk))
        part.commit()
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
