"""Paths, mailboxes and ESMTP parameters (RFC 5321 §4.1.2, 1870, 3461, 4954,
6152, 6531)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtpd.smtp import reply as R
from smtpd.smtp.address import (
    AddressError,
    Body,
    Mailbox,
    MailParams,
    Notify,
    Orcpt,
    ParamError,
    RcptParams,
    Ret,
    is_valid_domain,
    parse_mail_params,
    parse_path,
    quote_local,
    xtext_decode,
    xtext_encode,
)


@pytest.mark.parametrize(
    "text, local, domain, rest",
    [
        ("<a@b.test>", "a", "b.test", ""),
        ("<First.Last+tag@Example.ORG> SIZE=1", "First.Last+tag", "Example.ORG", " SIZE=1"),
        ('<"john doe"@b.test>', "john doe", "b.test", ""),
        ('<"a\\"b\\\\c"@b.test>', 'a"b\\c', "b.test", ""),
        ('<"a>b"@b.test>', "a>b", "b.test", ""),
        ("<u@[192.0.2.1]>", "u", "[192.0.2.1]", ""),
        ("<u@[IPv6:2001:db8::1]>", "u", "[IPv6:2001:db8::1]", ""),
        ("<@a.test,@b.test:u@c.test>", "u", "c.test", ""),
        ("<postmaster>", "postmaster", "mx.test", ""),
        ("<é@bü.test>", "é", "bü.test", ""),
        ("<first..last.@b.test>", "first..last.", "b.test", ""),
    ],
)
def test_parse_path(text: str, local: str, domain: str, rest: str) -> None:
    assert parse_path(text, "mx.test") == (Mailbox(local, domain), rest)


def test_null_path() -> None:
    assert parse_path("<> BODY=7BIT") == (None, " BODY=7BIT")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "a@b.test",
        "<a@b.test",
        "<a b@b.test>",
        "<a@b..test>",
        "<a@-b.test>",
        "<a@b.test.>",
        "<@a.test:>",
        "<@a.test,b.test:u@c.test>",
        "<u@[300.1.1.1]>",
        "<u@[IPv6:zz::1]>",
        "<u@[1.2.3.4>",
        '<"unterminated@b.test>',
        '<"ctl\x01"@b.test>',
        "<@b.test>",
        "<a@b.test\x00>",
        "<" + "a" * 65 + "@b.test>",
        "<a@" + "b" * 64 + ".test>",
        "<a@" + ".".join(["b" * 60] * 5) + ">",
    ],
)
def test_bad_paths(text: str) -> None:
    with pytest.raises(AddressError):
        parse_path(text, "mx.test")


def test_no_domain_without_default() -> None:
    with pytest.raises(AddressError):
        parse_path("<postmaster>")


def test_length_limits() -> None:
    assert parse_path("<" + "a" * 64 + "@b.test>")[0] is not None
    long_domain = ".".join(["d" * 63] * 3) + "." + "e" * 61  # 253 octets
    assert parse_path("<a@" + long_domain + ">")[0] is not None
    with pytest.raises(AddressError):  # path over 256 octets
        parse_path("<" + "a" * 64 + "@" + ".".join(["d" * 63] * 3) + "." + "e" * 61 + ">")


def test_str_requotes() -> None:
    assert str(Mailbox("john doe", "b.test")) == '"john doe"@b.test'
    assert str(Mailbox('a"b', "b.test")) == '"a\\"b"@b.test'
    assert str(Mailbox("a.b", "b.test")) == "a.b@b.test"
    assert quote_local("") == '""'


@given(st.text(min_size=1, max_size=30).filter(lambda s: all(c.isprintable() for c in s)))
def test_quote_roundtrip(local: str) -> None:
    try:
        mailbox, rest = parse_path(f"<{quote_local(local)}@b.test>")
    except AddressError:
        assert len(quote_local(local).encode()) > 64 or "@" in local or ">" in local
        return
    assert mailbox == Mailbox(local, "b.test") and rest == ""


def test_helo_domains() -> None:
    assert is_valid_domain("mail_relay.example.org")
    assert is_valid_domain("[127.0.0.1]")
    assert not is_valid_domain("")
    assert not is_valid_domain("a b")
    assert not is_valid_domain("[localhost]")


def test_mail_params() -> None:
    assert parse_mail_params("") == MailParams()
    params = parse_mail_params(" SIZE=1000 body=8bitmime SMTPUTF8 RET=hdrs ENVID=QQ+2B1 AUTH=<>  ")
    assert params == MailParams(1000, Body.EIGHTBITMIME, True, Ret.HDRS, "QQ+1", "<>")
    assert parse_mail_params("AUTH=a+2Bb@c.test").auth == "a+b@c.test"


@pytest.mark.parametrize(
    "rest, reply",
    [
        ("FOO=bar", R.unsupported_mail_option("FOO=bar")),
        ("SIZE=abc", R.unsupported_mail_option("SIZE=abc")),
        ("SIZE=" + "9" * 21, R.unsupported_mail_option("SIZE=" + "9" * 21)),
        ("BODY=9BIT", R.unsupported_mail_option("BODY=9BIT")),
        ("RET=ALL", R.unsupported_mail_option("RET=ALL")),
        ("ENVID=a+zz", R.unsupported_mail_option("ENVID=a+zz")),
        ("ENVID=" + "a" * 101, R.unsupported_mail_option("ENVID=" + "a" * 101)),
        ("SMTPUTF8=yes", R.unsupported_mail_option("SMTPUTF8=yes")),
        ("SIZE=1 SIZE=2", R.Reply(501, "5.5.4", "Invalid command arguments: Duplicate SIZE")),
        ("SIZE=", R.Reply(501, "5.5.4", "Invalid command arguments: Syntax error")),
        ("-X", R.Reply(501, "5.5.4", "Invalid command arguments: Syntax error")),
    ],
)
def test_bad_mail_params(rest: str, reply: R.Reply) -> None:
    with pytest.raises(ParamError) as err:
        parse_mail_params(rest)
    assert err.value.reply == reply


def test_offered_extensions_gate_params() -> None:
    with pytest.raises(ParamError):
        parse_mail_params("RET=FULL", dsn=False)
    with pytest.raises(ParamError):
        parse_mail_params("SMTPUTF8", smtputf8=False)
    from smtpd.smtp.address import parse_rcpt_params

    with pytest.raises(ParamError) as err:
        parse_rcpt_params("NOTIFY=NEVER", dsn=False)
    assert err.value.reply.to_bytes() == b"503 Unsupported option NOTIFY=NEVER\r\n"


def test_rcpt_params() -> None:
    from smtpd.smtp.address import parse_rcpt_params

    assert parse_rcpt_params("") == RcptParams()
    params = parse_rcpt_params("NOTIFY=success,DELAY ORCPT=rfc822;a+2Bb@c.test")
    assert params.notify == {Notify.SUCCESS, Notify.DELAY}
    assert params.orcpt == Orcpt("rfc822", "a+b@c.test")
    assert str(params.orcpt) == "rfc822;a+b@c.test"
    assert parse_rcpt_params("NOTIFY=NEVER").notify == {Notify.NEVER}
    for bad, reply in [
        ("NOTIFY=NEVER,SUCCESS", R.NOTIFY_NEVER_COMBINED),
        ("NOTIFY=SOMETIMES", R.unsupported_rcpt_option("NOTIFY=SOMETIMES")),
        ("ORCPT=rfc822", R.ORCPT_SYNTAX),
        ("ORCPT=rfc822;a+0Ab", R.ORCPT_SYNTAX),
        ("ORCPT=;a", R.ORCPT_SYNTAX),
        ("ORCPT=rfc822;" + "a" * 500, R.ORCPT_SYNTAX),
    ]:
        with pytest.raises(ParamError) as err:
            parse_rcpt_params(bad)
        assert err.value.reply == reply, bad


@given(st.text(max_size=40))
def test_xtext_roundtrip(text: str) -> None:
    encoded = xtext_encode(text)
    assert all(33 <= ord(c) <= 126 and c != "=" for c in encoded)
    assert xtext_decode(encoded) == text


def test_xtext_rejects() -> None:
    for bad in ["a=b", "a b", "+4", "+4a", "é"]:
        with pytest.raises(ValueError):
            xtext_decode(bad)
