"""A bad configuration never shows a traceback: load_config() returns a
Config or raises ConfigError, whatever the input (issue 4)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtpd.config import ConfigError, load_config

WORDS = [
    "listen", "on", "socket", "lo0", "127.0.0.1", "port", "25", "99999", "tls", "smtps",
    "tls-require", "verify", "pki", "ca", "auth", "auth-optional", "tag", "hostname",
    "hostnames", "senders", "masquerade", "mask-src", "no-dsn", "filter", "action", "a",
    "mbox", "maildir", "mda", "lmtp", "relay", "host", "smtp+tls://u@h:2", "backup", "mx",
    "match", "from", "for", "any", "local", "src", "domain", "rcpt-to", "mail-from", "helo",
    "regex", "reject", "table", "t", "file:/x", "sqlite:/y", "getpwnam", "queue", "ttl", "4d",
    "compression", "encryption", "path", "control", "smtp", "limit", "max-mails", "max-rcpt",
    "max-message-size", "35M", "bounce", "warn-interval", "include", "x = \"y\"", "$x", "$nope",
    "{", "}", "<", ">", "!", "=", ",", "\"q\"", "'s'", "\\\n", "#c\n", "\n", "\"", "\x00",
    "١٢", "9" * 5000, "cert", "key", "dhe", "srs", "mta", "scheduler", "proc", "admd", "é",
]


def _check(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "smtpd.conf"
        f.write_text(text, encoding="utf-8", errors="replace")
        try:
            load_config(str(f), base_dir=tmp, hostname="fuzz.test")
        except ConfigError as e:
            assert e.errors
            assert not any("internal error" in m for m in e.errors), e.errors


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(WORDS), max_size=40).map(" ".join))
def test_token_soup(text: str) -> None:
    _check(text)


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=200))
def test_random_text(text: str) -> None:
    _check(text)


def test_every_valid_line_truncated() -> None:
    """Each prefix of a real configuration line is handled."""
    line = ('listen on 127.0.0.1 port 587 tls-require verify pki p auth <creds> tag T '
            'senders <s> masquerade\naction "r" relay host smtp+tls://bob@h.test:587 auth <c>\n'
            'match !from src { 10.0.0.0/8 } for domain regex "x" action "r"\n')
    for i in range(len(line)):
        _check(line[:i])


def test_not_utf8(tmp_path: Path) -> None:
    f = tmp_path / "smtpd.conf"
    f.write_bytes(b"listen on \xff\xfe\n")
    try:
        load_config(str(f), hostname="x")
    except ConfigError as e:
        assert len(e.errors) == 1 and e.errors[0].startswith(f"{f}: cannot read: ")
    else:
        raise AssertionError("accepted a file that is not UTF-8")
