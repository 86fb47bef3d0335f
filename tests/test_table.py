"""
Tests for L{faketcp_twisted.core.table}: the flow table of one capture, with its
embryonic handshakes (server and client roles), adoption, time-wait and
timers.
"""

from __future__ import annotations

import socket

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from faketcp_twisted.core.flow import EndReason, Flow, FlowKey, FlowState
from faketcp_twisted.core.rotation import Rotation
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
    timestamp_option,
)
from faketcp_twisted.core.table import Embryo, FlowTable, Role, TableLimits
from tests.test_flow import MALFORMED_OPTIONS, WELL_FORMED_OPTIONS

SERVER_ADDR = socket.inet_pton(socket.AF_INET, "198.51.100.7")
SERVER_ADDR_2 = socket.inet_pton(socket.AF_INET, "198.51.100.8")
CLIENT_ADDR = socket.inet_pton(socket.AF_INET, "192.0.2.1")
CLIENT_ADDR_2 = socket.inet_pton(socket.AF_INET, "192.0.2.2")
SERVER_ADDR6 = socket.inet_pton(socket.AF_INET6, "2001:db8::2")
CLIENT_ADDR6 = socket.inet_pton(socket.AF_INET6, "2001:db8::1")
SERVER_PORT = 443
CLIENT_PORT = 40000

CLIENT_ISN = 0x11111111
SERVER_ISN = 0x88888888
MSS = 1200

#: A server's view of the connection from CLIENT_ADDR:CLIENT_PORT.
SERVER_KEY = FlowKey(SERVER_ADDR, SERVER_PORT, CLIENT_ADDR, CLIENT_PORT)
#: A client's view of its connection to SERVER_ADDR:SERVER_PORT.
CLIENT_KEY = FlowKey(CLIENT_ADDR, CLIENT_PORT, SERVER_ADDR, SERVER_PORT)


def incoming(
    key: FlowKey,
    flags: int,
    seq: int,
    ack: int = 0,
    payload: bytes = b"",
    options: bytes = b"",
    window: int = 0xFFFF,
) -> Segment:
    """
    A segment the capture of C{key}'s local side reads: from the remote
    end to the local one, through the real codec.
    """
    return parse_packet(
        build_packet(
            key.remote_addr,
            key.local_addr,
            key.remote_port,
            key.local_port,
            seq,
            ack,
            flags,
            window,
            payload,
            options=options,
        )
    )


def syn_options(tsval: int) -> bytes:
    """
    The options of a Linux SYN: MSS, SACK permitted, timestamps (TSecr
    zero), NOP, window scale 7.
    """
    return b"\x02\x04\x05\xb4\x04\x02\x08\x0a" + tsval.to_bytes(4, "big") + bytes(4) + b"\x01\x03\x03\x07"


def server_handshake(
    table: FlowTable,
    key: FlowKey = SERVER_KEY,
    client_isn: int = CLIENT_ISN,
    server_isn: int = SERVER_ISN,
    now: float = 0.0,
) -> None:
    """
    Show a server table the SYN and the handshake's last ACK of C{key}.
    """
    table.receive_unadopted(key, incoming(key, SYN, client_isn), now)
    table.receive_unadopted(
        key,
        incoming(key, ACK, (client_isn + 1) & 0xFFFFFFFF, (server_isn + 1) & 0xFFFFFFFF),
        now,
    )


def adopted_server_flow(
    table: FlowTable,
    key: FlowKey = SERVER_KEY,
    now: float = 0.0,
    idle_timeout: float = 0.0,
    keepalive_interval: float = 0.0,
) -> Flow:
    """
    A flow of a server table, adopted after a whole handshake.
    """
    server_handshake(table, key, now=now)
    flow, early = table.adopt(key, MSS, now, idle_timeout=idle_timeout, keepalive_interval=keepalive_interval)
    return flow


def fin_retired_flow(table: FlowTable) -> Flow:
    """
    A server flow that this side closed with FIN at 1.0 and let go before
    the peer's FIN: retired into time-wait, awaiting that FIN.
    """
    flow = Flow.from_handshake(SERVER_KEY, SERVER_ISN, CLIENT_ISN, MSS, 0.0)
    table.flows[SERVER_KEY] = flow
    flow.finish(1.0)
    flow.abandon()
    table.retire(flow, 1.0)
    return flow


class ServerHandshakeTests(SynchronousTestCase):
    """
    A server table learns a handshake from the client's SYN and the
    handshake's last ACK.
    """

    def test_synCreatesEmbryo(self) -> None:
        """
        A SYN creates an embryo knowing the remote ISN only.
        """
        table = FlowTable(Role.SERVER)
        self.assertIsNone(
            table.receive_unadopted(SERVER_KEY, incoming(SERVER_KEY, SYN, CLIENT_ISN), 5.0)
        )
        embryo = table.embryos[SERVER_KEY]
        self.assertEqual(embryo.remote_isn, CLIENT_ISN)
        self.assertIsNone(embryo.local_isn)
        self.assertEqual(embryo.created, 5.0)
        self.assertFalse(table.handshake_known(SERVER_KEY))

    def test_firstAckGivesLocalISN(self) -> None:
        """
        The first ACK gives the local ISN (its ack minus one); the handshake
        is then known.
        """
        table = FlowTable(Role.SERVER)
        server_handshake(table)
        self.assertEqual(table.embryos[SERVER_KEY].local_isn, SERVER_ISN)
        self.assertTrue(table.handshake_known(SERVER_KEY))
        # A later ACK does not change what the first one said.
        table.receive_unadopted(
            SERVER_KEY, incoming(SERVER_KEY, ACK, CLIENT_ISN + 1, SERVER_ISN + 500), 0.0
        )
        self.assertEqual(table.embryos[SERVER_KEY].local_isn, SERVER_ISN)

    def test_localISNWrapsFromAckZero(self) -> None:
        """
        An ack of zero means a local ISN of 2**32 - 1.
        """
        table = FlowTable(Role.SERVER)
        server_handshake(table, server_isn=0xFFFFFFFF)
        self.assertEqual(table.embryos[SERVER_KEY].local_isn, 0xFFFFFFFF)
        flow, _ = table.adopt(SERVER_KEY, MSS, 0.0)
        self.assertEqual(flow.snd_nxt, 0)

    def test_dataSegmentGivesLocalISN(self) -> None:
        """
        When the handshake's bare ACK is lost, the first data segment's ack
        gives the local ISN.
        """
        table = FlowTable(Role.SERVER)
        table.receive_unadopted(SERVER_KEY, incoming(SERVER_KEY, SYN, CLIENT_ISN), 0.0)
        table.receive_unadopted(
            SERVER_KEY,
            incoming(SERVER_KEY, PSH | ACK, CLIENT_ISN + 1, SERVER_ISN + 1, b"data"),
            0.0,
        )
        self.assertTrue(table.handshake_known(SERVER_KEY))
        self.assertEqual(table.embryos[SERVER_KEY].local_isn, SERVER_ISN)

    def test_retransmittedSyn(self) -> None:
        """
        A retransmitted SYN keeps the one embryo.
        """
        table = FlowTable(Role.SERVER)
        for _ in range(3):
            table.receive_unadopted(SERVER_KEY, incoming(SERVER_KEY, SYN, CLIENT_ISN), 0.0)
        self.assertEqual(list(table.embryos), [SERVER_KEY])
        self.assertEqual(table.drops, {})

    def test_adoptStartsAtHandshake(self) -> None:
        """
        The adopted flow sends from the local ISN plus one and acknowledges
        the remote ISN plus one; the embryo is gone and the flow is in the
        table.
        """
        table = FlowTable(Role.SERVER)
        server_handshake(table)
        flow, early = table.adopt(SERVER_KEY, MSS, 7.0, idle_timeout=3.0, keepalive_interval=1.0)
        self.assertEqual(early, [])
        self.assertEqual(flow.key, SERVER_KEY)
        self.assertEqual(flow.snd_nxt, SERVER_ISN + 1)
        self.assertEqual(flow.rcv_high, CLIENT_ISN + 1)
        self.assertEqual(flow.mss, MSS)
        self.assertEqual((flow.last_rx, flow.last_tx), (7.0, 7.0))
        self.assertEqual((flow.idle_timeout, flow.keepalive_interval), (3.0, 1.0))
        self.assertIs(table.flows[SERVER_KEY], flow)
        self.assertNotIn(SERVER_KEY, table.embryos)
        self.assertEqual(len(table), 1)

    def test_adoptPassesReceiveWindow(self) -> None:
        """
        The receive window given to adopt is the flow's (its bare-ACK
        interval an eighth of it); without one, the flow has
        L{Flow.receiveWindow} in the scale given.
        """
        table = FlowTable(Role.SERVER)
        server_handshake(table)
        flow, _ = table.adopt(SERVER_KEY, MSS, 0.0, receive_window=8000)
        self.assertEqual((flow.rcv_wnd, flow.window_field, flow.ack_every), (8000, 8000, 1000))
        table = FlowTable(Role.SERVER)
        server_handshake(table)
        flow, _ = table.adopt(SERVER_KEY, MSS, 0.0, receive_wscale=7)
        self.assertEqual((flow.rcv_wnd, flow.window_field), (Flow.receiveWindow, Flow.receiveWindow >> 7))
        self.assertEqual(parse_packet(flow.bare_ack(0.0)).window, Flow.receiveWindow >> 7)

    def test_adoptPassesPeerWindow(self) -> None:
        """
        The flow's send window starts as the peer's latest handshake
        window: the handshake ACK's field in the peer's scale (a SYN's field
        is never scaled).
        """
        table = FlowTable(Role.SERVER)
        table.receive_unadopted(SERVER_KEY, incoming(SERVER_KEY, SYN, CLIENT_ISN, window=64240), 0.0)
        ack = incoming(SERVER_KEY, ACK, CLIENT_ISN + 1, SERVER_ISN + 1, window=502)
        table.receive_unadopted(SERVER_KEY, ack, 0.0)
        flow, _ = table.adopt(SERVER_KEY, MSS, 0.0, peer_wscale=7)
        self.assertEqual(flow.snd_wnd, 502 << 7)
        client = FlowTable(Role.CLIENT)
        client.expect(CLIENT_PORT, SERVER_ADDR, SERVER_PORT)
        synack = incoming(CLIENT_KEY, SYN | ACK, SERVER_ISN, CLIENT_ISN + 1, window=65160)
        client.receive_unadopted(CLIENT_KEY, synack, 0.0)
        flow, _ = client.adopt(CLIENT_KEY, MSS, 0.0, peer_wscale=7)
        self.assertEqual(flow.snd_wnd, 65160)

    def test_earlySegmentsReturnedInOrder(self) -> None:
        """
        Data segments (and a FIN) that arrive before adoption are returned by
        adopt in arrival order, and the flow delivers them from the right
        sequence numbers.
        """
        table = FlowTable(Role.SERVER)
        server_handshake(table)
        base = CLIENT_ISN + 1
        second = incoming(SERVER_KEY, PSH | ACK, base + 3, SERVER_ISN + 1, b"two")
        first = incoming(SERVER_KEY, PSH | ACK, base, SERVER_ISN + 1, b"one")
        fin = incoming(SERVER_KEY, FIN | ACK, base + 6, SERVER_ISN + 1)
        bare = incoming(SERVER_KEY, ACK, base, SERVER_ISN + 1)
        for segment in (second, first, bare, fin):
            self.assertIsNone(table.receive_unadopted(SERVER_KEY, segment, 1.0))
        flow, early = table.adopt(SERVER_KEY, MSS, 2.0)
        self.assertEqual(early, [second, first, fin])
        delivered = [flow.receive(segment, 2.0) for segment in early]
        self.assertEqual(delivered, [b"two", b"one", None])
        self.assertEqual(flow.rcv_high, base + 7)
        self.assertIs(flow.state, FlowState.READ_CLOSED)
        self.assertEqual(flow.stats.rx_reordered, 1)

    def test_adoptUnknownHandshake(self) -> None:
        """
        Adopting a 4-tuple whose handshake was not (fully) seen raises
        L{KeyError} and keeps what was seen.
        """
        table = FlowTable(Role.SERVER)
        self.assertRaises(KeyError, table.adopt, SERVER_KEY, MSS, 0.0)
        table.receive_unadopted(SERVER_KEY, incoming(SERVER_KEY, SYN, CLIENT_ISN), 0.0)
        self.assertRaises(KeyError, table.adopt, SERVER_KEY, MSS, 0.0)
        self.assertIn(SERVER_KEY, table.embryos)
        self.assertEqual(table.flows, {})

    def test_handshakeUnknownKey(self) -> None:
        """
        A 4-tuple never seen has no known handshake.
        """
        self.assertFalse(FlowTable(Role.SERVER).handshake_known(SERVER_KEY))

    def test_ipv6(self) -> None:
        """
        IPv6 handshakes are learned the same way.
        """
        key = FlowKey(SERVER_ADDR6, SERVER_PORT, CLIENT_ADDR6, CLIENT_PORT)
        table = FlowTable(Role.SERVER)
        server_handshake(table, key)
        flow, _ = table.adopt(key, MSS, 0.0)
        self.assertEqual((flow.snd_nxt, flow.rcv_high), (SERVER_ISN + 1, CLIENT_ISN + 1))


