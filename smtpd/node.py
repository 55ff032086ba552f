"""What the parent and every child share: imsg channels to peers, dispatch
keyed by (peer, type), the READY handshake, tracing, profiling and stats.

Fail closed (DESIGN.md §1): a frame from a peer process that does not fit the
routing table, whose payload is malformed, or whose fd is missing or
unexpected, is a bug in that peer.  `ProtocolBug` ends this process with a log
line naming the peer and the type; the parent then stops everyone.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from imsg import MAX_PAYLOAD, Channel, Frame
from smtpd import log
from smtpd.msg import (
    PEERS,
    ROUTES,
    WITH_FD,
    Fragment,
    LogVerbose,
    Msg,
    MsgError,
    Proc,
    Ready,
    StatUpdates,
    TraceSet,
    check_route,
    decode,
    encode,
)
from smtpd.stat.collector import StatCollector
from smtpd.trace import Profile, Trace

Handler = Callable[[Any, Frame], None]

# Stat updates per ANY_STAT_UPDATE frame: keeps each frame far below 16 KiB.
STAT_BATCH = 64
IMSG_STATS_INTERVAL = 1.0
STAT_FLUSH_INTERVAL = 0.25
_PROFILE_ALL = sum(int(p) for p in Profile)
_NO_TRACE = Trace(0)
_NO_PROFILE = Profile(0)
# An encoded payload above MAX_PAYLOAD goes as ANY_FRAGMENT frames of this
# much (room left for the Fragment's own msgpack framing), up to MAX_MESSAGE.
FRAGMENT_PART = MAX_PAYLOAD - 64
MAX_MESSAGE = 8 * 1024 * 1024


class ProtocolBug(Exception):
    """A trusted peer broke the imsg contract: fatal for this process."""


class Node:
    name: Proc
    #: peers that must have announced READY before this process goes live
    needs: frozenset[Proc] = frozenset()

    def __init__(self, traces: Trace = _NO_TRACE, profiles: Profile = _NO_PROFILE) -> None:
        self.log = log.get()
        self.traces = traces
        self.profiles = profiles
        self._profile_keys: dict[Msg, str] = {}
        self.channels: dict[Proc, Channel] = {}
        self.handlers: dict[tuple[Proc, Msg], Handler] = {}
        self.ready_peers: set[Proc] = set()
        self.live = False
        self._held: list[tuple[Proc, Frame]] = []
        # per peer: the type and the parts so far of an imsg arriving in fragments
        self._partial: dict[Proc, tuple[int, bytearray]] = {}
        self.loop = asyncio.get_event_loop()
        self.stats = StatCollector(self._schedule_stat_flush)
        self._imsg_stats_last: dict[str, int] = {}
        self.stopping = asyncio.Event()
        if self.name is not Proc.CONTROL:
            self.handle(Proc.CONTROL, Msg.CTL_TRACE_SET, self._on_trace_set)
            self.handle(Proc.CONTROL, Msg.CTL_PROFILE_SET, self._on_profile_set)
            self.handle(Proc.CONTROL, Msg.CTL_LOG_VERBOSE, self._on_log_verbose)

    # -- runtime switches from control ----------------------------------------
    # IntFlag arithmetic costs ~0.5 µs; the per-frame checks read plain bools
    # kept in sync by these setters (bench/imsg_bench.py measured the gain).

    @property
    def traces(self) -> Trace:
        return self._traces

    @traces.setter
    def traces(self, value: Trace) -> None:
        self._traces = value
        self._trace_imsg = bool(value & Trace.IMSG)

    @property
    def profiles(self) -> Profile:
        return self._profiles

    @profiles.setter
    def profiles(self, value: Profile) -> None:
        self._profiles = value
        self._profile_imsg = bool(value & Profile.IMSG)

    def _on_trace_set(self, payload: TraceSet, _frame: Frame) -> None:
        mask = Trace(payload.subsystems & Trace.ALL)
        self.traces = self.traces | mask if payload.enable else self.traces & ~mask

    def _on_profile_set(self, payload: TraceSet, _frame: Frame) -> None:
        mask = Profile(payload.subsystems & _PROFILE_ALL)
        self.profiles = self.profiles | mask if payload.enable else self.profiles & ~mask

    def _on_log_verbose(self, payload: LogVerbose, _frame: Frame) -> None:
        log.set_verbose(payload.verbose)

    # -- wiring -------------------------------------------------------------

    def attach(self, peer: Proc, sock: socket.socket) -> Channel:
        if peer not in PEERS[self.name]:
            raise ValueError(f"{self.name} does not talk to {peer}")
        def on_frame(frame: Frame) -> None:
            self._on_frame(peer, frame)

        def on_close(_chan: Channel, exc: Exception | None) -> None:
            self.peer_closed(peer, exc)

        def on_trace(direction: str, frame: Frame) -> None:
            self._trace_frame(peer, direction, frame)

        chan = Channel(sock, name=str(peer), loop=self.loop, on_frame=on_frame,
                       on_close=on_close, on_trace=on_trace)
        self.channels[peer] = chan
        return chan

    def handle(self, peer: Proc, msg: Msg, handler: Handler) -> None:
        route = ROUTES[msg]
        if peer not in route.senders or self.name not in route.receivers:
            raise ValueError(f"route {msg.name} {peer}->{self.name} is not in ROUTES")
        self.handlers[(peer, msg)] = handler

    def send(self, peer: Proc, msg: Msg, payload: Any, *, fd: int | None = None,
             peerid: int = 0) -> None:
        route = ROUTES[msg]
        if self.name not in route.senders or peer not in route.receivers:
            raise ValueError(f"{self.name} may not send {msg.name} to {peer}")
        if not isinstance(payload, route.payload):
            raise TypeError(f"{msg.name} takes {route.payload.__name__}")
        data = encode(payload)
        channel = self.channels[peer]
        if len(data) <= MAX_PAYLOAD:
            channel.send(int(msg), data, fd=fd, peerid=peerid)
            return
        # Too large for one frame (OpenSMTPD's 16 KiB imsg limit): consecutive
        # fragments on this channel, reassembled by the peer's _on_frame.
        if len(data) > MAX_MESSAGE:
            raise ValueError(f"{msg.name}: {len(data)} bytes exceeds {MAX_MESSAGE}")
        for start in range(0, len(data), FRAGMENT_PART):
            last = start + FRAGMENT_PART >= len(data)
            part = Fragment(int(msg), data[start:start + FRAGMENT_PART], last)
            channel.send(int(Msg.ANY_FRAGMENT), encode(part), fd=fd if last else None,
                         peerid=peerid)

    def start_channels(self) -> None:
        for chan in self.channels.values():
            chan.start()
        for peer in self.channels:
            self.send(peer, Msg.ANY_PROC_READY, Ready(str(self.name)))

    # -- receiving ----------------------------------------------------------

    def _on_frame(self, peer: Proc, frame: Frame) -> None:
        try:
            msg = check_route(frame.type, peer, self.name)
            if msg is Msg.ANY_FRAGMENT:
                whole = self._reassemble(peer, frame)
                if whole is None:
                    return
                frame, msg = whole, check_route(whole.type, peer, self.name)
            if msg is Msg.ANY_PROC_READY:
                self._peer_ready(peer, decode(msg, frame.data))
                return
            if not self.live:
                # The start-up race fix: nothing but READY is handled before
                # every peer we need is ready; frames wait here, in order.
                self._held.append((peer, frame))
                return
            self._dispatch(peer, msg, frame)
        except MsgError as exc:
            if frame.fd is not None:
                os.close(frame.fd)
            self.fatal_bug(peer, frame.type, str(exc))

    def _reassemble(self, peer: Proc, frame: Frame) -> Frame | None:
        """Add a fragment; the whole imsg once its last part is in."""
        part = decode(Msg.ANY_FRAGMENT, frame.data)
        assert isinstance(part, Fragment)
        if part.type in (Msg.ANY_FRAGMENT, Msg.ANY_PROC_READY):
            raise MsgError(f"fragmented {part.type} from {peer}")
        check_route(part.type, peer, self.name)
        kind, data = self._partial.setdefault(peer, (part.type, bytearray()))
        if kind != part.type:
            raise MsgError(f"fragment of {part.type} from {peer} inside one of {kind}")
        if frame.fd is not None and not part.last:
            raise MsgError(f"fd on a fragment of {part.type} from {peer} before its last")
        data += part.part
        if len(data) > MAX_MESSAGE:
            raise MsgError(f"fragmented {part.type} from {peer} exceeds {MAX_MESSAGE} bytes")
        if not part.last:
            return None
        del self._partial[peer]
        return Frame(part.type, bytes(data), frame.peerid, frame.pid, frame.fd)

    def _dispatch(self, peer: Proc, msg: Msg, frame: Frame) -> None:
        handler = self.handlers.get((peer, msg))
        if handler is None:
            raise MsgError(f"{msg.name} from {peer} has no handler in {self.name}")
        if (msg in WITH_FD) != (frame.fd is not None):
            which = "missing" if frame.fd is None else "unexpected"
            raise MsgError(f"{msg.name} from {peer}: fd {which}")
        payload = decode(msg, frame.data)
        if self._profile_imsg:
            t0 = time.monotonic_ns()
            handler(payload, frame)
            elapsed = time.monotonic_ns() - t0
            key = self._profile_keys.get(msg)
            if key is None:
                key = self._profile_keys[msg] = f"profiling.imsg.{self.name}.{msg.name}"
            self.stats.observe(key, elapsed)
        else:
            handler(payload, frame)

    def _peer_ready(self, peer: Proc, ready: Ready) -> None:
        if ready.proc != peer:
            raise MsgError(f"READY from {peer} claims to be {ready.proc}")
        if peer in self.ready_peers:
            raise MsgError(f"second READY from {peer}")
        self.ready_peers.add(peer)
        if not self.live and self.needs <= self.ready_peers:
            self._go_live()

    def _go_live(self) -> None:
        self.live = True
        held, self._held = self._held, []
        for peer, frame in held:
            try:
                self._dispatch(peer, check_route(frame.type, peer, self.name), frame)
            except MsgError as exc:
                if frame.fd is not None:
                    os.close(frame.fd)
                self.fatal_bug(peer, frame.type, str(exc))
        self.loop.call_later(IMSG_STATS_INTERVAL, self._imsg_stats_tick)
        self.on_live()
        self._schedule_stat_flush()

    def on_live(self) -> None:
        """Every needed peer is READY: register listeners and timers here."""

    def peer_closed(self, peer: Proc, exc: Exception | None) -> None:
        if self.stopping.is_set():
            return
        if exc is not None:
            self.fatal_bug(peer, None, f"channel error: {exc}")
        self.log.warning("%s: lost %s, exiting", self.name, peer)
        self.exit(1)

    def fatal_bug(self, peer: Proc, msg_type: int | None, reason: str) -> None:
        name = (Msg(msg_type).name if msg_type is not None
                and msg_type in Msg._value2member_map_ else str(msg_type))
        self.log.critical("%s: imsg from %s type %s: %s", self.name, peer, name, reason)
        self.exit(1)

    def exit(self, status: int) -> None:
        self.stopping.set()
        sys.stderr.flush()
        os._exit(status)

    # -- tracing, profiling, stats ---------------------------------------------

    def _trace_frame(self, peer: Proc, direction: str, frame: Frame) -> None:
        if self._trace_imsg:
            name = Msg(frame.type).name if frame.type in Msg._value2member_map_ else frame.type
            arrow = "<-" if direction == "in" else "->"
            self.log.info("imsg: %s %s %s: %s (len=%d, fd=%s)", self.name, arrow, peer,
                          name, len(frame.data) + 16, frame.fd if frame.fd is not None else -1)

    def _schedule_stat_flush(self) -> None:
        # Batched: at most one ANY_STAT_UPDATE per interval, not one per event
        # (a flush per loop iteration made profiling cost a frame per dispatch).
        if self.live:
            self.loop.call_later(STAT_FLUSH_INTERVAL, self.flush_stats)

    def flush_stats(self) -> None:
        updates = self.stats.drain()
        if not updates or Proc.CONTROL not in self.channels:
            return
        wire = [u.to_wire() for u in updates]
        for i in range(0, len(wire), STAT_BATCH):
            self.send(Proc.CONTROL, Msg.ANY_STAT_UPDATE, StatUpdates(wire[i:i + STAT_BATCH]))

    def _imsg_stats_tick(self) -> None:
        # Counters are read from the channels once a second rather than bumped
        # per frame: a stat per frame would itself make frames, forever.
        for peer, chan in self.channels.items():
            for field in ("frames_in", "frames_out", "bytes_in", "bytes_out"):
                key = f"imsg.{self.name}.{peer}.{field}"
                value = getattr(chan, field)
                if self._imsg_stats_last.get(key) != value:
                    self._imsg_stats_last[key] = value
                    self.stats.set(key, value)
        if not self.stopping.is_set():
            self.loop.call_later(IMSG_STATS_INTERVAL, self._imsg_stats_tick)
