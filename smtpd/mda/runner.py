"""The parent's side of local delivery: deliveries run in worker processes,
one user each (smtpd/mda/worker.py).

The queue hands the parent an envelope and a readable message fd
(QUEUE_DELIVERY_START).  The parent re-validates the envelope
(`plan_delivery`: DESIGN.md §4, CVE-2020-7247), then `DeliveryRunner.start`
sends the request and the fd to an idle worker of that uid/gid, or forks a
new one.  A worker delivers one message at a time; it is retired (its socket
closed, so it exits) after IDLE_SECONDS without work or MAX_DELIVERIES
deliveries, and at once after a timeout or a failure, so that an unknown
state never carries over to the next message.

The runner reads the answers on its event loop and reaps workers by pid
(`reap()`, for the parent's SIGCHLD handler, plus polling after the socket's
EOF), so nothing here competes with other waitpid callers.  A worker that
exits without answering, or that outlives the timeout, makes its delivery a
tempfail; the envelope stays queued.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import os
import pwd
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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
from smtpd.mda.worker import FAILED, TIMED_OUT, encode_request, worker_main
from smtpd.queue.envelope import DeliveryType, EnvelopeError, load_envelope
from smtpd.smtp.address import AddressError, parse_path
from smtpd.table.backend import TableError, TableTempFail, open_table
from smtpd.table.match import UserInfo

__all__ = ["FAILED", "TIMED_OUT", "DeliveryRunner", "build_request", "plan_delivery"]

OnResult = Callable[[int, str, str, str], None]

KILL_GRACE = 2.0  # seconds between SIGTERM and SIGKILL after the timeout
RESULT_LIMIT = 8192  # bytes of result a worker may send; more is garbage
TEXT_LIMIT = 512  # characters of result text passed on
IDLE_SECONDS = 5.0  # a worker without work for this long is retired
MAX_DELIVERIES = 1000  # deliveries per worker before it is replaced
_POLL_FIRST, _POLL_MAX = 0.002, 0.1  # reap polling after EOF, backing off


class WorkerState(enum.Enum):
    IDLE = "idle"
    BUSY = "busy"
    TERMINATING = "terminating"  # timed out: SIGTERM sent, SIGKILL scheduled
    RETIRED = "retired"  # socket closed: waiting to be reaped
    DONE = "done"  # reaped


# (uid, gid, user): what a worker runs as; user names the supplementary groups
Identity = tuple[int, int, str]


@dataclass(frozen=True, slots=True)
class _Pending:
    request: DeliveryRequest
    fd: int
    expected_name: str | None
    check_existing: bool = True

    @property
    def identity(self) -> Identity:
        return self.request.uid, self.request.gid, self.request.user


@dataclass(eq=False, slots=True)
class _Worker:
    """One worker process: mutable bookkeeping owned by the runner."""

    identity: Identity
    pid: int
    sock: socket.socket | None  # the parent's end; None once closed
    state: WorkerState = WorkerState.IDLE
    job: DeliveryRequest | None = None  # the delivery it is on
    served: int = 0
    wait_status: int | None = None
    timers: list[asyncio.TimerHandle] = field(default_factory=list)
    idle_timer: asyncio.TimerHandle | None = None
    poll_delay: float = _POLL_FIRST


class DeliveryRunner:
    """Run deliveries in worker processes, at most `max_concurrent` workers
    at once (further requests wait in FIFO order, holding their fd), each
    delivery killed after `timeout` seconds.  `on_result(evpid, status, text,
    detail)` is called once per started request, from the loop, never from
    inside `start()`; status is "ok", "tempfail" or "permfail"; detail is ""
    when there is none (for maildir it is the delivered file name)."""

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
        self._workers: dict[int, _Worker] = {}
        self._idle: dict[Identity, list[_Worker]] = {}
        self._pending: collections.deque[_Pending] = collections.deque()
        self._closed = False
        self._starting = False
        self._start_again = False

    @property
    def running(self) -> int:
        """Deliveries in progress."""
        return sum(1 for w in self._workers.values() if w.job is not None)

    @property
    def waiting(self) -> int:
        return len(self._pending)

    @property
    def users(self) -> int:
        """Distinct users with a delivery running or waiting (upstream's mda.user)."""
        return len({w.job.user for w in self._workers.values() if w.job is not None}
                   | {p.request.user for p in self._pending})

    def pids(self) -> list[int]:
        """Worker processes not yet reaped."""
        return list(self._workers)

    # -- starting ---------------------------------------------------------------

    def start(
        self, request: DeliveryRequest, message_fd: int, expected_name: str | None = None,
        check_existing: bool = True,
    ) -> None:
        """Deliver `request`; `message_fd` is handed over (closed here once
        sent).  `expected_name` is the maildir file name recorded in the
        envelope (mda-delivered) for exactly-once redelivery; with
        `check_existing` False no earlier copy is looked for (a first attempt)."""
        if self._closed:
            os.close(message_fd)
            raise RuntimeError("delivery runner is closed")
        self._pending.append(_Pending(request, message_fd, expected_name, check_existing))
        self._start_waiting()

    def start_envelope(self, envelope_text: str, message_fd: int, config: Config,
                       hostname: str, first_attempt: bool = False) -> None:
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
        self.start(request, message_fd, expected, check_existing=not first_attempt)

    def _start_waiting(self) -> None:
        """Hand waiting requests to idle workers of their user, fork workers
        while there is room, and when there is none retire an idle worker of
        another user so that the next round can fork one."""
        if self._closed:
            return
        if self._starting:  # re-entered through a callback: the outer call goes on
            self._start_again = True
            return
        self._starting = True
        try:
            self._start_again = True
            while self._start_again and not self._closed:
                self._start_again = False
                self._start_round()
        finally:
            self._starting = False

    def _start_round(self) -> None:
        kept: collections.deque[_Pending] = collections.deque()
        while self._pending:
            item = self._pending.popleft()
            idle = self._idle.get(item.identity)
            if idle:
                self._send(idle.pop(), item)
            elif len(self._workers) < self.max_concurrent:
                worker = self._fork(item.identity)
                if worker is None:
                    self._fail_fork(item)
                else:
                    self._send(worker, item)
            else:
                self._retire_one_idle()
                kept.append(item)
        kept.extend(self._pending)  # added while we were forking and sending
        self._pending = kept

    def _retire_one_idle(self) -> None:
        for workers in self._idle.values():
            if workers:
                self._retire(workers.pop())
                return

    def _fail_fork(self, item: _Pending) -> None:
        os.close(item.fd)
        self.loop.call_soon(self.on_result, item.request.evpid, "tempfail", FAILED,
                            "cannot start a delivery process")

    def _fork(self, identity: Identity) -> _Worker | None:
        try:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        except OSError:
            return None
        try:
            pid = os.fork()
        except OSError:
            ours.close()
            theirs.close()
            return None
        if pid == 0:  # pragma: no cover - the child; coverage cannot follow _exit
            worker_main(theirs.fileno(), *identity)
        theirs.close()
        ours.setblocking(False)
        worker = _Worker(identity, pid, ours)
        self._workers[pid] = worker
        self.loop.add_reader(ours.fileno(), self._on_readable, worker)
        return worker

    def _send(self, worker: _Worker, item: _Pending) -> None:
        if worker.idle_timer is not None:
            worker.idle_timer.cancel()
            worker.idle_timer = None
        worker.state = WorkerState.BUSY
        worker.job = item.request
        worker.served += 1
        worker.timers.append(self.loop.call_later(self.timeout, self._on_timeout, worker))
        assert worker.sock is not None
        try:
            # One packet: a request is a few hundred bytes, far below the
            # socket buffer, so a non-blocking send of an idle worker's
            # socket cannot fall short.
            socket.send_fds(worker.sock, [encode_request(
                item.request, item.expected_name, item.check_existing)], [item.fd])
        except OSError:
            self._close_socket(worker)  # it died: reaping reports the job as failed
            self._after_eof(worker)
        finally:
            os.close(item.fd)

    # -- answers -------------------------------------------------------------------

    def _on_readable(self, worker: _Worker) -> None:
        if worker.sock is None:
            return
        try:
            data = worker.sock.recv(RESULT_LIMIT + 1)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close_socket(worker)
            self._after_eof(worker)
            return
        job = worker.job
        if job is None:  # an answer nobody asked for: not a worker we trust
            self._retire(worker)
            return
        status, text, detail, more = (_decode_result(data) if len(data) <= RESULT_LIMIT
                                      else _UNUSABLE)
        reusable = (more and worker.state is WorkerState.BUSY
                    and worker.wait_status is None and worker.served < MAX_DELIVERIES
                    and not self._closed)
        if not status:
            status, text, detail = "tempfail", FAILED, "delivery process answered garbage"
        worker.job = None
        if worker.state is WorkerState.BUSY:  # a timed-out one keeps its SIGKILL timer
            self._cancel_timers(worker)
        if reusable:
            self._make_idle(worker)
        else:
            self._retire(worker)
        try:
            self.on_result(job.evpid, status, text, detail)
        finally:
            self._start_waiting()

    def _cancel_timers(self, worker: _Worker) -> None:
        for timer in worker.timers:
            timer.cancel()
        worker.timers.clear()

    def _make_idle(self, worker: _Worker) -> None:
        worker.state = WorkerState.IDLE
        self._idle.setdefault(worker.identity, []).append(worker)
        worker.idle_timer = self.loop.call_later(IDLE_SECONDS, self._on_idle_timeout, worker)

    def _on_idle_timeout(self, worker: _Worker) -> None:
        worker.idle_timer = None
        if worker.state is WorkerState.IDLE:
            self._remove_idle(worker)
            self._retire(worker)

    def _remove_idle(self, worker: _Worker) -> None:
        idle = self._idle.get(worker.identity)
        if idle is not None and worker in idle:
            idle.remove(worker)
            if not idle:
                del self._idle[worker.identity]

    def _retire(self, worker: _Worker) -> None:
        """Close its socket: it exits at EOF (or is killed, if timed out)."""
        if worker.state is not WorkerState.TERMINATING:
            worker.state = WorkerState.RETIRED
        if worker.idle_timer is not None:
            worker.idle_timer.cancel()
            worker.idle_timer = None
        self._close_socket(worker)
        self._after_eof(worker)

    def _close_socket(self, worker: _Worker) -> None:
        if worker.sock is not None:
            self.loop.remove_reader(worker.sock.fileno())
            worker.sock.close()
            worker.sock = None

    def _after_eof(self, worker: _Worker) -> None:
        self._remove_idle(worker)
        if worker.state is WorkerState.IDLE:
            worker.state = WorkerState.RETIRED
        if worker.wait_status is None and not self._try_reap(worker):
            self._schedule_poll(worker)

    def _schedule_poll(self, worker: _Worker) -> None:
        worker.timers.append(self.loop.call_later(worker.poll_delay, self._poll, worker))
        worker.poll_delay = min(worker.poll_delay * 2, _POLL_MAX)

    def _poll(self, worker: _Worker) -> None:
        if worker.state is not WorkerState.DONE and not self._try_reap(worker):
            self._schedule_poll(worker)

    # -- reaping ----------------------------------------------------------------

    def reap(self) -> None:
        """Reap exited workers by pid, without blocking: call it from the
        parent's SIGCHLD handler.  Other children are not touched."""
        for worker in list(self._workers.values()):
            if worker.state is not WorkerState.DONE:
                self._try_reap(worker)

    def _try_reap(self, worker: _Worker) -> bool:
        if worker.wait_status is None:
            try:
                pid, status = os.waitpid(worker.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = worker.pid, -1  # someone else reaped it: status unknown
            if pid == 0:
                return False
            worker.wait_status = status
        if worker.sock is not None:
            # An answer sent just before exiting is still in the socket.
            self._on_readable(worker)
            if worker.state is WorkerState.DONE:
                return True
            self._close_socket(worker)
        self._finish(worker)
        return True

    def _finish(self, worker: _Worker) -> None:
        if worker.state is WorkerState.DONE:
            return
        timed_out = worker.state is WorkerState.TERMINATING
        worker.state = WorkerState.DONE
        job, worker.job = worker.job, None
        self._cancel_timers(worker)
        if worker.idle_timer is not None:
            worker.idle_timer.cancel()
            worker.idle_timer = None
        self._remove_idle(worker)
        self._workers.pop(worker.pid, None)
        try:
            if job is not None:
                ending = describe_wait_status(worker.wait_status)
                self.on_result(job.evpid, "tempfail", TIMED_OUT if timed_out else FAILED,
                               f"delivery process {ending} without a result")
        finally:
            self._start_waiting()

    # -- timeout and shutdown ------------------------------------------------------

    def _on_timeout(self, worker: _Worker) -> None:
        if worker.state is not WorkerState.BUSY:
            return
        worker.state = WorkerState.TERMINATING
        self._signal(worker, signal.SIGTERM)
        worker.timers.append(self.loop.call_later(KILL_GRACE, self._signal, worker,
                                                  signal.SIGKILL))

    def _signal(self, worker: _Worker, sig: signal.Signals) -> None:
        if worker.wait_status is not None:
            return  # reaped: the pid may belong to someone else now
        try:
            os.killpg(worker.pid, sig)
        except ProcessLookupError:  # not yet its own group leader
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(worker.pid, sig)
        except PermissionError:
            pass

    def close(self) -> None:
        """Stop: kill every worker's process group, reap them, drop what waits.
        No result is reported for them: the envelopes stay queued."""
        self._closed = True
        while self._pending:
            os.close(self._pending.popleft().fd)
        for worker in list(self._workers.values()):
            worker.state = WorkerState.DONE
            worker.job = None
            for timer in worker.timers:
                timer.cancel()
            if worker.idle_timer is not None:
                worker.idle_timer.cancel()
            self._signal(worker, signal.SIGKILL)
            self._close_socket(worker)
            if worker.wait_status is None:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(worker.pid, 0)
        self._workers.clear()
        self._idle.clear()


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


_UNUSABLE = ("", "", "", False)


def _decode_result(data: bytes) -> tuple[str, str, str, bool]:
    """(status, text, detail, whether the worker takes another delivery) from
    a worker's answer, or ("", "", "", False) if unusable."""
    if not data:
        return _UNUSABLE
    try:
        obj: Any = codec.unpack(data)
    except Exception:
        return _UNUSABLE
    if not (isinstance(obj, list) and len(obj) == 4
            and all(isinstance(x, str) for x in obj[:3]) and isinstance(obj[3], bool)):
        return _UNUSABLE
    status, text, detail, more = obj
    if status not in {s.value for s in DeliveryStatus} or not text:
        return _UNUSABLE
    return status, _clean(text), _clean(detail), more


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
