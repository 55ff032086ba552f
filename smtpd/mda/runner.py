"""The parent's side of local delivery: one forked child per delivery.

The queue hands the parent an envelope and a readable message fd
(QUEUE_DELIVERY_START).  The parent re-validates the envelope
(`build_request`: DESIGN.md §4, CVE-2020-7247), then `DeliveryRunner.start`
forks a child that

1. resets the signal state the event loop installed, starts its own session
   (so a timeout kills its whole process group) and closes every inherited
   fd but stdio, the message and the result pipe;
2. when the parent is root, drops to the recipient's uid/gid for good
   (initgroups/setresgid/setresuid, then checks that uid 0 cannot come back);
3. runs `smtpd.mda.deliver` and writes the `DeliveryResult` to the pipe as
   msgpack, then `_exit`s.  An exception becomes "451 4.3.0 delivery failed"
   (the traceback goes to stderr, never to a peer); SIGTERM (the timeout)
   becomes "451 4.4.7 delivery timed out".

The parent reads the pipe on its event loop and reaps the child by pid
(`reap()`, for the parent's SIGCHLD handler, plus polling after the pipe's
EOF), so nothing here competes with other waitpid callers.  A child that
exits without a result, or that outlives the timeout, is a tempfail.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import gc
import os
import pwd
import signal
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

import smtpd.mda
from imsg import codec
from smtpd.config.model import ActionKind, Config
from smtpd.mda.types import (
    DeliveryMethod,
    DeliveryRequest,
    DeliveryResult,
    DeliveryStatus,
    permfail,
    tempfail,
)
from smtpd.queue.envelope import DeliveryType, EnvelopeError, load_envelope
from smtpd.smtp.address import AddressError, parse_path
from smtpd.table.backend import TableError, TableTempFail, open_table
from smtpd.table.match import UserInfo

OnResult = Callable[[int, str, str, str], None]

KILL_GRACE = 2.0  # seconds between SIGTERM and SIGKILL after the timeout
RESULT_LIMIT = 8192  # bytes of result a child may write; more is garbage
TEXT_LIMIT = 512  # characters of result text passed on
_POLL_FIRST, _POLL_MAX = 0.002, 0.1  # reap polling after EOF, backing off
_RESET_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGCHLD", "SIGUSR1", "SIGUSR2", "SIGALRM")

FAILED = "451 4.3.0 delivery failed"
TIMED_OUT = "451 4.4.7 delivery timed out"  # RFC 3463 §3.5: delivery time expired


class JobState(enum.Enum):
    RUNNING = "running"
    TERMINATING = "terminating"  # timed out: SIGTERM sent, SIGKILL scheduled
    DONE = "done"


@dataclass(eq=False, slots=True)
class _Job:
    """One child: mutable bookkeeping owned by the runner."""

    request: DeliveryRequest
    pid: int
    rfd: int
    state: JobState = JobState.RUNNING
    data: bytearray = field(default_factory=bytearray)
    eof: bool = False
    wait_status: int | None = None
    timers: list[asyncio.TimerHandle] = field(default_factory=list)
    poll_delay: float = _POLL_FIRST


@dataclass(frozen=True, slots=True)
class _Pending:
    request: DeliveryRequest
    fd: int
    expected_name: str | None


class DeliveryRunner:
    """Run deliveries in forked children, at most `max_concurrent` at once
    (further requests wait in FIFO order, holding their fd), each killed after
    `timeout` seconds.  `on_result(evpid, status, text, detail)` is called once
    per started request, from the loop, never from inside `start()`; status is
    "ok", "tempfail" or "permfail"; detail is "" when there is none (for
    maildir it is the delivered file name)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_result: OnResult,
        max_concurrent: int = 16,
        timeout: float = 600.0,
    ) -> None:
        if max_concurrent < 1 or timeout <= 0:
            raise ValueError("need max_concurrent >= 1 and timeout > 0")
        self.loop = loop
        self.on_result = on_result
        self.max_concurrent = max_concurrent
        self.timeout = timeout
        self._jobs: dict[int, _Job] = {}
        self._pending: collections.deque[_Pending] = collections.deque()
        self._closed = False

    @property
    def running(self) -> int:
        """Children not yet reaped (and finished)."""
        return len(self._jobs)

    @property
    def waiting(self) -> int:
        return len(self._pending)

    @property
    def users(self) -> int:
        """Distinct users with a delivery running or waiting (upstream's mda.user)."""
        return len({j.request.user for j in self._jobs.values()}
                   | {p.request.user for p in self._pending})

    def pids(self) -> list[int]:
        return list(self._jobs)

    # -- starting ---------------------------------------------------------------

    def start(
        self, request: DeliveryRequest, message_fd: int, expected_name: str | None = None
    ) -> None:
        """Deliver `request`; `message_fd` is handed over (closed here after
        the fork).  `expected_name` is the maildir file name recorded in the
        envelope (mda-delivered) for exactly-once redelivery."""
        if self._closed:
            os.close(message_fd)
            raise RuntimeError("delivery runner is closed")
        self._pending.append(_Pending(request, message_fd, expected_name))
        self._start_waiting()

    def start_envelope(self, envelope_text: str, message_fd: int, config: Config,
                       hostname: str) -> None:
        """What the parent does on QUEUE_DELIVERY_START: `plan_delivery`, then
        `start`; a refused envelope is reported through on_result (from the
        loop) with its permfail/tempfail and the fd is closed."""
        plan = plan_delivery(envelope_text, config, hostname,
                             timeout=max(1.0, self.timeout - KILL_GRACE - 1.0))
        if isinstance(plan, DeliveryResult):
            os.close(message_fd)
            evpid = _evpid_of(envelope_text)
            self.loop.call_soon(self.on_result, evpid, plan.status.value, plan.text,
                                plan.detail or "")
            return
        request, expected = plan
        self.start(request, message_fd, expected)

    def _start_waiting(self) -> None:
        while self._pending and len(self._jobs) < self.max_concurrent and not self._closed:
            item = self._pending.popleft()
            self._spawn(item)

    def _spawn(self, item: _Pending) -> None:
        evpid = item.request.evpid
        try:
            rfd, wfd = os.pipe()  # both close-on-exec: an exec'd mda never holds them
        except OSError as exc:
            os.close(item.fd)
            self.loop.call_soon(self.on_result, evpid, "tempfail", FAILED, f"pipe: {exc}")
            return
        try:
            pid = os.fork()
        except OSError as exc:
            for fd in (rfd, wfd, item.fd):
                os.close(fd)
            self.loop.call_soon(self.on_result, evpid, "tempfail", FAILED, f"fork: {exc}")
            return
        if pid == 0:  # pragma: no cover - the child; coverage cannot follow _exit
            _child_main(item.request, item.fd, wfd, item.expected_name)
        os.close(wfd)
        os.close(item.fd)
        os.set_blocking(rfd, False)
        job = _Job(item.request, pid, rfd)
        self._jobs[pid] = job
        self.loop.add_reader(rfd, self._on_readable, job)
        job.timers.append(self.loop.call_later(self.timeout, self._on_timeout, job))

    # -- the result pipe --------------------------------------------------------

    def _read_available(self, job: _Job) -> None:
        """Read what the pipe holds now; on EOF or error close it."""
        while job.rfd >= 0:
            try:
                chunk = os.read(job.rfd, 4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                chunk = b""
            if chunk and len(job.data) + len(chunk) <= RESULT_LIMIT:
                job.data += chunk
                continue
            if chunk:  # oversized: garbage, stop listening to it
                job.data.clear()
            job.eof = True
            self.loop.remove_reader(job.rfd)
            os.close(job.rfd)
            job.rfd = -1

    def _on_readable(self, job: _Job) -> None:
        self._read_available(job)
        if job.eof and job.wait_status is None and not self._try_reap(job):
            self._schedule_poll(job)

    def _schedule_poll(self, job: _Job) -> None:
        job.timers.append(self.loop.call_later(job.poll_delay, self._poll, job))
        job.poll_delay = min(job.poll_delay * 2, _POLL_MAX)

    def _poll(self, job: _Job) -> None:
        if job.state is not JobState.DONE and not self._try_reap(job):
            self._schedule_poll(job)

    # -- reaping ----------------------------------------------------------------

    def reap(self) -> None:
        """Reap finished children by pid, without blocking: call it from the
        parent's SIGCHLD handler.  Other children are not touched."""
        for job in list(self._jobs.values()):
            self._try_reap(job)

    def _try_reap(self, job: _Job) -> bool:
        if job.wait_status is None:
            try:
                pid, status = os.waitpid(job.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = job.pid, -1  # someone else reaped it: status unknown
            if pid == 0:
                return False
            job.wait_status = status
        # Whatever the child wrote is in the pipe by now; a grandchild that
        # kept the write end open must not hold the result back.
        self._read_available(job)
        if job.rfd >= 0:
            self.loop.remove_reader(job.rfd)
            os.close(job.rfd)
            job.rfd = -1
        self._finish(job)
        return True

    def _finish(self, job: _Job) -> None:
        if job.state is JobState.DONE:
            return
        timed_out = job.state is JobState.TERMINATING
        job.state = JobState.DONE
        for timer in job.timers:
            timer.cancel()
        job.timers.clear()
        self._jobs.pop(job.pid, None)
        status, text, detail = _decode_result(bytes(job.data))
        if not status:
            ending = describe_wait_status(job.wait_status)
            status = "tempfail"
            text = TIMED_OUT if timed_out else FAILED
            detail = f"delivery process {ending} without a result"
        try:
            self.on_result(job.request.evpid, status, text, detail)
        finally:
            self._start_waiting()

    # -- timeout and shutdown ------------------------------------------------------

    def _on_timeout(self, job: _Job) -> None:
        if job.state is not JobState.RUNNING:
            return
        job.state = JobState.TERMINATING
        self._signal(job, signal.SIGTERM)
        job.timers.append(self.loop.call_later(KILL_GRACE, self._signal, job, signal.SIGKILL))

    def _signal(self, job: _Job, sig: signal.Signals) -> None:
        if job.wait_status is not None:
            return  # reaped: the pid may belong to someone else now
        try:
            os.killpg(job.pid, sig)
        except ProcessLookupError:  # not yet its own group leader
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(job.pid, sig)
        except PermissionError:
            pass

    def close(self) -> None:
        """Stop: kill every child's process group, reap them, drop what waits.
        No result is reported for them: the envelopes stay queued."""
        self._closed = True
        while self._pending:
            os.close(self._pending.popleft().fd)
        for job in list(self._jobs.values()):
            job.state = JobState.DONE
            for timer in job.timers:
                timer.cancel()
            self._signal(job, signal.SIGKILL)
            if job.rfd >= 0:
                self.loop.remove_reader(job.rfd)
                os.close(job.rfd)
                job.rfd = -1
            with contextlib.suppress(ChildProcessError):
                os.waitpid(job.pid, 0)
        self._jobs.clear()


def _evpid_of(envelope_text: str) -> int:
    """The evpid line of an envelope that failed validation, else 0."""
    for line in envelope_text.split("\n", 3)[:3]:
        key, _, value = line.partition(": ")
        if key == "evpid":
            with contextlib.suppress(ValueError):
                return int(value, 16) if len(value) == 16 else 0
    return 0


def describe_wait_status(status: int | None) -> str:
    if status is None or status < 0:
        return "ended"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        name = signal.Signals(sig).name if sig in signal.valid_signals() else str(sig)
        return f"was killed by signal {name}"
    if os.WIFEXITED(status):
        return f"exited with status {os.WEXITSTATUS(status)}"
    return f"ended (wait status {status})"


def _clean(text: str) -> str:
    # The child runs as the user: its words reach logs, envelopes and DSNs
    # only as one bounded printable line.
    return "".join(c if c.isprintable() else "?" for c in text[:TEXT_LIMIT])


def _decode_result(data: bytes) -> tuple[str, str, str]:
    """(status, text, detail) from the child, or ("", "", "") if unusable."""
    if not data:
        return "", "", ""
    try:
        obj: Any = codec.unpack(data)
    except Exception:
        return "", "", ""
    if not (isinstance(obj, list) and len(obj) == 3 and all(isinstance(x, str) for x in obj)):
        return "", "", ""
    status, text, detail = obj
    if status not in {s.value for s in DeliveryStatus} or not text:
        return "", "", ""
    return status, _clean(text), _clean(detail)


# -- from an envelope to a request ------------------------------------------------

_METHODS = {
    ActionKind.MAILDIR: DeliveryMethod.MAILDIR,
    ActionKind.MBOX: DeliveryMethod.MBOX,
    ActionKind.MDA: DeliveryMethod.MDA,
    ActionKind.LMTP: DeliveryMethod.LMTP,
}


def _bad_chars(value: str) -> bool:
    return any(c in value for c in "\r\n\0")


def _valid_mailbox(value: str) -> bool:
    """A full `local@domain` as RFC 5321 §4.1.2 has it (quoted locals too)."""
    if not value or _bad_chars(value):
        return False
    try:
        mailbox, rest = parse_path(f"<{value}>")
    except AddressError:
        return False
    return mailbox is not None and not rest


def _valid_user(name: str) -> bool:
    return bool(name) and not name.startswith("-") and "/" not in name and all(
        c.isprintable() and not c.isspace() for c in name)


def build_request(envelope_text: str, config: Config, hostname: str, *,
                  timeout: float = 300.0) -> DeliveryRequest | DeliveryResult:
    """Re-validate an envelope from the queue: see `plan_delivery`."""
    plan = plan_delivery(envelope_text, config, hostname, timeout=timeout)
    return plan if isinstance(plan, DeliveryResult) else plan[0]


def plan_delivery(envelope_text: str, config: Config, hostname: str, *,
                  timeout: float = 300.0) -> tuple[DeliveryRequest, str | None] | DeliveryResult:
    """The request and the maildir name recorded in the envelope (mda-delivered,
    for exactly-once redelivery; None if none), or the result to report.

    Re-validate an envelope from the queue and say how to deliver it.

    The privileged side trusts nothing the queue says (DESIGN.md §4,
    CVE-2020-7247): addresses must parse as RFC 5321 mailboxes without CR,
    LF or NUL, the action must exist and deliver locally, and as root the
    user must exist in passwd.  Returns the request, or the result to report
    instead (permfail for what can never work, tempfail for what an
    administrator can fix).  `timeout` bounds mda commands and LMTP sessions
    inside the child (keep it below the runner's own timeout)."""
    try:
        env = load_envelope(envelope_text.encode("utf-8", "surrogatepass"))
    except (EnvelopeError, UnicodeError) as exc:
        return permfail(f"554 5.3.0 Malformed envelope: {_clean(str(exc))}")
    if env.type is not DeliveryType.MDA:
        return permfail(f"554 5.3.5 Envelope of type {env.type} is not a local delivery")
    for name, value, empty_ok in (("sender", env.sender, True), ("rcpt", env.rcpt, False),
                                  ("dest", env.dest, False),
                                  ("orig-rcpt", env.orig_rcpt, True)):
        if not (empty_ok and value == "") and not _valid_mailbox(value):
            return permfail(f"550 5.1.3 Invalid {name} address in envelope")
    action = config.actions.get(env.dispatcher)
    if action is None:
        return tempfail(f"451 4.3.5 No action named {_clean(env.dispatcher)!r} in the "
                        "configuration")
    method = _METHODS.get(action.kind)
    if method is None:
        return permfail(f"554 5.3.5 Action {action.name!r} does not deliver locally")
    wrapper: str | None = None
    if action.wrapper is not None:
        wrapper = config.mda_wrappers.get(action.wrapper)
        if wrapper is None:
            return tempfail(f"451 4.3.5 No mda wrapper named {action.wrapper!r}")
    command = env.mda_exec or action.mda_command or ""
    if env.mda_exec:
        method = DeliveryMethod.MDA  # a |command of a .forward file
    if method is DeliveryMethod.MDA and not command:
        return tempfail(f"451 4.3.5 Action {action.name!r} has no mda command")

    user = env.mda_user or action.user or ""
    if not _valid_user(user):
        return permfail("550 5.1.1 Invalid or missing user in envelope")
    try:
        pw: pwd.struct_passwd | None = pwd.getpwnam(user)
    except KeyError:
        pw = None
    virtual = _virtual_user(config, action.userbase_table, user) if action.user is None else None
    if isinstance(virtual, DeliveryResult):
        return virtual
    if virtual is not None:
        # A virtual user (the seed: no system account, uid/gid/home from a table).
        uid, gid, home = virtual.uid, virtual.gid, virtual.directory
        if os.geteuid() != 0:
            uid, gid = os.getuid(), os.getgid()
        elif uid == 0:
            return permfail("550 5.7.1 Refusing to deliver as root for a virtual user")
    elif os.geteuid() == 0:
        if pw is None:
            # upstream mda.c: "Permanent failure in user lookup"
            return permfail(f"550 5.1.1 Permanent failure in user lookup: {user}")
        uid, gid, home = pw.pw_uid, pw.pw_gid, pw.pw_dir
        if uid == 0 and env.mda_exec:
            return permfail("550 5.7.1 Refusing to run a command from an envelope as root")
    else:
        # Unprivileged daemon: every delivery runs as us (DESIGN.md §1).
        uid, gid = os.getuid(), os.getgid()
        home = pw.pw_dir if pw is not None else os.path.expanduser("~")
    request = DeliveryRequest(
        evpid=env.evpid,
        sender=env.sender,
        rcpt=env.dest,
        orig_rcpt=env.orig_rcpt or env.rcpt,
        user=user,
        uid=uid,
        gid=gid,
        home=home,
        method=method,
        hostname=hostname,
        maildir=action.maildir_path or "~/Maildir",
        junk=action.junk,
        command=command,
        wrapper=wrapper,
        lmtp_dest=action.lmtp_destination or "",
        lmtp_rcpt_to=action.lmtp_rcpt_to,
        subaddress=env.mda_subaddress,
        subaddress_delim=config.smtp.sub_addr_delim,
        timeout=timeout,
    )
    expected = env.mda_delivered if method is DeliveryMethod.MAILDIR else ""
    return request, expected or None


# -- the child ---------------------------------------------------------------------


class _Terminated(BaseException):
    """SIGTERM in the child: the runner's timeout.  A BaseException so that no
    `except Exception` on the way swallows it; `finally` blocks still run (the
    mda command's process group is killed by command.py's)."""


def _on_sigterm(_signum: int, _frame: object) -> None:
    raise _Terminated


def _child_main(
    request: DeliveryRequest, fd: int, wfd: int, expected_name: str | None
) -> NoReturn:  # pragma: no cover - child
    code = 70  # EX_SOFTWARE unless the result reaches the pipe
    try:
        try:
            # Objects inherited from the parent (sockets, files, the loop) may
            # own fds we are about to close: never let the collector finalize
            # them, or their close() would hit an fd number reused by now.
            gc.freeze()
            signal.set_wakeup_fd(-1)
            for name in _RESET_SIGNALS:
                signal.signal(getattr(signal, name), signal.SIG_DFL)
            signal.signal(signal.SIGTERM, _on_sigterm)
            os.setsid()
            _close_inherited({0, 1, 2, fd, wfd})
            os.umask(0o077)
            os.chdir("/")
            if os.geteuid() == 0:
                _drop_privileges(request)
            with contextlib.suppress(OSError):
                os.lseek(fd, 0, os.SEEK_SET)  # a shared file offset may have moved
            result = _deliver(request, fd, expected_name)
        except _Terminated:
            result = tempfail(TIMED_OUT)
        except BaseException as exc:
            _stderr(
                f"mda: delivery of {request.evpid:016x} failed: "
                + "".join(traceback.format_exception(exc))
            )
            result = tempfail(FAILED)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _write_all(wfd, codec.pack([result.status.value, result.text, result.detail or ""]))
        code = 0
    except BrokenPipeError:
        # The parent is gone (daemon stopped or killed): the delivery's own
        # exactly-once record decides what a restart does; one line is enough.
        _stderr(f"mda: delivery of {request.evpid:016x}: parent gone, result dropped\n")
    except BaseException as exc:
        _stderr(f"mda: delivery of {request.evpid:016x}: no result: "
                + "".join(traceback.format_exception(exc)))
    os._exit(code)


def _deliver(
    request: DeliveryRequest, fd: int, expected_name: str | None
) -> DeliveryResult:  # pragma: no cover - child
    # smtpd.mda was imported by the parent: after the privilege drop the
    # child may not be allowed to read the interpreter's files to import.
    with os.fdopen(fd, "rb") as source:
        return smtpd.mda.deliver(request, source, expected_name)


def _close_inherited(keep: set[int]) -> None:  # pragma: no cover - child
    try:
        limit = os.sysconf("SC_OPEN_MAX")
    except (OSError, ValueError):
        limit = 1024
    limit = max(limit, max(keep) + 1)
    low = 0
    for fd in sorted(keep):
        # Never an empty range: CPython 3.13 turns closerange(0, 0) into
        # close_range(0, (unsigned)-1), which closes every fd (seen here).
        if low < fd:
            os.closerange(low, fd)
        low = fd + 1
    if low < limit:
        os.closerange(low, limit)


def _drop_privileges(request: DeliveryRequest) -> None:  # pragma: no cover - child
    """For good: real, effective and saved ids, and the supplementary groups
    of the user (or only its gid for a user without a passwd entry)."""
    uid, gid = request.uid, request.gid
    try:
        known = pwd.getpwnam(request.user).pw_uid == uid
    except KeyError:
        known = False
    if known:
        os.initgroups(request.user, gid)
    else:
        os.setgroups([gid])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid):
        raise PermissionError(f"could not become uid {uid} gid {gid}")
    if uid != 0:
        try:
            os.setuid(0)
        except PermissionError:
            return
        raise PermissionError("uid 0 could be regained after dropping privileges")


def _write_all(fd: int, data: bytes) -> None:  # pragma: no cover - child
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _stderr(text: str) -> None:  # pragma: no cover - child
    # Not the logging module: its handlers may hold fds closed in this child.
    with contextlib.suppress(OSError):
        _write_all(2, text.encode("utf-8", "replace"))


def _virtual_user(config: Config, table_name: str | None,
                  user: str) -> UserInfo | DeliveryResult | None:
    """uid/gid/home of a user from the action's `userbase` table, if it has one.
    The parent re-reads the table itself rather than trusting the queue."""
    if table_name is None:
        return None
    definition = config.tables.get(table_name)
    if definition is None:
        return tempfail(f"451 4.3.5 No table named {table_name!r}")
    try:
        table = open_table(definition, config.smtp.sub_addr_delim)
        try:
            info = table.userinfo(user)
        finally:
            table.close()
    except TableTempFail:
        return tempfail("451 4.3.0 Temporary failure in user lookup")
    except (TableError, OSError, ValueError):
        return tempfail(f"451 4.3.5 Table {table_name!r} cannot be read")
    if info is None:
        return permfail(f"550 5.1.1 Permanent failure in user lookup: {user}")
    return info
