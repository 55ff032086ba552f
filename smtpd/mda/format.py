"""smtpd.conf(5) format specifiers: %{sender}, %{rcpt.user:lowercase}, ...

A port of upstream's mda_expand_format/mda_expand_token semantics:

- `%{token}`, `%{token[n]}`, `%{token[n:m]}` (inclusive, negative offsets
  count from the end, as upstream), `%{token:mod|mod}` with modifiers
  `lowercase`, `uppercase`, `strip` (drop the +tag) and `raw`;
- `%%` is a literal `%`; `~/` at the very start is the user's home.
- Envelope-derived values have the characters of ESCAPE replaced by ':'
  (upstream's MAILADDR_ESCAPE), `raw` only RAW_ESCAPE.  `user.directory`
  and `mda` are trusted (they come from passwd / the configuration) and
  are not escaped.

On top of upstream, envelope-derived values that could escape a path or
smuggle control characters are refused (FormatError), never passed on:
"." and "..", control characters, and any ".." path component that the
template itself does not contain.  Nothing here ever involves a shell.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from smtpd.mda.types import DeliveryRequest

# mail.maildir.c's MAILADDR_ESCAPE: '/' is in it, so an address part can
# never contain a path separator after expansion.
ESCAPE = frozenset("!#$%&'*/?^`{|}~")
# `raw` skips the address escaping but still never lets '/' through.
RAW_ESCAPE = frozenset("/")

MAX_TOKEN_LEN = 128  # upstream MAXTOKENLEN
EXPAND_BUFFER = 1024  # upstream EXPAND_BUFFER

_TRUSTED = frozenset({"user.directory", "mda"})


class FormatError(ValueError):
    """The template is malformed or the expanded value is refused."""


@dataclass(frozen=True, slots=True)
class FormatContext:
    sender: str  # "" for <>
    rcpt: str  # upstream's rcpt: the address as received (RCPT TO)
    dest: str  # upstream's dest: final address after expansion
    username: str
    directory: str
    subaddress_delim: str = "+"

    @classmethod
    def from_request(cls, req: DeliveryRequest) -> FormatContext:
        return cls(
            sender=req.sender,
            rcpt=req.orig_rcpt,
            dest=req.rcpt,
            username=req.user,
            directory=req.home,
            subaddress_delim=req.subaddress_delim,
        )


@dataclass(frozen=True, slots=True)
class Token:
    """One parsed `%{...}` specifier."""

    name: str  # lower-cased token name
    begin: int | None
    end: int | None
    modifiers: tuple[str, ...]
    source: str  # the text between the braces, for messages


def _split(addr: str) -> tuple[str, str]:
    user, at, domain = addr.rpartition("@")
    if not at:
        return addr, ""
    return user, domain


def _joined(addr: str) -> str:
    # Upstream prints "user@domain" and turns a bare "@" into "".
    user, domain = _split(addr)
    return "" if not user and not domain else f"{user}@{domain}"


def parse_token(text: str) -> Token:
    """Parse the inside of `%{...}`: name, optional [n:m], optional :mods."""
    if len(text) >= MAX_TOKEN_LEN:
        raise FormatError(f"format token too long: {text[:32]}...")
    begin: int | None = None
    end: int | None = None
    mods = ""
    lb, rb = text.find("["), text.find("]")
    if lb != -1 and rb != -1:
        if rb < lb or rb - lb <= 1:
            raise FormatError(f"bad slice in %{{{text}}}")
        name = text[:lb]
        content = text[lb + 1 : rb]
        try:
            if ":" not in content:
                begin = end = int(content)
            else:
                b, e = content.split(":", 1)
                begin = int(b) if b else None
                end = int(e) if e else None
        except ValueError:
            raise FormatError(f"bad slice in %{{{text}}}") from None
        rest = text[rb + 1 :]
        if ":" in rest:
            mods = rest.split(":", 1)[1]
    else:
        name, _, mods = text.partition(":")
    modifiers = tuple(m.lower() for m in mods.split("|")) if mods else ()
    for m in modifiers:
        if m not in ("lowercase", "uppercase", "strip", "raw"):
            raise FormatError(f"unknown modifier {m!r} in %{{{text}}}")
    return Token(name.lower(), begin, end, modifiers, text)


def _value(tok: Token, ctx: FormatContext, mda_command: str | None) -> str:
    su, sd = _split(ctx.sender)
    ru, rd = _split(ctx.rcpt)
    du, dd = _split(ctx.dest)
    values: dict[str, str | None] = {
        "sender": _joined(ctx.sender),
        "rcpt": _joined(ctx.rcpt),
        "dest": _joined(ctx.dest),
        "sender.user": su,
        "sender.domain": sd,
        "rcpt.user": ru,
        "rcpt.domain": rd,
        "dest.user": du,
        "dest.domain": dd,
        "user.username": ctx.username,
        "user.directory": ctx.directory,
        "mda": mda_command,
        "mbox.from": _joined(ctx.sender) or "MAILER-DAEMON",
    }
    if tok.name not in values:
        raise FormatError(f"unknown format token %{{{tok.source}}}")
    value = values[tok.name]
    if value is None:
        raise FormatError(f"%{{{tok.source}}} is not available here")
    return value


def _strip(value: str, delim: str) -> str:
    # gilles+hackers@poolp.org -> gilles@poolp.org; gilles+hackers -> gilles
    tag = value.find(delim) if delim else -1
    if tag == -1:
        return value
    at = value.find("@", tag)
    return value[:tag] + (value[at:] if at != -1 else "")


def _slice(value: str, begin: int | None, end: int | None) -> str:
    """Upstream's offsets: inclusive end, negatives relative to the end."""
    n = len(value)
    if n == 0:
        return ""
    b = 0 if begin is None else begin
    e = n - 1 if end is None or end >= n else end
    if b >= n:
        raise FormatError("format offset beyond end of value")
    if b < 0:
        b += n
    if e < 0:
        e += n - 1  # sic: upstream's arithmetic for a negative end offset
    if b < 0 or e < 0 or e < b:
        raise FormatError("invalid format offsets")
    return value[b : e + 1]


