"""The queue's start-up recovery (empty incoming/, then load the spool) must
not race with the first SMTP transaction (DESIGN.md §1 "Startup without
races")."""

from __future__ import annotations

from pathlib import Path

from tests.integration.conftest import basic_config
from tests.integration.daemon import Daemon
from tests.integration.queue_helpers import read_mail, send, wait_mails


def test_first_message_while_queue_not_live(workdir: Path) -> None:
    # The scheduler starts 1.5 s late: the queue has announced READY (smtp
    # accepts and sends SMTP_MESSAGE_CREATE) but is not live yet, so the
    # queue holds the request until the scheduler is READY.
    d = Daemon(workdir, basic_config(workdir),
               env={"PYSMTPD_TEST_START_DELAY": "scheduler=1.5"})
    d.start(wait_ready=False)
    try:
        d.wait_for(r"listening on", 10)
        msgid = send(d.port, "root@localhost", ["root@localhost"],
                     "Subject: early bird\n\nfirst\n")
        files = wait_mails(d.maildir / "root", 1, 10)
        assert read_mail(files[0])["Subject"] == "early bird"
        assert f"id {msgid}" in files[0].read_text()
        d.wait_for(r"envelopes loaded from the spool", 5)
        assert "recovered: 1 incoming" not in d.log_text()
    finally:
        d.kill_group()
