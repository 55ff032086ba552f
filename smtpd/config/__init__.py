"""smtpd.conf: OpenSMTPD's modern grammar (6.4+), parsed into frozen dataclasses.

Public API:
    load_config(path, macros={}, base_dir=None) -> Config   (raises ConfigError)
    ConfigError.errors: list of "file:line: message"
    dump(config, redact=False) -> str                     canonical text, re-parseable
    check_command(path, macros, verbose) -> int           what `smtpd -n` prints

Also: smtpd.config.listen.resolve_listener(listener) -> bind addresses;
smtpd.config.ruleset.Ruleset(config, tables).match(RuleInput) -> MatchRule | None.
"""

from smtpd.config.cli import check_command
from smtpd.config.dump import dump
from smtpd.config.load import ConfigError, default_hostname, load_config
from smtpd.config.model import (
    Action,
    ActionKind,
    AuthMode,
    Ca,
    Condition,
    CondKind,
    Config,
    Family,
    Listener,
    ListenerKind,
    MatchRule,
    Pki,
    QueueOptions,
    RelayOptions,
    RelayProto,
    RelayTls,
    RelayUrl,
    SmtpOptions,
    TableDef,
    TableEntryKind,
    TlsMode,
)

__all__ = [
    "Action",
    "ActionKind",
    "AuthMode",
    "Ca",
    "CondKind",
    "Condition",
    "Config",
    "ConfigError",
    "Family",
    "Listener",
    "ListenerKind",
    "MatchRule",
    "Pki",
    "QueueOptions",
    "RelayOptions",
    "RelayProto",
    "RelayTls",
    "RelayUrl",
    "SmtpOptions",
    "TableDef",
    "TableEntryKind",
    "TlsMode",
    "check_command",
    "default_hostname",
    "dump",
    "load_config",
]
