# -*- test-case-name: tests.test_relay -*-
"""
What the relay needs of the fake-TCP side, as L{typing.Protocol}s: of a
connection's transport (L{RelayTransport}), of the server's listening
port (L{RelayPort}) and of the client's endpoint (L{RelayEndpoint}).

The relay uses what the C{faketcp:} endpoints give it through these alone,
so the Twisted face may be built however it likes so long as it offers
them (mypy checks that it does, below).  Twisted's own L{ITCPTransport}
says nothing of a flow's MSS, its sequence-number counters or the
capture's drop counters, which the relay reads; so these are structural
types, not zope interfaces.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred

from ..core.flow import FlowStats


class FlowView(Protocol):
    """
    What the relay reads of the fake-TCP flow under a connection.
    """

    @property
    def mss(self) -> int:
        """
        The largest datagram one segment carries: larger ones are dropped,
        never split.
        """

    @property
    def option_bytes(self) -> int:
        """
        The TCP option bytes on each segment this side sends (12 with
        timestamps, else 0): room the path MTU gives them, not data.
        """

    @property
    def can_send(self) -> bool:
        """
        Whether this side may still send (its FIN is not sent): datagrams
        given to a flow that may not are dropped, counted as C{closed}.
        """

    @property
    def stats(self) -> FlowStats:
        """
        The flow's counters; the relay reads the receive direction's bytes,
        gaps, reordering and refusals.
        """


class RelayTransport(Protocol):
    """
    What the relay needs of the transport of one fake-TCP connection.
    """

    @property
    def connected(self) -> bool:
        """
        Whether the connection is up.
        """

    @property
    def disconnecting(self) -> bool:
        """
        Whether the connection is closing (L{loseConnection} was called, or
        the peer finished): its datagrams are dropped as C{closed}.
        """

    @property
    def flow(self) -> FlowView:
        """
        The fake-TCP flow of the connection.
        """

    @property
    def capture_drops(self) -> Counter[str]:
        """
        The drop counters, by reason, of the capture this connection's
        segments arrive on (shared with the other connections of that
        capture, so the same object for each of them): malformed, orphan
        and time-wait segments never reach a transport, but an operator
        needs to see them.
        """

    def getHost(self) -> IPv4Address | IPv6Address:
        """
        The local address of the connection.
        """

    def getPeer(self) -> IPv4Address | IPv6Address:
        """
        The fake-TCP peer's address.
        """

    def send_datagrams(self, datagrams: list[bytes]) -> None:
        """
        Send each datagram as one segment, in one call for the batch; each
        fits in L{FlowView.mss} (the relay checked).
        """

    def loseConnection(self) -> None:
        """
        Close the connection with FIN.
        """

    def abortConnection(self) -> None:
        """
        Close the connection at once with RST.
        """


class RelayPort(Protocol):
    """
    What the server relay needs of its fake-TCP listening port.
    """

    @property
    def capture_drops(self) -> Sequence[Counter[str]]:
        """
        The drop counters of each capture the port reads (one per address
        family listened on), followed from the start: segments are
        refused before any connection exists.
        """

    @property
    def fallback_limit(self) -> int:
        """
        The most connections the port splices to its fallback at once (0
        without one): two descriptors each.
        """

    def getHost(self) -> IPv4Address | IPv6Address:
        """
        The address listened on.
        """

    def stopListening(self) -> Deferred[None]:
        """
        Stop accepting; fires once the port's captures and rules are gone
        (the connections already made go on).
        """


class RelayEndpoint(Protocol):
    """
    What the client relay needs of its fake-TCP client endpoint.
    """

    def connect(self, protocolFactory: Any) -> Deferred[Any]:
        """
        Make a connection for a protocol of C{protocolFactory} (an
        C{IProtocolFactory}); fires with the connected protocol, or fails.
        """


if TYPE_CHECKING:
    # mypy checks that the Twisted face offers what the relay needs.
    from ..tx.endpoints import FakeTCPClientEndpoint
    from ..tx.port import FakeTCPPort
    from ..tx.transport import FakeTCPTransport

    def _face_conforms(
        transport: FakeTCPTransport, port: FakeTCPPort, endpoint: FakeTCPClientEndpoint
    ) -> tuple[RelayTransport, RelayPort, RelayEndpoint]:
        return transport, port, endpoint
