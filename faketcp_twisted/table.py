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
"""

from __future__ import annotations

import enum
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

from .flow import WINDOW_FIELD, Flow, FlowKey
from .segment import ACK, FIN, RST, SYN, Segment, build_packet


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
    """

    created: float
    remote_isn: int | None = None
    local_isn: int | None = None
    early: list[Segment] = field(default_factory=list)
    early_bytes: int = 0
    peer_window: int = 0xFFFF
    peer_window_scaled: bool = False


@dataclass(slots=True)
class TableLimits:
    """
    Bounds on what the table keeps for flows nobody owns yet or any more.

    @ivar embryos: most embryonic entries kept at once (oldest evicted).
    @ivar embryo_lifetime: seconds an embryonic entry waits for adoption.
    @ivar early_segments: most early data segments kept per entry.
    @ivar early_bytes: most early payload bytes kept per entry.
    @ivar time_wait: seconds a closed flow's 4-tuple keeps dropping late
        segments, so they never reach a new connection.
    @ivar time_waits: most time-wait entries kept at once.
    """

    embryos: int = 1024
    embryo_lifetime: float = 10.0
    early_segments: int = 128
    early_bytes: int = 256 * 1024
    time_wait: float = 30.0
    time_waits: int = 4096


class FlowTable:
    """
    Flows of one capture, keyed by the full 4-tuple
    (local address, local port, remote address, remote port).

    @ivar flows: the adopted flows.
    @ivar drops: segments dropped, by reason.
    """

    def __init__(self, role: Role, limits: TableLimits | None = None) -> None:
        self.role = role
        self.limits = limits or TableLimits()
        self.flows: dict[FlowKey, Flow] = {}
        self.embryos: OrderedDict[FlowKey, Embryo] = OrderedDict()
        self.time_wait: OrderedDict[FlowKey, float] = OrderedDict()
        # Client side: handshakes started, by (local port, remote address,
        # remote port); the local address is only known once connected.
        self.expected: set[tuple[int, bytes, int]] = set()
        self.drops: Counter[str] = Counter()
        #: Keys whose handshake became fully known since the owner last
        #: looked: the owner may adopt them at once, before more of their
        #: data piles up as early segments.
        self.completed: list[FlowKey] = []

    # -- segments of no adopted flow -------------------------------------

    def receive_unadopted(self, key: FlowKey, segment: Segment, now: float) -> bytes | None:
        """
        Take a segment whose 4-tuple has no adopted flow.

        @return: a packet to send in answer, or L{None}.  A client answers
            the SYN-ACK with the handshake's last ACK itself, because the
            silencing rule drops the kernel's.
        """
        if key in self.time_wait:
            self.drops["time-wait"] += 1
            return None
        flags = segment.flags
        embryo = self.embryos.get(key)
        if flags & RST:
            if embryo is not None:
                del self.embryos[key]
            self.drops["orphan"] += 1
            return None
        if self.role is Role.SERVER:
            if flags & SYN:
                if flags & ACK:
                    self.drops["orphan"] += 1
                    return None
                embryo = self._embryo(key, now)
                embryo.remote_isn = segment.seq
                embryo.peer_window, embryo.peer_window_scaled = segment.window, False
                return None
        else:
            if flags & SYN:
                if not flags & ACK or (key.local_port, key.remote_addr, key.remote_port) not in self.expected:
                    self.drops["orphan"] += 1
                    return None
                embryo = self._embryo(key, now)
                embryo.remote_isn = segment.seq
                embryo.local_isn = (segment.ack - 1) & 0xFFFFFFFF
                embryo.peer_window, embryo.peer_window_scaled = segment.window, False
                return build_packet(
                    key.local_addr,
                    key.remote_addr,
                    key.local_port,
                    key.remote_port,
                    segment.ack,
                    (segment.seq + 1) & 0xFFFFFFFF,
                    ACK,
                    WINDOW_FIELD,
                )
        if embryo is None:
            self.drops["orphan"] += 1
            return None
        if flags & ACK:
            embryo.peer_window, embryo.peer_window_scaled = segment.window, True
        if flags & ACK and embryo.local_isn is None:
            embryo.local_isn = (segment.ack - 1) & 0xFFFFFFFF
            if embryo.remote_isn is not None:
                self.completed.append(key)
        if segment.payload and segment.options:
            # A kernel's data (see FlowStats.rx_foreign), not a fake segment.
            self.drops["foreign"] += 1
        elif segment.payload or flags & FIN:
            limits = self.limits
            if (
                len(embryo.early) >= limits.early_segments
                or embryo.early_bytes + len(segment.payload) > limits.early_bytes
            ):
                self.drops["early-overflow"] += 1
            else:
                embryo.early.append(segment)
                embryo.early_bytes += len(segment.payload)
        return None

    def _embryo(self, key: FlowKey, now: float) -> Embryo:
        embryo = self.embryos.get(key)
        if embryo is None:
            while self.embryos and len(self.embryos) >= self.limits.embryos:
                self.embryos.popitem(last=False)
                self.drops["embryo-evicted"] += 1
            embryo = Embryo(created=now)
            if self.limits.embryos > 0:
                self.embryos[key] = embryo
        return embryo

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
        receive_window: int = WINDOW_FIELD,
        idle_timeout: float = 0.0,
        keepalive_interval: float = 0.0,
        peer_wscale: int = 0,
    ) -> tuple[Flow, list[Segment]]:
        """
        Make the flow of a connection the kernel has accepted or connected.

        @param peer_wscale: the peer's window scale shift (0 when the
            handshake did not agree on scaling).
        @return: the flow and the data segments that arrived before it was
            adopted, in arrival order, for the caller to feed to the flow
            once its owner is ready.
        @raise KeyError: when the handshake was not seen (see
            L{handshake_known}).
        """
        embryo = self.embryos[key]
        if embryo.remote_isn is None or embryo.local_isn is None:
            raise KeyError(key)
        del self.embryos[key]
        self.time_wait.pop(key, None)
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
        time_wait = self.time_wait
        if key in time_wait:
            time_wait.move_to_end(key)
        else:
            while time_wait and len(time_wait) >= self.limits.time_waits:
                time_wait.popitem(last=False)
            if self.limits.time_waits <= 0:
                return
        time_wait[key] = now + self.limits.time_wait

    # -- timers ----------------------------------------------------------

    def expire(self, now: float) -> list[Flow]:
        """
        Drop stale embryos and time-wait entries; run every flow's timers.

        @return: the flows that expired for idleness (already closed; the
            caller tells their owners and retires them).
        """
        lifetime = self.limits.embryo_lifetime
        while self.embryos:
            key, embryo = next(iter(self.embryos.items()))
            if now - embryo.created < lifetime:
                break
            del self.embryos[key]
            self.drops["embryo-expired"] += 1
        while self.time_wait:
            key, until = next(iter(self.time_wait.items()))
            if until > now:
                break
            del self.time_wait[key]
        return [flow for flow in list(self.flows.values()) if flow.poll(now)]

    def __len__(self) -> int:
        return len(self.flows)
