"""The one retry policy: exponential backoff with jitter, Retry-After as a floor, a
time budget, and a circuit breaker for links that stay down.

Every platform retries through :class:`Retry`; only the numbers differ, and each
platform keeps its own (Kaggle: equal jitter and a budget; Drive: full jitter, as
Google's docs advise; SSH: a fixed ladder and a :class:`Breaker`).

The n-th wait (n = failures so far, from 1) is drawn from::

    ceiling = min(cap, base * factor ** (n - 1))
    delay   = ceiling * ((1 - jitter) + jitter * rand())      # rand() in [0, 1)

so ``jitter=0`` is a fixed ladder, ``0.5`` keeps every wait within [ceiling/2, ceiling]
(never a tight loop), ``1`` is full jitter. A ``Retry-After`` the server sent is a
floor under the delay. A call gives up, re-raising its last error, after ``attempts``
tries or once the next wait would take its waiting past ``budget`` seconds; the
controller's next tick tries again.

Design choice: written here rather than taken from ``tenacity`` or ``stamina``. The
call sites need three things those libraries make awkward: loops that reset their
failure count when a transfer made progress (Drive chunks), a Retry-After floor read
from orch's own errors, and waits that tests make instant by injecting ``sleep`` and
``rand``. The whole policy is a few dozen lines, and orch adds no dependency for it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from .errors import TransientError

log = logging.getLogger(__name__)
T = TypeVar("T")


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, TransientError)


@dataclass(frozen=True)
class Retry:
    """How one kind of call is retried (see the module docstring for the formula).

    Args:
        attempts: tries in all, the first one included.
        base: the first wait's ceiling, in seconds.
        factor: how much each further ceiling grows.
        cap: the largest ceiling.
        jitter: the random share of each wait, 0 (none) to 1 (full jitter).
        budget: seconds one call may spend waiting between its tries, in all.
        sleep: how to wait (tests inject a recorder).
        rand: a float in [0, 1) per wait (tests inject a fixed or seeded one).
    """

    attempts: int = 6
    base: float = 1.0
    factor: float = 2.0
    cap: float = 60.0
    jitter: float = 0.5
    budget: float = math.inf
    sleep: Callable[[float], None] = time.sleep
    rand: Callable[[], float] = random.random

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts: must be at least 1")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError("jitter: must be between 0 and 1")

    def replace(self, **changes: object) -> Retry:
        """This policy with some fields changed (``sleep`` of a caller, a smaller budget)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def delay(self, failures: int, retry_after: float | None = None) -> float:
        """The wait after ``failures`` failures in a row (from 1), Retry-After as a floor."""
        ceiling = min(self.cap, self.base * self.factor ** (failures - 1))
        delay = ceiling * ((1.0 - self.jitter) + self.jitter * self.rand()) if self.jitter else ceiling
        return max(delay, retry_after) if retry_after is not None else delay

    def begin(self) -> Tries:
        """The state of one call's tries (for loops that cannot use :meth:`run`)."""
        return Tries(self)

    def run(self, what: str, fn: Callable[[], T],
            retry_if: Callable[[BaseException], bool] = _transient) -> T:
        """``fn()``, tried again after what ``retry_if`` accepts (TransientError by default).

        Raises:
            The last error once tries or budget are spent; anything ``retry_if``
            refuses, at once.
        """
        tries = self.begin()
        while True:
            try:
                return fn()
            except Exception as exc:
                if not retry_if(exc) or not tries.wait(exc):
                    raise
                log.info("%s; retrying in %.2fs (attempt %d/%d)", exc, tries.last, tries.failures, self.attempts)


class Tries:
    """One call's failures so far and time waited, against its :class:`Retry`."""

    def __init__(self, policy: Retry):
        self.policy = policy
        self.failures = 0
        self.waited = 0.0
        #: The last wait, in seconds.
        self.last = 0.0

    def pause(self, exc: BaseException | None = None) -> float | None:
        """Count a failure; the wait before the next try, or None when tries or budget are spent.

        A ``retry_after`` attribute on ``exc`` (seconds) is a floor under the wait.
        """
        self.failures += 1
        if self.failures >= self.policy.attempts:
            return None
        pause = self.policy.delay(self.failures, getattr(exc, "retry_after", None))
        if self.waited + pause > self.policy.budget:
            return None
        return pause

    def wait(self, exc: BaseException | None = None) -> bool:
        """Count a failure and wait before the next try; False (no wait) when spent."""
        pause = self.pause(exc)
        if pause is None:
            return False
        self.policy.sleep(pause)
        self.waited += pause
        self.last = pause
        return True

    def reset(self) -> None:
        """Progress was made (a chunk arrived): the failure streak starts again."""
        self.failures = 0


class Breaker:
    """A circuit breaker: once a link's retries are spent, fail at once for a while.

    States: *closed* (calls go through), *open* (for ``open_for_s`` after a failure:
    :meth:`check` raises at once, so a tick that polls many attempts on an unreachable
    host does not wait out the backoff for each) and *half-open* (the time is up: the
    next call goes through; its failure opens the breaker again, its success closes it).
    """

    def __init__(self, open_for_s: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self.open_for_s = open_for_s
        self.clock = clock
        self._open: tuple[float, TransientError] | None = None

    @property
    def state(self) -> str:
        if self._open is None:
            return "closed"
        return "open" if self.clock() < self._open[0] else "half-open"

    def check(self, platform: str | None = None) -> None:
        """Raise at once while open (naming the error that opened it and for how long)."""
        if self._open is not None and self.clock() < self._open[0]:
            error = self._open[1]
            raise TransientError(f"{error} (not retried for {self.open_for_s:g}s)", platform or error.platform)

    def trip(self, error: TransientError) -> None:
        """The call failed after its retries: open for ``open_for_s``."""
        self._open = (self.clock() + self.open_for_s, error)

    def reset(self) -> None:
        """The call succeeded: close."""
        self._open = None
