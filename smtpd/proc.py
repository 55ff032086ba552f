"""What every child shares: the re-exec entry, privilege drop, process title,
signals and the READY handshake (the handshake itself lives in node.Node).

A child is started as `python -m smtpd -x NAME <flags>` with its socketpair ends
named in the environment; it rebuilds its view from the configuration file,
drops privileges, announces READY, and goes live when its needed peers have.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import signal
import socket
import time
import traceback
from typing import Any

from smtpd import eventloop, privsep
from smtpd.msg import Proc
from smtpd.node import Node
from smtpd.options import Options

FDS_ENV = "PYSMTPD_FDS"
# The queue's encryption key when the parent asked for it (a pipe fd, never the key).
QUEUE_KEY_FD_ENV = "PYSMTPD_QUEUE_KEY_FD"
BOOT_FAILURE = 3
# Test hook for the start-up race test: "queue=1.5" delays that child's start.
START_DELAY_ENV = "PYSMTPD_TEST_START_DELAY"


class Child(Node):
    """Base of the five child processes."""

    user = privsep.SMTPD_USER
    chrooted = False  # chroot in the spool's empty directory once built

    def __init__(self, options: Options, config: Any) -> None:
        super().__init__(options.traces, options.profiles)
        self.options = options
        self.config = config
        # Whether we started as root (and so dropped privileges, maybe chrooted).
        self.privileged = privsep.is_root()

    def build_privileged(self) -> None:
        """State that needs root (keys, spool ownership); runs before the drop."""

    def reread_config(self) -> Any | None:
        """The configuration file read again (PARENT_CONFIG_RELOAD), or None
        when it no longer parses (changed since the parent checked it)."""
        from smtpd.config import ConfigError, load_config
        try:
            return load_config(self.options.config_path, self.options.macros)
        except (ConfigError, OSError) as exc:
            self.log.warning("%s: reload: configuration unreadable, keeping the running one: %s",
                             self.name, exc)
            return None

    def build(self) -> None:
        """State built after the privilege drop, before READY."""

    def chroot_dir(self) -> str | None:
        if not self.chrooted:
            return None
        return privsep.empty_dir(self.config.queue_path)

    def peer_closed(self, peer: Proc, exc: Exception | None) -> None:
        if self.stopping.is_set():
            return
        if exc is not None and not isinstance(exc, OSError):
            self.fatal_bug(peer, None, f"channel error: {exc}")
            return
        # During an orderly stop the parent signals everyone at once; give our
        # SIGTERM a moment to arrive so that a peer's exit is not an error.
        self.loop.call_later(0.3, self._lost_peer, peer)

    def _lost_peer(self, peer: Proc) -> None:
        if not self.stopping.is_set():
            self.log.warning("%s: lost %s, exiting", self.name, peer)
            self.exit(1)

    def terminate(self) -> None:
        self.stopping.set()
        self.on_stop()
        self.exit(0)

    def on_stop(self) -> None:
        """Last words before exit(0) on SIGTERM."""


def _registry() -> dict[str, type[Child]]:
    from smtpd.control.proc import ControlProcess
    from smtpd.lookup.proc import LookupProcess
    from smtpd.queue.proc import QueueProcess
    from smtpd.scheduler.proc import SchedulerProcess
    from smtpd.smtp.proc import SmtpProcess

    return {str(c.name): c for c in (ControlProcess, LookupProcess, QueueProcess,
                                     SchedulerProcess, SmtpProcess)}


def _start_delay(name: str) -> float:
    for item in os.environ.get(START_DELAY_ENV, "").split(","):
        proc, _, seconds = item.partition("=")
        if proc == name:
            return float(seconds)
    return 0.0


def _fatal_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    node: Node | None = context.get("_node")  # set below
    exc = context.get("exception")
    from smtpd import log
    text = "".join(traceback.format_exception(exc)) if exc else context.get("message", "")
    log.get().critical("unexpected error: %s", text.rstrip())
    if node is not None:
        node.exit(1)
    os._exit(1)


# Modules the stdlib imports lazily.  After the privilege drop (and chroot) the
# interpreter's own files may be unreadable, so a first use there would fail:
# import them while we still can.
PRELOAD = ("concurrent.futures.thread", "encodings.idna", "encodings.punycode",
           "resource", "email.utils", "email.message", "email.policy", "getpass")


def backend_modules(config: Any) -> list[str]:
    """Optional backends this configuration uses, imported on demand
    elsewhere: here they are imported while the interpreter is still readable."""
    modules = []
    backends = {t.backend for t in config.tables.values()}
    if "postgres" in backends:
        modules.append("smtpd.table.postgres")
    if "redis" in backends:
        modules.append("smtpd.table.redis")
    if config.queue.backend == "postgres":
        modules += ["smtpd.queue.pg", "smtpd.queue.lease"]
    return modules


def run_child(options: Options, config: Any) -> int:
    name = options.proc
    assert name is not None
    classes = _registry()
    if name not in classes:
        raise SystemExit(f"smtpd: unknown process {name!r}")
    try:
        from setproctitle import setproctitle
        setproctitle(f"smtpd: {name}")
    except ImportError:  # pragma: no cover - a declared dependency
        pass
    delay = _start_delay(name)
    if delay:
        time.sleep(delay)

    loop = eventloop.new_event_loop()
    node = classes[name](options, config)
    loop.set_exception_handler(lambda lp, ctx: _fatal_handler(lp, {**ctx, "_node": node}))
    for item in os.environ.pop(FDS_ENV, "").split(","):
        if not item:
            continue
        peer, _, fd = item.partition("=")
        sock = socket.socket(fileno=int(fd))
        sock.setblocking(False)
        node.attach(Proc(peer), sock)
    for module in (*PRELOAD, *backend_modules(config)):
        importlib.import_module(module)
    try:
        node.build_privileged()
        if privsep.is_root():
            privsep.drop(privsep.lookup_user(node.user), node.chroot_dir())
        node.build()
    except Exception as exc:
        # gunicorn's rule: a child that cannot boot says why and exits with a
        # distinct status; the parent then stops everyone (never respawns).
        from smtpd import log
        log.get().critical("%s: cannot start: %s", name, exc)
        log.get().debug("%s", traceback.format_exc())
        return BOOT_FAILURE
    loop.add_signal_handler(signal.SIGTERM, node.terminate)
    loop.add_signal_handler(signal.SIGINT, node.terminate)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    node.start_channels()
    loop.run_until_complete(node.stopping.wait())
    return 0
