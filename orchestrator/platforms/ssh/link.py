"""One reusable SSH connection per endpoint, re-established with backoff when it drops."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

from ...errors import TransientError
from ...retry import Breaker, Retry
from .connection import Connection, Endpoint, connect

T = TypeVar("T")

#: Reconnect schedule: 3 tries, waiting 0.5 s then 1 s (doubling, at most 8 s, no jitter).
RECONNECT = Retry(attempts=3, base=0.5, factor=2.0, cap=8.0, jitter=0.0)


class Link:
    """A reusable connection to one endpoint, re-established with backoff when it drops.

    Design choice: one connection per endpoint per process, reused across calls —
    Colab allows a single SSH connection per runtime (HTTP 429 otherwise), and a
    fresh handshake per poll would be slow through a tunnel. An idle connection is
    probed before reuse because keepalives do not notice a dead tunnel. Once the
    backoff is spent, a :class:`~orchestrator.retry.Breaker` makes calls fail at once
    for ``down_for_s`` seconds, so a tick that polls many attempts on an unreachable
    host does not wait out the backoff for each.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        backoff: Retry | None = None,
        probe_after_s: float = 5.0,
        down_for_s: float = 30.0,
        connector: Callable[[Endpoint], Connection] = connect,
        sleep: Callable[[float], None] | None = None,
    ):
        self.endpoint = endpoint
        backoff = backoff or RECONNECT
        self.backoff = backoff.replace(sleep=sleep) if sleep is not None else backoff
        self.probe_after_s = probe_after_s
        self.breaker = Breaker(down_for_s)
        self._connector = connector
        self._conn: Connection | None = None
        self.connects = 0

    def connection(self) -> Connection:
        """A live connection: the current one if it still answers, else a new one."""
        self.breaker.check(self.endpoint.name)
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
        try:
            # Only a plain TransientError is worth another try: its subclasses are
            # verdicts (a proxy that says the host key changed), not a dropped link.
            self._conn = self.backoff.run(f"connecting to {self.endpoint.label}", self._connect,
                                          retry_if=lambda exc: exc.__class__ is TransientError)
        except TransientError as exc:
            if exc.__class__ is TransientError:
                self.breaker.trip(exc)
            raise
        self.breaker.reset()
        return self._conn

    def _connect(self) -> Connection:
        conn = self._connector(self.endpoint)
        self.connects += 1
        return conn

    def call(self, fn: Callable[[Connection], T]) -> T:
        """``fn(connection)``, retried on a fresh connection when the link drops.

        ``fn`` must be safe to repeat (every operation here is: uploads resume,
        starts are idempotent on their directory).
        """
        tries = self.backoff.begin()
        while True:
            conn = self.connection()
            try:
                return fn(conn)
            except TransientError as exc:
                if exc.__class__ is not TransientError or conn.alive:
                    raise  # a verdict, or the connection is fine: the operation itself failed
                self.drop()
                if not tries.wait(exc):
                    raise

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
