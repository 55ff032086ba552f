"""The control process: the smtpctl socket, stats aggregation, runtime switches.

Clients on the 0666 control socket are untrusted (CVE-2025-62875): a bad frame
or a bad command closes or answers that client and never the process.  Only
root or the daemon's own uid may run commands that change something
(SO_PEERCRED); anyone may read.
"""

from __future__ import annotations

import errno
import os
import socket
import sqlite3
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from imsg import Channel, ChannelClosed, ChannelOverflow, Frame
from smtpctl.grammar import Command, GrammarError, parse
from smtpd.control.listing import QueueListing
from smtpd.msg import (
    CHILDREN,
    PROTOCOL_VERSION,
    ClientCommand,
    ClientDone,
    ClientHello,
    ClientLines,
    CtlReply,
    CtlRequest,
    Empty,
    EnqueueRequest,
    LogVerbose,
    Msg,
    MsgError,
    PauseSet,
    Proc,
    Request,
    StatUpdates,
    TraceSet,
    check_route,
    chunk_lines,
    decode,
    encode,
)
from smtpd.proc import Child
from smtpd.stat import prometheus
from smtpd.stat.backend import StatBackend, open_backend
from smtpd.stat.kinds import StatUpdate
from smtpd.stat.persistent import PersistentStat, Retention
from smtpd.stat.views import history_lines, parse_duration, profile_lines, profile_rows
from smtpd.trace import Profile, Trace, parse_profile, parse_trace

ACCEPT_RETRY = 1.0


def human_duration(seconds: int) -> str:
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{days}d{hours}h{minutes}m{secs}s"


@dataclass
class PendingRequest:
    client: ClientSession
    on_done: Callable[[int, list[str]], None]
    status: int = 0
    lines: list[str] = field(default_factory=list)
    # a page of a listing: on_page(status, lines, more) instead of on_done
    on_page: Callable[[int, list[str], bool], None] | None = None
    on_gone: Callable[[], None] | None = None  # the answer came after the client left


class ClientSession:
    def __init__(self, control: ControlProcess, sock: socket.socket) -> None:
        self.control = control
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        self.pid, self.uid, self.gid = struct.unpack("3i", creds)
        self.hello = False
        self.channel = Channel(sock, name="client", on_frame=self.on_frame,
                               on_close=self.on_close, loop=control.loop)

    def on_frame(self, frame: Frame) -> None:
        if frame.fd is not None:
            os.close(frame.fd)
            return self.drop("unexpected file descriptor")
        try:
            msg = check_route(frame.type, Proc.CLIENT, Proc.CONTROL)
            payload = decode(msg, frame.data)
        except MsgError as exc:
            return self.drop(str(exc))
        if msg is Msg.CLIENT_HELLO:
            assert isinstance(payload, ClientHello)
            self._send(Msg.CTL_CLIENT_HELLO, encode(ClientHello(PROTOCOL_VERSION)))
            if payload.version != PROTOCOL_VERSION:
                self.reply(["smtpctl: version mismatch with the running smtpd: "
                            f"client {payload.version:#x}, server {PROTOCOL_VERSION:#x}"],
                           status=1, stderr=True)
                return
            self.hello = True
            return
        if not self.hello:
            return self.drop("command before hello")
        assert isinstance(payload, ClientCommand)
        try:
            command = parse(payload.words)
        except GrammarError as exc:
            self.reply([str(exc)], status=1, stderr=True)
            return
        if command.mutates and self.uid not in (0, os.geteuid()):
            self.reply([f"smtpctl: permission denied: uid {self.uid} may only read"],
                       status=1, stderr=True)
            return
        self.control.run_command(self, command)

    def reply(self, lines: list[str], status: int = 0, stderr: bool = False) -> None:
        self.send_lines(lines, stderr)
        self.done(status)

    def send_lines(self, lines: list[str], stderr: bool = False) -> None:
        """Output lines; more may follow (a streamed listing), then done()."""
        for chunk, _last in chunk_lines(lines):
            if chunk:
                self._send(Msg.CTL_CLIENT_LINES, encode(ClientLines(chunk, stderr)))

    def done(self, status: int) -> None:
        self._send(Msg.CTL_CLIENT_DONE, encode(ClientDone(status)))

    @property
    def gone(self) -> bool:
        """The client left, or its channel failed (on_close may not have run yet)."""
        return self.channel.closed or self not in self.control.clients

    def _send(self, msg: Msg, data: bytes) -> None:
        # A client that went away (its channel fails on a write and reports it
        # on the next loop turn) or stopped reading past the hard limit is
        # dropped, never the process.
        if self.channel.closed:
            return
        try:
            self.channel.send(int(msg), data)
        except (ChannelClosed, ChannelOverflow) as exc:
            self.drop(f"cannot answer: {exc}")

    def drop(self, reason: str) -> None:
        self.control.log.warning("control: client uid %d dropped: %s", self.uid, reason)
        self.channel.close()
        self.on_close(self.channel, None)

    def on_close(self, _channel: Channel, _exc: Exception | None) -> None:
        if self in self.control.clients:
            self.control.clients.discard(self)
            self.control.stats.decrement("control.session")


