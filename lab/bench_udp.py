# -*- test-case-name: tests.test_bench -*-
"""
The benchmark's round-trip probe: a UDP echo server and a paced pinger.

iperf3 measures throughput and loss but not round trips, so the benchmark
sends its own timestamped datagrams at a moderate, steady rate (10,000 a
second by default) through each tunnel to an echo server and back.  Both
ends are plain Python, fast enough for that rate; a round trip runs from
just before the send to the kernel's receive timestamp of the echo
(C{SO_TIMESTAMPNS}), so the pinger's own wake-up delay stays out of it.
What the echo server adds, it adds equally to the direct path, which the
benchmark subtracts.

Run inside a namespace (the benchmark does this with C{ip netns exec})::

    python -m lab.bench_udp echo --port 27101
    python -m lab.bench_udp ping --host 198.18.0.2 --port 27101 \\
        --rate 10000 --seconds 3 --size 1200 --wait 20

C{echo} prints C{ready} once bound; C{ping} prints one JSON object.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import select
import socket
import struct
import sys
import time
from array import array
from typing import Any

#: Sequence number and send time (CLOCK_REALTIME nanoseconds, the clock of
#: the kernel's receive timestamps) lead every datagram.
_STAMP = struct.Struct("!QQ")

#: The kernel's receive timestamp of each datagram, as struct timespec.
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("@qq")
_ANCILLARY = socket.CMSG_SPACE(_TIMESPEC.size)

#: Socket buffers as large as iperf3's C{-w 4M}, so neither end of the
#: probe loses datagrams to its own buffers.
SOCKET_BUFFER = 4 * 1024 * 1024

#: prctl(2) option that sets this thread's timer slack.
_PR_SET_TIMERSLACK = 29

#: Seconds the pinger keeps listening for late replies after its last send.
DRAIN_SECONDS = 0.3

#: If the pinger falls this many intervals behind its schedule (it was not
#: scheduled for a while), it restarts the schedule instead of catching up
#: with a burst, which would measure its own queue instead of the tunnel.
MAX_BEHIND_INTERVALS = 10


def _tight_timers() -> None:
    """
    Make short sleeps short.

    The pinger sleeps until its next send, 100 us away at 10,000
    datagrams a second; the default 50 us timer slack would stretch every
    such sleep by up to half an interval.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_TIMERSLACK, 1, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def percentile(ordered: list[int] | array[int], fraction: float) -> float:
    """
    The value at C{fraction} (0..1) of an ascending sequence (nearest rank).

    @return: 0.0 for an empty sequence.
    """
    if not ordered:
        return 0.0
    return float(ordered[min(int(len(ordered) * fraction), len(ordered) - 1)])


