"""
The faces hold the engine's connection rather than being one: a public
transport offers its interfaces and a few documented extras, nothing of
the engine; and the Twisted transport works over a L{FlowConnection}
driven in memory, through the engine's contracts alone (no root, no
network).
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IConsumer,
    IHalfCloseableProtocol,
    ILoggingContext,
    IPushProducer,
    ISystemHandle,
    ITCPTransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.python import context
from twisted.python.failure import Failure
from twisted.python.log import ILogContext
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from faketcp_twisted.aio.transport import AioTransport
from faketcp_twisted.core.flow import Flow, FlowKey
from faketcp_twisted.core.segment import FIN, RST, parse_packet
from faketcp_twisted.core.table import Role
from faketcp_twisted.engine.connection import FlowConnection
from faketcp_twisted.tx.transport import FakeTCPTransport, connect_protocol
from tests.test_auth import _Demux, _Loop
from tests.test_flow import CLIENT_ADDR, CLIENT_ISN, CLIENT_PORT, MSS, SERVER_ADDR, SERVER_ISN, SERVER_PORT

#: What a connection calls on the face that holds it (the Face contract).
FACE = {"deliver", "peer_finished", "connection_ended", "congestion_changed"}


def public_names(cls: type) -> set[str]:
    return {name for name in dir(cls) if not name.startswith("_")}


class SurfaceTests(SynchronousTestCase):
    """
    A public transport's names are its interfaces', the L{Face} methods and
    the documented extras: no engine method is inherited.
    """

    def test_twistedTransport(self) -> None:
        """
        L{FakeTCPTransport}: the interfaces it declares, plus L{Face}, plus
        C{connection}, C{flow}, C{capture_drops} and C{send_datagrams}.
        """
        declared: set[str] = set()
        for interface in (ITCPTransport, ISystemHandle, IConsumer, IPushProducer, ILoggingContext):
            declared.update(interface.names(all=True))
        extras = public_names(FakeTCPTransport) - declared - FACE
        self.assertEqual(extras, {"connection", "flow", "capture_drops", "send_datagrams", "log"})

    def test_asyncioTransport(self) -> None:
        """
        L{AioTransport}: C{asyncio.Transport}'s API, plus L{Face}, plus
        C{connection} and C{flow}.
        """
        extras = public_names(AioTransport) - public_names(asyncio.Transport) - FACE
        self.assertEqual(extras, {"connection", "flow", "drainPollInterval"})

    def test_noEngineMethods(self) -> None:
        """
        The engine connection's own methods (sending, ending, pausing
        delivery, authenticating) are on neither transport: the names they
        share are the flow, the congestion event, the relay's batch send,
        and asyncio's own C{abort}.
        """
        engine = public_names(FlowConnection)
        self.assertEqual(engine & public_names(FakeTCPTransport), {"flow", "congestion_changed", "send_datagrams"})
        self.assertEqual(engine & public_names(AioTransport), {"flow", "congestion_changed", "abort"})


class _Recorder(Protocol):
    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.lost: list[Failure] = []
        self.events: list[str] = []

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: Failure) -> None:
        self.lost.append(reason)
        self.events.append("lost")


@implementer(IHalfCloseableProtocol)
class _HalfCloser(_Recorder):
    def readConnectionLost(self) -> None:
        self.events.append("read")

    def writeConnectionLost(self) -> None:
        self.events.append("write")


class TwistedOverEngineTests(SynchronousTestCase):
    """
    The Twisted transport of a server-side L{FlowConnection} whose
    demultiplexer is an in-memory stand-in: what the peer's flow sends is
    delivered, what the protocol writes is transmitted.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.demux = _Demux(_Loop(self.clock), Role.SERVER)
        self.peer = Flow.from_handshake(
            FlowKey(CLIENT_ADDR, CLIENT_PORT, SERVER_ADDR, SERVER_PORT), CLIENT_ISN, SERVER_ISN, MSS, 0.0
        )
        self.connectWith(_Recorder)

    def connectWith(self, protocol: type[Protocol]) -> None:
        """
        Serve the peer's flow with a new connection and a C{protocol}.
        """
        flow = Flow.from_handshake(
            FlowKey(SERVER_ADDR, SERVER_PORT, CLIENT_ADDR, CLIENT_PORT), SERVER_ISN, CLIENT_ISN, MSS, 0.0
        )
        self.connection = FlowConnection(self.demux, flow, socket.socket())
        self.addCleanup(self.connection.socket.close)
        self.protocol: Any = connect_protocol(self.connection, Factory.forProtocol(protocol))
        self.transport = self.protocol.transport

    def fromPeer(self, data: bytes) -> None:
        self.fromPeerPacket(self.peer.send(data, 0.0))

    def fromPeerPacket(self, packet: bytes) -> None:
        self.connection.segment_received(parse_packet(packet), 0.0)

    def test_interfaces(self) -> None:
        """
        The transport the factory's protocol gets provides the interfaces
        Twisted programs use, and holds the connection.
        """
        self.assertIsInstance(self.transport, FakeTCPTransport)
        for interface in (ITCPTransport, ISystemHandle, IConsumer, IPushProducer):
            self.assertTrue(verifyObject(interface, self.transport))
        self.assertIs(self.transport.connection, self.connection)
        self.assertIs(self.transport.flow, self.connection.flow)
        self.assertEqual(self.transport.getPeer().port, CLIENT_PORT)

    def test_datagramsBothWays(self) -> None:
        """
        Each segment from the peer is one C{dataReceived}; each write is
        one packet handed to the demultiplexer.
        """
        self.fromPeer(b"one")
        self.fromPeer(b"two")
        self.assertEqual(self.protocol.received, [b"one", b"two"])
        self.demux.sent.clear()
        self.transport.write(b"three")
        (packet,) = self.demux.sent
        self.assertEqual(parse_packet(packet).payload, b"three")

    def test_pausedProducerQueues(self) -> None:
        """
        A paused transport queues the connection's datagrams and delivers
        them, in order, when resumed.
        """
        self.transport.pauseProducing()
        self.fromPeer(b"held")
        self.assertEqual(self.protocol.received, [])
        self.transport.resumeProducing()
        self.assertEqual(self.protocol.received, [b"held"])

    def test_loseConnection(self) -> None:
        """
        C{loseConnection} sends FIN and ends the connection on the next
        turn: C{connectionLost(ConnectionDone)}, the flow detached.
        """
        self.demux.sent.clear()
        self.transport.loseConnection()
        (fin,) = self.demux.sent
        self.assertTrue(parse_packet(fin).flags & FIN)
        self.assertEqual(self.protocol.lost, [])
        self.clock.advance(0)
        (reason,) = self.protocol.lost
        reason.trap(ConnectionDone)
        self.assertTrue(self.demux.detached)
        self.assertFalse(self.transport.connected)

    def test_abortByOwner(self) -> None:
        """
        The connection's owner aborting it (a port shutting down) reaches
        the protocol through the transport.
        """
        self.connection.abort()
        (reason,) = self.protocol.lost
        reason.trap(ConnectionAborted)

    def test_factoryBuildsNothing(self) -> None:
        """
        A factory that builds no protocol gets the connection refused
        (reset, released), with no transport made.
        """

        class Nothing(Factory):
            def buildProtocol(self, addr: Any) -> None:
                return None

        flow = Flow.from_handshake(
            FlowKey(SERVER_ADDR, SERVER_PORT, CLIENT_ADDR, CLIENT_PORT + 1), SERVER_ISN, CLIENT_ISN, MSS, 0.0
        )
        demux = _Demux(_Loop(self.clock), Role.SERVER)
        connection = FlowConnection(demux, flow, socket.socket())
        self.addCleanup(connection.socket.close)
        self.assertIsNone(connect_protocol(connection, Nothing()))
        self.assertTrue(connection.ended)
        self.assertTrue(demux.detached)


