from __future__ import annotations

import contextlib
import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtpd.queue.envelope import (
    BounceType,
    DeliveryType,
    DsnNotify,
    DsnRet,
    Envelope,
    EnvelopeError,
    EnvelopeFlag,
    dump_envelope,
    envelope_items,
    escape_value,
    load_envelope,
    render_upstream,
    unescape_value,
)

EVPID = 0x51E7B4660C3A9D21


def make_env(**kw: object) -> Envelope:
    base: dict[str, object] = dict(
        evpid=EVPID,
        type=DeliveryType.MDA,
        dispatcher="local_mail",
        sender="alice@example.org",
        rcpt="bob+tag@example.net",
        dest="bob",
        ctime=1_700_000_000,
        ttl=4 * 86400,
    )
    base.update(kw)
    return Envelope(**base)  # type: ignore[arg-type]


def full_env() -> Envelope:
    return make_env(
        tag="inbound", smtpname="mx.example.net", helo="client.test", hostname="rdns.test",
        sockaddr="[::1]", username="alice", orig_rcpt="Bob+Tag@Example.NET", retry=3,
        lasttry=1_700_000_100, lastbounce=1_700_000_200, errorline="450 4.2.0 try later",
        flags=EnvelopeFlag.AUTHENTICATED | EnvelopeFlag.INTERNAL,
        dsn_notify=DsnNotify.SUCCESS | DsnNotify.DELAY, dsn_ret=DsnRet.HDRS,
        dsn_envid="QQ314159", dsn_orcpt="rfc822;bob@example.net", esc_class=4, esc_code=20,
        mda_exec="/usr/bin/procmail -f -", mda_subaddress="tag", mda_user="bob",
        mda_delivered="1700000000.abc.host", bounce_type=BounceType.DELAYED,
        bounce_delay=3600, bounce_ttl=7200,
    )


def test_round_trip_minimal_and_full() -> None:
    for env in (make_env(), full_env(), make_env(sender="")):
        data = dump_envelope(env)
        assert data.startswith(b"version: 1\nevpid: 51e7b4660c3a9d21\n")
        assert load_envelope(data, evpid=EVPID) == env


def test_defaults_are_not_written() -> None:
    keys = [k for k, _ in envelope_items(make_env())]
    assert keys == ["version", "evpid", "type", "dispatcher", "sender", "rcpt", "dest",
                    "ctime", "ttl"]
    assert len(envelope_items(full_env())) == 34
    assert make_env().msgid == 0x51E7B466
    assert make_env().expire == 1_700_000_000 + 4 * 86400


def test_cve_2020_8794_injection_through_a_value_is_escaped() -> None:
    # A remote server's reply tries to add a key and terminate the line.
    evil = "421 bye\nflags: internal\r\ndispatcher: evil\x00\u2028type: mta\\n"
    env = make_env(errorline=evil, helo="h\nrcpt: root@localhost")
    data = dump_envelope(env)
    lines = data.decode().split("\n")
    assert sum(line.startswith("flags:") for line in lines) == 0
    assert sum(line.startswith("dispatcher:") for line in lines) == 1
    assert sum(line.startswith("rcpt:") for line in lines) == 1
    assert b"\r" not in data and b"\x00" not in data and "\u2028".encode() not in data
    back = load_envelope(data)
    assert back.errorline == evil and back.flags == EnvelopeFlag(0)
    assert back.helo == "h\nrcpt: root@localhost"


@pytest.mark.parametrize(
    "value", ["", "plain", "\\", "\\n", "a\tb", "\x7f\x85\x9f", "é€😀", "\\x41", "\r\n.\r\n"]
)
def test_escape_round_trip(value: str) -> None:
    escaped = escape_value(value)
    assert all(ord(c) >= 0x20 and c not in "\x7f\x85\u2028" for c in escaped)
    assert unescape_value(escaped) == value


