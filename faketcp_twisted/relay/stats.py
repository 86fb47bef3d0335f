# -*- test-case-name: tests.test_relaystats -*-
"""
The relay's counters (per flow and in total: datagrams and bytes each way,
drops by reason, and the loss and reordering estimates of the fake-TCP
receive direction), and the service that logs them: a stats line every few
seconds, the per-flow table on SIGUSR1.

The estimates come from the peer's TCP sequence numbers, with no header of
our own on the wire (see L{faketcp_twisted.core.flow.FlowStats}): a segment that
starts past the highest byte seen opens a gap of presumed-lost bytes, one
that lands inside an open gap was reordered.  Each relay measures the
direction it receives; the other direction's figures are in the peer
relay's stats line.

Directions are named from this relay's point of view: C{udp->faketcp} is
what it read from UDP and sent as segments, C{faketcp->udp} what it
received as segments and wrote to UDP.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from ..engine.options import host_port

if TYPE_CHECKING:
    from ..core.flow import FlowStats
    from .contracts import RelayTransport

#: The IP and TCP headers (without options) around a fake-TCP datagram.
HEADER_BYTES = {4: 40, 6: 60}


@dataclass(slots=True)
class Counts:
    """
    Counters that add up across flows and intervals.

    @ivar up_datagrams: datagrams read from UDP and sent as segments.
    @ivar up_bytes: their bytes.
    @ivar down_datagrams: datagrams received as segments and written to UDP.
    @ivar down_bytes: their bytes.
    @ivar rx_bytes: payload bytes the fake-TCP side received (duplicates too).
    @ivar gap_bytes: bytes skipped by the peer's sequence numbers.
    @ivar late_bytes: bytes that later filled such gaps (reordered).
    @ivar reordered: segments that arrived inside a gap.
    @ivar refused: segments of live connections refused by the flow's
        checks (out of window, bad ack, malformed options...: see
        L{FlowStats.rx_refused}).
    """

    up_datagrams: int = 0
    up_bytes: int = 0
    down_datagrams: int = 0
    down_bytes: int = 0
    rx_bytes: int = 0
    gap_bytes: int = 0
    late_bytes: int = 0
    reordered: int = 0
    refused: int = 0

    def add(self, other: Counts) -> None:
        """
        Add C{other}'s counters to these.
        """
        for name, value, more in zip(_COUNT_NAMES, _COUNTS(self), _COUNTS(other), strict=True):
            setattr(self, name, value + more)

    def minus(self, other: Counts) -> Counts:
        """
        The counters of these less C{other}'s (an interval's worth).
        """
        return Counts(*map(int.__sub__, _COUNTS(self), _COUNTS(other)))

    def copy(self) -> Counts:
        """
        An independent copy.
        """
        return Counts(*_COUNTS(self))

    def add_flow_stats(self, stats: FlowStats) -> None:
        """
        Add the sequence-number counters of a fake-TCP flow's L{FlowStats}.
        """
        self.rx_bytes += stats.rx_bytes
        self.gap_bytes += stats.rx_gap_bytes
        self.late_bytes += stats.rx_late_bytes
        self.reordered += stats.rx_reordered
        self.refused += stats.rx_refused

    @property
    def loss(self) -> float:
        """
        The fraction of the peer's bytes presumed lost (0 when none came).
        """
        lost = max(self.gap_bytes - self.late_bytes, 0)
        expected = self.rx_bytes + lost
        return lost / expected if expected > 0 else 0.0


#: The names of L{Counts}' fields, and a getter of all their values at once
#: (a stats line adds up thousands of records: no reflection per call).
_COUNT_NAMES = tuple(each.name for each in fields(Counts))
_COUNTS = attrgetter(*_COUNT_NAMES)


class FlowRecord:
    """
    One relayed flow: a UDP address paired with a fake-TCP connection.  In
    a client relay the record outlives its connections (a new one is made
    after the old one died), so the counters of ended connections are kept.

    @ivar udp: the UDP address of the flow (the source on a client, the
        target socket's local address on a server).
    @ivar peer: the fake-TCP peer, C{host:port}, once known.
    @ivar counts: this flow's counters, less those of the live connection's
        sequence numbers (see L{totals}).
    @ivar transport: the live fake-TCP transport, if any.
    @ivar connections: fake-TCP connections this flow has had.
    @ivar oversize_logged: whether an oversize datagram was logged already.
    @ivar last_activity: when a datagram last went either way; whoever
        changes the counters sets it (L{RelayStats.totals} reads again only
        the flows active since its last call).
    @ivar reported: the totals L{RelayStats.totals} last read, if any.
    """

    # One record per flow: slots keep 10,000 idle flows' records 48 bytes
    # smaller each than instance dictionaries would.
    __slots__ = (
        "udp",
        "peer",
        "created",
        "last_activity",
        "counts",
        "transport",
        "connections",
        "oversize_logged",
        "state",
        "reported",
    )

    def __init__(self, udp: str, peer: str = "", now: float | None = None) -> None:
        self.udp = udp
        self.peer = peer
        self.created = time.monotonic() if now is None else now
        self.last_activity = self.created
        self.counts = Counts()
        self.transport: RelayTransport | None = None
        self.connections = 0
        self.oversize_logged = False
        self.state = "new"
        self.reported: Counts | None = None

    def attach(self, transport: RelayTransport) -> None:
        """
        A fake-TCP connection now carries this flow.
        """
        self.transport = transport
        self.connections += 1
        peer = transport.getPeer()
        self.peer = host_port(peer.host, peer.port)
        self.state = "up"

    def detach(self) -> None:
        """
        The connection ended: keep its sequence-number counters.
        """
        transport, self.transport = self.transport, None
        if transport is not None:
            self.counts.add_flow_stats(transport.flow.stats)
        self.state = "down"

    def totals(self) -> Counts:
        """
        The flow's counters, the live connection's included.
        """
        if self.transport is None:
            return self.counts
        counts = self.counts.copy()
        counts.add_flow_stats(self.transport.flow.stats)
        return counts

    @property
    def mss(self) -> int | None:
        """
        The live connection's MSS.
        """
        return None if self.transport is None else self.transport.flow.mss


class RelayStats:
    """
    The counters of one relay.

    @ivar drops: datagrams the relay dropped, by reason.
    @ivar flows: the live flow records.
    @ivar opened: flows made since start.
    @ivar closed: flows ended since start.
    @ivar connections: fake-TCP connections made since start.
    """

    #: Most capture drop counters remembered (a client's capture is made
    #: anew after all its connections ended); the oldest are folded into a
    #: total, which stops following them.
    captureCounterLimit = 16

    def __init__(self) -> None:
        self.drops: Counter[str] = Counter()
        self.flows: set[FlowRecord] = set()
        self.opened = 0
        self.closed = 0
        self.connections = 0
        self._ended = Counts()
        # The open flows' totals as last read, and when (see totals).
        self._live = Counts()
        self._read_at = float("-inf")
        self._captures: dict[int, Counter[str]] = {}
        self._captures_folded: Counter[str] = Counter()
        self._drop_sources: dict[str, Callable[[], int]] = {}

    def open(self, record: FlowRecord) -> FlowRecord:
        """
        Count a new flow in.
        """
        self.flows.add(record)
        self.opened += 1
        return record

    def close(self, record: FlowRecord) -> None:
        """
        Count a flow out, keeping its counters in the totals.
        """
        if record in self.flows:
            record.detach()
            self.flows.discard(record)
            self._ended.add(record.counts)
            if record.reported is not None:
                self._live = self._live.minus(record.reported)
                record.reported = None
            self.closed += 1

    def drop(self, reason: str, count: int = 1) -> None:
        """
        Count C{count} datagrams dropped for C{reason} (none: nothing).
        """
        if count:
            self.drops[reason] += count

    def add_drop_source(self, reason: str, count: Callable[[], int]) -> None:
        """
        Count drops for C{reason} that someone else counts: C{count()}
        returns the total so far (the kernel's receive-buffer drops of the
        relay's UDP sockets, say).
        """
        self._drop_sources[reason] = count

    def all_drops(self) -> Counter[str]:
        """
        Datagrams dropped so far, by reason, those counted elsewhere too.
        """
        drops = Counter(self.drops)
        for reason, count in self._drop_sources.items():
            drops[reason] += count()
        return drops

    def watch_capture(self, drops: Counter[str]) -> None:
        """
        Follow the drop counters of a fake-TCP capture (malformed or
        orphan segments, full send buffers...).
        """
        key = id(drops)
        if key in self._captures:
            return
        if len(self._captures) >= self.captureCounterLimit:
            oldest = next(iter(self._captures))
            self._captures_folded.update(self._captures.pop(oldest))
        self._captures[key] = drops

    def capture_drops(self) -> Counter[str]:
        """
        Segments the fake-TCP captures dropped, by reason.
        """
        total = Counter(self._captures_folded)
        for drops in self._captures.values():
            total.update(drops)
        return +total

    def totals(self) -> Counts:
        """
        Every counter since start, live flows included.

        Only the flows active since the last call are read again: an idle
        flow's counters have not moved, and adding up 10,000 records on
        every stats line stalled the loop for tens of milliseconds.
        """
        since, self._read_at = self._read_at, time.monotonic()
        live = self._live
        for record in self.flows:
            reported = record.reported
            if reported is None or record.last_activity >= since:
                now = record.totals().copy()
                live.add(now if reported is None else now.minus(reported))
                record.reported = now
        counts = self._ended.copy()
        counts.add(live)
        return counts

    def snapshot(self) -> Snapshot:
        """
        The counters now, to subtract an earlier snapshot from.
        """
        return Snapshot(time.monotonic(), self.totals(), self.all_drops(), self.capture_drops())

    def line(self, since: Snapshot, now: Snapshot) -> str:
        """
        The periodic stats line: flows open now, then what happened between
        the two snapshots.
        """
        seconds = max(now.time - since.time, 1e-9)
        counts = now.counts.minus(since.counts)
        drops = now.drops - since.drops
        capture = now.capture - since.capture
        return (
            f"stats {seconds:.0f}s: flows {len(self.flows)}"
            f" | udp->faketcp {counts.up_datagrams} dgrams {counts.up_bytes} B"
            f" {counts.up_bytes * 8 / seconds / 1e6:.2f} Mbit/s"
            f" | faketcp->udp {counts.down_datagrams} dgrams {counts.down_bytes} B"
            f" {counts.down_bytes * 8 / seconds / 1e6:.2f} Mbit/s"
            f" loss {counts.loss:.2%} reordered {counts.reordered} refused {counts.refused}"
            f" | drops {format_counter(drops)} | capture drops {format_counter(capture)}"
        )

    def totals_line(self) -> str:
        """
        Everything since start, in the stats line's words.
        """
        counts = self.totals()
        return (
            f"totals: flows {self.opened} opened {self.closed} closed, "
            f"{self.connections} fake-TCP connections"
            f" | udp->faketcp {counts.up_datagrams} dgrams {counts.up_bytes} B"
            f" | faketcp->udp {counts.down_datagrams} dgrams {counts.down_bytes} B"
            f" loss {counts.loss:.2%} reordered {counts.reordered} refused {counts.refused}"
            f" | drops {format_counter(self.all_drops())}"
            f" | capture drops {format_counter(self.capture_drops())}"
        )

    def table(self, now: float | None = None) -> list[str]:
        """
        The per-flow table (for SIGUSR1): a header and one line per flow.
        """
        now = time.monotonic() if now is None else now
        lines = [
            f"{'udp':<24} {'faketcp peer':<24} {'state':<6} {'age':>7} {'idle':>6} "
            f"{'conns':>5} {'mss':>5} {'udp->faketcp':>18} {'faketcp->udp':>18} {'loss':>7} {'reord':>5}"
        ]
        for record in sorted(self.flows, key=lambda r: r.created):
            counts = record.totals()
            lines.append(
                f"{record.udp:<24} {record.peer or '-':<24} {record.state:<6} "
                f"{now - record.created:>6.0f}s {now - record.last_activity:>5.0f}s "
                f"{record.connections:>5} {record.mss or '-':>5} "
                f"{_pair(counts.up_datagrams, counts.up_bytes):>18} "
                f"{_pair(counts.down_datagrams, counts.down_bytes):>18} "
                f"{counts.loss:>7.2%} {counts.reordered:>5}"
            )
        return lines


@dataclass(frozen=True, slots=True)
class Snapshot:
    """
    The relay's counters at one moment.
    """

    time: float
    counts: Counts
    drops: Counter[str]
    capture: Counter[str]


def _pair(datagrams: int, size: int) -> str:
    return f"{datagrams}/{size}B"


def format_counter(counter: Counter[str] | Iterable[tuple[str, int]]) -> str:
    """
    C{reason=count ...}, sorted by reason, or C{none}.
    """
    items = sorted(counter.items() if isinstance(counter, Counter) else counter)
    shown = " ".join(f"{reason}={count}" for reason, count in items if count)
    return shown or "none"


def path_mtu(mss: int, ipv6: bool, option_bytes: int = 0) -> int:
    """
    The IP MTU implied by a fake-TCP MSS, for segments with C{option_bytes}
    of TCP options (12 with timestamps).
    """
    return mss + option_bytes + HEADER_BYTES[6 if ipv6 else 4]


class StatsReporter(Service):
    """
    Logs the stats line every C{interval} seconds (none when 0), and the
    per-flow table on SIGUSR1.

    twistd itself rotates a log file on SIGUSR1 when none other handles it;
    while this service runs, SIGUSR1 prints the flow table instead (rotate
    with C{logrotate}'s C{copytruncate}).
    """

    log = Logger()

    def __init__(self, reactor: Any, stats: RelayStats, interval: float) -> None:
        """
        @param interval: seconds between stats lines; 0 turns them off.
        """
        self.reactor = reactor
        self.stats = stats
        self.interval = interval
        self._loop: LoopingCall | None = None
        self._last: Snapshot | None = None
        self._previous_handler: Any = None

    def startService(self) -> None:
        """
        Start the periodic line and take over SIGUSR1.
        """
        super().startService()  # type: ignore[no-untyped-call]
        self._last = self.stats.snapshot()
        if self.interval > 0:
            self._loop = LoopingCall(self.report)
            self._loop.clock = self.reactor
            self._loop.start(self.interval, now=False)
        self._previous_handler = signal.signal(signal.SIGUSR1, self._onSignal)

    def stopService(self) -> None:
        """
        Stop the line and give SIGUSR1 back.
        """
        super().stopService()  # type: ignore[no-untyped-call]
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self._previous_handler is not None:
            signal.signal(signal.SIGUSR1, self._previous_handler)
            self._previous_handler = None

    def report(self) -> None:
        """
        Log one stats line about the time since the last one.
        """
        now = self.stats.snapshot()
        since = self._last or now
        self._last = now
        self.log.info("{line}", line=self.stats.line(since, now))

    def _onSignal(self, signum: int, frame: Any) -> None:
        # Signal handlers run between two bytecodes of whatever the reactor
        # was doing: hand the work to the reactor, as Twisted's own do.
        self.reactor.callFromThread(self.logTable)

    def logTable(self) -> None:
        """
        Log the per-flow table, one event per line.
        """
        lines = self.stats.table()
        self.log.info("flow table: {count} flow(s)", count=len(lines) - 1)
        for line in lines:
            self.log.info("{line}", line=line)
