"""
Hardening of the sans-IO core (issue 4): malformed input never escapes the
codec as anything but L{MalformedSegment}; an off-path attacker who knows a
flow's 4-tuple but not its sequence numbers cannot inject data, FIN or RST
into it; tcpraw peers (which rewind their sequence numbers and whose ack
sticks at gaps) keep working; and floods of SYNs, orphan segments, early
data or closed flows keep the flow table and the flows within their limits
and their memory flat.

No assertion here depends on time taken: costs are bounded by asserting
the sizes of the data structures, and memory with C{tracemalloc}.
"""

from __future__ import annotations

import gc
import random
import socket
import struct
import tracemalloc
from collections import deque
from collections.abc import Callable

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from faketcp_twisted.flow import EndReason, Flow, FlowKey, FlowState
from faketcp_twisted.segment import (
    ACK,
    FIN,
    MALFORMED_REASONS,
    PSH,
    RST,
    SYN,
    URG,
    MalformedSegment,
    Segment,
    TCPOptions,
    build_packet,
    parse_options,
    parse_packet,
    seq_after,
)
from faketcp_twisted.table import FlowTable, Role
from tests.test_flow import (
    CLIENT_ADDR,
    CLIENT_ISN,
    CLIENT_PORT,
    MSS,
    SERVER_ADDR,
    SERVER_ISN,
    SERVER_PORT,
    Pair,
    deliver,
    from_client,
    wire,
)

MASK = 0xFFFFFFFF


# -- codec -------------------------------------------------------------------

SRC4 = socket.inet_pton(socket.AF_INET, "192.0.2.1")
DST4 = socket.inet_pton(socket.AF_INET, "198.51.100.7")
SRC6 = socket.inet_pton(socket.AF_INET6, "2001:db8::1")
DST6 = socket.inet_pton(socket.AF_INET6, "2001:db8::2")


def tcp_bytes(
    src: bytes,
    dst: bytes,
    data_offset: int,
    flags: int,
    options: bytes,
    payload: bytes,
    good_checksum: bool,
) -> bytes:
    """
    A TCP header with any data offset, then C{options} and C{payload}; the
    checksum is right or deliberately wrong.
    """
    header = struct.pack("!HHIIBBHHH", 1, 2, 3, 4, (data_offset & 15) << 4, flags, 5, 0, 0)
    segment = header + options + payload
    valid = build_packet(src, dst, 1, 2, 3, 4, flags, 5, options + payload)
    # Borrow a correct checksum only when the layout matches what the
    # builder made (data offset 5); otherwise any value will do.
    checksum = valid[-len(segment) :][16:18] if data_offset == 5 else b"\x12\x34"
    if not good_checksum:
        checksum = bytes([checksum[0] ^ 0xFF, checksum[1]])
    return segment[:16] + checksum + segment[18:]


@st.composite
def structured_ipv4(draw: st.DrawFn) -> bytes:
    """
    IPv4 packets whose every header field is drawn independently: version,
    IHL and options, total length, fragment bits, protocol, TCP data offset,
    options, payload, checksum, and whatever bytes trail.
    """
    ihl = draw(st.one_of(st.just(5), st.integers(0, 15)))
    ip_options = draw(st.binary(min_size=max(ihl - 5, 0) * 4, max_size=max(ihl - 5, 0) * 4))
    tcp = tcp_bytes(
        SRC4,
        DST4,
        draw(st.one_of(st.just(5), st.integers(0, 15))),
        draw(st.integers(0, 255)),
        draw(st.sampled_from([b"", b"\x01\x01\x01\x00", b"\x02\x04\x05\xb4", b"\xff\xff\xff\xff"])),
        draw(st.binary(max_size=64)),
        draw(st.booleans()),
    )
    natural = 20 + len(ip_options) + len(tcp)
    total = draw(st.one_of(st.just(natural), st.integers(0, 0xFFFF), st.integers(natural - 30, natural + 30)))
    header = struct.pack(
        "!BBHHHBBH4s4s",
        (draw(st.one_of(st.just(4), st.integers(0, 15))) << 4) | ihl,
        0,
        total & 0xFFFF,
        0,
        draw(st.one_of(st.just(0x4000), st.integers(0, 0xFFFF))),
        64,
        draw(st.one_of(st.just(6), st.integers(0, 255))),
        0,
        SRC4,
        DST4,
    )
    return header + ip_options + tcp + draw(st.binary(max_size=8))


@st.composite
def structured_ipv6(draw: st.DrawFn) -> bytes:
    """
    IPv6 packets with any payload length and next header, and a TCP
    segment drawn as for IPv4.
    """
    tcp = tcp_bytes(
        SRC6,
        DST6,
        draw(st.one_of(st.just(5), st.integers(0, 15))),
        draw(st.integers(0, 255)),
        draw(st.sampled_from([b"", b"\x01\x01\x01\x00"])),
        draw(st.binary(max_size=64)),
        draw(st.booleans()),
    )
    length = draw(st.one_of(st.just(len(tcp)), st.integers(0, 0xFFFF)))
    header = struct.pack(
        "!IHBB16s16s",
        draw(st.one_of(st.just(6), st.integers(0, 15))) << 28,
        length,
        draw(st.one_of(st.just(6), st.sampled_from([0, 17, 43, 44, 60]))),
        64,
        SRC6,
        DST6,
    )
    return header + tcp + draw(st.binary(max_size=8))


