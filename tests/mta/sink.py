"""A small scripted SMTP/LMTP server on 127.0.0.1 for MTA tests (and for
integration tests that need a next hop): per-recipient replies, optional
PIPELINING, SIZE, 8BITMIME, SMTPUTF8, DSN, CHUNKING (BDAT), STARTTLS, AUTH,
delays."""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass
class SinkConfig:
    pipelining: bool = True
    size: int | None = None
    eightbitmime: bool = True
    smtputf8: bool = False
    dsn: bool = False
    chunking: bool = False  # offers CHUNKING and takes BDAT (RFC 3030)
    chunk_reply: bytes | None = None  # reply to BDAT chunks without LAST
    requiretls: bool = False  # offers REQUIRETLS (RFC 8689), only under TLS
    tls: ssl.SSLContext | None = None  # offers STARTTLS when set
    tls_break: bool = False  # answer 220 to STARTTLS, then hang up (no handshake)
    smtps: ssl.SSLContext | None = None  # TLS from the first byte
    auth: tuple[str, str] | None = None  # offered after TLS; the one good pair
    ehlo_reply: bytes | None = None  # e.g. b"500 no\r\n": forces HELO
    greeting: bytes = b"220 sink.test ESMTP\r\n"
    mail_reply: bytes = b"250 2.0.0 Ok\r\n"
    rcpt_replies: Mapping[str, bytes] = field(default_factory=dict)  # addr -> reply
    data_reply: bytes = b"354 go ahead\r\n"
    end_reply: bytes = b"250 2.0.0 queued\r\n"
    lmtp_replies: Mapping[str, bytes] = field(default_factory=dict)  # LMTP, after data
    lmtp: bool = False
    delays: Mapping[str, float] = field(default_factory=dict)  # verb or "GREETING", "."


@dataclass
class Received:
    sender: str
    recipients: list[str]
    wire: bytes  # DATA as sent, CRLF and dot-stuffed, without the final dot
    mail_line: str
    rcpt_lines: list[str]
    chunks: list[int] = field(default_factory=list)  # BDAT chunk sizes; [] for DATA

    @property
    def content(self) -> bytes:
        """The message un-stuffed, with LF line endings."""
        if self.chunks:
            return self.wire.replace(b"\r\n", b"\n")
        lines = self.wire.split(b"\r\n")
        if lines and lines[-1] == b"":
            lines.pop()
        return b"".join((ln[1:] if ln.startswith(b".") else ln) + b"\n" for ln in lines)


class Sink:
    def __init__(self, config: SinkConfig | None = None) -> None:
        self.config = config or SinkConfig()
        self.messages: list[Received] = []
        self.commands: list[str] = []
        self.pipelined = False  # a MAIL/RCPT arrived with more commands behind it
        self.connections = 0
        self.active = 0  # connections open now
        self.max_active = 0  # the most open at once
        self.tls_sessions = 0
        self.auth_users: list[str] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, port: int = 0, host: str = "127.0.0.1") -> int:
        self._server = await asyncio.start_server(self._handle, host, port,
                                                  ssl=self.config.smtps)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await _Conn(self, reader, writer).run()
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        finally:
            self.active -= 1
            self._tasks.discard(task)
            writer.close()


