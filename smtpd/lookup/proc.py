"""The lookup process: tables, rules, expansion and DNS (DESIGN.md §1)."""

from __future__ import annotations

from smtpd.msg import Proc
from smtpd.proc import Child


class LookupProcess(Child):
    name = Proc.LOOKUP
    needs = frozenset({Proc.PARENT})
