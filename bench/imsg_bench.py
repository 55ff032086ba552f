"""imsg round-trip benchmark: two real processes, one AF_UNIX socketpair.

    .venv/bin/python bench/imsg_bench.py [-n N] [--levels 1,32] [--reps R]

The client (this process) sends a small request, the server (a forked child)
answers it; N round trips per run with 1, 32, ... requests in flight.  Three
modes, both sides in the same mode:

- raw:          imsg.Channel only; the body is pre-encoded, the request id
                travels in the header's peerid, the server echoes the frame.
- node:         real smtpd.node.Node instances (client named smtp, server named
                queue) exchanging SMTP_MESSAGE_CREATE / QUEUE_MESSAGE_CREATED:
                route check, msg.decode, handler, msg.encode, profiling off.
- node+prof:    the same with Profile.IMSG on in both processes, so every
                dispatch is timed with monotonic_ns and pushed to the
                StatCollector histogram (Node._dispatch, unchanged).  There is
                no control process here: the collector's per-iteration drain
                runs, but the ANY_STAT_UPDATE frame it would send is not.

Each (mode, level) runs R times, interleaved so machine noise hits every mode
alike; the table shows the run with the median throughput.  The profiling
overhead is printed twice: end to end (round trips/s and p50, on vs off, which
on a shared machine is within noise) and per dispatch, in process, without I/O
(Node._dispatch on a prepared frame, profiling on vs off).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from imsg import Channel, Frame
from smtpd.msg import MessageCreated, Msg, Proc, Request, encode
from smtpd.node import Node
from smtpd.trace import Profile

MODES = ("raw", "node", "node+prof")
RAW_REQUEST = int(Msg.SMTP_MESSAGE_CREATE)
RAW_REPLY = int(Msg.QUEUE_MESSAGE_CREATED)


@dataclass(frozen=True, slots=True)
class RunResult:
    mode: str
    inflight: int
    count: int
    seconds: float
    latencies_ns: list[int]

    @property
    def rate(self) -> float:
        return self.count / self.seconds

    def percentile_us(self, p: float) -> float:
        ordered = sorted(self.latencies_ns)
        index = min(len(ordered) - 1, max(0, round(p * len(ordered)) - 1))
        return ordered[index] / 1000


class Pacer:
    """Keeps `inflight` requests outstanding until `total` have been answered."""

    def __init__(self, total: int, inflight: int, send: Callable[[int], None],
                 done: asyncio.Future[None]) -> None:
        self.total = total
        self.inflight = inflight
        self.send = send
        self.done = done
        self.sent = 0
        self.answered = 0
        self.started: dict[int, int] = {}
        self.latencies: list[int] = []

    def start(self) -> None:
        for _ in range(min(self.inflight, self.total)):
            self._send_one()

    def _send_one(self) -> None:
        reqid = self.sent
        self.sent += 1
        self.started[reqid] = time.perf_counter_ns()
        self.send(reqid)

    def answer(self, reqid: int) -> None:
        self.latencies.append(time.perf_counter_ns() - self.started.pop(reqid))
        self.answered += 1
        if self.sent < self.total:
            self._send_one()
        elif self.answered == self.total and not self.done.done():
            self.done.set_result(None)


# -- node mode ---------------------------------------------------------------

class BenchServer(Node):
    name = Proc.QUEUE
    needs = frozenset({Proc.SMTP})

    def __init__(self, profiles: Profile) -> None:
        super().__init__(profiles=profiles)
        self.handle(Proc.SMTP, Msg.SMTP_MESSAGE_CREATE, self._on_create)

    def _on_create(self, payload: Request, _frame: Frame) -> None:
        self.send(Proc.SMTP, Msg.QUEUE_MESSAGE_CREATED, MessageCreated(payload.reqid, 0x51E7B466))

    def peer_closed(self, peer: Proc, exc: Exception | None) -> None:
        self.stopping.set()  # the client is done: an orderly end, not a lost peer


class BenchClient(Node):
    name = Proc.SMTP
    needs = frozenset({Proc.QUEUE})

    def __init__(self, profiles: Profile) -> None:
        super().__init__(profiles=profiles)
        self.pacer: Pacer | None = None
        self.live_event = asyncio.Event()
        self.handle(Proc.QUEUE, Msg.QUEUE_MESSAGE_CREATED, self._on_created)

    def on_live(self) -> None:
        self.live_event.set()

    def _on_created(self, payload: MessageCreated, _frame: Frame) -> None:
        assert self.pacer is not None
        self.pacer.answer(payload.reqid)

    def request(self, reqid: int) -> None:
        self.send(Proc.QUEUE, Msg.SMTP_MESSAGE_CREATE, Request(reqid))


def _profiles(mode: str) -> Profile:
    return Profile.IMSG if mode.endswith("+prof") else Profile(0)


def _server_class(mode: str) -> type[BenchServer]:
    return BenchServer


def _client_class(mode: str) -> type[BenchClient]:
    return BenchClient


# -- the two processes ---------------------------------------------------------

def _serve(mode: str, sock: socket.socket) -> None:
    """The forked child: answer until the client closes, then _exit."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    if mode == "raw":
        finished = asyncio.Event()
        chan: Channel

        def on_frame(frame: Frame) -> None:
            chan.send(RAW_REPLY, frame.data, peerid=frame.peerid)

        chan = Channel(sock, name="client", on_frame=on_frame,
                       on_close=lambda _c, _e: finished.set(), loop=loop)
        chan.start()
        loop.run_until_complete(finished.wait())
    else:
        server = _server_class(mode)(_profiles(mode))
        server.attach(Proc.SMTP, sock)
        server.start_channels()
        loop.run_until_complete(server.stopping.wait())
    os._exit(0)


