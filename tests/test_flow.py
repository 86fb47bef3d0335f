"""
Tests for L{faketcp_twisted.flow}: two sans-IO L{Flow}s, a client's and a
server's with mirrored keys and initial sequence numbers, driven against
each other in memory.  Every packet one side produces goes through
L{parse_packet} (checksum verified) into the other side's C{receive}, so
the tests also show that what a flow sends is well-formed on the wire.
"""

from __future__ import annotations

import socket

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from faketcp_twisted.flow import (
    WINDOW_FIELD,
    EndReason,
    Flow,
    FlowKey,
    FlowState,
    FlowStats,
)
from faketcp_twisted.segment import (
    ACK,
    FIN,
    PSH,
    RST,
    SYN,
    Segment,
    build_packet,
    parse_packet,
    seq_after,
)

CLIENT_ADDR = socket.inet_pton(socket.AF_INET, "192.0.2.1")
SERVER_ADDR = socket.inet_pton(socket.AF_INET, "198.51.100.7")
CLIENT_ADDR6 = socket.inet_pton(socket.AF_INET6, "2001:db8::1")
SERVER_ADDR6 = socket.inet_pton(socket.AF_INET6, "2001:db8::2")
CLIENT_PORT = 40000
SERVER_PORT = 443

CLIENT_ISN = 0x11111111
SERVER_ISN = 0x88888888
#: An ISN whose first bytes wrap sequence numbers past 2**32.
NEAR_WRAP_ISN = 0xFFFFFFF0

MSS = 1200


class Pair:
    """
    A client flow and a server flow connected back to back.
    """

    def __init__(
        self,
        client_isn: int = CLIENT_ISN,
        server_isn: int = SERVER_ISN,
        family: int = socket.AF_INET,
        **kwargs: object,
    ) -> None:
        if family == socket.AF_INET:
            client_addr, server_addr = CLIENT_ADDR, SERVER_ADDR
        else:
            client_addr, server_addr = CLIENT_ADDR6, SERVER_ADDR6
        self.client_isn = client_isn
        self.server_isn = server_isn
        self.client = Flow.from_handshake(
            FlowKey(client_addr, CLIENT_PORT, server_addr, SERVER_PORT),
            client_isn,
            server_isn,
            MSS,
            0.0,
            **kwargs,  # type: ignore[arg-type]
        )
        self.server = Flow.from_handshake(
            FlowKey(server_addr, SERVER_PORT, client_addr, CLIENT_PORT),
            server_isn,
            client_isn,
            MSS,
            0.0,
            **kwargs,  # type: ignore[arg-type]
        )

    def peer(self, flow: Flow) -> Flow:
        return self.server if flow is self.client else self.client


def wire(packet: bytes) -> Segment:
    """
    What the other side's capture makes of C{packet}.
    """
    return parse_packet(packet, verify_checksum=True)


def from_client(seq: int, ack: int, flags: int, payload: bytes = b"") -> bytes:
    """
    A packet from the client to the server built by hand, not by a flow.
    """
    return build_packet(
        CLIENT_ADDR, SERVER_ADDR, CLIENT_PORT, SERVER_PORT, seq, ack, flags, 0xFFFF, payload
    )


def from_server(seq: int, ack: int, flags: int, payload: bytes = b"") -> bytes:
    """
    A packet from the server to the client built by hand, not by a flow.
    """
    return build_packet(
        SERVER_ADDR, CLIENT_ADDR, SERVER_PORT, CLIENT_PORT, seq, ack, flags, 0xFFFF, payload
    )


def deliver(packet: bytes, to: Flow, now: float = 1.0) -> bytes | None:
    """
    Hand C{packet} to C{to} as its capture would.
    """
    return to.receive(wire(packet), now)


class HandshakeStateTests(SynchronousTestCase):
    """
    L{Flow.from_handshake} starts where the kernel's handshake left off.
    """

    def test_sequenceNumbersStartAfterISNs(self) -> None:
        """
        Each side's next sequence number is its ISN plus one, and its ack is
        the peer's ISN plus one.
        """
        pair = Pair()
        self.assertEqual(pair.client.snd_nxt, CLIENT_ISN + 1)
        self.assertEqual(pair.client.rcv_high, SERVER_ISN + 1)
        self.assertEqual(pair.server.snd_nxt, SERVER_ISN + 1)
        self.assertEqual(pair.server.rcv_high, CLIENT_ISN + 1)
        self.assertIs(pair.client.state, FlowState.ESTABLISHED)
        self.assertIsNone(pair.client.end_reason)
        self.assertTrue(pair.client.can_send)
        self.assertTrue(pair.client.can_receive)

    def test_isnAtTopWraps(self) -> None:
        """
        An ISN of 2**32 - 1 gives a next sequence number of zero.
        """
        pair = Pair(client_isn=0xFFFFFFFF, server_isn=0xFFFFFFFF)
        self.assertEqual(pair.client.snd_nxt, 0)
        self.assertEqual(pair.client.rcv_high, 0)

    def test_ackEveryFromReceiveWindow(self) -> None:
        """
        A bare ACK is due after a quarter of the receive window, at most
        1 MiB and at least one byte.
        """
        key = FlowKey(CLIENT_ADDR, 1, SERVER_ADDR, 2)
        for window, ack_every in [(4000, 1000), (1 << 30, 1 << 20), (1, 1), (0, 1)]:
            flow = Flow.from_handshake(key, 0, 0, MSS, 0.0, receive_window=window)
            self.assertEqual(flow.ack_every, ack_every)


