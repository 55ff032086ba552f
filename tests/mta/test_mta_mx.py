"""MX routing against a stub DNS server on loopback (never a real resolver)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator

import pytest

from smtpd.lookup.dns import make_resolver
from smtpd.lookup.mx import (
    LOOP,
    NULL_MX,
    MxHost,
    NextHop,
    RouteError,
    is_loop,
    resolve_addresses,
    resolve_mx,
    resolve_route,
)
from smtpd.mta.transfer import Status
from tests.mta.dnsstub import StubDns

RECORDS = {
    ("multi.test.", "MX"): ["20 backup.multi.test.", "10 a.multi.test.", "10 b.multi.test.",
                            "10 c.multi.test.", "30 last.multi.test."],
    ("a.multi.test.", "A"): ["192.0.2.1"],
    ("b.multi.test.", "A"): ["192.0.2.2"],
    ("b.multi.test.", "AAAA"): ["2001:db8::2"],
    ("c.multi.test.", "AAAA"): ["2001:db8::3"],
    ("backup.multi.test.", "A"): ["192.0.2.20"],
    ("last.multi.test.", "A"): ["192.0.2.30"],
    ("implicit.test.", "A"): ["192.0.2.50"],
    ("null.test.", "MX"): ["0 ."],
    ("noaddr.test.", "TXT"): ['"v=spf1 -all"'],
    ("bad.test.", "MX"): ["10 nowhere.bad.test."],
    ("self.test.", "MX"): ["10 me.self.test.", "20 other.self.test."],
    ("me.self.test.", "A"): ["127.0.0.1"],
    ("other.self.test.", "A"): ["192.0.2.99"],
    ("second.test.", "MX"): ["10 ok.second.test.", "20 me.self.test."],
    ("ok.second.test.", "A"): ["192.0.2.70"],
}


@pytest.fixture
def stub() -> Iterator[StubDns]:
    s = StubDns(RECORDS, servfail=["broken.test.", "flaky.multi.test."])
    yield s
    s.close()


def mx(stub: StubDns, domain: str, seed: int = 0) -> list[MxHost]:
    return asyncio.run(resolve_mx(make_resolver(stub.spec), domain, rng=random.Random(seed)))


def error(coro_fn: object) -> RouteError:
    with pytest.raises(RouteError) as info:
        asyncio.run(coro_fn)  # type: ignore[arg-type]
    return info.value


def test_preference_order_and_shuffle(stub: StubDns) -> None:
    seen: set[tuple[str, ...]] = set()
    for seed in range(30):
        hosts = mx(stub, "multi.test", seed)
        assert [h.preference for h in hosts] == [10, 10, 10, 20, 30]
        assert sorted(h.host for h in hosts[:3]) == ["a.multi.test", "b.multi.test",
                                                     "c.multi.test"]
        assert [h.host for h in hosts[3:]] == ["backup.multi.test", "last.multi.test"]
        seen.add(tuple(h.host for h in hosts[:3]))
    assert len(seen) > 1  # equal preferences are not always in the same order
    assert mx(stub, "multi.test", 7) == mx(stub, "multi.test", 7)


def test_implicit_mx(stub: StubDns) -> None:
    assert mx(stub, "implicit.test") == [MxHost(0, "implicit.test")]
    hops = asyncio.run(resolve_route(make_resolver(stub.spec), "Implicit.Test."))
    assert hops == [NextHop(0, "implicit.test", ("192.0.2.50",))]


def test_null_mx(stub: StubDns) -> None:
    e = error(resolve_mx(make_resolver(stub.spec), "null.test"))
    assert (e.status, e.text) == (Status.PERMFAIL, NULL_MX)
    assert NULL_MX == "556 5.1.10 Domain does not accept mail"


def test_nxdomain(stub: StubDns) -> None:
    e = error(resolve_mx(make_resolver(stub.spec), "missing.test"))
    assert e.status is Status.PERMFAIL and e.text.startswith("550 5.1.2 ")


def test_servfail_is_temporary(stub: StubDns) -> None:
    e = error(resolve_mx(make_resolver(stub.spec), "broken.test"))
    assert e.status is Status.TEMPFAIL and e.text.startswith("451 4.4.3 ")


def test_timeout_is_temporary() -> None:
    silent = StubDns({})
    silent.close()  # nothing answers on that port any more
    resolver = make_resolver(silent.spec)
    resolver.lifetime = 0.3
    e = error(resolve_mx(resolver, "multi.test"))
    assert e.status is Status.TEMPFAIL


def test_addresses(stub: StubDns) -> None:
    r = make_resolver(stub.spec)
    assert asyncio.run(resolve_addresses(r, "b.multi.test")) == ["192.0.2.2", "2001:db8::2"]
    assert asyncio.run(resolve_addresses(r, "nowhere.test")) == []
    assert asyncio.run(resolve_addresses(r, "[IPv6:2001:db8::9]")) == ["2001:db8::9"]
    assert error(resolve_addresses(r, "broken.test")).status is Status.TEMPFAIL


def test_route_skips_hosts_without_address(stub: StubDns) -> None:
    hops = asyncio.run(resolve_route(make_resolver(stub.spec), "multi.test",
                                     rng=random.Random(1)))
    assert [h.preference for h in hops] == [10, 10, 10, 20, 30]
    assert dict((h.host, h.addresses) for h in hops)["c.multi.test"] == ("2001:db8::3",)


def test_route_without_any_address(stub: StubDns) -> None:
    r = make_resolver(stub.spec)
    e = error(resolve_route(r, "bad.test"))
    assert e.status is Status.TEMPFAIL and e.text.startswith("451 4.4.4 ")
    e2 = error(resolve_route(r, "noaddr.test"))  # no MX, no A: implicit MX has no address
    assert e2.status is Status.PERMFAIL and e2.text.startswith("550 5.1.2 ")


def test_loop_detection(stub: StubDns) -> None:
    r = make_resolver(stub.spec)
    listeners = [("127.0.0.1", 25)]
    e = error(resolve_route(r, "self.test", listeners=listeners))
    assert (e.status, e.text) == (Status.PERMFAIL, LOOP)
    # we are a less preferred MX: keep the better ones only (RFC 5321 §5.1)
    hops = asyncio.run(resolve_route(r, "second.test", listeners=listeners))
    assert [h.host for h in hops] == ["ok.second.test"]
    # another port is not us
    hops = asyncio.run(resolve_route(r, "self.test", listeners=[("127.0.0.1", 2525)]))
    assert [h.host for h in hops] == ["me.self.test", "other.self.test"]


def test_backup_mx(stub: StubDns) -> None:
    r = make_resolver(stub.spec)
    hops = asyncio.run(resolve_route(r, "multi.test", backup_mx="backup.multi.test"))
    assert {h.host for h in hops} == {"a.multi.test", "b.multi.test", "c.multi.test"}
    e = error(resolve_route(r, "self.test", backup_mx="me.self.test"))
    assert e.text == LOOP


def test_is_loop() -> None:
    assert is_loop("127.0.0.1", 25, [("127.0.0.1", 25)])
    assert is_loop("127.0.0.1", 25, [("0.0.0.0", 25)])  # wildcard: any local address
    assert not is_loop("192.0.2.1", 25, [("0.0.0.0", 25)])
    assert not is_loop("127.0.0.1", 25, [("127.0.0.1", 587)])
    assert not is_loop("not-an-ip", 25, [("127.0.0.1", 25)])
