"""``action NAME method [options]`` (parse.y: dispatcher)."""

from __future__ import annotations

import re
from typing import Any

from smtpd.config import model
from smtpd.config.builder import Builder
from smtpd.config.cursor import Cursor, StatementError

METHODS = ("maildir", "mbox", "mda", "lmtp", "forward-only", "expand-only", "relay")
LOCAL_OPTIONS = ("alias", "virtual", "userbase", "user", "wrapper", "forward-file", "ttl")
RELAY_OPTIONS = (
    "helo", "helo-src", "pki", "ca", "ciphers", "protocols", "src", "mail-from", "backup",
    "host", "domain", "tls", "tls-policy", "auth", "filter", "srs", "ttl",
)
TLS_POLICIES = tuple(p.value for p in model.RelayTlsPolicy)

_URL = re.compile(
    r"(?:(?P<proto>[a-z+]+)://)?(?:(?P<label>[^@/]+)@)?"
    r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:/\[\]@]+))(?::(?P<port>[0-9]{1,5}))?\Z"
)


def parse_relay_url(text: str) -> model.RelayUrl | None:
    """``[proto://][label@]host[:port]``; None when malformed."""
    m = _URL.match(text)
    if m is None:
        return None
    proto_text = m.group("proto")
    try:
        proto = model.RelayProto(proto_text or "smtp")
    except ValueError:
        return None
    port_text = m.group("port")
    if port_text is not None:
        port = int(port_text)
        if not 0 < port <= 65535:
            return None
    elif proto is model.RelayProto.LMTP:
        return None  # smtpd.conf(5): "port is required" for lmtp
    else:
        port = 465 if proto is model.RelayProto.SMTPS else 25
    return model.RelayUrl(
        proto=proto, host=m.group("v6") or m.group("host"), port=port, label=m.group("label"),
        proto_explicit=proto_text is not None, port_explicit=port_text is not None,
    )


def parse_action(cur: Cursor, b: Builder) -> None:
    where = cur.where
    name = b.name_arg(cur, "action name")
    method = cur.expect(*METHODS)
    a: dict[str, Any] = {}
    if method == "relay":
        kind = model.ActionKind.RELAY
        a["relay"] = _relay_options(cur, b, a)
    else:
        kind = model.ActionKind(method)
        if method == "maildir":
            if not cur.is_kw("junk", *LOCAL_OPTIONS) and not cur.at_end():
                a["maildir_path"] = b.abspath(cur.value("maildir path"))
            if cur.accept("junk"):
                a["junk"] = True
        elif method == "mda":
            a["mda_command"] = cur.value("mda command")
        elif method == "lmtp":
            dest = cur.value("lmtp destination")
            a["lmtp_destination"] = b.abspath(dest) if "/" in dest else dest
            if cur.accept("rcpt-to"):
                a["lmtp_rcpt_to"] = True
        _local_options(cur, b, kind, a)
    if name in b.actions:
        raise StatementError(
            where, f"dispatcher already declared with that name: {name} "
            f"(at {b.actions[name].source})"
        )
    b.actions[name] = model.Action(name=name, kind=kind, source=where, **a)


def _local_options(cur: Cursor, b: Builder, kind: model.ActionKind, a: dict[str, Any]) -> None:
    while not cur.at_end():
        tok = cur.peek()
        if not cur.is_kw(*LOCAL_OPTIONS):
            raise cur.unexpected(expected=LOCAL_OPTIONS)
        opt = cur.take().value
        if opt == "user":
            if kind is model.ActionKind.MBOX:
                raise cur.error("user may not be specified for this dispatcher", tok)
            if kind in (model.ActionKind.FORWARD_ONLY, model.ActionKind.EXPAND_ONLY):
                raise cur.error(f"user may not be specified for {kind.value}", tok)
            if "user" in a:
                raise cur.error("user already specified for this dispatcher", tok)
            a["user"] = cur.value("user name")
        elif opt in ("alias", "virtual"):
            if "alias_table" in a or "virtual_table" in a:
                which = "alias" if "alias_table" in a else "virtual"
                raise cur.error(f"{which} mapping already specified for this dispatcher", tok)
            a[f"{opt}_table"] = b.table_arg(cur, f"{opt} table", opt)
        elif opt == "userbase":
            if "userbase_table" in a:
                raise cur.error("userbase mapping already specified for this dispatcher", tok)
            a["userbase_table"] = b.table_arg(cur, "userbase table", "userbase")
        elif opt == "wrapper":
            if "wrapper" in a:
                raise cur.error("wrapper already specified for this dispatcher", tok)
            a["wrapper"] = cur.value("wrapper name")
            b.ref("wrapper", a["wrapper"], tok.where)
        elif opt == "forward-file":
            a["forward_file"] = True
        else:
            if "ttl" in a:
                raise cur.error("ttl already specified for this dispatcher", tok)
            a["ttl"] = b.delay_arg(cur, "ttl delay")


