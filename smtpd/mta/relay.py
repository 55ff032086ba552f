"""The whole relay of one message to one domain, with connection reuse.

    relayer = Relayer(resolver, listeners=[("0.0.0.0", 25)], log=log.info)
    result = await relayer.relay(route, "example.org", envelopes, spool_file)
    ...
    await relayer.close()

``relay`` never raises for network or DNS trouble: every envelope gets a
result (routing errors and unreachable hosts are temporary unless DNS said
no for good).  A session that delivered stays open for ``idle`` seconds
and carries the next message for the same route and domain (RSET between
them), up to ``max_messages`` per connection (upstream's
max_mail_per_session, 100).  Log lines are upstream's (logfmt).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import BinaryIO

import dns.asyncresolver

from smtpd.lookup.mx import RouteError
from smtpd.mta import logfmt
from smtpd.mta.connect import Target, open_session, scheme, targets_for
from smtpd.mta.envelopes import send_envelopes
from smtpd.mta.routing import Route
from smtpd.mta.session import MtaSession
from smtpd.mta.transfer import (
    Recipient,
    SessionError,
    Status,
    Timeouts,
    TransferResult,
    fail_all,
)
from smtpd.queue.envelope import Envelope


@dataclass
class _Idle:
    session: MtaSession
    target: Target
    ident: int
    handle: asyncio.TimerHandle


class Relayer:
    def __init__(self, resolver: dns.asyncresolver.Resolver, *,
                 listeners: Sequence[tuple[str, int]] = (), timeouts: Timeouts | None = None,
                 mx_port: int = 25, idle: float = 5.0, max_messages: int = 100,
                 log: Callable[[str], None] | None = None) -> None:
        self.resolver = resolver
        self.listeners = tuple(listeners)
        self.timeouts = timeouts or Timeouts()
        self.mx_port = mx_port
        self.idle = idle
        self.max_messages = max_messages
        self._log = log or (lambda line: None)
        self._idle: dict[str, list[_Idle]] = {}
        self._closing: set[asyncio.Task[None]] = set()

    async def relay(self, route: Route, domain: str, envelopes: Sequence[Envelope],
                    message: BinaryIO) -> TransferResult:
        """Relay one message to ``envelopes`` (same msgid, sender, domain)."""
        if not envelopes:
            return TransferResult(())
        key = f"{route.key}|{domain.lower()}"
        reused = self._checkout(key)
        if reused is not None:
            session, target, ident = reused
        else:
            opened = await self._open(route, domain, envelopes)
            if isinstance(opened, TransferResult):
                return opened
            session, target, ident = opened
        result = await send_envelopes(session, envelopes, message)
        self._log_results(ident, session, target, envelopes, result)
        if session.is_open and session.messages < self.max_messages:
            self._checkin(key, session, target, ident)
        else:
            self._quit(session)
        return result

    async def _open(self, route: Route, domain: str, envelopes: Sequence[Envelope],
                    ) -> tuple[MtaSession, Target, int] | TransferResult:
        recipients = [(e.evpid, e.dest) for e in envelopes]
        try:
            targets = await targets_for(route, domain, self.resolver, listeners=self.listeners,
                                        mx_port=self.mx_port)
        except RouteError as exc:
            return self._fail(envelopes, recipients, exc.status, exc.text, "-")
        ident = secrets.randbits(64)

        def connecting(t: Target) -> None:
            self._log(logfmt.connecting_line(ident, scheme(route), t.address, t.port, t.host))

        try:
            session, target = await open_session(route, targets, timeouts=self.timeouts,
                                                 on_connecting=connecting)
        except SessionError as exc:
            self._log(logfmt.error_line(ident, exc.text))
            relay = logfmt.address_text(targets[-1].address, targets[-1].port) if targets else "-"
            return self._fail(envelopes, recipients, Status.TEMPFAIL, exc.text, relay)
        self._log(logfmt.connected_line(ident))
        return session, target, ident

    def _fail(self, envelopes: Sequence[Envelope], recipients: list[tuple[int, str]],
              status: Status, text: str, relay: str) -> TransferResult:
        now = int(time.time())
        for e in envelopes:
            self._log(logfmt.delivery_line(0, e.evpid, e.sender, e.dest, e.rcpt, None, relay,
                                           now - e.ctime, status, text))
        return fail_all([Recipient(evpid, dest) for evpid, dest in recipients], status, text)

    def _log_results(self, ident: int, session: MtaSession, target: Target,
                     envelopes: Sequence[Envelope], result: TransferResult) -> None:
        now = int(time.time())
        relay = f"{target.host} {logfmt.address_text(target.address, target.port)}"
        by_id = {e.evpid: e for e in envelopes}
        for r in result.results:
            e = by_id[r.evpid]
            self._log(logfmt.delivery_line(ident, e.evpid, e.sender, e.dest, e.rcpt,
                                           session.local_address, relay, now - e.ctime,
                                           r.status, r.text))

    # -- idle sessions -----------------------------------------------------------

    def _checkout(self, key: str) -> tuple[MtaSession, Target, int] | None:
        pool = self._idle.get(key)
        while pool:
            idle = pool.pop()
            idle.handle.cancel()
            if idle.session.is_open:
                return idle.session, idle.target, idle.ident
        self._idle.pop(key, None)
        return None

    def _checkin(self, key: str, session: MtaSession, target: Target, ident: int) -> None:
        handle = asyncio.get_running_loop().call_later(self.idle, self._expire, key, session)
        entry = _Idle(session, target, ident, handle)
        self._idle.setdefault(key, []).append(entry)

    def _expire(self, key: str, session: MtaSession) -> None:
        pool = self._idle.get(key, [])
        for idle in pool:
            if idle.session is session:
                pool.remove(idle)
                self._quit(session)
                break
        if not pool:
            self._idle.pop(key, None)

    def _quit(self, session: MtaSession) -> None:
        task = asyncio.get_running_loop().create_task(session.quit())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    @property
    def idle_sessions(self) -> int:
        return sum(len(pool) for pool in self._idle.values())

    async def close(self) -> None:
        """QUIT every idle session and wait for the goodbyes."""
        for pool in self._idle.values():
            for idle in pool:
                idle.handle.cancel()
                self._quit(idle.session)
        self._idle.clear()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
