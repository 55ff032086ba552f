"""The front's transform pipeline: compress then encrypt on write, the reverse
on read. Reading never trusts the current settings: each file says how it was
written (DESIGN.md §4; migration in issue 8):

* first byte 0x01            encrypted (crypto/stream.py); header flag bit 0
                             says whether gzip is inside
* first bytes 1f 8b          gzip (RFC 1952 §2.3.1)
* anything else              plain: an envelope starts with ``version:``, a
                             message with the Received header we prepend, so
                             neither can start with 0x01 or 1f 8b
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping

from smtpd.compress.gz import compress_chunks, decompress_chunks, is_gzip
from smtpd.crypto.kdf import MasterKey
from smtpd.crypto.stream import (
    FLAG_COMPRESSED,
    DecryptError,
    UnknownKeyError,
    decrypt_chunks,
    encrypt_chunks,
    is_encrypted,
)
from smtpd.queue.blob import Kind


def label(kind: Kind, oid: int) -> bytes:
    """Associated data binding a ciphertext to the object it was written for."""
    if kind is Kind.ENVELOPE:
        return f"envelope {oid:016x}".encode()
    return f"{kind} {oid:08x}".encode()


def encode(
    chunks: Iterable[bytes], *, compression: bool, master: MasterKey | None, aad: bytes
) -> Iterator[bytes]:
    out: Iterable[bytes] = chunks
    if compression:
        out = compress_chunks(out)
    if master is not None:
        out = encrypt_chunks(master, aad, out, FLAG_COMPRESSED if compression else 0)
    return iter(out)


def is_plain(head: bytes) -> bool:
    """Whether a blob starting with ``head`` (its first 2 bytes or all of a
    shorter one) is stored as is."""
    return not is_encrypted(head) and not is_gzip(head)


def decode(
    raw: Iterable[bytes], *, keys: Mapping[bytes, MasterKey], aad: bytes
) -> Iterator[bytes]:
    it = iter(raw)
    head = b""
    for chunk in it:
        head += chunk
        if len(head) >= 2:
            break
    stream = itertools.chain([head] if head else [], it)
    if is_encrypted(head):
        if not keys:
            raise UnknownKeyError("encrypted, but no queue encryption key is configured")
        if len(head) < 2:
            raise DecryptError("truncated header")
        plain = decrypt_chunks(keys, aad, stream)
        if head[1] & FLAG_COMPRESSED:
            return decompress_chunks(plain)
        return plain
    if is_gzip(head):
        return decompress_chunks(stream)
    return stream
