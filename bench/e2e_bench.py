"""End-to-end throughput: SMTP client -> smtp -> lookup -> queue (durable
commit) -> scheduler -> parent -> maildir, measured as messages per second
until the files exist in the Maildir, at several client concurrencies and
message sizes.  With ``--mode relay`` the daemon relays instead (issue 7):
smtp -> queue -> scheduler -> the MTA side of smtp -> a loopback SMTP sink
that this script runs, and the end-to-end rate counts messages until the
sink has received them all.

    .venv/bin/python bench/e2e_bench.py [--mode local|relay] [--sizes 4096,102400]
                                        [--conc 1,10,50] [--budget 15] [--max-msgs 400]
                                        [--queue compression --queue 'encryption "KEY"']
                                        [--backends fs,postgres]

Spawns its own daemon (`python -m smtpd -d`) in a temporary directory, one
for the whole run, and kills its process group at the end.  Each cell sends
until --max-msgs or --budget seconds, then waits for the Maildir (or sink).
Prints one table: accept rate (all 250 replies), end-to-end rate (all
delivered), and the 250-reply latency (p50/p99).  Not a test: figures depend
on the machine and its load.  ``--backends fs,postgres`` runs the same cells
against one daemon per queue backend in turn, the postgres one on a durable
throw-away PostgreSQL started from tests/servers.py (issue 14).  ``Daemon``,
``Sink`` and ``run_cell`` are reused by bench/queue_crypto_bench.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pwd
import re
import shutil
import signal
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

READY = "envelopes loaded from the spool"  # the queue is live and recovered
LISTEN_RE = re.compile(r"listening on \S+ port (\d+)")
CONFIG = """queue path "{spool}"
control socket "{sock}"
{queue}listen on 127.0.0.1 port {port}
action "local" maildir "{mail}/%{{user.username}}"
match from any for local action "local"
"""
RELAY_DOMAIN = "remote.test"
RELAY_CONFIG = """action "out" relay host smtp://127.0.0.1:{sink}
match from any for domain "{domain}" action "out"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Sink:
    """A loopback SMTP server that accepts every message and counts them: the
    next hop of relay mode.  Speaks just enough ESMTP for the daemon's MTA
    (EHLO with PIPELINING and 8BITMIME, MAIL, RCPT, DATA, RSET, NOOP, QUIT),
    answering commands in order so pipelined groups work (RFC 2920 §3.1).
    Runs its own event loop in a thread so the blocking clients can share
    the process."""

    def __init__(self) -> None:
        self.received = 0
        self.connections = 0
        self._lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise SystemExit("sink did not start")
        assert self._server is not None
        self.port: int = int(self._server.sockets[0].getsockname()[1])

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self._server = self.loop.run_until_complete(
            asyncio.start_server(self._session, "127.0.0.1", 0, backlog=200))
        started.set()
        self.loop.run_forever()

    def count(self) -> int:
        with self._lock:
            return self.received

    async def _session(self, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> None:
        with self._lock:
            self.connections += 1
        writer.write(b"220 sink.bench.test ESMTP\r\n")
        try:
            while line := await reader.readline():
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    writer.write(b"250-sink.bench.test\r\n250-PIPELINING\r\n"
                                 b"250-8BITMIME\r\n250 SIZE 104857600\r\n")
                elif verb == b"DATA":
                    writer.write(b"354 go ahead\r\n")
                    await writer.drain()
                    while (data := await reader.readline()) not in (b".\r\n", b".\n"):
                        if not data:
                            return
                    with self._lock:
                        self.received += 1
                    writer.write(b"250 2.0.0 queued\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 2.0.0 bye\r\n")
                    await writer.drain()
                    return
                else:  # MAIL, RCPT, RSET, NOOP: accept everything
                    writer.write(b"250 2.0.0 Ok\r\n")
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def close(self) -> None:
        """Cancel open sessions (the daemon may hold connections) and stop."""
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()


class SpawnedDaemon:
    """The real daemon (`smtpd -d -f CONF`) in its own session, started on
    `text` as its configuration; killed with its whole group.  Other benches
    (soak.py) build on it."""

    def __init__(self, root: Path, text: str) -> None:
        root.chmod(0o711)  # privilege-dropped processes must traverse it
        self.root = root
        conf = root / "smtpd.conf"
        conf.write_text(text)
        env = {**os.environ, "PYSMTPD_RESOLVER": "127.0.0.1:9"}  # loopback only
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "smtpd", "-d", "-f", str(conf)], cwd=root, env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, start_new_session=True)
        self.lines: list[str] = []
        ready = threading.Event()
        threading.Thread(target=self._read, args=(ready,), daemon=True).start()
        if not ready.wait(30):
            self.kill()
            raise SystemExit("daemon did not start:\n" + "\n".join(self.lines[-30:]))

    def _read(self, ready: threading.Event) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if READY in line:
                ready.set()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


