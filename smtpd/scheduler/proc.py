"""The scheduler process: which envelope is due when (DESIGN.md §5).

Each imsg maps to one call on the sans-IO `Scheduler` front; after every
change the process asks it for batches until nothing is due and arms one
timer for the next due time (upstream scheduler_timeout()).
"""

from __future__ import annotations

import asyncio
import time

from imsg import Frame
from smtpd.msg import (
    CtlReply,
    CtlRequest,
    DeliveryResult,
    Evpids,
    MessageSchedule,
    Msg,
    Proc,
    chunk_lines,
)
from smtpd.proc import Child
from smtpd.queue.envelope import DeliveryType
from smtpd.scheduler.front import Scheduler
from smtpd.scheduler.types import BatchKind, EnvelopeType, SchedulerError, SchedulerInfo

_TYPES = {DeliveryType.MDA.value: EnvelopeType.MDA, DeliveryType.MTA.value: EnvelopeType.MTA,
          DeliveryType.BOUNCE.value: EnvelopeType.BOUNCE}
_BATCH_MSG = {BatchKind.SCHEDULE: Msg.SCHEDULER_ENVELOPE_DELIVER,
              BatchKind.EXPIRE: Msg.SCHEDULER_ENVELOPE_EXPIRE,
              BatchKind.REMOVE: Msg.SCHEDULER_ENVELOPE_REMOVE,
              BatchKind.DELAY: Msg.SCHEDULER_ENVELOPE_WARN}
MAX_BATCHES_PER_RUN = 50   # then yield to the loop; more work is picked up next turn
STATES_MAX_MESSAGES = 1000  # messages per `states` request (a page of show queue)


def parse_info(item: list[int | str]) -> SchedulerInfo:
    evpid, kind, ctime, ttl, retry, lasttry, lastbounce = item
    if not (isinstance(evpid, int) and isinstance(kind, str) and isinstance(ctime, int)
            and isinstance(ttl, int) and isinstance(retry, int) and isinstance(lasttry, int)
            and isinstance(lastbounce, int)):
        raise SchedulerError("bad schedule info")
    return SchedulerInfo(evpid=evpid, type=_TYPES[kind], creation=ctime, expire=ttl,
                         retry=retry, lasttry=lasttry, lastbounce=lastbounce)


def parse_target(word: str) -> int | None:
    """"all", a msgid (8 hex) or an evpid (16 hex); checked by smtpctl's grammar."""
    return None if word == "all" else int(word, 16)