def _check_safe(value: str, tok: Token) -> None:
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise FormatError(f"%{{{tok.source}}}: control character refused")
    if value in (".", ".."):
        raise FormatError(f"%{{{tok.source}}}: {value!r} refused")


def expand_token(tok: Token, ctx: FormatContext, mda_command: str | None = None) -> str:
    value = _value(tok, ctx, mda_command)
    raw = False
    for mod in tok.modifiers:
        if mod == "lowercase":
            value = value.lower()
        elif mod == "uppercase":
            value = value.upper()
        elif mod == "strip":
            value = _strip(value, ctx.subaddress_delim)
        else:
            raw = True
    if tok.name not in _TRUSTED:
        escape = RAW_ESCAPE if raw else ESCAPE
        value = "".join(":" if c in escape else c for c in value)
    value = _slice(value, tok.begin, tok.end)
    if tok.name not in _TRUSTED:
        _check_safe(value, tok)  # on the final value: a slice can make ".."
    if len(value) >= EXPAND_BUFFER:
        raise FormatError(f"%{{{tok.source}}}: value too long")
    return value


Part = str | Token

_SPEC = re.compile(r"%%|%\{([^}]*)\}|%\{")


def parse_template(template: str) -> list[Part]:
    """Split a template into literal strings and Tokens (`%%` -> `%`)."""
    parts: list[Part] = []
    pos = 0
    for m in _SPEC.finditer(template):
        if m.start() > pos:
            parts.append(template[pos : m.start()])
        if m.group(0) == "%%":
            parts.append("%")
        elif m.group(1) is None:
            raise FormatError(f"unterminated %{{ in {template!r}")
        else:
            parts.append(parse_token(m.group(1)))
        pos = m.end()
    if pos < len(template):
        parts.append(template[pos:])
    return parts


def expand_format(template: str, ctx: FormatContext, mda_command: str | None = None) -> str:
    """Expand every specifier of `template` (upstream mda_expand_format)."""
    out: list[str] = []
    rest = template
    if rest.startswith("~/"):
        if not ctx.directory.startswith("/"):
            raise FormatError(f"~/ needs a home directory, user has {ctx.directory!r}")
        out.append(ctx.directory.rstrip("/") + "/")
        rest = rest[2:]
    for part in parse_template(rest):
        out.append(part if isinstance(part, str) else expand_token(part, ctx, mda_command))
    result = "".join(out)
    if len(result) >= EXPAND_BUFFER:
        raise FormatError("expanded format too long")
    return result


def expand_path(template: str, ctx: FormatContext) -> str:
    """Expand a maildir/mbox path and refuse one that climbs out of it.

    An expanded value can never hold '/' (escaped), so the only way to
    climb is a ".." component formed by expansion, e.g. "%{rcpt.user}."
    with a user part of ".": refused unless the template has it literally.
    """
    path = expand_format(template, ctx)
    if ".." in path.split("/") and ".." not in template.split("/"):
        raise FormatError(f"expanded path {path!r} contains '..'")
    if "\0" in path:
        raise FormatError("expanded path contains NUL")
    return path