class ServerOrphanTests(SynchronousTestCase):
    """
    A server table drops, and counts, segments of no handshake it saw.
    """

    def test_ackWithoutSyn(self) -> None:
        """
        An ACK or data segment with no SYN seen is an orphan: dropped,
        counted, and no embryo is made.
        """
        table = FlowTable(Role.SERVER, TableLimits(orphan_resets=0))
        self.assertIsNone(
            table.receive_unadopted(SERVER_KEY, incoming(SERVER_KEY, ACK, 1, 2), 0.0)
        )
        table.receive_unadopted(SERVER_KEY, incoming(SERVER_KEY, PSH | ACK, 1, 2, b"x"), 0.0)
        table.receive_unadopted(SERVER_KEY, incoming(SERVER_KEY, FIN | ACK, 1, 2), 0.0)
        self.assertEqual(table.drops["orphan"], 3)
        self.assertEqual(table.embryos, {})

    def test_orphanDataIsReset(self) -> None:
        """
        A server answers orphan data (a flow of its previous run) with a
        RST whose seq is the segment's ack and whose ack is the segment's
        end, so the peer's flow (which takes a RST only with an ack it
        sent) ends at once.
        """
        table = FlowTable(Role.SERVER)
        cases = [(PSH | ACK, b"x", 2), (FIN | ACK, b"", 2), (FIN | PSH | ACK, b"xyz", 5), (ACK, b"", 1)]
        for i, (flags, payload, end) in enumerate(cases):
            reply = table.receive_unadopted(SERVER_KEY, incoming(SERVER_KEY, flags, 1, 777, payload), 10.0 * i)
            assert reply is not None
            answer = parse_packet(reply, verify_checksum=True)
            self.assertEqual((answer.flags, answer.seq, answer.ack), (RST | ACK, 777, end))
            self.assertEqual((answer.src, answer.sport), (SERVER_KEY.local_addr, SERVER_KEY.local_port))
            self.assertEqual((answer.dst, answer.dport), (SERVER_KEY.remote_addr, SERVER_KEY.remote_port))

    def test_orphanResetsRateLimited(self) -> None:
        """
        Orphan RSTs stay within their budget per second, whatever the flood,
        so the port cannot be used to reflect RSTs at spoofed addresses.
        """
        table = FlowTable(Role.SERVER, TableLimits(orphan_resets=5))
        sent = sum(
            table.receive_unadopted(SERVER_KEY, incoming(SERVER_KEY, ACK, 1, n), 10.0 + n * 1e-4) is not None
            for n in range(1000)
        )
        self.assertLessEqual(sent, 6)
        self.assertGreater(table.drops["orphan-reset-limited"], 900)
        later = table.receive_unadopted(SERVER_KEY, incoming(SERVER_KEY, ACK, 1, 5), 12.0)
        self.assertIsNotNone(later)

    def test_synAckIsOrphan(self) -> None:
        """
        A SYN-ACK sent to a server is an orphan and makes no embryo.
        """
        table = FlowTable(Role.SERVER)
        self.assertIsNone(
            table.receive_unadopted(SERVER_KEY, incoming(SERVER_KEY, SYN | ACK, 1, 2), 0.0)
        )
        self.assertEqual(table.drops["orphan"], 1)
        self.assertEqual(table.embryos, {})

    def test_rstRemovesEmbryo(self) -> None:
        """
        A RST ends the embryo of its handshake; nothing is answered.
        """
        table = FlowTable(Role.SERVER)
        server_handshake(table)
        data = incoming(SERVER_KEY, PSH | ACK, CLIENT_ISN + 1, SERVER_ISN + 1, b"x")
        table.receive_unadopted(SERVER_KEY, data, 0.0)
        rst = incoming(SERVER_KEY, RST | ACK, CLIENT_ISN + 2, 0)
        self.assertIsNone(table.receive_unadopted(SERVER_KEY, rst, 0.0))
        self.assertNotIn(SERVER_KEY, table.embryos)
        self.assertFalse(table.handshake_known(SERVER_KEY))
        self.assertRaises(KeyError, table.adopt, SERVER_KEY, MSS, 0.0)

    def test_rstWithoutEmbryo(self) -> None:
        """
        A RST for nothing known is dropped and counted.
        """
        table = FlowTable(Role.SERVER)
        self.assertIsNone(table.receive_unadopted(SERVER_KEY, incoming(SERVER_KEY, RST, 1), 0.0))
        self.assertEqual(table.drops["orphan"], 1)

    def test_rstWithSynRemovesEmbryo(self) -> None:
        """
        RST wins over SYN in one segment: it makes no embryo.
        """
        table = FlowTable(Role.SERVER)
        table.receive_unadopted(SERVER_KEY, incoming(SERVER_KEY, SYN | RST, 1), 0.0)
        self.assertEqual(table.embryos, {})


