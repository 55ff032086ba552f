"""load_config(): read, parse and check a configuration file."""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Mapping
from types import MappingProxyType

from smtpd.config import model
from smtpd.config.builder import Builder
from smtpd.config.checks import check
from smtpd.config.lexer import MACRO_NAME, Lexer
from smtpd.config.parser import parse, read_text

MAILNAME = "/etc/mail/mailname"


class ConfigError(Exception):
    """A configuration that cannot be used; ``errors`` are "file:line: message"."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def default_hostname(mailname: str = MAILNAME) -> str:
    """smtpd.conf(5) FILES: the first line of /etc/mail/mailname, else the
    host's fully qualified name."""
    try:
        with open(mailname, encoding="utf-8") as f:
            name = f.readline().strip()
        if name:
            return name
    except (OSError, UnicodeDecodeError):
        pass
    return socket.getfqdn()


def load_config(
    path: str,
    macros: Mapping[str, str] = MappingProxyType({}),
    base_dir: str | None = None,
    *,
    hostname: str | None = None,
    check_files: bool = True,
) -> model.Config:
    """Parse ``path``; raise ConfigError with every error found.

    macros are ``-D name=value`` definitions (they win over the file's);
    relative paths in the file are made absolute against base_dir (default:
    the current directory); check_files looks at the system as upstream's
    ``smtpd -n`` does: pki/ca files readable, listen addresses and
    interfaces that exist (smtpd.config.listen.resolve_listener).
    """
    base = os.path.abspath(base_dir if base_dir is not None else os.getcwd())
    errors = [f"invalid macro name given with -D: {name}" for name in macros
              if not MACRO_NAME.match(name)]
    if errors:
        raise ConfigError(errors)
    abspath = os.path.abspath(path)
    try:
        text = read_text(abspath)
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ConfigError([f"{path}: cannot read: {reason}"]) from None
    b = Builder(path=abspath, base_dir=base, hostname=hostname or default_hostname())
    lexer = Lexer(macros)
    lexer.push_file(path, text)
    try:
        parse(b, lexer)
        check(b, check_files)
    except Exception as e:
        # a bug or an exhausted resource must still not show a traceback
        # to the administrator (issue 4); the fuzz test keeps this unused
        raise ConfigError([f"{path}: internal error while reading the configuration: "
                           f"{type(e).__name__}: {e}"]) from e
    if b.errors:
        raise ConfigError(_sorted(b.errors, lexer))
    return dataclasses.replace(freeze(b), unused_macros=tuple(lexer.unused_macros()))


def _sorted(errors: list[str], lexer: Lexer) -> list[str]:
    """Errors in file order (files in the order they were opened), then by
    line; messages without a location (no rules) stay last."""
    order = {name: i for i, name in enumerate(lexer.opened)}

    def key(message: str) -> tuple[int, int]:
        head = message.split(": ", 1)[0]
        file, _, line = head.rpartition(":")
        if file in order and line.isdigit():
            return order[file], int(line)
        return len(order), 0

    return sorted(errors, key=key)


def freeze(b: Builder) -> model.Config:
    listeners = list(b.listeners)
    if not any(lst.kind is model.ListenerKind.SOCKET for lst in listeners):
        # upstream creates the local enqueuer's listener even without the directive
        listeners.append(model.Listener(kind=model.ListenerKind.SOCKET, interface="socket",
                                        source="", port=0))
    return model.Config(
        path=b.path,
        hostname=b.hostname,
        queue=b.queue,
        control_socket=b.control_socket,
        stats_path=b.stats_path,
        stats_interval=b.stats_interval,
        stats_keep=b.stats_keep,
        stats_prometheus=b.stats_prometheus,
        listeners=tuple(listeners),
        tables=MappingProxyType(dict(b.tables)),
        pkis=MappingProxyType(dict(b.pkis)),
        cas=MappingProxyType(dict(b.cas)),
        actions=MappingProxyType(dict(b.actions)),
        rules=tuple(b.rules),
        bounce_warn_intervals=b.bounce_warn,
        smtp=b.smtp,
        mda_wrappers=MappingProxyType(dict(b.wrappers)),
        srs_key=b.srs_key,
        srs_key_backup=b.srs_key_backup,
        srs_ttl=b.srs_ttl,
        mta_max_deferred=b.mta_max_deferred,
        admd=b.admd,
        filters=MappingProxyType(dict(b.filters)),
        procs=MappingProxyType(dict(b.procs)),
        warnings=tuple(b.warnings),
    )
