"""What a local delivery is asked to do and what it answers.

A delivery worker of the recipient's uid/gid (smtpd/mda/worker.py, forked by
the parent and dropped to that user when root) calls one of the delivery
functions with a `DeliveryRequest` and the spooled message (a readable
binary file, LF line endings).  Every delivery function returns a `DeliveryResult`; none raises
for an expected failure.

Vocabulary: upstream's envelope has `rcpt` (the RCPT TO address) and `dest`
(the address after alias/virtual expansion).  Here `orig_rcpt` is upstream's
`rcpt` (it goes to Delivered-To:) and `rcpt` is upstream's `dest` (the final
recipient).  The format expander maps %{rcpt} and %{dest} back to upstream's
meaning.
"""

from __future__ import annotations

import enum
import errno
import os
from dataclasses import dataclass


class DeliveryMethod(enum.StrEnum):
    """The `action` kinds of smtpd.conf(5) that deliver locally."""

    MAILDIR = "maildir"
    MBOX = "mbox"
    MDA = "mda"
    LMTP = "lmtp"


class DeliveryStatus(enum.Enum):
    OK = "ok"
    TEMPFAIL = "tempfail"
    PERMFAIL = "permfail"


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """`text` is an SMTP-like reply line for logs and DSNs.

    `detail` carries method-specific data: for maildir the delivered file
    name (recorded by the queue for exactly-once after a crash).
    """

    status: DeliveryStatus
    text: str
    detail: str | None = None


def ok(text: str = "250 2.0.0 Delivered", detail: str | None = None) -> DeliveryResult:
    return DeliveryResult(DeliveryStatus.OK, text, detail)


def tempfail(text: str, detail: str | None = None) -> DeliveryResult:
    return DeliveryResult(DeliveryStatus.TEMPFAIL, text, detail)


def permfail(text: str, detail: str | None = None) -> DeliveryResult:
    return DeliveryResult(DeliveryStatus.PERMFAIL, text, detail)


def from_oserror(exc: OSError, what: str, detail: str | None = None) -> DeliveryResult:
    """Map a filesystem error to a result.

    A full disk or quota is temporary (RFC 3463 4.2.2 / 4.3.1): the mail
    stays queued and is retried.  A path the system can never accept
    (too long, invalid) is permanent, as upstream's mail.maildir exits 1
    (not EX_TEMPFAIL) for EINVAL/ENAMETOOLONG.  Everything else (EACCES,
    EIO, ...) is treated as temporary: an administrator can fix it.
    """
    reason = os.strerror(exc.errno) if exc.errno is not None else str(exc)
    if exc.filename:
        what = f"{what} {exc.filename}"
    if exc.errno == errno.EDQUOT:
        return tempfail(f"452 4.2.2 Mailbox full: {what}: {reason}", detail)
    if exc.errno == errno.ENOSPC:
        return tempfail(f"452 4.3.1 Insufficient system storage: {what}: {reason}", detail)
    if exc.errno in (errno.ENAMETOOLONG, errno.EINVAL):
        return permfail(f"550 5.2.0 {what}: {reason}", detail)
    return tempfail(f"451 4.2.0 {what}: {reason}", detail)


@dataclass(frozen=True, slots=True)
class DeliveryRequest:
    """Everything a delivery child needs; built by the parent per envelope.

    The method parameters (`maildir`, `mbox_path`, `command`, `wrapper`,
    `lmtp_dest`) are the configured templates, *not yet expanded*: each
    delivery expands them with smtpd.mda.format so that envelope data is
    escaped and checked in one place.
    """

    evpid: int
    sender: str  # "" for MAIL FROM:<>
    rcpt: str  # final recipient (upstream's dest)
    orig_rcpt: str  # as given in RCPT TO (upstream's rcpt); Delivered-To
    user: str  # system or virtual user name the delivery runs as
    uid: int
    gid: int
    home: str
    method: DeliveryMethod
    hostname: str  # this MTA's name (maildir file names, LHLO)
    maildir: str = "~/Maildir"
    junk: bool = False
    mbox_path: str = "/var/mail/%{user.username}"
    command: str = ""
    wrapper: str | None = None  # the wrapper's command text, looked up by name
    lmtp_dest: str = ""
    lmtp_rcpt_to: bool = False  # `rcpt-to`: RCPT TO the recipient, not the user
    subaddress: str = ""  # +tag of the recipient (EXTENSION); "" if none
    subaddress_delim: str = "+"
    timeout: float = 300.0  # seconds, for mda commands and LMTP sessions
