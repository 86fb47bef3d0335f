# -*- test-case-name: tests.test_integration -*-
"""
The Twisted transport of one fake-TCP connection.

Writes become segments at once (one write of at most one MSS is one
segment, larger writes are split at the MSS); segments from the peer become
C{dataReceived} calls, one per segment, in the order the network delivered
them.  The capture is shared with other connections, so pausing this
transport as a producer cannot stop the socket: this connection's data is
queued, up to a bound, and dropped past it.
"""

from __future__ import annotations

import socket
from collections import deque
from typing import TYPE_CHECKING, Any

from twisted.internet import error
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import (
    IConsumer,
    IHalfCloseableProtocol,
    IProtocol,
    IPushProducer,
    ISystemHandle,
    ITCPTransport,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .flow import EndReason, Flow, FlowState
from .segment import FIN, RST, Segment

if TYPE_CHECKING:
    from .demux import Demultiplexer


def address_of(packed: bytes, port: int) -> IPv4Address | IPv6Address:
    """
    The Twisted address (type C{"TCP"}) of a packed IP address and port.
    """
    if len(packed) == 4:
        return IPv4Address("TCP", socket.inet_ntop(socket.AF_INET, packed), port)
    return IPv6Address("TCP", socket.inet_ntop(socket.AF_INET6, packed), port)


@implementer(ITCPTransport, ISystemHandle, IConsumer, IPushProducer)
class FakeTCPTransport:
    """
    One connection: a flow of a shared capture, and its silenced kernel
    socket.

    @ivar protocol: the protocol this transport drives.
    @ivar flow: the flow's sans-IO state.
    @ivar connected: whether the connection is still up.
    @ivar disconnecting: whether L{loseConnection} was called.
    """

    log = Logger()

    #: Most datagrams queued while the protocol has paused this transport;
    #: past it, further datagrams are dropped (as a full UDP buffer would).
    pausedQueueLimit = 1024

    def __init__(
        self,
        demux: Demultiplexer,
        flow: Flow,
        kernel_socket: socket.socket,
        protocol: IProtocol | None = None,
    ) -> None:
        self._demux = demux
        self.reactor = demux.reactor
        self.flow = flow
        self.socket = kernel_socket
        self.protocol: Any = protocol
        key = flow.key
        self._host = address_of(key.local_addr, key.local_port)
        self._peer = address_of(key.remote_addr, key.remote_port)
        self._destination = demux.sockaddr(key.remote_addr)
        self.connected = False
        self.disconnecting = False
        self.disconnected = False
        self._reading_paused = False
        self._paused_queue: deque[bytes] = deque()
        self.producer: Any = None
        self.streamingProducer = False
        self.keepalive_interval = flow.keepalive_interval
        #: Data segments that arrived before adoption, delivered after
        #: makeConnection.
        self.early: list[Segment] = []
        #: Called once the kernel socket is closed (after time-wait).
        self.on_socket_closed: Any = None

    # -- life cycle ------------------------------------------------------

    def makeConnection(self, protocol: IProtocol) -> None:
        """
        Attach the protocol and tell it the connection is made.
        """
        self.protocol = protocol
        self.connected = True
        protocol.makeConnection(self)

    def refuse(self) -> None:
        """
        Reset a flow no protocol was made for (the factory said no).
        """
        self._send(self.flow.reset(self.reactor.seconds()))
        self.disconnected = True
        self._demux.detach(self)

    def _segmentReceived(self, segment: Segment, now: float) -> None:
        flow = self.flow
        payload = flow.receive(segment, now)
        if flow.pending:
            self._flushPending()
        if payload:
            if self._reading_paused:
                if len(self._paused_queue) < self.pausedQueueLimit:
                    self._paused_queue.append(payload)
                else:
                    self._demux.count_drop("paused-overflow")
            else:
                self._deliver(payload)
        if segment.flags & (FIN | RST) and self.connected:
            self._peerEnded()

    def _deliver(self, payload: bytes) -> None:
        try:
            self.protocol.dataReceived(payload)
        except Exception:
            # One protocol's failure loses its own connection only.
            failure = Failure()
            self.log.failure("Unhandled error in dataReceived of {protocol!r}", failure, protocol=self.protocol)
            if self.connected:
                self._send(self.flow.reset(self.reactor.seconds()))
                self._connectionLost(failure)

    def _peerEnded(self) -> None:
        flow = self.flow
        if flow.end_reason is EndReason.PEER_RST:
            self._connectionLost(Failure(error.ConnectionLost("connection reset by peer")))
        elif flow.state is FlowState.READ_CLOSED:
            if IHalfCloseableProtocol.providedBy(self.protocol):
                try:
                    self.protocol.readConnectionLost()
                except Exception:
                    self._deliverFailed()
            else:
                self.loseConnection()
        elif flow.state is FlowState.CLOSED:
            self._connectionLost(Failure(error.ConnectionDone("connection closed by peer")))

    def _deliverFailed(self) -> None:
        failure = Failure()
        self.log.failure("Unhandled error in {protocol!r}", failure, protocol=self.protocol)
        if self.connected:
            self._send(self.flow.reset(self.reactor.seconds()))
            self._connectionLost(failure)

    def _expired(self) -> None:
        """
        The flow was idle for too long (the demultiplexer's timer said so).
        """
        self._connectionLost(Failure(error.TimeoutError("fake-TCP flow idle for too long")))

    def _connectionLost(self, reason: Failure) -> None:
        if self.disconnected:
            return
        self.connected = False
        self.disconnected = True
        if self.flow.state is not FlowState.CLOSED:
            self.flow._end(EndReason.LOCAL_FIN)
        self._paused_queue.clear()
        self._demux.detach(self)
        producer, self.producer = self.producer, None
        if producer is not None:
            try:
                producer.stopProducing()
            except Exception:
                self.log.failure("Error stopping producer {producer!r}", producer=producer)
        protocol = self.protocol
        try:
            protocol.connectionLost(reason)
        except Exception:
            self.log.failure("Unhandled error in connectionLost of {protocol!r}", protocol=protocol)

    # -- sending ---------------------------------------------------------

    def _send(self, packet: bytes) -> None:
        self._demux.transmit(packet, self._destination)

    def _flushPending(self) -> None:
        pending = self.flow.pending
        for packet in pending:
            self._send(packet)
        pending.clear()

    def write(self, data: bytes) -> None:
        """
        Send C{data} as one datagram per MSS-sized piece.
        """
        flow = self.flow
        if not self.connected or self.disconnecting or not flow.can_send:
            return
        if not isinstance(data, bytes):
            raise TypeError(f"Data must be bytes, not {type(data).__name__}")
        if not data:
            return
        now = self.reactor.seconds()
        mss = flow.mss
        if len(data) <= mss:
            packet = flow.send(data, now)
            if packet is not None:
                self._send(packet)
            return
        view = memoryview(data)
        for start in range(0, len(data), mss):
            packet = flow.send(bytes(view[start : start + mss]), now)
            if packet is not None:
                self._send(packet)

    def writeSequence(self, data: list[bytes]) -> None:
        """
        Send the concatenation of C{data}, as L{write} would.
        """
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        """
        Send FIN and close; the peer sees C{connectionLost(ConnectionDone)}.
        """
        if not self.connected or self.disconnecting:
            return
        self.disconnecting = True
        flow = self.flow
        if flow.can_send:
            self._send(flow.finish(self.reactor.seconds()))
        self.reactor.callLater(
            0, self._connectionLost, Failure(error.ConnectionDone("connection closed cleanly"))
        )

    def loseWriteConnection(self) -> None:
        """
        Send FIN and keep receiving until the peer closes too.
        """
        if not self.connected or self.disconnecting or not self.flow.can_send:
            return
        self._send(self.flow.finish(self.reactor.seconds()))
        if self.flow.state is FlowState.CLOSED:
            self.disconnecting = True
            self.reactor.callLater(
                0, self._connectionLost, Failure(error.ConnectionDone("connection closed cleanly"))
            )

    def abortConnection(self) -> None:
        """
        Send RST and close at once; the peer sees C{ConnectionLost}.
        """
        if not self.connected:
            return
        self.disconnecting = True
        self._send(self.flow.reset(self.reactor.seconds()))
        self.reactor.callLater(
            0, self._connectionLost, Failure(error.ConnectionAborted("connection aborted"))
        )

    # -- addresses and options -------------------------------------------

    def getHost(self) -> IPv4Address | IPv6Address:
        """
        This side's address, of type C{"TCP"}.
        """
        return self._host

    def getPeer(self) -> IPv4Address | IPv6Address:
        """
        The peer's address, of type C{"TCP"}.
        """
        return self._peer

    def getHandle(self) -> socket.socket:
        """
        The silenced kernel socket of the connection.
        """
        return self.socket

    def getTcpNoDelay(self) -> bool:
        """
        Always true: every write is sent at once.
        """
        return True

    def setTcpNoDelay(self, enabled: bool) -> None:
        """
        Ignored: there is no coalescing to turn off.
        """

    def getTcpKeepAlive(self) -> bool:
        """
        Whether bare-ACK keepalives are sent on an idle flow.
        """
        return bool(self.flow.keepalive_interval)

    def setTcpKeepAlive(self, enabled: bool) -> None:
        """
        Turn keepalives on (with the demultiplexer's default interval) or off.
        """
        self.flow.keepalive_interval = (
            (self.keepalive_interval or self._demux.options.default_keepalive) if enabled else 0.0
        )

    # -- producer and consumer -------------------------------------------

    def pauseProducing(self) -> None:
        """
        Stop delivering data to the protocol; it is queued meanwhile.
        """
        self._reading_paused = True

    def resumeProducing(self) -> None:
        """
        Deliver what was queued, then go on delivering.
        """
        self._reading_paused = False
        queue = self._paused_queue
        while queue and not self._reading_paused and self.connected:
            self._deliver(queue.popleft())

    def stopProducing(self) -> None:
        """
        Close the connection, as Twisted's TCP transports do.
        """
        self.loseConnection()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        """
        Register a producer of data for this transport.
        """
        if self.producer is not None:
            raise RuntimeError(
                f"Cannot register producer {producer!r}, because producer "
                f"{self.producer!r} was never unregistered."
            )
        if self.disconnected:
            producer.stopProducing()
            return
        self.producer = producer
        self.streamingProducer = streaming
        if not streaming:
            # Writes are sent at once, so a pull producer may always go on.
            self.reactor.callLater(0, self._pullMore)
        elif self._demux.congested:
            producer.pauseProducing()

    def _pullMore(self) -> None:
        if self.producer is not None and not self.streamingProducer and self.connected:
            self.producer.resumeProducing()
            if self.producer is not None and not self._demux.congested:
                self.reactor.callLater(0, self._pullMore)

    def unregisterProducer(self) -> None:
        """
        Forget the producer.
        """
        self.producer = None

    def _congestionChanged(self, congested: bool) -> None:
        producer = self.producer
        if producer is None or not self.streamingProducer:
            if producer is not None and not congested:
                self.reactor.callLater(0, self._pullMore)
            return
        if congested:
            producer.pauseProducing()
        else:
            producer.resumeProducing()

    def logPrefix(self) -> str:
        """
        The prefix of log lines about this connection.
        """
        return f"FakeTCP {self._peer.host}:{self._peer.port}"

    def __repr__(self) -> str:
        return f"<FakeTCPTransport {self._host.host}:{self._host.port} <-> {self._peer.host}:{self._peer.port}>"
