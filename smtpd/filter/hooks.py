"""The glue between an SMTP session (smtpd/smtp/session.py) and its filters.

The session calls these hooks at fixed points and stays unaware of filter
details: ``connect()`` before the greeting, ``event()`` before handling a
command, ``answered()`` after each reply, ``data_opened()``/``data_chunk()``/
``data_end()`` around the message, ``rolled_back()`` and ``disconnected()``.
Phases and report events follow smtpd-filters(7).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from smtpd.filter.builtin import Facts
from smtpd.filter.lines import Decision
from smtpd.filter.session import FILTER_DOWN, SessionFilters, Verdict
from smtpd.smtp import events as E
from smtpd.smtp.address import AddressError, parse_path
from smtpd.smtp.reply import Reply

if TYPE_CHECKING:
    from smtpd.smtp.session import Session

JUNK_HEADER = b"X-Spam: yes\n"


class FilterDisconnect(ConnectionError):
    """A filter decided ``disconnect``: the reply is sent, the session ends."""


def _status(reply: Reply) -> str:
    return "ok" if reply.code < 400 else "tempfail" if reply.code < 500 else "permfail"


def _endpoint(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _address(event: E.Event) -> str:
    if isinstance(event, E.MailFrom | E.RcptTo):
        return "" if event.address is None else str(event.address)
    return ""


class SessionHooks:
    def __init__(self, session: Session) -> None:
        self.s = session
        runtime = getattr(session.smtp, "filters", None)
        chain = runtime.chain(session.listener.listener) if runtime is not None else ()
        self.f = SessionFilters(runtime, chain, session.id, session.log, session.sid)
        self.disconnect_after = False
        self.msgid = 0

    @property
    def active(self) -> bool:
        return self.f.active

    def facts(self, event: E.Event | None = None) -> Facts:
        s = self.s
        helo = s.proto.helo or ""
        if isinstance(event, E.Helo):
            helo = event.name
        mail_from = s.tx.sender
        if isinstance(event, E.MailFrom):
            mail_from = _address(event)
        return Facts(rdns=s.rdns, fcrdns=s.fcrdns, src=s.src, helo=helo,
                     auth_user=s.auth_user, mail_from=mail_from,
                     rcpt_to=_address(event) if isinstance(event, E.RcptTo) else "")

    # -- connection -----------------------------------------------------------

    async def connect(self) -> Reply | None:
        if not self.active:
            return None
        s = self.s
        down = self.f.down()
        if down:
            # a required filter is not running: refuse rather than skip it
            s.log.warning("%s smtp: filter %s not running, refusing session", s.sid,
                          ",".join(down))
            return FILTER_DOWN
        sock = s.writer.get_extra_info("sockname")
        dst = _endpoint(str(sock[0]), int(sock[1])) if isinstance(sock, tuple) else "unix:"
        local = s.src == "local"
        src = "unix:" if local else _endpoint(s.src, s.src_port)
        self.f.report("link-connect", s.rdns, "pass" if s.fcrdns else "fail", src, dst)
        # smtpd-filters(7) says "local" for a unix socket, but libopensmtpd (what
        # most filters use) only parses "unix:..." and exits on "local"
        addr = "unix:" if local else f"[{s.src}]" if ":" in s.src else s.src
        verdict = await self.f.phase("connect", self.facts(), (s.rdns, addr))
        return verdict.reply

    def greeted(self) -> None:
        if self.active:
            self.f.report("link-greeting", self.s.listener.limits.hostname)

    def tls_started(self) -> None:
        if not self.active:
            return
        tls = self.s.writer.get_extra_info("ssl_object")
        if tls is not None:
            cipher = tls.cipher()
            self.f.report("link-tls", f"{tls.version()}:{cipher[0]}:{cipher[2]}")

    def timed_out(self) -> None:
        if self.active:
            self.f.report("timeout")

    def disconnected(self) -> None:
        if self.active:
            self.f.data_abort()
            self.f.report("link-disconnect")

    # -- commands -------------------------------------------------------------

    async def event(self, event: E.Event) -> tuple[E.Event, Reply | None]:
        """Run the chain for the command ``event``: the event (perhaps
        rewritten) and a reply when a filter refuses it."""
        if not self.active:
            return event, None
        phase, params = self._phase_of(event)
        if phase is None:
            return event, None
        verdict = await self.f.phase(phase, self.facts(event), params)
        if verdict.reply is not None:
            if verdict.decision is Decision.DISCONNECT:
                self.disconnect_after = True
            return event, verdict.reply
        if verdict.rewrite is not None:
            return self._rewrite(event, verdict), None
        return event, None

    def _phase_of(self, event: E.Event) -> tuple[str | None, tuple[str, ...]]:
        match event:
            case E.Helo():
                return ("ehlo" if event.extended else "helo"), (event.name,)
            case E.MailFrom() | E.RcptTo():
                phase = "mail-from" if isinstance(event, E.MailFrom) else "rcpt-to"
                return phase, (_address(event),)
            case E.StartTls():
                return "starttls", ()
            case E.DataStart():
                return "data", ()
            case E.Rset():
                return "rset", ()
            case E.Quit():
                return "quit", ()
            case E.Noop():
                return "noop", ()
            case E.Help():
                return "help", ()
        return None, ()

    def _rewrite(self, event: E.Event, verdict: Verdict) -> E.Event:
        value = verdict.rewrite or ""
        if isinstance(event, E.Helo):
            return dataclasses.replace(event, name=value)
        if isinstance(event, E.MailFrom | E.RcptTo):
            try:
                box, _rest = parse_path(value if value.startswith("<") else f"<{value}>")
            except AddressError:
                self.s.log.warning("%s smtp: filter rewrite to an invalid address %r",
                                   self.s.sid, value[:80])
                return event
            if isinstance(event, E.RcptTo) and box is None:
                return event
            return dataclasses.replace(event, address=box)  # type: ignore[arg-type]
        return event

    def answered(self, event: E.Event, reply: Reply) -> None:
        """After a reply went out: report what happened, end the session if
        a filter said ``disconnect``."""
        if not self.active:
            return
        s, f = self.s, self.f
        if not isinstance(event, E.DataChunk | E.DataEnd) and s.proto.last_command:
            f.report("protocol-client", s.proto.last_command)
        f.report("protocol-server", str(reply))
        ok = reply.code < 400
        match event:
            case E.Helo() if ok:
                f.report("link-identify", "EHLO" if event.extended else "HELO", event.name)
            case E.MailFrom():
                if ok and s.tx.msgid:
                    self.msgid = s.tx.msgid
                    f.report("tx-begin", f"{s.tx.msgid:08x}")
                if self.msgid:
                    f.report("tx-mail", f"{self.msgid:08x}", _status(reply), _address(event))
            case E.RcptTo() if self.msgid:
                f.report("tx-rcpt", f"{self.msgid:08x}", _status(reply), _address(event))
            case E.DataStart() if self.msgid:
                f.report("tx-data", f"{self.msgid:08x}", _status(reply))
            case E.DataEnd() if self.msgid and ok:
                f.report("tx-commit", f"{self.msgid:08x}", str(event.size))
                self.msgid = 0
            case E.Rset():
                f.report("tx-reset", *((f"{self.msgid:08x}",) if self.msgid else ()))
            case E.AuthCredentials():
                f.report("link-auth", "pass" if ok else "fail", event.username)
        if self.disconnect_after:
            raise FilterDisconnect("filter disconnect")

    # -- the message ------------------------------------------------------------

    def data_opened(self) -> None:
        """The message file is open and the Received line written."""
        if not self.active:
            return
        fd = self.s.tx.fd
        if (self.f.junk or self.f.tx_junk) and fd is not None and fd >= 0:
            self.s._write_message(fd, JUNK_HEADER)
        if self.f.streaming():
            self.f.data_begin(self.s._data_chunk)

    async def data_chunk(self, data: bytes) -> None:
        if self.f.piping:
            await self.f.data_feed(data)
        else:
            self.s._data_chunk(data)

    async def data_end(self, event: E.DataEnd) -> Reply | None:
        """Flush the data-line filters, then the commit phase."""
        if not self.active:
            return None
        if event.error is not None:
            self.f.data_abort()
            return None
        blocked = await self.f.data_end()
        if blocked is not None:
            self.disconnect_after = True
            return blocked
        verdict = await self.f.phase("commit", self.facts(event))
        if verdict.decision is Decision.DISCONNECT:
            self.disconnect_after = True
        return verdict.reply

    def envelope(self, evpid: int) -> None:
        if self.active and self.msgid:
            self.f.report("tx-envelope", f"{self.msgid:08x}", f"{evpid:016x}")

    def rolled_back(self, msgid: int) -> None:
        if not self.active:
            return
        self.f.data_abort()
        if msgid and self.msgid == msgid:
            self.f.report("tx-rollback", f"{msgid:08x}")
            self.msgid = 0
        self.f.tx_junk = False


