"""SMTP replies: the value type, serialization, a multi-line reply parser and
the standard replies of the server.

The texts match OpenSMTPD 6.8 byte for byte where COMPAT.md §2 records them,
so that log parsers and scripts written for upstream keep working; where
COMPAT.md §1 says pysmtpd differs, the reply says so in a comment.

The parser (``ReplyParser``) is for the SMTP client (issue 7): it turns the
byte stream of a server into complete ``Reply`` values (RFC 5321 §4.2.1).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

# RFC 3463 §2: class.subject.detail, class is 2, 4 or 5.
_ENHANCED_RE = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})$")
_REPLY_LINE_RE = re.compile(rb"^([2-5][0-9][0-9])([ -]?)(.*)$", re.DOTALL)

# RFC 5321 §4.5.3.1.5 sets 512 octets per reply line; real servers exceed it
# (long EHLO keyword lines, banners), so the client parser is more lenient.
MAX_REPLY_LINE = 4096
MAX_REPLY_LINES = 100


class ReplyError(ValueError):
    """A malformed reply received from a peer (client side)."""


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply: a code, an optional RFC 3463 enhanced status code that
    prefixes every line, and one or more lines of text."""

    code: int
    enhanced: str | None = None
    text: str | Sequence[str] = ""
    lines: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 200 <= self.code <= 599:
            raise ValueError(f"reply code out of range: {self.code}")
        if self.enhanced is not None:
            m = _ENHANCED_RE.match(self.enhanced)
            if m is None or int(m.group(1)) != self.code // 100:
                raise ValueError(f"bad enhanced status code: {self.enhanced!r}")
        lines = (self.text,) if isinstance(self.text, str) else tuple(self.text)
        if not lines:
            lines = ("",)
        for line in lines:
            # A CR or LF here would let text end the reply early and forge
            # another one (the reply-injection class of CVE-2020-8794).
            if "\r" in line or "\n" in line or "\0" in line:
                raise ValueError("reply text contains CR, LF or NUL")
        object.__setattr__(self, "text", lines[0] if len(lines) == 1 else lines)
        object.__setattr__(self, "lines", lines)

    @property
    def is_positive(self) -> bool:
        return 200 <= self.code < 400

    @property
    def is_transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return self.code >= 500

    def formatted_lines(self) -> list[str]:
        """The lines as sent, without CRLF: ``250-first``, ..., ``250 last``."""
        out: list[str] = []
        last = len(self.lines) - 1
        for i, line in enumerate(self.lines):
            sep = " " if i == last else "-"
            body = f"{self.enhanced} {line}" if self.enhanced else line
            out.append(f"{self.code}{sep}{body}")
        return out

    def to_bytes(self) -> bytes:
        return "".join(line + "\r\n" for line in self.formatted_lines()).encode("utf-8")

    def __str__(self) -> str:
        """The reply on one line, for logs: ``550 5.1.1 text``."""
        return " / ".join(self.formatted_lines())


def _split_enhanced(code: int, text: str) -> tuple[str | None, str]:
    head, _, rest = text.partition(" ")
    m = _ENHANCED_RE.match(head)
    if m is not None and int(m.group(1)) == code // 100:
        return head, rest
    return None, text


