"""`smtp rate` through the real daemon: connections, messages and recipients
per client address get 4xx replies past their limit, and log why."""

from __future__ import annotations

import smtplib
import socket
from pathlib import Path

import pytest

from tests.integration.conftest import basic_config
from tests.integration.daemon import Daemon


def test_rates_per_address(workdir: Path) -> None:
    conf = ("smtp rate messages 2 per 1h\nsmtp rate recipients 3 per 1h\n"
            "smtp rate connections 4 per 1h\n" + basic_config(workdir))
    d = Daemon(workdir, conf, args=("-P", "mda")).start()
    try:
        with smtplib.SMTP("127.0.0.1", d.port, timeout=10) as s:
            s.sendmail("a@example.org", ["root@localhost", "root@localhost"], b"Subject: 1\r\n\r\nx\r\n")
            # one more recipient is allowed this hour, the second is not
            refused = s.sendmail("a@example.org", ["root@localhost", "nobody@localhost"],
                                 b"Subject: 2\r\n\r\nx\r\n")
            assert refused == {"nobody@localhost": (451, b"4.7.1 Rate limit exceeded for recipients, try again later")}
            with pytest.raises(smtplib.SMTPSenderRefused) as err:
                s.sendmail("a@example.org", ["root@localhost"], b"Subject: 3\r\n\r\nx\r\n")
            assert err.value.smtp_code == 451
        d.wait_for(r"rate-limit kind=messages key=ip:127.0.0.1")
        # 1 connection so far (plus control's none): 3 more, then refused
        for _ in range(3):
            with smtplib.SMTP("127.0.0.1", d.port, timeout=10) as s:
                assert s.noop()[0] == 250
        with socket.create_connection(("127.0.0.1", d.port), timeout=10) as c:
            assert c.recv(512).startswith(b"421 4.7.0 Too many connections")
        assert d.proc is not None and d.proc.poll() is None
    finally:
        d.kill_group()
