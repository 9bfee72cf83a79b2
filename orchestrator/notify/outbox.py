"""The outbox and the delivery log, as the sender sees them.

A row is *claimed* before it is sent (``next_at`` moved past the send, ``claimed_by``
set, as a compare-and-set), so two ticks running at once never both send it; a claim
whose process died on this machine is void at once (as job leases are), so a
SIGKILLed tick's events go out on the next tick. A row leaves the outbox once every
channel that wants it has it (or it is given up); ``deliveries`` keeps the latest
:data:`KEEP_LOG` sends for ``orch notify log``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from sqlalchemy import delete, func, insert, or_, select, update

from ..leases import local_owner_dead
from ..schema import deliveries, outbox
from ..store import Store

#: How long a claim holds when its holder is alive (a send takes seconds).
CLAIM_S = 300.0
KEEP_LOG = 1000


@dataclass
class Row:
    id: int
    event: dict
    done: list[str]
    tries: int
    at: float


def due(store: Store, now: float, limit: int = 50) -> list[Row]:
    """Rows to send now: never tried, due again, or claimed by a dead process."""
    q = (select(outbox).where(or_(outbox.c.next_at <= now, outbox.c.claimed_by.is_not(None)))
         .order_by(outbox.c.id).limit(limit * 4))
    with store.read() as conn:
        found = list(conn.execute(q))
    rows = []
    for r in found:
        m = r._mapping
        if m["next_at"] > now and not local_owner_dead(m["claimed_by"]):
            continue
        rows.append(Row(m["id"], json.loads(m["payload"]), json.loads(m["done"] or "[]"), m["tries"], m["at"]))
    return rows[:limit]


def claim(store: Store, row_id: int, owner: str, now: float) -> bool:
    """Take the row for one send; False when another tick has it (alive) or it is gone."""
    with store.transaction() as tx:
        m = tx.conn.execute(select(outbox.c.next_at, outbox.c.claimed_by).where(outbox.c.id == row_id)).first()
        if m is None or (m.next_at > now and not local_owner_dead(m.claimed_by)):
            return False
        res = tx.conn.execute(update(outbox).where(outbox.c.id == row_id, outbox.c.next_at == m.next_at)
                              .values(next_at=now + CLAIM_S, claimed_by=owner))
        return res.rowcount == 1


def mark_done(store: Store, row_id: int, done: list[str]) -> None:
    """Record the channels that have the event (right after each send: a crash then
    repeats only the sends not recorded yet)."""
    with store.transaction() as tx:
        tx.conn.execute(update(outbox).where(outbox.c.id == row_id).values(done=json.dumps(sorted(done))))


def finish(store: Store, row_id: int) -> None:
    with store.transaction() as tx:
        tx.conn.execute(delete(outbox).where(outbox.c.id == row_id))


def defer(store: Store, row_id: int, tries: int, next_at: float) -> None:
    """Give the claim back; the row is due again at ``next_at``."""
    with store.transaction() as tx:
        tx.conn.execute(update(outbox).where(outbox.c.id == row_id)
                        .values(tries=tries, next_at=next_at, claimed_by=None))


def log(store: Store, event: dict, channel: str, ok: bool, error: str = "") -> None:
    with store.transaction() as tx:
        tx.conn.execute(insert(deliveries).values(event_id=event["id"], type=event["type"], channel=channel,
                                                  at=time.time(), ok=1 if ok else 0, error=error[:500]))
        newest = tx.conn.execute(select(func.max(deliveries.c.id))).scalar() or 0
        if newest > KEEP_LOG and newest % 50 == 0:  # prune now and then, not on every send
            tx.conn.execute(delete(deliveries).where(deliveries.c.id <= newest - KEEP_LOG))


def recent(store: Store, limit: int = 50) -> list[dict]:
    """The latest sends, newest first."""
    with store.read() as conn:
        q = select(deliveries).order_by(deliveries.c.id.desc()).limit(limit)
        return [dict(r._mapping) for r in conn.execute(q)]


def pending_count(store: Store) -> int:
    with store.read() as conn:
        return conn.execute(select(func.count()).select_from(outbox)).scalar() or 0
