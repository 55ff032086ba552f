"""The queue front: everything between the queue process and a blob backend.

On write: serialize -> compress -> encrypt -> backend; on read the reverse
(DESIGN.md §4). It also owns the incoming/ area where the smtp process
streams a message being received, the envelope cache, crash recovery and
the spool walk.

Commit protocol (crash safety without multi-blob transactions): the
envelopes of a message are put first and the message blob last; the message
blob is the commit point. ``recover()`` at start-up removes what a crash can
leave: incoming/ leftovers, envelopes without a message (a commit cut short,
never acknowledged) and messages without envelopes (a removal cut short).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import io
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from smtpd.compress.gz import CompressError
from smtpd.crypto.kdf import (
    SCRYPT_N,
    KdfParams,
    KeyError_,
    MasterKey,
    derive_master_key,
    dump_keycheck,
    load_keycheck,
)
from smtpd.crypto.stream import DecryptError, UnknownKeyError
from smtpd.queue import codec
from smtpd.queue.backend import QueueBackend
from smtpd.queue.blob import (
    READ_CHUNK,
    BlobNotFound,
    BlobSource,
    Kind,
    SpoolFile,
    chunk_stream,
    iter_source,
)
from smtpd.queue.cache import EnvelopeCache
from smtpd.queue.envelope import (
    MAX_ENVELOPE_SIZE,
    Envelope,
    EnvelopeError,
    dump_envelope,
    load_envelope,
)
from smtpd.queue.errors import KeyUnavailable, NotFound, QueueCorrupt, QueueError, WrongKey
from smtpd.queue.ids import check_msgid, evpid_to_msgid, new_evpid, new_msgid
from smtpd.queue.spool import DIR_MODE, FILE_MODE, clear_dir, prepare_spool, remove_tree

log = logging.getLogger("smtpd.queue")

_DECODE_ERRORS = (DecryptError, CompressError)


OnCorrupt = Callable[[QueueCorrupt | KeyUnavailable], None]


@dataclass(frozen=True, slots=True)
class RecoverReport:
    incoming: int  # incoming messages removed (never acknowledged)
    orphan_envelopes: int  # envelopes of a commit cut short
    orphan_messages: int  # messages whose last envelope was already removed


def _decode_error(kind: Kind, oid: int, exc: Exception) -> QueueError:
    if isinstance(exc, UnknownKeyError):
        return KeyUnavailable(kind, oid, str(exc))
    return QueueCorrupt(kind, oid, str(exc))


def _guard(kind: Kind, oid: int, chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Turn decode errors found mid-stream into a QueueCorrupt naming the object."""
    try:
        yield from chunks
    except _DECODE_ERRORS as exc:
        raise _decode_error(kind, oid, exc) from None


@dataclass(slots=True)
class CommitBatch:
    """A group commit between its steps (QueueFront.commit_prepare)."""

    staged: list[tuple[int, Path, list[tuple[Kind, int, BlobSource]]]] = field(
        default_factory=list)
    envelopes: list[tuple[int, list[Envelope]]] = field(default_factory=list)
    failed: list[tuple[int, list[Envelope] | Exception]] = field(default_factory=list)
    sources: list[BinaryIO] = field(default_factory=list)  # encoded messages read from

    @property
    def msgids(self) -> list[int]:
        return [msgid for msgid, _envs in self.envelopes]

    def close(self) -> None:
        while self.sources:
            self.sources.pop().close()


