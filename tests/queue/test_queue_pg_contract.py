"""The queue backend contract on PostgreSQL, plus what only a shared store has:
owner fencing and ciphertext-only rows (issue 14)."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from smtpd.queue.backend import QueueBackend
from smtpd.queue.blob import Kind
from smtpd.queue.envelope import DeliveryType, Envelope
from smtpd.queue.front import QueueFront
from smtpd.queue.pg import PgBackend, PgStoreError
from tests.queue import test_queue_backend_contract as contract
from tests.servers import pg_db, pg_server

__all__ = ["pg_db", "pg_server"]

# every contract test, run here against the fixture below
for _name in dir(contract):
    if _name.startswith("test_"):
        globals()[_name] = getattr(contract, _name)


@pytest.fixture
def backend(pg_db: str) -> QueueBackend:
    return PgBackend(pg_db, "node-a")


def test_ids_order_across_the_sign_bit(pg_db: str) -> None:
    b = PgBackend(pg_db, "n")
    ids = [1, 0x7FFFFFFF_FFFFFFFF, 0x80000000_00000000, 0xFFFFFFFF_FFFFFFFF]
    for oid in reversed(ids):
        b.put(Kind.ENVELOPE, oid, b"x")
    assert list(b.list(Kind.ENVELOPE)) == ids
    assert list(b.list(Kind.ENVELOPE, after=0x7FFFFFFF_FFFFFFFF)) == ids[2:]
    assert list(b.list(Kind.ENVELOPE, below=0x80000000_00000000)) == ids[:2]


def test_list_pages_without_duplicates(pg_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("smtpd.queue.pg.LIST_PAGE", 3)
    b = PgBackend(pg_db, "n")
    b.put_many([(Kind.ENVELOPE, (5 << 32) | i, b"e") for i in range(1, 11)])
    seen = []
    for oid in b.list(Kind.ENVELOPE):
        seen.append(oid)
        if len(seen) == 4:
            b.delete(Kind.ENVELOPE, (5 << 32) | 9)
            b.put(Kind.ENVELOPE, (5 << 32) | 20, b"new")
    assert seen == sorted(set(seen))
    assert (5 << 32) | 9 not in seen and (5 << 32) | 20 in seen


def test_nodes_see_only_their_rows_and_writes_are_fenced(pg_db: str) -> None:
    a, b = PgBackend(pg_db, "a"), PgBackend(pg_db, "b")
    a.put(Kind.MESSAGE, 7, b"mine")
    assert list(b.list(Kind.MESSAGE)) == []
    with pytest.raises(KeyError):
        b.get(Kind.MESSAGE, 7)
    with pytest.raises(PgStoreError, match="another node"):
        b.put(Kind.MESSAGE, 7, b"theirs")
    assert b.delete(Kind.MESSAGE, 7) is False
    # a fenced row fails the whole batch: nothing of it is stored
    with pytest.raises(PgStoreError):
        b.put_many([(Kind.ENVELOPE, (7 << 32) | 1, b"e"), (Kind.MESSAGE, 7, b"x")])
    assert list(b.list(Kind.ENVELOPE)) == []
    with a.get(Kind.MESSAGE, 7) as f:
        assert f.read() == b"mine"
    # the spool key check is shared by every node
    a.put(Kind.KEYCHECK, 0, b"k")
    with b.get(Kind.KEYCHECK, 0) as f:
        assert f.read() == b"k"


def test_database_outage_is_an_oserror(tmp_path: Path) -> None:
    from tests.servers import free_port
    with pytest.raises(OSError):
        PgBackend(f"host=127.0.0.1 port={free_port()} user=x dbname=x", "a", connect_timeout=1)


def test_database_never_sees_plaintext_with_encryption(pg_db: str, tmp_path: Path) -> None:
    front = QueueFront(PgBackend(pg_db, "a"), spool=tmp_path / "spool",
                       encryption_key="0123456789abcdef0123456789abcdef", kdf_n=2**14)
    msgid = front.message_create()
    with open(front.message_fd(msgid), "wb") as f:
        f.write(b"Subject: SECRET-SUBJECT\r\n\r\nSECRET-BODY\r\n")
    front.envelope_create(msgid, Envelope(
        evpid=0, type=DeliveryType.MDA, dispatcher="local", sender="secret-sender@example.org",
        rcpt="secret-rcpt@example.org", dest="secret-rcpt@example.org", ctime=1, ttl=10))
    envs = front.message_commit(msgid)
    with front.message_open(msgid) as m:
        assert b"SECRET-BODY" in m.read()
    assert front.envelope_load(envs[0].evpid).sender == "secret-sender@example.org"
    with psycopg.connect(pg_db) as conn:
        rows = conn.execute("SELECT kind, data FROM pysmtpd_blob").fetchall()
    kinds = {row[0] for row in rows}
    assert {"message", "envelope", "keycheck"} <= kinds
    for _kind, data in rows:
        for word in (b"SECRET", b"secret", b"example.org", b"Subject"):
            assert word not in data