class CodecHardeningTests(SynchronousTestCase):
    """
    Whatever bytes a capture hands over, the codec either parses them or
    raises L{MalformedSegment} with a reason from L{MALFORMED_REASONS}.
    """

    def parse(self, packet: bytes, verify: bool) -> Segment | None:
        try:
            segment = parse_packet(packet, verify_checksum=verify)
        except MalformedSegment as error:
            self.assertIn(error.reason, MALFORMED_REASONS)
            return None
        self.assertIsInstance(segment, Segment)
        parse_options(segment.options)
        return segment

    @settings(max_examples=300, deadline=None)
    @given(packet=st.binary(max_size=2000), verify=st.booleans())
    def test_arbitraryBytes(self, packet: bytes, verify: bool) -> None:
        """
        Random bytes of any length never raise anything else.
        """
        self.parse(packet, verify)

    @settings(max_examples=500, deadline=None)
    @given(packet=st.one_of(structured_ipv4(), structured_ipv6()), verify=st.booleans())
    def test_structuredPackets(self, packet: bytes, verify: bool) -> None:
        """
        Packets with independently drawn header fields never raise anything
        else; what parses is an unfragmented TCP segment without IP options,
        and its options and payload fit inside the packet.
        """
        segment = self.parse(packet, verify)
        if segment is None:
            return
        if packet[0] >> 4 == 4:
            self.assertEqual(packet[0] & 0x0F, 5)
            self.assertEqual(packet[9], 6)
            self.assertEqual(struct.unpack_from("!H", packet, 6)[0] & 0x3FFF, 0)
        else:
            self.assertEqual(packet[6], 6)
        self.assertLessEqual(len(segment.options), 40)
        self.assertEqual(len(segment.options) % 4, 0)
        self.assertLessEqual(len(segment.payload) + len(segment.options) + 20, len(packet))

    @settings(max_examples=500, deadline=None)
    @given(options=st.binary(max_size=255))
    def test_optionsNeverRaise(self, options: bytes) -> None:
        """
        Any option bytes, up to the most a byte-sized length could claim,
        give a L{TCPOptions} whose fields are in range.
        """
        result = parse_options(options)
        self.assertIsInstance(result, TCPOptions)
        if result.mss is not None:
            self.assertTrue(0 <= result.mss <= 0xFFFF)
        if result.wscale is not None:
            self.assertTrue(0 <= result.wscale <= 14)
        if result.timestamp is not None:
            self.assertTrue(all(0 <= value <= MASK for value in result.timestamp))

    def test_everyReasonReachable(self) -> None:
        """
        Each documented reason is what some packet gets, so the counters
        named after them can all move.
        """
        good4 = build_packet(SRC4, DST4, 1, 2, 3, 4, PSH | ACK, 5, b"data")
        good6 = build_packet(SRC6, DST6, 1, 2, 3, 4, PSH | ACK, 5, b"data")
        examples = {
            "truncated": good4[:19],
            "bad-length": good4[:2] + struct.pack("!H", 200) + good4[4:],
            "bad-version": bytes([0x55]) + good4[1:],
            "fragment": good4[:6] + b"\x20\x00" + good4[8:],
            "not-tcp": good6[:6] + b"\x11" + good6[7:],
            "ip-options": bytes([0x46])
            + good4[1:2]
            + struct.pack("!H", len(good4) + 4)
            + good4[4:20]
            + b"\x01\x01\x01\x00"
            + good4[20:],
            "bad-checksum": good4[:-1] + bytes([good4[-1] ^ 1]),
        }
        self.assertEqual(set(examples), set(MALFORMED_REASONS))
        for reason, packet in examples.items():
            error = self.assertRaises(MalformedSegment, parse_packet, packet, True)
            self.assertEqual(error.reason, reason)

    def test_ipv6Jumbogram(self) -> None:
        """
        An IPv6 payload length of zero (a jumbogram, which needs a
        hop-by-hop option fake-TCP never sends) leaves no room for TCP.
        """
        good6 = build_packet(SRC6, DST6, 1, 2, 3, 4, PSH | ACK, 5, b"data")
        error = self.assertRaises(
            MalformedSegment, parse_packet, good6[:4] + b"\x00\x00" + good6[6:], True
        )
        self.assertEqual(error.reason, "truncated")


# -- injection ---------------------------------------------------------------


def established() -> Pair:
    """
    A pair that exchanged some data both ways, so every number has moved
    from its ISN.
    """
    pair = Pair(receive_window=0xFFFF << 7, peer_wscale=7)
    for i in range(5):
        deliver(pair.client.send(b"c%d" % i * 100, 1.0), pair.server)
        deliver(pair.server.send(b"s%d" % i * 100, 1.0), pair.client)
    pair.client.pending.clear()
    pair.server.pending.clear()
    return pair


def snapshot(flow: Flow) -> tuple[object, ...]:
    """
    Everything a refused segment must leave alone.
    """
    stats = flow.stats
    return (
        flow.state,
        flow.end_reason,
        flow.rcv_high,
        flow.snd_nxt,
        flow.snd_limit,
        flow.last_rx,
        tuple(flow.gaps),
        stats.rx_segments,
        stats.rx_bytes,
        stats.rx_gap_bytes,
    )


def outside(flow: Flow, rng: random.Random, reach: int) -> int:
    """
    A random sequence number at least C{reach} past L{Flow.rcv_high} and
    outside the receive window's back reach.
    """
    return (flow.rcv_high + rng.randrange(reach, (1 << 32) - flow.rx_back)) & MASK