def _plain_file_fd(raw: BinaryIO) -> int | None:
    """A read-only duplicate of a stored blob's fd when the blob is a file
    opened read-only and holds plaintext (neither encrypted nor gzip)."""
    try:
        fileno = raw.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        return None  # not a file (ram, pg): the caller copies
    if fcntl.fcntl(fileno, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDONLY:
        return None
    if not codec.is_plain(os.pread(fileno, 2, 0)):
        return None
    return os.dup(fileno)  # non-inheritable; the caller's file closes its own


class QueueFront:
    def __init__(
        self,
        backend: QueueBackend,
        *,
        spool: Path,
        compression: bool = False,
        encryption_key: str | None = None,
        old_keys: Sequence[str] = (),
        cache_size: int = 1024,
        kdf_n: int = SCRYPT_N,
        readonly: bool = False,
    ) -> None:
        """``spool`` holds incoming/ and temporary/ (for ``fs`` it is also the
        backend's root). ``old_keys`` are accepted for reading only (key
        rotation; ``rewrite_all`` then re-encrypts with ``encryption_key``).
        ``kdf_n`` is the scrypt cost used when a new spool key file is made.
        Raises WrongKey when no given key is the spool's. ``readonly`` is for
        offline readers (smtpctl show envelope/message with a key): nothing
        in the spool is created or written (use only the reading methods)."""
        self.backend = backend
        self.spool = Path(spool)
        self.readonly = readonly
        if not readonly:
            prepare_spool(self.spool)
        self._incoming = self.spool / "incoming"
        self._temporary = self.spool / "temporary"
        self._purge = self.spool / "purge"
        # Commit by renaming incoming/<msgid>/ into the queue when the backend
        # can (fs, on the same filesystem as our incoming/).
        can_adopt = getattr(backend, "can_adopt", None)
        self._adopt: Callable[[list[tuple[int, Path, list[tuple[Kind, int, BlobSource]]]]],
                              None] | None = (
            backend.adopt_many  # type: ignore[attr-defined]
            if not readonly and can_adopt is not None and can_adopt(self._incoming) else None)
        self.compression = compression
        self._cache = EnvelopeCache(cache_size)
        self._pending: dict[int, list[Envelope]] = {}
        self._master: MasterKey | None = None
        self._keys: dict[bytes, MasterKey] = {}
        self._kdf_params: KdfParams | None = None
        if encryption_key is not None or old_keys:
            self._setup_keys(encryption_key, old_keys, kdf_n)

    # --- keys ---------------------------------------------------------------

    def _setup_keys(self, key: str | None, old_keys: Sequence[str], kdf_n: int) -> None:
        try:
            with self.backend.get(Kind.KEYCHECK, 0) as f:
                params, spool_key_id = load_keycheck(f.read(4096))
            fresh = False
        except BlobNotFound:
            params, spool_key_id, fresh = KdfParams.new(kdf_n), None, True
        except KeyError_ as exc:
            raise WrongKey(str(exc)) from None
        passphrases = ([key] if key is not None else []) + list(old_keys)
        try:
            masters = [derive_master_key(p, params) for p in passphrases]
        except KeyError_ as exc:
            raise WrongKey(str(exc)) from None
        self._keys = {m.key_id: m for m in masters}
        if spool_key_id is not None and spool_key_id not in self._keys:
            raise WrongKey(
                "the queue encryption key does not match the spool's "
                f"(key id {spool_key_id.hex()}); give the old one with old-key to rotate"
            )
        self._kdf_params = params
        if key is not None:
            self._master = masters[0]
            if (fresh or spool_key_id != self._master.key_id) and not self.readonly:
                # The spool is now written with this key (rotation or first use).
                self.backend.put(Kind.KEYCHECK, 0, dump_keycheck(params, self._master.key_id))

    @property
    def encryption(self) -> bool:
        return self._master is not None

    # --- encode / decode ----------------------------------------------------

    def _encode(self, kind: Kind, oid: int, chunks: Iterable[bytes]) -> Iterator[bytes]:
        return codec.encode(
            chunks, compression=self.compression, master=self._master, aad=codec.label(kind, oid)
        )

    def _decode(self, kind: Kind, oid: int, raw: Iterable[bytes]) -> Iterator[bytes]:
        try:
            chunks = codec.decode(raw, keys=self._keys, aad=codec.label(kind, oid))
        except _DECODE_ERRORS as exc:
            raise _decode_error(kind, oid, exc) from None
        return _guard(kind, oid, chunks)

    def _get(self, kind: Kind, oid: int) -> BinaryIO:
        try:
            return self.backend.get(kind, oid)
        except BlobNotFound:
            raise NotFound(kind, oid) from None

    def _exists(self, kind: Kind, oid: int) -> bool:
        try:
            self.backend.get(kind, oid).close()
        except BlobNotFound:
            return False
        return True

    # --- incoming messages ----------------------------------------------------

    def message_create(self) -> int:
        """A new msgid with an empty incoming/<msgid>/ directory."""
        while True:
            msgid = new_msgid()
            if self._exists(Kind.MESSAGE, msgid):
                continue
            try:
                os.mkdir(self._incoming / f"{msgid:08x}", DIR_MODE)
            except FileExistsError:
                continue
            self._pending[msgid] = []
            return msgid

    def message_path(self, msgid: int) -> Path:
        """Where the message being received is written."""
        return self._incoming / f"{check_msgid(msgid):08x}" / "message"

    def _check_pending(self, msgid: int) -> list[Envelope]:
        try:
            return self._pending[msgid]
        except KeyError:
            raise NotFound(Kind.MESSAGE, msgid) from None

    def message_fd(self, msgid: int) -> int:
        """A new write-only fd for the incoming message (handed to smtp)."""
        self._check_pending(msgid)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            return os.open(self.message_path(msgid), flags, FILE_MODE)
        except FileExistsError:
            raise QueueError(f"message {msgid:08x}: already opened") from None

    def envelope_create(self, msgid: int, env: Envelope) -> int:
        """Give ``env`` a new evpid of ``msgid``. Held until commit for an
        incoming message; written at once for a committed one (a bounce)."""
        pending = self._pending.get(msgid)
        if pending is None and not self._exists(Kind.MESSAGE, msgid):
            raise NotFound(Kind.MESSAGE, msgid)
        taken = {e.evpid for e in pending or ()}
        while True:
            evpid = new_evpid(msgid)
            if evpid in taken:
                continue
            # A new msgid has no stored envelopes: only a committed one needs a look.
            if pending is not None or not self._exists(Kind.ENVELOPE, evpid):
                break
        env = dataclasses.replace(env, evpid=evpid)
        data = dump_envelope(env)  # EnvelopeError now rather than at commit
        if pending is not None:
            pending.append(env)
        else:
            self.backend.put(Kind.ENVELOPE, evpid, self._encode(Kind.ENVELOPE, evpid, [data]))
            self._cache.put(env)
        return evpid

    def message_commit(self, msgid: int) -> list[Envelope]:
        """Store the message and its envelopes durably; then it may get its 250.

        On a storage error (OSError) nothing is left behind in the store and
        the message stays incoming (roll it back). Returns the committed
        envelopes, evpids assigned, in evpid order (for the scheduler)."""
        ((_msgid, result),) = self.message_commit_many([msgid])
        if isinstance(result, Exception):
            raise result
        return result

    def message_commit_many(
        self, msgids: Sequence[int]
    ) -> list[tuple[int, list[Envelope] | Exception]]:
        """Group commit: several messages made durable together, sharing the
        filesystem's journal commits.

        With the fs backend on the spool's filesystem, each message's
        incoming/<msgid>/ directory receives its envelopes and is renamed
        into the queue whole (FsBackend.adopt_many, upstream's commit): the
        rename is the commit point.  Other backends get one put_many, each
        message's envelopes before its message blob (the commit point), so
        a crash part-way leaves only what recover() drops.  Returns, per
        msgid, its committed envelopes or the error that kept it out (the
        caller rolls those back).  A storage error while installing fails
        every message of the batch: none of them was acknowledged.

        The same in three steps, for a caller that runs the I/O elsewhere:
        `commit_prepare` and `commit_finish` touch this object's state,
        `commit_install` only the backend (see `install_is_threadsafe`)."""
        batch = self.commit_prepare(msgids)
        error: OSError | None = None
        try:
            self.commit_install(batch)
        except OSError as exc:
            error = exc
        return self.commit_finish(batch, error)

    @property
    def install_is_threadsafe(self) -> bool:
        """Whether commit_install may run in another thread than the rest:
        true for the fs backend's directory rename, which works on paths
        only; a database connection is not shared across threads."""
        return self._adopt is not None

    def commit_prepare(self, msgids: Sequence[int]) -> CommitBatch:
        """Check the pending messages and stage what to store (nothing is
        written yet); the ones that cannot be committed get their error."""
        batch = CommitBatch()
        try:
            for msgid in msgids:
                try:
                    envs = self._check_pending(msgid)
                    if not envs:
                        raise QueueError(f"message {msgid:08x}: no envelopes to commit")
                    message = self._message_source(msgid, batch.sources)
                except QueueError as exc:
                    batch.failed.append((msgid, exc))
                    continue
                items: list[tuple[Kind, int, BlobSource]] = [
                    (Kind.ENVELOPE, env.evpid,
                     self._encode(Kind.ENVELOPE, env.evpid, [dump_envelope(env)]))
                    for env in envs]
                items.append((Kind.MESSAGE, msgid, message))
                batch.staged.append((msgid, self._incoming / f"{msgid:08x}", items))
                batch.envelopes.append((msgid, envs))
        except BaseException:
            batch.close()
            raise
        return batch

    def commit_install(self, batch: CommitBatch) -> None:
        """Store the staged messages durably, or raise OSError with none of
        them stored."""
        if batch.staged:
            self._install(batch.staged)

    def commit_finish(self, batch: CommitBatch, error: OSError | None
                      ) -> list[tuple[int, list[Envelope] | Exception]]:
        """After commit_install: the per-message results (see
        message_commit_many); `error` is what commit_install raised."""
        batch.close()
        results: list[tuple[int, list[Envelope] | Exception]] = list(batch.failed)
        if error is not None:
            return results + [(msgid, error) for msgid, _envs in batch.envelopes]
        for msgid, envs in batch.envelopes:
            del self._pending[msgid]
            for env in envs:
                self._cache.put(env)
            if self._adopt is None:
                remove_tree(self._incoming / f"{msgid:08x}", self._purge)
            results.append((msgid, sorted(envs, key=lambda e: e.evpid)))
        return results

    def _install(self, staged: list[tuple[int, Path, list[tuple[Kind, int, BlobSource]]]]
                 ) -> None:
        """Store the staged messages durably, or raise with none of them stored."""
        if self._adopt is not None:
            self._adopt(staged)
            return
        try:
            self.backend.put_many([item for _msgid, _dir, items in staged for item in items])
        except OSError:
            for _msgid, _dir, items in staged:
                for kind, oid, _data in items:
                    with contextlib.suppress(Exception):
                        self.backend.delete(kind, oid)
            raise

    def _message_source(self, msgid: int, opened: list[BinaryIO]) -> BlobSource:
        """What to store for an incoming message: the received file itself
        when it is stored as is (a plain blob is the message: codec.py), else
        its encoding, read from a file appended to ``opened`` (the caller
        closes those)."""
        path = self.message_path(msgid)
        try:
            if not self.compression and self._master is None:
                if not path.is_file():
                    raise FileNotFoundError(path)
                return SpoolFile(path)
            src = open(path, "rb")  # noqa: SIM115 - closed by the caller
        except FileNotFoundError:
            raise QueueError(f"message {msgid:08x}: no message data") from None
        opened.append(src)
        return self._encode(Kind.MESSAGE, msgid, iter_source(src))

    def message_rollback(self, msgid: int) -> None:
        """Forget an incoming message (the transaction failed or was reset)."""
        self._pending.pop(msgid, None)
        remove_tree(self._incoming / f"{check_msgid(msgid):08x}", self._purge)

    # --- committed messages ---------------------------------------------------

    def message_envelopes(self, msgid: int) -> list[int]:
        """The evpids of a committed message, ascending."""
        first = check_msgid(msgid) << 32
        return list(self.backend.list(Kind.ENVELOPE, after=first, below=first + (1 << 32)))

    def message_delete(self, msgid: int) -> None:
        for evpid in self.message_envelopes(msgid):
            self.backend.delete(Kind.ENVELOPE, evpid)
        self._cache.evict_message(msgid)
        self.backend.delete(Kind.MESSAGE, msgid)

    def message_open(self, msgid: int) -> BinaryIO:
        """The plaintext message as a stream, decoded on the fly. A decode error
        raises QueueCorrupt from ``read`` when reached; use
        ``message_fd_for_delivery`` to have it checked in full first."""
        raw = self._get(Kind.MESSAGE, msgid)
        try:
            plain = self._decode(Kind.MESSAGE, msgid, iter_source(raw))
        except BaseException:
            raw.close()
            raise
        return chunk_stream(plain, raw)

    def message_fd_for_delivery(self, msgid: int) -> int:
        """A read-only fd of the whole verified plaintext in an unlinked file.

        Fully decoded (and authenticated) before it is returned, so no MDA
        ever sees part of a tampered message.  A plain blob in a file needs
        no decoding: its own file is handed out, read-only."""
        with self._get(Kind.MESSAGE, msgid) as raw:
            fd = _plain_file_fd(raw)
        if fd is not None:
            return fd
        fd = self._anonymous_file()
        try:
            with self.message_open(msgid) as src:
                while chunk := src.read(READ_CHUNK):
                    _write_all(fd, chunk)
            try:
                ro = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                os.lseek(fd, 0, os.SEEK_SET)
                return fd
            os.close(fd)
            return ro
        except BaseException:
            os.close(fd)
            raise

    def _anonymous_file(self) -> int:
        try:
            return os.open(
                self._temporary, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, FILE_MODE
            )
        except (AttributeError, OSError):
            fd, name = tempfile.mkstemp(prefix="dlv.", dir=self._temporary)
            os.unlink(name)
            return fd

    # --- envelopes --------------------------------------------------------------

    def _read_envelope(self, evpid: int) -> Envelope:
        with self._get(Kind.ENVELOPE, evpid) as raw:
            plain = b""
            for chunk in self._decode(Kind.ENVELOPE, evpid, iter_source(raw)):
                plain += chunk
                if len(plain) > MAX_ENVELOPE_SIZE:
                    raise QueueCorrupt(Kind.ENVELOPE, evpid, "envelope too large")
        try:
            return load_envelope(plain, evpid=evpid)
        except EnvelopeError as exc:
            raise QueueCorrupt(Kind.ENVELOPE, evpid, str(exc)) from None

    def envelope_load(self, evpid: int) -> Envelope:
        """NotFound if missing; QueueCorrupt if unreadable."""
        env = self._cache.get(evpid)
        if env is None:
            env = self._read_envelope(evpid)
            self._cache.put(env)
        return env

    def envelope_update(self, env: Envelope) -> None:
        """Replace a stored envelope (retry count, errorline...)."""
        if env.evpid == 0:
            raise NotFound(Kind.ENVELOPE, 0)
        self._cache.note_update(env.evpid)
        if not self._cache.contains(env.evpid) and not self._exists(Kind.ENVELOPE, env.evpid):
            raise NotFound(Kind.ENVELOPE, env.evpid)  # never resurrect a removed one
        data = dump_envelope(env)
        self.backend.put(Kind.ENVELOPE, env.evpid, self._encode(Kind.ENVELOPE, env.evpid, [data]))
        self._cache.put(env)

    def envelope_delete(self, evpid: int, *, keep_message: bool = False) -> bool:
        """Remove an envelope; unless ``keep_message``, the message goes with
        its last envelope. Returns True when the message was removed too.
        (Create a bounce envelope before removing the one it reports on.)"""
        msgid = evpid_to_msgid(evpid)
        self._cache.evict(evpid)
        if not self.backend.delete(Kind.ENVELOPE, evpid):
            raise NotFound(Kind.ENVELOPE, evpid)
        if keep_message or self.message_envelopes(msgid):
            return False
        self.backend.delete(Kind.MESSAGE, msgid)
        return True

    def envelope_delete_many(self, evpids: list[int]) -> list[bool | NotFound]:
        """`envelope_delete` for several envelopes, durable together: one
        backend batch (the fs backend fsyncs each directory once) removes
        them and every message whose last envelopes they are.  Per evpid:
        True when its message went too, False if not, NotFound if the
        envelope was already gone."""
        evpids = list(dict.fromkeys(evpids))
        by_message: dict[int, list[int]] = {}
        for evpid in evpids:
            self._cache.evict(evpid)
            by_message.setdefault(evpid_to_msgid(evpid), []).append(evpid)
        items: list[tuple[Kind, int]] = [(Kind.ENVELOPE, evpid) for evpid in evpids]
        emptied = [msgid for msgid, batch in by_message.items()
                   if set(self.message_envelopes(msgid)) <= set(batch)]
        items += [(Kind.MESSAGE, msgid) for msgid in emptied]
        gone = self.backend.delete_many(items)
        results: list[bool | NotFound] = []
        for evpid, removed in zip(evpids, gone, strict=False):
            if not removed:
                results.append(NotFound(Kind.ENVELOPE, evpid))
            else:
                results.append(evpid_to_msgid(evpid) in emptied)
        return results

    # --- corruption, recovery, walking -----------------------------------------

    def corrupt(self, msgid: int, reason: str) -> None:
        """Move a message and its envelopes aside to corrupt/, with the reason."""
        log.warning("queue: message %08x moved to corrupt: %s", msgid, reason)
        reason = " ".join(reason.split())  # one line, whatever the error text held
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.backend.put(Kind.CORRUPT_REASON, msgid, f"{stamp} {reason}\n".encode())
        for evpid in self.message_envelopes(msgid):
            with contextlib.suppress(BlobNotFound), self.backend.get(Kind.ENVELOPE, evpid) as src:
                self.backend.put(Kind.CORRUPT_ENVELOPE, evpid, src)
            self.backend.delete(Kind.ENVELOPE, evpid)
        with contextlib.suppress(BlobNotFound), self.backend.get(Kind.MESSAGE, msgid) as src:
            self.backend.put(Kind.CORRUPT_MESSAGE, msgid, src)
        self.backend.delete(Kind.MESSAGE, msgid)
        self._cache.evict_message(msgid)

    def uncorrupt(self, msgid: int) -> list[Envelope]:
        """`smtpctl uncorrupt`: put a message moved aside back into the queue
        (after an administrator repaired it).  Every file is checked first; on
        an error nothing moves.  Returns the envelopes, to be scheduled."""
        first = check_msgid(msgid) << 32
        evpids = list(self.backend.list(Kind.CORRUPT_ENVELOPE, after=first,
                                        below=first + (1 << 32)))
        if not evpids:
            raise NotFound(Kind.CORRUPT_MESSAGE, msgid)
        with self._get(Kind.CORRUPT_MESSAGE, msgid) as raw:
            for _chunk in self._decode(Kind.MESSAGE, msgid, iter_source(raw)):
                pass  # decodes (and authenticates) the whole message, or raises
        envs = []
        for evpid in evpids:
            with self._get(Kind.CORRUPT_ENVELOPE, evpid) as raw:
                plain = b"".join(self._decode(Kind.ENVELOPE, evpid, iter_source(raw)))
            try:
                envs.append(load_envelope(plain, evpid=evpid))
            except EnvelopeError as exc:
                raise QueueCorrupt(Kind.ENVELOPE, evpid, str(exc)) from None
        items: list[tuple[Kind, int, BlobSource]] = []
        for evpid in evpids:
            items.append((Kind.ENVELOPE, evpid, self._get(Kind.CORRUPT_ENVELOPE, evpid)))
        items.append((Kind.MESSAGE, msgid, self._get(Kind.CORRUPT_MESSAGE, msgid)))
        try:
            self.backend.put_many(items)
        finally:
            for _kind, _oid, src in items:
                if hasattr(src, "close"):
                    src.close()
        for evpid in evpids:
            self.backend.delete(Kind.CORRUPT_ENVELOPE, evpid)
        self.backend.delete(Kind.CORRUPT_MESSAGE, msgid)
        self.backend.delete(Kind.CORRUPT_REASON, msgid)
        log.info("queue: message %08x taken back from corrupt", msgid)
        return envs

    def corrupted(self) -> Iterator[tuple[int, str]]:
        """(msgid, reason) of every message moved aside, for smtpctl and logs."""
        for msgid in self.backend.list(Kind.CORRUPT_REASON):
            try:
                with self.backend.get(Kind.CORRUPT_REASON, msgid) as f:
                    reason = f.read(4096).decode("utf-8", "replace").strip()
            except BlobNotFound:
                continue
            yield msgid, reason

    def recover(self) -> RecoverReport:
        """Start-up clean-up after a crash (see the module docstring). Only the
        queue process calls it, before serving: it empties incoming/,
        temporary/ and purge/."""
        self._pending.clear()
        incoming = clear_dir(self._incoming)
        clear_dir(self._purge)
        clear_dir(self._temporary)  # half-written puts (fs) and delivery copies
        self.backend.sweep()  # empty message directories of interrupted deletes
        orphan_envs = orphan_msgs = 0
        # Merge-join the two sorted id streams: constant memory for any spool size.
        messages = self.backend.list(Kind.MESSAGE)
        current_msg = next(messages, None)
        with_envelopes: int | None = None
        for evpid in self.backend.list(Kind.ENVELOPE):
            msgid = evpid >> 32
            while current_msg is not None and current_msg < msgid:
                if current_msg != with_envelopes:
                    self.backend.delete(Kind.MESSAGE, current_msg)
                    orphan_msgs += 1
                current_msg = next(messages, None)
            if current_msg == msgid:
                with_envelopes = msgid
            else:
                self.backend.delete(Kind.ENVELOPE, evpid)
                orphan_envs += 1
        while current_msg is not None:
            if current_msg != with_envelopes:
                self.backend.delete(Kind.MESSAGE, current_msg)
                orphan_msgs += 1
            current_msg = next(messages, None)
        report = RecoverReport(incoming, orphan_envs, orphan_msgs)
        if incoming or orphan_envs or orphan_msgs:
            log.info(
                "queue: recovered: %d incoming, %d orphan envelopes, %d orphan messages removed",
                incoming, orphan_envs, orphan_msgs,
            )
        return report

    def walk(self, on_corrupt: OnCorrupt | None = None) -> Iterator[Envelope]:
        """Every committed envelope exactly once, in evpid order, even while the
        spool changes: the cursor only moves forward (an evpid is never yielded
        twice), the backend lists each directory when it reaches it (every
        envelope present throughout is seen). A message's envelopes are all
        loaded before any is yielded: if one is corrupt, the message moves to
        corrupt/, is reported to ``on_corrupt`` and none of it is yielded. A
        message encrypted with a key we lack (KeyUnavailable) is reported and
        skipped but left in place."""
        cursor = 0
        batch: list[int] = []
        for evpid in self.backend.list(Kind.ENVELOPE):
            if evpid <= cursor:
                continue
            if batch and evpid >> 32 != batch[0] >> 32:
                yield from self._walk_message(batch, on_corrupt)
                batch = []
            batch.append(evpid)
            cursor = evpid
        if batch:
            yield from self._walk_message(batch, on_corrupt)

    def _walk_message(self, evpids: list[int], on_corrupt: OnCorrupt | None) -> list[Envelope]:
        envs = []
        for evpid in evpids:
            try:
                envs.append(self.envelope_load(evpid))
            except NotFound:
                continue  # removed since its directory was listed
            except (QueueCorrupt, KeyUnavailable) as exc:
                if isinstance(exc, QueueCorrupt):
                    self.corrupt(evpid >> 32, str(exc))
                else:
                    log.warning("queue: message %08x skipped: %s", evpid >> 32, exc)
                if on_corrupt is not None:
                    on_corrupt(exc)
                return []
        return envs

    def rewrite_all(self) -> int:
        """Rewrite every message and envelope with the current settings (key
        rotation, turning compression or encryption on or off). Offline use:
        ``smtpd`` stopped, or before the queue process starts serving."""
        count = skipped = 0
        for msgid in list(self.backend.list(Kind.MESSAGE)):
            try:
                # Decoding to a temporary file first: a corrupt message is
                # detected before anything replaces the stored copy.
                with (
                    self.message_open(msgid) as plain,
                    tempfile.TemporaryFile(dir=self._temporary) as tmp,
                ):
                    while chunk := plain.read(READ_CHUNK):
                        tmp.write(chunk)
                    tmp.seek(0)
                    self.backend.put(
                        Kind.MESSAGE, msgid, self._encode(Kind.MESSAGE, msgid, iter_source(tmp))
                    )
                count += 1
                for evpid in self.message_envelopes(msgid):
                    env = self._read_envelope(evpid)
                    self._cache.evict(evpid)
                    self.envelope_update(env)
                    count += 1
            except QueueCorrupt as exc:
                self.corrupt(msgid, str(exc))
            except KeyUnavailable as exc:
                log.warning("queue: message %08x not rewritten: %s", msgid, exc)
                skipped += 1
        if self._master is None and self._kdf_params is not None and not skipped:
            # Nothing encrypted is left: a future key may start afresh, but keep
            # the salt, so files in corrupt/ stay readable with the old key.
            self.backend.put(Kind.KEYCHECK, 0, dump_keycheck(self._kdf_params, None))
        return count

    def stats(self) -> dict[str, int]:
        return self._cache.as_stats()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
