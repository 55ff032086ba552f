"""Mailboxes, paths and ESMTP parameters of MAIL FROM / RCPT TO.

Grammar: RFC 5321 §4.1.2 (Path, Mailbox, Local-part, Domain, address
literals), §4.1.1.3 (source routes accepted and ignored), §4.5.3.1 (length
limits); RFC 6531 §3.3 (UTF-8 in addresses only with SMTPUTF8); parameters of
RFC 1870 (SIZE), 6152 (BODY), 6531 (SMTPUTF8), 3461 (RET, ENVID, NOTIFY,
ORCPT, xtext), 4954 §5 (AUTH=).

Shared by the server protocol and the SMTP client: nothing here knows about
sessions.  Errors are ``AddressError`` (bad path) or ``ParamError`` carrying
the exact reply to send.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass

from smtpd.smtp import reply as R
from smtpd.smtp.reply import Reply

# RFC 5321 §4.5.3.1.1-3
MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
MAX_PATH = 256
# RFC 3461 §4.4 (ENVID) and §4.2 (ORCPT)
MAX_ENVID = 100
MAX_ORCPT = 500

# RFC 5322 §3.2.3 atext; "." is allowed anywhere in a local part, as upstream
# does: "first..last@" and trailing dots exist in the wild.
_ATEXT = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
)
_LOCAL_CHARS = _ATEXT | {"."}
_KEYWORD_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")
_XTEXT_HEX_RE = re.compile(r"\+([0-9A-F]{2})")
# A domain label's characters: ASCII letters and digits, '-', and '_' (not in
# RFC 1035 host names, but in real HELO names and domains; upstream accepts
# them too); anything non-ASCII only matters with SMTPUTF8, which the caller
# checks.
_LABEL_CHARS = re.compile("[0-9A-Za-z_\\-\u0080-\U0010ffff]+")


class AddressError(ValueError):
    """A path that does not parse; the caller picks the reply (553 for MAIL,
    501 for RCPT, as upstream)."""


class ParamError(ValueError):
    """A bad ESMTP parameter, with the reply to send."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


class Body(enum.Enum):
    SEVENBIT = "7BIT"
    EIGHTBITMIME = "8BITMIME"
    BINARYMIME = "BINARYMIME"


class Ret(enum.Enum):
    FULL = "FULL"
    HDRS = "HDRS"


class Notify(enum.Enum):
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    DELAY = "DELAY"
    NEVER = "NEVER"


@dataclass(frozen=True, slots=True)
class Mailbox:
    """``local@domain``; ``local`` is the unquoted local part (quoting is
    restored by ``str()``), ``domain`` a domain or an address literal."""

    local: str
    domain: str

    def __str__(self) -> str:
        return f"{quote_local(self.local)}@{self.domain}"

    @property
    def is_ascii(self) -> bool:
        return self.local.isascii() and self.domain.isascii()


@dataclass(frozen=True, slots=True)
class Orcpt:
    """RFC 3461 §4.2 original recipient: ``rfc822;user@example.org``."""

    addr_type: str
    address: str

    def __str__(self) -> str:
        return f"{self.addr_type};{self.address}"


@dataclass(frozen=True, slots=True)
class MailParams:
    size: int | None = None
    body: Body | None = None
    smtputf8: bool = False
    ret: Ret | None = None
    envid: str | None = None
    auth: str | None = None
    requiretls: bool = False  # RFC 8689 §3


@dataclass(frozen=True, slots=True)
class RcptParams:
    notify: frozenset[Notify] = frozenset()
    orcpt: Orcpt | None = None


def quote_local(local: str) -> str:
    """The local part as it must be written in a path: a dot-string when it
    is one, else a quoted string (RFC 5321 §4.1.2)."""
    if local and all(c in _LOCAL_CHARS or ord(c) > 127 for c in local):
        return local
    escaped = local.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def is_valid_domain(domain: str) -> bool:
    """A domain (labels of letters, digits, '-', '_', or UTF-8 U-labels) or
    an address literal ``[1.2.3.4]`` / ``[IPv6:...]`` (RFC 5321 §4.1.3)."""
    if not domain or len(domain.encode("utf-8")) > MAX_DOMAIN:
        return False
    if domain.startswith("["):
        return _is_address_literal(domain)
    labels = domain.split(".")
    for label in labels:
        if not label or len(label.encode("utf-8")) > 63:
            return False
        if label.startswith("-") or label.endswith("-"):
            return False
        if not _LABEL_CHARS.fullmatch(label):
            return False
    return True


