"""MtaSession against the scripted sink on 127.0.0.1."""

from __future__ import annotations

import asyncio
import io
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trustme

from smtpd.mta.session import MtaSession, scan_message
from smtpd.mta.transfer import (
    Recipient,
    SessionConfig,
    SessionError,
    Status,
    Timeouts,
    TlsPolicy,
    TransferResult,
)
from tests.mta.sink import Sink, SinkConfig

FAST = Timeouts(connect=2, greeting=2, helo=2, starttls=2, auth=2, mail=2, rcpt=2,
                data_init=2, data_block=2, data_end=2, rset=2, quit=1)
MESSAGE = b"Subject: test\n\n.leading dot\nbody\n.\n"
RCPTS = [Recipient(1, "ok@dest.test"), Recipient(2, "busy@dest.test"),
         Recipient(3, "gone@dest.test")]
MIXED = {"busy@dest.test": b"450 4.2.0 Mailbox busy\r\n",
         "gone@dest.test": b"550 5.1.1 No such user\r\n"}


def run[T](sink: Sink, body: Callable[[int], Awaitable[T]]) -> T:
    async def main() -> T:
        port = await sink.start()
        try:
            return await body(port)
        finally:
            await sink.close()
    return asyncio.run(main())


def config(**kw: object) -> SessionConfig:
    kw.setdefault("timeouts", FAST)
    return SessionConfig(helo="relay.test", **kw)  # type: ignore[arg-type]


async def relay_one(port: int, cfg: SessionConfig, message: bytes = MESSAGE,
                    rcpts: list[Recipient] = RCPTS, sender: str = "me@src.test",
                    envid: str | None = None, ret: str | None = None) -> TransferResult:
    session = await MtaSession.open("127.0.0.1", port, cfg)
    try:
        return await session.send(sender, rcpts, io.BytesIO(message), envid=envid, ret=ret)
    finally:
        await session.quit()


def statuses(result: TransferResult) -> list[tuple[int, Status, str]]:
    return [(r.evpid, r.status, r.text) for r in result.results]


@pytest.mark.parametrize("pipelining", [True, False])
def test_per_recipient_results(pipelining: bool) -> None:
    sink = Sink(SinkConfig(pipelining=pipelining, rcpt_replies=MIXED, size=10000))
    result = run(sink, lambda port: relay_one(port, config()))
    assert statuses(result) == [
        (1, Status.OK, "250 2.0.0 queued"),
        (2, Status.TEMPFAIL, "450 4.2.0 Mailbox busy"),
        (3, Status.PERMFAIL, "550 5.1.1 No such user"),
    ]
    assert sink.pipelined is pipelining
    [msg] = sink.messages
    assert msg.recipients == ["ok@dest.test"]
    assert msg.content == MESSAGE
    assert msg.wire == b"Subject: test\r\n\r\n..leading dot\r\nbody\r\n..\r\n"
    assert msg.mail_line == f"MAIL FROM:<me@src.test> SIZE={scan_message(io.BytesIO(MESSAGE))[0]}"
    assert sink.commands[-1] == "QUIT"


def test_scan_message_counts_crlf_size() -> None:
    assert scan_message(io.BytesIO(b"a\nb\r\n\xe9")) == (len(b"a\r\nb\r\n\xe9"), True)
    assert scan_message(io.BytesIO(b"")) == (0, False)


def test_mail_refused_fails_everyone() -> None:
    sink = Sink(SinkConfig(mail_reply=b"550 5.7.1 Sender rejected\r\n"))
    result = run(sink, lambda port: relay_one(port, config()))
    assert {r.status for r in result.results} == {Status.PERMFAIL}
    assert {r.text for r in result.results} == {"550 5.7.1 Sender rejected"}
    assert sink.messages == []


@pytest.mark.parametrize("pipelining", [True, False])
def test_data_refused_applies_to_accepted_only(pipelining: bool) -> None:
    sink = Sink(SinkConfig(pipelining=pipelining, rcpt_replies=MIXED,
                           data_reply=b"451 4.3.0 try later\r\n"))
    result = run(sink, lambda port: relay_one(port, config()))
    assert [r.text for r in result.results] == [
        "451 4.3.0 try later", "450 4.2.0 Mailbox busy", "550 5.1.1 No such user"]


def test_all_recipients_refused_sends_no_data() -> None:
    replies = {r.address: b"550 5.1.1 no\r\n" for r in RCPTS}
    sink = Sink(SinkConfig(pipelining=False, rcpt_replies=replies))
    result = run(sink, lambda port: relay_one(port, config()))
    assert {r.status for r in result.results} == {Status.PERMFAIL}
    assert "DATA" not in sink.commands


