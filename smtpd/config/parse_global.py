"""Directives other than listen/action/match: table, pki, ca, queue, smtp,
bounce, mda, mta, srs, admd, scheduler, filter, proc and our ``control``."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from smtpd.config import model
from smtpd.config.builder import KNOWN_BACKENDS, SUPPORTED_BACKENDS, Builder, parse_size
from smtpd.config.cursor import Cursor, StatementError, did_you_mean
from smtpd.filter import builtin as builtin_filter

# upstream res_hnok(): a host name; pki/ca names are host names or "*"
_HOSTNAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?\Z")


def parse_table(cur: Cursor, b: Builder) -> None:
    where = cur.where
    name = b.name_arg(cur, "table name")
    if name in b.tables:
        raise StatementError(where, f'table "{name}" already defined at {b.tables[name].source}')
    if cur.is_punct("{"):
        entries, kind = b.inline_entries(cur)
        cur.expect_end()
        b.tables[name] = model.TableDef(
            name=name, backend="static", config=None, source=where, entries=entries, kind=kind
        )
        return
    spec_tok = cur.peek()
    spec = cur.value("table backend or path")
    cur.expect_end()
    backend, config = _split_table_spec(spec)
    if backend not in KNOWN_BACKENDS:
        raise StatementError(
            spec_tok.where,
            f'table "{name}": unknown backend "{backend}"' + did_you_mean(backend, KNOWN_BACKENDS),
        )
    if backend in ("file", "sqlite", "db") and not config:
        raise StatementError(spec_tok.where, f'table "{name}": {backend} needs a path')
    if backend == "getpwnam" and config:
        raise StatementError(spec_tok.where, f'table "{name}": getpwnam takes no argument')
    if backend not in SUPPORTED_BACKENDS:
        b.unsupported(spec_tok.where, f'table backend "{backend}"')
    if backend == "static":
        backend = "file"
    b.tables[name] = model.TableDef(
        name=name, backend=backend, config=b.abspath(config) if config else None, source=where
    )


def _split_table_spec(spec: str) -> tuple[str, str | None]:
    """``[type:]path``: a bare path is a file table; a bare backend name
    (getpwnam) takes no path."""
    if spec.startswith(("/", ".", "~")):
        return "file", spec
    head, sep, tail = spec.partition(":")
    if sep:
        return head, tail
    if spec in KNOWN_BACKENDS:
        return spec, None
    return "file", spec


def _host_name(cur: Cursor, what: str) -> str:
    tok = cur.peek()
    name = cur.value(what)
    if name != "*" and not _HOSTNAME.match(name):
        raise StatementError(tok.where, f"not a valid domain name: {name}")
    return name.lower()


def parse_pki(cur: Cursor, b: Builder) -> None:
    where = cur.where
    name = _host_name(cur, "pki name")
    pki = b.pkis.get(name) or model.Pki(name=name, source=where)
    if cur.at_end():
        raise cur.unexpected(expected=("cert", "key", "dhe"))
    while not cur.at_end():
        opt = cur.expect("cert", "key", "dhe")
        if opt == "cert":
            pki = dataclasses.replace(pki, cert=b.abspath(cur.value("certificate file")))
        elif opt == "key":
            pki = dataclasses.replace(pki, key=b.abspath(cur.value("key file")))
        else:
            tok = cur.peek()
            dhe = cur.value("dhe parameter").lower()
            if dhe not in ("none", "auto", "legacy"):
                raise StatementError(tok.where, f"invalid DHE keyword: {dhe}")
            pki = dataclasses.replace(pki, dhe=dhe)
    b.pkis[name] = pki


def parse_ca(cur: Cursor, b: Builder) -> None:
    where = cur.where
    name = _host_name(cur, "ca name")
    cur.expect("cert")
    cert = b.abspath(cur.value("ca file"))
    cur.expect_end()
    b.cas[name] = model.Ca(name=name, source=where, cert=cert)


def parse_queue(cur: Cursor, b: Builder) -> None:
    opts = ("compression", "compress", "encryption", "encrypt", "ttl", "path", "backend",
            "node", "lease", "old-key")
    opt = cur.expect(*opts)
    q = b.queue
    if opt in ("compression", "compress"):
        q = dataclasses.replace(q, compression=True)
    elif opt in ("encryption", "encrypt"):
        key: str | None = None
        if not cur.at_end():
            key = cur.value("encryption key")
            if key.lower() in ("stdin", "-"):
                key = "stdin"
        q = dataclasses.replace(q, encryption=True, encryption_key=key)
    elif opt == "old-key":
        # key rotation: the previous key stays readable until `rekey` ran
        q = dataclasses.replace(q, old_keys=(*q.old_keys, cur.value("old encryption key")))
    elif opt == "ttl":
        q = dataclasses.replace(q, ttl=b.delay_arg(cur, "ttl delay"))
    elif opt == "backend":
        # issue 14: fs (the default) or a PostgreSQL queue shared by nodes
        name = cur.expect("fs", "postgres")
        conninfo = cur.value("postgres conninfo") if name == "postgres" else None
        q = dataclasses.replace(q, backend=name, backend_conninfo=conninfo)
    elif opt == "node":
        q = dataclasses.replace(q, node=cur.value("node name"))
    elif opt == "lease":
        q = dataclasses.replace(q, lease=b.delay_arg(cur, "lease delay"))
    else:
        q = dataclasses.replace(q, path=b.abspath(cur.value("queue path")))
    cur.expect_end()
    b.queue = q


def parse_control(cur: Cursor, b: Builder) -> None:
    cur.expect("socket")
    b.control_socket = b.abspath(cur.value("control socket path"))
    cur.expect_end()


def parse_stats(cur: Cursor, b: Builder) -> None:
    """Our extensions (docs/observability.md):
    `stats persistent "PATH" [interval N] [keep D]` samples every stat each N
    seconds (default 1) into an SQLite file, hourly history kept D (default
    365d), so an operator can graph live profiling (the seed);
    `stats prometheus [on ADDR] port N` serves the stats to Prometheus
    (ADDR defaults to 127.0.0.1)."""
    which = cur.expect("persistent", "prometheus")
    if which == "prometheus":
        addr = "127.0.0.1"
        if cur.accept("on"):
            addr = cur.value("address")
        cur.expect("port")
        b.stats_prometheus = (addr, b.number_arg(cur, "port", low=1, high=65535))
        cur.expect_end()
        return
    b.stats_path = b.abspath(cur.value("stats database path"))
    while not cur.at_end():
        opt = cur.expect("interval", "keep")
        if opt == "interval":
            b.stats_interval = b.number_arg(cur, "stats interval", low=1, high=3600)
        else:
            b.stats_keep = b.delay_arg(cur, "stats keep delay")
            if b.stats_keep < 7 * 86400:
                raise cur.error("stats keep must be at least 7d (a week of minutes is kept)")
    cur.expect_end()


def parse_smtp(cur: Cursor, b: Builder) -> None:
    opt = cur.expect("limit", "ciphers", "max-message-size", "sub-addr-delim", "rate")
    s = b.smtp
    if opt == "rate":
        # our extension: smtp rate connections|messages|recipients N per DURATION
        kind = cur.expect("connections", "messages", "recipients", "relay")
        count = b.number_arg(cur, f"smtp rate {kind}", low=1)
        cur.expect("per")
        window = b.delay_arg(cur, f"smtp rate {kind} window")
        s = dataclasses.replace(s, rates=(*(r for r in s.rates if r[0] != kind),
                                          (kind, count, window)))
    elif opt == "limit":
        if cur.at_end():
            raise cur.unexpected(expected=("max-mails", "max-rcpt", *SMTP_GUARD_LIMITS))
        while not cur.at_end():
            which = cur.expect("max-mails", "max-rcpt", *SMTP_GUARD_LIMITS)
            if which in SMTP_GUARD_LIMITS:
                s = _smtp_guard_limit(cur, b, s, which)
                continue
            n = b.number_arg(cur, f"{which} limit", low=1)
            if which == "max-mails":
                s = dataclasses.replace(s, max_mails=n)
            else:
                s = dataclasses.replace(s, max_rcpt=n)
    elif opt == "ciphers":
        s = dataclasses.replace(s, ciphers=cur.value("cipher list"))
    elif opt == "max-message-size":
        tok = cur.peek()
        text = cur.value("size")
        size = parse_size(text)
        if size is None:
            raise StatementError(tok.where, f"invalid size: {text}")
        s = dataclasses.replace(s, max_message_size=size)
    else:
        tok = cur.peek()
        delim = cur.value("delimiter")
        if len(delim) != 1:
            raise StatementError(tok.where, "subaddressing-delimiter must be one character")
        if delim.isspace() or not delim.isprintable() or delim == "@" or not delim.isascii():
            raise StatementError(tok.where, "sub-addr-delim uses invalid character")
        s = dataclasses.replace(s, sub_addr_delim=delim)
    cur.expect_end()
    b.smtp = s


# Our `smtp limit` extensions against hostile clients (docs/security.md):
# keyword -> (SmtpOptions field, a duration?, lowest value).
SMTP_GUARD_LIMITS: dict[str, tuple[str, bool, int]] = {
    "max-sessions-per-ip": ("max_sessions_per_ip", False, 0),
    "command-timeout": ("command_timeout", True, 1),
    "data-timeout": ("data_timeout", True, 1),
    "max-auth-failures": ("max_auth_failures", False, 1),
    "auth-ban": ("auth_ban", True, 1),
    "auth-failure-delay": ("auth_failure_delay", False, 0),
}


def _smtp_guard_limit(cur: Cursor, b: Builder, s: model.SmtpOptions,
                      which: str) -> model.SmtpOptions:
    field, duration, low = SMTP_GUARD_LIMITS[which]
    what = f"smtp limit {which}"
    value = b.delay_arg(cur, what) if duration else b.number_arg(cur, what, low=low)
    changes: dict[str, Any] = {field: value}
    return dataclasses.replace(s, **changes)


def parse_bounce(cur: Cursor, b: Builder) -> None:
    cur.expect("warn-interval")
    delays = [b.delay_arg(cur, "bounce delay")]
    while cur.accept_punct(","):
        delays.append(b.delay_arg(cur, "bounce delay"))
    cur.expect_end()
    if len(delays) > 4:  # upstream MAX_BOUNCE_WARN
        raise cur.error("at most four bounce warn-interval delays")
    b.bounce_warn = tuple(sorted(delays))


def parse_mda(cur: Cursor, b: Builder) -> None:
    where = cur.where
    opt = cur.expect("wrapper", "limit")
    if opt == "limit":
        _limits(cur, b, "mda limit", ("max-session", "max-session-per-user", "task-lowat",
                                      "task-hiwat", "task-release"))
        b.unsupported(where, "mda limit")
        return
    name = cur.value("wrapper name")
    command = cur.value("wrapper command")
    cur.expect_end()
    if name in b.wrappers:
        raise StatementError(where, f"mda wrapper already declared with that name: {name}")
    b.wrappers[name] = command
    b.wrapper_sources[name] = where


def _limits(cur: Cursor, b: Builder, what: str, keys: tuple[str, ...]) -> None:
    if cur.at_end():
        raise cur.unexpected(expected=keys)
    while not cur.at_end():
        if cur.accept("inet4") or cur.accept("inet6"):
            continue
        tok = cur.peek()
        key = cur.value(f"{what} keyword")
        if keys and key not in keys:
            raise StatementError(
                tok.where, f"invalid {what} keyword: {key}" + did_you_mean(key, keys)
            )
        b.number_arg(cur, f"{what} {key}")


def parse_mta(cur: Cursor, b: Builder) -> None:
    where = cur.where
    opt = cur.expect("max-deferred", "limit")
    if opt == "max-deferred":
        b.mta_max_deferred = b.number_arg(cur, "max-deferred", low=1)
        cur.expect_end()
        return
    if cur.accept("for"):
        cur.expect("domain")
        cur.value("domain")
    _limits(cur, b, "mta limit", ())
    b.unsupported(where, "mta limit")


def parse_scheduler(cur: Cursor, b: Builder) -> None:
    where = cur.where
    cur.expect("limit")
    _limits(cur, b, "scheduler limit", ("max-inflight", "max-evp-batch-size",
                                        "max-msg-batch-size", "max-schedule"))
    b.unsupported(where, "scheduler limit")


def parse_srs(cur: Cursor, b: Builder) -> None:
    where = cur.where
    opt = cur.expect("key", "ttl")
    if opt == "key":
        if cur.accept("backup"):
            b.srs_key_backup = cur.value("srs key")
        else:
            b.srs_key = cur.value("srs key")
    else:
        ttl = b.delay_arg(cur, "srs ttl")
        if ttl < 86400:
            raise StatementError(where, "ttl delay is too short (at least one day)")
        b.srs_ttl = ttl
    cur.expect_end()
    b.unsupported(where, "srs")


def parse_admd(cur: Cursor, b: Builder) -> None:
    where = cur.where
    admd = cur.value("authservid")
    cur.expect_end()
    if not admd.isprintable():
        raise StatementError(where, "not a valid admd")
    b.admd = admd


def _proc_params(cur: Cursor) -> dict[str, str]:
    params: dict[str, str] = {}
    while not cur.at_end():
        opt = cur.expect("user", "group", "chroot", "stats")
        if opt in params:
            raise cur.error(f"{opt} already specified for this processor")
        params[opt] = "" if opt == "stats" else cur.value(opt)
    return params


def parse_proc(cur: Cursor, b: Builder) -> None:
    where = cur.where
    name = cur.value("proc name")
    command = cur.value("proc command")
    params = _proc_params(cur)
    if name in b.procs:
        raise StatementError(where, f"processor already exists with that name: {name}")
    b.procs[name] = model.Proc(name=name, command=command, source=where,
                               user=params.get("user"), group=params.get("group"),
                               chroot=params.get("chroot"))


def parse_filter(cur: Cursor, b: Builder) -> None:
    where = cur.where
    name = cur.value("filter name")
    kind = cur.expect("proc", "proc-exec", "phase", "chain")
    if name in b.filters:
        raise StatementError(where, f"filter already exists with that name: {name}")
    argument = ""
    chain: tuple[str, ...] = ()
    if kind == "proc":
        argument = cur.value("proc name")
        b.ref("proc", argument, where)
        cur.expect_end()
    elif kind == "proc-exec":
        argument = cur.value("filter command")
        params = _proc_params(cur)
        # upstream: a proc-exec filter is a processor named after the filter
        # (one namespace with `proc`); its user/group live there
        known = b.procs.get(name)
        if known is not None and (known.command != argument or params):
            raise StatementError(where, f"processor already exists with that name: {name}")
        if known is None:  # else: a dump's `proc` line for this very filter
            b.procs[name] = model.Proc(name=name, command=argument, source=where,
                                       user=params.get("user"), group=params.get("group"),
                                       chroot=params.get("chroot"))
    elif kind == "chain":
        entries, tkind = b.inline_entries(cur)
        if tkind is not model.TableEntryKind.LIST:
            raise StatementError(where, "syntax error: a filter chain is a list of names")
        chain = tuple(k for k, _ in entries)
        for element in chain:
            b.ref("filter", element, where)
        cur.expect_end()
    else:
        # phase PHASE match CONDITIONS ACTION, validated, kept as canonical text
        argument = builtin_filter.parse_config(cur, b)
    b.filters[name] = model.Filter(name=name, kind=kind, source=where, argument=argument,
                                   chain=chain)
