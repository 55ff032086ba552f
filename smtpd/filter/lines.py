"""The smtpd-filters(7) line protocol (OpenSMTPD 6.6+), sans-IO.

smtpd writes ``config|...`` lines, the filter answers ``register|...`` lines
ending with ``register|ready``; then smtpd writes ``report|VERSION|...``
events and ``filter|VERSION|...`` requests, and the filter answers requests
with ``filter-result|SID|TOKEN|DECISION[|PARAM]`` or, for data-line,
``filter-dataline|SID|TOKEN|LINE``.  "|" may appear only in the last field.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass

PROTOCOL_VERSION = "0.7"
SMTPD_VERSION = "7.6.0"  # what we tell filters we behave like (smtpd-version key)
SUBSYSTEM = "smtp-in"
MAX_LINE = 65536 + 256  # a DATA line (65535) plus the protocol prefix

# Filter phases a filter may register for (smtpd-filters(7) FILTER REQUESTS).
FILTER_PHASES = frozenset({
    "connect", "helo", "ehlo", "starttls", "auth", "mail-from", "rcpt-to", "data",
    "data-line", "commit", "rset", "quit", "noop", "help", "wiz"})
# Report events (smtpd-filters(7) REPORT EVENTS).
REPORT_EVENTS = frozenset({
    "link-connect", "link-greeting", "link-identify", "link-tls", "link-auth",
    "link-disconnect", "link-reset", "tx-reset", "tx-begin", "tx-mail", "tx-rcpt",
    "tx-envelope", "tx-data", "tx-commit", "tx-rollback", "protocol-client",
    "protocol-server", "filter-report", "filter-response", "timeout"})


class LineError(ValueError):
    """A line from a filter that does not follow the protocol."""


class Decision(enum.Enum):
    PROCEED = "proceed"
    JUNK = "junk"
    REJECT = "reject"
    DISCONNECT = "disconnect"
    REWRITE = "rewrite"
    REPORT = "report"
    BYPASS = "bypass"  # builtin only


@dataclass(frozen=True, slots=True)
class Register:
    stream: str  # "report" or "filter"
    subsystem: str
    event: str


@dataclass(frozen=True, slots=True)
class Ready:
    pass


@dataclass(frozen=True, slots=True)
class Result:
    sid: int
    token: int
    decision: Decision
    param: str = ""


@dataclass(frozen=True, slots=True)
class DataLine:
    sid: int
    token: int
    line: str


Message = Register | Ready | Result | DataLine


def config_lines(timeout: int, admd: str | None) -> list[str]:
    lines = [f"config|smtpd-version|{SMTPD_VERSION}", f"config|protocol|{PROTOCOL_VERSION}",
             f"config|smtp-session-timeout|{timeout}"]
    if admd:
        lines.append(f"config|admd|{admd}")
    lines += [f"config|subsystem|{SUBSYSTEM}", "config|ready"]
    return lines


def _stamp(now: float | None) -> str:
    return f"{time.time() if now is None else now:.6f}"


def _clean(value: str) -> str:
    # a field never carries a line break: it would forge protocol lines
    return value.replace("\r", " ").replace("\n", " ")


def report_line(event: str, sid: int, params: tuple[str, ...] = (),
                now: float | None = None) -> str:
    fields = ["report", PROTOCOL_VERSION, _stamp(now), SUBSYSTEM, event, f"{sid:016x}",
              *map(_clean, params)]
    return "|".join(fields)


def filter_line(phase: str, sid: int, token: int, params: tuple[str, ...] = (),
                now: float | None = None) -> str:
    # upstream always writes the parameter field after the token, empty for
    # data/commit; libopensmtpd refuses a token not followed by "|"
    fields = ["filter", PROTOCOL_VERSION, _stamp(now), SUBSYSTEM, phase, f"{sid:016x}",
              f"{token:016x}", *(map(_clean, params) if params else ("",))]
    return "|".join(fields)


def dataline_block(sid: int, token: int, lines: list[str], now: float | None = None) -> str:
    """Many data-line requests at once (one write for a whole chunk).  The
    lines come from splitting on LF, so they hold no line break."""
    prefix = "|".join(["filter", PROTOCOL_VERSION, _stamp(now), SUBSYSTEM, "data-line",
                       f"{sid:016x}", f"{token:016x}", ""])
    return "".join(f"{prefix}{line}\n" for line in lines)


def _hex(text: str, what: str) -> int:
    try:
        value = int(text, 16)
    except ValueError:
        raise LineError(f"invalid {what}: {text!r}") from None
    if value < 0 or value >= 1 << 64:
        raise LineError(f"invalid {what}: {text!r}")
    return value


def parse(line: str) -> Message:
    """One line from a filter (without its newline)."""
    kind, sep, rest = line.partition("|")
    if not sep:
        raise LineError(f"not a protocol line: {line[:80]!r}")
    if kind == "register":
        if rest == "ready":
            return Ready()
        parts = rest.split("|")
        if len(parts) != 3 or parts[0] not in ("report", "filter"):
            raise LineError(f"invalid register line: {line[:80]!r}")
        stream, subsystem, event = parts
        known = FILTER_PHASES if stream == "filter" else REPORT_EVENTS
        if event not in known:
            raise LineError(f"unknown {stream} event: {event!r}")
        return Register(stream, subsystem, event)
    if kind == "filter-dataline":
        parts = rest.split("|", 2)
        if len(parts) != 3:
            raise LineError(f"invalid filter-dataline: {line[:80]!r}")
        return DataLine(_hex(parts[0], "session id"), _hex(parts[1], "token"), parts[2])
    if kind == "filter-result":
        parts = rest.split("|", 3)
        if len(parts) < 3:
            raise LineError(f"invalid filter-result: {line[:80]!r}")
        try:
            decision = Decision(parts[2])
        except ValueError:
            raise LineError(f"unknown decision: {parts[2][:40]!r}") from None
        if decision is Decision.BYPASS:
            raise LineError("bypass is not a proc filter decision")
        param = parts[3] if len(parts) == 4 else ""
        if decision in (Decision.REJECT, Decision.DISCONNECT, Decision.REWRITE,
                        Decision.REPORT) and not param:
            raise LineError(f"{decision.value} needs a parameter")
        return Result(_hex(parts[0], "session id"), _hex(parts[1], "token"), decision, param)
    raise LineError(f"unknown line type: {kind[:40]!r}")


def reply_ok(text: str) -> bool:
    """A reject/disconnect parameter must be a whole SMTP reply, 4xx or 5xx."""
    return (len(text) >= 3 and text[:3].isdigit() and text[0] in "45"
            and (len(text) == 3 or text[3] == " ") and text.isprintable())