def test_size_too_small_is_refused_before_sending() -> None:
    sink = Sink(SinkConfig(size=10))
    result = run(sink, lambda port: relay_one(port, config()))
    assert {r.status for r in result.results} == {Status.PERMFAIL}
    assert all(r.text.startswith("552 5.3.4 ") for r in result.results)
    assert not any(c.startswith("MAIL") for c in sink.commands)


def test_8bit_needs_8bitmime() -> None:
    sink = Sink(SinkConfig(eightbitmime=False))
    result = run(sink, lambda port: relay_one(port, config(), message=b"S: \xc3\xa9\n\nx\n"))
    assert {r.status for r in result.results} == {Status.PERMFAIL}
    assert all(r.text.startswith("554 5.6.3 ") for r in result.results)
    assert sink.messages == []
    # 7-bit goes through; with 8BITMIME an 8-bit message says BODY=8BITMIME
    sink2 = Sink(SinkConfig(eightbitmime=False))
    assert run(sink2, lambda port: relay_one(port, config(), rcpts=RCPTS[:1])
               ).results[0].status is Status.OK
    sink3 = Sink(SinkConfig())
    run(sink3, lambda port: relay_one(port, config(), message=b"S: \xc3\xa9\n\nx\n",
                                      rcpts=RCPTS[:1]))
    assert sink3.messages[0].mail_line.endswith(" BODY=8BITMIME")
    assert sink3.messages[0].content == b"S: \xc3\xa9\n\nx\n"


def test_smtputf8_needs_smtputf8() -> None:
    rcpt = [Recipient(9, "josé@dest.test")]
    sink = Sink(SinkConfig())
    result = run(sink, lambda port: relay_one(port, config(), rcpts=rcpt))
    assert statuses(result) == [
        (9, Status.PERMFAIL, "553 5.6.7 Remote host does not support SMTPUTF8")]
    sink2 = Sink(SinkConfig(smtputf8=True))
    result2 = run(sink2, lambda port: relay_one(port, config(), rcpts=rcpt))
    assert result2.results[0].status is Status.OK
    assert sink2.messages[0].mail_line.endswith(" SMTPUTF8")


def test_dsn_parameters_only_when_offered() -> None:
    rcpt = [Recipient(1, "a@dest.test", notify="SUCCESS,FAILURE", orcpt="rfc822;a@dest.test")]
    for dsn in (True, False):
        sink = Sink(SinkConfig(dsn=dsn))
        result = run(sink, lambda port: relay_one(port, config(), rcpts=rcpt, envid="ID1",
                                                  ret="HDRS"))
        assert result.peer_dsn is dsn
        [msg] = sink.messages
        if dsn:
            assert msg.mail_line == "MAIL FROM:<me@src.test> RET=HDRS ENVID=ID1"
            assert msg.rcpt_lines == [
                "RCPT TO:<a@dest.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a@dest.test"]
        else:
            assert msg.mail_line == "MAIL FROM:<me@src.test>"
            assert msg.rcpt_lines == ["RCPT TO:<a@dest.test>"]


def test_connection_reuse_with_rset() -> None:
    sink = Sink(SinkConfig())

    async def body(port: int) -> list[TransferResult]:
        session = await MtaSession.open("127.0.0.1", port, config())
        r1 = await session.send("a@src.test", RCPTS[:1], io.BytesIO(b"one\n"))
        r2 = await session.send("", RCPTS[1:2], io.BytesIO(b"two\n"))
        await session.quit()
        assert not session.is_open
        return [r1, r2]

    r1, r2 = run(sink, body)
    assert r1.results[0].status is Status.OK and r2.results[0].status is Status.OK
    assert sink.connections == 1
    assert [m.content for m in sink.messages] == [b"one\n", b"two\n"]
    assert sink.messages[1].sender == ""
    verbs = [c.split()[0] for c in sink.commands]
    assert verbs == ["EHLO", "MAIL", "RCPT", "DATA", "RSET", "MAIL", "RCPT", "DATA", "QUIT"]


def test_helo_fallback() -> None:
    sink = Sink(SinkConfig(ehlo_reply=b"500 5.5.1 what\r\n"))
    result = run(sink, lambda port: relay_one(port, config(), rcpts=RCPTS[:2]))
    assert [r.status for r in result.results] == [Status.OK, Status.OK]
    assert sink.commands[:2] == ["EHLO relay.test", "HELO relay.test"]
    assert not sink.pipelined


def test_lmtp_per_recipient_after_data() -> None:
    sink = Sink(SinkConfig(lmtp=True, rcpt_replies={"gone@dest.test": b"550 5.1.1 no\r\n"},
                           lmtp_replies={"busy@dest.test": b"452 4.2.2 Over quota\r\n"}))
    result = run(sink, lambda port: relay_one(port, config(lmtp=True)))
    assert statuses(result) == [
        (1, Status.OK, "250 2.0.0 delivered"),
        (2, Status.TEMPFAIL, "452 4.2.2 Over quota"),
        (3, Status.PERMFAIL, "550 5.1.1 no"),
    ]
    assert sink.commands[0] == "LHLO relay.test"


