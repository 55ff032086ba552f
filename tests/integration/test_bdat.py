"""CHUNKING/BDAT (RFC 3030) through the real daemon: what a BDAT client sends
reaches the Maildir exactly as the same message sent with DATA; refusals,
size, RSET and pipelining; BINARYMIME refused (the LF spool cannot keep it);
relaying to a CHUNKING next hop uses BDAT."""

from __future__ import annotations

import shutil
import smtplib
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.conftest import free_port
from tests.integration.daemon import Daemon, temp_workdir
from tests.integration.smtp_helpers import queued_msgids, raw_connect, read_reply
from tests.integration.test_relay import ThreadedSink, relay_config, wait_for
from tests.mta.sink import SinkConfig

CONFIG = """
smtp max-message-size 2000
listen on 127.0.0.1 port %(port)d
action "local" maildir "%(mail)s/%%{user.username}"
match from any for local action "local"
"""
HEAD = b"EHLO client.test\r\nMAIL FROM:<s@client.test>\r\nRCPT TO:<root@localhost>\r\n"
BIG = b"Subject: big\r\n\r\n" + b"".join(b".%07d line of a big message\r\n" % i
                                          for i in range(25000))
BODY = b"Subject: chunked\r\n\r\nfirst\r\n.\r\n.dot line\r\nQUIT\r\nlast line\r\n"


@dataclass(frozen=True)
class World:
    daemon: Daemon
    mail: Path


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    work = temp_workdir()
    mail = work / "mail"
    mail.mkdir()
    daemon = Daemon(work, CONFIG % {"port": free_port(), "mail": mail})
    try:
        daemon.start()
        yield World(daemon, mail)
    finally:
        daemon.kill_group()
        shutil.rmtree(work, ignore_errors=True)


def bdat(*chunks: bytes) -> bytes:
    out = b""
    for i, chunk in enumerate(chunks):
        last = " LAST" if i == len(chunks) - 1 else ""
        out += f"BDAT {len(chunk)}{last}\r\n".encode() + chunk
    return out


def session(world: World, wire: bytes, replies: int) -> list[tuple[int, list[str]]]:
    """Send ``wire`` in one write after the greeting; read ``replies`` replies."""
    sock = raw_connect(world.daemon.port)
    try:
        assert read_reply(sock)[0] == 220
        sock.sendall(wire)
        return [read_reply(sock) for _ in range(replies)]
    finally:
        sock.close()


def delivered(world: World, msgid: str, timeout: float = 10.0) -> bytes:
    new = world.mail / "root" / "new"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in new.iterdir() if new.is_dir() else []:
            data = path.read_bytes()
            if f" id {msgid}".encode() in data:
                return data
        time.sleep(0.05)
    raise AssertionError(f"message {msgid} not delivered")


def body_of(message: bytes) -> bytes:
    """The stored message after our Received header (its date and id vary)."""
    return message[message.index(b"\nSubject: "):]


def normal(message: bytes) -> bytes:
    """body_of without the Date and Message-ID headers the daemon added."""
    return b"".join(line for line in body_of(message).splitlines(keepends=True)
                    if not line.startswith((b"Date: ", b"Message-ID: ")))


def via_data(world: World, body: bytes) -> bytes:
    with smtplib.SMTP("127.0.0.1", world.daemon.port, timeout=10) as s:
        s.ehlo("client.test")
        s.mail("s@client.test")
        s.rcpt("root@localhost")
        code, text = s.data(body)
        assert code == 250
    return delivered(world, text.split()[1].decode())


def msgid_of(reply: tuple[int, list[str]]) -> str:
    code, lines = reply
    assert code == 250, lines
    return lines[0].split()[1]


def test_single_chunk_same_bytes_as_data(world: World) -> None:
    replies = session(world, HEAD + bdat(BODY) + b"QUIT\r\n", 5)
    assert [code for code, _ in replies] == [250, 250, 250, 250, 221]
    got = delivered(world, msgid_of(replies[3]))
    assert body_of(got).endswith(b"\n\nfirst\n.\n.dot line\nQUIT\nlast line\n")
    # the same message through DATA (smtplib dot-stuffs it) is stored the same
    assert normal(via_data(world, BODY)) == normal(got)
    world.daemon.wait_for(r"smtp message msgid=\w+ size=\d+ nrcpt=1 proto=ESMTP")


def test_several_chunks_pipelined_with_a_line_split_across_chunks(world: World) -> None:
    chunks = (BODY[:7], BODY[7:19], BODY[19:20], BODY[20:])  # [19] is the LF of a CRLF
    wire = HEAD + bdat(*chunks) + b"MAIL FROM:<s@client.test>\r\nRCPT TO:<root@localhost>\r\n"
    wire += bdat(b"Subject: second\r\n\r\nx\r\n", b"") + b"QUIT\r\n"
    replies = session(world, wire, 12)
    texts = [f"{code} {lines[0]}" for code, lines in replies]
    assert texts[3:6] == ["250 2.0.0 7 octets received", "250 2.0.0 12 octets received",
                          "250 2.0.0 1 octets received"]
    assert replies[-1][0] == 221
    first = delivered(world, msgid_of(replies[6]))
    assert body_of(first).endswith(b"\n\nfirst\n.\n.dot line\nQUIT\nlast line\n")
    second = delivered(world, msgid_of(replies[-2]))
    assert b"\nSubject: second\n" in second and second.endswith(b"\nx\n")


