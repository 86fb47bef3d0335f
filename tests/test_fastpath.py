"""
Tests for L{faketcp_twisted.fastpath}: the C hot path and its pure-Python
twin give the same results and the same errors, and the demultiplexer built
on them batches its syscalls and mutes the kernel's sockets.

Every codec and socket test runs once per implementation available (the
pure-Python one always, the C one when the extension is built), so the
fallback is exercised wherever the C path is; the cross-checks compare the
two on many random (and randomly broken) packets.
"""

from __future__ import annotations

import errno
import os
import random
import socket
import subprocess
import sys
import time
from typing import Any

from hypothesis import given, settings, strategies as st
from twisted.protocols.wire import Echo
from twisted.trial.unittest import SynchronousTestCase

from faketcp_twisted import fastpath, netlab, segment
from faketcp_twisted.segment import ACK, FIN, PSH, RST, SYN, FlowKey, MalformedSegment
from tests.support import LabTestCase, RecordingFactory, require_root, wait_until
from tests import test_integration
from tests.test_segment import KNOWN_IPV4_DATA, KNOWN_IPV4_SYN, KNOWN_IPV6_DATA, KNOWN_IPV6_FIN, reference_sum

SRC4 = socket.inet_pton(socket.AF_INET, "192.0.2.1")
DST4 = socket.inet_pton(socket.AF_INET, "198.51.100.7")
SRC6 = socket.inet_pton(socket.AF_INET6, "2001:db8::1")
DST6 = socket.inet_pton(socket.AF_INET6, "2001:db8::2")

addresses4 = st.tuples(st.binary(min_size=4, max_size=4), st.binary(min_size=4, max_size=4))
addresses6 = st.tuples(st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16))
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)


def outcome(parse: Any, packet: bytes, verify: bool) -> Any:
    """
    What parsing C{packet} gives: the segment, or the reason it was refused.
    """
    try:
        return parse(packet, verify)
    except MalformedSegment as refused:
        return ("malformed", refused.reason)


