"""One reusable SSH connection per endpoint, re-established with backoff when it drops."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator, TypeVar

from ...errors import TransientError
from .connection import Connection, Endpoint, connect

T = TypeVar("T")


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
