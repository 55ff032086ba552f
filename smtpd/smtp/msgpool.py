"""Messages created and opened in the queue before a client needs them.

A transaction used to wait on the queue twice before its body: at MAIL for
a msgid (SMTP_MESSAGE_CREATE, the queue makes incoming/<msgid>/) and at
DATA for the file to write it to (SMTP_MESSAGE_OPEN, an fd by SCM_RIGHTS).
Both are asked for ahead of time here, so that MAIL takes a (msgid, fd)
pair at once and DATA has its fd: two fewer round trips through the queue
on every message's critical path (issue 11).  The msgid still exists at
MAIL, as upstream's and as the filters' tx-begin event need.

The pool keeps SPARE pairs (an empty incoming directory and an open fd
each); when it is empty a MAIL falls back to asking the queue itself and
gets its refusal (a full spool: 452 4.3.1) as before.  A failed refill, and
a transaction that met a full disk (drain(), which also gives the spare
pairs back), stop refilling for REFILL_BACKOFF seconds: the queue's
free-space reserve is checked when a pair is made, so after the disk fills
up the next MAILs go to the queue and are refused there.  Pairs still spare when the process
ends are removed by the queue's recovery at the next start (incoming/ is
cleared), as any interrupted transaction is.
"""

from __future__ import annotations

import asyncio
import collections
import os
import time
from collections.abc import Awaitable, Callable

from smtpd.smtp.reply import Reply

SPARE = 4
REFILL_BACKOFF = 5.0

Create = Callable[[], Awaitable["int | Reply"]]
Open = Callable[[int], Awaitable["int | Reply"]]
Rollback = Callable[[int], None]


class MessagePool:
    def __init__(self, create: Create, open_fd: Open, rollback: Rollback,
                 spare: int = SPARE, clock: Callable[[], float] = time.monotonic) -> None:
        self._create = create
        self._open = open_fd
        self._rollback = rollback
        self.spare = spare
        self._clock = clock
        self._ready: collections.deque[tuple[int, int]] = collections.deque()
        self._filling = 0
        self._pause_until = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def ready(self) -> int:
        return len(self._ready)

    async def take(self) -> tuple[int, int] | Reply:
        """A (msgid, fd) for a new transaction, or the queue's refusal."""
        if self._ready:
            pair = self._ready.popleft()
            self.refill()
            return pair
        made = await self._make()
        self.refill()
        return made

    def refill(self) -> None:
        """Start asking for pairs until SPARE are ready or on their way."""
        if self._closed or self._clock() < self._pause_until:
            return
        while len(self._ready) + self._filling < self.spare:
            self._filling += 1
            task = asyncio.get_running_loop().create_task(self._fill_one())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _fill_one(self) -> None:
        try:
            pair = await self._make()
        finally:
            self._filling -= 1
        if isinstance(pair, Reply):
            self._pause_until = self._clock() + REFILL_BACKOFF
        elif self._closed:
            self._give_back(pair)
        else:
            self._ready.append(pair)

    async def _make(self) -> tuple[int, int] | Reply:
        msgid = await self._create()
        if isinstance(msgid, Reply):
            return msgid
        fd = await self._open(msgid)
        if isinstance(fd, Reply):
            self._rollback(msgid)
            return fd
        return msgid, fd

    def drain(self) -> None:
        """The spool is full: give the spare pairs back and stop refilling for
        a while, so that the next MAIL asks the queue and gets its refusal
        (below its free-space reserve) instead of a pair made earlier."""
        self._pause_until = self._clock() + REFILL_BACKOFF
        while self._ready:
            self._give_back(self._ready.popleft())

    def _give_back(self, pair: tuple[int, int]) -> None:
        msgid, fd = pair
        os.close(fd)
        self._rollback(msgid)

    def close(self) -> None:
        """Give every spare pair back (the queue forgets their messages)."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        while self._ready:
            self._give_back(self._ready.popleft())
