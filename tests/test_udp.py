"""
Tests for L{faketcp_twisted.relay.udp} and the fast path's batch UDP read
(L{fastpath.receive_datagrams}), on real loopback sockets: no root needed.

Every test runs once per fast-path implementation available, so the pure
Python fallback is exercised wherever the C one is.
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from faketcp_twisted.engine.demux import coalesced_sends
from faketcp_twisted.engine.options import host_port
from faketcp_twisted.io import fastpath
from faketcp_twisted.relay.udp import DatagramSocket
from faketcp_twisted.tx.reactor import loop_for
from tests.support import wait_until


def _pair(family: int = socket.AF_INET) -> tuple[socket.socket, socket.socket]:
    """
    A non-blocking receiver and a sender, both bound on loopback.
    """
    host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    receiver = socket.socket(family, socket.SOCK_DGRAM)
    receiver.bind((host, 0))
    receiver.setblocking(False)
    sender = socket.socket(family, socket.SOCK_DGRAM)
    sender.bind((host, 0))
    return receiver, sender


def _receive_all(
    implementation: fastpath.Implementation, sock: socket.socket, budget: int, expected: int
) -> tuple[list[bytes], list[Any]]:
    datagrams: list[bytes] = []
    sources: list[Any] = []
    for _ in range(200):
        got, came_from = implementation.receive_datagrams(sock, budget, True)
        datagrams.extend(got)
        sources.extend(came_from or [])
        if len(datagrams) >= expected:
            break
        time.sleep(0.005)
    return datagrams, sources


class _ReceiveDatagramsTests:
    """
    L{fastpath.receive_datagrams} reads what C{recvfrom} would, in batches.
    """

    implementation: fastpath.Implementation
    assertEqual: Any
    assertIs: Any
    assertRaises: Any
    addCleanup: Any

    def _pair(self, family: int = socket.AF_INET) -> tuple[socket.socket, socket.socket]:
        receiver, sender = _pair(family)
        self.addCleanup(receiver.close)
        self.addCleanup(sender.close)
        return receiver, sender

    def test_batchWithSources(self) -> None:
        """
        200 datagrams (more than one kernel batch) come back whole, in
        order, each with the source address recvfrom would give.
        """
        receiver, sender = self._pair()
        sent = [b"d%d" % i * (i % 7 + 1) for i in range(200)]
        for datagram in sent:
            sender.sendto(datagram, receiver.getsockname())
        datagrams, sources = _receive_all(self.implementation, receiver, 1000, len(sent))
        self.assertEqual(datagrams, sent)
        self.assertEqual(sources, [sender.getsockname()] * len(sent))

    def test_ipv6Source(self) -> None:
        """
        An IPv6 source comes as recvfrom's four-tuple.
        """
        receiver, sender = self._pair(socket.AF_INET6)
        sender.sendto(b"six", receiver.getsockname())
        datagrams, sources = _receive_all(self.implementation, receiver, 10, 1)
        self.assertEqual((datagrams, sources), ([b"six"], [sender.getsockname()]))

    def test_budget(self) -> None:
        """
        No more than C{budget} datagrams are taken; the rest wait.
        """
        receiver, sender = self._pair()
        for i in range(10):
            sender.sendto(b"%d" % i, receiver.getsockname())
        time.sleep(0.05)
        first, _ = self.implementation.receive_datagrams(receiver, 3, False)
        rest, no_sources = self.implementation.receive_datagrams(receiver, 100, False)
        self.assertEqual(first, [b"0", b"1", b"2"])
        self.assertEqual(rest, [b"%d" % i for i in range(3, 10)])
        self.assertIs(no_sources, None)

    def test_emptyAndLargest(self) -> None:
        """
        An empty socket gives an empty batch; an empty datagram and one of
        the IPv4 maximum arrive as they were sent.
        """
        receiver, sender = self._pair()
        self.assertEqual(self.implementation.receive_datagrams(receiver, 64, True), ([], []))
        largest = bytes(range(256)) * 255 + b"\x01" * (65507 - 256 * 255)
        sender.sendto(b"", receiver.getsockname())
        sender.sendto(largest, receiver.getsockname())
        datagrams, _ = _receive_all(self.implementation, receiver, 64, 2)
        self.assertEqual(datagrams, [b"", largest])

    def test_refusedOnConnectedSocket(self) -> None:
        """
        The ICMP port-unreachable of an earlier datagram on a connected
        socket is raised as ECONNREFUSED; the next read goes on.
        """
        closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        closed.bind(("127.0.0.1", 0))
        address = closed.getsockname()
        closed.close()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        sock.setblocking(False)
        sock.connect(address)
        sock.send(b"anyone?")
        time.sleep(0.05)
        raised = self.assertRaises(OSError, self.implementation.receive_datagrams, sock, 64, False)
        self.assertEqual(raised.errno, errno.ECONNREFUSED)
        self.assertEqual(self.implementation.receive_datagrams(sock, 64, False), ([], None))


    def test_sendDatagrams(self) -> None:
        """
        L{fastpath.send_datagrams} sends in order, to each destination or
        on a connected socket, skips and reports a datagram the kernel
        refuses, and wants one destination per datagram.
        """
        receiver, sender = self._pair()
        sender.setblocking(False)
        to = receiver.getsockname()
        datagrams = [b"%d" % i for i in range(100)]
        self.assertEqual(self.implementation.send_datagrams(sender, datagrams, [to] * 100), (100, []))
        self.assertEqual(_receive_all(self.implementation, receiver, 1000, 100)[0], datagrams)
        sender.connect(to)
        sent = self.implementation.send_datagrams(sender, [b"a", b"z" * 70000, b"b"], None)
        self.assertEqual(sent, (3, [errno.EMSGSIZE]))
        self.assertEqual(_receive_all(self.implementation, receiver, 10, 2)[0], [b"a", b"b"])
        self.assertRaises(ValueError, self.implementation.send_datagrams, sender, [b"a"], [])


class PythonReceiveDatagramsTests(_ReceiveDatagramsTests, SynchronousTestCase):
    implementation = fastpath.PYTHON


class CReceiveDatagramsTests(_ReceiveDatagramsTests, SynchronousTestCase):
    implementation = fastpath.C or fastpath.PYTHON
    if fastpath.C is None:
        skip = "the C fast path is not built (python setup.py build_ext --inplace)"


class _DatagramSocketTests:
    """
    L{DatagramSocket} on the reactor: batches, errors, a failing owner,
    closing.
    """

    implementation: fastpath.Implementation
    assertEqual: Any
    assertIn: Any
    assertLess: Any
    assertFalse: Any
    assertRaises: Any
    addCleanup: Any
    assertLogs: Any

    def setUp(self) -> None:
        previous = fastpath.use(self.implementation)
        self.addCleanup(fastpath.use, previous)
        self.batches: list[tuple[list[bytes], Any]] = []
        self.errors: list[tuple[int, int]] = []

    def _error(self, code: int, count: int) -> None:
        self.errors.append((code, count))

    def _bind(self, **kwargs: Any) -> DatagramSocket:
        udp = DatagramSocket.bind(
            loop_for(reactor), ("127.0.0.1", 0), lambda d, s: self.batches.append((d, s)), self._error, 65536, **kwargs
        )
        self.addCleanup(udp.close)
        udp.start()
        return udp

    def _sender(self) -> socket.socket:
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sender.bind(("127.0.0.1", 0))
        self.addCleanup(sender.close)
        return sender

    async def test_batches(self) -> None:
        """
        Datagrams that wait together are handed over together, with their
        source; the owner can answer through C{sendto}.
        """
        udp = self._bind()
        sender = self._sender()
        for i in range(50):
            sender.sendto(b"%d" % i, udp.socket.getsockname())
        await wait_until(lambda: sum(len(d) for d, _ in self.batches) == 50)
        self.assertEqual([d for batch, _ in self.batches for d in batch], [b"%d" % i for i in range(50)])
        self.assertEqual({s for _, sources in self.batches for s in sources}, {sender.getsockname()})
        self.assertLess(len(self.batches), 50)
        udp.write(b"back", sender.getsockname())
        self.assertEqual(sender.recvfrom(100), (b"back", udp.socket.getsockname()))

    async def test_connectedRefusal(self) -> None:
        """
        A connected socket whose target is not listening reports
        ECONNREFUSED to the error callback and keeps reading.
        """
        closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        closed.bind(("127.0.0.1", 0))
        target = closed.getsockname()
        closed.close()
        udp = self._bind(connect_to=target)
        udp.write(b"anyone?")
        await wait_until(lambda: self.errors == [(errno.ECONNREFUSED, 1)])
        self.assertEqual(udp.address(), host_port(*udp.socket.getsockname()[:2]))
        # The reactor took the error for a lost connection; the socket is
        # still read once the target answers.
        answering = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        answering.bind(target)
        self.addCleanup(answering.close)
        udp.write(b"now?")
        datagram, source = answering.recvfrom(100)
        answering.sendto(b"here: " + datagram, source)
        await wait_until(lambda: bool(self.batches))
        self.assertEqual(self.batches, [([b"here: now?"], None)])

    def test_coalescedWrites(self) -> None:
        """
        Within C{coalesced_sends}, writes wait for its end and then leave
        in order; outside it, a write leaves at once.
        """
        udp = self._bind()
        receiver, _ = _pair()
        self.addCleanup(receiver.close)
        with coalesced_sends:
            for i in range(100):
                udp.write(b"%d" % i, receiver.getsockname())
            time.sleep(0.02)
            self.assertEqual(fastpath.PYTHON.receive_datagrams(receiver, 1000, False), ([], None))
        datagrams, _ = _receive_all(fastpath.PYTHON, receiver, 1000, 100)
        self.assertEqual(datagrams, [b"%d" % i for i in range(100)])
        udp.write(b"alone", receiver.getsockname())
        self.assertEqual(receiver.recvfrom(100)[0], b"alone")
        self.assertEqual(self.errors, [])

    def test_refusedWritesReported(self) -> None:
        """
        A datagram the kernel refuses (too long for UDP) is reported to the
        error callback, at once or at the end of the scope, and the others
        still leave.
        """
        udp = self._bind()
        receiver, _ = _pair()
        self.addCleanup(receiver.close)
        udp.write(b"x" * 70000, receiver.getsockname())
        with coalesced_sends:
            udp.write(b"before", receiver.getsockname())
            udp.write(b"y" * 70000, receiver.getsockname())
            udp.write(b"after", receiver.getsockname())
        self.assertEqual(self.errors, [(errno.EMSGSIZE, 1), (errno.EMSGSIZE, 1)])
        datagrams, _ = _receive_all(fastpath.PYTHON, receiver, 10, 2)
        self.assertEqual(datagrams, [b"before", b"after"])

    async def test_failingOwner(self) -> None:
        """
        An owner that raises is logged; the socket is still read.
        """
        failures = []

        def owner(datagrams: list[bytes], sources: Any) -> None:
            if not failures:
                failures.append(datagrams)
                raise RuntimeError("owner bug")
            self.batches.append((datagrams, sources))

        udp = DatagramSocket.bind(loop_for(reactor), ("127.0.0.1", 0), owner, self._error, 65536)
        self.addCleanup(udp.close)
        udp.start()
        sender = self._sender()
        with self.assertLogs("faketcp_twisted.relay.udp", logging.ERROR) as logged:
            sender.sendto(b"first", udp.socket.getsockname())
            await wait_until(lambda: bool(failures))
        self.assertIn("owner bug", "\n".join(logged.output))
        sender.sendto(b"second", udp.socket.getsockname())
        await wait_until(lambda: bool(self.batches))
        self.assertEqual(self.batches[0][0], [b"second"])

    async def test_close(self) -> None:
        """
        A closed socket is no longer read, and its port is free again.
        """
        udp = self._bind()
        address = udp.socket.getsockname()
        udp.close()
        self.assertFalse(udp.reading)
        self.assertEqual(udp.receive_drops(), 0)
        again = DatagramSocket.bind(loop_for(reactor), address, lambda d, s: None, self._error, 65536)
        again.close()

    def test_addressInUse(self) -> None:
        """
        Binding a port in use raises EADDRINUSE and leaves no socket open.
        """
        udp = self._bind()
        raised = self.assertRaises(
            OSError,
            DatagramSocket.bind,
            loop_for(reactor),
            udp.socket.getsockname(),
            lambda d, s: None,
            self._error,
            65536,
        )
        self.assertEqual(raised.errno, errno.EADDRINUSE)


class PythonDatagramSocketTests(_DatagramSocketTests, TestCase):
    implementation = fastpath.PYTHON


class CDatagramSocketTests(_DatagramSocketTests, TestCase):
    implementation = fastpath.C or fastpath.PYTHON
    if fastpath.C is None:
        skip = "the C fast path is not built (python setup.py build_ext --inplace)"


class CoalescedSendsTests(SynchronousTestCase):
    """
    The scope itself: nested scopes flush once, at the outermost end; each
    thread has its own.
    """

    def test_nestedFlushOnceAtTheEnd(self) -> None:
        """
        Datagrams written in an inner scope wait for the outer one's end.
        """
        receiver, sender = _pair()
        self.addCleanup(receiver.close)
        self.addCleanup(sender.close)
        udp = DatagramSocket(loop_for(reactor), sender, lambda d, s: None, lambda code, count: None, with_sources=True)
        with coalesced_sends:
            with coalesced_sends:
                udp.write(b"inner", receiver.getsockname())
            time.sleep(0.02)
            self.assertEqual(fastpath.PYTHON.receive_datagrams(receiver, 10, False), ([], None))
        self.assertEqual(_receive_all(fastpath.PYTHON, receiver, 10, 1)[0], [b"inner"])

    def test_perThread(self) -> None:
        """
        Another thread is outside this thread's scope: its writes leave at
        once.
        """
        import threading

        receiver, sender = _pair()
        self.addCleanup(receiver.close)
        self.addCleanup(sender.close)
        udp = DatagramSocket(loop_for(reactor), sender, lambda d, s: None, lambda code, count: None, with_sources=True)
        seen: list[int] = []

        def elsewhere() -> None:
            seen.append(coalesced_sends.depth)
            udp.write(b"from another thread", receiver.getsockname())

        with coalesced_sends:
            thread = threading.Thread(target=elsewhere)
            thread.start()
            thread.join()
            self.assertEqual(seen, [0])
            self.assertEqual(_receive_all(fastpath.PYTHON, receiver, 10, 1)[0], [b"from another thread"])
