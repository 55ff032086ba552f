"""`smtpctl encrypt [string]`: a password hash for credentials tables
(table(5) "user $2b$..."), as upstream's encrypt(1) prints it: bcrypt, the
crypt(3) "$2b$" form that the lookup process checks.  Without an argument
each line of stdin is hashed.  Done here in the client: the daemon is not
needed and the password never crosses the control socket."""

from __future__ import annotations

import sys
from typing import TextIO

import bcrypt

ROUNDS = 12
MAX_BYTES = 72  # bcrypt ignores the rest: refuse rather than truncate silently


class EncryptError(Exception):
    pass


def encrypt(word: str, rounds: int = ROUNDS) -> str:
    raw = word.encode()
    if len(raw) > MAX_BYTES:
        raise EncryptError(f"password longer than {MAX_BYTES} bytes")
    return bcrypt.hashpw(raw, bcrypt.gensalt(rounds, prefix=b"2b")).decode()


def run(args: list[str], stdin: TextIO | None = None, stdout: TextIO | None = None,
        rounds: int = ROUNDS) -> int:
    out = stdout or sys.stdout
    words = args if args else [line.rstrip("\r\n") for line in (stdin or sys.stdin)]
    for word in words:
        try:
            print(encrypt(word, rounds), file=out)
        except EncryptError as exc:
            print(f"smtpctl: encrypt: {exc}", file=sys.stderr)
            return 1
    return 0