class EmbryoLimitTests(SynchronousTestCase):
    """
    What a table keeps for handshakes nobody adopted is bounded.
    """

    def test_earlySegmentCountLimit(self) -> None:
        """
        Early segments beyond C{early_segments} are dropped as early-overflow.
        """
        table = FlowTable(Role.SERVER, TableLimits(early_segments=2))
        server_handshake(table)
        segments = [
            incoming(SERVER_KEY, PSH | ACK, CLIENT_ISN + 1 + i, SERVER_ISN + 1, b"%d" % i)
            for i in range(4)
        ]
        for segment in segments:
            table.receive_unadopted(SERVER_KEY, segment, 0.0)
        self.assertEqual(table.drops["early-overflow"], 2)
        _, early = table.adopt(SERVER_KEY, MSS, 0.0)
        self.assertEqual(early, segments[:2])

    def test_earlyByteLimit(self) -> None:
        """
        An early segment that would take the kept bytes past C{early_bytes}
        is dropped; a smaller one that still fits is kept.
        """
        table = FlowTable(Role.SERVER, TableLimits(early_bytes=100))
        server_handshake(table)
        sizes = [60, 60, 40, 1]
        segments = [
            incoming(SERVER_KEY, PSH | ACK, CLIENT_ISN + 1, SERVER_ISN + 1, b"b" * size)
            for size in sizes
        ]
        for segment in segments:
            table.receive_unadopted(SERVER_KEY, segment, 0.0)
        self.assertEqual(table.drops["early-overflow"], 2)
        self.assertEqual(table.embryos[SERVER_KEY].early_bytes, 100)
        _, early = table.adopt(SERVER_KEY, MSS, 0.0)
        self.assertEqual(early, [segments[0], segments[2]])

    def test_embryoCountEvictsOldest(self) -> None:
        """
        A new handshake beyond C{embryos} evicts the oldest embryo.
        """
        table = FlowTable(Role.SERVER, TableLimits(embryos=2))
        keys = [FlowKey(SERVER_ADDR, SERVER_PORT, CLIENT_ADDR, port) for port in (1, 2, 3)]
        for now, key in enumerate(keys):
            table.receive_unadopted(key, incoming(key, SYN, CLIENT_ISN), float(now))
        self.assertEqual(list(table.embryos), keys[1:])
        self.assertEqual(table.drops["embryo-evicted"], 1)

    def test_knownEmbryoNotEvicted(self) -> None:
        """
        A retransmitted SYN of a handshake already kept evicts nothing.
        """
        table = FlowTable(Role.SERVER, TableLimits(embryos=2))
        keys = [FlowKey(SERVER_ADDR, SERVER_PORT, CLIENT_ADDR, port) for port in (1, 2)]
        for key in keys + keys:
            table.receive_unadopted(key, incoming(key, SYN, CLIENT_ISN), 0.0)
        self.assertEqual(list(table.embryos), keys)
        self.assertEqual(table.drops["embryo-evicted"], 0)

    def test_embryoLifetime(self) -> None:
        """
        An embryo not adopted within C{embryo_lifetime} is dropped by
        C{expire}; younger ones stay.
        """
        table = FlowTable(Role.SERVER, TableLimits(embryo_lifetime=10.0))
        other = FlowKey(SERVER_ADDR, SERVER_PORT, CLIENT_ADDR, 1)
        server_handshake(table, now=0.0)
        server_handshake(table, other, now=5.0)
        self.assertEqual(table.expire(9.9), [])
        self.assertTrue(table.handshake_known(SERVER_KEY))
        table.expire(10.0)
        self.assertFalse(table.handshake_known(SERVER_KEY))
        self.assertTrue(table.handshake_known(other))
        self.assertEqual(table.drops["embryo-expired"], 1)
        self.assertRaises(KeyError, table.adopt, SERVER_KEY, MSS, 10.0)
        table.expire(15.0)
        self.assertEqual(table.embryos, {})
        self.assertEqual(table.drops["embryo-expired"], 2)

    def test_zeroEmbryoLimit(self) -> None:
        """
        With an embryo limit of zero, a SYN is dropped without an error and
        nothing is kept.
        """
        table = FlowTable(Role.SERVER, TableLimits(embryos=0))
        table.receive_unadopted(SERVER_KEY, incoming(SERVER_KEY, SYN, CLIENT_ISN), 0.0)
        self.assertEqual(len(table.embryos), 0)


class EmbryoHardeningTests(SynchronousTestCase):
    """
    A blind attacker who knows a handshake's 4-tuple (not its numbers)
    cannot end it, change its numbers or fill its early budget, and one
    flooding address cannot push out everyone else's handshakes.
    """

    def test_blindRstKeepsEmbryo(self) -> None:
        """
        A RST far from the peer's first sequence number leaves the embryo;
        one at it (or just after early data) ends it.
        """
        table = FlowTable(Role.SERVER)
        server_handshake(table)
        for seq in (CLIENT_ISN, CLIENT_ISN + 1 + 0x10000, CLIENT_ISN + (1 << 31)):
            table.receive_unadopted(SERVER_KEY, incoming(SERVER_KEY, RST, seq), 0.0)
        self.assertTrue(table.handshake_known(SERVER_KEY))
        self.assertEqual(table.drops["bad-rst"], 3)
        table.receive_unadopted(SERVER_KEY, incoming(SERVER_KEY, RST, CLIENT_ISN + 1), 0.0)
        self.assertFalse(table.handshake_known(SERVER_KEY))

    def test_otherSynKeepsNumbers(self) -> None:
        """
        A SYN with another sequence number does not replace the first one's
        (the kernel keeps the first too).
        """
        table = FlowTable(Role.SERVER)
        table.receive_unadopted(SERVER_KEY, incoming(SERVER_KEY, SYN, CLIENT_ISN), 0.0)
        table.receive_unadopted(SERVER_KEY, incoming(SERVER_KEY, SYN, 12345), 0.0)
        self.assertEqual(table.embryos[SERVER_KEY].remote_isn, CLIENT_ISN)
        self.assertEqual(table.drops["bad-syn"], 1)

    def test_outOfWindowAckIgnored(self) -> None:
        """
        An ACK whose sequence number is not near the peer's ISN does not
        give the local ISN, nor the peer's window.
        """
        table = FlowTable(Role.SERVER)
        table.receive_unadopted(SERVER_KEY, incoming(SERVER_KEY, SYN, CLIENT_ISN), 0.0)
        table.receive_unadopted(SERVER_KEY, incoming(SERVER_KEY, ACK, CLIENT_ISN - 1, 999), 0.0)
        embryo = table.embryos[SERVER_KEY]
        self.assertIsNone(embryo.local_isn)
        self.assertFalse(embryo.peer_window_scaled)
        self.assertEqual(table.drops["embryo-out-of-window"], 1)
        self.assertEqual(table.completed, [])

    def test_outOfWindowEarlyDataDropped(self) -> None:
        """
        Early data outside C{embryo_window} is dropped, not kept.
        """
        table = FlowTable(Role.SERVER, TableLimits(embryo_window=1000))
        server_handshake(table)
        for offset in (1000, 5000, -1):
            segment = incoming(SERVER_KEY, PSH | ACK, CLIENT_ISN + 1 + offset, SERVER_ISN + 1, b"x")
            table.receive_unadopted(SERVER_KEY, segment, 0.0)
        good = incoming(SERVER_KEY, PSH | ACK, CLIENT_ISN + 1 + 999, SERVER_ISN + 1, b"x")
        table.receive_unadopted(SERVER_KEY, good, 0.0)
        self.assertEqual(table.drops["embryo-out-of-window"], 3)
        self.assertEqual(table.embryos[SERVER_KEY].early, [good])

    def test_perAddressLimit(self) -> None:
        """
        Past C{embryos_per_address} handshakes from one address, its SYNs
        are dropped without evicting anyone; other addresses are served,
        and the address gets room again once an embryo leaves.
        """
        table = FlowTable(Role.SERVER, TableLimits(embryos=10, embryos_per_address=2))
        other = FlowKey(SERVER_ADDR, SERVER_PORT, CLIENT_ADDR_2, 1)
        table.receive_unadopted(other, incoming(other, SYN, 1), 0.0)
        keys = [FlowKey(SERVER_ADDR, SERVER_PORT, CLIENT_ADDR, port) for port in (1, 2, 3, 4)]
        for key in keys:
            table.receive_unadopted(key, incoming(key, SYN, CLIENT_ISN), 0.0)
        self.assertEqual(list(table.embryos), [other] + keys[:2])
        self.assertEqual(table.drops["embryo-address-limit"], 2)
        self.assertEqual(table.drops["embryo-evicted"], 0)
        table.receive_unadopted(keys[0], incoming(keys[0], RST, CLIENT_ISN + 1), 0.0)
        table.receive_unadopted(keys[2], incoming(keys[2], SYN, CLIENT_ISN), 0.0)
        self.assertIn(keys[2], table.embryos)

    def test_halfOpenEvictedFirst(self) -> None:
        """
        A new handshake past C{embryos} evicts the oldest half-open one,
        not an older handshake that completed.
        """
        table = FlowTable(Role.SERVER, TableLimits(embryos=2))
        keys = [FlowKey(SERVER_ADDR, SERVER_PORT, CLIENT_ADDR, port) for port in (1, 2, 3)]
        server_handshake(table, keys[0])
        for key in keys[1:]:
            table.receive_unadopted(key, incoming(key, SYN, CLIENT_ISN), 0.0)
        self.assertEqual(list(table.embryos), [keys[0], keys[2]])
        self.assertTrue(table.handshake_known(keys[0]))

    def test_completedEvictedWhenNoneHalfOpen(self) -> None:
        """
        With every embryo complete, the oldest goes.
        """
        table = FlowTable(Role.SERVER, TableLimits(embryos=2))
        keys = [FlowKey(SERVER_ADDR, SERVER_PORT, CLIENT_ADDR, port) for port in (1, 2, 3)]
        for key in keys:
            server_handshake(table, key)
        self.assertEqual(list(table.embryos), keys[1:])
        self.assertEqual(table.drops["embryo-evicted"], 1)

    def test_earlyTotalLimits(self) -> None:
        """
        Early segments and bytes are bounded across all embryos too.
        """
        limits = TableLimits(early_total_segments=3, early_total_bytes=250)
        table = FlowTable(Role.SERVER, limits)
        keys = [FlowKey(SERVER_ADDR, SERVER_PORT, CLIENT_ADDR, port) for port in (1, 2)]
        for key in keys:
            server_handshake(table, key)
            for _ in range(2):
                data = incoming(key, PSH | ACK, CLIENT_ISN + 1, SERVER_ISN + 1, b"d" * 100)
                table.receive_unadopted(key, data, 0.0)
        self.assertEqual((table.early_segments, table.early_bytes), (2, 200))
        self.assertEqual(table.drops["early-overflow"], 2)
        small = incoming(keys[1], PSH | ACK, CLIENT_ISN + 1, SERVER_ISN + 1, b"s" * 50)
        table.receive_unadopted(keys[1], small, 0.0)
        self.assertEqual((table.early_segments, table.early_bytes), (3, 250))

    def test_earlyTotalsFollowEmbryos(self) -> None:
        """
        The table-wide early counts drop with every embryo that leaves:
        adopted, reset, evicted or expired.
        """
        table = FlowTable(Role.SERVER, TableLimits(embryos=2, embryo_lifetime=5.0))
        keys = [FlowKey(SERVER_ADDR, SERVER_PORT, CLIENT_ADDR, port) for port in range(1, 6)]

        def fill(key: FlowKey, now: float) -> None:
            server_handshake(table, key, now=now)
            data = incoming(key, PSH | ACK, CLIENT_ISN + 1, SERVER_ISN + 1, b"e" * 10)
            table.receive_unadopted(key, data, now)

        fill(keys[0], 0.0)
        fill(keys[1], 0.0)
        table.adopt(keys[0], MSS, 0.0)
        self.assertEqual((table.early_segments, table.early_bytes), (1, 10))
        table.receive_unadopted(keys[1], incoming(keys[1], RST, CLIENT_ISN + 11), 0.0)
        self.assertEqual((table.early_segments, table.early_bytes), (0, 0))
        for key in keys[2:]:
            fill(key, 1.0)
        self.assertEqual((table.early_segments, table.early_bytes), (2, 20))
        table.expire(10.0)
        self.assertEqual((table.early_segments, table.early_bytes), (0, 0))
        self.assertEqual(table.embryos, {})

    def test_completedBounded(self) -> None:
        """
        The list of completed handshakes never outgrows C{embryos}, even if
        the owner never clears it.
        """
        table = FlowTable(Role.SERVER, TableLimits(embryos=3))
        for port in range(10):
            server_handshake(table, FlowKey(SERVER_ADDR, SERVER_PORT, CLIENT_ADDR, port))
        self.assertEqual(len(table.completed), 3)


