"""What the queue process does differently on a shared queue (issue 14).

    backend, lease = open_backend(config.queue, config.hostname, spool)
    front = QueueFront(backend, spool=spool, ...)   # then recover() and walk
    ...once the start-up walk is done, every lease.interval seconds:
    for env in takeover_tick(lease, front): schedule env

``open_backend`` registers this node's lease and takes over expired nodes
*before* the queue's start-up walk, so their envelopes are loaded with ours;
afterwards ``takeover_tick`` renews the lease and returns the envelopes that
became ours since.  Without ``queue backend postgres`` there is no lease.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from smtpd.config.model import QueueOptions
from smtpd.queue.backend import QueueBackend, make_backend
from smtpd.queue.blob import Kind
from smtpd.queue.envelope import Envelope
from smtpd.queue.errors import NotFound, QueueError
from smtpd.queue.front import QueueFront

if TYPE_CHECKING:
    # psycopg is imported only by spools that use PostgreSQL: every process
    # that does not would carry ~16 MB for nothing (and fork slower).
    from smtpd.queue.lease import LeaseKeeper
    from smtpd.queue.pg import PgBackend

LEASE_LOST = "451 4.3.0 Queue lease not renewed, delivery deferred"
NAME_WAIT = 5.0  # seconds a restarting node waits for its old session to end


def node_name(qopts: QueueOptions, hostname: str) -> str:
    return qopts.node or hostname


def open_backend(qopts: QueueOptions, hostname: str,
                 spool: Path) -> tuple[QueueBackend, LeaseKeeper | None]:
    """The configured backend; for postgres also the registered lease
    (OSError when the database cannot be reached: the queue cannot start)."""
    if qopts.backend != "postgres":
        return make_backend(qopts.backend, spool), None
    if not qopts.backend_conninfo:
        raise ValueError("queue backend postgres needs a conninfo")
    backend = _claim(qopts.backend_conninfo, node_name(qopts, hostname))
    from smtpd.queue.lease import LeaseKeeper  # preloaded before the privilege drop
    lease = LeaseKeeper(backend, float(qopts.lease))
    lease.register()
    lease.take_over()  # before recover() and the start-up walk: loaded with ours
    return backend, lease


def _claim(conninfo: str, node: str, wait: float = NAME_WAIT) -> PgBackend:
    """The node's backend holding its name lock.  A node restarted right after
    a SIGKILL may find its old session not yet ended on the server: wait a
    little for it before refusing to start."""
    from smtpd.queue.pg import NodeNameInUse, PgBackend  # preloaded before the drop
    deadline = time.monotonic() + wait
    while True:
        try:
            return PgBackend(conninfo, node, exclusive=True)
        except NodeNameInUse:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def takeover_tick(lease: LeaseKeeper, front: QueueFront) -> Iterator[Envelope]:
    """Renew the lease; the envelopes taken over from expired nodes, ready
    to be scheduled (unreadable ones are skipped: the walk at the next
    start reports them).  Messages left without envelopes by an owner
    killed half-way through a removal are deleted."""
    took = lease.tick()
    if took is None:
        return
    with_envelopes = {evpid >> 32 for evpid in took.evpids}
    for msgid in took.msgids:
        if msgid not in with_envelopes and not front.message_envelopes(msgid):
            lease.backend.delete(Kind.MESSAGE, msgid)
    for evpid in took.evpids:
        try:
            yield front.envelope_load(evpid)
        except (NotFound, QueueError):
            continue
