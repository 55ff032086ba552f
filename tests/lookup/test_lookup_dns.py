"""Reverse DNS and forward confirmation against a stub DNS server on loopback."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import dns.message
import dns.rcode
import dns.rrset
import pytest

from smtpd.lookup.dns import HostName, client_hostname, make_resolver

RECORDS = {
    ("10.2.0.192.in-addr.arpa.", "PTR"): "mx.example.test.",
    ("mx.example.test.", "A"): "192.0.2.10",
    ("11.2.0.192.in-addr.arpa.", "PTR"): "liar.example.test.",
    ("liar.example.test.", "A"): "192.0.2.99",
}


class StubDns:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.queries: list[str] = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            query = dns.message.from_wire(data)
            reply = dns.message.make_response(query)
            q = query.question[0]
            name, rdtype = q.name.to_text(), dns.rdatatype.to_text(q.rdtype)
            self.queries.append(f"{name} {rdtype}")
            value = RECORDS.get((name, rdtype))
            if value is None:
                reply.set_rcode(dns.rcode.NXDOMAIN)
            else:
                reply.answer.append(dns.rrset.from_text(name, 60, "IN", rdtype, value))
            self.sock.sendto(reply.to_wire(), peer)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def stub() -> Iterator[StubDns]:
    s = StubDns()
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