class ClientHandshakeTests(SynchronousTestCase):
    """
    A client table learns a handshake from the SYN-ACK of a connection it
    expects, and answers it with the handshake's last ACK.
    """

    def setUp(self) -> None:
        self.table = FlowTable(Role.CLIENT)
        self.table.expect(CLIENT_PORT, SERVER_ADDR, SERVER_PORT)

    def synack(
        self,
        key: FlowKey = CLIENT_KEY,
        server_isn: int = SERVER_ISN,
        client_isn: int = CLIENT_ISN,
    ) -> Segment:
        """
        The server's SYN-ACK as the client's capture reads it.
        """
        return incoming(key, SYN | ACK, server_isn, (client_isn + 1) & 0xFFFFFFFF)

    def test_expectedSynAckAnswered(self) -> None:
        """
        The SYN-ACK of an expected connection creates the embryo with both
        ISNs and returns the final ACK: ACK only, seq the SYN-ACK's ack, ack
        its seq plus one, valid checksum.
        """
        reply = self.table.receive_unadopted(CLIENT_KEY, self.synack(), 3.0)
        self.assertIsNotNone(reply)
        assert reply is not None
        ack = parse_packet(reply, verify_checksum=True)
        self.assertEqual(
            (ack.src, ack.dst, ack.sport, ack.dport),
            (CLIENT_ADDR, SERVER_ADDR, CLIENT_PORT, SERVER_PORT),
        )
        self.assertEqual(ack.flags, ACK)
        self.assertEqual(ack.seq, CLIENT_ISN + 1)
        self.assertEqual(ack.ack, SERVER_ISN + 1)
        self.assertEqual(ack.payload, b"")
        embryo = self.table.embryos[CLIENT_KEY]
        self.assertEqual((embryo.local_isn, embryo.remote_isn), (CLIENT_ISN, SERVER_ISN))
        self.assertEqual(embryo.created, 3.0)
        self.assertTrue(self.table.handshake_known(CLIENT_KEY))

    def test_answerWraps(self) -> None:
        """
        The answer's numbers wrap modulo 2**32.
        """
        reply = self.table.receive_unadopted(
            CLIENT_KEY, self.synack(server_isn=0xFFFFFFFF, client_isn=0xFFFFFFFF), 0.0
        )
        assert reply is not None
        ack = parse_packet(reply)
        self.assertEqual((ack.seq, ack.ack), (0, 0))
        self.assertEqual(self.table.embryos[CLIENT_KEY].local_isn, 0xFFFFFFFF)

    def test_ipv6Answer(self) -> None:
        """
        An IPv6 SYN-ACK is answered with an IPv6 ACK.
        """
        key = FlowKey(CLIENT_ADDR6, CLIENT_PORT, SERVER_ADDR6, SERVER_PORT)
        self.table.expect(CLIENT_PORT, SERVER_ADDR6, SERVER_PORT)
        reply = self.table.receive_unadopted(key, self.synack(key), 0.0)
        assert reply is not None
        ack = parse_packet(reply, verify_checksum=True)
        self.assertEqual((ack.src, ack.dst), (CLIENT_ADDR6, SERVER_ADDR6))
        self.assertEqual(ack.flags, ACK)

    def test_retransmittedSynAckAnsweredAgain(self) -> None:
        """
        Each copy of the SYN-ACK is answered (the first answer may be lost).
        """
        first = self.table.receive_unadopted(CLIENT_KEY, self.synack(), 0.0)
        second = self.table.receive_unadopted(CLIENT_KEY, self.synack(), 1.0)
        self.assertEqual(first, second)
        self.assertEqual(list(self.table.embryos), [CLIENT_KEY])

    def test_forgedSynAckChangesNothing(self) -> None:
        """
        A second SYN-ACK with other numbers (forged, before adoption) is
        dropped as C{bad-syn} and unanswered: the first SYN-ACK's numbers
        stand, as the kernel's do.
        """
        self.table.receive_unadopted(CLIENT_KEY, self.synack(), 0.0)
        for forged in (
            self.synack(server_isn=SERVER_ISN + 12345),
            self.synack(client_isn=CLIENT_ISN + 7),
        ):
            self.assertIsNone(self.table.receive_unadopted(CLIENT_KEY, forged, 0.5))
        self.assertEqual(self.table.drops["bad-syn"], 2)
        embryo = self.table.embryos[CLIENT_KEY]
        self.assertEqual((embryo.local_isn, embryo.remote_isn), (CLIENT_ISN, SERVER_ISN))
        self.assertIsNotNone(self.table.receive_unadopted(CLIENT_KEY, self.synack(), 1.0))

    def test_adopt(self) -> None:
        """
        The adopted client flow starts after both ISNs and gets the data
        that arrived between the SYN-ACK and adoption.
        """
        self.table.receive_unadopted(CLIENT_KEY, self.synack(), 0.0)
        data = incoming(CLIENT_KEY, PSH | ACK, SERVER_ISN + 1, CLIENT_ISN + 1, b"hello")
        self.assertIsNone(self.table.receive_unadopted(CLIENT_KEY, data, 0.5))
        flow, early = self.table.adopt(CLIENT_KEY, MSS, 1.0)
        self.assertEqual((flow.snd_nxt, flow.rcv_high), (CLIENT_ISN + 1, SERVER_ISN + 1))
        self.assertEqual(early, [data])
        self.assertEqual(flow.receive(early[0], 1.0), b"hello")

    def test_unexpectedSynAck(self) -> None:
        """
        A SYN-ACK nobody expects is answered with nothing and counted as an
        orphan.
        """
        table = FlowTable(Role.CLIENT)
        self.assertIsNone(table.receive_unadopted(CLIENT_KEY, self.synack(), 0.0))
        self.assertEqual(table.drops["orphan"], 1)
        self.assertEqual(table.embryos, {})

    def test_expectationMatchesRemotePortAndAddress(self) -> None:
        """
        A SYN-ACK from another remote port or address, or to another local
        port, is not the expected one.
        """
        for key in [
            CLIENT_KEY._replace(remote_port=SERVER_PORT + 1),
            CLIENT_KEY._replace(remote_addr=SERVER_ADDR_2),
            CLIENT_KEY._replace(local_port=CLIENT_PORT + 1),
        ]:
            self.assertIsNone(self.table.receive_unadopted(key, self.synack(key), 0.0))
        self.assertEqual(self.table.drops["orphan"], 3)
        self.assertEqual(self.table.embryos, {})

    def test_unexpect(self) -> None:
        """
        After C{unexpect}, the SYN-ACK is an orphan; unexpecting twice is
        harmless.
        """
        self.table.unexpect(CLIENT_PORT, SERVER_ADDR, SERVER_PORT)
        self.table.unexpect(CLIENT_PORT, SERVER_ADDR, SERVER_PORT)
        self.assertIsNone(self.table.receive_unadopted(CLIENT_KEY, self.synack(), 0.0))
        self.assertEqual(self.table.drops["orphan"], 1)

    def test_bareSynToClient(self) -> None:
        """
        A SYN without ACK to a client is an orphan, even on an expected
        4-tuple (simultaneous open is not supported).
        """
        self.assertIsNone(
            self.table.receive_unadopted(CLIENT_KEY, incoming(CLIENT_KEY, SYN, SERVER_ISN), 0.0)
        )
        self.assertEqual(self.table.drops["orphan"], 1)
        self.assertEqual(self.table.embryos, {})

    def test_dataBeforeSynAck(self) -> None:
        """
        Data before any SYN-ACK is an orphan.
        """
        data = incoming(CLIENT_KEY, PSH | ACK, SERVER_ISN + 1, CLIENT_ISN + 1, b"early")
        self.assertIsNone(self.table.receive_unadopted(CLIENT_KEY, data, 0.0))
        self.assertEqual(self.table.drops["orphan"], 1)

    def test_rstRemovesEmbryo(self) -> None:
        """
        A RST after the SYN-ACK ends the embryo.
        """
        self.table.receive_unadopted(CLIENT_KEY, self.synack(), 0.0)
        self.table.receive_unadopted(CLIENT_KEY, incoming(CLIENT_KEY, RST, SERVER_ISN + 1), 0.0)
        self.assertFalse(self.table.handshake_known(CLIENT_KEY))


