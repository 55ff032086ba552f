"""The queue's acceptance test: SIGKILL the whole daemon under load, again
and again, then let it drain.  Every message that got a 250 is delivered
exactly once (DESIGN.md §4: durable before 250; COMPAT.md §1: exactly once
after a crash for maildir); one that did not may appear, at most once."""

from __future__ import annotations

import collections
import os
import random
import re
import signal
import smtplib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.integration.conftest import basic_config
from tests.integration.daemon import Daemon
from tests.integration.queue_helpers import maildir_files, show_queue, start, wait_until

ROOT = "root@localhost"
CLIENTS = 6
ROUNDS = 4
MSGID_RE = re.compile(rb"^Message-ID: <([^>]+)>", re.MULTILINE | re.IGNORECASE)


@dataclass
class Load:
    """Clients that send numbered messages until told to stop; a message is
    'acked' once its end-of-data got a 250."""

    port: int
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    acked: set[str] = field(default_factory=set)
    tried: set[str] = field(default_factory=set)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)

    def run(self, client: int) -> None:
        n = 0
        while not self.stop.is_set():
            try:
                with smtplib.SMTP("127.0.0.1", self.port, timeout=5) as s:
                    s.ehlo("crash.test")
                    while not self.stop.is_set():
                        n += 1
                        mid = f"c{client}-{n}@crash.test"
                        with self.lock:
                            self.tried.add(mid)
                        body = (f"Subject: crash {mid}\r\nMessage-ID: <{mid}>\r\n\r\n"
                                + f"payload {n}\r\n" * 20)
                        s.sendmail("sender@crash.test", [ROOT], body)
                        with self.lock:
                            self.acked.add(mid)
            except (OSError, smtplib.SMTPException) as exc:
                with self.lock:
                    self.errors[type(exc).__name__] += 1
                time.sleep(0.05)  # daemon down or restarting


def _delivered(maildir: Path) -> collections.Counter[str]:
    seen: collections.Counter[str] = collections.Counter()
    for f in maildir_files(maildir):
        m = MSGID_RE.search(f.read_bytes())
        assert m, f"no Message-ID in {f}"
        seen[m.group(1).decode()] += 1
    return seen


def test_sigkill_under_load_loses_nothing_delivers_once(workdir: Path) -> None:
    _crash_rounds(workdir, lambda d, rnd: d.kill_group())  # the whole group, no warning


def _kill_one_child(d: Daemon, rnd: int) -> None:
    """SIGKILL one single process (issue 10 §3): the parent then stops the
    others in order and exits non-zero; nothing accepted may be lost."""
    victim = ("queue", "smtp", "scheduler", "lookup", "control")[rnd % 5]
    os.kill(d.pids()[f"smtpd: {victim}"], signal.SIGKILL)
    assert d.proc is not None
    assert d.proc.wait(timeout=10) != 0
    d.kill_group()


def test_sigkill_of_each_single_child_loses_nothing(workdir: Path) -> None:
    _crash_rounds(workdir, _kill_one_child, rounds=5)


def _crash_rounds(workdir: Path, kill: Callable[[Daemon, int], None],
                  rounds: int = ROUNDS) -> None:
    seed = int(os.environ.get("CRASH_SEED", time.time_ns() % 10**6))
    rng = random.Random(seed)
    d = Daemon(workdir, basic_config(workdir))
    start(d)
    load = Load(d.port)
    threads = [threading.Thread(target=load.run, args=(i,), daemon=True)
               for i in range(CLIENTS)]
    try:
        for t in threads:
            t.start()
        for rnd in range(rounds):
            if rnd:
                start(d)
            time.sleep(rng.uniform(0.8, 2.5))
            kill(d, rnd)
        load.stop.set()
        for t in threads:
            t.join(10)
        with load.lock:
            acked, tried = set(load.acked), set(load.tried)
        assert len(acked) >= 10, (seed, len(acked), load.errors)  # the load did run

        start(d)
        maildir = d.maildir / "root"

        def drained() -> bool:
            # files only: an empty message directory left by a kill between
            # unlink and rmdir is test_crash_spool.py's business
            return (show_queue(d) == [] and not any((d.spool / "queue").glob("*/*/*"))
                    and len(_delivered(maildir)) >= len(acked))
        try:
            wait_until(f"the queue to drain (seed {seed})", drained, 30, 0.2)
        except AssertionError as exc:
            queue = [str(q) for q in show_queue(d)[:5]]
            spool = sorted(str(p.relative_to(d.spool)) for p in d.spool.rglob("*")
                           if p.parent != d.spool and p.parent.parent != d.spool)
            raise AssertionError(f"{exc}: {len(acked)} acked, "
                                 f"{len(_delivered(maildir))} delivered; queue {queue}; "
                                 f"spool {spool[:40]}; log:\n{d.log_text()[-3000:]}") from None
        seen = _delivered(maildir)
        lost = sorted(acked - set(seen))
        twice = sorted(m for m, c in seen.items() if c > 1)
        unknown = sorted(set(seen) - tried)
        assert not lost, f"seed {seed}: {len(lost)} acked messages lost: {lost[:10]}"
        assert not twice, f"seed {seed}: delivered more than once: {twice[:10]}"
        assert not unknown, unknown
        # what did not get a 250 may or may not be there: just report the split
        print(f"seed {seed}: {len(acked)} acked, {len(tried)} tried, "
              f"{len(seen)} delivered, errors {dict(load.errors)}")
    finally:
        load.stop.set()
        d.kill_group()
