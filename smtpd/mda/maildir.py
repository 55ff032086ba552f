"""Maildir delivery (upstream mail.maildir.c, made crash-safe).

Steps: create `cur/ new/ tmp/` (0700) if missing, write `tmp/<name>`
(0600, O_EXCL), fsync the file, hard-link it into `new/` (never
overwrites), unlink the tmp name, fsync `new/`.  Names are
`<time>.<8 hex>.<host>` like upstream (COMPAT.md).

Exactly once after a crash (COMPAT.md §1): the queue may pick the name
first (`maildir_name`), record it durably in the envelope, and pass it as
`expected_name`.  A re-run after a crash then finds the file in `new/` or
`cur/` (possibly renamed with `:2,<flags>` by a reader) and answers OK
without writing a second copy; otherwise it delivers under that name.
Finding it means reading `cur/` whole (10 ms for 20,000 messages here), so
the queue says when no earlier attempt can exist (`check_existing=False`:
the envelope was committed by the running queue and never handed out) and
the look is skipped.

`junk`: upstream delivers to `<maildir>/.Junk` when a header line is
exactly `X-Spam: yes` or `X-Spam-Flag: yes` (case-insensitive).  A
`+tag` recipient goes to `<maildir>/.<tag>` only if that folder exists.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
import time
from typing import BinaryIO

from smtpd.mda.format import ESCAPE, FormatContext, FormatError, expand_path
from smtpd.mda.message import NulTruncator, Prepared, chunks, prepare
from smtpd.mda.types import (
    DeliveryRequest,
    DeliveryResult,
    from_oserror,
    ok,
    permfail,
    tempfail,
)

SUBDIRS = ("cur", "tmp", "new")
_INFO_SEPARATORS = (":", ";", "!")  # maildir info suffixes seen in the wild


def _safe_host(hostname: str) -> str:
    # Maildir convention: a host name may not carry '/' or ':'.
    host = hostname or "localhost"
    return host.replace("/", "\\057").replace(":", "\\072")


def maildir_name(hostname: str, now: float | None = None) -> str:
    """A fresh unique file name: `<unix time>.<32 random bits hex>.<host>`."""
    t = int(time.time() if now is None else now)
    return f"{t}.{secrets.randbits(32):08x}.{_safe_host(hostname)}"


def _valid_name(name: str) -> bool:
    return bool(name) and "/" not in name and name not in (".", "..") and "\0" not in name


def _mkdirs(path: str) -> None:
    """mkdir -p with mode 0700 for what we create; an existing dir is kept."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        parent = os.path.dirname(path.rstrip("/"))
        if parent and parent != path:
            _mkdirs(parent)
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
        return
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)


def make_maildir(path: str) -> None:
    _mkdirs(path)
    for sub in SUBDIRS:
        with contextlib.suppress(FileExistsError):
            os.mkdir(os.path.join(path, sub), 0o700)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _folders(root: str, req: DeliveryRequest) -> tuple[str, str | None]:
    """The folder for normal mail (maybe `.tag`) and the junk folder."""
    folder = root
    if req.subaddress:
        sub = "".join(":" if c in ESCAPE else c for c in req.subaddress)
        if sub not in (".", "..") and not any(ord(c) < 0x20 for c in sub):
            candidate = os.path.join(root, "." + sub)
            if os.path.isdir(candidate):
                folder = candidate
    junk = os.path.join(root, ".Junk") if req.junk else None
    return folder, junk


def find_delivered(folders: list[str], name: str) -> str | None:
    """Where a message named `name` already sits (new/ or cur/), if anywhere."""
    for folder in folders:
        if os.path.lexists(os.path.join(folder, "new", name)):
            return folder
        cur = os.path.join(folder, "cur")
        if os.path.lexists(os.path.join(cur, name)):
            return folder
        try:
            with os.scandir(cur) as it:
                for entry in it:
                    n = entry.name
                    if n.startswith(name) and n[len(name) : len(name) + 1] in _INFO_SEPARATORS:
                        return folder
        except FileNotFoundError:
            continue
    return None


def deliver_maildir(
    req: DeliveryRequest, source: BinaryIO, expected_name: str | None = None,
    check_existing: bool = True,
) -> DeliveryResult:
    """Deliver `source` (spool bytes, LF endings) into the request's Maildir;
    `check_existing=False` skips looking for an earlier copy under
    `expected_name` (there can be none: a first attempt)."""
    try:
        root = expand_path(req.maildir, FormatContext.from_request(req))
    except FormatError as exc:
        return permfail(f"550 5.2.0 Cannot expand maildir path: {exc}")
    if not root.startswith("/"):
        return permfail(f"550 5.2.0 Maildir path is not absolute: {root}")
    if expected_name is not None and not _valid_name(expected_name):
        return permfail(f"550 5.2.0 Invalid maildir file name: {expected_name!r}")
    try:
        folder, junk = _folders(root, req)
        candidates = [folder] + ([junk] if junk else [])
        if (expected_name is not None and check_existing
                and find_delivered(candidates, expected_name)):
            return ok(detail=expected_name)
        make_maildir(root)
        if folder != root:
            make_maildir(folder)
        if junk:
            make_maildir(junk)
    except OSError as exc:
        return from_oserror(exc, "maildir")

    prepared = prepare(req, source)
    if isinstance(prepared, DeliveryResult):
        return prepared
    target = junk if (junk and prepared.is_spam) else folder
    name = expected_name or maildir_name(req.hostname)
    return _write(target, name, prepared, source, expected_name is not None)


def _write(
    folder: str, name: str, prepared: Prepared, source: BinaryIO, retry: bool
) -> DeliveryResult:
    tmp = os.path.join(folder, "tmp", name)
    new = os.path.join(folder, "new", name)
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        try:
            fd = os.open(tmp, flags, 0o600)
        except FileExistsError:
            if not retry:
                return tempfail(f"451 4.2.0 Maildir name collision: {name}")
            os.unlink(tmp)  # left over by a crashed attempt with this name
            fd = os.open(tmp, flags, 0o600)
    except OSError as exc:
        return from_oserror(exc, "maildir tmp file")
    try:
        try:
            out = NulTruncator()
            for data in chunks(prepared.prefix, source):
                _write_all(fd, out.feed(data))
            _write_all(fd, out.close())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, new)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV):
                raise
            os.rename(tmp, new)  # a filesystem without hard links
        else:
            os.unlink(tmp)
        _fsync_dir(os.path.join(folder, "new"))
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if exc.errno == errno.EEXIST:
            return tempfail(f"451 4.2.0 Maildir name collision: {name}")
        return from_oserror(exc, "maildir write")
    return ok(detail=name)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
