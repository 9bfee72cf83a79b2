"""The events orch tells people about, and how a state change turns into one.

An event is written to the ``outbox`` table by :func:`on_job_move`, which the store
calls inside the transaction that moves the job (``Tx.move_job``): the event exists
if and only if the state change does. Watched events (quota low, a login about to
expire, a job waiting long) are added by ``watch.py`` with an id derived from what
they are about, so the same condition is never queued twice.

Every payload has ``schema`` (:data:`SCHEMA`), a unique ``id`` (receivers dedupe on
it: a SIGKILLed tick may send an event again), ``type``, ``at`` (ISO 8601, UTC) and
``ts`` (Unix seconds); the rest depends on the type (see docs/notifications.md).
Payloads hold state, reasons and result fields only: never a spec's env, a secret
or a token.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - SQLAlchemy is imported where a row is written (config.py reads
    from sqlalchemy.engine import Connection  # EVENT_TYPES, and a job.yaml check needs no database)

SCHEMA = "orch.event/1"

EVENT_TYPES = (
    "job.succeeded",     # with its headline result fields and where its outputs are
    "job.failed",        # FAILED, or LOST with no retries left: the reason and the last log lines
    "job.retried",       # lost (preempted, session dropped) or failed-and-retried: queued again
    "job.checkpointed",  # a chain segment ended with a checkpoint; the next one is queued
    "sweep.finished",    # every point of a sweep ended: a summary table
    "quota.low",         # a platform's window has less than quota_low_percent left
    "login.expiring",    # a platform's credential has expired or is about to
    "job.waiting",       # queued longer than notify.waiting, with the placement reason
)

_ACTIVE = {"SUBMITTING", "PENDING", "RUNNING", "UNKNOWN", "FETCHING"}
_TERMINAL = {"SUCCEEDED", "FAILED", "LOST", "CANCELLED"}
#: Caps on what a payload carries from a job (its reason text comes from a remote).
MAX_REASON = 1000


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_event(event_type: str, body: dict[str, Any], event_id: str | None = None,
              now: float | None = None) -> dict[str, Any]:
    """A complete payload: the common fields, then ``body``."""
    now = time.time() if now is None else now
    return {"schema": SCHEMA, "id": event_id or uuid.uuid4().hex, "type": event_type, "at": iso(now),
            "ts": round(now, 3), **body}


def add(conn: Connection, event: dict[str, Any]) -> bool:
    """Queue ``event`` in the outbox; False when an event with its id is already there or
    was sent (a watched condition seen again; the delivery log keeps the latest
    ``outbox.KEEP_LOG`` sends, which bounds how far back that memory reaches)."""
    from sqlalchemy import insert, select
    from sqlalchemy.exc import IntegrityError

    from ..schema import deliveries, outbox

    if conn.execute(select(outbox.c.id).where(outbox.c.event_id == event["id"])).first() is not None:
        return False
    # Already sent (the outbox row is gone, its deliveries are logged): a watched
    # condition still true on a later tick is not news.
    if conn.execute(select(deliveries.c.id).where(deliveries.c.event_id == event["id"]).limit(1)).first() is not None:
        return False
    try:
        with conn.begin_nested():
            conn.execute(insert(outbox).values(event_id=event["id"], type=event["type"], at=event["ts"],
                                               payload=json.dumps(event, sort_keys=True), done="[]", tries=0,
                                               next_at=0.0))
    except IntegrityError:  # another controller queued it meanwhile
        return False
    return True


def on_job_move(conn: Connection, job_id: str, old: str, new: str, reason: str,
                attempt_move: tuple[str, dict] | None) -> None:
    """Queue the event a job's move from ``old`` to ``new`` means, if any.

    ``attempt_move`` is the (new state, fields) of the attempt moved earlier in the
    same transaction: it tells a lost-and-retried job (attempt LOST) from a checkpointed
    segment (attempt CHECKPOINTED) when both put the job back in the queue.
    """
    kind = _kind(old, new, attempt_move[0] if attempt_move else None)
    if kind is None:
        return
    from sqlalchemy import select

    from ..schema import jobs

    row = conn.execute(select(jobs).where(jobs.c.id == job_id)).first()
    if row is None:
        return
    job = row._mapping
    fields = attempt_move[1] if attempt_move else {}
    body: dict[str, Any] = {
        "job": {"id": job_id, "name": job["name"], "state": new, "platform": job["platform"],
                "attempt": job["attempts"], "sweep": job["sweep_id"], "submitted_by": job["submitted_by"]},
        "reason": (reason or "")[:MAX_REASON],
    }
    if kind == "job.retried":
        body["cause"] = "lost" if attempt_move and attempt_move[0] == "LOST" else "error"
    result = fields.get("result")
    if isinstance(result, str):
        try:
            result = json.loads(result)
        except ValueError:
            result = None
    if isinstance(result, dict):
        body["result"] = headline(result)
    add(conn, new_event(kind, body))
    if new in _TERMINAL and job["sweep_id"]:
        _sweep_finished(conn, job["sweep_id"])


def _kind(old: str, new: str, attempt_new: str | None) -> str | None:
    if new == "SUCCEEDED":
        return "job.succeeded"
    if new in ("FAILED", "LOST"):
        return "job.failed"
    if new == "QUEUED" and old in _ACTIVE:
        if attempt_new == "CHECKPOINTED":
            return "job.checkpointed"
        if attempt_new in ("LOST", "FAILED"):
            return "job.retried"
    return None  # a refused submit placed again, a cancel, a user's retry: nothing to tell


def headline(result: dict[str, Any]) -> dict[str, Any]:
    """The few result.json fields a person wants in a message (all untrusted, all capped)."""
    gpu = result.get("gpu") if isinstance(result.get("gpu"), dict) else {}
    out = {"status": result.get("status"), "exit_code": result.get("exit_code"),
           "runtime_s": result.get("runtime_s"), "failure_class": result.get("failure_class"),
           "gpu": gpu.get("name"), "message": result.get("message")}
    return {k: (v[:200] if isinstance(v, str) else v) for k, v in out.items()
            if v is None or isinstance(v, (str, int, float))}


def _sweep_finished(conn: Connection, sweep_id: str) -> None:
    """Queue sweep.finished once every point of the sweep has ended."""
    from sqlalchemy import select

    from ..schema import attempts, jobs

    rows = list(conn.execute(select(jobs.c.id, jobs.c.name, jobs.c.state, jobs.c.platform, jobs.c.extra)
                             .where(jobs.c.sweep_id == sweep_id).order_by(jobs.c.created_at, jobs.c.id)))
    if any(r.state not in _TERMINAL for r in rows):
        return
    runtimes = dict(conn.execute(select(attempts.c.job_id, attempts.c.runtime_s).where(
        attempts.c.job_id.in_([r.id for r in rows]), attempts.c.runtime_s.is_not(None))).all())
    points, counts = [], {}
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
        params = (json.loads(r.extra or "{}").get("sweep") or {}).get("params") or {}
        points.append({"name": r.name, "id": r.id[:8], "state": r.state, "platform": r.platform,
                       "runtime_s": runtimes.get(r.id), "params": params})
    name = (json.loads(rows[0].extra or "{}").get("sweep") or {}).get("name", rows[0].name) if rows else ""
    # One sweep.finished per sweep and round: a point retried later ends the sweep again.
    round_id = uuid.uuid5(uuid.NAMESPACE_URL, f"sweep:{sweep_id}:" + ",".join(f"{p['id']}={p['state']}"
                                                                            for p in points)).hex
    add(conn, new_event("sweep.finished", {"sweep": {"id": sweep_id, "name": name, "counts": counts,
                                                     "points": points[:200]}}, event_id=round_id))
