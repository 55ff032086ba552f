"""A large queue through the real daemon: start-up, scheduler memory, and the
streaming of `smtpctl show queue` (issue 11, item 3).

    .venv/bin/python bench/queue_scale_bench.py 1000000          # as root
    .venv/bin/python bench/queue_scale_bench.py 100000 --rcpts 20 --keep

1. Writes a spool of N envelopes (--rcpts per message, 10 by default) in the
   fs layout (queue/<bb>/<msgid>/message and one file per envelope, the
   envelope codec of smtpd.queue.envelope), as a spool left by a relay whose
   next hops are down: MTA envelopes, half of them already retried.  Files
   are written without fsync (it is test data) and owned by the queue user.
2. Starts `smtpd -d -P mta -P mda` on it (nothing leaves) and reports the
   time until the queue has walked the spool ("N envelopes loaded") and
   until the scheduler holds all N (its `scheduler.envelope` stat), and the
   RSS of every process then; for the scheduler also bytes per envelope
   above its RSS on an empty spool (measured first, same build).
3. Runs `smtpctl show queue` into a pipe and reports envelopes/s, the time
   to the first line, and the peak RSS of queue, scheduler, control and
   smtpctl sampled during the listing: streamed, these stay flat.

Needs root (the daemon drops to _smtpd/_smtpq as in production).  Not a
test: the figures depend on the machine; the spool takes about 5 GB per
million envelopes on ext4 (4 KiB per file).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from smtpd.queue.envelope import DeliveryType, Envelope, dump_envelope  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")
NOW = int(time.time())


def rss(pid: int) -> int:
    """Resident bytes of one process, 0 if gone."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def write_spool(spool: Path, n: int, rcpts: int) -> float:
    """N envelopes; returns seconds taken."""
    q = pwd.getpwnam("_smtpq")
    uid, gid = q.pw_uid, q.pw_gid
    t0 = time.perf_counter()
    queue = spool / "queue"
    for sub in ("queue", "incoming", "corrupt", "purge", "temporary"):
        (spool / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chown(spool / sub, uid, gid)
    body = (b"Received: from client.test (client.test [192.0.2.1])\n"
            b"From: sender@client.test\nSubject: parked\n\n" + b"x" * 2000 + b"\n")
    done, msgid = 0, 0x10000000
    while done < n:
        msgid += 1
        bucket = queue / f"{msgid >> 24:02x}"
        if not bucket.is_dir():
            bucket.mkdir(mode=0o700)
            os.chown(bucket, uid, gid)
        mdir = bucket / f"{msgid:08x}"
        mdir.mkdir(mode=0o700)
        os.chown(mdir, uid, gid)
        _write(mdir / "message", body, uid, gid)
        for j in range(min(rcpts, n - done)):
            evpid = (msgid << 32) | (j + 1)
            retried = (msgid + j) & 1
            env = Envelope(evpid=evpid, type=DeliveryType.MTA, dispatcher="out",
                           sender="sender@client.test", rcpt=f"user{j}@down{msgid % 97}.test",
                           dest=f"user{j}@down{msgid % 97}.test", ctime=NOW - 3600,
                           ttl=4 * 86400, smtpname="mx.bench.test", helo="client.test",
                           hostname="client.test", sockaddr="192.0.2.1",
                           retry=3 if retried else 0, lasttry=NOW - 600 if retried else 0,
                           errorline="421 4.4.2 connection timed out" if retried else "")
            _write(mdir / f"{evpid:016x}", dump_envelope(env), uid, gid)
            done += 1
        if msgid % 10000 == 0:
            print(f"  ... {done} envelopes written", file=sys.stderr)
    return time.perf_counter() - t0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _write(path: Path, data: bytes, uid: int, gid: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fchown(fd, uid, gid)
    finally:
        os.close(fd)


class Daemon:
    def __init__(self, work: Path, spool: Path) -> None:
        self.work = work
        self.sock = work / "smtpd.sock"
        conf = work / "smtpd.conf"
        conf.write_text(f'queue path "{spool}"\ncontrol socket "{self.sock}"\n'
                        f"listen on 127.0.0.1 port {free_port()}\n"
                        'action "out" relay\nmatch from any for any action "out"\n')
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "smtpd", "-d", "-P", "mta", "-P", "mda", "-f", str(conf)],
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.loaded_at: float | None = None
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if "envelopes loaded from the spool" in line and self.loaded_at is None:
                self.loaded_at = time.perf_counter()
            if "smtp connected" not in line:
                self.lines.append(line.rstrip())

    def pids(self) -> dict[str, int]:
        out = {}
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    argv0 = Path(entry.path, "cmdline").read_bytes().split(b"\0")[0].decode()
                    if argv0.startswith("smtpd: ") and os.getpgid(int(entry.name)) == self.proc.pid:
                        out[argv0.removeprefix("smtpd: ")] = int(entry.name)
        return out

    def smtpctl(self, *words: str) -> str:
        return subprocess.run([sys.executable, "-m", "smtpctl", "-s", str(self.sock), *words],
                              cwd=REPO, capture_output=True, text=True, timeout=600).stdout

    def scheduled(self) -> int:
        for line in self.smtpctl("show", "stats").splitlines():
            if line.startswith("scheduler.envelope="):
                return int(line.split("=", 1)[1])
        return -1

    def wait_scheduled(self, n: int, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("smtpd exited:\n" + "\n".join(self.lines[-20:]))
            if self.loaded_at is not None and self.scheduled() >= n:
                return time.perf_counter() - self.started
            time.sleep(0.2)
        raise RuntimeError(f"scheduler did not reach {n} envelopes:\n"
                           + "\n".join(self.lines[-20:]))

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def show_queue(d: Daemon, n: int) -> dict[str, float]:
    """Time `smtpctl show queue` into a pipe, sampling RSS while it runs."""
    pids = d.pids()
    peaks = dict.fromkeys(("queue", "scheduler", "control", "smtpctl"), 0)
    t0 = time.perf_counter()
    client = subprocess.Popen([sys.executable, "-m", "smtpctl", "-s", str(d.sock), "show",
                               "queue"], cwd=REPO, stdout=subprocess.PIPE, text=True)
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            for name in ("queue", "scheduler", "control"):
                peaks[name] = max(peaks[name], rss(pids[name]))
            peaks["smtpctl"] = max(peaks["smtpctl"], rss(client.pid))
    threading.Thread(target=sample, daemon=True).start()
    assert client.stdout is not None
    first = None
    lines = 0
    for _line in client.stdout:
        if first is None:
            first = time.perf_counter() - t0
        lines += 1
    client.wait()
    total = time.perf_counter() - t0
    stop.set()
    if lines != n:
        raise RuntimeError(f"show queue printed {lines} lines for {n} envelopes")
    return {"seconds": total, "first_line_s": first or 0.0, "per_s": lines / total,
            **{f"peak_rss_{k}": v for k, v in peaks.items()}}


def mib(b: float) -> str:
    return f"{b / 2**20:.1f} MiB"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("envelopes", type=int, nargs="?", default=100_000)
    ap.add_argument("--rcpts", type=int, default=10, help="envelopes per message")
    ap.add_argument("--keep", action="store_true", help="keep the spool")
    ap.add_argument("--timeout", type=float, default=3600)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root: the daemon drops privileges as in production", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="queue-scale-"))
    os.chmod(work, 0o711)
    try:
        empty = work / "empty-spool"
        empty.mkdir(mode=0o711)
        d = Daemon(work, empty)
        try:
            d.wait_scheduled(0, 60)
            base = rss(d.pids()["scheduler"])
        finally:
            d.stop()
        spool = work / "spool"
        spool.mkdir(mode=0o711)
        print(f"writing {args.envelopes} envelopes ({args.rcpts} per message)...",
              file=sys.stderr)
        wrote = write_spool(spool, args.envelopes, args.rcpts)
        print(f"spool: {args.envelopes} envelopes in {args.envelopes // args.rcpts} messages, "
              f"written in {wrote:.0f} s")
        with contextlib.suppress(OSError):  # drop the page cache: a cold start
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
        d = Daemon(work, spool)
        try:
            ready = d.wait_scheduled(args.envelopes, args.timeout)
            walked = (d.loaded_at or 0) - d.started
            pids = d.pids()
            sched = rss(pids["scheduler"])
            print(f"start-up: queue walked the spool in {walked:.1f} s, scheduler held all "
                  f"{args.envelopes} after {ready:.1f} s "
                  f"({args.envelopes / ready:,.0f} envelopes/s)")
            print(f"scheduler RSS {mib(sched)} ({mib(base)} empty): "
                  f"{(sched - base) / args.envelopes:.0f} bytes/envelope")
            print("RSS after loading: " + ", ".join(
                f"{name} {mib(rss(pid))}" for name, pid in sorted(pids.items())))
            got = show_queue(d, args.envelopes)
            print(f"show queue: {args.envelopes} lines in {got['seconds']:.1f} s "
                  f"({got['per_s']:,.0f} envelopes/s), first line after "
                  f"{got['first_line_s']:.2f} s")
            print("peak RSS during show queue: " + ", ".join(
                f"{k.removeprefix('peak_rss_')} {mib(v)}" for k, v in got.items()
                if k.startswith("peak_rss_")))
        finally:
            d.stop()
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
