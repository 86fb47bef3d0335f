"""
Twisted's own transport tests, run against fake TCP.

The mixins of C{twisted.internet.test} (connection, stream client, abort,
write sequence, TCP port and TCP connection tests) run with an
L{EndpointCreator} that makes fake-TCP endpoints.  Each test builds a new
reactor (L{ReactorBuilder}); the transport runs on it through
L{faketcp_twisted.tx.reactor.loop_for}.  Client and server share one
network namespace of a fresh lab (its loopback interface is up), so
nothing is installed in the host's own firewall.

The tests that need what only kernel TCP has (a socket read and written by
the reactor itself, half-close through C{shutdown()}, C{IConnector}, ...)
are skipped one by one, each with its reason.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import socket
import subprocess
from typing import Any

from twisted.internet import defer, error
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.test import test_tcp
from twisted.internet.test.connectionmixins import (
    ConnectionTestsMixin,
    EndpointCreator,
    StreamClientTestsMixin,
)
from twisted.internet.test.reactormixins import ReactorBuilder
from twisted.internet.test.test_tcp import (
    AbortConnectionMixin,
    MyClientFactory,
    MyServerFactory,
    StreamTransportTestsMixin,
    TCPConnectionTestsBuilder,
    TCPPortTestsMixin,
    WriteSequenceTestsMixin,
)
from twisted.python.failure import Failure

from faketcp_twisted.tx.endpoints import FakeTCPClientEndpoint, FakeTCPServerEndpoint
from faketcp_twisted.tx.port import FakeTCPPort
from lab import netlab
from tests.support import ROOT_REASON

#: Where client and server meet: the lab namespace's loopback address.
LOOPBACK = "127.0.0.1"

#: The reactors the mixins run on: the default one, and asyncio's.
REACTORS = [
    "twisted.internet.epollreactor.EPollReactor",
    "twisted.internet.test.reactormixins.AsyncioSelectorReactor",
]

NO_BUFFER = "fake TCP sends each write at once: no write buffer fills, so producers are never paused or resumed by it"

SKIP = None if os.geteuid() == 0 else ROOT_REASON


class FakeTCPCreator(EndpointCreator):
    """
    Fake-TCP endpoints on the loopback address, for
    L{runProtocolsWithReactor}-based tests.
    """

    interface = LOOPBACK

    def server(self, reactor: Any) -> FakeTCPServerEndpoint:
        return FakeTCPServerEndpoint(reactor, 0, interface=self.interface)

    def client(self, reactor: Any, serverAddress: Any) -> FakeTCPClientEndpoint:
        return FakeTCPClientEndpoint(reactor, self.interface, serverAddress.port, timeout=10)


class _FakeConnector:
    """
    Just enough of an C{IConnector} for the mixins that call
    C{self.connect(...)}: a fake-TCP client endpoint's attempt, reported
    to the factory as C{connectTCP} reports it.
    """

    def __init__(self, reactor: Any, host: str, port: int, factory: Any) -> None:
        self.factory = factory
        self._attempt: defer.Deferred[Any] | None = None
        endpoint = FakeTCPClientEndpoint(reactor, host, port, timeout=10)

        def start() -> None:
            factory.doStart()
            factory.startedConnecting(self)
            self._attempt = endpoint.connect(factory)
            self._attempt.addErrback(self._failed)

        reactor.callWhenRunning(start)

    def _failed(self, reason: Failure) -> None:
        self.factory.clientConnectionFailed(self, reason)
        self.factory.doStop()

    def disconnect(self) -> None:
        if self._attempt is not None:
            self._attempt.cancel()


_namespace: str | None = None


def _contract_namespace() -> str:
    """
    The network namespace the tests run in, made once per process with its
    loopback interface up, and removed at exit (or, if the process dies, by
    L{netlab.sweep_stale}).
    """
    global _namespace
    if _namespace is None:
        name = f"{netlab.NAMESPACE_PREFIX}{os.getpid()}-contract"
        netlab.create_namespace(name)
        atexit.register(subprocess.run, ["ip", "netns", "del", name], check=False)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        _namespace = name
    return _namespace


def _ensure_event_loop(test: Any) -> None:
    """
    Give the main thread an event loop for the test if it has none.

    Twisted's builder of the asyncio reactor saves the current loop first,
    and C{asyncio.get_event_loop()} raises once an earlier test's
    C{asyncio.run()} set it to None: every asyncio-reactor test of the
    module would then be skipped ("There is no current event loop") when
    the whole suite runs, as it was.
    """
    try:
        asyncio.get_event_loop_policy().get_event_loop()
    except RuntimeError:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)

        def restore() -> None:
            asyncio.set_event_loop(None)
            loop.close()

        test.addCleanup(restore)


class _LabMixin:
    """
    Run each test inside the contract namespace (the thread's namespace is
    switched for the test, so every socket the reactor's fake TCP makes is
    made there, and nothing is installed in the host's own firewall).
    """

    timeout = 20
    _reactors = REACTORS
    endpoints = FakeTCPCreator()

    def setUp(self) -> None:
        super().setUp()  # type: ignore[misc]
        _ensure_event_loop(self)  # type: ignore[arg-type]
        inside = netlab.in_namespace(_contract_namespace())
        inside.__enter__()
        self.addCleanup(inside.__exit__, None, None, None)  # type: ignore[attr-defined]
        # The TCP connection tests build their endpoints themselves.
        self.patch(test_tcp, "TCPCreator", FakeTCPCreator)  # type: ignore[attr-defined]

    # StreamClientTestsMixin's way to listen and connect.

    def listen(self, reactor: Any, factory: Any) -> FakeTCPPort:
        port = FakeTCPPort(reactor, 0, factory, interface=LOOPBACK)
        port.startListening()
        self._port = port
        return port

    def connect(self, reactor: Any, factory: Any) -> _FakeConnector:
        port = getattr(self, "_port", None)
        # No listener: a port nothing listens on is refused.
        number = port.getHost().port if port is not None else _unused_port()
        return _FakeConnector(reactor, LOOPBACK, number, factory)

    # TCPPortTestsMixin's and StreamTransportTestsMixin's.

    def getListeningPort(self, reactor: Any, factory: Any, port: int = 0, interface: str = "") -> FakeTCPPort:
        listening = FakeTCPPort(reactor, port, factory, interface=interface)
        listening.startListening()
        return listening

    def connectToListener(self, reactor: Any, address: Any, factory: Any) -> _FakeConnector:
        return _FakeConnector(reactor, LOOPBACK, address.port, factory)

    # WriteSequenceTestsMixin's.

    def getConnectedClientAndServer(self, reactor: Any, interface: str, addressFamily: int) -> defer.Deferred[Any]:
        server = MyServerFactory()
        server.protocolConnectionMade = defer.Deferred()
        server.protocolConnectionLost = defer.Deferred()
        client = MyClientFactory()
        client.protocolConnectionMade = defer.Deferred()
        client.protocolConnectionLost = defer.Deferred()
        port = self.getListeningPort(reactor, server, 0, interface)
        lost = defer.gatherResults([client.protocolConnectionLost, server.protocolConnectionLost])

        def stop(result: object) -> object:
            reactor.stop()
            return result

        lost.addBoth(stop)
        started = defer.gatherResults([client.protocolConnectionMade, server.protocolConnectionMade])
        result: defer.Deferred[Any] = defer.Deferred()
        started.addCallback(lambda protocols: result.callback((protocols[0], protocols[1], port)))
        _FakeConnector(reactor, interface, port.getHost().port, client)
        return result


def _unused_port() -> int:
    with contextlib.closing(socket.socket()) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def _skip(reason: str) -> Any:
    """
    A test method that is skipped for C{reason}.
    """

    def skipped(self: object) -> None:
        pass

    skipped.skip = reason  # type: ignore[attr-defined]
    return skipped


class FakeTCPConnectionTestsBuilder(_LabMixin, ReactorBuilder, ConnectionTestsMixin, StreamClientTestsMixin):
    """
    L{ConnectionTestsMixin} and L{StreamClientTestsMixin} over fake TCP.
    """

    skip = SKIP
    test_interface = _skip("endpoints make no IConnector: fake-TCP clients connect through endpoints only")


class FakeTCPAbortTestsBuilder(_LabMixin, ReactorBuilder, AbortConnectionMixin):
    """
    L{AbortConnectionMixin} over fake TCP.
    """

    skip = SKIP
    test_fullWriteBuffer = _skip("needs stopReading()/startReading() and a full kernel send buffer")
    test_fullWriteBufferAfterByteExchange = _skip("needs stopReading()/startReading() and a full kernel send buffer")
    test_resumeProducingAbort = _skip(NO_BUFFER)
    test_resumeProducingThrows = _skip(NO_BUFFER)


class FakeTCPWriteSequenceTestsBuilder(_LabMixin, ReactorBuilder, WriteSequenceTestsMixin):
    """
    L{WriteSequenceTestsMixin} over fake TCP.
    """

    skip = SKIP
    requiredInterfaces = None
    test_streamingProducer = _skip(NO_BUFFER)
    test_nonStreamingProducer = _skip(NO_BUFFER + " (and it calls the FileDescriptor's stopConsuming())")


class FakeTCPPortTestsBuilder(_LabMixin, ReactorBuilder, TCPPortTestsMixin, StreamTransportTestsMixin):
    """
    L{TCPPortTestsMixin} and L{StreamTransportTestsMixin} over fake TCP.
    """

    skip = SKIP
    requiredInterfaces = None
    test_serverGetHostOnIPv4 = _skip("checks tcp.Server's repr and logstr (its sessionno)")
    test_serverGetHostOnIPv6 = _skip("checks tcp.Server's repr and logstr (its sessionno)")
    test_closePeerOnEMFILE = _skip("exhausts the process's descriptors, which the shared captures need")


class FakeTCPTransportTestsBuilder(_LabMixin, TCPConnectionTestsBuilder):
    """
    L{TCPConnectionTestsBuilder} over fake TCP.
    """

    skip = SKIP
    requiredInterfaces = None
    test_stopStartReading = _skip("uses reactor.listenTCP: kernel TCP, not fake TCP")
    _READER = "checks the transport is the reactor's reader; the shared capture is"
    test_resumeProducing = _skip(_READER)
    test_resumeProducingWhileDisconnected = _skip(_READER)
    test_resumeProducingWhileDisconnecting = _skip(_READER)


globals().update(FakeTCPConnectionTestsBuilder.makeTestCaseClasses())
globals().update(FakeTCPAbortTestsBuilder.makeTestCaseClasses())
globals().update(FakeTCPWriteSequenceTestsBuilder.makeTestCaseClasses())
globals().update(FakeTCPPortTestsBuilder.makeTestCaseClasses())
globals().update(FakeTCPTransportTestsBuilder.makeTestCaseClasses())



class NoProtocolTests(_LabMixin, ReactorBuilder):
    """
    A client factory that builds no protocol fails the endpoint's
    C{connect} with Twisted's own L{error.NoProtocol}, as Twisted's
    endpoints do.
    """

    skip = SKIP
    _reactors = REACTORS[:1]

    def test_noProtocol(self) -> None:
        reactor = self.buildReactor()
        results: list[Any] = []

        async def steps() -> None:
            port = await self.endpoints.server(reactor).listen(Factory.forProtocol(Protocol))
            try:
                await self.endpoints.client(reactor, port.getHost()).connect(_NothingFactory())
            except Exception as failure:
                results.append(failure)
            await port.stopListening()
            reactor.stop()

        reactor.callWhenRunning(lambda: defer.Deferred.fromCoroutine(steps()))
        self.runReactor(reactor)
        (failure,) = results
        self.assertIsInstance(failure, error.NoProtocol)


class _NothingFactory(ClientFactory):
    def buildProtocol(self, addr: Any) -> None:
        return None


globals().update(NoProtocolTests.makeTestCaseClasses())
