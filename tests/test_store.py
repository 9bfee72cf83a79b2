"""store.py on SQLite and PostgreSQL: jobs, attempts and events, and the compare-and-set
that every state change goes through."""

from __future__ import annotations

import pytest

from orchestrator.errors import NotFoundError, StateError
from orchestrator.states import AttemptState, JobState
from orchestrator.store import Conflict


def add(store, name: str = "demo") -> str:
    return store.add_job(name=name, spec={"run": "true"}, bundle="0" * 64)


def test_a_new_job_is_queued_with_one_event(store):
    job_id = add(store)
    job = store.job(job_id)
    assert job.state == JobState.QUEUED and job.name == "demo"
    assert [(e["from_state"], e["to_state"]) for e in store.events_of(job_id)] == [(None, "QUEUED")]
    assert [j.id for j in store.queued()] == [job_id]


def test_a_move_is_a_compare_and_set_and_writes_an_event(store):
    job_id = add(store)
    with store.transaction() as tx:
        tx.move_job(job_id, JobState.QUEUED, JobState.SUBMITTING, reason="placed")
    with pytest.raises(Conflict, match="no longer QUEUED"), store.transaction() as tx:
        tx.move_job(job_id, JobState.QUEUED, JobState.SUBMITTING)
    assert store.job(job_id).state == JobState.SUBMITTING
    assert [(e["to_state"], e["reason"]) for e in store.events_of(job_id)] == [("QUEUED", "submitted"), ("SUBMITTING", "placed")]


def test_a_move_the_table_does_not_declare_is_refused_before_touching_the_row(store):
    job_id = add(store)
    with pytest.raises(StateError), store.transaction() as tx:
        tx.move_job(job_id, JobState.QUEUED, JobState.SUCCEEDED)
    assert store.job(job_id).state == JobState.QUEUED and len(store.events_of(job_id)) == 1


def test_a_failed_transaction_rolls_back_every_move_in_it(store):
    job_id = add(store)
    with pytest.raises(RuntimeError), store.transaction() as tx:
        tx.move_job(job_id, JobState.QUEUED, JobState.SUBMITTING)
        raise RuntimeError("crash")
    assert store.job(job_id).state == JobState.QUEUED and len(store.events_of(job_id)) == 1


def test_attempts_move_through_their_own_table(store):
    job_id = add(store)
    with store.transaction() as tx:
        tx.move_job(job_id, JobState.QUEUED, JobState.SUBMITTING)
        attempt_id = tx.add_attempt(job_id, 1, "local", "placed")
    [attempt] = store.attempts_of(job_id)
    assert attempt.id == attempt_id and attempt.state == AttemptState.SUBMITTING and attempt.platform == "local"
    with store.transaction() as tx:
        tx.move_attempt(attempt_id, job_id, AttemptState.SUBMITTING, AttemptState.RUNNING)
    with pytest.raises(Conflict), store.transaction() as tx:
        tx.move_attempt(attempt_id, job_id, AttemptState.SUBMITTING, AttemptState.RUNNING)
    with pytest.raises(StateError), store.transaction() as tx:
        tx.move_attempt(attempt_id, job_id, AttemptState.RUNNING, AttemptState.SUBMITTING)
    assert store.attempt(attempt_id).state == AttemptState.RUNNING
    assert store.latest_attempts([job_id])[job_id].id == attempt_id
    assert [a.id for a in store.attempts_in([AttemptState.RUNNING])] == [attempt_id]


def test_resolve_finds_a_job_by_id_prefix_or_name_and_names_the_candidates_when_ambiguous(store):
    first, second = add(store, "alpha"), add(store, "beta")
    assert store.resolve(first[:8]).id == first
    assert store.resolve("beta").id == second
    with pytest.raises(NotFoundError, match="no job matches 'gamma'"):
        store.resolve("gamma")
    with pytest.raises(NotFoundError):
        store.job("0" * 32)
    add(store, "beta")
    with pytest.raises(NotFoundError, match="matches several jobs"):
        store.resolve("beta")


def test_jobs_filter_by_state(store):
    queued, moved = add(store), add(store)
    with store.transaction() as tx:
        tx.move_job(moved, JobState.QUEUED, JobState.CANCELLED)
    assert [j.id for j in store.jobs([JobState.QUEUED])] == [queued]
    assert {j.id for j in store.jobs()} == {queued, moved}


def test_meta_keeps_one_value_per_key(store):
    assert store.meta_get("x") is None
    store.meta_set("x", "1")
    store.meta_set("x", "2")
    assert store.meta_get("x") == "2"
