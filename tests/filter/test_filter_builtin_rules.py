"""Builtin filter rules: parsing (through the real config parser too) and evaluation."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtpd.config.load import load_config
from smtpd.filter.builtin import Facts, Rule, RuleError, evaluate, parse_rule
from smtpd.filter.lines import Decision
from smtpd.filter.runtime import flatten, listener_filters, proc_specs
from smtpd.table.service import Service


class FakeTable:
    def __init__(self, values: set[str], regex: bool = False) -> None:
        self.values = values
        self.regex = regex

    def match(self, service: Service, key: str) -> bool:
        if service is Service.REGEX:
            import re
            return any(re.search(v, key) for v in self.values)
        return key in self.values


FACTS = Facts(rdns="mx.example.org", fcrdns=True, src="192.0.2.1", helo="mx.example.org",
              auth_user="", mail_from="a@spam.test", rcpt_to="b@ok.test")


def test_parse_canonical_text() -> None:
    rule = parse_rule('connect match ! rdns regex <"t"> reject "550 5.7.1 go"')
    assert rule.phase == "connect" and rule.action is Decision.REJECT
    assert rule.param == "550 5.7.1 go"
    (cond,) = rule.conditions
    assert (cond.kind, cond.negate, cond.table, cond.regex) == ("rdns", True, "t", True)


@pytest.mark.parametrize("text", [
    "connect match helo <t> junk",            # no helo yet at connect
    "helo match mail-from <t> junk",          # no sender yet at helo
    "connect match src junk",                 # src needs a table
    'connect match rdns reject "250 ok"',     # not a refusal
    "connect match rdns reject",              # missing reply
    "connect match rdns regex junk",          # regex without table
    "connect match junk",                     # no condition
    'connect match rdns rewrite "x"',         # nothing to rewrite at connect
    "connect rdns junk", "bogus match rdns junk", "connect match rdns junk extra",
])
def test_parse_refused(text: str) -> None:
    with pytest.raises(RuleError):
        parse_rule(text)


@pytest.mark.parametrize(("text", "matches"), [
    ("connect match rdns junk", True),
    ("connect match !rdns junk", False),
    ("connect match fcrdns junk", True),
    ("connect match !fcrdns junk", False),
    ("connect match src <nets> junk", True),
    ("connect match rdns regex <re> junk", True),
    ("connect match !rdns regex <re> junk", False),
    ("mail-from match mail-from regex <spam> junk", True),
    ("mail-from match auth junk", False),
    ("mail-from match !auth junk", True),
    ("rcpt-to match rcpt-to <rcpts> junk", True),
    ("rcpt-to match rcpt-to <rcpts> !fcrdns junk", False),   # all must hold
    ("helo match helo regex <re> junk", True),
])
def test_evaluate(text: str, matches: bool) -> None:
    tables = {"nets": FakeTable({"192.0.2.1"}), "re": FakeTable({r"\.example\.org$"}),
              "spam": FakeTable({"@spam[.]test$"}), "rcpts": FakeTable({"b@ok.test"})}
    assert evaluate(parse_rule(text.replace("!", "! ")), FACTS, tables) is matches


def test_missing_rdns_never_matches_a_table() -> None:
    rule = parse_rule("connect match rdns regex <re> junk")
    facts = Facts(rdns="", fcrdns=False, src="192.0.2.1")
    assert not evaluate(rule, facts, {"re": FakeTable({".*"})})


def test_config_builds_chains_and_processes(tmp_path: Path) -> None:
    conf = tmp_path / "smtpd.conf"
    conf.write_text(
        'table bad { "^evil" }\n'
        'proc "shared" "/bin/cat" user nobody\n'
        'filter "a" phase helo match helo regex <bad> reject "550 no"\n'
        'filter "b" proc "shared"\n'
        'filter "c" proc-exec "/usr/bin/filter -x" user nobody group nogroup\n'
        'filter "inner" chain { "a", "b" }\n'
        'filter "outer" chain { "inner", "c" }\n'
        'filter "unused" proc-exec "/never/started"\n'
        'listen on 127.0.0.1 port 2525 filter "outer"\n'
        'listen on 127.0.0.1 port 2526 filter { "c", "a" }\n'
        'action "l" mbox\nmatch from any for local action "l"\n')
    config = load_config(str(conf))
    assert not config.warnings
    chain = flatten(config, listener_filters(config.listeners[0]))
    assert [e.name for e in chain] == ["a", "b", "c"]
    assert isinstance(chain[0].rule, Rule) and chain[1].conn == "shared"
    assert [e.name for e in flatten(config, listener_filters(config.listeners[1]))] == [
        "c", "a"]
    specs = proc_specs(config)
    assert set(specs) == {"shared", "c"}
    assert (specs["c"].command, specs["c"].user, specs["c"].group) == (
        "/usr/bin/filter -x", "nobody", "nogroup")
    assert specs["shared"].user == "nobody"