class ControlProcess(Child):
    name = Proc.CONTROL
    needs = frozenset({Proc.PARENT})
    chrooted = True

    def build_privileged(self) -> None:
        # Opened before the chroot: afterwards only the open file is reachable.
        path = self.config.stats_path
        retention = Retention(interval=self.config.stats_interval, keep=self.config.stats_keep)
        self.backend: StatBackend = (open_backend("persistent", path, retention) if path
                                     else open_backend("ramstat"))
        # Bound before the drop (any port), served on our loop once live.
        where = self.config.stats_prometheus
        self.prometheus = (prometheus.PrometheusServer(prometheus.listen(*where),
                                                       self._stats_now)
                           if where else None)

    def build(self) -> None:
        self.started = time.time()
        self.listen_sock: socket.socket | None = None
        self.clients: set[ClientSession] = set()
        self.paused: set[str] = set(self.options.paused)
        self.handle(Proc.PARENT, Msg.PARENT_CONTROL_SOCKET_SEND, self._on_control_socket)
        self.handle(Proc.SCHEDULER, Msg.SCHEDULER_CTL_REPLY, self._on_ctl_reply)
        self.handle(Proc.QUEUE, Msg.QUEUE_CTL_REPLY, self._on_ctl_reply)
        self.handle(Proc.LOOKUP, Msg.LOOKUP_CTL_REPLY, self._on_ctl_reply)
        self.handle(Proc.SMTP, Msg.SMTP_CTL_ENQUEUE_FD, self._on_enqueue_fd)
        self.handle(Proc.SMTP, Msg.SMTP_CTL_REPLY, self._on_ctl_reply)
        self.handle(Proc.PARENT, Msg.PARENT_CTL_RELOAD_RESULT, self._on_ctl_reply)
        self.enqueues: dict[int, ClientSession] = {}
        # reqid -> what to do with the lines of the answer once done
        self.requests: dict[int, PendingRequest] = {}
        self.next_reqid = 1
        for proc in (Proc.PARENT, *CHILDREN):
            if proc is not Proc.CONTROL:
                self.handle(proc, Msg.ANY_STAT_UPDATE, self._on_stat_update)

    # -- stats ------------------------------------------------------------

    def _on_stat_update(self, payload: StatUpdates, _frame: Frame) -> None:
        try:
            updates = [StatUpdate.from_wire(item) for item in payload.updates]
        except ValueError as exc:
            raise MsgError(f"bad stat update: {exc}") from None
        self.backend.apply(updates, time.time_ns())

    def flush_stats(self) -> None:
        # control is the stats sink: its own updates go straight to the backend
        updates = self.stats.drain()
        if updates:
            self.backend.apply(updates, time.time_ns())

    def stat_lines(self) -> list[str]:
        self.flush_stats()  # our own pending updates count too
        uptime = int(time.time() - self.started)
        lines = dict(self.backend.items())
        lines["uptime"] = str(uptime)
        lines["uptime.human"] = human_duration(uptime)
        return [f"{k}={v}" for k, v in sorted(lines.items())]

    # -- the socket -------------------------------------------------------

    def _on_control_socket(self, _payload: Empty, frame: Frame) -> None:
        assert frame.fd is not None
        self.listen_sock = socket.socket(fileno=frame.fd)
        self.listen_sock.setblocking(False)

    def on_live(self) -> None:
        self.stats.timestamp("control.started", self.started)
        self.stats.set("control.session", 0)
        self._resume_accept()
        self._start_observability()

    def _resume_accept(self) -> None:
        if self.listen_sock is not None:
            self.loop.add_reader(self.listen_sock.fileno(), self._accept)

    def _accept(self) -> None:
        assert self.listen_sock is not None
        try:
            sock, _ = self.listen_sock.accept()
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                # Out of descriptors: stop accepting for a while, never die.
                self.log.warning("control: cannot accept: %s; pausing accepts",
                                 os.strerror(exc.errno))
                self.loop.remove_reader(self.listen_sock.fileno())
                self.loop.call_later(ACCEPT_RETRY, self._resume_accept)
                return
            raise
        sock.setblocking(False)
        session = ClientSession(self, sock)
        self.clients.add(session)
        self.stats.increment("control.session")
        session.channel.start()

    # -- commands ---------------------------------------------------------

    def run_command(self, client: ClientSession, command: Command) -> None:
        handler = getattr(self, "cmd_" + command.name, None)
        if handler is None:
            client.reply([f"smtpctl: {command.name.replace('_', ' ')}: not supported yet"],
                         status=1, stderr=True)
            return
        handler(client, *command.args)

    def _broadcast(self, msg: Msg, payload: Any) -> None:
        for peer in self.channels:
            self.send(peer, msg, payload)

    def cmd_show_stats(self, client: ClientSession) -> None:
        client.reply(self.stat_lines())

    # -- observability (docs/observability.md) -----------------------------------

    def _start_observability(self) -> None:
        if isinstance(self.backend, PersistentStat):
            self._sample_tick()
        if self.prometheus is not None:
            self.loop.create_task(self.prometheus.start())

    def _stats_now(self) -> tuple[dict[str, Any], int]:
        self.flush_stats()
        return self.backend.raw(), int(time.time() - self.started)

    def _sample_tick(self) -> None:
        # Every key, every interval, changed or not (the backend stores runs).
        assert isinstance(self.backend, PersistentStat)
        if self.stopping.is_set():
            return
        self.flush_stats()
        now_ns = time.time_ns()
        try:
            self.backend.sample(now_ns, {"uptime": (now_ns // 1_000_000_000) - int(self.started)})
        except sqlite3.Error as exc:
            # A full disk or a damaged file loses history, never mail: say so
            # and keep going (the next interval tries again).
            self.log.warning("control: stat history not written: %s", exc)
        interval = self.backend.retention.interval
        # aligned on the wall clock, so samples of one run land on round seconds
        self.loop.call_later(interval - (time.time() % interval), self._sample_tick)

    def cmd_show_profile(self, client: ClientSession) -> None:
        self.flush_stats()
        client.reply(profile_lines(profile_rows(self.backend.raw())))

    def cmd_show_stats_history_keys(self, client: ClientSession) -> None:
        if not isinstance(self.backend, PersistentStat):
            client.reply(["smtpctl: no stat history: smtpd.conf has no "
                          "`stats persistent \"PATH\"`"], status=1, stderr=True)
            return
        client.reply(self.backend.keys())

    def cmd_show_stats_history(self, client: ClientSession, key: str,
                               since: str = "1h") -> None:
        if not isinstance(self.backend, PersistentStat):
            client.reply(["smtpctl: no stat history: smtpd.conf has no "
                          "`stats persistent \"PATH\"`"], status=1, stderr=True)
            return
        now = int(time.time())
        try:
            points = self.backend.history(key, now - parse_duration(since), now)
        except sqlite3.Error as exc:
            client.reply([f"smtpctl: stat history unreadable: {exc}"], status=1, stderr=True)
            return
        if not points:
            client.reply([f"smtpctl: no history for {key}"], status=1, stderr=True)
            return
        client.reply(history_lines(points))

    def cmd_show_status(self, client: ClientSession) -> None:
        client.reply([f"{s.upper()} {'paused' if s in self.paused else 'running'}"
                      for s in ("mda", "mta", "smtp")])

    def cmd_log_verbose(self, client: ClientSession) -> None:
        self._set_verbose(True)
        client.reply(["logging request processed"])

    def cmd_log_brief(self, client: ClientSession) -> None:
        self._set_verbose(False)
        client.reply(["logging request processed"])

    def _set_verbose(self, verbose: bool) -> None:
        from smtpd import log
        log.set_verbose(verbose)
        self._broadcast(Msg.CTL_LOG_VERBOSE, LogVerbose(verbose))

    def _switch(self, client: ClientSession, msg: Msg, mask: int, enable: bool) -> None:
        if msg is Msg.CTL_TRACE_SET:
            self.traces = self.traces | Trace(mask) if enable else self.traces & ~Trace(mask)
        else:
            self.profiles = (self.profiles | Profile(mask) if enable
                             else self.profiles & ~Profile(mask))
        self._broadcast(msg, TraceSet(mask, enable))
        client.reply(["command succeeded"])

    def cmd_trace(self, client: ClientSession, name: str) -> None:
        self._switch(client, Msg.CTL_TRACE_SET, int(parse_trace(name)), True)

    def cmd_untrace(self, client: ClientSession, name: str) -> None:
        self._switch(client, Msg.CTL_TRACE_SET, int(parse_trace(name)), False)

    def cmd_profile(self, client: ClientSession, name: str) -> None:
        self._switch(client, Msg.CTL_PROFILE_SET, int(parse_profile(name)), True)

    def cmd_unprofile(self, client: ClientSession, name: str) -> None:
        self._switch(client, Msg.CTL_PROFILE_SET, int(parse_profile(name)), False)

    # -- queue management, relayed to the scheduler and the queue -------------

    def ask(self, peer: Proc, verb: str, args: list[str], client: ClientSession,
            on_done: Callable[[int, list[str]], None]) -> None:
        """Ask `peer`; on_done(status, lines) once its whole answer is in,
        if the client is still there."""
        self._request(peer, verb, args, PendingRequest(client, on_done))

    def ask_page(self, peer: Proc, verb: str, args: list[str], client: ClientSession,
                 on_page: Callable[[int, list[str], bool], None],
                 on_gone: Callable[[], None]) -> int:
        """Ask for one page of a listing (smtpd/control/listing.py): on_page
        (status, lines, more), or on_gone() if the client left meanwhile.
        Returns the request's id."""
        return self._request(peer, verb, args, PendingRequest(
            client, lambda _status, _lines: None, on_page=on_page, on_gone=on_gone))

    def send_queue_request(self, verb: str, args: list[str]) -> None:
        """A request whose answer nobody waits for (list-stop)."""
        reqid = self.next_reqid
        self.next_reqid += 1
        self.send(Proc.QUEUE, Msg.CTL_QUEUE_REQUEST, CtlRequest(reqid, verb, args))

    def _request(self, peer: Proc, verb: str, args: list[str], pending: PendingRequest) -> int:
        reqid = self.next_reqid
        self.next_reqid += 1
        self.requests[reqid] = pending
        if peer is Proc.PARENT:  # the only request the parent takes: reload
            self.send(peer, Msg.CTL_RELOAD, Request(reqid))
            return reqid
        msg = {Proc.SCHEDULER: Msg.CTL_SCHEDULER_REQUEST, Proc.QUEUE: Msg.CTL_QUEUE_REQUEST,
               Proc.LOOKUP: Msg.CTL_LOOKUP_REQUEST, Proc.SMTP: Msg.CTL_SMTP_REQUEST}[peer]
        self.send(peer, msg, CtlRequest(reqid, verb, args))
        return reqid

    def _on_ctl_reply(self, payload: CtlReply, _frame: Frame) -> None:
        pending = self.requests.get(payload.reqid)
        if pending is None:
            return
        pending.lines += payload.lines
        pending.status = max(pending.status, payload.status)
        if payload.done:
            del self.requests[payload.reqid]
            if pending.client not in self.clients:
                if pending.on_gone is not None:
                    pending.on_gone()
            elif pending.on_page is not None:
                pending.on_page(pending.status, pending.lines, payload.more)
            else:
                pending.on_done(pending.status, pending.lines)

    def _relay(self, client: ClientSession, peer: Proc, verb: str, *args: str) -> None:
        def done(status: int, lines: list[str]) -> None:
            client.reply(lines, status=status, stderr=status != 0)
        self.ask(peer, verb, list(args), client, done)

    def cmd_pause(self, client: ClientSession, system: str) -> None:
        self._pause(client, system, True)

    def cmd_resume(self, client: ClientSession, system: str) -> None:
        self._pause(client, system, False)

    def _pause(self, client: ClientSession, system: str, pause: bool) -> None:
        if system == "smtp":
            if (system in self.paused) == pause:
                client.reply(["command failed"], status=1, stderr=True)
                return
            self.send(Proc.SMTP, Msg.CTL_SMTP_PAUSE, PauseSet(pause))
            self.log.info("info: smtp %s", "paused" if pause else "resumed")
            (self.paused.add if pause else self.paused.discard)(system)
            client.reply(["command succeeded"])
            return

        def done(status: int, lines: list[str]) -> None:
            if status == 0:
                (self.paused.add if pause else self.paused.discard)(system)
            client.reply(lines, status=status, stderr=status != 0)
        self.ask(Proc.SCHEDULER, "pause" if pause else "resume", [system], client, done)

    def cmd_schedule(self, client: ClientSession, ident: str) -> None:
        self._relay(client, Proc.SCHEDULER, "schedule", ident)

    def cmd_remove(self, client: ClientSession, ident: str) -> None:
        self._relay(client, Proc.SCHEDULER, "remove", ident)

    def cmd_pause_envelope(self, client: ClientSession, ident: str) -> None:
        self._relay(client, Proc.SCHEDULER, "suspend", ident)

    def cmd_resume_envelope(self, client: ClientSession, ident: str) -> None:
        self._relay(client, Proc.SCHEDULER, "resume-envelope", ident)

    def cmd_show_envelope(self, client: ClientSession, evpid: str) -> None:
        self._relay(client, Proc.QUEUE, "envelope", evpid)

    def cmd_show_message(self, client: ClientSession, ident: str) -> None:
        self._relay(client, Proc.QUEUE, "message", ident)

    def cmd_enqueue(self, client: ClientSession) -> None:
        """Local submission (sendmail, mail(1)): smtp opens a session for this
        user and its socket is handed to the client, as upstream's enqueuer."""
        reqid = self.next_reqid
        self.next_reqid += 1
        self.enqueues[reqid] = client
        self.send(Proc.SMTP, Msg.CTL_SMTP_ENQUEUE, EnqueueRequest(reqid, client.uid))

    def _on_enqueue_fd(self, payload: Request, frame: Frame) -> None:
        assert frame.fd is not None
        client = self.enqueues.pop(payload.reqid, None)
        if client is None or client.gone:
            os.close(frame.fd)
            return
        try:
            client.channel.send(int(Msg.CTL_CLIENT_FD), encode(Empty()), fd=frame.fd)
        except (ChannelClosed, ChannelOverflow) as exc:  # the channel closed the fd
            client.drop(f"cannot answer: {exc}")
            return
        client.reply([])

    def cmd_show_hoststats(self, client: ClientSession) -> None:
        self._relay(client, Proc.SMTP, "hoststats")

    def cmd_show_relays(self, client: ClientSession) -> None:
        self._relay(client, Proc.SMTP, "relays")

    def cmd_show_routes(self, client: ClientSession) -> None:
        self._relay(client, Proc.SMTP, "routes")

    def cmd_show_hosts(self, client: ClientSession) -> None:
        self._relay(client, Proc.SMTP, "hosts")

    def cmd_discover(self, client: ClientSession, ident: str) -> None:
        self._relay(client, Proc.QUEUE, "discover", ident)

    def cmd_uncorrupt(self, client: ClientSession, msgid: str) -> None:
        self._relay(client, Proc.QUEUE, "uncorrupt", msgid)

    def cmd_reload(self, client: ClientSession) -> None:
        self._relay(client, Proc.PARENT, "reload")

    def cmd_update_table(self, client: ClientSession, name: str) -> None:
        self._relay(client, Proc.LOOKUP, "update-table", name)

    def cmd_show_queue(self, client: ClientSession) -> None:
        """The queue's envelopes with the scheduler's run state merged in,
        streamed a page at a time (smtpd/control/listing.py)."""
        QueueListing(self, client).start()

    def cmd_monitor(self, client: ClientSession) -> None:
        client.reply(self.stat_lines())

    def on_stop(self) -> None:
        if self.prometheus is not None:
            self.prometheus.close()
        self.backend.close()

    def cmd_stop(self, client: ClientSession) -> None:
        self.send(Proc.PARENT, Msg.CTL_STOP, Empty())
        client.reply(["Shutting down smtpd"])
