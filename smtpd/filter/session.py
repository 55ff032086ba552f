"""One SMTP session's filters: runs the listener's chain at each phase,
sends report events, and streams DATA through the data-line filters.

The session calls ``phase()`` before acting on a command and gets a
``Verdict``; it calls ``report()`` as things happen.  A proc filter that is
down, breaks the protocol or times out turns into ``421 4.3.0`` for this
session (the parent restarts the filter); never an exception out of here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from smtpd.filter import lines as L
from smtpd.filter.builtin import Facts, evaluate
from smtpd.filter.conn import REQUEST_TIMEOUT, FilterConn, FilterDown
from smtpd.filter.lines import Decision
from smtpd.filter.runtime import Element, FilterRuntime
from smtpd.smtp.reply import Reply

FILTER_DOWN = Reply(421, "4.3.0", "Temporary failure, try again later")
SINK_BATCH = 65536  # filtered output is written to the message file in blocks


@dataclass(frozen=True, slots=True)
class Verdict:
    decision: Decision = Decision.PROCEED
    reply: Reply | None = None  # reject / disconnect
    rewrite: str | None = None  # the new parameter of the command

    @property
    def stops(self) -> bool:
        return self.reply is not None


PROCEED = Verdict()


def parse_reply(text: str) -> Reply:
    """A filter's "CODE [x.y.z] text" (already checked by ``reply_ok``)."""
    code, _, rest = text.partition(" ")
    head, _, tail = rest.partition(" ")
    parts = head.split(".")
    if len(parts) == 3 and all(p.isdigit() for p in parts) and parts[0] == code[0]:
        return Reply(int(code), head, tail)
    return Reply(int(code), None, rest)


class SessionFilters:
    def __init__(self, runtime: FilterRuntime | None, chain: tuple[Element, ...], sid: int,
                 log: logging.Logger, prefix: str) -> None:
        self.runtime = runtime
        self.chain = chain
        self.sid = sid
        self.log = log
        self.prefix = prefix  # the session id as logged
        conns: dict[str, FilterConn] = {}
        if runtime is not None:
            for el in chain:
                if el.conn is not None and el.conn in runtime.conns:
                    conns[el.conn] = runtime.conns[el.conn]
        self.conns = conns
        self.junk = False  # session-wide (connect/helo) or transaction (later)
        self.tx_junk = False
        self._pipeline: _Pipeline | None = None
        self._failed: FilterDown | None = None  # the stream broke mid-message

    @property
    def active(self) -> bool:
        return bool(self.chain)

    def down(self) -> list[str]:
        """The required filter processes that are not running now."""
        return [name for name, conn in self.conns.items() if not conn.ready]

    def report(self, event: str, *params: str) -> None:
        for conn in self.conns.values():
            conn.report(event, self.sid, params)

    # -- phases -------------------------------------------------------------

    async def phase(self, phase: str, facts: Facts, params: tuple[str, ...] = ()) -> Verdict:
        rewrite: str | None = None
        if phase == "mail-from":
            self.tx_junk = False  # a new transaction
        down = self.down()
        if down:  # every proc filter of the chain is required
            self.log.warning("%s smtp: filter %s not running", self.prefix, ",".join(down))
            return Verdict(Decision.DISCONNECT, FILTER_DOWN)
        for el in self.chain:
            if el.rule is not None:
                if el.rule.phase != phase or not evaluate(
                        el.rule, facts, self.runtime.tables if self.runtime else {}):
                    continue
                decision, param = el.rule.action, el.rule.param
                if decision is Decision.BYPASS:
                    break
                kind = "builtin"
            else:
                conn = self.conns.get(el.conn or "")
                if conn is None or (conn.ready and phase not in conn.filters):
                    continue
                try:
                    result = await conn.request(phase, self.sid, params, REQUEST_TIMEOUT)
                except FilterDown as exc:
                    self.log.warning("%s smtp: filter %s: %s", self.prefix, el.name, exc)
                    return Verdict(Decision.DISCONNECT, FILTER_DOWN)
                decision, param, kind = result.decision, result.param, "proc"
                if decision in (Decision.REJECT, Decision.DISCONNECT) and not L.reply_ok(param):
                    self.log.warning("%s smtp: filter %s: invalid reply %r", self.prefix,
                                     el.name, param[:80])
                    return Verdict(Decision.DISCONNECT, FILTER_DOWN)
            self.report("filter-response", phase, decision.value,
                        *((param,) if param else ()))
            if decision is Decision.JUNK:
                if phase in ("connect", "helo", "ehlo"):
                    self.junk = True
                else:
                    self.tx_junk = True
            elif decision is Decision.REPORT:
                self.report("filter-report", kind, el.name, param)
            elif decision is Decision.REWRITE:
                rewrite = param
                params = (param, *params[1:])
            elif decision in (Decision.REJECT, Decision.DISCONNECT):
                self.log.info('%s smtp filter-response phase=%s filter=%s response="%s %s"',
                              self.prefix, phase, el.name, decision.value, param)
                reply = parse_reply(param)
                if decision is Decision.DISCONNECT or reply.code == 421:
                    return Verdict(Decision.DISCONNECT, reply)
                return Verdict(Decision.REJECT, reply)
        return Verdict(Decision.REWRITE, None, rewrite) if rewrite is not None else PROCEED

    # -- data-line ------------------------------------------------------------

    def streaming(self) -> bool:
        return any("data-line" in c.filters for c in self.conns.values())

    def data_begin(self, sink: Callable[[bytes], None]) -> None:
        stages = [c for c in self.conns.values() if "data-line" in c.filters]
        order = [self.conns[el.conn] for el in self.chain
                 if el.conn is not None and el.conn in self.conns
                 and self.conns[el.conn] in stages]
        seen: list[FilterConn] = []
        for conn in order:
            if conn not in seen:
                seen.append(conn)
        self._failed = None
        try:
            self._pipeline = _Pipeline(self.sid, seen, sink)
        except FilterDown as exc:
            self._failed = exc

    @property
    def piping(self) -> bool:
        """A message is being streamed (or its stream broke: swallow the rest)."""
        return self._pipeline is not None or self._failed is not None

    async def data_feed(self, data: bytes) -> None:
        if self._pipeline is None:
            return
        try:
            await self._pipeline.feed(data)
        except FilterDown as exc:
            self.data_abort()
            self._failed = exc  # the rest of the message is swallowed, never unfiltered

    async def data_end(self) -> Reply | None:
        """Flush the stream through every filter; None when all went well."""
        pipeline, self._pipeline = self._pipeline, None
        failed, self._failed = self._failed, None
        if failed is not None:
            self.log.warning("%s smtp: data-line filtering failed: %s", self.prefix, failed)
            return FILTER_DOWN
        if pipeline is None:
            return None
        try:
            await pipeline.finish()
        except FilterDown as exc:
            self.log.warning("%s smtp: data-line filtering failed: %s", self.prefix, exc)
            return FILTER_DOWN
        return None

    def data_abort(self) -> None:
        self._failed = None
        pipeline, self._pipeline = self._pipeline, None
        if pipeline is not None:
            pipeline.abort()