class FourTupleTests(SynchronousTestCase):
    """
    Flows are keyed by the full 4-tuple, not by the remote address and port
    alone.
    """

    def test_sameRemoteDifferentLocalAddress(self) -> None:
        """
        Two handshakes from one remote address and port to two local
        addresses are two embryos and two flows, each with its own ISNs.
        """
        table = FlowTable(Role.SERVER)
        one = FlowKey(SERVER_ADDR, SERVER_PORT, CLIENT_ADDR, CLIENT_PORT)
        two = FlowKey(SERVER_ADDR_2, SERVER_PORT, CLIENT_ADDR, CLIENT_PORT)
        server_handshake(table, one, client_isn=100, server_isn=1000)
        server_handshake(table, two, client_isn=200, server_isn=2000)
        self.assertEqual(len(table.embryos), 2)
        table.receive_unadopted(one, incoming(one, PSH | ACK, 101, 1001, b"to one"), 0.0)
        table.receive_unadopted(two, incoming(two, PSH | ACK, 201, 2001, b"to two"), 0.0)
        flow_one, early_one = table.adopt(one, MSS, 0.0)
        flow_two, early_two = table.adopt(two, MSS, 0.0)
        self.assertIsNot(flow_one, flow_two)
        self.assertEqual((flow_one.snd_nxt, flow_one.rcv_high), (1001, 101))
        self.assertEqual((flow_two.snd_nxt, flow_two.rcv_high), (2001, 201))
        self.assertEqual([s.payload for s in early_one], [b"to one"])
        self.assertEqual([s.payload for s in early_two], [b"to two"])
        self.assertEqual(len(table), 2)

    def test_sameRemoteAddressDifferentRemotePort(self) -> None:
        """
        Two connections from one remote address on two source ports are
        distinct.
        """
        table = FlowTable(Role.SERVER)
        one = SERVER_KEY
        two = SERVER_KEY._replace(remote_port=CLIENT_PORT + 1)
        server_handshake(table, one, client_isn=100, server_isn=1000)
        server_handshake(table, two, client_isn=200, server_isn=2000)
        self.assertEqual(table.adopt(one, MSS, 0.0)[0].snd_nxt, 1001)
        self.assertEqual(table.adopt(two, MSS, 0.0)[0].snd_nxt, 2001)

    def test_sameRemoteDifferentLocalPort(self) -> None:
        """
        Two local ports (one capture can serve several) are distinct too.
        """
        table = FlowTable(Role.SERVER)
        one = SERVER_KEY
        two = SERVER_KEY._replace(local_port=SERVER_PORT + 1)
        server_handshake(table, one, client_isn=100, server_isn=1000)
        server_handshake(table, two, client_isn=200, server_isn=2000)
        self.assertEqual(table.adopt(two, MSS, 0.0)[0].rcv_high, 201)
        self.assertEqual(table.adopt(one, MSS, 0.0)[0].rcv_high, 101)

    def test_retireLeavesOtherLocalAddressAlone(self) -> None:
        """
        Retiring the flow to one local address does not put the flow from
        the same remote end to another local address into time-wait.
        """
        table = FlowTable(Role.SERVER)
        one = SERVER_KEY
        two = SERVER_KEY._replace(local_addr=SERVER_ADDR_2)
        flow = adopted_server_flow(table, one)
        server_handshake(table, two)
        table.retire(flow, 1.0)
        data = incoming(two, PSH | ACK, CLIENT_ISN + 1, SERVER_ISN + 1, b"x")
        table.receive_unadopted(two, data, 1.0)
        self.assertEqual(table.drops["time-wait"], 0)
        self.assertEqual(table.adopt(two, MSS, 1.0)[1], [data])

    def test_clientSameRemoteTwoLocalPorts(self) -> None:
        """
        A client with two connections to one server port keeps them apart.
        """
        table = FlowTable(Role.CLIENT)
        one = CLIENT_KEY
        two = CLIENT_KEY._replace(local_port=CLIENT_PORT + 1)
        table.expect(one.local_port, one.remote_addr, one.remote_port)
        table.expect(two.local_port, two.remote_addr, two.remote_port)
        table.receive_unadopted(one, incoming(one, SYN | ACK, 1000, 101), 0.0)
        table.receive_unadopted(two, incoming(two, SYN | ACK, 2000, 201), 0.0)
        self.assertEqual(table.adopt(one, MSS, 0.0)[0].snd_nxt, 101)
        self.assertEqual(table.adopt(two, MSS, 0.0)[0].snd_nxt, 201)


class TimeWaitTests(SynchronousTestCase):
    """
    A retired flow's 4-tuple drops late segments for a while.
    """

    def test_timeWaitAcknowledgesThePeersFin(self) -> None:
        """
        A flow this side closed with FIN and let go before the peer's FIN
        arrived: the peer's FIN, at exactly the expected number, gets its
        ACK from the time-wait entry, once; any other segment gets nothing.
        """
        table = FlowTable(Role.SERVER)
        fin_retired_flow(table)
        self.assertTrue(table.awaiting_fin)
        stray = incoming(SERVER_KEY, FIN | ACK, CLIENT_ISN + 99, SERVER_ISN + 2)
        self.assertIsNone(table.receive_unadopted(SERVER_KEY, stray, 1.1))
        fin = incoming(SERVER_KEY, FIN | ACK, CLIENT_ISN + 1, SERVER_ISN + 2)
        reply = table.receive_unadopted(SERVER_KEY, fin, 1.2)
        assert reply is not None
        ack = parse_packet(reply)
        self.assertEqual((ack.flags, ack.seq, ack.ack), (ACK, SERVER_ISN + 2, CLIENT_ISN + 2))
        self.assertFalse(table.awaiting_fin)
        self.assertIsNone(table.receive_unadopted(SERVER_KEY, fin, 1.3))

    def test_retireEntersTimeWait(self) -> None:
        """
        Retiring removes the flow and drops its segments as time-wait
        (a SYN-ACK, a RST), without making embryos.
        """
        table = FlowTable(Role.SERVER, TableLimits(time_wait=30.0))
        flow = adopted_server_flow(table)
        table.retire(flow, 100.0)
        self.assertEqual(table.flows, {})
        self.assertEqual(table.time_wait, {SERVER_KEY: 130.0})
        data = incoming(SERVER_KEY, PSH | ACK, CLIENT_ISN + 1, SERVER_ISN + 1, b"late")
        self.assertIsNone(table.receive_unadopted(SERVER_KEY, data, 101.0))
        table.receive_unadopted(SERVER_KEY, incoming(SERVER_KEY, SYN | ACK, 5, 6), 101.0)
        table.receive_unadopted(SERVER_KEY, incoming(SERVER_KEY, RST, 5), 101.0)
        self.assertEqual(table.drops["time-wait"], 3)
        self.assertEqual(table.embryos, {})

    def test_newSynEndsTimeWait(self) -> None:
        """
        A server takes a new connection's SYN on a 4-tuple in time-wait (a
        client whose kernel gave its port out again), as a kernel's
        TIME-WAIT socket does: the entry ends, and the handshake is
        learned; the old flow's late data then meets the new numbers.
        """
        table = FlowTable(Role.SERVER, TableLimits(time_wait=30.0))
        table.retire(adopted_server_flow(table), 100.0)
        server_handshake(table, client_isn=CLIENT_ISN + 100_000, server_isn=SERVER_ISN + 7, now=101.0)
        self.assertEqual(table.time_wait, {})
        self.assertTrue(table.handshake_known(SERVER_KEY))
        late = incoming(SERVER_KEY, PSH | ACK, CLIENT_ISN + 1, SERVER_ISN + 1, b"late")
        table.receive_unadopted(SERVER_KEY, late, 101.5)
        flow, early = table.adopt(SERVER_KEY, MSS, 102.0)
        self.assertEqual(early, [])
        self.assertEqual(flow.remote_isn, CLIENT_ISN + 100_000)

    def test_expireEndsTimeWait(self) -> None:
        """
        C{expire} past the time-wait removes the entry; the 4-tuple can then
        start a new handshake.
        """
        table = FlowTable(Role.SERVER, TableLimits(time_wait=30.0))
        table.retire(adopted_server_flow(table), 100.0)
        table.expire(129.9)
        self.assertIn(SERVER_KEY, table.time_wait)
        table.expire(130.0)
        self.assertNotIn(SERVER_KEY, table.time_wait)
        server_handshake(table, now=131.0)
        self.assertTrue(table.handshake_known(SERVER_KEY))
        self.assertEqual(table.drops["time-wait"], 0)

    def test_timeWaitCountEvictsOldest(self) -> None:
        """
        Beyond C{time_waits} entries, the oldest is evicted.
        """
        table = FlowTable(Role.SERVER, TableLimits(time_waits=2))
        keys = [SERVER_KEY._replace(remote_port=port) for port in (1, 2, 3)]
        for now, key in enumerate(keys):
            table.retire(adopted_server_flow(table, key), float(now))
        self.assertEqual(list(table.time_wait), keys[1:])

    def test_retireAgainEvictsNothing(self) -> None:
        """
        Retiring a 4-tuple already in time-wait renews its entry without
        evicting another one.
        """
        table = FlowTable(Role.SERVER, TableLimits(time_waits=2, time_wait=30.0))
        first = adopted_server_flow(table, SERVER_KEY._replace(remote_port=1))
        second = adopted_server_flow(table, SERVER_KEY._replace(remote_port=2))
        table.retire(first, 0.0)
        table.retire(second, 1.0)
        table.retire(second, 2.0)
        self.assertEqual(table.time_wait, {first.key: 30.0, second.key: 32.0})

    def test_zeroTimeWaitLimit(self) -> None:
        """
        With a time-wait limit of zero, retiring keeps no entry and does not
        fail.
        """
        table = FlowTable(Role.SERVER, TableLimits(time_waits=0))
        flow = adopted_server_flow(table)
        table.retire(flow, 0.0)
        self.assertEqual(table.flows, {})
        self.assertEqual(len(table.time_wait), 0)

    def test_adoptRemovesTimeWait(self) -> None:
        """
        Adopting a 4-tuple removes its time-wait entry.
        """
        table = FlowTable(Role.SERVER)
        server_handshake(table)
        old = Flow.from_handshake(SERVER_KEY, 1, 2, MSS, 0.0)
        table.retire(old, 0.0)
        self.assertIn(SERVER_KEY, table.time_wait)
        flow, _ = table.adopt(SERVER_KEY, MSS, 1.0)
        self.assertNotIn(SERVER_KEY, table.time_wait)
        self.assertIs(table.flows[SERVER_KEY], flow)

    def test_retireStaleFlowKeepsCurrent(self) -> None:
        """
        Retiring a flow object that is no longer the table's flow for its
        4-tuple leaves the current one in place.
        """
        table = FlowTable(Role.SERVER)
        current = adopted_server_flow(table)
        stale = Flow.from_handshake(SERVER_KEY, 1, 2, MSS, 0.0)
        table.retire(stale, 0.0)
        self.assertIs(table.flows[SERVER_KEY], current)


