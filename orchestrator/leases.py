"""Leases: how several controllers share one queue without a local lock.

Before a controller works on a job (adopting, polling, fetching or dispatching it) it
claims the job row: it writes its owner id and an expiry time, for rows nobody holds
or whose lease has run out. On PostgreSQL the claim is one ``UPDATE ... WHERE id IN
(SELECT ... FOR UPDATE SKIP LOCKED)``, so two controllers claiming at the same moment
get disjoint sets without waiting on each other; on SQLite the write lock serialises
claims. A controller that dies keeps its leases only until they expire
(``controller.lease_seconds``); on its own machine a lease whose process is gone is
void at once, so a crashed cron tick is picked up by the next one without a wait.

A lease lives as long as the work: while a tick runs, a :class:`Keeper` thread
renews every lease the tick holds (a heartbeat on the lease rows, every third of
``lease_seconds``), so a submit that waits 15 minutes for a dataset keeps its job.
A holder that lost a lease anyway (its process was stopped, the database did not
answer) finds out from :meth:`Keeper.check`, which the controller calls, and which
platforms reach through ``Launch.guard``, right before the side effect that creates
a run: it stops there, and the new holder carries on.

Platform limits are guarded separately: a dispatch locks the platform's row in
``platform_locks`` while it counts running attempts, checks the quota and writes the
new attempt, so two controllers never both take the last free slot.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import uuid
from typing import Iterable

from sqlalchemy import and_, insert, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from .errors import LeaseLost
from .schema import jobs, platform_locks
from .store import Store, actor, host

log = logging.getLogger(__name__)

#: Default owner ids look like "user@host:pid#nonce"; the pid lets a controller on the
#: same host see that the holder is dead.
_LOCAL_OWNER = re.compile(r"^[^@]*@(?P<host>[^:]+):(?P<pid>\d+)#")


def owner_id() -> str:
    """A fresh owner id for one tick of this process."""
    return f"{actor()}#{uuid.uuid4().hex[:8]}"


def dead_local_owners(store: Store) -> list[str]:
    """Owners on this machine whose process no longer exists (their leases are void).
    One query; a tick computes it once and passes it to every :func:`claim`."""
    me = host()
    now = time.time()
    with store.read() as conn:
        rows = list(conn.execute(select(jobs.c.lease_owner).distinct().where(
            jobs.c.lease_until >= now, jobs.c.lease_owner.like(f"%@{me}:%"))).scalars())
    return [owner for owner in rows if local_owner_dead(owner)]


def local_owner_dead(owner: str | None) -> bool:
    """Whether ``owner`` is a process of this machine that no longer exists."""
    m = _LOCAL_OWNER.match(owner or "")
    if not m or m["host"] != host():
        return False
    try:
        os.kill(int(m["pid"]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, another user's
    return False


def claim(store: Store, job_ids: Iterable[str], owner: str, seconds: float,
          dead: list[str] | None = None) -> set[str]:
    """Claim the given jobs for ``owner`` for ``seconds``; returns the ids claimed (those
    free, expired, already ours, or held by one of the ``dead`` owners)."""
    ids = list(dict.fromkeys(job_ids))
    if not ids:
        return set()
    now = time.time()
    got: set[str] = set()
    with store.transaction() as tx:
        conn = tx.conn
        free = or_(jobs.c.lease_until.is_(None), jobs.c.lease_until < now, jobs.c.lease_owner == owner)
        if dead:
            free = or_(free, jobs.c.lease_owner.in_(dead))
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            claimable = (select(jobs.c.id).where(and_(jobs.c.id.in_(chunk), free))
                         .with_for_update(skip_locked=True))
            stmt = (update(jobs).where(jobs.c.id.in_(claimable.scalar_subquery()))
                    .values(lease_owner=owner, lease_until=now + seconds).returning(jobs.c.id))
            got.update(conn.execute(stmt).scalars())
    return got


def release(store: Store, owner: str, job_ids: Iterable[str] | None = None) -> None:
    """Give up ``owner``'s leases (all of them, or those on ``job_ids``)."""
    cond = jobs.c.lease_owner == owner
    if job_ids is not None:
        ids = list(job_ids)
        if not ids:
            return
        cond = and_(cond, jobs.c.id.in_(ids))
    with store.transaction() as tx:
        tx.conn.execute(update(jobs).where(cond).values(lease_owner=None, lease_until=None))


def renew(store: Store, owner: str, seconds: float) -> int:
    """Push out the expiry of every lease ``owner`` still holds; returns how many."""
    with store.transaction() as tx:
        res = tx.conn.execute(update(jobs).where(jobs.c.lease_owner == owner)
                              .values(lease_until=time.time() + seconds))
        return res.rowcount


def holds(store: Store, job_id: str, owner: str) -> bool:
    """Whether ``owner``'s lease on ``job_id`` is still in force."""
    with store.read() as conn:
        row = conn.execute(select(jobs.c.lease_owner, jobs.c.lease_until).where(jobs.c.id == job_id)).first()
    return row is not None and row.lease_owner == owner and (row.lease_until or 0) >= time.time()


class Keeper:
    """Renews one owner's leases from a background thread while its tick works.

    Design choice: a thread rather than renewals sprinkled through the code, because
    the long waits are inside platform calls (an upload, a dataset that is still
    processing) that the controller cannot interrupt; the holder-lost check is still
    explicit (:meth:`check`), right before each side effect.
    """

    def __init__(self, store: Store, owner: str, seconds: float):
        self.store = store
        self.owner = owner
        self.seconds = seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "Keeper":
        self._thread = threading.Thread(target=self._run, name="orch-lease-keeper", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(max(0.05, self.seconds / 3)):
            try:
                renew(self.store, self.owner, self.seconds)
            except Exception:  # noqa: BLE001 -- a missed renewal is caught by check()
                log.warning("could not renew the leases of %s", self.owner, exc_info=True)

    def check(self, job_id: str) -> None:
        """Raise LeaseLost unless this owner still holds ``job_id``'s lease."""
        if not holds(self.store, job_id, self.owner):
            raise LeaseLost(f"job {job_id[:8]}: this controller's lease on it ran out and another "
                            "controller may hold it now; left to that one")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


def ensure_platform_rows(store: Store, names: Iterable[str]) -> None:
    """Create the lock rows of configured platforms (once; racing controllers are fine)."""
    with store.read() as conn:
        have = set(conn.execute(select(platform_locks.c.name)).scalars())
    for name in names:
        if name in have:
            continue
        try:
            with store.transaction() as tx:
                tx.conn.execute(insert(platform_locks).values(name=name))
        except IntegrityError:
            pass  # another controller created it meanwhile


def lock_platform(conn: Connection, name: str) -> None:
    """Hold ``name``'s row lock until the surrounding transaction ends (a no-op on
    SQLite, whose write transactions are already exclusive)."""
    conn.execute(select(platform_locks.c.name).where(platform_locks.c.name == name).with_for_update())
