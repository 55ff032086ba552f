"""SMTP load generator: N messages of S bytes over C concurrent sessions,
printing accepted messages/s and the latency of each transaction (MAIL to the
final 250, RFC 2920 pipelining for MAIL/RCPT/DATA).

    .venv/bin/python bench/smtp_bench.py --spawn -n 300 -c 1,10,50 --size 4096
    .venv/bin/python bench/smtp_bench.py --host 127.0.0.1 --port 2525 --rcpt me@example.org

`--spawn` starts `python -m smtpd -d` in a temp dir with a config that accepts
mail for a virtual user (delivered to a Maildir unless `--no-delivery`), and
also prints the CPU seconds and peak RSS of all the daemon's processes from
/proc.  Not a test: the figures depend on the machine.
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
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

READY = "all processes ready"
LISTEN_RE = re.compile(r"listening on \S+ port (\d+)")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

SPAWN_CONFIG = """\
queue path "{dir}/spool"
control socket "{dir}/run/smtpd.sock"
table vusers {{ "{rcpt}" = "vmail" }}
table vbase {{ "vmail" = "{uid}:{gid}:{dir}/vhome" }}
listen on 127.0.0.1 port {port}
action "virt" maildir "{dir}/mail/%{{user.username}}" virtual <vusers> userbase <vbase>
match from any for domain "{domain}" action "virt"
"""


# -- the client ------------------------------------------------------------------

class SmtpFailure(Exception):
    pass


def make_message(size: int, seq: int) -> bytes:
    """A message of about `size` octets on the wire, CRLF lines, no line
    starting with a dot (so no stuffing is needed)."""
    head = (f"From: bench <bench@client.test>\r\nTo: <rcpt@bench.test>\r\n"
            f"Subject: bench message {seq}\r\n"
            f"Message-ID: <bench.{seq}.{time.time_ns()}@client.test>\r\n\r\n").encode()
    line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusm\r\n"
    body = line * max(0, (size - len(head)) // len(line))
    return head + body


async def read_reply(reader: asyncio.StreamReader) -> tuple[int, str]:
    lines: list[str] = []
    while True:
        raw = await reader.readline()
        if not raw.endswith(b"\n"):
            raise SmtpFailure(f"connection closed after {lines!r}")
        text = raw.decode(errors="replace").rstrip("\r\n")
        lines.append(text)
        if text[3:4] != "-":
            return int(text[:3]), "\n".join(lines)


async def expect(reader: asyncio.StreamReader, code: int) -> None:
    got, text = await read_reply(reader)
    if got != code:
        raise SmtpFailure(f"expected {code}, got {text!r}")


@dataclass
class Results:
    latencies: list[float] = field(default_factory=list)  # seconds per accepted message
    setups: list[float] = field(default_factory=list)  # connect to the EHLO reply
    failures: list[str] = field(default_factory=list)


async def session(host: str, port: int, rcpt: str, messages: list[bytes],
                  results: Results) -> None:
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        await expect(reader, 220)
        writer.write(b"EHLO bench.client.test\r\n")
        await expect(reader, 250)
        results.setups.append(time.perf_counter() - t0)
        for msg in messages:
            t0 = time.perf_counter()
            writer.write(f"MAIL FROM:<bench@client.test> SIZE={len(msg)}\r\n"
                         f"RCPT TO:<{rcpt}>\r\nDATA\r\n".encode())
            for code in (250, 250, 354):
                await expect(reader, code)
            writer.write(msg + b".\r\n")
            await expect(reader, 250)
            results.latencies.append(time.perf_counter() - t0)
        writer.write(b"QUIT\r\n")
        await expect(reader, 221)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def run_load(host: str, port: int, rcpt: str, n: int, concurrency: int, size: int,
                   per_session: int) -> tuple[Results, float]:
    results = Results()
    todo = iter(range(n))
    message = make_message(size, 0)

    async def worker() -> None:
        while True:
            batch = [message for _ in zip(range(per_session), todo, strict=False)]
            if not batch:
                return
            try:
                await session(host, port, rcpt, batch, results)
            except (SmtpFailure, OSError) as exc:
                results.failures.append(str(exc))

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results, time.perf_counter() - t0


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values)) - 1))
    return sorted_values[index]


# -- the spawned daemon --------------------------------------------------------------

@dataclass(frozen=True)
class ProcSample:
    cpu_seconds: float  # utime + stime + reaped children's
    rss_bytes: int
    hwm_bytes: int


def group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:
                pids.append(int(entry))
    return pids


def sample(pid: int) -> ProcSample | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    # fields[0] is state (stat field 3): utime..cstime are stat fields 14..17
    ticks = sum(int(x) for x in fields[11:15])
    hwm = re.search(r"VmHWM:\s+(\d+) kB", status)
    rss = int(fields[21]) * PAGE
    return ProcSample(ticks / CLK_TCK, rss, int(hwm.group(1)) * 1024 if hwm else rss)


class Spawned:
    """The daemon in its own process group, with a sampler for /proc figures."""

    def __init__(self, rcpt: str, delivery: bool) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="smtp-bench-"))
        os.chmod(self.dir, 0o711)  # the daemon's unprivileged users must reach it
        if os.geteuid() == 0:
            pw = pwd.getpwnam("nobody")
            uid, gid = pw.pw_uid, pw.pw_gid
        else:
            uid, gid = os.getuid(), os.getgid()
        mail = self.dir / "mail"
        mail.mkdir()
        if os.geteuid() == 0:
            os.chown(mail, uid, gid)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        conf = self.dir / "smtpd.conf"
        conf.write_text(SPAWN_CONFIG.format(dir=self.dir, rcpt=rcpt, uid=uid, gid=gid,
                                            port=self.port, domain=rcpt.partition("@")[2]))
        self.mail = mail
        self.peak_rss = 0
        self.last: dict[int, ProcSample] = {}
        self.titles: dict[int, str] = {}
        args = [sys.executable, "-m", "smtpd", "-d", "-f", str(conf)]
        if not delivery:
            args += ["-P", "mda"]
        self.proc = subprocess.Popen(args, cwd=self.dir, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True)
        self.ready = threading.Event()
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        if not self.ready.wait(30):
            self.stop()
            raise SystemExit("smtpd did not start:\n" + "\n".join(self.log[-30:]))
        if not delivery:
            subprocess.run([sys.executable, "-m", "smtpctl", "-s",
                            str(self.dir / "run" / "smtpd.sock"), "pause", "mda"],
                           capture_output=True, check=False)
        self.sampling = True
        self.sampler = threading.Thread(target=self._sample_loop, daemon=True)
        self.sampler.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log.append(line.rstrip("\n"))
            if READY in line:
                self.ready.set()

    def _sample_loop(self) -> None:
        while self.sampling:
            self.take_sample()
            time.sleep(0.1)

    def take_sample(self) -> None:
        total = 0
        for pid in group_pids(self.proc.pid):
            s = sample(pid)
            if s is not None:
                self.last[pid] = s
                total += s.rss_bytes
                if pid not in self.titles:
                    with contextlib.suppress(OSError):
                        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
                        self.titles[pid] = cmd.decode(errors="replace").removeprefix("smtpd: ")
        self.peak_rss = max(self.peak_rss, total)

    def figures(self) -> tuple[float, int, int]:
        """CPU seconds of every process seen (children reaped by the daemon are
        in their parent's cutime/cstime), peak summed RSS, summed VmHWM."""
        self.take_sample()
        cpu = sum(s.cpu_seconds for s in self.last.values())
        hwm = sum(s.hwm_bytes for s in self.last.values())
        return cpu, self.peak_rss, hwm

    def cpu_by_process(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for pid, s in self.last.items():
            title = self.titles.get(pid, str(pid))
            out[title] = out.get(title, 0.0) + s.cpu_seconds
        return out

    def delivered(self) -> int:
        return sum(1 for _ in self.mail.glob("*/new/*"))

    def stop(self) -> None:
        self.sampling = False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


# -- main ----------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=2525)
    p.add_argument("--spawn", action="store_true", help="start a daemon in a temp dir")
    p.add_argument("--no-delivery", action="store_true",
                   help="with --spawn: pause mda, measure acceptance only")
    p.add_argument("--rcpt", default="alice@bench.test")
    p.add_argument("-n", "--messages", type=int, default=200)
    p.add_argument("-c", "--concurrency", default="10",
                   help="sessions in parallel; a comma list runs one round each")
    p.add_argument("-s", "--size", type=int, default=4096, help="message size in octets")
    p.add_argument("--per-session", type=int, default=1,
                   help="messages sent over one connection")
    ns = p.parse_args(argv)
    rounds = [int(c) for c in ns.concurrency.split(",")]
    daemon = Spawned(ns.rcpt, not ns.no_delivery) if ns.spawn else None
    host, port = (ns.host, daemon.port) if daemon else (ns.host, ns.port)
    try:
        for c in rounds:
            cpu0 = daemon.figures()[0] if daemon else 0.0
            results, wall = asyncio.run(run_load(host, port, ns.rcpt, ns.messages, c,
                                                 ns.size, ns.per_session))
            lat = sorted(results.latencies)
            ms = [1000 * percentile(lat, q) for q in (0.5, 0.9, 0.99)]
            setup = sorted(results.setups)
            setup_ms = [1000 * percentile(setup, q) for q in (0.5, 0.99)]
            print(f"c={c:<3} n={ns.messages} size={ns.size} per-session={ns.per_session}: "
                  f"accepted {len(lat)} in {wall:.2f} s = {len(lat) / wall:.1f} msg/s; "
                  f"latency ms p50={ms[0]:.1f} p90={ms[1]:.1f} p99={ms[2]:.1f}; "
                  f"connect+EHLO ms p50={setup_ms[0]:.1f} p99={setup_ms[1]:.1f}"
                  + (f"; failures {len(results.failures)}: {results.failures[0]}"
                     if results.failures else ""))
            if daemon:
                cpu, peak, hwm = daemon.figures()
                print(f"      daemon cpu {cpu - cpu0:.2f} s this round ({cpu:.2f} s total), "
                      f"peak rss {peak / 2**20:.1f} MiB summed over processes "
                      f"(sum of VmHWM {hwm / 2**20:.1f} MiB)")
        if daemon and not ns.no_delivery:
            deadline = time.monotonic() + 30
            want = ns.messages * len(rounds)
            while daemon.delivered() < want and time.monotonic() < deadline:
                time.sleep(0.2)
            print(f"delivered to Maildir: {daemon.delivered()} of {want}")
        if daemon:
            daemon.take_sample()
            split = sorted(daemon.cpu_by_process().items(), key=lambda kv: -kv[1])
            print("cpu by process (s): " + ", ".join(f"{k} {v:.2f}" for k, v in split))
    finally:
        if daemon:
            daemon.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
