"""Side by side: one SMTP workload against pysmtpd and OpenSMTPD 6.x.

    .venv/bin/python bench/compare.py                       # N=200 per cell, both servers
    .venv/bin/python bench/compare.py -n 500 -c 10 --sizes 4096 --servers pysmtpd
    .venv/bin/python bench/compare.py --compression --encryption

Each server runs in the foreground (`-d`) with a temporary configuration,
spool and control socket, listening on 127.0.0.1 on a free port and delivering
to a Maildir in the same temporary directory as the system user `nobody`
(OpenSMTPD refuses to deliver as root).  OpenSMTPD's spool and control socket
are compiled in (/var/spool/smtpd, /var/run/smtpd.sock), so it runs in its own
mount namespace (`unshare -m`) with temporary directories bind-mounted over
/var/spool and /var/run: the system's spool is never touched.

A cell is (message size, concurrency): N messages, one new connection per
message by default, sent without PIPELINING (OpenSMTPD 6.8 refuses it, RFC
2920 is optional), each transaction MAIL, RCPT, DATA, body in lock step.  Per
cell and server it prints messages/s accepted (first connect to last 250) and
delivered (first connect until every file is in Maildir/new); the p50/p99
latency of a transaction (MAIL to the 250 after the body); the p99 time from
connect to the 220 greeting, retries included (a connection not greeted within
--connect-timeout is dropped and opened again, counted in `retries`: OpenSMTPD
listens with a backlog of 5, and on some kernels a handshake beyond it is never
accepted); the p99 of what a client waits per message ("msg": from connect,
retries included, to the 250 after the body; with --per-session above 1, from
the previous 250); CPU seconds, and the peak RSS and PSS summed over every
process of the daemon (from /proc, including delivery processes, which the
parent's cutime/cstime account for once reaped; PSS shares a copy-on-write
page among the processes that map it, where RSS counts it in each); and the
ratio pysmtpd/OpenSMTPD from the same run.  Cells alternate the order of the
servers, so that load from other work on the machine hits both.

OpenSMTPD's resolver (libasr) asks DNS before /etc/hosts unless resolv.conf
says `lookup file bind`; the namespace gets such a copy of resolv.conf so that
the reverse lookup of 127.0.0.1 is answered from /etc/hosts, as glibc's
"hosts: files dns" and pysmtpd's loopback rule do, instead of waiting on DNS.
Both servers keep their own durability: pysmtpd fsyncs before the 250,
OpenSMTPD 6.8 does not fsync its queue at all.

The script installs nothing.  Not a test: figures depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import math
import os
import platform
import pwd
import secrets
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

OPENSMTPD = Path("/usr/sbin/smtpd")  # where the Debian package puts it
REPO = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
USER = "nobody"  # exists everywhere, not root: both servers deliver as it
DOMAIN = "bench.test"
INSTALL_HINT = """\
OpenSMTPD is not installed (no OpenSMTPD at {path}): measuring pysmtpd alone.
To compare, install the Debian package without letting its service start:
    printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    apt-get install opensmtpd
    rm /usr/sbin/policy-rc.d        # unless it was there before
    systemctl disable --now opensmtpd 2>/dev/null || service opensmtpd stop
This script then runs it as root in a private mount namespace with a temporary spool."""


class Server(enum.Enum):
    PYSMTPD = "pysmtpd"
    OPENSMTPD = "opensmtpd"


@dataclass(frozen=True)
class Cell:
    size: int
    concurrency: int


@dataclass(frozen=True)
class Outcome:
    server: Server
    cell: Cell
    sent: int
    accepted: int
    delivered: int
    accept_s: float  # first connect to the last 250
    deliver_s: float  # first connect to the last file in Maildir/new (inf if not all)
    p50_ms: float
    p99_ms: float
    greet_p99_ms: float
    whole_p99_ms: float  # connect to the 250: what a client waits per message
    retries: int
    cpu_s: float
    peak_rss: int
    peak_pss: int
    failures: tuple[str, ...]
    cpu_by_process: dict[str, float]  # process title -> CPU seconds in the cell


# -- /proc figures of a process tree ----------------------------------------------------

def tree(root: int) -> list[int]:
    """The root and its descendants, from /proc/<pid>/task/<tid>/children
    (children are listed under the thread that forked them)."""
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        with contextlib.suppress(OSError, ValueError):
            for task in Path(f"/proc/{pid}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
    return out


def proc_figures(pid: int) -> tuple[float, int, int] | None:
    """CPU seconds (utime+stime+cutime+cstime: reaped children count in their
    parent), RSS bytes and PSS bytes of one process.  PSS divides each page
    among the processes sharing it, so a sum over forked processes counts
    copy-on-write pages once; RSS counts them in each."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    pss = 0
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1]) * 1024
                break
    # fields[0] is stat field 3 (state): utime..cstime are 14..17, rss is 24
    return sum(int(x) for x in fields[11:15]) / CLK_TCK, int(fields[21]) * PAGE, pss


