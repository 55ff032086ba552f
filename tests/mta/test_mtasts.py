"""MTA-STS (RFC 8461): parsing, the HTTPS fetch against a local policy
server with trustme certificates, and the cache."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from smtpd.lookup.dns import make_resolver
from smtpd.mta.mtasts import (
    MAX_AGE_LIMIT,
    Mode,
    MtaSts,
    Policy,
    PolicyError,
    fetch_policy,
    mx_matches,
    parse_policy,
    parse_txt,
)
from tests.mta.dnsstub import StubDns
from tests.mta.policyserver import PolicyServer, ca, ca_file, server

__all__ = ["ca", "ca_file", "server"]  # fixtures shared with the other MTA-STS tests

POLICY = "version: STSv1\r\nmode: enforce\r\nmx: mx1.dest.test\r\nmx: *.mx.dest.test\r\nmax_age: 86400\r\n"


# -- parsing -------------------------------------------------------------------


def test_txt_record() -> None:
    assert parse_txt(["v=STSv1; id=20240101T000000;"]) == "20240101T000000"
    assert parse_txt(["v=STSv1;id=abc"]) == "abc"
    assert parse_txt(["some other txt", "v=STSv1; id=a1; ext=x"]) == "a1"
    # §3.1: not exactly one STSv1 record, or a malformed one: no policy
    assert parse_txt(["v=STSv1; id=a", "v=STSv1; id=b"]) is None
    assert parse_txt([]) is None
    assert parse_txt(["v=STSv1;"]) is None
    assert parse_txt(["v=STSv1; id=has-dash"]) is None
    assert parse_txt(["v=STSv1; id=" + "a" * 33]) is None
    assert parse_txt(["v=STSv10; id=a"]) is None


def test_policy_parsing() -> None:
    p = parse_policy(POLICY)
    assert p == Policy(Mode.ENFORCE, 86400, ("mx1.dest.test", "*.mx.dest.test"))
    # LF endings, unknown keys ignored, whitespace around values
    p = parse_policy("version: STSv1\nmode:testing\nmx: MX.Dest.Test.\nfoo: bar\nmax_age: 99\n")
    assert p == Policy(Mode.TESTING, 99, ("mx.dest.test",))
    assert parse_policy("version: STSv1\nmode: none\nmax_age: 5\n").mx == ()
    assert parse_policy(POLICY.replace("86400", "99999999")).max_age == MAX_AGE_LIMIT
    for bad in (POLICY.replace("STSv1", "STSv2"), POLICY.replace("enforce", "strict"),
                POLICY.replace("86400", "-1"), POLICY.replace("86400", "1e3"),
                "version: STSv1\nmode: enforce\nmax_age: 5\n",  # no mx
                POLICY + "garbage line\n", ""):
        with pytest.raises(PolicyError):
            parse_policy(bad)


def test_mx_patterns() -> None:
    assert mx_matches("mx1.dest.test", "MX1.dest.test.")
    assert mx_matches("*.mx.dest.test", "a.mx.dest.test")
    assert not mx_matches("*.mx.dest.test", "mx.dest.test")
    assert not mx_matches("*.mx.dest.test", "a.b.mx.dest.test")  # one label only (§4.1)
    assert not mx_matches("mx1.dest.test", "mx2.dest.test")
    p = parse_policy(POLICY)
    assert p.matches("x.mx.dest.test") and not p.matches("evil.test")


# -- fetching --------------------------------------------------------------------


@pytest.fixture
def dns() -> Iterator[StubDns]:
    stub = StubDns({("_mta-sts.dest.test.", "TXT"): ['"v=STSv1; id=one;"'],
                    ("mta-sts.dest.test.", "A"): ["127.0.0.1"],
                    ("mta-sts.other.test.", "A"): ["127.0.0.1"]})
    yield stub
    stub.close()


def fetch(dns: StubDns, server: PolicyServer, ca_file: str, domain: str = "dest.test",
          **kw: object) -> Policy:
    async def main() -> Policy:
        return await fetch_policy(make_resolver(dns.spec), domain, port=server.port,
                                  ca_file=ca_file, timeout=5, **kw)  # type: ignore[arg-type]
    return asyncio.run(main())


def test_fetch(dns: StubDns, server: PolicyServer, ca_file: str) -> None:
    server.serve(POLICY)
    assert fetch(dns, server, ca_file).mode is Mode.ENFORCE
    assert server.requests == ["mta-sts.dest.test /.well-known/mta-sts.txt"]


@pytest.mark.parametrize(("kw", "error"), [
    ({"status": 404}, "HTTP status 404"),
    ({"status": 301, "location": "https://elsewhere.test/"}, "HTTP status 301"),
    ({"content_type": "text/html"}, "text/html"),
])
def test_fetch_refusals(dns: StubDns, server: PolicyServer, ca_file: str,
                        kw: dict[str, object], error: str) -> None:
    server.serve(POLICY, **kw)
    with pytest.raises(PolicyError, match=error):
        fetch(dns, server, ca_file)


def test_fetch_size_limit(dns: StubDns, server: PolicyServer, ca_file: str) -> None:
    server.serve(POLICY + "x: " + "y" * 70000 + "\n")
    with pytest.raises(PolicyError, match="too large"):
        fetch(dns, server, ca_file)


def test_fetch_verifies_the_certificate(dns: StubDns, server: PolicyServer, ca_file: str,
                                        tmp_path: Path) -> None:
    server.serve(POLICY)
    # the server's certificate names mta-sts.dest.test, not mta-sts.other.test
    with pytest.raises(PolicyError, match=r"CERTIFICATE_VERIFY_FAILED|mismatch"):
        fetch(dns, server, ca_file, domain="other.test")
    # and a CA we do not trust
    other = tmp_path / "other.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    with pytest.raises(PolicyError, match="CERTIFICATE_VERIFY_FAILED"):
        fetch(dns, server, str(other))


def test_fetch_no_address(server: PolicyServer, ca_file: str) -> None:
    stub = StubDns({})
    try:
        with pytest.raises(PolicyError, match=r"mta-sts\.dest\.test"):
            fetch(stub, server, ca_file)
    finally:
        stub.close()


# -- cache ------------------------------------------------------------------------


def test_cache_follows_the_txt_id(dns: StubDns, server: PolicyServer, ca_file: str) -> None:
    now = [1000.0]
    lines: list[str] = []
    server.serve(POLICY)

    async def main() -> None:
        sts = MtaSts(make_resolver(dns.spec), port=server.port, ca_file=ca_file, timeout=5,
                     clock=lambda: now[0], log=lines.append)
        p = await sts.policy("Dest.Test")
        assert p is not None and p.mode is Mode.ENFORCE and sts.fetches == 1
        assert await sts.policy("dest.test") == p and sts.fetches == 1  # same id: cached
        # a new id: fetched again (§5.1)
        dns.records[("_mta-sts.dest.test.", "TXT")] = ['"v=STSv1; id=two;"']
        server.serve(POLICY.replace("enforce", "testing"))
        p2 = await sts.policy("dest.test")
        assert p2 is not None and p2.mode is Mode.TESTING and sts.fetches == 2
        # the TXT record disappears: the cached policy still holds until max_age
        del dns.records[("_mta-sts.dest.test.", "TXT")]
        assert await sts.policy("dest.test") == p2
        now[0] += 86401
        assert await sts.policy("dest.test") is None
        # a failing fetch keeps the old policy and is not retried at once
        dns.records[("_mta-sts.dest.test.", "TXT")] = ['"v=STSv1; id=three;"']
        server.serve("not a policy")
        assert await sts.policy("dest.test") is None
        assert await sts.policy("dest.test") is None
        assert sts.fetches == 3
        now[0] += 301
        server.serve(POLICY)
        assert await sts.policy("dest.test") == p and sts.fetches == 4

    asyncio.run(main())
    assert any("mode=enforce" in line for line in lines)
    assert any("unavailable" in line for line in lines)


def test_concurrent_lookups_share_one_fetch(dns: StubDns, server: PolicyServer,
                                            ca_file: str) -> None:
    server.serve(POLICY)

    async def main() -> None:
        sts = MtaSts(make_resolver(dns.spec), port=server.port, ca_file=ca_file, timeout=5)
        policies = await asyncio.gather(*(sts.policy("dest.test") for _ in range(5)))
        assert all(p is not None and p.mode is Mode.ENFORCE for p in policies)
        assert sts.fetches == 1 and len(server.requests) == 1
        # a cancelled leader does not strand the others
        leader = asyncio.ensure_future(sts.policy("other.test"))
        await asyncio.sleep(0)
        follower = asyncio.ensure_future(sts.policy("other.test"))
        await asyncio.sleep(0)
        leader.cancel()
        assert await follower is None  # other.test publishes no TXT record

    asyncio.run(main())
