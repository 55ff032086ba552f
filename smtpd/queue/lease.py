"""Node leases on a shared PostgreSQL queue: who delivers which envelopes.

Every node that shares the queue database has a row in ``pysmtpd_node``
with a lease expiry, renewed every ``ttl / 3`` by its queue process.  Rows in
``pysmtpd_blob`` belong to one node (pg.py).  When a node stops renewing
(SIGKILL, power loss, partition), its lease expires and the next node to
``tick()`` re-owns all its rows in one transaction under an advisory lock, so
exactly one node gets them, and schedules the envelopes it got.

A node takes over only once its own lease has been unbroken for a whole
``ttl``: after a database outage every lease has lapsed, and this wait gives
every live node the chance to renew before anyone is declared dead (no
takeover storm when the database comes back).

A node must not start deliveries once it cannot prove its lease is still
valid: ``may_deliver()`` is false when the last successful renewal began
more than ``ttl / 2`` ago (by this host's monotonic clock, measured from
before the renewal was sent, so it errs on the safe side).  A node whose
row was taken anyway (paused or cut off for longer than the lease) finds
its reads empty and its writes fenced (pg.py), and ``tick()`` raises
LeaseLost: the queue process exits rather than deliver from stale state.

Expiry is decided by the database's clock (``now()``) alone, so node clocks
need not agree.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from smtpd.queue.blob import Kind
from smtpd.queue.errors import LeaseLost
from smtpd.queue.pg import LOCK_TAKEOVER, OFFSET, SHARED, PgBackend, PgStoreError

log = logging.getLogger("smtpd.queue")

DEFAULT_TTL = 30.0




class Renewal(enum.Enum):
    RENEWED = "renewed"  # our lease is extended
    REGISTERED = "registered"  # our row was gone (taken over): registered again
    FAILED = "failed"  # the database did not answer


@dataclass(frozen=True, slots=True)
class Takeover:
    nodes: tuple[str, ...]  # whose leases had expired
    evpids: tuple[int, ...]  # envelopes now ours, ascending
    msgids: tuple[int, ...]  # messages now ours, ascending
    blobs: int  # rows re-owned, all kinds


class LeaseKeeper:
    def __init__(self, backend: PgBackend, ttl: float = DEFAULT_TTL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if ttl < 1:
            raise ValueError("queue lease must be at least 1 second")
        self.backend = backend
        self.node = backend.node
        self.ttl = ttl
        self.clock = clock
        self._valid_from: float | None = None  # monotonic start of the last good renewal

    @property
    def interval(self) -> float:
        """How often the queue process should call ``tick()``."""
        return self.ttl / 3

    def register(self) -> None:
        """At start, before anything is stored: claim the name (PgStoreError
        if the database is unreachable: the queue cannot start without it)."""
        if self.renew() is Renewal.FAILED:
            raise PgStoreError(f"queue database unreachable: cannot register node {self.node}")

    def renew(self) -> Renewal:
        started = self.clock()
        try:
            with self.backend.connection() as conn:
                # a lapsed lease starts a new unbroken period (see take_over)
                cur = conn.execute(
                    "UPDATE pysmtpd_node SET expires = now() + make_interval(secs => %s),"
                    " since = CASE WHEN expires < now() THEN now() ELSE since END"
                    " WHERE name = %s", (self.ttl, self.node))
                result = Renewal.RENEWED
                if cur.rowcount == 0:
                    conn.execute(
                        "INSERT INTO pysmtpd_node (name, since, expires)"
                        " VALUES (%s, now(), now() + make_interval(secs => %s))"
                        " ON CONFLICT (name) DO UPDATE SET expires = EXCLUDED.expires,"
                        " since = EXCLUDED.since",
                        (self.node, self.ttl))
                    result = Renewal.REGISTERED
        except PgStoreError as exc:
            log.warning("queue: lease of node %s not renewed: %s", self.node, exc)
            return Renewal.FAILED
        self._valid_from = started
        return result

    def may_deliver(self) -> bool:
        if self._valid_from is None:
            return False
        return self.clock() - self._valid_from < self.ttl / 2

    def take_over(self) -> Takeover:
        """Re-own the rows of every node whose lease expired (and of owners
        with no lease row at all), in one transaction; one node at a time;
        only when our own lease has been unbroken for ``ttl``."""
        with self.backend.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_TAKEOVER,))
            steady = conn.execute(
                "SELECT since <= now() - make_interval(secs => %s) AND expires > now()"
                " FROM pysmtpd_node WHERE name = %s", (self.ttl, self.node)).fetchone()
            if steady is None or steady[0] is not True:
                return Takeover((), (), (), 0)
            dead = [str(row[0]) for row in conn.execute(
                "DELETE FROM pysmtpd_node WHERE expires < now() AND name <> %s RETURNING name",
                (self.node,)).fetchall()]
            rows = conn.execute(
                "UPDATE pysmtpd_blob SET owner = %s WHERE owner <> %s AND owner <> %s"
                " AND owner NOT IN (SELECT name FROM pysmtpd_node) RETURNING kind, oid",
                (self.node, self.node, SHARED)).fetchall()
        evpids = sorted(int(str(oid)) + OFFSET for kind, oid in rows
                        if kind == Kind.ENVELOPE.value)
        msgids = sorted(int(str(oid)) + OFFSET for kind, oid in rows
                        if kind == Kind.MESSAGE.value)
        if rows:
            log.info("queue: node %s took over %d envelopes (%d blobs) from %s", self.node,
                     len(evpids), len(rows), ", ".join(dead) or "unleased owners")
        return Takeover(tuple(dead), tuple(evpids), tuple(msgids), len(rows))

    def tick(self) -> Takeover | None:
        """The periodic work: renew, then take over expired nodes' envelopes.
        None when the database is unreachable (retry at the next tick);
        LeaseLost when another node has taken ours."""
        state = self.renew()
        if state is Renewal.FAILED:
            return None
        if state is Renewal.REGISTERED:
            raise LeaseLost(f"node {self.node} lost its lease: its envelopes were taken "
                            "over by another node")
        try:
            return self.take_over()
        except PgStoreError as exc:
            log.warning("queue: takeover check failed: %s", exc)
            return None