class ExpireTests(SynchronousTestCase):
    """
    L{FlowTable.expire} runs every flow's timers.
    """

    def test_returnsIdleFlows(self) -> None:
        """
        The flows that went idle are returned, closed for idleness, and stay
        in the table until retired.
        """
        table = FlowTable(Role.SERVER)
        busy = adopted_server_flow(table, idle_timeout=5.0)
        idle = adopted_server_flow(table, SERVER_KEY._replace(remote_port=1), idle_timeout=5.0)
        busy.receive(incoming(busy.key, PSH | ACK, CLIENT_ISN + 1, SERVER_ISN + 1, b"x"), 4.0)
        self.assertEqual(table.expire(4.9), [])
        self.assertEqual(table.expire(6.0), [idle])
        self.assertIs(idle.state, FlowState.CLOSED)
        self.assertIs(idle.end_reason, EndReason.IDLE)
        self.assertIs(busy.state, FlowState.ESTABLISHED)
        self.assertIn(idle.key, table.flows)
        self.assertEqual(table.expire(7.0), [])
        table.retire(idle, 7.0)
        self.assertEqual(table.expire(9.0), [busy])

    def test_keepalivesQueued(self) -> None:
        """
        Keepalives fall due through C{expire}.
        """
        table = FlowTable(Role.SERVER)
        flow = adopted_server_flow(table, keepalive_interval=2.0)
        self.assertEqual(table.expire(2.0), [])
        self.assertEqual(len(flow.pending), 1)

    def test_emptyTable(self) -> None:
        """
        Expiring an empty table returns nothing.
        """
        self.assertEqual(FlowTable(Role.CLIENT).expire(1e9), [])
        self.assertEqual(FlowTable(Role.CLIENT).expire(1e9, slices=10), [])

    def test_slicesRotate(self) -> None:
        """
        With C{slices}, each call runs the timers of the next share of the
        flows: every flow once per C{slices} calls, the due ones left in
        C{due}, a flow retired meanwhile skipped, a flow adopted meanwhile
        taken in the next rotation.
        """
        table = FlowTable(Role.SERVER)
        flows = [
            adopted_server_flow(table, SERVER_KEY._replace(remote_port=1000 + i), keepalive_interval=1.0)
            for i in range(25)
        ]
        polled: list[set[int]] = []
        for call in range(5):
            table.expire(2.0, slices=5)
            polled.append({flow.key.remote_port for flow in table.due})
            if call == 0:
                table.retire(flows[22], 2.0)
        self.assertEqual([len(ports) for ports in polled], [5, 5, 5, 5, 4])
        self.assertEqual(set().union(*polled), {1000 + i for i in range(25)} - {1022})
        self.assertTrue(all(len(flow.pending) == 1 for flow in flows if flow is not flows[22]))
        late = adopted_server_flow(table, SERVER_KEY._replace(remote_port=2000), keepalive_interval=1.0)
        table.expire(2.0, slices=5)
        self.assertNotIn(late, table.due)
        for _ in range(4):
            table.expire(2.0, slices=5)
        self.assertEqual(len(late.pending), 1)

    def test_sliceExpiresIdleFlows(self) -> None:
        """
        An idle flow is reported in the call whose share holds it.
        """
        table = FlowTable(Role.SERVER)
        flows = [
            adopted_server_flow(table, SERVER_KEY._replace(remote_port=1000 + i), idle_timeout=5.0) for i in range(4)
        ]
        expired = [table.expire(6.0, slices=2) for _ in range(2)]
        self.assertEqual(sorted(len(each) for each in expired), [2, 2])
        self.assertEqual({flow.key for each in expired for flow in each}, {flow.key for flow in flows})


class HandshakeTimestampTests(SynchronousTestCase):
    """
    The table keeps the peer's latest handshake TSval for the flow to echo,
    and a client answers a SYN-ACK with timestamps as its kernel would.
    """

    def test_serverKeepsLatestTSval(self) -> None:
        """
        A server's embryo keeps the TSval of the client's SYN, then of the
        handshake's last ACK; the adopted flow echoes the latest.
        """
        table = FlowTable(Role.SERVER)
        table.receive_unadopted(SERVER_KEY, incoming(SERVER_KEY, SYN, CLIENT_ISN, options=syn_options(1000)), 0.0)
        self.assertEqual(table.embryos[SERVER_KEY].peer_tsval, 1000)
        ack = incoming(SERVER_KEY, ACK, CLIENT_ISN + 1, SERVER_ISN + 1, options=timestamp_option(1003, 5555))
        table.receive_unadopted(SERVER_KEY, ack, 0.0)
        self.assertEqual(table.embryos[SERVER_KEY].peer_tsval, 1003)
        flow, _ = table.adopt(SERVER_KEY, MSS, 0.0)
        self.assertEqual(flow.ts_recent, 1003)
        flow.use_timestamps(5560, 0.0)
        self.assertEqual(parse_options(parse_packet(flow.bare_ack(0.0)).options).timestamp, (5560, 1003))

    def test_noTimestampsNoTSval(self) -> None:
        """
        A handshake without timestamps leaves no TSval to echo.
        """
        table = FlowTable(Role.SERVER)
        server_handshake(table)
        self.assertIsNone(table.embryos[SERVER_KEY].peer_tsval)

    def test_earlyDataWithTimestamps(self) -> None:
        """
        Data that arrives before adoption with timestamps (a current tcpraw
        peer's) is kept for the flow, not dropped for its options; its
        TSval is the embryo's latest, and the flow delivers it.
        """
        table = FlowTable(Role.SERVER)
        server_handshake(table)
        data = incoming(
            SERVER_KEY, PSH | ACK, CLIENT_ISN + 1, SERVER_ISN + 1, b"early", options=timestamp_option(2000, 0)
        )
        self.assertIsNone(table.receive_unadopted(SERVER_KEY, data, 0.0))
        self.assertEqual(table.embryos[SERVER_KEY].peer_tsval, 2000)
        flow, early = table.adopt(SERVER_KEY, MSS, 0.0)
        self.assertEqual(early, [data])
        self.assertEqual(flow.ts_recent, 2000)
        self.assertEqual(flow.receive(early[0], 0.0), b"early")
        self.assertEqual(table.drops, {})

    def test_clientAnswersWithTimestamps(self) -> None:
        """
        A client answers a SYN-ACK that has timestamps with the handshake's
        last ACK carrying them too, as its kernel would: TSval the value
        the SYN-ACK echoed (this side's own clock), TSecr the SYN-ACK's
        TSval.  The adopted flow echoes the SYN-ACK's TSval.
        """
        table = FlowTable(Role.CLIENT)
        table.expect(CLIENT_PORT, SERVER_ADDR, SERVER_PORT)
        options = b"\x02\x04\x05\xb4\x04\x02\x08\x0a" + (7000).to_bytes(4, "big") + (4242).to_bytes(4, "big")
        synack = incoming(CLIENT_KEY, SYN | ACK, SERVER_ISN, CLIENT_ISN + 1, options=options + b"\x01\x03\x03\x07")
        reply = table.receive_unadopted(CLIENT_KEY, synack, 0.0)
        assert reply is not None
        self.assertEqual(reply[32] >> 4, 8)
        ack = parse_packet(reply, verify_checksum=True)
        self.assertEqual((ack.flags, ack.seq, ack.ack), (ACK, CLIENT_ISN + 1, SERVER_ISN + 1))
        self.assertEqual(ack.options, timestamp_option(4242, 7000))
        self.assertEqual(ack.options[:4], TIMESTAMP_PREFIX)
        self.assertEqual(table.embryos[CLIENT_KEY].peer_tsval, 7000)
        flow, _ = table.adopt(CLIENT_KEY, MSS, 0.0)
        self.assertEqual(flow.ts_recent, 7000)

    def test_clientAnswerWithoutTimestamps(self) -> None:
        """
        A SYN-ACK without timestamps is answered without options.
        """
        table = FlowTable(Role.CLIENT)
        table.expect(CLIENT_PORT, SERVER_ADDR, SERVER_PORT)
        synack = incoming(CLIENT_KEY, SYN | ACK, SERVER_ISN, CLIENT_ISN + 1, options=b"\x02\x04\x05\xb4")
        reply = table.receive_unadopted(CLIENT_KEY, synack, 0.0)
        assert reply is not None
        self.assertEqual(parse_packet(reply).options, b"")
        self.assertEqual(reply[32] >> 4, 5)


