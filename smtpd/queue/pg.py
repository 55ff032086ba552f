"""The ``postgres`` queue backend: opaque blobs in a shared PostgreSQL database.

Several nodes share one database (docs/scale-out.md).  Each blob row has an
``owner``, the node that stores it; a node only lists, reads, replaces and
deletes its own rows.  Ownership moves only by lease takeover (lease.py):
when a node stops renewing its lease, another node re-owns its rows in one
transaction and schedules its envelopes.

Fencing: a replace or delete is conditional on ``owner = me``, so a node
that lost its lease (paused, partitioned) cannot overwrite what the new
owner now delivers; its write fails as a storage error (OSError) and the
queue process tempfails instead of delivering.  Reads are owner-filtered
too, so such a node finds its messages gone and never hands them to an MDA.

The database sees only what the queue front gives it: with ``queue
encryption`` that is ciphertext (tests check the rows).  Ids are unsigned
64-bit; they are stored offset by 2**63 in a signed ``bigint`` so that SQL
order is id order.  ``put_many`` is one transaction: one commit (one WAL
flush) for a group commit.  Database errors surface as ``PgStoreError``, an
OSError, which the front and the queue process already treat as "storage
unavailable, tempfail".
"""

from __future__ import annotations

import errno
import io
from collections.abc import Iterable, Iterator
from typing import BinaryIO

import psycopg

from smtpd.queue.blob import BlobNotFound, BlobSource, Kind, iter_source

OFFSET = 1 << 63
LIST_PAGE = 1000
SHARED = ""  # owner of the spool-wide KEYCHECK blob
# serializes schema creation and takeovers among nodes (pg_advisory_xact_lock)
LOCK_SCHEMA = 0x70797371_0001
LOCK_TAKEOVER = 0x70797371_0002
LOCK_NODE_CLASS = 0x7079  # pg_advisory_lock(class, hashtext(node)): one live node per name

SCHEMA = """
CREATE TABLE IF NOT EXISTS pysmtpd_blob (
    kind  text   NOT NULL,
    oid   bigint NOT NULL,
    owner text   NOT NULL,
    data  bytea  NOT NULL,
    PRIMARY KEY (kind, oid)
);
CREATE INDEX IF NOT EXISTS pysmtpd_blob_owner ON pysmtpd_blob (owner, kind, oid);
CREATE TABLE IF NOT EXISTS pysmtpd_node (
    name    text        PRIMARY KEY,
    since   timestamptz NOT NULL,  -- start of the current unbroken lease
    expires timestamptz NOT NULL
);
"""


class NodeNameInUse(OSError):
    """Another running node holds this node name (two nodes, one name, would
    both deliver the same envelopes)."""


class PgStoreError(OSError):
    """The database is unreachable or refused a statement, or a write was
    fenced off (another node owns the row now)."""

    def __init__(self, text: str) -> None:
        super().__init__(errno.EIO, text)


def _db(oid: int) -> int:
    return oid - OFFSET


def _owner(node: str, kind: Kind) -> str:
    return SHARED if kind is Kind.KEYCHECK else node


