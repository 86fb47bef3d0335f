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

from . import fastpath as _fastpath
from .segment import ACK, FIN, PSH, RST, SYN, Segment, seq_after
# FlowKey lives with the codec (the C fast path makes keys while it parses);
# this is still its home for every other module.
from .segment import FlowKey as FlowKey

_MASK = 0xFFFFFFFF
_SPACE = 1 << 32

#: The window field of every segment this side sends.  The kernel scaled
#: its window in the handshake, so the largest field value reads as a large,
#: plausible receive buffer to the peer and to any conntrack in between.
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


#: What L{Flow.held} and L{Flow.gaps} are while empty, instead of a deque
#: each: an empty deque costs 760 bytes (CPython 3.11), so the two were
#: 1.5 KB of an idle relay flow's ~6 KB, yet most flows hold no datagram
#: after their first round trip and see no gap.  A deque is made for the
#: first item and dropped again once empty (so empty is always this).
#: Reading stays as cheap (an empty tuple is falsy, has a length,
#: iterates), and a write that missed the swap fails loudly instead of
#: sharing state between flows.
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

    C{rx_foreign} counts data segments that carried TCP options: a kernel's
    TCP (a plain TCP client on a fake-TCP port) sends them, fake-TCP peers
    (this project, tcpraw) never do, so their data is not delivered.

    Segments refused by the acceptance checks (see L{Flow}) are counted by
    reason and change nothing else (not even the idle timer):

      - C{rx_out_of_window}: a segment without SYN or RST whose sequence
        number lies outside the receive window; dropped whole.
      - C{rx_bad_rst}: a RST whose sequence number lies outside the narrow
        control window; the flow goes on.
      - C{rx_bad_fin}: a FIN not honoured (outside the control window,
        without ACK, or with an implausible ack); data in the same segment
        is still delivered when it passed the receive window.
      - C{rx_bad_ack}: an ack field outside what this side sent recently;
        the segment is still taken (a tcpraw peer's ack sticks at a gap),
        but its ack and window do not move the send limit.
      - C{rx_bad_syn}: a SYN on the flow other than a retransmission of the
        handshake's SYN-ACK.

    On the send side, C{tx_challenge_acks} counts bare ACKs sent in answer
    to refused segments and retransmitted SYN-ACKs, C{tx_challenge_limited}
    those the per-flow rate limit suppressed, C{tx_held_expired} datagrams
    dropped because they waited for the peer's window longer than
    L{Flow.heldLifetime}, and C{tx_pending_drops} control packets (bare
    ACKs) not queued because L{Flow.pending} was full.
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
    rx_out_of_window: int = 0
    rx_bad_rst: int = 0
    rx_bad_fin: int = 0
    rx_bad_ack: int = 0
    rx_bad_syn: int = 0
    tx_challenge_acks: int = 0
    tx_challenge_limited: int = 0
    tx_held_expired: int = 0
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
        docstring); C{rx_bad_ack} is not among them, since those segments
        are still taken.
        """
        return self.rx_out_of_window + self.rx_bad_rst + self.rx_bad_fin + self.rx_bad_syn


@dataclass(slots=True)
class Flow:
    """
    The state of one adopted flow.

    Acceptance of the peer's segments, against an off-path attacker who
    knows the 4-tuple but not the sequence numbers (in the spirit of
    RFC 5961, made generous for tcpraw peers, which rewind their sequence
    number to this side's ack and so send new data under old numbers).
    Offsets are taken in 32-bit serial arithmetic from L{rcv_high}:

      - receive window, for data, bare ACKs and FIN: the sequence number
        lies in [rcv_high - rx_back, rcv_high + rx_ahead).  Anything else
        is dropped whole (C{rx_out_of_window}) and answered with a
        rate-limited challenge ACK, which also brings a tcpraw peer whose
        numbers drifted back into the window (it takes this side's ack as
        its next sequence number).
      - control window, for RST and FIN: [rcv_high, rcv_high +
        control_window).  A peer of this project sends RST and FIN at its
        next sequence number, which is never behind the highest byte seen
        and only ahead of it by data lost or still in flight; tcpraw sends
        neither.  A RST outside it is dropped (C{rx_bad_rst}), and answered
        with a challenge ACK when it was inside the receive window.  A FIN
        is honoured only inside it and with a plausible ack (a FIN ends the
        connection for most protocols, so it gets the RST's narrow window
        rather than the data's wide one); otherwise its data, if any, is
        still taken as data (C{rx_bad_fin}).
      - ack plausibility: an ack field in [snd_nxt - ack_back, snd_nxt].
        An implausible ack never makes a segment drop, because a tcpraw
        peer's ack sticks at the first gap after a loss and may then lie
        anywhere behind (even, after 2 GiB, seemingly ahead of) this side's
        numbers; it is counted (C{rx_bad_ack}) and its ack and window are
        not used for the send limit.
      - SYN: never changes the flow.  A retransmission of the handshake's
        SYN-ACK (its very numbers) gets one bare ACK, rate-limited with the
        challenge ACKs; any other SYN is counted (C{rx_bad_syn}).

    A blind RST thus hits with odds of C{control_window} / 2**32 (1 in
    65536 with the default), a blind FIN needs an ack in range too, and
    blind data needs C{(rx_back + rx_ahead)} / 2**32 (under 1% for a
    default Linux window).

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
        challenge ACKs, held datagrams the peer's window now admits), at
        most L{pendingLimit}; the owner sends and clears it.
    @ivar snd_limit: the sequence number just past the peer's advertised
        window (its ack plus its scaled window).  A stateful firewall drops
        segments beyond it as INVALID, so datagrams that would cross it are
        held until the peer's next segment moves it.  Enforced only until
        the peer's first scaled window arrives (L{window_seen}): the risk is
        the first round trip, when the window is still the handshake's
        unscaled one; afterwards it is megabytes ahead, and a tcpraw peer,
        whose ack sticks at the first gap, would otherwise stall the flow.
    @ivar window_seen: whether a segment with a plausible ack and a scaled
        window came from the peer.
    @ivar peer_wscale: the peer's window scale shift.
    @ivar held: datagrams waiting for the peer's window, with the time each
        was held; bounded by L{heldLimit}, L{heldBytesLimit} and
        L{heldLifetime}.  An empty tuple while nothing is held (see
        L{_NOTHING}).
    @ivar held_bytes: the payload bytes in L{held}.
    @ivar gaps: open gaps in the peer's sequence space, oldest first, as
        (start, end); at most L{gapLimit}, forgotten once behind the
        receive window.  An empty tuple while none is open (see
        L{_NOTHING}).
    @ivar rcv_wnd: this side's advertised (scaled) receive window in bytes.
    @ivar rx_ahead: how far ahead of L{rcv_high} the receive window reaches.
    @ivar rx_back: how far behind L{rcv_high} the receive window reaches.
    @ivar control_window: how far ahead of L{rcv_high} a RST or FIN may be.
    @ivar ack_back: how far behind L{snd_nxt} a plausible ack may be.
    @ivar local_isn: this side's initial sequence number, if known.
    @ivar remote_isn: the peer's initial sequence number, if known.
    @ivar last_challenge: when the last challenge ACK was queued.
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
    window_seen: bool = False
    peer_wscale: int = 0
    pending: list[bytes] = field(default_factory=list)
    held: deque[tuple[float, bytes]] | tuple[()] = _NOTHING
    held_bytes: int = 0
    gaps: deque[tuple[int, int]] | tuple[()] = _NOTHING
    stats: FlowStats = field(default_factory=FlowStats)
    rcv_wnd: int = WINDOW_FIELD
    rx_ahead: int = 1 << 20
    rx_back: int = 16 << 20
    control_window: int = 64 << 10
    ack_back: int = 16 << 20
    local_isn: int | None = None
    remote_isn: int | None = None
    last_challenge: float | None = None
    #: The header template of this flow's segments (see
    #: L{fastpath.segment_template}), made on the first segment sent:
    #: addresses, ports and window are packed once per flow, not per packet.
    template: bytes = field(default=b"", repr=False, compare=False)

    # -- tunables (class attributes; assign on the class or a subclass) --

    #: The receive window reaches at least this far ahead of the highest
    #: byte seen, however small the advertised window: a tcpraw peer does
    #: not respect windows, it only comes back to this side's ack whenever
    #: it receives one (every L{ack_every} bytes at the latest).
    windowAheadMinimum = 1 << 20
    #: The receive window reaches behind the highest byte seen by this
    #: many advertised windows...
    windowBackMultiple = 4
    #: ...and at least this far: a tcpraw peer that rewinds to an ack sent
    #: a round trip ago resends from up to a bandwidth-delay product behind
    #: (16 MiB is 1 Gbit/s over 130 ms).  Farther behind, a challenge ACK
    #: brings it forward again.
    windowBackMinimum = 16 << 20
    #: Neither reach exceeds this, so the whole window stays within half the
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
    #: Most datagrams held for the peer's window; past it they are dropped.
    heldLimit = 256
    #: Most payload bytes held for the peer's window.
    heldBytesLimit = 1 << 20
    #: Seconds a datagram may wait for the peer's window before it is
    #: dropped: a late datagram is worth less than none to the protocols
    #: this carries.
    heldLifetime = 2.0
    #: Most packets in L{pending}.  Data released from L{held} stops at it
    #: (the rest stays held); a bare ACK past it is not queued (a later one
    #: carries the same news).
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
            window field scaled by this side's window-scale shift).  It
            sizes the acceptance windows (see the class docstring).
        @param peer_window: the peer's advertised window in bytes, as of the
            handshake.
        @param peer_wscale: the peer's window scale shift.
        """
        window = max(receive_window, 1)
        most = cls.windowMaximum
        back = min(max(window * cls.windowBackMultiple, cls.windowBackMinimum), most)
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
            rcv_wnd=window,
            rx_ahead=min(max(window, cls.windowAheadMinimum), most),
            rx_back=back,
            control_window=min(window, cls.controlWindowMaximum),
            # The peer acknowledges at most what it saw; what this side sent
            # beyond that is within the peer's window (L{snd_limit}).
            ack_back=min(max(back, 0xFFFF << min(peer_wscale, 14)), most),
            local_isn=local_isn & _MASK,
            remote_isn=remote_isn & _MASK,
        )

    def _packet(self, flags: int, payload: bytes = b"") -> bytes:
        template = self.template
        if not template:
            key = self.key
            template = self.template = _fastpath.segment_template(
                key.local_addr, key.remote_addr, key.local_port, key.remote_port, WINDOW_FIELD
            )
        return _fastpath.build_segment(template, self.snd_nxt, self.rcv_high, flags, payload)

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

    def ack_plausible(self, ack: int) -> bool:
        """
        Whether an ack field lies in [snd_nxt - ack_back, snd_nxt].
        """
        return (self.snd_nxt - ack) & _MASK <= self.ack_back

    def send(self, payload: bytes, now: float) -> bytes | None:
        """
        Build the data segment carrying one datagram.

        Every data segment has PSH: tcpraw delivers only segments with PSH,
        and PSH stops GRO from merging two datagrams into one packet.

        @param payload: at most L{mss} bytes.
        @return: the IP packet to send, or L{None} when the datagram was held
            for the peer's window (or dropped, the hold being full).
        """
        size = len(payload)
        if size > self.mss:
            raise ValueError(f"datagram of {size} bytes exceeds the MSS of {self.mss}")
        held = self.held
        if held or (not self.window_seen and seq_after((self.snd_nxt + size) & _MASK, self.snd_limit)):
            if len(held) < self.heldLimit and self.held_bytes + size <= self.heldBytesLimit:
                if not held:
                    held = self.held = deque()
                held.append((now, payload))
                self.held_bytes += size
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
        """
        packet = self._packet(FIN | ACK)
        self.snd_nxt = (self.snd_nxt + 1) & _MASK
        self.last_tx = now
        if self.state is _READ_CLOSED:
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
        # Nothing will ever be sent from the hold again.
        self.held = _NOTHING
        self.held_bytes = 0

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
        flags = segment.flags
        stats = self.stats
        if flags & SYN:
            self._receive_syn(segment, now)
            return None
        seq = segment.seq
        offset = (seq - self.rcv_high) & _MASK
        in_window = offset < self.rx_ahead or offset >= _SPACE - self.rx_back
        if flags & RST:
            if offset < self.control_window:
                self.last_rx = now
                self._end(EndReason.PEER_RST)
            else:
                stats.rx_bad_rst += 1
                # RFC 5961 3.2: answer a RST inside the window but not at the
                # expected number; drop one outside it silently.
                if in_window:
                    self._challenge(now)
            return None
        if not in_window:
            stats.rx_out_of_window += 1
            self._challenge(now)
            return None
        self.last_rx = now
        ack_ok = False
        if flags & ACK:
            ack = segment.ack
            if (self.snd_nxt - ack) & _MASK <= self.ack_back:
                ack_ok = True
                self.window_seen = True
                limit = (ack + (segment.window << self.peer_wscale)) & _MASK
                # seq_after(limit, snd_limit), inline: this runs per segment.
                if 0 < (limit - self.snd_limit) & _MASK < 0x80000000:
                    self.snd_limit = limit
            else:
                stats.rx_bad_ack += 1
        if self.held:
            self._release_held(now)
        payload = segment.payload
        size = len(payload)
        if size and segment.options:
            stats.rx_foreign += 1
            return None
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
            if ack_ok and offset < self.control_window:
                fin_end = (seq + size + 1) & _MASK
                if seq_after(fin_end, self.rcv_high):
                    self.rcv_high = fin_end
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

    def _release_held(self, now: float) -> None:
        held = self.held
        pending = self.pending
        lifetime = self.heldLifetime
        while held:
            since, payload = held[0]
            if now - since > lifetime:
                held.popleft()
                self.held_bytes -= len(payload)
                self.stats.tx_held_expired += 1
                continue
            if not self.window_seen and seq_after((self.snd_nxt + len(payload)) & _MASK, self.snd_limit):
                break
            if self.can_send and len(pending) >= self.pendingLimit:
                break
            held.popleft()
            self.held_bytes -= len(payload)
            if self.can_send:
                pending.append(self._data(payload, now))
        if not held:
            self.held = _NOTHING

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
            closed); keepalives, if due, are appended to L{pending}, and
            held datagrams past L{heldLifetime} are dropped.
        """
        if self.state is _CLOSED:
            return False
        if self.idle_timeout and now - self.last_rx >= self.idle_timeout:
            self.expire()
            return True
        if self.held:
            self._release_held(now)
        if self.keepalive_interval and now - self.last_tx >= self.keepalive_interval:
            self.stats.tx_keepalives += 1
            self._queue_ack(now)
        return False
