# -*- test-case-name: tests.test_integration -*-
"""
The face-neutral half of a connection: one flow of a shared capture, its
silenced kernel socket, and what each segment means for the application.

A face (Twisted's transport, asyncio's) subclasses L{FlowConnection} and
implements four hooks: L{_deliver} a datagram, L{_peerFinished} (the peer
sent FIN and this side may still write), L{_ended} (the connection is over,
and why) and L{_congestion} (the send backlog crossed its high-water mark).
"""

from __future__ import annotations

import enum
import socket
from collections import deque
from typing import TYPE_CHECKING, Any

from .flow import EndReason, Flow, FlowState
from .segment import Segment

if TYPE_CHECKING:
    from .demux import Demultiplexer


class Ending(enum.Enum):
    """
    How a connection ended, as its application is told.
    """

    #: FIN both ways, or this side closed.
    DONE = "done"
    #: The peer sent RST.
    RESET = "reset"
    #: This side sent RST.
    ABORTED = "aborted"
    #: Nothing from the peer for the idle timeout.
    TIMEOUT = "timeout"
    #: The application's callback raised.
    FAILED = "failed"
    #: The capture under the connection was closed (loop shutting down).
    CAPTURE_CLOSED = "capture-closed"


def text_address(packed: bytes, port: int) -> tuple[str, int]:
    """
    A (host, port) pair in text from a packed address.
    """
    family = socket.AF_INET if len(packed) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, packed), port


class FlowConnection:
    """
    One connection over a shared capture.

    @ivar flow: the flow's sans-IO state.
    @ivar socket: the silenced kernel socket, kept open until time-wait ends.
    @ivar early: data segments that arrived before adoption, for
        L{start} to deliver once the application is attached.
    @ivar on_socket_closed: called once the kernel socket is closed.
    @ivar ended: whether the connection is over.
    """

    #: Most datagrams queued while the application paused reading; past
    #: it, further datagrams are dropped (as a full UDP buffer would).
    pausedQueueLimit = 1024

    def __init__(self, demux: Demultiplexer, flow: Flow, kernel_socket: socket.socket) -> None:
        self.demux = demux
        self.loop = demux.loop
        self.flow = flow
        self.socket = kernel_socket
        key = flow.key
        self.local_address = text_address(key.local_addr, key.local_port)
        self.remote_address = text_address(key.remote_addr, key.remote_port)
        self._destination = demux.sockaddr(key.remote_addr)
        self.early: list[Segment] = []
        self.on_socket_closed: Any = None
        self.ended = False
        self.reading_paused = False
        self._paused_queue: deque[bytes] = deque()

    # -- called by the demultiplexer -------------------------------------

    def start(self) -> None:
        """
        The application is attached: send what the flow holds, deliver the
        segments that arrived before adoption.
        """
        self.flush_pending()
        early, self.early = self.early, []
        now = self.loop.seconds()
        for segment in early:
            if self.ended:
                break
            self.segment_received(segment, now)

    def segment_received(self, segment: Segment, now: float) -> None:
        """
        Take one segment of this connection's flow.
        """
        flow = self.flow
        before = flow.state
        payload = flow.receive(segment, now)
        if flow.pending:
            self.flush_pending()
        if payload:
            if self.reading_paused:
                if len(self._paused_queue) < self.pausedQueueLimit:
                    self._paused_queue.append(payload)
                else:
                    self.demux.count_drop("paused-overflow")
            else:
                self._deliver(payload)
        # Only a change of state means anything: a refused RST or a copy of
        # a FIN already taken must not close (or half-close) twice.
        if flow.state is not before and not self.ended:
            self._flowStateChanged()

    def _flowStateChanged(self) -> None:
        flow = self.flow
        if flow.end_reason is EndReason.PEER_RST:
            self.end(Ending.RESET)
        elif flow.state is FlowState.READ_CLOSED:
            self._peerFinished()
        elif flow.state is FlowState.CLOSED:
            self.end(Ending.DONE)

    def expired(self) -> None:
        """
        The flow was idle for too long.
        """
        self.end(Ending.TIMEOUT)

    def capture_closed(self) -> None:
        """
        The capture is closing under this connection: reset the peer (or it
        would wait for its idle timeout) and end.
        """
        if not self.ended and self.flow.state is not FlowState.CLOSED:
            self.send_packet(self.flow.reset(self.loop.seconds()))
        self.end(Ending.CAPTURE_CLOSED)

    def flush_pending(self) -> None:
        """
        Send the packets the flow queued (ACKs, keepalives, held datagrams).
        """
        pending = self.flow.pending
        for packet in pending:
            self.send_packet(packet)
        pending.clear()

    def congestion_changed(self, congested: bool) -> None:
        """
        The shared send backlog crossed its high-water mark, or drained.
        """
        if not self.ended:
            self._congestion(congested)

    # -- used by the faces -----------------------------------------------

    def send_packet(self, packet: bytes) -> None:
        """
        Send one built packet to the peer.
        """
        self.demux.transmit(packet, self._destination)

    def send(self, data: bytes) -> None:
        """
        Send C{data} as one datagram per MSS-sized piece.
        """
        flow = self.flow
        if self.ended or not flow.can_send or not data:
            return
        now = self.loop.seconds()
        mss = flow.mss
        if len(data) <= mss:
            packet = flow.send(data, now)
            if packet is not None:
                self.demux.transmit(packet, self._destination)
            return
        view = memoryview(data)
        for start in range(0, len(data), mss):
            packet = flow.send(bytes(view[start : start + mss]), now)
            if packet is not None:
                self.demux.transmit(packet, self._destination)

    def send_fin(self) -> bool:
        """
        Close the sending half with FIN.

        @return: whether the flow is now closed both ways.
        """
        if self.flow.can_send:
            self.send_packet(self.flow.finish(self.loop.seconds()))
        return self.flow.state is FlowState.CLOSED

    def send_rst(self) -> None:
        """
        Abort the flow with RST.
        """
        if self.flow.state is not FlowState.CLOSED:
            self.send_packet(self.flow.reset(self.loop.seconds()))

    def end_soon(self, ending: Ending) -> None:
        """
        End on the next turn of the loop (a close called from inside the
        application's own callback must not re-enter it).
        """
        self.loop.call_later(0, self.end, ending)

    def end(self, ending: Ending, failure: object = None) -> None:
        """
        End the connection once: release the flow and tell the face.
        """
        if self.ended:
            return
        self.ended = True
        flow = self.flow
        if flow.state is not FlowState.CLOSED:
            flow._end(EndReason.LOCAL_FIN)
        self._paused_queue.clear()
        self.demux.detach(self)
        self._ended(ending, failure)

    def pause_reading(self) -> None:
        """
        Queue this connection's datagrams instead of delivering them.
        """
        self.reading_paused = True

    def resume_reading(self) -> None:
        """
        Deliver what was queued, then go on delivering.
        """
        self.reading_paused = False
        queue = self._paused_queue
        while queue and not self.reading_paused and not self.ended:
            self._deliver(queue.popleft())

    def refuse(self) -> None:
        """
        Reset a flow that no application was found for.
        """
        self.send_rst()
        self.ended = True
        self.demux.detach(self)

    # -- hooks for the faces ---------------------------------------------

    def _deliver(self, payload: bytes) -> None:
        raise NotImplementedError

    def _peerFinished(self) -> None:
        raise NotImplementedError

    def _ended(self, ending: Ending, failure: object) -> None:
        raise NotImplementedError

    def _congestion(self, congested: bool) -> None:
        """
        Default: nothing to pause.
        """