class DataTests(SynchronousTestCase):
    """
    Data segments in both directions.
    """

    def test_deliveredExactlyBothWays(self) -> None:
        """
        Every datagram sent is delivered once, unchanged, in both directions.
        """
        pair = Pair()
        for i in range(5):
            data = b"c2s %d " % i + b"x" * i
            self.assertEqual(deliver(pair.client.send(data, 1.0), pair.server), data)
            reply = b"s2c %d " % i + b"y" * (2 * i)
            self.assertEqual(deliver(pair.server.send(reply, 1.0), pair.client), reply)

    def test_ipv6(self) -> None:
        """
        Flows between IPv6 addresses work the same.
        """
        pair = Pair(family=socket.AF_INET6)
        packet = pair.client.send(b"over six", 1.0)
        self.assertEqual(wire(packet).family, socket.AF_INET6)
        self.assertEqual(deliver(packet, pair.server), b"over six")

    def test_emptyDatagram(self) -> None:
        """
        An empty datagram makes a PSH|ACK segment that delivers nothing and
        does not advance the sequence number.
        """
        pair = Pair()
        segment = wire(pair.client.send(b"", 1.0))
        self.assertEqual(segment.flags, PSH | ACK)
        self.assertEqual(segment.seq, CLIENT_ISN + 1)
        self.assertEqual(pair.client.snd_nxt, CLIENT_ISN + 1)
        self.assertIsNone(pair.server.receive(segment, 1.0))

    def test_segmentFields(self) -> None:
        """
        A data segment carries the flow's addresses and ports, PSH|ACK, the
        constant window field and no options.
        """
        pair = Pair()
        segment = wire(pair.client.send(b"hello", 1.0))
        self.assertEqual(
            (segment.src, segment.dst, segment.sport, segment.dport),
            (CLIENT_ADDR, SERVER_ADDR, CLIENT_PORT, SERVER_PORT),
        )
        self.assertEqual(segment.flags, PSH | ACK)
        self.assertEqual(segment.window, 0xFFFF)
        self.assertEqual(WINDOW_FIELD, 0xFFFF)
        self.assertEqual(segment.options, b"")

    def test_seqAdvancesFromISNPlusOne(self) -> None:
        """
        The first segment has sequence number ISN + 1; each next one starts
        where the previous payload ended.
        """
        pair = Pair()
        seqs = [wire(pair.client.send(b"a" * size, 1.0)).seq for size in (10, 20, 30, 1)]
        base = CLIENT_ISN + 1
        self.assertEqual(seqs, [base, base + 10, base + 30, base + 60])
        self.assertEqual(pair.client.snd_nxt, base + 61)

    def test_seqWrapsAround(self) -> None:
        """
        Sequence numbers wrap modulo 2**32 and data keeps flowing.
        """
        pair = Pair(client_isn=NEAR_WRAP_ISN)
        packets = [pair.client.send(b"z" * 10, 1.0) for _ in range(3)]
        self.assertEqual([wire(p).seq for p in packets], [0xFFFFFFF1, 0xFFFFFFFB, 0x00000005])
        self.assertEqual([deliver(p, pair.server) for p in packets], [b"z" * 10] * 3)
        self.assertEqual(pair.server.rcv_high, 0x0F)
        self.assertEqual(pair.server.stats.rx_gap_bytes, 0)

    def test_ackIsHighestByteSeen(self) -> None:
        """
        Every segment sent acknowledges the end of the highest byte seen from
        the peer.
        """
        pair = Pair()
        first = wire(pair.server.send(b"before", 1.0))
        self.assertEqual(first.ack, CLIENT_ISN + 1)
        for size in (100, 200, 300):
            deliver(pair.client.send(b"d" * size, 1.0), pair.server)
        self.assertEqual(pair.server.rcv_high, CLIENT_ISN + 1 + 600)
        self.assertEqual(wire(pair.server.send(b"r", 1.0)).ack, CLIENT_ISN + 1 + 600)
        self.assertEqual(wire(pair.server.bare_ack(1.0)).ack, CLIENT_ISN + 1 + 600)

    def test_bareAck(self) -> None:
        """
        A bare ACK carries ACK alone, no payload, and does not advance the
        sequence number.
        """
        pair = Pair()
        pair.client.send(b"12345", 1.0)
        segment = wire(pair.client.bare_ack(2.0))
        self.assertEqual(segment.flags, ACK)
        self.assertEqual(segment.payload, b"")
        self.assertEqual(segment.seq, CLIENT_ISN + 6)
        self.assertEqual(pair.client.snd_nxt, CLIENT_ISN + 6)
        self.assertEqual(pair.client.last_tx, 2.0)
        self.assertIsNone(deliver(pair.client.bare_ack(2.0), pair.server))

    def test_sendRejectsMoreThanMSS(self) -> None:
        """
        A datagram larger than the MSS is refused and changes nothing; one of
        exactly the MSS is sent.
        """
        pair = Pair()
        self.assertRaises(ValueError, pair.client.send, b"x" * (MSS + 1), 1.0)
        self.assertEqual(pair.client.snd_nxt, CLIENT_ISN + 1)
        self.assertEqual(pair.client.stats.tx_segments, 0)
        self.assertEqual(deliver(pair.client.send(b"x" * MSS, 1.0), pair.server), b"x" * MSS)

    def test_stats(self) -> None:
        """
        Segments and bytes are counted in both directions.
        """
        pair = Pair()
        for size in (3, 4):
            deliver(pair.client.send(b"s" * size, 1.0), pair.server)
        self.assertEqual((pair.client.stats.tx_segments, pair.client.stats.tx_bytes), (2, 7))
        self.assertEqual((pair.server.stats.rx_segments, pair.server.stats.rx_bytes), (2, 7))
        self.assertEqual(pair.server.stats.rx_loss_estimate, 0.0)

    def test_timesRecorded(self) -> None:
        """
        Sending records C{last_tx}; receiving records C{last_rx}.
        """
        pair = Pair()
        packet = pair.client.send(b"t", 3.5)
        self.assertEqual(pair.client.last_tx, 3.5)
        pair.server.receive(wire(packet), 4.5)
        self.assertEqual(pair.server.last_rx, 4.5)


class LossTests(SynchronousTestCase):
    """
    A lost segment is a datagram that never arrives; the flow never waits
    for it.
    """

    def test_gapSkipped(self) -> None:
        """
        With the middle segment lost, the next one is delivered, the ack
        jumps past the gap, and the gap is counted as lost.
        """
        pair = Pair()
        first = pair.client.send(b"1" * 100, 1.0)
        pair.client.send(b"2" * 100, 1.0)  # lost
        third = pair.client.send(b"3" * 100, 1.0)
        self.assertEqual(deliver(first, pair.server), b"1" * 100)
        self.assertEqual(deliver(third, pair.server), b"3" * 100)
        self.assertEqual(pair.server.rcv_high, CLIENT_ISN + 1 + 300)
        self.assertEqual(wire(pair.server.bare_ack(1.0)).ack, CLIENT_ISN + 1 + 300)
        stats = pair.server.stats
        self.assertEqual(stats.rx_gap_bytes, 100)
        self.assertEqual(stats.rx_reordered, 0)
        self.assertGreater(stats.rx_loss_estimate, 0)
        self.assertAlmostEqual(stats.rx_loss_estimate, 1 / 3)

    def test_gapAcrossWrap(self) -> None:
        """
        A gap spanning the wrap of sequence numbers is measured correctly.
        """
        pair = Pair(client_isn=NEAR_WRAP_ISN)
        pair.client.send(b"a" * 30, 1.0)  # lost: covers 0xfffffff1 .. 0x0e
        second = pair.client.send(b"b" * 10, 1.0)
        self.assertEqual(deliver(second, pair.server), b"b" * 10)
        self.assertEqual(pair.server.stats.rx_gap_bytes, 30)
        self.assertEqual(pair.server.rcv_high, (NEAR_WRAP_ISN + 41) & 0xFFFFFFFF)

    def test_lossEstimateFormula(self) -> None:
        """
        The estimate is presumed-lost bytes over expected bytes, and zero
        before anything arrived.
        """
        self.assertEqual(FlowStats().rx_loss_estimate, 0.0)
        self.assertEqual(FlowStats(rx_bytes=300, rx_gap_bytes=100).rx_loss_estimate, 0.25)


