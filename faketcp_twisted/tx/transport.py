# -*- test-case-name: tests.test_integration -*-
"""
The Twisted transport of one fake-TCP connection.

Writes become segments at once (one write of at most one MSS is one
segment, larger writes are split at the MSS); segments from the peer become
C{dataReceived} calls, one per segment, in the order the network delivered
them.  The capture is shared with other connections, so pausing this
transport as a producer cannot stop the socket: this connection's data is
queued, up to a bound, and dropped past it.

The transport holds the engine's L{FlowConnection} rather than being one:
it drives the connection through its public methods, and the connection
tells it of its events through the C{Face} contract (see
L{faketcp_twisted.engine.contracts}).
"""

from __future__ import annotations

import socket
from collections import Counter
from typing import Any

from twisted.internet import error
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import (
    IConsumer,
    IHalfCloseableProtocol,
    ILoggingContext,
    IPushProducer,
    ISystemHandle,
    ITCPTransport,
)
from twisted.logger import Logger
from twisted.python import context
from twisted.python.failure import Failure
from twisted.python.log import ILogContext
from zope.interface import implementer

from ..core.flow import Flow
from ..engine.connection import Ending, FlowConnection

__all__ = ["FakeTCPTransport", "address_of", "connect_protocol", "log_prefix_of"]


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


def connect_protocol(connection: FlowConnection, factory: Any) -> Any:
    """
    Serve a new connection: build the protocol of C{factory} (an
    C{IProtocolFactory}) for its peer and connect the two through a
    L{FakeTCPTransport}, or reset the connection when the factory builds
    none.

    @return: the protocol, or L{None} when the factory built none.
    """
    protocol = factory.buildProtocol(address_of(*connection.remote_address))
    if protocol is None:
        connection.refuse()
        return None
    FakeTCPTransport(connection)._attach(protocol)
    return protocol


def log_prefix_of(thing: Any) -> str:
    """
    What Twisted logs a protocol's (or factory's) doings under: its
    C{logPrefix()} when it provides L{ILoggingContext}, else its class
    name.
    """
    if ILoggingContext.providedBy(thing):
        return str(thing.logPrefix())
    return type(thing).__name__


