# -*- test-case-name: tests.test_relaystats -*-
"""
The relay's counters and the lines they make (no root, no sockets).
"""

from __future__ import annotations

import time
from collections import Counter, deque
from types import SimpleNamespace
from typing import Any

from twisted.trial.unittest import TestCase

from faketcp_twisted.core.flow import FlowStats
from faketcp_twisted.relay.stats import Counts, FlowRecord, RelayStats, Snapshot, format_counter, path_mtu


def fake_transport(stats: FlowStats, mss: int = 1460) -> Any:
    peer = SimpleNamespace(host="198.18.0.1", port=40000)
    return SimpleNamespace(flow=SimpleNamespace(stats=stats, mss=mss), getPeer=lambda: peer)


class CountsTests(TestCase):
    def test_loss(self) -> None:
        """
        Gap bytes that were never filled are the loss; late bytes are not.
        """
        counts = Counts(rx_bytes=9000, gap_bytes=2000, late_bytes=1000)
        self.assertAlmostEqual(counts.loss, 1000 / 10000)
        self.assertEqual(Counts().loss, 0.0)

    def test_minus(self) -> None:
        later = Counts(up_datagrams=10, up_bytes=1000)
        earlier = Counts(up_datagrams=4, up_bytes=400)
        self.assertEqual(later.minus(earlier), Counts(up_datagrams=6, up_bytes=600))


class RelayStatsTests(TestCase):
    def test_live_and_ended_flows_add_up(self) -> None:
        """
        Totals hold the live connections' sequence counters and those of
        ended connections and flows.
        """
        stats = RelayStats()
        record = stats.open(FlowRecord("127.0.0.1:1"))
        first = FlowStats(rx_bytes=1000, rx_gap_bytes=100)
        record.attach(fake_transport(first))
        record.counts.down_datagrams += 1
        record.last_activity = time.monotonic()
        self.assertEqual(stats.totals().rx_bytes, 1000)
        record.detach()
        record.attach(fake_transport(FlowStats(rx_bytes=500, rx_reordered=2)))
        record.last_activity = time.monotonic()
        self.assertEqual((stats.totals().rx_bytes, stats.totals().reordered), (1500, 2))
        self.assertEqual(record.connections, 2)
        stats.close(record)
        self.assertEqual(stats.flows, set())
        totals = stats.totals()
        self.assertEqual((totals.rx_bytes, totals.gap_bytes, totals.down_datagrams), (1500, 100, 1))

    def test_refused_segments_counted(self) -> None:
        """
        Segments a live connection's checks refused show in the line as
        C{refused}, whatever the reason.
        """
        stats = RelayStats()
        record = stats.open(FlowRecord("127.0.0.1:1"))
        before = stats.snapshot()
        record.attach(fake_transport(FlowStats(rx_out_of_window=3, rx_bad_ack=2, rx_bad_options=1)))
        record.last_activity = time.monotonic()
        line = stats.line(before, stats.snapshot())
        self.assertIn("reordered 0 refused 6 |", line)
        self.assertIn("refused 6 |", stats.totals_line())

    def test_line_is_about_the_interval(self) -> None:
        stats = RelayStats()
        record = stats.open(FlowRecord("127.0.0.1:1"))
        before = stats.snapshot()
        record.counts.up_datagrams += 3
        record.counts.up_bytes += 3000
        record.last_activity = time.monotonic()
        stats.drop("oversize")
        now = stats.snapshot()
        line = stats.line(Snapshot(now.time - 10, before.counts, before.drops, before.capture), now)
        self.assertIn("stats 10s: flows 1 ", line)
        self.assertIn("udp->faketcp 3 dgrams 3000 B 0.00 Mbit/s", line)
        self.assertIn("| drops oversize=1 |", line)
        self.assertIn("capture drops none", line)

    def test_idle_flows_not_read_again(self) -> None:
        """
        Totals read again only the flows active since the last call (the
        relay sets C{last_activity} whenever it counts): an idle flow's
        record is not added up again, an active one's change is taken, and
        a closed flow's counters move from the live totals to the ended.
        """
        stats = RelayStats()
        idle, busy = stats.open(FlowRecord("127.0.0.1:1")), stats.open(FlowRecord("127.0.0.1:2"))
        idle.counts.up_datagrams = busy.counts.up_datagrams = 5
        self.assertEqual(stats.totals().up_datagrams, 10)
        # Changed without the activity a relay would note: not read again.
        idle.counts.up_datagrams += 100
        busy.counts.up_datagrams += 1
        busy.last_activity = time.monotonic()
        self.assertEqual(stats.totals().up_datagrams, 11)
        idle.last_activity = time.monotonic()
        self.assertEqual(stats.totals().up_datagrams, 111)
        stats.close(busy)
        self.assertEqual(stats.totals().up_datagrams, 111)
        stats.close(idle)
        self.assertEqual(stats.totals().up_datagrams, 111)
        self.assertEqual(stats._live, Counts())

    def test_capture_counters_folded(self) -> None:
        """
        Past the limit, the oldest capture counters are folded into a
        total instead of being forgotten.
        """
        stats = RelayStats()
        counters = [Counter({"orphan": 1}) for _ in range(stats.captureCounterLimit + 3)]
        for counter in counters:
            stats.watch_capture(counter)
        self.assertEqual(stats.capture_drops()["orphan"], len(counters))

    def test_table(self) -> None:
        stats = RelayStats()
        record = stats.open(FlowRecord("127.0.0.1:5", now=0.0))
        record.attach(fake_transport(FlowStats()))
        lines = stats.table(now=12.0)
        self.assertEqual(len(lines), 2)
        self.assertIn("198.18.0.1:40000", lines[1])
        self.assertIn("1460", lines[1])


