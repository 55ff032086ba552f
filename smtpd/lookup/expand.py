"""Recipient expansion for a matched rule: aliases, virtual users, user bases,
sub-addresses (smtpd.conf(5) `alias`, `virtual`, `userbase`; upstream lka_expand).

Virtual users need no system account (the seed's removal of user_backend):
`virtual <t>` maps addresses to users or addresses, and `userbase <t>` gives
each user its uid, gid and home.  Expansion is bounded (depth and count) and
remembers what it has seen, so alias loops end instead of spinning.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from smtpd.config.model import Action, ActionKind, MatchRule
from smtpd.queue.envelope import DeliveryType, Envelope
from smtpd.table.backend import Table, TableTempFail
from smtpd.table.getpwnam import GetpwnamBackend
from smtpd.table.match import UserInfo, parse_userinfo
from smtpd.table.service import Service

MAX_DEPTH = 10
MAX_EXPANSION = 1000


class ExpandError(Exception):
    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


def unknown_recipient(rcpt: str) -> ExpandError:
    # COMPAT.md: OpenSMTPD answers exactly this, with no enhanced code.
    return ExpandError(f"550 Invalid recipient: <{rcpt}>")


@dataclass
class Expansion:
    envelopes: list[Envelope]
    seen: set[str]


def split_subaddress(user: str, delim: str) -> tuple[str, str]:
    if delim and delim in user:
        base, _, tag = user.partition(delim)
        if base:
            return base, tag
    return user, ""


class Expander:
    def __init__(self, actions: Mapping[str, Action], tables: Mapping[str, Table],
                 sub_addr_delim: str,
                 rematch: Callable[[str], MatchRule | None]) -> None:
        self.actions = actions
        self.tables = tables
        self.delim = sub_addr_delim
        self.rematch = rematch
        self.system = GetpwnamBackend()

    def expand(self, rule: MatchRule, template: Envelope) -> list[Envelope]:
        """The envelopes for `template.rcpt` under `rule`, or ExpandError."""
        assert rule.action is not None
        state = Expansion([], set())
        try:
            self._address(rule, template, template.rcpt, 0, state)
        except TableTempFail:
            raise ExpandError("451 4.3.0 Temporary failure in table lookup") from None
        if not state.envelopes:
            raise unknown_recipient(template.rcpt)
        return state.envelopes

    # -- one address ------------------------------------------------------------

    def _address(self, rule: MatchRule, template: Envelope, address: str, depth: int,
                 state: Expansion) -> None:
        if depth > MAX_DEPTH or len(state.envelopes) >= MAX_EXPANSION:
            raise ExpandError("550 5.4.6 Routing loop detected: expansion too deep")
        key = address.lower()
        if key in state.seen:
            return  # alias loop or duplicate: each destination once
        state.seen.add(key)
        assert rule.action is not None
        action = self.actions[rule.action]
        if action.kind is ActionKind.RELAY:
            state.envelopes.append(replace(
                template, type=DeliveryType.MTA, dispatcher=action.name, dest=address))
            return
        user, _, domain = address.rpartition("@") if "@" in address else (address, "", "")
        if action.virtual_table is not None:
            targets = self._virtual(action, user, domain)
            if targets is None:
                raise unknown_recipient(template.rcpt)
            self._targets(rule, template, targets, depth, state)
            return
        base, tag = split_subaddress(user, self.delim)
        if action.alias_table is not None:
            targets = self.tables[action.alias_table].alias(base.lower())
            if targets is not None:
                self._targets(rule, template, targets, depth, state)
                return
        self._user(action, template, base, tag, address, state)

    def _virtual(self, action: Action, user: str, domain: str) -> tuple[str, ...] | None:
        assert action.virtual_table is not None
        table = self.tables[action.virtual_table]
        base, _tag = split_subaddress(user, self.delim)
        for key in (f"{user}@{domain}", f"{base}@{domain}", f"@{domain}"):
            found = table.alias(key.lower())
            if found is not None:
                return found
        return None

    def _targets(self, rule: MatchRule, template: Envelope, targets: tuple[str, ...],
                 depth: int, state: Expansion) -> None:
        for target in targets:
            if target.startswith("error:"):
                code_text = target.removeprefix("error:").strip()
                raise ExpandError(code_text if code_text[:1] in "45" else f"550 {code_text}")
            if target.startswith(("|", "/", ":include:")):
                # Pipes, files and includes run as a user; refusing them is
                # safer than running them as the wrong one.
                raise ExpandError("550 5.7.1 Delivery to a program or file is not supported")
            if "@" in target:
                sub_rule = self.rematch(target)
                if sub_rule is None or sub_rule.reject or sub_rule.action is None:
                    raise unknown_recipient(template.rcpt)
                self._address(sub_rule, template, target, depth + 1, state)
            else:
                self._local_user(rule, template, target, depth + 1, state)

    def _local_user(self, rule: MatchRule, template: Envelope, user: str, depth: int,
                    state: Expansion) -> None:
        """A bare user name from an alias: aliased again, or a mailbox."""
        if depth > MAX_DEPTH:
            raise ExpandError("550 5.4.6 Routing loop detected: expansion too deep")
        assert rule.action is not None
        action = self.actions[rule.action]
        base, tag = split_subaddress(user, self.delim)
        key = "user:" + base.lower()
        if key in state.seen:
            return
        state.seen.add(key)
        if action.alias_table is not None:
            again = self.tables[action.alias_table].alias(base.lower())
            if again is not None and tuple(t.lower() for t in again) != (base.lower(),):
                self._targets(rule, template, again, depth, state)
                return
        self._user(action, template, base, tag, base, state)

    def _user(self, action: Action, template: Envelope, user: str, tag: str, dest: str,
              state: Expansion) -> None:
        info = self._userinfo(action, user.lower())
        if info is None:
            raise unknown_recipient(template.rcpt)
        mailbox = f"mailbox:{action.name}:{info.username}:{tag}"
        if mailbox in state.seen:
            return  # one copy per mailbox, however many aliases lead there
        state.seen.add(mailbox)
        run_as = action.user or info.username
        domain = template.rcpt.rpartition("@")[2]
        state.envelopes.append(replace(
            template, type=DeliveryType.MDA, dispatcher=action.name,
            dest=dest if "@" in dest else f"{info.username}@{domain}",
            mda_user=run_as, mda_subaddress=tag))

    def _userinfo(self, action: Action, user: str) -> UserInfo | None:
        if action.userbase_table is not None:
            return self.tables[action.userbase_table].userinfo(user)
        value = self.system.lookup(Service.USERINFO, user)
        return None if value is None else parse_userinfo(user, value)
