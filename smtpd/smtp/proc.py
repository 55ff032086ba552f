"""The smtp process: inbound SMTP sessions on the listeners the parent binds."""

from __future__ import annotations

import contextlib
import socket

from imsg import Frame
from smtpd.msg import ListenerSend, Msg, Proc
from smtpd.proc import Child


class SmtpProcess(Child):
    name = Proc.SMTP
    needs = frozenset({Proc.PARENT, Proc.QUEUE, Proc.LOOKUP})

    def build(self) -> None:
        self.listeners: list[socket.socket] = []
        self.handle(Proc.PARENT, Msg.PARENT_LISTENER_SEND, self._on_listener)

    def _on_listener(self, payload: ListenerSend, frame: Frame) -> None:
        assert frame.fd is not None
        sock = socket.socket(fileno=frame.fd)
        sock.setblocking(False)
        self.listeners.append(sock)

    def on_live(self) -> None:
        for sock in self.listeners:
            self.loop.add_reader(sock.fileno(), self._accept, sock)

    def _accept(self, sock: socket.socket) -> None:
        try:
            conn, _ = sock.accept()
        except OSError:
            return
        conn.setblocking(True)
        with contextlib.suppress(OSError):
            conn.sendall(b"421 4.3.0 Service not available yet\r\n")
        conn.close()
