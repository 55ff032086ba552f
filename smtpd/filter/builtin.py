"""Builtin filters: ``filter NAME phase PHASE match CONDITIONS ACTION``.

The grammar is OpenSMTPD's (smtpd.conf(5), FILTERS):

    PHASE      connect | helo | ehlo | mail-from | rcpt-to | data | commit
    CONDITION  [!] rdns [[regex] <table>] | [!] fcrdns | [!] src [regex] <table>
               | [!] helo [regex] <table> | [!] auth [[regex] <table>]
               | [!] mail-from [regex] <table> | [!] rcpt-to [regex] <table>
    ACTION     junk | bypass | reject "CODE text" | disconnect "CODE text"
               | rewrite "value" | report "text"

Every condition must hold for the action to apply (upstream ANDs them); a
condition that needs facts a phase does not have yet (``helo`` at connect)
is refused at parse time, as upstream.  The config parser turns the tokens
into a canonical text (``Filter.argument``); the smtp process parses that
text again with ``parse_rule`` and evaluates it with ``evaluate``.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from smtpd.filter.lines import Decision, reply_ok
from smtpd.table.service import Service

if TYPE_CHECKING:
    from smtpd.config.builder import Builder
    from smtpd.config.cursor import Cursor

PHASES = ("connect", "helo", "ehlo", "mail-from", "rcpt-to", "data", "commit")
# the earliest phase at which each condition has its fact (index into PHASES)
CONDITION_FROM = {"rdns": 0, "fcrdns": 0, "src": 0, "helo": 1, "auth": 3,
                  "mail-from": 3, "rcpt-to": 4}
TABLE_OPTIONAL = frozenset({"rdns", "auth"})
NO_TABLE = frozenset({"fcrdns"})
ACTIONS_WITH_PARAM = frozenset({"reject", "disconnect", "rewrite", "report"})
ACTIONS = ACTIONS_WITH_PARAM | {"junk", "bypass"}
# which table service a plain (non-regex) table is consulted with (upstream K_*)
SERVICE = {"rdns": Service.DOMAIN, "helo": Service.DOMAIN, "src": Service.NETADDR,
           "auth": Service.STRING, "mail-from": Service.MAILADDR,
           "rcpt-to": Service.MAILADDR}


class RuleError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Condition:
    kind: str
    negate: bool = False
    table: str | None = None
    regex: bool = False


@dataclass(frozen=True, slots=True)
class Rule:
    phase: str
    conditions: tuple[Condition, ...]
    action: Decision
    param: str = ""


@dataclass(frozen=True, slots=True)
class Facts:
    """What a session knows when a rule is evaluated."""

    rdns: str
    fcrdns: bool
    src: str
    helo: str = ""
    auth_user: str = ""
    mail_from: str = ""
    rcpt_to: str = ""


class Matcher(Protocol):
    def match(self, service: Service, key: str) -> bool: ...


def _check(rule_phase: str, cond: Condition, action: str, param: str) -> None:
    if PHASES.index(rule_phase) < CONDITION_FROM[cond.kind]:
        raise RuleError(f"{cond.kind} cannot be checked at phase {rule_phase}")
    if cond.table is None and cond.kind not in TABLE_OPTIONAL | NO_TABLE:
        raise RuleError(f"{cond.kind} needs a table")
    if action in ("reject", "disconnect") and not reply_ok(param):
        raise RuleError(f'{action} needs an SMTP reply "4xx|5xx text": {param!r}')
    if action == "rewrite" and rule_phase not in ("helo", "ehlo", "mail-from", "rcpt-to"):
        raise RuleError(f"rewrite is not possible at phase {rule_phase}")


def parse_rule(text: str) -> Rule:
    """The canonical text kept in ``Filter.argument`` (see ``parse_config``)."""
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise RuleError(str(exc)) from None
    return parse_words(words)


def parse_words(words: list[str]) -> Rule:
    if len(words) < 3 or words[0] not in PHASES or words[1] != "match":
        raise RuleError("syntax error: phase PHASE match CONDITIONS ACTION")
    phase, pos = words[0], 2
    conditions: list[Condition] = []
    while pos < len(words) and words[pos] not in ACTIONS:
        negate = words[pos] == "!"
        pos += negate
        if pos >= len(words) or words[pos] not in CONDITION_FROM:
            raise RuleError(f"unknown filter condition: {' '.join(words[pos:pos + 1])}")
        kind = words[pos]
        pos += 1
        regex = pos < len(words) and words[pos] == "regex"
        pos += regex
        table = None
        if pos < len(words) and words[pos].startswith("<") and words[pos].endswith(">"):
            table = words[pos][1:-1]
            pos += 1
        elif regex:
            raise RuleError("regex needs a table")
        conditions.append(Condition(kind, negate, table, regex))
    if not conditions:
        raise RuleError("a builtin filter needs at least one condition")
    if pos >= len(words):
        raise RuleError("missing filter action")
    action, pos = words[pos], pos + 1
    param = ""
    if action in ACTIONS_WITH_PARAM:
        if pos >= len(words):
            raise RuleError(f"{action} needs a parameter")
        param, pos = words[pos], pos + 1
    if pos != len(words):
        raise RuleError(f"unexpected {words[pos]!r} after the action")
    for cond in conditions:
        _check(phase, cond, action, param)
    return Rule(phase, tuple(conditions), Decision(action), param)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_config(cur: Cursor, b: Builder) -> str:
    """smtpd.conf tokens after ``phase`` -> canonical text, validated.

    Tables may be ``<name>`` or inline (``{ a, b }``, a single string): the
    builder registers inline ones, so every condition names a table."""
    from smtpd.config.cursor import StatementError

    where = cur.where
    words = [cur.expect(*PHASES), cur.expect("match")]
    out = list(words)
    while not cur.at_end() and not cur.is_kw(*ACTIONS):
        if cur.accept_punct("!"):
            words.append("!")
            out.append("!")
        kind = cur.expect(*CONDITION_FROM)
        words.append(kind)
        out.append(kind)
        regex = cur.accept("regex")
        if regex:
            words.append("regex")
            out.append("regex")
        if kind in NO_TABLE or (kind in TABLE_OPTIONAL and not regex and (
                cur.at_end() or cur.is_kw(*ACTIONS) or cur.is_kw(*CONDITION_FROM)
                or cur.is_punct("!"))):
            continue
        name = b.table_arg(cur, f"{kind} table", "regex" if regex else kind)
        words.append(f"<{name}>")
        out.append(f"<{_quote(name)}>")
    if cur.at_end():
        raise StatementError(where, "syntax error: missing filter action")
    action = cur.expect(*sorted(ACTIONS))
    words.append(action)
    out.append(action)
    if action in ACTIONS_WITH_PARAM:
        param = cur.value(f"{action} parameter")
        words.append(param)
        out.append(_quote(param))
    cur.expect_end()
    try:
        parse_words(words)
    except RuleError as exc:
        raise StatementError(where, str(exc)) from None
    return " ".join(out)


def tables_of(rule: Rule) -> set[str]:
    return {c.table for c in rule.conditions if c.table is not None}


def _holds(cond: Condition, facts: Facts, tables: Mapping[str, Matcher]) -> bool:
    value = {"rdns": facts.rdns, "src": facts.src, "helo": facts.helo,
             "auth": facts.auth_user, "mail-from": facts.mail_from,
             "rcpt-to": facts.rcpt_to}.get(cond.kind, "")
    if cond.kind == "fcrdns":
        result = facts.fcrdns
    elif cond.table is None:
        result = bool(value)  # `rdns`: has a name; `auth`: authenticated
    else:
        table = tables.get(cond.table)
        if table is None or (cond.kind in ("rdns", "auth") and not value):
            result = False
        else:
            service = Service.REGEX if cond.regex else SERVICE[cond.kind]
            result = table.match(service, value)
    return result != cond.negate


def evaluate(rule: Rule, facts: Facts, tables: Mapping[str, Matcher]) -> bool:
    """True when every condition of ``rule`` holds for ``facts``."""
    return all(_holds(c, facts, tables) for c in rule.conditions)

