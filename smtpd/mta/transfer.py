"""Value types of an outbound transfer: what to send, how, and the outcome.

Statuses are the strings the queue already uses for deliveries ("ok",
"tempfail", "permfail", smtpd.msg.ParentDeliveryResult), and every result
text is reply-shaped (``550 5.1.1 text``) so that a bounce can quote it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from smtpd.smtp.reply import Reply


class Status(enum.StrEnum):
    OK = "ok"
    TEMPFAIL = "tempfail"
    PERMFAIL = "permfail"

    @classmethod
    def of(cls, reply: Reply) -> Status:
        """2xx ok, 5xx permanent, anything else (4xx, a stray 3xx) temporary."""
        if reply.code // 100 == 2:
            return cls.OK
        if reply.code // 100 == 5:
            return cls.PERMFAIL
        return cls.TEMPFAIL


class TlsPolicy(enum.Enum):
    """How a session uses TLS (smtpd.conf ``relay [tls [no-verify]]`` and the
    ``smtp+notls://``, ``smtp+tls://``, ``smtps://`` relay URLs)."""

    NONE = "none"  # never STARTTLS
    OPPORTUNISTIC = "opportunistic"  # STARTTLS when offered, peer not verified
    STARTTLS = "starttls"  # STARTTLS mandatory
    SMTPS = "smtps"  # TLS from the first byte (RFC 8314 §3.3)


@dataclass(frozen=True)
class Timeouts:
    """Seconds; the defaults are RFC 5321 §4.5.3.2's minimums."""

    connect: float = 300.0
    greeting: float = 300.0  # §4.5.3.2.1
    helo: float = 300.0
    starttls: float = 300.0
    auth: float = 300.0
    mail: float = 300.0  # §4.5.3.2.2
    rcpt: float = 300.0  # §4.5.3.2.3
    data_init: float = 120.0  # §4.5.3.2.4
    data_block: float = 180.0  # §4.5.3.2.5
    data_end: float = 600.0  # §4.5.3.2.6
    rset: float = 300.0
    quit: float = 30.0


@dataclass(frozen=True)
class TlsCheck:
    """A check of the peer's certificate chain after the TLS handshake, for
    policies the ssl module cannot express (DANE, RFC 7672; MTA-STS testing
    mode, RFC 8461 §5).  ``verify`` gets the chain as sent (DER, leaf
    first) and returns None or why it fails.  A failing hard check fails
    the session (with mandatory TLS: no cleartext retry); a ``soft`` one is
    only reported (``report`` gets the text) and the session goes on."""

    verify: Callable[[list[bytes]], str | None]
    soft: bool = False
    report: Callable[[str], None] | None = None
    what: str = "DANE"  # names the policy in replies and logs


@dataclass(frozen=True)
class SessionConfig:
    """How to talk to one next hop.

    ``verify`` applies to STARTTLS and SMTPS policies (``no-verify`` turns it
    off); an opportunistic session never verifies, as upstream.  ``ca_file``
    None means the system trust store.  ``server_name`` is the name checked
    in the certificate and sent as SNI (default: the host given to open).
    ``credentials`` (user, password) make TLS mandatory: AUTH is never sent
    in clear.  ``source`` is the local address to bind (``relay src``).
    ``tls_check`` runs after the handshake (DANE, MTA-STS testing)."""

    helo: str
    lmtp: bool = False
    tls: TlsPolicy = TlsPolicy.OPPORTUNISTIC
    verify: bool = True
    ca_file: str | None = None
    server_name: str | None = None
    credentials: tuple[str, str] | None = field(default=None, repr=False)
    source: str | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    tls_check: TlsCheck | None = None


@dataclass(frozen=True)
class Recipient:
    """One envelope of the message.  ``notify`` (``SUCCESS,FAILURE``) and
    ``orcpt`` (``rfc822;user@example.org``, xtext-encoded) are sent only when
    the peer offers DSN (RFC 3461 §4)."""

    evpid: int
    address: str
    notify: str | None = None
    orcpt: str | None = None


@dataclass(frozen=True)
class RecipientResult:
    evpid: int
    address: str
    status: Status
    text: str  # reply-shaped: "250 2.0.0 Ok", "550 5.1.1 No such user"


@dataclass(frozen=True)
class TransferResult:
    results: tuple[RecipientResult, ...]
    peer_dsn: bool = False  # the peer took DSN parameters (else "relayed" DSNs)

    def by_status(self, status: Status) -> tuple[RecipientResult, ...]:
        return tuple(r for r in self.results if r.status is status)


class SessionError(Exception):
    """The session could not be opened or broke: every envelope it was to
    carry is a temporary failure with ``text`` (upstream treats connection
    and handshake errors as host errors, never as bounces).  ``host_failure``
    says the host itself is not serving (no connection, no or a refused
    greeting): the relay backs off from it."""

    def __init__(self, text: str, *, host_failure: bool = False) -> None:
        super().__init__(text)
        self.text = text
        self.host_failure = host_failure


def fail_all(recipients: Sequence[Recipient], status: Status, text: str) -> TransferResult:
    return TransferResult(tuple(RecipientResult(r.evpid, r.address, status, text)
                                for r in recipients))
