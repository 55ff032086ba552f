"""Privilege separation: which user each process runs as, and dropping to it.

As root, the queue runs as `_smtpq` chrooted in the spool and the others as
`_smtpd` (scheduler and control chrooted in an empty directory: they need no
files once started).  Not root: nobody changes identity, and the parent warns.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass

SMTPD_USER = "_smtpd"
SMTPQ_USER = "_smtpq"


@dataclass(frozen=True)
class Identity:
    user: str
    uid: int
    gid: int


def empty_dir(queue_path: str) -> str:
    """Where processes that need no files are chrooted: an empty directory in
    the spool (upstream uses /var/empty)."""
    return os.path.join(queue_path, "empty")


class PrivsepError(Exception):
    pass


def lookup_user(name: str) -> Identity:
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise PrivsepError(
            f"unknown user {name}: create it first, e.g. "
            f"`useradd --system --no-create-home --home-dir /var/empty "
            f"--shell /usr/sbin/nologin {name}`") from None
    return Identity(name, pw.pw_uid, pw.pw_gid)


def is_root() -> bool:
    return os.geteuid() == 0


def drop(identity: Identity, chroot: str | None) -> None:
    """chroot (optional), then setgroups/setgid/setuid, and verify."""
    if chroot is not None:
        os.chroot(chroot)
        os.chdir("/")
    os.setgroups([identity.gid])
    os.setresgid(identity.gid, identity.gid, identity.gid)
    os.setresuid(identity.uid, identity.uid, identity.uid)
    if os.getuid() != identity.uid or os.geteuid() != identity.uid:
        raise PrivsepError(f"could not drop privileges to {identity.user}")
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise PrivsepError("privileges could be regained after dropping them")


def become_user(uid: int, gid: int, user: str) -> None:
    """A forked child taking a user's identity for good (delivery workers,
    offline enqueue): real, effective and saved ids, the user's supplementary
    groups (only its gid for a user without a passwd entry), then a check
    that uid 0 cannot come back."""
    try:
        known = pwd.getpwnam(user).pw_uid == uid
    except KeyError:
        known = False
    if known:
        os.initgroups(user, gid)
    else:
        os.setgroups([gid])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid):
        raise PermissionError(f"could not become uid {uid} gid {gid}")
    if uid != 0:
        try:
            os.setuid(0)
        except PermissionError:
            return
        raise PermissionError("uid 0 could be regained after dropping privileges")
