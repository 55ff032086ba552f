"""Fuzz the SMTP server protocol and the address parser with arbitrary bytes
cut at arbitrary points: only replies come out, never an exception, and the
buffer stays bounded (the DESIGN.md §8 fuzz rule; tests/smtp has the
grammar-aware target, this one is grammar-blind)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from fuzz_profiles import fuzz_settings
from hypothesis import given
from hypothesis import strategies as st

from smtpd.smtp import events as E
from smtpd.smtp import reply as R
from smtpd.smtp.address import (
    AddressError,
    ParamError,
    parse_mail_params,
    parse_path,
    parse_rcpt_params,
)
from smtpd.smtp.protocol import NEED_DATA, PAUSED, ProtocolLimits, ServerProtocol
from smtpd.smtp.reply import Reply

VERBS = [b"EHLO x\r\n", b"MAIL FROM:", b"RCPT TO:", b"DATA\r\n", b".\r\n", b"\r\n", b"<",
         b">", b"@", b" SIZE=", b" BODY=8BITMIME", b" SMTPUTF8", b" NOTIFY=", b" ORCPT=",
         b"AUTH PLAIN", b"STARTTLS\r\n", b"RSET\r\n", b"\x00", b"\xff", "é".encode()]


def answer(proto: ServerProtocol, event: E.Event) -> Reply | None:
    match event:
        case E.Helo():
            return proto.helo_reply(event, "127.0.0.1")
        case E.ProtocolError(reply=reply) | E.AuthChallenge(reply=reply):
            return reply
        case E.MailFrom():
            return R.MAIL_OK
        case E.RcptTo():
            return R.RCPT_OK
        case E.DataStart():
            return R.DATA_GO
        case E.DataEnd(error=error):
            return error or Reply(250, "2.0.0", "ok")
        case E.StartTls():
            return Reply(454, "4.7.0", "TLS not available")
        case E.AuthCredentials():
            return R.AUTH_FAILED
        case E.DataChunk() | E.ConnectionClosed():
            return None
    return R.OK


@fuzz_settings()
@given(st.lists(st.one_of(st.sampled_from(VERBS), st.binary(max_size=64)), max_size=60),
       st.lists(st.integers(1, 200), min_size=1, max_size=20))
def test_server_protocol_only_replies(pieces: list[bytes], cuts: list[int]) -> None:
    limits = ProtocolLimits(hostname="fuzz.test", max_message_size=500, max_bad_commands=1000,
                            auth_mechanisms=("PLAIN", "LOGIN"), auth_plaintext=True)
    proto = ServerProtocol(limits)
    proto.greeting()
    stream = b"".join(pieces)
    pos, i = 0, 0
    while not proto.closed:
        event = proto.next_event()
        if event is NEED_DATA:
            if pos >= len(stream):
                proto.receive_data(b"")
                continue
            step = cuts[i % len(cuts)]
            i += 1
            proto.receive_data(stream[pos:pos + step])
            pos += step
            # bounded: at most a line cap plus one read is ever buffered
            assert len(proto._buf) <= 4096 + 200 + limits.max_text_line
            continue
        if event is PAUSED:
            break
        assert isinstance(event, E.Event)
        reply = answer(proto, event)
        if reply is not None:
            out = proto.send(reply)
            assert out.endswith(b"\r\n") and out[:3].isdigit()


@fuzz_settings()
@given(st.text(max_size=80), st.booleans())
def test_address_parsers_raise_only_their_errors(text: str, dsn: bool) -> None:
    parsers: list[Callable[[str], object]] = [
        lambda t: parse_path(t, "example.com"), parse_path,
        lambda t: parse_mail_params(t, dsn=dsn), lambda t: parse_rcpt_params(t, dsn=dsn)]
    for parse in parsers:
        with contextlib.suppress(AddressError, ParamError):
            parse(text)