async def _client_raw(sock: socket.socket, total: int, inflight: int) -> Pacer:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    body = encode(Request(0))

    def on_close(_chan: Channel, exc: Exception | None) -> None:
        if not done.done():
            done.set_exception(RuntimeError(f"server went away: {exc}"))

    chan = Channel(sock, name="server", loop=loop, on_close=on_close,
                   on_frame=lambda frame: pacer.answer(frame.peerid))
    pacer = Pacer(total, inflight, lambda reqid: chan.send(RAW_REQUEST, body, peerid=reqid),
                  done)
    chan.start()
    pacer.start()
    await done
    chan.close()
    return pacer


async def _client_node(mode: str, sock: socket.socket, total: int, inflight: int) -> Pacer:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    client = _client_class(mode)(_profiles(mode))
    client.attach(Proc.QUEUE, sock)
    pacer = client.pacer = Pacer(total, inflight, client.request, done)
    client.start_channels()
    await client.live_event.wait()
    pacer.start()
    await done
    client.stopping.set()
    client.channels[Proc.QUEUE].close()
    return pacer


def run_once(mode: str, total: int, inflight: int) -> RunResult:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the server child
        try:
            ours.close()
            _serve(mode, theirs)
        finally:
            os._exit(1)
    theirs.close()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        t0 = time.perf_counter()
        if mode == "raw":
            pacer = loop.run_until_complete(_client_raw(ours, total, inflight))
        else:
            pacer = loop.run_until_complete(_client_node(mode, ours, total, inflight))
        seconds = time.perf_counter() - t0
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        raise
    finally:
        loop.close()
        asyncio.set_event_loop(None)
        _, status = os.waitpid(pid, 0)
    if status != 0:
        raise RuntimeError(f"server child failed: wait status {status}")
    return RunResult(mode, inflight, total, seconds, pacer.latencies)


# -- profiling cost per dispatch, in process -------------------------------------