class ReorderTests(SynchronousTestCase):
    """
    Segments arriving out of order are delivered as they arrive.
    """

    def test_deliveredInNetworkOrder(self) -> None:
        """
        Segment 2 arriving before segment 1: both are delivered, in arrival
        order; the reordering is counted and the loss estimate is back to
        zero once the gap is filled.
        """
        pair = Pair()
        first = pair.client.send(b"1" * 100, 1.0)
        second = pair.client.send(b"2" * 100, 1.0)
        self.assertEqual(deliver(second, pair.server), b"2" * 100)
        self.assertGreater(pair.server.stats.rx_loss_estimate, 0)
        self.assertEqual(deliver(first, pair.server), b"1" * 100)
        stats = pair.server.stats
        self.assertEqual(stats.rx_reordered, 1)
        self.assertEqual(stats.rx_late_bytes, 100)
        self.assertEqual(stats.rx_loss_estimate, 0.0)

    def test_ackDoesNotGoBack(self) -> None:
        """
        A late segment does not pull the ack back.
        """
        pair = Pair()
        first = pair.client.send(b"1" * 100, 1.0)
        second = pair.client.send(b"2" * 100, 1.0)
        deliver(second, pair.server)
        deliver(first, pair.server)
        self.assertEqual(pair.server.rcv_high, CLIENT_ISN + 201)

    def test_partialGapFill(self) -> None:
        """
        Of two lost-looking segments, the one that arrives late no longer
        counts as lost; the other still does.
        """
        pair = Pair()
        a = pair.client.send(b"a" * 100, 1.0)
        pair.client.send(b"b" * 100, 1.0)  # lost for good
        c = pair.client.send(b"c" * 100, 1.0)
        deliver(c, pair.server)
        self.assertEqual(pair.server.stats.rx_gap_bytes, 200)
        deliver(a, pair.server)
        self.assertAlmostEqual(pair.server.stats.rx_loss_estimate, 1 / 3)

    def test_overlapExtendsAck(self) -> None:
        """
        A segment that starts before the highest byte seen and ends after it
        moves the ack to its end without counting a gap.
        """
        pair = Pair()
        base = CLIENT_ISN + 1
        deliver(pair.client.send(b"x" * 100, 1.0), pair.server)
        overlapping = from_client(base + 50, SERVER_ISN + 1, PSH | ACK, b"o" * 100)
        self.assertEqual(deliver(overlapping, pair.server), b"o" * 100)
        self.assertEqual(pair.server.rcv_high, base + 150)
        self.assertEqual(pair.server.stats.rx_gap_bytes, 0)


class DuplicateTests(SynchronousTestCase):
    """
    Datagram semantics: a duplicated segment is delivered again (tcpraw
    peers may send under sequence numbers already used).
    """

    def test_deliveredTwice(self) -> None:
        """
        The same segment twice is delivered twice, and the ack does not move
        back.
        """
        pair = Pair()
        packet = pair.client.send(b"dup", 1.0)
        later = pair.client.send(b"later", 1.0)
        self.assertEqual(deliver(packet, pair.server), b"dup")
        self.assertEqual(deliver(later, pair.server), b"later")
        high = pair.server.rcv_high
        self.assertEqual(deliver(packet, pair.server), b"dup")
        self.assertEqual(deliver(later, pair.server), b"later")
        self.assertEqual(pair.server.rcv_high, high)
        self.assertEqual(pair.server.stats.rx_gap_bytes, 0)
        self.assertEqual(pair.server.stats.rx_loss_estimate, 0.0)

    def test_reusedSequenceNumbers(self) -> None:
        """
        Different datagrams under one sequence number are each delivered.
        """
        pair = Pair()
        base = CLIENT_ISN + 1
        for payload in (b"one", b"two", b"three"):
            packet = from_client(base, SERVER_ISN + 1, PSH | ACK, payload)
            self.assertEqual(deliver(packet, pair.server), payload)
        self.assertEqual(pair.server.rcv_high, base + 5)

    def test_duplicateAfterGapIsNotLate(self) -> None:
        """
        A duplicate of a segment received after a gap is not inside the gap:
        it does not count as the lost bytes arriving late, so the loss
        estimate stays above zero.
        """
        pair = Pair()
        first = pair.client.send(b"1" * 100, 1.0)
        pair.client.send(b"2" * 100, 1.0)  # lost for good
        third = pair.client.send(b"3" * 100, 1.0)
        deliver(first, pair.server)
        deliver(third, pair.server)
        self.assertEqual(deliver(third, pair.server), b"3" * 100)
        self.assertGreater(pair.server.stats.rx_loss_estimate, 0)
        self.assertEqual(pair.server.stats.rx_late_bytes, 0)

    def test_duplicateDoesNotHideLateArrival(self) -> None:
        """
        With a gap of two segments and a duplicate of the segment after it,
        once both missing segments arrive late nothing is lost.
        """
        pair = Pair()
        a = pair.client.send(b"a" * 100, 1.0)
        b = pair.client.send(b"b" * 100, 1.0)
        c = pair.client.send(b"c" * 10, 1.0)
        for packet in (c, c, a, b):
            deliver(packet, pair.server)
        self.assertEqual(pair.server.stats.rx_loss_estimate, 0.0)


