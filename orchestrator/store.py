"""The state store: jobs, attempts, events and the quota ledger, in SQLAlchemy Core.

SQLite (WAL mode) by default, PostgreSQL by URL; the same statements serve both.
Every state change is a compare-and-set from an expected state, checked against
``states.py`` and recorded as an event row in the same transaction. Secrets are
never written here: specs hold secret *names* only.
"""

from __future__ import annotations

import getpass
import json
import socket
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

from sqlalchemy import (
    Column, Float, Index, Integer, MetaData, String, Table, Text, create_engine, event, func, insert, or_,
    select, update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError

from .errors import ConfigError, NotFoundError, StateError
from .states import (
    ACTIVE_ATTEMPT_STATES, AttemptState, JobState, check_attempt_transition, check_job_transition,
)

SCHEMA_VERSION = 2

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


class Conflict(StateError):
    """A compare-and-set found another state: someone else moved this row first."""


@dataclass(frozen=True)
class JobRow:
    id: str
    name: str
    state: JobState
    spec: dict
    bundle: str
    priority: int
    created_at: float
    updated_at: float
    platform: str | None
    pin: str | None
    attempts: int
    lost_count: int
    error_count: int
    message: str
    checkpoint: str | None
    avoid: dict
    submitted_by: str
    submitted_host: str
    sweep_id: str | None
    extra: dict

    @property
    def short_id(self) -> str:
        return self.id[:8]


@dataclass(frozen=True)
class AttemptRow:
    id: int
    job_id: str
    number: int
    key: str
    platform: str
    state: AttemptState
    handle: dict | None
    created_at: float
    started_at: float | None
    ended_at: float | None
    unknown_since: float | None
    heartbeat_at: float | None
    exit_code: int | None
    failure_class: str | None
    message: str
    runtime_s: float | None
    gpu_name: str | None
    gpu_count: int | None
    max_runtime_s: float | None
    result: dict | None
    session_s: float | None = None


def _job(row: Any) -> JobRow:
    m = row._mapping
    return JobRow(
        id=m["id"], name=m["name"], state=JobState(m["state"]), spec=json.loads(m["spec"]), bundle=m["bundle"],
        priority=m["priority"], created_at=m["created_at"], updated_at=m["updated_at"], platform=m["platform"],
        pin=m["pin"], attempts=m["attempts"], lost_count=m["lost_count"], error_count=m["error_count"],
        message=m["message"] or "", checkpoint=m["checkpoint"], avoid=json.loads(m["avoid"] or "{}"),
        submitted_by=m["submitted_by"], submitted_host=m["submitted_host"], sweep_id=m["sweep_id"],
        extra=json.loads(m["extra"] or "{}"),
    )


def _attempt(row: Any) -> AttemptRow:
    m = row._mapping
    return AttemptRow(
        id=m["id"], job_id=m["job_id"], number=m["number"], key=m["key"], platform=m["platform"],
        state=AttemptState(m["state"]), handle=json.loads(m["handle"]) if m["handle"] else None,
        created_at=m["created_at"], started_at=m["started_at"], ended_at=m["ended_at"],
        unknown_since=m["unknown_since"], heartbeat_at=m["heartbeat_at"], exit_code=m["exit_code"],
        failure_class=m["failure_class"], message=m["message"] or "", runtime_s=m["runtime_s"],
        gpu_name=m["gpu_name"], gpu_count=m["gpu_count"], max_runtime_s=m["max_runtime_s"],
        result=json.loads(m["result"]) if m["result"] else None, session_s=m.get("session_s"),
    )


def actor() -> str:
    """Who is acting, for event rows: user@host:pid."""
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry in some containers
        user = "?"
    return f"{user}@{socket.gethostname()}:{__import__('os').getpid()}"


def attempt_key(job_id: str, number: int) -> str:
    """Deterministic per attempt: lower-case, digits and dashes, >= 5 chars (Kaggle slugs)."""
    return f"o{job_id[:12]}-{number}"


class Tx:
    """One transaction; every method raises Conflict when its compare-and-set misses,
    which rolls back everything done in the transaction."""

    def __init__(self, conn: Connection, who: str):
        self.conn = conn
        self.who = who

    def move_job(self, job_id: str, expected: JobState, new: JobState, reason: str = "", **values: Any) -> None:
        check_job_transition(expected, new)
        now = time.time()
        values = _encode(values)
        res = self.conn.execute(
            update(jobs).where(jobs.c.id == job_id, jobs.c.state == expected.value)
            .values(state=new.value, updated_at=now, **values)
        )
        if res.rowcount != 1:
            raise Conflict(f"job {job_id[:8]} is no longer {expected.value}")
        self.conn.execute(insert(events).values(job_id=job_id, at=now, kind="job", from_state=expected.value,
                                                to_state=new.value, reason=reason, actor=self.who))

    def update_job(self, job_id: str, expected: JobState, **values: Any) -> None:
        """Change fields without a state change (still guarded by the state)."""
        res = self.conn.execute(
            update(jobs).where(jobs.c.id == job_id, jobs.c.state == expected.value)
            .values(updated_at=time.time(), **_encode(values))
        )
        if res.rowcount != 1:
            raise Conflict(f"job {job_id[:8]} is no longer {expected.value}")

    def move_attempt(self, attempt_id: int, job_id: str, expected: AttemptState, new: AttemptState,
                     reason: str = "", **values: Any) -> None:
        check_attempt_transition(expected, new)
        now = time.time()
        res = self.conn.execute(
            update(attempts).where(attempts.c.id == attempt_id, attempts.c.state == expected.value)
            .values(state=new.value, **_encode(values))
        )
        if res.rowcount != 1:
            raise Conflict(f"attempt {attempt_id} is no longer {expected.value}")
        self.conn.execute(insert(events).values(job_id=job_id, attempt_id=attempt_id, at=now, kind="attempt",
                                                from_state=expected.value, to_state=new.value, reason=reason,
                                                actor=self.who))

    def update_attempt(self, attempt_id: int, expected: AttemptState, **values: Any) -> None:
        res = self.conn.execute(
            update(attempts).where(attempts.c.id == attempt_id, attempts.c.state == expected.value)
            .values(**_encode(values))
        )
        if res.rowcount != 1:
            raise Conflict(f"attempt {attempt_id} is no longer {expected.value}")

    def add_attempt(self, job_id: str, number: int, platform: str, reason: str, **values: Any) -> int:
        now = time.time()
        res = self.conn.execute(insert(attempts).values(
            job_id=job_id, number=number, key=attempt_key(job_id, number), platform=platform,
            state=AttemptState.SUBMITTING.value, created_at=now, message="", **_encode(values)))
        attempt_id = res.inserted_primary_key[0]
        self.conn.execute(insert(events).values(job_id=job_id, attempt_id=attempt_id, at=now, kind="attempt",
                                                from_state=None, to_state=AttemptState.SUBMITTING.value,
                                                reason=reason, actor=self.who))
        return attempt_id

    def add_ledger(self, platform: str, attempt_id: int | None, kind: str, amount: float, unit: str,
                   start: float, end: float) -> None:
        self.conn.execute(insert(ledger).values(platform=platform, attempt_id=attempt_id, kind=kind, amount=amount,
                                                unit=unit, start=start, end=end, at=time.time()))


def _encode(values: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in values.items():
        if k in ("handle", "result", "avoid", "extra", "spec") and v is not None and not isinstance(v, str):
            v = json.dumps(v, sort_keys=True)
        elif isinstance(v, (JobState, AttemptState)):
            v = v.value
        out[k] = v
    return out


class Store:
    """Access to the state DB. Open once per command; cheap to keep for a whole tick."""

    def __init__(self, url: str):
        self.url = url
        self.who = actor()
        self.is_sqlite = url.startswith("sqlite")
        try:
            self.engine: Engine = _engine(url)
        except Exception as exc:  # bad URL, missing driver
            raise ConfigError(f"state database {_redact(url)}: {exc}") from None
        self._migrate()

    # ------------------------------------------------------------------ schema
    def _migrate(self) -> None:
        """Create the schema, or move an older one forward one version at a time."""
        try:
            with self.engine.begin() as conn:
                metadata.create_all(conn)
                found = conn.execute(select(meta.c.value).where(meta.c.key == "schema_version")).scalar()
                if found is None:
                    conn.execute(insert(meta).values(key="schema_version", value=str(SCHEMA_VERSION)))
                    return
                version = int(found)
                if version > SCHEMA_VERSION:
                    raise ConfigError(
                        f"state database {_redact(self.url)} has schema version {version}, newer than this orch "
                        f"({SCHEMA_VERSION}); upgrade orch"
                    )
                for step in range(version, SCHEMA_VERSION):
                    MIGRATIONS[step](conn)
                if version != SCHEMA_VERSION:
                    conn.execute(update(meta).where(meta.c.key == "schema_version").values(value=str(SCHEMA_VERSION)))
        except OperationalError as exc:
            raise ConfigError(f"state database {_redact(self.url)}: {exc.orig}") from None

    @property
    def schema_version(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(meta.c.value).where(meta.c.key == "schema_version")).scalar())

    # ------------------------------------------------------------------ writes
    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        with self.engine.begin() as conn:
            yield Tx(conn, self.who)

    def add_job(self, *, name: str, spec: dict, bundle: str, priority: int = 0, pin: str | None = None,
                sweep_id: str | None = None, extra: dict | None = None) -> str:
        return self.add_jobs([dict(name=name, spec=spec, bundle=bundle, priority=priority, pin=pin,
                                   sweep_id=sweep_id, extra=extra)])[0]

    def add_jobs(self, entries: list[dict[str, Any]]) -> list[str]:
        """Queue several jobs in one transaction (a sweep is queued whole or not at all).
        Each entry has the keyword arguments of :meth:`add_job`."""
        now = time.time()
        user = self.who.split("@")[0]
        host = self.who.split("@")[1].rsplit(":", 1)[0]
        ids = []
        with self.engine.begin() as conn:
            for i, e in enumerate(entries):
                job_id = uuid.uuid4().hex
                ids.append(job_id)
                # created_at grows by a microsecond per entry so that FIFO keeps the given order.
                at = now + i * 1e-6
                conn.execute(insert(jobs).values(
                    id=job_id, name=e["name"], state=JobState.QUEUED.value, spec=json.dumps(e["spec"], sort_keys=True),
                    bundle=e["bundle"], priority=e.get("priority", 0), created_at=at, updated_at=at, pin=e.get("pin"),
                    attempts=0, lost_count=0, error_count=0, message="", avoid="{}", submitted_by=user,
                    submitted_host=host, sweep_id=e.get("sweep_id"), extra=json.dumps(e.get("extra") or {}),
                ))
                conn.execute(insert(events).values(job_id=job_id, at=at, kind="job", from_state=None,
                                                   to_state=JobState.QUEUED.value, reason="submitted", actor=self.who))
        return ids

    def note(self, job_id: str, message: str) -> None:
        """Set a job's human-readable status line (e.g. why it waits), whatever its state."""
        with self.engine.begin() as conn:
            conn.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.message != message).values(message=message))

    def note_many(self, messages: dict[str, str]) -> None:
        if not messages:
            return
        with self.engine.begin() as conn:
            for job_id, message in messages.items():
                conn.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.message != message).values(message=message))

    # ------------------------------------------------------------------ reads
    def job(self, job_id: str) -> JobRow:
        with self.engine.connect() as conn:
            row = conn.execute(select(jobs).where(jobs.c.id == job_id)).first()
        if row is None:
            raise NotFoundError(f"no job {job_id}")
        return _job(row)

    def resolve(self, ref: str) -> JobRow:
        """A job by id prefix (like git) or by exact name; ambiguity is an error that lists candidates."""
        ref = ref.strip()
        if not ref:
            raise NotFoundError("give a job id (or a unique prefix of it) or a job name")
        with self.engine.connect() as conn:
            rows = conn.execute(select(jobs).where(jobs.c.id.like(ref.lower() + "%")).limit(6)).fetchall()
            if not rows:
                rows = conn.execute(select(jobs).where(jobs.c.name == ref).order_by(jobs.c.created_at.desc()).limit(6)).fetchall()
        if not rows:
            raise NotFoundError(f"no job matches '{ref}'; `orch status` lists jobs")
        if len(rows) > 1:
            shown = ", ".join(f"{_job(r).short_id} ({r._mapping['name']})" for r in rows[:5])
            raise NotFoundError(f"'{ref}' matches several jobs: {shown}; type more of the id")
        return _job(rows[0])

    def jobs(self, states: Iterable[JobState] | None = None, limit: int | None = None,
             submitted_by: str | None = None) -> list[JobRow]:
        q = select(jobs)
        if states is not None:
            q = q.where(jobs.c.state.in_([s.value for s in states]))
        if submitted_by:
            q = q.where(jobs.c.submitted_by == submitted_by)
        q = q.order_by(jobs.c.created_at.desc())
        if limit:
            q = q.limit(limit)
        with self.engine.connect() as conn:
            return [_job(r) for r in conn.execute(q)]

    def queued(self) -> list[JobRow]:
        """Queued jobs in dispatch order: priority first, then FIFO."""
        q = (select(jobs).where(jobs.c.state == JobState.QUEUED.value)
             .order_by(jobs.c.priority.desc(), jobs.c.created_at, jobs.c.id))
        with self.engine.connect() as conn:
            return [_job(r) for r in conn.execute(q)]

    def attempts_of(self, job_id: str) -> list[AttemptRow]:
        with self.engine.connect() as conn:
            q = select(attempts).where(attempts.c.job_id == job_id).order_by(attempts.c.number)
            return [_attempt(r) for r in conn.execute(q)]

    def attempt(self, attempt_id: int) -> AttemptRow:
        with self.engine.connect() as conn:
            row = conn.execute(select(attempts).where(attempts.c.id == attempt_id)).first()
        if row is None:
            raise NotFoundError(f"no attempt {attempt_id}")
        return _attempt(row)

    def attempts_in(self, states: Iterable[AttemptState]) -> list[AttemptRow]:
        with self.engine.connect() as conn:
            q = select(attempts).where(attempts.c.state.in_([s.value for s in states])).order_by(attempts.c.id)
            return [_attempt(r) for r in conn.execute(q)]

    def latest_attempts(self, job_ids: list[str]) -> dict[str, AttemptRow]:
        if not job_ids:
            return {}
        out: dict[str, AttemptRow] = {}
        with self.engine.connect() as conn:
            for i in range(0, len(job_ids), 500):
                chunk = job_ids[i:i + 500]
                for r in conn.execute(select(attempts).where(attempts.c.job_id.in_(chunk)).order_by(attempts.c.number)):
                    a = _attempt(r)
                    out[a.job_id] = a
        return out

    def active_counts(self) -> dict[str, int]:
        """Active attempts per platform (for concurrency limits)."""
        with self.engine.connect() as conn:
            q = (select(attempts.c.platform, func.count()).where(
                attempts.c.state.in_([s.value for s in ACTIVE_ATTEMPT_STATES])).group_by(attempts.c.platform))
            return {p: n for p, n in conn.execute(q)}

    def events_of(self, job_id: str) -> list[dict]:
        with self.engine.connect() as conn:
            q = select(events).where(events.c.job_id == job_id).order_by(events.c.id)
            return [dict(r._mapping) for r in conn.execute(q)]

    def ledger_rows(self, platform: str | None = None, since: float | None = None) -> list[dict]:
        q = select(ledger)
        if platform:
            q = q.where(ledger.c.platform == platform)
        if since is not None:
            q = q.where(or_(ledger.c.end >= since, ledger.c.kind == "reserve"))
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q.order_by(ledger.c.id))]

    def ledger_charges(self, platforms: Iterable[str], since: float) -> list[tuple[str, float, float, float]]:
        """(platform, amount, start, end) of charges ending after ``since``: the current
        windows only, never the whole history."""
        names = list(platforms)
        if not names:
            return []
        q = select(ledger.c.platform, ledger.c.amount, ledger.c.start, ledger.c.end).where(
            ledger.c.kind == "charge", ledger.c.end > since, ledger.c.platform.in_(names))
        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(q)]

    def reservations(self, attempt_ids: Iterable[int]) -> dict[int, dict]:
        """The reserve row of each of these attempts (the active ones, in practice)."""
        ids = list(attempt_ids)
        out: dict[int, dict] = {}
        with self.engine.connect() as conn:
            for i in range(0, len(ids), 500):
                q = select(ledger).where(ledger.c.kind == "reserve", ledger.c.attempt_id.in_(ids[i:i + 500]))
                for r in conn.execute(q):
                    out[r._mapping["attempt_id"]] = dict(r._mapping)
        return out

    def runtimes(self, digests: Iterable[str] | None = None, limit: int = 5000,
                 gpu_jobs_only: bool = False) -> list[tuple[str, str | None, float]]:
        """(bundle digest, GPU name, runtime) of the latest successful, unchained attempts:
        of these bundles, or (``digests`` None) of any, for learning GPU speeds;
        ``gpu_jobs_only`` leaves out jobs that asked for no GPU (their runtime says nothing
        about the GPU they happened to sit next to)."""
        chained = select(attempts.c.job_id).where(attempts.c.state == AttemptState.CHECKPOINTED.value)
        q = (select(jobs.c.bundle, attempts.c.gpu_name, attempts.c.runtime_s)
             .join(jobs, jobs.c.id == attempts.c.job_id)
             .where(attempts.c.state == AttemptState.SUCCEEDED.value, attempts.c.runtime_s.is_not(None),
                    attempts.c.job_id.not_in(chained))
             .order_by(attempts.c.id.desc()).limit(limit))
        if gpu_jobs_only:
            # specs are stored with json.dumps(sort_keys=True): a job without a GPU has "gpu": []
            q = q.where(attempts.c.gpu_name.is_not(None), jobs.c.spec.not_like('%"gpu": []%'))
        if digests is not None:
            names = list(digests)
            if not names:
                return []
            q = q.where(jobs.c.bundle.in_(names))
        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(q)]

    def sweep_jobs(self, sweep_id: str) -> list[JobRow]:
        """The points of one sweep, in submission order."""
        q = select(jobs).where(jobs.c.sweep_id == sweep_id).order_by(jobs.c.created_at, jobs.c.id)
        with self.engine.connect() as conn:
            return [_job(r) for r in conn.execute(q)]

    def resolve_sweep(self, ref: str) -> str | None:
        """The sweep id a reference names (an id prefix, or the sweep's name: its latest
        sweep of that name), or None."""
        ref = ref.strip()
        if not ref:
            return None
        with self.engine.connect() as conn:
            ids = [r[0] for r in conn.execute(select(jobs.c.sweep_id).where(jobs.c.sweep_id.like(ref.lower() + "%"))
                                              .group_by(jobs.c.sweep_id).limit(6))]
            if not ids:  # the sweep's name: its points are called <name>-<index>
                q = (select(jobs.c.sweep_id, func.max(jobs.c.created_at)).where(
                    jobs.c.sweep_id.is_not(None), jobs.c.name.like(ref.replace("%", "") + "-%"))
                     .group_by(jobs.c.sweep_id).order_by(func.max(jobs.c.created_at).desc()).limit(1))
                ids = [r[0] for r in conn.execute(q)]
        if len(ids) > 1:
            raise NotFoundError(f"'{ref}' matches several sweeps: {', '.join(i[:8] for i in ids[:5])}; type more of the id")
        return ids[0] if ids else None

    def sweep_counts(self, sweep_ids: Iterable[str]) -> dict[str, dict[str, int]]:
        """sweep id -> {state: count}."""
        ids = list(sweep_ids)
        if not ids:
            return {}
        out: dict[str, dict[str, int]] = {}
        q = (select(jobs.c.sweep_id, jobs.c.state, func.count()).where(jobs.c.sweep_id.in_(ids))
             .group_by(jobs.c.sweep_id, jobs.c.state))
        with self.engine.connect() as conn:
            for sweep_id, st, n in conn.execute(q):
                out.setdefault(sweep_id, {})[st] = n
        return out

    def meta_get(self, key: str) -> str | None:
        """A small key-value setting kept with the state (e.g. a cached quota reading)."""
        with self.engine.connect() as conn:
            return conn.execute(select(meta.c.value).where(meta.c.key == key)).scalar()

    def meta_set(self, key: str, value: str) -> None:
        with self.engine.begin() as conn:
            if conn.execute(update(meta).where(meta.c.key == key).values(value=value)).rowcount == 0:
                conn.execute(insert(meta).values(key=key, value=value))

    def counts(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            return {s: n for s, n in conn.execute(select(jobs.c.state, func.count()).group_by(jobs.c.state))}

    def close(self) -> None:
        self.engine.dispose()


def _v1_to_v2(conn: Connection) -> None:
    """Chain segments (attempts.session_s) and the indexes quota and sweeps read by."""
    columns = {c["name"] for c in __import__("sqlalchemy").inspect(conn).get_columns("attempts")}
    if "session_s" not in columns:
        conn.exec_driver_sql("ALTER TABLE attempts ADD COLUMN session_s FLOAT")
    for index in (*attempts.indexes, *jobs.indexes, *ledger.indexes):
        index.create(conn, checkfirst=True)


MIGRATIONS: dict[int, Any] = {1: _v1_to_v2}
"""``MIGRATIONS[v](conn)`` moves a schema from version v to v+1."""


def _engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn, _record):  # pragma: no cover - exercised by every test
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (below)
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA busy_timeout=60000")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn):  # pragma: no cover
            # IMMEDIATE takes the write lock up front, so two writers queue on
            # busy_timeout instead of failing when a read turns into a write.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True)


def _redact(url: str) -> str:
    """A DB URL with its password hidden."""
    if "://" in url and "@" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url
