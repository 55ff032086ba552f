"""imsgs larger than one 16 KiB frame (smtpd/node.py): sent as ANY_FRAGMENT
frames and reassembled by the peer, fd on the last part; a peer breaking
the fragment rules is a protocol bug, as any other bad frame."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from imsg import MAX_PAYLOAD, Frame
from smtpd.msg import Fragment, MessageCommit, Msg, MtaTransfer, Proc, encode
from smtpd.node import MAX_MESSAGE, Node


class _Peer(Node):
    def __init__(self, name: Proc, needs: Proc) -> None:
        self.name = name
        self.needs = frozenset({needs})
        super().__init__()
        self.got: list[tuple[Any, Frame]] = []
        self.bugs: list[str] = []

    def on_payload(self, payload: Any, frame: Frame) -> None:
        self.got.append((payload, frame))

    def fatal_bug(self, peer: Proc, msg_type: int | None, reason: str) -> None:
        self.bugs.append(reason)

    def peer_closed(self, peer: Proc, exc: Exception | None) -> None:
        pass


@pytest.fixture
def pair() -> Iterator[tuple[_Peer, _Peer, asyncio.AbstractEventLoop]]:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    smtp, queue = _Peer(Proc.SMTP, Proc.QUEUE), _Peer(Proc.QUEUE, Proc.SMTP)
    a, b = socket.socketpair()
    smtp.attach(Proc.QUEUE, a)
    queue.attach(Proc.SMTP, b)
    queue.handle(Proc.SMTP, Msg.SMTP_MESSAGE_COMMIT, queue.on_payload)
    smtp.handle(Proc.QUEUE, Msg.QUEUE_MTA_TRANSFER, smtp.on_payload)
    smtp.start_channels()
    queue.start_channels()
    try:
        yield smtp, queue, loop
    finally:
        for node in (smtp, queue):
            for chan in node.channels.values():
                chan.close()
        loop.close()
        asyncio.set_event_loop(None)


def _run_until(loop: asyncio.AbstractEventLoop, done: Any) -> None:
    async def wait() -> None:
        for _ in range(500):
            if done():
                return
            await asyncio.sleep(0.01)
    loop.run_until_complete(wait())


def _envelopes(n: int) -> list[str]:
    return [f"version: 3\nrcpt: user{i}@example.net\n" + "x" * 300 for i in range(n)]


def test_a_large_imsg_arrives_whole_and_in_order(pair: Any) -> None:
    smtp, queue, loop = pair
    big = MessageCommit(7, 0x1234, _envelopes(1000))
    assert len(encode(big)) > 20 * MAX_PAYLOAD
    smtp.send(Proc.QUEUE, Msg.SMTP_MESSAGE_COMMIT, MessageCommit(6, 1, ["small"]))
    smtp.send(Proc.QUEUE, Msg.SMTP_MESSAGE_COMMIT, big)
    smtp.send(Proc.QUEUE, Msg.SMTP_MESSAGE_COMMIT, MessageCommit(8, 2, ["after"]))
    _run_until(loop, lambda: len(queue.got) == 3)
    assert [p for p, _ in queue.got] == [MessageCommit(6, 1, ["small"]), big,
                                         MessageCommit(8, 2, ["after"])]
    assert queue.bugs == []


def test_the_fd_of_a_fragmented_imsg_comes_with_it(pair: Any, tmp_path: Any) -> None:
    smtp, queue, loop = pair
    path = tmp_path / "message"
    path.write_bytes(b"the message\n")
    transfer = MtaTransfer(3, "out", "example.net", _envelopes(400))
    queue.send(Proc.SMTP, Msg.QUEUE_MTA_TRANSFER, transfer, fd=os.open(path, os.O_RDONLY))
    _run_until(loop, lambda: smtp.got)
    [(payload, frame)] = smtp.got
    assert payload == transfer and frame.fd is not None
    try:
        assert os.pread(frame.fd, 100, 0) == b"the message\n"
    finally:
        os.close(frame.fd)


def test_more_than_the_limit_is_refused_by_the_sender(pair: Any) -> None:
    smtp, _queue, _loop = pair
    with pytest.raises(ValueError, match="exceeds"):
        smtp.send(Proc.QUEUE, Msg.SMTP_MESSAGE_COMMIT,
                  MessageCommit(1, 1, ["y" * 65536] * (MAX_MESSAGE // 65536 + 1)))


@pytest.mark.parametrize(("parts", "bug"), [
    ([Fragment(int(Msg.ANY_PROC_READY), b"x", True)], "fragmented"),
    ([Fragment(int(Msg.SMTP_MESSAGE_COMMIT), b"x", False),
      Fragment(int(Msg.SMTP_MESSAGE_ROLLBACK), b"y", True)], "inside one of"),
    ([Fragment(int(Msg.QUEUE_MESSAGE_FD), b"x", True)], "not allowed"),
])
def test_broken_fragments_are_a_protocol_bug(pair: Any, parts: list[Fragment],
                                             bug: str) -> None:
    smtp, queue, loop = pair
    for part in parts:
        smtp.channels[Proc.QUEUE].send(int(Msg.ANY_FRAGMENT), encode(part))
    _run_until(loop, lambda: queue.bugs)
    assert any(bug in reason for reason in queue.bugs), queue.bugs