class FinTests(SynchronousTestCase):
    """
    Closing with FIN, one half at a time.
    """

    def test_finishHalfCloses(self) -> None:
        """
        After C{finish} this side can no longer send but still receives; the
        FIN segment carries FIN|ACK and takes one sequence number.
        """
        pair = Pair()
        segment = wire(pair.client.finish(2.0))
        self.assertEqual(segment.flags, FIN | ACK)
        self.assertEqual(segment.seq, CLIENT_ISN + 1)
        self.assertEqual(segment.payload, b"")
        self.assertEqual(pair.client.snd_nxt, CLIENT_ISN + 2)
        self.assertEqual(pair.client.last_tx, 2.0)
        self.assertIs(pair.client.state, FlowState.WRITE_CLOSED)
        self.assertFalse(pair.client.can_send)
        self.assertTrue(pair.client.can_receive)
        self.assertEqual(deliver(pair.server.send(b"still", 1.0), pair.client), b"still")

    def test_peerFinReadCloses(self) -> None:
        """
        The peer's FIN makes the flow read-closed: it may still send, and the
        FIN is acknowledged.
        """
        pair = Pair()
        deliver(pair.client.send(b"abc", 1.0), pair.server)
        self.assertIsNone(deliver(pair.client.finish(1.0), pair.server))
        self.assertIs(pair.server.state, FlowState.READ_CLOSED)
        self.assertIsNone(pair.server.end_reason)
        self.assertTrue(pair.server.can_send)
        self.assertFalse(pair.server.can_receive)
        self.assertEqual(pair.server.rcv_high, CLIENT_ISN + 5)
        reply = pair.server.send(b"reply", 1.0)
        self.assertEqual(wire(reply).ack, CLIENT_ISN + 5)
        self.assertEqual(deliver(reply, pair.client), b"reply")

    def test_bothFinsClose(self) -> None:
        """
        FIN from both sides closes both flows: the first to finish ends by
        the peer's FIN, the second by its own.
        """
        pair = Pair()
        deliver(pair.client.finish(1.0), pair.server)
        fin = pair.server.finish(2.0)
        self.assertIs(pair.server.state, FlowState.CLOSED)
        self.assertIs(pair.server.end_reason, EndReason.LOCAL_FIN)
        self.assertFalse(pair.server.can_send)
        self.assertEqual(wire(fin).ack, CLIENT_ISN + 2)
        self.assertIsNone(deliver(fin, pair.client))
        self.assertIs(pair.client.state, FlowState.CLOSED)
        self.assertIs(pair.client.end_reason, EndReason.PEER_FIN)
        self.assertEqual(pair.client.rcv_high, SERVER_ISN + 2)

    def test_dataInFinSegmentDelivered(self) -> None:
        """
        Data carried by the FIN segment itself is delivered, and the ack
        covers both the data and the FIN.
        """
        pair = Pair()
        packet = from_client(CLIENT_ISN + 1, SERVER_ISN + 1, FIN | PSH | ACK, b"last words")
        self.assertEqual(deliver(packet, pair.server), b"last words")
        self.assertIs(pair.server.state, FlowState.READ_CLOSED)
        self.assertEqual(pair.server.rcv_high, CLIENT_ISN + 1 + 10 + 1)

    def test_dataInFinDeliveredWhenWriteClosed(self) -> None:
        """
        A data-carrying FIN that ends a half-closed flow is still delivered.
        """
        pair = Pair()
        pair.server.finish(1.0)
        packet = from_client(CLIENT_ISN + 1, SERVER_ISN + 2, FIN | PSH | ACK, b"bye")
        self.assertEqual(deliver(packet, pair.server), b"bye")
        self.assertIs(pair.server.state, FlowState.CLOSED)
        self.assertIs(pair.server.end_reason, EndReason.PEER_FIN)

    def test_nothingDeliveredAfterPeerFin(self) -> None:
        """
        Data arriving after the peer's FIN is not delivered.
        """
        pair = Pair()
        late = pair.client.send(b"late", 1.0)
        deliver(pair.client.finish(1.0), pair.server)
        self.assertIsNone(deliver(late, pair.server))

    def test_duplicateFinChangesNothing(self) -> None:
        """
        A second copy of the peer's FIN leaves the flow read-closed.
        """
        pair = Pair()
        fin = pair.client.finish(1.0)
        deliver(fin, pair.server)
        deliver(fin, pair.server)
        self.assertIs(pair.server.state, FlowState.READ_CLOSED)
        self.assertEqual(pair.server.rcv_high, CLIENT_ISN + 2)


class ResetTests(SynchronousTestCase):
    """
    Aborting with RST.
    """

    def test_resetClosesBoth(self) -> None:
        """
        C{reset} closes this side (LOCAL_RST) and, once received, the peer
        (PEER_RST).
        """
        pair = Pair()
        packet = pair.client.reset(3.0)
        segment = wire(packet)
        self.assertEqual(segment.flags, RST | ACK)
        self.assertEqual(segment.seq, CLIENT_ISN + 1)
        self.assertIs(pair.client.state, FlowState.CLOSED)
        self.assertIs(pair.client.end_reason, EndReason.LOCAL_RST)
        self.assertFalse(pair.client.can_send)
        self.assertFalse(pair.client.can_receive)
        self.assertIsNone(deliver(packet, pair.server))
        self.assertIs(pair.server.state, FlowState.CLOSED)
        self.assertIs(pair.server.end_reason, EndReason.PEER_RST)

    def test_resetWithPayloadDeliversNothing(self) -> None:
        """
        A RST is never delivered, even if it carries data.
        """
        pair = Pair()
        packet = from_client(CLIENT_ISN + 1, SERVER_ISN + 1, RST | PSH | ACK, b"no")
        self.assertIsNone(deliver(packet, pair.server))
        self.assertIs(pair.server.end_reason, EndReason.PEER_RST)

    def test_nothingDeliveredAfterClosed(self) -> None:
        """
        Once closed, a flow delivers nothing and counts nothing.
        """
        pair = Pair()
        data = pair.client.send(b"data", 1.0)
        deliver(pair.client.reset(1.0), pair.server)
        self.assertIsNone(pair.server.receive(wire(data), 9.0))
        self.assertEqual(pair.server.stats.rx_segments, 0)
        self.assertEqual(pair.server.last_rx, 1.0)
        self.assertEqual(pair.server.pending, [])

    def test_firstEndReasonKept(self) -> None:
        """
        Once a flow ended, a later RST does not change why.
        """
        pair = Pair()
        deliver(pair.client.finish(1.0), pair.server)
        deliver(pair.server.finish(1.0), pair.client)
        self.assertIs(pair.client.end_reason, EndReason.PEER_FIN)
        pair.client.reset(2.0)
        self.assertIs(pair.client.end_reason, EndReason.PEER_FIN)
        pair.client.expire()
        self.assertIs(pair.client.end_reason, EndReason.PEER_FIN)


class SynAckTests(SynchronousTestCase):
    """
    A SYN-ACK on an established flow means the peer missed the handshake's
    last ACK.
    """

    def test_retransmittedSynAckAnsweredOnce(self) -> None:
        """
        A retransmitted SYN-ACK queues exactly one bare ACK answering the
        handshake, and delivers nothing.
        """
        pair = Pair()
        synack = from_server(SERVER_ISN, CLIENT_ISN + 1, SYN | ACK)
        self.assertIsNone(deliver(synack, pair.client))
        self.assertEqual(len(pair.client.pending), 1)
        answer = wire(pair.client.pending[0])
        self.assertEqual(answer.flags, ACK)
        self.assertEqual(answer.seq, CLIENT_ISN + 1)
        self.assertEqual(answer.ack, SERVER_ISN + 1)
        self.assertEqual(answer.payload, b"")
        self.assertEqual(
            (answer.src, answer.dst, answer.sport, answer.dport),
            (CLIENT_ADDR, SERVER_ADDR, CLIENT_PORT, SERVER_PORT),
        )
        self.assertIs(pair.client.state, FlowState.ESTABLISHED)

    def test_eachSynAckAnswered(self) -> None:
        """
        Each retransmission is answered once (the kernel retransmits after
        1, 2, 4... seconds); copies within L{Flow.challengeAckInterval} of
        an answer are not answered again.
        """
        pair = Pair()
        synack = from_server(SERVER_ISN, CLIENT_ISN + 1, SYN | ACK)
        deliver(synack, pair.client, now=1.0)
        deliver(synack, pair.client, now=1.0 + Flow.challengeAckInterval / 2)
        self.assertEqual(len(pair.client.pending), 1)
        self.assertEqual(pair.client.stats.tx_challenge_limited, 1)
        deliver(synack, pair.client, now=2.0)
        deliver(synack, pair.client, now=4.0)
        self.assertEqual(len(pair.client.pending), 3)

    def test_otherSynAckIgnored(self) -> None:
        """
        A SYN-ACK with other numbers than the handshake's is neither
        answered nor allowed to change the flow; it is counted.
        """
        pair = Pair()
        for seq, ack in [(SERVER_ISN + 1, CLIENT_ISN + 1), (SERVER_ISN, CLIENT_ISN + 2), (7, 9)]:
            self.assertIsNone(deliver(from_server(seq, ack, SYN | ACK), pair.client))
        self.assertEqual(pair.client.pending, [])
        self.assertEqual(pair.client.stats.rx_bad_syn, 3)
        self.assertIs(pair.client.state, FlowState.ESTABLISHED)
        self.assertEqual(pair.client.rcv_high, SERVER_ISN + 1)

    def test_bareSynIgnored(self) -> None:
        """
        A SYN without ACK on an established flow is neither delivered nor
        answered.
        """
        pair = Pair()
        syn = from_client(CLIENT_ISN, 0, SYN, b"syn data")
        self.assertIsNone(deliver(syn, pair.server))
        self.assertEqual(pair.server.pending, [])
        self.assertIs(pair.server.state, FlowState.ESTABLISHED)
        self.assertEqual(pair.server.rcv_high, CLIENT_ISN + 1)
        self.assertEqual(pair.server.stats.rx_bad_syn, 1)


