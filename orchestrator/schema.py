"""The state database's tables, its schema version and the migrations between versions.

A database is created at the current version; an older one is moved forward one
version at a time by ``MIGRATIONS`` when a store opens it (SQLite and PostgreSQL
alike). Migrations only add: a newer orch never needs to rewrite old rows.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy
from sqlalchemy import BigInteger, Column, Float, Index, Integer, LargeBinary, MetaData, String, Table, Text
from sqlalchemy.engine import Connection

SCHEMA_VERSION = 4

metadata = MetaData()

meta = Table("meta", metadata, Column("key", String(64), primary_key=True), Column("value", Text, nullable=False))

jobs = Table(
    "jobs", metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(128), nullable=False),
    Column("state", String(16), nullable=False),
    Column("spec", Text, nullable=False),            # JSON, secret names only
    Column("bundle", String(64), nullable=False),    # manifest digest
    Column("priority", Integer, nullable=False, default=0),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("platform", String(64)),                  # platform of the current/last attempt
    Column("pin", String(64)),                       # `submit --platform`
    Column("attempts", Integer, nullable=False, default=0),
    Column("lost_count", Integer, nullable=False, default=0),
    Column("error_count", Integer, nullable=False, default=0),
    Column("message", Text, nullable=False, default=""),
    Column("checkpoint", String(64)),                # blob digest of the latest checkpoint
    Column("avoid", Text, nullable=False, default="{}"),  # {platform: until} after a loss
    Column("submitted_by", String(64), nullable=False, default=""),
    Column("submitted_host", String(128), nullable=False, default=""),
    Column("sweep_id", String(32)),
    Column("extra", Text, nullable=False, default="{}"),  # JSON for later features (sweep point, ...)
    Column("lease_owner", String(160)),              # the controller working on this job now (v3)
    Column("lease_until", Float),                    # ... until then; afterwards anyone may take it
)
Index("ix_jobs_state", jobs.c.state)
Index("ix_jobs_created", jobs.c.created_at)

attempts = Table(
    "attempts", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(32), nullable=False),
    Column("number", Integer, nullable=False),
    Column("key", String(64), nullable=False, unique=True),
    Column("platform", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("handle", Text),                          # JSON, no secrets
    Column("created_at", Float, nullable=False),
    Column("started_at", Float),
    Column("ended_at", Float),
    Column("unknown_since", Float),
    Column("heartbeat_at", Float),
    Column("exit_code", Integer),
    Column("failure_class", String(32)),
    Column("message", Text, nullable=False, default=""),
    Column("runtime_s", Float),
    Column("gpu_name", String(64)),
    Column("gpu_count", Integer),
    Column("max_runtime_s", Float),
    Column("result", Text),                          # result.json as fetched
    Column("session_s", Float),                      # chain segment length given to the runner (v2)
    Column("host", String(128)),                     # the machine whose controller created it (v3)
    Column("artifacts", Text),                       # {file: sha256} shared through the DB in team mode (v3)
)
Index("ix_attempts_state", attempts.c.state)
Index("ix_attempts_job", attempts.c.job_id)
Index("ix_jobs_sweep", jobs.c.sweep_id)
Index("ix_jobs_bundle", jobs.c.bundle)

events = Table(
    "events", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(32), nullable=False),
    Column("attempt_id", Integer),
    Column("at", Float, nullable=False),
    Column("kind", String(8), nullable=False),       # "job" | "attempt"
    Column("from_state", String(16)),
    Column("to_state", String(16), nullable=False),
    Column("reason", Text, nullable=False, default=""),
    Column("actor", String(128), nullable=False, default=""),
)
Index("ix_events_job", events.c.job_id)

ledger = Table(
    "ledger", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("platform", String(64), nullable=False),
    Column("attempt_id", Integer),
    Column("kind", String(16), nullable=False),      # "charge" | "reserve" | "release"
    Column("amount", Float, nullable=False),         # in `unit`
    Column("unit", String(16), nullable=False),      # "gpu_hours" | "compute_units"
    Column("start", Float, nullable=False),          # the interval charged
    Column("end", Float, nullable=False),
    Column("at", Float, nullable=False),
)
Index("ix_ledger_platform", ledger.c.platform)
Index("ix_ledger_attempt", ledger.c.attempt_id)
Index("ix_ledger_kind_end", ledger.c.kind, ledger.c.end)


#: One row per platform, locked (SELECT ... FOR UPDATE) while a controller checks its
#: concurrency limit and quota and writes a new attempt, so that controllers never both
#: take the last slot (v3).
platform_locks = Table("platform_locks", metadata, Column("name", String(64), primary_key=True))

#: Content-addressed files shared through the database in team mode (see blobstore.py) (v3).
blobs = Table(
    "blobs", metadata,
    Column("sha256", String(64), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("chunks", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
)
blob_chunks = Table(
    "blob_chunks", metadata,
    Column("sha256", String(64), primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("data", LargeBinary, nullable=False),
)
Index("ix_jobs_lease", jobs.c.lease_until)

#: Notifications waiting to be sent (v4): written in the transaction of the state change
#: that causes them, removed once every channel that wants the event has it (notify/).
outbox = Table(
    "outbox", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event_id", String(64), nullable=False, unique=True),  # receivers dedupe on it
    Column("type", String(32), nullable=False),      # "job.succeeded", "quota.low", ...
    Column("at", Float, nullable=False),
    Column("payload", Text, nullable=False),         # JSON, no secrets
    Column("done", Text, nullable=False, default="[]"),  # JSON list of channels that have it
    Column("tries", Integer, nullable=False, default=0),
    Column("next_at", Float, nullable=False, default=0.0),  # not before then (backoff, or a sender's claim)
    Column("claimed_by", String(160)),               # the tick sending it now (leases.owner_id)
)
#: One row per send tried (v4): what `orch notify log` shows; pruned to the latest rows.
deliveries = Table(
    "deliveries", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event_id", String(64), nullable=False),
    Column("type", String(32), nullable=False),
    Column("channel", String(64), nullable=False),
    Column("at", Float, nullable=False),
    Column("ok", Integer, nullable=False),
    Column("error", Text, nullable=False, default=""),
)
Index("ix_outbox_next", outbox.c.next_at)


def _v1_to_v2(conn: Connection) -> None:
    """Chain segments (attempts.session_s) and the indexes quota and sweeps read by."""
    columns = {c["name"] for c in sqlalchemy.inspect(conn).get_columns("attempts")}
    if "session_s" not in columns:
        conn.exec_driver_sql("ALTER TABLE attempts ADD COLUMN session_s FLOAT")
    _create_indexes(conn, (*attempts.indexes, *jobs.indexes, *ledger.indexes))


def _create_indexes(conn: Connection, indexes) -> None:
    """Create missing indexes whose columns exist by now (later versions add the rest)."""
    inspector = sqlalchemy.inspect(conn)
    for index in indexes:
        present = {c["name"] for c in inspector.get_columns(index.table.name)}
        if all(c.name in present for c in index.columns):
            index.create(conn, checkfirst=True)


def _v2_to_v3(conn: Connection) -> None:
    """Team mode: job leases, the host of an attempt (new tables are made by create_all)."""
    inspector = sqlalchemy.inspect(conn)
    job_columns = {c["name"] for c in inspector.get_columns("jobs")}
    for name, kind in (("lease_owner", "VARCHAR(160)"), ("lease_until", "FLOAT")):
        if name not in job_columns:
            conn.exec_driver_sql(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")
    attempt_columns = {c["name"] for c in inspector.get_columns("attempts")}
    if "host" not in attempt_columns:
        conn.exec_driver_sql("ALTER TABLE attempts ADD COLUMN host VARCHAR(128)")
    if "artifacts" not in attempt_columns:
        conn.exec_driver_sql("ALTER TABLE attempts ADD COLUMN artifacts TEXT")
    _create_indexes(conn, jobs.indexes)


def _v3_to_v4(conn: Connection) -> None:
    """Notifications: the outbox and the delivery log (new tables only)."""
    for table in (outbox, deliveries):
        table.create(conn, checkfirst=True)
    _create_indexes(conn, outbox.indexes)


MIGRATIONS: dict[int, Any] = {1: _v1_to_v2, 2: _v2_to_v3, 3: _v3_to_v4}
"""``MIGRATIONS[v](conn)`` moves a schema from version v to v+1."""
