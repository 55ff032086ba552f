"""The ``relay tls-policy`` grammar: a word or a table, once per action,
table shape checks, and the dump (smtpd -nv) round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtpd.config import ConfigError, dump, load_config
from smtpd.config.model import Config, RelayTlsPolicy

TAIL = 'match from local for any action "out"\n'


def parse(tmp_path: Path, text: str) -> Config:
    f = tmp_path / "smtpd.conf"
    f.write_text(text + TAIL)
    return load_config(str(f), base_dir=str(tmp_path), hostname="mx.test")


def errors(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(tmp_path, text)
    return [e.split(":", 2)[2].strip() for e in info.value.errors]


@pytest.mark.parametrize("word", ["mta-sts", "dane", "both", "none"])
def test_policy_words(tmp_path: Path, word: str) -> None:
    c = parse(tmp_path, f'action "out" relay tls tls-policy {word} helo "me.test"\n')
    relay = c.actions["out"].relay
    assert relay is not None and relay.tls_policy is RelayTlsPolicy(word)
    assert relay.helo == "me.test"  # options after it still parse


def test_policy_table_and_dump_round_trip(tmp_path: Path) -> None:
    text = ('table pol { "a.test" = "dane", ".b.test" = "mta-sts" }\n'
            'action "out" relay tls-policy <pol>\n'
            'action "out2" relay tls-policy dane\n'
            'match from any for domain "x.test" action "out2"\n')
    c = parse(tmp_path, text)
    out = c.actions["out"].relay
    assert out is not None and out.tls_policy_table == "pol"
    dumped = dump(c)
    assert "tls-policy <pol>" in dumped and "tls-policy dane" in dumped
    again = tmp_path / "again.conf"
    again.write_text(dumped)
    c2 = load_config(str(again), base_dir=str(tmp_path), hostname="mx.test")
    assert c2.actions["out"].relay == out
    assert c2.actions["out2"].relay == c.actions["out2"].relay


@pytest.mark.parametrize(("text", "message"), [
    ('action "out" relay tls-policy strict\n', "strict"),
    ('action "out" relay tls-policy dane tls-policy both\n', "tls-policy already specified"),
    ('action "out" relay tls-policy\n', "tls-policy"),
    ('table l { "a.test" }\naction "out" relay tls-policy <l>\n',
     "may not be used for tls-policy lookups"),
    ('action "out" relay tls-policy <nosuch>\n', "nosuch"),
])
def test_errors(tmp_path: Path, text: str, message: str) -> None:
    errs = errors(tmp_path, text)
    assert any(message in e for e in errs), errs