class ReplyParser:
    """Incremental parser of server replies (RFC 5321 §4.2.1, §4.2.2).

    ``feed(data)`` returns the replies completed by ``data``; partial lines and
    unfinished multi-line replies are kept for the next call.  Lines may end in
    CRLF or, leniently, a bare LF.  A malformed line raises ``ReplyError``.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._code: int | None = None
        self._lines: list[str] = []

    def feed(self, data: bytes) -> list[Reply]:
        self._buf += data
        replies: list[Reply] = []
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                if len(self._buf) > MAX_REPLY_LINE:
                    raise ReplyError("reply line too long")
                return replies
            raw = bytes(self._buf[:nl])
            del self._buf[: nl + 1]
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            if len(raw) > MAX_REPLY_LINE:
                raise ReplyError("reply line too long")
            reply = self._line(raw)
            if reply is not None:
                replies.append(reply)

    def _line(self, raw: bytes) -> Reply | None:
        m = _REPLY_LINE_RE.match(raw)
        if m is None:
            raise ReplyError("malformed reply line")
        code = int(m.group(1))
        sep = m.group(2)
        if sep == b"" and m.group(3):
            raise ReplyError("malformed reply line")
        try:
            text = m.group(3).decode("utf-8")
        except UnicodeDecodeError:
            text = m.group(3).decode("latin-1")
        if "\r" in text or "\0" in text:
            raise ReplyError("control character in reply")
        if self._code is not None and code != self._code:
            raise ReplyError("reply code changed inside a multi-line reply")
        self._code = code
        self._lines.append(text)
        if len(self._lines) > MAX_REPLY_LINES:
            raise ReplyError("too many lines in reply")
        if sep == b"-":
            return None
        lines, self._lines, self._code = self._lines, [], None
        enhanced, first = _split_enhanced(code, lines[0])
        prefix = f"{enhanced} "
        if enhanced is not None and all(line.startswith(prefix) for line in lines[1:]):
            # The enhanced code prefixes every line (RFC 2034 §4); when some
            # line lacks it, keep the text as sent so that it re-serializes.
            rest = [line[len(prefix) :] for line in lines[1:]]
            return Reply(code, enhanced, [first, *rest])
        return Reply(code, None, lines)


# ---------------------------------------------------------------------------
# Standard server replies (COMPAT.md §2, OpenSMTPD 6.8 texts).

_INVALID = "Invalid command"
_INVALID_ARGS = "Invalid command arguments"

OK = Reply(250, "2.0.0", "Ok")
NOOP_OK = OK
MAIL_OK = OK
RCPT_OK = Reply(250, "2.1.5", "Destination address valid: Recipient ok")
RSET_OK = Reply(250, "2.0.0", "Reset state")
DATA_GO = Reply(354, None, 'Enter mail, end with "." on a line by itself')
BYE = Reply(221, "2.0.0", "Bye")
STARTTLS_GO = Reply(220, "2.0.0", "Ready to start TLS")
# COMPAT §1: HELP names pysmtpd where 6.8 names OpenSMTPD.
HELP = Reply(
    214,
    "2.0.0",
    [
        "This is pysmtpd",
        "To report bugs in the implementation, please contact the pysmtpd maintainers",
        "with full details",
        "End of HELP info",
    ],
)
# COMPAT §1: VRFY answers 252 (RFC 5321 §3.5.3) where 6.8 answers 500.
VRFY_CANNOT = Reply(252, "2.1.5", "Cannot VRFY user, but will accept message and attempt delivery")
# COMPAT §1: EXPN answers 502 (RFC 5321 §4.2.4 "not implemented").
EXPN_DISABLED = Reply(502, "5.5.1", f"{_INVALID}: Command not implemented")
AUTH_OK = Reply(235, "2.7.0", "Authentication succeeded")
AUTH_FAILED = Reply(535, "5.7.8", "Authentication failed")

BAD_SEQUENCE = Reply(503, "5.5.1", f"{_INVALID}: Command not allowed at this point.")
UNRECOGNIZED = Reply(500, "5.5.1", f"{_INVALID}: Command unrecognized")
SYNTAX_ERROR = Reply(501, "5.5.2", "Syntax error: Syntax error")
NO_ARGUMENTS = Reply(500, "5.5.4", f"{_INVALID_ARGS}: command does not accept arguments.")
INVALID_DOMAIN = Reply(501, "5.5.4", f"{_INVALID_ARGS}: Invalid domain name")
LINE_TOO_LONG = Reply(500, "5.0.0", "Command line too long")
DATA_LINE_TOO_LONG = Reply(500, "5.0.0", "Line too long")
SENDER_SYNTAX = Reply(553, "5.1.0", "Sender address syntax error")
RCPT_SYNTAX = Reply(501, "5.1.3", "Recipient address syntax error")
TOO_MANY_RCPT = Reply(451, "4.5.3", "Too many recipients: Too many recipients")
TOO_MANY_MAILS = Reply(452, "4.5.3", "Too many recipients: Too many messages sent")
NO_RECIPIENT = Reply(503, "5.5.4", f"{_INVALID_ARGS}: No recipient specified")
STARTTLS_REQUIRED = Reply(530, "5.5.1", f"{_INVALID}: Must issue a STARTTLS command first")
AUTH_REQUIRED = Reply(530, "5.5.1", f"{_INVALID}: Must issue an AUTH command first")
NOT_SUPPORTED = Reply(503, "5.5.1", f"{_INVALID}: Command not supported")
ALREADY_AUTHENTICATED = Reply(503, "5.5.1", f"{_INVALID}: Already authenticated")
ALREADY_SECURED = Reply(503, "5.5.1", f"{_INVALID}: Channel already secured")
AUTH_NO_PARAMS = Reply(501, "5.5.4", f"{_INVALID_ARGS}: No parameters given")
AUTH_CANCELLED = Reply(501, "5.7.0", "Authentication cancelled")  # RFC 4954 §4
PIPELINING_UNSUPPORTED = Reply(500, "5.5.1", f"{_INVALID}: Pipelining not supported")
# COMPAT §1: RFC 5321 §4.5.3.1.10 code 552 where 6.8 says 554.
MESSAGE_TOO_BIG = Reply(
    552, "5.3.4", "Message too big for system: Transaction failed, message too big"
)
# RFC 1870 §6.1: a SIZE= declaration above the limit is refused at MAIL.
SIZE_EXCEEDED = Reply(
    552, "5.3.4", "Message too big for system: Message size exceeds fixed maximum message size"
)
# COMPAT §1 and RFC 5321 §2.3.8: CR and LF only as CRLF (SMTP smuggling).
BARE_LINE_ENDING = Reply(
    550, "5.5.2", "Syntax error: bare CR or LF in message data, see RFC 5321 section 2.3.8"
)
NON_ASCII_ADDRESS = Reply(553, "5.6.7", "Non-ASCII address requires SMTPUTF8")
# RFC 3030 §2: a BDAT whose chunk size cannot be read leaves no way to tell
# its octets from the next command: refused, and the connection closed.
BDAT_NO_SIZE = Reply(501, "5.5.4", f"{_INVALID_ARGS}: BDAT chunk size expected, closing")
BDAT_SYNTAX = Reply(501, "5.5.4", f"{_INVALID_ARGS}: BDAT chunk-size [LAST]")
# RFC 3030 §2: once a chunk failed, the transaction is dead until RSET.
BDAT_AFTER_FAILURE = Reply(503, "5.5.1", f"{_INVALID}: Transaction failed, RSET required")
# RFC 3030 §3: "BINARYMIME cannot be used with the DATA command" (503).
BINARYMIME_NEEDS_BDAT = Reply(503, "5.6.1", f"{_INVALID}: BODY=BINARYMIME requires BDAT")
TOO_MANY_ERRORS = Reply(421, "4.7.0", "Too many bad commands, closing connection")
NOTIFY_NEVER_COMBINED = Reply(
    553, "5.5.4", "NOTIFY option NEVER cannot be combined with other options"
)
ORCPT_SYNTAX = Reply(553, "5.5.4", "ORCPT address syntax error")


def bdat_ok(octets: int) -> Reply:
    """RFC 3030 §2: "A 250 response MUST be sent to each successful BDAT
    data block"; the text says how much was received, as Postfix does."""
    return Reply(250, "2.0.0", f"{octets} octets received")