class Daemon(SpawnedDaemon):
    """The benchmark's daemon.  ``queue``: extra ``queue ...`` directives
    (e.g. ``compression``); ``relay_port``: also relay mail for RELAY_DOMAIN
    to 127.0.0.1 there."""

    def __init__(self, root: Path, queue: Sequence[str] = (),
                 relay_port: int | None = None) -> None:
        self.mail = root / "mail"
        self.port = free_port()
        text = CONFIG.format(spool=root / "spool", sock=root / "smtpd.sock",
                             port=self.port, mail=self.mail,
                             queue="".join(f"queue {q}\n" for q in queue))
        if relay_port is not None:
            text += RELAY_CONFIG.format(sink=relay_port, domain=RELAY_DOMAIN)
        super().__init__(root, text)


@dataclass(frozen=True)
class Cell:
    size: int
    conc: int
    sent: int
    failed: int
    accept_s: float
    e2e_s: float
    latencies: tuple[float, ...]

    def row(self) -> str:
        lat = sorted(self.latencies) or [0.0]
        p50 = statistics.median(lat) * 1000
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
        e2e = f"{self.sent / self.e2e_s:9.1f}" if self.e2e_s > 0 else "  timeout"
        return (f"{self.size // 1024:>5} KB {self.conc:>5} {self.sent:>6} {self.failed:>5}"
                f" {self.sent / self.accept_s:9.1f} {e2e} {p50:8.1f} {p99:8.1f}")


HEADER = "  size    conc   sent  fail  accept/s     e2e/s  p50 ms   p99 ms"


def body(size: int, tag: str) -> bytes:
    head = f"Subject: bench {tag}\r\nMessage-ID: <{tag}@bench.test>\r\n\r\n".encode()
    line = b"x" * 76 + b"\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


def count_new(maildir: Path) -> int:
    try:
        return sum(1 for _ in os.scandir(maildir / "new"))
    except FileNotFoundError:
        return 0


MAILS_PER_SESSION = 100  # upstream's session max-mails: the 101st MAIL gets 452 4.5.3


