# -*- test-case-name: tests.test_table -*-
"""
The flow table of one capture: adopted flows by their full 4-tuple, the
embryonic entries of handshakes not adopted yet, and the time-wait entries
of flows that ended.

The kernel makes every real handshake.  The capture sees it first, so the
table learns both initial sequence numbers from it (a server from the SYN
and the first ACK, a client from the SYN-ACK) and keeps the data segments
that arrive before the owning socket is accepted or connected.  Adoption
hands those segments over, in arrival order.

Everything the table keeps for 4-tuples nobody owns is bounded in count,
bytes and time (see L{TableLimits}), and every packet costs O(1) amortized:
embryos and time-wait entries live in insertion-ordered dictionaries whose
oldest entries are also the first to expire or be evicted, so expiry and
eviction pop from the front and never scan.
"""

from __future__ import annotations

import enum
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

from .flow import WINDOW_FIELD, EndReason, Flow, FlowKey
from .rotation import Rotation
from .segment import (
    ACK,
    FIN,
    RST,
    SYN,
    MalformedOptions,
    Segment,
    build_packet,
    parse_options,
    timestamp_option,
    timestamp_value,
)

_MASK = 0xFFFFFFFF


class Role(enum.Enum):
    """
    Which side of the handshake the table's flows are on.
    """

    SERVER = "server"
    CLIENT = "client"


@dataclass(slots=True)
class Embryo:
    """
    What the capture learned of a handshake before its flow was adopted.

    @ivar remote_isn: the peer's initial sequence number, once seen.
    @ivar local_isn: this side's initial sequence number, once seen.
    @ivar early: data segments that arrived before adoption.
    @ivar peer_window: the window field of the peer's latest handshake
        segment, and whether it is subject to window scaling (it is not in
        a SYN segment).
    @ivar peer_tsval: the peer's latest TSval, for the flow to echo.
    """

    created: float
    remote_isn: int | None = None
    local_isn: int | None = None
    early: list[Segment] = field(default_factory=list)
    early_bytes: int = 0
    peer_window: int = 0xFFFF
    peer_window_scaled: bool = False
    peer_tsval: int | None = None


@dataclass(slots=True)
class TableLimits:
    """
    Bounds on what the table keeps for flows nobody owns yet or any more.

    With the defaults, a SYN flood holds at most 1024 embryos, and a flood
    of early data at most 8 MiB of payload in 8192 segments, whatever its
    rate; orphan segments (no embryo, no flow) are counted and kept nowhere.

    @ivar embryos: most embryonic entries kept at once.  A new handshake
        past it evicts the oldest entry whose handshake is still half open
        (SYN seen, nothing after it), else the oldest entry: a flood of
        spoofed SYNs never completes, so completed handshakes, about to be
        adopted, are the last to go.
    @ivar embryos_per_address: most embryonic entries of one remote
        address; a SYN past it is dropped (counted as
        C{embryo-address-limit}) rather than evicting anyone, so one
        flooding address cannot push out everyone else's handshakes.  The
        default allows many clients behind one NAT address to connect at
        once (64 handshakes in flight).
    @ivar embryo_lifetime: seconds an embryonic entry waits for adoption.
    @ivar embryo_window: sequence numbers after the peer's ISN (plus one)
        that the segments of an embryo may carry: early data, the
        handshake's last ACK, a FIN.  Others are dropped as
        C{embryo-out-of-window}, so a blind attacker can neither fill an
        embryo's early budget nor change its numbers.  A RST must be
        within L{Flow.controlWindowMaximum} of the ISN (plus one) too.
    @ivar early_segments: most early data segments kept per entry.
    @ivar early_bytes: most early payload bytes kept per entry.
    @ivar early_total_segments: most early segments kept by all entries.
    @ivar early_total_bytes: most early payload bytes kept by all entries.
    @ivar time_wait: seconds a closed flow's 4-tuple keeps dropping late
        segments, so they never reach a new connection.
    @ivar time_waits: most time-wait entries kept at once (oldest evicted).
    @ivar orphan_resets: most RSTs per second a server sends in answer to
        orphan data (a flow of a previous run of the server, say: the
        kernel's own RST would carry the listener's mark and be silenced,
        and the peer would wait for its idle timeout).  A global budget,
        so spoofed orphans cannot turn the port into a RST reflector.
    """

    embryos: int = 1024
    embryo_lifetime: float = 10.0
    early_segments: int = 128
    early_bytes: int = 256 * 1024
    time_wait: float = 30.0
    time_waits: int = 4096
    embryos_per_address: int = 64
    embryo_window: int = 1 << 20
    early_total_segments: int = 8192
    early_total_bytes: int = 8 * 1024 * 1024
    orphan_resets: float = 10.0


