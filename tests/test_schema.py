"""Schema versions move forward, keeping the data, on SQLite and on PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, text

from orchestrator.schema import SCHEMA_VERSION
from orchestrator.store import Store


def _downgrade_to_v1(store: Store) -> None:
    """Make the database look like one written by the first release."""
    with store.engine.begin() as conn:
        for index in ("ix_ledger_attempt", "ix_ledger_kind_end", "ix_jobs_sweep", "ix_jobs_bundle"):
            conn.execute(text(f"DROP INDEX IF EXISTS {index}"))
        for table, column in (("attempts", "session_s"), ("attempts", "host"), ("jobs", "lease_owner"),
                              ("jobs", "lease_until")):
            for index in inspect(conn).get_indexes(table):
                if column in index["column_names"]:
                    conn.execute(text(f"DROP INDEX {index['name']}"))
            conn.execute(text(f"ALTER TABLE {table} DROP COLUMN {column}"))
        conn.execute(text("DROP TABLE platform_locks"))
        conn.execute(text("UPDATE meta SET value = '1' WHERE key = 'schema_version'"))


@pytest.fixture(params=["sqlite", "postgres"])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    return request.getfixturevalue("pg_url")


def test_a_version_1_database_is_migrated_to_the_current_version_keeping_its_jobs(url):
    store = Store(url)
    job_id = store.add_job(name="old", spec={"run": "x"}, bundle="b" * 64)
    _downgrade_to_v1(store)
    store.close()
    store = Store(url)
    try:
        assert store.schema_version == SCHEMA_VERSION
        assert store.job(job_id).name == "old"
        with store.engine.connect() as conn:
            jobs_cols = {c["name"] for c in inspect(conn).get_columns("jobs")}
            attempt_cols = {c["name"] for c in inspect(conn).get_columns("attempts")}
            tables = set(inspect(conn).get_table_names())
        assert {"lease_owner", "lease_until"} <= jobs_cols
        assert {"session_s", "host"} <= attempt_cols
        assert {"platform_locks", "blobs", "blob_chunks"} <= tables
        with store.engine.connect() as conn:
            indexes = {i["name"] for t in ("ledger", "jobs", "attempts") for i in inspect(conn).get_indexes(t)}
        assert {"ix_ledger_attempt", "ix_ledger_kind_end", "ix_jobs_sweep", "ix_jobs_lease"} <= indexes
    finally:
        store.close()


def test_a_database_newer_than_this_orch_is_refused_with_a_clear_error(url):
    from orchestrator.errors import ConfigError

    store = Store(url)
    with store.engine.begin() as conn:
        conn.execute(text(f"UPDATE meta SET value = '{SCHEMA_VERSION + 1}' WHERE key = 'schema_version'"))
    store.close()
    with pytest.raises(ConfigError, match="newer than this orch"):
        Store(url)