class AckEveryTests(SynchronousTestCase):
    """
    Bare ACKs keep the window that conntrack allows moving when this side
    only receives.
    """

    def test_bareAckAfterThreshold(self) -> None:
        """
        Once C{ack_every} bytes arrived unacknowledged, one bare ACK of the
        highest byte seen is queued.
        """
        pair = Pair(receive_window=4000)
        self.assertEqual(pair.server.ack_every, 1000)
        deliver(pair.client.send(b"a" * 500, 1.0), pair.server)
        self.assertEqual(pair.server.pending, [])
        deliver(pair.client.send(b"b" * 499, 1.0), pair.server)
        self.assertEqual(pair.server.pending, [])
        deliver(pair.client.send(b"c", 1.0), pair.server)
        self.assertEqual(len(pair.server.pending), 1)
        ack = wire(pair.server.pending[0])
        self.assertEqual(ack.flags, ACK)
        self.assertEqual(ack.ack, CLIENT_ISN + 1 + 1000)
        self.assertEqual(pair.server.unacked_rx, 0)

    def test_counterRestartsAfterBareAck(self) -> None:
        """
        After a bare ACK, another full C{ack_every} bytes are needed.
        """
        pair = Pair(receive_window=4000)
        for _ in range(2):
            deliver(pair.client.send(b"a" * 1000, 1.0), pair.server)
        deliver(pair.client.send(b"a" * 999, 1.0), pair.server)
        self.assertEqual(len(pair.server.pending), 2)

    def test_sendingDataResetsCounter(self) -> None:
        """
        A data segment acknowledges too, so it restarts the count.
        """
        pair = Pair(receive_window=4000)
        deliver(pair.client.send(b"a" * 600, 1.0), pair.server)
        deliver(pair.server.send(b"reply", 1.0), pair.client)
        self.assertEqual(pair.server.unacked_rx, 0)
        deliver(pair.client.send(b"b" * 600, 1.0), pair.server)
        self.assertEqual(pair.server.pending, [])

    def test_duplicatesCount(self) -> None:
        """
        Received bytes count towards the threshold whatever their sequence
        numbers.
        """
        pair = Pair(receive_window=4000)
        packet = pair.client.send(b"a" * 500, 1.0)
        deliver(packet, pair.server)
        deliver(packet, pair.server)
        self.assertEqual(len(pair.server.pending), 1)


class PollTests(SynchronousTestCase):
    """
    L{Flow.poll} runs the idle and keepalive timers.
    """

    def test_idleExpiry(self) -> None:
        """
        With no segment for C{idle_timeout} seconds, C{poll} returns C{True}
        and the flow is closed for idleness.
        """
        pair = Pair(idle_timeout=10.0)
        self.assertFalse(pair.client.poll(9.9))
        self.assertIs(pair.client.state, FlowState.ESTABLISHED)
        self.assertTrue(pair.client.poll(10.0))
        self.assertIs(pair.client.state, FlowState.CLOSED)
        self.assertIs(pair.client.end_reason, EndReason.IDLE)
        self.assertFalse(pair.client.poll(20.0))

    def test_receivingDefersExpiry(self) -> None:
        """
        Each segment received restarts the idle timer; sending does not.
        """
        pair = Pair(idle_timeout=10.0)
        pair.server.receive(wire(pair.client.send(b"x", 8.0)), 8.0)
        pair.server.send(b"y", 15.0)
        self.assertFalse(pair.server.poll(17.9))
        self.assertTrue(pair.server.poll(18.0))

    def test_keepalive(self) -> None:
        """
        A bare ACK is queued when nothing was sent for C{keepalive_interval}
        seconds, and not again until another interval passed.
        """
        pair = Pair(keepalive_interval=5.0)
        self.assertFalse(pair.client.poll(4.9))
        self.assertEqual(pair.client.pending, [])
        self.assertFalse(pair.client.poll(5.0))
        self.assertEqual(len(pair.client.pending), 1)
        self.assertEqual(wire(pair.client.pending[0]).flags, ACK)
        self.assertFalse(pair.client.poll(9.9))
        self.assertEqual(len(pair.client.pending), 1)
        pair.client.poll(10.0)
        self.assertEqual(len(pair.client.pending), 2)

    def test_sendingDefersKeepalive(self) -> None:
        """
        Sending data restarts the keepalive timer.
        """
        pair = Pair(keepalive_interval=5.0)
        pair.client.send(b"x", 4.0)
        pair.client.poll(8.9)
        self.assertEqual(pair.client.pending, [])

    def test_keepaliveDeliversNothing(self) -> None:
        """
        The peer takes a keepalive without delivering anything, and its
        idle timer restarts.
        """
        pair = Pair(keepalive_interval=5.0, idle_timeout=10.0)
        pair.client.poll(5.0)
        self.assertIsNone(pair.server.receive(wire(pair.client.pending.pop()), 9.0))
        self.assertFalse(pair.server.poll(18.0))

    def test_disabled(self) -> None:
        """
        With both timers disabled (zero), C{poll} never does anything.
        """
        pair = Pair()
        self.assertFalse(pair.client.poll(1e9))
        self.assertIs(pair.client.state, FlowState.ESTABLISHED)
        self.assertEqual(pair.client.pending, [])

    def test_closedFlowNotPolled(self) -> None:
        """
        A closed flow gets neither keepalives nor an idle expiry.
        """
        pair = Pair(keepalive_interval=1.0, idle_timeout=2.0)
        pair.client.reset(0.0)
        self.assertFalse(pair.client.poll(100.0))
        self.assertEqual(pair.client.pending, [])
        self.assertIs(pair.client.end_reason, EndReason.LOCAL_RST)


