"""``match [!] conditions... action NAME | reject`` (parse.y: match_option)."""

from __future__ import annotations

from smtpd.config import model
from smtpd.config.builder import Builder
from smtpd.config.cursor import Cursor

C = model.CondKind
MATCH_WORDS = ("from", "for", "tag", "helo", "tls", "auth", "mail-from", "rcpt-to",
               "action", "reject")
FROM_WORDS = ("any", "local", "socket", "src", "auth", "rdns", "mail-from")
FOR_WORDS = ("any", "local", "domain", "rcpt-to")
# conditions that share one upstream flag ("auth already specified for this rule")
_GROUP = {
    C.FROM_AUTH: "auth", C.AUTH: "auth",
    C.FROM_MAIL_FROM: "mail-from", C.MAIL_FROM: "mail-from",
    C.FOR_RCPT_TO: "rcpt-to", C.RCPT_TO: "rcpt-to",
    C.TAG: "tag", C.HELO: "helo", C.TLS: "tls",
}
_USE = {
    C.FROM_SRC: "from", C.FOR_DOMAIN: "for", C.TAG: "tag", C.HELO: "helo", C.FROM_RDNS: "rdns",
    C.FROM_AUTH: "auth", C.AUTH: "auth", C.FROM_MAIL_FROM: "mail-from", C.MAIL_FROM: "mail-from",
    C.FOR_RCPT_TO: "rcpt-to", C.RCPT_TO: "rcpt-to",
}
# conditions whose table argument is optional
_OPTIONAL_TABLE = {C.FROM_AUTH, C.FROM_RDNS, C.AUTH}
_REQUIRED_TABLE = {C.FROM_SRC, C.FROM_MAIL_FROM, C.FOR_DOMAIN, C.FOR_RCPT_TO, C.TAG, C.HELO,
                   C.MAIL_FROM, C.RCPT_TO}


def _has_table_arg(cur: Cursor) -> bool:
    """Is an optional table argument next?  ``<t>``, ``{...}``, ``regex`` or a
    quoted string; a bare word is taken only if it is not the next keyword."""
    if cur.is_punct("<") or cur.is_punct("{") or cur.is_kw("regex"):
        return True
    tok = cur.peek()
    if tok.kind.value == "string":
        return True
    return tok.kind.value == "word" and tok.value not in MATCH_WORDS


def parse_match(cur: Cursor, b: Builder) -> None:
    where = cur.where
    conds: list[model.Condition] = []
    seen: dict[str, model.Condition] = {}
    action: str | None = None
    reject = False
    while True:
        tok = cur.peek()
        if cur.accept("action"):
            action = cur.value("action name")
            b.ref("action", action, cur.toks[cur.pos - 1].where)
            break
        if cur.accept("reject"):
            reject = True
            break
        if cur.at_end():
            raise cur.error("syntax error: match needs \"action NAME\" or \"reject\"")
        negate = cur.accept_punct("!")
        if not cur.is_kw(*MATCH_WORDS[:-2]):
            raise cur.unexpected(expected=MATCH_WORDS)
        word = cur.take().value
        if word == "from":
            kind = C("from " + cur.expect(*FROM_WORDS))
        elif word == "for":
            kind = C("for " + cur.expect(*FOR_WORDS))
        else:
            kind = C(word)
        # "from auth" fills both the from slot and the auth flag, as upstream
        slots = [s for s in ("from" if kind.is_from else "for" if kind.is_for else None,
                             _GROUP.get(kind)) if s]
        for slot in slots:
            if slot in seen:
                raise cur.error(f"{slot} already specified for this rule", tok)
        table: str | None = None
        regex = False
        if kind in _REQUIRED_TABLE or (kind in _OPTIONAL_TABLE and _has_table_arg(cur)):
            regex = cur.accept("regex")
            use = "regex" if regex else _USE[kind]
            table = b.table_arg(cur, f"{kind.value} argument", use)
        cond = model.Condition(kind=kind, negate=negate, table=table, regex=regex)
        conds.append(cond)
        for slot in slots:
            seen[slot] = cond
    cur.expect_end()
    if "from" not in seen:
        conds.insert(0, model.Condition(kind=C.FROM_LOCAL))
    if "for" not in seen:
        pos = next((i + 1 for i, c in enumerate(conds) if c.kind.is_from), 0)
        conds.insert(pos, model.Condition(kind=C.FOR_LOCAL))
    b.rules.append(model.MatchRule(conditions=tuple(conds), source=where, action=action,
                                   reject=reject))
