"""Every imsg the daemon exchanges: one `Msg` type, one payload dataclass and
one route each (DESIGN.md §2).

Names say SENDER_NOUN_VERB.  `ROUTES` is the single table of which process may
send which type to whom; a frame that does not fit it is a bug in the sender and
is fatal for the receiver (fail closed).  `PROTOCOL_VERSION` is derived from the
table, so an smtpctl built against another table is refused at the handshake.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from imsg import codec


class Proc(enum.StrEnum):
    PARENT = "parent"
    SMTP = "smtp"
    QUEUE = "queue"
    SCHEDULER = "scheduler"
    LOOKUP = "lookup"
    CONTROL = "control"
    CLIENT = "client"  # an smtpctl connection on the control socket (untrusted)


CHILDREN: Final = (Proc.CONTROL, Proc.LOOKUP, Proc.SCHEDULER, Proc.QUEUE, Proc.SMTP)

# Who talks to whom (DESIGN.md §1): one socketpair per pair.
PEERS: Final[dict[Proc, frozenset[Proc]]] = {
    Proc.PARENT: frozenset(CHILDREN),
    Proc.SMTP: frozenset({Proc.PARENT, Proc.LOOKUP, Proc.QUEUE, Proc.CONTROL}),
    Proc.QUEUE: frozenset({Proc.PARENT, Proc.SMTP, Proc.SCHEDULER, Proc.LOOKUP, Proc.CONTROL}),
    Proc.SCHEDULER: frozenset({Proc.PARENT, Proc.QUEUE, Proc.CONTROL}),
    Proc.LOOKUP: frozenset({Proc.PARENT, Proc.SMTP, Proc.QUEUE, Proc.CONTROL}),
    Proc.CONTROL: frozenset({Proc.PARENT, Proc.SMTP, Proc.QUEUE, Proc.SCHEDULER, Proc.LOOKUP}),
}


class Msg(enum.IntEnum):
    # start-up and supervision
    ANY_PROC_READY = 1
    ANY_STAT_UPDATE = 2
    ANY_FRAGMENT = 3            # part of an imsg too large for one frame (smtpd/node.py)
    PARENT_LISTENER_SEND = 10
    PARENT_CONTROL_SOCKET_SEND = 11
    PARENT_FILTER_FD = 12       # a filter process's stdin/stdout socket, to smtp
    # runtime switches pushed by control to every process
    CTL_TRACE_SET = 20
    CTL_PROFILE_SET = 21
    CTL_LOG_VERBOSE = 22
    CTL_STOP = 23
    PARENT_CONFIG_RELOAD = 24   # the new configuration passed its checks: re-read it
    CTL_RELOAD = 25             # smtpctl reload
    PARENT_CTL_RELOAD_RESULT = 26
    # inbound mail: smtp <-> queue, smtp <-> lookup
    SMTP_MESSAGE_CREATE = 30
    QUEUE_MESSAGE_CREATED = 31
    SMTP_MESSAGE_OPEN = 32
    QUEUE_MESSAGE_FD = 33
    SMTP_MESSAGE_COMMIT = 34
    QUEUE_MESSAGE_COMMITTED = 35
    SMTP_MESSAGE_ROLLBACK = 36
    QUEUE_REQUEST_FAILED = 37
    SMTP_RCPT_CHECK = 40
    LOOKUP_RCPT_RESULT = 41
    SMTP_AUTH_CHECK = 42
    QUEUE_RCPT_CHECK = 44  # routing a bounce's recipient (the original sender)
    SMTP_HOST_LOOKUP = 45
    LOOKUP_HOST_RESULT = 46
    LOOKUP_AUTH_RESULT = 43
    # scheduling and delivery: queue <-> scheduler, queue <-> parent
    QUEUE_MESSAGE_SCHEDULE = 50
    SCHEDULER_ENVELOPE_DELIVER = 51
    SCHEDULER_ENVELOPE_EXPIRE = 52
    SCHEDULER_ENVELOPE_REMOVE = 53
    QUEUE_DELIVERY_RESULT = 54
    QUEUE_DELIVERY_START = 55
    PARENT_DELIVERY_RESULT = 56
    SCHEDULER_ENVELOPE_WARN = 57
    QUEUE_MTA_TRANSFER = 58     # relay these envelopes of one message (fd: the message)
    SMTP_MTA_RESULT = 59
    # smtpctl requests relayed by control, answered to control
    CTL_SCHEDULER_REQUEST = 70
    SCHEDULER_CTL_REPLY = 71
    CTL_QUEUE_REQUEST = 72
    QUEUE_CTL_REPLY = 73
    CTL_SMTP_PAUSE = 74
    CTL_LOOKUP_REQUEST = 75
    LOOKUP_CTL_REPLY = 76
    CTL_SMTP_REQUEST = 79
    SMTP_CTL_REPLY = 80
    CTL_SMTP_ENQUEUE = 77       # a local submission: smtp opens a session ...
    SMTP_CTL_ENQUEUE_FD = 78    # ... and hands one end of a socketpair back
    # smtpctl client <-> control (untrusted peer)
    CLIENT_HELLO = 100
    CLIENT_COMMAND = 101
    CTL_CLIENT_HELLO = 110
    CTL_CLIENT_LINES = 111
    CTL_CLIENT_DONE = 112
    CTL_CLIENT_FD = 113         # the local SMTP session's socket, to smtpctl/sendmail


# -- payloads ---------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Empty:
    pass


@dataclass(frozen=True, slots=True)
class Ready:
    proc: str


@dataclass(frozen=True, slots=True)
class Fragment:
    """A slice of the encoded payload of one imsg of type `type` whose payload
    does not fit a frame (a commit of 1,000 envelopes, an alias expanded to
    a long list).  The slices follow each other on the channel; the last one
    carries the fd, if any."""
    type: int
    part: bytes
    last: bool


@dataclass(frozen=True, slots=True)
class StatUpdates:
    # each item is StatUpdate.to_wire(); validated by control on receipt
    updates: list[Any]


@dataclass(frozen=True, slots=True)
class ListenerSend:
    """A bound listening socket (the frame's fd) and which listener it is."""
    index: int
    address: str
    port: int


@dataclass(frozen=True, slots=True)
class FilterFd:
    """A (re)started filter process's socket (the frame's fd): smtp speaks
    the smtpd-filters protocol on it (smtpd/filter/)."""
    name: str
    generation: int


@dataclass(frozen=True, slots=True)
class TraceSet:
    subsystems: int  # bit mask of smtpd.trace.Trace
    enable: bool


@dataclass(frozen=True, slots=True)
class LogVerbose:
    verbose: bool


@dataclass(frozen=True, slots=True)
class ClientHello:
    version: int


@dataclass(frozen=True, slots=True)
class ClientCommand:
    words: list[str]


@dataclass(frozen=True, slots=True)
class ClientLines:
    lines: list[str]
    stderr: bool


@dataclass(frozen=True, slots=True)
class ClientDone:
    status: int  # smtpctl's exit status


# -- inbound mail -------------------------------------------------------------
# `reqid` pairs a request with its answer; it is chosen by the requester.

@dataclass(frozen=True, slots=True)
class Request:
    reqid: int


@dataclass(frozen=True, slots=True)
class MessageCreated:
    reqid: int
    msgid: int


@dataclass(frozen=True, slots=True)
class MessageRef:
    reqid: int
    msgid: int


@dataclass(frozen=True, slots=True)
class MessageCommit:
    reqid: int
    msgid: int
    # Envelope texts (smtpd.queue.envelope codec), evpid left 0: queue assigns.
    envelopes: list[str]


@dataclass(frozen=True, slots=True)
class MessageCommitted:
    reqid: int
    msgid: int
    evpids: list[int]     # in the order of MessageCommit.envelopes


@dataclass(frozen=True, slots=True)
class RequestFailed:
    """A queue request that failed; `reply` is the SMTP reply to give."""
    reqid: int
    reply: str


@dataclass(frozen=True, slots=True)
class RcptCheck:
    reqid: int
    # session facts the match rules look at (smtpd.lookup.ruleset.SessionFacts)
    listener_tag: str
    local: bool           # from a unix socket / local enqueue
    src: str              # client address
    rdns: str
    helo: str
    tls: bool
    auth_user: str        # "" when not authenticated
    sender: str           # "" for <>
    rcpt: str
    # envelope template fields carried into every expanded envelope
    template: str


@dataclass(frozen=True, slots=True)
class RcptResult:
    reqid: int
    ok: bool
    reply: str            # the SMTP reply to give for this RCPT
    envelopes: list[str]  # expanded envelope texts when ok


@dataclass(frozen=True, slots=True)
class HostLookup:
    reqid: int
    address: str


@dataclass(frozen=True, slots=True)
class HostResult:
    reqid: int
    name: str             # reverse DNS name, "" if none
    confirmed: bool       # forward-confirmed (FCrDNS)
    tempfail: bool


@dataclass(frozen=True, slots=True)
class AuthCheck:
    reqid: int
    table: str            # "" = system accounts
    username: str
    password: str         # never logged


@dataclass(frozen=True, slots=True)
class AuthResult:
    reqid: int
    status: str           # "ok" | "fail" | "tempfail"


# -- scheduling and delivery -----------------------------------------------------

@dataclass(frozen=True, slots=True)
class MessageSchedule:
    """Committed (or loaded at start) envelopes for the scheduler.

    Each info is [evpid, type (smtpd.queue.envelope.DeliveryType value),
    ctime, ttl, retry, lasttry, lastbounce]."""
    msgid: int
    infos: list[list[int | str]]


@dataclass(frozen=True, slots=True)
class Evpids:
    evpids: list[int]


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """What became of an envelope the scheduler handed out.

    status: "ok" | "tempfail" | "permfail" | "loop" for deliveries, "done" when
    a REMOVE or EXPIRE was carried out, "missing" when the queue could not
    load it.  info is the envelope's schedule info as in MessageSchedule."""
    evpid: int
    status: str
    info: list[int | str]
    text: str


@dataclass(frozen=True, slots=True)
class DeliveryStart:
    """The frame's fd is the message, readable, plaintext (LF line endings)."""
    evpid: int
    envelope: str
    # no earlier attempt can exist: committed by the running queue and never
    # handed out before (the maildir need not look for a copy under its name)
    first_attempt: bool = False


@dataclass(frozen=True, slots=True)
class ParentDeliveryResult:
    evpid: int
    status: str           # "ok" | "tempfail" | "permfail"
    text: str
    detail: str


@dataclass(frozen=True, slots=True)
class MtaTransfer:
    """Envelopes of one message for one action and destination domain; the
    frame's fd is the plaintext message (LF line endings)."""
    reqid: int
    dispatcher: str
    domain: str
    envelopes: list[str]


@dataclass(frozen=True, slots=True)
class MtaResult:
    reqid: int
    results: list[list[int | str]]   # [evpid, "ok"|"tempfail"|"permfail", reply text]


@dataclass(frozen=True, slots=True)
class CtlRequest:
    reqid: int
    verb: str             # e.g. "schedule", "remove", "pause", "list"
    args: list[str]


@dataclass(frozen=True, slots=True)
class CtlReply:
    reqid: int
    status: int
    lines: list[str]
    done: bool            # the last frame of this reply
    more: bool = False    # a listing with more to come on "list-next" (show queue)


@dataclass(frozen=True, slots=True)
class PauseSet:
    paused: bool


@dataclass(frozen=True, slots=True)
class EnqueueRequest:
    reqid: int
    uid: int              # the local user submitting (SO_PEERCRED)


@dataclass(frozen=True, slots=True)
class Route:
    senders: frozenset[Proc]
    receivers: frozenset[Proc]
    payload: type[Any]


_ALL = frozenset(Proc) - {Proc.CLIENT}
_CHILDREN = frozenset(CHILDREN)
_P = frozenset({Proc.PARENT})
_S = frozenset({Proc.SMTP})
_Q = frozenset({Proc.QUEUE})
_L = frozenset({Proc.LOOKUP})
_SCH = frozenset({Proc.SCHEDULER})
_C = frozenset({Proc.CONTROL})

ROUTES: Final[dict[Msg, Route]] = {
    Msg.ANY_PROC_READY: Route(_ALL, _ALL, Ready),
    Msg.ANY_FRAGMENT: Route(_ALL, _ALL, Fragment),
    Msg.ANY_STAT_UPDATE: Route(_ALL - {Proc.CONTROL}, frozenset({Proc.CONTROL}), StatUpdates),
    Msg.PARENT_LISTENER_SEND: Route(
        frozenset({Proc.PARENT}), frozenset({Proc.SMTP}), ListenerSend),
    Msg.PARENT_CONTROL_SOCKET_SEND: Route(
        frozenset({Proc.PARENT}), frozenset({Proc.CONTROL}), Empty),
    Msg.PARENT_FILTER_FD: Route(_P, _S, FilterFd),
    Msg.CTL_TRACE_SET: Route(frozenset({Proc.CONTROL}), _ALL - {Proc.CONTROL}, TraceSet),
    Msg.CTL_PROFILE_SET: Route(frozenset({Proc.CONTROL}), _ALL - {Proc.CONTROL}, TraceSet),
    Msg.CTL_LOG_VERBOSE: Route(frozenset({Proc.CONTROL}), _ALL - {Proc.CONTROL}, LogVerbose),
    Msg.CTL_STOP: Route(frozenset({Proc.CONTROL}), frozenset({Proc.PARENT}), Empty),
    Msg.PARENT_CONFIG_RELOAD: Route(_P, _S | _L, Empty),
    Msg.CTL_RELOAD: Route(_C, _P, Request),
    Msg.PARENT_CTL_RELOAD_RESULT: Route(_P, _C, CtlReply),
    Msg.SMTP_MESSAGE_CREATE: Route(_S, _Q, Request),
    Msg.QUEUE_MESSAGE_CREATED: Route(_Q, _S, MessageCreated),
    Msg.SMTP_MESSAGE_OPEN: Route(_S, _Q, MessageRef),
    Msg.QUEUE_MESSAGE_FD: Route(_Q, _S, MessageRef),
    Msg.SMTP_MESSAGE_COMMIT: Route(_S, _Q, MessageCommit),
    Msg.QUEUE_MESSAGE_COMMITTED: Route(_Q, _S, MessageCommitted),
    Msg.SMTP_MESSAGE_ROLLBACK: Route(_S, _Q, MessageRef),
    Msg.QUEUE_REQUEST_FAILED: Route(_Q, _S, RequestFailed),
    Msg.SMTP_RCPT_CHECK: Route(_S, _L, RcptCheck),
    Msg.LOOKUP_RCPT_RESULT: Route(_L, _S | _Q, RcptResult),
    Msg.QUEUE_RCPT_CHECK: Route(_Q, _L, RcptCheck),
    Msg.SMTP_HOST_LOOKUP: Route(_S, _L, HostLookup),
    Msg.LOOKUP_HOST_RESULT: Route(_L, _S, HostResult),
    Msg.SMTP_AUTH_CHECK: Route(_S, _L, AuthCheck),
    Msg.LOOKUP_AUTH_RESULT: Route(_L, _S, AuthResult),
    Msg.QUEUE_MESSAGE_SCHEDULE: Route(_Q, _SCH, MessageSchedule),
    Msg.SCHEDULER_ENVELOPE_DELIVER: Route(_SCH, _Q, Evpids),
    Msg.SCHEDULER_ENVELOPE_EXPIRE: Route(_SCH, _Q, Evpids),
    Msg.SCHEDULER_ENVELOPE_REMOVE: Route(_SCH, _Q, Evpids),
    Msg.SCHEDULER_ENVELOPE_WARN: Route(_SCH, _Q, Evpids),
    Msg.QUEUE_DELIVERY_RESULT: Route(_Q, _SCH, DeliveryResult),
    Msg.QUEUE_DELIVERY_START: Route(_Q, _P, DeliveryStart),
    Msg.QUEUE_MTA_TRANSFER: Route(_Q, _S, MtaTransfer),
    Msg.SMTP_MTA_RESULT: Route(_S, _Q, MtaResult),
    Msg.PARENT_DELIVERY_RESULT: Route(_P, _Q, ParentDeliveryResult),
    Msg.CTL_SCHEDULER_REQUEST: Route(_C, _SCH, CtlRequest),
    Msg.SCHEDULER_CTL_REPLY: Route(_SCH, _C, CtlReply),
    Msg.CTL_QUEUE_REQUEST: Route(_C, _Q, CtlRequest),
    Msg.QUEUE_CTL_REPLY: Route(_Q, _C, CtlReply),
    Msg.CTL_SMTP_PAUSE: Route(_C, _S, PauseSet),
    Msg.CTL_LOOKUP_REQUEST: Route(_C, _L, CtlRequest),
    Msg.CTL_SMTP_ENQUEUE: Route(_C, _S, EnqueueRequest),
    Msg.CTL_SMTP_REQUEST: Route(_C, _S, CtlRequest),
    Msg.SMTP_CTL_REPLY: Route(_S, _C, CtlReply),
    Msg.SMTP_CTL_ENQUEUE_FD: Route(_S, _C, Request),
    Msg.LOOKUP_CTL_REPLY: Route(_L, _C, CtlReply),
    Msg.CLIENT_HELLO: Route(frozenset({Proc.CLIENT}), frozenset({Proc.CONTROL}), ClientHello),
    Msg.CLIENT_COMMAND: Route(
        frozenset({Proc.CLIENT}), frozenset({Proc.CONTROL}), ClientCommand),
    Msg.CTL_CLIENT_HELLO: Route(
        frozenset({Proc.CONTROL}), frozenset({Proc.CLIENT}), ClientHello),
    Msg.CTL_CLIENT_LINES: Route(
        frozenset({Proc.CONTROL}), frozenset({Proc.CLIENT}), ClientLines),
    Msg.CTL_CLIENT_DONE: Route(frozenset({Proc.CONTROL}), frozenset({Proc.CLIENT}), ClientDone),
    Msg.CTL_CLIENT_FD: Route(frozenset({Proc.CONTROL}), frozenset({Proc.CLIENT}), Empty),
}

# Messages whose frame must carry a file descriptor.
WITH_FD: Final = frozenset({Msg.PARENT_LISTENER_SEND, Msg.PARENT_CONTROL_SOCKET_SEND,
                            Msg.PARENT_FILTER_FD,
                            Msg.QUEUE_MESSAGE_FD, Msg.QUEUE_DELIVERY_START,
                            Msg.SMTP_CTL_ENQUEUE_FD, Msg.CTL_CLIENT_FD,
                            Msg.QUEUE_MTA_TRANSFER})


CTL_REPLY_BYTES = 8192  # text per CtlReply frame: far below the 16 KiB frame limit


def chunk_lines(lines: list[str]) -> list[tuple[list[str], bool]]:
    """Control reply lines split into frames that fit: (lines, is_last)."""
    chunks: list[list[str]] = [[]]
    size = 0
    for line in lines:
        line = line[:CTL_REPLY_BYTES]
        if size + len(line) > CTL_REPLY_BYTES and chunks[-1]:
            chunks.append([])
            size = 0
        chunks[-1].append(line)
        size += len(line) + 8
    return [(chunk, i == len(chunks) - 1) for i, chunk in enumerate(chunks)]


def _routes_fingerprint() -> int:
    text = ";".join(
        f"{m.name}={m.value}:{sorted(r.senders)}>{sorted(r.receivers)}:"
        f"{[(f.name, str(f.type)) for f in dataclasses.fields(r.payload)]}"
        for m, r in sorted(ROUTES.items()))
    return zlib.crc32(text.encode())


PROTOCOL_VERSION: Final = _routes_fingerprint()


class MsgError(Exception):
    """A frame that does not fit the routing table or its payload type."""


# -- payload codec ----------------------------------------------------------
# A payload travels as a msgpack list of its fields in declaration order.  The
# receiver checks every field's type against the dataclass annotation: a peer
# process that sends garbage has a bug and must not be trusted any further.

def _checker(tp: Any) -> Callable[[Any], bool]:
    origin = typing.get_origin(tp)
    if tp is Any:
        return lambda v: True
    if tp is int:
        return lambda v: isinstance(v, int) and not isinstance(v, bool)
    if tp in (str, bytes, bool, float):
        return lambda v: isinstance(v, tp)
    if tp is type(None):
        return lambda v: v is None
    if origin in (typing.Union, types.UnionType):
        checks = [_checker(a) for a in typing.get_args(tp)]
        return lambda v: any(c(v) for c in checks)
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        check = _checker(item)
        return lambda v: isinstance(v, list) and all(check(i) for i in v)
    if origin is dict:
        kt, vt = typing.get_args(tp) or (Any, Any)
        kc, vc = _checker(kt), _checker(vt)
        return lambda v: isinstance(v, dict) and all(kc(k) and vc(x) for k, x in v.items())
    raise TypeError(f"unsupported payload field type {tp!r}")


_CHECKERS: dict[type[Any], list[tuple[str, Callable[[Any], bool]]]] = {}


def _checkers_for(cls: type[Any]) -> list[tuple[str, Callable[[Any], bool]]]:
    found = _CHECKERS.get(cls)
    if found is None:
        hints = typing.get_type_hints(cls)
        found = [(f.name, _checker(hints[f.name])) for f in dataclasses.fields(cls)]
        _CHECKERS[cls] = found
    return found


def encode(payload: Any) -> bytes:
    return codec.pack([getattr(payload, f.name) for f in dataclasses.fields(payload)])


def decode(msg: Msg, data: bytes) -> Any:
    cls = ROUTES[msg].payload
    try:
        values = codec.unpack(data)
    except Exception as exc:
        raise MsgError(f"{msg.name}: undecodable payload") from exc
    checks = _checkers_for(cls)
    if not isinstance(values, list) or len(values) != len(checks):
        raise MsgError(f"{msg.name}: payload has the wrong shape")
    for (name, check), value in zip(checks, values, strict=True):
        if not check(value):
            raise MsgError(f"{msg.name}: field {name} has the wrong type")
    return cls(*values)


def check_route(msg_type: int, sender: Proc, receiver: Proc) -> Msg:
    """The Msg for a received frame type, or MsgError if the route is not allowed."""
    try:
        msg = Msg(msg_type)
    except ValueError:
        raise MsgError(f"unknown imsg type {msg_type}") from None
    route = ROUTES[msg]
    if sender not in route.senders or receiver not in route.receivers:
        raise MsgError(f"{msg.name} is not allowed from {sender} to {receiver}")
    return msg