class OffPathInjectionTests(SynchronousTestCase):
    """
    Segments forged with the flow's 4-tuple but without its sequence
    numbers do not disturb a flow; the real peer's still do.
    """

    def assertStillWorks(self, pair: Pair) -> None:
        """
        Both directions still deliver, and the server's ack did not move
        because of anything forged.
        """
        self.assertEqual(deliver(pair.client.send(b"after", 9.0), pair.server, 9.0), b"after")
        self.assertEqual(deliver(pair.server.send(b"reply", 9.0), pair.client, 9.0), b"reply")
        self.assertIs(pair.server.state, FlowState.ESTABLISHED)

    def test_rstOutsideControlWindow(self) -> None:
        """
        RSTs (with and without ACK, any ack) outside the control window
        leave the flow established; each is counted.
        """
        pair = established()
        server = pair.server
        rng = random.Random(1)
        before = snapshot(server)
        seqs = [(server.rcv_high - 1) & MASK, (server.rcv_high + server.control_window) & MASK]
        seqs += [outside(server, rng, server.control_window) for _ in range(2000)]
        for seq in seqs:
            for flags in (RST, RST | ACK, RST | PSH | ACK):
                self.assertIsNone(deliver(from_client(seq, rng.getrandbits(32), flags, b"r"), server, 2.0))
        self.assertEqual(snapshot(server), before)
        self.assertEqual(server.stats.rx_bad_rst, 3 * len(seqs))
        self.assertLessEqual(len(server.pending), 1)
        self.assertStillWorks(pair)

    def test_finOutsideControlWindow(self) -> None:
        """
        FINs outside the control window, or with a forged ack, do not close
        the flow.
        """
        pair = established()
        server = pair.server
        rng = random.Random(2)
        before = snapshot(server)
        for _ in range(2000):
            seq = outside(server, rng, server.control_window)
            deliver(from_client(seq, pair.client.rcv_high, FIN | ACK), server, 2.0)
        for _ in range(200):
            # The right number, but an ack the attacker had to guess.
            ack = (server.snd_nxt + rng.randrange(1, (1 << 32) - server.ack_back)) & MASK
            deliver(from_client(server.rcv_high, ack, FIN | ACK), server, 2.0)
        # (A forged FIN that hit the receive window with a right ack may
        # move the send limit, as any segment of the peer does.)
        self.assertEqual(snapshot(server)[:4], before[:4])
        self.assertEqual(server.stats.rx_bad_fin + server.stats.rx_out_of_window, 2200)
        self.assertStillWorks(pair)

    def test_dataOutsideWindow(self) -> None:
        """
        Data outside the receive window is neither delivered nor counted as
        received, and moves no number.
        """
        pair = established()
        server = pair.server
        rng = random.Random(3)
        before = snapshot(server)
        for _ in range(2000):
            seq = outside(server, rng, server.rx_ahead)
            ack = rng.getrandbits(32)
            self.assertIsNone(deliver(from_client(seq, ack, PSH | ACK, b"injected"), server, 2.0))
        self.assertEqual(snapshot(server), before)
        self.assertEqual(server.stats.rx_out_of_window, 2000)
        self.assertStillWorks(pair)

    def test_synDoesNotReset(self) -> None:
        """
        SYNs at the flow's own numbers, with any other flags, change
        nothing and are not delivered.
        """
        pair = established()
        server = pair.server
        before = snapshot(server)
        for flags in (SYN, SYN | ACK, SYN | RST, SYN | FIN, SYN | PSH | ACK, SYN | RST | ACK):
            packet = from_client(server.rcv_high, server.snd_nxt, flags, b"syn")
            self.assertIsNone(deliver(packet, server, 2.0))
        self.assertEqual(snapshot(server), before)
        self.assertEqual(server.stats.rx_bad_syn, 6)
        self.assertEqual(server.pending, [])
        self.assertStillWorks(pair)

    def test_strayAcks(self) -> None:
        """
        Bare ACKs with random numbers and huge windows do not move the
        send limit (and so cannot make this side overrun the real peer's
        window), nor anything else.
        """
        pair = established()
        server = pair.server
        rng = random.Random(4)
        limit = server.snd_limit
        for _ in range(2000):
            seq = outside(server, rng, server.rx_ahead)
            segment = Segment(
                CLIENT_ADDR, SERVER_ADDR, CLIENT_PORT, SERVER_PORT, seq, rng.getrandbits(32), ACK, 0xFFFF, b""
            )
            server.receive(segment, 2.0)
        self.assertEqual(server.snd_limit, limit)
        self.assertIs(server.state, FlowState.ESTABLISHED)
        self.assertStillWorks(pair)

    def test_peerRstEnds(self) -> None:
        """
        The real peer's RST ends the flow, also when its last data
        segments were lost.
        """
        pair = established()
        deliver(pair.client.reset(2.0), pair.server, 2.0)
        self.assertIs(pair.server.end_reason, EndReason.PEER_RST)
        pair = established()
        for _ in range(20):
            pair.client.send(b"l" * 1000, 2.0)  # lost
        deliver(pair.client.reset(2.0), pair.server, 2.0)
        self.assertIs(pair.server.end_reason, EndReason.PEER_RST)

    def test_peerFinEnds(self) -> None:
        """
        The real peer's FIN half-closes, also after lost data.
        """
        pair = established()
        for _ in range(20):
            pair.client.send(b"l" * 1000, 2.0)  # lost
        deliver(pair.client.finish(2.0), pair.server, 2.0)
        self.assertIs(pair.server.state, FlowState.READ_CLOSED)

    def test_kernelRstAtAck(self) -> None:
        """
        A RST without ACK at the number this side acknowledges (what a
        peer's kernel that lost the connection sends in answer to a
        segment) ends the flow.
        """
        pair = established()
        segment = wire(pair.server.bare_ack(2.0))
        deliver(from_client(segment.ack, 0, RST), pair.server, 2.0)
        self.assertIs(pair.server.end_reason, EndReason.PEER_RST)

    def test_refusedSegmentsDoNotKeepAlive(self) -> None:
        """
        A stream of forged segments does not defer the idle timeout.
        """
        pair = established()
        server = pair.server
        server.idle_timeout = 10.0
        rng = random.Random(5)
        for now in range(2, 12):
            seq = outside(server, rng, server.rx_ahead)
            deliver(from_client(seq, 0, PSH | ACK, b"junk"), server, float(now))
        self.assertTrue(server.poll(11.0))
        self.assertIs(server.end_reason, EndReason.IDLE)

    @settings(max_examples=200, deadline=None)
    @given(
        forged=st.lists(
            st.tuples(
                st.floats(0.0, 1.0),  # where outside the window, as a fraction
                st.integers(0, MASK),  # ack
                st.integers(0, 0x3F),  # flags, any of FIN SYN RST PSH ACK URG
                st.integers(0, 0xFFFF),  # window
                st.integers(0, 1500),  # payload size
                st.floats(0.0, 0.3),  # time step
            ),
            min_size=1,
            max_size=40,
        )
    )
    def test_blindSegmentsChangeNothing(self, forged: list[tuple[float, int, int, int, int, float]]) -> None:
        """
        Any sequence of segments whose sequence numbers lie outside the
        receive window, whatever their flags, acks, windows and sizes,
        delivers nothing and changes nothing but counters; the challenge
        ACKs they draw stay within the rate limit.
        """
        pair = established()
        server = pair.server
        before = snapshot(server)
        now = 2.0
        span = (1 << 32) - server.rx_back - server.rx_ahead
        for where, ack, flags, window, size, step in forged:
            now += step
            seq = (server.rcv_high + server.rx_ahead + min(int(where * span), span - 1)) & MASK
            self.assertFalse(server.in_window(seq))
            segment = Segment(
                CLIENT_ADDR, SERVER_ADDR, CLIENT_PORT, SERVER_PORT, seq, ack, flags, window, bytes(size)
            )
            self.assertIsNone(server.receive(segment, now))
        self.assertEqual(snapshot(server), before)
        self.assertLessEqual(len(server.pending), 1 + (now - 2.0) / Flow.challengeAckInterval)
        self.assertStillWorks(pair)


