"""One inbound SMTP session: the socket side of `protocol.ServerProtocol`.

The protocol decides what is valid; the session does the I/O (asyncio streams,
TLS), asks lookup about recipients and credentials, and streams DATA into the
fd the queue hands over.  Nothing from the network can raise out of here:
every failure is a reply to the client and a log line (DESIGN.md §1).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import secrets
import ssl
import time
from dataclasses import dataclass, replace
from email.utils import formatdate
from typing import TYPE_CHECKING

from smtpd.filter.hooks import FilterDisconnect, SessionHooks
from smtpd.queue.envelope import (
    DeliveryType,
    DsnNotify,
    DsnRet,
    Envelope,
    EnvelopeFlag,
    dump_envelope,
    load_envelope,
)
from smtpd.smtp import events as E
from smtpd.smtp import reply as R
from smtpd.smtp.address import Mailbox, Notify, Ret
from smtpd.smtp.headers import HeaderFixer
from smtpd.smtp.protocol import NEED_DATA, PAUSED, Sentinel, ServerProtocol
from smtpd.smtp.ratelimit import RateKind
from smtpd.smtp.reply import Reply

if TYPE_CHECKING:
    from smtpd.smtp.proc import ListenerRuntime, SmtpProcess

READ_SIZE = 65536
IDLE_TIMEOUT = 300.0  # RFC 5321 §4.5.3.2.7: server timeout, 5 minutes
QUEUE_UNAVAILABLE = Reply(421, "4.3.0", "Temporary failure, try again later")
TEMPFAIL = Reply(451, "4.3.0", "Temporary failure")
AUTH_BANNED = Reply(454, "4.7.0", "Too many authentication failures, try again later")
AUTH_BANNED_CLOSE = Reply(421, "4.7.0", "Too many authentication failures, closing connection")


def reply_from_line(line: str) -> Reply:
    """A reply given by another process as one line "CODE [x.y.z] text"."""
    try:
        code = int(line[:3])
        text = line[4:]
        head, _, rest = text.partition(" ")
        parts = head.split(".")
        if len(parts) == 3 and all(p.isdigit() for p in parts) and parts[0] == line[0]:
            return Reply(code, head, rest)
        return Reply(code, None, text)
    except ValueError:
        return TEMPFAIL


def format_address(host: str, port: int) -> str:
    # The seed: IPv6 addresses are logged with their port, in brackets.
    return f"[{host}]:{port}" if ":" in host else host


def mailbox_text(box: Mailbox | None) -> str:
    return "" if box is None else str(box)


@dataclass
class Transaction:
    msgid: int = 0
    sender: str = ""
    envelopes: list[str] | None = None
    rcpts: list[str] | None = None
    fd: int | None = None
    size: int = 0
    template: Envelope | None = None
    headers: HeaderFixer | None = None
    write_errno: int = 0


class Session:
    def __init__(self, smtp: SmtpProcess, listener: ListenerRuntime,
                 reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 local_user: str | None = None) -> None:
        self.smtp = smtp
        self.listener = listener
        self.reader = reader
        self.writer = writer
        self.id = secrets.randbits(64)
        self.sid = f"{self.id:016x}"
        peer = writer.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.src, self.src_port = str(peer[0]), int(peer[1])
        else:
            self.src, self.src_port = "local", 0
        self.rdns = ""
        self.fcrdns = False
        tls_on = writer.get_extra_info("ssl_object") is not None
        limits = replace(listener.limits, tls_active=tls_on)
        self.proto = ServerProtocol(limits)
        self.tx = Transaction()
        # A local submission (sendmail) is authenticated as the local user,
        # as upstream's enqueuer: its Received says "with ESMTPA".
        self.local_user = local_user
        self.auth_user = local_user or ""
        if local_user is not None:
            self.rdns = listener.limits.hostname
        self.log = smtp.log
        self.reason = "quit"
        self.filtering = SessionHooks(self)  # builtin and proc filters (smtpd/filter/)
        # Monotonic time by which the command (or DATA) being received must be
        # complete; None while waiting idle for the next command.
        self.deadline: float | None = None

    # -- the loop --------------------------------------------------------------

    async def run(self) -> None:
        if self.local_user is None and self.src != "local":
            host = await self.smtp.lookup_host(self.src)
            self.rdns, self.fcrdns = host.name, host.confirmed
        self.log.info("%s smtp connected address=%s host=%s", self.sid,
                      format_address(self.src, self.src_port), self.rdns or "<unknown>")
        try:
            if self.smtp.paused:
                self._write(self.proto.send(Reply(421, "4.3.0", "Service temporarily paused")))
                self.reason = "paused"
            elif (refusal := await self.filtering.connect()) is not None:
                self._write(self.proto.send(refusal))
                self.reason = "filter"
            else:
                self._write(self.proto.greeting())
                self.filtering.greeted()
                await self._serve()
        except FilterDisconnect:
            self.reason = "filter-disconnect"
        except TimeoutError:
            self.reason = "timeout"
            self.filtering.timed_out()
            with contextlib.suppress(Exception):
                self._write(Reply(421, "4.4.2", "Timeout, closing connection").to_bytes())
        except (ConnectionError, ssl.SSLError, OSError) as exc:
            self.reason = f"io-error {type(exc).__name__}"
        finally:
            if self.proto.tls_active and self.writer.get_extra_info("ssl_object") is not None \
                    and self.listener.smtps is False:
                self.smtp.stats.decrement("smtp.tls")  # a gauge, as upstream
            self._rollback()
            self.filtering.disconnected()
            self.log.info("%s smtp disconnected reason=%s", self.sid, self.reason)
            try:
                self.writer.close()
                await asyncio.wait_for(self.writer.wait_closed(), 2)
            except Exception:
                # close() waits for the write buffer to flush: a peer that
                # does not read would keep the socket forever.
                self.writer.transport.abort()

    async def _serve(self) -> None:
        while not self.proto.closed:
            event = self.proto.next_event()
            if event is NEED_DATA:
                await self._drain()
                data = await asyncio.wait_for(self.reader.read(READ_SIZE),
                                              self._read_timeout())
                self._arm_deadline(data)
                self.proto.receive_data(data)
                continue
            if event is PAUSED:
                return
            assert not isinstance(event, Sentinel)
            reply = await self._handle(event)
            self._next_deadline(event, reply)
            if reply is not None:
                self._answer(event, reply)
            if isinstance(event, E.StartTls) and reply is R.STARTTLS_GO:
                await self._drain()
                await self._start_tls()
        await self._drain()

    # -- deadlines against slowloris ----------------------------------------------
    # The idle timeout alone lets a client that sends a byte a second hold a
    # session forever: a command must also arrive whole within
    # `smtp limit command-timeout` of its first byte, and DATA within
    # `data-timeout` of the 354 (RFC 5321 §4.5.3.2 gives per-stage timeouts).

    def _read_timeout(self) -> float:
        if self.deadline is None:
            return IDLE_TIMEOUT
        return max(0.0, min(IDLE_TIMEOUT, self.deadline - time.monotonic()))

    def _arm_deadline(self, data: bytes) -> None:
        if data and self.deadline is None:
            self.deadline = time.monotonic() + self.smtp.config.smtp.command_timeout

    def _next_deadline(self, event: E.Event, reply: Reply | None) -> None:
        if isinstance(event, E.DataChunk | E.BdatChunkEnd):
            return  # RFC 3030: all BDAT chunks of a message share one deadline
        if isinstance(event, E.DataStart) and reply is not None and reply.code == 354:
            self.deadline = time.monotonic() + self.smtp.config.smtp.data_timeout
        else:
            self.deadline = None

    def _answer(self, event: E.Event, reply: Reply) -> None:
        failed = reply.code >= 400 and not isinstance(event, E.DataEnd)
        if failed or isinstance(event, E.ProtocolError):
            self.log.info('%s smtp failed-command command="%s" result="%s"', self.sid,
                          self.proto.last_command, reply)
        self._write(self.proto.send(reply))
        self.filtering.answered(event, reply)

    def _write(self, data: bytes) -> None:
        self.writer.write(data)

    async def _drain(self) -> None:
        # A client that pipelines without ever reading our replies would park
        # the session in drain() forever (RFC 5321 §4.5.3.2.7: the server
        # times out); the idle timeout applies to writing as to reading.
        await asyncio.wait_for(self.writer.drain(), IDLE_TIMEOUT)

    async def _start_tls(self) -> None:
        ctx = self.listener.ssl_context
        assert ctx is not None
        # RFC 3207 §4.2 / CVE-2011-0411: plaintext pipelined after STARTTLS must
        # not be read as if it came over TLS.  asyncio keeps it in the reader.
        buffered = getattr(self.reader, "_buffer", None)
        if isinstance(buffered, bytearray) and buffered:
            self.log.info("%s smtp: discarding %d bytes sent after STARTTLS", self.sid,
                          len(buffered))
            buffered.clear()
        # A handshake that never finishes is bounded like a command.
        limit = self.smtp.config.smtp.command_timeout
        await asyncio.wait_for(self.writer.start_tls(ctx, ssl_handshake_timeout=limit),
                               limit + 1)
        self.proto.start_tls_done()
        self.smtp.stats.increment("smtp.tls")
        self.filtering.tls_started()

    # -- events ------------------------------------------------------------------

    async def _handle(self, event: E.Event) -> Reply | None:
        event, refusal = await self.filtering.event(event)
        if refusal is not None:
            return refusal
        match event:
            case E.Helo():
                return self.proto.helo_reply(event, self.src)
            case E.MailFrom():
                return await self._mail(event)
            case E.RcptTo():
                return await self._rcpt(event)
            case E.DataStart():
                return await self._data_start()
            case E.DataChunk():
                await self.filtering.data_chunk(event.data)
                return None
            case E.BdatChunkEnd():
                return event.reply
            case E.DataEnd():
                return await self._data_end(event)
            case E.Rset():
                self._rollback()
                return R.RSET_OK
            case E.Noop():
                return R.OK
            case E.Quit():
                return R.BYE
            case E.Help():
                return R.HELP
            case E.Vrfy():
                return R.VRFY_CANNOT
            case E.Expn():
                return R.EXPN_DISABLED
            case E.StartTls():
                if self.listener.ssl_context is None:
                    return Reply(454, "4.7.0", "TLS not available")
                return R.STARTTLS_GO
            case E.AuthChallenge():
                return event.reply
            case E.AuthCredentials():
                return await self._auth(event)
            case E.ProtocolError():
                if event.close:
                    self.reason = "protocol-error"
                return event.reply
            case E.ConnectionClosed():
                self.reason = "disconnect"
                return None
        return None

    async def _mail(self, event: E.MailFrom) -> Reply:
        if self.smtp.paused:
            return Reply(421, "4.3.0", "Service temporarily paused")
        limited = self.smtp.rate_check(RateKind.MESSAGES, self.src, self.auth_user)
        if limited is not None:
            return limited
        answer = await self.smtp.queue_create()
        if isinstance(answer, Reply):
            return answer
        sender = mailbox_text(event.address)
        params = event.params
        flags = EnvelopeFlag.AUTHENTICATED if self.auth_user else EnvelopeFlag(0)
        if params.requiretls:
            flags |= EnvelopeFlag.REQUIRETLS
        if params.smtputf8:
            flags |= EnvelopeFlag.SMTPUTF8
        self.tx = Transaction(
            msgid=answer, sender=sender, envelopes=[], rcpts=[],
            template=Envelope(
                evpid=0, type=DeliveryType.MDA, dispatcher="-", sender=sender, rcpt="-",
                dest="-", ctime=int(time.time()), ttl=self.smtp.config.queue.ttl,
                tag=self.listener.listener.tag or "", smtpname=self.listener.limits.hostname,
                helo=self.proto.helo or "", hostname=self.rdns or self.src,
                sockaddr=self.src if ":" not in self.src else f"[{self.src}]",
                username=self.auth_user, flags=flags,
                dsn_ret=(DsnRet.FULL if params.ret is Ret.FULL
                         else DsnRet.HDRS if params.ret is Ret.HDRS else None),
                dsn_envid=params.envid or ""))
        return R.MAIL_OK

    async def _rcpt(self, event: E.RcptTo) -> Reply:
        tx = self.tx
        assert tx.template is not None and tx.envelopes is not None and tx.rcpts is not None
        limited = self.smtp.rate_check(RateKind.RECIPIENTS, self.src, self.auth_user)
        if limited is not None:
            return limited
        rcpt = str(event.address)
        notify = DsnNotify(0)
        for n in event.params.notify:
            notify |= {Notify.SUCCESS: DsnNotify.SUCCESS, Notify.FAILURE: DsnNotify.FAILURE,
                       Notify.DELAY: DsnNotify.DELAY, Notify.NEVER: DsnNotify.NEVER}[n]
        orcpt = event.params.orcpt.address if event.params.orcpt else ""
        template = replace(tx.template, rcpt=rcpt, dest=rcpt, orig_rcpt=rcpt,
                           dsn_notify=notify, dsn_orcpt=orcpt)
        ok, reply, envelopes = await self.smtp.lookup_rcpt(
            self, tx.sender, rcpt, dump_envelope(template).decode())
        if ok:
            tx.envelopes.extend(envelopes)
            tx.rcpts.append(rcpt)
        return reply

    async def _data_start(self) -> Reply:
        answer = await self.smtp.queue_open(self.tx.msgid)
        if isinstance(answer, Reply):
            return answer
        self.tx.fd = answer
        self.tx.size = 0
        self.tx.headers = HeaderFixer(self.listener.limits.hostname)
        try:
            os.write(answer, self._received_header().encode())
        except OSError:
            return Reply(451, "4.3.0", "Temporary failure: cannot write message")
        self.filtering.data_opened()
        return R.DATA_GO

    def _received_header(self) -> str:
        # RFC 5321 §4.4 trace information, in OpenSMTPD's layout.
        tx = self.tx
        assert tx.rcpts is not None
        proto = "ESMTP" if self.proto.extended else "SMTP"
        if self.proto.tx_smtputf8:
            proto = "UTF8SMTP"  # RFC 6531 §4.3 (then S, A as RFC 3848)
        tls = self.writer.get_extra_info("ssl_object")
        if tls is not None:
            proto += "S"
        if self.auth_user:
            proto += "A"
        lines = [f"Received: from {self.proto.helo or self.src} "
                 f"({self.rdns or 'unknown'} [{self.src}])"]
        if tls is not None:
            cipher = tls.cipher()
            lines.append(f"\t({tls.version()}:{cipher[0]}:{cipher[2]}:NO)")
        lines.append(f"\tby {self.listener.limits.hostname} (pysmtpd) with {proto} "
                     f"id {tx.msgid:08x}")
        if len(tx.rcpts) == 1:
            lines.append(f"\tfor <{tx.rcpts[0]}>;")
        else:
            lines[-1] += ";"
        lines.append(f"\t{formatdate(localtime=True)}")
        return "\n".join(lines) + "\n"

    def _data_chunk(self, data: bytes) -> None:
        fd = self.tx.fd
        if fd is None or fd < 0:
            return
        if self.tx.headers is not None:
            data = self.tx.headers.feed(data)
        self._write_message(fd, data)

    def _write_message(self, fd: int, data: bytes) -> None:
        try:
            self.smtp.faults.check(self.tx.size + len(data))
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except OSError as exc:
            self.log.warning("%s smtp: message write failed: %s", self.sid,
                             os.strerror(exc.errno or 0))
            os.close(fd)
            self.tx.fd = -1  # remember the failure until DataEnd
            self.tx.write_errno = exc.errno or 0
        self.tx.size += len(data)

    async def _data_end(self, event: E.DataEnd) -> Reply:
        refusal = await self.filtering.data_end(event)
        if refusal is not None:
            self._rollback()
            return refusal
        tx = self.tx
        if tx.fd is not None and tx.fd >= 0 and tx.headers is not None and event.error is None:
            self._write_message(tx.fd, tx.headers.finish())
        fd, tx.fd = tx.fd, None
        if fd is not None and fd >= 0:
            os.close(fd)
        if event.error is not None:
            self._rollback()
            self.log.info('%s smtp failed-command command="DATA" result="%s"', self.sid,
                          event.error)
            return event.error
        if fd is None or fd < 0:
            full = tx.write_errno in (errno.ENOSPC, errno.EDQUOT)
            self._rollback()
            if full:  # RFC 3463 4.3.1: mail system full
                return Reply(452, "4.3.1", "Insufficient system storage")
            return Reply(451, "4.3.0", "Temporary failure: cannot write message")
        assert tx.envelopes is not None
        answer = await self.smtp.queue_commit(tx.msgid, tx.envelopes)
        if isinstance(answer, Reply):
            self._rollback()
            return answer
        self.log.info("%s smtp message msgid=%08x size=%d nrcpt=%d proto=%s", self.sid,
                      tx.msgid, event.size, len(tx.rcpts or ()),
                      "ESMTP" if self.proto.extended else "SMTP")
        for evpid, text in zip(answer, tx.envelopes, strict=False):
            env = load_envelope(text.encode())
            self.log.info("%s smtp envelope evpid=%016x from=<%s> to=<%s>", self.sid, evpid,
                          env.sender, env.rcpt)
            self.filtering.envelope(evpid)
        msgid = tx.msgid
        self.tx = Transaction()
        self.smtp.stats.increment("smtp.message")
        return Reply(250, "2.0.0", f"{msgid:08x} Message accepted for delivery")

    async def _auth(self, event: E.AuthCredentials) -> Reply:
        if self.smtp.guard.auth_banned(self.src):
            # Credentials are not even checked: no oracle for a banned source.
            self.log.info("%s smtp authentication user=%s result=banned", self.sid,
                          event.username)
            return AUTH_BANNED
        status = await self.smtp.lookup_auth(self.listener.listener.auth_table or "",
                                             event.username, event.password)
        if status == "ok":
            self.auth_user = event.username
            self.smtp.guard.auth_succeeded(self.src)
            self.log.info('%s smtp authentication user=%s result=ok', self.sid, event.username)
            return R.AUTH_OK
        self.log.info('%s smtp authentication user=%s result=%s', self.sid, event.username,
                      "tempfail" if status == "tempfail" else "permfail")
        if status == "tempfail":
            return Reply(454, "4.7.0", "Temporary authentication failure")
        return await self._auth_failure()

    async def _auth_failure(self) -> Reply:
        """`smtp limit max-auth-failures`: each failure is answered later than
        the last; the one that reaches the limit closes the session with 421
        and AUTH is refused from that address for `auth-ban`."""
        delay, banned = self.smtp.guard.auth_failed(self.src)
        if delay:
            await asyncio.sleep(delay)
        if banned:
            self.log.warning("%s smtp: too many authentication failures from %s",
                             self.sid, self.src)
            self.reason = "auth-banned"
            return AUTH_BANNED_CLOSE
        return R.AUTH_FAILED

    def _rollback(self) -> None:
        tx = self.tx
        self.filtering.rolled_back(tx.msgid)
        if tx.fd is not None and tx.fd >= 0:
            os.close(tx.fd)
        if tx.msgid:
            self.smtp.queue_rollback(tx.msgid)
        self.tx = Transaction()
