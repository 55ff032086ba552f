"""Local delivery agents, run in a per-delivery child as the recipient.

    from smtpd.mda import deliver, DeliveryRequest, DeliveryMethod
    result = deliver(req, open(spool_path, "rb"), expected_name=None)

`deliver` dispatches on `req.method`; each method is also callable alone
(smtpd.mda.maildir.deliver_maildir, .mbox.deliver_mbox,
.command.deliver_command, .lmtp.deliver_lmtp).
"""

from __future__ import annotations

from typing import BinaryIO

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
    req: DeliveryRequest, source: BinaryIO, expected_name: str | None = None
) -> DeliveryResult:
    """Run the delivery `req.method` asks for; `expected_name` is maildir only."""
    # Imported here so a child only loads the method it runs.
    if req.method is DeliveryMethod.MAILDIR:
        from smtpd.mda.maildir import deliver_maildir

        return deliver_maildir(req, source, expected_name)
    if req.method is DeliveryMethod.MBOX:
        from smtpd.mda.mbox import deliver_mbox

        return deliver_mbox(req, source)
    if req.method is DeliveryMethod.MDA:
        from smtpd.mda.command import deliver_command

        return deliver_command(req, source)
    if req.method is DeliveryMethod.LMTP:
        from smtpd.mda.lmtp import deliver_lmtp

        return deliver_lmtp(req, source)
    return permfail(f"550 5.3.0 Unknown delivery method {req.method!r}")
