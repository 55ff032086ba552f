"""The DATA reader: dot-unstuffing, CRLF.CRLF detection and limits, streamed.

Rules (RFC 5321 §4.1.1.4, §4.5.2, §2.3.8; the 2023 "SMTP smuggling" class):
- Only CRLF ends a line.  A line that ends in a bare LF, or that holds a bare
  CR, poisons the message: it is drained and rejected with 550 5.5.2 once the
  real terminator arrives.  Postfix (smtpd_forbid_bare_newline) and
  OpenSMTPD 7.4 reached the same rule after the smuggling research.
- The terminator is the line "." CRLF whose previous line ended in CRLF (or
  that starts the DATA).  So ``\\n.\\n``, ``\\r.\\r``, ``\\r\\n.\\n``,
  ``\\n.\\r\\n`` are message data, never an end: whatever follows them is
  drained as (rejected) data and can never run as commands.
- Dot-unstuffing: a line starting with "." loses that dot (§4.5.2).
- Output lines end in LF (OpenSMTPD stores LF); NUL and 8-bit bytes are kept
  as received (upstream truncates a line at NUL, a C-string artifact we do
  not copy).
- Size: the output bytes are counted; over ``max_size`` nothing more is
  emitted and the message is drained, then refused 552 5.3.4 (aiosmtpd).
- Line length: RFC 5321 §4.5.3.1.6 sets 1000 octets as the minimum to
  accept; OpenSMTPD accepts up to 65535 and long HTML lines are common, so
  the limit (``max_line``, CRLF included) defaults to 65535.  It bounds the
  memory held for a partial line; a longer line is drained and refused.
"""

from __future__ import annotations

from smtpd.smtp import reply as R
from smtpd.smtp.reply import Reply


class DotReader:
    """Consumes DATA bytes from the protocol's buffer, one call per batch."""

    def __init__(self, max_size: int, max_line: int) -> None:
        self._max_size = max_size
        self._max_line = max_line
        self.size = 0
        self.too_big = False
        self.error: Reply | None = None
        self.done = False
        self._prev_crlf = True  # the DATA command line ended the previous line
        self._skipping = False  # inside an over-long line, discarding to LF
        self._skip_last_cr = False
        self._slow_until = 0

    def read(self, buf: bytearray) -> bytes:
        """Consume every complete line of ``buf`` (up to the terminator) and
        return the message bytes they carry (possibly empty).  A partial line
        stays in ``buf`` unless it is already over the line limit."""
        out: list[bytes] = []
        pos = 0
        self._slow_until = 0
        while not self.done:
            if self._skipping:
                pos = self._skip(buf, pos)
                if self._skipping:
                    break
                continue
            if pos >= self._slow_until and self._prev_crlf and buf[pos : pos + 1] != b".":
                end = self._fast(buf, pos, out)
                if end > pos:
                    pos = end
                    continue
            nl = buf.find(b"\n", pos)
            if nl < 0:
                if len(buf) - pos + 1 > self._max_line:
                    self._fail(R.DATA_LINE_TOO_LONG)
                    self._skipping = True
                    continue
                break
            self._line(bytes(buf[pos : nl + 1]), out)
            pos = nl + 1
        del buf[:pos]
        return b"".join(out)

    def _fast(self, buf: bytearray, pos: int, out: list[bytes]) -> int:
        """The common case in one C-speed pass: a run of CRLF lines, none
        starting with a dot.  Return the end of the run, or ``pos`` if the
        run needs the line-by-line path."""
        last = buf.rfind(b"\n", pos)
        if last < 0:
            return pos
        dot = buf.find(b"\r\n.", pos, last + 1)
        end = dot + 2 if dot >= 0 else last + 1
        block = bytes(buf[pos:end])
        crlf = block.count(b"\r\n")
        if not (crlf == block.count(b"\n") == block.count(b"\r")):
            self._slow_until = end  # a bare CR/LF inside: go line by line
            return pos
        if len(block) > self._max_line and max(map(len, block.split(b"\r\n"))) + 2 > (
            self._max_line
        ):
            self._slow_until = end
            return pos
        self._emit(block.replace(b"\r\n", b"\n"), out)
        return end

    def _line(self, line: bytes, out: list[bytes]) -> None:
        ends_crlf = line.endswith(b"\r\n")
        body = line[:-2] if ends_crlf else line[:-1]
        if ends_crlf and self._prev_crlf and body == b".":
            self.done = True
            return
        self._prev_crlf = ends_crlf
        # Length first: a long line seen in pieces is skipped unread, so its
        # bare CRs are unknown; the error must not depend on the chunking.
        if len(line) > self._max_line:
            self._fail(R.DATA_LINE_TOO_LONG)
        if not ends_crlf or b"\r" in body:
            self._fail(R.BARE_LINE_ENDING)
        if body.startswith(b"."):
            body = body[1:]
        self._emit(body + b"\n", out)

    def _skip(self, buf: bytearray, pos: int) -> int:
        nl = buf.find(b"\n", pos)
        if nl < 0:
            if len(buf) > pos:
                self._skip_last_cr = buf[-1] == 0x0D
            return len(buf)
        self._prev_crlf = buf[nl - 1] == 0x0D if nl > pos else self._skip_last_cr
        self._skipping = False
        self._skip_last_cr = False
        return nl + 1

    def _emit(self, data: bytes, out: list[bytes]) -> None:
        self.size += len(data)
        if self.size > self._max_size:
            self.too_big = True
        if not self.too_big and self.error is None:
            out.append(data)

    def _fail(self, reply: Reply) -> None:
        if self.error is None:
            self.error = reply

    def final_error(self) -> Reply | None:
        """The reply that refuses the message, if any.  A syntax error wins
        over the size: bytes of a skipped over-long line are not counted, so
        ``size`` and ``too_big`` are exact only when there is no error."""
        if self.error is not None:
            return self.error
        return R.MESSAGE_TOO_BIG if self.too_big else None
