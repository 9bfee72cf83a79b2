"""The one retry policy (``orchestrator/retry.py``): delays, jitter, Retry-After, the
time budget, and the circuit breaker. No sleeping: ``sleep``, ``rand`` and the
breaker's clock are injected."""

from __future__ import annotations

import random

import pytest

from orchestrator.errors import CapacityError, PrecheckError, TransientError
from orchestrator.retry import Breaker, Retry


class Sleeps:
    """An injectable sleep that records what it was asked to wait."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def failing(times: int, error: Exception | None = None):
    """A call that fails ``times`` times (with ``error``, a TransientError by default), then answers."""
    calls: list[int] = []

    def fn() -> str:
        calls.append(1)
        if len(calls) <= times:
            raise error or TransientError(f"try {len(calls)}")
        return "ok"

    return fn, calls


# ------------------------------------------------------------------ delays and jitter


def test_without_jitter_the_delays_are_a_capped_doubling_ladder():
    policy = Retry(base=0.5, factor=2.0, cap=3.0, jitter=0.0)
    assert [policy.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


@pytest.mark.parametrize("jitter", [0.25, 0.5, 1.0])
def test_jittered_delays_stay_within_their_share_of_the_ceiling(jitter):
    policy = Retry(base=1.0, factor=2.0, cap=16.0, jitter=jitter, rand=random.Random(7).random)
    for n in range(1, 9):
        ceiling = min(16.0, 2.0 ** (n - 1))
        for _ in range(50):
            assert ceiling * (1 - jitter) <= policy.delay(n) <= ceiling


def test_jitter_bounds_are_reached_at_both_ends_of_rand():
    low, high = Retry(base=4.0, jitter=0.5, rand=lambda: 0.0), Retry(base=4.0, jitter=0.5, rand=lambda: 1.0)
    assert (low.delay(1), high.delay(1)) == (2.0, 4.0)
    assert Retry(base=4.0, jitter=1.0, rand=lambda: 0.0).delay(1) == 0.0


def test_jittered_delays_differ_from_one_another():
    policy = Retry(base=1.0, cap=1.0, jitter=0.5, rand=random.Random(3).random)
    assert len({policy.delay(1) for _ in range(10)}) == 10


def test_a_bad_policy_is_refused_naming_the_field():
    with pytest.raises(ValueError, match="^attempts:"):
        Retry(attempts=0)
    with pytest.raises(ValueError, match="^jitter:"):
        Retry(jitter=1.5)


# ------------------------------------------------------------------ Retry-After


def test_retry_after_is_a_floor_under_the_delay():
    policy = Retry(base=0.1, cap=1.0, rand=lambda: 0.5)
    assert policy.delay(1, retry_after=5.0) == 5.0
    assert policy.delay(1, retry_after=0.01) == policy.delay(1)  # never shortens a wait


def test_run_waits_at_least_what_the_error_s_retry_after_says():
    sleeps = Sleeps()
    err = TransientError("rate limited")
    err.retry_after = 2.5  # type: ignore[attr-defined]
    fn, calls = failing(1, err)
    assert Retry(base=0.1, sleep=sleeps).run("x", fn) == "ok"
    assert sleeps.waits == [2.5] and len(calls) == 2


# ------------------------------------------------------------------ tries and budget


def test_run_retries_transient_errors_until_the_call_answers():
    sleeps = Sleeps()
    fn, calls = failing(2)
    assert Retry(attempts=3, base=0.1, jitter=0.0, sleep=sleeps).run("x", fn) == "ok"
    assert len(calls) == 3 and sleeps.waits == [0.1, 0.2]


def test_run_gives_up_after_its_attempts_and_reraises_the_last_error():
    sleeps = Sleeps()
    fn, calls = failing(10)
    with pytest.raises(TransientError, match="try 3"):
        Retry(attempts=3, base=0.1, sleep=sleeps).run("x", fn)
    assert len(calls) == 3 and len(sleeps.waits) == 2


@pytest.mark.parametrize("error", [PrecheckError("bad"), CapacityError("full"), ValueError("bug")])
def test_run_does_not_retry_what_is_not_transient(error):
    fn, calls = failing(5, error)
    with pytest.raises(type(error)):
        Retry(sleep=Sleeps()).run("x", fn)
    assert calls == [1]


def test_run_retries_what_its_predicate_accepts():
    fn, calls = failing(1, ValueError("flaky"))
    assert Retry(sleep=Sleeps()).run("x", fn, retry_if=lambda exc: isinstance(exc, ValueError)) == "ok"
    assert len(calls) == 2


def test_the_budget_stops_before_a_wait_that_would_pass_it():
    sleeps = Sleeps()
    fn, calls = failing(10)
    with pytest.raises(TransientError):
        Retry(attempts=10, base=1.0, jitter=0.0, budget=3.5, sleep=sleeps).run("x", fn)
    assert sleeps.waits == [1.0, 2.0] and len(calls) == 3  # the next wait (4 s) would pass 3.5 s


def test_a_retry_after_beyond_the_budget_gives_up_at_once():
    sleeps = Sleeps()
    err = TransientError("rate limited")
    err.retry_after = 3600  # type: ignore[attr-defined]  # an hour: not worth blocking a tick for
    fn, calls = failing(10, err)
    with pytest.raises(TransientError):
        Retry(attempts=10, budget=2.0, sleep=sleeps).run("x", fn)
    assert sleeps.waits == [] and calls == [1]


def test_tries_reset_restarts_the_failure_streak_after_progress():
    sleeps = Sleeps()
    tries = Retry(attempts=3, base=1.0, jitter=0.0, sleep=sleeps).begin()
    assert tries.wait() and tries.wait()
    tries.reset()  # a chunk arrived
    assert tries.wait() and tries.wait() and not tries.wait()
    assert sleeps.waits == [1.0, 2.0, 1.0, 2.0]


def test_replace_keeps_the_rest_of_the_policy():
    policy = Retry(attempts=4, base=2.0, cap=9.0, jitter=0.0)
    changed = policy.replace(base=1.0)
    assert (changed.attempts, changed.base, changed.cap) == (4, 1.0, 9.0) and policy.base == 2.0


# ------------------------------------------------------------------ breaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_breaker_is_closed_until_it_trips():
    breaker = Breaker(30.0, clock=Clock())
    assert breaker.state == "closed"
    breaker.check()  # does not raise


def test_an_open_breaker_fails_at_once_naming_the_error_and_the_wait():
    clock = Clock()
    breaker = Breaker(30.0, clock=clock)
    breaker.trip(TransientError("lab: connection refused", "lab"))
    clock.now += 29.0
    assert breaker.state == "open"
    with pytest.raises(TransientError, match=r"connection refused \(not retried for 30s\)") as caught:
        breaker.check()
    assert caught.value.platform == "lab"


def test_a_breaker_half_opens_after_its_time_and_a_failure_opens_it_again():
    clock = Clock()
    breaker = Breaker(30.0, clock=clock)
    breaker.trip(TransientError("down"))
    clock.now += 30.0
    assert breaker.state == "half-open"
    breaker.check()  # one call goes through
    breaker.trip(TransientError("still down"))
    assert breaker.state == "open"
    with pytest.raises(TransientError, match="still down"):
        breaker.check()


def test_a_success_while_half_open_closes_the_breaker():
    clock = Clock()
    breaker = Breaker(30.0, clock=clock)
    breaker.trip(TransientError("down"))
    clock.now += 31.0
    breaker.check()
    breaker.reset()
    assert breaker.state == "closed"
