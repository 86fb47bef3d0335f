# -*- test-case-name: tests.test_integration -*-
"""
The demultiplexer: the one event-loop reader of a capture, which parses
each captured packet, finds its flow by the full 4-tuple and hands the
segment to that flow's connection.

A listening port has one per address family; client connections to the
same remote port share one.  It also owns the send side (a raw socket with
a bounded backlog when the kernel's send buffer is full), the timer that
expires flows, and the kernel sockets of flows in time-wait.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import kernel
from .capture import Capture, sockaddr
from .firewall import DEFAULT_MARK
from .flow import FlowKey
from .loop import EventLoop, Timer
from .segment import MalformedSegment, parse_packet
from .table import FlowTable, Role, TableLimits

if TYPE_CHECKING:
    from .connection import FlowConnection

log = logging.getLogger(__name__)


@dataclass(slots=True)
class FlowOptions:
    """
    Tunables of the flows of a port or connection.

    @ivar idle_timeout: seconds without a segment from the peer after which
        a flow ends with C{TimeoutError}; 0 never.
    @ivar keepalive: seconds between bare-ACK keepalives on a flow that sent
        nothing; 0 sends none.
    @ivar default_keepalive: the interval C{setTcpKeepAlive(True)} uses.
    @ivar mark: the firewall mark of the silenced kernel sockets.
    @ivar limits: bounds of the flow table.
    """

    idle_timeout: float = 180.0
    keepalive: float = 0.0
    default_keepalive: float = 10.0
    mark: int = DEFAULT_MARK
    limits: TableLimits = field(default_factory=TableLimits)


class Demultiplexer:
    """
    Reads one capture for every flow of a port (or of a remote port).

    @ivar table: the flow table.
    @ivar transports: the connection of each adopted flow.
    @ivar drops: packets dropped, by reason.
    """

    #: Most packets read per reactor wake-up, so one busy capture cannot
    #: starve the rest of the reactor (as twisted's udp.Port does).
    maxPacketsPerRead = 256
    #: Seconds between runs of the flow timers.
    tickInterval = 1.0
    #: Most packets waiting for room in the send buffer; past it packets
    #: are dropped, as a full UDP socket would.
    backlogLimit = 4096
    #: Backlog length at which streaming producers are paused.
    backlogHighWater = 1024

    def __init__(
        self,
        loop: EventLoop,
        family: int,
        port: int,
        role: Role,
        options: FlowOptions,
    ) -> None:
        self.loop = loop
        self.family = family
        self.port = port
        self.role = role
        self.options = options
        self.capture = Capture(family, port, "dst" if role is Role.SERVER else "src")
        self.table = FlowTable(role, options.limits)
        self.transports: dict[FlowKey, FlowConnection] = {}
        self.drops: Counter[str] = self.table.drops
        self._backlog: deque[tuple[bytes, tuple]] = deque()
        self._writing = False
        self.congested = False
        self._closing_sockets: deque[tuple[float, socket.socket, Callable[[], None] | None]] = deque()
        #: Called when a flow left, so the owner can close an unused capture.
        self.on_released: Callable[[], None] | None = None
        #: Called when the capture saw a handshake complete, so the owner
        #: can accept (and adopt) the connection within the same batch.
        self.on_handshake: Callable[[], None] | None = None
        self.reading = False
        self._waiters: list[Callable[[], bool]] = []
        self._addresses: dict[bytes, tuple] = {}
        self._closed = False
        self._closing = False
        self._fd = self.capture.fileno()
        loop.add_reader(self._fd, self.doRead)
        self._timer: Timer = loop.call_later(self.tickInterval, self._tick)

    @property
    def closed(self) -> bool:
        """
        Whether the capture is closed.
        """
        return self._closed

    def doRead(self) -> None:
        """
        Read a batch of captured packets and hand each to its flow.
        """
        if self._closed or self.reading:
            return
        self.reading = True
        try:
            self._readBatch()
        finally:
            self.reading = False
        if self._waiters:
            self._waiters = [waiter for waiter in self._waiters if not waiter()]

    def _readBatch(self) -> None:
        now = self.loop.seconds()
        flows = self.table.flows
        transports = self.transports
        table = self.table
        drops = self.drops
        for data, verify in self.capture.read(self.maxPacketsPerRead):
            try:
                segment = parse_packet(data, verify)
            except MalformedSegment as malformed:
                drops[malformed.reason] += 1
                continue
            key = FlowKey(segment.dst, segment.dport, segment.src, segment.sport)
            if key in flows:
                transports[key].segment_received(segment, now)
                continue
            reply = table.receive_unadopted(key, segment, now)
            if reply is not None:
                self.transmit(reply, self.sockaddr(segment.src))
            if table.completed:
                table.completed.clear()
                if self.on_handshake is not None:
                    self.on_handshake()
                    now = self.loop.seconds()

    def doWrite(self) -> None:
        """
        Send what waited for room in the send buffer.
        """
        backlog = self._backlog
        send = self.capture.send
        while backlog:
            packet, address = backlog[0]
            try:
                send(packet, address)
            except BlockingIOError:
                return
            except OSError as failure:
                self._sendFailed(failure)
            backlog.popleft()
        self._writing = False
        self.loop.remove_writer(self._fd)
        self._setCongested(False)

    # -- sending ---------------------------------------------------------

    def sockaddr(self, packed: bytes) -> tuple:
        """
        The raw-socket destination for a packed remote address (cached).
        """
        address = self._addresses.get(packed)
        if address is None:
            if len(self._addresses) > 65536:
                self._addresses.clear()
            address = self._addresses[packed] = sockaddr(self.family, packed)
        return address

    def transmit(self, packet: bytes, address: tuple) -> None:
        """
        Send one packet now, or queue it behind packets still waiting.
        """
        if self._closed:
            return
        backlog = self._backlog
        if not backlog:
            try:
                self.capture.send(packet, address)
                return
            except BlockingIOError:
                pass
            except OSError as failure:
                self._sendFailed(failure)
                return
        if len(backlog) >= self.backlogLimit:
            self.drops["send-backlog-full"] += 1
            return
        backlog.append((packet, address))
        if not self._writing:
            self._writing = True
            self.loop.add_writer(self._fd, self.doWrite)
        if len(backlog) >= self.backlogHighWater:
            self._setCongested(True)

    @property
    def backlog_bytes(self) -> int:
        """
        Bytes of the packets waiting for room in the send buffer.
        """
        backlog = self._backlog
        return sum(len(packet) for packet, _address in backlog) if backlog else 0

    def _sendFailed(self, failure: OSError) -> None:
        reason = errno.errorcode.get(failure.errno or 0, "send-error").lower()
        self.drops[f"send-{reason}"] += 1

    def _setCongested(self, congested: bool) -> None:
        if congested is self.congested:
            return
        self.congested = congested
        for connection in list(self.transports.values()):
            connection.congestion_changed(congested)

    def count_drop(self, reason: str) -> None:
        """
        Count one datagram dropped for C{reason}.
        """
        self.drops[reason] += 1

    # -- flows -----------------------------------------------------------

    def attach(self, connection: FlowConnection) -> None:
        """
        Route the segments of C{connection}'s flow to it.
        """
        self.transports[connection.flow.key] = connection

    def detach(self, connection: FlowConnection) -> None:
        """
        Stop routing to C{connection}; its flow enters time-wait and its
        kernel socket is closed when time-wait ends.
        """
        key = connection.flow.key
        if self.transports.get(key) is connection:
            del self.transports[key]
        now = self.loop.seconds()
        self.table.retire(connection.flow, now)
        self._closing_sockets.append(
            (now + self.table.limits.time_wait, connection.socket, connection.on_socket_closed)
        )
        if self.on_released is not None:
            self.on_released()

    def wait_for(self, waiter: Callable[[], bool]) -> None:
        """
        Call C{waiter} after each batch of packets until it returns true
        (used to finish adoptions whose handshake the capture has not read
        yet).
        """
        self._waiters.append(waiter)

    def _tick(self) -> None:
        now = self.loop.seconds()
        self._timer = self.loop.call_later(self.tickInterval, self._tick)
        for flow in self.table.expire(now):
            connection = self.transports.get(flow.key)
            if connection is not None:
                connection.expired()
        for connection in list(self.transports.values()):
            if connection.flow.pending:
                connection.flush_pending()
            kernel.drain(connection.socket)
        closing = self._closing_sockets
        while closing and closing[0][0] <= now:
            self._closeKernelSocket(*closing.popleft()[1:])
        if self._waiters:
            self._waiters = [waiter for waiter in self._waiters if not waiter()]

    def close(self) -> None:
        """
        Stop reading, close every kernel socket still held, then the
        capture.  The caller removes the silencing rule afterwards.
        """
        if self._closed or self._closing:
            return
        self._closing = True
        for connection in list(self.transports.values()):
            connection.capture_closed()
        self.loop.remove_reader(self._fd)
        if self._writing:
            self.loop.remove_writer(self._fd)
            self._writing = False
        self._closed = True
        if self._timer.active():
            self._timer.cancel()
        while self._closing_sockets:
            self._closeKernelSocket(*self._closing_sockets.popleft()[1:])
        self._backlog.clear()
        self.capture.close()

    def _closeKernelSocket(self, sock: socket.socket, closed: Callable[[], None] | None) -> None:
        kernel.close_silently(sock)
        if closed is not None:
            try:
                closed()
            except Exception:
                log.exception("error after closing a kernel socket")
