"""
Tests for L{faketcp_twisted.engine.splice}: a TCP connection joined both
ways to a new connection to another service, on the reactor, over real
loopback TCP (no privileges needed).
"""

from __future__ import annotations

import errno
import hashlib
import os
import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from faketcp_twisted.engine.splice import Splice
from faketcp_twisted.tx.reactor import loop_for
from tests.support import sleep, wait_until


@implementer(IHalfCloseableProtocol)
class HalfClosingEcho(Protocol):
    """
    Echoes, and closes once the peer finished sending (as a service that
    answers a request, then closes, does).
    """

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)

    def readConnectionLost(self) -> None:
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass


class Aborting(Protocol):
    """
    Resets the connection on the first bytes.
    """

    def dataReceived(self, data: bytes) -> None:
        self.transport.abortConnection()


class SpliceTests(TestCase):
    """
    A client's accepted connection (the downstream) spliced to a Twisted
    service on loopback.
    """

    def setUp(self) -> None:
        self.ended: list[Splice] = []

    def service(self, protocol: type[Protocol]) -> tuple[int, tuple[str, int]]:
        port = reactor.listenTCP(0, Factory.forProtocol(protocol), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return socket.AF_INET, ("127.0.0.1", port.getHost().port)

    def downstream(self) -> tuple[socket.socket, socket.socket]:
        """
        A connected pair: the client's socket, and the accepted one.
        """
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.create_connection(listener.getsockname())
        self.addCleanup(client.close)
        accepted, _ = listener.accept()
        accepted.setblocking(False)
        client.setblocking(False)
        return client, accepted

    def splice(self, accepted: socket.socket, target: tuple[int, tuple[str, int]]) -> Splice:
        splice = Splice(loop_for(reactor), accepted, target, self.ended.append)
        self.addCleanup(splice.abort)
        splice.start()
        return splice

    async def exchange(self, client: socket.socket, payload: bytes) -> bytes:
        """
        Send C{payload}, close the sending half, and read until the end of
        the stream, all without blocking the reactor.
        """
        view = memoryview(payload)
        received = bytearray()
        finished = False

        def step() -> bool:
            nonlocal view, finished
            if view:
                try:
                    view = view[client.send(view[: 1 << 16]) :]
                except BlockingIOError:
                    pass
                if not view:
                    client.shutdown(socket.SHUT_WR)
            while True:
                try:
                    data = client.recv(1 << 16)
                except BlockingIOError:
                    return False
                if not data:
                    finished = True
                    return True
                received.extend(data)

        await wait_until(step, timeout=20.0, step=0.001)
        self.assertTrue(finished)
        return bytes(received)

    async def test_bothWaysUntilBothClose(self) -> None:
        """
        4 MiB go to the service and come back intact; the client's
        half-close reaches the service, the service's close reaches the
        client, and then the splice ends with both sockets closed.
        """
        client, accepted = self.downstream()
        splice = self.splice(accepted, self.service(HalfClosingEcho))
        payload = os.urandom(4 << 20)
        echoed = await self.exchange(client, payload)
        self.assertEqual(hashlib.sha256(echoed).digest(), hashlib.sha256(payload).digest())
        await wait_until(lambda: bool(self.ended))
        self.assertEqual(self.ended, [splice])
        self.assertFalse(splice.failed)
        self.assertEqual(splice.moved, (len(payload), len(payload)))
        self.assertEqual(accepted.fileno(), -1)
        assert splice.upstream is not None
        self.assertEqual(splice.upstream.fileno(), -1)

    async def test_bytesQueuedBeforeTheSpliceGoFirst(self) -> None:
        """
        What the downstream's kernel buffer held before the splice began
        (a prober's first bytes) reaches the service first.
        """
        client, accepted = self.downstream()
        client.send(b"early ")
        await wait_until(lambda: bool(accepted.recv(1, socket.MSG_PEEK)))
        self.splice(accepted, self.service(HalfClosingEcho))
        self.assertEqual(await self.exchange(client, b"late"), b"early late")

    async def test_slowReaderHoldsTheSenderBack(self) -> None:
        """
        A service that does not read: the splice stops reading the
        downstream once one buffer is pending, so what the client could
        send is bounded by the kernel's buffers, not by our memory.
        """
        silent = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(silent.close)
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        client, accepted = self.downstream()
        splice = self.splice(accepted, (socket.AF_INET, silent.getsockname()))
        sent = 0
        chunk = b"x" * 65536

        def stuck() -> bool:
            nonlocal sent
            try:
                sent += client.send(chunk)
            except BlockingIOError:
                return True
            return False

        # Wait until the client cannot send any more, twice in a row a
        # while apart (the splice may have been catching up the first time).
        await wait_until(stuck, timeout=20.0, step=0.001)
        first = sent
        await wait_until(lambda: stuck() and sent == first or False, timeout=20.0, step=0.2)
        pumps = splice._pumps
        assert pumps is not None
        self.assertLessEqual(len(pumps[0].pending), Splice.bufferSize)
        self.assertGreater(len(pumps[0].pending), 0)
        moved = splice.moved[0]
        await sleep(0.3)
        self.assertEqual(splice.moved[0], moved)
        self.assertLess(moved, sent)

    async def test_unreachableServiceResets(self) -> None:
        """
        No service at the address: the splice fails, and the client's
        connection is reset (as a port with nothing behind it would be).
        """
        free = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        free.bind(("127.0.0.1", 0))
        address = free.getsockname()
        free.close()
        client, accepted = self.downstream()
        splice = self.splice(accepted, (socket.AF_INET, address))
        await wait_until(lambda: bool(self.ended))
        self.assertTrue(splice.failed)
        await self.assertReset(client)

    async def test_serviceResetReachesTheClient(self) -> None:
        """
        The service resets: so is the client's connection.
        """
        client, accepted = self.downstream()
        splice = self.splice(accepted, self.service(Aborting))
        client.send(b"anything")
        await wait_until(lambda: bool(self.ended))
        self.assertFalse(splice.failed)
        await self.assertReset(client)

    async def assertReset(self, client: socket.socket) -> None:
        outcome: list[Any] = []

        def read() -> bool:
            try:
                outcome.append(client.recv(1))
            except BlockingIOError:
                return False
            except OSError as failure:
                outcome.append(failure.errno)
            return True

        await wait_until(read)
        self.assertEqual(outcome, [errno.ECONNRESET])
