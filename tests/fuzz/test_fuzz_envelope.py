"""Fuzz the text envelope parser (smtpd.queue.envelope): arbitrary or mutated
input raises only EnvelopeError, and any text value, CR/LF/NUL included,
round-trips without adding a line (CVE-2020-8794's lesson, DESIGN.md §4)."""

from __future__ import annotations

import dataclasses
from typing import Any

from fuzz_profiles import fuzz_settings
from hypothesis import given
from hypothesis import strategies as st

from smtpd.queue.envelope import (
    DeliveryType,
    Envelope,
    EnvelopeError,
    dump_envelope,
    envelope_items,
    load_envelope,
)

BASE = Envelope(evpid=0x1234567800000001, type=DeliveryType.MDA, dispatcher="local",
                sender="a@example.com", rcpt="b@example.com", dest="b@example.com",
                ctime=1700000000, ttl=345600, helo="client.test", errorline="x")
TEXT_FIELDS = ("sender", "rcpt", "dest", "helo", "hostname", "errorline", "dsn_envid",
               "tag", "username", "mda_exec", "dispatcher")


def load_or_error(data: bytes) -> Envelope | None:
    try:
        return load_envelope(data)
    except EnvelopeError:
        return None


@fuzz_settings()
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_envelope_error(data: bytes) -> None:
    load_or_error(data)
    load_or_error(b"version: 1\n" + data)


@fuzz_settings()
@given(st.lists(st.tuples(st.integers(0, 400), st.integers(0, 3), st.binary(max_size=4)),
                max_size=6))
def test_mutated_envelopes_raise_only_envelope_error(edits: list[tuple[int, int, bytes]]
                                                     ) -> None:
    data = bytearray(dump_envelope(BASE))
    for pos, cut, insert in edits:
        pos %= len(data) + 1
        data[pos:pos + cut] = insert
    env = load_or_error(bytes(data))
    if env is not None:  # whatever parses, dumps back to something that parses the same
        assert load_envelope(dump_envelope(env)) == env


@fuzz_settings()
@given(st.sampled_from(TEXT_FIELDS), st.text(max_size=60))
def test_any_value_round_trips_on_its_own_line(field: str, value: str) -> None:
    try:
        changes: dict[str, Any] = {field: value}
        env = dataclasses.replace(BASE, **changes)
        data = dump_envelope(env)
    except (EnvelopeError, ValueError):
        return  # refused at the writer: never written half-escaped
    assert data.count(b"\n") == len(envelope_items(env))
    assert b"\r" not in data and b"\0" not in data
    assert load_envelope(data) == env