# -- tcpraw peers ------------------------------------------------------------


class TcprawPeer:
    """
    The sequence handling of a tcpraw 1.2.25 peer (DESIGN.md section 3):
    every ACK it receives sets its next sequence number to that ack (which
    can move it backwards), and its own ack advances only over in-order
    data, so it sticks at the first gap after a loss.  It delivers every
    PSH segment and sends PSH|ACK with a random window of at least 0x8000.
    """

    def __init__(self, key: FlowKey, isn: int, peer_isn: int, rng: random.Random) -> None:
        #: The 4-tuple seen from the tcpraw side.
        self.key = key
        self.seq = (isn + 1) & MASK
        self.ack = (peer_isn + 1) & MASK
        self.rng = rng
        self.delivered: list[bytes] = []
        self.rewinds = 0

    def send(self, payload: bytes) -> Segment:
        """
        The segment carrying C{payload}, as the other side's capture reads it.
        """
        key = self.key
        segment = Segment(
            key.local_addr,
            key.remote_addr,
            key.local_port,
            key.remote_port,
            self.seq,
            self.ack,
            PSH | ACK,
            self.rng.randrange(0x8000, 0x10000),
            payload,
        )
        self.seq = (self.seq + len(payload)) & MASK
        return segment

    def receive(self, packet: bytes) -> None:
        """
        Take a packet the flow sent.
        """
        segment = wire(packet)
        if segment.flags & ACK:
            if seq_after(self.seq, segment.ack):
                self.rewinds += 1
            self.seq = segment.ack
        if segment.flags & PSH:
            if segment.seq == self.ack:
                self.ack = (self.ack + len(segment.payload)) & MASK
            self.delivered.append(segment.payload)


def tcpraw_pair(receive_window: int = 16 * 1024, seed: int = 0) -> tuple[Flow, TcprawPeer]:
    """
    A server flow of this project and a tcpraw client after the handshake.
    """
    key = FlowKey(SERVER_ADDR, SERVER_PORT, CLIENT_ADDR, CLIENT_PORT)
    flow = Flow.from_handshake(
        key, SERVER_ISN, CLIENT_ISN, MSS, 0.0, receive_window=receive_window, peer_wscale=7
    )
    peer = TcprawPeer(
        FlowKey(CLIENT_ADDR, CLIENT_PORT, SERVER_ADDR, SERVER_PORT),
        CLIENT_ISN,
        SERVER_ISN,
        random.Random(seed),
    )
    return flow, peer


