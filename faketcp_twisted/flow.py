# -*- test-case-name: tests.test_flow -*-
"""
One fake-TCP flow: the sequence numbers of both directions, what a segment
from the peer means, and the segments this side sends.

A flow never touches a socket or a clock: it is fed segments and the time,
and it hands back payloads to deliver and packets to send.  Datagram
semantics: nothing is retransmitted, nothing is reordered, a lost segment is
simply a datagram that never arrives.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

from .segment import ACK, FIN, PSH, RST, SYN, Segment, build_packet, seq_after

_MASK = 0xFFFFFFFF

#: The window field of every segment this side sends.  The kernel scaled
#: its window in the handshake, so the largest field value reads as a large,
#: plausible receive buffer to the peer and to any conntrack in between.
WINDOW_FIELD = 0xFFFF


class FlowKey(NamedTuple):
    """
    The full 4-tuple of a flow, seen from this side, addresses packed.
    """

    local_addr: bytes
    local_port: int
    remote_addr: bytes
    remote_port: int


class FlowState(enum.Enum):
    """
    Where a flow is in its life.
    """

    ESTABLISHED = "established"
    #: This side sent FIN and still receives (half-close).
    WRITE_CLOSED = "write-closed"
    #: The peer sent FIN; this side may still send.
    READ_CLOSED = "read-closed"
    CLOSED = "closed"


class EndReason(enum.Enum):
    """
    Why a flow ended.
    """

    PEER_FIN = "peer-fin"
    PEER_RST = "peer-rst"
    LOCAL_FIN = "local-fin"
    LOCAL_RST = "local-rst"
    IDLE = "idle"


@dataclass(slots=True)
class FlowStats:
    """
    Counters of one flow, both directions.

    The receive-side loss and reordering estimates come from the peer's
    sequence numbers alone (no extra header on the wire): a segment that
    starts beyond the highest byte seen opens a gap of presumed-lost bytes;
    a segment that arrives inside an open gap was reordered, not lost, and
    its bytes are taken off the gap.  Anything else below the highest byte
    is a duplicate (tcpraw peers may even send new data under old numbers)
    and changes no estimate.

    C{rx_foreign} counts data segments that carried TCP options: a kernel's
    TCP (a plain TCP client on a fake-TCP port) sends them, fake-TCP peers
    (this project, tcpraw) never do, so their data is not delivered.
    """

    rx_segments: int = 0
    rx_bytes: int = 0
    tx_segments: int = 0
    tx_bytes: int = 0
    rx_gap_bytes: int = 0
    rx_reordered: int = 0
    rx_late_bytes: int = 0
    rx_duplicates: int = 0
    rx_foreign: int = 0
    tx_held: int = 0
    tx_window_drops: int = 0

    @property
    def rx_loss_estimate(self) -> float:
        """
        Fraction of the peer's bytes presumed lost so far.
        """
        expected = self.rx_bytes + self.rx_gap_bytes - self.rx_late_bytes
        lost = self.rx_gap_bytes - self.rx_late_bytes
        return max(lost, 0) / expected if expected > 0 else 0.0


@dataclass(slots=True)
class Flow:
    """
    The state of one adopted flow.

    @ivar key: the 4-tuple.
    @ivar snd_nxt: the sequence number of this side's next byte.
    @ivar rcv_high: the highest sequence number seen from the peer plus its
        length: the value of every ack field this side sends.  It never
        sticks at a gap, so firewalls that track windows keep seeing an
        ack that moves with the data.
    @ivar mss: the largest payload of one segment.
    @ivar ack_every: send a bare ACK after this many received bytes that no
        sent segment acknowledged, so the peer's sequence numbers stay inside
        the window that conntrack on the path allows.
    @ivar pending: packets the flow wants sent (bare ACKs, keepalives,
        held datagrams the peer's window now admits).
    @ivar snd_limit: the sequence number just past the peer's advertised
        window (its ack plus its scaled window).  A stateful firewall drops
        segments beyond it as INVALID, so datagrams that would cross it are
        held until the peer's next segment moves it.  That only happens in
        the first round trip, when the peer's window is still the unscaled
        one of the handshake; afterwards the window is megabytes ahead.
    @ivar peer_wscale: the peer's window scale shift.
    @ivar held: datagrams waiting for the peer's window.
    """

    key: FlowKey
    snd_nxt: int
    rcv_high: int
    mss: int
    last_rx: float
    last_tx: float
    ack_every: int = 1 << 20
    idle_timeout: float = 0.0
    keepalive_interval: float = 0.0
    state: FlowState = FlowState.ESTABLISHED
    end_reason: EndReason | None = None
    unacked_rx: int = 0
    snd_limit: int = 0
    peer_wscale: int = 0
    pending: list[bytes] = field(default_factory=list)
    held: deque[bytes] = field(default_factory=deque)
    #: Open gaps in the peer's sequence space, oldest first, as (start, end).
    gaps: deque[tuple[int, int]] = field(default_factory=deque)
    stats: FlowStats = field(default_factory=FlowStats)

    @classmethod
    def from_handshake(
        cls,
        key: FlowKey,
        local_isn: int,
        remote_isn: int,
        mss: int,
        now: float,
        receive_window: int = WINDOW_FIELD,
        idle_timeout: float = 0.0,
        keepalive_interval: float = 0.0,
        peer_window: int = 0xFFFF,
        peer_wscale: int = 0,
    ) -> Flow:
        """
        A flow as the kernel's handshake left it.

        @param local_isn: this side's initial sequence number.
        @param remote_isn: the peer's initial sequence number.
        @param receive_window: this side's advertised window in bytes (the
            window field scaled by this side's window-scale shift).
        @param peer_window: the peer's advertised window in bytes, as of the
            handshake.
        @param peer_wscale: the peer's window scale shift.
        """
        return cls(
            key=key,
            snd_nxt=(local_isn + 1) & _MASK,
            rcv_high=(remote_isn + 1) & _MASK,
            mss=mss,
            last_rx=now,
            last_tx=now,
            ack_every=max(min(receive_window // 4, 1 << 20), 1),
            idle_timeout=idle_timeout,
            keepalive_interval=keepalive_interval,
            snd_limit=(local_isn + 1 + peer_window) & _MASK,
            peer_wscale=peer_wscale,
        )

    def _packet(self, flags: int, payload: bytes = b"") -> bytes:
        key = self.key
        return build_packet(
            key.local_addr,
            key.remote_addr,
            key.local_port,
            key.remote_port,
            self.snd_nxt,
            self.rcv_high,
            flags,
            WINDOW_FIELD,
            payload,
        )

    @property
    def can_send(self) -> bool:
        """
        Whether this side may still send data.
        """
        return self.state is FlowState.ESTABLISHED or self.state is FlowState.READ_CLOSED

    @property
    def can_receive(self) -> bool:
        """
        Whether data from the peer is still delivered.
        """
        return self.state is FlowState.ESTABLISHED or self.state is FlowState.WRITE_CLOSED

    #: Most datagrams held for the peer's window; past it they are dropped.
    heldLimit = 256

    def send(self, payload: bytes, now: float) -> bytes | None:
        """
        Build the data segment carrying one datagram.

        Every data segment has PSH: tcpraw delivers only segments with PSH,
        and PSH stops GRO from merging two datagrams into one packet.

        @param payload: at most L{mss} bytes.
        @return: the IP packet to send, or L{None} when the datagram was held
            for the peer's window (or dropped, the hold being full).
        """
        if len(payload) > self.mss:
            raise ValueError(f"datagram of {len(payload)} bytes exceeds the MSS of {self.mss}")
        if self.held or seq_after((self.snd_nxt + len(payload)) & _MASK, self.snd_limit):
            if len(self.held) < self.heldLimit:
                self.held.append(payload)
                self.stats.tx_held += 1
            else:
                self.stats.tx_window_drops += 1
            return None
        return self._data(payload, now)

    def _data(self, payload: bytes, now: float) -> bytes:
        packet = self._packet(PSH | ACK, payload)
        self.snd_nxt = (self.snd_nxt + len(payload)) & _MASK
        self.unacked_rx = 0
        self.last_tx = now
        stats = self.stats
        stats.tx_segments += 1
        stats.tx_bytes += len(payload)
        return packet

    def bare_ack(self, now: float) -> bytes:
        """
        A segment with no data that acknowledges everything seen: a window
        update for firewalls on the path, and a keepalive for the peer.
        """
        self.unacked_rx = 0
        self.last_tx = now
        return self._packet(ACK)

    def finish(self, now: float) -> bytes:
        """
        Close this side's sending half: the FIN segment to send.
        """
        packet = self._packet(FIN | ACK)
        self.snd_nxt = (self.snd_nxt + 1) & _MASK
        self.last_tx = now
        if self.state is FlowState.READ_CLOSED:
            self._end(EndReason.LOCAL_FIN)
        else:
            self.state = FlowState.WRITE_CLOSED
        return packet

    def reset(self, now: float) -> bytes:
        """
        Abort the flow: the RST segment to send.
        """
        packet = self._packet(RST | ACK)
        self.last_tx = now
        self._end(EndReason.LOCAL_RST)
        return packet

    def expire(self) -> None:
        """
        End the flow for idleness.
        """
        self._end(EndReason.IDLE)

    def _end(self, reason: EndReason) -> None:
        if self.end_reason is None:
            self.end_reason = reason
        self.state = FlowState.CLOSED

    def receive(self, segment: Segment, now: float) -> bytes | None:
        """
        Take one segment of this flow from the peer.

        @return: the payload to deliver, or L{None}.  A FIN or RST changes
            L{state} (and sets L{end_reason} when the flow ends); the caller
            looks at it when the segment carried either flag.
        """
        if self.state is FlowState.CLOSED:
            return None
        flags = segment.flags
        self.last_rx = now
        if flags & RST:
            self._end(EndReason.PEER_RST)
            return None
        if flags & SYN:
            # A retransmitted SYN-ACK means the peer never saw the handshake's
            # last ACK; answer it (the kernel's own ACK is silenced).
            if flags & ACK:
                self.pending.append(self._packet(ACK))
            return None
        if flags & ACK:
            limit = (segment.ack + (segment.window << self.peer_wscale)) & _MASK
            if seq_after(limit, self.snd_limit):
                self.snd_limit = limit
                if self.held:
                    self._release_held(now)
        payload = segment.payload
        size = len(payload)
        if size and segment.options:
            self.stats.rx_foreign += 1
            return None
        delivered: bytes | None = None
        if size:
            self._account(segment.seq, size)
            if self.can_receive:
                delivered = payload
        if flags & FIN:
            fin_end = (segment.seq + size + 1) & _MASK
            if seq_after(fin_end, self.rcv_high):
                self.rcv_high = fin_end
            if self.state is FlowState.WRITE_CLOSED:
                self._end(EndReason.PEER_FIN)
            elif self.state is FlowState.ESTABLISHED:
                self.state = FlowState.READ_CLOSED
        return delivered

    def _release_held(self, now: float) -> None:
        held = self.held
        while held and not seq_after((self.snd_nxt + len(held[0])) & _MASK, self.snd_limit):
            if self.can_send:
                self.pending.append(self._data(held.popleft(), now))
            else:
                held.popleft()

    #: Most gaps remembered for the reordering estimate; older ones are
    #: taken as lost for good.
    gapLimit = 64

    def _account(self, seq: int, size: int) -> None:
        stats = self.stats
        stats.rx_segments += 1
        stats.rx_bytes += size
        end = (seq + size) & _MASK
        high = self.rcv_high
        if seq == high:
            self.rcv_high = end
        elif seq_after(seq, high):
            stats.rx_gap_bytes += (seq - high) & _MASK
            if len(self.gaps) >= self.gapLimit:
                self.gaps.popleft()
            self.gaps.append((high, seq))
            self.rcv_high = end
        else:
            if seq_after(end, high):
                # Overlaps the highest byte seen: partly old, partly new.
                self.rcv_high = end
                end = high
            late = self._fill_gaps(seq, end)
            if late:
                stats.rx_reordered += 1
                stats.rx_late_bytes += late
            else:
                stats.rx_duplicates += 1
        self.unacked_rx += size
        if self.unacked_rx >= self.ack_every:
            self.pending.append(self.bare_ack(self.last_rx))

    def _fill_gaps(self, start: int, end: int) -> int:
        """
        Take [start, end) off the open gaps; return how many bytes it filled.
        """
        filled = 0
        remaining: deque[tuple[int, int]] = deque()
        for gap_start, gap_end in self.gaps:
            low = gap_start if seq_after(gap_start, start) else start
            high = end if seq_after(gap_end, end) else gap_end
            if not seq_after(high, low):
                remaining.append((gap_start, gap_end))
                continue
            filled += (high - low) & _MASK
            if seq_after(low, gap_start):
                remaining.append((gap_start, low))
            if seq_after(gap_end, high):
                remaining.append((high, gap_end))
        self.gaps = remaining
        return filled

    def poll(self, now: float) -> bool:
        """
        Run the flow's timers.

        @return: C{True} when the flow expired for idleness (and is now
            closed); keepalives, if due, are appended to L{pending}.
        """
        if self.state is FlowState.CLOSED:
            return False
        if self.idle_timeout and now - self.last_rx >= self.idle_timeout:
            self.expire()
            return True
        if self.keepalive_interval and now - self.last_tx >= self.keepalive_interval:
            self.pending.append(self.bare_ack(now))
        return False
