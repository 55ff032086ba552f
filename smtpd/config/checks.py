"""Cross-checks once every statement is read, all reported at once.

Upstream resolves names while parsing (a table must be declared before its
use); we resolve them at the end, so the order of directives is free and a
misspelt name gets a did-you-mean.
"""

from __future__ import annotations

import ipaddress
import os

from smtpd.config import model
from smtpd.config.builder import TABLE_USES, Builder
from smtpd.config.cursor import did_you_mean
from smtpd.config.listen import BindAddress, ListenError, resolve_listener

_WHAT = {
    "table": ("no such table", "tables"),
    "action": ("no such dispatcher", "actions"),
    "pki": ("pki name not found", "pkis"),
    "ca": ("ca name not found", "cas"),
    "wrapper": ("no mda wrapper with that name", "wrappers"),
    "filter": ("no filter exist with that name", "filters"),
    "proc": ("no processor exist with that name", "procs"),
}


def check(b: Builder, check_files: bool) -> None:
    _check_refs(b)
    _check_table_uses(b)
    _check_pkis(b, check_files)
    _check_listeners(b, check_files)
    _check_actions(b)
    if not b.rules:
        b.errors.append("warn: no rules, nothing to do")


def _check_refs(b: Builder) -> None:
    for kind, name, where in b.refs:
        message, attr = _WHAT[kind]
        known = getattr(b, attr)
        if name in known:
            continue
        names = [n for n in known if not n.startswith("<inline:")]
        b.error(where, f"{message}: {name}" + did_you_mean(name, names))


def _table_label(t: model.TableDef) -> str:
    if not t.inline:
        return f'"{t.name}"'
    if len(t.entries) == 1 and t.entries[0][1] is None:
        return f'"{t.entries[0][0]}"'
    return "{ " + ", ".join(k if v is None else f"{k} = {v}" for k, v in t.entries) + " }"


def _check_table_uses(b: Builder) -> None:
    """upstream table_check_use(): a list where a mapping is needed (or the
    reverse), getpwnam anywhere but userbase."""
    for name, use, where in b.uses:
        t = b.tables.get(name)
        if t is None:
            continue  # reported as "no such table"
        shape, word = TABLE_USES[use]
        if t.backend == "getpwnam":
            ok = use == "userbase"
        elif t.backend == "static":
            is_list = t.kind is model.TableEntryKind.LIST
            ok = shape == "any" or (shape == "list") == is_list
        else:
            ok = True  # file/sqlite content is only known when opened
        if not ok:
            b.error(where, f"table {_table_label(t)} may not be used for {word} lookups")


def _check_pkis(b: Builder, check_files: bool) -> None:
    for pki in b.pkis.values():
        for what, path in (("certificate", pki.cert), ("key", pki.key)):
            if path is None:
                b.error(pki.source, f"pki {pki.name}: no {what} file")
            elif check_files and not os.access(path, os.R_OK):
                b.error(pki.source, f"pki {pki.name}: cannot read {what} file {path}")
    for ca in b.cas.values():
        if check_files and ca.cert is not None and not os.access(ca.cert, os.R_OK):
            b.error(ca.source, f"ca {ca.name}: cannot read certificate file {ca.cert}")


def _address_key(listener: model.Listener) -> str:
    try:
        return str(ipaddress.ip_address(listener.interface))
    except ValueError:
        return listener.interface.lower()


def _check_listeners(b: Builder, resolve: bool) -> None:
    """Two listeners on the same address and port; with resolve, also the
    addresses behind names (lo0 and 127.0.0.1) and names that resolve to
    nothing (upstream: "invalid virtual ip or interface")."""
    seen: dict[tuple[str, model.Family, int], model.Listener] = {}
    bound: dict[BindAddress, model.Listener] = {}
    for listener in b.listeners:
        if listener.kind is model.ListenerKind.SOCKET:
            continue
        key = (_address_key(listener), listener.family, listener.port)
        first = seen.get(key)
        if first is not None:
            b.error(listener.source, f"listener on {listener.interface} port {listener.port} "
                    f"already defined at {first.source}")
            continue
        seen[key] = listener
        if not resolve:
            continue
        try:
            addresses = resolve_listener(listener)
        except ListenError as e:
            b.error(listener.source, str(e))
            continue
        for addr in addresses:
            other = bound.get(addr)
            if other is not None:
                b.error(listener.source, f"listener on {addr.address} port {addr.port} "
                        f"already defined at {other.source}")
                break
            bound[addr] = listener


def _check_actions(b: Builder) -> None:
    for action in b.actions.values():
        relay = action.relay
        if relay is None:
            continue
        url = relay.host
        if url is not None:
            if relay.tls is not model.RelayTls.OPPORTUNISTIC and \
                    url.proto is model.RelayProto.SMTP_NOTLS:
                b.error(action.source, "relay tls may not be used with smtp+notls://")
            if url.label and relay.auth_table is None:
                b.error(action.source, f'relay host label "{url.label}" needs auth <table>')
            if relay.auth_table is not None and not url.label:
                b.error(action.source,
                        "relay auth needs a label in the host url (proto://label@host)")
        if relay.srs and b.srs_key is None:
            b.error(action.source, "an srs key is required for srs to be specified in an action")
