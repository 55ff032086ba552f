"""Issue 9 through the real daemon: counters move by exactly what happened,
profiling shows the imsg types that ran, history survives a restart, and the
Prometheus endpoint parses with prometheus_client's own parser."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import free_port
from tests.integration.daemon import Daemon
from tests.integration.queue_helpers import send, show_queue, wait_mails, wait_until

ROOT = "root@localhost"
CONFIG = """
stats persistent "%(work)s/stats.db" interval 1
stats prometheus on 127.0.0.1 port %(prom)d
table vt { "perm@localhost" = "nobody" }
listen on 127.0.0.1 port %(port)d
action "local" maildir "%(work)s/mail/%%{user.username}"
action "perm" mda "%(work)s/perm.sh" virtual <vt>
match from any for rcpt-to "perm@localhost" action "perm"
match from any for local action "local"
"""
PERM_SH = "#!/bin/sh\necho 'no such mailbox here'\nexit 1\n"
# gauges that must be back at their idle value once the daemon is idle
IDLE_ZERO = ("smtp.session", "smtp.session.inet4", "scheduler.envelope",
             "scheduler.envelope.inflight", "scheduler.envelope.incoming",
             "mda.running", "mda.pending", "mda.envelope", "mta.task.running")


def num(stats: dict[str, str], key: str) -> int:
    return int(stats.get(key, "0"))


def idle(d: Daemon) -> dict[str, str] | None:
    s = d.stats()
    return s if show_queue(d) == [] and all(num(s, k) == 0 for k in IDLE_ZERO) else None


def test_counters_profile_history_prometheus(workdir: Path) -> None:
    script = workdir / "perm.sh"
    script.write_text(PERM_SH)
    script.chmod(0o755)
    prom = free_port()
    conf = CONFIG % {"work": workdir, "prom": prom, "port": free_port()}
    d = Daemon(workdir, conf, args=("-T", "profile")).start()
    try:
        before = wait_until("an idle daemon", lambda: idle(d), 10)
        for n in range(3):
            send(d.port, ROOT, [ROOT], f"Subject: ok {n}\n\nbody\n")
        send(d.port, ROOT, ["perm@localhost"], "Subject: doomed\n\nbody\n")
        wait_mails(workdir / "mail" / "root", 4, 15)  # 3 mails and 1 bounce
        time.sleep(0.6)  # stat batches leave every 0.25 s
        after = wait_until("an idle daemon", lambda: idle(d), 10)
        moved = {k: num(after, k) - num(before, k) for k in (
            "scheduler.delivery.ok", "scheduler.delivery.permfail",
            "scheduler.delivery.tempfail", "queue.bounce", "mda.envelope")}
        # 3 local deliveries + the bounce delivered to root; 1 permanent failure
        assert moved == {"scheduler.delivery.ok": 4, "scheduler.delivery.permfail": 1,
                         "scheduler.delivery.tempfail": 0, "queue.bounce": 1,
                         "mda.envelope": 0}, moved
        for key in IDLE_ZERO[:-1]:  # mta.task.running appears with the first relay
            assert key in after and num(after, key) == 0, key
        # group commits and batched removals run outside imsg dispatch: timed alone
        commits = num(after, "queue.commit.batch") - num(before, "queue.commit.batch")
        assert num(after, "queue.commit.flush.count") == num(after, "queue.commit.batch")
        assert 1 <= commits <= 5  # 4 messages and the bounce, some maybe together
        assert num(after, "queue.delete.flush.count") == num(after, "queue.delete.batch") >= 1

        # profiling: the types that ran, with their counts
        profile = d.smtpctl("show", "profile")
        assert profile.returncode == 0, profile.stderr
        rows = {tuple(line.split()[:2]): line.split() for line in profile.stdout.splitlines()[1:]}
        assert int(rows[("queue", "SMTP_MESSAGE_COMMIT")][2]) == 4
        assert int(rows[("parent", "QUEUE_DELIVERY_START")][2]) == 5
        assert int(rows[("lookup", "SMTP_RCPT_CHECK")][2]) == 4
        totals = [float(r[3]) for r in rows.values()]
        assert totals == sorted(totals, reverse=True)

        # Prometheus, as a scraper sees it
        with urllib.request.urlopen(f"http://127.0.0.1:{prom}/metrics", timeout=5) as resp:
            assert resp.headers["Content-Type"].startswith("text/plain; version=")
            text = resp.read().decode()
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        assert fams["smtpd_scheduler_delivery_ok"].samples[0].value == num(after,
                                                                          "scheduler.delivery.ok")
        commits = [s for s in fams["smtpd_imsg_handler_seconds"].samples
                   if s.name.endswith("_count") and s.labels["type"] == "SMTP_MESSAGE_COMMIT"]
        assert [s.value for s in commits] == [4]

        time.sleep(1.2)  # one more sample of the idle values
        hist = d.smtpctl("show", "stats", "--history", "scheduler.delivery.ok", "--since", "5m")
        assert hist.returncode == 0, hist.stderr
        assert hist.stdout.splitlines()[-1].endswith(" 4")
        assert d.stop() == 0

        # a restart: history goes on in the same file, counters and uptime restart
        d.start()
        wait_until("an idle daemon", lambda: idle(d), 10)
        time.sleep(1.2)
        assert num(d.stats(), "scheduler.delivery.ok") == 0
        hist = d.smtpctl("show", "stats", "--history", "scheduler.delivery.ok", "--since", "5m")
        values = [int(line.split()[1]) for line in hist.stdout.splitlines()]
        assert 4 in values and values[-1] == 0, hist.stdout
        up = d.smtpctl("show", "stats", "--history", "uptime", "--since", "5m").stdout
        ups = [int(line.split()[1]) for line in up.splitlines()]
        assert ups.index(0, 1) > 0 if ups[0] != 0 else 0 in ups[1:], ups  # it went back to 0

        # the handlers that ran before the restart are charted from their history
        report = d.smtpctl("report", "--since", "5m")
        assert report.returncode == 0, report.stderr
        assert report.stdout.count("<svg ") == 2
        # no mail since the restart: deliveries are charted from the history alone
        busy = report.stdout.split("<svg ")[2]
        assert busy.count("<polyline") == 6
        assert 'data-series="parent.QUEUE_DELIVERY_START"' in busy
        assert 'data-series="delivered"' in report.stdout
        keys = d.smtpctl("show", "stats", "--history-keys").stdout.splitlines()
        assert "profiling.imsg.queue.SMTP_MESSAGE_COMMIT.count" in keys and "uptime" in keys
    finally:
        d.kill_group()
    assert sorted(p.name for p in workdir.iterdir() if p.name.startswith("stats")) == [
        "stats.db"]  # no journal or WAL side files, even from the chrooted control