class SchedulerProcess(Child):
    name = Proc.SCHEDULER
    needs = frozenset({Proc.PARENT, Proc.QUEUE})
    chrooted = True

    def build(self) -> None:
        self.sched = Scheduler(warn_intervals=self.config.bounce_warn_intervals)
        for system in self.options.paused:
            if system in ("mda", "mta"):
                self.sched.pause(EnvelopeType[system.upper()])
        self.handed_out: set[int] = set()
        self.timer: asyncio.TimerHandle | None = None
        self.run_pending = False
        self.last_stats: dict[str, int] = {}
        self.handle(Proc.QUEUE, Msg.QUEUE_MESSAGE_SCHEDULE, self._on_schedule)
        self.handle(Proc.QUEUE, Msg.QUEUE_DELIVERY_RESULT, self._on_result)
        self.handle(Proc.CONTROL, Msg.CTL_SCHEDULER_REQUEST, self._on_ctl)

    def on_live(self) -> None:
        self._kick()

    # -- the run loop -----------------------------------------------------------

    def _kick(self) -> None:
        if not self.run_pending:
            self.run_pending = True
            self.loop.call_soon(self._run)

    def _run(self) -> None:
        self.run_pending = False
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        for _ in range(MAX_BATCHES_PER_RUN):
            batch = self.sched.batch(int(time.time()))
            if batch.kind is BatchKind.NONE:
                if batch.delay == 0:
                    self._kick()  # more is due than one batch() promotes: go on
                elif batch.delay is not None:
                    self.timer = self.loop.call_later(batch.delay, self._kick)
                break
            if batch.kind is BatchKind.UPDATE:
                continue
            if batch.kind is not BatchKind.DELAY:
                self.handed_out.update(batch.evpids)
            self.send(Proc.QUEUE, _BATCH_MSG[batch.kind], Evpids(list(batch.evpids)))
        else:
            self._kick()
        self._push_stats()

    def _push_stats(self) -> None:
        for key, value in self.sched.stats().items():
            if self.last_stats.get(key) != value:
                self.last_stats[key] = value
                self.stats.set(key, value)

    # -- from the queue -----------------------------------------------------------

    def _on_schedule(self, req: MessageSchedule, _frame: Frame) -> None:
        # A message of many recipients arrives in several frames (the queue
        # sends SCHEDULE_BATCH infos per frame): each envelope is checked on
        # its own, not by its message, or those after the first frame would
        # be taken as known and never delivered.
        inserted = 0
        for item in req.infos:
            info = parse_info(item)
            if info.evpid >> 32 != req.msgid:
                raise SchedulerError(f"envelope {info.evpid:016x} not of {req.msgid:08x}")
            if not self.sched.backend.has_envelope(info.evpid):
                self.sched.submit(info)
                inserted += 1
        if inserted:
            self.sched.commit(req.msgid, int(time.time()))
        self._kick()

    def _on_result(self, res: DeliveryResult, _frame: Frame) -> None:
        evpid = res.evpid
        inflight = evpid in self.handed_out
        self.handed_out.discard(evpid)
        now = int(time.time())
        match res.status:
            case "ok":
                self.sched.delivery_ok(evpid)
            case "permfail":
                self.sched.delivery_permfail(evpid)
            case "loop":
                self.sched.delivery_loop(evpid)
            case "tempfail":
                self.sched.delivery_tempfail(parse_info(res.info), now)
            case "done":
                self.sched.ack(evpid)
            case "missing":
                if self.sched.backend.query(evpid):
                    self.sched.queue_remove(evpid, inflight, now)
            case _:
                raise SchedulerError(f"unknown delivery status {res.status!r}")
        self._kick()

    # -- smtpctl ------------------------------------------------------------------

    def _reply(self, reqid: int, status: int, lines: list[str], done: bool = True) -> None:
        self.send(Proc.CONTROL, Msg.SCHEDULER_CTL_REPLY, CtlReply(reqid, status, lines, done))

    def _on_ctl(self, req: CtlRequest, _frame: Frame) -> None:
        now = int(time.time())
        verb, args = req.verb, req.args
        if verb in ("pause", "resume"):
            kind = EnvelopeType[args[0].upper()]
            changed = (self.sched.pause(kind) if verb == "pause" else self.sched.resume(kind))
            if changed:
                # the seed: pauses and resumes are logged
                self.log.info("info: %s %s", args[0], "paused" if verb == "pause" else "resumed")
            self._reply(req.reqid, 0 if changed else 1,
                        ["command succeeded" if changed else "command failed"])
        elif verb in ("schedule", "remove", "suspend", "resume-envelope"):
            target = parse_target(args[0])
            if verb == "schedule":
                n = self.sched.schedule(target, now)
                word = "scheduled"
            elif verb == "remove":
                n = self.sched.remove(target, now)
                word = "removed"
            elif verb == "suspend":
                n = self.sched.suspend(target)
                word = "paused"
            else:
                n = self.sched.resume_envelopes(target, now)
                word = "resumed"
            if n:
                self.log.info("info: %d envelope%s %s by smtpctl", n, "s" if n > 1 else "", word)
            self._reply(req.reqid, 0, [f"{n} envelope{'s' if n > 1 else ''} {word}"])
        elif verb == "states":
            self._states(req.reqid, args)
        else:
            self._reply(req.reqid, 1, [f"smtpctl: unknown scheduler request {verb}"])
        self._kick()

    def _states(self, reqid: int, msgids: list[str]) -> None:
        """The run state of each envelope of the given messages (hex msgids),
        as "evpid|runstate|time|status": `show queue` asks for one page of
        the queue's listing at a time, so nothing here grows with the queue."""
        lines: list[str] = []
        for text in msgids[:STATES_MAX_MESSAGES]:
            try:
                msgid = int(text, 16)
            except ValueError:
                continue
            lines += [f"{s.evpid:016x}|{s.runstate}|{s.time}|{','.join(s.status)}"
                      for s in self.sched.envelopes(msgid << 32, 1 << 32)]
        for chunk, last in chunk_lines(lines):
            self._reply(reqid, 0, chunk, done=last)
