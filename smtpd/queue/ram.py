"""The ``ram`` queue backend: blobs in a dict, for tests and throwaway queues."""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from smtpd.queue.blob import BlobNotFound, BlobSource, Kind, iter_source


class RamBackend:
    name = "ram"

    def __init__(self, root: Path | None = None) -> None:
        """``root`` is accepted for the registry's uniform call and ignored."""
        self._blobs: dict[tuple[Kind, int], bytes] = {}

    def put(self, kind: Kind, oid: int, data: BlobSource) -> int:
        blob = b"".join(iter_source(data))
        self._blobs[kind, oid] = blob  # one assignment: atomic replace
        return len(blob)

    def sweep(self) -> int:
        return 0  # deletes are atomic in memory

    def put_many(self, items: Iterable[tuple[Kind, int, BlobSource]]) -> list[int]:
        return [self.put(kind, oid, data) for kind, oid, data in items]

    def get(self, kind: Kind, oid: int) -> BinaryIO:
        try:
            return io.BytesIO(self._blobs[kind, oid])
        except KeyError:
            raise BlobNotFound(kind, oid) from None

    def delete(self, kind: Kind, oid: int) -> bool:
        return self._blobs.pop((kind, oid), None) is not None

    def delete_many(self, items: Iterable[tuple[Kind, int]]) -> list[bool]:
        return [self.delete(kind, oid) for kind, oid in items]

    def list(
        self, kind: Kind, *, after: int = -1, below: int | None = None
    ) -> Iterator[int]:
        # A sorted snapshot: safe against changes during iteration.
        ids = sorted(
            oid for k, oid in self._blobs
            if k is kind and oid > after and (below is None or oid < below)
        )
        yield from ids
