"""The delivery worker: a child of the parent that runs as one user and
delivers, one at a time, every message the parent sends it for that user.

Forking the parent per delivery (as OpenSMTPD does, exec'ing mail.local or
mail.maildir) cost a Python daemon more than the delivery itself: copying
the parent's page tables, the child's copy-on-write faults and its exit
were about 3 ms of CPU per 4 KB message (bench/compare.py, issue 11).  A
worker pays that once per user and run of deliveries instead.  It gives up
nothing the per-delivery child had: it runs as the same uid/gid with the
same groups, so what it can touch is what that user can touch anyway, and
the parent still re-validates every envelope before sending it
(runner.plan_delivery).

The worker's life (`worker_main`, in the forked child):

1. reset the signal state the event loop installed, start its own session
   (so a timeout kills its whole process group, an mda command included),
   close every inherited fd but stdio and its socket;
2. when the parent is root, drop to the user for good
   (initgroups/setresgid/setresuid, then check that uid 0 cannot come back);
3. loop: receive one request with the message fd (SCM_RIGHTS) on a
   SOCK_SEQPACKET socket, deliver it with `smtpd.mda.deliver`, answer
   [status, text, detail]; end at EOF (the parent retired it) or after a
   SIGTERM (the runner's timeout: the delivery is answered "timed out" and
   the worker exits rather than go on in an unknown state).

A request for any other uid/gid than the worker's is refused: the parent
routes by identity, and this is the check that it did.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import socket
import traceback
from dataclasses import astuple, fields
from typing import Any, NoReturn

from setproctitle import setproctitle

import smtpd.mda
from imsg import codec
from smtpd import privsep
from smtpd.mda.types import DeliveryMethod, DeliveryRequest, DeliveryResult, tempfail

FAILED = "451 4.3.0 delivery failed"
TIMED_OUT = "451 4.4.7 delivery timed out"  # RFC 3463 §3.5: delivery time expired
REQUEST_LIMIT = 65536  # bytes of one encoded request (paths and addresses are bounded)
_RESET_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGCHLD", "SIGUSR1", "SIGUSR2", "SIGALRM")
_FIELDS = tuple(f.name for f in fields(DeliveryRequest))


# -- the request on the wire --------------------------------------------------------


def encode_request(request: DeliveryRequest, expected_name: str | None,
                   check_existing: bool = True) -> bytes:
    return codec.pack([list(astuple(request)), expected_name, check_existing])


def decode_request(data: bytes) -> tuple[DeliveryRequest, str | None, bool]:
    """The parent's request; ValueError if it is not one (a bug, not input)."""
    obj: Any = codec.unpack(data)
    if not (isinstance(obj, list) and len(obj) == 3 and isinstance(obj[0], list)
            and len(obj[0]) == len(_FIELDS) and (obj[1] is None or isinstance(obj[1], str))
            and isinstance(obj[2], bool)):
        raise ValueError("malformed delivery request")
    values = dict(zip(_FIELDS, obj[0], strict=True))
    values["method"] = DeliveryMethod(values["method"])
    return DeliveryRequest(**values), obj[1], obj[2]


def encode_result(result: DeliveryResult, more: bool) -> bytes:
    """The answer: the result, and whether this worker takes another delivery."""
    return codec.pack([result.status.value, result.text, result.detail or "", more])


# -- the child ---------------------------------------------------------------------


class _Terminated(BaseException):
    """SIGTERM in the worker: the runner's timeout.  A BaseException so that no
    `except Exception` on the way swallows it; `finally` blocks still run (the
    mda command's process group is killed by command.py's)."""


def _on_sigterm(_signum: int, _frame: object) -> None:
    raise _Terminated


def worker_main(sock_fd: int, uid: int, gid: int, user: str) -> NoReturn:  # pragma: no cover
    """Run in the forked child until the parent closes the socket; never returns."""
    code = 70  # EX_SOFTWARE unless the loop ends normally
    try:
        _become_worker(sock_fd, uid, gid, user)
        with socket.socket(fileno=sock_fd) as sock:
            code = _serve(sock, uid, gid)
    except _Terminated:
        code = 0  # a timeout while idle or between deliveries: nothing to answer
    except BaseException as exc:
        _stderr(f"mda: delivery worker for uid {uid}: "
                + "".join(traceback.format_exception(exc)))
    os._exit(code)


def _become_worker(sock_fd: int, uid: int, gid: int, user: str) -> None:  # pragma: no cover
    # Objects inherited from the parent (sockets, files, the loop) may own fds
    # we are about to close: never let the collector finalize them, or their
    # close() would hit an fd number reused by now.
    gc.freeze()
    signal.set_wakeup_fd(-1)
    for name in _RESET_SIGNALS:
        signal.signal(getattr(signal, name), signal.SIG_DFL)
    signal.signal(signal.SIGTERM, _on_sigterm)
    os.setsid()
    setproctitle(f"smtpd: mda {user}")  # ps tells workers from the parent
    close_inherited({0, 1, 2, sock_fd})
    os.umask(0o077)
    os.chdir("/")
    if os.geteuid() == 0:
        privsep.become_user(uid, gid, user)


def _serve(sock: socket.socket, uid: int, gid: int) -> int:  # pragma: no cover - child
    while True:
        try:
            data, fds, _flags, _addr = socket.recv_fds(sock, REQUEST_LIMIT, 1)
        except ConnectionResetError:
            return 0
        if not data:
            for fd in fds:
                os.close(fd)
            return 0  # the parent retired us, or is gone
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise ValueError("delivery request without exactly one message fd")
        request, expected, check_existing = decode_request(data)
        if (request.uid, request.gid) != (uid, gid):
            os.close(fds[0])
            raise PermissionError(f"request for uid {request.uid} sent to a worker of {uid}")
        result, go_on = _deliver_one(request, fds[0], expected, check_existing)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the answer must get out whole
        try:
            sock.sendall(encode_result(result, go_on))
        except (BrokenPipeError, ConnectionResetError):
            # The parent is gone (daemon stopped or killed): the delivery's own
            # exactly-once record decides what a restart does.
            _stderr(f"mda: delivery of {request.evpid:016x}: parent gone, result dropped\n")
            return 0
        if not go_on:
            return 0
        signal.signal(signal.SIGTERM, _on_sigterm)


def _deliver_one(request: DeliveryRequest, fd: int, expected: str | None,
                 check_existing: bool) -> tuple[DeliveryResult, bool]:  # pragma: no cover
    """The result, and whether this worker may take another delivery."""
    try:
        with contextlib.suppress(OSError):
            os.lseek(fd, 0, os.SEEK_SET)  # a shared file offset may have moved
        # smtpd.mda was imported by the parent: after the privilege drop the
        # worker may not be allowed to read the interpreter's files to import.
        with os.fdopen(fd, "rb") as source:
            return smtpd.mda.deliver(request, source, expected, check_existing), True
    except _Terminated:
        return tempfail(TIMED_OUT), False
    except BaseException as exc:
        _stderr(f"mda: delivery of {request.evpid:016x} failed: "
                + "".join(traceback.format_exception(exc)))
        return tempfail(FAILED), False


def close_inherited(keep: set[int]) -> None:  # pragma: no cover - child
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


def _write_all(fd: int, data: bytes) -> None:  # pragma: no cover - child
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _stderr(text: str) -> None:  # pragma: no cover - child
    # Not the logging module: its handlers may hold fds closed in this child.
    with contextlib.suppress(OSError):
        _write_all(2, text.encode("utf-8", "replace"))
