"""
Integration tests: unmodified Twisted protocols over fake-TCP between two
network namespaces, through real kernels, raw sockets and firewall rules.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import time
from typing import Any

from twisted.internet import error, reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThread
from twisted.protocols import amp, basic
from twisted.protocols.wire import Echo
from twisted.trial.unittest import SynchronousTestCase

from faketcp_twisted.core.table import TableLimits
from faketcp_twisted.engine.adoption import HANDSHAKE_WAIT
from faketcp_twisted.engine.demux import Demultiplexer
from faketcp_twisted.tx.errors import PortInUseError
from lab import netlab
from tests.support import LabTestCase, Recorder, RecordingFactory, silencing_rules, sleep, wait_until

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Sum(amp.Command):
    arguments = [(b"a", amp.Integer()), (b"b", amp.Integer())]
    response = [(b"total", amp.Integer())]


class Adder(amp.AMP):
    @Sum.responder
    def sum(self, a: int, b: int) -> dict[str, int]:
        return {"total": a + b}


class LineEcho(basic.LineReceiver):
    def lineReceived(self, line: bytes) -> None:
        self.sendLine(b"echo: " + line)


class LineCollector(basic.LineReceiver):
    def connectionMade(self) -> None:
        self.lines: list[bytes] = []

    def lineReceived(self, line: bytes) -> None:
        self.lines.append(line)


class Greeter(Recorder):
    """
    Writes its first datagram in connectionMade, before the server could
    have adopted the flow (the embryonic-buffering race).
    """

    def connectionMade(self) -> None:
        self.transport.write(b"first")
        super().connectionMade()


class EchoTests(LabTestCase):
    """
    Datagram semantics with Twisted's own Echo protocol.
    """

    async def test_echo_ipv4(self) -> None:
        """
        Each write of at most one MSS comes back as exactly one
        dataReceived, both ways.
        """
        await self.listen(Factory.forProtocol(Echo))
        client = await self.connect(RecordingFactory(), f"faketcp:host={self.lab.server4}:port={self.port}")
        messages = [b"datagram %d " % i * (i + 1) for i in range(50)]
        for message in messages:
            client.transport.write(message)
        await wait_until(lambda: len(client.received) == len(messages))
        self.assertEqual(client.received, messages)

    async def test_echo_ipv6(self) -> None:
        """
        An IPv6 listener on :: carries datagrams over IPv6.
        """
        await self.listen(Factory.forProtocol(Echo), rf"faketcp:{self.port}:interface=\:\:")
        client = await self.connect(
            RecordingFactory(), rf"faketcp:host={self.lab.server6.replace(':', chr(92) + ':')}:port={self.port}"
        )
        self.assertEqual(client.transport.getPeer().type, "TCP")
        self.assertEqual(client.transport.getPeer().host, self.lab.server6)
        client.transport.write(b"over six")
        await wait_until(lambda: client.received == [b"over six"])

    async def test_dual_stack_listener_serves_ipv4(self) -> None:
        """
        A listener on :: also serves IPv4 clients, on one capture per family.
        """
        port = await self.listen(Factory.forProtocol(Echo), rf"faketcp:{self.port}:interface=\:\:")
        client = await self.connect(RecordingFactory(), f"faketcp:host={self.lab.server4}:port={self.port}")
        client.transport.write(b"four over six")
        await wait_until(lambda: client.received == [b"four over six"])
        self.assertEqual(sorted(port.demuxes), sorted(port.demuxes))
        self.assertEqual(len(port.demuxes), 2)

    async def test_first_datagram_arrives(self) -> None:
        """
        A datagram written in connectionMade, racing the server's accept,
        is kept by the server's embryonic entry and delivered.
        """
        server = RecordingFactory()
        await self.listen(server)
        await self.connect(Factory.forProtocol(Greeter), f"faketcp:host={self.lab.server4}:port={self.port}")
        protocol = await server.new.get()
        await wait_until(lambda: protocol.received == [b"first"])

    async def large_write(self, timestamps: str) -> tuple[int, list[int]]:
        """
        Write more than two MSS and return the client's MSS and the sizes
        the server received.
        """
        server = RecordingFactory()
        await self.listen(server)
        client = await self.connect(
            RecordingFactory(), f"faketcp:host={self.lab.server4}:port={self.port}:timestamps={timestamps}"
        )
        mss = client.transport.flow.mss
        client.transport.write(b"x" * (2 * mss + 7))
        protocol = await server.new.get()
        await wait_until(lambda: len(protocol.received) == 3)
        return mss, [len(d) for d in protocol.received]

    async def test_large_write_split_at_mss(self) -> None:
        """
        A write larger than the MSS arrives as MSS-sized datagrams; with
        timestamps (the kernels agreed on them), a segment on the lab's
        1500-byte path carries 1448 bytes, as the kernel's own would.
        """
        mss, sizes = await self.large_write("yes")
        self.assertEqual(mss, 1448)
        self.assertEqual(sizes, [mss, mss, 7])

    async def test_large_write_without_timestamps(self) -> None:
        """
        Without timestamps, segments carry no options and 1460 bytes.
        """
        mss, sizes = await self.large_write("no")
        self.assertEqual(mss, 1460)
        self.assertEqual(sizes, [mss, mss, 7])

    async def test_many_clients(self) -> None:
        """
        Many clients at once, each getting only its own datagrams back.
        """
        await self.listen(Factory.forProtocol(Echo))
        clients = [
            await self.connect(RecordingFactory(), f"faketcp:host={self.lab.server4}:port={self.port}")
            for _ in range(20)
        ]
        for index, client in enumerate(clients):
            for n in range(5):
                client.transport.write(b"client %d message %d" % (index, n))
        await wait_until(lambda: all(len(c.received) == 5 for c in clients))
        for index, client in enumerate(clients):
            self.assertEqual(client.received, [b"client %d message %d" % (index, n) for n in range(5)])

    async def test_one_capture_many_addresses(self) -> None:
        """
        Listening on 0.0.0.0 is reached through two local addresses, with one
        capture, and each connection knows its own local address.
        """
        port = await self.listen(Factory.forProtocol(Echo))
        first = await self.connect(RecordingFactory(), f"faketcp:host={self.lab.server4}:port={self.port}")
        second = await self.connect(
            RecordingFactory(), f"faketcp:host={self.lab.server4_extra[0]}:port={self.port}"
        )
        first.transport.write(b"one")
        second.transport.write(b"two")
        await wait_until(lambda: first.received == [b"one"] and second.received == [b"two"])
        self.assertEqual(len(port.demuxes), 1)
        hosts = sorted(c.local_address[0] for c in port.demuxes[2].connections.values())
        self.assertEqual(hosts, sorted([self.lab.server4, self.lab.server4_extra[0]]))


class ProtocolTests(LabTestCase):
    """
    Unmodified stream protocols, whose messages fit in one datagram.
    """

    async def test_line_receiver(self) -> None:
        """
        LineReceiver on both ends.
        """
        await self.listen(Factory.forProtocol(LineEcho))
        client = await self.connect(
            Factory.forProtocol(LineCollector), f"faketcp:host={self.lab.server4}:port={self.port}"
        )
        for n in range(10):
            client.sendLine(b"line %d" % n)
        await wait_until(lambda: len(client.lines) == 10)
        self.assertEqual(client.lines, [b"echo: line %d" % n for n in range(10)])

    async def test_amp(self) -> None:
        """
        AMP commands and responses.
        """
        await self.listen(Factory.forProtocol(Adder))
        client = await self.connect(Factory.forProtocol(amp.AMP), f"faketcp:host={self.lab.server4}:port={self.port}")
        results = [await client.callRemote(Sum, a=n, b=n * 10) for n in range(5)]
        self.assertEqual([r["total"] for r in results], [n * 11 for n in range(5)])


class ClosingTests(LabTestCase):
    """
    FIN, RST and idleness, as each side's protocol sees them.
    """

    async def _pair(self, **server_args: Any) -> tuple[Any, Any, Any]:
        server = RecordingFactory()
        options = "".join(f":{k}={v}" for k, v in server_args.items())
        port = await self.listen(server, f"faketcp:{self.port}:interface=0.0.0.0{options}")
        client = await self.connect(RecordingFactory(), f"faketcp:host={self.lab.server4}:port={self.port}")
        client.transport.write(b"hello")
        peer = await server.new.get()
        await wait_until(lambda: peer.received == [b"hello"])
        return port, client, peer

    async def test_lose_connection_seen_by_peer(self) -> None:
        """
        loseConnection sends FIN: the peer sees ConnectionDone, so does the
        closing side.
        """
        _port, client, peer = await self._pair()
        client.transport.loseConnection()
        self.assertIsInstance(await peer.lost, error.ConnectionDone)
        self.assertIsInstance(await client.lost, error.ConnectionDone)

    async def test_server_close_seen_by_client(self) -> None:
        """
        The server closing is seen by the client as ConnectionDone.
        """
        _port, client, peer = await self._pair()
        peer.transport.loseConnection()
        self.assertIsInstance(await client.lost, error.ConnectionDone)

    async def test_abort_seen_by_peer(self) -> None:
        """
        abortConnection sends RST: the peer sees ConnectionLost, not Done.
        """
        _port, client, peer = await self._pair()
        client.transport.abortConnection()
        reason = await peer.lost
        self.assertIsInstance(reason, error.ConnectionLost)
        self.assertNotIsInstance(reason, error.ConnectionDone)
        self.assertIsInstance(await client.lost, error.ConnectionAborted)

    async def test_server_abort_seen_by_client(self) -> None:
        """
        The server resetting a client's only connection ends it with
        ConnectionLost; the client's capture, closed while it reads the
        RST, logs no error.
        """
        port, client, _peer = await self._pair()
        port.abortConnections()
        reason = await client.lost
        self.assertIsInstance(reason, error.ConnectionLost)
        self.assertNotIsInstance(reason, error.ConnectionDone)
        await sleep(0.1)
        self.assertEqual(silencing_rules(self.lab, self.lab.C), [])

    async def test_idle_flow_expires(self) -> None:
        """
        A flow silent for idleTimeout seconds ends with TimeoutError.
        """
        _port, client, peer = await self._pair(idleTimeout=1)
        self.assertIsInstance(await peer.lost, error.TimeoutError)

    async def test_keepalive_keeps_flow(self) -> None:
        """
        With keepalives from the client, an idle server flow stays up.
        """
        server = RecordingFactory()
        await self.listen(server, f"faketcp:{self.port}:idleTimeout=1.5")
        client = await self.connect(
            RecordingFactory(), f"faketcp:host={self.lab.server4}:port={self.port}:keepalive=0.5"
        )
        peer = await server.new.get()
        await sleep(3.5)
        self.assertFalse(peer.lost.called)
        client.transport.loseConnection()
        self.assertIsInstance(await peer.lost, error.ConnectionDone)

    async def test_failing_protocol_loses_only_its_connection(self) -> None:
        """
        An exception in one connection's dataReceived drops that connection
        only; another on the same port goes on.
        """

        class Failing(Recorder):
            def dataReceived(self, data: bytes) -> None:
                if data == b"boom":
                    raise RuntimeError("protocol bug")
                self.transport.write(data)

        await self.listen(Factory.forProtocol(Failing))
        bad = await self.connect(RecordingFactory(), f"faketcp:host={self.lab.server4}:port={self.port}")
        good = await self.connect(RecordingFactory(), f"faketcp:host={self.lab.server4}:port={self.port}")
        bad.transport.write(b"boom")
        self.assertIsInstance(await bad.lost, error.ConnectionLost)
        good.transport.write(b"still here")
        await wait_until(lambda: good.received == [b"still here"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class FirewallBackendTests(LabTestCase):
    """
    Each firewall backend end to end: a dual-stack port and clients over
    IPv4 and IPv6, their rules where the backend keeps them, none left.
    """

    async def echo_both_families(self, backend: str) -> list[str]:
        """
        Echo over IPv4 and IPv6 with C{firewall=backend}; the rules in
        both namespaces while the connections are up.
        """
        await self.listen(Factory.forProtocol(Echo), f"faketcp:{self.port}:interface=\\:\\::firewall={backend}")
        escaped = self.lab.server6.replace(":", chr(92) + ":")
        for host in (self.lab.server4, escaped):
            client = await self.connect(RecordingFactory(), f"faketcp:host={host}:port={self.port}:firewall={backend}")
            client.transport.write(b"over " + host.encode())
            await wait_until(lambda: client.received == [b"over " + host.encode()])  # noqa: B023
        return silencing_rules(self.lab, self.lab.S) + silencing_rules(self.lab, self.lab.C)

    async def test_nftables(self) -> None:
        """
        With C{firewall=nftables} every rule is in this process's owned
        table: two for the port (one per family), one per destination.
        """
        found = await self.echo_both_families("nftables")
        self.assertEqual(len(found), 4, found)
        self.assertTrue(all(line.startswith(f"faketcp_twisted_{os.getpid()}: ") for line in found), found)

    async def test_iptables(self) -> None:
        """
        With C{firewall=iptables} every rule is in the legacy tables, with
        this process's comment.
        """
        found = await self.echo_both_families("iptables")
        self.assertEqual(len(found), 4, found)
        self.assertTrue(all(f"pid={os.getpid()} " in line and "-j DROP" in line for line in found), found)


class SilenceTests(LabTestCase):
    """
    The kernel stays silent, and nothing outlives the port.
    """

    def _count(self) -> None:
        for ns in (self.lab.S, self.lab.C):
            self.lab.count_packets(ns, "rst", ["-p", "tcp", "--tcp-flags", "RST", "RST"])
            self.lab.count_packets(ns, "ttl1", ["-p", "tcp", "-m", "ttl", "--ttl-eq", "1"])
            self.lab.count_packets(ns, "ttl1", ["-p", "tcp", "-m", "hl", "--hl-eq", "1"], v6=True)

    async def test_no_kernel_rst_or_ttl1_reaches_peer(self) -> None:
        """
        Through data both ways, a close, and the port's shutdown, neither
        host receives a RST or a TTL-1 segment.
        """
        self._count()
        port = await self.listen(Factory.forProtocol(Echo))
        client = await self.connect(RecordingFactory(), f"faketcp:host={self.lab.server4}:port={self.port}")
        for n in range(200):
            client.transport.write(b"%d" % n * 100)
        await wait_until(lambda: len(client.received) == 200)
        client.transport.loseConnection()
        await client.lost
        await sleep(0.2)
        await port.stopListening()
        # The captures linger after the FIN close (lingerAfterClose), then go.
        await sleep(Demultiplexer.lingerAfterClose + Demultiplexer.tickInterval + 0.3)
        for ns in (self.lab.S, self.lab.C):
            self.assertEqual(self.lab.read_count(ns, "rst"), 0, ns)
            self.assertEqual(self.lab.read_count(ns, "ttl1"), 0, ns)
        self.assertNothingLeft()

    async def test_late_fin_answer_meets_no_kernel_rst(self) -> None:
        """
        A server that answers the client's FIN with its own a moment later
        (a half-closing protocol) gets no RST from the client's kernel: the
        client's capture and kernel socket outlive the close long enough.
        """
        from twisted.internet.interfaces import IHalfCloseableProtocol
        from zope.interface import implementer

        @implementer(IHalfCloseableProtocol)
        class SlowCloser(Recorder):
            def readConnectionLost(self) -> None:
                from twisted.internet import reactor

                reactor.callLater(0.5, self.transport.loseConnection)

            def writeConnectionLost(self) -> None:
                pass

        self._count()
        server = RecordingFactory(SlowCloser)
        await self.listen(server)
        client = await self.connect(RecordingFactory(), f"faketcp:host={self.lab.server4}:port={self.port}")
        client.transport.write(b"bye soon")
        peer = await server.new.get()
        await wait_until(lambda: peer.received == [b"bye soon"])
        client.transport.loseConnection()
        self.assertIsInstance(await peer.lost, error.ConnectionDone)
        await sleep(0.3)
        self.assertEqual(self.lab.read_count(self.lab.S, "rst"), 0)

    async def test_close_then_exit_leaves_no_rst(self) -> None:
        """
        The usual command-line pattern: a client closes and stops the
        reactor in connectionLost.  The reactor's shutdown waits (bounded)
        for the server's answering FIN, acknowledges it, and only then
        closes the kernel socket and removes the rule: no RST reaches the
        server, from a kernel with no socket for the 4-tuple any more.
        """
        from twisted.internet.interfaces import IHalfCloseableProtocol
        from zope.interface import implementer

        @implementer(IHalfCloseableProtocol)
        class SlowCloser(Echo):
            """
            Answers the client's FIN with its own 0.3 s later, so that the
            client has stopped its reactor long before.
            """

            def readConnectionLost(self) -> None:
                from twisted.internet import reactor

                reactor.callLater(0.3, self.transport.loseConnection)

            def writeConnectionLost(self) -> None:
                pass

        self._count()
        await self.listen(Factory.forProtocol(SlowCloser))
        script = (
            "import sys\n"
            "from twisted.internet import reactor\n"
            "from twisted.internet.endpoints import clientFromString\n"
            "from twisted.internet.protocol import Factory, Protocol\n"
            "class Once(Protocol):\n"
            "    def connectionMade(self):\n"
            "        self.transport.write(b'once')\n"
            "    def dataReceived(self, data):\n"
            "        self.transport.loseConnection()\n"
            "    def connectionLost(self, reason):\n"
            "        print('lost', flush=True)\n"
            "        reactor.stop()\n"
            "clientFromString(reactor, sys.argv[1]).connect(Factory.forProtocol(Once))\n"
            "reactor.run()\n"
        )
        started = time.monotonic()
        result = await deferToThread(
            subprocess.run,
            ["ip", "netns", "exec", self.lab.C, sys.executable, "-c", script,
             f"faketcp:host={self.lab.server4}:port={self.port}"],
            capture_output=True, text=True, timeout=30, cwd=CHECKOUT,
        )  # fmt: skip
        took = time.monotonic() - started
        self.assertEqual((result.returncode, result.stdout.strip()), (0, "lost"), result.stderr)
        await sleep(0.5)
        self.assertEqual(self.lab.read_count(self.lab.S, "rst"), 0)
        self.assertEqual(self.lab.read_count(self.lab.S, "ttl1"), 0)
        self.assertEqual(silencing_rules(self.lab, self.lab.C), [])
        # The wait ended with the server's FIN, before its bound.
        self.assertLess(took, 10.0)

    async def test_stale_rule_swept_at_start(self) -> None:
        """
        An iptables rule left by a process that no longer runs is removed
        when a port starts listening in that namespace with iptables.
        """
        self.lab.run(
            self.lab.S,
            "iptables-legacy",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "--sport",
            "7777",
            "-m",
            "comment",
            "--comment",
            "faketcp_twisted pid=999999 start=1",
            "-j",
            "DROP",
        )
        self.assertEqual(len(silencing_rules(self.lab, self.lab.S)), 1)
        await self.listen(Factory.forProtocol(Echo), f"faketcp:{self.port}:interface=0.0.0.0:firewall=iptables")
        self.assertNotIn("7777", "".join(silencing_rules(self.lab, self.lab.S)))


class ErrorTests(LabTestCase):
    """
    Clear errors, of the classes Twisted programs already handle.
    """

    async def test_port_in_use(self) -> None:
        """
        Listening twice on one port fails with PortInUseError.
        """
        await self.listen(Factory.forProtocol(Echo))
        with netlab.in_namespace(self.lab.S):
            from twisted.internet import reactor
            from twisted.internet.endpoints import serverFromString

            second = serverFromString(reactor, f"faketcp:{self.port}").listen(Factory.forProtocol(Echo))
        failure = await self.assertFailure(second, PortInUseError)
        self.assertIn("port in use", str(failure))
        self.assertEqual(len(silencing_rules(self.lab, self.lab.S)), 1)

    async def test_connection_refused(self) -> None:
        """
        Nobody listening: ConnectionRefusedError, and no rule left behind.
        """
        from twisted.internet import reactor
        from twisted.internet.endpoints import clientFromString

        with netlab.in_namespace(self.lab.C):
            attempt = clientFromString(reactor, f"faketcp:host={self.lab.server4}:port=9").connect(
                Factory.forProtocol(Protocol)
            )
        await self.assertFailure(attempt, error.ConnectionRefusedError)
        self.assertEqual(silencing_rules(self.lab, self.lab.C), [])

    async def test_no_route(self) -> None:
        """
        No route to the host: NoRouteError.
        """
        from twisted.internet import reactor
        from twisted.internet.endpoints import clientFromString

        with netlab.in_namespace(self.lab.C):
            attempt = clientFromString(reactor, "faketcp:host=198.19.200.1:port=9").connect(
                Factory.forProtocol(Protocol)
            )
        await self.assertFailure(attempt, error.NoRouteError)

    async def test_timeout(self) -> None:
        """
        A silent host: TimeoutError after the endpoint's timeout.
        """
        from twisted.internet import reactor
        from twisted.internet.endpoints import clientFromString

        self.lab.iptables(self.lab.S, "-A", "INPUT", "-p", "tcp", "--dport", "9", "-j", "DROP")
        with netlab.in_namespace(self.lab.C):
            attempt = clientFromString(reactor, f"faketcp:host={self.lab.server4}:port=9:timeout=1").connect(
                Factory.forProtocol(Protocol)
            )
        await self.assertFailure(attempt, error.TimeoutError)
        self.assertEqual(silencing_rules(self.lab, self.lab.C), [])


class NatLossTests(LabTestCase):
    """
    A NAT router whose conntrack drops INVALID packets, with random loss.
    """

    timeout = 120

    def makeLab(self) -> netlab.Lab:
        return netlab.routed_nat(loss=0.05)

    async def test_flow_survives_loss_behind_nat(self) -> None:
        """
        With 5% loss each way, datagrams keep flowing both ways through the
        NAT, including well past the first losses, and conntrack never
        finds a segment INVALID.
        """
        await self.listen(Factory.forProtocol(Echo))
        client = await self.connect(RecordingFactory(), f"faketcp:host={self.lab.server4}:port={self.port}")
        self.assertEqual(client.transport.getPeer().host, self.lab.server4)
        rounds, per_round = 10, 300
        for n in range(rounds):
            before = len(client.received)
            for i in range(per_round):
                client.transport.write(b"%d:%d:" % (n, i) + b"p" * 1100)
            # Roughly 90% make the round trip; demand a clear majority each
            # round, so a flow that stops after the first loss fails.
            await wait_until(lambda before=before: len(client.received) - before >= per_round * 0.75, timeout=10)
        self.assertGreater(self.lab.loss_drops(), 0)
        self.assertEqual(self.lab.conntrack_invalid_drops(), 0)


_LOW_FD_SERVER = """
import logging, resource, sys
logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(message)s")
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[1])))
from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory
from twisted.protocols.wire import Echo
serverFromString(reactor, "faketcp:9191").listen(Factory.forProtocol(Echo))
print("listening", flush=True)
reactor.callLater(float(sys.argv[2]), reactor.stop)
reactor.run()
"""


class DescriptorExhaustionTests(LabTestCase):
    """
    A server out of file descriptors pauses accepting instead of spinning.
    """

    async def test_out_of_descriptors_pauses_accepting(self) -> None:
        """
        With its descriptors exhausted, the server logs one warning per
        pause (not one per loop turn) and keeps serving the connections it
        has; the clients it could not accept time out.
        """
        import os
        import subprocess
        import sys

        checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        server = subprocess.Popen(
            ["ip", "netns", "exec", self.lab.S, sys.executable, "-c", _LOW_FD_SERVER, "40", "4"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ, PYTHONPATH=checkout),
        )
        self.addCleanup(server.kill)
        self.addCleanup(server.wait)
        self.assertEqual(server.stdout.readline().strip(), "listening")
        from twisted.internet import reactor
        from twisted.internet.endpoints import clientFromString

        attempts = []
        with netlab.in_namespace(self.lab.C):
            for _ in range(40):
                attempts.append(
                    clientFromString(reactor, f"faketcp:host={self.lab.server4}:port=9191:timeout=2").connect(
                        RecordingFactory()
                    )
                )
        from twisted.internet import defer

        results = await defer.DeferredList(attempts, consumeErrors=True)
        # The kernel completes every handshake (the backlog holds them); only
        # the connections the server could accept echo.
        connected = [protocol for ok, protocol in results if ok]
        try:
            for protocol in connected:
                protocol.transport.write(b"echo?")
            await sleep(1.5)
            served = [protocol for protocol in connected if protocol.received == [b"echo?"]]
            self.assertTrue(served, "no connection was served at all")
            self.assertLess(len(served), 40, "the descriptor limit was never reached")
        finally:
            for protocol in connected:
                if protocol.transport.connected:
                    protocol.transport.abortConnection()
        _out, errors = server.communicate(timeout=20)
        pauses = errors.count("pausing accepts")
        self.assertGreaterEqual(pauses, 1, errors)
        self.assertLessEqual(pauses, 8, errors[:2000])


class Banner(Protocol):
    """
    A service that greets, then echoes (a fallback's stand-in for any real
    server-first service).
    """

    def connectionMade(self) -> None:
        self.transport.write(b"banner\r\n")

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


class HandshakeTests(LabTestCase):
    """
    Handshakes the table does not learn in the usual way.
    """

    timeout = 30
    source = 40123

    async def serve(self, description: str, factory: Any = None, limits: TableLimits | None = None) -> Any:
        endpoint = serverFromString(reactor, description)
        if limits is not None:
            endpoint._options.limits = limits
        with netlab.in_namespace(self.lab.S):
            port = await endpoint.listen(factory or RecordingFactory())
        self.addCleanup(port.stopListening)
        return port

    def probe(self, request: bytes, expected: int = 0) -> bytes | int:
        """
        A plain TCP client in C, from port L{source}: connect, send
        C{request}, read until C{expected} bytes came or the end; what it
        read, or the errno that ended it (-1: a timeout).  It closes with a
        RST, so its own kernel keeps no TIME_WAIT and the port can be used
        again at once.  In a thread.
        """
        with netlab.in_namespace(self.lab.C):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", self.source))
        sock.settimeout(8)
        received = b""
        try:
            sock.connect((self.lab.server4, self.port))
            sock.sendall(request)
            while len(received) < expected:
                data = sock.recv(4096)
                if not data:
                    break
                received += data
        except OSError as failure:
            return failure.errno or -1
        finally:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            sock.close()
        return received

    async def test_port_reused_during_time_wait(self) -> None:
        """
        A client that connects again from the same port while the table
        still holds the 4-tuple's time-wait entry (a client whose kernel
        gave the port out again) is served at once, as a kernel's TIME-WAIT
        socket takes a new SYN: its handshake is learned, not dropped.
        """
        port = await self.serve(f"faketcp:{self.port}:interface=0.0.0.0", Factory.forProtocol(Echo))
        demux = port.demuxes[socket.AF_INET]
        self.assertEqual(await deferToThread(self.probe, b"first", 5), b"first")
        await wait_until(lambda: any(key.remote_port == self.source for key in demux.table.time_wait))
        started = time.monotonic()
        self.assertEqual(await deferToThread(self.probe, b"second", 6), b"second")
        self.assertLess(time.monotonic() - started, HANDSHAKE_WAIT)
        self.assertEqual(demux.drops["handshake-unseen"], 0)

    #: A table that learns no handshake and sends no orphan RST: every
    #: connection's adoption waits, then gives up.
    blind = TableLimits(embryos_per_address=0, orphan_resets=0.0)

    async def test_unseen_handed_to_fallback(self) -> None:
        """
        A connection the kernel accepted but whose handshake the table
        never learned is not left hanging: once the adoption's wait gives
        up, a keyed port with a fallback gives it to the service.
        """
        with netlab.in_namespace(self.lab.S):
            service = reactor.listenTCP(0, Factory.forProtocol(Banner), interface="127.0.0.1")
        self.addCleanup(service.stopListening)
        fallback = f"127.0.0.1\\:{service.getHost().port}"
        port = await self.serve(f"faketcp:{self.port}:interface=0.0.0.0:key=k:fallback={fallback}", limits=self.blind)
        started = time.monotonic()
        outcome = await deferToThread(self.probe, b"GET /\r\n", 15)
        self.assertEqual(outcome, b"banner\r\nGET /\r\n")
        self.assertGreaterEqual(time.monotonic() - started, HANDSHAKE_WAIT)
        demux = port.demuxes[socket.AF_INET]
        self.assertEqual((demux.drops["handshake-unseen"], demux.drops["fallback"]), (1, 1))

    async def test_unseen_reset(self) -> None:
        """
        Without a fallback, the kernel's own RST reaches the peer once the
        adoption's wait gives up (unsilenced), so it learns at once rather
        than at its own timeout.
        """
        port = await self.serve(f"faketcp:{self.port}:interface=0.0.0.0", limits=self.blind)
        started = time.monotonic()
        outcome = await deferToThread(self.probe, b"hello", 5)
        self.assertEqual(outcome, errno.ECONNRESET)
        self.assertGreaterEqual(time.monotonic() - started, HANDSHAKE_WAIT)
        self.assertLess(time.monotonic() - started, HANDSHAKE_WAIT + 2)
        self.assertEqual(port.demuxes[socket.AF_INET].drops["handshake-unseen"], 1)


class EndpointPortRangeTests(SynchronousTestCase):
    """
    The endpoint classes check their port numbers as the string parsers
    do: a bad one is a L{ValueError} naming it, not a firewall error later.
    """

    def test_badPorts(self) -> None:
        from twisted.internet import reactor

        from faketcp_twisted.tx.endpoints import FakeTCPClientEndpoint, FakeTCPServerEndpoint

        for port in (-1, 65536):
            self.assertRaises(ValueError, FakeTCPServerEndpoint, reactor, port)
        for port in (0, -1, 65536):
            self.assertRaises(ValueError, FakeTCPClientEndpoint, reactor, "127.0.0.1", port)
        problem = self.assertRaises(
            ValueError, FakeTCPClientEndpoint, reactor, "127.0.0.1", 80, bindAddress=("127.0.0.1", 70000)
        )
        self.assertIn("bindAddress port", str(problem))
        FakeTCPServerEndpoint(reactor, 0)
        FakeTCPClientEndpoint(reactor, "127.0.0.1", 65535)
