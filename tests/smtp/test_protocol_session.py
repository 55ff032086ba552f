"""ServerProtocol: command sequencing, replies, limits, pipelining."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_protocol_driver import TRANSACTION, Driver

from smtpd.smtp import events as E
from smtpd.smtp import reply as R
from smtpd.smtp.protocol import (
    NEED_DATA,
    PAUSED,
    TRANSITIONS,
    ProtocolLimits,
    ProtocolUsageError,
    ServerProtocol,
    State,
)
from smtpd.smtp.reply import Reply

SESSION = TRANSACTION + b"MAIL FROM:<>\r\nRCPT TO:<x@y.test>\r\nDATA\r\n.\r\nQUIT\r\n"


def test_greeting_and_ehlo_text() -> None:
    d = Driver().feed(b"EHLO client.test\r\n")
    assert d.lines() == [
        "220 mx.test ESMTP pysmtpd",
        "250-mx.test Hello client.test [127.0.0.1], pleased to meet you",
        "250-8BITMIME",
        "250-ENHANCEDSTATUSCODES",
        "250-SIZE 36700160",
        "250-DSN",
        "250-PIPELINING",
        "250-SMTPUTF8",
        "250-CHUNKING",
        "250 HELP",
    ]
    assert d.p.helo == "client.test" and d.p.extended


def test_ehlo_keywords_follow_limits() -> None:
    d = Driver(
        dsn=False, smtputf8=False, starttls_available=True, auth_mechanisms=("PLAIN", "LOGIN")
    )
    d.feed(b"EHLO c.test\r\n")
    assert d.lines()[4:] == ["250-SIZE 36700160", "250-PIPELINING", "250-CHUNKING",
                              "250-STARTTLS", "250 HELP"]
    d.feed(b"STARTTLS\r\n").feed(b"EHLO c.test\r\n")
    assert "250-STARTTLS" not in d.lines()[-6:]
    assert "250-AUTH PLAIN LOGIN" in d.lines()[-6:]


def test_helo_reply_and_ipv6_literal() -> None:
    p = ServerProtocol(ProtocolLimits(hostname="mx.test"))
    assert p.helo_reply(E.Helo("c.test", False), "::1").to_bytes() == (
        b"250 mx.test Hello c.test [IPv6:::1], pleased to meet you\r\n"
    )


@pytest.mark.parametrize(
    "line, expected",
    [
        (b"MAIL FROM:<a@b.test>", "503 5.5.1 Invalid command: Command not allowed at this point."),
        (b"RSET", "503 5.5.1 Invalid command: Command not allowed at this point."),
        (b"EHLO", "501 5.5.1 Invalid command: EHLO requires domain name"),
        (b"HELO", "501 5.5.1 Invalid command: HELO requires domain name"),
        (b"EHLO bad..name", "501 5.5.4 Invalid command arguments: Invalid domain name"),
        (b"FOO bar", "500 5.5.1 Invalid command: Command unrecognized"),
        (b"EXPN list", "502 5.5.1 Invalid command: Command not implemented"),
        (b"VRFY bob", "252 2.1.5 Cannot VRFY user, but will accept message and attempt delivery"),
        (b"NOOP", "250 2.0.0 Ok"),
        (b"QUIT now", "500 5.5.4 Invalid command arguments: command does not accept arguments."),
        (b"AUTH PLAIN", "503 5.5.1 Invalid command: Command not allowed at this point."),
    ],
)
def test_replies_before_helo(line: bytes, expected: str) -> None:
    d = Driver().feed(line + b"\r\n")
    assert d.lines()[1:] == [expected]


@pytest.mark.parametrize(
    "script, expected",
    [
        (b"RCPT TO:<a@b.test>", "503 5.5.1 Invalid command: Command not allowed at this point."),
        (b"DATA", "503 5.5.1 Invalid command: Command not allowed at this point."),
        (
            b"MAIL FROM:<a@b.test>\r\nDATA",
            "503 5.5.4 Invalid command arguments: No recipient specified",
        ),
        (
            b"MAIL FROM:<a@b.test>\r\nMAIL FROM:<a@b.test>",
            "503 5.5.1 Invalid command: Command not allowed at this point.",
        ),
        (b"MAIL FROM:a@b.test", "553 5.1.0 Sender address syntax error"),
        (b"MAIL FROM:<" + b"a" * 65 + b"@b.test>", "553 5.1.0 Sender address syntax error"),
        (b"MAIL TO:<a@b.test>", "501 5.5.2 Syntax error: Syntax error"),
        (b"MAIL FROM:<a@b.test>\r\nRCPT TO:<>", "501 5.1.3 Recipient address syntax error"),
        (
            b"MAIL FROM:<a@b.test> FOO=bar",
            "503 5.5.4 Invalid command arguments: Unsupported option FOO=bar",
        ),
        (b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test> FOO=bar", "503 Unsupported option FOO=bar"),
        (
            b"MAIL FROM:<a@b.test> SIZE=36700161",
            "552 5.3.4 Message too big for system: Message size exceeds fixed maximum message size",
        ),
        (
            b"MAIL FROM:<a@b.test> BODY=BINARYMIME",
            "503 5.5.4 Invalid command arguments: Unsupported option BODY=BINARYMIME",
        ),
        (b"MAIL FROM:<\xc3\xa9@b.test>", "553 5.6.7 Non-ASCII address requires SMTPUTF8"),
        (
            b"MAIL FROM:<a@b.test>\r\nRCPT TO:<\xc3\xa9@b.test>",
            "553 5.6.7 Non-ASCII address requires SMTPUTF8",
        ),
        (b"STARTTLS", "503 5.5.1 Invalid command: Command not supported"),
        (b"AUTH PLAIN", "503 5.5.1 Invalid command: Command not supported"),
        (b"NOOP " + b"x" * 600, "500 5.0.0 Command line too long"),
        (b"NOOP \x00", "501 5.5.2 Syntax error: Syntax error"),
        (b"NOOP \xff", "501 5.5.2 Syntax error: Syntax error"),
    ],
)
def test_refusals_after_ehlo(script: bytes, expected: str) -> None:
    d = Driver().feed(b"EHLO c.test\r\n" + script + b"\r\n")
    assert d.lines()[-1] == expected
    assert d.of(E.ProtocolError)


def test_utf8_addresses_with_smtputf8() -> None:
    d = Driver().feed(
        "EHLO c.test\r\nMAIL FROM:<é@b.test> SMTPUTF8\r\nRCPT TO:<ü@bü.test>\r\n".encode()
    )
    assert [r.code for r in d.replies()] == [220, 250, 250, 250]
    rcpt = d.of(E.RcptTo)[0]
    assert isinstance(rcpt, E.RcptTo) and rcpt.address.domain == "bü.test"


def test_source_route_and_postmaster() -> None:
    d = Driver().feed(
        b"EHLO c.test\r\nMAIL FROM:<@a.test,@b.test:u@c.test>\r\nRCPT TO:<Postmaster>\r\n"
    )
    mail, rcpt = d.of(E.MailFrom)[0], d.of(E.RcptTo)[0]
    assert isinstance(mail, E.MailFrom) and str(mail.address) == "u@c.test"
    assert isinstance(rcpt, E.RcptTo) and str(rcpt.address) == "Postmaster@mx.test"


def test_case_insensitive_verbs_and_space_after_colon() -> None:
    d = Driver().feed(b"ehlo c.test\r\nmail from: <a@b.test>\r\nrCpT tO:<c@d.test>\r\n")
    assert [r.code for r in d.replies()] == [220, 250, 250, 250]


def test_rejected_recipient_keeps_state() -> None:
    def answer(p: ServerProtocol, ev: E.Event) -> Reply | None:
        if isinstance(ev, E.RcptTo):
            return Reply(550, None, f"Invalid recipient: <{ev.address}>")
        from test_protocol_driver import default_answer

        return default_answer(p, ev)

    d = Driver(answer=answer).feed(
        b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n"
    )
    assert d.lines()[-2:] == [
        "550 Invalid recipient: <c@d.test>",
        "503 5.5.4 Invalid command arguments: No recipient specified",
    ]
    assert d.p.state is State.MAIL


def test_pipelined_session_whole_and_byte_by_byte() -> None:
    whole = Driver().feed(SESSION)
    byte = Driver().feed(SESSION, [1] * len(SESSION))
    assert whole.out == byte.out
    assert whole.merged() == byte.merged()
    codes = [220, 250, 250, 250, 354, 250, 250, 250, 354, 250, 221]
    assert [r.code for r in whole.replies()] == codes
    assert whole.messages == [b"Subject: hi\n\nbody\n", b""]
    assert whole.p.mails == 2


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 40), max_size=60))
def test_pipelined_session_random_chunks(sizes: list[int]) -> None:
    reference = Driver().feed(SESSION)
    d = Driver().feed(SESSION, sizes)
    assert d.out == reference.out
    assert d.merged() == reference.merged()


def test_events_wait_for_their_reply() -> None:
    p = ServerProtocol(ProtocolLimits(hostname="mx.test"))
    assert p.next_event() is PAUSED  # no greeting yet
    p.greeting()
    p.receive_data(b"EHLO c.test\r\nNOOP\r\n")
    ev = p.next_event()
    assert isinstance(ev, E.Helo)
    assert p.next_event() is PAUSED
    p.send(p.helo_reply(ev, "127.0.0.1"))
    assert isinstance(p.next_event(), E.Noop)
    p.send(R.NOOP_OK)
    assert p.next_event() is NEED_DATA
    with pytest.raises(ProtocolUsageError):
        p.send(R.OK)


def test_trailing_partial_command_waits() -> None:
    d = Driver().feed(b"EHLO c.test\r\nNO")
    assert d.p.next_event() is NEED_DATA
    d.feed(b"OP\r\n")
    assert isinstance(d.events[-1], E.Noop)


def test_eof_gives_connection_closed_once() -> None:
    d = Driver().feed(b"EHLO c.test\r\nNOOP").eof()
    assert isinstance(d.events[-1], E.ConnectionClosed)
    assert d.p.closed and d.p.next_event() is PAUSED
    d.p.receive_data(b"")  # a second EOF is harmless


def test_eof_inside_data() -> None:
    d = Driver().feed(TRANSACTION[: -len(b".\r\n")]).eof()
    assert isinstance(d.events[-1], E.ConnectionClosed)
    assert not d.of(E.DataEnd)


def test_quit_closes() -> None:
    d = Driver().feed(b"QUIT\r\nNOOP\r\n")
    assert d.lines()[-1] == "221 2.0.0 Bye"
    assert d.p.closed and not d.of(E.Noop)


def test_unsolicited_421_closes() -> None:
    p = ServerProtocol(ProtocolLimits(hostname="mx.test"))
    p.greeting()
    assert p.send(Reply(421, "4.4.2", "mx.test Timeout")) == b"421 4.4.2 mx.test Timeout\r\n"
    assert p.closed


def test_refusing_the_connection_instead_of_greeting() -> None:
    p = ServerProtocol(ProtocolLimits(hostname="mx.test"))
    p.send(Reply(554, "5.7.1", "go away"))
    assert p.closed
    with pytest.raises(ProtocolUsageError):
        p.greeting()


def test_bad_command_budget_ends_in_421() -> None:
    d = Driver(max_bad_commands=3).feed(b"X\r\n" * 5)
    assert d.lines()[1:] == ["500 5.5.1 Invalid command: Command unrecognized"] * 3 + [
        "421 4.7.0 Too many bad commands, closing connection"
    ]
    assert d.p.closed


def test_long_line_without_newline_is_dropped_to_its_end() -> None:
    d = Driver().feed(b"EHLO c.test\r\n" + b"A" * 20000)
    assert d.lines()[-1] == "500 5.0.0 Command line too long"
    d.feed(b"B" * 5000 + b"\r\nNOOP\r\n")
    assert d.lines()[-1] == "250 2.0.0 Ok"
    assert len(d.of(E.ProtocolError)) == 1


def test_mail_and_rcpt_lines_may_exceed_512_for_parameters() -> None:
    orcpt = "rfc822;" + "x" * 480
    line = f"RCPT TO:<c@d.test> NOTIFY=SUCCESS,FAILURE,DELAY ORCPT={orcpt}".encode()
    assert 512 < len(line) < 512 + 500
    d = Driver().feed(b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\n" + line + b"\r\n")
    assert d.lines()[-1].startswith("250 2.1.5")


def test_too_many_recipients() -> None:
    d = Driver(max_rcpt=2).feed(
        b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\n" + b"RCPT TO:<c@d.test>\r\n" * 3
    )
    assert d.lines()[-1] == "451 4.5.3 Too many recipients: Too many recipients"
    assert d.p._bad == 0  # a limit, not a bad command


def test_too_many_mails() -> None:
    one = b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\nx\r\n.\r\n"
    d = Driver(max_mails=2).feed(b"EHLO c.test\r\n" + one * 3)
    assert d.lines()[-5] == "452 4.5.3 Too many recipients: Too many messages sent"
    assert len(d.messages) == 2


def test_tls_and_auth_required() -> None:
    d = Driver(tls_required=True, starttls_available=True).feed(
        b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\n"
    )
    assert d.lines()[-1] == "530 5.5.1 Invalid command: Must issue a STARTTLS command first"
    d.feed(b"STARTTLS\r\n").feed(b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\n")
    assert d.lines()[-1] == "250 2.0.0 Ok"
    d = Driver(auth_required=True, tls_active=True, auth_mechanisms=("PLAIN",)).feed(
        b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\n"
    )
    assert d.lines()[-1] == "530 5.5.1 Invalid command: Must issue an AUTH command first"


def test_pipelining_disabled_behaves_like_upstream() -> None:
    d = Driver(pipelining=False).feed(b"EHLO c.test\r\nNOOP\r\n")
    assert d.lines()[-1] == "500 5.5.1 Invalid command: Pipelining not supported"
    assert d.p.closed
    assert "250-PIPELINING" not in d.lines()


def test_rset_and_second_ehlo_reset_the_transaction() -> None:
    d = Driver().feed(
        b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\n"
        b"RSET\r\nRCPT TO:<c@d.test>\r\n"
    )
    assert d.lines()[-2:] == [
        "250 2.0.0 Reset state",
        "503 5.5.1 Invalid command: Command not allowed at this point.",
    ]
    d.feed(b"MAIL FROM:<a@b.test>\r\nEHLO other.test\r\nRCPT TO:<c@d.test>\r\n")
    assert d.lines()[-1] == "503 5.5.1 Invalid command: Command not allowed at this point."
    assert d.p.helo == "other.test"


def test_help_text() -> None:
    d = Driver().feed(b"HELP\r\n")
    assert d.lines()[1:] == [
        "214-2.0.0 This is pysmtpd",
        "214-2.0.0 To report bugs in the implementation, please contact the pysmtpd maintainers",
        "214-2.0.0 with full details",
        "214 2.0.0 End of HELP info",
    ]


def test_transitions_table_only_names_talking_states() -> None:
    assert all(state not in (State.DATA, State.TLS, State.CLOSED) for state, _ in TRANSITIONS)


def test_command_line_limit_boundary() -> None:
    ok = b"NOOP " + b"x" * (512 - 7) + b"\r\n"
    assert len(ok) == 512
    d = Driver().feed(ok)
    assert d.lines()[-1] == "250 2.0.0 Ok"
    d.feed(b"NOOP " + b"x" * (512 - 6) + b"\r\n")
    assert d.lines()[-1] == "500 5.0.0 Command line too long"


def test_bare_lf_commands_are_tolerated() -> None:
    d = Driver().feed(b"EHLO c.test\nNOOP\n")
    assert d.lines()[-1] == "250 2.0.0 Ok"


def test_input_before_the_greeting_waits_for_it() -> None:
    p = ServerProtocol(ProtocolLimits(hostname="mx.test"))
    p.receive_data(b"NOOP\r\n")
    assert p.next_event() is PAUSED
    p.greeting()
    assert isinstance(p.next_event(), E.Noop)


def test_data_after_eof_is_a_usage_error() -> None:
    p = ServerProtocol(ProtocolLimits(hostname="mx.test"))
    p.receive_data(b"")
    with pytest.raises(ProtocolUsageError):
        p.receive_data(b"x")


def test_last_command_masks_auth_and_is_bounded() -> None:
    d = Driver().feed(b"EHLO c.test\r\nauth plain c2VjcmV0\r\n")
    assert d.p.last_command == "auth plain ********"
    d.feed(b"NOOP " + b"y" * 3000 + b"\r\n")
    assert len(d.p.last_command) <= 1024