def _implementation_tests(implementation: fastpath.Implementation | None, name: str) -> type[SynchronousTestCase]:
    """
    The contract every implementation keeps, as a test case for one of
    them.  Made by a function, so that each case has its own test methods
    (hypothesis refuses one decorated test shared by two classes).
    """

    impl = implementation or fastpath.PYTHON

    class ImplementationTests(SynchronousTestCase):
        if implementation is None:
            skip = "the C fast path is not built (python setup.py build_ext --inplace)"

        @given(st.one_of(addresses4, addresses6), u16, u16, u32, u32, st.integers(0, 0xFF), u16, st.integers(0, 0xFF), st.binary(max_size=1500))
        @settings(max_examples=300, deadline=None)
        def test_buildMatchesCodec(
            self, addresses: tuple[bytes, bytes], sport: int, dport: int, seq: int, ack: int, flags: int, window: int, ttl: int, payload: bytes
        ) -> None:
            """
            A segment built from a flow's template is, byte for byte, the one
            the codec builds field by field.
            """
            src, dst = addresses
            template = fastpath.segment_template(src, dst, sport, dport, window, ttl)
            built = impl.build_segment(template, seq, ack, flags, payload)
            self.assertEqual(built, segment.build_packet(src, dst, sport, dport, seq, ack, flags, window, payload, ttl))

        @given(st.one_of(addresses4, addresses6), st.binary(max_size=1500))
        @settings(max_examples=200, deadline=None)
        def test_builtSegmentsVerify(self, addresses: tuple[bytes, bytes], payload: bytes) -> None:
            """
            A built segment's checksum verifies, against the codec's parser and
            the RFC 1071 reference loop.
            """
            src, dst = addresses
            template = fastpath.segment_template(src, dst, 40000, 443, 0xFFFF)
            built = impl.build_segment(template, 7, 9, PSH | ACK, payload)
            parsed = segment.parse_packet(built, True)
            self.assertEqual((parsed.payload, parsed.seq, parsed.ack), (payload, 7, 9))
            header = 20 if len(src) == 4 else 40
            pseudo = src + dst + (
                bytes([0, 6]) + (len(built) - header).to_bytes(2, "big")
                if len(src) == 4
                else (len(built) - header).to_bytes(4, "big") + bytes([0, 0, 0, 6])
            )
            self.assertEqual(reference_sum(pseudo + built[header:]), 0xFFFF)

        def test_buildAcceptsAnyBuffer(self) -> None:
            """
            The payload may be a memoryview or bytearray (a slice of a larger
            write, say), and gives the same packet.
            """
            template = fastpath.segment_template(SRC4, DST4, 1, 2, 3)
            build = impl.build_segment
            expected = build(template, 1, 2, ACK, b"abcdef")
            self.assertEqual(build(template, 1, 2, ACK, memoryview(b"xabcdefx")[1:7]), expected)
            self.assertEqual(build(template, 1, 2, ACK, bytearray(b"abcdef")), expected)

        def test_buildRefusesBadTemplates(self) -> None:
            """
            Anything but a 40-byte IPv4 or 60-byte IPv6 template is refused.
            """
            build = impl.build_segment
            template = fastpath.segment_template(SRC4, DST4, 1, 2, 3)
            for bad in (template[:39], template + b"\0", b"\x60" + template[1:], b"\x45" + bytes(59)):
                self.assertRaises(ValueError, build, bad, 0, 0, ACK, b"")

        def test_buildRefusesOutOfRange(self) -> None:
            """
            Sequence and ack numbers beyond 32 bits, negative ones, and flags
            beyond 8 bits raise OverflowError; a payload that cannot fit one IP
            packet raises ValueError.
            """
            build = impl.build_segment
            template4 = fastpath.segment_template(SRC4, DST4, 1, 2, 3)
            template6 = fastpath.segment_template(SRC6, DST6, 1, 2, 3)
            for seq, ack, flags in ((1 << 32, 0, 0), (0, 1 << 32, 0), (-1, 0, 0), (0, -1, 0), (0, 0, 256), (0, 0, -1)):
                self.assertRaises(OverflowError, build, template4, seq, ack, flags, b"")
            self.assertRaises(ValueError, build, template4, 0, 0, ACK, bytes(65535 - 40 + 1))
            self.assertEqual(len(build(template4, 0, 0, ACK, bytes(65535 - 40))), 65535)
            self.assertRaises(ValueError, build, template6, 0, 0, ACK, bytes(65535 - 20 + 1))
            self.assertEqual(len(build(template6, 0, 0, ACK, bytes(65535 - 20))), 65535 + 40)

        def test_knownPackets(self) -> None:
            """
            The packets written out by hand in the codec's tests parse, and
            verify, to what the codec says.
            """
            for packet in (KNOWN_IPV4_DATA, KNOWN_IPV4_SYN, KNOWN_IPV6_DATA, KNOWN_IPV6_FIN):
                for verify in (True, False):
                    self.assertEqual(impl.parse_packet(packet, verify), segment.parse_packet(packet, verify))

        def test_parseKeywordAndDefault(self) -> None:
            """
            C{verify_checksum} is a keyword argument defaulting to true, as in
            the codec.
            """
            broken = KNOWN_IPV4_DATA[:-1] + bytes([KNOWN_IPV4_DATA[-1] ^ 1])
            parse = impl.parse_packet
            self.assertRaises(MalformedSegment, parse, broken)
            self.assertEqual(parse(broken, verify_checksum=False).payload, broken[40:])

        def test_parsedTypes(self) -> None:
            """
            Parsing gives the codec's own L{segment.Segment}, fields typed as
            the codec types them.
            """
            parsed = impl.parse_packet(KNOWN_IPV6_DATA)
            self.assertIsInstance(parsed, segment.Segment)
            self.assertEqual([type(value) for value in parsed], [bytes, bytes, int, int, int, int, int, int, bytes, bytes, int])

        @given(st.binary(max_size=120), st.booleans())
        @settings(max_examples=500, deadline=None)
        def test_anyBytesParseAsTheCodecSays(self, packet: bytes, verify: bool) -> None:
            """
            For any bytes at all, the same segment or the same refusal reason.
            """
            self.assertEqual(outcome(impl.parse_packet, packet, verify), outcome(segment.parse_packet, packet, verify))

        @given(st.lists(st.binary(max_size=64).map(lambda b: b[: len(b) & ~1]), max_size=4), st.binary(max_size=200))
        @settings(max_examples=300, deadline=None)
        def test_checksumSum(self, even_parts: list[bytes], last: bytes) -> None:
            """
            The sum of word-aligned parts (the last may be odd) is the codec's,
            and, reduced modulo 0xffff, the reference loop's.
            """
            parts = [*even_parts, last]
            total = impl.internet_checksum_sum(*parts)
            self.assertEqual(total, segment.internet_checksum_sum(*parts))
            self.assertEqual(total, reference_sum(b"".join(parts)) % 0xFFFF)

        def test_checksumOfNothing(self) -> None:
            """
            No parts, or empty ones, sum to zero.
            """
            self.assertEqual(impl.internet_checksum_sum(), 0)
            self.assertEqual(impl.internet_checksum_sum(b"", b""), 0)

    ImplementationTests.__name__ = ImplementationTests.__qualname__ = name
    return ImplementationTests