def unsupported_mail_option(option: str) -> Reply:
    """MAIL FROM with a parameter we do not know (as upstream)."""
    return Reply(503, "5.5.4", f"{_INVALID_ARGS}: Unsupported option {_printable(option)}")


def unsupported_rcpt_option(option: str) -> Reply:
    """RCPT TO with a parameter we do not know; upstream's text has no
    enhanced code (COMPAT.md §2)."""
    return Reply(503, None, f"Unsupported option {_printable(option)}")


def auth_mechanism_unsupported(mechanism: str) -> Reply:
    return Reply(
        504,
        "5.7.4",
        f'Security features not supported: AUTH method "{_printable(mechanism)}" not supported',
    )


def helo_required(verb: str) -> Reply:
    return Reply(501, "5.5.1", f"{_INVALID}: {verb} requires domain name")


def greeting(hostname: str, text: str = "ESMTP pysmtpd") -> Reply:
    """The 220 banner (COMPAT §1: names pysmtpd where 6.8 names OpenSMTPD)."""
    return Reply(220, None, f"{hostname} {text}")


def peer_literal(address: str) -> str:
    """The client's address as shown in HELO/EHLO replies and Received:
    ``[192.0.2.1]``, ``[IPv6:2001:db8::1]``, ``[local]`` for a unix socket."""
    if ":" in address:
        return f"[IPv6:{address}]"
    return f"[{address or 'local'}]"


def helo_reply(hostname: str, helo: str, peer: str) -> Reply:
    return Reply(250, None, f"{hostname} Hello {helo} {peer_literal(peer)}, pleased to meet you")


def ehlo_reply(hostname: str, helo: str, peer: str, keywords: Sequence[str]) -> Reply:
    """``250-<hostname> Hello <helo> [<addr>], pleased to meet you`` then one
    line per keyword (RFC 5321 §4.1.1.1; no enhanced codes, RFC 2034 §3)."""
    first = f"{hostname} Hello {helo} {peer_literal(peer)}, pleased to meet you"
    return Reply(250, None, [first, *keywords])


def _printable(text: str) -> str:
    """Echo client text in a reply without control characters."""
    return "".join(c if c.isprintable() else "?" for c in text)[:200]
