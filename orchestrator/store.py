"""The state store: jobs, attempts, events and the quota ledger, in SQLAlchemy Core.

SQLite (WAL mode) by default, PostgreSQL by URL; the same statements serve both.
Every state change is a compare-and-set from an expected state, checked against
``states.py`` and recorded as an event row in the same transaction. Secrets are
never written here: specs hold secret *names* only.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

from sqlalchemy import create_engine, event, func, insert, or_, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError

from .errors import ConfigError, NotFoundError, StateError
from .notify import events as notify_events
from .states import (
    ACTIVE_ATTEMPT_STATES, AttemptState, JobState, check_attempt_transition, check_job_transition,
)

from .schema import (  # noqa: F401  (re-exported: the tables are part of the store's API)
    MIGRATIONS, SCHEMA_VERSION, attempts, events, jobs, ledger, meta, metadata,
)


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
    host: str | None = None
    artifacts: dict | None = None


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
        result=json.loads(m["result"]) if m["result"] else None, session_s=m.get("session_s"), host=m.get("host"),
        artifacts=json.loads(m["artifacts"]) if m.get("artifacts") else None,
    )


def user() -> str:
    """Who submits: ``$ORCH_USER``, else the login name (teams whose logins collide set it)."""
    name = os.environ.get("ORCH_USER")
    if name:
        return name
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return "?"


def host() -> str:
    """This machine's name, as recorded on jobs and attempts."""
    return socket.gethostname()


def actor() -> str:
    """Who is acting, for event rows and leases: ``$ORCH_CONTROLLER_ID`` when set (a stable
    name per controller machine), else user@host:pid."""
    return os.environ.get("ORCH_CONTROLLER_ID") or f"{user()}@{host()}:{os.getpid()}"


def attempt_key(job_id: str, number: int) -> str:
    """Deterministic per attempt: lower-case, digits and dashes, >= 5 chars (Kaggle slugs)."""
    return f"o{job_id[:12]}-{number}"


