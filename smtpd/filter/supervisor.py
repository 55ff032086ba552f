"""The parent's side of proc filters: start each filter process as its
``user``/``group`` (DESIGN.md §1: only the parent may change identity), hand
its stdin/stdout socket to the smtp process, log its stderr, restart it with
backoff when it dies.

Why the parent and not lookup (upstream runs filters under lka): the parent
is the only process that keeps the privilege to become another user, and
the filter's socket goes straight to the smtp process (one fd pass), so
filter traffic never crosses an imsg hop; lookup keeps no privilege at all.
The command runs with ``/bin/sh -c`` as upstream does: it is the
administrator's text from smtpd.conf, never data from the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
import pwd
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from smtpd.filter.runtime import ProcSpec

RESTART_MIN = 1.0
RESTART_MAX = 60.0
STABLE_AFTER = 60.0  # a filter that ran this long starts again at the minimum backoff
STDERR_LINE = 4096

SendFd = Callable[[str, int, int], None]  # (name, generation, fd) -> hand to smtp


@dataclass
class _Running:
    spec: ProcSpec
    popen: subprocess.Popen[bytes] | None = None
    generation: int = 0
    started: float = 0.0
    backoff: float = 0.0  # the next restart delay; set by the supervisor
    stderr: int = -1
    partial: bytes = b""
    timer: asyncio.TimerHandle | None = None


class FilterSupervisor:
    def __init__(self, specs: dict[str, ProcSpec], loop: asyncio.AbstractEventLoop,
                 log: logging.Logger, send_fd: SendFd, root: bool, default_user: str,
                 restart_min: float = RESTART_MIN, restart_max: float = RESTART_MAX) -> None:
        self.loop = loop
        self.log = log
        self.send_fd = send_fd
        self.root = root
        self.default_user = default_user
        self.restart_min = restart_min
        self.restart_max = restart_max
        self.procs = {name: _Running(spec, backoff=restart_min) for name, spec in specs.items()}
        self.closing = False

    def start_all(self) -> None:
        for run in self.procs.values():
            self._start(run)

    # -- starting -------------------------------------------------------------

    def _identity(self, spec: ProcSpec) -> tuple[int, int] | None:
        if not self.root:
            return None  # unprivileged: every process keeps our uid (a warning was logged)
        pw = pwd.getpwnam(spec.user or self.default_user)
        gid = grp.getgrnam(spec.group).gr_gid if spec.group else pw.pw_gid
        return pw.pw_uid, gid

    def _start(self, run: _Running) -> None:
        run.timer = None
        if self.closing:
            return
        spec = run.spec
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        rerr, werr = os.pipe()
        try:
            ident = self._identity(spec)
            chroot = spec.chroot

            def become() -> None:  # in the child, before exec
                if chroot:
                    os.chroot(chroot)
                    os.chdir("/")
                if ident is not None:
                    os.setgroups([])
                    os.setgid(ident[1])
                    os.setuid(ident[0])
                signal.signal(signal.SIGPIPE, signal.SIG_DFL)

            run.popen = subprocess.Popen(
                ["/bin/sh", "-c", spec.command], stdin=theirs.fileno(), stdout=theirs.fileno(),
                stderr=werr, close_fds=True, preexec_fn=become,
                cwd="/", env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                              **({"HOME": "/"} if ident else {})})
        except (OSError, KeyError, subprocess.SubprocessError) as exc:
            self.log.warning("filter %s: cannot start %r: %s", spec.name, spec.command, exc)
            ours.close()
            os.close(rerr)
            self._schedule(run)
            return
        finally:
            theirs.close()
            os.close(werr)
        run.generation += 1
        run.started = time.monotonic()
        run.stderr = rerr
        os.set_blocking(rerr, False)
        self.loop.add_reader(rerr, self._stderr, run)
        self.log.info("filter %s started (pid %d): %s", spec.name, run.popen.pid, spec.command)
        self.send_fd(spec.name, run.generation, ours.detach())

    def _schedule(self, run: _Running) -> None:
        if self.closing:
            return
        delay = run.backoff
        run.backoff = min(run.backoff * 2, self.restart_max)
        self.log.info("filter %s: restarting in %g s", run.spec.name, delay)
        run.timer = self.loop.call_later(delay, self._start, run)

    def _stderr(self, run: _Running) -> None:
        try:
            data = os.read(run.stderr, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.loop.remove_reader(run.stderr)
            os.close(run.stderr)
            run.stderr = -1
            if run.partial:
                self._log_stderr(run, run.partial)
            run.partial = b""
            return
        *complete, run.partial = (run.partial + data).split(b"\n")
        for line in complete:
            self._log_stderr(run, line)
        if len(run.partial) > STDERR_LINE:
            self._log_stderr(run, run.partial)
            run.partial = b""

    def _log_stderr(self, run: _Running, line: bytes) -> None:
        text = line[:STDERR_LINE].decode("utf-8", "replace").rstrip("\r")
        self.log.info("filter %s: %s", run.spec.name, text)

    # -- supervision ------------------------------------------------------------

    def reap(self) -> None:
        """On SIGCHLD: a filter that died is logged and started again later
        (never fatal for the daemon, DESIGN.md §4)."""
        for run in self.procs.values():
            popen = run.popen
            if popen is None:
                continue
            status = popen.poll()
            if status is None:
                continue
            run.popen = None
            if self.closing:
                continue
            how = (f"killed by signal {signal.Signals(-status).name}" if status < 0
                   else f"exited with status {status}")
            self.log.warning("filter %s (pid %d) %s", run.spec.name, popen.pid, how)
            if time.monotonic() - run.started >= STABLE_AFTER:
                run.backoff = self.restart_min
            self._schedule(run)

    def pids(self) -> dict[str, int]:
        return {n: r.popen.pid for n, r in self.procs.items() if r.popen is not None}

    async def close(self, grace: float = 1.0) -> None:
        self.closing = True
        for run in self.procs.values():
            if run.timer is not None:
                run.timer.cancel()
            if run.popen is not None and run.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    run.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(
                r.popen is not None and r.popen.poll() is None for r in self.procs.values()):
            await asyncio.sleep(0.02)
        for run in self.procs.values():
            if run.popen is not None and run.popen.poll() is None:
                run.popen.kill()
                run.popen.wait()
            run.popen = None
            if run.stderr >= 0:
                self.loop.remove_reader(run.stderr)
                os.close(run.stderr)
                run.stderr = -1
