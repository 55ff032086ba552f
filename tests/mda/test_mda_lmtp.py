from __future__ import annotations

import io
import socket
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mdatest_util import req_factory

from smtpd.mda import deliver
from smtpd.mda.lmtp import (
    DotStuffer,
    LmtpError,
    ReplyParser,
    lmtp_transaction,
    parse_destination,
)
from smtpd.mda.types import DeliveryMethod, DeliveryStatus

# recipient local part -> (RCPT reply, reply after DATA)
BEHAVIOUR = {
    "ok": ("250 2.1.5 OK", "250 2.0.0 <ok@x> Saved"),
    "full": ("250 2.1.5 OK", "452 4.2.2 <full@x> Mailbox full"),
    "gone": ("250 2.1.5 OK", "550 5.1.1 <gone@x> No such user"),
    "norcpt": ("550 5.1.1 Unknown user", ""),
    "later": ("450 4.2.1 Try later", ""),
}


class _Handler(socketserver.StreamRequestHandler):
    server: Any

    def handle(self) -> None:
        srv = self.server
        w = self.wfile.write
        w(b"220 lmtp.test LMTP ready\r\n")
        rcpts: list[str] = []
        while True:
            line = self.rfile.readline()
            if not line:
                return
            cmd = line.decode().rstrip("\r\n")
            srv.log.append(cmd)
            verb = cmd.split(" ", 1)[0].upper()
            if verb == "LHLO":
                w(b"250-lmtp.test\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n")
            elif verb == "MAIL":
                w(b"250 2.1.0 OK\r\n" if "bad" not in cmd else b"553 5.1.8 Bad sender\r\n")
            elif verb == "RCPT":
                local = cmd[cmd.index("<") + 1 : cmd.index("@") if "@" in cmd else -1]
                rcpt_reply, _ = BEHAVIOUR.get(local, BEHAVIOUR["ok"])
                if rcpt_reply.startswith("2"):
                    rcpts.append(local)
                w(rcpt_reply.encode() + b"\r\n")
            elif verb == "DATA":
                w(b"354 go ahead\r\n")
                data = b""
                while True:
                    chunk = self.rfile.readline()
                    if chunk == b".\r\n" or not chunk:
                        break
                    data += chunk
                srv.messages.append(data)
                if srv.hang:
                    srv.release.wait(10)
                    return
                for local in rcpts:
                    w(BEHAVIOUR.get(local, BEHAVIOUR["ok"])[1].encode() + b"\r\n")
            elif verb == "QUIT":
                w(b"221 2.0.0 bye\r\n")
                return
            else:
                w(b"500 5.5.1 what\r\n")


