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
from bisect import bisect_right
from collections import deque
from dataclasses import dataclass, field

from ..io import fastpath as _fastpath

# FlowKey lives with the codec (the C fast path makes keys while it parses);
# this is still its home for every other module.
from .segment import (
    ACK,
    FIN,
    PSH,
    RST,
    SYN,
    TIMESTAMP_OPTION_BYTES,
    FlowKey as FlowKey,
    MalformedOptions,
    Segment,
    seq_after,
    timestamp_value,
)

_MASK = 0xFFFFFFFF
_SPACE = 1 << 32

#: The largest window field, and the window of a peer not yet heard from.
WINDOW_FIELD = 0xFFFF


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


# The states as module globals: an Enum member looked up on its class costs
# ~70 ns in CPython 3.11, a global ~5 ns, and the checks below run for every
# segment.
_ESTABLISHED = FlowState.ESTABLISHED
_WRITE_CLOSED = FlowState.WRITE_CLOSED
_READ_CLOSED = FlowState.READ_CLOSED
_CLOSED = FlowState.CLOSED


#: What L{Flow.gaps} is while empty, instead of a deque: an empty deque
#: costs 760 bytes (CPython 3.11), a good share of an idle relay flow, yet
#: most flows see no gap.  A deque is made for the first gap and dropped
#: again once empty (so empty is always this).  Reading stays as cheap (an
#: empty tuple is falsy, has a length, iterates), and a write that missed
#: the swap fails loudly instead of sharing state between flows.
_NOTHING: tuple[()] = ()


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

    Segments refused by the acceptance checks (see L{Flow}) are counted by
    reason and change nothing else (not even the idle timer):

      - C{rx_out_of_window}: a segment without SYN or RST whose sequence
        number lies outside the receive window; dropped whole.
      - C{rx_bad_rst}: a RST whose sequence number lies outside the narrow
        control window; the flow goes on.
      - C{rx_bad_fin}: a FIN not honoured (outside the control window,
        without ACK, or with an implausible ack); data in the same segment
        is still delivered when it passed the receive window.
      - C{rx_bad_ack}: a segment inside the receive window whose ack field
        lies outside what this side sent (or has no ACK flag); dropped
        whole (RFC 5961 section 5).
      - C{rx_bad_syn}: a SYN on the flow other than a retransmission of the
        handshake's SYN-ACK.
      - C{rx_bad_options}: a segment whose TCP option list is malformed;
        dropped whole.  Well-formed options (timestamps, SACK blocks, NOPs:
        what real stacks and current tcpraw put on every segment) are
        accepted.

    On the send side, C{tx_challenge_acks} counts bare ACKs sent in answer
    to refused segments and retransmitted SYN-ACKs, C{tx_challenge_limited}
    those the per-flow rate limit suppressed, C{tx_rewinds} the data
    segments sent from the peer's last ack again because the next sequence
    number would have crossed the peer's window (see L{Flow.send}), and
    C{tx_pending_drops} control packets (bare ACKs) not queued because
    L{Flow.pending} was full.
    """

    rx_segments: int = 0
    rx_bytes: int = 0
    tx_segments: int = 0
    tx_bytes: int = 0
    rx_gap_bytes: int = 0
    rx_reordered: int = 0
    rx_late_bytes: int = 0
    rx_duplicates: int = 0
    rx_out_of_window: int = 0
    rx_bad_rst: int = 0
    rx_bad_fin: int = 0
    rx_bad_ack: int = 0
    rx_bad_syn: int = 0
    rx_bad_options: int = 0
    tx_challenge_acks: int = 0
    tx_challenge_limited: int = 0
    tx_rewinds: int = 0
    tx_pending_drops: int = 0
    tx_keepalives: int = 0

    @property
    def rx_loss_estimate(self) -> float:
        """
        Fraction of the peer's bytes presumed lost so far.
        """
        expected = self.rx_bytes + self.rx_gap_bytes - self.rx_late_bytes
        lost = self.rx_gap_bytes - self.rx_late_bytes
        return max(lost, 0) / expected if expected > 0 else 0.0

    @property
    def rx_refused(self) -> int:
        """
        All segments refused by the acceptance checks (see the class
        docstring).
        """
        return (
            self.rx_out_of_window + self.rx_bad_rst + self.rx_bad_fin + self.rx_bad_syn + self.rx_bad_ack
            + self.rx_bad_options
        )


@dataclass(slots=True)
class Flow:
    """
    The state of one adopted flow.

    B{Sending.}  Every segment continues the kernel's connection: the
    handshake's sequence numbers, the window field of this side's real
    receive window (L{receiveWindow}, in the handshake's scale), and, where
    the handshake agreed on them, timestamps at the kernel's rate from the
    kernel's own value (L{use_timestamps}), echoing the peer's latest
    TSval.  Data never crosses the peer's window: the send window is
    [L{snd_una}, L{snd_una} + L{snd_wnd}), and a datagram that would cross
    its edge is sent from L{snd_una} again (a "rewind", as tcpraw does on
    every ACK).  Nothing is retransmitted: the numbers are reused for new
    data.  (A peer window smaller than one datagram cannot be kept: each
    datagram then goes from L{snd_una}, the least a sender can cross it
    by.)  So whatever was lost (a loss burst, a route flap, an outage of
    any length), every segment stays inside the window a stateful firewall
    tracks, and inside the peer's receive window: traffic flows again the
    moment the path does, with nothing to resynchronise.  A tcpraw peer,
    whose ack sticks at the first gap after a loss, gets a segment at its
    ack on the next rewind and moves on.

    B{Receiving}, against an off-path attacker who knows the 4-tuple but
    not the sequence numbers (RFC 5961), with offsets in 32-bit serial
    arithmetic:

      - receive window, for data, bare ACKs and FIN: the sequence number
        lies in [rcv_high - rx_back, rcv_high + rx_ahead), both reaches
        being this side's advertised window.  A peer of this project never
        sends outside it (see above); a tcpraw peer, which ignores windows,
        comes back to this side's ack whenever it receives one (every
        L{ack_every} bytes, and in every challenge ACK or keepalive).
        Anything else is dropped whole (C{rx_out_of_window}) and answered
        with a rate-limited challenge ACK.
      - ack check, for every segment but a RST or SYN: ACK set and the ack
        field in [snd_una - ack_back, snd_max], what this side sent and the
        peer may still be acknowledging (RFC 5961 section 5); else dropped
        whole (C{rx_bad_ack}) and answered with a challenge ACK.
      - control window, for RST and FIN: [rcv_high, rcv_high +
        control_window), and the ack check too.  A peer of this project
        sends RST and FIN at its highest sequence number, never behind the
        highest byte seen and only ahead of it by data lost or still in
        flight, and always with ACK; tcpraw sends neither.  A RST that
        fails either check is dropped (C{rx_bad_rst}), and answered with a
        challenge ACK when it was inside the receive window: a RST without
        ACK (a kernel's, for a flow it has no socket for) never ends a flow,
        its idle timeout does.  A FIN is honoured only inside the control
        window; otherwise its data, if any, is still taken as data
        (C{rx_bad_fin}).
      - SYN: never changes the flow.  A retransmission of the handshake's
        SYN-ACK (its very numbers) gets one bare ACK, rate-limited with the
        challenge ACKs; any other SYN is counted (C{rx_bad_syn}).

    A blind data segment is thus delivered with odds of (rx_back +
    rx_ahead) / 2**32 times (ack_back + snd_max - snd_una) / 2**32: with
    the default 3 MiB window, at most 1 in 683 for the sequence number
    alone (an attacker who somehow knows the ack), about 1 in 930,000 for
    both on a flow with nothing in flight.  A blind RST or FIN needs the
    control window and the ack: C{control_window} / 2**32 times the ack's
    odds, 1 in 89 million.  snd_una and the send window move only on
    segments that pass both checks.

    @ivar key: the 4-tuple.
    @ivar snd_nxt: the sequence number of this side's next data byte.
    @ivar snd_una: the highest ack the peer sent: the start of the send
        window.
    @ivar snd_max: one past the highest sequence number this side sent
        (a rewind moves L{snd_nxt} back, never this).
    @ivar snd_wnd: the peer's window in bytes (its latest window field,
        scaled), at most L{sendWindowMaximum}.
    @ivar rcv_high: the highest sequence number seen from the peer plus its
        length: the value of every ack field this side sends.  It never
        sticks at a gap, so firewalls that track windows keep seeing an
        ack that moves with the data.
    @ivar mss: the largest payload of one segment (options excluded).
    @ivar ack_every: send a bare ACK after this many received bytes that no
        sent segment acknowledged, so the peer's send window keeps moving
        (and a tcpraw peer's sequence numbers stay in the receive window).
    @ivar pending: packets the flow wants sent (bare ACKs, keepalives,
        challenge ACKs), at most L{pendingLimit}; the owner sends and
        clears it.
    @ivar peer_wscale: the peer's window scale shift.
    @ivar gaps: open gaps in the peer's sequence space, oldest first, as
        (start, end); at most L{gapLimit}, forgotten once behind the
        receive window.  An empty tuple while none is open (see
        L{_NOTHING}).
    @ivar rcv_wnd: this side's advertised receive window in bytes.
    @ivar window_field: the window field of this side's segments
        (L{rcv_wnd} in the handshake's scale).
    @ivar rx_ahead: how far ahead of L{rcv_high} the receive window reaches.
    @ivar rx_back: how far behind L{rcv_high} the receive window reaches.
    @ivar control_window: how far ahead of L{rcv_high} a RST or FIN may be.
    @ivar ack_back: how far behind L{snd_una} an acceptable ack may be (the
        peer's segments may arrive out of order).
    @ivar local_isn: this side's initial sequence number, if known.
    @ivar remote_isn: the peer's initial sequence number, if known.
    @ivar last_challenge: when the last challenge ACK was queued.
    @ivar ts_rate: ticks per second of this side's TSval; 0 while this
        side's segments carry no timestamps.
    @ivar ts_base: the TSval at L{ts_clock}.
    @ivar ts_clock: the time L{ts_base} was read.
    @ivar ts_recent: the peer's TSval to echo as TSecr: that of the latest
        segment that did not lie behind the highest byte seen (RFC 7323's
        rule, without its "newer" test: a tcpraw peer's TSval comes from a
        clock of its own, unrelated to its kernel's handshake value).
    @ivar ts_last: the last TSval sent: TSval never goes back, even when
        the clock does (Twisted's is the wall clock).
    @ivar fin_received: whether the peer's FIN was honoured.
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
    snd_una: int = 0
    snd_max: int = 0
    snd_wnd: int = WINDOW_FIELD
    peer_wscale: int = 0
    pending: list[bytes] = field(default_factory=list)
    gaps: deque[tuple[int, int]] | tuple[()] = _NOTHING
    stats: FlowStats = field(default_factory=FlowStats)
    rcv_wnd: int = WINDOW_FIELD
    window_field: int = WINDOW_FIELD
    rx_ahead: int = 1 << 20
    rx_back: int = 1 << 20
    control_window: int = 64 << 10
    ack_back: int = 1 << 20
    local_isn: int | None = None
    remote_isn: int | None = None
    last_challenge: float | None = None
    ts_rate: float = 0.0
    ts_base: int = 0
    ts_clock: float = 0.0
    ts_recent: int = 0
    ts_last: int = 0
    fin_received: bool = False
    #: The header template of this flow's segments (see
    #: L{fastpath.segment_template}), made on the first segment sent:
    #: addresses, ports, window and the option layout are packed once per
    #: flow, not per packet.
    template: bytes = field(default=b"", repr=False, compare=False)

    # -- tunables (class attributes; assign on the class or a subclass) --

    #: This side's receive window in bytes, advertised (in the handshake's
    #: window scale) and enforced: what Linux advertises once a bulk
    #: connection has grown its window with the default tcp_rmem maximum
    #: (6 MiB of buffer, half of it window).  It sets the odds of blind
    #: injection (see the class docstring) and must hold what a tcpraw peer
    #: sends in a round trip (3 MiB is 240 Mbit/s over 100 ms); past that, a
    #: challenge ACK brings it back.
    receiveWindow = 3 << 20
    #: The send window never exceeds this, whatever the peer advertises
    #: (64 MiB for current tcpraw at the usual window scale): a tcpraw
    #: peer's ack, stuck at the first gap after a loss, is then reached by
    #: a rewind within this many bytes, and acceptable acks stay few.
    sendWindowMaximum = 16 << 20
    #: The least reach of the ack check behind L{snd_una}.
    ackBackMinimum = 1 << 20
    #: No reach exceeds this, so every window stays within half the
    #: sequence space (where serial arithmetic is meaningful).
    windowMaximum = 1 << 30
    #: The control window (RST, FIN) is the advertised window, but at most
    #: this: a legitimate RST or FIN is ahead of the highest byte seen only
    #: by the peer's data lost or still in flight just before it.
    controlWindowMaximum = 64 << 10
    #: Least seconds between two challenge ACKs of one flow (Linux uses
    #: 0.5 s too).  Per flow rather than global: a global limit is a side
    #: channel that tells an attacker whether a guess hit (CVE-2016-5696).
    challengeAckInterval = 0.5
    #: A bare ACK goes out after this fraction of the receive window
    #: arrived unacknowledged, so a quiet receiver still moves the peer's
    #: send window (an ACK or two may be lost on the way).
    ackEveryDivisor = 8
    #: Most packets in L{pending}; a bare ACK past it is not queued (a
    #: later one carries the same news).
    pendingLimit = 320
    #: Most gaps remembered for the reordering estimate; older ones are
    #: taken as lost for good.
    gapLimit = 64

    @classmethod
    def from_handshake(
        cls,
        key: FlowKey,
        local_isn: int,
        remote_isn: int,
        mss: int,
        now: float,
        receive_window: int | None = None,
        idle_timeout: float = 0.0,
        keepalive_interval: float = 0.0,
        peer_window: int = WINDOW_FIELD,
        peer_wscale: int = 0,
        receive_wscale: int = 0,
        peer_tsval: int | None = None,
    ) -> Flow:
        """
        A flow as the kernel's handshake left it.

        @param local_isn: this side's initial sequence number.
        @param remote_isn: the peer's initial sequence number.
        @param receive_window: this side's receive window in bytes
            (default L{receiveWindow}); it is rounded down to what the
            window field can say at C{receive_wscale}.
        @param peer_window: the peer's window in bytes, as of the
            handshake.
        @param peer_wscale: the peer's window scale shift.
        @param receive_wscale: this side's window scale shift.
        @param peer_tsval: the peer's latest TSval in the handshake, if any.
        """
        scale = min(max(receive_wscale, 0), 14)
        wanted = cls.receiveWindow if receive_window is None else receive_window
        window_field = min(max(wanted >> scale, 1), WINDOW_FIELD)
        window = window_field << scale
        most = cls.windowMaximum
        reach = min(window, most)
        first = (local_isn + 1) & _MASK
        return cls(
            key=key,
            snd_nxt=first,
            snd_una=first,
            snd_max=first,
            snd_wnd=min(peer_window, cls.sendWindowMaximum),
            rcv_high=(remote_isn + 1) & _MASK,
            mss=mss,
            last_rx=now,
            last_tx=now,
            ack_every=max(window // cls.ackEveryDivisor, 1),
            idle_timeout=idle_timeout,
            keepalive_interval=keepalive_interval,
            peer_wscale=peer_wscale,
            rcv_wnd=window,
            window_field=window_field,
            rx_ahead=reach,
            rx_back=reach,
            control_window=min(window, cls.controlWindowMaximum),
            ack_back=min(max(window, cls.ackBackMinimum), most),
            local_isn=local_isn & _MASK,
            remote_isn=remote_isn & _MASK,
            ts_recent=0 if peer_tsval is None else peer_tsval & _MASK,
        )

    def use_timestamps(self, tsval: int, now: float, rate: float = 1000.0) -> None:
        """
        Put the timestamps option on every segment from now on, continuing
        the kernel's clock: C{tsval} is the kernel's TSval at C{now} (see
        L{kernel.current_timestamp}), and it advances C{rate} ticks per
        second.
        """
        self.ts_base = self.ts_last = tsval & _MASK
        self.ts_clock = now
        self.ts_rate = rate
        self.template = b""

    def _packet(self, flags: int, now: float, payload: bytes = b"", seq: int = -1) -> bytes:
        template = self.template
        if not template:
            key = self.key
            template = self.template = _fastpath.segment_template(
                key.local_addr,
                key.remote_addr,
                key.local_port,
                key.remote_port,
                self.window_field,
                timestamps=self.ts_rate > 0,
            )
        if seq < 0:
            seq = self.snd_nxt
        rate = self.ts_rate
        if rate:
            tsval = (self.ts_base + int((now - self.ts_clock) * rate)) & _MASK
            if (tsval - self.ts_last) & _MASK >= 0x80000000:
                # The clock went back: hold TSval where it was.
                tsval = self.ts_last
            self.ts_last = tsval
            return _fastpath.build_segment(template, seq, self.rcv_high, flags, payload, tsval, self.ts_recent)
        return _fastpath.build_segment(template, seq, self.rcv_high, flags, payload)

    @property
    def option_bytes(self) -> int:
        """
        The TCP option bytes on each of this side's segments (12 with
        timestamps, else none): room the path MTU gives them, not data.
        """
        return TIMESTAMP_OPTION_BYTES if self.ts_rate else 0

    @property
    def can_send(self) -> bool:
        """
        Whether this side may still send data.
        """
        return self.state is _ESTABLISHED or self.state is _READ_CLOSED

    @property
    def can_receive(self) -> bool:
        """
        Whether data from the peer is still delivered.
        """
        return self.state is _ESTABLISHED or self.state is _WRITE_CLOSED

    def in_window(self, seq: int) -> bool:
        """
        Whether sequence number C{seq} lies in the receive window,
        [rcv_high - rx_back, rcv_high + rx_ahead).
        """
        offset = (seq - self.rcv_high) & _MASK
        return offset < self.rx_ahead or offset >= _SPACE - self.rx_back

    def ack_acceptable(self, ack: int) -> bool:
        """
        Whether an ack field lies in [snd_una - ack_back, snd_max].
        """
        base = (self.snd_una - self.ack_back) & _MASK
        return (ack - base) & _MASK <= (self.snd_max - base) & _MASK

    def send(self, payload: bytes, now: float) -> bytes:
        """
        Build the data segment carrying one datagram.

        Every data segment has PSH: tcpraw delivers only segments with PSH,
        and PSH stops GRO from merging two datagrams into one packet.  A
        datagram that would cross the peer's window is sent from
        L{snd_una} (see the class docstring).

        @param payload: at most L{mss} bytes.
        @return: the IP packet to send.
        """
        size = len(payload)
        if size > self.mss:
            raise ValueError(f"datagram of {size} bytes exceeds the MSS of {self.mss}")
        seq = self.snd_nxt
        if (seq + size - self.snd_una) & _MASK > self.snd_wnd:
            seq = self.snd_una
            self.stats.tx_rewinds += 1
        packet = self._packet(PSH | ACK, now, payload, seq)
        end = self.snd_nxt = (seq + size) & _MASK
        # seq_after(end, snd_max), inline: this runs per datagram.
        if 0 < (end - self.snd_max) & _MASK < 0x80000000:
            self.snd_max = end
        self.unacked_rx = 0
        self.last_tx = now
        stats = self.stats
        stats.tx_segments += 1
        stats.tx_bytes += size
        return packet

    def bare_ack(self, now: float) -> bytes:
        """
        A segment with no data that acknowledges everything seen: a window
        update for firewalls on the path, and a keepalive for the peer.
        """
        self.unacked_rx = 0
        self.last_tx = now
        return self._packet(ACK, now)

    def _queue_ack(self, now: float) -> bool:
        """
        Queue a bare ACK in L{pending} unless it is full.
        """
        if len(self.pending) >= self.pendingLimit:
            self.stats.tx_pending_drops += 1
            return False
        self.pending.append(self.bare_ack(now))
        return True

    def _challenge(self, now: float) -> None:
        """
        Queue a challenge ACK, at most one per L{challengeAckInterval}.
        """
        last = self.last_challenge
        # A clock that went backwards does not silence the flow for good.
        if last is not None and 0.0 <= now - last < self.challengeAckInterval:
            self.stats.tx_challenge_limited += 1
            return
        self.last_challenge = now
        if self._queue_ack(now):
            self.stats.tx_challenge_acks += 1

    def finish(self, now: float) -> bytes:
        """
        Close this side's sending half: the FIN segment to send.

        It takes the highest sequence number sent, never a rewound one: the
        peer's control window starts at the highest byte it saw.
        """
        self.snd_nxt = self.snd_max
        packet = self._packet(FIN | ACK, now)
        self.snd_nxt = self.snd_max = (self.snd_max + 1) & _MASK
        self.last_tx = now
        if self.state is _READ_CLOSED:
            self._end(EndReason.LOCAL_FIN)
        else:
            self.state = FlowState.WRITE_CLOSED
        return packet

    def reset(self, now: float) -> bytes:
        """
        Abort the flow: the RST segment to send (at the highest sequence
        number sent, as L{finish}).
        """
        packet = self._packet(RST | ACK, now, seq=self.snd_max)
        self.last_tx = now
        self._end(EndReason.LOCAL_RST)
        return packet

    def expire(self) -> None:
        """
        End the flow for idleness.
        """
        self._end(EndReason.IDLE)

    def abandon(self) -> None:
        """
        End the flow with nothing more sent: its connection let go of it
        (after this side's FIN, without waiting for the peer's; or with no
        application left to serve it).  It counts as closed by this side
        (L{EndReason.LOCAL_FIN}) unless it had already ended otherwise.
        """
        self._end(EndReason.LOCAL_FIN)

    def _end(self, reason: EndReason) -> None:
        if self.end_reason is None:
            self.end_reason = reason
        self.state = FlowState.CLOSED

    def receive(self, segment: Segment, now: float) -> bytes | None:
        """
        Take one segment of this flow from the peer.

        Segments that fail the acceptance checks (see the class docstring)
        are counted in L{stats} and change nothing else; some queue a
        challenge ACK in L{pending}.

        @return: the payload to deliver, or L{None}.  A FIN or RST that is
            honoured changes L{state} (and sets L{end_reason} when the flow
            ends); the caller looks at it when the segment carried either
            flag.
        """
        if self.state is _CLOSED:
            return None
        stats = self.stats
        tsval = None
        if segment.options:
            try:
                tsval = timestamp_value(segment.options)
            except MalformedOptions:
                stats.rx_bad_options += 1
                return None
        flags = segment.flags
        if flags & SYN:
            self._receive_syn(segment, now)
            return None
        seq = segment.seq
        offset = (seq - self.rcv_high) & _MASK
        in_window = offset < self.rx_ahead or offset >= _SPACE - self.rx_back
        if flags & RST:
            # ack_acceptable(ack), inline: a RST must also carry ACK and an
            # ack within what this side sent (the peer's RSTs, this
            # project's orphan answers and refusals all do), which takes a
            # blind RST's odds from 1 in 65,536 to 1 in tens of millions.
            base = (self.snd_una - self.ack_back) & _MASK
            if (
                offset < self.control_window
                and flags & ACK
                and (segment.ack - base) & _MASK <= (self.snd_max - base) & _MASK
            ):
                self.last_rx = now
                self._end(EndReason.PEER_RST)
            else:
                stats.rx_bad_rst += 1
                # RFC 5961 3.2: answer a RST inside the window but not at the
                # expected number; drop one outside it silently.
                if in_window:
                    self._challenge(now)
            return None
        if not in_window and not (offset == self.rx_ahead and not segment.payload):
            # (A bare ACK exactly at the window's edge is in it, as for
            # Linux and conntrack: a sender whose data filled the window to
            # its last byte sends its next keepalive from there.)
            stats.rx_out_of_window += 1
            self._challenge(now)
            return None
        ack = segment.ack
        una = self.snd_una
        # ack_acceptable(ack), inline: this runs per segment.
        base = (una - self.ack_back) & _MASK
        if not flags & ACK or (ack - base) & _MASK > (self.snd_max - base) & _MASK:
            stats.rx_bad_ack += 1
            self._challenge(now)
            return None
        self.last_rx = now
        advance = (ack - una) & _MASK
        if advance < 0x80000000:
            # Not an older ack than the last (RFC 793's SND.WL2 rule): its
            # window is the peer's latest word.
            if advance:
                self.snd_una = ack
                if 0 < (ack - self.snd_nxt) & _MASK < 0x80000000:
                    # Past a rewind's numbers: carry on from what the peer saw.
                    self.snd_nxt = ack
            window = segment.window << self.peer_wscale
            self.snd_wnd = window if window < self.sendWindowMaximum else self.sendWindowMaximum
        if tsval is not None and offset < 0x80000000:
            # Not behind the highest byte seen (RFC 7323's Last.ACK.sent).
            self.ts_recent = tsval
        payload = segment.payload
        size = len(payload)
        delivered: bytes | None = None
        if size:
            self._account(seq, size, now)
            state = self.state
            # can_receive, inline: this runs per segment.
            if state is _ESTABLISHED or state is _WRITE_CLOSED:
                delivered = payload
        if flags & FIN and self.state is not _READ_CLOSED:
            # (A FIN on a read-closed flow is a copy of the one already
            # taken: nothing to do, nothing to count.)
            if offset < self.control_window:
                fin_end = (seq + size + 1) & _MASK
                if seq_after(fin_end, self.rcv_high):
                    self.rcv_high = fin_end
                # Acknowledge the FIN, as a real stack does (the kernel's own
                # ACK is silenced): the peer's stack, and every firewall on
                # the path, then see the connection close cleanly.
                self._queue_ack(now)
                self.fin_received = True
                if self.state is _WRITE_CLOSED:
                    self._end(EndReason.PEER_FIN)
                else:
                    self.state = FlowState.READ_CLOSED
            else:
                stats.rx_bad_fin += 1
                self._challenge(now)
        return delivered

    def _receive_syn(self, segment: Segment, now: float) -> None:
        """
        A SYN on an established flow: never a reason to change it.
        """
        remote_isn, local_isn = self.remote_isn, self.local_isn
        if (
            segment.flags & ACK
            and not segment.flags & (RST | FIN)
            and (remote_isn is None or segment.seq == remote_isn)
            and (local_isn is None or segment.ack == (local_isn + 1) & _MASK)
        ):
            # A retransmitted SYN-ACK means the peer never saw the handshake's
            # last ACK; answer it (the kernel's own ACK is silenced).  Only
            # the handshake's own numbers are answered, so an off-path
            # attacker cannot make this side send by SYN-ACKs; the answer
            # shares the challenge ACK's rate limit (it is the same packet).
            self.last_rx = now
            self._challenge(now)
        else:
            self.stats.rx_bad_syn += 1

    def _account(self, seq: int, size: int, now: float) -> None:
        stats = self.stats
        stats.rx_segments += 1
        stats.rx_bytes += size
        end = (seq + size) & _MASK
        high = self.rcv_high
        if seq == high:
            self.rcv_high = end
        elif seq_after(seq, high):
            stats.rx_gap_bytes += (seq - high) & _MASK
            gaps = self.gaps
            if not gaps:
                gaps = self.gaps = deque()
            elif len(gaps) >= self.gapLimit:
                gaps.popleft()
            gaps.append((high, seq))
            self.rcv_high = end
            self._prune_gaps()
        else:
            if seq_after(end, high):
                # Overlaps the highest byte seen: partly old, partly new.
                self.rcv_high = end
                end = high
            late = self._fill_gaps(seq, end) if self.gaps else 0
            if late:
                stats.rx_reordered += 1
                stats.rx_late_bytes += late
            else:
                stats.rx_duplicates += 1
        self.unacked_rx += size
        if self.unacked_rx >= self.ack_every:
            self._queue_ack(now)

    def _prune_gaps(self) -> None:
        """
        Forget gaps that ended behind the receive window: no acceptable
        segment can fill them any more, and far enough behind, serial
        arithmetic would misjudge them.
        """
        gaps = self.gaps
        high, back = self.rcv_high, self.rx_back
        while gaps:
            start, end = gaps[0]
            if (high - end) & _MASK > back:
                gaps.popleft()
                continue
            if (high - start) & _MASK > back:
                # Straddles the back edge: the part behind it is lost for
                # good, and positions stay measurable from the edge.
                gaps[0] = ((high - back) & _MASK, end)
            break
        if not gaps:
            self.gaps = _NOTHING

    def _fill_gaps(self, start: int, end: int) -> int:
        """
        Take [start, end) off the open gaps; return how many bytes it filled.

        Positions are measured from the back of the receive window, where
        every open gap and every acceptable segment lies, so plain integer
        comparisons stand in for serial ones.  The gaps are sorted and do
        not overlap, so a binary search finds the first one the segment
        reaches: a segment costs O(log gapLimit) plus the gaps it touches,
        not a scan (every duplicate from a tcpraw peer that rewound comes
        through here).  A segment inside a gap splits it in two; past
        L{gapLimit} the oldest gap is forgotten, as when a gap is opened.
        """
        self._prune_gaps()
        gaps = self.gaps
        if not gaps:
            return 0
        base = (self.rcv_high - self.rx_back) & _MASK
        low = (start - base) & _MASK
        high = (end - base) & _MASK
        index = bisect_right(gaps, low, key=lambda gap: (gap[1] - base) & _MASK)
        filled = 0
        while index < len(gaps):
            gap_start, gap_end = gaps[index]
            gap_low = (gap_start - base) & _MASK
            if gap_low >= high:
                break
            gap_high = (gap_end - base) & _MASK
            cut_low = max(gap_low, low)
            cut_high = min(gap_high, high)
            filled += cut_high - cut_low
            del gaps[index]
            if cut_low > gap_low:
                gaps.insert(index, (gap_start, (cut_low + base) & _MASK))
                index += 1
            if gap_high > cut_high:
                gaps.insert(index, ((cut_high + base) & _MASK, gap_end))
                index += 1
        while len(gaps) > self.gapLimit:
            gaps.popleft()
        if not gaps:
            self.gaps = _NOTHING
        return filled

    def poll(self, now: float) -> bool:
        """
        Run the flow's timers.

        @return: C{True} when the flow expired for idleness (and is now
            closed); keepalives, if due, are appended to L{pending}.
        """
        if self.state is _CLOSED:
            return False
        if self.idle_timeout and now - self.last_rx >= self.idle_timeout:
            self.expire()
            return True
        if self.keepalive_interval and now - self.last_tx >= self.keepalive_interval:
            self.stats.tx_keepalives += 1
            self._queue_ack(now)
        return False