def echo(port: int, interface: str = "0.0.0.0") -> None:
    """
    Send every datagram back to where it came from, until killed.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
    sock.bind((interface, port))
    print("ready", flush=True)
    buffer = bytearray(65536)
    view = memoryview(buffer)
    while True:
        size, address = sock.recvfrom_into(buffer)
        try:
            sock.sendto(view[:size], address)
        except OSError:
            # A refused or unroutable reply must not end the probe.
            pass


def forward(listen: tuple[str, int], to: tuple[str, int]) -> None:
    """
    A plain UDP relay on Twisted's reactor, until killed: each source gets
    its own connected socket toward C{to}, whose replies go back to that
    source.  No fake TCP, no raw sockets: it measures the floor of any relay
    driven by Twisted's reactor (a wake-up, a read and a write per hop), for
    the benchmark's C{twisted-udp} tunnel.
    """
    from twisted.internet import reactor as installed
    from twisted.internet.protocol import DatagramProtocol
    from twisted.internet.udp import Port

    reactor: Any = installed

    class Reply(DatagramProtocol):
        def __init__(self, listening: Listening, source: Any) -> None:
            self.listening = listening
            self.source = source
            self.port: Port = reactor.listenUDP(0, self)
            self.port.connect(*to)

        def datagramReceived(self, datagram: bytes, address: Any) -> None:
            self.listening.port.write(datagram, self.source)

    class Listening(DatagramProtocol):
        def __init__(self) -> None:
            self.replies: dict[Any, Reply] = {}
            self.port: Port = reactor.listenUDP(listen[1], self, interface=listen[0])

        def datagramReceived(self, datagram: bytes, source: Any) -> None:
            reply = self.replies.get(source)
            if reply is None:
                reply = self.replies[source] = Reply(self, source)
            try:
                reply.port.write(datagram)
            except OSError:
                pass  # a refused datagram must not end the relay

    Listening()
    print("ready", flush=True)
    reactor.run()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


class Pinger:
    """
    Sends stamped datagrams at a steady rate on a connected UDP socket and
    records the round trip of every reply.
    """

    def __init__(self, host: str, port: int, size: int) -> None:
        if size < _STAMP.size:
            raise ValueError(f"size must be at least {_STAMP.size}")
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
        # A reply's arrival time comes from the kernel, not from when this
        # process got around to reading it: the round trip then leaves out
        # the pinger's own scheduling delay on a busy machine, and the
        # pinger can sleep between sends instead of waking for every reply.
        self.sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        self.sock.connect((host, port))
        self.sock.setblocking(False)
        self.padding = b"\0" * (size - _STAMP.size)
        self.sent = 0
        self.received = 0
        self.send_errors = 0
        self.schedule_resets = 0
        self.rtts_ns: array[int] = array("q")
        self._buffer = bytearray(65536)

    def wait_ready(self, seconds: float) -> bool:
        """
        Probe until one reply comes back: a tunnel needs a moment (its own
        handshake) after its processes start.  Probes use sequence numbers
        that the measurement ignores.
        """
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                self.sock.send(_STAMP.pack(2**63, 0) + self.padding)
            except OSError:
                pass  # ICMP "refused" from a receiver not bound yet
            readable, _, _ = select.select([self.sock], [], [], 0.05)
            if readable and self._drain() > 0:
                time.sleep(0.1)
                self._drain()
                return True
        return False

    def _drain(self) -> int:
        """
        Read and discard everything pending; return how many were read.
        """
        count = 0
        while True:
            try:
                self.sock.recv_into(self._buffer)
            except BlockingIOError:
                return count
            except OSError:
                continue
            count += 1

    def _receive(self) -> None:
        buffers = [self._buffer]
        while True:
            try:
                size, ancillary, _, _ = self.sock.recvmsg_into(buffers, _ANCILLARY)
            except BlockingIOError:
                return
            except OSError:
                # ECONNREFUSED from an ICMP error queued on the socket.
                continue
            arrived = 0
            for level, kind, data in ancillary:
                if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
                    seconds, nanoseconds = _TIMESPEC.unpack_from(data)
                    arrived = seconds * 1_000_000_000 + nanoseconds
            if size < _STAMP.size:
                continue
            number, sent_at = _STAMP.unpack_from(self._buffer)
            if number >= self.sent:
                continue  # a late readiness probe
            self.received += 1
            self.rtts_ns.append((arrived or time.time_ns()) - sent_at)

    def run(self, rate: float, seconds: float) -> dict[str, Any]:
        """
        Send at C{rate} datagrams a second for C{seconds}, then wait
        L{DRAIN_SECONDS} for stragglers.

        @return: counts and round-trip statistics in microseconds.
        """
        interval = 1e9 / rate
        started = time.monotonic_ns()
        end = started + int(seconds * 1e9)
        due = float(started)
        while True:
            now = time.monotonic_ns()
            if now >= end:
                break
            if now >= due:
                try:
                    self.sock.send(_STAMP.pack(self.sent, time.time_ns()) + self.padding)
                except OSError:
                    self.send_errors += 1
                self.sent += 1
                due += interval
                if now - due > MAX_BEHIND_INTERVALS * interval:
                    self.schedule_resets += 1
                    due = float(now)
                self._receive()
                continue
            wait = (due - time.monotonic_ns()) / 1e9
            if wait > 0:
                time.sleep(wait)
        sending = (time.monotonic_ns() - started) / 1e9
        drain_until = time.monotonic() + DRAIN_SECONDS
        while self.received < self.sent and time.monotonic() < drain_until:
            select.select([self.sock], [], [], 0.01)
            self._receive()
        ordered = sorted(self.rtts_ns)
        lost = self.sent - self.received
        return {
            "ready": True,
            "rate": rate,
            "seconds": sending,
            "size": len(self.padding) + _STAMP.size,
            "sent": self.sent,
            "received": self.received,
            "lost": lost,
            "loss": lost / self.sent if self.sent else 0.0,
            "send_errors": self.send_errors,
            "schedule_resets": self.schedule_resets,
            "rtt_us": {
                "p50": percentile(ordered, 0.50) / 1e3,
                "p90": percentile(ordered, 0.90) / 1e3,
                "p99": percentile(ordered, 0.99) / 1e3,
                "max": (ordered[-1] / 1e3) if ordered else 0.0,
                "mean": (sum(ordered) / len(ordered) / 1e3) if ordered else 0.0,
            },
        }


def main(argv: list[str] | None = None) -> int:
    """
    Run the echo server or the pinger, as the command line says.
    """
    parser = argparse.ArgumentParser(
        prog="python -m lab.bench_udp",
        description="UDP echo server, Twisted UDP forwarder and paced round-trip pinger for the benchmark.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    echo_parser = commands.add_parser("echo", help="echo datagrams until killed")
    echo_parser.add_argument("--port", type=int, required=True)
    echo_parser.add_argument("--interface", default="0.0.0.0")
    forward_parser = commands.add_parser("forward", help="relay UDP on Twisted's reactor until killed")
    forward_parser.add_argument("--listen", type=_address, required=True, help="HOST:PORT")
    forward_parser.add_argument("--to", type=_address, required=True, help="HOST:PORT")
    ping_parser = commands.add_parser("ping", help="measure round trips, print JSON")
    ping_parser.add_argument("--host", required=True)
    ping_parser.add_argument("--port", type=int, required=True)
    ping_parser.add_argument("--rate", type=float, default=10000.0, help="datagrams per second")
    ping_parser.add_argument("--seconds", type=float, default=3.0)
    ping_parser.add_argument("--size", type=int, default=1200, help="datagram size in bytes")
    ping_parser.add_argument(
        "--wait", type=float, default=0.0, help="first probe until a reply arrives, for up to this many seconds"
    )
    args = parser.parse_args(argv)
    if args.command == "echo":
        try:
            echo(args.port, args.interface)
        except KeyboardInterrupt:
            pass
        return 0
    if args.command == "forward":
        forward(args.listen, args.to)
        return 0
    _tight_timers()
    pinger = Pinger(args.host, args.port, args.size)
    if args.wait > 0 and not pinger.wait_ready(args.wait):
        print(json.dumps({"ready": False, "error": f"no reply within {args.wait:g} s"}))
        return 3
    print(json.dumps(pinger.run(args.rate, args.seconds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