class Sampler:
    """Samples a daemon's process tree every `interval` s in a thread: total
    CPU on demand, and the peaks of the summed RSS and PSS since the last reset."""

    def __init__(self, root: int, interval: float = 0.1) -> None:
        self.root = root
        self.interval = interval
        self.peak = 0
        self.peak_pss = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.cpu()

    def cpu(self) -> float:
        figures = [f for f in map(proc_figures, tree(self.root)) if f is not None]
        with self._lock:
            self.peak = max(self.peak, sum(rss for _, rss, _ in figures))
            self.peak_pss = max(self.peak_pss, sum(pss for _, _, pss in figures))
        return sum(cpu for cpu, _, _ in figures)

    def cpu_by_title(self) -> dict[str, float]:
        """CPU seconds per process title (argv[0]): "smtpd: queue", "smtpd: mda
        nobody"...; processes of one title are summed, reaped ones count in
        the parent that reaped them."""
        out: dict[str, float] = {}
        for pid in tree(self.root):
            figures = proc_figures(pid)
            if figures is None:
                continue
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(
                    "utf-8", "replace")
            except OSError:
                continue
            out[title] = out.get(title, 0.0) + figures[0]
        return out

    def reset_peak(self) -> None:
        with self._lock:
            self.peak = self.peak_pss = 0

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


# -- the daemons ------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def opensmtpd_version(binary: Path) -> str | None:
    """"OpenSMTPD 6.8.0p2 (Debian 6.8.0p2-4+b4)", or None when `binary` is
    missing or is not OpenSMTPD's smtpd."""
    if not binary.exists():
        return None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([str(binary), "-h"], capture_output=True, text=True,
                             timeout=10, check=False)
        for line in (out.stdout + out.stderr).splitlines():
            if line.startswith("version: OpenSMTPD"):
                version = line.removeprefix("version: ")
                deb = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "opensmtpd"],
                                     capture_output=True, text=True, check=False).stdout
                return f"{version} (Debian {deb})" if deb else version
    return None


def config(server: Server, work: Path, port: int, compression: bool, key: str | None) -> str:
    lines = []
    if server is Server.PYSMTPD:  # OpenSMTPD's are compiled in: see the namespace
        lines += [f'queue path "{work}/spool/smtpd"',
                  f'control socket "{work}/run/smtpd.sock"']
    if compression:
        lines.append("queue compression")
    if key is not None:
        lines.append(f'queue encryption "{key}"')
    lines += [f"listen on 127.0.0.1 port {port}",
              f'action "local" maildir "{work}/mail/%{{user.username}}"',
              f'match from any for domain "{DOMAIN}" action "local"']
    return "\n".join(lines) + "\n"


