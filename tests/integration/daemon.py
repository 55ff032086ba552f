"""Run the real daemon for integration tests: its own process group, a temp
spool and control socket, port 0 listeners, and a hard kill at the end."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

READY_LINE = "all processes ready"
LISTEN_RE = re.compile(r"listening on (\S+) port (\d+)")


def make_world_traversable(path: Path) -> None:
    """The daemon's unprivileged users must reach files the tests create."""
    for p in [path, *path.parents]:
        if str(p) in ("/", "/tmp"):
            break
        mode = p.stat().st_mode & 0o777
        os.chmod(p, mode | 0o711)


class Daemon:
    def __init__(self, workdir: Path, config: str, *, args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None, nofile: int | None = None) -> None:
        self.workdir = workdir
        make_world_traversable(workdir)
        self.spool = workdir / "spool"
        self.socket = workdir / "run" / "smtpd.sock"
        self.maildir = workdir / "mail"
        self.conf = workdir / "smtpd.conf"
        header = (f'queue path "{self.spool}"\n'
                  f'control socket "{self.socket}"\n')
        self.conf.write_text(header + config)
        self.args = args
        # Never let a test daemon query the machine's resolver: only loopback
        # traffic is allowed here.  Tests that need DNS run a stub and set this.
        # asyncio's loop, as a default install runs, though the test venv has
        # uvloop: PYSMTPD_EVENT_LOOP=uvloop in pytest's environment runs the
        # whole suite on uvloop instead (test_event_loop.py always does).
        self.env = {**os.environ, "PYSMTPD_RESOLVER": "127.0.0.1:9",
                    "PYSMTPD_EVENT_LOOP": os.environ.get("PYSMTPD_EVENT_LOOP", "asyncio"),
                    **(env or {})}
        self.nofile = nofile  # RLIMIT_NOFILE for the daemon and its children
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self.ports: list[int] = []

    # -- life cycle -----------------------------------------------------------

    def start(self, wait_ready: bool = True, timeout: float = 20.0) -> Daemon:
        self.lines = []
        self.ports = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "smtpd", "-d", "-f", str(self.conf), *self.args],
            cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, env=self.env, start_new_session=True,
            preexec_fn=self._limits if self.nofile else None)
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        if wait_ready:
            self.wait_for(READY_LINE, timeout)
        return self

    def _limits(self) -> None:
        import resource
        assert self.nofile is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                m = LISTEN_RE.search(line)
                if m:
                    self.ports.append(int(m.group(2)))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, pattern: str, timeout: float = 10.0) -> str:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if rx.search(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc is not None and self.proc.poll() is not None
                                 and not any(rx.search(x) for x in self.lines)):
                    raise AssertionError(f"no log line matching {pattern!r}; log:\n"
                                         + "\n".join(self.lines[-60:]))
                self._cond.wait(min(left, 0.1))

    def log_text(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    @property
    def port(self) -> int:
        return self.ports[0]

    def pids(self) -> dict[str, int]:
        """Process title -> pid for every process in the daemon's group."""
        assert self.proc is not None
        found: dict[str, int] = {}
        for pid in _group_pids(self.proc.pid):
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
            except OSError:
                continue
            found[title] = pid
        return found

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill_group()

    def kill_group(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    # -- tools ---------------------------------------------------------------

    def smtpctl(self, *words: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "smtpctl", "-s", str(self.socket), *words],
            capture_output=True, text=True, timeout=timeout, env=self.env)

    def smtpctl_as(self, uid: int, *words: str) -> tuple[int, str, str]:
        """Run a control command from a forked child that has become `uid`
        (the venv's interpreter may sit where that uid cannot exec it)."""
        from imsg import codec
        from smtpctl.client import ControlClient

        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            try:
                os.close(rfd)
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
                client = ControlClient(str(self.socket), timeout=10)
                status, out, err = client.run(list(words))
                os.write(wfd, codec.pack([status, "\n".join(out), "\n".join(err)]))
            finally:
                os._exit(0)
        os.close(wfd)
        data = b""
        while chunk := os.read(rfd, 65536):
            data += chunk
        os.close(rfd)
        os.waitpid(pid, 0)
        status, out, err = codec.unpack(data)
        return int(status), str(out), str(err)

    def stats(self) -> dict[str, str]:
        out = self.smtpctl("show", "stats")
        assert out.returncode == 0, out.stderr
        return dict(line.split("=", 1) for line in out.stdout.splitlines())


def _group_pids(pgid: int) -> Iterator[int]:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            yield int(entry)


def group_alive(pgid: int) -> list[int]:
    return list(_group_pids(pgid))


def temp_workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="pysmtpd-"))
