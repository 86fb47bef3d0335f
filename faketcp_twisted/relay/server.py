# -*- test-case-name: tests.test_relay -*-
"""
The server relay: fake-TCP in, UDP out.

L{ServerRelay} listens for fake-TCP connections and gives each one its own
connected UDP socket toward the target (opened on its first datagram), so
the target's replies come back on the socket of the connection they belong
to.  Closing a connection frees its socket.

Each flow's UDP socket is a L{DatagramSocket}, read in batches: a batch of
the target's datagrams goes to the peer in one call and its segments leave
in one C{sendmmsg}; the datagrams a batch of captured segments makes leave
in one C{sendmmsg} per socket.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from .common import RelayService, RelaySettings, cannot_start, send_to_peer, udp_drop_reason, watch_capture
from .contracts import RelayPort, RelayTransport
from .spec import SpecError, UDPAddress, resolve
from .stats import FlowRecord, RelayStats
from .udp import DatagramSocket

#: Socket buffers of each server flow's UDP socket (one per connection, so
#: smaller than the client's single socket: the memory is committed as
#: they fill).
FLOW_UDP_BUFFER = 512 * 1024


class _ServerFlow(Protocol):
    """
    One fake-TCP connection of the server relay and its UDP socket.
    """

    log = Logger()
    transport: RelayTransport  # type: ignore[assignment]  # set by the fake-TCP port

    def __init__(self, relay: ServerRelay) -> None:
        self.relay = relay
        self.record = FlowRecord("-")
        self.udp: DatagramSocket | None = None
        #: The kernel's receive-buffer drops of the UDP socket, as last read.
        self.udp_drops = 0
        self.lost: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        relay = self.relay
        record = self.record
        record.attach(self.transport)
        relay.stats.open(record)
        relay.stats.connections += 1
        relay.flows.add(self)
        watch_capture(relay.stats, self.transport)
        self.log.info("flow from fake-TCP {peer} opened (MSS {mss})", peer=record.peer, mss=self.transport.flow.mss)

    def _openUDP(self) -> DatagramSocket:
        # Opened on the first datagram: a connection that never carries one
        # (a port scanner, a plain TCP client whose data is dropped) costs
        # no UDP socket.
        relay = self.relay
        target = relay.target_address
        udp = DatagramSocket.bind(
            relay.loop,
            ("::" if ":" in target[0] else "", 0),
            self.fromTarget,
            self._udpError,
            FLOW_UDP_BUFFER,
            connect_to=target,
        )
        udp.start()
        self.record.udp = udp.address()
        return udp

    def dataReceived(self, data: bytes) -> None:
        record = self.record
        record.last_activity = time.monotonic()
        udp = self.udp
        if udp is None:
            try:
                udp = self.udp = self._openUDP()
            except OSError as failure:
                self.relay.stats.drop("udp-socket")
                self.log.warn("cannot open a UDP socket toward the target: {error}", error=failure)
                return
        # Sent at the end of the capture's batch, with the batch's other
        # datagrams; a refusal is counted as a drop then.
        udp.write(data)
        counts = record.counts
        counts.down_datagrams += 1
        counts.down_bytes += len(data)

    def fromTarget(self, datagrams: list[bytes], sources: list[tuple[Any, ...]] | None) -> None:
        """
        A batch of datagrams from the target: one segment each to the
        peer, those that fit.

        @param sources: L{None}: the socket is connected to the target.
        """
        transport = self.transport
        record = self.record
        stats = self.relay.stats
        record.last_activity = time.monotonic()
        if not transport.connected or transport.disconnecting:
            stats.drop("closed", len(datagrams))
            return
        send_to_peer(self, stats, record, transport, datagrams, "the UDP target ({udp})")

    def _udpError(self, code: int, count: int) -> None:
        self.relay.stats.drop(udp_drop_reason(code), count)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        relay = self.relay
        udp, self.udp = self.udp, None
        if udp is not None:
            relay.closed_socket_drops += udp.receive_drops()
            relay.live_socket_drops -= self.udp_drops
            udp.close()
        relay.flows.discard(self)
        relay.stats.close(self.record)
        self.log.info("flow from fake-TCP {peer} closed: {reason}", peer=self.record.peer, reason=reason.value)
        self.lost.callback(None)

    def close(self) -> None:
        """
        End the flow with FIN.
        """
        self.transport.loseConnection()

    def abort(self) -> None:
        """
        End the flow with RST.
        """
        self.transport.abortConnection()


class _ServerFactory(Factory[_ServerFlow]):
    """
    Builds the flow of each connection, or refuses the connection (it is
    reset) past L{RelaySettings.max_flows}.
    """

    noisy = False

    def __init__(self, relay: ServerRelay) -> None:
        self.relay = relay

    def buildProtocol(self, addr: IAddress | None) -> _ServerFlow | None:
        if len(self.relay.flows) >= self.relay.settings.max_flows:
            self.relay.stats.drop("flow-limit")
            return None
        return _ServerFlow(self.relay)


class ServerRelay(RelayService):
    """
    Fake-TCP in, UDP out: every fake-TCP connection gets its own UDP socket
    connected to the target.

    @ivar flows: the live flows.
    @ivar port: the fake-TCP listening port, once started.
    """

    def __init__(
        self,
        reactor: Any,
        faketcp: str,
        target: UDPAddress,
        stats: RelayStats | None = None,
        settings: RelaySettings | None = None,
    ) -> None:
        """
        @param faketcp: the C{faketcp:PORT...} server endpoint string.
        @param target: where each connection's datagrams go.
        """
        super().__init__(reactor, stats or RelayStats(), settings or RelaySettings())
        self.faketcp = faketcp
        self.target = target
        self.target_address: tuple[str, int] = (target.host, target.port)
        self.flows: set[_ServerFlow] = set()
        self.port: RelayPort | None = None
        #: Receive-buffer drops of the UDP sockets of flows that ended.
        self.closed_socket_drops = 0
        #: Receive-buffer drops of the live flows' UDP sockets, as last read.
        self.live_socket_drops = 0
        self._drops_read_at = float("-inf")
        self.stats.add_drop_source("udp-rcvbuf", self._socketDrops)

    def _socketDrops(self) -> int:
        # A socket's drop counter moves only while datagrams arrive, and
        # then its flow is active: idle flows' sockets are not asked (one
        # syscall each, 10,000 of them would stall the loop for tens of ms).
        since, self._drops_read_at = self._drops_read_at, time.monotonic()
        for flow in self.flows:
            udp = flow.udp
            if udp is not None and flow.record.last_activity >= since:
                drops = udp.receive_drops()
                self.live_socket_drops += drops - flow.udp_drops
                flow.udp_drops = drops
        return self.closed_socket_drops + self.live_socket_drops

    def _flows(self) -> list[_ServerFlow]:
        return list(self.flows)

    def startService(self) -> None:
        """
        Resolve the target, sweep stale rules, and listen.  Listening is
        synchronous, so a failure (not root, port in use) is known here:
        it is logged and twistd exits with status 1.
        """
        from twisted.internet.endpoints import serverFromString

        try:
            self.target_address = (resolve(self.target.host)[1], self.target.port)
        except SpecError as failure:
            cannot_start(self.log, failure)
        self._sweep()
        listening = serverFromString(self.reactor, self.faketcp).listen(_ServerFactory(self))
        outcome: list[Any] = []
        listening.addBoth(outcome.append)
        if not outcome:
            raise RuntimeError("the fake-TCP endpoint did not listen synchronously")
        if isinstance(outcome[0], Failure):
            cannot_start(self.log, outcome[0].value)
        port: RelayPort = outcome[0]
        self.port = port
        # A kernel socket and a UDP socket per flow, the kernel sockets
        # held for time-wait by a capture per address family, and two per
        # fallback connection.  (Listening accepted nothing yet: that
        # waits for the reactor.)
        self._ensureDescriptors(2, captures=2, extra=2 * port.fallback_limit)
        for drops in port.capture_drops:
            self.stats.watch_capture(drops)
        super().startService()  # type: ignore[no-untyped-call]
        self._startExpiry()
        host = port.getHost()
        self.log.info(
            "faketcp-relay server ready: fake-TCP {host}:{port} -> UDP {target}",
            host=host.host,
            port=host.port,
            target=f"{self.target_address[0]}:{self.target_address[1]}",
        )

    def stopService(self) -> defer.Deferred[None]:
        """
        Stop listening and close every connection with FIN; fires once the
        port's captures and rules are gone.
        """
        super().stopService()  # type: ignore[no-untyped-call]
        self._stopExpiry()
        waits: list[defer.Deferred[Any]] = []
        if self.port is not None:
            waits.append(self.port.stopListening())
        for flow in list(self.flows):
            waits.append(flow.lost)
            flow.close()
        return self._finishStop(waits)