class NetworkPropertyTests(SynchronousTestCase):
    """
    Properties of one direction of a flow over a network that loses and
    reorders (but does not duplicate) segments.
    """

    @settings(max_examples=200, deadline=None)
    @given(
        isn=st.one_of(st.integers(0, 0xFFFFFFFF), st.integers(0xFFFFF000, 0xFFFFFFFF)),
        sizes=st.lists(st.integers(1, 60), min_size=1, max_size=25),
        data=st.data(),
    )
    def test_lossAndReordering(self, isn: int, sizes: list[int], data: st.DataObject) -> None:
        """
        Whatever arrives is delivered exactly, in arrival order; the ack
        never moves back and ends at the end of the highest segment that
        arrived; the loss estimate is the share of bytes up to there that
        never arrived.
        """
        pair = Pair(client_isn=isn)
        sent = [
            (pair.client.send(bytes([i % 256]) * size, 1.0), offset, size)
            for i, (offset, size) in enumerate(
                zip([sum(sizes[:i]) for i in range(len(sizes))], sizes)
            )
        ]
        arriving = data.draw(st.permutations(sent))
        arriving = arriving[: data.draw(st.integers(0, len(arriving)))]
        ack = pair.server.rcv_high
        for packet, _, size in arriving:
            self.assertEqual(deliver(packet, pair.server), wire(packet).payload)
            self.assertFalse(seq_after(ack, pair.server.rcv_high))
            ack = pair.server.rcv_high
        top = max((offset + size for _, offset, size in arriving), default=0)
        self.assertEqual(pair.server.rcv_high, (isn + 1 + top) & 0xFFFFFFFF)
        received = sum(size for _, _, size in arriving)
        expected = (top - received) / top if top else 0.0
        self.assertAlmostEqual(pair.server.stats.rx_loss_estimate, expected)
        self.assertEqual(pair.server.stats.rx_bytes, received)


class AcceptanceWindowTests(SynchronousTestCase):
    """
    The receive window, the control window and ack plausibility, at their
    edges (see the L{Flow} docstring).
    """

    def test_sizesFromReceiveWindow(self) -> None:
        """
        The windows follow this side's advertised window, within their
        minimums and the maximum; the ack reach covers the peer's largest
        window.
        """
        key = FlowKey(CLIENT_ADDR, 1, SERVER_ADDR, 2)
        unscaled = Flow.from_handshake(key, 0, 0, MSS, 0.0, receive_window=0xFFFF)
        self.assertEqual(unscaled.rcv_wnd, 0xFFFF)
        self.assertEqual(unscaled.rx_ahead, Flow.windowAheadMinimum)
        self.assertEqual(unscaled.rx_back, Flow.windowBackMinimum)
        self.assertEqual(unscaled.control_window, 0xFFFF)
        self.assertEqual(unscaled.ack_back, Flow.windowBackMinimum)
        linux = Flow.from_handshake(key, 0, 0, MSS, 0.0, receive_window=0xFFFF << 7, peer_wscale=7)
        self.assertEqual(linux.rx_ahead, 0xFFFF << 7)
        self.assertEqual(linux.rx_back, 4 * (0xFFFF << 7))
        self.assertEqual(linux.control_window, Flow.controlWindowMaximum)
        self.assertEqual(linux.ack_back, 4 * (0xFFFF << 7))
        huge = Flow.from_handshake(key, 0, 0, MSS, 0.0, receive_window=0xFFFF << 14, peer_wscale=14)
        self.assertEqual((huge.rx_ahead, huge.rx_back), (0xFFFF << 14, Flow.windowMaximum))
        self.assertEqual(huge.ack_back, Flow.windowMaximum)
        self.assertLessEqual(huge.rx_ahead + huge.rx_back, 1 << 31)
        tiny = Flow.from_handshake(key, 0, 0, MSS, 0.0, receive_window=0)
        self.assertEqual(tiny.control_window, 1)
        self.assertEqual((tiny.local_isn, tiny.remote_isn), (0, 0))

    def test_receiveWindowEdges(self) -> None:
        """
        Data at the first and last acceptable sequence numbers is delivered;
        one past either end is dropped, counted, and changes nothing.
        """
        for high in (CLIENT_ISN + 1, 0, 0xFFFFFFFF, 5):
            isn = (high - 1) & 0xFFFFFFFF
            ahead, back = Pair(client_isn=isn).server.rx_ahead, Pair(client_isn=isn).server.rx_back
            for offset, accepted in [
                (0, True),
                (ahead - 1, True),
                (ahead, False),
                (-back, True),
                (-back - 1, False),
                (1 << 31, False),
            ]:
                server = Pair(client_isn=isn).server
                seq = (high + offset) & 0xFFFFFFFF
                self.assertEqual(server.in_window(seq), accepted)
                packet = from_client(seq, SERVER_ISN + 1, PSH | ACK, b"x")
                self.assertEqual(deliver(packet, server), b"x" if accepted else None)
                self.assertEqual(server.stats.rx_out_of_window, 0 if accepted else 1)
                if not accepted:
                    self.assertEqual(server.rcv_high, high)
                    self.assertEqual(server.stats.rx_segments, 0)

    def test_ackPlausibilityEdges(self) -> None:
        """
        An ack from C{snd_nxt - ack_back} to C{snd_nxt} is plausible; one
        more behind, or anything ahead, is not.
        """
        pair = Pair()
        client = pair.client
        nxt = client.snd_nxt
        self.assertTrue(client.ack_plausible(nxt))
        self.assertTrue(client.ack_plausible((nxt - client.ack_back) & 0xFFFFFFFF))
        self.assertFalse(client.ack_plausible((nxt - client.ack_back - 1) & 0xFFFFFFFF))
        self.assertFalse(client.ack_plausible((nxt + 1) & 0xFFFFFFFF))

    def test_badAckStillDelivers(self) -> None:
        """
        A data segment with an implausible ack is delivered (a tcpraw
        peer's ack sticks at gaps), counted, and does not move the send
        limit.
        """
        pair = Pair()
        server = pair.server
        limit = server.snd_limit
        for ack in (SERVER_ISN + 1 + (1 << 30), SERVER_ISN - (1 << 30)):
            packet = from_client(CLIENT_ISN + 1, ack & 0xFFFFFFFF, PSH | ACK, b"data")
            self.assertEqual(deliver(packet, server), b"data")
        self.assertEqual(server.stats.rx_bad_ack, 2)
        self.assertEqual(server.snd_limit, limit)

    def test_plausibleAckMovesSendLimit(self) -> None:
        """
        A plausible ack with a window moves the send limit forward.
        """
        pair = Pair()
        deliver(pair.client.bare_ack(1.0), pair.server)
        self.assertEqual(pair.server.snd_limit, SERVER_ISN + 1 + 0xFFFF)
        self.assertEqual(pair.server.stats.rx_bad_ack, 0)

    def test_controlWindowEdges(self) -> None:
        """
        A RST from the highest byte seen up to the control window's end
        resets the flow; one before it, or past the end, does not.
        """
        base = CLIENT_ISN + 1
        for offset, honoured in [(0, True), (0xFFFE, True), (0xFFFF, False), (-1, False)]:
            pair = Pair()
            rst = from_client((base + offset) & 0xFFFFFFFF, 0, RST)
            self.assertIsNone(deliver(rst, pair.server))
            self.assertIs(pair.server.state is FlowState.CLOSED, honoured)
            self.assertEqual(pair.server.stats.rx_bad_rst, 0 if honoured else 1)

    def test_outOfWindowDoesNotRefreshIdleTimer(self) -> None:
        """
        Refused segments do not keep a flow alive: an attacker who knows
        the 4-tuple cannot hold a dead flow open.
        """
        pair = Pair(idle_timeout=10.0)
        for now in (3.0, 6.0, 9.0):
            deliver(from_client(CLIENT_ISN + (1 << 31), 0, PSH | ACK, b"junk"), pair.server, now)
            deliver(from_client(CLIENT_ISN - 5, 0, RST), pair.server, now)
        self.assertTrue(pair.server.poll(10.0))