class Daemon:
    """One server in the foreground, in a new session, with its log drained
    by a thread (the last lines kept for errors) and a /proc sampler."""

    def __init__(self, server: Server, compression: bool, key: str | None,
                 keep: bool, opensmtpd: Path = OPENSMTPD) -> None:
        self.server = server
        self.keep = keep
        self.work = Path(tempfile.mkdtemp(prefix=f"compare-{server.value}-"))
        self.port = free_port()
        self.log: deque[str] = deque(maxlen=40)
        self.sampler: Sampler | None = None
        nobody = pwd.getpwnam(USER)
        for sub in ("spool", "spool/smtpd", "run", "mail"):
            (self.work / sub).mkdir()
        # both queues check their spool's owner and mode; `nobody` must reach the Maildir
        for path in (self.work, self.work / "spool", self.work / "spool" / "smtpd"):
            os.chmod(path, 0o711)
        os.chown(self.work / "mail", nobody.pw_uid, nobody.pw_gid)
        conf = self.work / "smtpd.conf"
        conf.write_text(config(server, self.work, self.port, compression, key))
        if server is Server.PYSMTPD:
            argv = [sys.executable, "-m", "smtpd", "-d", "-f", str(conf)]
        else:
            # unshare(1) execs sh, which execs smtpd: the root pid is OpenSMTPD's parent.
            # Its resolver (libasr) asks DNS before /etc/hosts unless told `lookup file
            # bind`: the PTR query for 127.0.0.1 then waits on the network (seconds on a
            # sandbox resolver), where glibc's "hosts: files dns" and pysmtpd's
            # loopback rule answer at once; same answer, without the stall.
            resolv = self.work / "resolv.conf"
            with contextlib.suppress(OSError):
                system = Path("/etc/resolv.conf").read_text()
                resolv.write_text("".join(line + "\n" for line in system.splitlines()
                                          if not line.startswith("lookup"))
                                  + "lookup file bind\n")
            script = ('mount --bind "$1" /var/spool && mount --bind "$2" /var/run'
                      ' && { [ ! -f "$3" ] || mount --bind "$3" /etc/resolv.conf; }'
                      ' && bin=$4 && shift 4 && exec "$bin" "$@"')
            argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                    "sh", str(self.work / "spool"), str(self.work / "run"), str(resolv),
                    str(opensmtpd), "-d", "-f", str(conf)]
        self.proc = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, errors="replace", start_new_session=True)
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        with open(self.work / "daemon.log", "w") as out:  # kept with --keep
            for line in self.proc.stdout:
                self.log.append(line.rstrip("\n"))
                out.write(line)

    def wait_ready(self, timeout: float = 60) -> None:
        """Until a connection gets its 220 greeting."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(OSError), \
                    socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                if s.recv(512).startswith(b"220"):
                    s.sendall(b"QUIT\r\n")
                    self.sampler = Sampler(self.proc.pid)
                    return
            time.sleep(0.2)
        raise RuntimeError(f"{self.server.value} did not start:\n" + "\n".join(self.log))

    def maildir_new(self) -> Path:
        return self.work / "mail" / USER / "new"

    def delivered(self) -> int:
        try:
            return len(os.listdir(self.maildir_new()))
        except FileNotFoundError:
            return 0

    def stop(self) -> None:
        """SIGTERM, then SIGKILL to every process of the tree by pid (delivery
        processes may have left the session), then remove the temporary dir."""
        if self.sampler is not None:
            self.sampler.stop()
        pids = tree(self.proc.pid)
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
        for pid in {*pids, *tree(self.proc.pid)}:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # stragglers still in its process group; the root is not reaped yet, so
        # the group id cannot have been reused
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        if not self.keep:
            shutil.rmtree(self.work, ignore_errors=True)


# -- the client -------------------------------------------------------------------------

class SmtpFailure(Exception):
    pass


def make_message(size: int) -> bytes:
    """About `size` octets on the wire: CRLF lines, none starting with a dot."""
    head = (f"From: bench <bench@client.test>\r\nTo: <{USER}@{DOMAIN}>\r\n"
            f"Subject: compare\r\nMessage-ID: <{secrets.token_hex(8)}@client.test>\r\n"
            "\r\n").encode()
    line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusm\r\n"
    return head + line * max(0, (size - len(head)) // len(line))


async def reply(reader: asyncio.StreamReader, want: int) -> None:
    while True:
        line = await reader.readline()
        if not line.endswith(b"\n"):
            raise SmtpFailure("connection closed")
        if line[3:4] != b"-":
            if int(line[:3]) != want:
                raise SmtpFailure(f"expected {want}, got {line.decode(errors='replace')!r}")
            return


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)  # MAIL to the final 250
    whole: list[float] = field(default_factory=list)  # connect (or the last 250) to the 250
    greetings: list[float] = field(default_factory=list)  # connect to 220, retries included
    failures: list[str] = field(default_factory=list)
    retries: int = 0


class NoGreeting(Exception):
    """No 220 within the connect timeout: the connection is abandoned and
    opened again, as a sending MTA would (sooner: RFC 5321 §4.5.3.2 allows 5 min)."""


async def session(port: int, message: bytes, count: int, tally: Tally,
                  connect_timeout: float, first: float) -> None:
    """One connection, `count` transactions, each command answered before the
    next is sent (no PIPELINING: OpenSMTPD 6.8 closes on it).  `first` is
    when the first attempt of this session began."""
    try:
        async with asyncio.timeout(connect_timeout):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except TimeoutError as exc:
        raise NoGreeting from exc
    try:
        try:
            async with asyncio.timeout(connect_timeout):
                await reply(reader, 220)
        except TimeoutError as exc:
            raise NoGreeting from exc
        tally.greetings.append(time.perf_counter() - first)
        writer.write(b"EHLO client.test\r\n")
        await reply(reader, 250)
        since = first  # the client's wait for each message: connecting, retries included
        for _ in range(count):
            t0 = time.perf_counter()
            for command, code in ((b"MAIL FROM:<bench@client.test>", 250),
                                  (f"RCPT TO:<{USER}@{DOMAIN}>".encode(), 250),
                                  (b"DATA", 354)):
                writer.write(command + b"\r\n")
                await reply(reader, code)
            writer.write(message + b".\r\n")
            await reply(reader, 250)
            done = time.perf_counter()
            tally.latencies.append(done - t0)
            tally.whole.append(done - since)
            since = done
        writer.write(b"QUIT\r\n")
        await reply(reader, 221)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def load(port: int, cell: Cell, n: int, per_session: int, timeout: float,
               connect_timeout: float) -> Tally:
    tally = Tally()
    message = make_message(cell.size)
    remaining = [n]

    async def worker() -> None:
        while remaining[0] > 0:
            count = min(per_session, remaining[0])
            remaining[0] -= count
            first = time.perf_counter()
            while True:
                try:
                    await session(port, message, count, tally, connect_timeout, first)
                except NoGreeting:
                    tally.retries += 1
                    continue
                except (SmtpFailure, OSError) as exc:
                    tally.failures.append(str(exc) or type(exc).__name__)
                break

    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(worker() for _ in range(cell.concurrency)))
    if remaining[0] > 0 or len(tally.latencies) + len(tally.failures) < n:
        tally.failures.append("cell timed out")
    return tally


def percentile_ms(values: list[float], q: float) -> float:
    """Nearest rank, in milliseconds."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return 1000 * ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def run_cell(daemon: Daemon, cell: Cell, n: int, per_session: int, timeout: float,
             connect_timeout: float) -> Outcome:
    assert daemon.sampler is not None
    before = daemon.delivered()
    daemon.sampler.reset_peak()
    cpu0 = daemon.sampler.cpu()
    by_title0 = daemon.sampler.cpu_by_title()
    t0 = time.perf_counter()
    tally = asyncio.run(load(daemon.port, cell, n, per_session, timeout, connect_timeout))
    accept_s = time.perf_counter() - t0
    want = before + len(tally.latencies)
    deadline = time.monotonic() + timeout
    while daemon.delivered() < want and time.monotonic() < deadline:
        time.sleep(0.02)
    delivered = daemon.delivered() - before
    deliver_s = time.perf_counter() - t0 if delivered >= len(tally.latencies) else float("inf")
    return Outcome(daemon.server, cell, n, len(tally.latencies), delivered, accept_s, deliver_s,
                   percentile_ms(tally.latencies, 0.5), percentile_ms(tally.latencies, 0.99),
                   percentile_ms(tally.greetings, 0.99), percentile_ms(tally.whole, 0.99),
                   tally.retries, daemon.sampler.cpu() - cpu0, daemon.sampler.peak,
                   daemon.sampler.peak_pss, tuple(tally.failures),
                   {title: cpu - by_title0.get(title, 0.0)
                    for title, cpu in daemon.sampler.cpu_by_title().items()})


