"""The queue backend interface and its registry (DESIGN.md §4, §7).

A backend stores opaque blobs by (kind, id) and nothing else: no parsing,
no compression, no encryption, no caching. With ``queue encryption`` on it
only ever sees ciphertext, so it may live on untrusted storage. The
cross-cutting work is the front's (front.py).

Contract (tests/queue/test_queue_backend_contract.py runs it on every
registered backend):

* ``put(kind, oid, data) -> int``: store ``data`` (bytes, an iterable of
  chunks, or a binary file read to EOF), replacing any previous blob
  atomically; durable when it returns. Returns the size stored.
* ``put_many([(kind, oid, data), ...]) -> list[int]``: several puts, all
  durable when it returns (the fs backend fsyncs each directory once, not
  once per file); not atomic as a group.
* ``get(kind, oid) -> BinaryIO``: a readable stream of the blob (caller
  closes); ``BlobNotFound`` if missing.
* ``delete(kind, oid) -> bool``: durable removal; False if it was missing.
* ``delete_many([(kind, oid), ...]) -> list[bool]``: several deletes, all
  durable when it returns (the fs backend fsyncs each directory once).
* ``list(kind, *, after=-1, below=None) -> Iterator[int]``: the ids of
  ``kind`` with after < id < below in ascending order (``below`` lets a
  caller list one message's envelopes cheaply). Changing the store while
  iterating is allowed: no id is yielded twice, and ids present throughout
  are yielded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from smtpd.queue.blob import BlobNotFound, BlobSource, Kind
from smtpd.queue.fs import FsBackend
from smtpd.queue.ram import RamBackend

__all__ = ["BACKENDS", "BlobNotFound", "BlobSource", "Kind", "QueueBackend", "make_backend"]


class QueueBackend(Protocol):
    name: str

    def put(self, kind: Kind, oid: int, data: BlobSource) -> int: ...

    def put_many(self, items: Iterable[tuple[Kind, int, BlobSource]]) -> list[int]: ...

    def get(self, kind: Kind, oid: int) -> BinaryIO: ...

    def delete(self, kind: Kind, oid: int) -> bool: ...

    def delete_many(self, items: Iterable[tuple[Kind, int]]) -> list[bool]: ...

    def sweep(self) -> int:
        """Remove what an interrupted delete left behind (empty message
        directories); called by recover() at start.  Returns how many."""
        ...

    def list(
        self, kind: Kind, *, after: int = -1, below: int | None = None
    ) -> Iterator[int]: ...


# ``queue backend NAME`` -> class; each is constructed with the spool path.
BACKENDS: dict[str, Callable[[Path], QueueBackend]] = {"fs": FsBackend, "ram": RamBackend}


def make_backend(name: str, spool: Path) -> QueueBackend:
    try:
        factory = BACKENDS[name]
    except KeyError:
        raise ValueError(
            f"unknown queue backend {name!r} (known: {', '.join(sorted(BACKENDS))})"
        ) from None
    return factory(spool)
