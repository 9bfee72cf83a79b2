"""Job and attempt states, and the one table of legal moves between them.

A *job* is what the user submitted; an *attempt* is one try of it on one platform.
While an attempt is active the job's state mirrors it, so ``orch status`` shows one
word per job. ``store.py`` applies every change as a compare-and-set against these
tables and writes an event row; nothing else updates state.
"""

from __future__ import annotations

from enum import Enum

from .errors import StateError


class JobState(str, Enum):
    """Where a job stands; stored and printed as its upper-case value."""

    QUEUED = "QUEUED"            # waiting for placement
    SUBMITTING = "SUBMITTING"    # attempt intent written; the remote call may or may not have happened
    PENDING = "PENDING"          # accepted by the platform, not yet running
    RUNNING = "RUNNING"
    UNKNOWN = "UNKNOWN"          # status reads fail; LOST when the window runs out
    FETCHING = "FETCHING"        # remote run ended; results being downloaded
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    LOST = "LOST"                # the platform lost the run and no retries are left
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_JOB_STATES

    @property
    def active(self) -> bool:
        """An attempt is out on a platform (or may be)."""
        return self in ACTIVE_JOB_STATES


class AttemptState(str, Enum):
    """Where one attempt stands."""

    SUBMITTING = "SUBMITTING"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    UNKNOWN = "UNKNOWN"
    FETCHING = "FETCHING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"            # the job's own command failed (or the runner did)
    LOST = "LOST"                # the platform lost it: retried elsewhere
    REJECTED = "REJECTED"        # the platform refused to start it (capacity, precheck)
    CHECKPOINTED = "CHECKPOINTED"  # stopped at a session end with a checkpoint; the job continues
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_ATTEMPT_STATES


TERMINAL_JOB_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.LOST, JobState.CANCELLED})
ACTIVE_JOB_STATES = frozenset(
    {JobState.SUBMITTING, JobState.PENDING, JobState.RUNNING, JobState.UNKNOWN, JobState.FETCHING}
)
TERMINAL_ATTEMPT_STATES = frozenset(
    {
        AttemptState.SUCCEEDED,
        AttemptState.FAILED,
        AttemptState.LOST,
        AttemptState.REJECTED,
        AttemptState.CHECKPOINTED,
        AttemptState.CANCELLED,
    }
)
ACTIVE_ATTEMPT_STATES = frozenset(
    {AttemptState.SUBMITTING, AttemptState.PENDING, AttemptState.RUNNING, AttemptState.UNKNOWN, AttemptState.FETCHING}
)

_J = JobState
JOB_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    _J.QUEUED: frozenset({_J.SUBMITTING, _J.CANCELLED}),
    # SUBMITTING -> QUEUED: the platform refused (capacity) and the job is placed again.
    _J.SUBMITTING: frozenset({_J.PENDING, _J.RUNNING, _J.FETCHING, _J.QUEUED, _J.FAILED, _J.LOST, _J.CANCELLED}),
    _J.PENDING: frozenset({_J.RUNNING, _J.UNKNOWN, _J.FETCHING, _J.LOST, _J.QUEUED, _J.CANCELLED}),
    _J.RUNNING: frozenset({_J.UNKNOWN, _J.FETCHING, _J.LOST, _J.QUEUED, _J.CANCELLED}),
    _J.UNKNOWN: frozenset({_J.PENDING, _J.RUNNING, _J.FETCHING, _J.LOST, _J.QUEUED, _J.CANCELLED}),
    # FETCHING -> QUEUED: a checkpointed segment, or a failure retried on `retries_on_error`.
    # FETCHING -> UNKNOWN: the run's result.json cannot be believed (fetched again later).
    _J.FETCHING: frozenset({_J.SUCCEEDED, _J.FAILED, _J.QUEUED, _J.LOST, _J.CANCELLED, _J.UNKNOWN}),
    _J.SUCCEEDED: frozenset(),
    # `orch retry` puts a finished-but-unsuccessful job back in the queue.
    _J.FAILED: frozenset({_J.QUEUED}),
    _J.LOST: frozenset({_J.QUEUED}),
    _J.CANCELLED: frozenset({_J.QUEUED}),
}

_A = AttemptState
ATTEMPT_TRANSITIONS: dict[AttemptState, frozenset[AttemptState]] = {
    _A.SUBMITTING: frozenset({_A.PENDING, _A.RUNNING, _A.FETCHING, _A.REJECTED, _A.LOST, _A.CANCELLED}),
    _A.PENDING: frozenset({_A.RUNNING, _A.UNKNOWN, _A.FETCHING, _A.LOST, _A.CANCELLED}),
    _A.RUNNING: frozenset({_A.UNKNOWN, _A.FETCHING, _A.LOST, _A.CANCELLED}),
    _A.UNKNOWN: frozenset({_A.PENDING, _A.RUNNING, _A.FETCHING, _A.LOST, _A.CANCELLED}),
    _A.FETCHING: frozenset({_A.SUCCEEDED, _A.FAILED, _A.CHECKPOINTED, _A.LOST, _A.CANCELLED, _A.UNKNOWN}),
    _A.SUCCEEDED: frozenset(),
    _A.FAILED: frozenset(),
    _A.LOST: frozenset(),
    _A.REJECTED: frozenset(),
    _A.CHECKPOINTED: frozenset(),
    _A.CANCELLED: frozenset(),
}


def check_job_transition(old: JobState, new: JobState) -> None:
    """Raise StateError unless ``old -> new`` is in the job table."""
    if new not in JOB_TRANSITIONS[JobState(old)]:
        raise StateError(f"job cannot go from {JobState(old).value} to {JobState(new).value}")


def check_attempt_transition(old: AttemptState, new: AttemptState) -> None:
    """Raise StateError unless ``old -> new`` is in the attempt table."""
    if new not in ATTEMPT_TRANSITIONS[AttemptState(old)]:
        raise StateError(f"attempt cannot go from {AttemptState(old).value} to {AttemptState(new).value}")