class TwistedContractTests(TwistedOverEngineTests):
    """
    Twisted's transport rules, in memory (the same rules run against real
    fake-TCP connections in L{tests.test_twisted_contract}).
    """

    def _abortingProtocol(self, *then: str) -> None:
        transport = self.transport

        def dataReceived(data: bytes) -> None:
            transport.abortConnection()
            for name in then:
                getattr(transport, name)()

        self.protocol.dataReceived = dataReceived

    def test_abortInDataReceived(self) -> None:
        """
        C{abortConnection()} inside C{dataReceived} ends the connection
        with C{ConnectionAborted}, not C{ConnectionDone}.
        """
        self._abortingProtocol()
        self.fromPeer(b"x")
        self.clock.advance(0)
        (reason,) = self.protocol.lost
        reason.trap(ConnectionAborted)

    def test_abortTwiceOrThenLose(self) -> None:
        """
        A second C{abortConnection()}, or a C{loseConnection()} after it,
        changes nothing: still C{ConnectionAborted}, once.
        """
        for then in ("abortConnection", "loseConnection"):
            self.setUp()
            self._abortingProtocol(then)
            self.fromPeer(b"x")
            self.clock.advance(0)
            (reason,) = self.protocol.lost
            reason.trap(ConnectionAborted)

    def test_loseConnectionWaitsForProducer(self) -> None:
        """
        C{loseConnection()} with a producer registered closes once the
        producer is unregistered, without stopping it; writes go on until.
        """
        stopped: list[bool] = []

        class Producer:
            def pauseProducing(self) -> None:
                pass

            def resumeProducing(self) -> None:
                pass

            def stopProducing(self) -> None:
                stopped.append(True)

        self.transport.registerProducer(Producer(), True)
        self.transport.loseConnection()
        self.demux.sent.clear()
        self.transport.write(b"still")
        self.clock.advance(0)
        self.assertEqual([parse_packet(p).payload for p in self.demux.sent], [b"still"])
        self.assertEqual((self.protocol.lost, stopped), ([], []))
        self.demux.sent.clear()
        self.transport.unregisterProducer()
        (fin,) = self.demux.sent
        self.assertTrue(parse_packet(fin).flags & FIN)
        self.clock.advance(0)
        (reason,) = self.protocol.lost
        reason.trap(ConnectionDone)
        self.assertEqual(stopped, [])

    def test_finWhilePausedAfterQueuedData(self) -> None:
        """
        A FIN that arrives while the transport is paused ends the connection
        only once resumed, after the datagrams that came before it, as
        Twisted's TCP (whose paused transport reads nothing): this side's
        FIN answers it only then.
        """
        self.transport.pauseProducing()
        self.fromPeer(b"held")
        self.fromPeerPacket(self.peer.finish(0.0))
        self.clock.advance(0)
        self.assertEqual((self.protocol.received, self.protocol.lost), ([], []))
        self.assertFalse(any(parse_packet(packet).flags & FIN for packet in self.demux.sent))
        self.transport.resumeProducing()
        self.assertEqual(self.protocol.received, [b"held"])
        self.assertTrue(parse_packet(self.demux.sent[-1]).flags & FIN)
        self.clock.advance(0)
        (reason,) = self.protocol.lost
        reason.trap(ConnectionDone)

    def test_resetWhilePausedAfterQueuedData(self) -> None:
        """
        A RST that arrives while the transport is paused is reported once
        resumed, after the datagrams that came before it, as Twisted's TCP.
        """
        self.transport.pauseProducing()
        self.fromPeer(b"held")
        self.fromPeerPacket(self.peer.reset(0.0))
        self.clock.advance(0)
        self.assertEqual((self.protocol.received, self.protocol.lost), ([], []))
        self.transport.resumeProducing()
        self.assertEqual(self.protocol.received, [b"held"])
        (reason,) = self.protocol.lost
        self.assertIs(reason.type, ConnectionLost)

    def test_resetWhilePausedSeenOnWrite(self) -> None:
        """
        A write after a RST held while paused reports the reset on the next
        turn, resumed or not, as Twisted's TCP reports a failed send.
        """
        self.transport.pauseProducing()
        self.fromPeer(b"never read")
        self.fromPeerPacket(self.peer.reset(0.0))
        self.transport.write(b"into a reset")
        self.assertEqual(self.protocol.lost, [])
        self.clock.advance(0)
        (reason,) = self.protocol.lost
        self.assertIs(reason.type, ConnectionLost)
        self.assertEqual(self.protocol.received, [])

    def test_abortSendsResetWithTheEnd(self) -> None:
        """
        C{abortConnection()} stops sending and delivering at once, but its
        RST leaves with C{connectionLost}, on the next turn: as with
        Twisted's TCP, which closes the socket then, the peer cannot learn
        of the abort first.
        """
        self.demux.sent.clear()
        self.transport.abortConnection()
        self.transport.write(b"after the abort")
        self.fromPeer(b"after the abort")
        self.assertEqual((self.demux.sent, self.protocol.received, self.protocol.lost), ([], [], []))
        self.clock.advance(0)
        (rst,) = self.demux.sent
        self.assertTrue(parse_packet(rst).flags & RST)
        (reason,) = self.protocol.lost
        reason.trap(ConnectionAborted)

    def test_writeConnectionLost(self) -> None:
        """
        C{loseWriteConnection()} sends FIN; a half-closeable protocol's
        C{writeConnectionLost()} follows on the next turn (never from
        inside the call, as with Twisted's TCP), and it still receives.
        """
        self.connectWith(_HalfCloser)
        self.demux.sent.clear()
        self.transport.loseWriteConnection()
        (fin,) = self.demux.sent
        self.assertTrue(parse_packet(fin).flags & FIN)
        self.assertEqual(self.protocol.events, [])
        self.clock.advance(0)
        self.assertEqual(self.protocol.events, ["write"])
        self.fromPeer(b"still read")
        self.assertEqual(self.protocol.received, [b"still read"])
        self.assertTrue(self.transport.connected)

    def test_writeConnectionLostBeforeConnectionLost(self) -> None:
        """
        Closing the write side after the peer's FIN closes the connection
        both ways: C{writeConnectionLost()} comes before
        C{connectionLost(ConnectionDone)}.
        """
        self.connectWith(_HalfCloser)
        self.fromPeerPacket(self.peer.finish(0.0))
        self.transport.loseWriteConnection()
        self.clock.advance(0)
        self.assertEqual(self.protocol.events, ["read", "write", "lost"])
        self.protocol.lost[0].trap(ConnectionDone)

    def test_callbacksLoggedUnderProtocolPrefix(self) -> None:
        """
        The protocol's callbacks run in a log context whose system is the
        transport's C{logPrefix()}, made of the protocol's own prefix.
        """
        systems: list[str] = []
        self.protocol.dataReceived = lambda data: systems.append(context.get(ILogContext)["system"])
        self.protocol.logPrefix = lambda: "Custom"
        self.fromPeer(b"x")
        # The prefix was taken when the connection was made.
        self.assertEqual(systems, [f"_Recorder,faketcp,{self.transport.getPeer().host}:{CLIENT_PORT}"])
        self.assertEqual(self.transport.logPrefix(), systems[0])