@implementer(ITCPTransport, ISystemHandle, IConsumer, IPushProducer)
class FakeTCPTransport:
    """
    One connection, as a Twisted transport.

    Besides its interfaces, it offers L{connection}, L{flow},
    L{capture_drops} and L{send_datagrams} (for the relay, tests and
    diagnostics), and the C{Face} methods its connection calls
    (L{deliver}, L{peer_finished}, L{connection_ended},
    L{congestion_changed}), which protocols do not.

    @ivar protocol: the protocol this transport drives.
    @ivar connected: whether the connection is up.
    @ivar disconnecting: whether L{loseConnection} was called.
    @ivar disconnected: whether the connection is over.
    @ivar producer: the registered producer, if any.
    @ivar streamingProducer: whether L{producer} is a push producer.
    """

    log = Logger()

    def __init__(self, connection: FlowConnection) -> None:
        """
        @param connection: the engine's connection, which this transport
            binds itself to (as its face).
        """
        self._connection = connection
        self.protocol: Any = None
        self.connected = False
        self.disconnecting = False
        self.disconnected = False
        self.producer: Any = None
        self.streamingProducer = False
        # loseConnection() was called with a producer registered: the FIN
        # waits until the producer is unregistered (Twisted's rule).
        self._closeWhenUnregistered = False
        # The log context of the protocol's callbacks (see logPrefix),
        # made once the protocol is known.
        self._logContext: dict[Any, dict[str, str]] = {ILogContext: {"system": "-"}}
        self._keepalive_default = connection.flow.keepalive_interval or connection.options.default_keepalive
        connection.bind(self)

    @property
    def connection(self) -> FlowConnection:
        """
        The engine's connection under this transport.
        """
        return self._connection

    @property
    def flow(self) -> Flow:
        """
        The connection's sans-IO flow: its MSS, its counters (what the relay
        reads; not part of L{ITCPTransport}).
        """
        return self._connection.flow

    @property
    def capture_drops(self) -> Counter[str]:
        """
        The drop counters, by reason, of the capture this connection's
        segments arrive on (shared with its other connections): what the
        relay reports of segments that never reach a transport.
        """
        return self._connection.demux.drops

    # -- life cycle ------------------------------------------------------

    def _attach(self, protocol: Any) -> None:
        """
        Attach the protocol, tell it the connection is made, and deliver
        what arrived before adoption (see L{connect_protocol}).
        """
        self.protocol = protocol
        self.connected = True
        self._logContext = {ILogContext: {"system": self._makeLogPrefix()}}
        context.call(self._logContext, protocol.makeConnection, self)
        self._connection.start()

    def _makeLogPrefix(self) -> str:
        # As Twisted's TCP connections: the protocol's prefix, then this
        # transport's kind and the peer's address.
        host, port = self._connection.remote_address
        return f"{log_prefix_of(self.protocol)},faketcp,{host}:{port}"

    def _protocolFailed(self, callback: str) -> None:
        # One protocol's failure loses its own connection only.
        failure = Failure()
        self.log.failure(
            "Unhandled error in {callback} of {protocol!r}", failure, callback=callback, protocol=self.protocol
        )
        connection = self._connection
        if not connection.ended:
            connection.send_rst()
            connection.end(Ending.FAILED, failure)

    # -- Face: what the connection tells this transport ------------------

    def deliver(self, payload: bytes) -> None:
        """
        Hand one datagram from the peer to the protocol (the connection's
        call, not the protocol's).
        """
        try:
            context.call(self._logContext, self.protocol.dataReceived, payload)
        except Exception:
            self._protocolFailed("dataReceived")

    def peer_finished(self) -> None:
        """
        The peer sent FIN: a half-closeable protocol is told, any other
        protocol's connection is closed.
        """
        if IHalfCloseableProtocol.providedBy(self.protocol):
            try:
                context.call(self._logContext, self.protocol.readConnectionLost)
            except Exception:
                self._protocolFailed("readConnectionLost")
        elif self._closeWhenUnregistered:
            # The peer closed: as with Twisted's TCP, the connection is
            # over without waiting for the producer any longer.
            self._closeWhenUnregistered = False
            self._finish()
        else:
            self.loseConnection()

    def connection_ended(self, ending: Ending, failure: object) -> None:
        """
        The connection is over: stop the producer, tell the protocol
        C{connectionLost} with the reason for C{ending}.
        """
        self.connected = False
        self.disconnected = True
        self._closeWhenUnregistered = False
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
            context.call(self._logContext, protocol.connectionLost, reason)
        except Exception:
            self.log.failure("Unhandled error in connectionLost of {protocol!r}", protocol=protocol)

    def congestion_changed(self, congested: bool) -> None:
        """
        The capture's shared send backlog crossed its high-water mark, or
        drained: pause or resume the producer (a C{Face} method).
        """
        producer = self.producer
        if producer is None:
            return
        if not self.streamingProducer:
            if not congested:
                self._connection.loop.call_later(0, self._pullMore)
        elif congested:
            producer.pauseProducing()
        else:
            producer.resumeProducing()

    # -- ITransport ------------------------------------------------------

    def write(self, data: bytes) -> None:
        """
        Send C{data} as one datagram per MSS-sized piece.
        """
        if not isinstance(data, bytes):
            raise TypeError(f"Data must be bytes, not {type(data).__name__}")
        # (Once FIN or RST is sent, the flow sends nothing more; before,
        # while a close waits for the producer, writes still go out.)
        if self.connected:
            self._connection.send(data)

    def writeSequence(self, data: list[bytes]) -> None:
        """
        Send the concatenation of C{data}, as L{write} would.
        """
        for item in data:
            if not isinstance(item, bytes):
                raise TypeError("Data must be bytes")
        self.write(b"".join(data))

    def send_datagrams(self, datagrams: list[bytes]) -> None:
        """
        Send each of C{datagrams} as one segment, with the per-call work
        done once for the batch (the relay's path; not part of
        L{ITCPTransport}).  See L{FlowConnection.send_datagrams}.

        @raise ValueError: for a datagram larger than the MSS (those before
            it were sent).
        """
        self._connection.send_datagrams(datagrams)

    def loseConnection(self) -> None:
        """
        Send FIN and close; the peer sees C{connectionLost(ConnectionDone)}.
        With a producer registered, the close waits until it is
        unregistered, as with Twisted's TCP.
        """
        if not self.connected or self.disconnecting:
            return
        self.disconnecting = True
        if self.producer is not None:
            self._closeWhenUnregistered = True
            return
        self._finish()

    def _finish(self) -> None:
        connection = self._connection
        connection.send_fin()
        # Twisted's TCP calls connectionLost from doWrite, after the
        # reactor's next poll; a call_later(0) alone runs before that poll.
        # Two make what the poll brings come first: the peer accepting a
        # connection closed straight from connectionMade, say (Twisted's
        # own tests expect the peer's protocol to exist by then).
        connection.loop.call_later(0, connection.end_soon, Ending.DONE)

    def loseWriteConnection(self) -> None:
        """
        Send FIN and keep receiving until the peer closes too.  A
        half-closeable protocol's C{writeConnectionLost} follows on the
        next turn, as with Twisted's TCP.
        """
        connection = self._connection
        if not self.connected or self.disconnecting or not connection.flow.can_send:
            return
        closed = connection.send_fin()
        if closed:
            self.disconnecting = True
        # Twisted's TCP calls writeConnectionLost from doWrite, once its
        # buffer is written and the socket shut down: never from inside
        # this call.  Writes leave at once here, so the next turn will do.
        # (One call, not two, for a flow now closed both ways: the
        # protocol hears of the write side before connectionLost.)
        connection.loop.call_later(0, self._writeClosed, closed)

    def _writeClosed(self, closed: bool) -> None:
        if self.connected and IHalfCloseableProtocol.providedBy(self.protocol):
            try:
                context.call(self._logContext, self.protocol.writeConnectionLost)
            except Exception:
                self._protocolFailed("writeConnectionLost")
        if closed:
            self._connection.end(Ending.DONE)

    def abortConnection(self) -> None:
        """
        Send RST and close at once; the peer sees C{ConnectionLost}.
        """
        if not self.connected:
            return
        self.disconnecting = True
        self._closeWhenUnregistered = False
        self._connection.abort_soon()

    def getHost(self) -> IPv4Address | IPv6Address:
        """
        This side's address, of type C{"TCP"}.

        Made on each call, as Twisted's TCP transports make theirs: kept,
        the two addresses cost an idle flow 190 bytes.
        """
        return address_of(*self._connection.local_address)

    def getPeer(self) -> IPv4Address | IPv6Address:
        """
        The peer's address, of type C{"TCP"} (made on each call).
        """
        return address_of(*self._connection.remote_address)

    # -- ITCPTransport and ISystemHandle ----------------------------------

    def getHandle(self) -> socket.socket:
        """
        The silenced kernel socket of the connection.
        """
        return self._connection.socket

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
        return bool(self._connection.flow.keepalive_interval)

    def setTcpKeepAlive(self, enabled: bool) -> None:
        """
        Turn keepalives on (at the connection's or the default interval) or off.
        """
        self._connection.flow.keepalive_interval = self._keepalive_default if enabled else 0.0

    # -- producer and consumer -------------------------------------------

    def pauseProducing(self) -> None:
        """
        Stop delivering data to the protocol; it is queued meanwhile.
        """
        self._connection.pause_delivery()

    def resumeProducing(self) -> None:
        """
        Deliver what was queued, then go on delivering.
        """
        self._connection.resume_delivery()

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
                f"Cannot register producer {producer!r}, because producer {self.producer!r} was never unregistered."
            )
        if self.disconnected:
            producer.stopProducing()
            return
        self.producer = producer
        self.streamingProducer = streaming
        if not streaming:
            # Writes are sent at once, so a pull producer may always go on.
            self._connection.loop.call_later(0, self._pullMore)
        elif self._connection.congested:
            producer.pauseProducing()

    def _pullMore(self) -> None:
        if self.producer is not None and not self.streamingProducer and self.connected:
            self.producer.resumeProducing()
            if self.producer is not None and not self._connection.congested:
                self._connection.loop.call_later(0, self._pullMore)

    def unregisterProducer(self) -> None:
        """
        Forget the producer; a L{loseConnection} that waited for it now
        closes.
        """
        self.producer = None
        if self._closeWhenUnregistered:
            self._closeWhenUnregistered = False
            if self.connected:
                self._finish()

    def logPrefix(self) -> str:
        """
        The prefix of log lines about this connection, which its
        protocol's callbacks are logged under: the protocol's own prefix
        (L{ILoggingContext}, else its class name), C{faketcp} and the
        peer's address, e.g. C{"Echo,faketcp,198.18.0.1:40000"}.
        """
        if self.protocol is None:
            host, port = self._connection.remote_address
            return f"FakeTCP {host}:{port}"
        return self._logContext[ILogContext]["system"]

    def __repr__(self) -> str:
        (local, local_port), (remote, remote_port) = self._connection.local_address, self._connection.remote_address
        return f"<FakeTCPTransport {local}:{local_port} <-> {remote}:{remote_port}>"