def run_cell(d: Daemon, rcpt: str, delivered: Callable[[], int], size: int, conc: int,
             max_msgs: int, budget: float) -> Cell:
    """``delivered()``: messages at the destination so far (Maildir files or
    messages the sink received)."""
    before = delivered()
    lock = threading.Lock()
    latencies: list[float] = []
    counters = {"sent": 0, "failed": 0, "claimed": 0}
    deadline = time.monotonic() + budget
    payloads = [body(size, f"{size}-{conc}-{i}") for i in range(conc)]

    def client(i: int) -> None:
        s = smtplib.SMTP("127.0.0.1", d.port, timeout=60)
        s.ehlo("bench.test")
        in_session = 0
        try:
            while time.monotonic() < deadline:
                with lock:
                    if counters["claimed"] >= max_msgs:
                        return
                    counters["claimed"] += 1
                if in_session == MAILS_PER_SESSION:  # a new session, as a real client would
                    s.quit()
                    s = smtplib.SMTP("127.0.0.1", d.port, timeout=60)
                    s.ehlo("bench.test")
                    in_session = 0
                in_session += 1
                t = time.monotonic()
                try:
                    s.sendmail("bench@bench.test", [rcpt], payloads[i])
                except smtplib.SMTPResponseException:
                    with lock:
                        counters["failed"] += 1
                    continue
                with lock:
                    latencies.append(time.monotonic() - t)
                    counters["sent"] += 1
        finally:
            s.close()

    t0 = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(conc)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    accept_s = time.monotonic() - t0
    want = before + counters["sent"]
    drain_deadline = time.monotonic() + max(30.0, budget)
    while delivered() < want and time.monotonic() < drain_deadline:
        time.sleep(0.01)
    e2e_s = time.monotonic() - t0 if delivered() >= want else -1.0
    return Cell(size, conc, counters["sent"], counters["failed"], accept_s, e2e_s,
                tuple(latencies))


def pg_queue(stack: contextlib.ExitStack) -> list[str]:
    """`queue` directives for the ``postgres`` backend on a throw-away,
    durable PostgreSQL (fsync and synchronous_commit on, as the fs backend
    fsyncs): tests/servers.py's, stopped when the stack closes."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo's tests/
    from tests.servers import PgServer

    server = PgServer(durable=True).start()
    stack.callback(server.stop)
    return [f'backend postgres "{server.create_database()}"', 'node "bench-node"']


def run_backend(args: argparse.Namespace, backend: str, user: str) -> None:
    with contextlib.ExitStack() as stack:
        queue = list(args.queue) + (pg_queue(stack) if backend == "postgres" else [])
        root = Path(tempfile.mkdtemp(prefix="e2e-bench-"))
        stack.callback(shutil.rmtree, root, ignore_errors=True)
        sink = Sink() if args.mode == "relay" else None
        if sink is not None:
            stack.callback(sink.close)
        d = Daemon(root, queue, sink.port if sink else None)
        stack.callback(d.kill)
        maildir = d.mail / user
        delivered: Callable[[], int]
        if sink is not None:
            rcpt, delivered = f"bench@{RELAY_DOMAIN}", sink.count
        else:
            rcpt, delivered = f"{user}@localhost", lambda: count_new(maildir)
        print(f"mode {args.mode}, queue backend {backend}, daemon pid {d.proc.pid}, "
              f"port {d.port}, rcpt {rcpt}, queue options {args.queue or ['none']}, "
              f"{os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}")
        print(HEADER)
        for size in (int(x) for x in args.sizes.split(",")):
            for conc in (int(x) for x in args.conc.split(",")):
                cell = run_cell(d, rcpt, delivered, size, conc, args.max_msgs, args.budget)
                print(cell.row(), flush=True)
        if sink is not None:
            print(f"sink: {sink.count()} messages over {sink.connections} connections")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--mode", choices=("local", "relay"), default="local",
                    help="deliver to a Maildir, or relay to a loopback SMTP sink")
    ap.add_argument("--queue", action="append", default=[], metavar="OPTION",
                    help="a `queue OPTION` directive for the daemon (repeatable)")
    ap.add_argument("--backends", default="fs",
                    help="queue backends, one daemon each in turn: fs, postgres (issue 14)")
    ap.add_argument("--sizes", default="4096,102400", help="message sizes in bytes")
    ap.add_argument("--conc", default="1,10,50", help="concurrent SMTP clients")
    ap.add_argument("--budget", type=float, default=15.0, help="seconds of sending per cell")
    ap.add_argument("--max-msgs", type=int, default=400, help="messages per cell at most")
    args = ap.parse_args(argv)
    user = pwd.getpwuid(os.getuid()).pw_name
    for backend in args.backends.split(","):
        if backend not in ("fs", "postgres"):
            ap.error(f"unknown queue backend {backend!r}")
        run_backend(args, backend, user)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
