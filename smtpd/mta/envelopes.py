"""Queue envelopes to what a session sends: recipients with their DSN
parameters (RFC 3461 §4, xtext-encoded) and the MAIL options of a message."""

from __future__ import annotations

from collections.abc import Sequence
from typing import BinaryIO

from smtpd.mta.session import MtaSession
from smtpd.mta.transfer import Recipient, TransferResult
from smtpd.queue.envelope import DsnNotify, Envelope, EnvelopeFlag
from smtpd.smtp.address import xtext_encode

_NOTIFY_ORDER = (DsnNotify.NEVER, DsnNotify.SUCCESS, DsnNotify.FAILURE, DsnNotify.DELAY)


def recipient(env: Envelope) -> Recipient:
    """The envelope's ``dest`` (the relay address) with NOTIFY and ORCPT."""
    notify = ",".join(n.name or "" for n in _NOTIFY_ORDER if n in env.dsn_notify) or None
    orcpt = f"rfc822;{xtext_encode(env.dsn_orcpt)}" if env.dsn_orcpt else None
    return Recipient(env.evpid, env.dest, notify=notify, orcpt=orcpt)


async def send_envelopes(session: MtaSession, envelopes: Sequence[Envelope],
                         message: BinaryIO) -> TransferResult:
    """One transaction for envelopes of one message (same msgid and sender);
    ENVID and RET come from the first (they are per message in RFC 3461)."""
    if not envelopes:
        return TransferResult(())
    first = envelopes[0]
    if any(e.msgid != first.msgid or e.sender != first.sender for e in envelopes):
        raise ValueError("envelopes of different messages or senders in one transaction")
    return await session.send(
        first.sender, [recipient(e) for e in envelopes], message,
        envid=xtext_encode(first.dsn_envid) if first.dsn_envid else None,
        ret=first.dsn_ret.value if first.dsn_ret is not None else None,
        smtputf8=EnvelopeFlag.SMTPUTF8 in first.flags,
        requiretls=EnvelopeFlag.REQUIRETLS in first.flags)