# -- the report -------------------------------------------------------------------------

def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else 0.0


def row(o: Outcome) -> list[str]:
    return [f"{o.cell.size // 1024} KB", str(o.cell.concurrency), o.server.value,
            f"{rate(o.accepted, o.accept_s):.1f}", f"{rate(o.delivered, o.deliver_s):.1f}",
            f"{o.p50_ms:.1f}", f"{o.p99_ms:.1f}", f"{o.greet_p99_ms:.1f}",
            f"{o.whole_p99_ms:.1f}", str(o.retries),
            f"{o.cpu_s:.2f}", f"{1000 * o.cpu_s / max(1, o.accepted):.1f}",
            f"{o.peak_rss / 2**20:.0f}", f"{o.peak_pss / 2**20:.0f}",
            f"{o.sent - o.accepted}" + (f" ({o.failures[0][:40]})" if o.failures else "")]


def ratio_row(py: Outcome, op: Outcome) -> list[str]:
    def r(a: float, b: float) -> str:
        return f"{a / b:.2f}x" if b and math.isfinite(a) and math.isfinite(b) else "-"
    return ["", "", "**py/open**",
            r(rate(py.accepted, py.accept_s), rate(op.accepted, op.accept_s)),
            r(rate(py.delivered, py.deliver_s), rate(op.delivered, op.deliver_s)),
            r(py.p50_ms, op.p50_ms), r(py.p99_ms, op.p99_ms),
            r(py.greet_p99_ms, op.greet_p99_ms), r(py.whole_p99_ms, op.whole_p99_ms), "",
            r(py.cpu_s, op.cpu_s),
            r(py.cpu_s / max(1, py.accepted), op.cpu_s / max(1, op.accepted)),
            r(py.peak_rss, op.peak_rss), r(py.peak_pss, op.peak_pss), ""]