PythonImplementationTests = _implementation_tests(fastpath.PYTHON, "PythonImplementationTests")
CImplementationTests = _implementation_tests(fastpath.C, "CImplementationTests")


class CrossCheckTests(SynchronousTestCase):
    """
    The C and Python implementations on many random packets, whole and
    broken, from both families and every flag combination.
    """

    if fastpath.C is None:
        skip = "the C fast path is not built (python setup.py build_ext --inplace)"

    def test_randomPackets(self) -> None:
        """
        20,000 random segments: built alike, parsed alike, and, broken by a
        few random bytes or a cut, refused (or not) alike.
        """
        assert fastpath.C is not None
        c, python = fastpath.C, fastpath.PYTHON
        chance = random.Random(5)
        for _ in range(20000):
            size = chance.choice((4, 16))
            src, dst = os.urandom(size), os.urandom(size)
            fields = (chance.randrange(1 << 32), chance.randrange(1 << 32), chance.choice((PSH | ACK, ACK, FIN | ACK, RST | ACK, SYN, chance.randrange(256))))
            payload = os.urandom(chance.choice((0, 1, 2, 3, chance.randrange(1500))))
            template = fastpath.segment_template(src, dst, chance.randrange(65536), chance.randrange(65536), chance.randrange(65536), chance.randrange(256))
            built = c.build_segment(template, *fields, payload)
            self.assertEqual(built, python.build_segment(template, *fields, payload))
            broken = bytearray(built)
            for _ in range(chance.randrange(4)):
                broken[chance.randrange(len(broken))] = chance.randrange(256)
            if chance.random() < 0.3:
                del broken[chance.randrange(len(broken) + 1) :]
            for packet in (built, bytes(broken)):
                for verify in (True, False):
                    self.assertEqual(outcome(c.parse_packet, packet, verify), outcome(python.parse_packet, packet, verify))