class TcprawInteropTests(SynchronousTestCase):
    """
    A flow talking to a simulated tcpraw peer over a path with delay (and,
    towards tcpraw, loss) delivers everything tcpraw sends, although tcpraw
    keeps sending new data under sequence numbers it used before.
    """

    def run_path(
        self,
        flow: Flow,
        peer: TcprawPeer,
        ticks: int,
        per_tick: int,
        delay: int,
        reply_every: int = 0,
        loss: Callable[[int], bool] = lambda i: False,
    ) -> list[bytes]:
        """
        Each tick tcpraw sends C{per_tick} datagrams; every packet takes
        C{delay} ticks either way.  The flow answers with what it queues
        (bare ACKs) and, every C{reply_every} ticks, a datagram of its own;
        C{loss} decides which of the flow's packets (by index) are lost.

        @return: what the flow delivered.
        """
        to_flow: deque[tuple[int, list[Segment]]] = deque()
        to_peer: deque[tuple[int, list[bytes]]] = deque()
        delivered: list[bytes] = []
        sent_back = 0
        high = flow.rcv_high
        counter = 0
        for tick in range(ticks + 2 * delay + 1):
            now = tick * 0.001
            if tick < ticks:
                batch = []
                for _ in range(per_tick):
                    batch.append(peer.send(b"%08d" % counter + b"t" * 992))
                    counter += 1
                to_flow.append((tick + delay, batch))
            while to_flow and to_flow[0][0] <= tick:
                for segment in to_flow.popleft()[1]:
                    payload = flow.receive(segment, now)
                    if payload is not None:
                        delivered.append(payload)
                    self.assertFalse(seq_after(high, flow.rcv_high))
                    high = flow.rcv_high
            outgoing = list(flow.pending)
            flow.pending.clear()
            if reply_every and tick % reply_every == 0 and tick < ticks:
                packet = flow.send(b"reply %d" % tick, now)
                self.assertIsNotNone(packet)
                assert packet is not None
                outgoing.append(packet)
            kept = []
            for packet in outgoing:
                if not loss(sent_back):
                    kept.append(packet)
                sent_back += 1
            to_peer.append((tick + delay, kept))
            while to_peer and to_peer[0][0] <= tick:
                for packet in to_peer.popleft()[1]:
                    peer.receive(packet)
        self.assertEqual(counter, ticks * per_tick)
        return delivered

    def test_rewindsDelivered(self) -> None:
        """
        tcpraw rewinds to each ack it receives, up to a bandwidth-delay
        product behind what it already sent; every datagram is delivered,
        none refused.
        """
        flow, peer = tcpraw_pair()
        delivered = self.run_path(flow, peer, ticks=300, per_tick=10, delay=20)
        self.assertEqual(len(delivered), 3000)
        self.assertEqual(sorted(delivered), sorted(set(delivered)))
        self.assertGreater(peer.rewinds, 10)
        self.assertGreater(flow.stats.rx_duplicates, 1000)
        self.assertEqual(flow.stats.rx_out_of_window, 0)
        self.assertEqual(flow.stats.rx_bad_ack, 0)

    def test_stuckAckDelivered(self) -> None:
        """
        With the flow's own datagrams lost now and then, tcpraw's ack sticks
        at the first gap; its data is still delivered, and the flow's
        datagrams still reach it.
        """
        flow, peer = tcpraw_pair(seed=1)
        delivered = self.run_path(
            flow, peer, ticks=300, per_tick=5, delay=10, reply_every=2, loss=lambda i: i % 7 == 3
        )
        self.assertEqual(len(delivered), 1500)
        self.assertEqual(flow.stats.rx_out_of_window, 0)
        # tcpraw's ack stuck at the first datagram lost, far behind.
        self.assertGreater((flow.snd_nxt - peer.ack) & MASK, 1000)
        self.assertGreater(flow.stats.rx_duplicates, 0)
        self.assertGreater(len(peer.delivered), 100)
        self.assertEqual(flow.stats.tx_held, 0)

    def test_driftedAheadBroughtBack(self) -> None:
        """
        When the flow's acks were lost long enough for tcpraw to run past
        the receive window, its data is refused, and the challenge ACK
        brings tcpraw back: its next datagrams are delivered.
        """
        flow, peer = tcpraw_pair()
        peer.seq = (flow.rcv_high + flow.rx_ahead + 5000) & MASK
        self.assertIsNone(flow.receive(peer.send(b"too far"), 1.0))
        self.assertEqual(flow.stats.rx_out_of_window, 1)
        self.assertEqual(len(flow.pending), 1)
        peer.receive(flow.pending.pop())
        self.assertEqual(flow.receive(peer.send(b"back"), 1.1), b"back")

    def test_stuckAckFarBehind(self) -> None:
        """
        Once this side sent far more than the ack reach past tcpraw's stuck
        ack, the ack is implausible: the data is still delivered and the
        ack is only counted, never used.
        """
        flow, peer = tcpraw_pair()
        stuck = peer.ack
        flow.snd_nxt = (stuck + (3 << 30)) & MASK
        flow.snd_limit = (flow.snd_nxt + (1 << 20)) & MASK
        limit = flow.snd_limit
        for i in range(10):
            self.assertEqual(flow.receive(peer.send(b"d%d" % i), 1.0), b"d%d" % i)
        self.assertEqual(flow.stats.rx_bad_ack, 10)
        self.assertEqual(flow.snd_limit, limit)
        self.assertIsNotNone(flow.send(b"still sending", 1.0))


# -- the flow state machine --------------------------------------------------

#: Offsets from the flow's numbers that sit on or next to an edge.
EDGE_OFFSETS = [0, 1, -1, 1 << 31, (1 << 31) - 1]


def edge_seq(flow: Flow, choice: int) -> int:
    """
    A sequence number on or next to an edge of one of C{flow}'s windows.
    """
    edges = [
        flow.rx_ahead - 1,
        flow.rx_ahead,
        -flow.rx_back,
        -flow.rx_back - 1,
        flow.control_window - 1,
        flow.control_window,
        *EDGE_OFFSETS,
    ]
    return (flow.rcv_high + edges[choice % len(edges)]) & MASK


segment_ops = st.tuples(
    st.just("segment"),
    st.sampled_from(["near", "edge", "any"]),
    st.integers(-3000, 3000),  # offset from rcv_high ("near"), edge index, or raw
    st.integers(0, MASK),
    st.sampled_from(["plausible", "edge", "any"]),
    st.integers(-100_000, 10),  # offset from snd_nxt for a plausible ack
    st.one_of(
        st.sampled_from([PSH | ACK, ACK, FIN | ACK, FIN | PSH | ACK, RST, RST | ACK, SYN | ACK]),
        st.integers(0, 0x3F),
    ),
    st.integers(0, 0xFFFF),
    st.one_of(st.just(0), st.integers(1, 64), st.integers(0, 1500)),
    st.booleans(),  # TCP options
)
flow_ops = st.one_of(
    segment_ops,
    st.tuples(st.just("legit"), st.integers(1, 1400)),
    st.tuples(st.just("send"), st.integers(0, MSS)),
    st.tuples(st.just("finish")),
    st.tuples(st.just("reset")),
    st.tuples(st.just("flush")),
    st.tuples(st.just("tick"), st.floats(0.0, 3.0)),
)

_ORDER = {
    FlowState.ESTABLISHED: {
        FlowState.ESTABLISHED,
        FlowState.READ_CLOSED,
        FlowState.WRITE_CLOSED,
        FlowState.CLOSED,
    },
    FlowState.READ_CLOSED: {FlowState.READ_CLOSED, FlowState.CLOSED},
    FlowState.WRITE_CLOSED: {FlowState.WRITE_CLOSED, FlowState.CLOSED},
    FlowState.CLOSED: {FlowState.CLOSED},
}


