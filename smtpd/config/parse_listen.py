"""``listen on IF|ADDR|socket [options]`` (smtpd.conf(5), parse.y opt_if_listen)."""

from __future__ import annotations

import socket
from typing import Any

from smtpd.config import model
from smtpd.config.builder import NUMBER, Builder
from smtpd.config.cursor import Cursor, StatementError

IF_OPTIONS = (
    "inet4", "inet6", "port", "filter", "smtps", "tls", "tls-require", "ciphers",
    "protocols", "pki", "ca", "auth", "auth-optional", "tag", "hostname", "hostnames",
    "mask-src", "received-auth", "no-dsn", "proxy-v2", "senders",
)
SOCKET_OPTIONS = ("filter", "mask-src", "no-dsn", "tag")


def _port(cur: Cursor) -> int:
    tok = cur.peek()
    text = cur.value("port")
    if NUMBER.match(text):
        port = int(text)
        if not 0 < port <= 65535:
            raise StatementError(tok.where, f"invalid port: {text}")
        return port
    try:
        return socket.getservbyname(text, "tcp")
    except OSError:
        raise StatementError(tok.where, f"invalid port: {text}") from None


def parse_listen(cur: Cursor, b: Builder) -> None:
    where = cur.where
    cur.expect("on")
    is_socket = cur.accept("socket")
    interface = "socket" if is_socket else cur.value("interface or address")
    allowed = SOCKET_OPTIONS if is_socket else IF_OPTIONS
    o: dict[str, Any] = {}
    pkis: list[str] = []

    def once(key: str, what: str) -> None:
        if key in o:
            raise cur.error(f"{what} already specified")

    while not cur.at_end():
        tok = cur.peek()
        if not cur.is_kw(*allowed):
            if is_socket and cur.is_kw(*IF_OPTIONS):
                raise cur.error(f'syntax error: "{tok.value}" is not an option of listen on socket')
            raise cur.unexpected(expected=allowed)
        opt = cur.take().value
        if opt in ("inet4", "inet6"):
            once("family", "address family")
            o["family"] = model.Family(opt)
        elif opt == "port":
            once("port", "port")
            o["port"] = _port(cur)
        elif opt == "filter":
            once("filter", "filter")
            if cur.is_punct("{"):
                entries, _ = b.inline_entries(cur)
                o["filter"] = "{" + ", ".join(k for k, _ in entries) + "}"
                for k, _ in entries:
                    b.ref("filter", k, tok.where)
            else:
                o["filter"] = cur.value("filter name")
                b.ref("filter", o["filter"], tok.where)
        elif opt in ("smtps", "tls", "tls-require"):
            once("tls", "TLS mode")
            o["tls"] = model.TlsMode(opt)
            if opt != "tls" and cur.accept("verify"):
                o["tls_verify"] = True
        elif opt in ("ciphers", "protocols"):
            once(opt, opt)
            o[opt] = cur.value(opt)
        elif opt == "pki":
            name = cur.value("pki name").lower()
            b.ref("pki", name, tok.where)
            pkis.append(name)
        elif opt == "ca":
            once("ca", "ca")
            o["ca"] = cur.value("ca name").lower()
            b.ref("ca", o["ca"], tok.where)
        elif opt in ("auth", "auth-optional"):
            once("auth", "auth")
            o["auth"] = model.AuthMode(opt)
            if cur.is_punct("<") or cur.is_punct("{"):
                o["auth_table"] = b.table_arg(cur, "credentials table", "listen-auth")
        elif opt == "tag":
            once("tag", "tag")
            tag = cur.value("tag")
            if len(tag) >= 32:  # SMTPD_TAG_SIZE
                raise StatementError(tok.where, "tag name too long")
            o["tag"] = tag
        elif opt == "hostname":
            once("hostname", "hostname")
            o["hostname"] = cur.value("hostname")
        elif opt == "hostnames":
            once("hostnames_table", "hostnames")
            o["hostnames_table"] = b.table_arg(cur, "hostnames table", "hostnames")
        elif opt == "mask-src":
            once("mask_src", "mask-src")
            o["mask_src"] = True
        elif opt == "received-auth":
            once("received_auth", "received-auth")
            o["received_auth"] = True
        elif opt == "no-dsn":
            once("no_dsn", "no-dsn")
            o["no_dsn"] = True
        elif opt == "proxy-v2":
            once("proxy_v2", "proxy-v2")
            o["proxy_v2"] = True
            b.unsupported(tok.where, "proxy-v2")
        elif opt == "senders":
            once("senders_table", "senders")
            o["senders_table"] = b.table_arg(cur, "senders table", "senders")
            if cur.accept("masquerade"):
                o["masquerade"] = True

    if is_socket:
        if any(lst.kind is model.ListenerKind.SOCKET for lst in b.listeners):
            raise StatementError(where, "socket listener already configured")
        b.listeners.append(model.Listener(
            kind=model.ListenerKind.SOCKET, interface="socket", source=where, port=0, **o
        ))
        return

    tls = o.get("tls", model.TlsMode.NONE)
    # create_if_listener(): pki only with tls/smtps and tls/smtps only with a pki
    if pkis and tls is model.TlsMode.NONE:
        raise StatementError(where, "invalid listen option: pki requires tls/smtps")
    if not pkis and tls is not model.TlsMode.NONE:
        raise StatementError(where, "invalid listen option: pki required for tls/smtps")
    if o.get("auth", model.AuthMode.NONE) is not model.AuthMode.NONE and tls is model.TlsMode.NONE:
        raise StatementError(where, "invalid listen option: auth requires tls/smtps")
    explicit = "port" in o
    if not explicit:
        o["port"] = 465 if tls is model.TlsMode.SMTPS else 25
    b.listeners.append(model.Listener(
        kind=model.ListenerKind.INET, interface=interface, source=where,
        pkis=tuple(pkis), port_explicit=explicit, **o,
    ))