def test_too_big_then_rset_and_a_good_message(world: World) -> None:
    big = b"Subject: big\r\n\r\n" + b"x" * 998 + b"\r\n"
    before = set(queued_msgids(world.daemon.spool))
    wire = HEAD + b"BDAT %d\r\n" % len(big) + big + b"BDAT %d\r\n" % len(big) + big
    wire += b"BDAT 6 LAST\r\nRSET\r\n" + b"RSET\r\n" + b"MAIL FROM:<s@client.test>\r\n"
    wire += b"RCPT TO:<root@localhost>\r\n" + bdat(b"Subject: small\r\n\r\nok\r\n")
    replies = session(world, wire, 10)
    assert [f"{c} {lines[0][:5]}" for c, lines in replies[3:]] == [
        "250 2.0.0", "552 5.3.4", "503 5.5.1", "250 2.0.0", "250 2.0.0", "250 2.1.5",
        "250 2.0.0"]
    assert b"\nok\n" in delivered(world, msgid_of(replies[-1]))
    world.daemon.wait_for(r'failed-command command="DATA" result="552 5.3.4')
    time.sleep(0.2)
    assert set(queued_msgids(world.daemon.spool)) <= before  # nothing left behind


def test_rset_between_chunks_discards(world: World) -> None:
    dropped = b"Subject: dropped\r\n\r\n"
    wire = HEAD + b"BDAT %d\r\n" % len(dropped) + dropped + b"RSET\r\nQUIT\r\n"
    replies = session(world, wire, 6)
    assert [c for c, _ in replies] == [250, 250, 250, 250, 250, 221]
    time.sleep(0.5)
    new = world.mail / "root" / "new"
    assert not any(b"Subject: dropped" in p.read_bytes() for p in new.iterdir())


def test_sequence_errors_and_binarymime_refused(world: World) -> None:
    wire = (b"EHLO client.test\r\n" + bdat(b"QUIT\r\n")
            + b"MAIL FROM:<s@client.test> BODY=BINARYMIME\r\n"
            + b"MAIL FROM:<s@client.test>\r\nRCPT TO:<root@localhost>\r\n"
            + b"BDAT 4\r\nab\r\nDATA\r\nRSET\r\nBDAT x\r\n")
    replies = session(world, wire, 9)
    ehlo = replies[0][1]
    assert "CHUNKING" in ehlo and "BINARYMIME" not in ehlo
    assert [f"{c} {lines[0]}" for c, lines in replies[1:]] == [
        "503 5.5.1 Invalid command: Command not allowed at this point.",
        "503 5.5.4 Invalid command arguments: Unsupported option BODY=BINARYMIME",
        "250 2.0.0 Ok", "250 2.1.5 Destination address valid: Recipient ok",
        "250 2.0.0 4 octets received",
        "503 5.5.1 Invalid command: Command not allowed at this point.",
        "250 2.0.0 Reset state",
        "501 5.5.4 Invalid command arguments: BDAT chunk size expected, closing"]


def test_bdat_chunk_arriving_slowly(world: World) -> None:
    sock = raw_connect(world.daemon.port)
    try:
        read_reply(sock)
        sock.sendall(HEAD)
        for _ in range(3):
            read_reply(sock)
        message = b"Subject: slow\r\n\r\n" + b"y" * 100 + b"\r\n"
        sock.sendall(b"BDAT %d LAST\r\n" % len(message))
        for i in range(0, len(message), 40):
            sock.sendall(message[i:i + 40])
            time.sleep(0.05)
        reply = read_reply(sock)
        assert b"y" * 100 in delivered(world, msgid_of(reply))
    finally:
        sock.close()


def test_relay_to_a_chunking_next_hop_uses_bdat(workdir: Path) -> None:
    sink = ThreadedSink(SinkConfig(chunking=True))
    d = Daemon(workdir, relay_config(workdir, f"host smtp://127.0.0.1:{sink.port}")).start()
    try:
        sock = socket.create_connection(("127.0.0.1", d.port), timeout=10)
        try:
            assert read_reply(sock)[0] == 220
            sock.sendall(b"EHLO client.test\r\nMAIL FROM:<root@localhost>\r\n"
                         b"RCPT TO:<far@remote.test>\r\n" + bdat(BODY[:10], BODY[10:]))
            replies = [read_reply(sock) for _ in range(5)]
            assert replies[-1][0] == 250
            # a message of several relay chunks (256 KiB each), sent in 3
            sock.sendall(b"MAIL FROM:<root@localhost>\r\nRCPT TO:<far@remote.test>\r\n"
                         + bdat(BIG[:1000], BIG[1000:400000], BIG[400000:]))
            replies = [read_reply(sock) for _ in range(5)]
            assert replies[-1][0] == 250
        finally:
            sock.close()
        wait_for(lambda: len(sink.sink.messages) == 2)
        got, big = sink.sink.messages
        assert got.chunks and any(c.startswith("BDAT ") for c in sink.sink.commands)
        assert got.content.endswith(b"\n\nfirst\n.\n.dot line\nQUIT\nlast line\n")
        assert b"\r\n..dot" not in got.wire  # BDAT: never dot-stuffed
        assert len(big.chunks) >= 3 and big.content.endswith(
            b"\n\n" + BIG.split(b"\r\n\r\n", 1)[1].replace(b"\r\n", b"\n"))
    finally:
        d.kill_group()
        sink.close()
