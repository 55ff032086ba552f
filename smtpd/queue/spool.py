"""The on-disk spool: directory layout, modes and durable file operations.

Layout as upstream (COMPAT.md)::

    <root>/incoming/<msgid>/message     messages being received (front)
    <root>/queue/<bb>/<msgid>/message   committed message, bb = first 2 hex
    <root>/queue/<bb>/<msgid>/<evpid>   one envelope per recipient
    <root>/queue/keycheck               encryption key-check file
    <root>/corrupt/<msgid>/...          moved aside, with a ``reason`` file
    <root>/purge/                       directories being removed
    <root>/temporary/                   temp files before their atomic rename
    <root>/offline/                     offline enqueue drop (0770)

Durability (DESIGN.md §4): write a temp file, fsync it, rename it into
place, fsync the directory; a directory created on the way is fsynced in its
parent too, or a crash could forget the new directory with the file in it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from collections.abc import Iterable
from pathlib import Path

SPOOL_ROOT_MODE = 0o711
DIR_MODE = 0o700
OFFLINE_MODE = 0o770
FILE_MODE = 0o600
SPOOL_DIRS = ("incoming", "queue", "corrupt", "purge", "temporary")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dir_durable(path: Path, stop: Path, mode: int = DIR_MODE) -> None:
    """mkdir -p ``path`` below ``stop``, fsyncing the parent of each new dir."""
    if path.is_dir():
        return
    if path.parent != stop and path.parent != path:
        make_dir_durable(path.parent, stop, mode)
    # made meanwhile by another thread, maybe not synced yet: sync it all the same
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, mode)
    fsync_dir(path.parent)


def prepare_spool(root: Path, *, owner: tuple[int, int] | None = None) -> None:
    """Create missing spool directories with upstream's modes (COMPAT.md):
    root 0711, incoming/ queue/ corrupt/ purge/ temporary/ 0700, offline/ 0770.

    Existing directories keep their modes: an offline reader (smtpctl show
    message) may open a spool it does not own. ``owner`` (uid, gid of the
    queue user) is for the privileged parent: the 0700 directories go to the
    queue user, offline/ to root:gid, as upstream."""
    if not root.is_dir():
        root.mkdir(parents=True, mode=SPOOL_ROOT_MODE)
        os.chmod(root, SPOOL_ROOT_MODE)
    wanted = [(name, DIR_MODE) for name in SPOOL_DIRS] + [("offline", OFFLINE_MODE)]
    for name, mode in wanted:
        d = root / name
        if not d.is_dir():
            d.mkdir(mode=mode)
            os.chmod(d, mode)  # mkdir's mode is filtered by the umask
        if owner is not None:
            uid, gid = owner
            os.chown(d, 0 if name == "offline" else uid, gid)


def write_temp(chunks: Iterable[bytes], tmpdir: Path, *, sync: bool = True) -> tuple[Path, int]:
    """Write ``chunks`` to a new file in ``tmpdir``: (path, size); fsynced
    unless ``sync`` is False (the caller then calls sync_files())."""
    tmp = tmpdir / f"put.{secrets.token_hex(8)}"
    return tmp, write_file(tmp, chunks, sync=sync)


def write_file(path: Path, chunks: Iterable[bytes], *, sync: bool = False) -> int:
    """Create ``path`` (it must not exist) with ``chunks``; its size.  Not
    fsynced unless ``sync``: the caller syncs a batch (sync_files())."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    size = 0
    try:
        with os.fdopen(fd, "wb", closefd=True) as f:
            for chunk in chunks:
                f.write(chunk)
                size += len(chunk)
            f.flush()
            if sync:
                os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise
    return size


def sync_files(paths: Iterable[Path]) -> None:
    """fsync files written with sync=False.  Written first and synced after,
    a batch shares the filesystem's journal commits (group commit): the first
    fsync commits them all and the others find their data already stable."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def install_durable(moves: list[tuple[Path, Path]], stop: Path) -> None:
    """Rename fsynced temp files into place, then fsync each target directory
    once: N files in one message directory cost one directory fsync."""
    try:
        for _tmp, target in moves:
            make_dir_durable(target.parent, stop)
        for tmp, target in moves:
            os.rename(tmp, target)
    except BaseException:
        for tmp, _target in moves:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        raise
    for parent in dict.fromkeys(target.parent for _tmp, target in moves):
        fsync_dir(parent)


def write_durable(target: Path, chunks: Iterable[bytes], tmpdir: Path, stop: Path) -> int:
    """Atomically replace ``target`` with ``chunks``; durable when it returns.

    ``tmpdir`` must be on the same filesystem (the spool's temporary/).
    Returns the number of bytes written.
    """
    tmp, size = write_temp(chunks, tmpdir)
    install_durable([(tmp, target)], stop)
    return size


def unlink_durable(path: Path) -> bool:
    """Remove a file and fsync its directory; False if it did not exist."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    fsync_dir(path.parent)
    return True


def rmdir_if_empty(path: Path) -> bool:
    """rmdir ``path``; False if it was not empty or is already gone."""
    try:
        os.rmdir(path)
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
            raise
        return False
    return True


def remove_tree(path: Path, purge: Path) -> None:
    """Remove a directory at once: rename into purge/, then delete it. Not
    fsynced: what a crash resurrects, recover() removes again."""
    victim = purge / f"{path.name}.{secrets.token_hex(4)}"
    try:
        os.rename(path, victim)
    except FileNotFoundError:
        return
    shutil.rmtree(victim, ignore_errors=True)


def clear_dir(path: Path) -> int:
    """Remove everything inside ``path``; returns how many entries went."""
    count = 0
    for entry in list(os.scandir(path)):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
        count += 1
    return count