class FlowPropertyTests(SynchronousTestCase):
    """
    The flow state machine under arbitrary, partly adversarial, input.
    """

    def assertBounded(self, flow: Flow) -> None:
        """
        Every queue of the flow within its limits, and consistent.
        """
        self.assertLessEqual(len(flow.pending), Flow.pendingLimit)
        self.assertLessEqual(len(flow.held), Flow.heldLimit)
        self.assertLessEqual(flow.held_bytes, Flow.heldBytesLimit)
        self.assertEqual(flow.held_bytes, sum(len(payload) for _, payload in flow.held))
        self.assertLessEqual(len(flow.gaps), Flow.gapLimit)
        previous_end = None
        for start, end in flow.gaps:
            behind_start = (flow.rcv_high - start) & MASK
            behind_end = (flow.rcv_high - end) & MASK
            self.assertGreater(behind_start, behind_end)
            if previous_end is not None:
                self.assertGreaterEqual((flow.rcv_high - previous_end) & MASK, behind_start)
            previous_end = end
        for packet in flow.pending:
            segment = parse_packet(packet, verify_checksum=True)
            self.assertIn(segment.flags, (ACK, PSH | ACK))

    @settings(max_examples=300, deadline=None)
    @given(
        isns=st.tuples(
            st.one_of(st.integers(0, MASK), st.sampled_from([0, MASK, 0x7FFFFFFF])),
            st.one_of(st.integers(0, MASK), st.sampled_from([0, MASK, 0x7FFFFFFF])),
        ),
        window=st.sampled_from([0, 4000, 0xFFFF, 0xFFFF << 7, 0xFFFF << 14]),
        ops=st.lists(flow_ops, min_size=1, max_size=60),
    )
    def test_arbitrarySegments(
        self, isns: tuple[int, int], window: int, ops: list[tuple]
    ) -> None:
        """
        Any segments (any flags, sequence numbers near, on the edges of, or
        anywhere outside the windows, any acks, sizes and options), local
        sends, closes and clock ticks: nothing raises; a segment outside the
        receive window (or a SYN, or a RST outside the control window)
        delivers nothing and moves nothing; delivered data is the segment's
        payload; the ack never moves back, nor jumps further than the
        window reaches; the state only moves towards closed; the queues
        stay within their limits.
        """
        local_isn, remote_isn = isns
        key = FlowKey(SERVER_ADDR, SERVER_PORT, CLIENT_ADDR, CLIENT_PORT)
        flow = Flow.from_handshake(
            key,
            local_isn,
            remote_isn,
            MSS,
            0.0,
            receive_window=window,
            idle_timeout=5.0,
            keepalive_interval=1.0,
            peer_window=4000,
        )
        now = 0.0
        for op in ops:
            kind = op[0]
            if kind in ("segment", "legit"):
                if kind == "segment":
                    _, how, offset, raw, ack_how, ack_offset, flags, window_field, size, options = op
                    if how == "near":
                        seq = (flow.rcv_high + offset) & MASK
                    elif how == "edge":
                        seq = edge_seq(flow, offset)
                    else:
                        seq = raw
                    if ack_how == "plausible":
                        ack = (flow.snd_nxt + ack_offset) & MASK
                    elif ack_how == "edge":
                        ack = (flow.snd_nxt - flow.ack_back + EDGE_OFFSETS[offset % 5]) & MASK
                    else:
                        ack = raw ^ 0x5A5A5A5A
                else:
                    seq, ack, flags, window_field = flow.rcv_high, flow.snd_nxt, PSH | ACK, 0xFFFF
                    size, options = op[1], False
                payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
                segment = Segment(
                    CLIENT_ADDR,
                    SERVER_ADDR,
                    CLIENT_PORT,
                    SERVER_PORT,
                    seq,
                    ack,
                    flags,
                    window_field,
                    payload,
                    b"\x01\x01\x01\x01" if options else b"",
                )
                state, high, last_rx = flow.state, flow.rcv_high, flow.last_rx
                limit, can_receive = flow.snd_limit, flow.can_receive
                offset_now = (seq - high) & MASK
                accepted = flow.in_window(seq)
                result = flow.receive(segment, now)
                self.assertIn(flow.state, _ORDER[state])
                self.assertFalse(seq_after(high, flow.rcv_high))
                if state is FlowState.CLOSED or flags & SYN or not accepted or (
                    flags & RST and offset_now >= flow.control_window
                ):
                    self.assertIsNone(result)
                    self.assertEqual(flow.rcv_high, high)
                    if state is not FlowState.CLOSED and not flags & SYN:
                        self.assertIs(flow.state, state)
                        self.assertEqual(flow.snd_limit, limit)
                        self.assertEqual(flow.last_rx, last_rx)
                elif flags & RST:
                    self.assertIsNone(result)
                    self.assertIs(flow.end_reason, EndReason.PEER_RST)
                else:
                    self.assertLessEqual((flow.rcv_high - high) & MASK, flow.rx_ahead + size + 1)
                    if result is not None:
                        self.assertEqual(result, payload)
                        self.assertTrue(can_receive)
                        self.assertFalse(options)
                    if not flow.ack_plausible(ack) or not flags & ACK:
                        self.assertEqual(flow.snd_limit, limit)
            elif kind == "send":
                if flow.can_send:
                    packet = flow.send(bytes(op[1]), now)
                    if packet is not None:
                        self.assertEqual(parse_packet(packet).payload, bytes(op[1]))
            elif kind == "finish":
                if flow.can_send:
                    flow.finish(now)
            elif kind == "reset":
                if flow.state is not FlowState.CLOSED:
                    flow.reset(now)
            elif kind == "flush":
                flow.pending.clear()
            else:
                now += op[1]
                flow.poll(now)
            self.assertBounded(flow)


# -- floods ------------------------------------------------------------------


class MemoryProbe:
    """
    Traced memory before and during a flood.

    @ivar baseline: bytes traced once the structures were full.
    @ivar peak: the most bytes traced during the flood.
    @ivar final: bytes traced after it.
    """

    baseline = peak = final = 0

    def measure(self, warm_up: Callable[[], None], flood: Callable[[], None]) -> None:
        """
        Run C{warm_up} (which fills the structures to their limits), take
        the baseline, then run C{flood}.
        """
        tracemalloc.start()
        try:
            warm_up()
            gc.collect()
            self.baseline = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            flood()
            gc.collect()
            self.final, self.peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()


