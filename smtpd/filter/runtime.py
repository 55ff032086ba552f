"""Filters in the smtp process: the chain of each listener, the open tables
and proc connections they use, and which filter processes the parent runs.

A listener's ``filter NAME`` (or ``filter { a, b }``) is flattened into a
tuple of ``Element`` in order: chains expand in place (``filter X chain
{ a, b }``), builtin rules keep their parsed ``Rule``, proc and proc-exec
filters name the ``FilterConn`` that talks to their process.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from smtpd.config.model import Config, Listener
from smtpd.filter.builtin import Rule, parse_rule, tables_of
from smtpd.filter.conn import FilterConn
from smtpd.table.backend import Table, open_table

DEFAULT_SESSION_TIMEOUT = 300


@dataclass(frozen=True, slots=True)
class Element:
    name: str  # the filter's name in smtpd.conf (reports name it)
    rule: Rule | None = None
    conn: str | None = None  # FilterConn name (the proc)


@dataclass(frozen=True, slots=True)
class ProcSpec:
    """A filter process the parent starts: ``proc NAME "cmd"`` referenced by
    ``filter X proc NAME``, or ``filter NAME proc-exec "cmd"``."""

    name: str
    command: str
    user: str | None = None
    group: str | None = None
    chroot: str | None = None


def listener_filters(listener: Listener) -> list[str]:
    text = listener.filter
    if not text:
        return []
    if text.startswith("{"):
        return [n.strip() for n in text.strip("{}").split(",") if n.strip()]
    return [text]


def flatten(config: Config, names: list[str], seen: frozenset[str] = frozenset()) -> list[Element]:
    out: list[Element] = []
    for name in names:
        f = config.filters.get(name)
        if f is None or name in seen:
            continue  # the config checks refuse unknown names; a loop expands once
        if f.kind == "chain":
            out += flatten(config, list(f.chain), seen | {name})
        elif f.kind == "phase":
            out.append(Element(name, rule=parse_rule(f.argument)))
        elif f.kind == "proc":
            out.append(Element(name, conn=f.argument))
        else:  # proc-exec: its process carries the filter's name
            out.append(Element(name, conn=name))
    return out


def proc_specs(config: Config) -> dict[str, ProcSpec]:
    """Every filter process some listener uses (unused ones are not started)."""
    specs: dict[str, ProcSpec] = {}
    for listener in config.listeners:
        for el in flatten(config, listener_filters(listener)):
            if el.conn is None or el.conn in specs:
                continue
            proc = config.procs.get(el.conn)
            f = config.filters.get(el.conn)
            if f is not None and f.kind == "proc-exec":
                command = f.argument
            elif proc is not None:
                command = proc.command
            else:
                continue
            specs[el.conn] = ProcSpec(
                el.conn, command, proc.user if proc else None, proc.group if proc else None,
                proc.chroot if proc else None)
    return specs


def open_filter_tables(config: Config) -> dict[str, Table]:
    """The tables builtin rules name, opened by the smtp process (while still
    privileged: table files may be readable by root only)."""
    names: set[str] = set()
    for listener in config.listeners:
        for el in flatten(config, listener_filters(listener)):
            if el.rule is not None:
                names |= tables_of(el.rule)
    return {n: open_table(config.tables[n], config.smtp.sub_addr_delim)
            for n in sorted(names) if n in config.tables}


class FilterRuntime:
    """Process-wide filter state of the smtp process."""

    def __init__(self, config: Config, tables: dict[str, Table],
                 loop: asyncio.AbstractEventLoop, log: logging.Logger) -> None:
        self.config = config
        self.tables = tables
        self.log = log
        self.conns = {name: FilterConn(name, loop, log, DEFAULT_SESSION_TIMEOUT, config.admd)
                      for name in proc_specs(config)}
        self._chains: dict[str, tuple[Element, ...]] = {}

    def chain(self, listener: Listener) -> tuple[Element, ...]:
        key = listener.filter or ""
        found = self._chains.get(key)
        if found is None:
            found = tuple(flatten(self.config, listener_filters(listener)))
            self._chains[key] = found
        return found

    def attach(self, name: str, generation: int, fd: int) -> bool:
        conn = self.conns.get(name)
        if conn is None:
            return False
        conn.attach(fd, generation)
        return True

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()
        for table in self.tables.values():
            table.close()