class PgBackend:
    name = "postgres"

    def __init__(self, conninfo: str, node: str, *, connect_timeout: int = 5,
                 statement_timeout_ms: int = 30000, exclusive: bool = False) -> None:
        """``exclusive``: hold a session advisory lock on the node name on
        every connection (the queue process does; NodeNameInUse if another
        live node has it).  PostgreSQL drops it when the holder's connection
        ends, so a node killed with SIGKILL frees its name at once."""
        if not node:
            raise ValueError("a postgres queue needs a node name")
        self.conninfo = conninfo
        self.node = node
        self.connect_timeout = connect_timeout
        self.statement_timeout_ms = statement_timeout_ms
        self.exclusive = exclusive
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None
        with self.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_SCHEMA,))
            conn.execute(SCHEMA)

    # -- connection ------------------------------------------------------------

    def connection(self) -> _Conn:
        """The connection, (re)connected on demand; errors become PgStoreError
        and drop the connection so the next call reconnects."""
        return _Conn(self)

    def _connect(self) -> psycopg.Connection[tuple[object, ...]]:
        if self._conn is None or self._conn.closed:
            try:
                self._conn = psycopg.connect(
                    self.conninfo, autocommit=True, connect_timeout=self.connect_timeout,
                    options=f"-c statement_timeout={self.statement_timeout_ms}")
            except psycopg.Error as exc:
                raise PgStoreError(f"queue database: {exc}") from None
            if self.exclusive:
                self._lock_name(self._conn)
        return self._conn

    def _lock_name(self, conn: psycopg.Connection[tuple[object, ...]]) -> None:
        try:
            row = conn.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))",
                               (LOCK_NODE_CLASS, self.node)).fetchone()
        except psycopg.Error as exc:
            self._drop()
            raise PgStoreError(f"queue database: {exc}") from None
        if row is None or row[0] is not True:
            self._drop()
            raise NodeNameInUse(errno.EADDRINUSE, f"queue node name {self.node!r} is in use by "
                                "another running node: give each node its own `queue node`")

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def close(self) -> None:
        self._drop()

    # -- the QueueBackend contract -----------------------------------------------

    def put(self, kind: Kind, oid: int, data: BlobSource) -> int:
        return self.put_many([(kind, oid, data)])[0]

    def put_many(self, items: Iterable[tuple[Kind, int, BlobSource]]) -> list[int]:
        sizes: list[int] = []
        with self.connection() as conn, conn.transaction():
            for kind, oid, data in items:
                blob = b"".join(iter_source(data))
                owner = _owner(self.node, kind)
                cur = conn.execute(
                    "INSERT INTO pysmtpd_blob (kind, oid, owner, data) VALUES (%s, %s, %s, %s)"
                    " ON CONFLICT (kind, oid) DO UPDATE SET data = EXCLUDED.data"
                    " WHERE pysmtpd_blob.owner = EXCLUDED.owner",
                    (kind.value, _db(oid), owner, blob))
                if cur.rowcount != 1:
                    # the transaction rolls back: none of the batch is stored
                    raise PgStoreError(f"{kind} {oid:x}: owned by another node (lease lost)")
                sizes.append(len(blob))
        return sizes

    def get(self, kind: Kind, oid: int) -> BinaryIO:
        with self.connection() as conn:
            row = conn.execute(
                "SELECT data FROM pysmtpd_blob WHERE kind = %s AND oid = %s AND owner = %s",
                (kind.value, _db(oid), _owner(self.node, kind))).fetchone()
        if row is None:
            raise BlobNotFound(kind, oid)
        data = row[0]
        assert isinstance(data, bytes)
        return io.BytesIO(data)

    def delete(self, kind: Kind, oid: int) -> bool:
        return self.delete_many([(kind, oid)])[0]

    def delete_many(self, items: Iterable[tuple[Kind, int]]) -> list[bool]:
        gone: list[bool] = []
        with self.connection() as conn, conn.transaction():  # one commit for the batch
            for kind, oid in items:
                cur = conn.execute(
                    "DELETE FROM pysmtpd_blob WHERE kind = %s AND oid = %s AND owner = %s",
                    (kind.value, _db(oid), _owner(self.node, kind)))
                gone.append(cur.rowcount > 0)
        return gone

    def sweep(self) -> int:
        return 0  # a delete is one statement: nothing half-done to clean

    def list(self, kind: Kind, *, after: int = -1, below: int | None = None) -> Iterator[int]:
        # Keyset pages: each page starts after the last id yielded, so an id
        # is never yielded twice and ids present throughout are all seen.
        low = _db(max(after, -1) + 1)  # first id wanted, in database terms
        high = _db(below) if below is not None else OFFSET  # may exceed bigint: numeric
        owner = _owner(self.node, kind)
        while True:
            with self.connection() as conn:
                rows = conn.execute(
                    "SELECT oid FROM pysmtpd_blob WHERE owner = %s AND kind = %s"
                    " AND oid >= %s AND oid < %s ORDER BY oid LIMIT %s",
                    (owner, kind.value, low, high, LIST_PAGE)).fetchall()
            for (value,) in rows:
                assert isinstance(value, int)
                yield value + OFFSET
            if len(rows) < LIST_PAGE:
                return
            last = rows[-1][0]
            assert isinstance(last, int)
            low = last + 1


class _Conn:
    """``with backend.connection() as conn``: psycopg errors -> PgStoreError."""

    def __init__(self, backend: PgBackend) -> None:
        self.backend = backend

    def __enter__(self) -> psycopg.Connection[tuple[object, ...]]:
        return self.backend._connect()

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None,
                 tb: object) -> None:
        if isinstance(exc, psycopg.Error):
            conn = self.backend._conn
            if conn is None or conn.closed or conn.broken or isinstance(
                    exc, psycopg.OperationalError):
                self.backend._drop()
            raise PgStoreError(f"queue database: {type(exc).__name__}: {exc}") from None
