"""Relay actions to routes: smarthost URLs, TLS policies, credentials."""

from __future__ import annotations

import asyncio
import io
import random
import ssl
from pathlib import Path

import pytest
import trustme

from smtpd.config.model import Ca, RelayOptions, RelayProto, RelayTls, TableDef
from smtpd.config.parse_action import parse_relay_url
from smtpd.lookup.mx import RouteError
from smtpd.mta.routing import Route, route_for, tls_policy
from smtpd.mta.session import MtaSession
from smtpd.mta.transfer import Recipient, Status, Timeouts, TlsPolicy
from smtpd.table.backend import Table, open_table
from tests.mta.sink import Sink, SinkConfig


def static(name: str, entries: dict[str, str | None]) -> Table:
    return open_table(TableDef(name=name, backend="static", config=None, source="test",
                               entries=tuple(entries.items())))


TABLES = {
    "secrets": static("secrets", {"label1": "alice:s3cret"}),
    "domains": static("domains", {"special.test": "smtps://other.test:4650"}),
    "sources": static("sources", {"192.0.2.7": None}),
    "helos": static("helos", {"192.0.2.7": "out7.example.test"}),
}


def url(text: str) -> RelayOptions:
    parsed = parse_relay_url(text)
    assert parsed is not None
    return RelayOptions(host=parsed)


def test_mx_route_defaults() -> None:
    r = route_for(RelayOptions(), "dest.test", hostname="me.test", tables={})
    assert r == Route(relay=None, helo="me.test", tls=TlsPolicy.OPPORTUNISTIC, verify=False)


@pytest.mark.parametrize("proto,tls,expected", [
    (None, RelayTls.OPPORTUNISTIC, (TlsPolicy.OPPORTUNISTIC, False)),
    (RelayProto.SMTP, RelayTls.REQUIRE, (TlsPolicy.STARTTLS, True)),
    (RelayProto.SMTP, RelayTls.REQUIRE_NO_VERIFY, (TlsPolicy.STARTTLS, False)),
    (RelayProto.SMTP_TLS, RelayTls.OPPORTUNISTIC, (TlsPolicy.STARTTLS, True)),
    (RelayProto.SMTPS, RelayTls.REQUIRE_NO_VERIFY, (TlsPolicy.SMTPS, False)),
    (RelayProto.SMTP_NOTLS, RelayTls.REQUIRE, (TlsPolicy.NONE, False)),
    (RelayProto.LMTP, RelayTls.OPPORTUNISTIC, (TlsPolicy.OPPORTUNISTIC, False)),
])
def test_tls_policy(proto: RelayProto | None, tls: RelayTls,
                    expected: tuple[TlsPolicy, bool]) -> None:
    assert tls_policy(proto, tls) == expected


def test_smarthost_with_label_credentials() -> None:
    opts = RelayOptions(host=url("smtp+tls://label1@smart.test:587").host,
                        auth_table="secrets", helo="helo.test")
    r = route_for(opts, "dest.test", hostname="me.test", tables=TABLES)
    assert r.relay is not None and (r.relay.host, r.relay.port) == ("smart.test", 587)
    assert r.credentials == ("alice", "s3cret") and "s3cret" not in repr(r)
    assert (r.tls, r.verify, r.helo) == (TlsPolicy.STARTTLS, True, "helo.test")
    cfg = r.session_config(server_name="smart.test")
    assert cfg.credentials == ("alice", "s3cret") and cfg.tls is TlsPolicy.STARTTLS


def test_missing_credentials_are_temporary() -> None:
    for opts in (RelayOptions(host=url("unknown@smart.test").host, auth_table="secrets"),
                 RelayOptions(host=url("label1@smart.test").host),
                 RelayOptions(host=url("label1@smart.test").host, auth_table="nope")):
        with pytest.raises(RouteError) as info:
            route_for(opts, "dest.test", hostname="me.test", tables=TABLES)
        assert info.value.status is Status.TEMPFAIL


def test_domain_table_then_default() -> None:
    opts = RelayOptions(domain_table="domains")
    r = route_for(opts, "Special.Test", hostname="me.test", tables=TABLES)
    assert r.relay is not None and r.relay.port == 4650 and r.tls is TlsPolicy.SMTPS
    assert route_for(opts, "other.test", hostname="me.test", tables=TABLES).relay is None


def test_lmtp_source_helo_backup_ca() -> None:
    opts = RelayOptions(host=url("lmtp://127.0.0.1:24").host, src_table="sources",
                        helo_src_table="helos", backup=True, ca="myca")
    r = route_for(opts, "dest.test", hostname="me.test", tables=TABLES,
                  cas={"myca": Ca(name="myca", source="t", cert="/etc/ca.pem")},
                  rng=random.Random(0))
    assert r.lmtp and r.source == "192.0.2.7" and r.helo == "out7.example.test"
    assert r.backup_mx == "me.test" and r.ca_file == "/etc/ca.pem"


def test_route_drives_a_session(tmp_path: Path) -> None:
    """A smarthost with STARTTLS, verified certificate and AUTH from the table."""
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("smart.test").configure_cert(ctx)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    sink = Sink(SinkConfig(tls=ctx, auth=("alice", "s3cret")))

    async def main() -> Status:
        port = await sink.start()
        try:
            opts = RelayOptions(host=url(f"smtp+tls://label1@smart.test:{port}").host,
                                auth_table="secrets", ca="c")
            route = route_for(opts, "dest.test", hostname="me.test", tables=TABLES,
                              cas={"c": Ca(name="c", source="t", cert=str(tmp_path / "ca.pem"))})
            assert route.relay is not None
            session = await MtaSession.open(route.relay.host, route.relay.port,
                                            route.session_config(Timeouts(connect=2, helo=2)),
                                            address="127.0.0.1")
            result = await session.send("a@me.test", [Recipient(5, "b@dest.test")],
                                        io.BytesIO(b"Subject: hi\n\nhello\n"))
            await session.quit()
            return result.results[0].status
        finally:
            await sink.close()

    assert asyncio.run(main()) is Status.OK
    assert sink.auth_users == ["alice"] and sink.tls_sessions == 1
    assert sink.messages[0].content == b"Subject: hi\n\nhello\n"