HEADER = ["size", "c", "server", "accepted msg/s", "delivered msg/s", "txn p50 ms",
          "txn p99 ms", "220 p99 ms", "msg p99 ms", "retries", "CPU s", "CPU ms/msg",
          "peak RSS MiB", "peak PSS MiB", "failed"]


def print_rounds(outcomes: list[Outcome]) -> None:
    """Per cell over its rounds: the delivered msg/s ratio of each round (the
    two servers of a round ran back to back), their median and range."""
    by_cell: dict[Cell, dict[Server, list[Outcome]]] = {}
    for o in outcomes:
        by_cell.setdefault(o.cell, {}).setdefault(o.server, []).append(o)
    print()
    print(md(["size", "c", "rounds", "delivered py/open per round", "median", "min", "max",
              "CPU/msg py/open median"]))
    print(md(["---"] * 8))
    for cell, servers in by_cell.items():
        pairs = list(zip(servers.get(Server.PYSMTPD, []), servers.get(Server.OPENSMTPD, []),
                         strict=False))
        ratios = [rate(py.delivered, py.deliver_s) / rate(op.delivered, op.deliver_s)
                  for py, op in pairs if rate(op.delivered, op.deliver_s) > 0]
        cpu = [(py.cpu_s / max(1, py.accepted)) / (op.cpu_s / max(1, op.accepted))
               for py, op in pairs if op.cpu_s > 0]
        if not ratios:
            continue
        print(md([f"{cell.size // 1024} KB", str(cell.concurrency), str(len(ratios)),
                  ", ".join(f"{r:.2f}" for r in ratios), f"{statistics.median(ratios):.2f}x",
                  f"{min(ratios):.2f}x", f"{max(ratios):.2f}x",
                  f"{statistics.median(cpu):.2f}x" if cpu else "-"]))
    print()


def print_per_process(outcomes: list[Outcome]) -> None:
    """CPU ms per accepted message by process title, busiest first."""
    print()
    print(md(["size", "c", "server", "CPU ms per message by process"]))
    print(md(["---"] * 4))
    for o in outcomes:
        parts = sorted(((cpu, title) for title, cpu in o.cpu_by_process.items() if cpu > 0),
                       reverse=True)
        text = ", ".join(f"{title} {1000 * cpu / max(1, o.accepted):.2f}" for cpu, title in parts)
        print(md([f"{o.cell.size // 1024} KB", str(o.cell.concurrency), o.server.value, text]))
    print()


def md(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def environment(versions: dict[Server, str]) -> Iterator[str]:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    yield (f"machine: {os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), "
           f"load average {load}, Linux {platform.release()}")
    yield f"python: {platform.python_version()}"
    for server, version in versions.items():
        yield f"{server.value}: {version}"


def pysmtpd_version() -> str:
    out = subprocess.run([sys.executable, "-c", "import smtpd; print(smtpd.__version__)"],
                         cwd=REPO, capture_output=True, text=True, check=False)
    # the tree measured: other work may have changed files since the last commit
    head = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO,
                          capture_output=True, text=True, check=False).stdout.strip()
    return f"pysmtpd {out.stdout.strip() or '?'}" + (f" (git {head})" if head else "")


# -- main -------------------------------------------------------------------------------

