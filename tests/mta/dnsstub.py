"""A UDP DNS stub on 127.0.0.1 for routing tests: answers from a table of
(name, type) -> values, "SERVFAIL" per name, NXDOMAIN for unknown names,
an empty NOERROR answer for known names of another type.  Names in
``secure`` (or every name with ``secure=True``) get the AD flag, as a
validating resolver sets it for DNSSEC-validated answers (DANE tests)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Collection, Mapping, Sequence

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

Records = Mapping[tuple[str, str], Sequence[str]]


class StubDns:
    def __init__(self, records: Records, servfail: Sequence[str] = (),
                 secure: Collection[str] | bool = ()) -> None:
        self.records = dict(records)
        self.secure = secure
        self.servfail = set(servfail)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.queries: list[str] = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    @property
    def names(self) -> set[str]:
        return {name for name, _ in self.records} | self.servfail

    @property
    def spec(self) -> str:
        return f"127.0.0.1:{self.port}"

    def serve(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            query = dns.message.from_wire(data)
            reply = dns.message.make_response(query)
            q = query.question[0]
            name, rdtype = q.name.to_text().lower(), dns.rdatatype.to_text(q.rdtype)
            self.queries.append(f"{name} {rdtype}")
            values = self.records.get((name, rdtype))
            if self.secure is True or (self.secure is not False and name in self.secure):
                reply.flags |= dns.flags.AD
            if name in self.servfail:
                reply.set_rcode(dns.rcode.SERVFAIL)
            elif values:
                reply.answer.append(dns.rrset.from_text_list(name, 60, "IN", rdtype, values))
            elif name not in self.names:  # records may change during a test
                reply.set_rcode(dns.rcode.NXDOMAIN)
            try:
                self.sock.sendto(reply.to_wire(), peer)
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()