class _Conn:
    def __init__(self, sink: Sink, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.sink, self.cfg = sink, sink.config
        self.reader, self.writer = reader, writer
        self.buf = bytearray()
        self.tls = sink.config.smtps is not None
        self.sender: str | None = None
        self.mail_line = ""
        self.rcpts: list[str] = []
        self.rcpt_lines: list[str] = []
        self.bdat_wire = bytearray()
        self.chunks: list[int] = []

    async def line(self) -> bytes | None:
        while b"\n" not in self.buf:
            data = await self.reader.read(65536)
            if not data:
                return None
            self.buf += data
        nl = self.buf.index(b"\n")
        out = bytes(self.buf[: nl + 1])
        del self.buf[: nl + 1]
        return out

    async def exactly(self, n: int) -> bytes | None:
        while len(self.buf) < n:
            data = await self.reader.read(65536)
            if not data:
                return None
            self.buf += data
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    async def reply(self, verb: str, data: bytes) -> None:
        delay = self.cfg.delays.get(verb)
        if delay:
            await asyncio.sleep(delay)
        self.writer.write(data)
        await self.writer.drain()

    def ehlo_lines(self) -> list[str]:
        c = self.cfg
        ext = ["sink.test hello"]
        if c.pipelining:
            ext.append("PIPELINING")
        if c.size is not None:
            ext.append(f"SIZE {c.size}")
        if c.eightbitmime:
            ext.append("8BITMIME")
        if c.smtputf8:
            ext.append("SMTPUTF8")
        if c.dsn:
            ext.append("DSN")
        if c.chunking:
            ext.append("CHUNKING")
        if c.requiretls and self.tls:
            ext.append("REQUIRETLS")
        if c.tls is not None and not self.tls:
            ext.append("STARTTLS")
        if c.auth is not None and self.tls:
            ext.append("AUTH PLAIN LOGIN")
        return ext

    async def run(self) -> None:
        self.sink.connections += 1
        if self.tls:
            self.sink.tls_sessions += 1
        await self.reply("GREETING", self.cfg.greeting)
        while (raw := await self.line()) is not None:
            text = raw.decode("utf-8", "replace").rstrip("\r\n")
            self.sink.commands.append(text)
            verb = text.split(" ", 1)[0].upper()
            if verb in ("MAIL", "RCPT") and self.buf:
                self.sink.pipelined = True
            if not await self.command(verb, text):
                return

    async def command(self, verb: str, text: str) -> bool:
        c = self.cfg
        if verb in ("EHLO", "LHLO"):
            if c.ehlo_reply is not None:
                await self.reply(verb, c.ehlo_reply)
                return True
            lines = self.ehlo_lines()
            out = "".join(f"250-{ln}\r\n" for ln in lines[:-1]) + f"250 {lines[-1]}\r\n"
            await self.reply(verb, out.encode())
        elif verb == "HELO":
            await self.reply(verb, b"250 sink.test\r\n")
        elif verb == "STARTTLS" and c.tls is not None and not self.tls:
            await self.reply(verb, b"220 2.0.0 Ready to start TLS\r\n")
            if c.tls_break:
                return False
            self.buf.clear()
            await self.writer.start_tls(c.tls)
            self.tls = True
            self.sink.tls_sessions += 1
        elif verb == "AUTH" and c.auth is not None and self.tls:
            await self.auth(text)
        elif verb == "MAIL":
            if c.auth is not None and not self.sink.auth_users:
                await self.reply(verb, b"530 5.7.0 Must issue an AUTH command first\r\n")
                return True
            if c.mail_reply.startswith(b"2"):
                self.sender = text[10:].split(">", 1)[0].lstrip("<")
            self.mail_line, self.rcpts, self.rcpt_lines = text, [], []
            await self.reply(verb, c.mail_reply)
        elif verb == "RCPT":
            addr = text[8:].split(">", 1)[0].lstrip("<")
            self.rcpt_lines.append(text)
            answer = c.rcpt_replies.get(addr, b"250 2.1.5 Ok\r\n")
            if self.sender is not None and answer.startswith(b"2"):
                self.rcpts.append(addr)
            await self.reply(verb, answer)
        elif verb == "DATA":
            if self.sender is None or not self.rcpts:
                await self.reply(verb, b"554 5.5.1 No valid recipients\r\n")
                return True
            await self.reply(verb, c.data_reply)
            if c.data_reply.startswith(b"354"):
                return await self.data()
        elif verb == "BDAT" and c.chunking:
            return await self.bdat(text)
        elif verb == "RSET":
            self.sender, self.rcpts = None, []
            self.bdat_wire, self.chunks = bytearray(), []
            await self.reply(verb, b"250 2.0.0 Reset state\r\n")
        elif verb == "QUIT":
            await self.reply(verb, b"221 2.0.0 Bye\r\n")
            return False
        elif verb == "NOOP":
            await self.reply(verb, b"250 2.0.0 Ok\r\n")
        else:
            await self.reply(verb, b"500 5.5.1 Command unrecognized\r\n")
        return True

    async def auth(self, text: str) -> None:
        assert self.cfg.auth is not None
        parts = text.split()
        user = password = ""
        if len(parts) == 3 and parts[1].upper() == "PLAIN":
            fields = base64.b64decode(parts[2]).split(b"\0")
            user, password = fields[1].decode(), fields[2].decode()
        elif len(parts) == 2 and parts[1].upper() == "LOGIN":
            await self.reply("AUTH", b"334 VXNlcm5hbWU6\r\n")
            user = base64.b64decode((await self.line() or b"").strip()).decode()
            await self.reply("AUTH", b"334 UGFzc3dvcmQ6\r\n")
            password = base64.b64decode((await self.line() or b"").strip()).decode()
        if (user, password) == self.cfg.auth:
            self.sink.auth_users.append(user)
            await self.reply("AUTH", b"235 2.7.0 Authentication succeeded\r\n")
        else:
            await self.reply("AUTH", b"535 5.7.8 Authentication failed\r\n")

    async def bdat(self, text: str) -> bool:
        words = text.split()
        size, last = int(words[1]), len(words) > 2 and words[2].upper() == "LAST"
        chunk = await self.exactly(size)
        if chunk is None:
            return False
        if self.sender is None or not self.rcpts:
            await self.reply("BDAT", b"503 5.5.1 No valid recipients\r\n")
            return True
        self.bdat_wire += chunk
        self.chunks.append(size)
        if not last:
            await self.reply("BDAT", self.cfg.chunk_reply
                             or f"250 2.0.0 {size} octets received\r\n".encode())
            return True
        return await self.message(bytes(self.bdat_wire), list(self.chunks))

    async def data(self) -> bool:
        wire = bytearray()
        while True:
            raw = await self.line()
            if raw is None:
                return False
            if raw == b".\r\n":
                break
            wire += raw
        return await self.message(bytes(wire), [])

    async def message(self, wire: bytes, chunks: list[int]) -> bool:
        assert self.sender is not None
        self.sink.messages.append(Received(self.sender, list(self.rcpts), wire,
                                           self.mail_line, list(self.rcpt_lines), chunks))
        self.bdat_wire, self.chunks = bytearray(), []
        if self.cfg.lmtp:
            for addr in self.rcpts:
                await self.reply(".", self.cfg.lmtp_replies.get(addr, b"250 2.0.0 delivered\r\n"))
        else:
            await self.reply(".", self.cfg.end_reply)
        self.sender, self.rcpts = None, []
        return True