class Tx:
    """One transaction; every method raises Conflict when its compare-and-set misses,
    which rolls back everything done in the transaction."""

    def __init__(self, conn: Connection, who: str):
        self.conn = conn
        self.who = who
        #: job id -> (new state, fields) of the attempt this transaction moved last:
        #: what a job's move means for its notification (see notify/events.py).
        self._attempt_moves: dict[str, tuple[str, dict]] = {}

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
        # The notification is written with the move, so a crash never keeps one without the other.
        notify_events.on_job_move(self.conn, job_id, JobState(expected).value, JobState(new).value, reason,
                                  self._attempt_moves.pop(job_id, None))

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
        self._attempt_moves[job_id] = (AttemptState(new).value, values)

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
        if k in ("handle", "result", "avoid", "extra", "spec", "artifacts") and v is not None and not isinstance(v, str):
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
        #: A queue shared by several machines (team mode): bundles, checkpoints and
        #: results also travel through the database (blobstore.py).
        self.shared = not self.is_sqlite
        self._local = threading.local()
        try:
            self.engine: Engine = _engine(url)
        except Exception as exc:  # bad URL, missing driver
            raise ConfigError(f"state database {_redact(url)}: {_redact(exc)}") from None
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
            raise ConfigError(f"state database {_redact(self.url)}: {_redact(exc.orig)}") from None

    @property
    def schema_version(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(meta.c.value).where(meta.c.key == "schema_version")).scalar())

    # ------------------------------------------------------------------ connections
    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection for reads: the open transaction's, when this thread has one
        (SQLite would otherwise wait on the write lock this very thread holds)."""
        bound = getattr(self._local, "conn", None)
        if bound is not None:
            yield bound
            return
        with self.engine.connect() as conn:
            yield conn

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A transaction for writes, joining this thread's open one if any."""
        bound = getattr(self._local, "conn", None)
        if bound is not None:
            yield bound
            return
        with self.engine.begin() as conn:
            self._local.conn = conn
            try:
                yield conn
            finally:
                self._local.conn = None

    # ------------------------------------------------------------------ writes
    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """All-or-nothing: every store call made inside it by this thread joins it."""
        with self._write() as conn:
            yield Tx(conn, self.who)

    def add_job(self, *, name: str, spec: dict, bundle: str, priority: int = 0, pin: str | None = None,
                sweep_id: str | None = None, extra: dict | None = None) -> str:
        return self.add_jobs([dict(name=name, spec=spec, bundle=bundle, priority=priority, pin=pin,
                                   sweep_id=sweep_id, extra=extra)])[0]

    def add_jobs(self, entries: list[dict[str, Any]]) -> list[str]:
        """Queue several jobs in one transaction (a sweep is queued whole or not at all).
        Each entry has the keyword arguments of :meth:`add_job`."""
        now = time.time()
        submitter, machine = user(), host()
        ids = []
        with self._write() as conn:
            for i, e in enumerate(entries):
                job_id = uuid.uuid4().hex
                ids.append(job_id)
                # created_at grows by a microsecond per entry so that FIFO keeps the given order.
                at = now + i * 1e-6
                conn.execute(insert(jobs).values(
                    id=job_id, name=e["name"], state=JobState.QUEUED.value, spec=json.dumps(e["spec"], sort_keys=True),
                    bundle=e["bundle"], priority=e.get("priority", 0), created_at=at, updated_at=at, pin=e.get("pin"),
                    attempts=0, lost_count=0, error_count=0, message="", avoid="{}", submitted_by=submitter,
                    submitted_host=machine, sweep_id=e.get("sweep_id"), extra=json.dumps(e.get("extra") or {}),
                ))
                conn.execute(insert(events).values(job_id=job_id, at=at, kind="job", from_state=None,
                                                   to_state=JobState.QUEUED.value, reason="submitted", actor=self.who))
        return ids

    def note(self, job_id: str, message: str) -> None:
        """Set a job's human-readable status line (e.g. why it waits), whatever its state."""
        with self._write() as conn:
            conn.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.message != message).values(message=message))

    def note_many(self, messages: dict[str, str]) -> None:
        if not messages:
            return
        with self._write() as conn:
            for job_id, message in messages.items():
                conn.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.message != message).values(message=message))

    # ------------------------------------------------------------------ reads
    def job(self, job_id: str) -> JobRow:
        with self.read() as conn:
            row = conn.execute(select(jobs).where(jobs.c.id == job_id)).first()
        if row is None:
            raise NotFoundError(f"no job {job_id}")
        return _job(row)

    def resolve(self, ref: str) -> JobRow:
        """A job by id prefix (like git) or by exact name; ambiguity is an error that lists candidates."""
        ref = ref.strip()
        if not ref:
            raise NotFoundError("give a job id (or a unique prefix of it) or a job name")
        with self.read() as conn:
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
             submitted_by: str | None = None, platform: str | None = None, sweep_id: str | None = None,
             offset: int = 0) -> list[JobRow]:
        """Jobs, newest first, matching every filter given; ``offset``/``limit`` page them."""
        q = _job_filter(select(jobs), states, submitted_by, platform, sweep_id).order_by(jobs.c.created_at.desc())
        if offset:
            q = q.offset(offset)
        if limit:
            q = q.limit(limit)
        with self.read() as conn:
            return [_job(r) for r in conn.execute(q)]

    def count_jobs(self, states: Iterable[JobState] | None = None, submitted_by: str | None = None,
                   platform: str | None = None, sweep_id: str | None = None) -> int:
        """How many jobs :meth:`jobs` would list with these filters and no limit."""
        q = _job_filter(select(func.count()).select_from(jobs), states, submitted_by, platform, sweep_id)
        with self.read() as conn:
            return int(conn.execute(q).scalar() or 0)

    def submitters(self) -> list[str]:
        """Everyone who has submitted a job to this store (a team's members), sorted."""
        with self.read() as conn:
            return sorted(r[0] for r in conn.execute(select(jobs.c.submitted_by).distinct()))

    def queued(self) -> list[JobRow]:
        """Queued jobs in dispatch order: priority first, then FIFO."""
        q = (select(jobs).where(jobs.c.state == JobState.QUEUED.value)
             .order_by(jobs.c.priority.desc(), jobs.c.created_at, jobs.c.id))
        with self.read() as conn:
            return [_job(r) for r in conn.execute(q)]

    def attempts_of(self, job_id: str) -> list[AttemptRow]:
        with self.read() as conn:
            q = select(attempts).where(attempts.c.job_id == job_id).order_by(attempts.c.number)
            return [_attempt(r) for r in conn.execute(q)]

    def attempt(self, attempt_id: int) -> AttemptRow:
        with self.read() as conn:
            row = conn.execute(select(attempts).where(attempts.c.id == attempt_id)).first()
        if row is None:
            raise NotFoundError(f"no attempt {attempt_id}")
        return _attempt(row)

    def attempts_in(self, states: Iterable[AttemptState]) -> list[AttemptRow]:
        with self.read() as conn:
            q = select(attempts).where(attempts.c.state.in_([s.value for s in states])).order_by(attempts.c.id)
            return [_attempt(r) for r in conn.execute(q)]

    def latest_attempts(self, job_ids: list[str]) -> dict[str, AttemptRow]:
        if not job_ids:
            return {}
        out: dict[str, AttemptRow] = {}
        with self.read() as conn:
            for i in range(0, len(job_ids), 500):
                chunk = job_ids[i:i + 500]
                for r in conn.execute(select(attempts).where(attempts.c.job_id.in_(chunk)).order_by(attempts.c.number)):
                    a = _attempt(r)
                    out[a.job_id] = a
        return out

    def active_counts(self) -> dict[str, int]:
        """Active attempts per platform (for concurrency limits)."""
        with self.read() as conn:
            q = (select(attempts.c.platform, func.count()).where(
                attempts.c.state.in_([s.value for s in ACTIVE_ATTEMPT_STATES])).group_by(attempts.c.platform))
            return {p: n for p, n in conn.execute(q)}

    def events_of(self, job_id: str) -> list[dict]:
        with self.read() as conn:
            q = select(events).where(events.c.job_id == job_id).order_by(events.c.id)
            return [dict(r._mapping) for r in conn.execute(q)]

    def ledger_rows(self, platform: str | None = None, since: float | None = None) -> list[dict]:
        q = select(ledger)
        if platform:
            q = q.where(ledger.c.platform == platform)
        if since is not None:
            q = q.where(or_(ledger.c.end >= since, ledger.c.kind == "reserve"))
        with self.read() as conn:
            return [dict(r._mapping) for r in conn.execute(q.order_by(ledger.c.id))]

    def ledger_charges(self, platforms: Iterable[str], since: float) -> list[tuple[str, float, float, float]]:
        """(platform, amount, start, end) of charges ending after ``since``: the current
        windows only, never the whole history."""
        names = list(platforms)
        if not names:
            return []
        q = select(ledger.c.platform, ledger.c.amount, ledger.c.start, ledger.c.end).where(
            ledger.c.kind == "charge", ledger.c.end > since, ledger.c.platform.in_(names))
        with self.read() as conn:
            return [tuple(r) for r in conn.execute(q)]

    def reservations(self, attempt_ids: Iterable[int]) -> dict[int, dict]:
        """The reserve row of each of these attempts (the active ones, in practice)."""
        ids = list(attempt_ids)
        out: dict[int, dict] = {}
        with self.read() as conn:
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
        with self.read() as conn:
            return [tuple(r) for r in conn.execute(q)]

    def sweep_jobs(self, sweep_id: str) -> list[JobRow]:
        """The points of one sweep, in submission order."""
        q = select(jobs).where(jobs.c.sweep_id == sweep_id).order_by(jobs.c.created_at, jobs.c.id)
        with self.read() as conn:
            return [_job(r) for r in conn.execute(q)]

    def resolve_sweep(self, ref: str) -> str | None:
        """The sweep id a reference names (an id prefix, or the sweep's name: its latest
        sweep of that name), or None."""
        ref = ref.strip()
        if not ref:
            return None
        with self.read() as conn:
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
        with self.read() as conn:
            for sweep_id, st, n in conn.execute(q):
                out.setdefault(sweep_id, {})[st] = n
        return out

    def meta_get(self, key: str) -> str | None:
        """A small key-value setting kept with the state (e.g. a cached quota reading)."""
        with self.read() as conn:
            return conn.execute(select(meta.c.value).where(meta.c.key == key)).scalar()

    def meta_set(self, key: str, value: str) -> None:
        """Set one key, atomically: an upsert, since two controllers may write the same key
        at once (update-then-insert raced into a duplicate key on PostgreSQL)."""
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as upsert
        else:
            from sqlalchemy.dialects.sqlite import insert as upsert
        stmt = upsert(meta).values(key=key, value=value)
        with self._write() as conn:
            conn.execute(stmt.on_conflict_do_update(index_elements=[meta.c.key], set_={"value": value}))

    def counts(self) -> dict[str, int]:
        with self.read() as conn:
            return {s: n for s, n in conn.execute(select(jobs.c.state, func.count()).group_by(jobs.c.state))}

    def close(self) -> None:
        self.engine.dispose()




def _job_filter(q, states: Iterable[JobState] | None, submitted_by: str | None, platform: str | None,
                sweep_id: str | None):
    """``q`` narrowed to the jobs that match every filter given."""
    if states is not None:
        q = q.where(jobs.c.state.in_([s.value for s in states]))
    if submitted_by:
        q = q.where(jobs.c.submitted_by == submitted_by)
    if platform:
        q = q.where(jobs.c.platform == platform)
    if sweep_id:
        q = q.where(jobs.c.sweep_id == sweep_id)
    return q


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


_URL_PASSWORD = re.compile(r"(://[^/@:\s]*):[^@/\s]*@")
_PARAM_PASSWORD = re.compile(r"(?i)\b((?:ssl)?pass(?:word|wd)?\s*=\s*)('[^']*'|[^&\s]*)")


def _redact(text: str) -> str:
    """A DB URL (or an error that quotes one) with every password hidden: the
    ``user:pw@host`` form and ``?password=`` / ``password=`` parameters."""
    text = _URL_PASSWORD.sub(r"\1:***@", str(text))
    return _PARAM_PASSWORD.sub(r"\1***", text)