class _TCP(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Unix(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True


@pytest.fixture(params=["unix", "tcp"])
def server(request: Any, tmp_path: Path) -> Iterator[tuple[Any, str]]:
    if request.param == "unix":
        path = str(tmp_path / "lmtp.sock")
        srv: Any = _Unix(path, _Handler)
        dest = path
    else:
        srv = _TCP(("127.0.0.1", 0), _Handler)
        dest = f"127.0.0.1:{srv.server_address[1]}"
    srv.log, srv.messages, srv.hang = [], [], False
    srv.release = threading.Event()
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    t.start()
    try:
        yield srv, dest
    finally:
        srv.release.set()
        srv.shutdown()
        srv.server_close()
        t.join(5)


MSG = b"Subject: x\n\n.leading dot\nlast line no newline"


def test_per_recipient_results(server: tuple[Any, str]) -> None:
    srv, dest = server
    rcpts = ["ok@x", "full@x", "gone@x", "norcpt@x", "later@x"]
    res = lmtp_transaction(dest, "me.test", "s@x", rcpts, [MSG], timeout=5)
    assert [r.status for r in res] == [
        DeliveryStatus.OK,
        DeliveryStatus.TEMPFAIL,
        DeliveryStatus.PERMFAIL,
        DeliveryStatus.PERMFAIL,
        DeliveryStatus.TEMPFAIL,
    ]
    assert res[0].text == "250 2.0.0 <ok@x> Saved"
    assert res[1].text == "452 4.2.2 <full@x> Mailbox full"
    assert res[3].text == "550 5.1.1 Unknown user"
    assert srv.log[0] == "LHLO me.test"
    assert srv.log[1] == "MAIL FROM:<s@x>"
    assert srv.messages == [b"Subject: x\r\n\r\n..leading dot\r\nlast line no newline\r\n"]
    assert srv.log[-1] == "QUIT"


def test_deliver_lmtp_user_and_rcpt_to(server: tuple[Any, str], tmp_path: Path) -> None:
    srv, dest = server
    make = req_factory(tmp_path)
    req = make(method=DeliveryMethod.LMTP, lmtp_dest=dest, user="ok", sender="")
    res = deliver(req, io.BytesIO(b"Subject: y\n\nbody\n"))
    assert res.status is DeliveryStatus.OK, res
    assert "RCPT TO:<ok>" in srv.log and "MAIL FROM:<>" in srv.log
    assert srv.messages[-1] == b"Delivered-To: acc1+tag@acc.test\r\nSubject: y\r\n\r\nbody\r\n"
    req = make(method=DeliveryMethod.LMTP, lmtp_dest=dest, lmtp_rcpt_to=True, rcpt="gone@x")
    res = deliver(req, io.BytesIO(b"Subject: y\n\nbody\n"))
    assert res.status is DeliveryStatus.PERMFAIL
    assert "RCPT TO:<gone@x>" in srv.log
    assert srv.messages[-1].startswith(b"Return-Path: <a@b.test>\r\n")


def test_bad_sender(server: tuple[Any, str]) -> None:
    _, dest = server
    res = lmtp_transaction(dest, "h", "bad@x", ["ok@x", "full@x"], [MSG], timeout=5)
    assert [r.status for r in res] == [DeliveryStatus.PERMFAIL] * 2
    assert res[0].text == "553 5.1.8 Bad sender"


def test_timeout_after_data(server: tuple[Any, str]) -> None:
    srv, dest = server
    srv.hang = True
    res = lmtp_transaction(dest, "h", "s@x", ["ok@x"], [MSG], timeout=0.5)
    assert res[0].status is DeliveryStatus.TEMPFAIL
    assert "timed out" in res[0].text


def test_connect_refused(tmp_path: Path) -> None:
    res = lmtp_transaction(str(tmp_path / "nope.sock"), "h", "s", ["a"], [MSG], timeout=1)
    assert res[0].status is DeliveryStatus.TEMPFAIL
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    res = lmtp_transaction(f"127.0.0.1:{port}", "h", "s", ["a"], [MSG], timeout=1)
    assert res[0].status is DeliveryStatus.TEMPFAIL


def test_reply_parser_byte_by_byte() -> None:
    wire = b"250-first\r\n250-second\r\n250 last\r\n452 4.2.2 full\r\n"
    p = ReplyParser()
    got = [r for i in range(len(wire)) for r in p.feed(wire[i : i + 1])]
    assert [(r.code, r.lines) for r in got] == [
        (250, ("first", "second", "last")),
        (452, ("4.2.2 full",)),
    ]
    for bad in (b"abc\r\n", b"25\r\n", b"250x\r\n", b"250-a\r\n251 b\r\n", b"2" * 5000):
        with pytest.raises(LmtpError):
            ReplyParser().feed(bad)


@pytest.mark.parametrize("step", [1, 2, 3, 100])
def test_dot_stuffer_chunking(step: int) -> None:
    src = b".a\n..b\nc.\n.\nd"
    st = DotStuffer()
    out = b"".join(st.feed(src[i : i + step]) for i in range(0, len(src), step)) + st.close()
    assert out == b"..a\r\n...b\r\nc.\r\n..\r\nd\r\n.\r\n"


def test_parse_destination() -> None:
    assert parse_destination("/var/run/dovecot/lmtp") == "/var/run/dovecot/lmtp"
    assert parse_destination("localhost:24") == ("localhost", 24)
    assert parse_destination("[::1]:24") == ("::1", 24)
    assert parse_destination("[IPv6:::1]") == ("::1", 25)
    assert parse_destination("host") == ("host", 25)
    for bad in ("[::1", "h:0", "h:x", "[::1]x"):
        with pytest.raises(ValueError):
            parse_destination(bad)
