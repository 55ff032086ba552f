"""The queue process: the only one that opens spool files (DESIGN.md §4)."""

from __future__ import annotations

from smtpd import privsep
from smtpd.msg import Proc
from smtpd.proc import Child


class QueueProcess(Child):
    name = Proc.QUEUE
    needs = frozenset({Proc.PARENT, Proc.SCHEDULER})
    user = privsep.SMTPQ_USER
