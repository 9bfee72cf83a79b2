"""leases.py on SQLite and PostgreSQL: a job is worked on by one controller at a time."""

from __future__ import annotations

import time

from orchestrator import leases


def jobs(store, n: int) -> list[str]:
    return [store.add_job(name=f"j{i}", spec={"run": "true"}, bundle="0" * 64) for i in range(n)]


def test_a_claimed_job_is_refused_to_another_owner_until_the_lease_ends(store):
    ids = jobs(store, 3)
    assert leases.claim(store, ids[:2], "alpha", 60) == set(ids[:2])
    assert leases.claim(store, ids, "beta", 60) == {ids[2]}
    assert leases.claim(store, ids[:2], "alpha", 60) == set(ids[:2])  # renewing our own lease


def test_an_expired_lease_is_free_again(store):
    [job_id] = jobs(store, 1)
    assert leases.claim(store, [job_id], "alpha", 0.05) == {job_id}
    time.sleep(0.1)
    assert leases.claim(store, [job_id], "beta", 60) == {job_id}


def test_release_frees_the_owner_leases(store):
    ids = jobs(store, 2)
    leases.claim(store, ids, "alpha", 60)
    leases.release(store, "alpha", [ids[0]])
    assert leases.claim(store, ids, "beta", 60) == {ids[0]}
    leases.release(store, "alpha")
    assert leases.claim(store, ids, "beta", 60) == set(ids)
    leases.release(store, "beta", [])  # nothing named: nothing released
    assert leases.claim(store, ids, "gamma", 60) == set()


def test_a_lease_held_by_a_dead_process_on_this_host_is_void(store):
    [job_id] = jobs(store, 1)
    dead_owner = f"{leases.actor()}".split(":")[0] + ":999999999#dead"
    leases.claim(store, [job_id], dead_owner, 60)
    live_owner = leases.owner_id()
    assert leases.claim(store, [job_id], "beta", 60) == set()
    assert dead_owner in leases.dead_local_owners(store)
    assert live_owner not in leases.dead_local_owners(store)
    assert leases.claim(store, [job_id], "beta", 60, dead=leases.dead_local_owners(store)) == {job_id}


def test_claiming_nothing_claims_nothing(store):
    assert leases.claim(store, [], "alpha", 60) == set()


def test_platform_rows_are_created_once(store):
    leases.ensure_platform_rows(store, ["a", "b"])
    leases.ensure_platform_rows(store, ["a", "b", "c"])
    with store.transaction() as tx:
        for name in "abc":
            leases.lock_platform(tx.conn, name)


def test_a_keeper_renews_its_leases_while_the_work_lasts_and_check_sees_a_lost_one(store):
    import pytest

    from orchestrator.errors import LeaseLost

    [job_id] = jobs(store, 1)
    assert leases.claim(store, [job_id], "alpha", 0.3) == {job_id}
    keeper = leases.Keeper(store, "alpha", 0.3).start()
    try:
        time.sleep(1.0)  # three lease lengths
        assert leases.claim(store, [job_id], "beta", 60) == set()
        keeper.check(job_id)
    finally:
        keeper.stop()
    time.sleep(0.4)
    assert leases.claim(store, [job_id], "beta", 60) == {job_id}
    with pytest.raises(LeaseLost):
        keeper.check(job_id)
