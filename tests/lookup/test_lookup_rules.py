"""Match rules and recipient expansion, driven through a parsed smtpd.conf."""

from __future__ import annotations

import getpass
import pwd
from pathlib import Path

import pytest

from smtpd.config import load_config
from smtpd.config.ruleset import RuleInput, Ruleset
from smtpd.lookup.expand import Expander, ExpandError
from smtpd.lookup.proc import check_password
from smtpd.queue.envelope import DeliveryType, Envelope
from smtpd.table.backend import open_table

ME = getpass.getuser()

CONF = f"""
table aliases {{ postmaster = {ME}, team = "{ME}, postmaster, {ME}@localhost", out = "other@remote.test", loop1 = loop2, loop2 = loop1, gone = "error:550 5.1.1 gone" }}
table vusers {{ "alice@virt.test" = vmail, "@catch.test" = vmail, "bob@virt.test" = "alice@virt.test" }}
table vbase {{ vmail = "5000:5000:/var/vmail" }}
table nets {{ 192.0.2.0/24 }}
table creds {{ alice = "$2b$04$1.v0ZR0w8F3uZJ4b1Tg/BeJ4o4dW2CwqZp9pG2tVUjvI7o4PVzMvS" }}
action "local" maildir alias <aliases>
action "virtual" maildir virtual <vusers> userbase <vbase>
action "relay" relay
match from any for domain "virt.test" action "virtual"
match from any for domain "catch.test" action "virtual"
match from local for local action "local"
match from src <nets> for any action "relay"
match from any auth for any action "relay"
match from any for domain "reject.test" reject
"""


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Ruleset, Expander]:
    conf = tmp_path / "smtpd.conf"
    conf.write_text(CONF)
    config = load_config(str(conf), hostname="mx.example.test")
    tables = {n: open_table(d) for n, d in config.tables.items()}
    for t in tables.values():
        t.open()
    rules = Ruleset(config, tables, frozenset({"localhost", "mx.example.test"}))
    expander = Expander(config.actions, tables, "+", lambda a: rules.match(facts(a)))
    return rules, expander


def facts(rcpt: str, src: str = "127.0.0.1", auth: str = "") -> RuleInput:
    return RuleInput(src=src, rcpt_to=rcpt, mail_from="s@x.test", helo="h",
                     auth_user=auth or None)


def template(rcpt: str) -> Envelope:
    return Envelope(evpid=0, type=DeliveryType.MDA, dispatcher="-", sender="s@x.test",
                    rcpt=rcpt, dest=rcpt, ctime=1, ttl=100, orig_rcpt=rcpt)


def test_first_match_wins_and_from_local(setup: tuple[Ruleset, Expander]) -> None:
    rules, _ = setup
    rule = rules.match(facts(f"{ME}@localhost"))
    assert rule is not None and rule.action == "local"
    # not local, not in <nets>, not authenticated: no rule -> refused
    assert rules.match(facts("x@remote.test", src="203.0.113.9")) is None
    relay = rules.match(facts("x@remote.test", src="192.0.2.7"))
    assert relay is not None and relay.action == "relay"
    authed = rules.match(facts("x@remote.test", src="203.0.113.9", auth="alice"))
    assert authed is not None and authed.action == "relay"
    rejected = rules.match(facts("x@reject.test", src="203.0.113.9"))
    assert rejected is not None and rejected.reject


def test_alias_expansion_with_loop_and_remote(setup: tuple[Ruleset, Expander]) -> None:
    rules, expander = setup
    rcpt = "team@localhost"
    rule = rules.match(facts(rcpt))
    assert rule is not None
    envs = expander.expand(rule, template(rcpt))
    # ME, postmaster -> ME and ME@localhost are one destination, delivered once
    assert [(e.type.value, e.mda_user) for e in envs] == [("mda", ME)]
    assert all(e.rcpt == rcpt and e.orig_rcpt == rcpt for e in envs)
    # an alias to an address that no rule accepts fails the recipient, as upstream
    with pytest.raises(ExpandError):
        expander.expand(rule, template("out@localhost"))
    with pytest.raises(ExpandError):
        expander.expand(rule, template("loop1@localhost"))


def test_alias_error_and_unknown_user(setup: tuple[Ruleset, Expander]) -> None:
    rules, expander = setup
    rule = rules.match(facts("gone@localhost"))
    assert rule is not None
    with pytest.raises(ExpandError) as err:
        expander.expand(rule, template("gone@localhost"))
    assert err.value.reply == "550 5.1.1 gone"
    with pytest.raises(ExpandError) as err:
        expander.expand(rule, template("no-such-user-xyz@localhost"))
    assert err.value.reply == "550 Invalid recipient: <no-such-user-xyz@localhost>"


def test_subaddress_and_postmaster(setup: tuple[Ruleset, Expander]) -> None:
    rules, expander = setup
    rule = rules.match(facts(f"{ME}+lists@localhost"))
    assert rule is not None
    (env,) = expander.expand(rule, template(f"{ME}+lists@localhost"))
    assert env.mda_user == pwd.getpwnam(ME).pw_name
    assert env.mda_subaddress == "lists"
    (pm,) = expander.expand(rule, template("postmaster@localhost"))
    assert pm.dest == f"{ME}@localhost" and pm.dispatcher == "local"


def test_virtual_users_need_no_system_account(setup: tuple[Ruleset, Expander]) -> None:
    rules, expander = setup
    for rcpt in ("alice@virt.test", "bob@virt.test", "anything@catch.test"):
        rule = rules.match(facts(rcpt, src="203.0.113.9"))
        assert rule is not None and rule.action == "virtual"
        (env,) = expander.expand(rule, template(rcpt))
        assert env.mda_user == "vmail"
        assert env.dispatcher == "virtual"
    rule = rules.match(facts("nobody@virt.test", src="203.0.113.9"))
    assert rule is not None
    with pytest.raises(ExpandError):
        expander.expand(rule, template("nobody@virt.test"))


def test_password_hashes() -> None:
    import bcrypt
    from passlib.hash import sha512_crypt

    h = bcrypt.hashpw(b"secret", bcrypt.gensalt(4)).decode()
    assert check_password("secret", h) and not check_password("wrong", h)
    s = sha512_crypt.using(rounds=5000).hash("secret")
    assert check_password("secret", s) and not check_password("nope", s)
    assert not check_password("secret", "plaintext")