class OptionTests(SynchronousTestCase):
    """
    Segments of no adopted flow with well-formed TCP options are handled
    like any other; a malformed option list gets a segment dropped and
    counted (C{bad-options}) before anything else is looked at.
    """

    def test_wellFormedOptionsKept(self) -> None:
        """
        Early data with any well-formed options is kept for the flow, which
        delivers it.
        """
        table = FlowTable(Role.SERVER, TableLimits(early_segments=len(WELL_FORMED_OPTIONS)))
        server_handshake(table)
        for i, options in enumerate(WELL_FORMED_OPTIONS):
            data = incoming(SERVER_KEY, PSH | ACK, CLIENT_ISN + 1 + i, SERVER_ISN + 1, b"o", options=options)
            table.receive_unadopted(SERVER_KEY, data, 0.0)
        self.assertEqual(table.drops, {})
        flow, early = table.adopt(SERVER_KEY, MSS, 0.0)
        self.assertEqual([flow.receive(segment, 0.0) for segment in early], [b"o"] * len(WELL_FORMED_OPTIONS))

    def test_malformedOptionsDropped(self) -> None:
        """
        A malformed option list gets any segment dropped and counted: a SYN
        makes no embryo, data is not kept, a RST ends no handshake, an
        orphan gets no RST, a SYN-ACK gets no answer.
        """
        for options in MALFORMED_OPTIONS:
            table = FlowTable(Role.SERVER)
            table.receive_unadopted(SERVER_KEY, incoming(SERVER_KEY, SYN, CLIENT_ISN, options=options), 0.0)
            self.assertEqual(table.embryos, {})
            server_handshake(table)
            for segment in [
                incoming(SERVER_KEY, PSH | ACK, CLIENT_ISN + 1, SERVER_ISN + 1, b"x", options=options),
                incoming(SERVER_KEY, RST | ACK, CLIENT_ISN + 1, SERVER_ISN + 1, options=options),
            ]:
                self.assertIsNone(table.receive_unadopted(SERVER_KEY, segment, 0.0))
            orphan = SERVER_KEY._replace(remote_port=CLIENT_PORT + 1)
            data = incoming(orphan, PSH | ACK, 5, 6, b"x", options=options)
            self.assertIsNone(table.receive_unadopted(orphan, data, 0.0))
            self.assertEqual(table.drops, {"bad-options": 4}, options.hex())
            self.assertTrue(table.handshake_known(SERVER_KEY))
            self.assertEqual(table.embryos[SERVER_KEY].early, [])
            client = FlowTable(Role.CLIENT)
            client.expect(CLIENT_PORT, SERVER_ADDR, SERVER_PORT)
            synack = incoming(CLIENT_KEY, SYN | ACK, SERVER_ISN, CLIENT_ISN + 1, options=options)
            self.assertIsNone(client.receive_unadopted(CLIENT_KEY, synack, 0.0))
            self.assertEqual((client.embryos, client.drops), ({}, {"bad-options": 1}))


# -- properties --------------------------------------------------------------

PROPERTY_KEYS = [
    FlowKey(SERVER_ADDR, SERVER_PORT, CLIENT_ADDR, CLIENT_PORT),
    FlowKey(SERVER_ADDR, SERVER_PORT, CLIENT_ADDR, CLIENT_PORT + 1),
    FlowKey(SERVER_ADDR_2, SERVER_PORT, CLIENT_ADDR, CLIENT_PORT),
    FlowKey(SERVER_ADDR, SERVER_PORT, CLIENT_ADDR_2, CLIENT_PORT),
    FlowKey(SERVER_ADDR6, SERVER_PORT, CLIENT_ADDR6, CLIENT_PORT),
]
FLAG_BITS = [SYN, ACK, PSH, FIN, RST]

key_index = st.integers(0, len(PROPERTY_KEYS) - 1)
payload_sizes = st.one_of(st.just(0), st.integers(1, 100), st.integers(0, 1500))
flag_sets = st.one_of(
    # The combinations real traffic has, so handshakes do complete...
    st.sampled_from([SYN, SYN | ACK, ACK, PSH | ACK, FIN | ACK, FIN | PSH | ACK, RST, RST | ACK]),
    # ...and any others.
    st.sets(st.sampled_from(FLAG_BITS)).map(lambda bits: sum(bits)),
)
seq_numbers = st.one_of(
    st.integers(0, 0xFFFFFFFF),
    st.sampled_from([0, 1, 2, 100, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]),
)
#: Option lists of the segments, with whether each is malformed.
PROPERTY_OPTIONS = [(b"", False)] * 4 + [
    (timestamp_option(1234, 0), False),
    (WELL_FORMED_OPTIONS[5], False),
    (MALFORMED_OPTIONS[1], True),
    (MALFORMED_OPTIONS[3], True),
]
option_choices = st.integers(0, len(PROPERTY_OPTIONS) - 1)
operations = st.one_of(
    st.tuples(
        st.just("segment"),
        key_index,
        flag_sets,
        seq_numbers,
        seq_numbers,
        payload_sizes,
        option_choices,
    ),
    # A data segment near where the peer's numbers are (the embryo's or the
    # flow's), so that early segments and flows see plausible traffic.
    st.tuples(
        st.just("data"),
        key_index,
        st.sampled_from([PSH | ACK, ACK, FIN | ACK, FIN | PSH | ACK]),
        st.integers(-3000, 3000),
        payload_sizes,
        option_choices,
    ),
    st.tuples(st.just("handshake"), key_index, seq_numbers, seq_numbers),
    st.tuples(st.just("adopt"), key_index),
    st.tuples(st.just("retire"), key_index),
    st.tuples(st.just("expect"), key_index),
    st.tuples(st.just("unexpect"), key_index),
    st.tuples(st.just("local"), key_index, st.sampled_from(["send", "finish", "reset", "ack"])),
    st.tuples(st.just("tick"), st.floats(0.0, 4.0, allow_nan=False)),
)
limits_strategy = st.builds(
    TableLimits,
    embryos=st.integers(1, 3),
    embryo_lifetime=st.floats(0.5, 5.0),
    early_segments=st.integers(0, 3),
    early_bytes=st.integers(0, 3000),
    time_wait=st.floats(0.0, 5.0),
    time_waits=st.integers(1, 3),
    embryos_per_address=st.integers(1, 3),
    embryo_window=st.sampled_from([1, 2000, 1 << 20]),
    early_total_segments=st.integers(0, 5),
    early_total_bytes=st.integers(0, 5000),
)


