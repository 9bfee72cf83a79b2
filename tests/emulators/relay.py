"""A ProxyCommand relay between stdin/stdout and a TCP port, which tests can cut.

Run as a program it is what paramiko's ``ProxyCommand`` starts: one process per SSH
connection, bridging raw bytes between its stdin/stdout and ``127.0.0.1:PORT`` (the
test sshd)::

    python relay.py --port 2222 --control /tmp/relay-ctl

Tests steer it through the control directory with :class:`Relay`:

* ``cut()``          SIGKILL every live relay (the tunnel dies mid-whatever);
* ``freeze()/thaw()`` SIGSTOP / SIGCONT them (a stalled tunnel: nothing moves);
* ``down("exit")``   new relays print an error and exit at once; ``down("hang")``:
                     they never connect and never answer; ``up()`` undoes it;
* ``cut_after("up", n)`` the next relay exits after forwarding ``n`` bytes towards
                     the server (``"down"``: towards the client) — a cut at a
                     deterministic point mid-upload or mid-download.

Every relay appends ``pid up_bytes down_bytes`` to ``traffic.log`` when it ends, so a
test can measure what went over the wire.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

CHUNK = 65536


def bridge(
    in_fd: int,
    out_fd: int,
    sock: socket.socket,
    *,
    up_limit: int | None = None,
    down_limit: int | None = None,
    counts: list[int] | None = None,
) -> tuple[int, int]:
    """Copy in_fd -> sock and sock -> out_fd until either side ends or a limit is hit.

    Returns (bytes sent up to the server, bytes sent down to the client); ``counts``
    (a two-item list) is kept up to date as bytes move, for a caller that is killed.
    """
    n = counts if counts is not None else [0, 0]
    sock.setblocking(True)
    while True:
        ready, _, _ = select.select([in_fd, sock], [], [])
        if in_fd in ready:
            data = os.read(in_fd, CHUNK)
            if not data:
                return n[0], n[1]
            if up_limit is not None and n[0] + len(data) >= up_limit:
                sock.sendall(data[: up_limit - n[0]])
                n[0] = up_limit
                return n[0], n[1]
            sock.sendall(data)
            n[0] += len(data)
        if sock in ready:
            try:
                data = sock.recv(CHUNK)
            except OSError:
                return n[0], n[1]
            if not data:
                return n[0], n[1]
            if down_limit is not None and n[1] + len(data) >= down_limit:
                _write_all(out_fd, data[: down_limit - n[1]])
                n[1] = down_limit
                return n[0], n[1]
            _write_all(out_fd, data)
            n[1] += len(data)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _claim_cut(control: Path) -> tuple[str, int] | None:
    """Take the one-shot cut order, if any (rename makes only one relay take it)."""
    order = control / "cut_after"
    mine = control / f"cut_after.{os.getpid()}"
    try:
        os.rename(order, mine)
    except OSError:
        return None
    direction, n = mine.read_text().split()
    mine.unlink()
    return direction, int(n)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--control", type=Path, required=True)
    args = parser.parse_args(argv)
    control: Path = args.control
    pids = control / "pids"
    pids.mkdir(parents=True, exist_ok=True)
    me = pids / str(os.getpid())
    me.write_text("")
    with open(control / "started.log", "a") as f:
        f.write(f"{os.getpid()}\n")
    # A killed client closes our stdin; SIGPIPE would then kill us mid-write anyway.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    # SIGTERM (a client closing its proxy) still records the traffic; SIGKILL (cut) does not.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    counts = [0, 0]
    try:
        down_mode = control / "down"
        if down_mode.exists():
            mode = down_mode.read_text().strip() or "exit"
            if mode == "hang":
                while True:
                    time.sleep(3600)
            sys.stderr.write("relay: tunnel is down\n")
            return 1
        cut = _claim_cut(control)
        sock = socket.create_connection((args.host, args.port), timeout=10)
        try:
            bridge(
                sys.stdin.fileno(),
                sys.stdout.fileno(),
                sock,
                up_limit=cut[1] if cut and cut[0] == "up" else None,
                down_limit=cut[1] if cut and cut[0] == "down" else None,
                counts=counts,
            )
        finally:
            sock.close()
        return 0
    finally:
        with open(control / "traffic.log", "a") as f:
            f.write(f"{os.getpid()} {counts[0]} {counts[1]}\n")
        try:
            me.unlink()
        except OSError:
            pass


def _running(pid: int) -> bool:
    """Alive and not a zombie (a killed relay stays a zombie until paramiko reaps it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


@dataclass
class Relay:
    """The test's handle on the relays spawned for one sshd port."""

    control: Path
    port: int
    python: str = sys.executable

    def __post_init__(self) -> None:
        (self.control / "pids").mkdir(parents=True, exist_ok=True)

    @property
    def argv(self) -> list[str]:
        """The ProxyCommand, as an argument list."""
        return [self.python, str(Path(__file__).resolve()), "--port", str(self.port), "--control", str(self.control)]

    def pids(self) -> list[int]:
        """Relays alive now."""
        alive = []
        for entry in (self.control / "pids").iterdir():
            pid = int(entry.name)
            if not _running(pid):
                entry.unlink(missing_ok=True)
                continue
            alive.append(pid)
        return alive

    def started(self) -> int:
        """How many relay processes have been started (one per SSH connection)."""
        try:
            return len((self.control / "started.log").read_text().split())
        except FileNotFoundError:
            return 0

    def traffic(self) -> tuple[int, int]:
        """Total (up, down) bytes forwarded by relays that have ended."""
        up = down = 0
        try:
            for line in (self.control / "traffic.log").read_text().splitlines():
                _, u, d = line.split()
                up += int(u)
                down += int(d)
        except FileNotFoundError:
            pass
        return up, down

    def _signal(self, sig: int) -> list[int]:
        hit = []
        for pid in self.pids():
            try:
                os.kill(pid, sig)
                hit.append(pid)
            except ProcessLookupError:
                pass
        return hit

    def cut(self) -> list[int]:
        """Kill every live relay with SIGKILL; returns the pids killed."""
        return self._signal(signal.SIGKILL)

    def freeze(self) -> list[int]:
        return self._signal(signal.SIGSTOP)

    def thaw(self) -> list[int]:
        return self._signal(signal.SIGCONT)

    def down(self, mode: str = "exit") -> None:
        (self.control / "down").write_text(mode)

    def up(self) -> None:
        (self.control / "down").unlink(missing_ok=True)

    def cut_after(self, direction: str, nbytes: int) -> None:
        assert direction in ("up", "down")
        tmp = self.control / "cut_after.tmp"
        tmp.write_text(f"{direction} {nbytes}")
        os.replace(tmp, self.control / "cut_after")

    def close(self) -> None:
        """Teardown: no relay outlives the test."""
        self.up()
        (self.control / "cut_after").unlink(missing_ok=True)
        self._signal(signal.SIGCONT)
        self._signal(signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main())
