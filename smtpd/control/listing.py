"""`smtpctl show queue`, streamed a page at a time (issue 11).

A queue of a million envelopes must not become a million lines in any
process's memory.  So the listing is pulled, one page after the other:

1. control asks the queue for a page: "list" opens a walk (QueueFront.walk,
   which yields each envelope once while the spool changes) under the
   request's id, "list-next <id>" continues it; each answer carries at most
   a page of envelope lines and says whether more follows (CtlReply.more);
2. control asks the scheduler for the run states of that page's messages
   only ("states <msgid>..."), merges them in as upstream's
   show_queue_envelope() prints them, and writes the lines to the client;
3. once the client's socket has drained below its high-water mark, control
   asks for the next page.  A client that went away ends the walk
   ("list-stop <id>").

What each process holds is one page, whatever the queue's size.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING

from imsg import ChannelClosed
from smtpd.msg import Proc

if TYPE_CHECKING:
    from smtpd.control.proc import ClientSession, ControlProcess


def merge_states(lines: list[str], state_lines: list[str], now: int) -> list[str]:
    """The queue's lines ("|"-separated, smtpctl.c show_queue_envelope()
    order) with the scheduler's run state, time and flags merged in."""
    states: dict[str, tuple[str, int, str]] = {}
    for line in state_lines:
        parts = line.split("|")
        if len(parts) != 4:
            continue
        evpid, runstate, when, status_words = parts
        with contextlib.suppress(ValueError):
            states[evpid] = (runstate, int(when), status_words)
    out = []
    for line in lines:
        fields = line.split("|", 13)
        state = states.get(fields[0])
        if state is not None and len(fields) == 14:
            # "pending|<nexttry - now>", "inflight|<now - since>", and the
            # scheduler's flags after the queue's
            runstate, since, status_words = state
            fields[11] = runstate
            fields[12] = str(since - now if runstate == "pending" else now - since)
            fields[3] = ",".join(filter(None, [fields[3], status_words]))
        out.append("|".join(fields))
    return out


def page_msgids(lines: list[str]) -> list[str]:
    """The distinct msgids (hex) of a page of envelope lines, in order."""
    return list(dict.fromkeys(line[:8] for line in lines if len(line) >= 16))


class QueueListing:
    """One client's `show queue` in progress."""

    def __init__(self, control: ControlProcess, client: ClientSession) -> None:
        self.control = control
        self.client = client
        self.walk = 0  # the queue's name for our walk: the id of the "list" request

    def start(self) -> None:
        self.walk = self.control.ask_page(Proc.QUEUE, "list", [], self.client,
                                          self._on_page, self._stop)

    def _on_page(self, status: int, lines: list[str], more: bool) -> None:
        if status:
            self.client.reply(lines, status=status, stderr=True)
            return
        msgids = page_msgids(lines)
        if not msgids:
            self._after_page([], more)
            return
        self.control.ask(Proc.SCHEDULER, "states", msgids, self.client,
                         lambda _status, states: self._merge(lines, states, more))

    def _merge(self, lines: list[str], state_lines: list[str], more: bool) -> None:
        self._after_page(merge_states(lines, state_lines, int(time.time())), more)

    def _after_page(self, out: list[str], more: bool) -> None:
        if self.client.gone:
            self._stop()
            return
        if out:
            self.client.send_lines(out)
        if not more:
            self.client.done(0)
        elif self.client.channel.congested:
            self.control.loop.create_task(self._next_when_drained())
        else:
            self._next()

    async def _next_when_drained(self) -> None:
        try:
            await self.client.channel.drain()
        except ChannelClosed:
            self._stop()
            return
        self._next()

    def _next(self) -> None:
        if self.client.gone:
            self._stop()
            return
        self.control.ask_page(Proc.QUEUE, "list-next", [str(self.walk)], self.client,
                              self._on_page, self._stop)

    def _stop(self) -> None:
        """The client is gone: let the queue drop the walk now."""
        self.control.send_queue_request("list-stop", [str(self.walk)])

