"""Hard deadlines on the main thread: stop whatever a command is blocked in.

Every remote call has a timeout of its own; these are the backstop for the ones that
do not keep it (a client library with no timeout, a stalled subprocess pipe). They
nest: an inner deadline never extends an outer one, and when the outer one is due
first, the outer one fires.
"""

from __future__ import annotations

import signal
import threading
import time
from contextlib import contextmanager


class Overrun(BaseException):
    """A hard deadline passed.

    A BaseException on purpose, like rq's ``ShutDownImminentException``: it must get
    past every ``except Exception`` on the way out (a job step's containment, a
    platform's error mapping), so that the blocked call really stops. The code that
    set the deadline catches it and says what was left undone.
    """


@contextmanager
def hard_deadline(seconds: float, message: str, overrun: type[Overrun] = Overrun):
    """Raise ``overrun(message)`` in this (main) thread once ``seconds`` have passed.
    A no-op off the main thread, where signals cannot be delivered."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    start = time.monotonic()
    outer_left, _ = signal.getitimer(signal.ITIMER_REAL)
    outer_at = start + outer_left if outer_left > 0 else None
    previous = signal.getsignal(signal.SIGALRM)

    outer_fired = False

    def fire(signum, frame):
        nonlocal outer_fired
        if outer_at is not None and time.monotonic() >= outer_at - 0.005 and callable(previous):
            outer_fired = True
            previous(signum, frame)  # the enclosing deadline is due: it wins
        raise overrun(message)

    signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds if outer_at is None else max(0.001, min(seconds, outer_left)))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer_at is not None and not outer_fired:  # it fires once: cleanup on the way out is left alone
            signal.setitimer(signal.ITIMER_REAL, max(0.001, outer_at - time.monotonic()))