class SelectionTests(SynchronousTestCase):
    """
    Which implementation runs, and switching it.
    """

    def test_environmentForcesPurePython(self) -> None:
        """
        C{FAKETCP_PURE_PYTHON=1} selects the pure-Python path even when the
        C one is built; without it, the C one is used when built.
        """
        script = "from faketcp_twisted import fastpath; print(fastpath.active.name)"
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        for value, expected in (("1", "python"), ("", "c" if fastpath.C else "python")):
            env = dict(os.environ, FAKETCP_PURE_PYTHON=value, PYTHONPATH=root)
            found = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True, cwd=root)
            self.assertEqual(found.stdout.strip(), expected)

    def test_useSwitchesModuleFunctions(self) -> None:
        """
        L{fastpath.use} rebinds the module's functions and returns what was
        active, so a test can restore it.
        """
        previous = fastpath.use("python")
        self.addCleanup(fastpath.use, previous)
        self.assertIs(fastpath.active, fastpath.PYTHON)
        self.assertIs(fastpath.parse_packet, fastpath.PYTHON.parse_packet)
        self.assertIs(fastpath.use(previous), fastpath.PYTHON)
        self.assertIs(fastpath.build_segment, previous.build_segment)

    def test_unknownImplementation(self) -> None:
        """
        Asking for an implementation that is not here raises LookupError.
        """
        self.assertRaises(LookupError, fastpath.use, "fortran")

    def test_pythonAlwaysAvailable(self) -> None:
        """
        The pure-Python implementation is always first among those available.
        """
        self.assertIs(fastpath.available()[0], fastpath.PYTHON)


class _SocketTests:
    """
    Batch send and receive on real sockets: a raw socket in one namespace
    of a two-host lab, a capture in the other.
    """

    implementation: fastpath.Implementation
    assertEqual: Any
    addCleanup: Any

    def setUp(self) -> None:
        require_root()
        from faketcp_twisted.capture import Capture

        self.lab = netlab.two_hosts()
        self.addCleanup(self.lab.destroy)
        # Nothing listens on the port in S: keep its kernel's RSTs home.
        self.lab.iptables(self.lab.S, "-A", "OUTPUT", "-p", "tcp", "--sport", "9191", "-j", "DROP")
        with netlab.in_namespace(self.lab.C):
            self.sender = Capture(socket.AF_INET, 9191, "src")
        with netlab.in_namespace(self.lab.S):
            self.receiver = Capture(socket.AF_INET, 9191, "dst")
        self.addCleanup(self.sender.close)
        self.addCleanup(self.receiver.close)
        self.src = socket.inet_aton(self.lab.client4)
        self.dst = socket.inet_aton(self.lab.server4)
        self.template = fastpath.segment_template(self.src, self.dst, 40000, 9191, 0xFFFF)

    def packets(self, count: int, start: int = 0) -> list[fastpath.Outgoing]:
        address = (self.lab.server4, 0)
        return [(fastpath.build_segment(self.template, start + i, 0, PSH | ACK, b"%d" % (start + i)), address) for i in range(count)]

    def receive_all(self, expected: int) -> fastpath.Received:
        segments: list[segment.Segment] = []
        keys: list[FlowKey] = []
        malformed: list[str] = []

        def more() -> bool:
            got = self.implementation.receive_segments(self.receiver.capture, 1000)
            segments.extend(got[0])
            keys.extend(got[1])
            malformed.extend(got[2])
            return len(segments) + len(malformed) >= expected

        for _ in range(200):
            if more():
                break
            time.sleep(0.005)
        return segments, keys, malformed

    def test_sendAndReceiveBatch(self) -> None:
        """
        300 packets (more than one kernel batch) go out in order and come
        back parsed, with the flow key of each as this side sees it.
        """
        items = self.packets(300)
        sent, errors = self.implementation.send_batch(self.sender.sender, items, 0)
        self.assertEqual((sent, errors), (300, []))
        segments, keys, malformed = self.receive_all(300)
        self.assertEqual(malformed, [])
        self.assertEqual([each.payload for each in segments], [b"%d" % i for i in range(300)])
        self.assertEqual(set(keys), {FlowKey(self.dst, 9191, self.src, 40000)})
        self.assertEqual(type(keys[0]), FlowKey)

    def test_sendFromStart(self) -> None:
        """
        Only the items from C{start} on are sent.
        """
        sent, errors = self.implementation.send_batch(self.sender.sender, self.packets(10), 7)
        self.assertEqual((sent, errors), (10, []))
        segments, _keys, _malformed = self.receive_all(3)
        self.assertEqual([each.payload for each in segments], [b"7", b"8", b"9"])

    def test_badChecksumReported(self) -> None:
        """
        A segment whose checksum does not verify is reported by reason, and
        the good ones around it still arrive.
        """
        items = self.packets(3)
        packet, address = items[1]
        items[1] = (packet[:-1] + bytes([packet[-1] ^ 0xFF]), address)
        self.implementation.send_batch(self.sender.sender, items, 0)
        segments, _keys, malformed = self.receive_all(3)
        self.assertEqual([each.payload for each in segments], [b"0", b"2"])
        self.assertEqual(malformed, ["bad-checksum"])

    def test_budget(self) -> None:
        """
        No more than the budget is read; the rest stays queued.
        """
        self.implementation.send_batch(self.sender.sender, self.packets(100), 0)
        time.sleep(0.05)
        first = self.implementation.receive_segments(self.receiver.capture, 70)
        self.assertEqual(len(first[0]), 70)
        rest = self.implementation.receive_segments(self.receiver.capture, 1000)
        self.assertEqual(len(rest[0]), 30)

    def test_emptyCapture(self) -> None:
        """
        An empty capture gives three empty lists, without blocking.
        """
        self.assertEqual(self.implementation.receive_segments(self.receiver.capture, 64), ([], [], []))

    def test_refusedPacketSkipped(self) -> None:
        """
        A packet the kernel refuses (no route to its destination) is
        skipped with its errno, and the packets after it are sent.
        """
        items = self.packets(3)
        nowhere = fastpath.segment_template(self.src, socket.inet_aton("203.0.113.9"), 40000, 9191, 0xFFFF)
        items[1] = (fastpath.build_segment(nowhere, 0, 0, PSH | ACK, b"lost"), ("203.0.113.9", 0))
        sent, errors = self.implementation.send_batch(self.sender.sender, items, 0)
        self.assertEqual((sent, errors), (3, [errno.ENETUNREACH]))
        segments, _keys, _malformed = self.receive_all(2)
        self.assertEqual([each.payload for each in segments], [b"0", b"2"])