class ChallengeAckTests(SynchronousTestCase):
    """
    Refused segments may be answered with a bare ACK, at most one per
    L{Flow.challengeAckInterval} per flow.
    """

    def test_outOfWindowDataChallenged(self) -> None:
        """
        Out-of-window data queues one bare ACK of the highest byte seen.
        """
        pair = Pair()
        deliver(pair.client.send(b"abc", 1.0), pair.server)
        deliver(from_client(CLIENT_ISN + (1 << 31), SERVER_ISN + 1, PSH | ACK, b"x"), pair.server)
        self.assertEqual(len(pair.server.pending), 1)
        challenge = wire(pair.server.pending[0])
        self.assertEqual(challenge.flags, ACK)
        self.assertEqual((challenge.seq, challenge.ack), (SERVER_ISN + 1, CLIENT_ISN + 4))
        self.assertEqual(pair.server.stats.tx_challenge_acks, 1)

    def test_rateLimited(self) -> None:
        """
        Within one interval only the first refused segment is answered;
        after it, the next one is.
        """
        pair = Pair()
        junk = from_client(CLIENT_ISN + (1 << 31), 0, PSH | ACK, b"x")
        for now in (1.0, 1.1, 1.2, 1.49):
            deliver(junk, pair.server, now)
        self.assertEqual(len(pair.server.pending), 1)
        self.assertEqual(pair.server.stats.tx_challenge_limited, 3)
        deliver(junk, pair.server, 1.5)
        self.assertEqual(len(pair.server.pending), 2)
        self.assertEqual(pair.server.stats.rx_out_of_window, 5)

    def test_clockGoingBack(self) -> None:
        """
        A clock that went back does not silence challenge ACKs.
        """
        pair = Pair()
        junk = from_client(CLIENT_ISN + (1 << 31), 0, PSH | ACK, b"x")
        deliver(junk, pair.server, 100.0)
        deliver(junk, pair.server, 1.0)
        self.assertEqual(len(pair.server.pending), 2)

    def test_rstInReceiveWindowChallenged(self) -> None:
        """
        A RST inside the receive window but outside the control window is
        answered (RFC 5961 3.2); one outside the receive window is not.
        """
        pair = Pair()
        deliver(from_client(CLIENT_ISN + 1 + 0x10000, 0, RST), pair.server, 1.0)
        self.assertEqual(len(pair.server.pending), 1)
        deliver(from_client(CLIENT_ISN + (1 << 31), 0, RST), pair.server, 5.0)
        self.assertEqual(len(pair.server.pending), 1)
        self.assertEqual(pair.server.stats.rx_bad_rst, 2)
        self.assertIs(pair.server.state, FlowState.ESTABLISHED)


class FinAcceptanceTests(SynchronousTestCase):
    """
    A FIN is honoured only inside the control window, with a plausible ack.
    """

    def test_finAfterLostData(self) -> None:
        """
        The peer's FIN after its last data segments were lost is still
        inside the control window.
        """
        pair = Pair()
        for _ in range(3):
            pair.client.send(b"l" * 1000, 1.0)  # lost
        deliver(pair.client.finish(1.0), pair.server)
        self.assertIs(pair.server.state, FlowState.READ_CLOSED)

    def test_finOutsideControlWindow(self) -> None:
        """
        A FIN beyond the control window (but inside the receive window)
        does not close; it is counted and challenged.
        """
        pair = Pair()
        fin = from_client(CLIENT_ISN + 1 + 0x10000, SERVER_ISN + 1, FIN | ACK)
        self.assertIsNone(deliver(fin, pair.server))
        self.assertIs(pair.server.state, FlowState.ESTABLISHED)
        self.assertEqual(pair.server.stats.rx_bad_fin, 1)
        self.assertEqual(len(pair.server.pending), 1)

    def test_finNeedsPlausibleAck(self) -> None:
        """
        A FIN at the right number but without ACK, or with an ack of data
        never sent, does not close.
        """
        pair = Pair()
        for flags, ack in [(FIN, 0), (FIN | ACK, SERVER_ISN + 100)]:
            deliver(from_client(CLIENT_ISN + 1, ack, flags), pair.server)
        self.assertIs(pair.server.state, FlowState.ESTABLISHED)
        self.assertEqual(pair.server.stats.rx_bad_fin, 2)

    def test_dataOfRefusedFinDelivered(self) -> None:
        """
        A data-carrying FIN whose FIN is refused (implausible ack) still
        delivers its data.
        """
        pair = Pair()
        packet = from_client(CLIENT_ISN + 1, SERVER_ISN + 100, FIN | PSH | ACK, b"d")
        self.assertEqual(deliver(packet, pair.server), b"d")
        self.assertIs(pair.server.state, FlowState.ESTABLISHED)
        self.assertEqual(pair.server.rcv_high, CLIENT_ISN + 2)

    def test_duplicateFinNotCounted(self) -> None:
        """
        A copy of the FIN already taken is neither counted nor answered.
        """
        pair = Pair()
        fin = pair.client.finish(1.0)
        deliver(fin, pair.server)
        deliver(fin, pair.server)
        self.assertEqual(pair.server.stats.rx_bad_fin, 0)
        self.assertEqual(pair.server.pending, [])


