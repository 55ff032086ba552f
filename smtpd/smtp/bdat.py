"""The BDAT reader (RFC 3030 CHUNKING): the octets of every chunk of one
transaction, counted exactly, never parsed as commands.

Rules, and how they match the DATA path (dotstream.py) so that a message
reaches the spool in the same form whichever command carried it:
- ``BDAT n`` is followed by exactly n octets of message data (RFC 3030 §2):
  no dot-stuffing, no terminator; whatever follows them is a command.
- 7BIT / 8BITMIME bodies (the default): the chunks together are lines that
  end in CRLF (RFC 5321 §2.3.8, RFC 3030 §3 "canonical" data).  They are
  stored as the spool stores DATA: every CRLF becomes LF (COMPAT.md §2), so
  relaying and local delivery give back the same bytes.  A bare CR or LF
  poisons the message (550 5.5.2, as DATA: Postfix's
  smtpd_forbid_bare_newline covers BDAT too), and a line over ``max_line``
  octets is refused (500) as in DATA.  A line may span chunks, even its CRLF.
  A message whose last line lacks CRLF gets one (the spool holds lines).
- BINARYMIME bodies (RFC 3030 §3, ``binary=True``): the octets are passed
  through unaltered; no line rule applies.
- Size: the output octets are counted across chunks; over ``max_size``
  nothing more is emitted and the transaction fails with 552 5.3.4 at the
  end of that chunk, after its octets were read (RFC 3030 §2: "accept and
  discard the associated message data before sending" the error).
- Output chunks end on line boundaries in text mode (the session's header
  fixer reads whole lines); the partial line held is at most ``max_line``.
"""

from __future__ import annotations

from smtpd.smtp import reply as R
from smtpd.smtp.reply import Reply


class ChunkReader:
    """Consumes BDAT chunk octets from the protocol's buffer."""

    def __init__(self, max_size: int, max_line: int, binary: bool = False) -> None:
        self._max_size = max_size
        self._max_line = max_line
        self.binary = binary
        self.size = 0  # output octets so far (LF line ends in text mode)
        self.octets = 0  # octets received in all chunks so far
        self.chunks = 0  # chunks started
        self.remaining = 0  # octets of the current chunk not read yet
        self.chunk_size = 0
        self.too_big = False
        self.error: Reply | None = None
        self._partial = bytearray()  # text mode: the unfinished line

    def start(self, size: int) -> None:
        """A ``BDAT size`` command was accepted: its octets come next."""
        self.chunks += 1
        self.remaining = self.chunk_size = size

    def read(self, buf: bytearray) -> bytes:
        """Consume up to ``remaining`` octets of ``buf``; return the message
        bytes they complete (possibly empty)."""
        take = min(self.remaining, len(buf))
        if take == 0:
            return b""
        data = bytes(buf[:take])
        del buf[:take]
        self.remaining -= take
        self.octets += take
        if self.error is not None or self.too_big:
            return b""  # drained: the transaction is refused anyway
        if self.binary:
            return self._emit(data)
        self._partial += data
        last = self._partial.rfind(b"\n")
        if last < 0:
            if len(self._partial) > self._max_line:
                self._fail(R.DATA_LINE_TOO_LONG)
            return b""
        block = bytes(self._partial[: last + 1])
        del self._partial[: last + 1]
        if len(self._partial) > self._max_line:
            self._fail(R.DATA_LINE_TOO_LONG)
        return self._lines(block)

    def finish(self) -> bytes:
        """After the LAST chunk: the bytes of an unterminated last line (with
        LF added), once; then b""."""
        tail = bytes(self._partial)
        self._partial.clear()
        if not tail or self.error is not None or self.too_big:
            return b""
        return self._lines(tail + b"\r\n")

    def final_error(self) -> Reply | None:
        """The reply that refuses the message, if any (a syntax error wins
        over the size, as in DotReader)."""
        if self.error is not None:
            return self.error
        return R.MESSAGE_TOO_BIG if self.too_big else None

    # -- internals

    def _lines(self, block: bytes) -> bytes:
        """Whole CRLF lines to LF lines, with the DATA path's checks."""
        crlf = block.count(b"\r\n")
        if not crlf == block.count(b"\n") == block.count(b"\r"):
            self._fail(R.BARE_LINE_ENDING)
            return b""
        if len(block) > self._max_line and max(map(len, block.split(b"\r\n"))) + 2 > (
            self._max_line
        ):
            self._fail(R.DATA_LINE_TOO_LONG)
            return b""
        return self._emit(block.replace(b"\r\n", b"\n"))

    def _emit(self, data: bytes) -> bytes:
        self.size += len(data)
        if self.size > self._max_size:
            self.too_big = True
            self._partial.clear()
            return b""
        return data

    def _fail(self, reply: Reply) -> None:
        if self.error is None:
            self.error = reply
        self._partial.clear()
