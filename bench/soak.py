"""A bounded soak (issue 10 §7): mail at high concurrency over loopback while
smtpctl runs `show queue`, `show stats` and pause/resume of mda and smtp, then
a check that every accepted message was delivered exactly once.

    .venv/bin/python bench/soak.py [--duration 60] [--conc 50] [--size 2048]

Spawns its own daemon in a temporary directory (loopback port, temp spool,
Maildir delivery to the invoking user) and kills its process group at the
end.  The run is capped at 10 minutes.  Prints: messages sent, accepted (250),
refused (4xx/5xx or 421 while smtp was paused), delivered, lost (accepted but
not delivered: must be 0), duplicated, peak RSS per process, p50/p99 accept
latency and smtpctl command latency.  Exit status 1 if anything was lost.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import re
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/e2e_bench.py
from e2e_bench import SpawnedDaemon

MAX_DURATION = 600.0
LISTEN_RE = re.compile(r"listening on \S+ port (\d+)")
MSGID_RE = re.compile(rb"^Message-ID: <(soak-[0-9a-f-]+)@soak\.test>", re.M | re.I)
CONFIG = """queue path "{spool}"
control socket "{sock}"
listen on 127.0.0.1 port {port}
action "local" maildir "{mail}/%{{user.username}}"
match from any for local action "local"
"""
MAILS_PER_SESSION = 100


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


class Daemon(SpawnedDaemon):
    def __init__(self, root: Path) -> None:
        self.mail = root / "mail"
        self.sock = root / "smtpd.sock"
        self.port = free_port()
        super().__init__(root, CONFIG.format(spool=root / "spool", sock=self.sock,
                                             port=self.port, mail=self.mail))

    def smtpctl(self, *words: str) -> tuple[int, str]:
        done = subprocess.run([sys.executable, "-m", "smtpctl", "-s", str(self.sock), *words],
                              capture_output=True, text=True, timeout=60)
        return done.returncode, done.stdout + done.stderr

    def group(self) -> dict[int, str]:
        """pid -> process title for the daemon's process group."""
        found: dict[int, str] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[2]) != self.proc.pid:
                    continue
                title = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")[0]
            except (OSError, IndexError, ValueError):
                continue
            found[int(entry)] = title.decode(errors="replace")
        return found



def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    sent: int = 0
    accepted: set[str] = field(default_factory=set)
    refused: Counter[int] = field(default_factory=Counter)
    greetings_refused: int = 0  # 421 instead of 220 (smtp paused)
    errors: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    ctl_latencies: list[float] = field(default_factory=list)
    ctl_failures: list[str] = field(default_factory=list)
    peak_rss: dict[str, int] = field(default_factory=dict)


def message(tag: str, size: int) -> bytes:
    head = f"Subject: soak\r\nMessage-ID: <{tag}@soak.test>\r\n\r\n".encode()
    line = b"y" * 76 + b"\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


def client(d: Daemon, n: int, rcpt: str, size: int, stop: threading.Event, t: Tally) -> None:
    s: smtplib.SMTP | None = None
    in_session = 0
    seq = 0
    while not stop.is_set():
        try:
            if s is None or in_session >= MAILS_PER_SESSION:
                if s is not None:
                    with contextlib.suppress(smtplib.SMTPException, OSError):
                        s.quit()
                s = smtplib.SMTP("127.0.0.1", d.port, timeout=60)
                s.ehlo("soak.test")
                in_session = 0
            seq += 1
            tag = f"soak-{n:x}-{seq:x}"
            with t.lock:
                t.sent += 1
            start = time.monotonic()
            in_session += 1
            s.sendmail("soak@soak.test", [rcpt], message(tag, size))
            with t.lock:
                t.latencies.append(time.monotonic() - start)
                t.accepted.add(tag)
        except smtplib.SMTPConnectError:
            with t.lock:
                t.greetings_refused += 1
            s = None
            time.sleep(0.2)
        except smtplib.SMTPResponseException as exc:
            with t.lock:
                t.refused[exc.smtp_code] += 1
            if exc.smtp_code == 421:  # paused or closing: the session is over
                s = None
                time.sleep(0.2)
        except (smtplib.SMTPException, OSError) as exc:
            with t.lock:
                t.errors[type(exc).__name__] += 1
            s = None
            time.sleep(0.2)
    if s is not None:
        with contextlib.suppress(smtplib.SMTPException, OSError):
            s.quit()


CTL_CYCLES = {
    "full": (("show", "queue"), ("show", "stats"), ("pause", "mda"), ("show", "queue"),
             ("resume", "mda"), ("pause", "smtp"), ("show", "stats"), ("resume", "smtp")),
    "nosmtp": (("show", "queue"), ("show", "stats"), ("pause", "mda"), ("show", "queue"),
               ("resume", "mda"), ("show", "stats")),
    "show": (("show", "queue"), ("show", "stats")),
}


def controller(d: Daemon, cycle: tuple[tuple[str, ...], ...], interval: float,
               stop: threading.Event, t: Tally) -> None:
    i = 0
    while not stop.is_set():
        words = cycle[i % len(cycle)]
        i += 1
        start = time.monotonic()
        status, out = d.smtpctl(*words)
        with t.lock:
            t.ctl_latencies.append(time.monotonic() - start)
            if status != 0:
                t.ctl_failures.append(f"{' '.join(words)}: {out.strip()[:200]}")
        stop.wait(interval)
    for words in (("resume", "smtp"), ("resume", "mda")):  # leave nothing paused
        d.smtpctl(*words)


