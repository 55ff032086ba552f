"""A blocking client for the control socket: hello, then one command at a time."""

from __future__ import annotations

import array
import os
import socket
import sys
from collections.abc import Iterator

from imsg import Frame, FrameReader
from imsg.frame import encode as encode_frame
from smtpd.msg import (
    PROTOCOL_VERSION,
    ClientCommand,
    ClientDone,
    ClientHello,
    ClientLines,
    Msg,
    MsgError,
    Proc,
    check_route,
    decode,
    encode,
)


class ControlError(Exception):
    pass


class ControlClient:
    def __init__(self, path: str, timeout: float | None = 30.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except OSError as exc:
            self.sock.close()
            raise ControlError(f"smtpctl: connect: {path}: {exc.strerror}") from None
        self.reader = FrameReader()
        self.pending: list[Frame] = []
        self._send(Msg.CLIENT_HELLO, encode(ClientHello(PROTOCOL_VERSION)))
        reply = self._next()
        if reply[0] is not Msg.CTL_CLIENT_HELLO:
            raise ControlError("smtpctl: unexpected answer to hello")
        server = reply[1]
        assert isinstance(server, ClientHello)
        if server.version != PROTOCOL_VERSION:
            raise ControlError(
                f"smtpctl: version mismatch with the running smtpd "
                f"(client {PROTOCOL_VERSION:#x}, server {server.version:#x})")

    def _send(self, msg: Msg, data: bytes) -> None:
        self.sock.sendall(encode_frame(Frame(int(msg), data)))

    def _next(self) -> tuple[Msg, object]:
        msg, payload, fd = self._next_frame()
        if fd is not None:
            os.close(fd)
            raise ControlError("smtpctl: unexpected file descriptor from the daemon")
        return msg, payload

    def _next_frame(self) -> tuple[Msg, object, int | None]:
        while not self.pending:
            data, ancdata, flags, _ = self.sock.recvmsg(65536, socket.CMSG_SPACE(4 * 4))
            if flags & socket.MSG_CTRUNC:
                raise ControlError("smtpctl: truncated control message from the daemon")
            fds: list[int] = []
            for level, kind, cdata in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    usable = len(cdata) - len(cdata) % 4
                    fds += list(array.array("i", cdata[:usable]))
            if not data:
                raise ControlError("smtpctl: the daemon closed the connection")
            self.pending += self.reader.feed(data, fds)
        frame = self.pending.pop(0)
        try:
            msg = check_route(frame.type, Proc.CONTROL, Proc.CLIENT)
            return msg, decode(msg, frame.data), frame.fd
        except MsgError as exc:
            raise ControlError(f"smtpctl: bad answer from the daemon: {exc}") from None

    def enqueue(self) -> socket.socket:
        """A connected socket to an SMTP session for local submission."""
        self._send(Msg.CLIENT_COMMAND, encode(ClientCommand(["enqueue"])))
        sock: socket.socket | None = None
        while True:
            msg, payload, fd = self._next_frame()
            if msg is Msg.CTL_CLIENT_FD and fd is not None and sock is None:
                sock = socket.socket(fileno=fd)
            elif fd is not None:
                os.close(fd)
            if isinstance(payload, ClientLines) and payload.stderr:
                raise ControlError("\n".join(payload.lines))
            if isinstance(payload, ClientDone):
                break
        if sock is None:
            raise ControlError("smtpctl: the daemon did not open a session")
        return sock

    def command(self, words: list[str]) -> Iterator[tuple[bool, str] | int]:
        """Yields (is_stderr, line) for each output line, then the exit status."""
        self._send(Msg.CLIENT_COMMAND, encode(ClientCommand(list(words))))
        while True:
            msg, payload = self._next()
            if isinstance(payload, ClientLines):
                for line in payload.lines:
                    yield (payload.stderr, line)
            elif isinstance(payload, ClientDone):
                yield payload.status
                return
            else:
                raise ControlError(f"smtpctl: unexpected {msg.name}")

    def run(self, words: list[str]) -> tuple[int, list[str], list[str]]:
        out: list[str] = []
        err: list[str] = []
        status = 1
        for item in self.command(words):
            if isinstance(item, int):
                status = item
            else:
                (err if item[0] else out).append(item[1])
        return status, out, err

    def close(self) -> None:
        self.sock.close()


def run_and_print(client: ControlClient, words: list[str]) -> int:
    """Run one command, print its output as it arrives (a `show queue` of a
    million envelopes streams), return the status.  Closes the client."""
    status = 1
    try:
        for item in client.command(words):
            if isinstance(item, int):
                status = item
            else:
                print(item[1], file=sys.stderr if item[0] else sys.stdout)
    except ControlError as exc:
        print(exc, file=sys.stderr)
        return 1
    finally:
        client.close()
    return status
