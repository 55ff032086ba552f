"""The scheduler: which envelope is due when (DESIGN.md section 5).

`Scheduler` (front.py) is the sans-IO core the scheduler process drives;
`SchedulerBackend` and `BACKENDS` (backend.py) name the storage of
schedules, `RamQueue` (ramqueue.py) being the one upstream ships.
"""

from .backend import BACKENDS, SchedulerBackend, open_backend
from .front import Scheduler
from .ramqueue import RamQueue
from .types import (
    Batch,
    BatchKind,
    EnvelopeFlag,
    EnvelopeState,
    EnvelopeType,
    Sched,
    SchedulerError,
    SchedulerInfo,
)

__all__ = [
    "BACKENDS",
    "Batch",
    "BatchKind",
    "EnvelopeFlag",
    "EnvelopeState",
    "EnvelopeType",
    "RamQueue",
    "Sched",
    "Scheduler",
    "SchedulerBackend",
    "SchedulerError",
    "SchedulerInfo",
    "open_backend",
]
