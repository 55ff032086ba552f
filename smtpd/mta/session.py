"""An asyncio MTA session: one connection to one next hop, several messages.

    session = await MtaSession.open("mx.example.org", 25, config, address="192.0.2.1")
    result = await session.send("a@b.test", [Recipient(evpid, "c@d.test")], spool_file)
    await session.quit()

``open`` connects, reads the greeting, says EHLO (HELO when EHLO gets a 5xx,
RFC 5321 §3.2), runs STARTTLS (RFC 3207) and AUTH (RFC 4954, only over TLS)
as the config asks; any failure there raises ``SessionError`` (a temporary
failure for every envelope).  ``send`` never raises for network trouble: it
returns a per-recipient ``TransferResult``; if the connection broke, the
envelopes not yet answered are temporary failures and ``is_open`` is False.

Spool files have LF line endings (COMPAT.md §2); the client turns them into
CRLF and dot-stuffs them as they stream.  When the peer offers CHUNKING
(RFC 3030) the message goes as BDAT chunks instead of DATA: the same CRLF
bytes, counted instead of dot-stuffed, never parsed for a terminator.
Reads of the spool file are plain blocking reads, as the queue's own: local
disk, 64 KiB at a time (256 KiB per BDAT chunk).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import ssl
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO

from smtpd.mta.transfer import (
    Recipient,
    RecipientResult,
    SessionConfig,
    SessionError,
    Status,
    TlsPolicy,
    TransferResult,
    fail_all,
)
from smtpd.smtp import client as C
from smtpd.smtp.client import NEED_DATA, ClientProtocol, CrlfEncoder
from smtpd.smtp.reply import Reply

CHUNK = 65536
BDAT_CHUNK = 4 * CHUNK  # octets read from the spool per BDAT chunk
BDAT_WINDOW = 8  # chunk replies outstanding with PIPELINING (RFC 3030 §4.2)


class _Broken(Exception):
    """The connection is unusable; ``text`` explains it reply-style."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class _TlsFailed(_Broken):
    """The TLS handshake after STARTTLS failed."""


def make_tls_context(config: SessionConfig) -> ssl.SSLContext:
    """Verified (system store or ``ca_file``) for mandatory TLS unless
    ``verify`` is off; never verified for opportunistic STARTTLS, where a
    failed check would only push the message to cleartext anyway."""
    verify = config.verify and config.tls in (TlsPolicy.STARTTLS, TlsPolicy.SMTPS)
    if verify:
        return ssl.create_default_context(cafile=config.ca_file)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def scan_message(fp: BinaryIO) -> tuple[int, bool]:
    """(size on the wire with CRLF line ends, has 8-bit bytes); rewinds."""
    fp.seek(0)
    size = 0
    eightbit = False
    prev_cr = False
    while chunk := fp.read(CHUNK):
        size += len(chunk) + chunk.count(b"\n") - chunk.count(b"\r\n")
        if prev_cr and chunk.startswith(b"\n"):
            size -= 1
        prev_cr = chunk.endswith(b"\r")
        eightbit = eightbit or not chunk.isascii()
    fp.seek(0)
    return size, eightbit


def utf8_headers(fp: BinaryIO, limit: int = 1 << 20) -> bool:
    """True when the header block holds UTF-8 beyond ASCII (RFC 6532 §3:
    such a message needs SMTPUTF8, even with ASCII addresses); rewinds.
    Legacy 8-bit headers that are not UTF-8 do not count."""
    fp.seek(0)
    head = bytearray()
    while len(head) < limit:
        chunk = fp.read(CHUNK)
        if not chunk:
            break
        head += chunk
        end = head.find(b"\n\n")
        if end >= 0 or head.startswith(b"\n"):
            del head[max(end, 0):]
            break
    fp.seek(0)
    if head.isascii():
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "Connection timed out"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, OSError) and exc.errno:
        # asyncio's "Connect call failed ('192.0.2.1', 25)" says less
        return os.strerror(exc.errno)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__