def csv_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("-n", "--messages", type=int, default=200, help="messages per cell")
    p.add_argument("-c", "--concurrency", type=csv_ints, default=[1, 10, 50],
                   help="comma list of parallel sessions (default 1,10,50)")
    p.add_argument("--sizes", type=csv_ints, default=[4096, 102400],
                   help="comma list of message sizes in octets (default 4096,102400)")
    p.add_argument("--per-session", type=int, default=1, help="messages per connection")
    p.add_argument("--servers", default="pysmtpd,opensmtpd",
                   help="comma list among pysmtpd,opensmtpd")
    p.add_argument("--opensmtpd", type=Path, default=OPENSMTPD,
                   help=f"OpenSMTPD's smtpd binary (default {OPENSMTPD})")
    p.add_argument("--compression", action="store_true", help="queue compression")
    p.add_argument("--encryption", action="store_true",
                   help="queue encryption with a random 32-character key")
    p.add_argument("--connect-timeout", type=float, default=3,
                   help="seconds to connect and get the 220 greeting before retrying")
    p.add_argument("--cell-timeout", type=float, default=60,
                   help="seconds for one cell to be accepted, and again to be delivered")
    p.add_argument("--max-seconds", type=float, default=240,
                   help="start no cell after this many seconds")
    p.add_argument("--keep", action="store_true", help="keep the temporary directories")
    p.add_argument("--rounds", type=int, default=1,
                   help="run every cell this many times (servers alternating first) and "
                        "summarise the ratios: on a shared machine one run can mislead")
    p.add_argument("--per-process", action="store_true",
                   help="after the table, CPU ms per accepted message of each process")
    ns = p.parse_args(argv)
    wanted = [Server(s) for s in ns.servers.split(",") if s]
    versions = {Server.PYSMTPD: pysmtpd_version()} if Server.PYSMTPD in wanted else {}
    if Server.OPENSMTPD in wanted:
        version = opensmtpd_version(ns.opensmtpd)
        if version is None:
            print(INSTALL_HINT.format(path=ns.opensmtpd), file=sys.stderr)
            wanted.remove(Server.OPENSMTPD)
        elif os.geteuid() != 0:
            print("OpenSMTPD needs root (privilege drop, mount namespace): measuring "
                  "pysmtpd alone.", file=sys.stderr)
            wanted.remove(Server.OPENSMTPD)
        else:
            versions[Server.OPENSMTPD] = version
    if not wanted:
        return 1
    key = secrets.token_hex(16) if ns.encryption else None
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, interrupt)
    cells = [Cell(size, c) for size in ns.sizes for c in ns.concurrency]
    print(f"command: {shlex.join([os.path.relpath(sys.executable, REPO), *sys.argv])}")
    for line in environment(versions):
        print(line)
    extra = [w for w, on in (("queue compression", ns.compression),
                             ("queue encryption", ns.encryption)) if on]
    print(f"workload: {ns.messages} messages per cell, {ns.per_session} per connection, "
          f"no pipelining, Maildir delivery as {USER}" + "".join(f", {e}" for e in extra))
    daemons: list[Daemon] = []
    per_process: list[Outcome] = []
    started = time.monotonic()
    try:
        for server in wanted:  # appended one by one: each is stopped if the next fails
            daemons.append(Daemon(server, ns.compression, key, ns.keep, ns.opensmtpd))
        for d in daemons:
            d.wait_ready()
        print(md(HEADER))
        print(md(["---"] * len(HEADER)), flush=True)
        runs = [cell for _ in range(ns.rounds) for cell in cells]
        for index, cell in enumerate(runs):
            left = ns.max_seconds - (time.monotonic() - started)
            if left <= 0:
                print(f"(time budget spent: {len(runs) - index} cells not run)")
                break
            order = daemons if index % 2 == 0 else daemons[::-1]
            outcomes = {d.server: run_cell(d, cell, ns.messages, ns.per_session,
                                           min(ns.cell_timeout, max(left, 10)),
                                           ns.connect_timeout)
                        for d in order}
            for server in wanted:
                print(md(row(outcomes[server])), flush=True)
                per_process.append(outcomes[server])
            if len(outcomes) == 2:
                print(md(ratio_row(outcomes[Server.PYSMTPD], outcomes[Server.OPENSMTPD])),
                      flush=True)
        if ns.per_process:
            print_per_process(per_process)
        if ns.rounds > 1 and len(wanted) == 2:
            print_rounds(per_process)
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}, "
              f"{time.monotonic() - started:.0f} s")
    except KeyboardInterrupt:
        print("interrupted: stopping the daemons", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    finally:
        for d in daemons:
            d.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
