"""A cursor over the tokens of one statement, and the error it raises.

A statement is everything up to the end of a line (newlines inside ``{ }``
are dropped, as upstream's ``optnl``).  A syntax error abandons the
statement (upstream's ``error '\\n'`` recovery) and parsing goes on with the
next line, so several errors are reported at once.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from smtpd.config.lexer import Tok, Token


class StatementError(Exception):
    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where
        self.message = message


def _distance(a: str, b: str) -> int:
    """Optimal string alignment distance: edits with transpositions, the
    usual typos ("prot" for "port", "lisen" for "listen")."""
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return prev[len(b)]


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """', did you mean "x"?' for the closest candidate, or ''.

    Closest: fewest edits, then same length (a transposition is likelier
    than a missing letter), then difflib's similarity."""
    limit = max(1, len(word) // 3) + (1 if len(word) >= 5 else 0)
    best: tuple[int, int, float, str] | None = None
    for cand in set(candidates):
        d = _distance(word.lower(), cand.lower())
        if d > limit or d >= max(len(cand), 2):
            continue
        key = (d, abs(len(cand) - len(word)),
               -difflib.SequenceMatcher(None, word, cand).ratio(), cand)
        if best is None or key < best:
            best = key
    return f', did you mean "{best[3]}"?' if best else ""


class Cursor:
    def __init__(self, tokens: list[Token], end: Token) -> None:
        self.toks = tokens
        self.pos = 0
        self.end = end  # the NL/EOF token closing the statement

    @property
    def first(self) -> Token:
        return self.toks[0]

    @property
    def where(self) -> str:
        return self.toks[0].where if self.toks else self.end.where

    def peek(self, ahead: int = 0) -> Token:
        i = self.pos + ahead
        return self.toks[i] if i < len(self.toks) else self.end

    def take(self) -> Token:
        tok = self.peek()
        if self.pos < len(self.toks):
            self.pos += 1
        return tok

    def at_end(self) -> bool:
        return self.pos >= len(self.toks)

    def is_kw(self, *words: str, ahead: int = 0) -> bool:
        tok = self.peek(ahead)
        return tok.kind is Tok.WORD and tok.value in words

    def accept(self, word: str) -> bool:
        if self.is_kw(word):
            self.pos += 1
            return True
        return False

    def is_punct(self, p: str) -> bool:
        tok = self.peek()
        return tok.kind is Tok.PUNCT and tok.value == p

    def accept_punct(self, p: str) -> bool:
        if self.is_punct(p):
            self.pos += 1
            return True
        return False

    def expect_punct(self, p: str) -> None:
        if not self.accept_punct(p):
            raise self.unexpected(expected=(p,))

    def expect(self, *words: str) -> str:
        tok = self.peek()
        if tok.kind is Tok.WORD and tok.value in words:
            self.pos += 1
            return tok.value
        raise self.unexpected(expected=words)

    def value(self, what: str) -> str:
        """A word or quoted string (an argument)."""
        tok = self.peek()
        if tok.kind in (Tok.WORD, Tok.STRING):
            self.pos += 1
            return tok.value
        if tok.kind in (Tok.NL, Tok.EOF):
            raise self.error(f"syntax error: missing {what}")
        raise self.error(f"syntax error: unexpected {tok.describe()}, expected {what}", tok)

    def error(self, message: str, tok: Token | None = None) -> StatementError:
        tok = tok or self.peek()
        line_tok = tok if tok.kind is not Tok.EOF else (self.toks[-1] if self.toks else tok)
        return StatementError(line_tok.where, message)

    def unexpected(self, expected: Iterable[str] = ()) -> StatementError:
        tok = self.peek()
        expected = tuple(expected)
        if tok.kind in (Tok.NL, Tok.EOF):
            prev = self.toks[self.pos - 1].value if self.pos else ""
            hint = f' after "{prev}"' if prev else ""
            if len(expected) == 1:
                return self.error(f'syntax error: missing "{expected[0]}"{hint}', tok)
            return self.error(f"syntax error: unexpected end of line{hint}", tok)
        hint = did_you_mean(tok.value, expected) if tok.kind is Tok.WORD else ""
        if not hint and len(expected) == 1:
            hint = f', expected "{expected[0]}"'
        return self.error(f"syntax error: unexpected {tok.describe()}{hint}", tok)

    def expect_end(self, options: Iterable[str] = ()) -> None:
        if not self.at_end():
            raise self.unexpected(expected=options)