class MtaSession:
    """An open, greeted and identified connection (use ``open``)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 config: SessionConfig, host: str, port: int) -> None:
        self.reader = reader
        self.writer = writer
        self.config = config
        self.host = host
        self.port = port
        self.client = ClientProtocol(config.helo, lmtp=config.lmtp)
        self.greeting: Reply | None = None
        self.tls_active = config.tls is TlsPolicy.SMTPS
        self.authenticated = False
        self.verified = False  # the peer was authenticated (PKIX or a hard TlsCheck)
        self.messages = 0  # transactions started on this connection
        self._closed = False
        self._closing = False  # a 421 was received

    # -- opening ---------------------------------------------------------------

    @classmethod
    async def open(cls, host: str, port: int, config: SessionConfig, *,
                   address: str | None = None) -> MtaSession:
        """Connect to ``address`` (default ``host``) and run the handshake.
        ``host`` names the peer for TLS verification and SNI."""
        ctx = make_tls_context(config) if config.tls is TlsPolicy.SMTPS else None
        name = config.server_name or host
        local = (config.source, 0) if config.source else None
        try:
            async with asyncio.timeout(config.timeouts.connect):
                reader, writer = await asyncio.open_connection(
                    address or host, port, ssl=ctx, server_hostname=name if ctx else None,
                    local_addr=local)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise SessionError(f"421 4.4.1 Connection to {host} failed: {_reason(exc)}",
                               host_failure=True) from exc
        session = cls(reader, writer, config, host, port)
        try:
            if ctx is not None:
                session._after_tls(ctx)
            await session._handshake()
        except _TlsFailed as exc:
            session.abort()
            if config.tls is TlsPolicy.OPPORTUNISTIC and config.credentials is None:
                # Opportunistic means "TLS if it works": retry in clear once,
                # as upstream does (MTA_DOWNGRADE_PLAIN).
                plain = dataclasses.replace(config, tls=TlsPolicy.NONE)
                return await cls.open(host, port, plain, address=address)
            raise SessionError(exc.text) from exc
        except _Broken as exc:
            session.abort()
            raise SessionError(exc.text) from exc
        except SessionError:
            session.abort()
            raise
        return session

    @property
    def is_open(self) -> bool:
        return not self._closed

    @property
    def local_address(self) -> str | None:
        """The source address of the connection (``source=`` in logs)."""
        info = self.writer.get_extra_info("sockname")
        return str(info[0]) if info else None

    @property
    def extensions(self) -> dict[str, str]:
        return dict(self.client.extensions)

    @property
    def peer(self) -> str:
        """``host:port`` as logs show it, IPv6 bracketed."""
        info = self.writer.get_extra_info("peername")
        addr = str(info[0]) if info else self.host
        return f"[{addr}]:{self.port}" if ":" in addr else f"{addr}:{self.port}"

    async def _handshake(self) -> None:
        t = self.config.timeouts
        try:
            ev = await self._event(t.greeting)
        except _Broken as exc:
            raise SessionError(f"{exc.text} (greeting)", host_failure=True) from exc
        if not isinstance(ev, C.Greeting) or ev.reply.code != 220:
            # RFC 5321 §3.1: 554 (or a 4xx) instead of 220: no service here now
            raise SessionError(f"{_text(ev)} (greeting)", host_failure=True)
        self.greeting = ev.reply
        await self._hello()
        policy = self.config.tls
        required = policy is TlsPolicy.STARTTLS or self.config.credentials is not None
        if policy in (TlsPolicy.OPPORTUNISTIC, TlsPolicy.STARTTLS) and not self.tls_active:
            if "STARTTLS" in self.client.extensions:
                await self._write(self.client.starttls(), t.starttls)
                ev = await self._event(t.starttls)
                if isinstance(ev, C.StartTlsReply) and ev.reply.code == 220:
                    await self._start_tls()
                    await self._hello()
                elif required:
                    raise SessionError(f"{_text(ev)} (STARTTLS)")
            elif required:
                raise SessionError("421 4.7.10 TLS required but not supported by remote host")
        if self.config.credentials is not None:
            if not self.tls_active:
                raise SessionError("530 5.7.11 Refuse to AUTH over unsecure channel")
            await self._auth(*self.config.credentials)

    async def _hello(self) -> None:
        t = self.config.timeouts
        await self._write(self.client.ehlo(), t.helo)
        ev = await self._event(t.helo)
        if isinstance(ev, C.EhloDone) and ev.reply.code // 100 == 2:
            return
        if isinstance(ev, C.EhloDone) and ev.reply.code // 100 == 5 and not self.config.lmtp:
            await self._write(self.client.helo(), t.helo)
            ev = await self._event(t.helo)
            if isinstance(ev, C.HeloDone) and ev.reply.code // 100 == 2:
                return
        raise SessionError(f"{_text(ev)} (HELO)")

    async def _start_tls(self) -> None:
        ctx = make_tls_context(self.config)
        try:
            async with asyncio.timeout(self.config.timeouts.starttls):
                await self.writer.start_tls(
                    ctx, server_hostname=self.config.server_name or self.host)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise _TlsFailed(f"421 4.7.0 TLS handshake failed: {_reason(exc)}") from exc
        self.client.tls_established()
        self.tls_active = True
        self._after_tls(ctx)

    def _after_tls(self, ctx: ssl.SSLContext) -> None:
        """Record whether the peer is authenticated; run the TlsCheck."""
        self.verified = ctx.verify_mode == ssl.CERT_REQUIRED
        check = self.config.tls_check
        if check is None:
            return
        sslobj = self.writer.get_extra_info("ssl_object")
        chain: list[bytes] = []
        if isinstance(sslobj, ssl.SSLObject):
            # Python 3.13's SSLObject.get_unverified_chain (not in typeshed
            # yet): DER bytes here, Certificate objects on an SSLSocket
            obj: Any = sslobj
            certs: list[Any] = obj.get_unverified_chain() or []
            chain = [c if isinstance(c, bytes) else ssl.PEM_cert_to_DER_cert(c.public_bytes())
                     for c in certs]
        error = check.verify(chain)
        if error is None:
            self.verified = self.verified or not check.soft
            return
        if check.soft:
            if check.report is not None:
                check.report(f"{check.what} check of {self.host} failed: {error}")
            return
        # RFC 7672 §2.2 / RFC 8461 §4.2: an unauthenticated peer is not used
        raise _TlsFailed(f"421 4.7.5 {check.what} authentication of {self.host} failed: {error}")

    async def _auth(self, user: str, password: str) -> None:
        t = self.config.timeouts
        mechanisms = self.client.extensions.get("AUTH", "").upper().split()
        if "PLAIN" in mechanisms:
            await self._write(self.client.auth_plain(user, password), t.auth)
        elif "LOGIN" in mechanisms:
            await self._write(self.client.auth_login(user, password), t.auth)
        else:
            raise SessionError("504 5.7.4 Remote host offers no AUTH PLAIN or LOGIN")
        while True:
            ev = await self._event(t.auth)
            if isinstance(ev, C.AuthChallenge):
                await self._write(self.client.auth_response(), t.auth)
                continue
            if isinstance(ev, C.AuthDone) and ev.reply.code == 235:
                self.authenticated = True
                return
            raise SessionError(f"{_text(ev)} (AUTH)")

    # -- I/O helpers -------------------------------------------------------------

    async def _event(self, timeout: float) -> C.Event:
        """The next event within ``timeout`` seconds; broken connections and
        protocol errors raise _Broken."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    ev = self.client.next_event()
                    if ev is NEED_DATA:
                        self.client.receive_data(await self.reader.read(CHUNK))
                        continue
                    assert not isinstance(ev, C.Sentinel)
                    break
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise _Broken(f"421 4.4.2 {_reason(exc)}") from exc
        if isinstance(ev, C.ProtocolError):
            if ev.reply is not None:
                raise _Broken(str(ev.reply))
            raise _Broken(f"421 4.4.0 Protocol error: {ev.reason}")
        if isinstance(ev, C.ConnectionClosed):
            raise _Broken("421 4.4.2 Connection closed by the remote host")
        reply = getattr(ev, "reply", None)
        if isinstance(reply, Reply) and reply.code == 421:
            # RFC 5321 §3.8: the server is closing the channel.
            self._closing = True
        return ev

    async def _write(self, data: bytes, timeout: float) -> None:
        try:
            self.writer.write(data)
            async with asyncio.timeout(timeout):
                await self.writer.drain()
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise _Broken(f"421 4.4.2 {_reason(exc)}") from exc

    # -- transfer -----------------------------------------------------------------

    async def send(self, sender: str, recipients: Sequence[Recipient], message: BinaryIO, *,
                   envid: str | None = None, ret: str | None = None,
                   smtputf8: bool = False, requiretls: bool = False) -> TransferResult:
        """Relay one message (spool form, LF line endings) to ``recipients``.
        ``envid`` (xtext) and ``ret`` (FULL/HDRS) go on MAIL when the peer
        offers DSN.  ``smtputf8`` is implied by a non-ASCII address.
        ``requiretls`` (RFC 8689) sends only over authenticated TLS to a peer
        offering REQUIRETLS, and passes the flag on."""
        if not recipients:
            return TransferResult(())
        if self._closed:
            return fail_all(recipients, Status.TEMPFAIL, "421 4.4.2 Session closed")
        ext = self.client.extensions
        try:
            size, eightbit = scan_message(message)
            # UTF-8 headers: SMTPUTF8 to a peer that offers it; to one that
            # does not, sent as before (8BITMIME): the envelope does not
            # record whether the client asked for SMTPUTF8.
            headers = eightbit and "SMTPUTF8" in ext and utf8_headers(message)
        except OSError as exc:
            return fail_all(recipients, Status.TEMPFAIL,
                            f"451 4.3.0 Cannot read the message: {_reason(exc)}")
        if requiretls and not (self.tls_active and self.verified and "REQUIRETLS" in ext):
            # RFC 8689 §4.1: no delivery without a verified TLS peer that
            # takes the flag; §5: 5.7.10, and the message is not retried
            # in a weaker way
            return fail_all(recipients, Status.PERMFAIL,
                            "550 5.7.10 REQUIRETLS support required")
        utf8 = smtputf8 or headers or not (
            sender.isascii() and all(r.address.isascii() for r in recipients))
        if utf8 and "SMTPUTF8" not in ext:
            # RFC 6531 §3.2: no downgrade; upstream fails the same way.
            return fail_all(recipients, Status.PERMFAIL,
                            "553 5.6.7 Remote host does not support SMTPUTF8")
        if eightbit and "8BITMIME" not in ext:
            # RFC 6152 §3: 8-bit data only to an 8BITMIME peer; no downgrade.
            return fail_all(recipients, Status.PERMFAIL,
                            "554 5.6.3 Remote host does not support 8BITMIME")
        limit = _int(ext.get("SIZE", ""))
        if limit and size > limit:
            # RFC 1870 §4: do not send what the peer announced it refuses.
            return fail_all(recipients, Status.PERMFAIL,
                            f"552 5.3.4 Message too large for peer (SIZE {limit})")
        dsn = "DSN" in ext
        params = [f"SIZE={size}"] if "SIZE" in ext else []
        if eightbit:
            params.append("BODY=8BITMIME")
        if utf8:
            params.append("SMTPUTF8")
        if requiretls:
            params.append("REQUIRETLS")
        if dsn and ret:
            params.append(f"RET={ret}")
        if dsn and envid:
            params.append(f"ENVID={envid}")
        out: list[RecipientResult | None] = [None] * len(recipients)
        try:
            if self.messages:
                await self._rset()
            self.messages += 1
            await self._transaction(sender, params, recipients, message, dsn, out)
        except _Broken as exc:
            self.abort()
            missing = exc.text
        else:
            missing = "451 4.3.0 No reply for this recipient"
            if self._closing:
                self.abort()
        # Every envelope gets a result: one without a final reply is retried.
        return TransferResult(tuple(
            x if x is not None else RecipientResult(r.evpid, r.address, Status.TEMPFAIL, missing)
            for x, r in zip(out, recipients, strict=True)), peer_dsn=dsn)

    async def _rset(self) -> None:
        await self._write(self.client.rset(), self.config.timeouts.rset)
        ev = await self._event(self.config.timeouts.rset)
        if not isinstance(ev, C.RsetReply) or ev.reply.code // 100 != 2:
            raise _Broken(_text(ev))

    async def _transaction(self, sender: str, params: list[str],
                           recipients: Sequence[Recipient], message: BinaryIO, dsn: bool,
                           out: list[RecipientResult | None]) -> None:
        t = self.config.timeouts
        c = self.client

        def settle(i: int, reply: Reply) -> None:
            r = recipients[i]
            out[i] = RecipientResult(r.evpid, r.address, Status.of(reply), str(reply))

        def rcpt_line(r: Recipient) -> bytes:
            rp = []
            if dsn and r.notify:
                rp.append(f"NOTIFY={r.notify}")
            if dsn and r.orcpt:
                rp.append(f"ORCPT={r.orcpt}")
            return c.rcpt(r.address, rp)

        pipelined = c.pipelining
        # RFC 3030: BDAT when offered (LMTP servers too seldom do it right).
        chunking = c.chunking and not c.lmtp
        if pipelined:
            # RFC 2920 §3.1: MAIL, every RCPT and DATA in one write; BDAT
            # waits for the RCPT replies (no chunk for nobody).
            burst = c.mail(sender, params) + b"".join(rcpt_line(r) for r in recipients)
            await self._write(burst + (b"" if chunking else c.data()), t.mail)
        else:
            await self._write(c.mail(sender, params), t.mail)
        mail = await self._event(t.mail)
        if not isinstance(mail, C.MailReply):
            raise _Broken(_text(mail))
        mail_ok = mail.reply.code // 100 == 2
        if not mail_ok:
            # Settled now: a server that hangs up after refusing MAIL (421)
            # leaves its own reply in the envelopes, not "connection closed".
            for i in range(len(recipients)):
                settle(i, mail.reply)
        rcpt_replies: list[Reply] = []
        for r in recipients:
            if not pipelined:
                if not mail_ok:
                    break
                await self._write(rcpt_line(r), t.rcpt)
            ev = await self._event(t.rcpt)
            if not isinstance(ev, C.RcptReply):
                raise _Broken(_text(ev))
            rcpt_replies.append(ev.reply)
        if mail_ok:
            # An accepted RCPT is not a result yet: the message may still
            # fail (or the connection break) before the final reply.
            for i, reply in enumerate(rcpt_replies):
                if reply.code // 100 != 2:
                    settle(i, reply)
        accepted = c.accepted if mail_ok else ()
        if chunking:
            if accepted:
                await self._chunks(message, accepted, settle)
            return
        if not pipelined and not accepted:
            return
        if not pipelined:
            await self._write(c.data(), t.data_init)
        ev = await self._event(t.data_init)
        if not isinstance(ev, C.DataReply):
            raise _Broken(_text(ev))
        if ev.reply.code != 354:
            for i in accepted:
                settle(i, ev.reply)
            return
        if not accepted:
            # RFC 2920 §3.1: DATA accepted although no recipient was: send
            # an empty message and ignore its reply.
            await self._write(c.end_of_data(), t.data_block)
            for _ in range(c.pending):
                await self._event(t.data_end)
            return
        await self._body(message)
        await self._write(c.end_of_data(), t.data_block)
        for _ in range(len(accepted) if c.lmtp else 1):
            ev = await self._event(t.data_end)
            if not isinstance(ev, C.MessageReply):
                raise _Broken(_text(ev))
            if ev.index is None:
                for i in accepted:
                    settle(i, ev.reply)
            else:
                settle(ev.index, ev.reply)

    async def _chunks(self, message: BinaryIO, accepted: Sequence[int],
                      settle: Callable[[int, Reply], None]) -> None:
        """The message as BDAT chunks (RFC 3030 §2), up to BDAT_WINDOW
        replies outstanding with PIPELINING.  A refused chunk stops the
        sending (no LAST: the next transaction starts with RSET) and is the
        result of every accepted recipient."""
        t = self.config.timeouts
        c = self.client
        window = BDAT_WINDOW if c.pipelining else 1
        enc = CrlfEncoder()
        outstanding = 0
        failure: Reply | None = None
        sent_last = False
        block = _read_block(message)
        while True:
            following = _read_block(message) if block else b""
            if not following:
                await self._write(c.bdat(enc.encode(block) + enc.finish(), last=True),
                                  t.data_block)
                sent_last = True
                break
            await self._write(c.bdat(enc.encode(block)), t.data_block)
            outstanding += 1
            block = following
            while outstanding >= window and failure is None:
                failure = await self._chunk_reply()
                outstanding -= 1
            if failure is not None:
                break
        for _ in range(outstanding):
            # Read every reply still due, so that the connection stays in
            # step; the next transaction starts with RSET (RFC 3030 §2).
            refused = await self._chunk_reply()
            failure = failure or refused
        final = failure
        if sent_last:
            ev = await self._event(t.data_end)
            if not isinstance(ev, C.MessageReply):
                raise _Broken(_text(ev))
            # After a refused chunk the LAST gets a 503: the refusal says more.
            final = failure or ev.reply
        assert final is not None
        for i in accepted:
            settle(i, final)

    async def _chunk_reply(self) -> Reply | None:
        """None for a chunk taken (250), else the refusal."""
        ev = await self._event(self.config.timeouts.data_block)
        if not isinstance(ev, C.ChunkReply):
            raise _Broken(_text(ev))
        return None if ev.reply.code // 100 == 2 else ev.reply

    async def _body(self, message: BinaryIO) -> None:
        while True:
            try:
                chunk = message.read(CHUNK)
            except OSError as exc:
                # Never send the final dot after a short read: that would
                # deliver a truncated message.  Drop the connection instead.
                raise _Broken(f"451 4.3.0 Cannot read the message: {_reason(exc)}") from exc
            if not chunk:
                return
            await self._write(self.client.message_chunk(chunk), self.config.timeouts.data_block)

    # -- closing ---------------------------------------------------------------

    async def quit(self) -> None:
        """QUIT politely (errors ignored), then close."""
        if self._closed:
            return
        try:
            await self._write(self.client.quit(), self.config.timeouts.quit)
            await self._event(self.config.timeouts.quit)
        except (_Broken, C.ClientUsageError):
            pass
        self.writer.close()
        self._closed = True
        try:
            async with asyncio.timeout(self.config.timeouts.quit):
                await self.writer.wait_closed()
        except (OSError, TimeoutError, ssl.SSLError):
            pass

    def abort(self) -> None:
        """Drop the connection at once."""
        if not self._closed:
            self._closed = True
            self.writer.transport.abort()


def _text(ev: C.Event) -> str:
    reply = getattr(ev, "reply", None)
    if isinstance(reply, Reply):
        return str(reply)
    return f"421 4.4.0 Unexpected {type(ev).__name__}"


def _read_block(message: BinaryIO) -> bytes:
    try:
        return message.read(BDAT_CHUNK)
    except OSError as exc:
        # As for DATA: never send LAST after a short read.
        raise _Broken(f"451 4.3.0 Cannot read the message: {_reason(exc)}") from exc


def _int(text: str) -> int:
    return int(text) if text.isdigit() else 0