def test_greeting_refused() -> None:
    sink = Sink(SinkConfig(greeting=b"554 5.7.1 go away\r\n"))
    with pytest.raises(SessionError, match=r"554 5\.7\.1 go away"):
        run(sink, lambda port: MtaSession.open("127.0.0.1", port, config()))


def test_dead_server() -> None:
    async def body() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        await MtaSession.open("127.0.0.1", port, config())
    with pytest.raises(SessionError, match=r"^421 4\.4\.1 Connection to 127\.0\.0\.1 failed"):
        asyncio.run(body())


def test_slow_greeting_times_out() -> None:
    sink = Sink(SinkConfig(delays={"GREETING": 1.0}))
    cfg = config(timeouts=Timeouts(greeting=0.2))
    with pytest.raises(SessionError, match="timed out"):
        run(sink, lambda port: MtaSession.open("127.0.0.1", port, cfg))


def test_slow_end_of_data_is_a_tempfail_and_closes() -> None:
    sink = Sink(SinkConfig(delays={".": 1.0}))

    async def body(port: int) -> tuple[TransferResult, bool]:
        cfg = config(timeouts=Timeouts(data_end=0.2))
        session = await MtaSession.open("127.0.0.1", port, cfg)
        result = await session.send("a@src.test", RCPTS[:2], io.BytesIO(b"x\n"))
        again = await session.send("a@src.test", RCPTS[:1], io.BytesIO(b"x\n"))
        assert again.results[0].status is Status.TEMPFAIL
        return result, session.is_open

    result, still_open = run(sink, body)
    assert [r.status for r in result.results] == [Status.TEMPFAIL, Status.TEMPFAIL]
    assert "timed out" in result.results[0].text
    assert not still_open


# -- TLS and AUTH -------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_ctx(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("mx.dest.test").configure_cert(ctx)
    return ctx


def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


async def open_named(port: int, cfg: SessionConfig) -> MtaSession:
    return await MtaSession.open("mx.dest.test", port, cfg, address="127.0.0.1")


def test_starttls_verified_and_auth(ca: trustme.CA, tmp_path: Path) -> None:
    sink = Sink(SinkConfig(tls=server_ctx(ca), auth=("alice", "s3cret")))
    cfg = config(tls=TlsPolicy.STARTTLS, ca_file=ca_file(ca, tmp_path),
                 credentials=("alice", "s3cret"))

    async def body(port: int) -> TransferResult:
        session = await open_named(port, cfg)
        assert session.tls_active and session.authenticated
        result = await session.send("a@src.test", RCPTS[:1], io.BytesIO(MESSAGE))
        await session.quit()
        return result

    assert run(sink, body).results[0].status is Status.OK
    assert sink.tls_sessions == 1 and sink.auth_users == ["alice"]
    assert sink.messages[0].content == MESSAGE
    # the password never went out before TLS: the cleartext commands
    assert sink.commands[:3] == ["EHLO relay.test", "STARTTLS", "EHLO relay.test"]


def test_auth_refused(ca: trustme.CA, tmp_path: Path) -> None:
    sink = Sink(SinkConfig(tls=server_ctx(ca), auth=("alice", "s3cret")))
    cfg = config(tls=TlsPolicy.STARTTLS, ca_file=ca_file(ca, tmp_path),
                 credentials=("alice", "wrong"))
    with pytest.raises(SessionError, match=r"535 5\.7\.8"):
        run(sink, lambda port: open_named(port, cfg))


def test_unverified_certificate_refused_unless_no_verify(ca: trustme.CA) -> None:
    other = trustme.CA()
    sink = Sink(SinkConfig(tls=server_ctx(other)))
    with pytest.raises(SessionError, match="TLS handshake failed"):
        run(sink, lambda port: open_named(port, config(tls=TlsPolicy.STARTTLS)))
    sink2 = Sink(SinkConfig(tls=server_ctx(other)))
    cfg = config(tls=TlsPolicy.STARTTLS, verify=False)
    result = run(sink2, lambda port: relay_one(port, cfg, rcpts=RCPTS[:1]))
    assert result.results[0].status is Status.OK and sink2.tls_sessions == 1


def test_opportunistic_tls(ca: trustme.CA) -> None:
    # offered: used (unverified, as upstream); not offered: plain
    sink = Sink(SinkConfig(tls=server_ctx(ca)))
    run(sink, lambda port: relay_one(port, config(), rcpts=RCPTS[:1]))
    assert sink.tls_sessions == 1 and len(sink.messages) == 1
    sink2 = Sink(SinkConfig())
    run(sink2, lambda port: relay_one(port, config(), rcpts=RCPTS[:1]))
    assert len(sink2.messages) == 1 and "STARTTLS" not in sink2.commands