def _is_address_literal(text: str) -> bool:
    if not text.endswith("]"):
        return False
    inner = text[1:-1]
    try:
        if inner[:5].upper() == "IPV6:":
            ipaddress.IPv6Address(inner[5:])
        else:
            ipaddress.IPv4Address(inner)
    except ValueError:
        return False
    return True


def parse_path(text: str, default_domain: str | None = None) -> tuple[Mailbox | None, str]:
    """Parse ``<path>`` at the start of ``text``; return the mailbox (None
    for the null path ``<>``) and the text after ``>`` (the parameters).

    A mailbox without a domain gets ``default_domain`` (upstream does the
    same for local users and RFC 5321 §4.1.1.3 requires ``<postmaster>``);
    without a default it is an error.  Non-ASCII characters are accepted
    here: whether SMTPUTF8 was given is the caller's check (RFC 6531 §3.3).
    """
    if not text.startswith("<"):
        raise AddressError("path must start with '<'")
    i = 1
    n = len(text)
    # Source route "@a,@b:" (RFC 5321 §4.1.1.3, Appendix C): accepted, ignored.
    if i < n and text[i] == "@":
        colon = text.find(":", i)
        if colon < 0:
            raise AddressError("bad source route")
        for hop in text[i:colon].split(","):
            if not hop.startswith("@") or not is_valid_domain(hop[1:]):
                raise AddressError("bad source route")
        i = colon + 1
    if i < n and text[i] == ">":
        if i != 1:
            raise AddressError("source route without mailbox")
        return None, text[i + 1 :]
    local, i = _scan_local(text, i)
    domain = ""
    if i < n and text[i] == "@":
        end = text.find(">", i + 1)
        if end < 0:
            raise AddressError("missing '>'")
        domain = text[i + 1 : end]
        i = end
        if not is_valid_domain(domain):
            raise AddressError("bad domain")
    if i >= n or text[i] != ">":
        raise AddressError("missing '>'")
    wire_local = quote_local(local)
    if not local or len(wire_local.encode("utf-8")) > MAX_LOCAL_PART:
        raise AddressError("bad local part length")
    if len(text[: i + 1].encode("utf-8")) > MAX_PATH + 2:
        raise AddressError("path too long")
    if not domain:
        if default_domain is None:
            raise AddressError("missing domain")
        domain = default_domain
    return Mailbox(local, domain), text[i + 1 :]


def _scan_local(text: str, i: int) -> tuple[str, int]:
    n = len(text)
    if i < n and text[i] == '"':
        out: list[str] = []
        i += 1
        while i < n:
            c = text[i]
            if c == "\\":
                if i + 1 >= n or not (32 <= ord(text[i + 1]) <= 126 or ord(text[i + 1]) > 127):
                    raise AddressError("bad quoted pair")
                out.append(text[i + 1])
                i += 2
            elif c == '"':
                return "".join(out), i + 1
            elif 32 <= ord(c) <= 126 or ord(c) > 127:
                out.append(c)
                i += 1
            else:
                raise AddressError("control character in quoted string")
        raise AddressError("unterminated quoted string")
    start = i
    while i < n and text[i] not in "@>":
        c = text[i]
        if c not in _LOCAL_CHARS and ord(c) <= 127:
            raise AddressError("bad character in local part")
        i += 1
    return text[start:i], i


def xtext_decode(text: str) -> str:
    """RFC 3461 §4: ``+HH`` is the octet HH; other octets are "!".."~"
    except "+" and "="."""
    for c in _XTEXT_HEX_RE.sub("", text):
        if not 33 <= ord(c) <= 126 or c in "+=":
            raise ValueError("bad xtext")
    raw = _XTEXT_HEX_RE.sub(lambda m: chr(int(m.group(1), 16)), text)
    return raw.encode("latin-1").decode("utf-8", errors="strict")


def xtext_encode(text: str) -> str:
    out: list[str] = []
    for b in text.encode("utf-8"):
        c = chr(b)
        out.append(c if 33 <= b <= 126 and c not in "+=" else f"+{b:02X}")
    return "".join(out)