class QueueLimitTests(SynchronousTestCase):
    """
    L{Flow.held}, L{Flow.pending} and L{Flow.gaps} are bounded.
    """

    def blocked(self) -> Pair:
        """
        A pair whose client has no room in the server's window at all.
        """
        pair = Pair(peer_window=0)
        self.assertIsNone(pair.client.send(b"x", 0.0))
        return pair

    def test_heldCountLimit(self) -> None:
        """
        Past L{Flow.heldLimit} datagrams, more are dropped and counted.
        """
        pair = self.blocked()
        for _ in range(Flow.heldLimit + 10):
            pair.client.send(b"h", 0.0)
        self.assertEqual(len(pair.client.held), Flow.heldLimit)
        self.assertEqual(pair.client.stats.tx_window_drops, 11)

    def test_heldByteLimit(self) -> None:
        """
        Past L{Flow.heldBytesLimit} bytes, more are dropped and counted.
        """
        pair = self.blocked()
        size = MSS
        for _ in range(Flow.heldBytesLimit // size + 5):
            pair.client.send(b"b" * size, 0.0)
        self.assertLessEqual(pair.client.held_bytes, Flow.heldBytesLimit)
        self.assertEqual(pair.client.held_bytes, sum(len(p) for _, p in pair.client.held))
        self.assertGreater(pair.client.stats.tx_window_drops, 0)

    def test_heldLifetime(self) -> None:
        """
        Datagrams held longer than L{Flow.heldLifetime} are dropped by
        C{poll}, younger ones stay.
        """
        pair = self.blocked()
        pair.client.send(b"old", 1.0)
        pair.client.send(b"new", 2.5)
        pair.client.poll(1.0 + Flow.heldLifetime + 0.1)
        self.assertEqual([p for _, p in pair.client.held], [b"new"])
        self.assertEqual(pair.client.stats.tx_held_expired, 2)  # b"x" too
        self.assertEqual(pair.client.held_bytes, 3)

    def test_heldReleasedInOrder(self) -> None:
        """
        Once the peer's window opens, held datagrams go out in order.
        """
        pair = self.blocked()
        pair.client.send(b"one", 0.0)
        pair.client.send(b"two", 0.0)
        deliver(pair.server.bare_ack(0.5), pair.client, 0.5)
        self.assertEqual([wire(p).payload for p in pair.client.pending], [b"x", b"one", b"two"])
        self.assertEqual(pair.client.held_bytes, 0)

    def test_heldReleaseStopsAtPendingLimit(self) -> None:
        """
        Releasing held datagrams stops when L{Flow.pending} is full; the
        rest goes out on a later segment or tick.
        """
        pair = self.blocked()
        pair.client.pending.extend([b"x"] * (Flow.pendingLimit - 2))
        for i in range(5):
            pair.client.send(b"%d" % i, 0.0)
        deliver(pair.server.bare_ack(0.5), pair.client, 0.5)
        self.assertEqual(len(pair.client.pending), Flow.pendingLimit)
        self.assertEqual(len(pair.client.held), 4)
        pair.client.pending.clear()
        pair.client.poll(0.6)
        self.assertEqual(len(pair.client.pending), 4)
        self.assertEqual(len(pair.client.held), 0)

    def test_heldClearedWhenClosed(self) -> None:
        """
        A closed flow keeps nothing held.
        """
        pair = self.blocked()
        pair.client.send(b"h", 0.0)
        pair.client.reset(0.0)
        self.assertEqual((len(pair.client.held), pair.client.held_bytes), (0, 0))

    def test_pendingLimit(self) -> None:
        """
        Bare ACKs are not queued past L{Flow.pendingLimit}; the drop is
        counted.
        """
        pair = Pair(keepalive_interval=1.0, receive_window=4)
        for i in range(Flow.pendingLimit + 10):
            deliver(pair.client.send(b"abcd", 1.0), pair.server)
        self.assertEqual(len(pair.server.pending), Flow.pendingLimit)
        self.assertEqual(pair.server.stats.tx_pending_drops, 10)
        pair.server.poll(100.0)
        self.assertEqual(len(pair.server.pending), Flow.pendingLimit)

    def test_gapLimit(self) -> None:
        """
        At most L{Flow.gapLimit} gaps are remembered.
        """
        pair = Pair()
        for _ in range(Flow.gapLimit + 20):
            pair.client.send(b"lost", 1.0)
            deliver(pair.client.send(b"kept", 1.0), pair.server)
        self.assertEqual(len(pair.server.gaps), Flow.gapLimit)

    def test_gapsBehindWindowForgotten(self) -> None:
        """
        Gaps that fell behind the receive window are forgotten; one that
        straddles its back edge is cut at the edge.
        """
        pair = Pair()
        server = pair.server
        base = CLIENT_ISN + 1
        deliver(from_client(base + 100, SERVER_ISN + 1, PSH | ACK, b"a"), server)
        deliver(from_client(base + 1000, SERVER_ISN + 1, PSH | ACK, b"a"), server)
        self.assertEqual(len(server.gaps), 2)
        # Jump ahead so that the first gap is behind the window and the
        # second straddles its back edge.
        top = base + 500 + server.rx_back
        while seq_after(top, server.rcv_high + server.rx_ahead - 10):
            deliver(from_client(server.rcv_high + server.rx_ahead - 10, SERVER_ISN + 1, PSH | ACK, b"j"), server)
        deliver(from_client(top, SERVER_ISN + 1, PSH | ACK, b"j"), server)
        back_edge = (server.rcv_high - server.rx_back) & 0xFFFFFFFF
        self.assertNotIn((base, base + 100), server.gaps)
        for start, end in server.gaps:
            self.assertTrue(server.in_window(start))
        self.assertIn(back_edge, [start for start, _ in server.gaps])


class IdleMemoryTests(SynchronousTestCase):
    """
    L{Flow.held} and L{Flow.gaps} are an empty tuple while empty, not a
    deque each: an idle flow holds neither.
    """

    def test_newFlow(self) -> None:
        """
        A new flow, and one that exchanged data without loss, hold no deque.
        """
        pair = Pair()
        self.assertEqual((pair.client.held, pair.client.gaps), ((), ()))
        deliver(pair.client.send(b"ping", 1.0), pair.server)
        deliver(pair.server.send(b"pong", 1.0), pair.client)
        for flow in (pair.client, pair.server):
            self.assertEqual((flow.held, flow.gaps), ((), ()))

    def test_heldDroppedOnceReleased(self) -> None:
        """
        Once the held datagrams went out (or expired), the hold is empty
        again, and a later hold starts afresh.
        """
        pair = Pair(peer_window=0)
        pair.client.send(b"one", 0.0)
        self.assertEqual(len(pair.client.held), 1)
        deliver(pair.server.bare_ack(0.5), pair.client, 0.5)
        self.assertEqual(pair.client.held, ())
        self.assertEqual([wire(p).payload for p in pair.client.pending], [b"one"])

        blocked = Pair(peer_window=0)
        blocked.client.send(b"old", 1.0)
        blocked.client.poll(1.0 + Flow.heldLifetime + 0.1)
        self.assertEqual((blocked.client.held, blocked.client.held_bytes), ((), 0))
        blocked.client.send(b"new", 5.0)
        self.assertEqual([p for _, p in blocked.client.held], [b"new"])

    def test_gapsDroppedOnceFilled(self) -> None:
        """
        Once a late segment filled the only gap, no gap structure is kept;
        a later loss opens one again.
        """
        pair = Pair()
        first = pair.client.send(b"1" * 100, 1.0)
        deliver(pair.client.send(b"2" * 100, 1.0), pair.server)
        self.assertEqual(len(pair.server.gaps), 1)
        deliver(first, pair.server)
        self.assertEqual(pair.server.gaps, ())
        pair.client.send(b"3" * 100, 1.0)  # lost
        deliver(pair.client.send(b"4" * 100, 1.0), pair.server)
        self.assertEqual(len(pair.server.gaps), 1)