def test_tls_required_but_not_offered() -> None:
    sink = Sink(SinkConfig())
    with pytest.raises(SessionError, match="TLS required but not supported"):
        run(sink, lambda port: MtaSession.open("127.0.0.1", port,
                                               config(tls=TlsPolicy.STARTTLS)))


def test_credentials_never_sent_in_clear() -> None:
    sink = Sink(SinkConfig(auth=("alice", "s3cret")))
    with pytest.raises(SessionError):
        run(sink, lambda port: MtaSession.open("127.0.0.1", port,
                                               config(credentials=("alice", "s3cret"))))
    assert not any(c.startswith("AUTH") for c in sink.commands)


def test_opportunistic_tls_failure_retries_in_clear(ca: trustme.CA) -> None:
    sink = Sink(SinkConfig(tls=server_ctx(ca), tls_break=True))
    result = run(sink, lambda port: relay_one(port, config(), rcpts=RCPTS[:1]))
    assert result.results[0].status is Status.OK
    assert sink.connections == 2 and sink.commands.count("STARTTLS") == 1
    # mandatory TLS never falls back
    sink2 = Sink(SinkConfig(tls=server_ctx(ca), tls_break=True))
    with pytest.raises(SessionError, match="TLS handshake failed"):
        run(sink2, lambda port: open_named(port, config(tls=TlsPolicy.STARTTLS, verify=False)))
    assert sink2.connections == 1


def test_smtps(ca: trustme.CA, tmp_path: Path) -> None:
    sink = Sink(SinkConfig(smtps=server_ctx(ca), auth=("bob", "pw")))
    cfg = config(tls=TlsPolicy.SMTPS, ca_file=ca_file(ca, tmp_path), credentials=("bob", "pw"))

    async def body(port: int) -> TransferResult:
        session = await open_named(port, cfg)
        try:
            return await session.send("a@src.test", RCPTS[:1], io.BytesIO(b"x\n"))
        finally:
            await session.quit()

    assert run(sink, body).results[0].status is Status.OK
    assert sink.tls_sessions == 1 and sink.auth_users == ["bob"]
    assert "STARTTLS" not in sink.commands


def test_421_to_mail_keeps_the_reply_and_closes() -> None:
    sink = Sink(SinkConfig(mail_reply=b"421 4.3.2 Shutting down\r\n"))

    async def body(port: int) -> tuple[TransferResult, bool]:
        session = await MtaSession.open("127.0.0.1", port, config())
        result = await session.send("a@src.test", RCPTS, io.BytesIO(b"x\n"))
        assert session.local_address == "127.0.0.1"
        return result, session.is_open

    result, still_open = run(sink, body)
    assert {(r.status, r.text) for r in result.results} == {
        (Status.TEMPFAIL, "421 4.3.2 Shutting down")}
    assert not still_open


class FailingFile(io.BytesIO):
    """Reads fine while scanned, then fails in the middle of DATA."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads = 0
        self.fail_after: int | None = None

    def seek(self, pos: int, whence: int = 0) -> int:
        if self.fail_after is None and pos == 0 and self.reads:
            self.fail_after = 1  # armed by the rewind that follows the scan
        return super().seek(pos, whence)

    def read(self, n: int | None = -1) -> bytes:
        self.reads += 1
        if self.fail_after is not None:
            if self.fail_after == 0:
                raise OSError(5, "Input/output error")
            self.fail_after -= 1
        return super().read(min(n, 65536) if n and n > 0 else 65536)


def test_read_error_mid_data_never_ends_the_message() -> None:
    sink = Sink(SinkConfig())

    async def body(port: int) -> tuple[TransferResult, bool]:
        session = await MtaSession.open("127.0.0.1", port, config())
        empty = await session.send("a@src.test", [], io.BytesIO(b"x\n"))
        assert empty.results == ()
        result = await session.send("a@src.test", RCPTS[:1],
                                    FailingFile(b"line\n" * 30000))  # > 2 chunks
        return result, session.is_open

    result, still_open = run(sink, body)
    assert result.results[0].status is Status.TEMPFAIL
    assert "Input/output error" in result.results[0].text
    assert not still_open and sink.messages == []


def test_source_address() -> None:
    sink = Sink(SinkConfig())
    result = run(sink, lambda port: relay_one(port, config(source="127.0.0.1"), rcpts=RCPTS[:1]))
    assert result.results[0].status is Status.OK
    sink2 = Sink(SinkConfig())
    with pytest.raises(SessionError, match=r"^421 4\.4\.1 "):  # not an address of ours
        run(sink2, lambda port: MtaSession.open("127.0.0.1", port, config(source="192.0.2.1")))
    assert sink2.connections == 0
