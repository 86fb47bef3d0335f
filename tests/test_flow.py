"""
Tests for L{faketcp_twisted.core.flow}: two sans-IO L{Flow}s, a client's and a
server's with mirrored keys and initial sequence numbers, driven against
each other in memory.  Every packet one side produces goes through
L{parse_packet} (checksum verified) into the other side's C{receive}, so
the tests also show that what a flow sends is well-formed on the wire.
"""

from __future__ import annotations

import random
import socket

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from faketcp_twisted.core.flow import (
    WINDOW_FIELD,
    EndReason,
    Flow,
    FlowKey,
    FlowState,
    FlowStats,
)
from faketcp_twisted.core.segment import (
    ACK,
    FIN,
    PSH,
    RST,
    SYN,
    TIMESTAMP_PREFIX,
    Segment,
    build_packet,
    parse_options,
    parse_packet,
    seq_after,
    timestamp_option,
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
MASK = 0xFFFFFFFF

#: The window scale shift both kernels agree on in a handshake (Linux's,
#: for the default tcp_rmem): L{Flow.receiveWindow} is exactly 24576 units
#: of it.
WSCALE = 7


class Pair:
    """
    A client flow and a server flow connected back to back, as the kernels'
    handshake left them: window scaling agreed both ways (L{WSCALE}), each
    side knowing only the other's handshake window until it hears from it
    (see L{announce}).
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
        kwargs.setdefault("receive_wscale", WSCALE)
        kwargs.setdefault("peer_wscale", WSCALE)
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

    def announce(self, now: float = 0.0) -> None:
        """
        Each side sends the other a bare ACK, as adoption does at once, so
        each knows the other's real window.
        """
        deliver(self.server.bare_ack(now), self.client, now)
        deliver(self.client.bare_ack(now), self.server, now)


def wire(packet: bytes) -> Segment:
    """
    What the other side's capture makes of C{packet}.
    """
    return parse_packet(packet, verify_checksum=True)


def from_client(
    seq: int, ack: int, flags: int, payload: bytes = b"", options: bytes = b"", window: int = 0xFFFF
) -> bytes:
    """
    A packet from the client to the server built by hand, not by a flow
    (its numbers taken modulo 2**32).
    """
    return build_packet(
        CLIENT_ADDR, SERVER_ADDR, CLIENT_PORT, SERVER_PORT, seq & MASK, ack & MASK, flags, window, payload,
        options=options,
    )


def from_server(
    seq: int, ack: int, flags: int, payload: bytes = b"", options: bytes = b"", window: int = 0xFFFF
) -> bytes:
    """
    A packet from the server to the client built by hand, not by a flow
    (its numbers taken modulo 2**32).
    """
    return build_packet(
        SERVER_ADDR, CLIENT_ADDR, SERVER_PORT, CLIENT_PORT, seq & MASK, ack & MASK, flags, window, payload,
        options=options,
    )


def client_segment(
    seq: int, ack: int, flags: int, payload: bytes = b"", options: bytes = b"", window: int = 0xFFFF
) -> Segment:
    """
    A segment from the client to the server as a capture would hand it
    over, with any option bytes (even ones the codec could not carry).
    """
    return Segment(
        CLIENT_ADDR, SERVER_ADDR, CLIENT_PORT, SERVER_PORT, seq & MASK, ack & MASK, flags, window, payload, options
    )


def deliver(packet: bytes, to: Flow, now: float = 1.0) -> bytes | None:
    """
    Hand C{packet} to C{to} as its capture would.
    """
    return to.receive(wire(packet), now)


def stamps(packet: bytes) -> tuple[int, int] | None:
    """
    The (TSval, TSecr) of a packet, or L{None} without timestamps.
    """
    return parse_options(wire(packet).options).timestamp


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
        A bare ACK is due after an eighth of the receive window, and at
        least one byte.
        """
        key = FlowKey(CLIENT_ADDR, 1, SERVER_ADDR, 2)
        for window, wscale, ack_every in [
            (4000, 0, 500),
            (None, WSCALE, Flow.receiveWindow // 8),
            (1 << 30, 0, 0xFFFF // 8),
            (1, 0, 1),
            (0, 0, 1),
        ]:
            flow = Flow.from_handshake(key, 0, 0, MSS, 0.0, receive_window=window, receive_wscale=wscale)
            self.assertEqual(flow.ack_every, ack_every)
            self.assertEqual(flow.ack_every, max(flow.rcv_wnd // 8, 1))

    def test_receiveWindowInHandshakeScale(self) -> None:
        """
        The receive window is L{Flow.receiveWindow} unless given, rounded
        down to what the window field says in this side's scale (at least
        one unit of it, at most a full field); the window field is that
        many units.
        """
        key = FlowKey(CLIENT_ADDR, 1, SERVER_ADDR, 2)
        self.assertEqual(Flow.receiveWindow, 3 << 20)
        for window, wscale, rcv_wnd, window_field in [
            (None, 7, 3 << 20, 24576),
            (None, 10, 3 << 20, 3072),
            (None, 14, 3 << 20, 192),
            # Beyond 14 the kernel never goes (RFC 7323): taken as 14.
            (None, 15, 3 << 20, 192),
            # Unscaled, the largest field is the most it can say.
            (None, 0, 0xFFFF, 0xFFFF),
            (1_000_000, 7, 7812 << 7, 7812),
            (8000, 0, 8000, 8000),
            (100, 7, 128, 1),
        ]:
            flow = Flow.from_handshake(key, 0, 0, MSS, 0.0, receive_window=window, receive_wscale=wscale)
            self.assertEqual((flow.rcv_wnd, flow.window_field), (rcv_wnd, window_field))

    def test_sendWindowFromHandshake(self) -> None:
        """
        Nothing is sent yet: the send window starts at this side's first
        sequence number, as large as the peer's handshake window (at most
        L{Flow.sendWindowMaximum}).
        """
        pair = Pair(peer_window=64256)
        client = pair.client
        self.assertEqual((client.snd_una, client.snd_nxt, client.snd_max), (CLIENT_ISN + 1,) * 3)
        self.assertEqual(client.snd_wnd, 64256)
        huge = Pair(peer_window=1 << 30)
        self.assertEqual(huge.client.snd_wnd, Flow.sendWindowMaximum)
        self.assertEqual(Flow.sendWindowMaximum, 16 << 20)


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
        window field of this side's receive window and no options (until
        L{Flow.use_timestamps}).
        """
        pair = Pair()
        packet = pair.client.send(b"hello", 1.0)
        segment = wire(packet)
        self.assertEqual(
            (segment.src, segment.dst, segment.sport, segment.dport),
            (CLIENT_ADDR, SERVER_ADDR, CLIENT_PORT, SERVER_PORT),
        )
        self.assertEqual(segment.flags, PSH | ACK)
        self.assertEqual(segment.window, pair.client.window_field)
        self.assertEqual(segment.window, Flow.receiveWindow >> WSCALE)
        self.assertEqual(segment.options, b"")
        self.assertEqual(packet[32] >> 4, 5)
        self.assertEqual(pair.client.option_bytes, 0)

    def test_windowFieldOnEverySegment(self) -> None:
        """
        Data, bare ACKs, challenge ACKs, FIN and RST all carry the window
        field, so the peer and every firewall on the path see this side's
        real window; unscaled, it is the largest field.
        """
        for wscale, field in [(WSCALE, 24576), (0, WINDOW_FIELD)]:
            pair = Pair(receive_wscale=wscale)
            client = pair.client
            deliver(from_server(SERVER_ISN + (1 << 31), CLIENT_ISN + 1, PSH | ACK, b"junk"), client)
            packets = [client.send(b"d", 1.0), client.bare_ack(1.0), *client.pending, client.finish(1.0)]
            packets.append(Pair(receive_wscale=wscale).client.reset(1.0))
            self.assertEqual(len(packets), 5)
            self.assertEqual([wire(p).window for p in packets], [field] * 5)
            self.assertEqual(client.window_field, field)

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
    Bare ACKs keep the peer's send window (and the window that conntrack
    allows) moving when this side only receives.
    """

    def small(self) -> Pair:
        """
        A pair with an unscaled window of 4000 bytes: a bare ACK every 500.
        """
        pair = Pair(receive_window=4000, receive_wscale=0, peer_wscale=0)
        self.assertEqual(pair.server.ack_every, 500)
        return pair

    def test_defaultAckEvery(self) -> None:
        """
        With the default window, an ACK goes out every eighth of it.
        """
        self.assertEqual(Pair().server.ack_every, (3 << 20) // 8)

    def test_bareAckAfterThreshold(self) -> None:
        """
        Once C{ack_every} bytes arrived unacknowledged, one bare ACK of the
        highest byte seen is queued.
        """
        pair = self.small()
        deliver(pair.client.send(b"a" * 250, 1.0), pair.server)
        self.assertEqual(pair.server.pending, [])
        deliver(pair.client.send(b"b" * 249, 1.0), pair.server)
        self.assertEqual(pair.server.pending, [])
        deliver(pair.client.send(b"c", 1.0), pair.server)
        self.assertEqual(len(pair.server.pending), 1)
        ack = wire(pair.server.pending[0])
        self.assertEqual(ack.flags, ACK)
        self.assertEqual(ack.ack, CLIENT_ISN + 1 + 500)
        self.assertEqual(ack.window, 4000)
        self.assertEqual(pair.server.unacked_rx, 0)

    def test_bareAckMovesPeerWindow(self) -> None:
        """
        The bare ACKs move the sender's window: twice the window goes
        through without a rewind.
        """
        pair = self.small()
        pair.announce()
        self.assertEqual(pair.client.snd_wnd, 4000)
        for _ in range(16):
            deliver(pair.client.send(b"a" * 500, 1.0), pair.server)
            for packet in pair.server.pending:
                deliver(packet, pair.client)
            pair.server.pending.clear()
        self.assertEqual(pair.client.snd_una, CLIENT_ISN + 1 + 8000)
        self.assertEqual(pair.client.stats.tx_rewinds, 0)
        self.assertEqual(pair.server.stats.rx_duplicates, 0)

    def test_counterRestartsAfterBareAck(self) -> None:
        """
        After a bare ACK, another full C{ack_every} bytes are needed.
        """
        pair = self.small()
        for _ in range(2):
            deliver(pair.client.send(b"a" * 500, 1.0), pair.server)
        deliver(pair.client.send(b"a" * 499, 1.0), pair.server)
        self.assertEqual(len(pair.server.pending), 2)

    def test_sendingDataResetsCounter(self) -> None:
        """
        A data segment acknowledges too, so it restarts the count.
        """
        pair = self.small()
        deliver(pair.client.send(b"a" * 300, 1.0), pair.server)
        deliver(pair.server.send(b"reply", 1.0), pair.client)
        self.assertEqual(pair.server.unacked_rx, 0)
        deliver(pair.client.send(b"b" * 300, 1.0), pair.server)
        self.assertEqual(pair.server.pending, [])

    def test_duplicatesCount(self) -> None:
        """
        Received bytes count towards the threshold whatever their sequence
        numbers.
        """
        pair = self.small()
        packet = pair.client.send(b"a" * 250, 1.0)
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
                zip([sum(sizes[:i]) for i in range(len(sizes))], sizes, strict=True)
            )
        ]
        arriving = data.draw(st.permutations(sent))
        arriving = arriving[: data.draw(st.integers(0, len(arriving)))]
        ack = pair.server.rcv_high
        for packet, _, _size in arriving:
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
    The receive window, the control window and the ack check, at their
    edges (see the L{Flow} docstring).
    """

    def test_sizesFromReceiveWindow(self) -> None:
        """
        The receive window reaches exactly the advertised window ahead of
        and behind the highest byte seen (no minimums); the control window
        is the advertised window up to L{Flow.controlWindowMaximum}; the
        ack check reaches the advertised window (at least
        L{Flow.ackBackMinimum}) behind the peer's latest ack; no reach
        exceeds L{Flow.windowMaximum}.
        """
        key = FlowKey(CLIENT_ADDR, 1, SERVER_ADDR, 2)
        unscaled = Flow.from_handshake(key, 0, 0, MSS, 0.0, receive_window=0xFFFF)
        self.assertEqual(unscaled.rcv_wnd, 0xFFFF)
        self.assertEqual((unscaled.rx_ahead, unscaled.rx_back), (0xFFFF, 0xFFFF))
        self.assertEqual(unscaled.control_window, 0xFFFF)
        self.assertEqual(unscaled.ack_back, Flow.ackBackMinimum)
        default = Flow.from_handshake(key, 0, 0, MSS, 0.0, receive_wscale=WSCALE, peer_wscale=WSCALE)
        self.assertEqual((default.rx_ahead, default.rx_back), (3 << 20, 3 << 20))
        self.assertEqual(default.control_window, Flow.controlWindowMaximum)
        self.assertEqual(default.ack_back, 3 << 20)
        huge = Flow.from_handshake(key, 0, 0, MSS, 0.0, receive_window=0xFFFF << 14, receive_wscale=14)
        self.assertEqual(huge.rcv_wnd, 0xFFFF << 14)
        self.assertEqual((huge.rx_ahead, huge.rx_back), (0xFFFF << 14, 0xFFFF << 14))
        self.assertEqual(huge.ack_back, 0xFFFF << 14)
        self.assertLessEqual(huge.rx_ahead + huge.rx_back, 1 << 31)
        tiny = Flow.from_handshake(key, 0, 0, MSS, 0.0, receive_window=0)
        self.assertEqual((tiny.rx_ahead, tiny.rx_back, tiny.control_window), (1, 1, 1))
        self.assertEqual((tiny.local_isn, tiny.remote_isn), (0, 0))

    def test_windowMaximumCapsReaches(self) -> None:
        """
        With L{Flow.windowMaximum} below the advertised window, the reaches
        stop at it, so both together stay within half the sequence space.
        """

        class Capped(Flow):
            windowMaximum = 1 << 20

        key = FlowKey(CLIENT_ADDR, 1, SERVER_ADDR, 2)
        flow = Capped.from_handshake(key, 0, 0, MSS, 0.0, receive_wscale=WSCALE)
        self.assertEqual(flow.rcv_wnd, 3 << 20)
        self.assertEqual((flow.rx_ahead, flow.rx_back, flow.ack_back), (1 << 20,) * 3)

    def test_receiveWindowEdges(self) -> None:
        """
        The receive window reaches the advertised window both ways: data at
        its first and last sequence numbers is delivered; one past either
        end is dropped, counted, and changes nothing.
        """
        for high in (CLIENT_ISN + 1, 0, 0xFFFFFFFF, 5):
            isn = (high - 1) & 0xFFFFFFFF
            ahead, back = Pair(client_isn=isn).server.rx_ahead, Pair(client_isn=isn).server.rx_back
            self.assertEqual((ahead, back), (Flow.receiveWindow, Flow.receiveWindow))
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

    def test_controlWindowEdges(self) -> None:
        """
        A RST (with a good ack) from the highest byte seen up to the
        control window's end resets the flow; one before it, or past the
        end, does not.
        """
        base = CLIENT_ISN + 1
        window = Pair().server.control_window
        self.assertEqual(window, 64 << 10)
        for offset, honoured in [(0, True), (window - 1, True), (window, False), (-1, False)]:
            pair = Pair()
            rst = from_client(base + offset, SERVER_ISN + 1, RST | ACK)
            self.assertIsNone(deliver(rst, pair.server))
            self.assertIs(pair.server.state is FlowState.CLOSED, honoured)
            self.assertEqual(pair.server.stats.rx_bad_rst, 0 if honoured else 1)

    def test_rstNeedsAcceptableAck(self) -> None:
        """
        A RST at the right number ends the flow only with ACK and an ack
        this side may still see acknowledged (both edges included); without
        ACK (a kernel's RST for a connection it has no socket for) or with
        any other ack it is refused, counted, and challenged.
        """
        pair = Pair()
        pair.announce()
        for _ in range(3):
            deliver(pair.server.send(b"s" * 1000, 1.0), pair.client)
        server = pair.server
        una, top, back = server.snd_una, server.snd_max, server.ack_back
        self.assertEqual((una, top), (SERVER_ISN + 1, SERVER_ISN + 3001))
        for flags, ack in [(RST, 0), (RST, una), (RST | ACK, top + 1), (RST | ACK, una - back - 1)]:
            deliver(from_client(server.rcv_high, ack, flags), server, 2.0)
        self.assertIs(server.state, FlowState.ESTABLISHED)
        self.assertEqual(server.stats.rx_bad_rst, 4)
        self.assertEqual(len(server.pending), 1)
        for ack in (una - back, una, una + 1000, top):
            pair = Pair()
            pair.server.snd_max = top
            deliver(from_client(CLIENT_ISN + 1, ack, RST | ACK), pair.server, 2.0)
            self.assertIs(pair.server.end_reason, EndReason.PEER_RST)

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
    A FIN is honoured only inside the control window, and, as every segment,
    only with an acceptable ack.
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
        A FIN beyond the control window (but inside the receive window, with
        a good ack) does not close; it is counted and challenged.
        """
        pair = Pair()
        fin = from_client(CLIENT_ISN + 1 + 0x10000, SERVER_ISN + 1, FIN | ACK)
        self.assertTrue(pair.server.in_window(CLIENT_ISN + 1 + 0x10000))
        self.assertIsNone(deliver(fin, pair.server))
        self.assertIs(pair.server.state, FlowState.ESTABLISHED)
        self.assertEqual(pair.server.stats.rx_bad_fin, 1)
        self.assertEqual(len(pair.server.pending), 1)

    def test_finWithBadAckRefusedWhole(self) -> None:
        """
        A FIN at the right number but without ACK, or with an ack of data
        never sent, is dropped whole by the ack check: counted as a bad
        ack (not a bad FIN), challenged, and the flow stays open.
        """
        pair = Pair()
        for flags, ack in [(FIN, 0), (FIN | ACK, SERVER_ISN + 100)]:
            deliver(from_client(CLIENT_ISN + 1, ack, flags), pair.server, 1.0)
        self.assertIs(pair.server.state, FlowState.ESTABLISHED)
        self.assertEqual(pair.server.rcv_high, CLIENT_ISN + 1)
        self.assertEqual((pair.server.stats.rx_bad_ack, pair.server.stats.rx_bad_fin), (2, 0))
        self.assertEqual(len(pair.server.pending), 1)
        self.assertEqual(pair.server.stats.tx_challenge_limited, 1)

    def test_dataOfRefusedFinDelivered(self) -> None:
        """
        A data-carrying FIN with a good ack whose FIN is refused (outside
        the control window) still delivers its data.
        """
        pair = Pair()
        seq = CLIENT_ISN + 1 + 0x10000
        packet = from_client(seq, SERVER_ISN + 1, FIN | PSH | ACK, b"d")
        self.assertEqual(deliver(packet, pair.server), b"d")
        self.assertIs(pair.server.state, FlowState.ESTABLISHED)
        self.assertEqual(pair.server.rcv_high, seq + 1)
        self.assertEqual(pair.server.stats.rx_bad_fin, 1)

    def test_dataOfBadAckFinNotDelivered(self) -> None:
        """
        A data-carrying FIN with an ack of data never sent delivers
        nothing: the ack check drops the segment whole.
        """
        pair = Pair()
        packet = from_client(CLIENT_ISN + 1, SERVER_ISN + 100, FIN | PSH | ACK, b"d")
        self.assertIsNone(deliver(packet, pair.server))
        self.assertIs(pair.server.state, FlowState.ESTABLISHED)
        self.assertEqual(pair.server.rcv_high, CLIENT_ISN + 1)
        self.assertEqual(pair.server.stats.rx_bytes, 0)
        self.assertEqual(pair.server.stats.rx_bad_ack, 1)

    def test_duplicateFinNotCounted(self) -> None:
        """
        The FIN is acknowledged, as a real stack does (the kernel's ACK is
        silenced); a copy of the FIN already taken is neither counted nor
        answered.
        """
        pair = Pair()
        fin = pair.client.finish(1.0)
        deliver(fin, pair.server)
        (answer,) = [wire(packet) for packet in pair.server.pending]
        self.assertEqual((answer.flags, answer.ack), (ACK, (wire(fin).seq + 1) & 0xFFFFFFFF))
        self.assertTrue(pair.server.fin_received)
        pair.server.pending.clear()
        deliver(fin, pair.server)
        self.assertEqual(pair.server.stats.rx_bad_fin, 0)
        self.assertEqual(pair.server.pending, [])


class QueueLimitTests(SynchronousTestCase):
    """
    L{Flow.pending} and L{Flow.gaps} are bounded.
    """

    def test_pendingLimit(self) -> None:
        """
        Bare ACKs are not queued past L{Flow.pendingLimit}; the drop is
        counted.
        """
        pair = Pair(keepalive_interval=1.0, receive_window=4, receive_wscale=0)
        self.assertEqual(pair.server.ack_every, 1)
        for _ in range(Flow.pendingLimit + 10):
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
        for start, _end in server.gaps:
            self.assertTrue(server.in_window(start))
        self.assertIn(back_edge, [start for start, _ in server.gaps])


class IdleMemoryTests(SynchronousTestCase):
    """
    L{Flow.gaps} is an empty tuple while empty, not a deque: an idle flow
    holds none.
    """

    def test_newFlow(self) -> None:
        """
        A new flow, and one that exchanged data without loss, hold no deque.
        """
        pair = Pair()
        self.assertEqual(pair.client.gaps, ())
        deliver(pair.client.send(b"ping", 1.0), pair.server)
        deliver(pair.server.send(b"pong", 1.0), pair.client)
        for flow in (pair.client, pair.server):
            self.assertEqual(flow.gaps, ())

    def test_rewindsKeepNothing(self) -> None:
        """
        A sender whose peer never acknowledges keeps no datagram and no
        structure: a rewind reuses numbers, it retransmits nothing.
        """
        pair = Pair(peer_window=1000)
        for _ in range(100):
            pair.client.send(b"r" * 300, 1.0)
        self.assertGreater(pair.client.stats.tx_rewinds, 20)
        self.assertEqual((pair.client.gaps, pair.client.pending), ((), []))

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


class SendWindowTests(SynchronousTestCase):
    """
    The send window, [snd_una, snd_una + snd_wnd): data never crosses its
    edge.  A datagram that would is sent from L{Flow.snd_una} again (a
    rewind: new data under numbers already used, nothing retransmitted),
    and the peer's acks move the window on.
    """

    def small(self, client_isn: int = CLIENT_ISN) -> Pair:
        """
        A pair with windows of 1000 bytes both ways, unscaled, each side
        knowing the other's from the handshake.
        """
        return Pair(client_isn, receive_window=1000, receive_wscale=0, peer_wscale=0, peer_window=1000)

    def test_windowFromPeer(self) -> None:
        """
        The peer's segments set the send window: their window field in the
        peer's scale, at most L{Flow.sendWindowMaximum}.
        """
        pair = Pair()
        self.assertEqual(pair.client.snd_wnd, WINDOW_FIELD)
        deliver(pair.server.bare_ack(1.0), pair.client)
        self.assertEqual(pair.client.snd_wnd, 3 << 20)
        deliver(from_server(SERVER_ISN + 1, CLIENT_ISN + 1, ACK, window=100), pair.client)
        self.assertEqual(pair.client.snd_wnd, 100 << WSCALE)
        # Current tcpraw: 65535 unscaled, read at its kernel's scale of 10.
        current = Pair(peer_wscale=10)
        deliver(from_server(SERVER_ISN + 1, CLIENT_ISN + 1, PSH | ACK, b"x", window=0xFFFF), current.client)
        self.assertEqual(current.client.snd_wnd, Flow.sendWindowMaximum)

    def test_rewindAtWindowEdge(self) -> None:
        """
        Datagrams fill the window up to its very edge; the next one goes
        from snd_una again, and so on: the numbers cycle inside the window,
        each rewind counted, and snd_max stays at the edge.
        """
        pair = self.small()
        client = pair.client
        base = CLIENT_ISN + 1
        seqs = [wire(client.send(bytes([i]) * 100, 1.0)).seq for i in range(25)]
        self.assertEqual(seqs, [base + (i % 10) * 100 for i in range(25)])
        self.assertEqual(client.stats.tx_rewinds, 2)
        self.assertEqual((client.snd_una, client.snd_nxt, client.snd_max), (base, base + 500, base + 1000))
        self.assertEqual((client.stats.tx_segments, client.stats.tx_bytes), (25, 2500))

    def test_datagramThatWouldCrossRewinds(self) -> None:
        """
        A datagram that does not fit in what is left of the window goes
        from snd_una whole; it is never split or dropped.
        """
        pair = self.small()
        base = CLIENT_ISN + 1
        seqs = [wire(pair.client.send(b"x" * 300, 1.0)).seq for _ in range(7)]
        self.assertEqual(seqs, [base, base + 300, base + 600] * 2 + [base])
        self.assertEqual(pair.client.snd_max, base + 900)
        self.assertEqual(pair.client.stats.tx_rewinds, 2)

    def test_peerNeverAcks(self) -> None:
        """
        A flow whose peer never acknowledges (every packet back lost) keeps
        sending: each datagram lies inside [snd_una, snd_una + snd_wnd),
        and it rewinds once per window's worth.
        """
        pair = Pair()
        pair.announce()
        client = pair.client
        una, wnd = client.snd_una, client.snd_wnd
        self.assertEqual(wnd, 3 << 20)
        for _ in range(10_000):
            segment = wire(client.send(b"m" * MSS, 1.0))
            self.assertLessEqual(((segment.seq - una) & MASK) + MSS, wnd)
        per_window = wnd // MSS
        self.assertEqual(client.stats.tx_rewinds, 10_000 // per_window)
        self.assertEqual(client.snd_max, una + per_window * MSS)
        self.assertEqual(client.snd_una, una)

    def test_rewoundDataDelivered(self) -> None:
        """
        Datagrams sent under numbers the peer already saw are new data to
        it: each is delivered (counted as a duplicate), none refused.
        """
        pair = self.small()
        payloads = [b"%04d" % i * 25 for i in range(30)]
        delivered = [deliver(pair.client.send(p, 1.0), pair.server) for p in payloads]
        self.assertEqual(delivered, payloads)
        self.assertEqual(pair.client.stats.tx_rewinds, 2)
        self.assertEqual(pair.server.stats.rx_duplicates, 20)
        self.assertEqual(pair.server.stats.rx_refused, 0)
        self.assertEqual(pair.server.rcv_high, CLIENT_ISN + 1 + 1000)

    def test_ackMovesWindow(self) -> None:
        """
        An acceptable ack moves snd_una, and with it the window's edge:
        the next datagrams go on past the old edge.
        """
        pair = self.small()
        client = pair.client
        base = CLIENT_ISN + 1
        for _ in range(5):
            deliver(client.send(b"a" * 100, 1.0), pair.server)
        deliver(pair.server.bare_ack(1.0), client)
        self.assertEqual((client.snd_una, client.snd_wnd), (base + 500, 1000))
        seqs = [wire(client.send(b"b" * 100, 1.0)).seq for _ in range(11)]
        self.assertEqual(seqs, [base + 500 + i * 100 for i in range(10)] + [base + 500])
        self.assertEqual(client.snd_max, base + 1500)
        self.assertEqual(client.stats.tx_rewinds, 1)

    def test_olderAckMovesNothing(self) -> None:
        """
        A segment that acknowledges less than an earlier one (reordered on
        the way) is still taken, but neither its ack nor its window is the
        peer's latest word: the send window stays.
        """
        pair = self.small()
        client = pair.client
        base = CLIENT_ISN + 1
        for _ in range(5):
            deliver(client.send(b"a" * 100, 1.0), pair.server)
        deliver(from_server(SERVER_ISN + 1, base + 500, ACK, window=1000), client)
        late = from_server(SERVER_ISN + 1, base + 200, PSH | ACK, b"late", window=7)
        self.assertEqual(deliver(late, client), b"late")
        self.assertEqual((client.snd_una, client.snd_wnd), (base + 500, 1000))

    def test_sameAckUpdatesWindow(self) -> None:
        """
        An ack equal to snd_una carries the peer's latest window: a window
        that shrank makes the next datagram that no longer fits rewind.
        """
        pair = self.small()
        client = pair.client
        base = CLIENT_ISN + 1
        for _ in range(5):
            client.send(b"a" * 100, 1.0)
        deliver(from_server(SERVER_ISN + 1, base, ACK, window=300), client)
        self.assertEqual((client.snd_una, client.snd_wnd), (base, 300))
        self.assertEqual(wire(client.send(b"b" * 100, 1.0)).seq, base)
        self.assertEqual(client.stats.tx_rewinds, 1)

    def test_ackPastRewoundNumbers(self) -> None:
        """
        After a rewind, an ack of the higher numbers the peer saw before
        moves snd_nxt up to it: sending carries on from what the peer saw,
        not over it again.  An ack short of snd_nxt leaves snd_nxt.
        """
        pair = self.small()
        client = pair.client
        base = CLIENT_ISN + 1
        for _ in range(12):
            deliver(client.send(b"a" * 100, 1.0), pair.server)
        self.assertEqual((client.snd_nxt, client.snd_max), (base + 200, base + 1000))
        deliver(from_server(SERVER_ISN + 1, base + 100, ACK, window=1000), client)
        self.assertEqual((client.snd_una, client.snd_nxt), (base + 100, base + 200))
        deliver(pair.server.bare_ack(1.0), client)
        self.assertEqual((client.snd_una, client.snd_nxt), (base + 1000, base + 1000))
        self.assertEqual(wire(client.send(b"n", 1.0)).seq, base + 1000)
        self.assertEqual(client.stats.tx_rewinds, 1)

    def test_windowSmallerThanDatagram(self) -> None:
        """
        A peer window smaller than the datagram (zero, say) does not stop
        sending: every datagram goes from snd_una, the peer takes it.
        """
        pair = Pair(peer_window=0)
        for i in range(3):
            packet = pair.client.send(b"z%d" % i, 1.0)
            self.assertEqual(wire(packet).seq, CLIENT_ISN + 1)
            self.assertEqual(deliver(packet, pair.server), b"z%d" % i)
        self.assertEqual(pair.client.stats.tx_rewinds, 3)

    def test_finAtSndMax(self) -> None:
        """
        A rewound flow's FIN takes the highest sequence number sent, never
        a rewound one (the peer's control window starts at the highest
        byte it saw), and the peer honours it.
        """
        pair = self.small()
        client = pair.client
        base = CLIENT_ISN + 1
        for _ in range(12):
            deliver(client.send(b"a" * 100, 1.0), pair.server)
        self.assertEqual(client.snd_nxt, base + 200)
        fin = client.finish(2.0)
        self.assertEqual(wire(fin).seq, base + 1000)
        self.assertEqual((client.snd_nxt, client.snd_max), (base + 1001, base + 1001))
        self.assertEqual(wire(client.bare_ack(2.0)).seq, base + 1001)
        deliver(fin, pair.server)
        self.assertIs(pair.server.state, FlowState.READ_CLOSED)
        self.assertEqual(pair.server.rcv_high, base + 1001)

    def test_resetAtSndMax(self) -> None:
        """
        A rewound flow's RST takes the highest sequence number sent too,
        and the peer honours it.
        """
        pair = self.small()
        for _ in range(12):
            deliver(pair.client.send(b"a" * 100, 1.0), pair.server)
        rst = pair.client.reset(2.0)
        self.assertEqual(wire(rst).seq, CLIENT_ISN + 1 + 1000)
        deliver(rst, pair.server)
        self.assertIs(pair.server.end_reason, EndReason.PEER_RST)

    def test_rewindsAndAcksAcrossWrap(self) -> None:
        """
        With sequence numbers wrapping past 2**32, rewinds go back across
        the wrap, the peer takes the rewound numbers, and its ack across
        the wrap moves the window and the ack check's edges.
        """
        pair = self.small(client_isn=NEAR_WRAP_ISN)
        client, server = pair.client, pair.server
        packets = [client.send(b"w" * 300, 1.0) for _ in range(5)]
        self.assertEqual(
            [wire(p).seq for p in packets], [0xFFFFFFF1, 0x0000011D, 0x00000249, 0xFFFFFFF1, 0x0000011D]
        )
        self.assertEqual((client.snd_nxt, client.snd_max), (0x00000249, 0x00000375))
        self.assertEqual(client.stats.tx_rewinds, 1)
        self.assertEqual([deliver(p, server) for p in packets], [b"w" * 300] * 5)
        self.assertEqual(server.rcv_high, 0x00000375)
        self.assertEqual(server.stats.rx_refused, 0)
        top, back = client.snd_max, client.ack_back
        self.assertTrue(client.ack_acceptable(top))
        self.assertFalse(client.ack_acceptable(top + 1))
        self.assertTrue(client.ack_acceptable((0xFFFFFFF1 - back) & MASK))
        self.assertFalse(client.ack_acceptable((0xFFFFFFF1 - back - 1) & MASK))
        deliver(server.bare_ack(1.0), client)
        self.assertEqual((client.snd_una, client.snd_nxt), (0x00000375, 0x00000375))
        self.assertTrue(client.ack_acceptable((0x00000375 - back) & MASK))
        self.assertFalse(client.ack_acceptable((0x00000375 - back - 1) & MASK))
        seqs = [wire(client.send(b"v" * 300, 1.0)).seq for _ in range(4)]
        self.assertEqual(seqs, [0x00000375, 0x000004A1, 0x000005CD, 0x00000375])


class AckCheckTests(SynchronousTestCase):
    """
    The ack check (RFC 5961 section 5): a segment inside the receive window
    is taken only with ACK and an ack in [snd_una - ack_back, snd_max].
    """

    def rewound(self) -> Pair:
        """
        A pair whose server sent 2000 bytes and then rewound, so that
        snd_una < snd_nxt < snd_max.
        """
        pair = Pair(peer_window=2500)
        for _ in range(3):
            pair.server.send(b"s" * 1000, 1.0)
        server = pair.server
        base = SERVER_ISN + 1
        self.assertEqual((server.snd_una, server.snd_nxt, server.snd_max), (base, base + 1000, base + 2000))
        return pair

    def test_ackAcceptableEdges(self) -> None:
        """
        An ack from C{snd_una - ack_back} up to C{snd_max} is acceptable,
        including acks of rewound numbers past snd_nxt; one more behind, or
        anything past snd_max, is not.
        """
        server = self.rewound().server
        una, top, back = server.snd_una, server.snd_max, server.ack_back
        self.assertEqual(back, 3 << 20)
        for ack, acceptable in [
            (una - back, True),
            (una - back - 1, False),
            (una, True),
            (una + 1500, True),
            (top, True),
            (top + 1, False),
            (una + (1 << 31), False),
        ]:
            self.assertEqual(server.ack_acceptable(ack & MASK), acceptable)

    def test_badAckDropped(self) -> None:
        """
        Data at the right number whose ack lies outside what this side
        sent, or without ACK, is dropped whole: not delivered, counted as a
        bad ack, and nothing of the flow moves (not even the idle timer);
        the first is answered with a challenge ACK, the others fall under
        its rate limit.
        """
        pair = self.rewound()
        server = pair.server
        una, top, back = server.snd_una, server.snd_max, server.ack_back

        def numbers() -> tuple[object, ...]:
            return (server.rcv_high, server.snd_una, server.snd_nxt, server.snd_wnd, server.last_rx, server.unacked_rx)

        before = numbers()
        cases = [(PSH | ACK, top + 1), (PSH | ACK, una - back - 1), (PSH | ACK, una + (1 << 31)), (PSH, una)]
        for flags, ack in cases:
            packet = from_client(CLIENT_ISN + 1, ack, flags, b"forged", window=0)
            self.assertIsNone(deliver(packet, server, 5.0))
        self.assertEqual(numbers(), before)
        self.assertEqual(server.stats.rx_bad_ack, 4)
        self.assertEqual((server.stats.rx_segments, server.stats.rx_bytes), (0, 0))
        self.assertEqual(len(server.pending), 1)
        challenge = wire(server.pending[0])
        self.assertEqual((challenge.flags, challenge.seq, challenge.ack), (ACK, una + 1000, CLIENT_ISN + 1))
        self.assertEqual(server.stats.tx_challenge_limited, 3)

    def test_bareAckWithBadAckMovesNothing(self) -> None:
        """
        A bare ACK with an unacceptable ack cannot shrink or grow the send
        window.
        """
        pair = self.rewound()
        server = pair.server
        deliver(from_client(CLIENT_ISN + 1, server.snd_max + 1, ACK, window=0), server)
        self.assertEqual((server.snd_una, server.snd_wnd), (SERVER_ISN + 1, 2500))
        self.assertEqual(server.stats.rx_bad_ack, 1)

    def test_badAcksDoNotKeepAlive(self) -> None:
        """
        Segments refused for their ack do not defer the idle timeout.
        """
        pair = Pair(idle_timeout=10.0)
        for now in (3.0, 6.0, 9.0):
            deliver(from_client(CLIENT_ISN + 1, SERVER_ISN + 5000, PSH | ACK, b"x"), pair.server, now)
        self.assertTrue(pair.server.poll(10.0))

    def test_refusedCountsBadAcksAndOptions(self) -> None:
        """
        C{rx_refused} counts the segments the ack check and the option
        check refused with the others.
        """
        stats = FlowStats(
            rx_out_of_window=1, rx_bad_rst=2, rx_bad_fin=4, rx_bad_syn=8, rx_bad_ack=16, rx_bad_options=32
        )
        self.assertEqual(stats.rx_refused, 63)

    def test_realPeerAfterChallenge(self) -> None:
        """
        The real peer's next segment, with its right ack, is delivered
        after a forged one was refused.
        """
        pair = Pair()
        deliver(from_client(CLIENT_ISN + 1, SERVER_ISN + 9999, PSH | ACK, b"forged"), pair.server)
        self.assertEqual(deliver(pair.client.send(b"real", 1.0), pair.server), b"real")


#: TCP option lists a real stack may put on an established segment, each
#: well-formed (a multiple of four bytes, as the data offset needs).
WELL_FORMED_OPTIONS = [
    b"\x01\x01\x01\x01",
    b"\x00\x00\x00\x00",
    timestamp_option(77, 0),
    b"\x08\x0a" + (78).to_bytes(4, "big") + bytes(4) + b"\x01\x01",
    # NOP, NOP, SACK with one block, then with three.
    b"\x01\x01\x05\x0a" + bytes(8),
    b"\x01\x01\x05\x1a" + bytes(24),
    # Timestamps and two SACK blocks, as Linux sends after a loss.
    timestamp_option(79, 5) + b"\x01\x01\x05\x12" + bytes(16),
    # An unknown option with a valid length, and options of the
    # handshake (harmless, if odd, on data).
    b"\x1e\x04\xab\xcd",
    b"\x02\x04\x05\xb4",
    b"\x01\x03\x03\x07",
    # End of list: whatever follows is padding.
    b"\x01\x00\xff\xff",
]

#: TCP option lists no stack sends: a length byte missing, below 2 or past
#: the end, or a known option of the wrong length.
MALFORMED_OPTIONS = [
    b"\x01\x01\x01\x08",
    b"\x01\x01\x08\x0a" + bytes(4),
    b"\x1e\x01\x00\x00",
    b"\x1e\x00\x00\x00",
    b"\x02\x03\x05\x01",
    b"\x03\x04\x07\x01",
    b"\x04\x03\x00\x01",
    b"\x08\x08" + bytes(6),
    b"\x01\x01\x05\x04\x00\x00\x00\x00",
    b"\x01\x01\x05\x0b" + bytes(8),
]


class OptionsTests(SynchronousTestCase):
    """
    Segments with well-formed TCP options (timestamps, SACK blocks, NOPs:
    what current tcpraw and real stacks send) are taken like any other; a
    malformed option list gets the segment dropped whole.
    """

    def test_tcprawCurrentSegment(self) -> None:
        """
        A data segment as current tcpraw sends it (PSH|ACK, NOP,NOP,TS with
        its own clock's TSval and TSecr 0, data offset 8, window 65535
        unscaled) is delivered; its TSval is echoed as the TSecr of this
        side's next segment, and its window opens the largest send window.
        """
        pair = Pair(peer_wscale=10)
        server = pair.server
        server.use_timestamps(0x1000, 1.0)
        tsval = 0x2A5F1C03
        packet = from_client(
            CLIENT_ISN + 1, SERVER_ISN + 1, PSH | ACK, b"kcp", options=timestamp_option(tsval, 0), window=0xFFFF
        )
        self.assertEqual(packet[32] >> 4, 8)
        self.assertEqual(wire(packet).options, TIMESTAMP_PREFIX + tsval.to_bytes(4, "big") + bytes(4))
        self.assertEqual(deliver(packet, server, 1.5), b"kcp")
        self.assertEqual(server.stats.rx_refused, 0)
        self.assertEqual(server.ts_recent, tsval)
        self.assertEqual(stamps(server.send(b"back", 1.5)), (0x1000 + 500, tsval))
        self.assertEqual(server.snd_wnd, Flow.sendWindowMaximum)

    def test_wellFormedOptionsAccepted(self) -> None:
        """
        Every well-formed option list is accepted: the data is delivered
        and nothing is counted as refused.
        """
        for options in WELL_FORMED_OPTIONS:
            pair = Pair()
            packet = from_client(CLIENT_ISN + 1, SERVER_ISN + 1, PSH | ACK, b"opt", options=options)
            self.assertEqual(deliver(packet, pair.server), b"opt", options.hex())
            self.assertEqual(pair.server.stats.rx_refused, 0)

    def test_sackBlocksAccepted(self) -> None:
        """
        SACK blocks beside the timestamps do not hide the TSval: it is
        taken, whichever comes first.
        """
        sack = b"\x01\x01\x05\x12" + bytes(16)
        for options, tsval in [(timestamp_option(500, 0) + sack, 500), (sack + timestamp_option(600, 0), 600)]:
            pair = Pair()
            packet = from_client(CLIENT_ISN + 1, SERVER_ISN + 1, PSH | ACK, b"sacked", options=options)
            self.assertEqual(deliver(packet, pair.server), b"sacked")
            self.assertEqual(pair.server.ts_recent, tsval)

    def test_malformedOptionsDropped(self) -> None:
        """
        A segment with a malformed option list is dropped whole, whatever
        else is right about it: not delivered, counted, nothing of the flow
        moves, nothing is answered.
        """
        for options in MALFORMED_OPTIONS:
            pair = Pair(peer_tsval=40)
            server = pair.server
            before = (server.rcv_high, server.snd_una, server.snd_wnd, server.ts_recent, server.last_rx)
            segment = client_segment(CLIENT_ISN + 1, SERVER_ISN + 1, PSH | ACK, b"junk", options, window=1)
            self.assertIsNone(server.receive(segment, 5.0), options.hex())
            after = (server.rcv_high, server.snd_una, server.snd_wnd, server.ts_recent, server.last_rx)
            self.assertEqual(after, before)
            self.assertEqual((server.stats.rx_bad_options, server.stats.rx_segments), (1, 0))
            self.assertEqual(server.pending, [])

    def test_malformedOptionsOnTheWire(self) -> None:
        """
        A timestamps option cut short inside a well-formed header (data
        offset 7) passes the codec and is dropped by the flow.
        """
        pair = Pair()
        cut = b"\x01\x01\x08\x0a" + bytes(4)
        packet = from_client(CLIENT_ISN + 1, SERVER_ISN + 1, PSH | ACK, b"cut", options=cut)
        self.assertEqual(packet[32] >> 4, 7)
        self.assertIsNone(deliver(packet, pair.server))
        self.assertEqual(pair.server.stats.rx_bad_options, 1)

    def test_malformedControlSegments(self) -> None:
        """
        A RST, a FIN or a retransmitted SYN-ACK with a malformed option list
        changes nothing and is not answered.
        """
        pair = Pair()
        options = b"\x1e\x01\x00\x00"
        for segment in [
            client_segment(CLIENT_ISN + 1, SERVER_ISN + 1, RST | ACK, options=options),
            client_segment(CLIENT_ISN + 1, SERVER_ISN + 1, FIN | ACK, options=options),
        ]:
            pair.server.receive(segment, 1.0)
        self.assertIs(pair.server.state, FlowState.ESTABLISHED)
        synack = Segment(
            SERVER_ADDR, CLIENT_ADDR, SERVER_PORT, CLIENT_PORT, SERVER_ISN, CLIENT_ISN + 1, SYN | ACK, 0xFFFF, b"",
            options,
        )
        pair.client.receive(synack, 1.0)
        self.assertEqual((pair.server.pending, pair.client.pending), ([], []))
        self.assertEqual((pair.server.stats.rx_bad_options, pair.client.stats.rx_bad_options), (2, 1))


class TimestampTests(SynchronousTestCase):
    """
    With L{Flow.use_timestamps}, every segment carries NOP,NOP,TS: TSval
    continuing the kernel's clock at its rate, TSecr the peer's newest
    TSval (L{Flow.ts_recent}).
    """

    def test_everySegmentCarriesTimestamps(self) -> None:
        """
        Data, bare ACKs, challenge ACKs, keepalives, FIN and RST carry the
        twelve option bytes (data offset 8), in IPv4 and IPv6 alike; the
        datagram room (the MSS) is unchanged.
        """
        for family, tcp_at in [(socket.AF_INET, 20), (socket.AF_INET6, 40)]:
            pair = Pair(family=family, keepalive_interval=1.0)
            client = pair.client
            self.assertEqual(client.option_bytes, 0)
            client.use_timestamps(1, 0.0)
            self.assertEqual(client.option_bytes, 12)
            deliver(pair.server.send(b"x", 0.0), client)
            client.receive(wire(from_server(SERVER_ISN + (1 << 31), CLIENT_ISN + 1, PSH | ACK, b"junk")), 0.0)
            client.poll(5.0)
            packets = [client.send(b"d" * MSS, 5.0), client.bare_ack(5.0), *client.pending, client.finish(5.0)]
            packets.append(client.reset(5.0))
            self.assertEqual(len(packets), 6)
            for packet in packets:
                self.assertEqual(packet[tcp_at + 12] >> 4, 8)
                options = wire(packet).options
                self.assertEqual((len(options), options[:4]), (12, TIMESTAMP_PREFIX))
            self.assertEqual(len(wire(packets[0]).payload), MSS)

    def test_advanceAtRate(self) -> None:
        """
        TSval is the kernel's value at the time given plus the ticks since,
        at the given rate (milliseconds by default), modulo 2**32.
        """
        pair = Pair()
        client = pair.client
        client.use_timestamps(5000, 10.0)
        self.assertEqual(
            [stamps(client.send(b"t", now))[0] for now in (10.0, 10.25, 12.0, 70.0)],  # type: ignore[index]
            [5000, 5250, 7000, 65000],
        )
        client.use_timestamps(7, 3.0, rate=1e6)
        self.assertEqual(stamps(client.bare_ack(3.5)), (7 + 500_000, 0))
        client.use_timestamps(0xFFFFFF00, 0.0)
        self.assertEqual(stamps(client.bare_ack(1.0)), ((0xFFFFFF00 + 1000) & MASK, 0))

    def test_monotonic(self) -> None:
        """
        Over a run of segments at increasing times, TSval never goes back
        (in serial order, across its wrap too) and advances by the rate.
        """
        rng = random.Random(7)
        pair = Pair()
        client = pair.client
        start = 0xFFFF0000
        client.use_timestamps(start, 100.0)
        now, last = 100.0, start
        for _ in range(2000):
            now += rng.choice([0.0, 0.0001, 0.0013, 0.5, 3.7])
            tsval = stamps(client.send(b"m", now))[0]  # type: ignore[index]
            self.assertFalse(seq_after(last, tsval))
            last = tsval
        self.assertEqual((last - start) & MASK, int((now - 100.0) * 1000))
        self.assertTrue(seq_after(last, start))

    def test_neverBackWithClock(self) -> None:
        """
        A clock that goes back (a wall clock stepped by NTP) never makes
        TSval go back: a peer or middlebox doing PAWS (RFC 7323) would drop
        every segment until the clock caught up.
        """
        pair = Pair()
        client = pair.client
        client.use_timestamps(1000, 10.0)
        first = stamps(client.send(b"a", 20.0))[0]  # type: ignore[index]
        second = stamps(client.send(b"b", 19.0))[0]  # type: ignore[index]
        self.assertEqual(first, 11_000)
        self.assertFalse(seq_after(first, second), (first, second))


    def test_handshakeTSvalEchoed(self) -> None:
        """
        Until the peer's first segment, TSecr echoes the peer's TSval of
        the handshake.
        """
        pair = Pair(peer_tsval=0xABCDEF01)
        pair.client.use_timestamps(9, 0.0)
        self.assertEqual(stamps(pair.client.bare_ack(0.0)), (9, 0xABCDEF01))

    def test_echoFollowsTheHighestByte(self) -> None:
        """
        The TSval of a segment that is not behind the highest byte seen is
        echoed, whatever its value (a tcpraw peer's clock is its own, and
        may read "older" than its kernel's handshake value); a segment
        behind it (a duplicate, a reordered or rewound one) does not take
        the echo back.
        """
        pair = Pair(peer_tsval=100)
        server = pair.server
        server.use_timestamps(1, 0.0)
        half = 0x7FFFFFFF
        steps = [
            (CLIENT_ISN + 1, 300, 300),  # in order: echoed
            (CLIENT_ISN + 1, 200, 300),  # behind now (a duplicate): not
            (CLIENT_ISN + 2, half + 300, half + 300),  # in order, "older" in serial terms: echoed
            (CLIENT_ISN + 10, 0xFFFFFFF0, 0xFFFFFFF0),  # past a gap: echoed
            (CLIENT_ISN + 3, 5, 0xFFFFFFF0),  # fills the gap, behind: not
        ]
        for seq, tsval, echoed in steps:
            packet = from_client(seq, SERVER_ISN + 1, PSH | ACK, b"t", options=timestamp_option(tsval, 0))
            self.assertEqual(deliver(packet, server), b"t")
            self.assertEqual(stamps(server.bare_ack(0.0))[1], echoed)  # type: ignore[index]

    def test_refusedSegmentsNotEchoed(self) -> None:
        """
        The TSval of a refused segment (out of the window, bad ack, bad RST,
        SYN) is never echoed: a blind attacker cannot set what this side
        sends.
        """
        pair = Pair(peer_tsval=100)
        server = pair.server
        options = timestamp_option(5000, 0)
        for seq, ack, flags in [
            (CLIENT_ISN + (1 << 31), SERVER_ISN + 1, PSH | ACK),
            (CLIENT_ISN + 1, SERVER_ISN + 9999, PSH | ACK),
            (CLIENT_ISN + 1, 0, RST),
            (CLIENT_ISN + 1 + 0x10000, SERVER_ISN + 1, RST | ACK),
            (CLIENT_ISN, 0, SYN),
        ]:
            deliver(from_client(seq, ack, flags, b"x", options=options), server)
        self.assertEqual(server.ts_recent, 100)
        self.assertEqual(server.stats.rx_refused, 5)

    def test_firstTSvalWithoutHandshakeTSval(self) -> None:
        """
        Without a TSval from the handshake, the peer's first TSval is
        echoed, whatever its value: there is nothing it could be older
        than.
        """
        key = FlowKey(SERVER_ADDR, SERVER_PORT, CLIENT_ADDR, CLIENT_PORT)
        server = Flow.from_handshake(key, SERVER_ISN, CLIENT_ISN, MSS, 0.0)
        server.use_timestamps(1, 0.0)
        tsval = 0x9ABCDEF0
        packet = from_client(CLIENT_ISN + 1, SERVER_ISN + 1, PSH | ACK, b"t", options=timestamp_option(tsval, 0))
        self.assertEqual(deliver(packet, server), b"t")
        self.assertEqual(stamps(server.bare_ack(1.0)), (1001, tsval))



class OutageTests(SynchronousTestCase):
    """
    An outage of any length between two flows of this project leaves
    nothing to resynchronise: both keep their numbers inside the send
    window, so the first datagrams after it are delivered.
    """

    def test_trafficResumesAfterOutage(self) -> None:
        """
        Both sides send 15,000 datagrams each (over four windows) while
        every packet is lost; the sequence numbers never leave [snd_una,
        snd_una + snd_wnd), the client's cycling across the 2**32 wrap.
        Then the path returns: the very next datagram each way is
        delivered, nothing is refused, and traffic goes on.
        """
        rng = random.Random(12)
        pair = Pair(client_isn=NEAR_WRAP_ISN - (1 << 20))
        pair.announce()
        for i in range(50):
            deliver(pair.client.send(b"c%d" % i, 1.0), pair.server)
            deliver(pair.server.send(b"s%d" % i, 1.0), pair.client)
        now = 2.0
        for _ in range(15_000):
            now += 0.001
            for flow in (pair.client, pair.server):
                una, wnd = flow.snd_una, flow.snd_wnd
                size = rng.randrange(MSS // 2, MSS + 1)
                segment = wire(flow.send(bytes(size), now))
                self.assertLessEqual(((segment.seq - una) & MASK) + size, wnd)
            pair.client.pending.clear()
            pair.server.pending.clear()
        for flow in (pair.client, pair.server):
            self.assertEqual(flow.snd_wnd, 3 << 20)
            self.assertGreater(flow.stats.tx_bytes, 4 * flow.snd_wnd)
            self.assertGreaterEqual(flow.stats.tx_rewinds, 4)
        self.assertEqual(deliver(pair.client.send(b"back c", now), pair.server, now), b"back c")
        self.assertEqual(deliver(pair.server.send(b"back s", now), pair.client, now), b"back s")
        for i in range(3000):
            now += 0.001
            for flow in (pair.client, pair.server):
                payload = b"%d" % i + bytes(rng.randrange(MSS // 2, MSS - 4))
                self.assertEqual(deliver(flow.send(payload, now), pair.peer(flow), now), payload)
                for packet in flow.pending:
                    deliver(packet, pair.peer(flow), now)
                flow.pending.clear()
        for flow in (pair.client, pair.server):
            self.assertEqual(flow.stats.rx_refused, 0)
            self.assertEqual(flow.pending, [])

    def test_keepaliveAtWindowEdge(self) -> None:
        """
        When the datagrams sent in an outage filled the peer's window to
        its very edge, a keepalive (or any bare ACK) sent next is still
        inside the peer's receive window: it keeps the peer's idle timer
        going.
        """
        pair = Pair(idle_timeout=30.0, keepalive_interval=10.0)
        pair.announce()
        client = pair.client
        for _ in range((3 << 20) // 1024):
            client.send(b"k" * 1024, 1.0)  # lost
        self.assertEqual((client.snd_nxt - client.snd_una) & MASK, client.snd_wnd)
        client.poll(11.0)
        self.assertEqual(len(client.pending), 1)
        deliver(client.pending.pop(), pair.server, 11.0)
        self.assertEqual(pair.server.stats.rx_out_of_window, 0)
        self.assertEqual(pair.server.last_rx, 11.0)



class SendWindowPropertyTests(SynchronousTestCase):
    """
    The send window under any mix of datagrams and acks.
    """

    @settings(max_examples=300, deadline=None)
    @given(
        isn=st.one_of(st.integers(0, MASK), st.integers(0xFFFFF000, 0xFFFFFFFF)),
        window=st.integers(0, 6000),
        ops=st.lists(
            st.one_of(
                st.tuples(st.just("send"), st.integers(0, MSS)),
                st.tuples(st.just("ack"), st.floats(0.0, 1.0), st.integers(0, 6000)),
                st.tuples(st.just("old-ack"), st.integers(1, 1 << 20), st.integers(0, 6000)),
                st.tuples(st.just("bad-ack"), st.integers(1, 1 << 30), st.integers(0, 6000)),
            ),
            max_size=80,
        ),
    )
    def test_sendWindow(self, isn: int, window: int, ops: list[tuple]) -> None:
        """
        Each datagram goes at snd_nxt when it fits in the window, and from
        snd_una (a counted rewind) when it does not; one that fits in the
        window at all never crosses its edge.  An acceptable ack not older
        than snd_una moves snd_una to it (snd_nxt too, when behind) and
        sets the window; an older one moves neither; an unacceptable one
        is dropped.  Always snd_una <= snd_nxt <= snd_max, in serial order.
        """
        pair = Pair(client_isn=isn, peer_window=window, peer_wscale=0)
        client = pair.client
        for op in ops:
            una, nxt, top, wnd = client.snd_una, client.snd_nxt, client.snd_max, client.snd_wnd
            rewinds = client.stats.tx_rewinds
            if op[0] == "send":
                size = op[1]
                seq = wire(client.send(b"p" * size, 1.0)).seq
                if ((nxt - una) & MASK) + size <= wnd:
                    self.assertEqual((seq, client.stats.tx_rewinds), (nxt, rewinds))
                else:
                    self.assertEqual((seq, client.stats.tx_rewinds), (una, rewinds + 1))
                if size <= wnd:
                    self.assertLessEqual(((seq - una) & MASK) + size, wnd)
                self.assertEqual(client.snd_nxt, (seq + size) & MASK)
            else:
                kind, how, peer_window = op
                if kind == "ack":
                    ack = (una + int(how * ((top - una) & MASK))) & MASK
                elif kind == "old-ack":
                    ack = (una - how) & MASK
                else:
                    ack = (top + how) & MASK
                segment = Segment(
                    SERVER_ADDR, CLIENT_ADDR, SERVER_PORT, CLIENT_PORT, client.rcv_high, ack, PSH | ACK, peer_window,
                    b"d",
                )
                delivered = client.receive(segment, 1.0)
                if kind == "ack":
                    self.assertEqual(delivered, b"d")
                    self.assertEqual((client.snd_una, client.snd_wnd), (ack, peer_window))
                    self.assertEqual(client.snd_nxt, ack if seq_after(ack, nxt) else nxt)
                else:
                    self.assertEqual(delivered, b"d" if kind == "old-ack" else None)
                    self.assertEqual((client.snd_una, client.snd_nxt, client.snd_wnd), (una, nxt, wnd))
            una, nxt, top = client.snd_una, client.snd_nxt, client.snd_max
            self.assertLessEqual((nxt - una) & MASK, (top - una) & MASK)
            self.assertLess((top - una) & MASK, 1 << 31)
