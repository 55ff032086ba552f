"""Statement loop: macros, include, and dispatch to the directive parsers."""

from __future__ import annotations

import os
from collections.abc import Callable

from smtpd.config.builder import Builder
from smtpd.config.cursor import Cursor, StatementError, did_you_mean
from smtpd.config.lexer import MACRO_NAME, Lexer, LexError, Tok, Token
from smtpd.config.parse_action import parse_action
from smtpd.config.parse_global import (
    parse_admd,
    parse_bounce,
    parse_ca,
    parse_control,
    parse_filter,
    parse_mda,
    parse_mta,
    parse_pki,
    parse_proc,
    parse_queue,
    parse_scheduler,
    parse_smtp,
    parse_srs,
    parse_stats,
    parse_table,
)
from smtpd.config.parse_listen import parse_listen
from smtpd.config.parse_match import parse_match

Directive = Callable[[Cursor, Builder], None]
DIRECTIVES: dict[str, Directive] = {
    "action": parse_action,
    "admd": parse_admd,
    "bounce": parse_bounce,
    "ca": parse_ca,
    "control": parse_control,
    "stats": parse_stats,
    "filter": parse_filter,
    "listen": parse_listen,
    "match": parse_match,
    "mda": parse_mda,
    "mta": parse_mta,
    "pki": parse_pki,
    "proc": parse_proc,
    "queue": parse_queue,
    "scheduler": parse_scheduler,
    "smtp": parse_smtp,
    "srs": parse_srs,
    "table": parse_table,
}
MAX_INCLUDE_DEPTH = 16
MAX_FILE_SIZE = 16 * 1024 * 1024


def read_text(path: str) -> str:
    """The file as text; OSError and UnicodeDecodeError go to the caller."""
    with open(path, "rb") as f:
        data = f.read(MAX_FILE_SIZE + 1)
    if len(data) > MAX_FILE_SIZE:
        raise OSError(f"file larger than {MAX_FILE_SIZE} bytes")
    return data.decode("utf-8")


def _collect(lexer: Lexer) -> tuple[list[Token], Token]:
    """Tokens up to the end of the statement; newlines inside braces are
    dropped (upstream optnl)."""
    toks: list[Token] = []
    depth = 0
    while True:
        tok = lexer.next()
        if tok.kind is Tok.EOF:
            return toks, tok
        if tok.kind is Tok.NL:
            if depth > 0:
                continue
            return toks, tok
        if tok.kind is Tok.PUNCT:
            if tok.value == "{":
                depth += 1
            elif tok.value == "}":
                depth = max(0, depth - 1)
        toks.append(tok)


def parse(b: Builder, lexer: Lexer) -> None:
    """Read every statement of the files pushed on ``lexer`` into ``b``."""
    while True:
        try:
            toks, end = _collect(lexer)
        except LexError as e:
            b.error(f"{e.file}:{e.line}", e.message)
            lexer.skip_line()
            continue
        if toks:
            cur = Cursor(toks, end)
            try:
                _statement(cur, b, lexer)
            except StatementError as e:
                b.error(e.where, e.message)
        if end.kind is Tok.EOF:
            return


def _statement(cur: Cursor, b: Builder, lexer: Lexer) -> None:
    first = cur.first
    if first.kind is Tok.WORD and cur.peek(1).kind is Tok.PUNCT and cur.peek(1).value == "=":
        _macro(cur, b, lexer)
        return
    if first.kind is not Tok.WORD:
        raise cur.error(f"syntax error: unexpected {first.describe()}", first)
    if first.value == "include":
        cur.take()
        _include(cur, b, lexer)
        return
    handler = DIRECTIVES.get(first.value)
    if handler is None:
        known = (*DIRECTIVES, "include")
        raise cur.error(f'syntax error: unknown directive "{first.value}"'
                        + did_you_mean(first.value, known), first)
    cur.take()
    handler(cur, b)


def _macro(cur: Cursor, b: Builder, lexer: Lexer) -> None:
    name = cur.take().value
    cur.take()  # "="
    value = cur.value("macro value")
    cur.expect_end()
    if not MACRO_NAME.match(name):
        raise cur.error(f"invalid macro name: {name}")
    if name in DIRECTIVES or name == "include":
        raise cur.error(f"macro name is a reserved word: {name}")
    lexer.define(name, value)


def _include(cur: Cursor, b: Builder, lexer: Lexer) -> None:
    """``include "file"``: relative names are taken from the including
    file's directory (upstream requires an absolute path)."""
    tok = cur.peek()
    name = cur.value("file name")
    cur.expect_end()
    path = name if os.path.isabs(name) else os.path.join(os.path.dirname(tok.file), name)
    path = os.path.normpath(path)
    files = lexer.files
    if path in files:
        raise cur.error(f"failed to include file {name}: include loop", tok)
    if len(files) >= MAX_INCLUDE_DEPTH:
        raise cur.error(f"failed to include file {name}: includes nested too deep", tok)
    try:
        text = read_text(path)
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise cur.error(f"failed to include file {name}: {reason}", tok) from None
    lexer.push_file(path, text)