class FlowTable:
    """
    Flows of one capture, keyed by the full 4-tuple
    (local address, local port, remote address, remote port).

    The reasons in L{drops}: C{time-wait} (a segment of a flow in
    time-wait), C{orphan} (no handshake seen, or a RST that ended one),
    C{bad-rst} (a RST too far from a handshake's numbers to end it),
    C{bad-syn} (a SYN whose numbers differ from the handshake's first),
    C{embryo-out-of-window} (a segment too far from a handshake's numbers),
    C{embryo-address-limit}, C{embryo-evicted}, C{embryo-expired},
    C{early-overflow}, C{bad-options} (a malformed TCP option list), and
    C{time-wait-evicted} (a time-wait entry pushed out by a newer one).

    @ivar flows: the adopted flows.
    @ivar embryos: the embryonic entries, oldest first.
    @ivar time_wait: when each time-wait entry ends, oldest first.
    @ivar drops: segments dropped, by reason.
    @ivar early_segments: early segments kept by all embryos.
    @ivar early_bytes: early payload bytes kept by all embryos.
    """

    def __init__(self, role: Role, limits: TableLimits | None = None, handshake_window: int = WINDOW_FIELD) -> None:
        """
        @param handshake_window: the window field of the handshake's last
            ACK a client sends in the kernel's stead; small, so that the
            flow's own window only ever grows it.
        """
        self.role = role
        self.limits = limits or TableLimits()
        self.handshake_window = handshake_window
        self.flows: dict[FlowKey, Flow] = {}
        self.embryos: OrderedDict[FlowKey, Embryo] = OrderedDict()
        self.time_wait: OrderedDict[FlowKey, float] = OrderedDict()
        self.handed_off: set[FlowKey] = set()
        #: 4-tuples whose kernel socket the owner accepted and waits to
        #: adopt: no orphan RST for them, which would reset a connection
        #: the kernel holds (whose handshake the capture missed, or whose
        #: embryo a limit refused).
        self.awaiting_adoption: set[FlowKey] = set()
        # The numbers of each time-wait entry whose flow this side closed
        # with FIN (its next sequence number, and the peer's next byte):
        # the peer's FIN, arriving after the flow was retired, still gets
        # its ACK, as in a real stack's TIME_WAIT.
        self._fin_numbers: dict[FlowKey, tuple[int, int]] = {}
        # Client side: handshakes started, by (local port, remote address,
        # remote port); the local address is only known once connected.
        self.expected: set[tuple[int, bytes, int]] = set()
        self.drops: Counter[str] = Counter()
        #: Keys whose handshake became fully known since the owner last
        #: looked: the owner may adopt them at once, before more of their
        #: data piles up as early segments.  At most L{TableLimits.embryos}
        #: long, should the owner never look.
        self.completed: list[FlowKey] = []
        #: The flows whose timers the last L{expire} ran that now have
        #: packets to send (keepalives, held datagrams now due).
        self.due: list[Flow] = []
        # The flows whose timers the next expire runs (see there).
        self._rotation: Rotation[Flow] = Rotation()
        self._reset_tokens = self.limits.orphan_resets
        self._reset_time = 0.0
        # Keys of embryos whose handshake is half open, oldest first: the
        # first to be evicted.
        self._half_open: OrderedDict[FlowKey, None] = OrderedDict()
        # Embryos per remote address (addresses with none are removed, so
        # this is never larger than the embryos).
        self._per_address: dict[bytes, int] = {}
        self.early_segments = 0
        self.early_bytes = 0

    # -- segments of no adopted flow -------------------------------------

    def receive_unadopted(self, key: FlowKey, segment: Segment, now: float) -> bytes | None:
        """
        Take a segment whose 4-tuple has no adopted flow.

        @return: a packet to send in answer, or L{None}.  A client answers
            the SYN-ACK with the handshake's last ACK itself, because the
            silencing rule drops the kernel's.
        """
        if key in self.handed_off:
            return None
        if key in self.time_wait:
            if self.role is Role.SERVER and segment.flags & (SYN | ACK) == SYN:
                # A new connection on the 4-tuple (a client whose kernel
                # gave the port out again): as a kernel's TIME-WAIT socket
                # does, take its SYN; the old flow's late segments then meet
                # the new handshake's numbers, not a flow.
                self.forget_time_wait(key)
            else:
                self.drops["time-wait"] += 1
                numbers = self._fin_numbers.get(key)
                if numbers is not None and segment.flags & FIN and segment.seq == numbers[1]:
                    # Only the FIN at the very number expected: an off-path
                    # attacker cannot make this side answer by guessing.
                    end = (segment.seq + len(segment.payload) + 1) & _MASK
                    del self._fin_numbers[key]
                    return _reply(key, numbers[0], end, ACK, self.handshake_window)
                return None
        tsval = None
        if segment.options:
            try:
                tsval = timestamp_value(segment.options)
            except MalformedOptions:
                self.drops["bad-options"] += 1
                return None
        flags = segment.flags
        embryo = self.embryos.get(key)
        if flags & RST:
            if embryo is None:
                self.drops["orphan"] += 1
            elif self._offset(embryo, segment) < Flow.controlWindowMaximum:
                self._remove(key)
                self.drops["orphan"] += 1
            else:
                # RFC 5961 in spirit: only a RST near the peer's numbers
                # ends a handshake, so a blind one cannot.
                self.drops["bad-rst"] += 1
            return None
        if self.role is Role.SERVER:
            if flags & SYN:
                if flags & ACK:
                    self.drops["orphan"] += 1
                    return None
                if embryo is not None:
                    if segment.seq != embryo.remote_isn:
                        # The kernel keeps the first SYN's numbers (and
                        # answers another with a challenge ACK): so does
                        # the table, or a blind SYN could change them.
                        self.drops["bad-syn"] += 1
                        return None
                else:
                    embryo = self._embryo(key, now)
                    if embryo is None:
                        return None
                    embryo.remote_isn = segment.seq
                embryo.peer_window, embryo.peer_window_scaled = segment.window, False
                embryo.peer_tsval = tsval
                return None
        else:
            if flags & SYN:
                if not flags & ACK or (key.local_port, key.remote_addr, key.remote_port) not in self.expected:
                    self.drops["orphan"] += 1
                    return None
                if embryo is None:
                    embryo = self._embryo(key, now)
                elif embryo.remote_isn is not None and (
                    segment.seq != embryo.remote_isn or segment.ack != (embryo.local_isn or 0) + 1 & _MASK
                ):
                    # The first SYN-ACK's numbers stand, as for the kernel
                    # (which answers another with a challenge ACK): a forged
                    # one must not change them before adoption.
                    self.drops["bad-syn"] += 1
                    return None
                if embryo is not None:
                    embryo.remote_isn = segment.seq
                    embryo.local_isn = (segment.ack - 1) & _MASK
                    embryo.peer_window, embryo.peer_window_scaled = segment.window, False
                    embryo.peer_tsval = tsval
                    self._half_open.pop(key, None)
                # The handshake's last ACK, as the kernel would have sent it:
                # with timestamps when the SYN-ACK had them (the SYN-ACK
                # echoes this side's latest TSval; the peer's is echoed).
                stamps = parse_options(segment.options).timestamp if tsval is not None else None
                options = b"" if stamps is None else timestamp_option(stamps[1], stamps[0])
                return _reply(key, segment.ack, (segment.seq + 1) & _MASK, ACK, self.handshake_window, options)
        if embryo is None:
            self.drops["orphan"] += 1
            if self.role is Role.SERVER and flags & ACK and key not in self.awaiting_adoption and self._may_reset(now):
                # RFC 793: a RST for a segment with ACK takes its ack as seq,
                # which is exactly what the peer's flow expects next; it
                # acknowledges the segment too, as the peer's flow wants of
                # any RST (see Flow.receive).
                end = segment.seq + len(segment.payload) + (1 if flags & FIN else 0)
                return _reply(key, segment.ack, end & _MASK, RST | ACK, 0)
            return None
        if self._offset(embryo, segment) >= self.limits.embryo_window:
            self.drops["embryo-out-of-window"] += 1
            return None
        if tsval is not None:
            embryo.peer_tsval = tsval
        if flags & ACK:
            embryo.peer_window, embryo.peer_window_scaled = segment.window, True
            if embryo.local_isn is None:
                embryo.local_isn = (segment.ack - 1) & _MASK
                self._half_open.pop(key, None)
                if len(self.completed) < self.limits.embryos:
                    self.completed.append(key)
        if segment.payload or flags & FIN:
            limits = self.limits
            size = len(segment.payload)
            if (
                len(embryo.early) >= limits.early_segments
                or embryo.early_bytes + size > limits.early_bytes
                or self.early_segments >= limits.early_total_segments
                or self.early_bytes + size > limits.early_total_bytes
            ):
                self.drops["early-overflow"] += 1
            else:
                embryo.early.append(segment)
                embryo.early_bytes += size
                self.early_segments += 1
                self.early_bytes += size
        return None

    @staticmethod
    def _offset(embryo: Embryo, segment: Segment) -> int:
        """
        How far C{segment}'s sequence number lies after the peer's first
        byte (its ISN plus one), modulo 2**32.
        """
        if embryo.remote_isn is None:
            return 0
        return (segment.seq - embryo.remote_isn - 1) & _MASK

    def _embryo(self, key: FlowKey, now: float) -> Embryo | None:
        """
        A new embryo for C{key} (which has none), or L{None} when the
        limits refuse one.
        """
        limits = self.limits
        if limits.embryos <= 0:
            return None
        address = key.remote_addr
        per_address = self._per_address
        if per_address.get(address, 0) >= limits.embryos_per_address:
            self.drops["embryo-address-limit"] += 1
            return None
        embryos = self.embryos
        while len(embryos) >= limits.embryos:
            half_open = self._half_open
            victim = next(iter(half_open)) if half_open else next(iter(embryos))
            self._remove(victim)
            self.drops["embryo-evicted"] += 1
        embryo = embryos[key] = Embryo(created=now)
        self._half_open[key] = None
        per_address[address] = per_address.get(address, 0) + 1
        return embryo

    def _remove(self, key: FlowKey) -> Embryo:
        """
        Remove the embryo of C{key}, keeping every count in step.
        """
        embryo = self.embryos.pop(key)
        self._half_open.pop(key, None)
        address = key.remote_addr
        left = self._per_address[address] - 1
        if left:
            self._per_address[address] = left
        else:
            del self._per_address[address]
        self.early_segments -= len(embryo.early)
        self.early_bytes -= embryo.early_bytes
        return embryo

    def _may_reset(self, now: float) -> bool:
        rate = self.limits.orphan_resets
        if rate <= 0:
            return False
        self._reset_tokens = min(rate, self._reset_tokens + (now - self._reset_time) * rate)
        self._reset_time = now
        if self._reset_tokens < 1:
            self.drops["orphan-reset-limited"] += 1
            return False
        self._reset_tokens -= 1
        return True

    # -- adoption --------------------------------------------------------

    def expect(self, local_port: int, remote_addr: bytes, remote_port: int) -> None:
        """
        Client side: a handshake from C{local_port} to the remote address
        is about to start; its SYN-ACK is to be kept.
        """
        self.expected.add((local_port, remote_addr, remote_port))

    def unexpect(self, local_port: int, remote_addr: bytes, remote_port: int) -> None:
        """
        Client side: the handshake ended (adopted or failed).
        """
        self.expected.discard((local_port, remote_addr, remote_port))

    def handshake_known(self, key: FlowKey) -> bool:
        """
        Whether both initial sequence numbers of C{key} have been seen.
        """
        embryo = self.embryos.get(key)
        return embryo is not None and embryo.remote_isn is not None and embryo.local_isn is not None

    def adopt(
        self,
        key: FlowKey,
        mss: int,
        now: float,
        receive_window: int | None = None,
        idle_timeout: float = 0.0,
        keepalive_interval: float = 0.0,
        peer_wscale: int = 0,
        receive_wscale: int = 0,
    ) -> tuple[Flow, list[Segment]]:
        """
        Make the flow of a connection the kernel has accepted or connected.

        @param receive_window: this side's receive window in bytes (default
            L{Flow.receiveWindow}).
        @param peer_wscale: the peer's window scale shift (0 when the
            handshake did not agree on scaling).
        @param receive_wscale: this side's window scale shift.
        @return: the flow and the data segments that arrived before it was
            adopted, in arrival order, for the caller to feed to the flow
            once its owner is ready.
        @raise KeyError: when the handshake was not seen (see
            L{handshake_known}).
        """
        embryo = self.embryos[key]
        if embryo.remote_isn is None or embryo.local_isn is None:
            raise KeyError(key)
        self._remove(key)
        self.time_wait.pop(key, None)
        self._fin_numbers.pop(key, None)
        flow = Flow.from_handshake(
            key,
            embryo.local_isn,
            embryo.remote_isn,
            mss,
            now,
            receive_window=receive_window,
            idle_timeout=idle_timeout,
            keepalive_interval=keepalive_interval,
            peer_window=embryo.peer_window << (peer_wscale if embryo.peer_window_scaled else 0),
            peer_wscale=peer_wscale,
            receive_wscale=receive_wscale,
            peer_tsval=embryo.peer_tsval,
        )
        self.flows[key] = flow
        return flow, embryo.early

    def retire(self, flow: Flow, now: float) -> None:
        """
        Remove an ended flow; its 4-tuple enters time-wait.
        """
        key = flow.key
        if self.flows.get(key) is flow:
            del self.flows[key]
        if not self._enter_time_wait(key, now):
            return
        if flow.end_reason is EndReason.LOCAL_FIN and not flow.fin_received:
            self._fin_numbers[key] = (flow.snd_max, flow.rcv_high)
        else:
            self._fin_numbers.pop(key, None)

    def hand_off(self, key: FlowKey) -> None:
        """
        Forget a 4-tuple whose connection the kernel takes back (its flow,
        or a handshake never adopted): until L{release_hand_off}, its
        segments are the kernel's, and this table neither answers them
        (its orphan RST would kill the connection) nor keeps a time-wait
        entry (whose FIN answer would speak over the kernel).
        """
        self.flows.pop(key, None)
        if key in self.embryos:
            self._remove(key)
        self.awaiting_adoption.discard(key)
        self.forget_time_wait(key)
        self.handed_off.add(key)

    def release_hand_off(self, key: FlowKey, now: float) -> None:
        """
        The kernel socket of a handed-off connection is closed: its
        4-tuple spends time-wait here like any ended flow's, so that its
        late segments are still not answered with the orphan RST.
        """
        if key not in self.handed_off:
            return
        self.handed_off.discard(key)
        self._enter_time_wait(key, now)

    def _enter_time_wait(self, key: FlowKey, now: float) -> bool:
        """
        Start (or restart) C{key}'s time-wait, evicting the oldest entry
        when full.

        @return: whether C{key} is in time-wait now (not when the limit is
            zero).
        """
        time_wait = self.time_wait
        if key in time_wait:
            time_wait.move_to_end(key)
        else:
            while time_wait and len(time_wait) >= self.limits.time_waits:
                evicted, _ = time_wait.popitem(last=False)
                self._fin_numbers.pop(evicted, None)
                self.drops["time-wait-evicted"] += 1
            if self.limits.time_waits <= 0:
                return False
        time_wait[key] = now + self.limits.time_wait
        return True

    def forget_time_wait(self, key: FlowKey) -> None:
        """
        End C{key}'s time-wait now (a client's local port was given back
        to the kernel, which may use the 4-tuple again at once).
        """
        self.time_wait.pop(key, None)
        self._fin_numbers.pop(key, None)

    @property
    def awaiting_fin(self) -> bool:
        """
        Whether a flow this side closed with FIN still waits for the peer's
        (its time-wait entry would answer it).
        """
        return bool(self._fin_numbers)

    # -- timers ----------------------------------------------------------

    def expire(self, now: float, slices: int = 1) -> list[Flow]:
        """
        Drop stale embryos and time-wait entries; run every flow's timers,
        or with C{slices} > 1 those of the next 1/C{slices} of the flows in
        rotation, so that each flow's timers run once every C{slices} calls
        and a table of 10,000 flows does not stall the loop for all of them
        at once.  The flows whose timers queued packets are left in
        L{due}.

        Both dictionaries are in order of expiry (every entry gets the same
        lifetime, from a clock that does not go back), so this stops at the
        first entry still alive.

        @return: the flows that expired for idleness (already closed; the
            caller tells their owners and retires them).
        """
        lifetime = self.limits.embryo_lifetime
        embryos = self.embryos
        while embryos:
            key, embryo = next(iter(embryos.items()))
            if now - embryo.created < lifetime:
                break
            self._remove(key)
            self.drops["embryo-expired"] += 1
        time_wait = self.time_wait
        while time_wait:
            key, until = next(iter(time_wait.items()))
            if until > now:
                break
            del time_wait[key]
            self._fin_numbers.pop(key, None)
        polled = self._rotation.take(self.flows.values, slices)
        flows = self.flows
        expired = []
        due = self.due = []
        for flow in polled:
            # A flow that left the table since the rotation began is not
            # this table's to poll any more.
            if flows.get(flow.key) is not flow:
                continue
            if flow.poll(now):
                expired.append(flow)
            elif flow.pending:
                due.append(flow)
        return expired

    def __len__(self) -> int:
        return len(self.flows)


def _reply(key: FlowKey, seq: int, ack: int, flags: int, window: int, options: bytes = b"") -> bytes:
    """
    A bare segment from this side of C{key} to its peer (the table's own
    answers, sent before or without a flow).
    """
    return build_packet(
        key.local_addr, key.remote_addr, key.local_port, key.remote_port, seq, ack, flags, window, options=options
    )
