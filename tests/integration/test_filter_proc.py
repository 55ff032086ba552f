"""proc-exec filters through the real daemon: a filter written in plain
Python by the test speaks smtpd-filters(7) unchanged (mail-from decisions,
data-line rewriting, reports); killing it mid-session is survived, logged,
and the filter is started again (issue 13)."""

from __future__ import annotations

import os
import shutil
import signal
import smtplib
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.conftest import free_port
from tests.integration.daemon import Daemon, group_alive, temp_workdir
from tests.integration.smtp_helpers import raw_connect, read_reply

FILTER = Path(__file__).resolve().parent.parent / "filter" / "pyfilter.py"

CONFIG = """
filter "py" proc-exec "%(python)s %(script)s"
listen on 127.0.0.1 port %(port)d filter "py"
action "local" maildir "%(mail)s/%%{user.username}"
match from any for local action "local"
"""


@dataclass(frozen=True)
class World:
    daemon: Daemon
    port: int
    mail: Path
    script: Path


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    work = temp_workdir()
    script = work / "pyfilter.py"
    shutil.copy(FILTER, script)
    os.chmod(script, 0o755)
    port = free_port()
    # the system interpreter: the filter runs as _smtpd, which may not reach the venv's
    python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
    daemon = Daemon(work, CONFIG % {"python": python, "script": script,
                                    "port": port, "mail": work / "mail"})
    try:
        daemon.start()
        daemon.wait_for(r"filter py ready", 20)
        yield World(daemon, port, work / "mail", script)
    finally:
        daemon.kill_group()
        shutil.rmtree(work, ignore_errors=True)


def delivered(mail: Path, marker: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in mail.glob("*/new/*"):
            text = path.read_text(errors="replace")
            if marker in text:
                return text
        time.sleep(0.05)
    raise AssertionError(f"no delivered message with {marker!r}")


def filter_pids(world: World) -> list[int]:
    assert world.daemon.proc is not None
    found = []
    for pid in group_alive(world.daemon.proc.pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if str(world.script).encode() in cmdline:
            found.append(pid)
    return found


def test_filter_decides_mail_from(world: World) -> None:
    with smtplib.SMTP("127.0.0.1", world.port, timeout=10) as client:
        client.ehlo("client.test")
        assert client.mail("blocked@x.test") == (550, b"5.7.1 blocked by pyfilter")
        assert client.mail("ok@x.test")[0] == 250


def test_data_lines_are_rewritten(world: World) -> None:
    body = ["Subject: hello", "From: <ok@x.test>", "", "first line",
            ".a line that starts with a dot", "last | with a pipe"]
    with smtplib.SMTP("127.0.0.1", world.port, timeout=10) as client:
        client.ehlo("client.test")
        client.sendmail("ok@x.test", ["root"], "\r\n".join(body).encode() + b"\r\n")
    text = delivered(world.mail, "first line")
    assert "Subject: [filtered] hello" in text
    assert "X-PyFilter: seen" in text
    assert "\n.a line that starts with a dot\n" in text  # dot-stuffing undone once
    assert "last | with a pipe" in text
    # reports reached the filter (it logs them on stderr, the parent logs that)
    world.daemon.wait_for(r"filter py: report 0\.7 link-connect [0-9a-f]{16}")
    world.daemon.wait_for(r"filter py: report 0\.7 tx-begin")


def test_bdat_chunks_are_filtered_too(world: World) -> None:
    sock = raw_connect(world.port)
    try:
        read_reply(sock)
        sock.sendall(b"EHLO client.test\r\n")
        assert "CHUNKING" in read_reply(sock)[1]
        part1 = b"Subject: chunked\r\n\r\nbdat bo"
        part2 = b"dy line\r\n"
        sock.sendall(b"MAIL FROM:<ok@x.test>\r\nRCPT TO:<root>\r\n"
                     + b"BDAT %d\r\n" % len(part1) + part1
                     + b"BDAT %d LAST\r\n" % len(part2) + part2)
        assert [read_reply(sock)[0] for _ in range(4)] == [250, 250, 250, 250]
    finally:
        sock.close()
    text = delivered(world.mail, "bdat body line")
    assert "Subject: [filtered] chunked" in text and "X-PyFilter: seen" in text


def test_killed_filter_is_survived_and_restarted(world: World) -> None:
    sock = raw_connect(world.port)
    try:
        assert read_reply(sock)[0] == 220
        sock.sendall(b"EHLO client.test\r\n")
        assert read_reply(sock)[0] == 250
        sock.sendall(b"MAIL FROM:<ok@x.test>\r\n")
        assert read_reply(sock)[0] == 250
        pids = filter_pids(world)
        assert pids
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        world.daemon.wait_for(r"filter py \(pid \d+\) killed by signal SIGKILL|"
                              r"filter py \(pid \d+\) exited")
        world.daemon.wait_for(r"filter py down")  # the smtp side saw it go
        sock.sendall(b"RCPT TO:<root>\r\n")
        code, lines = read_reply(sock)
        assert (code, lines) == (421, ["4.3.0 Temporary failure, try again later"])
    finally:
        sock.close()
    # restarted after its backoff; the daemon kept running throughout
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if world.daemon.log_text().count("filter py ready") >= 2:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("filter not restarted:\n" + world.daemon.log_text()[-3000:])
    assert world.daemon.proc is not None and world.daemon.proc.poll() is None
    with smtplib.SMTP("127.0.0.1", world.port, timeout=10) as client:
        client.ehlo("client.test")
        client.sendmail("ok@x.test", ["root"], b"Subject: again\r\n\r\nafter restart\r\n")
    assert "Subject: [filtered] again" in delivered(world.mail, "after restart")


def test_stop_ends_the_filters_too(world: World) -> None:
    # last in this module: stops the shared daemon, then looks for leftovers
    # before the fixture's group kill could hide them
    proc = world.daemon.proc
    assert proc is not None and filter_pids(world)
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(10) == 0
    assert "did not stop" not in world.daemon.log_text()
    assert not filter_pids(world)
