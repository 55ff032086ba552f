"""The ``fs`` queue backend: blobs as files in upstream's spool layout.

It stores whatever bytes the front gives it (gzip, encrypted or plain) and
never interprets them. Every ``put`` and ``delete`` is durable when it
returns (spool.py). ``list`` walks one directory at a time in id order, so a
walk sees a fresh listing of each directory when it reaches it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from smtpd.queue.blob import BlobNotFound, BlobSource, Kind, SpoolFile, iter_source
from smtpd.queue.spool import (
    fsync_dir,
    install_durable,
    make_dir_durable,
    prepare_spool,
    rmdir_if_empty,
    sync_files,
    unlink_durable,
    write_durable,
    write_file,
    write_temp,
)

_BUCKET_RE = re.compile(r"[0-9a-f]{2}")
_MSGID_RE = re.compile(r"[0-9a-f]{8}")
_EVPID_RE = re.compile(r"[0-9a-f]{16}")
_MSG_KINDS = (Kind.MESSAGE, Kind.CORRUPT_MESSAGE, Kind.CORRUPT_REASON)
_FILE_NAMES = {
    Kind.MESSAGE: "message",
    Kind.CORRUPT_MESSAGE: "message",
    Kind.CORRUPT_REASON: "reason",
}


def _sorted_names(path: Path, pattern: re.Pattern[str]) -> list[str]:
    try:
        names = os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []
    # Lower-case fixed-width hex sorts as the numbers do.
    return sorted(n for n in names if pattern.fullmatch(n))


class FsBackend:
    """Opaque blobs under ``root`` (the spool directory)."""

    name = "fs"

    def __init__(self, root: Path, *, create: bool = True) -> None:
        """``create=False`` for offline readers (smtpctl): no directory is made."""
        self.root = Path(root)
        if create:
            prepare_spool(self.root)
        elif not (self.root / "queue").is_dir():
            raise FileNotFoundError(f"{self.root}: not a spool (no queue/ directory)")
        self._queue = self.root / "queue"
        self._corrupt = self.root / "corrupt"
        # put() writes here first; QueueFront.recover() clears what a crash left.
        self._tmp = self.root / "temporary"
        self._device = self._queue.stat().st_dev  # what can_adopt() may rename from

    # --- paths ------------------------------------------------------------

    def _msg_dir(self, kind: Kind, msgid: int) -> Path:
        if not 0 < msgid <= 0xFFFFFFFF:
            raise ValueError(f"invalid msgid {msgid:#x}")
        if kind in (Kind.MESSAGE, Kind.ENVELOPE):
            return self._queue / f"{msgid >> 24:02x}" / f"{msgid:08x}"
        return self._corrupt / f"{msgid:08x}"

    def path(self, kind: Kind, oid: int) -> Path:
        """Where a blob lives (for tests and offline tools)."""
        if kind is Kind.KEYCHECK:
            if oid != 0:
                raise ValueError("keycheck id must be 0")
            return self._queue / "keycheck"
        if kind in _MSG_KINDS:
            return self._msg_dir(kind, oid) / _FILE_NAMES[kind]
        if not 0 < oid <= 0xFFFFFFFFFFFFFFFF or oid & 0xFFFFFFFF == 0:
            raise ValueError(f"invalid evpid {oid:#x}")
        return self._msg_dir(kind, oid >> 32) / f"{oid:016x}"

    # --- the blob API -----------------------------------------------------

    def put(self, kind: Kind, oid: int, data: BlobSource) -> int:
        target = self.path(kind, oid)
        return write_durable(target, iter_source(data), self._tmp, self.root)

    def put_many(self, items: Iterable[tuple[Kind, int, BlobSource]]) -> list[int]:
        """Several puts, durable together when it returns, with one fsync per
        directory instead of one per file. Not atomic as a group."""
        moves: list[tuple[Path, Path]] = []
        sizes: list[int] = []
        try:
            for kind, oid, data in items:
                target = self.path(kind, oid)
                tmp, size = write_temp(iter_source(data), self._tmp, sync=False)
                moves.append((tmp, target))
                sizes.append(size)
            sync_files(tmp for tmp, _target in moves)
        except BaseException:
            for tmp, _target in moves:
                tmp.unlink(missing_ok=True)
            raise
        install_durable(moves, self.root)
        return sizes

    def adopt_many(self, staged: Sequence[tuple[int, Path, list[tuple[Kind, int, BlobSource]]]]
                   ) -> None:
        """Commit whole messages by renaming their directory into the queue,
        as upstream's queue_fs_message_commit: no directory is made per
        message (but a new bucket), no file is copied or renamed one by one.

        Each (msgid, directory, items): `directory` is on the spool's
        filesystem and not in the queue (incoming/<msgid>); the items are the
        message's blobs.  A SpoolFile already in it under its layout name
        (the received message) stays; the others are written into it.  Then
        every file and the directory are fsynced, the directory becomes
        queue/<bb>/<msgid> and each bucket is fsynced.  Durable when it
        returns.  On error it raises, and no message of the batch is left in
        the queue (the caller rolls the directories back)."""
        written: list[Path] = []
        replaced: list[tuple[Path, Path]] = []
        for msgid, directory, items in staged:
            for kind, oid, data in items:
                if kind not in (Kind.MESSAGE, Kind.ENVELOPE) or (oid >> 32 if kind is
                                                               Kind.ENVELOPE else oid) != msgid:
                    raise ValueError(f"{kind} {oid:x} is not a blob of message {msgid:08x}")
                name = self.path(kind, oid).name
                if isinstance(data, SpoolFile) and data.path == directory / name:
                    written.append(data.path)
                    continue
                # a name not taken yet: the received message may still sit at `name`
                path = directory / (name + ".new" if kind is Kind.MESSAGE else name)
                write_file(path, iter_source(data))
                written.append(path)
                if kind is Kind.MESSAGE:
                    replaced.append((path, directory / name))
        sync_files(written)
        for new, final in replaced:
            os.rename(new, final)
        moves = [(directory, self._msg_dir(Kind.MESSAGE, msgid)) for msgid, directory, _ in staged]
        for directory, _target in moves:
            fsync_dir(directory)
        for _directory, target in moves:
            make_dir_durable(target.parent, self._queue)
        done: list[Path] = []
        try:
            for directory, target in moves:
                os.rename(directory, target)
                done.append(target)
            for bucket in dict.fromkeys(target.parent for _d, target in moves):
                fsync_dir(bucket)
        except BaseException:
            for target in done:  # never acknowledged: out of the queue again
                shutil.rmtree(target, ignore_errors=True)
            raise

    def can_adopt(self, directory: Path) -> bool:
        """Whether adopt_many can rename directories from `directory` (the
        front's incoming/) into the queue: the same filesystem."""
        return self._same_filesystem(directory)

    def _same_filesystem(self, path: Path) -> bool:
        try:
            return path.stat().st_dev == self._device
        except FileNotFoundError:
            return False  # iter_source() then says it is missing

    def get(self, kind: Kind, oid: int) -> BinaryIO:
        try:
            return open(self.path(kind, oid), "rb")  # the caller closes it
        except (FileNotFoundError, NotADirectoryError):
            raise BlobNotFound(kind, oid) from None

    def delete(self, kind: Kind, oid: int) -> bool:
        target = self.path(kind, oid)
        gone = unlink_durable(target)
        if gone and kind is not Kind.KEYCHECK:
            rmdir_if_empty(target.parent)
        return gone

    def delete_many(self, items: Iterable[tuple[Kind, int]]) -> list[bool]:
        """Unlink every file, remove the message directories this emptied,
        then fsync each directory that changed once: the directory itself if
        it stays, else its bucket (a durable rmdir implies its entries are
        gone).  A batch of deliveries shares the journal commit that the
        first fsync forces, as put_many does for commits."""
        gone: list[bool] = []
        emptied: dict[Path, bool] = {}  # directory -> may be removed when empty
        for kind, oid in items:
            target = self.path(kind, oid)
            try:
                os.unlink(target)
            except FileNotFoundError:
                gone.append(False)
                continue
            gone.append(True)
            emptied[target.parent] = emptied.get(target.parent, False) or kind is not Kind.KEYCHECK
        to_sync: dict[Path, None] = {}
        for directory, removable in emptied.items():
            if removable and rmdir_if_empty(directory):
                to_sync[directory.parent] = None
            else:
                to_sync[directory] = None
        for directory in to_sync:
            fsync_dir(directory)
        return gone

    def sweep(self) -> int:
        """delete() unlinks, then removes the directory: a crash in between
        leaves an empty queue/<bb>/<msgid>/ that no listing would visit."""
        removed = 0
        for bucket in _sorted_names(self._queue, _BUCKET_RE):
            for name in _sorted_names(self._queue / bucket, _MSGID_RE):
                mdir = self._queue / bucket / name
                try:
                    if not any(mdir.iterdir()):
                        rmdir_if_empty(mdir)
                        removed += 1
                except OSError:
                    continue  # not ours to clean (permissions): leave it, harmless
            with contextlib.suppress(OSError):
                rmdir_if_empty(self._queue / bucket)
        return removed

    def list(
        self, kind: Kind, *, after: int = -1, below: int | None = None
    ) -> Iterator[int]:
        """Ids of ``kind`` with after < id < below, ascending, lazily."""
        if kind is Kind.KEYCHECK:
            if after < 0 and (below is None or below > 0) and self.path(kind, 0).is_file():
                yield 0
            return
        per_evp = kind in (Kind.ENVELOPE, Kind.CORRUPT_ENVELOPE)
        start = max(after, 0) >> 32 if per_evp else max(after, 0)
        stop = None if below is None else ((below - 1) >> 32 if per_evp else below - 1)
        for msgid, mdir in self._msg_dirs(kind, start, stop):
            if per_evp:
                for name in _sorted_names(mdir, _EVPID_RE):
                    evpid = int(name, 16)
                    if below is not None and evpid >= below:
                        return
                    if evpid > after and evpid >> 32 == msgid and evpid & 0xFFFFFFFF:
                        yield evpid
            elif msgid > after and (mdir / _FILE_NAMES[kind]).is_file():
                yield msgid

    def _msg_dirs(self, kind: Kind, start: int, stop: int | None) -> Iterator[tuple[int, Path]]:
        """Message directories with start <= msgid <= stop, ascending."""
        if (stop is not None and stop < start) or start > 0xFFFFFFFF:
            return
        top = self._queue if kind in (Kind.MESSAGE, Kind.ENVELOPE) else self._corrupt
        bucketed = top is self._queue
        if start:
            # Fast path for one message (message_envelopes, envelope_delete):
            # its directory first, without listing a bucket of thousands.
            first = self._msg_dir(kind, start)
            if first.is_dir():
                yield start, first
            if stop is not None and stop <= start:
                return
        if not bucketed:
            for name in _sorted_names(top, _MSGID_RE):
                msgid = int(name, 16)
                if msgid > start and (stop is None or msgid <= stop):
                    yield msgid, top / name
            return
        for bucket in _sorted_names(top, _BUCKET_RE):
            b = int(bucket, 16)
            if b < start >> 24:
                continue
            if stop is not None and b > stop >> 24:
                return
            for name in _sorted_names(top / bucket, _MSGID_RE):
                msgid = int(name, 16)
                if stop is not None and msgid > stop:
                    return
                if msgid > start and msgid >> 24 == b:
                    yield msgid, top / bucket / name
