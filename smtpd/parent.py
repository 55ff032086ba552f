"""The privileged parent: binds sockets, forks+execs the children, wires their
socketpairs, and supervises them (DESIGN.md §1).

Signals follow gunicorn: handlers only wake the event loop; the work happens
there.  SIGTERM/SIGINT stop every child in order and exit 0; a child that dies
on its own stops the rest and the parent exits non-zero, naming the child.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from imsg import Frame
from smtpd import __version__, offline, privsep
from smtpd.config import ConfigError, load_config
from smtpd.config.listen import ListenError, resolve_listener
from smtpd.config.model import Config, Listener, ListenerKind
from smtpd.filter.runtime import proc_specs
from smtpd.filter.supervisor import FilterSupervisor
from smtpd.mda.runner import DeliveryRunner
from smtpd.msg import (
    CHILDREN,
    PEERS,
    CtlReply,
    DeliveryStart,
    Empty,
    FilterFd,
    ListenerSend,
    Msg,
    ParentDeliveryResult,
    Proc,
    Request,
)
from smtpd.node import Node
from smtpd.options import Options
from smtpd.proc import FDS_ENV, QUEUE_KEY_FD_ENV

# Order of an orderly stop: stop taking work first, keep the queue for last.
STOP_ORDER = (Proc.CONTROL, Proc.SMTP, Proc.LOOKUP, Proc.SCHEDULER, Proc.QUEUE)
STOP_GRACE = 1.5
LISTEN_BACKLOG = 128


@dataclass
class Child:
    proc: Proc
    popen: subprocess.Popen[bytes]
    status: int | None = None


class ParentError(Exception):
    pass


def describe_status(status: int) -> str:
    if status < 0:
        return f"killed by signal {signal.Signals(-status).name}"
    return f"exited with status {status}"


class Parent(Node):
    name = Proc.PARENT
    needs = frozenset(CHILDREN)

    def __init__(self, options: Options, config: Config) -> None:
        super().__init__(options.traces, options.profiles)
        self.options = options
        self.config = config
        self.children: dict[Proc, Child] = {}
        self.exit_status: int | None = None
        self.listen_socks: list[tuple[Listener, socket.socket]] = []
        self.control_sock: socket.socket | None = None
        self.started = time.monotonic()
        self.filters: FilterSupervisor | None = None

    # -- set-up -------------------------------------------------------------

    def prepare(self) -> None:
        root = privsep.is_root()
        if root:
            privsep.lookup_user(privsep.SMTPD_USER)
            smtpq_id = privsep.lookup_user(privsep.SMTPQ_USER)
        else:
            self.log.warning("not running as root: no privilege separation, "
                             "every process keeps uid %d", os.getuid())
        prepare_spool(self.config.queue_path,
                      (smtpq_id.uid, smtpq_id.gid) if root else None)
        if root:
            os.makedirs(privsep.empty_dir(self.config.queue_path), mode=0o755, exist_ok=True)
            os.chmod(privsep.empty_dir(self.config.queue_path), 0o755)
        self.queue_key = read_queue_key(self.config)
        self.control_sock = bind_control_socket(self.config.control_socket)
        for listener in self.config.listeners:
            for sock in bind_listener(listener):
                self.listen_socks.append((listener, sock))
                host, port = sock.getsockname()[:2]
                self.log.info("listening on %s port %d", host, port)

    def spawn(self) -> None:
        pairs: dict[frozenset[Proc], tuple[socket.socket, socket.socket]] = {}
        everyone = (Proc.PARENT, *CHILDREN)
        for a, b in itertools.combinations(everyone, 2):
            if b in PEERS[a]:
                pairs[frozenset((a, b))] = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for proc in CHILDREN:
            fds: dict[str, int] = {}
            for key, (s1, s2) in pairs.items():
                if proc in key:
                    (other,) = key - {proc}
                    mine = s1 if sorted(key)[0] == proc else s2
                    fds[str(other)] = mine.fileno()
            env = dict(os.environ)
            env[FDS_ENV] = ",".join(f"{k}={v}" for k, v in fds.items())
            extra: list[int] = []
            if proc is Proc.QUEUE and self.queue_key is not None:
                # The key asked for at start reaches the queue through a pipe:
                # never in argv or the environment, where ps could show it.
                rfd, wfd = os.pipe()
                os.write(wfd, self.queue_key.encode())
                os.close(wfd)
                env[QUEUE_KEY_FD_ENV] = str(rfd)
                extra.append(rfd)
            # -I: the children never take modules from the current directory or
            # PYTHONPATH (a root smtpd started from an untrusted directory)
            argv = [sys.executable, "-I", "-m", "smtpd", "-x", str(proc),
                    *self.options.child_argv()]
            popen = subprocess.Popen(argv, pass_fds=[*fds.values(), *extra], env=env,
                                     stdin=subprocess.DEVNULL)
            for fd in extra:
                os.close(fd)
            self.children[proc] = Child(proc, popen)
        for key, (s1, s2) in pairs.items():
            if Proc.PARENT in key:
                (child,) = key - {Proc.PARENT}
                ours = s1 if sorted(key)[0] == Proc.PARENT else s2
                theirs = s2 if ours is s1 else s1
                theirs.close()
                ours.setblocking(False)
                self.attach(child, ours)
            else:
                s1.close()
                s2.close()

    def hand_over_sockets(self) -> None:
        """Listeners to smtp and the control socket to control, by SCM_RIGHTS."""
        for index, (_listener, sock) in enumerate(self.listen_socks):
            host, port = sock.getsockname()[:2]
            self.send(Proc.SMTP, Msg.PARENT_LISTENER_SEND, ListenerSend(index, host, port),
                      fd=os.dup(sock.fileno()))
        assert self.control_sock is not None
        self.send(Proc.CONTROL, Msg.PARENT_CONTROL_SOCKET_SEND, Empty(),
                  fd=os.dup(self.control_sock.fileno()))

    # -- running ------------------------------------------------------------

    async def run(self) -> int:
        try:
            from setproctitle import setproctitle
            setproctitle("smtpd: parent")
        except ImportError:  # pragma: no cover - a declared dependency
            pass
        self.log.info("info: pysmtpd %s starting", __version__)
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.request_stop, 0)
        self.loop.add_signal_handler(signal.SIGCHLD, self._reap)
        self.loop.add_signal_handler(signal.SIGHUP, self._sighup)
        self.handle(Proc.CONTROL, Msg.CTL_STOP, self._on_ctl_stop)
        self.handle(Proc.QUEUE, Msg.QUEUE_DELIVERY_START, self._on_delivery_start)
        self.handle(Proc.CONTROL, Msg.CTL_RELOAD, self._on_ctl_reload)
        self.runner = DeliveryRunner(self.loop, self._on_delivery_result)
        self.spawn()
        self.hand_over_sockets()
        self._start_filters()
        self.start_channels()
        self._reap()  # a child may have died before the handler was installed
        await self.stopping.wait()
        await self._stop_children()
        return self.exit_status or 0

    def _start_filters(self) -> None:
        # proc filters run as their own user, started here (the only process
        # that may change identity); their sockets go to smtp (smtpd/filter/).
        self.filters = FilterSupervisor(
            proc_specs(self.config), self.loop, self.log, self._send_filter_fd,
            privsep.is_root(), privsep.SMTPD_USER)
        self.filters.start_all()

    def _send_filter_fd(self, name: str, generation: int, fd: int) -> None:
        if self.stopping.is_set():
            os.close(fd)
            return
        self.send(Proc.SMTP, Msg.PARENT_FILTER_FD, FilterFd(name, generation), fd=fd)

    def on_live(self) -> None:
        self.log.info("info: all processes ready")
        self.offline = offline.enqueue_offline(self.loop, self.config, self.log)

    def _on_delivery_start(self, payload: DeliveryStart, frame: Frame) -> None:
        # Privileged work: deliver as the recipient's user in a worker forked
        # for that user (smtpd/mda/runner.py re-validates the envelope first).
        assert frame.fd is not None
        self.runner.start_envelope(payload.envelope, frame.fd, self.config,
                                   self.config.hostname, payload.first_attempt)
        self.stats.increment("mda.envelope")
        self._mda_gauges()

    def _mda_gauges(self) -> None:
        # upstream's mda.* keys: deliveries running now and waiting for a slot
        self.stats.set("mda.running", self.runner.running)
        self.stats.set("mda.pending", self.runner.waiting)
        self.stats.set("mda.user", self.runner.users)

    def _on_delivery_result(self, evpid: int, status: str, text: str, detail: str) -> None:
        if not self.stopping.is_set():
            self.send(Proc.QUEUE, Msg.PARENT_DELIVERY_RESULT,
                      ParentDeliveryResult(evpid, status, text, detail))
            self.stats.decrement("mda.envelope")
            self.loop.call_soon(self._mda_gauges)

    def _on_ctl_stop(self, _payload: Any, _frame: Frame) -> None:
        self.log.info("info: stop requested through smtpctl")
        self.request_stop(0)

    def _sighup(self) -> None:
        self.reload()

    def _on_ctl_reload(self, payload: Request, _frame: Frame) -> None:
        ok, lines = self.reload()
        self.send(Proc.CONTROL, Msg.PARENT_CTL_RELOAD_RESULT,
                  CtlReply(payload.reqid, 0 if ok else 1, lines, True))

    def reload(self) -> tuple[bool, list[str]]:
        """SIGHUP / smtpctl reload: check the file again; a bad one is refused
        with file:line and the running configuration stays.  Rules, actions,
        tables and smtp limits change at once (lookup and smtp re-read the
        file); sessions and queued mail are untouched.  What needs sockets or
        keys opened as root (listeners, pki, paths) needs a restart."""
        try:
            new = load_config(self.options.config_path, self.options.macros)
        except ConfigError as exc:
            for line in exc.errors:
                self.log.warning("reload refused: %s", line)
            return False, ["reload refused, the running configuration stays:", *exc.errors]
        except OSError as exc:
            text = f"{self.options.config_path}: {exc.strerror}"
            self.log.warning("reload refused: %s", text)
            return False, [text]
        lines = []
        for what, old_value, new_value in (
                ("listeners", self.config.listeners, new.listeners),
                ("pki", self.config.pkis, new.pkis),
                ("queue path", self.config.queue_path, new.queue_path),
                ("queue compression/encryption", (self.config.queue.compression,
                 self.config.queue.encryption), (new.queue.compression, new.queue.encryption)),
                ("control socket", self.config.control_socket, new.control_socket),
                ("bounce warn-interval", self.config.bounce_warn_intervals,
                 new.bounce_warn_intervals)):
            if old_value != new_value:
                lines.append(f"{what} changed: takes effect at the next restart")
                self.log.warning("reload: %s", lines[-1])
        self.config = new
        for proc in (Proc.LOOKUP, Proc.SMTP):
            self.send(proc, Msg.PARENT_CONFIG_RELOAD, Empty())
        self.log.info("info: configuration reloaded")
        return True, ["configuration reloaded", *lines]

    def request_stop(self, status: int) -> None:
        if self.exit_status is None:
            self.exit_status = status
        self.stopping.set()

    def peer_closed(self, peer: Proc, exc: Exception | None) -> None:
        # The child's exit status, reaped on SIGCHLD, says more than the EOF.
        if not self.stopping.is_set():
            self.loop.call_later(0.05, self._reap)

    def fatal_bug(self, peer: Proc, msg_type: int | None, reason: str) -> None:
        self.log.critical("parent: imsg from %s type %s: %s", peer, msg_type, reason)
        self.request_stop(1)

    def _reap(self) -> None:
        self.runner.reap()
        if self.filters is not None:
            self.filters.reap()
        for child in self.children.values():
            if child.status is not None:
                continue
            status = child.popen.poll()
            if status is None:
                continue
            child.status = status
            if not self.stopping.is_set():
                self.log.critical("%s process (pid %d) %s, stopping", child.proc,
                                  child.popen.pid, describe_status(status))
                self.request_stop(1)

    async def _stop_children(self) -> None:
        self.runner.close()
        if self.filters is not None:
            self.filters.closing = True  # no restarts; stopped after smtp, which uses them
        for chan in self.channels.values():
            chan.close()
        for proc in STOP_ORDER:
            child = self.children.get(proc)
            if child and child.status is None and child.popen.poll() is None:
                child.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        while time.monotonic() < deadline:
            if all(c.popen.poll() is not None for c in self.children.values()):
                break
            await asyncio.sleep(0.02)
        for child in self.children.values():
            if child.popen.poll() is None:
                self.log.warning("%s process (pid %d) did not stop, killing it",
                                 child.proc, child.popen.pid)
                child.popen.kill()
                child.popen.wait()
        if self.filters is not None:
            await self.filters.close()
        self.log.info("info: exiting")


def read_queue_key(config: Config) -> str | None:
    """`queue encryption` without a key: ask for it (a terminal) or read one
    line of stdin (`queue encryption stdin`), as upstream does."""
    q = config.queue
    if not q.encryption or q.encryption_key not in (None, "stdin"):
        return None
    if q.encryption_key is None and sys.stdin.isatty():
        import getpass
        key = getpass.getpass("queue key: ")
    else:
        key = sys.stdin.readline().rstrip("\r\n")
    if not key:
        raise ParentError("queue encryption: no key given")
    return key


def prepare_spool(path: str, owner: tuple[int, int] | None) -> None:
    """Create the spool as upstream lays it out: root 0711 with queue-owned
    0700 subdirectories (COMPAT.md).  Unprivileged, everything is ours."""
    os.makedirs(path, mode=0o711, exist_ok=True)
    if owner is not None:
        os.chown(path, 0, 0)
        os.chmod(path, 0o711)
    for sub in ("incoming", "queue", "corrupt", "purge", "temporary"):
        d = os.path.join(path, sub)
        os.makedirs(d, mode=0o700, exist_ok=True)
        if owner is not None:
            os.chown(d, *owner)
    offline = os.path.join(path, "offline")
    os.makedirs(offline, mode=0o770, exist_ok=True)
    if owner is not None:
        # Any local user's sendmail drops a file here while smtpd is down
        # (upstream uses a setgid smtpctl, which a script cannot be): users may
        # create but not list, and the sticky bit keeps them off others' files.
        os.chown(offline, 0, owner[1])
        os.chmod(offline, 0o1733)


def bind_control_socket(path: str) -> socket.socket:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise ParentError(f"control socket {path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # stale: nobody listens
        else:
            raise ParentError(f"control socket {path} is in use: is smtpd already running?")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o111)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    # 0666: any local user may connect; control checks SO_PEERCRED per command.
    os.chmod(path, 0o666)
    sock.listen(LISTEN_BACKLOG)
    sock.setblocking(False)
    return sock


def bind_listener(listener: Listener) -> list[socket.socket]:
    """Bind one `listen on` directive: an address, a name or an interface."""
    if listener.kind is ListenerKind.SOCKET:
        return []  # the local enqueue socket is served by control (smtpctl/sendmail)
    try:
        addresses = resolve_listener(listener)
    except ListenError as exc:
        raise ParentError(f"{listener.source}: {exc}") from None
    socks: list[socket.socket] = []
    for bind in addresses:
        sock = socket.socket(bind.family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if bind.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            sock.bind((bind.address, bind.port))
        except OSError as exc:
            sock.close()
            for other in socks:
                other.close()
            raise ParentError(f"{listener.source}: cannot bind {bind.address} port "
                              f"{bind.port}: {exc.strerror}") from None
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
        socks.append(sock)
    return socks
