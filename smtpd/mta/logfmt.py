"""Upstream's mta log lines (mta_session.c, mta.c), so that log parsers
written for OpenSMTPD keep working."""

from __future__ import annotations

from smtpd.mta.transfer import Status

RESULTS = {Status.OK: "Ok", Status.TEMPFAIL: "TempFail", Status.PERMFAIL: "PermFail"}


def duration_text(seconds: int) -> str:
    """util.c duration_to_text: ``0s``, ``45s``, ``1h2m``, ``3d4h5m6s``."""
    if seconds == 0:
        return "0s"
    sign = "-" if seconds < 0 else ""
    t = abs(seconds)
    s, t = t % 60, t // 60
    m, t = t % 60, t // 60
    h, d = t % 24, t // 24
    parts = [f"{v}{u}" for v, u in ((d, "d"), (h, "h"), (m, "m"), (s, "s")) if v]
    return sign + "".join(parts)


def address_text(address: str, port: int | None = None) -> str:
    """``192.0.2.1:25``, ``[2001:db8::1]:25`` (IPv6 bracketed)."""
    host = f"[{address}]" if ":" in address else address
    return host if port is None else f"{host}:{port}"


def connecting_line(session: int, scheme: str, address: str, port: int, host: str) -> str:
    return (f"{session:016x} mta connecting address={scheme}{address_text(address)}:{port} "
            f"host={host}")


def connected_line(session: int) -> str:
    return f"{session:016x} mta connected"


def error_line(session: int, text: str) -> str:
    return f"{session:016x} mta error reason={text}"


def delivery_line(session: int, evpid: int, sender: str, dest: str, rcpt: str | None,
                  source: str | None, relay: str, delay: int, status: Status,
                  text: str) -> str:
    """mta.c mta_log: one line per envelope and attempt."""
    return (f'{session:016x} mta delivery evpid={evpid:016x} from=<{sender}> to=<{dest}> '
            f'rcpt=<{rcpt or "-"}> source="{source or "-"}" relay="{relay}" '
            f'delay={duration_text(delay)} result="{RESULTS[status]}" stat="{text}"')