def _split_params(rest: str) -> list[tuple[str, str | None]]:
    """``KEY[=VALUE]`` separated by spaces (RFC 5321 §4.1.2 Mail-parameters)."""
    out: list[tuple[str, str | None]] = []
    for item in rest.split(" "):
        if not item:
            continue
        key, eq, value = item.partition("=")
        if not _KEYWORD_RE.match(key) or (eq and not value):
            raise ParamError(R.Reply(501, "5.5.4", "Invalid command arguments: Syntax error"))
        for c in value:
            if ord(c) < 33 or ord(c) == 127 or c == "=":
                raise ParamError(R.Reply(501, "5.5.4", "Invalid command arguments: Syntax error"))
        out.append((key.upper(), value if eq else None))
    seen: set[str] = set()
    for key, _ in out:
        if key in seen:
            # RFC 1869 §6 / RFC 3461 §4: a parameter appears at most once.
            raise ParamError(R.Reply(501, "5.5.4", f"Invalid command arguments: Duplicate {key}"))
        seen.add(key)
    return out


def _item(key: str, value: str | None) -> str:
    return key if value is None else f"{key}={value}"


def parse_mail_params(rest: str, *, dsn: bool = True, smtputf8: bool = True,
                      requiretls: bool = False) -> MailParams:
    """MAIL FROM parameters; ``dsn``/``smtputf8``/``requiretls`` say whether
    we offered them (REQUIRETLS only under TLS, RFC 8689 §4.1)."""
    size: int | None = None
    body: Body | None = None
    utf8 = False
    ret: Ret | None = None
    envid: str | None = None
    auth: str | None = None
    require = False
    for key, value in _split_params(rest):
        bad = R.unsupported_mail_option(_item(key, value))
        if key == "SIZE" and value is not None:
            # RFC 1870 §5: 1*20DIGIT
            if not (value.isascii() and value.isdigit() and len(value) <= 20):
                raise ParamError(bad)
            size = int(value)
        elif key == "BODY" and value is not None:
            try:
                body = Body(value.upper())
            except ValueError:
                raise ParamError(bad) from None
        elif key == "SMTPUTF8" and value is None and smtputf8:
            utf8 = True
        elif key == "REQUIRETLS" and value is None and requiretls:
            require = True
        elif key == "RET" and value is not None and dsn:
            try:
                ret = Ret(value.upper())
            except ValueError:
                raise ParamError(bad) from None
        elif key == "ENVID" and value is not None and dsn:
            try:
                envid = xtext_decode(value)
            except ValueError:
                raise ParamError(bad) from None
            if len(envid) > MAX_ENVID:
                raise ParamError(bad)
        elif key == "AUTH" and value is not None:
            try:
                auth = xtext_decode(value)
            except ValueError:
                raise ParamError(bad) from None
        else:
            raise ParamError(bad)
    return MailParams(size, body, utf8, ret, envid, auth, require)


def parse_rcpt_params(rest: str, *, dsn: bool = True) -> RcptParams:
    notify: set[Notify] = set()
    orcpt: Orcpt | None = None
    for key, value in _split_params(rest):
        if key == "NOTIFY" and value is not None and dsn:
            for word in value.split(","):
                try:
                    notify.add(Notify(word.upper()))
                except ValueError:
                    raise ParamError(R.unsupported_rcpt_option(_item(key, value))) from None
            # RFC 3461 §4.1: NEVER or any combination of the others.
            if Notify.NEVER in notify and len(notify) > 1:
                raise ParamError(R.NOTIFY_NEVER_COMBINED)
        elif key == "ORCPT" and value is not None and dsn:
            addr_type, semi, xtext = value.partition(";")
            if not semi or not _KEYWORD_RE.match(addr_type) or not xtext:
                raise ParamError(R.ORCPT_SYNTAX)
            try:
                decoded = xtext_decode(xtext)
            except ValueError:
                raise ParamError(R.ORCPT_SYNTAX) from None
            if len(value) > MAX_ORCPT or any(ord(c) < 32 or ord(c) == 127 for c in decoded):
                raise ParamError(R.ORCPT_SYNTAX)
            orcpt = Orcpt(addr_type.lower(), decoded)
        else:
            raise ParamError(R.unsupported_rcpt_option(_item(key, value)))
    return RcptParams(frozenset(notify), orcpt)
