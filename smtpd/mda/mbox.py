"""mbox delivery, as upstream does through mail.local(8).

Each message is appended as

    From <sender or MAILER-DAEMON> <asctime date>\\n
    <Return-Path, Delivered-To, message; mboxrd quoting>\\n   (blank line)

mboxrd quoting: every line matching `^>*From ` gets one more '>', so a
reader can undo it exactly.  Locking is what mail.local and MUAs agree on:
a `<mbox>.lock` dotlock (skipped when the spool directory does not let us
create it, as for a user without write access to /var/mail) and an fcntl
write lock on the mailbox.  On any write or fsync failure the mailbox is
truncated back to its size before the delivery, so a reader never sees
half a message.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import time
from typing import BinaryIO

from smtpd.mda.format import FormatContext, FormatError, expand_format, expand_path
from smtpd.mda.message import chunks, prepare
from smtpd.mda.types import (
    DeliveryRequest,
    DeliveryResult,
    from_oserror,
    ok,
    permfail,
    tempfail,
)

LOCK_TIMEOUT = 60.0  # seconds to wait for either lock before a tempfail
STALE_DOTLOCK = 300.0  # a dotlock older than this is left over by a crash
_POLL = 0.05


class FromQuoter:
    """Streaming mboxrd `>From ` quoting across arbitrary chunk boundaries."""

    def __init__(self) -> None:
        self._pending = b""  # start of a line that may still become ">*From "
        self._at_start = True

    def feed(self, data: bytes) -> bytes:
        buf = self._pending + data
        self._pending = b""
        out = bytearray()
        pos = 0
        while pos < len(buf):
            nl = buf.find(b"\n", pos)
            end = len(buf) if nl == -1 else nl + 1
            if self._at_start:
                rest = buf[pos:end].lstrip(b">")
                if rest.startswith(b"From "):
                    out += b">"
                elif nl == -1 and len(rest) < 5 and b"From "[: len(rest)] == rest:
                    self._pending = buf[pos:end]  # undecided until more data
                    return bytes(out)
            out += buf[pos:end]
            self._at_start = nl != -1
            pos = end
        return bytes(out)

    def close(self) -> bytes:
        """Flush an undecided line start; ensure the message ends in LF."""
        tail = self._pending
        self._pending = b""
        if tail or not self._at_start:
            self._at_start = True
            return tail + b"\n"
        return b""


def from_line(req: DeliveryRequest, now: float | None = None) -> bytes:
    sender = expand_format("%{mbox.from}", FormatContext.from_request(req))
    sender = "".join("_" if c.isspace() else c for c in sender)
    date = time.asctime(time.localtime(time.time() if now is None else now))
    return f"From {sender} {date}\n".encode("utf-8", "surrogateescape")


def _dotlock(path: str, deadline: float) -> str | None:
    """Take `<path>.lock`; None if the directory does not allow it."""
    lock = path + ".lock"
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            try:
                if time.time() - os.lstat(lock).st_mtime > STALE_DOTLOCK:
                    os.unlink(lock)
                    continue
            except FileNotFoundError:
                continue
            if time.monotonic() >= deadline:
                raise TimeoutError(f"mailbox is dotlocked: {lock}") from None
            time.sleep(_POLL)
            continue
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                return None  # no write access to the spool dir: fcntl lock only
            raise
        try:
            os.write(fd, f"{os.getpid()}\n".encode())
        finally:
            os.close(fd)
        return lock


def _lock(fd: int, deadline: float) -> None:
    while True:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
        if time.monotonic() >= deadline:
            raise TimeoutError("mailbox is locked by another process")
        time.sleep(_POLL)


def _open_mbox(path: str, uid: int, gid: int) -> int:
    """Open for append, creating it 0600 for the user; refuse anything odd.

    As mail.local, this may run as root (the spool directory is usually
    not writable by users): a new mailbox is then given to the user and
    an existing one must already be theirs.  Unprivileged, the mailbox
    must belong to the running user.  Never a symlink (O_NOFOLLOW), never
    a file with other hard links (someone else's file linked in).
    """
    owner = uid if os.geteuid() == 0 else os.geteuid()
    base = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, base | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        fd = os.open(path, base)
    else:
        if os.geteuid() == 0:
            try:
                os.fchown(fd, uid, gid)
            except OSError:
                os.close(fd)
                os.unlink(path)
                raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_uid != owner:
        os.close(fd)
        raise PermissionError(errno.EPERM, "mailbox is not a private regular file", path)
    return fd


def deliver_mbox(
    req: DeliveryRequest,
    source: BinaryIO,
    now: float | None = None,
    lock_timeout: float = LOCK_TIMEOUT,
) -> DeliveryResult:
    ctx = FormatContext.from_request(req)
    try:
        path = expand_path(req.mbox_path, ctx)
    except FormatError as exc:
        return permfail(f"550 5.2.0 Cannot expand mbox path: {exc}")
    if not path.startswith("/"):
        return permfail(f"550 5.2.0 mbox path is not absolute: {path}")
    prepared = prepare(req, source)
    if isinstance(prepared, DeliveryResult):
        return prepared
    deadline = time.monotonic() + lock_timeout
    try:
        dotlock = _dotlock(path, deadline)
    except TimeoutError as exc:
        return tempfail(f"451 4.2.1 {exc}")
    except OSError as exc:
        return from_oserror(exc, "mbox dotlock")
    try:
        return _append(path, req, prepared.prefix, source, deadline, now)
    finally:
        if dotlock is not None:
            with contextlib.suppress(OSError):
                os.unlink(dotlock)


def _append(
    path: str,
    req: DeliveryRequest,
    prefix: bytes,
    source: BinaryIO,
    deadline: float,
    now: float | None,
) -> DeliveryResult:
    try:
        fd = _open_mbox(path, req.uid, req.gid)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return tempfail(f"451 4.2.0 mbox is a symbolic link: {path}")
        return from_oserror(exc, "mbox open")
    try:
        try:
            _lock(fd, deadline)
        except TimeoutError as exc:
            return tempfail(f"451 4.2.1 {exc}")
        size = os.fstat(fd).st_size
        try:
            quoter = FromQuoter()
            _write_all(fd, from_line(req, now))
            for data in chunks(prefix, source):
                _write_all(fd, quoter.feed(data))
            _write_all(fd, quoter.close() + b"\n")
            os.fsync(fd)
        except OSError as exc:
            try:
                os.ftruncate(fd, size)
                os.fsync(fd)
            except OSError:
                pass
            return from_oserror(exc, "mbox write")
        return ok()
    except OSError as exc:
        return from_oserror(exc, "mbox")
    finally:
        os.close(fd)  # also releases the fcntl lock


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
