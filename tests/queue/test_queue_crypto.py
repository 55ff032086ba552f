from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtpd.crypto.kdf import (
    KdfParams,
    KeyError_,
    derive_master_key,
    dump_keycheck,
    load_keycheck,
)
from smtpd.crypto.stream import (
    CHUNK_SIZE,
    HEADER_SIZE,
    RECORD_SIZE,
    DecryptError,
    decrypt_chunks,
    encrypt_chunks,
    is_encrypted,
    parse_header,
)

PARAMS = KdfParams(salt=b"s" * 16, n=2**14)
KEY = derive_master_key("correct horse battery staple", PARAMS)
KEYS = {KEY.key_id: KEY}
LABEL = b"message 51e7b466"


def enc(data: bytes, label: bytes = LABEL, flags: int = 0) -> bytes:
    return b"".join(encrypt_chunks(KEY, label, [data], flags))


def dec(data: bytes, label: bytes = LABEL, keys: dict[bytes, object] | None = None) -> bytes:
    return b"".join(decrypt_chunks(keys or KEYS, label, [data]))  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE])
def test_round_trip(size: int) -> None:
    data = os.urandom(size)
    sealed = enc(data)
    assert is_encrypted(sealed) and sealed[0] == 0x01
    n_records = max(1, -(-size // CHUNK_SIZE))
    assert len(sealed) == HEADER_SIZE + size + 16 * n_records
    assert dec(sealed) == data
    # Fed in odd pieces, including byte by byte for small ones.
    step = 1 if size < 100 else 7777
    assert b"".join(decrypt_chunks(KEYS, LABEL, [sealed[i : i + step]
                                                  for i in range(0, len(sealed), step)])) == data


def test_no_plaintext_and_fresh_nonces() -> None:
    data = b"SECRET BODY LINE " * 10000
    a, b = enc(data), enc(data)
    assert b"SECRET" not in a and a != b
    assert parse_header(a).salt != parse_header(b).salt


def test_tampering_any_byte_is_detected() -> None:
    sealed = enc(os.urandom(CHUNK_SIZE + 100))
    for pos in (0, 1, 3, 10, HEADER_SIZE, HEADER_SIZE + 500, RECORD_SIZE + HEADER_SIZE + 3,
                len(sealed) - 1):
        bad = bytearray(sealed)
        bad[pos] ^= 0x01
        with pytest.raises(DecryptError):
            dec(bytes(bad))


@pytest.mark.parametrize("cut", [0, 1, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + 15])
def test_truncation_short(cut: int) -> None:
    with pytest.raises(DecryptError):
        dec(enc(b"hello")[:cut])


def test_truncation_at_a_chunk_boundary() -> None:
    data = os.urandom(2 * CHUNK_SIZE + 10)
    sealed = enc(data)
    # Drop the final record: the previous one was sealed as non-final.
    with pytest.raises(DecryptError, match="final"):
        dec(sealed[: HEADER_SIZE + 2 * RECORD_SIZE])
    with pytest.raises(DecryptError):
        dec(sealed[: HEADER_SIZE + RECORD_SIZE])


def test_extension_is_detected() -> None:
    data = os.urandom(CHUNK_SIZE)
    sealed = enc(data)  # one full final record
    other = enc(os.urandom(10))
    with pytest.raises(DecryptError):
        dec(sealed + other[HEADER_SIZE:])
    with pytest.raises(DecryptError):
        dec(sealed + b"\0" * 16)


def test_swapping_two_chunks_is_detected() -> None:
    sealed = enc(os.urandom(3 * CHUNK_SIZE + 5))
    h = sealed[:HEADER_SIZE]
    r = [sealed[HEADER_SIZE + i * RECORD_SIZE : HEADER_SIZE + (i + 1) * RECORD_SIZE]
         for i in range(4)]
    with pytest.raises(DecryptError, match="chunk 0"):
        dec(h + r[1] + r[0] + r[2] + r[3])


def test_swapping_two_files_is_detected() -> None:
    a = enc(b"message A", label=b"message 00000001")
    b = enc(b"message B", label=b"message 00000002")
    assert dec(a, label=b"message 00000001") == b"message A"
    with pytest.raises(DecryptError):
        dec(a, label=b"message 00000002")
    with pytest.raises(DecryptError):
        dec(b, label=b"message 00000001")


def test_flags_are_authenticated() -> None:
    sealed = bytearray(enc(b"hello", flags=0))
    sealed[1] = 0x01  # claim "compressed inside"
    with pytest.raises(DecryptError):
        dec(bytes(sealed))
    sealed[1] = 0x80  # unknown flag
    with pytest.raises(DecryptError, match="flags"):
        dec(bytes(sealed))


def test_wrong_key() -> None:
    other = derive_master_key("wrong", PARAMS)
    with pytest.raises(DecryptError, match="unknown key"):
        dec(enc(b"hello"), keys={other.key_id: other})
    # Even a key that claims the right id does not open it.
    forged = type(KEY)(key=other.key, key_id=KEY.key_id)
    with pytest.raises(DecryptError, match="authentication failed"):
        dec(enc(b"hello"), keys={KEY.key_id: forged})


def test_bad_version() -> None:
    with pytest.raises(DecryptError, match="version"):
        dec(b"\x02" + enc(b"x")[1:])


def test_kdf_and_keycheck() -> None:
    assert derive_master_key("a", PARAMS) == derive_master_key("a", PARAMS)
    assert derive_master_key("a", PARAMS).key_id != derive_master_key("b", PARAMS).key_id
    fresh = KdfParams.new()
    assert fresh.salt != KdfParams.new().salt
    text = dump_keycheck(PARAMS, KEY.key_id)
    assert load_keycheck(text) == (PARAMS, KEY.key_id)
    with pytest.raises(KeyError_):
        load_keycheck(text.replace(b"n: 16384", b"n: 1024"))  # weakened parameters
    with pytest.raises(KeyError_):
        load_keycheck(text + b"extra: 1\n")
    assert load_keycheck(dump_keycheck(PARAMS, None)) == (PARAMS, None)
    with pytest.raises(KeyError_):
        derive_master_key("", PARAMS)
    assert "key=" not in repr(KEY)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 3 * CHUNK_SIZE + 3), st.lists(st.integers(1, 100_000), max_size=6),
       st.randoms(use_true_random=False))
def test_any_size_and_any_split_round_trips(size: int, cuts: list[int],
                                            rnd: random.Random) -> None:
    data = rnd.randbytes(size)
    pieces, pos = [], 0
    for cut in cuts:  # the writer fed in uneven pieces
        pieces.append(data[pos : pos + cut])
        pos += cut
    pieces.append(data[pos:])
    sealed = b"".join(encrypt_chunks(KEY, LABEL, pieces))
    step = rnd.randint(1, 3 * RECORD_SIZE)
    assert b"".join(decrypt_chunks(KEYS, LABEL, [sealed[i : i + step]
                                                  for i in range(0, len(sealed), step)])) == data
    flip = rnd.randrange(len(sealed))
    bad = bytearray(sealed)
    bad[flip] ^= 1 << rnd.randrange(8)
    with pytest.raises(DecryptError):
        dec(bytes(bad))
