"""The smtp process: inbound SMTP sessions on the listeners the parent binds.

Requests to queue and lookup are futures keyed by a reqid, so a session simply
awaits its answer; the imsg handlers resolve them.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import pwd
import resource
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any

from imsg import Frame
from smtpd import privsep
from smtpd.config.model import AuthMode, Listener, SmtpOptions, TlsMode
from smtpd.filter.runtime import FilterRuntime, open_filter_tables
from smtpd.msg import (
    AuthCheck,
    AuthResult,
    CtlReply,
    CtlRequest,
    Empty,
    EnqueueRequest,
    FilterFd,
    HostLookup,
    HostResult,
    ListenerSend,
    MessageCommit,
    MessageCommitted,
    MessageCreated,
    MessageRef,
    Msg,
    MtaResult,
    MtaTransfer,
    PauseSet,
    Proc,
    RcptCheck,
    RcptResult,
    Request,
    RequestFailed,
    chunk_lines,
)
from smtpd.proc import Child
from smtpd.smtp.guard import GuardLimits, SourceGuard, WriteFaults
from smtpd.smtp.mta import MtaSide
from smtpd.smtp.protocol import ProtocolLimits
from smtpd.smtp.ratelimit import Rate, RateKind, RateLimiter
from smtpd.smtp.reply import Reply
from smtpd.smtp.session import QUEUE_UNAVAILABLE, Session, reply_from_line

# Keep this many descriptors free for sessions already running (the seed's
# descriptor reserve): below it, stop accepting until some are released.
FD_RESERVE = 32
ACCEPT_RETRY = 1.0


@dataclass
class ListenerRuntime:
    listener: Listener
    limits: ProtocolLimits
    ssl_context: ssl.SSLContext | None
    smtps: bool


def fds_in_use() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


class SmtpProcess(Child):
    name = Proc.SMTP
    needs = frozenset({Proc.PARENT, Proc.QUEUE, Proc.LOOKUP})
    user = privsep.SMTPD_USER

    def build_privileged(self) -> None:
        # Keys are read while we are still root: the pki files may be 0600 root.
        self.contexts: dict[str, ssl.SSLContext] = {}
        for name, pki in self.config.pkis.items():
            if pki.cert and pki.key:
                ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                ctx.load_cert_chain(pki.cert, pki.key)
                self.contexts[name] = ctx
        self.filter_tables = open_filter_tables(self.config)

    def build(self) -> None:
        self.listen_socks: list[tuple[socket.socket, ListenerRuntime]] = []
        self.sessions: set[asyncio.Task[None]] = set()
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.next_reqid = 1
        self.paused = "smtp" in self.options.paused
        self.accepting = False
        self.fd_limit = _fd_limit()
        self.guard = _source_guard(self.config.smtp)
        self.rates = _rate_limiter(self.config.smtp)
        self.faults = WriteFaults.from_env(os.environ)
        self.handle(Proc.PARENT, Msg.PARENT_LISTENER_SEND, self._on_listener)
        self.filters = FilterRuntime(self.config, self.filter_tables, self.loop, self.log)
        self.handle(Proc.PARENT, Msg.PARENT_FILTER_FD, self._on_filter_fd)
        self.handle(Proc.QUEUE, Msg.QUEUE_MESSAGE_CREATED, self._resolve)
        self.handle(Proc.QUEUE, Msg.QUEUE_MESSAGE_FD, self._resolve_fd)
        self.handle(Proc.QUEUE, Msg.QUEUE_MESSAGE_COMMITTED, self._resolve)
        self.handle(Proc.QUEUE, Msg.QUEUE_REQUEST_FAILED, self._resolve)
        self.handle(Proc.LOOKUP, Msg.LOOKUP_RCPT_RESULT, self._resolve)
        self.handle(Proc.LOOKUP, Msg.LOOKUP_AUTH_RESULT, self._resolve)
        self.handle(Proc.LOOKUP, Msg.LOOKUP_HOST_RESULT, self._resolve)
        self.handle(Proc.CONTROL, Msg.CTL_SMTP_PAUSE, self._on_pause)
        self.handle(Proc.CONTROL, Msg.CTL_SMTP_ENQUEUE, self._on_enqueue)
        self.handle(Proc.QUEUE, Msg.QUEUE_MTA_TRANSFER, self._on_transfer)
        self.handle(Proc.CONTROL, Msg.CTL_SMTP_REQUEST, self._on_ctl)
        self.handle(Proc.PARENT, Msg.PARENT_CONFIG_RELOAD, self._on_reload)
        self.mta = MtaSide(self)

    def runtime_for(self, listener: Listener) -> ListenerRuntime:
        cfg = self.config
        ctx = self.contexts.get(listener.pkis[0]) if listener.pkis else None
        limits = ProtocolLimits(
            hostname=cfg.listener_hostname(listener),
            max_message_size=cfg.smtp.max_message_size,
            max_rcpt=cfg.smtp.max_rcpt,
            max_mails=cfg.smtp.max_mails,
            auth_mechanisms=("PLAIN", "LOGIN") if listener.auth is not AuthMode.NONE else (),
            starttls_available=ctx is not None and listener.tls in (
                TlsMode.TLS, TlsMode.TLS_REQUIRE),
            tls_active=False,
            auth_required=listener.auth is AuthMode.REQUIRED,
            tls_required=listener.tls is TlsMode.TLS_REQUIRE,
            dsn=not listener.no_dsn,
        )
        return ListenerRuntime(listener, limits, ctx, listener.tls is TlsMode.SMTPS)

    # -- listeners ---------------------------------------------------------------

    def _on_listener(self, payload: ListenerSend, frame: Frame) -> None:
        assert frame.fd is not None
        sock = socket.socket(fileno=frame.fd)
        sock.setblocking(False)
        inet = [lst for lst in self.config.listeners if lst.kind.value == "inet"]
        # the parent binds listeners in config order; index counts sockets, so
        # match on the port, falling back to the first inet listener
        listener = next((lst for lst in inet if lst.port == payload.port), inet[0])
        self.listen_socks.append((sock, self.runtime_for(listener)))

    def _on_filter_fd(self, payload: FilterFd, frame: Frame) -> None:
        # a (re)started filter process: smtpd/filter/conn.py runs its handshake
        assert frame.fd is not None
        if not self.filters.attach(payload.name, payload.generation, frame.fd):
            os.close(frame.fd)

    def on_live(self) -> None:
        self.mta.start([s.getsockname()[:2] for s, _ in self.listen_socks])
        for key in ("smtp.session", "smtp.tls", "smtp.smtps", "mta.task", "mta.task.running",
                    "mta.envelope"):
            self.stats.set(key, 0)
        # Backpressure: while queue or lookup does not keep up with our
        # requests, take no new clients (open sessions just wait for answers),
        # so a stalled peer cannot make either side's buffers grow unbounded.
        for peer in (Proc.QUEUE, Proc.LOOKUP):
            chan = self.channels[peer]
            chan.on_congested = self._peer_congested
            chan.on_drained = self._peer_drained
        self._start_accepting()

    def _peer_congested(self) -> None:
        self.log.warning("smtp: a peer process is not keeping up; not accepting new clients")
        self._stop_accepting()

    def _peer_drained(self) -> None:
        if not any(self.channels[p].congested for p in (Proc.QUEUE, Proc.LOOKUP)):
            self.log.info("smtp: accepting clients again")
            self._start_accepting()

    def _start_accepting(self) -> None:
        if self.accepting or self.stopping.is_set():
            return
        self.accepting = True
        for sock, runtime in self.listen_socks:
            self.loop.add_reader(sock.fileno(), self._accept, sock, runtime)

    def _stop_accepting(self) -> None:
        if not self.accepting:
            return
        self.accepting = False
        for sock, _runtime in self.listen_socks:
            self.loop.remove_reader(sock.fileno())

    def _accept(self, sock: socket.socket, runtime: ListenerRuntime) -> None:
        if self.fd_limit and fds_in_use() >= self.fd_limit - FD_RESERVE:
            self._exhausted("descriptor reserve reached")
            return
        try:
            conn, addr = sock.accept()
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                self._exhausted(os.strerror(exc.errno))
                return
            if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                return
            raise
        conn.setblocking(False)
        src = str(addr[0]) if isinstance(addr, tuple) else ""
        if src and not self.guard.open(src):
            self._refuse_flood(conn, src)
            return
        if src and self.rates.allow(RateKind.CONNECTIONS, [f"ip:{src}"]) is not None:
            self.guard.close(src)
            self._refuse_rate(conn, src)
            return
        task = self.loop.create_task(self._session(conn, runtime))
        self.sessions.add(task)
        task.add_done_callback(self.sessions.discard)
        if src:
            task.add_done_callback(lambda _task: self.guard.close(src))

    def _refuse_rate(self, conn: socket.socket, src: str) -> None:
        wait = self.rates.retry_after(RateKind.CONNECTIONS, f"ip:{src}")
        self.log.info("smtp: rate-limit kind=connections key=ip:%s retry-after=%ds", src, wait)
        self.stats.increment("smtp.session.refused")
        with contextlib.suppress(OSError):
            conn.send(b"421 4.7.0 Too many connections, slow down and try again later\r\n")
        conn.close()

    def rate_check(self, kind: RateKind, src: str, user: str, n: int = 1) -> Reply | None:
        """`smtp rate` per client address and per authenticated user: the
        refusal to give, or None.  Local submissions are not limited."""
        if src == "local":
            return None
        keys = [f"ip:{src}"] + ([f"user:{user}"] if user else [])
        over = self.rates.allow(kind, keys, n)
        if over is None:
            return None
        wait = self.rates.retry_after(kind, over)
        self.log.info("smtp: rate-limit kind=%s key=%s retry-after=%ds", kind, over, wait)
        self.stats.increment(f"smtp.ratelimit.{kind}")
        return Reply(451, "4.7.1", f"Rate limit exceeded for {kind}, try again later")

    def _refuse_flood(self, conn: socket.socket, src: str) -> None:
        # `smtp limit max-sessions-per-ip`: one best-effort line, no session
        # (RFC 5321 §3.8: a 421 may be sent instead of the greeting).
        self.log.info("smtp: refusing connection from %s: too many sessions", src)
        self.stats.increment("smtp.session.refused")
        with contextlib.suppress(OSError):
            conn.send(b"421 4.7.0 Too many connections from your address\r\n")
        conn.close()

    def _exhausted(self, why: str) -> None:
        # Never fatal: stop taking clients, keep serving the open sessions.
        self.log.warning("smtp: not accepting new clients: %s", why)
        self._stop_accepting()
        self.loop.call_later(ACCEPT_RETRY, self._retry_accept)

    def _retry_accept(self) -> None:
        if self.fd_limit and fds_in_use() >= self.fd_limit - FD_RESERVE:
            self.loop.call_later(ACCEPT_RETRY, self._retry_accept)
            return
        self.log.info("smtp: accepting clients again")
        self._start_accepting()

    async def _session(self, conn: socket.socket, runtime: ListenerRuntime,
                       local_user: str | None = None) -> None:
        self.stats.increment("smtp.session")
        self.stats.increment("smtp.session.total")  # `smtpctl monitor`'s conn column
        family = {socket.AF_INET6: "inet6", socket.AF_UNIX: "local"}.get(conn.family, "inet4")
        smtps = False
        self.stats.increment(f"smtp.session.{family}")
        done: asyncio.Future[None] = self.loop.create_future()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await Session(self, runtime, reader, writer, local_user=local_user).run()
            finally:
                if not done.done():
                    done.set_result(None)

        try:
            reader = asyncio.StreamReader(limit=1 << 20)
            # The protocol must carry a connected callback: StreamWriter.start_tls
            # takes that as "server side" (without it STARTTLS would try a
            # client handshake with our server context).
            protocol = asyncio.StreamReaderProtocol(reader, serve)
            ctx = runtime.ssl_context if runtime.smtps else None
            await self.loop.connect_accepted_socket(
                lambda: protocol, conn, ssl=ctx,
                ssl_handshake_timeout=min(30, self.config.smtp.command_timeout)
                if ctx else None)
            if ctx is not None:
                smtps = True
                self.stats.increment("smtp.smtps")
            await done
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            self.log.info("smtp: session setup failed: %s", type(exc).__name__)
            conn.close()
        finally:
            # upstream's gauges: sessions (and TLS ones) open now
            self.stats.decrement("smtp.session")
            self.stats.decrement(f"smtp.session.{family}")
            if smtps:
                self.stats.decrement("smtp.smtps")

    def _on_transfer(self, req: MtaTransfer, frame: Frame) -> None:
        assert frame.fd is not None
        # upstream's gauges: relay tasks and the envelopes in them right now
        n = len(req.envelopes)
        self.stats.increment("mta.task")
        self.stats.increment("mta.task.running")
        self.stats.increment("mta.envelope", n)

        async def run(fd: int) -> None:
            try:
                results = await self.mta.transfer(req.dispatcher, req.domain, req.envelopes, fd)
            finally:
                self.stats.decrement("mta.task")
                self.stats.decrement("mta.task.running")
                self.stats.decrement("mta.envelope", n)
            self.send(Proc.QUEUE, Msg.SMTP_MTA_RESULT, MtaResult(req.reqid, results))

        task = self.loop.create_task(run(frame.fd))
        self.sessions.add(task)
        task.add_done_callback(self.sessions.discard)

    def _on_reload(self, _payload: Empty, _frame: Frame) -> None:
        """New limits and relay settings for new sessions; open sessions keep
        theirs.  Listeners and keys stay: they need a restart."""
        new = self.reread_config()
        if new is None:
            return
        self.config = new
        self.listen_socks = [(sock, self.runtime_for(self._listener_for(rt.listener)))
                             for sock, rt in self.listen_socks]
        self.mta.config = new
        self.rates = _rate_limiter(new.smtp)
        self.log.info("smtp: configuration reloaded")

    def _listener_for(self, old: Listener) -> Listener:
        listener: Listener
        for listener in self.config.listeners:
            if (listener.interface, listener.port, listener.kind) == (
                    old.interface, old.port, old.kind):
                return listener
        return old

    def _on_ctl(self, req: CtlRequest, _frame: Frame) -> None:
        status, lines = self.mta.ctl(req.verb)
        for chunk, last in chunk_lines(lines):
            self.send(Proc.CONTROL, Msg.SMTP_CTL_REPLY, CtlReply(req.reqid, status, chunk, last))

    def _on_enqueue(self, req: EnqueueRequest, _frame: Frame) -> None:
        """A local submission: serve one end of a socketpair as a session of
        the local socket listener, hand the other end to control."""
        try:
            user = pwd.getpwuid(req.uid).pw_name
        except KeyError:
            user = f"uid{req.uid}"
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ours.setblocking(False)
        runtime = self.runtime_for(self.config.socket_listener)
        task = self.loop.create_task(self._session(ours, runtime, local_user=user))
        self.sessions.add(task)
        task.add_done_callback(self.sessions.discard)
        self.send(Proc.CONTROL, Msg.SMTP_CTL_ENQUEUE_FD, Request(req.reqid),
                  fd=os.dup(theirs.fileno()))
        theirs.close()

    def _on_pause(self, payload: PauseSet, _frame: Frame) -> None:
        self.paused = payload.paused
        self.log.info("smtp: %s", "paused" if self.paused else "resumed")

    # -- requests --------------------------------------------------------------

    def _request(self) -> tuple[int, asyncio.Future[Any]]:
        reqid = self.next_reqid
        self.next_reqid += 1
        fut: asyncio.Future[Any] = self.loop.create_future()
        self.pending[reqid] = fut
        return reqid, fut

    def _resolve(self, payload: Any, _frame: Frame) -> None:
        fut = self.pending.pop(payload.reqid, None)
        if fut is not None and not fut.done():
            fut.set_result(payload)

    def _resolve_fd(self, payload: MessageRef, frame: Frame) -> None:
        fut = self.pending.pop(payload.reqid, None)
        if fut is None or fut.done():
            assert frame.fd is not None
            os.close(frame.fd)  # the session went away meanwhile
            return
        fut.set_result((payload, frame.fd))

    async def queue_create(self) -> int | Reply:
        reqid, fut = self._request()
        self.send(Proc.QUEUE, Msg.SMTP_MESSAGE_CREATE, Request(reqid))
        answer = await fut
        if isinstance(answer, RequestFailed):
            return reply_from_line(answer.reply)
        assert isinstance(answer, MessageCreated)
        return answer.msgid

    async def queue_open(self, msgid: int) -> int | Reply:
        reqid, fut = self._request()
        self.send(Proc.QUEUE, Msg.SMTP_MESSAGE_OPEN, MessageRef(reqid, msgid))
        try:
            answer = await fut
        except asyncio.CancelledError:
            raise
        if isinstance(answer, RequestFailed):
            return reply_from_line(answer.reply)
        _ref, fd = answer
        return int(fd)

    async def queue_commit(self, msgid: int, envelopes: list[str]) -> list[int] | Reply:
        """The evpids of the committed envelopes, or the reply for a failure."""
        reqid, fut = self._request()
        self.send(Proc.QUEUE, Msg.SMTP_MESSAGE_COMMIT, MessageCommit(reqid, msgid, envelopes))
        answer = await fut
        if isinstance(answer, RequestFailed):
            return reply_from_line(answer.reply)
        if not isinstance(answer, MessageCommitted):
            return QUEUE_UNAVAILABLE
        return answer.evpids

    def queue_rollback(self, msgid: int) -> None:
        self.send(Proc.QUEUE, Msg.SMTP_MESSAGE_ROLLBACK, MessageRef(0, msgid))

    async def lookup_rcpt(self, session: Session, sender: str, rcpt: str,
                          template: str) -> tuple[bool, Reply, list[str]]:
        reqid, fut = self._request()
        self.send(Proc.LOOKUP, Msg.SMTP_RCPT_CHECK, RcptCheck(
            reqid=reqid, listener_tag=session.listener.listener.tag or "",
            local=session.local_user is not None, src=session.src, rdns=session.rdns,
            helo=session.proto.helo or "",
            tls=session.proto.tls_active, auth_user=session.auth_user,
            sender=sender, rcpt=rcpt, template=template))
        answer = await fut
        assert isinstance(answer, RcptResult)
        return answer.ok, reply_from_line(answer.reply), answer.envelopes

    async def lookup_host(self, address: str) -> HostResult:
        reqid, fut = self._request()
        self.send(Proc.LOOKUP, Msg.SMTP_HOST_LOOKUP, HostLookup(reqid, address))
        answer = await fut
        assert isinstance(answer, HostResult)
        return answer

    async def lookup_auth(self, table: str, username: str, password: str) -> str:
        reqid, fut = self._request()
        self.send(Proc.LOOKUP, Msg.SMTP_AUTH_CHECK, AuthCheck(reqid, table, username, password))
        answer = await fut
        assert isinstance(answer, AuthResult)
        return answer.status

    def on_stop(self) -> None:
        self._stop_accepting()
        self.filters.close()


def _rate_limiter(opts: SmtpOptions) -> RateLimiter:
    return RateLimiter([Rate(RateKind(kind), count, window) for kind, count, window in opts.rates],
                       time.monotonic)


def _source_guard(opts: SmtpOptions) -> SourceGuard:
    return SourceGuard(GuardLimits(
        max_sessions_per_ip=opts.max_sessions_per_ip,
        max_auth_failures=opts.max_auth_failures, auth_ban=float(opts.auth_ban),
        auth_failure_delay=float(opts.auth_failure_delay)), time.monotonic)


def _fd_limit() -> int:
    # resource is imported at module level: after the privilege drop the
    # interpreter's stdlib may be unreadable (e.g. under /root), so no lazy imports.
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 0
