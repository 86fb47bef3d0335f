# -*- test-case-name: tests.test_integration -*-
"""
The demultiplexer: the one event-loop reader of a capture, which parses
each captured packet, finds its flow by the full 4-tuple and hands the
segment to that flow's connection.

A listening port has one per address family; client connections to the
same remote port share one.  It also owns the send side (a raw socket with
a bounded backlog when the kernel's send buffer is full), the timer that
expires flows, and the kernel sockets of flows in time-wait.

Packets cross the kernel boundary in batches, not one syscall each: the
capture is read up to 64 packets per C{recvmmsg} (with the C fast path),
and what the flows send is queued and handed to the kernel with one
C{sendmmsg} at the end of each read batch, at the end of each loop turn
in which packets were sent outside a read batch in a burst (a lone packet
goes at once), or whenever L{Demultiplexer.flushThreshold} packets are
waiting.  A packet thus leaves within the turn that made it: batching costs
no latency beyond the rest of that turn's work, and a lone packet none.
Code that makes a batch of packets itself (the relay, for a batch of
datagrams read from UDP) says so with L{coalesced_sends}: what is sent
within it goes out at its end, one C{sendmmsg} per capture, with no call
scheduled on the loop.

The demultiplexer routes each segment to a L{Connection}, and is itself
the C{Demux} of its connections: it knows them by those contracts alone
(see L{faketcp_twisted.engine.contracts}).
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from ..core.bpf import BPF_K, BPF_RET, attach_filter, stmt
from ..core.flow import EndReason, Flow, FlowKey
from ..core.table import FlowTable, Role
from ..io import fastpath, kernel
from ..io.capture import Capture, sockaddr
from . import shutdown
from .contracts import Connection, Holder
from .loop import EventLoop, Timer
from .options import FlowOptions

__all__ = ["Demultiplexer", "Holder", "coalesced_sends", "mute"]

log = logging.getLogger(__name__)

_monotonic = time.monotonic


class _CoalescedSends(threading.local):
    """
    The scope of L{coalesced_sends}: a depth (scopes nest) and the
    holders of packets for the end of the outermost one.  Per thread: a
    reactor and an asyncio loop in two threads each have their own.

    @ivar depth: how many scopes are open; within one when non-zero.
    @ivar holding: the holders to flush when the outermost scope ends
        (see L{hold}).
    """

    def __init__(self) -> None:
        self.depth = 0
        self.holding: list[Holder] = []
        self._held: set[int] = set()

    def hold(self, holder: Holder) -> None:
        """
        Have C{holder.flush()} called when the outermost scope ends: once,
        however often it is held within the scope.
        """
        key = id(holder)
        if key not in self._held:
            self._held.add(key)
            self.holding.append(holder)

    def __enter__(self) -> None:
        self.depth += 1

    def __exit__(self, *exc_info: object) -> None:
        self.depth -= 1
        if self.depth:
            return
        holding = self.holding
        while holding:
            holder = holding.pop()
            self._held.discard(id(holder))
            holder.flush()


#: Within C{with coalesced_sends:}, the packets given to a demultiplexer are
#: held and sent when the block ends (or whenever
#: L{Demultiplexer.flushThreshold} are waiting), not one by one; so are
#: the datagrams a L{udp.DatagramSocket} writes.  Used around a batch of
#: work that sends: a capture's read batch, a batch of datagrams read from
#: a UDP socket.
coalesced_sends = _CoalescedSends()


class Demultiplexer:
    """
    Reads one capture for every flow of a port (or of a remote port): the
    C{Demux} of those flows' connections (see
    L{faketcp_twisted.engine.contracts}).

    @ivar table: the flow table.
    @ivar connections: the connection of each adopted flow.
    @ivar drops: packets dropped, by reason.
    @ivar congested: whether the send backlog is past L{backlogHighWater}.
    """

    #: Most packets read per reactor wake-up, so one busy capture cannot
    #: starve the rest of the reactor (as twisted's udp.Port does).
    maxPacketsPerRead = 256
    #: Seconds between runs of the flow timers.
    tickInterval = 1.0
    #: Flows whose timers one tick may run at once; beyond it the flows
    #: are polled in slices on more frequent ticks (at most ten a
    #: tickInterval), each flow still once a tickInterval, so 10,000 idle
    #: flows do not stall an active one.
    flowsPerTick = 1000
    #: Flows whose timer packets (keepalives, mostly) one tick sends, at
    #: least: flows opened in a burst keep their keepalives in step, and a
    #: thousand of them at once stalled an active flow for 10-25 ms.  The
    #: rest wait for the next ticks (a quarter of the backlog goes per tick
    #: when that is more, so it never grows).
    timerSendsPerTick = 200
    #: Seconds the capture stays open after a flow ended with FIN, so the
    #: peer's answering FIN meets the flow's kernel socket (and is dropped
    #: in time-wait) rather than a closed port's unsilenced RST.
    lingerAfterClose = 1.5
    #: Most kernel sockets of ended flows a server's capture holds open
    #: for time-wait (so the kernel does not answer a late segment of the
    #: 4-tuple with an unsilenced RST); past it the oldest are closed.
    #: Only flows that may still hear from their peer are held: one that
    #: ended with a RST either way, or whose FIN exchange is complete, is
    #: closed at once.  The 4-tuple's time-wait entry in the flow table (no
    #: descriptor) outlives its socket and still drops the late segments.
    #: The same holds for a client's capture, whose sockets also keep the
    #: kernel from reusing their local ports meanwhile.
    timeWaitSockets = 256
    #: Most packets waiting for room in the send buffer; past it packets
    #: are dropped, as a full UDP socket would.
    backlogLimit = 4096
    #: Whether what a kernel socket queued before it was muted stays
    #: queued (a listener with a fallback: should the connection go back
    #: to the kernel, those are its first bytes) instead of being read and
    #: dropped at adoption.
    keepKernelQueue = False
    #: Backlog length at which streaming producers are paused.
    backlogHighWater = 1024
    #: Packets queued within one turn that are sent at once, without
    #: waiting for the turn to end: one C{sendmmsg} batch.
    flushThreshold = 64
    #: Seconds between two packets sent outside a read batch below which
    #: they are taken for a burst, and the rest of the turn's packets are
    #: sent together at its end (see L{transmit}).
    burstInterval = 50e-6

    def __init__(
        self,
        loop: EventLoop,
        family: int,
        port: int,
        role: Role,
        options: FlowOptions,
    ) -> None:
        self.loop = loop
        self.family = family
        self.port = port
        self.role = role
        self.options = options
        self.capture = Capture(family, port, "dst" if role is Role.SERVER else "src")
        self.table = FlowTable(role, options.limits, kernel.handshake_window_field())
        self.connections: dict[FlowKey, Connection] = {}
        self.drops: Counter[str] = self.table.drops
        # Packets to send, oldest first; those before _head are sent.  Not
        # blocked (_writing false), it holds the current turn's packets, up
        # to flushThreshold; blocked, also those waiting for room.
        self._queue: list[fastpath.Outgoing] = []
        self._head = 0
        self._writing = False
        self._flushCall: Timer | None = None
        self._lastSent = 0.0
        #: Whether this demultiplexer is held by L{coalesced_sends} (so
        #: transmit need not ask it again for every packet of a batch).
        self._held = False
        self.congested = False
        #: Flows with timer packets to send, oldest first (see _tick).
        self._due: deque[Flow] = deque()
        #: Connections whose kernel socket refused the muting filter.
        self._unmuted: set[Connection] = set()
        self._closing_sockets: deque[tuple[float, FlowKey, socket.socket, Callable[[], None] | None]] = deque()
        #: Called when a flow left, so the owner can close an unused capture.
        self.on_released: Callable[[], None] | None = None
        #: Called when the capture saw a handshake complete, so the owner
        #: can accept (and adopt) the connection within the same batch.
        self.on_handshake: Callable[[], None] | None = None
        self.reading = False
        self._waiters: list[Callable[[], bool]] = []
        self._addresses: dict[bytes, tuple[Any, ...]] = {}
        self._closed = False
        self._closing = False
        self._lingering_until = 0.0
        shutdown.track_capture(self)
        self._fd = self.capture.fileno()
        loop.add_reader(self._fd, self.doRead)
        self._timer: Timer = loop.call_later(self.tickInterval, self._tick)

    @property
    def closed(self) -> bool:
        """
        Whether the capture is closed.
        """
        return self._closed

    def doRead(self) -> None:
        """
        Read a batch of captured packets and hand each to its flow, then
        send what the batch made the flows send.
        """
        if self._closed or self.reading:
            return
        self.reading = True
        try:
            # What the batch makes the flows send leaves at its end, and so
            # does what it makes others send (a relay's datagrams toward
            # UDP, another capture's segments).
            with coalesced_sends:
                self._readBatch()
        finally:
            self.reading = False
        if self._waiters:
            self._waiters = [waiter for waiter in self._waiters if not waiter()]
            self.flush()

    def _readBatch(self) -> None:
        now = self.loop.seconds()
        flows = self.table.flows
        connections = self.connections
        table = self.table
        drops = self.drops
        segments, keys, malformed = self.capture.receive(self.maxPacketsPerRead)
        for reason in malformed:
            drops[reason] += 1
        for segment, key in zip(segments, keys, strict=True):
            if self._closed:
                # The capture's last flow ended on the previous segment and
                # its owner closed the capture: nothing is left to feed.
                return
            if key in flows:
                connections[key].segment_received(segment, now)
                continue
            reply = table.receive_unadopted(key, segment, now)
            if reply is not None:
                self.transmit(reply, self.sockaddr(segment.src))
            if table.completed:
                table.completed.clear()
                if self.on_handshake is not None:
                    self.on_handshake()
                    now = self.loop.seconds()

    def doWrite(self) -> None:
        """
        Send what waited for room in the send buffer.
        """
        self.flush()

    # -- sending ---------------------------------------------------------

    def sockaddr(self, packed: bytes) -> tuple[Any, ...]:
        """
        The raw-socket destination for a packed remote address (cached).
        """
        address = self._addresses.get(packed)
        if address is None:
            if len(self._addresses) > 65536:
                self._addresses.clear()
            address = self._addresses[packed] = sockaddr(self.family, packed)
        return address

    def transmit(self, packet: bytes, address: tuple[Any, ...]) -> None:
        """
        Queue one packet to be sent within this turn of the loop, behind
        packets still waiting for room in the send buffer.

        Within a read batch it goes out with the others at the end of the
        batch; otherwise it goes at once, unless it is part of a burst,
        whose packets go together at the end of the turn; and always at
        once when L{flushThreshold} packets are waiting (see the module
        docstring).
        """
        if self._closed:
            return
        queue = self._queue
        waiting = len(queue) - self._head
        if waiting >= self.backlogLimit:
            self.drops["send-backlog-full"] += 1
            return
        queue.append((packet, address))
        waiting += 1
        if self._writing:
            # Blocked: doWrite sends it once the kernel has room.
            if waiting >= self.backlogHighWater:
                self._setCongested(True)
        elif waiting >= self.flushThreshold:
            self.flush()
        elif coalesced_sends.depth:
            # Within a read batch (this capture's or another's) or a batch
            # of the relay's: sent when it ends.
            if not self._held:
                self._held = True
                coalesced_sends.hold(self)
        elif self._flushCall is None:
            # Outside a read batch, and no burst under way: the packet goes
            # at once, as a lone packet (a reply, a FIN) should.  Packets
            # coming faster than burstInterval apart are a burst (a loop
            # turn that reads many datagrams and writes each, say): the
            # rest of the turn's packets then wait for one call, which
            # sends them together when the loop comes round.  Scheduling
            # that call costs more than a syscall, so lone packets spared.
            now = _monotonic()
            if now - self._lastSent < self.burstInterval:
                self._flushCall = self.loop.call_later(0, self._flushTurn)
            self._lastSent = now
            self.flush()

    def _flushTurn(self) -> None:
        self._flushCall = None
        self.flush()

    def flush(self) -> None:
        """
        Hand the queued packets to the kernel, as many as its send buffer
        takes; the rest wait for room (L{doWrite}).
        """
        self._held = False
        queue = self._queue
        head = self._head
        if head >= len(queue) or self._closed:
            return
        sent, errors = self.capture.send_batch(queue, head)
        for code in errors:
            self._sendFailed(code)
        if sent >= len(queue):
            queue.clear()
            self._head = 0
            if self._writing:
                self._writing = False
                self.loop.remove_writer(self._fd)
                self._setCongested(False)
            return
        # The send buffer is full.  Drop the sent head of the list now and
        # then, not on every partial send (each drop moves the whole rest).
        if sent >= 1024 or sent * 2 >= len(queue):
            del queue[:sent]
            sent = 0
        self._head = sent
        if not self._writing:
            self._writing = True
            self.loop.add_writer(self._fd, self.doWrite)
        if len(queue) - sent >= self.backlogHighWater:
            self._setCongested(True)

    @property
    def backlog_bytes(self) -> int:
        """
        Bytes of the packets waiting for room in the send buffer (a turn's
        packets not yet flushed are not waiting for room, so not counted).
        """
        if not self._writing:
            return 0
        queue = self._queue
        return sum(len(queue[index][0]) for index in range(self._head, len(queue)))

    def _sendFailed(self, code: int) -> None:
        reason = errno.errorcode.get(code, "send-error").lower()
        self.drops[f"send-{reason}"] += 1

    def _setCongested(self, congested: bool) -> None:
        if congested is self.congested:
            return
        self.congested = congested
        for connection in list(self.connections.values()):
            connection.congestion_changed(congested)

    def count_drop(self, reason: str, count: int = 1) -> None:
        """
        Count C{count} datagrams or segments dropped for C{reason}.
        """
        self.drops[reason] += count

    # -- flows -----------------------------------------------------------

    def attach(self, connection: Connection) -> None:
        """
        Route the segments of C{connection}'s flow to it, and stop its
        kernel socket from taking any more segments (see L{mute}).
        """
        self.connections[connection.flow.key] = connection
        # What the kernel queued before the filter went on is read now;
        # afterwards nothing can queue on a muted socket, so only sockets
        # that refused the filter are drained on every tick (a drain is a
        # syscall: 10,000 of them a second would stall the loop).  Where
        # the connection may yet go back to the kernel (L{keepKernelQueue})
        # those bytes are the stream's first, so they stay queued.
        if mute(connection.socket):
            if not self.keepKernelQueue:
                kernel.drain(connection.socket)
        else:
            self._unmuted.add(connection)

    def hand_off(self, connection: Connection) -> socket.socket:
        """
        Stop routing to C{connection} and give its kernel socket to the
        caller, still silenced: its connection goes back to the kernel (see
        L{FlowTable.hand_off}).  Call L{release_hand_off} once the socket
        is closed.
        """
        key = connection.flow.key
        if self.connections.get(key) is connection:
            del self.connections[key]
        self._unmuted.discard(connection)
        self.table.hand_off(key)
        return connection.socket

    def hand_off_unadopted(self, key: FlowKey) -> None:
        """
        The kernel keeps a connection that was never adopted (see
        L{FlowTable.hand_off}); its owner has its socket already.
        """
        self.table.hand_off(key)

    def release_hand_off(self, key: FlowKey) -> None:
        """
        The kernel socket of a handed-off connection is closed (see
        L{FlowTable.release_hand_off}).
        """
        self.table.release_hand_off(key, self.loop.seconds())

    def detach(self, connection: Connection) -> None:
        """
        Stop routing to C{connection}; its flow enters time-wait.

        The kernel socket is closed at once when nothing more can come
        from the peer (see L{settled}); otherwise it is held until
        time-wait ends, at most L{timeWaitSockets} of them (the oldest are
        closed first).  The flow table's time-wait entry drops the
        4-tuple's late segments, a server's for the whole time-wait; a
        client's goes with its socket (see L{_closeKernelSocket}).
        """
        flow = connection.flow
        key = flow.key
        if self.connections.get(key) is connection:
            del self.connections[key]
        self._unmuted.discard(connection)
        now = self.loop.seconds()
        self.table.retire(flow, now)
        if settled(flow):
            # Abortive, while the silencing rule is in place: the kernel's
            # own RST is marked and dropped.
            self._closeKernelSocket(key, connection.socket, connection.on_socket_closed)
        else:
            closing = self._closing_sockets
            closing.append((now + self.table.limits.time_wait, key, connection.socket, connection.on_socket_closed))
            while len(closing) > max(self.timeWaitSockets, 0):
                self._closeKernelSocket(*closing.popleft()[1:])
        if flow.end_reason not in (EndReason.PEER_RST, EndReason.LOCAL_RST):
            # The peer may still answer a FIN with its own: until then a
            # closed capture would leave the kernel to answer it with an
            # unsilenced RST (the 4-tuple would have no socket any more).
            self._lingering_until = max(self._lingering_until, now + self.lingerAfterClose)
        if self.on_released is not None:
            self.on_released()

    @property
    def quiescent(self) -> bool:
        """
        Whether closing the capture now is safe: no flow that ended with a
        FIN in the last L{lingerAfterClose} seconds still waits for its
        peer's answer.
        """
        return not self.table.awaiting_fin or self.loop.seconds() >= self._lingering_until

    def wait_for(self, waiter: Callable[[], bool]) -> None:
        """
        Call C{waiter} after each batch of packets until it returns true
        (used to finish adoptions whose handshake the capture has not read
        yet).
        """
        self._waiters.append(waiter)

    def _tick(self) -> None:
        now = self.loop.seconds()
        table = self.table
        slices = min(10, 1 + len(table.flows) // self.flowsPerTick)
        self._timer = self.loop.call_later(self.tickInterval / slices, self._tick)
        for flow in table.expire(now, slices):
            connection = self.connections.get(flow.key)
            if connection is not None:
                connection.expired()
        # Only timers queue packets outside a read batch (a segment's
        # answers are sent as it is taken); a tick's keepalives leave
        # together, a bounded number per tick.
        due = self._due
        due.extend(table.due)
        with coalesced_sends:
            for _ in range(min(len(due), max(self.timerSendsPerTick, len(due) // 4))):
                flow = due.popleft()
                connection = self.connections.get(flow.key)
                if connection is not None and flow.pending:
                    connection.flush_pending()
        for connection in self._unmuted:
            kernel.drain(connection.socket)
        closing = self._closing_sockets
        while closing and closing[0][0] <= now:
            self._closeKernelSocket(*closing.popleft()[1:])
        if self._waiters:
            self._waiters = [waiter for waiter in self._waiters if not waiter()]
        self.flush()
        if not self.connections and closing and self.on_released is not None:
            # An owner waiting for the capture to be quiescent looks again.
            self.on_released()

    def abort_all(self) -> None:
        """
        Reset every connection of the capture (its owner is shutting down:
        the peers learn at once instead of at their idle timeout).
        """
        for connection in list(self.connections.values()):
            connection.abort()

    def close(self) -> None:
        """
        Stop reading, close every kernel socket still held, then the
        capture.  The caller removes the silencing rule afterwards.
        """
        if self._closed or self._closing:
            return
        self._closing = True
        for connection in list(self.connections.values()):
            connection.capture_closed()
        self.loop.remove_reader(self._fd)
        if self._writing:
            self.loop.remove_writer(self._fd)
            self._writing = False
        # The RSTs of capture_closed (and anything else queued) go out now,
        # as far as the send buffer takes them: nothing is sent later.
        self.flush()
        if self._flushCall is not None:
            if self._flushCall.active():
                self._flushCall.cancel()
            self._flushCall = None
        self._closed = True
        if self._timer.active():
            self._timer.cancel()
        while self._closing_sockets:
            self._closeKernelSocket(*self._closing_sockets.popleft()[1:])
        self._queue.clear()
        self._due.clear()
        self._head = 0
        self.capture.close()

    @property
    def time_wait_sockets(self) -> int:
        """
        How many kernel sockets of ended flows are held for time-wait.
        """
        return len(self._closing_sockets)

    def _closeKernelSocket(self, key: FlowKey, sock: socket.socket, closed: Callable[[], None] | None) -> None:
        kernel.close_silently(sock)
        if self.role is not Role.SERVER:
            # A client's socket held its local port: now the kernel may give
            # the 4-tuple to a new connection, whose handshake the table's
            # time-wait entry would drop.  A late segment of the old flow
            # then meets the new flow's windows instead.
            self.table.forget_time_wait(key)
        if closed is not None:
            try:
                closed()
            except Exception:
                log.exception("error after closing a kernel socket")


def settled(flow: Flow) -> bool:
    """
    Whether nothing more can come from an ended flow's peer, so its kernel
    socket need not wait out time-wait: the flow ended with a RST (the
    peer's, or ours: a refusal, an abort), or the peer sent its FIN first
    and this side answered with its own (a probe that connected and
    closed; the peer's last ACK, if it comes, meets the table's time-wait
    entry).
    """
    reason = flow.end_reason
    return (
        reason is EndReason.PEER_RST
        or reason is EndReason.LOCAL_RST
        or (reason is EndReason.LOCAL_FIN and flow.fin_received)
    )


#: A socket filter that refuses every packet: a classic BPF program of one
#: instruction, "return 0".
_REFUSE_ALL = [stmt(BPF_RET | BPF_K, 0)]


def mute(sock: socket.socket) -> bool:
    """
    Make an adopted flow's kernel socket refuse every segment it receives.

    The kernel's TCP stack still sees every fake segment of the flow: on its
    silenced socket each one is out of its (small) window, and for each it
    builds a duplicate ACK (not rate-limited for data) that the silencing
    rule then drops.  A socket filter runs right after the socket lookup,
    before any of that: the segment is simply freed.  The capture has its
    copy already (AF_PACKET sees packets before IP does), and after the
    handshake the kernel socket needs nothing more: it is kept open only so
    that the kernel does not answer the flow's segments with RST, which a
    socket with a filter still does not.

    Best effort: a socket that refuses the filter (or a stand-in without a
    descriptor, in tests) is left as it was, silenced but doing the work.

    @return: whether the filter is on.
    """
    try:
        attach_filter(sock, _REFUSE_ALL)
    except (OSError, ValueError, TypeError, AttributeError):
        return False
    return True
