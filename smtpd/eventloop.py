"""Which event loop the children run: asyncio's own, or uvloop's.

uvloop (libuv, in C; the optional `fast` extra: `pip install pysmtpd[fast]`)
runs the same code with less interpreter work per I/O event.  The parent
always runs asyncio's loop: it reaps delivery workers, filters and children
on SIGCHLD, which uvloop keeps for itself.  The choice is PYSMTPD_EVENT_LOOP
in the environment the daemon starts with, inherited by its children:

    auto     uvloop when it is installed, else asyncio (the default)
    uvloop   uvloop, or the daemon refuses to start
    asyncio  asyncio's own loop even when uvloop is installed

Decided once, before privileges are dropped, and logged at start.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import os
from types import ModuleType

ENV = "PYSMTPD_EVENT_LOOP"
CHOICES = ("auto", "uvloop", "asyncio")


class EventLoopError(Exception):
    """PYSMTPD_EVENT_LOOP asks for something this machine cannot give."""


def _uvloop() -> ModuleType | None:
    try:
        return importlib.import_module("uvloop")
    except ImportError:
        return None


def _uvloop_installed() -> bool:
    # Found, not imported: the parent, which never runs it, stays without it.
    return importlib.util.find_spec("uvloop") is not None


def choice() -> str:
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in CHOICES:
        raise EventLoopError(f"{ENV}={value!r}: expected one of {', '.join(CHOICES)}")
    return value


def check() -> str:
    """What the children will run ("uvloop" or "asyncio"); EventLoopError if
    the environment asks for what cannot be had (the parent checks first)."""
    wanted = choice()
    if wanted == "asyncio":
        return wanted
    if not _uvloop_installed():
        if wanted == "uvloop":
            raise EventLoopError(f"{ENV}=uvloop but uvloop is not installed "
                                 "(pip install 'pysmtpd[fast]')")
        return "asyncio"
    return "uvloop"


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new loop of the configured kind, set as the current one."""
    wanted = choice()
    module = None if wanted == "asyncio" else _uvloop()
    if wanted == "uvloop" and module is None:
        raise EventLoopError(f"{ENV}=uvloop but uvloop is not installed "
                             "(pip install 'pysmtpd[fast]')")
    loop: asyncio.AbstractEventLoop = (module.new_event_loop() if module is not None
                                       else asyncio.new_event_loop())
    asyncio.set_event_loop(loop)
    return loop