def in_process_costs(count: int) -> dict[str, float]:
    """ns per call, best of 5, without I/O: Node._dispatch of one
    QUEUE_MESSAGE_CREATED with profiling off and on, and Node._trace_frame
    (called by the channel for every frame in and out) with tracing off."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        frame = Frame(int(Msg.QUEUE_MESSAGE_CREATED), encode(MessageCreated(7, 0x51E7B466)),
                      0, os.getpid(), None)
        cases: list[tuple[str, BenchClient, Profile, Callable[[BenchClient], None]]] = []
        node = BenchClient(Profile(0))
        node.handlers[(Proc.QUEUE, Msg.QUEUE_MESSAGE_CREATED)] = lambda _p, _f: None
        cases += [
            ("node dispatch, profiling off", node, Profile(0),
             lambda n: n._dispatch(Proc.QUEUE, Msg.QUEUE_MESSAGE_CREATED, frame)),
            ("node dispatch, profiling on", node, Profile.IMSG,
             lambda n: n._dispatch(Proc.QUEUE, Msg.QUEUE_MESSAGE_CREATED, frame)),
            ("node trace hook per frame, off", node, Profile(0),
             lambda n: n._trace_frame(Proc.QUEUE, "in", frame)),
        ]
        best: dict[str, float] = {}
        for _rep in range(5):
            for label, node, profiles, call in cases:
                node.profiles = profiles
                t0 = time.perf_counter_ns()
                for _ in range(count):
                    call(node)
                cost = (time.perf_counter_ns() - t0) / count
                best[label] = min(cost, best.get(label, cost))
                node.stats.drain()  # as the flush would
        return best
    finally:
        loop.close()
        asyncio.set_event_loop(None)


# -- main ------------------------------------------------------------------------

def _median_run(runs: list[RunResult]) -> RunResult:
    ordered = sorted(runs, key=lambda r: r.rate)
    return ordered[len(ordered) // 2]


def _pct(on: float, off: float) -> str:
    return f"{(on - off) / off * 100:+.1f}%"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("-n", type=int, default=10_000, help="round trips per run")
    parser.add_argument("--levels", default="1,32", help="requests in flight, comma separated")
    parser.add_argument("--reps", type=int, default=3, help="runs per mode and level")
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",")]
    print(f"imsg round trips: python {sys.version.split()[0]}, "
          f"{type(asyncio.new_event_loop()).__name__}, n={args.n}, reps={args.reps}, "
          f"load avg {os.getloadavg()[0]:.2f}")
    gc.collect()
    runs: dict[tuple[str, int], list[RunResult]] = {}
    for inflight in levels:
        for _rep in range(args.reps):
            for mode in MODES:
                runs.setdefault((mode, inflight), []).append(run_once(mode, args.n, inflight))
    print(f"{'mode':<14}{'in flight':>10}{'round trips/s':>15}{'p50 µs':>10}{'p99 µs':>10}")
    chosen: dict[tuple[str, int], RunResult] = {}
    for inflight in levels:
        for mode in MODES:
            r = chosen[(mode, inflight)] = _median_run(runs[(mode, inflight)])
            print(f"{mode:<14}{inflight:>10}{r.rate:>15,.0f}"
                  f"{r.percentile_us(0.5):>10.1f}{r.percentile_us(0.99):>10.1f}")
    print("profiling overhead, end to end (on vs off; within noise on a shared machine):")
    for inflight in levels:
        off, on = chosen[("node", inflight)], chosen[("node+prof", inflight)]
        print(f"  {inflight:>3} in flight: round trips/s "
              f"{_pct(on.rate, off.rate)}, p50 "
              f"{_pct(on.percentile_us(0.5), off.percentile_us(0.5))}, p99 "
              f"{_pct(on.percentile_us(0.99), off.percentile_us(0.99))}")
    costs = in_process_costs(50_000)
    print("in process, no I/O (ns per call):")
    for label, ns in costs.items():
        print(f"  {label:<40}{ns:>8.0f}")
    off_ns = costs["node dispatch, profiling off"]
    on_ns = costs["node dispatch, profiling on"]
    print(f"profiling overhead per dispatch: +{on_ns - off_ns:.0f} ns ({_pct(on_ns, off_ns)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

