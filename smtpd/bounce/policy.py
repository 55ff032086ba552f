"""When a DSN is sent at all: RFC 3461 §4.1 NOTIFY and the null sender.

- A DSN is never sent to the null reverse-path `<>` (RFC 5321 §4.5.5):
  a bounce that cannot be delivered is a double bounce, logged and
  dropped by the caller, never bounced again.
- NOTIFY=NEVER: no DSN of any kind.
- NOTIFY absent: as OpenSMTPD, failures and delay warnings
  (RFC 3461 §4.1 lets the MTA pick FAILURE or FAILURE,DELAY).
- Otherwise only the kinds asked for: FAILURE -> failed, DELAY ->
  delayed, SUCCESS -> delivered and relayed (a relay to a server without
  DSN support reports "relayed", RFC 3461 §6.2.2.2 / upstream).
"""

from __future__ import annotations

import enum


class DsnKind(enum.StrEnum):
    """The report's Action (RFC 3464 §2.3.3) and the Subject's last word."""

    FAILED = "failed"
    DELAYED = "delayed"
    RELAYED = "relayed"
    DELIVERED = "delivered"


class DsnRet(enum.StrEnum):
    """RFC 3461 §4.3 RET: the full message or only its headers."""

    FULL = "FULL"
    HDRS = "HDRS"


class Notify(enum.Flag):
    SUCCESS = enum.auto()
    FAILURE = enum.auto()
    DELAY = enum.auto()
    NEVER = enum.auto()


DEFAULT_NOTIFY = Notify.FAILURE | Notify.DELAY

_WANTS = {
    DsnKind.FAILED: Notify.FAILURE,
    DsnKind.DELAYED: Notify.DELAY,
    DsnKind.DELIVERED: Notify.SUCCESS,
    DsnKind.RELAYED: Notify.SUCCESS,
}


def parse_notify(value: str) -> Notify:
    """Parse an RCPT NOTIFY= value; NEVER cannot be combined (RFC 3461 §4.1)."""
    flags = Notify(0)
    words = [w.strip().upper() for w in value.split(",")]
    for w in words:
        try:
            flags |= Notify[w]
        except KeyError:
            raise ValueError(f"invalid NOTIFY value {w!r}") from None
    if Notify.NEVER in flags and len(words) != 1:
        raise ValueError("NOTIFY=NEVER cannot be combined")
    if len(set(words)) != len(words):
        raise ValueError("duplicate NOTIFY keyword")
    return flags


def parse_ret(value: str) -> DsnRet:
    try:
        return DsnRet(value.upper())
    except ValueError:
        raise ValueError(f"invalid RET value {value!r}") from None


def should_bounce(sender: str, notify: Notify | None, kind: DsnKind) -> bool:
    """Whether `kind` of DSN goes to `sender` for a recipient with `notify`."""
    if not sender:
        return False  # never to <>: that is how bounce loops are avoided
    wanted = notify or DEFAULT_NOTIFY
    if Notify.NEVER in wanted:
        return False
    return _WANTS[kind] in wanted