def _relay_options(cur: Cursor, b: Builder, a: dict[str, Any]) -> model.RelayOptions:
    r: dict[str, Any] = {}

    def once(key: str, what: str) -> None:
        if key in r:
            raise cur.error(f"{what} already specified for this dispatcher")

    while not cur.at_end():
        tok = cur.peek()
        if not cur.is_kw(*RELAY_OPTIONS):
            raise cur.unexpected(expected=RELAY_OPTIONS)
        opt = cur.take().value
        if opt in ("helo", "pki", "ca", "ciphers", "protocols", "mail-from"):
            key = opt.replace("-", "_")
            once(key, opt)
            value = cur.value(opt)
            r[key] = value.lower() if opt in ("pki", "ca") else value
            if opt in ("pki", "ca"):
                b.ref(opt, r[key], tok.where)
        elif opt == "helo-src":
            once("helo_src_table", "helo-source mapping")
            r["helo_src_table"] = b.table_arg(cur, "helo-src table", "helo-src")
        elif opt == "src":
            once("src_table", "source mapping")
            r["src_table"] = b.table_arg(cur, "source address", "src")
        elif opt == "backup":
            once("backup", "backup")
            if "host" in r or "host_table" in r or "domain_table" in r:
                raise cur.error("backup and host are mutually exclusive", tok)
            r["backup"] = True
            if cur.accept("mx"):
                r["backup_mx"] = cur.value("mx name")
        elif opt in ("host", "domain"):
            if "host" in r or "host_table" in r or "domain_table" in r:
                raise cur.error("host mapping already specified for this dispatcher", tok)
            if "backup" in r:
                raise cur.error(f"backup and {opt} are mutually exclusive", tok)
            if opt == "domain":
                r["domain_table"] = b.table_arg(cur, "domain table", "relay-domain")
            elif cur.is_punct("<"):
                r["host_table"] = b.table_arg(cur, "relay host table", "relay-host")
            else:
                url_tok = cur.peek()
                text = cur.value("relay url")
                url = parse_relay_url(text)
                if url is None:
                    raise StatementError(url_tok.where, f"invalid relay url: {text}")
                r["host"] = url
        elif opt == "tls":
            once("tls", "tls")
            r["tls"] = (model.RelayTls.REQUIRE_NO_VERIFY if cur.accept("no-verify")
                        else model.RelayTls.REQUIRE)
        elif opt == "tls-policy":
            # pysmtpd extension: MTA-STS / DANE for MX delivery, one policy
            # for every domain or a table of domain -> policy word
            if "tls_policy" in r or "tls_policy_table" in r:
                raise cur.error("tls-policy already specified for this dispatcher", tok)
            if cur.is_kw(*TLS_POLICIES):
                r["tls_policy"] = model.RelayTlsPolicy(cur.take().value)
            elif cur.is_punct("<"):
                r["tls_policy_table"] = b.table_arg(cur, "tls-policy table", "tls-policy")
            else:
                raise cur.unexpected(expected=TLS_POLICIES)
        elif opt == "auth":
            if not ("host" in r or "host_table" in r or "domain_table" in r):
                raise cur.error("auth may not be specified without host on a dispatcher", tok)
            once("auth_table", "auth mapping")
            r["auth_table"] = b.table_arg(cur, "credentials table", "relay-auth")
        elif opt == "filter":
            once("filter", "filter")
            r["filter"] = cur.value("filter name")
            b.ref("filter", r["filter"], tok.where)
            b.unsupported(tok.where, "filter")
        elif opt == "srs":
            once("srs", "srs")
            r["srs"] = True
            b.unsupported(tok.where, "srs")
        else:
            if "ttl" in a:
                raise cur.error("ttl already specified for this dispatcher", tok)
            a["ttl"] = b.delay_arg(cur, "ttl delay")
    return model.RelayOptions(**r)