class PythonSocketTests(_SocketTests, SynchronousTestCase):
    implementation = fastpath.PYTHON


class CSocketTests(_SocketTests, SynchronousTestCase):
    implementation = fastpath.C or fastpath.PYTHON
    if fastpath.C is None:
        skip = "the C fast path is not built (python setup.py build_ext --inplace)"


class PurePythonEchoTests(test_integration.EchoTests):
    """
    The transport's echo tests again, on the pure-Python fast path.
    """

    def setUp(self) -> None:
        previous = fastpath.use(fastpath.PYTHON)
        self.addCleanup(fastpath.use, previous)
        super().setUp()


class BatchingTests(LabTestCase):
    """
    What the demultiplexer hands the kernel, and when.
    """

    async def _connected(self) -> tuple[Any, Any, list[int]]:
        server = RecordingFactory(Echo)
        await self.listen(server)
        client = await self.connect(RecordingFactory(), f"faketcp:host={self.lab.server4}:port={self.port}")
        # One round trip first: until the server's scaled window is known
        # the flow holds datagrams back, which is not what is measured.
        client.transport.write(b"hello")
        await wait_until(lambda: client.received == [b"hello"])
        demux = client.transport.demux
        return client, demux, _record_batches(demux)

    async def test_lonePacketLeavesAtOnce(self) -> None:
        """
        A write outside a read batch, with nothing else going on, is handed
        to the kernel before write returns.
        """
        client, demux, batches = await self._connected()
        demux._lastSent = 0.0
        client.transport.write(b"alone")
        self.assertEqual(batches, [1])
        await wait_until(lambda: client.received[-1:] == [b"alone"])

    async def test_burstLeavesInBatches(self) -> None:
        """
        A burst of writes in one turn reaches the kernel in a few batches
        of up to L{Demultiplexer.flushThreshold}, all of it before the loop
        comes round again, and arrives whole and in order.
        """
        client, demux, batches = await self._connected()
        messages = [b"burst %d" % i for i in range(300)]
        for message in messages:
            client.transport.write(message)
        self.assertLessEqual(max(batches), demux.flushThreshold)
        self.assertLessEqual(len(batches), 300 // demux.flushThreshold + 3)
        await wait_until(lambda: sum(batches) == 300)
        await wait_until(lambda: len(client.received) == 301)
        self.assertEqual(client.received[1:], messages)

    async def test_coalescedSendsLeaveTogether(self) -> None:
        """
        Within C{coalesced_sends}, writes wait and reach the kernel in one
        batch when it ends, with no call scheduled on the loop; they
        arrive whole and in order.
        """
        from faketcp_twisted.demux import coalesced_sends

        client, demux, batches = await self._connected()
        messages = [b"together %d" % i for i in range(10)]
        with coalesced_sends:
            for message in messages:
                client.transport.write(message)
            self.assertEqual(batches, [])
        self.assertEqual(batches, [10])
        self.assertIsNone(demux._flushCall)
        await wait_until(lambda: len(client.received) == 11)
        self.assertEqual(client.received[1:], messages)

    async def test_timerSendsBoundedPerTick(self) -> None:
        """
        Keepalives that fall due together leave at most
        C{timerSendsPerTick} flows' worth per tick (a quarter of the backlog
        when that is more); the rest go on the next ticks.
        """
        server = RecordingFactory(Echo)
        await self.listen(server)
        clients = [await self.connect(RecordingFactory(), f"faketcp:host={self.lab.server4}:port={self.port}") for _ in range(5)]
        demux = clients[0].transport.demux
        self.assertTrue(all(client.transport.demux is demux for client in clients))
        batches = _record_batches(demux)
        demux.timerSendsPerTick = 2
        now = demux.loop.seconds()
        for client in clients:
            flow = client.transport.flow
            flow.keepalive_interval = 1.0
            flow.last_tx = now - 5.0
        sent = []
        for _ in range(3):
            # A tick now, in place of the one scheduled.
            demux._timer.cancel()
            demux._tick()
            sent.append(sum(batches))
            batches.clear()
        self.assertEqual(sent, [2, 2, 1])
        self.assertTrue(all(not client.transport.flow.pending for client in clients))

    async def test_kernelSocketMuted(self) -> None:
        """
        The kernel answers none of an adopted flow's segments (no
        duplicate ACK for the silencing rule to drop): its TCP sends
        nothing while data flows, either way.
        """
        client, demux, _batches = await self._connected()
        before = {ns: _tcp_out_segments(self.lab, ns) for ns in (self.lab.S, self.lab.C)}
        for i in range(200):
            client.transport.write(b"x" * 1000)
        await wait_until(lambda: len(client.received) == 201)
        for ns in (self.lab.S, self.lab.C):
            self.assertEqual(_tcp_out_segments(self.lab, ns), before[ns], ns)


def _record_batches(demux: Any) -> list[int]:
    """
    Note how many packets each call of the capture's C{send_batch} handed
    to the kernel (the call itself goes through unchanged).
    """
    batches: list[int] = []
    send_batch = demux.capture.send_batch

    def recording(items: list[Any], start: int) -> tuple[int, list[int]]:
        result: tuple[int, list[int]] = send_batch(items, start)
        batches.append(result[0] - start)
        return result

    demux.capture.send_batch = recording
    return batches


def _tcp_out_segments(lab: netlab.Lab, ns: str) -> int:
    """
    Segments the kernel's TCP of C{ns} sent (C{Tcp: OutSegs}); fake
    segments go through raw sockets and are not counted.
    """
    lines = lab.run(ns, "cat", "/proc/net/snmp").stdout.splitlines()
    header, values = [line.split() for line in lines if line.startswith("Tcp:")][:2]
    return int(values[header.index("OutSegs")])
