"""What observability costs: end-to-end throughput (bench/e2e_bench.py's
workload) with imsg profiling + the persistent stat backend on versus off,
in one run.  Two daemons, one plain and one with `stats persistent ...
interval 1` and `smtpctl profile imsg`, measured in alternating rounds so
that the shared machine's load drifts over both alike.

    .venv/bin/python bench/observability_bench.py [--rounds 3] [--conc 10]
                                                  [--size 4096] [--max-msgs 300]

Prints each round, the medians and the ratio on/off.  Not a test.
"""

from __future__ import annotations

import argparse
import functools
import os
import pwd
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import e2e_bench


def start(observed: bool) -> tuple[e2e_bench.Daemon, Path]:
    root = Path(tempfile.mkdtemp(prefix="obs-bench-"))
    base = e2e_bench.CONFIG
    if observed:
        # e2e_bench.Daemon writes CONFIG (a format string; the path has no braces)
        e2e_bench.CONFIG = f'stats persistent "{root}/stats.db" interval 1\n' + base
    try:
        d = e2e_bench.Daemon(root)
    finally:
        e2e_bench.CONFIG = base
    if observed:
        out = subprocess.run([sys.executable, "-m", "smtpctl", "-s", str(root / "smtpd.sock"),
                              "profile", "imsg"], capture_output=True, text=True, timeout=20)
        if out.returncode:
            raise SystemExit(f"profile imsg failed: {out.stderr}")
    return d, root


def group_cpu(pgid: int) -> float:
    """CPU seconds of every process in the daemon's group, with reaped
    children (the MDA forks): steadier than msg/s on a loaded shared machine."""
    return sum(proc_cpu(pgid).values())


def proc_cpu(pgid: int) -> dict[str, float]:
    """CPU seconds per process title (smtpd: control, smtpd: queue, ...)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            try:
                title = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")[0].decode()
            except OSError:
                continue
            # utime stime cutime cstime
            out[title] = out.get(title, 0.0) + sum(int(x) for x in fields[11:15]) / tick
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--conc", type=int, default=10)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--max-msgs", type=int, default=300)
    ap.add_argument("--budget", type=float, default=20.0)
    ap.add_argument("--on-first", action="store_true", help="start the observed daemon first")
    ap.add_argument("--aa", action="store_true",
                    help="control run: both daemons plain, to see the bench's own bias")
    args = ap.parse_args(argv)
    user = pwd.getpwuid(os.getuid()).pw_name
    if args.on_first:  # start order is a bias of its own (see --aa)
        first = start(not args.aa)
        daemons = {False: start(False), True: first}
    else:
        daemons = {False: start(False), True: start(not args.aa)}
    rates: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    # the mail path's CPU (every process but control) and control's, per message
    path_cpu: dict[bool, list[float]] = {False: [], True: []}
    ctl_cpu: dict[bool, list[float]] = {False: [], True: []}
    try:
        print(f"{os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}, conc {args.conc}, "
              f"size {args.size}, {args.max_msgs} msgs per cell")
        print("round  mode " + e2e_bench.HEADER + "  cpu ms/msg")
        for n in range(args.rounds):
            for observed in ((False, True) if n % 2 == 0 else (True, False)):
                d, _root = daemons[observed]
                cpu0 = proc_cpu(d.proc.pid)
                cell = e2e_bench.run_cell(d, f"{user}@localhost",
                                          functools.partial(e2e_bench.count_new, d.mail / user),
                                          args.size, args.conc, args.max_msgs, args.budget)
                cpu1 = proc_cpu(d.proc.pid)
                per = {t: (v - cpu0.get(t, 0.0)) * 1000 / max(1, cell.sent)
                       for t, v in cpu1.items()}
                ms_per_msg = sum(per.values())
                ctl = sum(v for t, v in per.items() if "control" in t)
                cpu[observed].append(ms_per_msg)
                ctl_cpu[observed].append(ctl)
                path_cpu[observed].append(ms_per_msg - ctl)
                if cell.e2e_s > 0:
                    rates[observed].append(cell.sent / cell.e2e_s)
                print(f"{n:>5}  {'on ' if observed else 'off'} {cell.row()} {ms_per_msg:8.2f}",
                      flush=True)
        off, on = statistics.median(rates[False]), statistics.median(rates[True])
        print(f"median e2e msg/s: off {off:.1f}, on {on:.1f}, on/off {on / off:.3f}")
        coff, con = statistics.median(cpu[False]), statistics.median(cpu[True])
        print(f"median daemon CPU ms/msg: off {coff:.2f}, on {con:.2f}, on/off {con / coff:.3f}")
        poff, pon = statistics.median(path_cpu[False]), statistics.median(path_cpu[True])
        print(f"  mail path (all but control): off {poff:.2f}, on {pon:.2f}, "
              f"on/off {pon / poff:.3f}")
        print(f"  control: off {statistics.median(ctl_cpu[False]):.3f}, "
              f"on {statistics.median(ctl_cpu[True]):.3f}")
        db = daemons[True][1] / "stats.db"
        if db.exists():
            print(f"stats.db after the run: {db.stat().st_size} bytes")
    finally:
        for d, root in daemons.values():
            d.kill()
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