#: Growth allowed over the baseline during a flood of 30k-100k segments.  A
#: structure that kept one small object per segment would grow by tens of
#: megabytes; the slack here covers dictionary resizing and the objects of
#: the segment being processed.
FLOOD_SLACK = 1 << 20


def random_address(rng: random.Random) -> bytes:
    """
    A random IPv4 address (a spoofed source).
    """
    return rng.getrandbits(32).to_bytes(4, "big")


def to_server(remote: bytes, port: int, seq: int, ack: int, flags: int, payload: bytes = b"") -> tuple[FlowKey, Segment]:
    """
    A segment from C{remote}:C{port} to the server, and its key.
    """
    key = FlowKey(SERVER_ADDR, SERVER_PORT, remote, port)
    return key, Segment(remote, SERVER_ADDR, port, SERVER_PORT, seq, ack, flags, 0xFFFF, payload)


class FloodTests(SynchronousTestCase):
    """
    Floods keep every structure of the table (and of a flow) within its
    limits, and memory flat once those are reached.
    """

    def assertFlat(self, probe: MemoryProbe) -> None:
        self.assertLess(probe.peak - probe.baseline, FLOOD_SLACK)
        self.assertLess(probe.final - probe.baseline, FLOOD_SLACK // 4)

    def assertTableBounded(self, table: FlowTable) -> None:
        limits = table.limits
        self.assertLessEqual(len(table.embryos), limits.embryos)
        self.assertLessEqual(len(table._half_open), limits.embryos)
        self.assertLessEqual(len(table._per_address), limits.embryos)
        self.assertLessEqual(max(table._per_address.values(), default=0), limits.embryos_per_address)
        self.assertLessEqual(len(table.time_wait), limits.time_waits)
        self.assertLessEqual(len(table.completed), limits.embryos)
        self.assertLessEqual(table.early_segments, limits.early_total_segments)
        self.assertLessEqual(table.early_bytes, limits.early_total_bytes)
        for embryo in table.embryos.values():
            self.assertLessEqual(len(embryo.early), limits.early_segments)
            self.assertLessEqual(embryo.early_bytes, limits.early_bytes)

    def test_spoofedSynFlood(self) -> None:
        """
        100k SYNs from random addresses and ports: at most C{embryos} are
        kept, memory stays flat, and a real handshake made in the middle of
        the flood (its last ACK a few hundred SYNs after its SYN) survives
        to be adopted.
        """
        table = FlowTable(Role.SERVER)
        rng = random.Random(10)
        legit = FlowKey(SERVER_ADDR, SERVER_PORT, CLIENT_ADDR, CLIENT_PORT)

        def syns(count: int, start: int = 0) -> None:
            for i in range(start, start + count):
                if i == 50_000:
                    table.receive_unadopted(legit, to_server(CLIENT_ADDR, CLIENT_PORT, CLIENT_ISN, 0, SYN)[1], 0.0)
                elif i == 50_500:
                    segment = to_server(CLIENT_ADDR, CLIENT_PORT, CLIENT_ISN + 1, SERVER_ISN + 1, ACK)[1]
                    table.receive_unadopted(legit, segment, 0.0)
                key, segment = to_server(
                    random_address(rng), rng.randrange(1024, 65536), rng.getrandbits(32), 0, SYN
                )
                table.receive_unadopted(key, segment, 0.0)

        probe = MemoryProbe()
        probe.measure(lambda: syns(5000), lambda: syns(100_000, 5000))
        self.assertFlat(probe)
        self.assertTableBounded(table)
        self.assertEqual(len(table.embryos), table.limits.embryos)
        self.assertGreater(table.drops["embryo-evicted"], 100_000 - 2 * table.limits.embryos)
        flow, _ = table.adopt(legit, MSS, 0.0)
        self.assertEqual(flow.rcv_high, CLIENT_ISN + 1)

    def test_oneAddressSynFlood(self) -> None:
        """
        30k SYNs from one address (all ports): it holds at most
        C{embryos_per_address} embryos, evicts nobody, and another
        address's handshake started before the flood is intact after it.
        """
        table = FlowTable(Role.SERVER)
        other = CLIENT_ADDR
        flooder = socket.inet_pton(socket.AF_INET, "203.0.113.9")
        legit, first = to_server(other, CLIENT_PORT, CLIENT_ISN, 0, SYN)
        table.receive_unadopted(legit, first, 0.0)
        rng = random.Random(11)

        def syns(count: int) -> None:
            for _ in range(count):
                key, segment = to_server(flooder, rng.randrange(1, 65536), rng.getrandbits(32), 0, SYN)
                table.receive_unadopted(key, segment, 0.0)

        probe = MemoryProbe()
        probe.measure(lambda: syns(1000), lambda: syns(30_000))
        self.assertFlat(probe)
        self.assertTableBounded(table)
        self.assertEqual(table._per_address[flooder], table.limits.embryos_per_address)
        self.assertEqual(table.drops["embryo-evicted"], 0)
        table.receive_unadopted(legit, to_server(other, CLIENT_PORT, CLIENT_ISN + 1, SERVER_ISN + 1, ACK)[1], 1.0)
        self.assertTrue(table.handshake_known(legit))

    def test_orphanFlood(self) -> None:
        """
        35k segments of no handshake (data, ACKs, FINs, RSTs, SYN-ACKs on
        random 4-tuples) are counted and kept nowhere.
        """
        table = FlowTable(Role.SERVER)
        rng = random.Random(12)
        flags = [PSH | ACK, ACK, FIN | ACK, RST, RST | ACK, SYN | ACK, URG | ACK]

        def orphans(count: int) -> None:
            for _ in range(count):
                key, segment = to_server(
                    random_address(rng),
                    rng.randrange(1, 65536),
                    rng.getrandbits(32),
                    rng.getrandbits(32),
                    rng.choice(flags),
                    bytes(rng.randrange(0, 1400)),
                )
                table.receive_unadopted(key, segment, 0.0)

        probe = MemoryProbe()
        probe.measure(lambda: orphans(5000), lambda: orphans(30_000))
        self.assertFlat(probe)
        self.assertEqual((len(table.embryos), len(table.time_wait)), (0, 0))
        self.assertEqual(table.drops["orphan"], 35_000)

    def test_earlyDataFlood(self) -> None:
        """
        An attacker who completes handshakes (SYN, then an ACK at the right
        number) and floods them with data keeps at most the table-wide
        early budget; blind data (random numbers) is dropped before it
        costs any.
        """
        table = FlowTable(Role.SERVER)
        rng = random.Random(13)
        attackers = [socket.inet_pton(socket.AF_INET, f"203.0.113.{i}") for i in (10, 11)]
        keys = [(address, port) for address in attackers for port in range(2000, 2060)]
        for address, port in keys:
            key, syn = to_server(address, port, CLIENT_ISN, 0, SYN)
            table.receive_unadopted(key, syn, 0.0)

        def data(count: int) -> None:
            for i in range(count):
                address, port = keys[i % len(keys)]
                seq = CLIENT_ISN + 1 if (i // len(keys)) % 2 else rng.getrandbits(32)
                key, segment = to_server(address, port, seq, SERVER_ISN + 1, PSH | ACK, bytes(1000 + i % 7))
                table.receive_unadopted(key, segment, 0.0)

        probe = MemoryProbe()
        probe.measure(lambda: data(20_000), lambda: data(30_000))
        self.assertTableBounded(table)
        self.assertLess(probe.peak - probe.baseline, FLOOD_SLACK)
        self.assertEqual(len(table.embryos), len(keys))
        # The table-wide budget, not the sum of the per-embryo ones, is
        # what bounds the flood.
        self.assertLess(table.limits.early_total_segments, len(keys) * table.limits.early_segments)
        self.assertEqual(table.early_segments, table.limits.early_total_segments)
        self.assertGreater(table.drops["embryo-out-of-window"], 20_000)
        self.assertGreater(table.drops["early-overflow"], 15_000)

    def test_timeWaitChurn(self) -> None:
        """
        35k flows retired in a row leave at most C{time_waits} entries;
        each entry ends on time.
        """
        table = FlowTable(Role.SERVER)
        rng = random.Random(14)

        def retire(count: int) -> None:
            for i in range(count):
                key = FlowKey(SERVER_ADDR, SERVER_PORT, random_address(rng), rng.randrange(1, 65536))
                table.retire(Flow(key, 0, 0, MSS, 0.0, 0.0), i * 0.0001)

        probe = MemoryProbe()
        probe.measure(lambda: retire(5000), lambda: retire(30_000))
        self.assertFlat(probe)
        self.assertEqual(len(table.time_wait), table.limits.time_waits)
        table.expire(1e6)
        self.assertEqual(len(table.time_wait), 0)

    def test_embryosExpire(self) -> None:
        """
        After a flood, every embryo and its early data expires after
        C{embryo_lifetime}, and the table-wide counts return to zero.
        """
        table = FlowTable(Role.SERVER)
        rng = random.Random(15)
        for i in range(20_000):
            remote, port = random_address(rng), rng.randrange(1, 65536)
            key, syn = to_server(remote, port, 77, 0, SYN)
            table.receive_unadopted(key, syn, i * 0.001)
            table.receive_unadopted(key, to_server(remote, port, 78, 5, PSH | ACK, b"e" * 50)[1], i * 0.001)
        self.assertTableBounded(table)
        table.expire(20.0 + table.limits.embryo_lifetime)
        self.assertEqual(len(table.embryos), 0)
        self.assertEqual((table.early_segments, table.early_bytes), (0, 0))
        self.assertEqual((len(table._half_open), len(table._per_address)), (0, 0))

    def test_flowFlood(self) -> None:
        """
        An established flow hit by 23k forged segments (outside its window)
        and then 23k in-window segments at random offsets, its pending
        packets never sent: its queues stay within their limits and memory
        flat; challenge ACKs follow the rate limit.
        """
        pair = established()
        server = pair.server
        rng = random.Random(16)
        clock = [2.0]

        def forged(count: int) -> None:
            for _ in range(count):
                clock[0] += 0.0001
                seq = outside(server, rng, server.rx_ahead)
                segment = Segment(
                    CLIENT_ADDR, SERVER_ADDR, CLIENT_PORT, SERVER_PORT, seq, rng.getrandbits(32),
                    rng.choice([PSH | ACK, RST, FIN | ACK, ACK]), 0xFFFF, bytes(rng.randrange(0, 1400)),
                )
                server.receive(segment, clock[0])

        probe = MemoryProbe()
        probe.measure(lambda: forged(3000), lambda: forged(20_000))
        self.assertFlat(probe)
        elapsed = clock[0] - 2.0
        self.assertLessEqual(server.stats.tx_challenge_acks, 1 + elapsed / Flow.challengeAckInterval)
        self.assertIs(server.state, FlowState.ESTABLISHED)

        def in_window(count: int) -> None:
            for _ in range(count):
                seq = (server.rcv_high + rng.randrange(-1 << 20, 1 << 16)) & MASK
                segment = Segment(
                    CLIENT_ADDR, SERVER_ADDR, CLIENT_PORT, SERVER_PORT, seq, server.snd_nxt,
                    PSH | ACK, 0xFFFF, bytes(rng.randrange(1, 1400)),
                )
                server.receive(segment, 3.0)

        probe = MemoryProbe()
        probe.measure(lambda: in_window(3000), lambda: in_window(20_000))
        self.assertLess(probe.final - probe.baseline, FLOOD_SLACK // 4)
        self.assertLessEqual(len(server.pending), Flow.pendingLimit)
        self.assertLessEqual(len(server.gaps), Flow.gapLimit)
