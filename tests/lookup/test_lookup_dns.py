"""Reverse DNS and forward confirmation against a stub DNS server on loopback."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest

from smtpd.lookup.dns import HostName, client_hostname, make_resolver
from tests.mta.dnsstub import StubDns

RECORDS = {
    ("10.2.0.192.in-addr.arpa.", "PTR"): ["mx.example.test."],
    ("mx.example.test.", "A"): ["192.0.2.10"],
    ("11.2.0.192.in-addr.arpa.", "PTR"): ["liar.example.test."],
    ("liar.example.test.", "A"): ["192.0.2.99"],
}


@pytest.fixture
def stub() -> Iterator[StubDns]:
    s = StubDns(RECORDS)
    yield s
    s.close()


def lookup(stub: StubDns, address: str) -> HostName:
    resolver = make_resolver(f"127.0.0.1:{stub.port}")
    return asyncio.run(client_hostname(resolver, address))


def test_forward_confirmed(stub: StubDns) -> None:
    assert lookup(stub, "192.0.2.10") == HostName("mx.example.test", True)
    assert "10.2.0.192.in-addr.arpa. PTR" in stub.queries


def test_ptr_not_confirmed(stub: StubDns) -> None:
    assert lookup(stub, "192.0.2.11") == HostName("liar.example.test", False)


def test_no_ptr(stub: StubDns) -> None:
    assert lookup(stub, "192.0.2.12") == HostName("", False)


def test_loopback_answered_locally(stub: StubDns) -> None:
    assert lookup(stub, "127.0.0.1") == HostName("localhost", True)
    assert lookup(stub, "::1").name == "localhost"
    assert stub.queries == []


def test_unreachable_resolver_is_a_tempfail() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))  # bound, never answers
        resolver = make_resolver(f"127.0.0.1:{s.getsockname()[1]}")
        resolver.lifetime = 0.5
        host = asyncio.run(client_hostname(resolver, "192.0.2.10"))
    assert host.tempfail and host.name == ""
