"""smtpd.conf lexer: comments, quoting, line continuation, macros, includes.

Follows the lexer of OpenSMTPD's parse.y (yylex/lgetc):

* ``#`` starts a comment up to the end of the line; a backslash-newline
  continues the line, even inside a comment ("the comment is effective until
  the end of the entire block", smtpd.conf(5));
* strings in double or single quotes may span lines; inside them ``\\"``,
  ``\\ `` and ``\\<tab>`` escape, backslash-newline is dropped, any other
  backslash is kept;
* ``$name`` at the start of a token expands the macro; its value is
  tokenized again (without further expansion), as upstream pushes it back
  into the input;
* ``{ } < > ! = , `` are tokens of their own (``=>`` is ``=``);
* everything else up to one of those characters or a blank is a word.
  Unlike upstream, a word may also start with ``/``, ``.``, ``~``, ``@``, ``*``
  (upstream demands quotes there): a superset, so every upstream file lexes
  the same.

The lexer is pull-based (``next()``) so that the parser can define a macro
or push an included file before the next line is read.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass


class Tok(enum.Enum):
    WORD = "word"
    STRING = "string"  # quoted: never a keyword
    PUNCT = "punct"
    NL = "newline"
    EOF = "eof"


@dataclass(frozen=True, slots=True)
class Token:
    kind: Tok
    value: str
    file: str
    line: int
    glued: bool = False  # no blank between this token and the previous one

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    def describe(self) -> str:
        if self.kind is Tok.NL:
            return "end of line"
        if self.kind is Tok.EOF:
            return "end of file"
        if self.kind is Tok.STRING:
            return f'"{self.value}"'
        return f'"{self.value}"'


class LexError(Exception):
    def __init__(self, file: str, line: int, message: str) -> None:
        super().__init__(f"{file}:{line}: {message}")
        self.file = file
        self.line = line
        self.message = message


_SCAN = re.compile(
    r"""
    (?P<ws>[ \t\r\f\v]+)
  | (?P<cont>\\\r?\n)
  | (?P<comment>\#(?:\\\r?\n|\\.|[^\\\n])*)
  | (?P<nl>\n)
  | (?P<quote>["'])
  | (?P<macro>\$[A-Za-z0-9_]*)
  | (?P<punct>=>|[{}<>!=,])
  | (?P<word>(?:[^\s"'{}<>()!=\#,\\]|\\[^\n])+)
  | (?P<bad>.)
    """,
    re.VERBOSE,
)
_QUOTED = {
    '"': re.compile(r'"((?:[^"\\]|\\.)*)"', re.DOTALL),
    "'": re.compile(r"'((?:[^'\\]|\\.)*)'", re.DOTALL),
}
_WORD_ESCAPE = re.compile(r"\\(.)")
MACRO_NAME = re.compile(r"[A-Za-z0-9_]+\Z")


def _unquote(body: str, quote: str) -> str:
    out: list[str] = []
    i = 0
    n = len(body)
    while i < n:
        c = body[i]
        if c == "\\" and i + 1 < n:
            nxt = body[i + 1]
            if nxt in (quote, " ", "\t"):
                out.append(nxt)
                i += 2
                continue
            if nxt == "\n":
                i += 2
                continue
            out.append(c)
            i += 1
            continue
        if c == "\n":  # upstream drops newlines inside quotes
            i += 1
            continue
        out.append(c)
        i += 1
    return "".join(out)


def scan(text: str, file: str, first_line: int = 1, macros: bool = True) -> Iterator[Token]:
    """Tokens of ``text``; MACRO tokens come out as WORD "$name" when
    ``macros`` is true (the Lexer expands them), else as plain words."""
    line = first_line
    pos = 0
    end = len(text)
    match = _SCAN.match
    last_end = -1  # end of the previous token, to tell glued tokens
    while pos < end:
        m = match(text, pos)
        assert m is not None  # the "bad" alternative matches any character
        kind = m.lastgroup
        value = m.group()
        glued = pos == last_end
        if kind not in ("ws", "cont", "comment"):
            last_end = m.end()
        if kind == "ws":
            pass
        elif kind == "cont":
            line += 1
        elif kind == "comment":
            line += value.count("\n")
        elif kind == "nl":
            yield Token(Tok.NL, "\n", file, line)
            line += 1
        elif kind == "quote":
            q = _QUOTED[value].match(text, pos)
            if q is None:
                raise LexError(file, line, "reached end of file while parsing quoted string")
            body = q.group(1)
            if "\0" in body:
                raise LexError(file, line, "syntax error: NUL byte in quoted string")
            yield Token(Tok.STRING, _unquote(body, value), file, line)
            line += body.count("\n")
            pos = last_end = q.end()
            continue
        elif kind == "macro":
            if not macros:
                yield Token(Tok.WORD, value, file, line)
            else:
                yield Token(Tok.PUNCT, value, file, line)  # "$name": expanded by Lexer
        elif kind == "punct":
            yield Token(Tok.PUNCT, "=" if value == "=>" else value, file, line)
        elif kind == "word":
            if "\\" in value:
                value = _WORD_ESCAPE.sub(r"\1", value)
            yield Token(Tok.WORD, value, file, line, glued)
        else:
            if value == "\0":
                raise LexError(file, line, "syntax error: NUL byte")
            yield Token(Tok.PUNCT, value, file, line)
        pos = m.end()
    yield Token(Tok.NL, "\n", file, line)  # upstream fakes an EOL at EOF


class Lexer:
    """A stack of files being read, plus the macro table.

    ``cmdline`` macros (``-D name=value``) persist: a definition in the file
    does not override them, as upstream's symset(persist=1).
    """

    def __init__(self, cmdline: Mapping[str, str]) -> None:
        self._macros: dict[str, str] = dict(cmdline)
        self._persist = frozenset(cmdline)
        self._used: set[str] = set()
        self._stack: list[tuple[str, Iterator[Token]]] = []
        self._pending: list[Token] = []
        self.last_line = 0
        self.last_file = ""
        self.opened: list[str] = []

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self._stack)

    def push_file(self, path: str, text: str) -> None:
        self._stack.append((path, scan(text, path)))
        if path not in self.opened:
            self.opened.append(path)

    def define(self, name: str, value: str) -> None:
        if name in self._persist:
            return
        self._macros[name] = value

    def unused_macros(self) -> list[str]:
        return sorted(set(self._macros) - self._used)

    def next(self) -> Token:
        while True:
            tok = self._pending.pop() if self._pending else self._read()
            if tok.kind is Tok.PUNCT and tok.value.startswith("$"):
                self._expand(tok)
                continue
            return tok

    def _read(self) -> Token:
        while self._stack:
            tok = next(self._stack[-1][1], None)
            if tok is None:
                self._stack.pop()
                continue
            self.last_line = tok.line
            self.last_file = tok.file
            return tok
        return Token(Tok.EOF, "", self.last_file, self.last_line)

    def _expand(self, tok: Token) -> None:
        name = tok.value[1:]
        value = self._macros.get(name)
        if value is None:
            raise LexError(tok.file, tok.line, f"macro '{name}' not defined")
        self._used.add(name)
        tokens = scan(value, tok.file, tok.line, macros=False)
        expanded = [t for t in tokens if t.kind is not Tok.NL]
        # upstream pushes the value back into the input, so "$a.example.org"
        # reads as one word: glue a word that follows the macro directly
        if self._stack and expanded and expanded[-1].kind is Tok.WORD:
            following = next(self._stack[-1][1], None)
            if following is not None:
                if following.kind is Tok.WORD and following.glued:
                    last = expanded[-1]
                    expanded[-1] = Token(Tok.WORD, last.value + following.value, last.file,
                                         last.line)
                else:
                    self._pending.append(following)
        self._pending.extend(reversed(expanded))

    def skip_line(self) -> None:
        """Discard tokens up to the end of the current line (upstream findeol)."""
        while True:
            try:
                tok = self.next()
            except LexError:
                continue
            if tok.kind in (Tok.NL, Tok.EOF):
                return
