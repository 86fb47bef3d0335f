"""
The README's first command, C{make demo}: two network namespaces joined by
a veth pair, an unmodified Twisted Echo server on C{faketcp:9191} in one,
a client in the other sending timestamped datagrams at a steady rate, and a
live line of counters.  Everything it made is removed at the end.

Run as root: C{python -m faketcp_twisted.demo [--seconds N] [--rate PPS]}.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import time
from typing import Any

from twisted.internet import defer, task
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.wire import Echo

from . import netlab

_STAMP = struct.Struct("!Qd")


class Pinger(Protocol):
    """
    Sends numbered, timestamped datagrams and measures their round trips.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.sent = 0
        self.received = 0
        self.bytes_received = 0
        self.rtts: list[float] = []

    def send_batch(self, count: int) -> None:
        padding = b"." * (self.size - _STAMP.size)
        now = time.perf_counter()
        for _ in range(count):
            self.transport.write(_STAMP.pack(self.sent, now) + padding)
            self.sent += 1

    def dataReceived(self, data: bytes) -> None:
        _number, sent_at = _STAMP.unpack_from(data)
        self.rtts.append(time.perf_counter() - sent_at)
        self.received += 1
        self.bytes_received += len(data)


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(len(ordered) * fraction), len(ordered) - 1)] if ordered else 0.0


async def run_demo(reactor: Any, seconds: float, rate: int, size: int) -> None:
    """
    Build the lab, run the echo for C{seconds}, print live counters, clean up.
    """
    print("creating namespaces: client 198.18.0.1 <-> server 198.18.0.2 (veth)")
    lab = netlab.two_hosts()
    port = None
    pinger = None
    try:
        with netlab.in_namespace(lab.S):
            listening = serverFromString(reactor, "faketcp:9191:interface=0.0.0.0").listen(
                Factory.forProtocol(Echo)
            )
        port = await listening
        print("server: twisted.protocols.wire.Echo on faketcp:9191:interface=0.0.0.0")
        with netlab.in_namespace(lab.C):
            connecting = clientFromString(reactor, f"faketcp:host={lab.server4}:port=9191").connect(
                Factory.forProtocol(lambda: Pinger(size))
            )
        pinger = await connecting
        host, peer = pinger.transport.getHost(), pinger.transport.getPeer()
        print(f"client: connected {host.host}:{host.port} -> {peer.host}:{peer.port}, MSS {pinger.transport.flow.mss}")
        print(f"sending {rate} datagrams/s of {size} bytes for {seconds:g} s\n")
        tick = 0.01
        per_tick = max(rate * tick, 1)
        owed = 0.0

        def send() -> None:
            nonlocal owed
            owed += per_tick
            count = int(owed)
            owed -= count
            pinger.send_batch(count)

        sender = task.LoopingCall(send)
        sender.start(tick)
        last = (0, 0, 0)
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            await task.deferLater(reactor, 1.0)
            sent, received, volume = pinger.sent, pinger.received, pinger.bytes_received
            rtts, pinger.rtts = pinger.rtts, []
            lost = max(sent - received - 50, 0)  # allow for datagrams in flight
            print(
                f"t={time.monotonic() - started:4.1f}s  sent {sent - last[0]:6d}/s  "
                f"echoed {received - last[1]:6d}/s  {(volume - last[2]) * 8 / 1e6:7.2f} Mbit/s  "
                f"RTT p50 {_percentile(rtts, 0.5) * 1e3:6.3f} ms p99 {_percentile(rtts, 0.99) * 1e3:6.3f} ms  "
                f"loss {100.0 * lost / max(sent, 1):5.2f}%"
            )
            last = (sent, received, volume)
        sender.stop()
        await task.deferLater(reactor, 0.3)
        stats = pinger.transport.flow.stats
        print(f"\nclient flow: {stats.tx_segments} segments sent, {stats.rx_segments} received, "
              f"estimated receive loss {stats.rx_loss_estimate:.2%}")
    finally:
        if pinger is not None and pinger.transport.connected:
            pinger.transport.loseConnection()
            await task.deferLater(reactor, 0.2)
        if port is not None:
            await port.stopListening()
        lab.destroy()
    leftovers = [name for name in os.listdir("/run/netns") if name.startswith(f"ftt-{os.getpid()}-")] if os.path.isdir("/run/netns") else []
    print("cleaned up: namespaces removed" + ("" if not leftovers else f" EXCEPT {leftovers}") + ", rules removed with them")


def main(argv: list[str] | None = None) -> int:
    """
    Parse arguments, check privileges, and run the demo on the reactor.
    """
    parser = argparse.ArgumentParser(prog="python -m faketcp_twisted.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="how long to send (default 5)")
    parser.add_argument("--rate", type=int, default=2000, help="datagrams per second (default 2000)")
    parser.add_argument("--size", type=int, default=1200, help="datagram size in bytes (default 1200)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("the demo creates network namespaces, raw sockets and firewall rules: run it as root", file=sys.stderr)
        return 1
    if args.size < _STAMP.size or args.size > 1400:
        parser.error(f"--size must be between {_STAMP.size} and 1400")
    outcome: list[int] = []

    def run(reactor: Any) -> defer.Deferred[None]:
        return defer.ensureDeferred(run_demo(reactor, args.seconds, args.rate, args.size))

    try:
        task.react(run)
    except SystemExit as exit_:
        outcome.append(int(exit_.code or 0))
    return outcome[0] if outcome else 0


if __name__ == "__main__":
    sys.exit(main())
