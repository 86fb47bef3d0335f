# -*- test-case-name: tests.test_relay -*-
"""
The client relay: UDP in, fake-TCP out.

L{ClientRelay} listens on one UDP socket and makes one fake-TCP connection
per UDP source address, on that source's first datagram, queueing its
first datagrams (a bounded number) while the connection is being made.
When a connection dies (FIN, RST, the peer silent too long), the flow
stays, and its next datagram makes a new connection: the UDP side is never
lost.

The UDP socket is a L{DatagramSocket}, read in batches: a batch goes to
each source's flow in one call and its segments leave in one C{sendmmsg};
the datagrams a batch of captured segments makes leave in one
C{sendmmsg}.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from twisted.internet import defer, error
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..engine.options import host_port, redact
from .common import RelayService, RelaySettings, cannot_start, send_to_peer, udp_drop_reason, watch_capture
from .contracts import RelayEndpoint, RelayTransport
from .spec import UDPAddress
from .stats import FlowRecord, RelayStats
from .udp import DatagramSocket

#: Socket buffers of the client relay's UDP socket: a burst from a fast
#: sender (WireGuard, KCP) must not overflow the kernel's default buffer
#: while the reactor is busy with the other side; not much more, or an
#: overloaded relay queues hundreds of milliseconds of datagrams.
UDP_BUFFER = 1024 * 1024
#: Seconds between two log lines about one flow's failing connection attempts.
FAILURE_LOG_INTERVAL = 30.0

#: A UDP source address, as the socket module gives it.
Source = tuple[Any, ...]


class _Connection(Protocol):
    """
    The protocol of one fake-TCP connection of a client flow.
    """

    transport: RelayTransport  # type: ignore[assignment]  # set by the fake-TCP connector

    def __init__(self, flow: _ClientFlow) -> None:
        self.flow = flow
        self.lost: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        self.flow.connectionMade(self)

    def dataReceived(self, data: bytes) -> None:
        self.flow.fromFakeTCP(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.flow.connectionLost(self, reason)
        self.lost.callback(None)


class _ConnectionFactory(Factory[_Connection]):
    """
    Builds the protocol of each connection attempt of one flow.
    """

    noisy = False

    def __init__(self, flow: _ClientFlow) -> None:
        self.flow = flow

    def buildProtocol(self, addr: IAddress | None) -> _Connection:
        return _Connection(self.flow)


class _ClientFlow:
    """
    One UDP source of the client relay and its fake-TCP connection, made
    on demand and made again after it died.
    """

    log = Logger()

    def __init__(self, relay: ClientRelay, source: Source) -> None:
        self.relay = relay
        self.source = source
        udp = host_port(source[0], source[1])
        self.record = FlowRecord(udp)
        self.connection: _Connection | None = None
        self.connecting: defer.Deferred[Any] | None = None
        self.queue: deque[bytes] = deque()
        self.retry_at = 0.0
        self.closing = False
        self.failures = 0
        self.failure_logged = float("-inf")

    def send(self, datagrams: list[bytes]) -> None:
        """
        Datagrams from the UDP source, in order: send them, queue them while
        connecting, or start connecting.
        """
        now = time.monotonic()
        self.record.last_activity = now
        connection = self.connection
        if connection is not None:
            self._write(connection, datagrams)
            return
        stats = self.relay.stats
        queue = self.queue
        for datagram in datagrams:
            if self.connection is not None:
                self._write(self.connection, [datagram])
            elif self.connecting is None:
                if now < self.retry_at:
                    stats.drop("reconnect-wait")
                    continue
                # Queued first: a connection attempt may fail at once.
                queue.append(datagram)
                self._connect()
            elif len(queue) < self.relay.settings.queue_limit:
                queue.append(datagram)
            else:
                stats.drop("queue-full")

    def _write(self, connection: _Connection, datagrams: list[bytes]) -> None:
        transport = connection.transport
        if transport.disconnecting or not transport.connected:
            # Closing (the peer sent FIN): the next datagram after it is
            # gone makes a new connection.
            self.relay.stats.drop("closed", len(datagrams))
            return
        send_to_peer(self, self.relay.stats, self.record, transport, datagrams, "UDP {udp}")

    def _connect(self) -> None:
        endpoint = self.relay.endpoint
        assert endpoint is not None, "flows are made only while the relay runs"
        self.record.state = "connecting"
        attempt: defer.Deferred[Any] = endpoint.connect(_ConnectionFactory(self))
        self.connecting = attempt
        attempt.addCallbacks(self._connected, self._failed)

    def connectionMade(self, connection: _Connection) -> None:
        """
        A connection of this flow is up (called before the attempt's
        Deferred fires).
        """
        stats = self.relay.stats
        transport = connection.transport
        self.connection = connection
        self.record.attach(transport)
        stats.connections += 1
        watch_capture(stats, transport)
        local = transport.getHost()
        self.log.info(
            "flow {udp}: fake-TCP connection {local} -> {peer} up (MSS {mss})",
            udp=self.record.udp,
            local=f"{local.host}:{local.port}",
            peer=self.record.peer,
            mss=transport.flow.mss,
        )

    def _connected(self, connection: _Connection) -> None:
        self.connecting = None
        queue, self.queue = self.queue, deque()
        if queue and self.connection is connection:
            self._write(connection, list(queue))
        elif queue:
            self.relay.stats.drop("closed", len(queue))

    def _failed(self, failure: Failure) -> None:
        self.connecting = None
        self.record.state = "down"
        dropped = len(self.queue)
        self.queue.clear()
        if failure.check(defer.CancelledError, error.ConnectingCancelledError) and self.closing:
            # Closing (idle, or the relay stopping): the queue is lost too.
            self.relay.stats.drop("closed", dropped)
            return
        self.relay.stats.drop("connect-failed", dropped)
        now = time.monotonic()
        self.retry_at = now + self.relay.settings.reconnect_delay
        self.failures += 1
        # A peer that stays down fails every attempt: say so now and then.
        if now - self.failure_logged < FAILURE_LOG_INTERVAL:
            return
        self.failure_logged = now
        self.log.warn(
            "flow {udp}: cannot connect to {forward}: {error} ({failures} failed attempt(s) since the "
            "last such line; queued datagrams dropped; trying again on a datagram after {delay:g} s)",
            udp=self.record.udp,
            forward=self.relay.faketcp,
            error=failure.getErrorMessage(),
            failures=self.failures,
            delay=self.relay.settings.reconnect_delay,
        )
        self.failures = 0

    def fromFakeTCP(self, data: bytes) -> None:
        """
        A datagram from the fake-TCP peer, back to the UDP source.
        """
        record = self.record
        record.last_activity = time.monotonic()
        udp = self.relay.udp
        if udp is None:
            self.relay.stats.drop("closed")
            return
        udp.write(data, self.source)
        counts = record.counts
        counts.down_datagrams += 1
        counts.down_bytes += len(data)

    def connectionLost(self, connection: _Connection, reason: Failure) -> None:
        """
        The connection ended (FIN, RST, the peer found dead): the flow
        stays, and the next datagram makes a new connection.
        """
        if self.connection is not connection:
            return
        self.connection = None
        self.record.detach()
        if self.closing:
            return
        self.log.info(
            "flow {udp}: fake-TCP connection to {peer} ended ({reason}); a new one is made on the next datagram",
            udp=self.record.udp,
            peer=self.record.peer,
            reason=reason.getErrorMessage(),
        )

    def close(self) -> defer.Deferred[None]:
        """
        End the flow: cancel a connection attempt, close a connection with
        FIN.  Fires when the connection is gone.
        """
        self.closing = True
        self.relay.forget(self)
        if self.connecting is not None:
            self.connecting.cancel()
        connection = self.connection
        if connection is None:
            return defer.succeed(None)
        connection.transport.loseConnection()
        return connection.lost

    def abort(self) -> None:
        """
        End the flow at once with RST.
        """
        if self.connection is not None:
            self.connection.transport.abortConnection()


class ClientRelay(RelayService):
    """
    UDP in, fake-TCP out: one fake-TCP connection per UDP source address.

    @ivar flows: the flow of each UDP source.
    @ivar udp: the listening UDP port, once started.
    @ivar endpoint: the fake-TCP client endpoint, once started.
    """

    def __init__(
        self,
        reactor: Any,
        listen: UDPAddress,
        faketcp: str,
        stats: RelayStats | None = None,
        settings: RelaySettings | None = None,
    ) -> None:
        """
        @param listen: the UDP address to listen on.
        @param faketcp: the C{faketcp:host=...:port=...} client endpoint
            string.
        """
        super().__init__(reactor, stats or RelayStats(), settings or RelaySettings())
        self.listen = listen
        self.faketcp = faketcp
        self.flows: dict[Source, _ClientFlow] = {}
        self.udp: DatagramSocket | None = None
        self.endpoint: RelayEndpoint | None = None
        #: Receive-buffer drops of the UDP socket, as of its closing.
        self.closed_socket_drops = 0
        self.stats.add_drop_source("udp-rcvbuf", self._socketDrops)

    def _socketDrops(self) -> int:
        udp = self.udp
        if udp is None:
            return self.closed_socket_drops
        return udp.receive_drops()

    def _flows(self) -> list[_ClientFlow]:
        return list(self.flows.values())

    def startService(self) -> None:
        """
        Sweep stale rules and listen on UDP (synchronously: a failure is
        logged and twistd exits with status 1).
        """
        from twisted.internet.endpoints import clientFromString

        try:
            self.endpoint = clientFromString(self.reactor, self.faketcp)
        except ValueError as failure:
            cannot_start(self.log, failure)
        # A kernel socket per flow, and those of ended flows its capture
        # holds for time-wait (bounded, as a server's).
        self._ensureDescriptors(1, captures=1)
        self._sweep()
        listen = (self.listen.host, self.listen.port)
        try:
            udp = DatagramSocket.bind(self.loop, listen, self.fromUDP, self._udpError, UDP_BUFFER)
        except OSError as failure:
            cannot_start(self.log, f"cannot listen on UDP {host_port(*listen)}: {failure.strerror or failure}")
        self.udp = udp
        udp.start()
        super().startService()  # type: ignore[no-untyped-call]
        self._startExpiry()
        self.log.info(
            "faketcp-relay client ready: UDP {address} -> {forward}",
            address=udp.address(),
            forward=redact(self.faketcp),
        )

    def fromUDP(self, datagrams: list[bytes], sources: list[Source] | None) -> None:
        """
        A batch of datagrams from UDP sources: each to its source's flow.

        @param sources: the source of each datagram (the socket is not
            connected, so never L{None}).
        """
        assert sources is not None
        # Each source's datagrams in order, for one call per flow (a batch
        # mostly comes from one source).
        first = sources[0]
        by_source: dict[Source, list[bytes]]
        if sources.count(first) == len(sources):
            by_source = {first: datagrams}
        else:
            by_source = {}
            for datagram, source in zip(datagrams, sources, strict=True):
                by_source.setdefault(source, []).append(datagram)
        flows = self.flows
        for source, batch in by_source.items():
            flow = flows.get(source)
            if flow is None:
                if not self.running:
                    return
                if len(flows) >= self.settings.max_flows:
                    self.stats.drop("flow-limit", len(batch))
                    continue
                flow = flows[source] = _ClientFlow(self, source)
                self.stats.open(flow.record)
            flow.send(batch)

    def _udpError(self, code: int, count: int) -> None:
        self.stats.drop(udp_drop_reason(code), count)

    def forget(self, flow: _ClientFlow) -> None:
        """
        Remove a closed flow from the map, keeping its counters.
        """
        if self.flows.get(flow.source) is flow:
            del self.flows[flow.source]
            self.stats.close(flow.record)

    def stopService(self) -> defer.Deferred[None]:
        """
        Stop reading UDP and close every flow; fires once every connection
        (and so every rule) is gone.
        """
        super().stopService()  # type: ignore[no-untyped-call]
        self._stopExpiry()
        waits: list[defer.Deferred[Any]] = []
        udp, self.udp = self.udp, None
        if udp is not None:
            self.closed_socket_drops = udp.receive_drops()
            udp.close()
        for flow in list(self.flows.values()):
            waits.append(flow.close())
        return self._finishStop(waits)
