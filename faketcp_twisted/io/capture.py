# -*- test-case-name: tests.test_integration -*-
"""
The raw sockets of one port: a packet capture that sees this port's
segments, and a raw IP socket that sends hand-built segments.

The capture is an AF_PACKET socket (cooked, so packets start at the IP
header).  It sees packets before netfilter's INPUT hook, so a host firewall
that drops segments conntrack calls INVALID cannot hide them, and it sees
IPv6 headers too (an AF_INET6 raw socket would not).  A kernel BPF filter
keeps every other packet from waking the process; one capture serves every
local address of its family.

Packets cross in batches: L{Capture.receive} reads and parses many per
call and L{Capture.send_batch} sends many per call (C{recvmmsg} and
C{sendmmsg} with the C fast path, see L{fastpath}).
"""

from __future__ import annotations

import socket
from typing import Any

from ..core.bpf import attach_filter, capture_filter
from . import fastpath

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD


class Capture:
    """
    The capture and send sockets of one port of one address family.

    @ivar family: C{AF_INET} or C{AF_INET6}.
    @ivar port: the TCP port the capture filters on.
    @ivar match: C{"dst"} to see segments sent to C{port} (a server),
        C{"src"} to see segments sent from it (a client's remote port).
    """

    #: Bytes of kernel buffer for the capture; bursts wait here between
    #: reactor wake-ups.
    receiveBuffer = 8 * 1024 * 1024
    sendBuffer = 4 * 1024 * 1024
    maxPacket = 65535

    def __init__(self, family: int, port: int, match: str) -> None:
        self.family = family
        self.port = port
        self.match = match
        protocol = ETH_P_IP if family == socket.AF_INET else ETH_P_IPV6
        capture = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(protocol))
        try:
            capture.setblocking(False)
            attach_filter(capture, capture_filter(family, port, match))
            # Packets queued in the instant before the filter was attached
            # are not this port's: throw them away.
            _discard_queued(capture)
            capture.setsockopt(fastpath.SOL_PACKET, fastpath.PACKET_AUXDATA, 1)
            _set_buffer(capture, socket.SO_RCVBUF, self.receiveBuffer)
            sender = socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_RAW)
        except BaseException:
            capture.close()
            raise
        try:
            # IPPROTO_RAW sockets include the IP header (IPv4 and IPv6) and
            # receive nothing; the kernel fills the IPv4 checksum and id.
            _set_buffer(sender, socket.SO_SNDBUF, self.sendBuffer)
            sender.setblocking(False)
        except BaseException:
            sender.close()
            capture.close()
            raise
        self.capture = capture
        self.sender = sender

    def fileno(self) -> int:
        """
        The descriptor a reactor or event loop watches for readability.
        """
        return self.capture.fileno()

    def receive(self, budget: int) -> fastpath.Received:
        """
        Read and parse up to C{budget} captured packets in batches (see
        L{fastpath.receive_segments}), stopping early when the capture is
        empty.

        @return: the segments, the flow key of each (this side's view), and
            the L{MalformedSegment} reason of every packet refused.
        """
        return fastpath.receive_segments(self.capture, budget)

    def send_batch(self, items: list[fastpath.Outgoing], start: int) -> tuple[int, list[int]]:
        """
        Send C{items[start:]}, each a (whole IP packet, destination) pair,
        until the send buffer is full (see L{fastpath.send_batch}).

        @return: the index of the first item not sent, and the errno of
            every item the kernel refused (skipped, not retried).
        """
        return fastpath.send_batch(self.sender, items, start)

    def close(self) -> None:
        """
        Close both sockets.
        """
        self.capture.close()
        self.sender.close()


def _discard_queued(sock: socket.socket) -> None:
    while True:
        try:
            sock.recv(1)
        except (BlockingIOError, InterruptedError):
            return


def _set_buffer(sock: socket.socket, option: int, size: int) -> None:
    # SO_*BUFFORCE (root) passes the sysctl cap; fall back to what is allowed.
    force = {socket.SO_RCVBUF: 33, socket.SO_SNDBUF: 32}[option]
    try:
        sock.setsockopt(socket.SOL_SOCKET, force, size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, option, size)


def sockaddr(family: int, packed: bytes) -> tuple[Any, ...]:
    """
    The socket address a raw socket sends to, from a packed IP address.
    """
    text = socket.inet_ntop(family, packed)
    if family == socket.AF_INET6:
        return (text, 0, 0, 0)
    return (text, 0)
