"""Ruleset: first match wins, upstream's condition semantics."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtpd.config import load_config
from smtpd.config.ruleset import RuleInput, Ruleset
from smtpd.table import TableTempFail, open_table
from smtpd.table.backend import Table

CONF = """
table doms { example.org, "*.example.net" }
table nets { 10.0.0.0/8 }
table users { alice, "bob@example.org" }
table senders { "@spam.test" }
action "local" mbox
action "virt" mbox
action "out" relay
match from local for local action "local"
match !from src <nets> mail-from <senders> for any reject
match from any for domain <doms> action "virt"
match from auth <users> for any action "out"
match from auth for any tag "SUB" action "local"
match from src <nets> !tls for any reject
match from src <nets> tls for any action "out"
match from rdns regex "\\.trusted\\.test$" for any action "out"
match !from rdns for domain "nordns.test" action "local"
match from socket for any action "out"
"""


@pytest.fixture
def ruleset(tmp_path: Path) -> Ruleset:
    f = tmp_path / "smtpd.conf"
    f.write_text(CONF)
    config = load_config(str(f), hostname="mx.example.com")
    tables: dict[str, Table] = {name: open_table(t) for name, t in config.tables.items()}
    return Ruleset(config, tables)


def which(rs: Ruleset, **kw: object) -> str | None:
    kw.setdefault("src", "192.0.2.1")
    kw.setdefault("rcpt_to", "x@other.test")
    rule = rs.match(RuleInput(**kw))  # type: ignore[arg-type]
    if rule is None:
        return None
    return "reject" if rule.reject else rule.action


def test_from_local_for_local(ruleset: Ruleset) -> None:
    assert which(ruleset, src="127.0.0.1", rcpt_to="root@localhost") == "local"
    assert which(ruleset, src="::1", rcpt_to="root@MX.example.com") == "local"
    assert which(ruleset, src="local", rcpt_to="root@localhost") == "local"
    # remote source for a local name: not rule 1; no later rule: rejected (550)
    assert which(ruleset, rcpt_to="root@localhost") is None


def test_first_match_wins_and_negation(ruleset: Ruleset) -> None:
    # spam sender from outside 10/8 is rejected before the domain rule
    assert which(ruleset, mail_from="a@spam.test", rcpt_to="u@example.org") == "reject"
    assert which(ruleset, src="10.1.1.1", mail_from="a@spam.test",
                 rcpt_to="u@example.org") == "virt"
    assert which(ruleset, rcpt_to="u@a.example.net") == "virt"
    assert which(ruleset, rcpt_to="u@a.b.example.net") is None


def test_auth(ruleset: Ruleset) -> None:
    assert which(ruleset, auth_user="alice") == "out"
    assert which(ruleset, auth_user="bob@example.org") == "out"
    assert which(ruleset, auth_user="carol") is None
    assert which(ruleset, auth_user="carol", tag="SUB") == "local"
    assert which(ruleset, tag="SUB") is None


def test_tls_and_rdns(ruleset: Ruleset) -> None:
    assert which(ruleset, src="10.2.3.4") == "reject"
    assert which(ruleset, src="10.2.3.4", tls=True) == "out"
    assert which(ruleset, rdns="mx.trusted.test") == "out"
    assert which(ruleset, rdns="mx.untrusted.test") is None
    assert which(ruleset, rcpt_to="a@nordns.test") == "local"
    assert which(ruleset, rdns="host.test", rcpt_to="a@nordns.test") is None


def test_socket_and_internal(ruleset: Ruleset) -> None:
    assert which(ruleset, src="local") == "out"
    # expanded envelopes come "from local" but not "from socket"
    assert which(ruleset, src="192.0.2.1", internal=True, rcpt_to="r@localhost") == "local"
    assert which(ruleset, src="192.0.2.1", internal=True) is None


class Failing:
    services = None

    def open(self) -> None: ...
    def close(self) -> None: ...
    def update(self) -> None: ...
    def lookup(self, service: object, key: str) -> str | None:
        raise TableTempFail("db locked")
    def check(self, service: object, key: str) -> bool:
        raise TableTempFail("db locked")
    def fetch(self, service: object) -> tuple[str, ...]:
        raise TableTempFail("db locked")


def test_tempfail_propagates(ruleset: Ruleset) -> None:
    tables = dict(ruleset.tables)
    tables["senders"] = Table(tables["senders"].definition, Failing())  # type: ignore[arg-type]
    ruleset.tables = tables
    with pytest.raises(TableTempFail):
        which(ruleset, mail_from="a@b.test")