class TablePropertyTests(SynchronousTestCase):
    """
    Arbitrary traffic never breaks the table.
    """

    def assertWithinLimits(self, table: FlowTable) -> None:
        limits = table.limits
        self.assertLessEqual(len(table.embryos), limits.embryos)
        self.assertLessEqual(len(table.time_wait), limits.time_waits)
        for embryo in table.embryos.values():
            self.assertIsInstance(embryo, Embryo)
            self.assertLessEqual(len(embryo.early), limits.early_segments)
            self.assertLessEqual(embryo.early_bytes, limits.early_bytes)
            self.assertEqual(embryo.early_bytes, sum(len(s.payload) for s in embryo.early))
        self.assertFalse(set(table.flows) & set(table.embryos))
        for key, flow in table.flows.items():
            self.assertEqual(flow.key, key)
        embryos = list(table.embryos.values())
        self.assertEqual(table.early_segments, sum(len(e.early) for e in embryos))
        self.assertEqual(table.early_bytes, sum(e.early_bytes for e in embryos))
        self.assertLessEqual(table.early_segments, limits.early_total_segments)
        self.assertLessEqual(table.early_bytes, limits.early_total_bytes)
        per_address: dict[bytes, int] = {}
        for key in table.embryos:
            per_address[key.remote_addr] = per_address.get(key.remote_addr, 0) + 1
        self.assertEqual(table._per_address, per_address)
        self.assertLessEqual(max(per_address.values(), default=0), limits.embryos_per_address)
        self.assertLessEqual(set(table._half_open), set(table.embryos))
        self.assertLessEqual(len(table.completed), limits.embryos)

    @settings(max_examples=250, deadline=None)
    @given(
        role=st.sampled_from(list(Role)),
        limits=limits_strategy,
        ops=st.lists(operations, min_size=20, max_size=80),
    )
    def test_arbitraryTrafficNeverRaises(self, role: Role, limits: TableLimits, ops: list[tuple]) -> None:
        """
        Any sequence of segments (any flags of SYN, ACK, PSH, FIN, RST, any
        numbers, sizes and options, a few 4-tuples), adoptions,
        retirements, local sends and clock ticks, fed as a capture would
        feed them, never raises, and the table never holds more than its
        limits allow; a segment with a malformed option list changes
        nothing but its counter.
        """
        table = FlowTable(role, limits)
        now = 0.0
        for op in ops:
            kind = op[0]
            if kind in ("segment", "data"):
                if kind == "segment":
                    _, index, flags, seq, ack, size, option_choice = op
                    key = PROPERTY_KEYS[index]
                else:
                    _, index, flags, offset, size, option_choice = op
                    key = PROPERTY_KEYS[index]
                    flow = table.flows.get(key)
                    embryo = table.embryos.get(key)
                    if flow is not None:
                        base, ack = flow.rcv_high, flow.snd_nxt
                    elif embryo is not None and embryo.remote_isn is not None:
                        base = embryo.remote_isn + 1
                        ack = 0 if embryo.local_isn is None else embryo.local_isn + 1
                    else:
                        base, ack = offset, 0
                    seq = (base + offset) & 0xFFFFFFFF
                    ack &= 0xFFFFFFFF
                options, malformed = PROPERTY_OPTIONS[option_choice]
                segment = Segment(
                    key.remote_addr,
                    key.local_addr,
                    key.remote_port,
                    key.local_port,
                    seq,
                    ack,
                    flags,
                    0xFFFF,
                    b"p" * size,
                    options,
                )
                flow = table.flows.get(key)
                if flow is not None:
                    flow.receive(segment, now)
                    if flow.state is FlowState.CLOSED:
                        table.retire(flow, now)
                elif malformed and key not in table.time_wait:
                    # Dropped before anything else is looked at.
                    embryos, drops = dict(table.embryos), dict(table.drops)
                    counts = (table.early_segments, table.early_bytes)
                    self.assertIsNone(table.receive_unadopted(key, segment, now))
                    self.assertEqual(table.embryos, embryos)
                    self.assertEqual((table.early_segments, table.early_bytes), counts)
                    drops["bad-options"] = drops.get("bad-options", 0) + 1
                    self.assertEqual(table.drops, drops)
                else:
                    reply = table.receive_unadopted(key, segment, now)
                    if reply is not None:
                        answer = parse_packet(reply, verify_checksum=True)
                        if role is Role.SERVER:
                            # An orphan's RST, seq taken from its ack, its
                            # ack the segment's end.
                            end = (seq + size + (1 if flags & FIN else 0)) & 0xFFFFFFFF
                            self.assertEqual((answer.flags, answer.seq, answer.ack), (RST | ACK, ack, end))
                            continue
                        self.assertEqual(answer.flags, ACK)
                        self.assertEqual(answer.seq, ack)
                        self.assertEqual(answer.ack, (seq + 1) & 0xFFFFFFFF)
                        # Timestamps in the answer exactly when the SYN-ACK
                        # had them.
                        self.assertEqual(bool(answer.options), options[:4] == timestamp_option(0, 0)[:4])
            elif kind == "handshake":
                # A whole, well-formed handshake, as the capture sees it.
                _, index, remote_isn, local_isn = op
                key = PROPERTY_KEYS[index]
                if key in table.flows:
                    continue
                # Whether the table has room for, and will believe, these
                # numbers: a new embryo needs room for its address; a
                # server keeps the first SYN's numbers.
                embryo = table.embryos.get(key)
                if embryo is None:
                    believed = table._per_address.get(key.remote_addr, 0) < limits.embryos_per_address
                elif role is Role.SERVER:
                    believed = embryo.remote_isn == remote_isn
                else:
                    believed = True
                if role is Role.SERVER:
                    table.receive_unadopted(key, incoming(key, SYN, remote_isn), now)
                    ack = incoming(key, ACK, (remote_isn + 1) & 0xFFFFFFFF, (local_isn + 1) & 0xFFFFFFFF)
                    table.receive_unadopted(key, ack, now)
                else:
                    table.expect(key.local_port, key.remote_addr, key.remote_port)
                    synack = incoming(key, SYN | ACK, remote_isn, (local_isn + 1) & 0xFFFFFFFF)
                    table.receive_unadopted(key, synack, now)
                if key not in table.time_wait and believed:
                    self.assertTrue(table.handshake_known(key))
            elif kind == "adopt":
                key = PROPERTY_KEYS[op[1]]
                if key in table.flows:
                    continue
                if table.handshake_known(key):
                    flow, early = table.adopt(key, MSS, now, idle_timeout=3.0, keepalive_interval=1.0)
                    for segment in early:
                        flow.receive(segment, now)
                else:
                    self.assertRaises(KeyError, table.adopt, key, MSS, now)
            elif kind == "retire":
                flow = table.flows.get(PROPERTY_KEYS[op[1]])
                if flow is not None:
                    table.retire(flow, now)
            elif kind in ("expect", "unexpect"):
                key = PROPERTY_KEYS[op[1]]
                getattr(table, kind)(key.local_port, key.remote_addr, key.remote_port)
            elif kind == "local":
                flow = table.flows.get(PROPERTY_KEYS[op[1]])
                if flow is None or flow.state is FlowState.CLOSED:
                    continue
                action = op[2]
                if action == "send" and flow.can_send:
                    parse_packet(flow.send(b"d" * 10, now))
                elif action == "finish" and flow.can_send:
                    parse_packet(flow.finish(now))
                elif action == "reset":
                    parse_packet(flow.reset(now))
                elif action == "ack":
                    parse_packet(flow.bare_ack(now))
                if flow.state is FlowState.CLOSED:
                    table.retire(flow, now)
            else:
                now += op[1]
                for flow in table.expire(now):
                    self.assertIs(flow.end_reason, EndReason.IDLE)
                    table.retire(flow, now)
            self.assertWithinLimits(table)
            for flow in table.flows.values():
                for packet in flow.pending:
                    parse_packet(packet, verify_checksum=True)
                flow.pending.clear()


class HandOffTests(SynchronousTestCase):
    """
    A flow handed back to the kernel (a keyed server's fallback): its
    segments are the kernel's, and the table says nothing to them.
    """

    def test_handedOffSegmentsUnanswered(self) -> None:
        """
        Data, a FIN and a RST of a handed-off 4-tuple get no answer (an
        unknown 4-tuple's data gets the orphan RST) and count as nothing.
        """
        table = FlowTable(Role.SERVER)
        flow = adopted_server_flow(table)
        table.hand_off(flow.key)
        self.assertEqual(table.flows, {})
        self.assertEqual(table.time_wait, {})
        for flags, payload in ((PSH | ACK, b"GET / HTTP/1.1\r\n"), (FIN | ACK, b""), (RST, b"")):
            segment = incoming(SERVER_KEY, flags, CLIENT_ISN + 1, SERVER_ISN + 1, payload)
            self.assertIsNone(table.receive_unadopted(SERVER_KEY, segment, 1.0))
        self.assertEqual(sum(table.drops.values()), 0)
        other = SERVER_KEY._replace(remote_port=CLIENT_PORT + 1)
        orphan = incoming(other, PSH | ACK, CLIENT_ISN + 1, SERVER_ISN + 1, b"x")
        self.assertIsNotNone(table.receive_unadopted(other, orphan, 1.0))

    def test_handOffForgetsTheFinAnswer(self) -> None:
        """
        A 4-tuple whose time-wait entry would answer the peer's FIN loses
        that answer when it is handed off: the kernel answers now.
        """
        table = FlowTable(Role.SERVER)
        flow = fin_retired_flow(table)
        self.assertTrue(table.awaiting_fin)
        table.hand_off(flow.key)
        self.assertFalse(table.awaiting_fin)
        fin = incoming(SERVER_KEY, FIN | ACK, CLIENT_ISN + 1, SERVER_ISN + 2)
        self.assertIsNone(table.receive_unadopted(SERVER_KEY, fin, 1.2))

    def test_releaseEntersTimeWait(self) -> None:
        """
        Once the kernel socket is closed, the 4-tuple spends time-wait like
        any ended flow's: late segments are dropped unanswered and counted,
        until the entry ends.
        """
        table = FlowTable(Role.SERVER, TableLimits(time_wait=30.0))
        table.hand_off(adopted_server_flow(table).key)
        table.release_hand_off(SERVER_KEY, 50.0)
        self.assertEqual(table.handed_off, set())
        self.assertEqual(table.time_wait, {SERVER_KEY: 80.0})
        late = incoming(SERVER_KEY, PSH | ACK, CLIENT_ISN + 1, SERVER_ISN + 1, b"late")
        self.assertIsNone(table.receive_unadopted(SERVER_KEY, late, 51.0))
        self.assertEqual(table.drops["time-wait"], 1)
        table.expire(80.0)
        self.assertEqual(table.time_wait, {})

    def test_unadoptedHandshakeHandedOff(self) -> None:
        """
        A handshake that was never adopted (its kernel socket goes to the
        fallback) leaves no embryo behind.
        """
        table = FlowTable(Role.SERVER)
        table.receive_unadopted(SERVER_KEY, incoming(SERVER_KEY, SYN, CLIENT_ISN), 0.0)
        table.hand_off(SERVER_KEY)
        self.assertEqual(table.embryos, {})
        self.assertEqual(table.handed_off, {SERVER_KEY})

    def test_noOrphanResetWhileAwaitingAdoption(self) -> None:
        """
        Data of a 4-tuple whose kernel socket waits for adoption (the
        capture missed its handshake, or a limit refused its embryo) gets
        no orphan RST: that would reset a connection the kernel holds.
        """
        table = FlowTable(Role.SERVER)
        table.awaiting_adoption.add(SERVER_KEY)
        data = incoming(SERVER_KEY, PSH | ACK, CLIENT_ISN + 1, SERVER_ISN + 1, b"GET /")
        self.assertIsNone(table.receive_unadopted(SERVER_KEY, data, 0.0))
        self.assertEqual(table.drops["orphan"], 1)
        table.awaiting_adoption.discard(SERVER_KEY)
        self.assertIsNotNone(table.receive_unadopted(SERVER_KEY, data, 1.0))

    def test_releaseUnknownKey(self) -> None:
        """
        Releasing a 4-tuple that was not handed off changes nothing.
        """
        table = FlowTable(Role.SERVER)
        table.release_hand_off(SERVER_KEY, 1.0)
        self.assertEqual(table.time_wait, {})


class RotationTests(SynchronousTestCase):
    """
    L{Rotation} hands out a changing collection a share at a time.
    """

    def test_sharesCoverTheRound(self) -> None:
        """
        Each share is at most 1/slices of the round's snapshot; the round
        covers every item once; an item added meanwhile comes in the next
        round; an item removed meanwhile is still handed out.
        """
        items = list(range(25))
        rotation: Rotation[int] = Rotation()
        shares = [rotation.take(lambda: items, 4)]
        items.append(99)
        items.remove(24)
        shares += [rotation.take(lambda: items, 4) for _ in range(3)]
        self.assertEqual([len(share) for share in shares], [7, 7, 7, 4])
        self.assertEqual(sorted(sum(shares, [])), list(range(25)))
        self.assertIn(
            99, rotation.take(lambda: items, 4) + sum((rotation.take(lambda: items, 4) for _ in range(3)), [])
        )

    def test_oneSliceIsEverything(self) -> None:
        """
        With one slice, every item now, and no round is kept.
        """
        rotation: Rotation[int] = Rotation()
        self.assertEqual(sorted(rotation.take(lambda: [1, 2, 3], 2)), [1, 2])
        self.assertEqual(rotation.take(lambda: [1, 2, 3, 4], 1), [1, 2, 3, 4])
        self.assertEqual(rotation.take(lambda: [5], 2), [5])
        self.assertEqual(rotation.take(lambda: [], 3), [])
