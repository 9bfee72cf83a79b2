"""A paramiko ProxyCommand that notices when the proxy dies.

paramiko 5.1's own ``ProxyCommand`` spins at 100 % CPU once the proxy process exits
(its ``recv`` loops on the empty read; upstream PR #1180 is still open), keeps
``is_active()`` True, blocks forever in ``send`` on a stalled proxy, lets an unread
stderr pipe fill, and never reaps the process. :class:`EOFProxyCommand` fixes all of
these; it is what ``connection.connect`` uses for every ``proxy`` (``colab ssh
--proxy-mode``, ``cloudflared access ssh``, a test relay).

Text a proxy prints on stdout before the server's ``SSH-`` banner (``colab`` prints
its upgrade notice there) is dropped here: paramiko allows such lines (RFC 4253
4.2) but gives each one after the first only 2 s, which a slow tunnel overruns.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import tempfile
import threading
from typing import Sequence

import paramiko
from paramiko.ssh_exception import ProxyCommandFailure


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
        self._preamble: bytes | None = b""  # until the banner: a partial line; then None
        #: The pipe to or from the proxy broke (it died or closed it): the connection
        #: through it is dead, whatever the transport thread has noticed yet.
        self.broken = False

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
            self.broken = True
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
            data = os.read(fd, size)  # b"" at EOF: the Packetizer raises EOFError
        except OSError as exc:
            self.broken = True
            raise ProxyCommandFailure(" ".join(self.cmd), exc.strerror or str(exc)) from exc
        self.broken = self.broken or not data
        return self._past_preamble(data) if self._preamble is not None and data else data

    def _past_preamble(self, data: bytes) -> bytes:
        """``data`` from the ``SSH-`` banner on; raises socket.timeout (read again) while
        only lines before it have come. Gives up after 64 KiB (paramiko then says why)."""
        buf = self._preamble + data
        while True:
            if buf.startswith(b"SSH-") or len(buf) > 65536:
                self._preamble = None
                return buf
            if b"\n" not in buf:  # a line still coming
                self._preamble = buf
                raise TimeoutError()
            buf = buf.split(b"\n", 1)[1]

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