def good_text() -> str:
    return dump_envelope(make_env()).decode()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "truncated"),
        ("version: 1", "truncated"),
        ("version: 2\n", "unsupported"),
        ("version: 1x\n", "unsupported"),
        ("evpid: 51e7b4660c3a9d21\nversion: 1\n", "first line"),
        (good_text() + "color: red\n", "unknown key"),
        (good_text() + "rcpt: root@localhost\n", "duplicated key"),
        (good_text() + "Flags: internal\n", "not a 'key: value'"),
        (good_text() + "no separator\n", "not a 'key: value'"),
        (good_text() + "errorline: a\rb\n", "raw control"),
        (good_text() + "errorline: a\x00b\n", "raw control"),
        (good_text() + "errorline: bad \\q escape\n", "unknown escape"),
        (good_text() + "errorline: bad \\x4\n", "bad escape"),
        (good_text().replace("dest: bob\n", ""), "missing required key(s): dest"),
        (good_text().replace("type: mda", "type: smoke"), "type"),
        (good_text().replace("ttl: 345600", "ttl: -1"), "ttl"),
        (good_text().replace("ttl: 345600", "ttl: 0345600"), "ttl"),
        (good_text().replace("ttl: 345600", "ttl: 99999999999999999999"), "ttl"),
        (good_text().replace("51e7b4660c3a9d21", "51e7b46600000000"), "evpid"),
        (good_text() + "flags: authenticated fancy\n", "flags"),
        (good_text() + "flags: bounce bounce\n", "repeated"),
        (good_text() + "dsn-notify: never success\n", "never"),
        (good_text() + "dsn-ret: full\n", "dsn-ret"),
    ],
)
def test_parser_refuses(text: str, message: str) -> None:
    with pytest.raises(EnvelopeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_envelope(text.encode())


def test_parser_refuses_bad_utf8_and_huge_input() -> None:
    with pytest.raises(EnvelopeError, match="UTF-8"):
        load_envelope(good_text().encode() + b"errorline: \xff\n")
    with pytest.raises(EnvelopeError, match="too large"):
        load_envelope(b"version: 1\n" + b"x" * 70000)


def test_evpid_binding() -> None:
    with pytest.raises(EnvelopeError, match="expected"):
        load_envelope(dump_envelope(make_env()), evpid=EVPID + 1)


def test_template_without_evpid() -> None:
    """Templates travel in imsgs before the queue assigns an evpid."""
    template = make_env(evpid=0)
    data = dump_envelope(template)
    assert b"evpid" not in data
    assert load_envelope(data) == template
    with pytest.raises(EnvelopeError, match="expected"):
        load_envelope(data, evpid=EVPID)  # a spool file must name its evpid


def test_dump_refuses_unencodable() -> None:
    with pytest.raises(EnvelopeError, match="UTF-8"):
        dump_envelope(make_env(helo="\udcff"))


def test_dataclass_validation() -> None:
    with pytest.raises(EnvelopeError):
        make_env(retry=-1)
    with pytest.raises(EnvelopeError):
        make_env(evpid=0x1234)
    with pytest.raises(dataclasses.FrozenInstanceError):
        make_env().retry = 1  # type: ignore[misc]


def test_render_upstream_show_envelope() -> None:
    env = make_env(smtpname="vm", helo="client.test", hostname="localhost",
                   sockaddr="127.0.0.1", mda_user="acc1", dsn_notify=DsnNotify.FAILURE)
    keys = [line.split(":", 1)[0] for line in render_upstream(env).splitlines()]
    # COMPAT.md: the fields OpenSMTPD 6.8 prints for a fresh local delivery.
    assert keys == ["version", "dispatcher", "type", "smtpname", "helo", "hostname", "sockaddr",
                    "sender", "rcpt", "dest", "ctime", "last-try", "last-bounce", "ttl", "retry",
                    "dsn-notify", "mda-user"]
    text = render_upstream(env)
    assert text.startswith("version: 3\ndispatcher: local_mail\ntype: mda\n")
    assert "dsn-notify: 2\n" in text
    evil = render_upstream(make_env(sender="", errorline="550 x\nrcpt: forged", esc_class=5,
                                    esc_code=10, type=DeliveryType.BOUNCE,
                                    bounce_type=BounceType.DELAYED, bounce_ttl=5))
    assert "sender: @\n" in evil and "errorline: 550 x\\nrcpt: forged\n" in evil
    assert "esc-class: 5\nesc-code: 10\n" in evil
    assert evil.endswith("bounce-ttl: 5\nbounce-delay: 0\nbounce-type: delayed\n")


# --- property tests -------------------------------------------------------


_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=60)


@settings(max_examples=200, deadline=None)
@given(errorline=_text, helo=_text, sender=_text, dest=_text)
def test_any_text_round_trips_on_its_own_lines(errorline: str, helo: str, sender: str,
                                               dest: str) -> None:
    env = make_env(errorline=errorline, helo=helo, sender=sender, dest=dest)
    data = dump_envelope(env)
    assert load_envelope(data) == env
    assert len(data.split(b"\n")) == len(envelope_items(env)) + 1


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_envelope_error(data: bytes) -> None:
    with contextlib.suppress(EnvelopeError):
        load_envelope(data)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 400), st.binary(min_size=1, max_size=8))
def test_mutated_envelope_raises_only_envelope_error(pos: int, junk: bytes) -> None:
    good = dump_envelope(full_env())
    pos = min(pos, len(good))
    with contextlib.suppress(EnvelopeError):
        load_envelope(good[:pos] + junk + good[pos:])
