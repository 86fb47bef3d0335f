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
from typing import Any

from twisted.internet import error
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import (
    IConsumer,
    IHalfCloseableProtocol,
    IPushProducer,
    ISystemHandle,
    ITCPTransport,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..engine.connection import Ending, FlowConnection
from ..engine.demux import Demultiplexer
from ..core.flow import Flow


def address_of(host: str, port: int) -> IPv4Address | IPv6Address:
    """
    The Twisted address (type C{"TCP"}) of a text address and port.
    """
    if ":" in host:
        return IPv6Address("TCP", host, port)
    return IPv4Address("TCP", host, port)


_REASONS: dict[Ending, type[Exception]] = {
    Ending.DONE: error.ConnectionDone,
    Ending.RESET: error.ConnectionLost,
    Ending.ABORTED: error.ConnectionAborted,
    Ending.TIMEOUT: error.TimeoutError,
    Ending.CAPTURE_CLOSED: error.ConnectionLost,
}

_WORDS = {
    Ending.DONE: "connection closed cleanly",
    Ending.RESET: "connection reset by peer",
    Ending.ABORTED: "connection aborted",
    Ending.TIMEOUT: "fake-TCP flow idle for too long",
    Ending.CAPTURE_CLOSED: "the fake-TCP capture was closed",
}


@implementer(ITCPTransport, ISystemHandle, IConsumer, IPushProducer)
class FakeTCPTransport(FlowConnection):
    """
    One connection, as a Twisted transport.

    @ivar protocol: the protocol this transport drives.
    @ivar connected: whether the connection is up.
    @ivar disconnecting: whether L{loseConnection} was called.
    """

    log = Logger()

    def __init__(self, demux: Demultiplexer, flow: Flow, kernel_socket: socket.socket) -> None:
        super().__init__(demux, flow, kernel_socket)
        self.protocol: Any = None
        self.connected = False
        self.disconnecting = False
        self.disconnected = False
        self.producer: Any = None
        self.streamingProducer = False
        self._keepalive_default = flow.keepalive_interval or demux.options.default_keepalive

    # -- life cycle ------------------------------------------------------

    def makeConnection(self, protocol: Any) -> None:
        """
        Attach the protocol, tell it the connection is made, and deliver
        what arrived before adoption.
        """
        self.protocol = protocol
        self.connected = True
        protocol.makeConnection(self)
        self.start()

    def _deliver(self, payload: bytes) -> None:
        try:
            self.protocol.dataReceived(payload)
        except Exception:
            self._protocolFailed("dataReceived")

    def _protocolFailed(self, callback: str) -> None:
        # One protocol's failure loses its own connection only.
        failure = Failure()
        self.log.failure("Unhandled error in {callback} of {protocol!r}", failure, callback=callback, protocol=self.protocol)
        if not self.ended:
            self.send_rst()
            self.end(Ending.FAILED, failure)

    def _peerFinished(self) -> None:
        if IHalfCloseableProtocol.providedBy(self.protocol):
            try:
                self.protocol.readConnectionLost()
            except Exception:
                self._protocolFailed("readConnectionLost")
        else:
            self.loseConnection()

    def _ended(self, ending: Ending, failure: object) -> None:
        self.connected = False
        self.disconnected = True
        producer, self.producer = self.producer, None
        if producer is not None:
            try:
                producer.stopProducing()
            except Exception:
                self.log.failure("Error stopping producer {producer!r}", producer=producer)
        if ending is Ending.FAILED and isinstance(failure, Failure):
            reason = failure
        else:
            reason = Failure(_REASONS[ending](_WORDS[ending]))
        protocol = self.protocol
        if protocol is None:
            return
        try:
            protocol.connectionLost(reason)
        except Exception:
            self.log.failure("Unhandled error in connectionLost of {protocol!r}", protocol=protocol)

    # -- ITransport ------------------------------------------------------

    def write(self, data: bytes) -> None:
        """
        Send C{data} as one datagram per MSS-sized piece.
        """
        if not isinstance(data, bytes):
            raise TypeError(f"Data must be bytes, not {type(data).__name__}")
        if self.connected and not self.disconnecting:
            self.send(data)

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
        self.send_fin()
        self.end_soon(Ending.DONE)

    def loseWriteConnection(self) -> None:
        """
        Send FIN and keep receiving until the peer closes too.
        """
        if not self.connected or self.disconnecting or not self.flow.can_send:
            return
        if self.send_fin():
            self.disconnecting = True
            self.end_soon(Ending.DONE)

    def abortConnection(self) -> None:
        """
        Send RST and close at once; the peer sees C{ConnectionLost}.
        """
        if not self.connected:
            return
        self.disconnecting = True
        self.send_rst()
        self.end_soon(Ending.ABORTED)

    def getHost(self) -> IPv4Address | IPv6Address:
        """
        This side's address, of type C{"TCP"}.

        Made on each call, as Twisted's TCP transports make theirs: kept,
        the two addresses cost an idle flow 190 bytes.
        """
        return address_of(*self.local_address)

    def getPeer(self) -> IPv4Address | IPv6Address:
        """
        The peer's address, of type C{"TCP"} (made on each call).
        """
        return address_of(*self.remote_address)

    # -- ITCPTransport and ISystemHandle ----------------------------------

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
        Turn keepalives on (at the connection's or the default interval) or off.
        """
        self.flow.keepalive_interval = self._keepalive_default if enabled else 0.0

    # -- producer and consumer -------------------------------------------

    def pauseProducing(self) -> None:
        """
        Stop delivering data to the protocol; it is queued meanwhile.
        """
        self.pause_reading()

    def resumeProducing(self) -> None:
        """
        Deliver what was queued, then go on delivering.
        """
        self.resume_reading()

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
            self.loop.call_later(0, self._pullMore)
        elif self.demux.congested:
            producer.pauseProducing()

    def _pullMore(self) -> None:
        if self.producer is not None and not self.streamingProducer and self.connected:
            self.producer.resumeProducing()
            if self.producer is not None and not self.demux.congested:
                self.loop.call_later(0, self._pullMore)

    def unregisterProducer(self) -> None:
        """
        Forget the producer.
        """
        self.producer = None

    def _congestion(self, congested: bool) -> None:
        producer = self.producer
        if producer is None:
            return
        if not self.streamingProducer:
            if not congested:
                self.loop.call_later(0, self._pullMore)
        elif congested:
            producer.pauseProducing()
        else:
            producer.resumeProducing()

    def logPrefix(self) -> str:
        """
        The prefix of log lines about this connection.
        """
        return "FakeTCP %s:%d" % self.remote_address

    def __repr__(self) -> str:
        return "<FakeTCPTransport %s:%d <-> %s:%d>" % (*self.local_address, *self.remote_address)