def sampler(d: Daemon, stop: threading.Event, t: Tally) -> None:
    while not stop.wait(0.5):
        for pid, title in d.group().items():
            kb = rss_kb(pid)
            with t.lock:
                t.peak_rss[title] = max(t.peak_rss.get(title, 0), kb)


def delivered(maildir: Path) -> Counter[str]:
    seen: Counter[str] = Counter()
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(maildir / "new"):
            with open(entry.path, "rb") as f:
                m = MSGID_RE.search(f.read(4096))
            if m:
                seen[m.group(1).decode()] += 1
    return seen


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of load (max 600)")
    ap.add_argument("--conc", type=int, default=50, help="concurrent SMTP clients")
    ap.add_argument("--size", type=int, default=2048, help="message size in bytes")
    ap.add_argument("--ctl-interval", type=float, default=0.5, help="seconds between smtpctl")
    ap.add_argument("--ctl", choices=sorted(CTL_CYCLES), default="full",
                    help="smtpctl commands cycled: full (show, pause/resume mda and smtp), "
                         "nosmtp (smtp never paused) or show")
    ap.add_argument("--drain", type=float, default=120.0, help="seconds to wait for delivery")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args(argv)
    duration = min(args.duration, MAX_DURATION)
    user = pwd.getpwuid(os.getuid()).pw_name
    root = Path(tempfile.mkdtemp(prefix="pysmtpd-soak-"))
    d = Daemon(root)
    t = Tally()
    stop, stop_ctl = threading.Event(), threading.Event()
    try:
        threads = [threading.Thread(target=client, args=(d, n, user, args.size, stop, t))
                   for n in range(args.conc)]
        threads.append(threading.Thread(target=controller,
                                        args=(d, CTL_CYCLES[args.ctl], args.ctl_interval,
                                              stop_ctl, t)))
        rss = threading.Thread(target=sampler, args=(d, stop_ctl, t), daemon=True)
        t0 = time.monotonic()
        for th in threads:
            th.start()
        rss.start()
        time.sleep(duration)
        stop.set()
        for th in threads[:-1]:
            th.join()
        load_s = time.monotonic() - t0
        stop_ctl.set()
        threads[-1].join()
        # every accepted message must reach the Maildir exactly once
        maildir = d.mail / user
        deadline = time.monotonic() + args.drain
        while time.monotonic() < deadline:
            got = delivered(maildir)
            if set(t.accepted) <= set(got):
                break
            time.sleep(0.5)
        drain_s = time.monotonic() - t0 - load_s
        got = delivered(maildir)
        lost = sorted(set(t.accepted) - set(got))
        dups = sum(1 for n in got.values() if n > 1)
        alive = d.proc.poll() is None
        _status, queue = d.smtpctl("show", "queue")
        report(t, load_s, drain_s, len(got), lost, dups, args, alive,
               len(queue.strip().splitlines()), d)
        return 1 if lost or dups or not alive else 0
    finally:
        stop.set()
        stop_ctl.set()
        d.kill()
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def report(t: Tally, load_s: float, drain_s: float, delivered_n: int, lost: list[str],
           dups: int, args: argparse.Namespace, alive: bool, queued: int, d: Daemon) -> None:
    lat = t.latencies
    print(f"soak: {args.conc} clients, {args.size} B messages, {load_s:.0f} s of load, "
          f"smtpctl ({args.ctl}) every {args.ctl_interval} s")
    print(f"  sent        {t.sent}")
    print(f"  accepted    {len(t.accepted)}  ({len(t.accepted) / load_s:.1f}/s)")
    print(f"  refused     {sum(t.refused.values())}  {dict(t.refused)} (of those sent)")
    print(f"  greetings refused {t.greetings_refused} (421 while smtp was paused)")
    print(f"  io errors   {sum(t.errors.values())}  {dict(t.errors)}")
    print(f"  delivered   {delivered_n}  (drained {drain_s:.1f} s after the load)")
    print(f"  lost        {len(lost)}  {lost[:5]}")
    print(f"  duplicated  {dups}")
    print(f"  still queued {queued}   daemon alive: {alive}")
    print(f"  accept latency p50 {percentile(lat, 0.5) * 1000:.1f} ms, "
          f"p99 {percentile(lat, 0.99) * 1000:.1f} ms, max {max(lat, default=0) * 1000:.1f} ms")
    ctl = t.ctl_latencies
    print(f"  smtpctl     {len(ctl)} commands, {len(t.ctl_failures)} failed, "
          f"p99 {percentile(ctl, 0.99) * 1000:.0f} ms")
    for failure in t.ctl_failures[:5]:
        print(f"    {failure}")
    print("  peak RSS")
    for title, kb in sorted(t.peak_rss.items()):
        print(f"    {title:<22} {kb / 1024:7.1f} MiB")
    errors = [line for line in d.lines if "Traceback" in line or "fatal" in line.lower()]
    print(f"  daemon errors in log: {len(errors)}")


if __name__ == "__main__":
    sys.exit(main())
