"""Fuzz the configuration parser on generated smtpd.conf text: statements
built from the grammar's own words, cut and shuffled, plus arbitrary text.
Only ConfigError may escape load_config (DESIGN.md §1: bad config input is an
error message with file:line, never a crash)."""

from __future__ import annotations

import os
import tempfile

from fuzz_profiles import fuzz_settings
from hypothesis import given
from hypothesis import strategies as st

from smtpd.config import ConfigError, load_config

STATEMENTS = [
    'listen on 127.0.0.1 port 2525',
    'listen on lo tls pki example.com auth <creds> tag T hostname h.test',
    'listen on socket',
    'pki example.com cert "/nonexistent.crt"',
    'table creds { "alice" = "secret" }',
    'table aliases file:/nonexistent',
    'action "local" maildir "%{user.username}/Maildir"',
    'action "relay" relay host smtp://mx.example.com:25 tls',
    'action "mbox" mbox alias <aliases>',
    'action "lmtp" lmtp "/run/lmtp.sock" rcpt-to',
    'match from any for local action "local"',
    'match from auth for any action "relay"',
    'match from src 10.0.0.0/8 mail-from regex "^a" for domain example.com action "mbox"',
    'match !from local for any reject',
    'smtp limit max-mails 10 max-rcpt 5 max-sessions-per-ip 3 command-timeout 2s',
    'smtp limit max-auth-failures 2 auth-ban 1h auth-failure-delay 0 data-timeout 10m',
    'smtp max-message-size 10M',
    'smtp sub-addr-delim "+"',
    'queue compression',
    'queue ttl 4d',
    'queue path "/tmp/q"',
    'bounce warn-interval 1h, 6h',
    'mda wrapper w "/bin/true"',
    'filter f proc-exec "/bin/true"',
    'srs key "k"',
    'mta max-deferred 100',
    'ca example.com cert "/nonexistent"',
    'M = "macro"',
    'match from any for local action $M',
    'include "/nonexistent.conf"',
]
WORDS = ["listen", "on", "port", "match", "from", "for", "action", "table", "smtp", "limit",
         "queue", "{", "}", "<", ">", ",", "=", '"', "!", "\\", "\n", "#", "$", "1", "-1",
         "99999999999999999999", "any", "local", "domain", "tls", "pki", "auth", "\0", "é"]


@st.composite
def config_text(draw: st.DrawFn) -> str:
    lines = draw(st.lists(st.sampled_from(STATEMENTS), max_size=8))
    out = []
    for line in lines:
        words = line.split(" ")
        if draw(st.booleans()):  # damage the statement
            ops = draw(st.lists(st.tuples(st.integers(0, 20), st.sampled_from(WORDS)),
                                max_size=3))
            for pos, word in ops:
                pos %= len(words) + 1
                if draw(st.booleans()):
                    words.insert(pos, word)
                elif words:
                    words.pop(pos % len(words))
        out.append(" ".join(words))
    if draw(st.booleans()):
        out.append(draw(st.text(max_size=40)))
    return "\n".join(out) + draw(st.sampled_from(["\n", "", "\\\n"]))


def load(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "smtpd.conf")
        with open(path, "w", encoding="utf-8", errors="surrogatepass") as f:
            f.write(text)
        try:
            load_config(path, base_dir=tmp, hostname="fuzz.test", check_files=False)
        except ConfigError as exc:
            assert str(exc)  # an error always says what is wrong


@fuzz_settings(scale=0.5)
@given(config_text())
def test_generated_configs_raise_only_config_error(text: str) -> None:
    load(text)


@fuzz_settings(scale=0.5)
@given(st.text(max_size=200))
def test_arbitrary_text_raises_only_config_error(text: str) -> None:
    load(text)
