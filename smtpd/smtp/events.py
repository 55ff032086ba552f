"""Events of the sans-IO SMTP server (``ServerProtocol.next_event``).

Every command event waits for exactly one reply from the caller
(``ServerProtocol.send``) before the next event is produced; events that
carry a ``reply`` (``ProtocolError``, ``AuthChallenge``) are answered by
sending that reply unchanged.  ``DataChunk`` and ``ConnectionClosed`` need no
reply.
"""

from __future__ import annotations

from dataclasses import dataclass

from smtpd.smtp.address import Mailbox, MailParams, RcptParams
from smtpd.smtp.reply import Reply


@dataclass(frozen=True, slots=True)
class Helo:
    """HELO (extended=False) or EHLO (extended=True).  Reply with
    ``ServerProtocol.helo_reply(event, peer)`` or a refusal."""

    name: str
    extended: bool


@dataclass(frozen=True, slots=True)
class StartTls:
    """STARTTLS: reply ``STARTTLS_GO`` (220), then run the TLS handshake and
    call ``start_tls_done()``; or refuse (454)."""


@dataclass(frozen=True, slots=True)
class AuthChallenge:
    """The protocol runs the SASL exchange: send ``reply`` (a 334)."""

    reply: Reply


@dataclass(frozen=True, slots=True)
class AuthCredentials:
    """AUTH PLAIN or LOGIN completed: check the credentials and reply
    ``AUTH_OK`` (235 2.7.0) or ``AUTH_FAILED`` (535 5.7.8).  ``authzid`` is
    PLAIN's authorization identity ("" when absent)."""

    mechanism: str
    username: str
    password: str
    authzid: str = ""

    def __repr__(self) -> str:
        # Never let a password reach a log through repr().
        return f"AuthCredentials(mechanism={self.mechanism!r}, username={self.username!r})"


@dataclass(frozen=True, slots=True)
class MailFrom:
    """MAIL FROM; ``address`` is None for the null reverse-path ``<>``."""

    address: Mailbox | None
    params: MailParams


@dataclass(frozen=True, slots=True)
class RcptTo:
    address: Mailbox
    params: RcptParams


@dataclass(frozen=True, slots=True)
class DataStart:
    """DATA, or the first BDAT of a transaction (``bdat``): reply
    ``DATA_GO`` (354) to receive the message, or refuse.  For BDAT the
    protocol sends nothing on 354 (RFC 3030 has no intermediate reply) and
    the message arrives as for DATA: DataChunk events, then DataEnd; a
    refusal is sent at once and the chunk's octets are discarded."""

    bdat: bool = False


@dataclass(frozen=True, slots=True)
class DataChunk:
    """Message bytes, dot-unstuffed (DATA) or as counted (BDAT), with every
    CRLF turned into LF (as OpenSMTPD stores messages).  Chunks end on line
    boundaries.  BINARYMIME bodies (BDAT only) are passed unaltered."""

    data: bytes


@dataclass(frozen=True, slots=True)
class BdatChunkEnd:
    """A BDAT chunk without LAST was read whole (RFC 3030 §2): send
    ``reply`` (250) and keep the message open for the next chunk.  The
    last chunk ends with DataEnd instead, as does a failed chunk."""

    octets: int
    reply: Reply


@dataclass(frozen=True, slots=True)
class DataEnd:
    """The CRLF.CRLF terminator (or the end of ``BDAT n LAST``, or of a BDAT
    chunk that failed) was received.  ``size`` counts the bytes of
    the chunks (LF line endings) including those not emitted.  When ``error``
    is set, the caller discards the message and sends ``error``: 552 5.3.4 if
    ``too_big``, 550 5.5.2 for a bare CR/LF, 500 for an over-long line.
    Otherwise commit the message and reply 250 (or a failure)."""

    size: int
    too_big: bool = False
    error: Reply | None = None


@dataclass(frozen=True, slots=True)
class Rset:
    pass


@dataclass(frozen=True, slots=True)
class Noop:
    pass


@dataclass(frozen=True, slots=True)
class Quit:
    pass


@dataclass(frozen=True, slots=True)
class Help:
    pass


@dataclass(frozen=True, slots=True)
class Vrfy:
    arg: str


@dataclass(frozen=True, slots=True)
class Expn:
    arg: str


@dataclass(frozen=True, slots=True)
class ProtocolError:
    """A syntax, sequence or limit error found by the protocol: send
    ``reply``; when ``close`` is set, close the connection after it."""

    reply: Reply
    close: bool = False


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The client closed its side (``receive_data(b"")``) and every complete
    command before it has been returned.  An unfinished DATA is lost."""


Event = (
    Helo
    | StartTls
    | AuthChallenge
    | AuthCredentials
    | MailFrom
    | RcptTo
    | DataStart
    | DataChunk
    | BdatChunkEnd
    | DataEnd
    | Rset
    | Noop
    | Quit
    | Help
    | Vrfy
    | Expn
    | ProtocolError
    | ConnectionClosed
)
