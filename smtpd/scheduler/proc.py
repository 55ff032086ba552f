"""The scheduler process: which envelope is due when (DESIGN.md §5)."""

from __future__ import annotations

from smtpd.msg import Proc
from smtpd.proc import Child


class SchedulerProcess(Child):
    name = Proc.SCHEDULER
    needs = frozenset({Proc.PARENT, Proc.QUEUE})
    chrooted = True
