"""Add the Date and Message-ID headers a message lacks, as OpenSMTPD does
(RFC 5322 §3.6: both SHOULD be present; RFC 6409 §8.2/8.3 lets the MSA add
them).  Sans-IO: fed the DATA chunks (LF line endings, whole lines), it
returns the bytes to store; added headers go at the end of the header block.
"""

from __future__ import annotations

import secrets
import time


def rfc5322_now() -> str:
    return time.strftime("%a, %d %b %Y %H:%M:%S %z (%Z)", time.localtime())


class HeaderFixer:
    def __init__(self, hostname: str) -> None:
        self.hostname = hostname
        self.in_headers = True
        self.seen_date = False
        self.seen_message_id = False

    def _missing(self) -> bytes:
        out = b""
        if not self.seen_date:
            out += f"Date: {rfc5322_now()}\n".encode()
        if not self.seen_message_id:
            out += f"Message-ID: <{secrets.token_hex(8)}@{self.hostname}>\n".encode()
        return out

    def feed(self, chunk: bytes) -> bytes:
        if not self.in_headers:
            return chunk
        pos = 0
        while pos < len(chunk):
            end = chunk.find(b"\n", pos)
            end = len(chunk) if end < 0 else end + 1
            line = chunk[pos:end]
            if line in (b"\n", b""):
                self.in_headers = False
                return chunk[:pos] + self._missing() + chunk[pos:]
            name = line.split(b":", 1)[0].strip().lower()
            if b":" in line and not line[:1].isspace():
                if name == b"date":
                    self.seen_date = True
                elif name == b"message-id":
                    self.seen_message_id = True
            elif not line[:1].isspace():
                # Not a header line: the header block ended without a blank line.
                self.in_headers = False
                return chunk[:pos] + self._missing() + chunk[pos:]
            pos = end
        return chunk

    def finish(self) -> bytes:
        """Bytes to append at the end of DATA (a message of headers only)."""
        if self.in_headers:
            self.in_headers = False
            return self._missing()
        return b""
