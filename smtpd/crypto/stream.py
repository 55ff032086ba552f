"""Chunked authenticated encryption of spool files (AES-256-GCM).

File layout, version 1::

    header (29 bytes):  0x01 | flags (1) | key id (4) | file salt (16) | nonce prefix (7)
    records:            AES-GCM(chunk) + 16-byte tag, each chunk CHUNK_SIZE bytes
                        except the last, which holds 0..CHUNK_SIZE bytes

* Per-file key = HKDF-SHA256(master key, salt=file salt): never the same
  (key, nonce) pair across files, even with a weak random source for nonces.
* Nonce = nonce prefix (7) | chunk index (4, big endian) | final flag (1),
  the STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizár 2015): records
  cannot be reordered (index), dropped from the end or extended (the final
  flag must be on the last record and only there).
* Associated data = the whole header + the object label (e.g. ``message
  51e7b466``): the flags cannot be flipped and a file copied over another
  object's file does not decrypt.
* The header's first byte 0x01 is the format version (COMPAT.md), the flags
  say how the plaintext was written (bit 0: gzip inside), for migration.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from smtpd.crypto.kdf import KEY_SIZE, MasterKey

VERSION = 0x01
CHUNK_SIZE = 64 * 1024
TAG_SIZE = 16
RECORD_SIZE = CHUNK_SIZE + TAG_SIZE
FLAG_COMPRESSED = 0x01
_KNOWN_FLAGS = FLAG_COMPRESSED
_HEADER = struct.Struct(">BB4s16s7s")
HEADER_SIZE = _HEADER.size
_MAX_CHUNKS = 2**32


class DecryptError(ValueError):
    """Wrong key, tampered, truncated, reordered or swapped ciphertext."""


class UnknownKeyError(DecryptError):
    """The file names a key id we were not given: a configuration problem
    (a key rotated away too soon) more likely than tampering."""


@dataclass(frozen=True, slots=True)
class Header:
    flags: int
    key_id: bytes
    salt: bytes
    nonce_prefix: bytes
    raw: bytes


def is_encrypted(head: bytes) -> bool:
    return head[:1] == bytes([VERSION])


def parse_header(data: bytes) -> Header:
    if len(data) < HEADER_SIZE:
        raise DecryptError("truncated header")
    version, flags, key_id, salt, prefix = _HEADER.unpack_from(data)
    if version != VERSION:
        raise DecryptError(f"unknown encryption format version {version}")
    if flags & ~_KNOWN_FLAGS:
        raise DecryptError(f"unknown header flags {flags:#x}")
    return Header(flags, key_id, salt, prefix, bytes(data[:HEADER_SIZE]))


def _file_cipher(master: MasterKey, salt: bytes) -> AESGCM:
    key = HKDF(hashes.SHA256(), KEY_SIZE, salt, b"pysmtpd queue v1 file").derive(master.key)
    return AESGCM(key)


def _nonce(prefix: bytes, index: int, final: bool) -> bytes:
    if index >= _MAX_CHUNKS:
        raise DecryptError("too many chunks")
    return prefix + index.to_bytes(4, "big") + (b"\x01" if final else b"\x00")


class Encryptor:
    """``update`` with plaintext, then ``finish``; outputs concatenate to the file."""

    def __init__(self, master: MasterKey, label: bytes, flags: int = 0) -> None:
        salt, prefix = os.urandom(16), os.urandom(7)
        self._header = _HEADER.pack(VERSION, flags, master.key_id, salt, prefix)
        self._aad = self._header + label
        self._aead = _file_cipher(master, salt)
        self._prefix = prefix
        self._index = 0
        self._buf = bytearray()
        self._started = False

    def _seal(self, chunk: bytes, final: bool) -> bytes:
        nonce = _nonce(self._prefix, self._index, final)
        self._index += 1
        return self._aead.encrypt(nonce, chunk, self._aad)

    def update(self, data: bytes) -> bytes:
        out = bytearray()
        if not self._started:
            self._started = True
            out += self._header
        self._buf += data
        # Keep at least one byte back: only ``finish`` knows which chunk is last.
        pos = 0
        while len(self._buf) - pos > CHUNK_SIZE:
            out += self._seal(bytes(self._buf[pos : pos + CHUNK_SIZE]), final=False)
            pos += CHUNK_SIZE
        del self._buf[:pos]  # once: a big update stays linear
        return bytes(out)

    def finish(self) -> bytes:
        out = self.update(b"")
        last = self._seal(bytes(self._buf), final=True)
        self._buf.clear()
        return out + last


class Decryptor:
    """``feed`` ciphertext (yields verified plaintext chunks), then ``finish``."""

    def __init__(self, keys: Mapping[bytes, MasterKey], label: bytes) -> None:
        self._keys = keys
        self._label = label
        self._buf = bytearray()
        self._aead: AESGCM | None = None
        self._header: Header | None = None
        self._index = 0

    @property
    def header(self) -> Header | None:
        return self._header

    def _open(self, record: bytes, final: bool) -> bytes:
        assert self._aead is not None and self._header is not None
        nonce = _nonce(self._header.nonce_prefix, self._index, final)
        try:
            plain = self._aead.decrypt(nonce, record, self._header.raw + self._label)
        except InvalidTag:
            what = "final " if final else ""
            raise DecryptError(
                f"authentication failed at {what}chunk {self._index}"
                " (tampered, truncated, reordered or another object's file)"
            ) from None
        self._index += 1
        return plain

    def feed(self, data: bytes) -> Iterator[bytes]:
        self._buf += data
        if self._header is None:
            if len(self._buf) < HEADER_SIZE:
                return
            header = parse_header(bytes(self._buf[:HEADER_SIZE]))
            master = self._keys.get(header.key_id)
            if master is None:
                raise UnknownKeyError(
                    f"encrypted with an unknown key (key id {header.key_id.hex()})"
                )
            self._header = header
            self._aead = _file_cipher(master, header.salt)
            del self._buf[:HEADER_SIZE]
        # A record followed by at least one more byte is not the final one.
        while len(self._buf) > RECORD_SIZE:
            record = bytes(self._buf[:RECORD_SIZE])
            del self._buf[:RECORD_SIZE]
            yield self._open(record, final=False)

    def finish(self) -> bytes:
        if self._header is None:
            raise DecryptError("truncated header")
        if len(self._buf) < TAG_SIZE:
            raise DecryptError(f"truncated at chunk {self._index}")
        plain = self._open(bytes(self._buf), final=True)
        self._buf.clear()
        return plain


def encrypt_chunks(
    master: MasterKey, label: bytes, chunks: Iterable[bytes], flags: int = 0
) -> Iterator[bytes]:
    enc = Encryptor(master, label, flags)
    for chunk in chunks:
        out = enc.update(chunk)
        if out:
            yield out
    yield enc.finish()


def decrypt_chunks(
    keys: Mapping[bytes, MasterKey], label: bytes, chunks: Iterable[bytes]
) -> Iterator[bytes]:
    dec = Decryptor(keys, label)
    for chunk in chunks:
        yield from dec.feed(chunk)
    last = dec.finish()
    if last:
        yield last
