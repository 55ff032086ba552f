"""Keys from the ``queue encryption`` passphrase.

scrypt is deliberately slow (tens of ms, 32 MiB), far too slow to run per
envelope. So it runs once per process and passphrase, with one random salt
per spool kept in the spool's key-check file; every file then gets its own
key from that master key with HKDF and a random per-file salt (stream.py).
The key-check file also records the id of the key the spool was written
with, so a wrong passphrase is refused at start-up instead of making every
message look corrupt, and a rotated key is recognised (the old one may still
be given for reading).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

KEY_SIZE = 32
KEY_ID_SIZE = 4
SALT_SIZE = 16
SCRYPT_N = 2**15  # 32 MiB with r=8: the interactive-login cost scrypt's paper suggests
SCRYPT_N_MIN = 2**14  # never accept weaker parameters from a key-check file
SCRYPT_R = 8
SCRYPT_P = 1
KEYCHECK_VERSION = 1


class KeyError_(ValueError):
    """A bad passphrase, key-check file or key mismatch."""


@dataclass(frozen=True, slots=True)
class KdfParams:
    salt: bytes
    n: int = SCRYPT_N
    r: int = SCRYPT_R
    p: int = SCRYPT_P

    def __post_init__(self) -> None:
        if len(self.salt) != SALT_SIZE:
            raise KeyError_("scrypt salt must be 16 bytes")
        if self.n < SCRYPT_N_MIN or self.n & (self.n - 1) or self.n > 2**20:
            raise KeyError_(f"scrypt n={self.n} refused (power of two, 2^14..2^20)")
        if not (1 <= self.r <= 32 and 1 <= self.p <= 16):
            raise KeyError_(f"scrypt r={self.r} p={self.p} refused")

    @classmethod
    def new(cls, n: int = SCRYPT_N) -> KdfParams:
        return cls(salt=os.urandom(SALT_SIZE), n=n)


@dataclass(frozen=True, slots=True)
class MasterKey:
    key: bytes = field(repr=False)
    key_id: bytes


def derive_master_key(passphrase: str, params: KdfParams) -> MasterKey:
    if not passphrase:
        raise KeyError_("empty queue encryption key")
    raw = Scrypt(
        salt=params.salt, length=KEY_SIZE, n=params.n, r=params.r, p=params.p
    ).derive(passphrase.encode("utf-8"))
    # Separate HKDF outputs: the published key id reveals nothing of the key.
    key = HKDF(hashes.SHA256(), KEY_SIZE, None, b"pysmtpd queue v1 master").derive(raw)
    key_id = HKDF(hashes.SHA256(), KEY_ID_SIZE, None, b"pysmtpd queue v1 key id").derive(raw)
    return MasterKey(key=key, key_id=key_id)


def dump_keycheck(params: KdfParams, key_id: bytes | None) -> bytes:
    """``key_id`` None: the spool holds no encrypted mail any more (any key may
    start using it), but the salt is kept for files moved to corrupt/."""
    kid = key_id.hex() if key_id is not None else "none"
    return (
        f"version: {KEYCHECK_VERSION}\nkdf: scrypt\nsalt: {params.salt.hex()}\n"
        f"n: {params.n}\nr: {params.r}\np: {params.p}\nkey-id: {kid}\n"
    ).encode("ascii")


_KEYCHECK_RE = re.compile(
    rb"version: 1\nkdf: scrypt\nsalt: ([0-9a-f]{32})\nn: ([0-9]{1,8})\n"
    rb"r: ([0-9]{1,2})\np: ([0-9]{1,2})\nkey-id: ([0-9a-f]{8}|none)\n"
)


def load_keycheck(data: bytes) -> tuple[KdfParams, bytes | None]:
    """Parse a key-check file: (KDF parameters, id of the spool's key or None)."""
    m = _KEYCHECK_RE.fullmatch(data)
    if m is None:
        raise KeyError_("malformed queue key-check file")
    params = KdfParams(
        salt=bytes.fromhex(m[1].decode()), n=int(m[2]), r=int(m[3]), p=int(m[4])
    )
    return params, None if m[5] == b"none" else bytes.fromhex(m[5].decode())
