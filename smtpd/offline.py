"""Offline enqueue: mail that sendmail(8) wrote to the spool's offline/
directory while the daemon was down is submitted once the daemon is live
(upstream's offline_scan()/offline_enqueue() in smtpd.c).

For each regular file (names starting with "." are still being written by
sendmail, and are skipped), the parent forks a child that

1. resets the signal state of the event loop and starts its own session;
2. takes the file's owner from its uid with getpwuid() (the one place the
   seed keeps it: an offline file necessarily comes from a local user) and
   drops to that user for good, so that a user can only ever submit mail
   as themselves, exactly as if the daemon had been running;
3. replays the submission (`smtpctl.sendmail.run_offline`: upstream execs
   `sendmail -S ARGS` with the file as stdin) through the control socket.

At most MAX_RUNNING children run at once (upstream's OFFLINE_QUEUEMAX).
Exit 0: the file is removed.  EX_TEMPFAIL: it stays for the next start.
Anything else, and files that cannot be used (not regular, hard-linked,
owner unknown, no argument line), are moved to <spool>/offline-failed/
and logged: never fatal for the daemon.  Empty files are removed, as
upstream does.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import logging
import os
import pwd
import signal
import stat
import traceback
from collections import deque
from dataclasses import dataclass
from typing import NoReturn

from smtpctl import sendmail  # imported before the fork: the child may not read it later
from smtpd import privsep
from smtpd.config.model import Config

MAX_RUNNING = 5
REPLAY_TIMEOUT = 300  # seconds, as upstream's forked helpers
MAX_ARGS_LINE = 64 * 1024
ERROR_LIMIT = 4096
FAILED_DIR = "offline-failed"
_RESET_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGCHLD", "SIGUSR1", "SIGUSR2", "SIGALRM",
                  "SIGPIPE")


class Unusable(Exception):
    """A file that can never be submitted: moved aside."""


@dataclass(frozen=True)
class Prepared:
    fd: int
    pw: pwd.struct_passwd
    argv: list[str]


@dataclass
class _Job:
    name: str
    pid: int
    pidfd: int
    rfd: int


class OfflineEnqueuer:
    def __init__(self, loop: asyncio.AbstractEventLoop, spool: str, socket_path: str,
                 hostname: str, log: logging.Logger) -> None:
        self.loop = loop
        self.directory = os.path.join(spool, "offline")
        self.failed_dir = os.path.join(spool, FAILED_DIR)
        self.socket_path = socket_path
        self.hostname = hostname
        self.log = log
        self.waiting: deque[str] = deque()
        self.running: dict[int, _Job] = {}

    def start(self) -> None:
        try:
            names = sorted(e.name for e in os.scandir(self.directory)
                           if not e.name.startswith(".") and e.is_file(follow_symlinks=False))
        except OSError as exc:
            self.log.warning("smtpd: offline directory %s: %s", self.directory,
                             exc.strerror)
            return
        if names:
            self.log.info("info: smtpd: %d offline message(s) to enqueue", len(names))
        self.waiting.extend(names)
        self._pump()

    # -- one file ----------------------------------------------------------------

    def _pump(self) -> None:
        while self.waiting and len(self.running) < MAX_RUNNING:
            name = self.waiting.popleft()
            try:
                self._spawn(name)
            except Unusable as exc:
                self._move_aside(name, str(exc))
            except OSError as exc:
                self.log.warning("smtpd: offline message %s: %s", name,
                                 exc.strerror or exc)

    def prepare(self, name: str) -> Prepared | None:
        """Open and check the file; None when there is nothing to do."""
        path = os.path.join(self.directory, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise Unusable(f"open: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise Unusable("not a regular file")
            if st.st_nlink != 1:
                raise Unusable("hard-linked")
            if st.st_size == 0:
                os.unlink(path)
                os.close(fd)
                return None
            try:
                pw = pwd.getpwuid(st.st_uid)
            except KeyError:
                raise Unusable(f"getpwuid for uid {st.st_uid} failed") from None
            if os.geteuid() != 0 and st.st_uid != os.geteuid():
                raise Unusable(f"owned by uid {st.st_uid}: only root may submit as another user")
            head = os.pread(fd, MAX_ARGS_LINE, 0)
            end = head.find(b"\n")
            if end < 0:
                raise Unusable("no argument line")
            line = head[:end].decode("utf-8", "surrogateescape")
            os.lseek(fd, end + 1, os.SEEK_SET)
            return Prepared(fd, pw, line.split("|") if line else [])
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise

    def _spawn(self, name: str) -> None:
        prepared = self.prepare(name)
        if prepared is None:
            return
        rfd, wfd = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            for fd in (rfd, wfd, prepared.fd):
                os.close(fd)
            raise
        if pid == 0:  # pragma: no cover - the child
            _child_main(prepared, wfd, self.socket_path, self.hostname)
        os.close(wfd)
        os.close(prepared.fd)
        pidfd = os.pidfd_open(pid)
        job = _Job(name, pid, pidfd, rfd)
        self.running[pid] = job
        self.loop.add_reader(pidfd, self._on_exit, job)

    def _on_exit(self, job: _Job) -> None:
        self.loop.remove_reader(job.pidfd)
        os.close(job.pidfd)
        _, status = os.waitpid(job.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        text = _read_all(job.rfd).decode("utf-8", "replace").strip().replace("\n", "; ")
        os.close(job.rfd)
        del self.running[job.pid]
        path = os.path.join(self.directory, job.name)
        if code == 0:
            self.log.info("info: smtpd: offline message %s enqueued", job.name)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        elif code == os.EX_TEMPFAIL:
            self.log.warning("smtpd: couldn't enqueue offline message %s: %s; "
                             "kept for the next start", job.name, text or "temporary failure")
        else:
            self._move_aside(job.name, text or f"sendmail exited with status {code}")
        self._pump()

    def _move_aside(self, name: str, reason: str) -> None:
        src = os.path.join(self.directory, name)
        try:
            os.makedirs(self.failed_dir, mode=0o700, exist_ok=True)
            st = os.lstat(self.failed_dir)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
                raise OSError(0, f"{self.failed_dir} is not our directory")
            os.rename(src, os.path.join(self.failed_dir, name))
            where = f"moved to {self.failed_dir}"
        except OSError as exc:
            where = f"left in place ({exc.strerror or exc})"
        self.log.warning("smtpd: offline message %s: %s; %s", name, reason, where)


def _read_all(fd: int) -> bytes:
    os.set_blocking(fd, False)
    data = b""
    with contextlib.suppress(BlockingIOError):
        while len(data) < ERROR_LIMIT and (chunk := os.read(fd, ERROR_LIMIT)):
            data += chunk
    return data[:ERROR_LIMIT]


def _child_main(p: Prepared, wfd: int, socket_path: str,
                hostname: str) -> NoReturn:  # pragma: no cover - child
    code = os.EX_SOFTWARE
    try:
        gc.freeze()  # inherited objects must not close fds reused below
        signal.set_wakeup_fd(-1)
        for name in _RESET_SIGNALS:
            signal.signal(getattr(signal, name), signal.SIG_DFL)
        os.setsid()
        signal.alarm(REPLAY_TIMEOUT)  # never a child left behind by a stuck session
        os.dup2(p.fd, 0)
        os.dup2(wfd, 2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.closerange(3, _max_fd())
        if os.geteuid() == 0:
            privsep.become_user(p.pw.pw_uid, p.pw.pw_gid, p.pw.pw_name)
        try:
            os.chdir(p.pw.pw_dir)
        except OSError:
            os.chdir("/")
        os.umask(0o077)
        err = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True)
        stdin = io.BufferedReader(io.FileIO(0, "r", closefd=False))
        code = sendmail.run_offline(p.argv, stdin, socket_path, hostname, err)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.write(2, "".join(traceback.format_exception_only(exc)).encode()[:ERROR_LIMIT])
    os._exit(code)


def _max_fd() -> int:
    try:
        return int(os.sysconf("SC_OPEN_MAX"))
    except (OSError, ValueError):
        return 1024


def enqueue_offline(loop: asyncio.AbstractEventLoop, config: Config,
                    log: logging.Logger) -> OfflineEnqueuer:
    """The parent's one call, once every process is live."""
    enqueuer = OfflineEnqueuer(loop, config.queue_path, config.control_socket,
                               config.hostname, log)
    enqueuer.start()
    return enqueuer
