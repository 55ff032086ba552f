"""Mutable state while one configuration is parsed (never module-level).

The directive parsers (parse_*.py) record into a Builder; ``freeze()``
turns it into the immutable model.Config once every statement is read.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from smtpd.config import model
from smtpd.config.cursor import Cursor, StatementError
from smtpd.config.lexer import Tok

# Table backends this implementation opens (smtpd.table.backend.REGISTRY;
# a test keeps both in sync) and upstream backends we parse but do not have.
SUPPORTED_BACKENDS = frozenset({"static", "file", "sqlite", "getpwnam", "postgres", "redis"})
KNOWN_BACKENDS = SUPPORTED_BACKENDS | {
    "db", "ldap", "mysql", "postgres", "redis", "socketmap", "passwd", "proc", "proc-exec",
}

# upstream table_check_use(): what shape of static table each use needs
# (mapping, list or either) and the word for its error message
TABLE_USES: dict[str, tuple[str, str]] = {
    "alias": ("mapping", "alias"),
    "virtual": ("mapping", "virtual"),
    "userbase": ("mapping", "userbase"),
    "helo-src": ("mapping", "helo-source"),
    "src": ("any", "source"),
    "relay-domain": ("mapping", "host"),
    "relay-host": ("list", "host"),
    "relay-auth": ("mapping", "auth"),
    "tls-policy": ("mapping", "tls-policy"),
    "listen-auth": ("mapping", "auth"),
    "hostnames": ("mapping", "hostnames"),
    "senders": ("mapping", "senders"),
    "from": ("list", "from"),
    "for": ("list", "'for'"),
    "tag": ("list", "tag"),
    "helo": ("list", "helo"),
    "rdns": ("list", "rdns"),
    "auth": ("any", "auth"),
    "mail-from": ("any", "mail-from"),
    "rcpt-to": ("any", "rcpt-to"),
    "regex": ("list", "regex"),
}

# ASCII digits only, and few of them: int() of a huge or non-ASCII digit
# string would raise instead of giving an error message
NUMBER = re.compile(r"[0-9]{1,18}\Z")
_DELAY = re.compile(r"([0-9]{1,12})([smhd])\Z")
_SIZE = re.compile(r"([0-9]{1,18})(?:\.([0-9]{1,9}))?([bkmgtpe]?)\Z", re.IGNORECASE)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_SCALE = "bkmgtpe"


def parse_delay(text: str) -> int | None:
    """upstream delaytonum(): a positive integer and a unit s, m, h or d."""
    m = _DELAY.match(text)
    if m is None:
        return None
    return int(m.group(1)) * _UNITS[m.group(2)]


def parse_size(text: str) -> int | None:
    """upstream scan_scaled(): bytes, or a number with a B/K/M/G/T/P/E
    suffix in powers of 1024 (a fraction such as 1.5M is allowed)."""
    m = _SIZE.match(text)
    if m is None:
        return None
    whole, frac, unit = m.group(1), m.group(2) or "", m.group(3).lower()
    scale = 1024 ** _SCALE.index(unit) if unit else 1
    if frac and not unit:
        return None
    value = int(whole) * scale
    if frac:
        value += int(frac) * scale // (10 ** len(frac))
    return value


@dataclass
class Builder:
    path: str
    base_dir: str
    hostname: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    tables: dict[str, model.TableDef] = field(default_factory=dict)
    pkis: dict[str, model.Pki] = field(default_factory=dict)
    cas: dict[str, model.Ca] = field(default_factory=dict)
    actions: dict[str, model.Action] = field(default_factory=dict)
    rules: list[model.MatchRule] = field(default_factory=list)
    listeners: list[model.Listener] = field(default_factory=list)
    wrappers: dict[str, str] = field(default_factory=dict)
    wrapper_sources: dict[str, str] = field(default_factory=dict)
    filters: dict[str, model.Filter] = field(default_factory=dict)
    procs: dict[str, model.Proc] = field(default_factory=dict)
    queue: model.QueueOptions = field(default_factory=model.QueueOptions)
    smtp: model.SmtpOptions = field(default_factory=model.SmtpOptions)
    control_socket: str = model.DEFAULT_CONTROL_SOCKET
    stats_path: str | None = None
    stats_interval: int = 1
    stats_keep: int = 365 * 86400
    stats_prometheus: tuple[str, int] | None = None
    bounce_warn: tuple[int, ...] = model.DEFAULT_BOUNCE_WARN
    srs_key: str | None = None
    srs_key_backup: str | None = None
    srs_ttl: int = model.DEFAULT_SRS_TTL
    mta_max_deferred: int = model.DEFAULT_MTA_MAX_DEFERRED
    admd: str | None = None
    # (kind, name, where): names to resolve once everything is read
    refs: list[tuple[str, str, str]] = field(default_factory=list)
    # (table name, TABLE_USES key, where): shapes to check at the end
    uses: list[tuple[str, str, str]] = field(default_factory=list)
    inline_count: int = 0

    # -- helpers used by the directive parsers ------------------------------

    def error(self, where: str, message: str) -> None:
        self.errors.append(f"{where}: {message}")

    def unsupported(self, where: str, what: str) -> None:
        self.warnings.append(f"{where}: {what} is not supported yet")

    def abspath(self, path: str) -> str:
        """Relative paths are taken from base_dir (upstream wants them absolute)."""
        if path.startswith(("/", "~", "%{")):
            return path
        return os.path.normpath(os.path.join(self.base_dir, path))

    def ref(self, kind: str, name: str, where: str) -> None:
        self.refs.append((kind, name, where))

    def table_arg(self, cur: Cursor, what: str, use: str) -> str:
        """upstream ``tables``: ``<name>``, ``{ a, b }`` / ``{ k = v }`` or a
        single value (an inline list of one).  Returns the table's name."""
        tok = cur.peek()
        where = tok.where
        if cur.accept_punct("<"):
            name = cur.value("table name")
            cur.expect_punct(">")
            self.ref("table", name, where)
            self.uses.append((name, use, where))
            return name
        if cur.is_punct("{"):
            entries, kind = self.inline_entries(cur)
        else:
            entries, kind = ((cur.value(what), None),), model.TableEntryKind.LIST
        self.inline_count += 1
        name = f"<inline:{self.inline_count}>"
        self.tables[name] = model.TableDef(
            name=name, backend="static", config=None, source=where,
            entries=entries, kind=kind, inline=True,
        )
        self.uses.append((name, use, where))
        return name

    def inline_entries(
        self, cur: Cursor
    ) -> tuple[tuple[tuple[str, str | None], ...], model.TableEntryKind]:
        """``{ value [,] ... }`` or ``{ key = value [,] ... }``, at least one."""
        cur.expect_punct("{")
        entries: list[tuple[str, str | None]] = []
        kind: model.TableEntryKind | None = None
        while not cur.accept_punct("}"):
            if cur.at_end():
                raise cur.error('syntax error: missing "}"')
            key = cur.value("table value")
            if cur.accept_punct("="):
                this = model.TableEntryKind.MAPPING
                value: str | None = cur.value("table value")
            else:
                this, value = model.TableEntryKind.LIST, None
            if kind is not None and kind is not this:
                raise cur.error("syntax error: table mixes list values and key = value pairs")
            kind = this
            entries.append((key, value))
            cur.accept_punct(",")
        if kind is None:
            raise cur.error("syntax error: empty table")
        return tuple(entries), kind

    def name_arg(self, cur: Cursor, what: str) -> str:
        tok = cur.peek()
        if tok.kind not in (Tok.WORD, Tok.STRING):
            raise cur.unexpected(expected=(what,))
        return cur.value(what)

    def delay_arg(self, cur: Cursor, what: str) -> int:
        tok = cur.peek()
        text = cur.value(what)
        delay = parse_delay(text)
        if delay is None or delay <= 0:
            raise StatementError(tok.where, f'invalid {what}: "{text}" (a number and s, m, h or d)')
        return delay

    def number_arg(self, cur: Cursor, what: str, low: int = 0, high: int = 2**63 - 1) -> int:
        tok = cur.peek()
        text = cur.value(what)
        if not NUMBER.match(text) or not low <= int(text) <= high:
            raise StatementError(tok.where, f"invalid {what}: {text}")
        return int(text)
