# -*- test-case-name: tests.test_auth,tests.test_integration -*-
"""
The engine's seams, declared as L{typing.Protocol}s.

A connection and its demultiplexer work together on every segment, each
through a few members of the other; a face holds a connection and hears
of its events.  Those uses are the whole of each contract:

  - L{Demux}: what a connection asks of its demultiplexer (send a packet,
    count a drop, let go of the flow, and a few facts).
  - L{Connection}: what the demultiplexer asks of the connection of each
    flow it routes (take a segment, send what the flow queued, expire,
    end with the capture).
  - L{Face}: what a connection tells the face that holds it (Twisted's
    transport, asyncio's), with the L{Ending} it reports.
  - L{Holder}: what holds packets for the end of
    L{coalesced_sends<faketcp_twisted.engine.demux.coalesced_sends>}.

L{Demultiplexer<faketcp_twisted.engine.demux.Demultiplexer>} and
L{FlowConnection<faketcp_twisted.engine.connection.FlowConnection>}
each import this module and not each other, so either can be driven by
a stand-in that provides the contract (C{tests.test_auth} drives two
connections against in-memory demultiplexers).
"""

from __future__ import annotations

import enum
import socket
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

from ..core.flow import Flow, FlowKey
from ..core.segment import Segment
from ..core.table import Role
from .loop import EventLoop
from .options import FlowOptions


class Ending(enum.Enum):
    """
    How a connection ended, as its face is told.
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


class Demux(Protocol):
    """
    What a connection asks of the demultiplexer its flow belongs to.
    """

    @property
    def loop(self) -> EventLoop:
        """
        The event loop the capture is read on.
        """

    @property
    def options(self) -> FlowOptions:
        """
        The tunables of the capture's flows.
        """

    @property
    def role(self) -> Role:
        """
        Whether the capture serves a listening port or client connections.
        """

    @property
    def congested(self) -> bool:
        """
        Whether the shared send backlog is past its high-water mark.
        """

    @property
    def backlog_bytes(self) -> int:
        """
        Bytes waiting for room in the kernel's send buffer.
        """

    @property
    def drops(self) -> Counter[str]:
        """
        The capture's drop counters, by reason (shared by its connections).
        """

    def sockaddr(self, packed: bytes) -> tuple[Any, ...]:
        """
        The raw-socket destination for a packed remote address.
        """

    def transmit(self, packet: bytes, address: tuple[Any, ...]) -> None:
        """
        Send one built packet to C{address} (now, or within this turn of
        the loop).
        """

    def count_drop(self, reason: str, count: int = 1) -> None:
        """
        Count C{count} datagrams or segments dropped for C{reason}.
        """

    def detach(self, connection: Connection) -> None:
        """
        Stop routing to C{connection}: its flow enters time-wait, its kernel
        socket is closed when time-wait ends.
        """

    def hand_off(self, connection: Connection) -> socket.socket:
        """
        Stop routing to C{connection} and give its kernel socket to the
        caller: the kernel takes the connection back.
        """

    def release_hand_off(self, key: FlowKey) -> None:
        """
        The socket of a handed-off connection is closed.
        """


class Connection(Protocol):
    """
    What a demultiplexer asks of the connection of each flow it routes.
    """

    @property
    def flow(self) -> Flow:
        """
        The flow's sans-IO state (its key, how it ended).
        """

    @property
    def socket(self) -> socket.socket:
        """
        The silenced kernel socket, kept open until time-wait ends.
        """

    @property
    def on_socket_closed(self) -> Callable[[], None] | None:
        """
        Called once the kernel socket is closed, if set.
        """

    def segment_received(self, segment: Segment, now: float) -> None:
        """
        Take one captured segment of this connection's flow.
        """

    def flush_pending(self) -> None:
        """
        Send the packets the flow queued on its own (keepalives, ACKs).
        """

    def expired(self) -> None:
        """
        The flow was silent for its idle timeout: end.
        """

    def congestion_changed(self, congested: bool) -> None:
        """
        The shared send backlog crossed its high-water mark, or drained.
        """

    def capture_closed(self) -> None:
        """
        The capture is closing under the connection: reset the peer, end.
        """

    def abort(self) -> None:
        """
        Reset the peer and end (the port is shutting down).
        """


class Face(Protocol):
    """
    What a connection tells the face that holds it, once bound to it.

    Nothing is told while the connection waits for its peer's key proof,
    nor after L{connection_ended}.  While delivery is paused, the peer's
    FIN or RST is not told either (L{peer_finished}, L{connection_ended}
    for it) until the datagrams queued before it are delivered.
    """

    def deliver(self, payload: bytes) -> None:
        """
        Hand one datagram from the peer to the application.
        """

    def peer_finished(self) -> None:
        """
        The peer sent FIN; this side may still send.
        """

    def connection_ended(self, ending: Ending, failure: object) -> None:
        """
        The connection is over, for C{ending}; C{failure} is what the
        face passed to C{FlowConnection.end} with L{Ending.FAILED}.
        """

    def congestion_changed(self, congested: bool) -> None:
        """
        The shared send backlog crossed its high-water mark, or drained.
        """


class Holder(Protocol):
    """
    What holds packets for the end of C{coalesced_sends}: a
    L{Demultiplexer<faketcp_twisted.engine.demux.Demultiplexer>}, or one
    of the relay's UDP sockets.  It registers with
    C{coalesced_sends.hold(holder)}.
    """

    def flush(self) -> None:
        """
        Send what is held (the outermost scope ended).
        """
