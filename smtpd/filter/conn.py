"""One proc-exec filter as the smtp process sees it: a socket to the filter's
stdin/stdout that the parent handed over (PARENT_FILTER_FD).

The connection runs the handshake (config lines, then the filter's register
lines until ``register|ready``), then pairs ``filter-result`` answers with
the requests waiting for them and feeds ``filter-dataline`` output to the
session that streams a message.  Nothing a filter does can stall or crash
the smtp process: every wait has a timeout, a protocol error or EOF marks the
filter down (its waiters get ``FilterDown``) and the parent restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass

from smtpd.filter import lines as L

HANDSHAKE_TIMEOUT = 30.0
REQUEST_TIMEOUT = 60.0  # a filter decision; upstream waits forever
READ_SIZE = 1 << 16
WRITE_HIGH_WATER = 1 << 20  # reports queued for a filter that does not read


class FilterDown(Exception):
    """The filter is not running, broke the protocol or timed out."""


class ConnState(enum.Enum):
    DOWN = "down"
    HANDSHAKE = "handshake"
    READY = "ready"


@dataclass
class _Stream:
    """A data-line stream: output lines go to ``sink`` until ".";"""
    sink: Callable[[str], None]
    done: asyncio.Future[None]


class FilterConn:
    def __init__(self, name: str, loop: asyncio.AbstractEventLoop, log: logging.Logger,
                 session_timeout: int, admd: str | None) -> None:
        self.name = name
        self.loop = loop
        self.log = log
        self.session_timeout = session_timeout
        self.admd = admd
        self.state = ConnState.DOWN
        self.filters: frozenset[str] = frozenset()
        self.reports: frozenset[str] = frozenset()
        self.generation = 0
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._waiting: dict[tuple[int, int], asyncio.Future[L.Result]] = {}
        self._streams: dict[tuple[int, int], _Stream] = {}

    @property
    def ready(self) -> bool:
        return self.state is ConnState.READY

    def attach(self, fd: int, generation: int) -> None:
        """A (re)started filter's socket: drop the old one, handshake anew."""
        self._down("replaced by a new instance", log=False)
        self.generation = generation
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        self.state = ConnState.HANDSHAKE
        self._task = self.loop.create_task(self._run(sock, generation))

    def close(self) -> None:
        self._down("closing", log=False)

    # -- the reader -----------------------------------------------------------

    async def _run(self, sock: socket.socket, generation: int) -> None:
        reason = "end of file"
        try:
            reader, writer = await asyncio.open_unix_connection(sock=sock, limit=L.MAX_LINE)
            self._writer = writer
            for line in L.config_lines(self.session_timeout, self.admd):
                writer.write(line.encode() + b"\n")
            await asyncio.wait_for(self._handshake(reader), HANDSHAKE_TIMEOUT)
            self.state = ConnState.READY
            self.log.info("filter %s ready (filters: %s; reports: %s)", self.name,
                          ",".join(sorted(self.filters)) or "-",
                          ",".join(sorted(self.reports)) or "-")
            pending = b""
            while data := await reader.read(READ_SIZE):
                # whole blocks, split here: a line at a time costs too much
                # when a data-line filter answers thousands of lines
                *complete, pending = (pending + data).split(b"\n")
                if len(pending) > L.MAX_LINE:
                    raise L.LineError("line too long")
                for raw in complete:
                    self._dispatch(L.parse(raw.decode("utf-8", "surrogateescape")))
        except TimeoutError:
            reason = "no register|ready in time"
        except (L.LineError, ValueError) as exc:
            reason = f"protocol error: {exc}"
        except (OSError, asyncio.IncompleteReadError) as exc:
            reason = f"{type(exc).__name__}"
        except asyncio.CancelledError:
            return
        if self.generation == generation:
            self._down(reason)

    async def _handshake(self, reader: asyncio.StreamReader) -> None:
        filters: set[str] = set()
        reports: set[str] = set()
        while True:
            raw = await reader.readline()
            if not raw.endswith(b"\n"):
                raise OSError("end of file during the handshake")
            msg = L.parse(raw[:-1].decode("utf-8", "surrogateescape"))
            if isinstance(msg, L.Ready):
                break
            if not isinstance(msg, L.Register):
                raise L.LineError("only register lines are allowed before register|ready")
            if msg.subsystem != L.SUBSYSTEM:
                # upstream: registering for a subsystem that was not
                # advertised is fatal for smtpd; here only for the filter
                raise L.LineError(f"subsystem {msg.subsystem!r} was not advertised")
            (filters if msg.stream == "filter" else reports).add(msg.event)
        self.filters, self.reports = frozenset(filters), frozenset(reports)

    def _dispatch(self, msg: L.Message) -> None:
        if isinstance(msg, L.Result):
            fut = self._waiting.pop((msg.sid, msg.token), None)
            if fut is not None and not fut.done():
                fut.set_result(msg)
            # an answer for a request that timed out or a session that left:
            # dropped, as upstream drops answers for unknown sessions
            return
        if isinstance(msg, L.DataLine):
            stream = self._streams.get((msg.sid, msg.token))
            if stream is None:
                return
            if msg.line == ".":
                del self._streams[(msg.sid, msg.token)]
                if not stream.done.done():
                    stream.done.set_result(None)
            else:
                stream.sink(msg.line)
            return
        raise L.LineError(f"unexpected {type(msg).__name__} after register|ready")

    def _down(self, reason: str, log: bool = True) -> None:
        was = self.state
        self.state = ConnState.DOWN
        if self._task is not None and not self._task.done() and \
                self._task is not asyncio.current_task(self.loop):
            self._task.cancel()
        self._task = None
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
            self._writer = None
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(FilterDown(f"filter {self.name} is down: {reason}"))
        for stream in self._streams.values():
            if not stream.done.done():
                stream.done.set_exception(FilterDown(f"filter {self.name} is down: {reason}"))
        self._waiting.clear()
        self._streams.clear()
        if log and was is not ConnState.DOWN:
            self.log.warning("filter %s down: %s", self.name, reason)

    # -- requests ---------------------------------------------------------------

    def _write(self, line: str, bounded: bool = True) -> None:
        """Queue one line.  Reports and requests are never awaited, so a filter
        that stops reading is cut off at WRITE_HIGH_WATER; data lines
        (``bounded=False``) are paced by ``drain()`` instead."""
        writer = self._writer
        if writer is None or self.state is ConnState.DOWN:
            raise FilterDown(f"filter {self.name} is down")
        transport = writer.transport
        if bounded and transport.get_write_buffer_size() > WRITE_HIGH_WATER:
            self._down("not reading its input")
            raise FilterDown(f"filter {self.name} is not reading")
        writer.write(line.encode("utf-8", "surrogateescape") + b"\n")

    def report(self, event: str, sid: int, params: tuple[str, ...] = ()) -> None:
        """A report event, if the filter registered for it (fire and forget)."""
        if self.ready and event in self.reports:
            with contextlib.suppress(FilterDown):
                self._write(L.report_line(event, sid, params))

    async def request(self, phase: str, sid: int, params: tuple[str, ...],
                      timeout: float = REQUEST_TIMEOUT) -> L.Result:
        if not self.ready:
            raise FilterDown(f"filter {self.name} is down")
        token = secrets.randbits(64)
        fut: asyncio.Future[L.Result] = self.loop.create_future()
        self._waiting[(sid, token)] = fut
        try:
            self._write(L.filter_line(phase, sid, token, params))
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            self.log.warning("filter %s: no answer to %s in %.0f s", self.name, phase, timeout)
            raise FilterDown(f"filter {self.name} timed out") from None
        finally:
            self._waiting.pop((sid, token), None)

    def open_stream(self, sid: int,
                    sink: Callable[[str], None]) -> tuple[int, asyncio.Future[None]]:
        if not self.ready:
            raise FilterDown(f"filter {self.name} is down")
        token = secrets.randbits(64)
        done: asyncio.Future[None] = self.loop.create_future()
        self._streams[(sid, token)] = _Stream(sink, done)
        return token, done

    def close_stream(self, sid: int, token: int) -> None:
        self._streams.pop((sid, token), None)

    def send_datalines(self, sid: int, token: int, lines: list[str]) -> None:
        writer = self._writer
        if writer is None or self.state is ConnState.DOWN:
            raise FilterDown(f"filter {self.name} is down")
        writer.write(L.dataline_block(sid, token, lines).encode("utf-8", "surrogateescape"))

    def send_dataline(self, sid: int, token: int, line: str) -> None:
        self._write(L.filter_line("data-line", sid, token, (line,)), bounded=False)

    async def dataline(self, sid: int, token: int, line: str) -> None:
        self.send_dataline(sid, token, line)
        await self.drain()

    async def drain(self) -> None:
        writer = self._writer
        if writer is not None:
            try:
                # a slow filter slows the client down (streaming, bounded memory)
                await asyncio.wait_for(writer.drain(), REQUEST_TIMEOUT)
            except TimeoutError:
                self._down("not reading message lines")
                raise FilterDown(f"filter {self.name} timed out") from None
            except OSError as exc:
                self._down(type(exc).__name__)
                raise FilterDown(f"filter {self.name} is down") from None
