# -*- test-case-name: tests.test_udp -*-
"""
The relay's UDP sockets: read by the event loop in batches, written with
plain non-blocking sends.

Twisted's C{udp.Port} reads one datagram per C{recvfrom}, formats the
source address of each, and asks the kernel once more to learn that the
socket is empty; a relay carrying tens of thousands of datagrams a second
pays that on every one.  A L{DatagramSocket} takes up to 64 datagrams per
C{recvmmsg} (with the C fast path, L{fastpath.receive_datagrams}) and hands
the whole batch to its owner in one call, within L{coalesced_sends} so that
the fake-TCP segments it makes leave in one C{sendmmsg}, and costs a server
flow a few hundred bytes instead of a Twisted port's few kilobytes.  Writes
likewise: within L{coalesced_sends} (a batch of captured segments, say) the
datagrams wait for the end of the batch and leave in one C{sendmmsg}
(L{fastpath.send_datagrams}); outside it each leaves at once.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
from collections.abc import Callable
from typing import Any

from ..engine.demux import coalesced_sends
from ..engine.loop import EventLoop
from ..engine.options import host_port
from ..io import fastpath

log = logging.getLogger(__name__)

#: Receives a batch: the datagrams and, for a socket that asked for them,
#: the source address of each (else L{None}).
BatchReceiver = Callable[[list[bytes], "list[tuple[Any, ...]] | None"], object]

#: Linux's SO_RCVBUFFORCE and SO_SNDBUFFORCE (not in the socket module):
#: a privileged process may pass net.core.rmem_max / wmem_max.
_FORCED = {socket.SO_RCVBUF: 33, socket.SO_SNDBUF: 32}

#: SO_MEMINFO (linux/socket.h) and the index of SK_MEMINFO_DROPS in it.
_SO_MEMINFO = 55
_MEMINFO = struct.Struct("9I")
_MEMINFO_DROPS = 8


def enlarge_buffers(handle: socket.socket, size: int = 1 << 20) -> None:
    """
    Give a UDP socket C{size}-byte receive and send buffers, past the
    system's limits when privileged, else as far as they allow.
    """
    for option, forced in _FORCED.items():
        try:
            handle.setsockopt(socket.SOL_SOCKET, forced, size)
        except OSError:
            try:
                handle.setsockopt(socket.SOL_SOCKET, option, size)
            except OSError:
                pass


def receive_drops(handle: socket.socket) -> int:
    """
    Datagrams the kernel dropped because the socket's receive buffer was
    full: they never reached the relay, but an operator needs to see them.
    0 where the kernel cannot tell.
    """
    try:
        drops: int = _MEMINFO.unpack(handle.getsockopt(socket.SOL_SOCKET, _SO_MEMINFO, _MEMINFO.size))[_MEMINFO_DROPS]
        return drops
    except (OSError, struct.error):
        return 0


class DatagramSocket:
    """
    A non-blocking UDP socket whose datagrams the event loop reads in
    batches.

    @ivar socket: the socket.
    """

    __slots__ = (
        "socket",
        "_loop",
        "_fd",
        "_receiver",
        "_errors",
        "_with_sources",
        "_reading",
        "_outgoing",
        "_destinations",
    )

    #: Most datagrams read per wake-up, so one busy socket cannot starve
    #: the rest of the loop (Twisted's udp.Port stops at 256 KB).
    maxDatagramsPerRead = 256

    def __init__(
        self,
        loop: EventLoop,
        sock: socket.socket,
        receiver: BatchReceiver,
        errors: Callable[[int, int], object],
        with_sources: bool,
    ) -> None:
        """
        @param sock: a UDP socket, bound (and connected, for a socket that
            talks to one address).
        @param receiver: called with each batch read.
        @param errors: called with an errno and a count of datagrams: for
            a failed read (an ICMP error for an earlier datagram,
            C{ECONNREFUSED} from a closed port on a connected socket, most
            often; reading goes on), and for datagrams not sent (the count
            with C{EAGAIN} when the send buffer was full).
        @param with_sources: whether the receiver needs each datagram's
            source address (an unconnected socket does).
        """
        sock.setblocking(False)
        self.socket = sock
        self._loop = loop
        self._fd = sock.fileno()
        self._receiver = receiver
        self._errors = errors
        self._with_sources = with_sources
        self._reading = False
        self._outgoing: list[bytes] = []
        self._destinations: list[tuple[Any, ...]] = []

    @classmethod
    def bind(
        cls,
        loop: EventLoop,
        address: tuple[str, int],
        receiver: BatchReceiver,
        errors: Callable[[int, int], object],
        buffer_size: int,
        connect_to: tuple[str, int] | None = None,
    ) -> DatagramSocket:
        """
        A socket bound to C{address} (port 0: any free port), connected to
        C{connect_to} if given, with C{buffer_size}-byte buffers, not yet
        read (see L{start}).

        @raise OSError: the address cannot be bound (in use, not local).
        """
        family = socket.AF_INET6 if ":" in address[0] or (connect_to and ":" in connect_to[0]) else socket.AF_INET
        host = address[0] or ("::" if family == socket.AF_INET6 else "0.0.0.0")
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind((host, address[1]))
            if connect_to is not None:
                sock.connect(connect_to)
            enlarge_buffers(sock, buffer_size)
        except BaseException:
            sock.close()
            raise
        return cls(loop, sock, receiver, errors, with_sources=connect_to is None)

    @property
    def reading(self) -> bool:
        """
        Whether the loop is reading the socket.
        """
        return self._reading

    def start(self) -> None:
        """
        Start reading.
        """
        if not self._reading and self._fd >= 0:
            self._reading = True
            self._loop.add_reader(self._fd, self.doRead)

    def stop(self) -> None:
        """
        Stop reading (the socket stays open: datagrams wait in its buffer).
        """
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)

    def doRead(self) -> None:
        """
        Read one batch and hand it over.
        """
        if self._fd < 0:
            return
        try:
            datagrams, sources = fastpath.receive_datagrams(self.socket, self.maxDatagramsPerRead, self._with_sources)
        except OSError as failure:
            self._errors(failure.errno or 0, 1)
            self._rearm()
            return
        if not datagrams:
            return
        try:
            # The segments the batch makes leave together at its end.
            with coalesced_sends:
                self._receiver(datagrams, sources)
        except Exception:
            # As Twisted does for a protocol's datagramReceived: a bug in
            # the owner must not stop the socket from being read.
            log.exception("error handling datagrams from UDP %s", self.address())

    def write(self, datagram: bytes, destination: tuple[Any, ...] | None = None) -> None:
        """
        Send C{datagram} (to C{destination}, on a socket that is not
        connected): at once, or at the end of the current
        L{coalesced_sends}.  A datagram the kernel refuses is reported to
        the error callback, never raised.
        """
        if coalesced_sends.depth:
            self._outgoing.append(datagram)
            if destination is not None:
                self._destinations.append(destination)
            coalesced_sends.hold(self)
            return
        if self._fd < 0:
            return
        try:
            if destination is None:
                self.socket.send(datagram)
            else:
                self.socket.sendto(datagram, destination)
        except OSError as failure:
            self._errors(failure.errno or 0, 1)

    def flush(self) -> None:
        """
        Send the datagrams held for the end of L{coalesced_sends}; those
        the send buffer has no room for are dropped (and reported), as a
        single send would drop them.
        """
        outgoing, destinations = self._outgoing, self._destinations
        if not outgoing:
            return
        self._outgoing, self._destinations = [], []
        if self._fd < 0:
            return
        sent, errors = fastpath.send_datagrams(self.socket, outgoing, destinations or None)
        for code in errors:
            self._errors(code, 1)
        if sent < len(outgoing):
            self._errors(errno.EAGAIN, len(outgoing) - sent)

    def _rearm(self) -> None:
        # An ICMP error alone makes epoll report EPOLLERR without EPOLLIN,
        # which Twisted's reactor takes for a lost connection: it stops
        # watching the descriptor and calls this read once more.  For UDP
        # the error was one datagram's, now read and counted, so the
        # socket goes back to being watched (a no-op when it still is).
        if self._reading:
            self._loop.add_reader(self._fd, self.doRead)

    def address(self) -> str:
        """
        The local address, as C{host:port}.
        """
        try:
            return host_port(*self.socket.getsockname()[:2])
        except OSError:
            return "closed"

    def receive_drops(self) -> int:
        """
        Datagrams the kernel dropped for a full receive buffer.
        """
        return receive_drops(self.socket) if self._fd >= 0 else 0

    def close(self) -> None:
        """
        Send what is held, stop reading and close the socket.
        """
        self.flush()
        self.stop()
        self._fd = -1
        self.socket.close()
