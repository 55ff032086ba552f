"""Leases and takeover on the shared PostgreSQL queue (issue 14)."""

from __future__ import annotations

import threading

import psycopg
import pytest

from smtpd.queue.blob import Kind
from smtpd.queue.cluster import _claim as claim
from smtpd.queue.lease import LeaseKeeper, LeaseLost, Renewal
from smtpd.queue.pg import NodeNameInUse, PgBackend, PgStoreError
from tests.servers import pg_db, pg_server

__all__ = ["pg_db", "pg_server"]

MSG = 0xC0FFEE01
EVP = [(MSG << 32) | 1, (MSG << 32) | 2]


def expire(conninfo: str, node: str) -> None:
    """Make ``node``'s lease run out now (as if it had stopped renewing), and
    every other node's lease unbroken for an hour (steady: may take over)."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("UPDATE pysmtpd_node SET expires = now() - interval '1 second'"
                     " WHERE name = %s", (node,))
        conn.execute("UPDATE pysmtpd_node SET since = now() - interval '1 hour'"
                     " WHERE name <> %s", (node,))


def store(b: PgBackend) -> None:
    b.put_many([(Kind.ENVELOPE, EVP[0], b"e1"), (Kind.ENVELOPE, EVP[1], b"e2"),
                (Kind.MESSAGE, MSG, b"m")])


def test_live_lease_is_not_taken(pg_db: str) -> None:
    a = LeaseKeeper(PgBackend(pg_db, "a"), ttl=30)
    b = LeaseKeeper(PgBackend(pg_db, "b"), ttl=30)
    a.register()
    b.register()
    store(a.backend)
    took = b.tick()
    assert took is not None and took.evpids == () and took.blobs == 0
    assert list(a.backend.list(Kind.ENVELOPE)) == EVP


def test_expired_node_is_taken_over_once_and_fenced(pg_db: str) -> None:
    a = LeaseKeeper(PgBackend(pg_db, "a"), ttl=30)
    b = LeaseKeeper(PgBackend(pg_db, "b"), ttl=30)
    a.register()
    b.register()
    store(a.backend)
    expire(pg_db, "a")
    took = b.tick()
    assert took is not None
    assert took.nodes == ("a",) and took.evpids == tuple(EVP) and took.blobs == 3
    assert took.msgids == (MSG,)
    assert list(b.backend.list(Kind.ENVELOPE)) == EVP
    with b.backend.get(Kind.MESSAGE, MSG) as f:
        assert f.read() == b"m"
    again = b.tick()
    assert again is not None and again.evpids == ()  # delivered once: nobody gets them twice
    # the old owner finds nothing and cannot write over the new owner's rows
    assert list(a.backend.list(Kind.ENVELOPE)) == []
    with pytest.raises(PgStoreError):
        a.backend.put(Kind.ENVELOPE, EVP[0], b"stale")
    assert a.backend.delete(Kind.ENVELOPE, EVP[0]) is False
    with pytest.raises(LeaseLost):
        a.tick()


def test_no_takeover_before_own_lease_is_steady(pg_db: str) -> None:
    """After a database outage all leases have lapsed: the first node back
    must wait one ttl (others may renew meanwhile) before taking over."""
    a = LeaseKeeper(PgBackend(pg_db, "a"), ttl=30)
    b = LeaseKeeper(PgBackend(pg_db, "b"), ttl=30)
    a.register()
    b.register()
    store(a.backend)
    with psycopg.connect(pg_db, autocommit=True) as conn:
        conn.execute("UPDATE pysmtpd_node SET expires = now() - interval '1 second',"
                     " since = now() - interval '1 hour'")
    b.renew()  # b's lease had lapsed too: a new unbroken period starts now
    took = b.tick()
    assert took is not None and took.evpids == ()
    assert a.tick() is not None  # a renews in time and keeps its envelopes
    assert list(a.backend.list(Kind.ENVELOPE)) == EVP


def test_concurrent_takeovers_split_nothing(pg_db: str) -> None:
    a = LeaseKeeper(PgBackend(pg_db, "a"), ttl=30)
    a.register()
    store(a.backend)
    keepers = [LeaseKeeper(PgBackend(pg_db, f"n{i}"), ttl=30) for i in range(4)]
    for k in keepers:
        k.register()
    expire(pg_db, "a")
    results: list[tuple[int, ...]] = []
    barrier = threading.Barrier(len(keepers))

    def run(k: LeaseKeeper) -> None:
        barrier.wait()
        results.append(k.take_over().evpids)

    threads = [threading.Thread(target=run, args=(k,)) for k in keepers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results, key=len) == [(), (), (), tuple(EVP)]


def test_may_deliver_follows_the_clock() -> None:
    now = [100.0]

    class FakeBackend:
        node = "x"

        def connection(self) -> object:
            raise AssertionError("not used")

    keeper = LeaseKeeper(FakeBackend(), ttl=30, clock=lambda: now[0])  # type: ignore[arg-type]
    assert not keeper.may_deliver()  # never renewed
    keeper._valid_from = 100.0
    now[0] = 114.0
    assert keeper.may_deliver()
    now[0] = 115.5
    assert not keeper.may_deliver()  # half the lease gone without a renewal


def test_unreachable_database_fails_renewal(pg_db: str) -> None:
    keeper = LeaseKeeper(PgBackend(pg_db, "a"), ttl=3)
    keeper.register()
    keeper.backend.conninfo = "host=127.0.0.1 port=1 user=x dbname=x"
    keeper.backend.close()
    assert keeper.renew() is Renewal.FAILED
    assert keeper.tick() is None


def test_one_live_node_per_name(pg_db: str) -> None:
    first = PgBackend(pg_db, "same", exclusive=True)
    with pytest.raises(NodeNameInUse, match="in use by another running node"):
        PgBackend(pg_db, "same", exclusive=True)
    first.close()  # the holder's connection ends (as when it is killed)
    # the server ends the old session asynchronously: the name frees soon after
    claim(pg_db, "same").close()
