"""The parsed smtpd.conf: frozen dataclasses and enums, nothing else.

Every object carries ``source`` ("file:line") so that later stages (the
lookup process, the smtp process) can name the configuration line a
runtime problem comes from.

Semantics follow OpenSMTPD's parse.y (6.4+ grammar):

* match rules are evaluated in order, the first match wins;
* a rule without a ``from`` condition gets ``from local`` and one without a
  ``for`` condition gets ``for local``: the parser inserts both explicitly,
  so ``MatchRule.conditions`` always holds exactly one FROM_* and one FOR_*;
* ``[!] from auth [T]`` means "from any" plus "[not] authenticated [as a
  user in T]"; ``[!] from mail-from T`` means "from any" plus "[not] MAIL
  FROM in T"; ``[!] for rcpt-to T`` means "for any" plus "[not] RCPT TO in
  T".  The negation applies to the auth/mail-from/rcpt-to part only, as
  upstream does.
* inline tables (``from src 10.0.0.1``, ``for domain { a.org, b.org }``)
  become anonymous entries of ``Config.tables`` (``TableDef.inline``) so that
  every condition and option names a table by key.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

DEFAULT_QUEUE_PATH = "/var/spool/smtpd"
DEFAULT_CONTROL_SOCKET = "/var/run/smtpd.sock"
DEFAULT_QUEUE_TTL = 4 * 86400
DEFAULT_BOUNCE_WARN = (4 * 3600,)
DEFAULT_MAX_MESSAGE_SIZE = 35 * 1024 * 1024
DEFAULT_MAX_MAILS = 100
DEFAULT_MAX_RCPT = 1000
DEFAULT_CIPHERS = "HIGH:!aNULL:!MD5"
DEFAULT_SRS_TTL = 4 * 86400
DEFAULT_MTA_MAX_DEFERRED = 100


def _empty() -> Mapping[str, str]:
    return MappingProxyType({})


class TableEntryKind(enum.Enum):
    """Shape of an inline (static) table."""

    LIST = "list"
    MAPPING = "mapping"


@dataclass(frozen=True)
class TableDef:
    """``table NAME [backend:]config`` or an inline ``{ ... }`` table.

    backend: registry name in smtpd.table.backend ("static", "file",
    "sqlite", "getpwnam", "db", ...); config: absolute path of the file the
    backend reads (None for static and getpwnam); entries: the values of a
    static table, (key, None) for a list and (key, value) for a mapping.
    """

    name: str
    backend: str
    config: str | None
    source: str
    entries: tuple[tuple[str, str | None], ...] = ()
    kind: TableEntryKind = TableEntryKind.LIST
    inline: bool = False


@dataclass(frozen=True)
class Pki:
    name: str
    source: str
    cert: str | None = None
    key: str | None = None
    dhe: str = "none"


@dataclass(frozen=True)
class Ca:
    name: str
    source: str
    cert: str | None = None


class ListenerKind(enum.Enum):
    INET = "inet"
    SOCKET = "socket"


class Family(enum.Enum):
    ANY = "any"
    INET4 = "inet4"
    INET6 = "inet6"


class TlsMode(enum.Enum):
    NONE = "none"
    TLS = "tls"  # STARTTLS offered
    TLS_REQUIRE = "tls-require"  # STARTTLS before MAIL
    SMTPS = "smtps"  # TLS from the first byte


class AuthMode(enum.Enum):
    NONE = "none"
    REQUIRED = "auth"
    OPTIONAL = "auth-optional"


@dataclass(frozen=True)
class Listener:
    """``listen on IF|ADDR|socket ...``.

    interface is the word written after ``listen on`` (an address, a host
    name or an interface/group name such as lo0 or egress); see
    smtpd.config.listen.resolve_listener for turning it into addresses.
    hostname None means "use Config.hostname".  auth_table None with auth
    set means system users (getpwnam/crypt), as upstream.
    """

    kind: ListenerKind
    interface: str
    source: str
    family: Family = Family.ANY
    port: int = 25
    tls: TlsMode = TlsMode.NONE
    tls_verify: bool = False
    pkis: tuple[str, ...] = ()
    ca: str | None = None
    auth: AuthMode = AuthMode.NONE
    auth_table: str | None = None
    tag: str | None = None
    hostname: str | None = None
    hostnames_table: str | None = None
    mask_src: bool = False
    no_dsn: bool = False
    senders_table: str | None = None
    masquerade: bool = False
    received_auth: bool = False
    proxy_v2: bool = False
    filter: str | None = None
    ciphers: str | None = None
    protocols: str | None = None
    port_explicit: bool = False


class ActionKind(enum.Enum):
    MAILDIR = "maildir"
    MBOX = "mbox"
    MDA = "mda"
    LMTP = "lmtp"
    FORWARD_ONLY = "forward-only"
    EXPAND_ONLY = "expand-only"
    RELAY = "relay"


class RelayTls(enum.Enum):
    """How an outbound session uses TLS (``relay [tls [no-verify]]``)."""

    OPPORTUNISTIC = "opportunistic"  # default: STARTTLS if offered
    REQUIRE = "tls"  # STARTTLS mandatory, certificate verified
    REQUIRE_NO_VERIFY = "tls no-verify"


class RelayTlsPolicy(enum.Enum):
    """Which published outbound TLS policy a relay honours for MX delivery
    (``relay tls-policy mta-sts|dane|both|none``, or per destination domain
    through ``tls-policy <table>``): RFC 8461 MTA-STS, RFC 7672 DANE."""

    NONE = "none"
    MTA_STS = "mta-sts"
    DANE = "dane"
    BOTH = "both"  # DANE where TLSA records exist, else MTA-STS (RFC 8461 §2)


class RelayProto(enum.Enum):
    SMTP = "smtp"  # opportunistic STARTTLS
    SMTP_TLS = "smtp+tls"  # mandatory STARTTLS
    SMTP_NOTLS = "smtp+notls"
    SMTPS = "smtps"
    LMTP = "lmtp"


@dataclass(frozen=True)
class RelayUrl:
    """``[proto://][label@]host[:port]`` of ``relay host``."""

    proto: RelayProto
    host: str
    port: int
    label: str | None = None
    proto_explicit: bool = False
    port_explicit: bool = False

    def __str__(self) -> str:
        out = f"{self.proto.value}://" if self.proto_explicit else ""
        if self.label:
            out += f"{self.label}@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        out += host
        if self.port_explicit:
            out += f":{self.port}"
        return out


@dataclass(frozen=True)
class RelayOptions:
    host: RelayUrl | None = None
    host_table: str | None = None  # ``host <table>`` of relay URLs
    domain_table: str | None = None  # ``domain <t>``: destination domain -> relay URL
    tls: RelayTls = RelayTls.OPPORTUNISTIC
    auth_table: str | None = None
    helo: str | None = None
    helo_src_table: str | None = None
    src_table: str | None = None
    backup: bool = False
    backup_mx: str | None = None
    pki: str | None = None
    ca: str | None = None
    srs: bool = False
    mail_from: str | None = None
    ciphers: str | None = None
    protocols: str | None = None
    filter: str | None = None
    tls_policy: RelayTlsPolicy = RelayTlsPolicy.NONE
    tls_policy_table: str | None = None  # ``tls-policy <t>``: domain -> policy word


@dataclass(frozen=True)
class Action:
    """``action NAME method [options]`` (upstream calls it a dispatcher).

    maildir_path None means ~/Maildir; a leading "~/" is kept as written and
    means the user's home directory.  userbase None means system users
    (getpwnam).  relay is set only for ActionKind.RELAY.
    """

    name: str
    kind: ActionKind
    source: str
    maildir_path: str | None = None
    junk: bool = False
    mda_command: str | None = None
    lmtp_destination: str | None = None
    lmtp_rcpt_to: bool = False
    alias_table: str | None = None
    virtual_table: str | None = None
    userbase_table: str | None = None
    user: str | None = None
    wrapper: str | None = None
    forward_file: bool = True
    ttl: int | None = None
    relay: RelayOptions | None = None

    @property
    def is_local(self) -> bool:
        return self.kind is not ActionKind.RELAY


class CondKind(enum.Enum):
    FROM_ANY = "from any"
    FROM_LOCAL = "from local"
    FROM_SOCKET = "from socket"
    FROM_SRC = "from src"
    FROM_AUTH = "from auth"
    FROM_RDNS = "from rdns"
    FROM_MAIL_FROM = "from mail-from"
    FOR_ANY = "for any"
    FOR_LOCAL = "for local"
    FOR_DOMAIN = "for domain"
    FOR_RCPT_TO = "for rcpt-to"
    TAG = "tag"
    HELO = "helo"
    TLS = "tls"
    AUTH = "auth"
    MAIL_FROM = "mail-from"
    RCPT_TO = "rcpt-to"

    @property
    def is_from(self) -> bool:
        return self.value.startswith("from ")

    @property
    def is_for(self) -> bool:
        return self.value.startswith("for ")


@dataclass(frozen=True)
class Condition:
    """One ``[!] keyword [regex] [table]`` of a match rule.

    table names an entry of Config.tables (None for conditions without an
    argument: from any/local/socket, for any/local, tls, auth, from auth,
    from rdns); regex means the table holds regular expressions.
    """

    kind: CondKind
    negate: bool = False
    table: str | None = None
    regex: bool = False


@dataclass(frozen=True)
class MatchRule:
    conditions: tuple[Condition, ...]
    source: str
    action: str | None = None
    reject: bool = False


@dataclass(frozen=True)
class QueueOptions:
    path: str = DEFAULT_QUEUE_PATH
    compression: bool = False
    encryption: bool = False
    # None with encryption: ask with getpass; "stdin": read from stdin
    encryption_key: str | None = None
    # `queue old-key "KEY"` (repeatable): keys still accepted for reading while
    # the spool is re-encrypted (key rotation; `python -m smtpd.queue.rekey`)
    old_keys: tuple[str, ...] = ()
    ttl: int = DEFAULT_QUEUE_TTL
    # issue 14: `queue backend postgres "conninfo"` shares the queue among
    # nodes; `queue node "NAME"` (default: the hostname), `queue lease 30s`
    backend: str = "fs"
    backend_conninfo: str | None = None
    node: str | None = None
    lease: int = 30


@dataclass(frozen=True)
class SmtpOptions:
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    max_mails: int = DEFAULT_MAX_MAILS
    max_rcpt: int = DEFAULT_MAX_RCPT
    sub_addr_delim: str = "+"
    ciphers: str = DEFAULT_CIPHERS
    # Hostile-client limits (our `smtp limit` extensions, docs/security.md).
    # 0 = no per-source session limit (upstream has none: opt in).
    max_sessions_per_ip: int = 0
    # A command line (or a STARTTLS handshake) must be complete within this
    # many seconds however slowly its bytes trickle in (slowloris).
    command_timeout: int = 120
    # DATA, from 354 to the final dot.
    data_timeout: int = 1800
    # `smtp rate KIND N per DURATION`: (kind, count, window seconds), applied
    # per client address and per authenticated user (smtpd/smtp/ratelimit.py)
    rates: tuple[tuple[str, int, int], ...] = ()
    # AUTH failures from one address before AUTH is refused from it.
    max_auth_failures: int = 5
    auth_ban: int = 900  # seconds AUTH stays refused after that
    auth_failure_delay: int = 1  # seconds per failure so far, before 535


@dataclass(frozen=True)
class Filter:
    """``filter NAME proc|proc-exec|phase|chain ...`` (parsed, not run yet)."""

    name: str
    kind: str
    source: str
    argument: str = ""
    chain: tuple[str, ...] = ()


@dataclass(frozen=True)
class Proc:
    name: str
    command: str
    source: str
    user: str | None = None
    group: str | None = None
    chroot: str | None = None


@dataclass(frozen=True)
class Config:
    path: str
    hostname: str
    queue: QueueOptions = QueueOptions()
    control_socket: str = DEFAULT_CONTROL_SOCKET
    # our extension `stats persistent "PATH"`: keep stat history in SQLite
    stats_path: str | None = None
    stats_interval: int = 1                # `... interval N`: seconds between samples
    stats_keep: int = 365 * 86400          # `... keep D`: how long hourly history stays
    stats_prometheus: tuple[str, int] | None = None  # `stats prometheus [on ADDR] port N`
    listeners: tuple[Listener, ...] = ()
    tables: Mapping[str, TableDef] = field(default_factory=lambda: MappingProxyType({}))
    pkis: Mapping[str, Pki] = field(default_factory=lambda: MappingProxyType({}))
    cas: Mapping[str, Ca] = field(default_factory=lambda: MappingProxyType({}))
    actions: Mapping[str, Action] = field(default_factory=lambda: MappingProxyType({}))
    rules: tuple[MatchRule, ...] = ()
    bounce_warn_intervals: tuple[int, ...] = DEFAULT_BOUNCE_WARN
    smtp: SmtpOptions = SmtpOptions()
    mda_wrappers: Mapping[str, str] = field(default_factory=_empty)
    srs_key: str | None = None
    srs_key_backup: str | None = None
    srs_ttl: int = DEFAULT_SRS_TTL
    mta_max_deferred: int = DEFAULT_MTA_MAX_DEFERRED
    admd: str | None = None
    filters: Mapping[str, Filter] = field(default_factory=lambda: MappingProxyType({}))
    procs: Mapping[str, Proc] = field(default_factory=lambda: MappingProxyType({}))
    # "file:line: X is not supported yet": parsed but not built; smtpd -n
    # reports them as errors.
    warnings: tuple[str, ...] = ()
    # macros defined but never used (smtpd -v -n says so, as upstream)
    unused_macros: tuple[str, ...] = ()

    @property
    def queue_path(self) -> str:
        return self.queue.path

    @property
    def socket_listener(self) -> Listener:
        """The local enqueuer's listener (always present, as upstream)."""
        for listener in self.listeners:
            if listener.kind is ListenerKind.SOCKET:
                return listener
        return Listener(kind=ListenerKind.SOCKET, interface="socket", source="", port=0)

    def listener_hostname(self, listener: Listener) -> str:
        """The name a listener greets with: its own ``hostname`` wins."""
        return listener.hostname or self.hostname
