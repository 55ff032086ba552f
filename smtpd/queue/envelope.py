"""Envelopes and their versioned text codec (the same bytes in imsgs and on disk).

Format, version 1 (our own numbering, not upstream's ``version: 3``)::

    version: 1
    evpid: 51e7b4660c3a9d21
    type: mda
    dispatcher: local_mail
    sender: alice@example.org
    ...

One ``key: value`` line per field, each line ending in LF, ``version`` first,
the other keys in any order. Required keys (always written): version, type,
dispatcher, sender, rcpt, dest, ctime, ttl. Optional keys are written only
when they differ from their default and take that default when absent;
that includes ``evpid``: the templates that travel in imsgs before the
queue assigns an id have none (evpid 0), while every spool file must name
the evpid it is stored under (``load_envelope(data, evpid=...)``).

Fields (upstream's envelope.c names where they exist):

=================  ==========================================================
evpid              16 hex digits; its high half is the msgid
type               mda | mta | bounce
dispatcher         the action name of the matching rule
tag                the listener's tag
smtpname           the hostname the listener announced
helo               the client's HELO/EHLO argument
hostname           the client's reverse DNS name
sockaddr           ``local``, ``1.2.3.4`` or ``[::1]``
username           the authenticated user
sender             the MAIL FROM address (empty for the null sender ``<>``)
rcpt               the RCPT TO address
orig-rcpt          the recipient before expansion, for Delivered-To
dest               the expanded destination (user, alias result, relay address)
ctime              creation time, seconds since the epoch
ttl                seconds after ctime at which the envelope expires (bounce)
retry              delivery attempts so far
last-try           time of the last attempt (0 = never)
last-bounce        time of the last delay notice (0 = never)
errorline          the last error, e.g. a remote server's reply (escaped)
flags              space separated: authenticated bounce internal
dsn-notify         space separated: success failure delay never (RFC 3461 §4.1)
dsn-ret            FULL | HDRS (RFC 3461 §4.3)
dsn-envid          ENVID (RFC 3461 §4.4), xtext already decoded
dsn-orcpt          ORCPT address (RFC 3461 §4.2)
esc-class          enhanced status class of the last error (RFC 3463)
esc-code           enhanced status code of the last error (RFC 3463)
mda-exec           the command of an ``mda`` action
mda-subaddress     the +tag part of the recipient
mda-user           the local user the delivery runs as
mda-delivered      what the MDA recorded (e.g. the maildir file name), so a
                   redelivery after a crash can detect it was already done
bounce-type        failed | delayed | delivered
bounce-delay       for delayed bounces: how long the message was delayed
bounce-ttl         for delayed bounces: the ttl left
=================  ==========================================================

CVE-2020-8794: a remote reply stored in ``errorline`` once injected new lines
(and so new keys) into the envelope. Every value is escaped here: backslash,
CR (``\\r``), LF (``\\n``), NUL (``\\0``), and every other control or line
separator character (``\\xHH``/``\\uHHHH``); the parser refuses raw control
characters, unknown escapes, unknown or duplicated keys, missing required
keys and any version but 1.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from smtpd.queue.ids import IdError, check_evpid, format_evpid, parse_evpid

ENVELOPE_VERSION = 1
MAX_ENVELOPE_SIZE = 64 * 1024
_INT_MAX = 2**63 - 1


class EnvelopeError(ValueError):
    """A malformed envelope (on load) or an unserializable one (on dump)."""


class DeliveryType(enum.StrEnum):
    MDA = "mda"
    MTA = "mta"
    BOUNCE = "bounce"


class BounceType(enum.StrEnum):
    FAILED = "failed"
    DELAYED = "delayed"
    DELIVERED = "delivered"


class DsnRet(enum.StrEnum):
    FULL = "FULL"
    HDRS = "HDRS"


class EnvelopeFlag(enum.Flag):
    AUTHENTICATED = enum.auto()
    BOUNCE = enum.auto()
    INTERNAL = enum.auto()
    REQUIRETLS = enum.auto()  # RFC 8689 §4: MAIL FROM ... REQUIRETLS, relay only over verified TLS
    SMTPUTF8 = enum.auto()  # RFC 6531 §3.4: MAIL FROM ... SMTPUTF8, the next hop must offer it


class DsnNotify(enum.Flag):
    SUCCESS = enum.auto()
    FAILURE = enum.auto()
    DELAY = enum.auto()
    NEVER = enum.auto()


_NO_FLAGS = EnvelopeFlag(0)
_NO_NOTIFY = DsnNotify(0)


@dataclass(frozen=True, slots=True)
class Envelope:
    """One recipient of one message. ``evpid`` 0 means "not yet assigned"."""

    evpid: int
    type: DeliveryType
    dispatcher: str
    sender: str
    rcpt: str
    dest: str
    ctime: int
    ttl: int
    tag: str = ""
    smtpname: str = ""
    helo: str = ""
    hostname: str = ""
    sockaddr: str = ""
    username: str = ""
    orig_rcpt: str = ""
    retry: int = 0
    lasttry: int = 0
    lastbounce: int = 0
    errorline: str = ""
    flags: EnvelopeFlag = _NO_FLAGS
    dsn_notify: DsnNotify = _NO_NOTIFY
    dsn_ret: DsnRet | None = None
    dsn_envid: str = ""
    dsn_orcpt: str = ""
    esc_class: int = 0
    esc_code: int = 0
    mda_exec: str = ""
    mda_subaddress: str = ""
    mda_user: str = ""
    mda_delivered: str = ""
    bounce_type: BounceType | None = None
    bounce_delay: int = 0
    bounce_ttl: int = 0

    def __post_init__(self) -> None:
        if self.evpid != 0:
            try:
                check_evpid(self.evpid)
            except IdError as exc:
                raise EnvelopeError(str(exc)) from None
        for name in _INT_FIELDS:
            value = getattr(self, name)
            if not 0 <= value <= _INT_MAX:
                raise EnvelopeError(f"{name} out of range: {value}")
        if DsnNotify.NEVER in self.dsn_notify and self.dsn_notify != DsnNotify.NEVER:
            # RFC 3461 §4.1: NEVER must appear alone.
            raise EnvelopeError("dsn-notify: never cannot be combined")

    @property
    def msgid(self) -> int:
        return self.evpid >> 32

    @property
    def expire(self) -> int:
        """The time at which the envelope expires."""
        return self.ctime + self.ttl


_INT_FIELDS = tuple(
    f.name for f in fields(Envelope) if f.type in ("int", int) and f.name != "evpid"
)

# --- value escaping -------------------------------------------------------

_NAMED_ESCAPES = {"\\": "\\\\", "\r": "\\r", "\n": "\\n", "\0": "\\0", "\t": "\\t"}
_UNESCAPES = {"\\": "\\", "r": "\r", "n": "\n", "0": "\0", "t": "\t"}


# C0, DEL, C1 and the Unicode line/paragraph separators: anything a reader
# might take as a line break (str.splitlines does for \x85 and \u2028).
_CONTROL = "\x00-\x1f\x7f-\x9f\u2028\u2029"
_ESCAPE_RE = re.compile(f"[{_CONTROL}\\\\]")
# The same minus LF, the line separator, to check a whole envelope at once.
_RAW_CONTROL_RE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def _needs_escape(ch: str) -> bool:
    return _ESCAPE_RE.match(ch) is not None


def escape_value(value: str) -> str:
    if _ESCAPE_RE.search(value) is None:
        return value
    out = []
    for ch in value:
        if ch in _NAMED_ESCAPES:
            out.append(_NAMED_ESCAPES[ch])
        elif _needs_escape(ch):
            o = ord(ch)
            out.append(f"\\x{o:02x}" if o <= 0xFF else f"\\u{o:04x}")
        else:
            out.append(ch)
    return "".join(out)


def unescape_value(text: str) -> str:
    if "\\" not in text:
        return text
    out = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = text[i + 1 : i + 2]
        if nxt in _UNESCAPES:
            out.append(_UNESCAPES[nxt])
            i += 2
        elif nxt in ("x", "u"):
            width = 2 if nxt == "x" else 4
            digits = text[i + 2 : i + 2 + width]
            if len(digits) != width or not all(c in "0123456789abcdef" for c in digits):
                raise EnvelopeError(f"bad escape \\{nxt}{digits}")
            out.append(chr(int(digits, 16)))
            i += 2 + width
        else:
            raise EnvelopeError(f"unknown escape \\{nxt}")
    return "".join(out)


# --- per-type conversions -------------------------------------------------

_INT_RE = re.compile(r"0|[1-9][0-9]{0,18}")


def _load_int(text: str) -> int:
    if not _INT_RE.fullmatch(text) or int(text) > _INT_MAX:
        raise EnvelopeError(f"not a non-negative integer: {text!r}")
    return int(text)


def _dump_flag(value: enum.Flag) -> str:
    return " ".join((m.name or "").lower() for m in type(value) if m in value)


def _flag_loader(cls: type[enum.Flag]) -> Callable[[str], Any]:
    def load(text: str) -> enum.Flag:
        result = cls(0)
        for word in text.split(" ") if text else ():
            member = cls.__members__.get(word.upper())
            if member is None or not word.islower():
                raise EnvelopeError(f"unknown {cls.__name__} {word!r}")
            if member in result:
                raise EnvelopeError(f"repeated {cls.__name__} {word!r}")
            result |= member
        return result

    return load


def _enum_loader(cls: type[enum.StrEnum]) -> Callable[[str], Any]:
    def load(text: str) -> enum.StrEnum:
        try:
            return cls(text)
        except ValueError:
            raise EnvelopeError(f"unknown {cls.__name__} {text!r}") from None

    return load


def _load_evpid(text: str) -> int:
    try:
        return parse_evpid(text)
    except IdError as exc:
        raise EnvelopeError(str(exc)) from None


def _dump_str(value: Any) -> str:
    return str(value)


def _load_str(text: str) -> str:
    return text


# key -> (attribute, dump, load, required)
_Field = tuple[str, Callable[[Any], str], Callable[[str], Any], bool]
_FIELDS: dict[str, _Field] = {
    "evpid": ("evpid", format_evpid, _load_evpid, False),
    "type": ("type", _dump_str, _enum_loader(DeliveryType), True),
    "dispatcher": ("dispatcher", _dump_str, _load_str, True),
    "tag": ("tag", _dump_str, _load_str, False),
    "smtpname": ("smtpname", _dump_str, _load_str, False),
    "helo": ("helo", _dump_str, _load_str, False),
    "hostname": ("hostname", _dump_str, _load_str, False),
    "sockaddr": ("sockaddr", _dump_str, _load_str, False),
    "username": ("username", _dump_str, _load_str, False),
    "sender": ("sender", _dump_str, _load_str, True),
    "rcpt": ("rcpt", _dump_str, _load_str, True),
    "orig-rcpt": ("orig_rcpt", _dump_str, _load_str, False),
    "dest": ("dest", _dump_str, _load_str, True),
    "ctime": ("ctime", _dump_str, _load_int, True),
    "ttl": ("ttl", _dump_str, _load_int, True),
    "retry": ("retry", _dump_str, _load_int, False),
    "last-try": ("lasttry", _dump_str, _load_int, False),
    "last-bounce": ("lastbounce", _dump_str, _load_int, False),
    "errorline": ("errorline", _dump_str, _load_str, False),
    "flags": ("flags", _dump_flag, _flag_loader(EnvelopeFlag), False),
    "dsn-notify": ("dsn_notify", _dump_flag, _flag_loader(DsnNotify), False),
    "dsn-ret": ("dsn_ret", _dump_str, _enum_loader(DsnRet), False),
    "dsn-envid": ("dsn_envid", _dump_str, _load_str, False),
    "dsn-orcpt": ("dsn_orcpt", _dump_str, _load_str, False),
    "esc-class": ("esc_class", _dump_str, _load_int, False),
    "esc-code": ("esc_code", _dump_str, _load_int, False),
    "mda-exec": ("mda_exec", _dump_str, _load_str, False),
    "mda-subaddress": ("mda_subaddress", _dump_str, _load_str, False),
    "mda-user": ("mda_user", _dump_str, _load_str, False),
    "mda-delivered": ("mda_delivered", _dump_str, _load_str, False),
    "bounce-type": ("bounce_type", _dump_str, _enum_loader(BounceType), False),
    "bounce-delay": ("bounce_delay", _dump_str, _load_int, False),
    "bounce-ttl": ("bounce_ttl", _dump_str, _load_int, False),
}
_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(Envelope)} | {"evpid": 0}
_KEY_RE = re.compile(r"[a-z][a-z0-9-]*")


def envelope_items(env: Envelope) -> list[tuple[str, str]]:
    """The (key, unescaped text) pairs that ``dump_envelope`` writes, in order."""
    items = [("version", str(ENVELOPE_VERSION))]
    for key, (attr, dump, _load, required) in _FIELDS.items():
        value = getattr(env, attr)
        if required or value != _DEFAULTS[attr]:
            items.append((key, dump(value)))
    return items


def dump_envelope(env: Envelope) -> bytes:
    """Serialize; every value is escaped so it stays on its own line."""
    lines = [f"{key}: {escape_value(text)}\n" for key, text in envelope_items(env)]
    try:
        data = "".join(lines).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise EnvelopeError(f"value not encodable as UTF-8: {exc.reason}") from None
    if len(data) > MAX_ENVELOPE_SIZE:
        raise EnvelopeError(f"envelope too large ({len(data)} bytes)")
    return data


def load_envelope(data: bytes, *, evpid: int | None = None) -> Envelope:
    """Parse ``data``; with ``evpid``, also check that the text names that
    envelope (a spool file: a missing or other evpid is an error)."""
    if len(data) > MAX_ENVELOPE_SIZE:
        raise EnvelopeError(f"envelope too large ({len(data)} bytes)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EnvelopeError(f"not UTF-8 at byte {exc.start}") from None
    if not text.endswith("\n"):
        raise EnvelopeError("truncated: no final newline")
    lines = text[:-1].split("\n")
    if lines[0] != f"version: {ENVELOPE_VERSION}":
        if lines[0].startswith("version:"):
            raise EnvelopeError(f"unsupported envelope {lines[0]!r}")
        raise EnvelopeError("the first line must be 'version: 1'")
    bad = _RAW_CONTROL_RE.search(text)
    if bad is not None:
        number = text.count("\n", 0, bad.start()) + 1
        raise EnvelopeError(f"line {number}: raw control character")
    seen: dict[str, str] = {}
    for number, line in enumerate(lines[1:], start=2):
        key, sep, rest = line.partition(":")
        if not sep or not _KEY_RE.fullmatch(key):
            raise EnvelopeError(f"line {number}: not a 'key: value' line")
        if key not in _FIELDS:
            raise EnvelopeError(f"line {number}: unknown key {key!r}")
        if key in seen:
            raise EnvelopeError(f"line {number}: duplicated key {key!r}")
        seen[key] = rest[1:] if rest.startswith(" ") else rest
    missing = [k for k, spec in _FIELDS.items() if spec[3] and k not in seen]
    if missing:
        raise EnvelopeError(f"missing required key(s): {', '.join(missing)}")
    kwargs: dict[str, Any] = {"evpid": 0}
    for key, raw in seen.items():
        attr, _dump, load, _required = _FIELDS[key]
        try:
            kwargs[attr] = load(unescape_value(raw))
        except EnvelopeError as exc:
            raise EnvelopeError(f"{key}: {exc}") from None
    env = Envelope(**kwargs)
    if evpid is not None and env.evpid != evpid:
        raise EnvelopeError(f"envelope names {env.evpid:016x}, expected {evpid:016x}")
    return env


# --- upstream's ``smtpctl show envelope`` rendering -------------------------

UPSTREAM_SHOW_VERSION = 3  # what OpenSMTPD 6.8 prints (COMPAT.md)
_DSN_BITS = {DsnNotify.SUCCESS: 0x01, DsnNotify.FAILURE: 0x02, DsnNotify.DELAY: 0x04,
             DsnNotify.NEVER: 0x08}  # upstream's DSN_SUCCESS.. DSN_NEVER


def render_upstream(env: Envelope) -> str:
    """``smtpctl show envelope`` text as OpenSMTPD prints it (envelope.c's
    dump order, empty values skipped, dsn-notify as upstream's bitmask,
    esc-class/esc-code only when a class is set). Values are escaped as on
    disk so a stored reply cannot forge lines on the operator's terminal."""
    notify = sum(bit for flag, bit in _DSN_BITS.items() if flag in env.dsn_notify)
    values: list[tuple[str, str]] = [
        ("version", str(UPSTREAM_SHOW_VERSION)),
        ("dispatcher", env.dispatcher),
        ("tag", env.tag),
        ("type", str(env.type)),
        ("smtpname", env.smtpname),
        ("helo", env.helo),
        ("hostname", env.hostname),
        ("username", env.username),
        ("errorline", env.errorline),
        ("sockaddr", env.sockaddr),
        ("sender", env.sender or "@"),  # upstream prints user@domain, "@" for <>
        ("rcpt", env.rcpt),
        ("dest", env.dest),
        ("ctime", str(env.ctime)),
        ("last-try", str(env.lasttry)),
        ("last-bounce", str(env.lastbounce)),
        ("ttl", str(env.ttl)),
        ("retry", str(env.retry)),
        ("flags", _dump_flag(env.flags)),
        ("dsn-notify", str(notify)),
        ("dsn-ret", str(env.dsn_ret or "")),
        ("dsn-envid", env.dsn_envid),
        ("dsn-orcpt", env.dsn_orcpt),
        ("esc-class", str(env.esc_class) if env.esc_class else ""),
        ("esc-code", str(env.esc_code) if env.esc_class else ""),
    ]
    if env.type is DeliveryType.MDA:
        values += [("mda-exec", env.mda_exec), ("mda-subaddress", env.mda_subaddress),
                   ("mda-user", env.mda_user)]
    elif env.type is DeliveryType.BOUNCE:
        delayed = env.bounce_type is BounceType.DELAYED
        values += [("bounce-ttl", str(env.bounce_ttl) if delayed else ""),
                   ("bounce-delay", str(env.bounce_delay) if delayed else ""),
                   ("bounce-type", str(env.bounce_type or ""))]
    return "".join(f"{k}: {escape_value(v)}\n" for k, v in values if v)