class _Pipeline:
    """Message lines in at the first filter, each filter's output into the
    next, the last one's output into the message file.  Lines are dot-stuffed
    on the way in and unstuffed on the way out (smtpd-filters(7): "raw
    dot-escaped SMTP DATA input")."""

    def __init__(self, sid: int, stages: list[FilterConn], sink: Callable[[bytes], None]) -> None:
        self.sid = sid
        self.stages = stages
        self.sink = sink
        self.partial = b""
        self.out: list[bytes] = []  # the last filter's output, written in batches
        self.out_size = 0
        self.error: FilterDown | None = None
        self.tokens: list[int] = []
        self.dones: list[asyncio.Future[None]] = []
        for i, conn in enumerate(stages):
            token, done = conn.open_stream(sid, self._out(i))
            self.tokens.append(token)
            self.dones.append(done)
        for i, done in enumerate(self.dones[:-1]):
            done.add_done_callback(self._forward_end(i + 1))

    def _out(self, i: int) -> Callable[[str], None]:
        if i == len(self.stages) - 1:
            def last(line: str) -> None:
                raw = line.encode("utf-8", "surrogateescape")
                self.out.append((raw[1:] if raw.startswith(b".") else raw) + b"\n")
                self.out_size += len(raw) + 1
                if self.out_size >= SINK_BATCH:
                    self._flush()
            return last

        def forward(line: str) -> None:
            try:
                self.stages[i + 1].send_dataline(self.sid, self.tokens[i + 1], line)
            except FilterDown as exc:
                self.error = exc
        return forward

    def _flush(self) -> None:
        if self.out:
            data, self.out, self.out_size = b"".join(self.out), [], 0
            self.sink(data)

    def _forward_end(self, i: int) -> Callable[[asyncio.Future[None]], None]:
        def end(fut: asyncio.Future[None]) -> None:
            if fut.cancelled() or fut.exception() is not None:
                return
            try:
                self.stages[i].send_dataline(self.sid, self.tokens[i], ".")
            except FilterDown as exc:
                self.error = exc
        return end

    async def feed(self, data: bytes) -> None:
        data = self.partial + data
        *complete, self.partial = data.split(b"\n")
        first, token = self.stages[0], self.tokens[0]
        if self.error is not None:
            raise self.error
        if complete:
            first.send_datalines(self.sid, token, [
                ("." if raw.startswith(b".") else "") + raw.decode("utf-8", "surrogateescape")
                for raw in complete])
        # one drain per chunk: the client's pace follows the filter's (bounded
        # by the chunk size the protocol hands over), without a wait per line
        await first.drain()

    async def finish(self) -> None:
        if self.partial:
            await self.feed(b"\n")
        self.stages[0].send_dataline(self.sid, self.tokens[0], ".")
        try:
            await asyncio.wait_for(asyncio.gather(*self.dones), REQUEST_TIMEOUT)
        except TimeoutError:
            raise FilterDown("no end of message from a data-line filter in time") from None
        if self.error is not None:
            raise self.error
        self._flush()

    def abort(self) -> None:
        for conn, token, done in zip(self.stages, self.tokens, self.dones, strict=True):
            conn.close_stream(self.sid, token)
            if not done.done():
                done.cancel()
