"""Local delivery agents, run in a delivery worker as the recipient.

    from smtpd.mda import deliver, DeliveryRequest, DeliveryMethod
    result = deliver(req, open(spool_path, "rb"), expected_name=None)

`deliver` dispatches on `req.method`; each method is also callable alone
(smtpd.mda.maildir.deliver_maildir, .mbox.deliver_mbox,
.command.deliver_command, .lmtp.deliver_lmtp).
"""

from __future__ import annotations

from typing import BinaryIO

# Imported eagerly, never inside deliver(): the delivery worker has dropped
# privileges by then and may not be allowed to read the interpreter's or the
# venv's files (e.g. under /root) to import a module lazily.
from smtpd.mda.command import deliver_command
from smtpd.mda.lmtp import deliver_lmtp
from smtpd.mda.maildir import deliver_maildir
from smtpd.mda.mbox import deliver_mbox
from smtpd.mda.types import (
    DeliveryMethod,
    DeliveryRequest,
    DeliveryResult,
    DeliveryStatus,
    permfail,
)

__all__ = [
    "DeliveryMethod",
    "DeliveryRequest",
    "DeliveryResult",
    "DeliveryStatus",
    "deliver",
]


def deliver(
    req: DeliveryRequest, source: BinaryIO, expected_name: str | None = None,
    check_existing: bool = True,
) -> DeliveryResult:
    """Run the delivery `req.method` asks for; `expected_name` and
    `check_existing` are maildir only."""
    if req.method is DeliveryMethod.MAILDIR:
        return deliver_maildir(req, source, expected_name, check_existing)
    if req.method is DeliveryMethod.MBOX:
        return deliver_mbox(req, source)
    if req.method is DeliveryMethod.MDA:
        return deliver_command(req, source)
    if req.method is DeliveryMethod.LMTP:
        return deliver_lmtp(req, source)
    return permfail(f"550 5.3.0 Unknown delivery method {req.method!r}")
