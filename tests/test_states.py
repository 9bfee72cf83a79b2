"""The state tables in states.py: every declared move is allowed, every other refused,
every state reachable, and finished states lead nowhere but back to the queue."""

from __future__ import annotations

import itertools

import pytest

from orchestrator.errors import StateError
from orchestrator.states import (
    ACTIVE_ATTEMPT_STATES,
    ACTIVE_JOB_STATES,
    ATTEMPT_TRANSITIONS,
    JOB_TRANSITIONS,
    TERMINAL_ATTEMPT_STATES,
    TERMINAL_JOB_STATES,
    AttemptState,
    JobState,
    check_attempt_transition,
    check_job_transition,
)

JOB_PAIRS = list(itertools.product(JobState, JobState))
ATTEMPT_PAIRS = list(itertools.product(AttemptState, AttemptState))


def reachable(table: dict, start) -> set:
    seen, todo = {start}, [start]
    while todo:
        for nxt in table[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_every_state_has_a_row_in_its_table():
    assert set(JOB_TRANSITIONS) == set(JobState)
    assert set(ATTEMPT_TRANSITIONS) == set(AttemptState)


CASES = [("job", JOB_TRANSITIONS, check_job_transition, old, new) for old, new in JOB_PAIRS] + \
        [("attempt", ATTEMPT_TRANSITIONS, check_attempt_transition, old, new) for old, new in ATTEMPT_PAIRS]


@pytest.mark.parametrize(("what", "table", "check", "old", "new"), CASES,
                         ids=[f"{c[0]}-{c[3].value}-{c[4].value}" for c in CASES])
def test_a_move_is_allowed_exactly_when_its_table_declares_it(what, table, check, old, new):
    if new in table[old]:
        check(old, new)
    else:
        with pytest.raises(StateError, match=f"{what} cannot go from {old.value} to {new.value}"):
            check(old, new)


def test_the_checks_accept_the_stored_string_values_too():
    check_job_transition("QUEUED", "SUBMITTING")
    check_attempt_transition("RUNNING", "FETCHING")
    with pytest.raises(StateError):
        check_job_transition("SUCCEEDED", "QUEUED")


def test_no_state_moves_to_itself():
    assert all(s not in JOB_TRANSITIONS[s] for s in JobState)
    assert all(s not in ATTEMPT_TRANSITIONS[s] for s in AttemptState)


def test_every_job_state_is_reachable_from_queued():
    assert reachable(JOB_TRANSITIONS, JobState.QUEUED) == set(JobState)


def test_every_attempt_state_is_reachable_from_submitting():
    assert reachable(ATTEMPT_TRANSITIONS, AttemptState.SUBMITTING) == set(AttemptState)


def test_a_terminal_job_goes_nowhere_but_back_to_the_queue_and_a_success_nowhere_at_all():
    for state in TERMINAL_JOB_STATES:
        assert JOB_TRANSITIONS[state] <= {JobState.QUEUED}, state
    assert JOB_TRANSITIONS[JobState.SUCCEEDED] == frozenset()


def test_a_terminal_attempt_has_no_exits():
    for state in TERMINAL_ATTEMPT_STATES:
        assert ATTEMPT_TRANSITIONS[state] == frozenset(), state


def test_every_live_job_state_can_end_in_a_terminal_state():
    for state in set(JobState) - TERMINAL_JOB_STATES:
        assert reachable(JOB_TRANSITIONS, state) & TERMINAL_JOB_STATES, state


def test_every_active_state_can_be_cancelled():
    for state in ACTIVE_JOB_STATES | {JobState.QUEUED}:
        assert JobState.CANCELLED in JOB_TRANSITIONS[state], state
    for state in ACTIVE_ATTEMPT_STATES:
        assert AttemptState.CANCELLED in ATTEMPT_TRANSITIONS[state], state


def test_terminal_and_active_split_the_states_with_queued_on_its_own():
    assert TERMINAL_JOB_STATES.isdisjoint(ACTIVE_JOB_STATES)
    assert set(JobState) - TERMINAL_JOB_STATES - ACTIVE_JOB_STATES == {JobState.QUEUED}
    assert TERMINAL_ATTEMPT_STATES.isdisjoint(ACTIVE_ATTEMPT_STATES)
    assert TERMINAL_ATTEMPT_STATES | ACTIVE_ATTEMPT_STATES == set(AttemptState)
    assert [s for s in JobState if s.terminal] == [s for s in JobState if s in TERMINAL_JOB_STATES]
    assert [s for s in JobState if s.active] == [s for s in JobState if s in ACTIVE_JOB_STATES]
    assert [s for s in AttemptState if s.terminal] == [s for s in AttemptState if s in TERMINAL_ATTEMPT_STATES]


def test_an_active_job_state_is_an_attempt_state_of_the_same_name():
    """While an attempt is out the job mirrors it, so each active job state names one."""
    assert {s.value for s in ACTIVE_JOB_STATES} == {s.value for s in ACTIVE_ATTEMPT_STATES}


def test_states_are_stored_as_their_upper_case_names():
    for state in [*JobState, *AttemptState]:
        assert state.value == state.name and state == state.value