class HelpersTests(TestCase):
    def test_format_counter(self) -> None:
        self.assertEqual(format_counter(Counter({"b": 2, "a": 1, "z": 0})), "a=1 b=2")
        self.assertEqual(format_counter(Counter()), "none")

    def test_path_mtu(self) -> None:
        self.assertEqual(path_mtu(1460, ipv6=False), 1500)
        self.assertEqual(path_mtu(1440, ipv6=True), 1500)


class _Sender:
    """
    A transport whose flow may or may not send, recording what it was
    given to send.
    """

    def __init__(self, mss: int = 1000, can_send: bool = True) -> None:
        self.flow = SimpleNamespace(stats=FlowStats(), mss=mss, option_bytes=0, can_send=can_send)
        self.sent: list[bytes] = []
        peer = SimpleNamespace(host="198.18.0.1", port=40000)
        self.getPeer = lambda: peer

    def send_datagrams(self, datagrams: list[bytes]) -> None:
        self.sent.extend(datagrams)


class SentCountsTests(TestCase):
    """
    C{udp->faketcp} counts only the datagrams that went out as segments;
    the rest are drops with a reason.
    """

    def send(self, transport: _Sender, datagrams: list[bytes]) -> tuple[RelayStats, FlowRecord]:
        from faketcp_twisted.relay.common import send_to_peer

        stats = RelayStats()
        record = stats.open(FlowRecord("127.0.0.1:1"))
        owner = SimpleNamespace(log=SimpleNamespace(warn=lambda *args, **kwargs: None))
        send_to_peer(owner, stats, record, transport, datagrams, "UDP {udp}")  # type: ignore[arg-type]
        return stats, record

    def test_empty_datagrams_dropped(self) -> None:
        """
        Zero-length datagrams are not sent (the flow would send nothing)
        and count as C{empty}, not as sent.
        """
        transport = _Sender()
        stats, record = self.send(transport, [b"", b"abc", b"", b"de"])
        self.assertEqual(transport.sent, [b"abc", b"de"])
        self.assertEqual((record.counts.up_datagrams, record.counts.up_bytes), (2, 5))
        self.assertEqual(stats.drops, Counter({"empty": 2}))

    def test_only_empty(self) -> None:
        transport = _Sender()
        stats, record = self.send(transport, [b""])
        self.assertEqual(transport.sent, [])
        self.assertEqual(record.counts.up_datagrams, 0)
        self.assertEqual(stats.drops, Counter({"empty": 1}))

    def test_oversize_and_empty(self) -> None:
        transport = _Sender(mss=4)
        stats, record = self.send(transport, [b"12345", b"", b"1234"])
        self.assertEqual(transport.sent, [b"1234"])
        self.assertEqual((record.counts.up_datagrams, record.counts.up_bytes), (1, 4))
        self.assertEqual(stats.drops, Counter({"empty": 1, "oversize": 1}))

    def test_write_side_closed(self) -> None:
        """
        After this side's FIN the flow would drop them: counted as
        C{closed}, not as sent.
        """
        transport = _Sender(can_send=False)
        stats, record = self.send(transport, [b"abc", b"de"])
        self.assertEqual(transport.sent, [])
        self.assertEqual((record.counts.up_datagrams, record.counts.up_bytes), (0, 0))
        self.assertEqual(stats.drops, Counter({"closed": 2}))

    def test_zero_drop_not_recorded(self) -> None:
        stats = RelayStats()
        stats.drop("closed", 0)
        self.assertEqual(stats.drops, Counter())

    def test_client_cancelled_attempt_counts_queue(self) -> None:
        """
        A client flow closing while it connects drops its queue: counted
        as C{closed}, not lost from the counts.
        """
        from twisted.internet import defer
        from twisted.python.failure import Failure

        from faketcp_twisted.relay.client import _ClientFlow
        from faketcp_twisted.relay.common import RelaySettings

        stats = RelayStats()
        relay = SimpleNamespace(stats=stats, settings=RelaySettings(), faketcp="faketcp:host=198.18.0.2:port=9191")
        flow = _ClientFlow(relay, ("127.0.0.1", 5000))  # type: ignore[arg-type]
        flow.queue.extend([b"a", b"b", b"c"])
        flow.closing = True
        flow._failed(Failure(defer.CancelledError()))
        self.assertEqual(flow.queue, deque())
        self.assertEqual(stats.drops, Counter({"closed": 3}))
        flow.closing = False
        flow.queue.extend([b"d"])
        flow._failed(Failure(ConnectionRefusedError()))
        self.assertEqual(stats.drops, Counter({"closed": 3, "connect-failed": 1}))
