"""Envelopes to recipients and DSN parameters on the wire."""

from __future__ import annotations

import asyncio
import io

from smtpd.mta.envelopes import recipient, send_envelopes
from smtpd.mta.session import MtaSession
from smtpd.mta.transfer import Recipient, SessionConfig, Status, Timeouts
from smtpd.queue.envelope import DeliveryType, DsnNotify, DsnRet, Envelope
from tests.mta.sink import Sink, SinkConfig

EVPID = 0x51E7B4660C3A9D21


def env(evpid: int, dest: str, **kw: object) -> Envelope:
    return Envelope(evpid=evpid, type=DeliveryType.MTA, dispatcher="relay", sender="a@src.test",
                    rcpt=dest, dest=dest, ctime=1, ttl=100, **kw)  # type: ignore[arg-type]


def test_recipient_dsn_fields() -> None:
    e = env(EVPID, "b@dest.test", dsn_notify=DsnNotify.SUCCESS | DsnNotify.DELAY,
            dsn_orcpt="b+x=y@dest.test")
    assert recipient(e) == Recipient(EVPID, "b@dest.test", notify="SUCCESS,DELAY",
                                     orcpt="rfc822;b+2Bx+3Dy@dest.test")
    assert recipient(env(EVPID, "c@d")) == Recipient(EVPID, "c@d")


def test_send_envelopes_with_dsn() -> None:
    sink = Sink(SinkConfig(dsn=True, rcpt_replies={"c@dest.test": b"550 5.1.1 no\r\n"}))
    envs = [env(EVPID, "b@dest.test", dsn_ret=DsnRet.HDRS, dsn_envid="id 1",
                dsn_notify=DsnNotify.NEVER),
            env(EVPID + 1, "c@dest.test")]

    async def main() -> list[tuple[int, Status]]:
        port = await sink.start()
        try:
            session = await MtaSession.open("127.0.0.1", port, SessionConfig(
                helo="me.test", timeouts=Timeouts(connect=2, helo=2, mail=2, rcpt=2)))
            result = await send_envelopes(session, envs, io.BytesIO(b"x\n"))
            await session.quit()
            return [(r.evpid, r.status) for r in result.results]
        finally:
            await sink.close()

    assert asyncio.run(main()) == [(EVPID, Status.OK), (EVPID + 1, Status.PERMFAIL)]
    [msg] = sink.messages
    assert msg.mail_line == "MAIL FROM:<a@src.test> RET=HDRS ENVID=id+201"
    assert msg.rcpt_lines == ["RCPT TO:<b@dest.test> NOTIFY=NEVER", "RCPT TO:<c@dest.test>"]
