"""The whole relay of one message to one domain, with connection reuse.

    relayer = Relayer(resolver, listeners=[("0.0.0.0", 25)], log=log.info)
    result = await relayer.relay(route, "example.org", envelopes, spool_file)
    ...
    await relayer.close()

``relay`` never raises for network or DNS trouble: every envelope gets a
result (routing errors and unreachable hosts are temporary unless DNS said
no for good).  A session that delivered stays open for ``idle`` seconds
and carries the next message for the same route (and domain, for MX
routes; RSET between them), up to ``max_messages`` per connection (upstream's
max_mail_per_session, 100).  Log lines are upstream's (logfmt).

Limits and back-off (registry.Limits): a transfer that would exceed the
sessions allowed per host or per domain waits for a free slot (closing an
idle session of another relay that holds one) instead of connecting.  A
host whose connection or greeting failed is skipped until its back-off
ends; when every host of a route is backed off the envelopes fail
temporarily at once with BACKOFF, without a connection.  ``show_*``
answer smtpctl's views and ``stat(key, value)`` receives upstream's
``mta.*`` gauges whenever they change.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import BinaryIO

import dns.asyncresolver

from smtpd.config.model import RelayTlsPolicy
from smtpd.lookup.mx import RouteError
from smtpd.mta import logfmt, views
from smtpd.mta.connect import Target, scheme, targets_for
from smtpd.mta.envelopes import send_envelopes
from smtpd.mta.registry import HostState, Limits, Registry, RelayState
from smtpd.mta.routing import Route
from smtpd.mta.session import MtaSession
from smtpd.mta.tlspolicy import HostMode, HostTls, TlsPlanner, tls_required_no
from smtpd.mta.transfer import (
    Recipient,
    SessionError,
    Status,
    Timeouts,
    TransferResult,
    fail_all,
)
from smtpd.queue.envelope import Envelope, EnvelopeFlag

BACKOFF = "451 4.4.1 Host temporarily unavailable, backing off"
REQUIRETLS = "550 5.7.10 REQUIRETLS support required"  # RFC 8689 §5

# A waiter re-checks this often even without a wake-up: a safety net, the
# releases wake it at once.
_RECHECK = 1.0


@dataclass
class _Conn:
    """An open session and the slots it holds."""

    session: MtaSession
    target: Target
    ident: int
    key: str  # idle pool key: sessions are reused within it
    relay: RelayState
    domain: str  # the domain whose limit it counts in
    host: HostState
    closing: asyncio.Task[None] | None = None  # the QUIT, once decided


@dataclass
class _Idle:
    conn: _Conn
    handle: asyncio.TimerHandle


class Relayer:
    def __init__(self, resolver: dns.asyncresolver.Resolver, *,
                 listeners: Sequence[tuple[str, int]] = (), timeouts: Timeouts | None = None,
                 mx_port: int = 25, idle: float = 5.0, max_messages: int = 100,
                 log: Callable[[str], None] | None = None, limits: Limits | None = None,
                 stat: Callable[[str, int], None] | None = None,
                 clock: Callable[[], float] = time.time,
                 tls: TlsPlanner | None = None) -> None:
        self.resolver = resolver
        self.tls = tls  # MTA-STS / DANE for routes with a tls-policy
        self.listeners = tuple(listeners)
        self.timeouts = timeouts or Timeouts()
        self.mx_port = mx_port
        self.idle = idle
        self.max_messages = max_messages
        self.registry = Registry(limits)
        self.clock = clock
        self._log = log or (lambda line: None)
        self._stat = stat
        self._gauges: dict[str, int] = {}
        self._idle: dict[str, list[_Idle]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._waiters: list[asyncio.Future[None]] = []
        self._changed()

    async def relay(self, route: Route, domain: str, envelopes: Sequence[Envelope],
                    message: BinaryIO) -> TransferResult:
        """Relay one message to ``envelopes`` (same msgid, sender, domain)."""
        if not envelopes:
            return TransferResult(())
        domain = domain.lower()
        requiretls = any(EnvelopeFlag.REQUIRETLS in e.flags for e in envelopes)
        if (route.tls_select is not RelayTlsPolicy.NONE and not requiretls
                and tls_required_no(message)):
            # RFC 8689 §5: the sender asks that MTA-STS and DANE be ignored
            # (REQUIRETLS wins over the header); its own idle sessions
            route = dataclasses.replace(route, tls_select=RelayTlsPolicy.NONE)
        if route.relay is None:
            key, limit_domain = f"{route.key}|{domain}", domain
        else:
            # every domain through one smarthost is one relay, as upstream,
            # and its sessions carry mail for any of them
            key, limit_domain = route.key, route.relay.host.lower()
        if requiretls:
            # RFC 8689 §4.2.1: only sessions that passed its checks carry it
            key += "|requiretls"
        relay = self.registry.relay(key, views.relay_text(route, domain), route.source)
        self.registry.task_started(relay, limit_domain)
        try:
            got: _Conn | TransferResult | None = self._checkout(key)
            if got is None:
                got = await self._acquire(route, domain, envelopes, key, relay, limit_domain,
                                          requiretls)
            if isinstance(got, TransferResult):
                return got
            try:
                result = await send_envelopes(got.session, envelopes, message)
            except BaseException:
                # cancelled or a caller's mistake: the session is in an unknown
                # state, drop it and give its slots back
                got.session.abort()
                self._quit(got)
                raise
            self._log_results(got, envelopes, result)
            now = self.clock()
            for r in result.results:
                self.registry.hoststat(_domain_of(r.address), r.text, now)
            if got.session.is_open and got.session.messages < self.max_messages:
                self._checkin(got)
            else:
                self._quit(got)
            return result
        finally:
            self.registry.task_done(relay, limit_domain)
            self._changed()

    # -- getting a session --------------------------------------------------------

    async def _acquire(self, route: Route, domain: str, envelopes: Sequence[Envelope],
                       key: str, relay: RelayState, limit_domain: str,
                       requiretls: bool = False) -> _Conn | TransferResult:
        """An idle session of ``key`` or a new one within the limits, else
        every envelope's result.  ``requiretls``: only a session with an
        authenticated peer offering REQUIRETLS will do (RFC 8689 §4.2.1);
        when every host tried refuses, the envelopes fail with 5.7.10."""
        try:
            targets = await targets_for(route, domain, self.resolver, listeners=self.listeners,
                                        mx_port=self.mx_port)
            hosts: dict[str, HostTls] = {}
            if (self.tls is not None and route.relay is None
                    and route.tls_select is not RelayTlsPolicy.NONE):
                targets, hosts = await self.tls.plan(route.tls_select, domain, targets)
        except RouteError as exc:
            return self._fail(envelopes, exc.status, exc.text, "-")
        ident = secrets.randbits(64)
        reg = self.registry
        tried: set[tuple[str, int]] = set()
        error: SessionError | None = None
        last: Target | None = None
        refused = 0  # hosts that could not take REQUIRETLS mail
        while True:
            reused = self._checkout(key)
            if reused is not None:
                return reused
            now = self.clock()
            candidates = [t for t in targets if (t.address, t.port) not in tried
                          and (t.address, t.port) in reg.usable([(t.address, t.port)], now)]
            if not candidates:
                if refused and error is None and last is not None:
                    where = logfmt.address_text(last.address, last.port)
                    return self._fail(envelopes, Status.PERMFAIL, REQUIRETLS, where)
                if error is not None and last is not None:
                    where = logfmt.address_text(last.address, last.port)
                    return self._fail(envelopes, Status.TEMPFAIL, error.text, where)
                self._log(f"smtp-out: No valid route for {relay.text}: backing off")
                return self._fail(envelopes, Status.TEMPFAIL, BACKOFF, "-")
            domain_full = reg.domain_full(limit_domain)
            free = None if domain_full else next(
                (t for t in candidates if not reg.host_full((t.address, t.port))), None)
            if free is not None:
                tried.add((free.address, free.port))
                last = free
                opened = await self._attempt(route, free, ident, key, relay, limit_domain,
                                             hosts.get(free.host))
                if isinstance(opened, _Conn):
                    s = opened.session
                    # §4.2.1 step 1: an MX host must come from DNSSEC (DANE)
                    # or an MTA-STS policy; a configured smarthost is trusted
                    plan = hosts.get(free.host)
                    trusted_mx = route.relay is not None or (
                        plan is not None and plan.mode in (HostMode.DANE, HostMode.STS_ENFORCE))
                    if not requiretls or (trusted_mx and s.tls_active and s.verified
                                          and "REQUIRETLS" in s.extensions):
                        return opened
                    # not this host: try the others, then bounce
                    self._log(f"smtp-out: {free.host} cannot take REQUIRETLS mail "
                              f"(tls={s.tls_active} verified={s.verified})")
                    self._quit(opened)
                    refused += 1
                    continue
                error = opened
                continue
            # RFC 5321 §4.5.4.1 leaves concurrency to the client: wait for a slot
            flag = "LIMIT_DOMAIN" if domain_full else "LIMIT_HOST"
            relay.waiting[flag] = relay.waiting.get(flag, 0) + 1
            try:
                blockers = {(t.address, t.port) for t in candidates}
                closing = self._evict_idle(limit_domain if domain_full else None, blockers)
                if closing is not None:
                    # the slot is free once the peer saw our QUIT: never more
                    # sessions on the wire than the limit
                    await asyncio.wait({closing})
                else:
                    await self._wait()
            finally:
                relay.waiting[flag] -= 1
                if not relay.waiting[flag]:
                    del relay.waiting[flag]

    async def _attempt(self, route: Route, target: Target, ident: int, key: str,
                       relay: RelayState, limit_domain: str,
                       tls: HostTls | None = None) -> _Conn | SessionError:
        reg = self.registry
        host = reg.host(target.address, target.port, target.host)
        was_failing = host.consecutive > 0
        reg.attempt(relay, limit_domain, host)
        self._changed()
        self._log(logfmt.connecting_line(ident, scheme(route), target.address, target.port,
                                         target.host))
        config = route.session_config(self.timeouts, server_name=target.host)
        if tls is not None:
            config = tls.apply(config)
        try:
            session = await MtaSession.open(target.host, target.port, config,
                                            address=target.address)
        except BaseException as exc:
            reg.release(relay, limit_domain, host)
            if not isinstance(exc, SessionError):
                self._wake()
                self._changed()
                raise  # cancelled: the attempt's slots are free again
            interval = reg.failed(relay, host, exc.text, self.clock(),
                                  backoff=exc.host_failure)
            self._log(logfmt.error_line(ident, exc.text))
            if interval:
                text = views.route_text(reg, reg.route(relay.source, (host.address, host.port)))
                self._log(f"smtp-out: Disabling route {text} for {int(interval)}s")
            self._wake()
            self._changed()
            return exc
        reg.connected(relay, host, self.clock())
        self._log(logfmt.connected_line(ident))
        if was_failing:
            text = views.route_text(reg, reg.route(relay.source, (host.address, host.port)))
            self._log(f"smtp-out: Enabling route {text}")
        self._changed()
        return _Conn(session, target, ident, key, relay, limit_domain, host)

    async def _wait(self) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await asyncio.wait({fut}, timeout=_RECHECK)
        finally:
            if fut in self._waiters:
                self._waiters.remove(fut)

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def _fail(self, envelopes: Sequence[Envelope], status: Status, text: str,
              relay: str) -> TransferResult:
        now = int(self.clock())
        for e in envelopes:
            self._log(logfmt.delivery_line(0, e.evpid, e.sender, e.dest, e.rcpt, None, relay,
                                           now - e.ctime, status, text))
            self.registry.hoststat(_domain_of(e.dest), text, now)
        return fail_all([Recipient(e.evpid, e.dest) for e in envelopes], status, text)

    def _log_results(self, conn: _Conn, envelopes: Sequence[Envelope],
                     result: TransferResult) -> None:
        now = int(self.clock())
        target = conn.target
        relay = f"{target.host} {logfmt.address_text(target.address, target.port)}"
        by_id = {e.evpid: e for e in envelopes}
        for r in result.results:
            e = by_id[r.evpid]
            self._log(logfmt.delivery_line(conn.ident, e.evpid, e.sender, e.dest, e.rcpt,
                                           conn.session.local_address, relay, now - e.ctime,
                                           r.status, r.text))

    # -- idle sessions -----------------------------------------------------------

    def _checkout(self, key: str) -> _Conn | None:
        pool = self._idle.get(key)
        while pool:
            idle = pool.pop()
            idle.handle.cancel()
            if idle.conn.session.is_open:
                if not pool:
                    self._idle.pop(key, None)
                return idle.conn
            self._quit(idle.conn)
        self._idle.pop(key, None)
        return None

    def _checkin(self, conn: _Conn) -> None:
        handle = asyncio.get_running_loop().call_later(self.idle, self._expire, conn)
        self._idle.setdefault(conn.key, []).append(_Idle(conn, handle))
        # a transfer waiting for this key's slot can take the session now
        self._wake()

    def _expire(self, conn: _Conn) -> None:
        pool = self._idle.get(conn.key, [])
        for idle in pool:
            if idle.conn is conn:
                pool.remove(idle)
                self._quit(conn)
                break
        if not pool:
            self._idle.pop(conn.key, None)

    def _evict_idle(self, domain: str | None,
                    hosts: set[tuple[str, int]]) -> asyncio.Task[None] | None:
        """Close one idle session holding a slot a waiter needs: one of
        ``domain`` (when the domain is full) or of one of ``hosts``; the
        task that says goodbye, None when there is no such session."""
        for key, pool in list(self._idle.items()):
            for idle in pool:
                c = idle.conn
                if (c.domain == domain if domain is not None
                        else (c.host.address, c.host.port) in hosts):
                    idle.handle.cancel()
                    pool.remove(idle)
                    if not pool:
                        self._idle.pop(key, None)
                    return self._quit(c)
        return None

    def _quit(self, conn: _Conn) -> asyncio.Task[None]:
        """QUIT in the background; the slots are free once it is done, so
        that a waiter never puts more sessions on the wire than the limit."""
        if conn.closing is not None:
            return conn.closing
        task = asyncio.get_running_loop().create_task(conn.session.quit())
        conn.closing = task
        self._closing.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._closing.discard(t)
            self.registry.release(conn.relay, conn.domain, conn.host)
            self.registry.session_closed()
            self._wake()
            self._changed()

        task.add_done_callback(done)
        return task

    @property
    def idle_sessions(self) -> int:
        return sum(len(pool) for pool in self._idle.values())

    async def close(self) -> None:
        """QUIT every idle session and wait for the goodbyes."""
        for pool in list(self._idle.values()):
            for idle in pool:
                idle.handle.cancel()
                self._quit(idle.conn)
        self._idle.clear()
        self._wake()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    # -- views and stats -------------------------------------------------------------

    def _changed(self) -> None:
        self.registry.prune(self.clock())
        if self._stat is None:
            return
        for key, value in self.registry.gauges().items():
            if self._gauges.get(key) != value:
                self._gauges[key] = value
                self._stat(key, value)

    def show_hosts(self) -> list[str]:
        self._changed()
        return views.show_hosts(self.registry, self.clock())

    def show_relays(self) -> list[str]:
        self._changed()
        return views.show_relays(self.registry, self.clock())

    def show_routes(self) -> list[str]:
        self._changed()
        return views.show_routes(self.registry, self.clock())

    def show_hoststats(self) -> list[str]:
        self._changed()
        return views.show_hoststats(self.registry)


def _domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()
