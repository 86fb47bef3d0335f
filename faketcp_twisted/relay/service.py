# -*- test-case-name: tests.test_relay -*-
"""
The UDP <-> fake-TCP relay, as two Twisted services.

L{ServerRelay} listens for fake-TCP connections and gives each one its own
connected UDP socket toward the target, so the target's replies come back
on the socket of the connection they belong to.  L{ClientRelay} listens on
one UDP socket and makes one fake-TCP connection per UDP source address,
queueing that source's first datagrams (a bounded number) while the
connection is being made, and making a new one on the next datagram after
the old one died.

One datagram is one segment is one datagram: a datagram larger than the
connection's MSS is dropped and counted (and logged once per flow), never
split, since the far side would deliver the pieces as separate datagrams.

Both sides read and write UDP through L{DatagramSocket}s, in batches: a
batch of datagrams goes to its flow in one call and its segments leave in
one C{sendmmsg}, and the datagrams a batch of captured segments makes leave
in one C{sendmmsg} per socket.
"""

from __future__ import annotations

import errno
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, NoReturn

from twisted.application import service
from twisted.internet import defer, error, task
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..engine.options import host_port, redact
from ..io.firewall import FirewallUnavailable, sweep
from ..io.kernel import ensure_open_files, has_privileges
from ..engine.loop import EventLoop
from ..tx.reactor import loop_for
from .spec import SpecError, UDPAddress, resolve
from .stats import FlowRecord, RelayStats, path_mtu
from ..core.rotation import Rotation
from .udp import DatagramSocket

#: Socket buffers of the client relay's UDP socket: a burst from a fast
#: sender (WireGuard, KCP) must not overflow the kernel's default buffer
#: while the reactor is busy with the other side; not much more, or an
#: overloaded relay queues hundreds of milliseconds of datagrams.
UDP_BUFFER = 1024 * 1024
#: Socket buffers of each server flow's UDP socket (one per connection, so
#: smaller: the memory is committed as they fill).
FLOW_UDP_BUFFER = 512 * 1024
#: Descriptors a relay holds besides its flows' (captures, raw sockets, its
#: UDP socket, log files, the metrics port): a margin, generously.
BASE_DESCRIPTORS = 64
#: Seconds the shutdown waits for connections to close before aborting them.
STOP_GRACE = 5.0
#: Seconds between two log lines about one flow's failing connection attempts.
FAILURE_LOG_INTERVAL = 30.0


@dataclass(slots=True)
class RelaySettings:
    """
    Tunables of a relay that are not part of its endpoint strings.

    @ivar udp_idle_timeout: seconds without a datagram either way after
        which a flow is closed (its fake-TCP connection with FIN, its UDP
        socket or mapping freed); 0 never.
    @ivar max_flows: most flows at once; more are refused (server: the
        connection is reset) or dropped (client: the datagram is counted as
        C{flow-limit}).
    @ivar queue_limit: most datagrams a client flow queues while its
        fake-TCP connection is being made.
    @ivar reconnect_delay: seconds after a failed connection attempt during
        which a client flow drops datagrams instead of trying again.
    """

    udp_idle_timeout: float = 180.0
    max_flows: int = 1024
    queue_limit: int = 64
    reconnect_delay: float = 1.0


def _udp_error(code: int) -> str:
    """
    The drop reason for a UDP send or read that failed with errno C{code}.
    """
    if code == errno.EMSGSIZE:
        return "udp-too-long"
    if code == errno.ECONNREFUSED:
        # The ICMP port-unreachable of an earlier datagram: the target is
        # not listening (yet).
        return "udp-refused"
    return "udp-" + errno.errorcode.get(code, "send-error").lower()


def _watch_capture(stats: RelayStats, transport: Any) -> None:
    # Malformed, orphan and time-wait segments never reach a transport:
    # they are counted by the capture's demultiplexer.
    drops = getattr(getattr(transport, "demux", None), "drops", None)
    if drops is not None:
        stats.watch_capture(drops)


def _to_peer(owner: Any, stats: RelayStats, record: FlowRecord, transport: Any, datagrams: list[bytes], source: str) -> None:
    """
    Send each datagram as one segment to the fake-TCP peer, or drop it
    whole: never split, never truncated.  The transport is open (the
    caller checked).

    @param owner: what logs an oversize drop (its C{log} is looked up only
        then: a Twisted Logger attribute builds a new Logger per access).
    @param source: where the datagrams came from, for that log line, with
        C{{udp}} standing for the flow's UDP address (formatted only then,
        not per datagram).
    """
    if not datagrams:
        return
    mss = transport.flow.mss
    sizes = [len(datagram) for datagram in datagrams]
    if max(sizes) > mss:
        for size in sizes:
            if size > mss:
                _oversize(owner.log, stats, record, transport, size, source.format(udp=record.udp))
        datagrams = [datagram for datagram in datagrams if len(datagram) <= mss]
        sizes = [size for size in sizes if size <= mss]
    # One call for the batch: the connection checks its state once.
    transport.send_datagrams(datagrams)
    counts = record.counts
    counts.up_datagrams += len(sizes)
    counts.up_bytes += sum(sizes)


def _oversize(log: Logger, stats: RelayStats, record: FlowRecord, transport: Any, size: int, source: str) -> None:
    """
    Drop a datagram too large for the connection's MSS: count it, and log
    the first one of the flow with the MSS and the MTU it implies.
    """
    stats.drop("oversize")
    if record.oversize_logged:
        return
    record.oversize_logged = True
    flow = transport.flow
    mss = flow.mss
    mtu = path_mtu(mss, ":" in transport.getPeer().host, flow.option_bytes)
    options = (
        f"; {flow.option_bytes} bytes of each segment carry TCP timestamps, --no-timestamps gives them back"
        if flow.option_bytes
        else ""
    )
    log.warn(
        "dropped a {size}-byte datagram from {source}: larger than the {mss} bytes a fake-TCP segment "
        "carries (path MTU {mtu}{options}); datagrams are never split, so lower the sender's MTU until "
        "its datagrams fit in {mss} bytes (further oversize datagrams of this flow are counted, not logged)",
        size=size,
        source=source,
        mss=mss,
        mtu=mtu,
        options=options,
    )


def cannot_start(log: Logger, failure: BaseException | str) -> NoReturn:
    """
    Log why the relay cannot start, in one line, and exit with status 1.

    twistd would print a full traceback for an exception raised from
    startService; the reason (not root, port in use...) is all an operator
    needs.  Services are ordered so that nothing holding a firewall rule
    has started yet when this is called.
    """
    log.critical("faketcp-relay cannot start: {error}", error=failure)
    raise SystemExit(1)


class _RelayBase(service.Service):
    """
    What both relays share: counters, settings, flow expiry, shutdown.
    """

    log = Logger()
    #: The idle check of the flows is spread over this many calls per
    #: period, so that 10,000 flows never stall the loop at once.
    expirySlices = 10

    def __init__(self, reactor: Any, stats: RelayStats, settings: RelaySettings) -> None:
        self.reactor = reactor
        self.stats = stats
        self.settings = settings
        self._expiry: task.LoopingCall | None = None
        self._expiryRotation: Rotation[Any] = Rotation()
        self.stopped: defer.Deferred[None] | None = None

    @property
    def loop(self) -> EventLoop:
        """
        The event loop adapter of the reactor, which reads the UDP sockets.
        """
        return loop_for(self.reactor)

    def _startExpiry(self) -> None:
        idle = self.settings.udp_idle_timeout
        if idle > 0:
            self._expiry = task.LoopingCall(self._expire)
            self._expiry.clock = self.reactor
            # Each flow is looked at once a quarter of the timeout (so the
            # expiry is within 25% of it), a tenth of them per call.
            self._expiry.start(min(max(idle / 4, 0.1), 5.0) / self.expirySlices, now=False)

    def _stopExpiry(self) -> None:
        if self._expiry is not None and self._expiry.running:
            self._expiry.stop()
        self._expiry = None

    def _expire(self) -> None:
        cutoff = time.monotonic() - self.settings.udp_idle_timeout
        live = self.stats.flows
        for flow in self._expiryRotation.take(self._flows, self.expirySlices):
            # (A flow that ended since this round began is skipped.)
            if flow.record in live and flow.record.last_activity < cutoff:
                self.log.info("flow {udp} idle for {idle:g} s: closing", udp=flow.record.udp, idle=self.settings.udp_idle_timeout)
                flow.close()

    def _flows(self) -> list[Any]:
        raise NotImplementedError

    def _ensureDescriptors(self, per_flow: int) -> None:
        """
        Make room in the descriptor limit for C{max_flows} flows of
        C{per_flow} descriptors each, or say how many fit.
        """
        wanted = BASE_DESCRIPTORS + per_flow * self.settings.max_flows
        limit = ensure_open_files(wanted)
        if limit < wanted:
            self.log.warn(
                "the descriptor limit of {limit} leaves room for about {fit} flows, fewer than the {flows} "
                "of --max-flows (raise it with ulimit -n, or run with CAP_SYS_RESOURCE)",
                limit=limit,
                fit=max(limit - BASE_DESCRIPTORS, 0) // per_flow,
                flows=self.settings.max_flows,
            )

    def _sweep(self) -> None:
        # Rules of a relay that was killed (SIGKILL, a crash) go now, not
        # only when this relay installs its first rule.  Without privileges
        # the start fails anyway, with a clearer reason than the sweep's.
        if not has_privileges():
            return
        try:
            removed = sweep()
        except FirewallUnavailable as failure:
            self.log.warn("cannot sweep stale rules: {error}", error=failure)
            return
        except Exception as failure:  # python-iptables raises its own errors
            self.log.warn("cannot sweep stale rules: {error}", error=failure)
            return
        if removed:
            self.log.info("removed {count} stale silencing rule(s) of relays that no longer run", count=removed)

    def _finishStop(self, waits: list[defer.Deferred[Any]]) -> defer.Deferred[None]:
        """
        Wait for every flow to close; abort those still open after
        L{STOP_GRACE} seconds, and give up waiting after twice that.  Then
        log the totals.
        """
        done: defer.Deferred[None] = defer.Deferred()
        pending = defer.DeferredList(waits, consumeErrors=True)
        timers = [
            self.reactor.callLater(STOP_GRACE, self._abortRemaining),
            self.reactor.callLater(2 * STOP_GRACE, lambda: finished(None, late=True)),
        ]

        def finished(_: object, late: bool = False) -> None:
            if done.called:
                return
            for timer in timers:
                if timer.active():
                    timer.cancel()
            if late:
                self.log.warn("some flows did not close within {seconds:g} s", seconds=2 * STOP_GRACE)
            self.log.info("stopped; {totals}", totals=self.stats.totals_line())
            done.callback(None)

        pending.addCallback(finished)
        return done

    def _abortRemaining(self) -> None:
        for flow in list(self._flows()):
            flow.abort()


# -- server: fake-TCP in, UDP out -------------------------------------------


class _ServerFlow(Protocol):
    """
    One fake-TCP connection of the server relay and its UDP socket.
    """

    log = Logger()
    #: A L{FakeTCPTransport} (its C{flow} is not on L{ITransport}).
    transport: Any

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
        _watch_capture(relay.stats, self.transport)
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

    def fromTarget(self, datagrams: list[bytes], sources: object) -> None:
        """
        A batch of datagrams from the target: one segment each to the
        peer, those that fit.
        """
        transport = self.transport
        record = self.record
        stats = self.relay.stats
        record.last_activity = time.monotonic()
        if not transport.connected or transport.disconnecting:
            stats.drop("closed", len(datagrams))
            return
        _to_peer(self, stats, record, transport, datagrams, "the UDP target ({udp})")

    def _udpError(self, code: int, count: int) -> None:
        self.relay.stats.drop(_udp_error(code), count)

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        relay = self.relay
        udp, self.udp = self.udp, None
        if udp is not None:
            relay.closed_socket_drops += udp.receive_drops()
            relay.live_socket_drops -= self.udp_drops
            udp.close()
        relay.flows.discard(self)
        relay.stats.close(self.record)
        self.log.info(
            "flow from fake-TCP {peer} closed: {reason}",
            peer=self.record.peer,
            reason=getattr(reason, "value", reason),
        )
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


class _ServerFactory(Factory):
    noisy = False

    def __init__(self, relay: ServerRelay) -> None:
        self.relay = relay

    def buildProtocol(self, addr: Any) -> _ServerFlow | None:
        if len(self.relay.flows) >= self.relay.settings.max_flows:
            self.relay.stats.drop("flow-limit")
            return None
        return _ServerFlow(self.relay)


class ServerRelay(_RelayBase):
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
        self.port: Any = None
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

    def _flows(self) -> list[Any]:
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
        # A kernel socket and a UDP socket per flow.
        self._ensureDescriptors(2)
        self._sweep()
        listening = serverFromString(self.reactor, self.faketcp).listen(_ServerFactory(self))
        outcome: list[Any] = []
        listening.addBoth(outcome.append)
        if not outcome:
            raise RuntimeError("the fake-TCP endpoint did not listen synchronously")
        if isinstance(outcome[0], Failure):
            cannot_start(self.log, outcome[0].value)
        self.port = outcome[0]
        for demux in getattr(self.port, "demuxes", {}).values():
            self.stats.watch_capture(demux.drops)
        super().startService()
        self._startExpiry()
        host = self.port.getHost()
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
        super().stopService()
        self._stopExpiry()
        waits: list[defer.Deferred[Any]] = []
        if self.port is not None:
            waits.append(self.port.stopListening())
        for flow in list(self.flows):
            waits.append(flow.lost)
            flow.close()
        return self._finishStop(waits)


# -- client: UDP in, fake-TCP out -------------------------------------------


class _Connection(Protocol):
    """
    The protocol of one fake-TCP connection of a client flow.
    """

    #: A L{FakeTCPTransport} (its C{flow} is not on L{ITransport}).
    transport: Any

    def __init__(self, flow: _ClientFlow) -> None:
        self.flow = flow
        self.lost: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        self.flow.connectionMade(self)

    def dataReceived(self, data: bytes) -> None:
        self.flow.fromFakeTCP(data)

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        self.flow.connectionLost(self, reason)
        self.lost.callback(None)


class _ConnectionFactory(Factory):
    noisy = False

    def __init__(self, flow: _ClientFlow) -> None:
        self.flow = flow

    def buildProtocol(self, addr: Any) -> _Connection:
        return _Connection(self.flow)


class _ClientFlow:
    """
    One UDP source of the client relay and its fake-TCP connection, made
    on demand and made again after it died.
    """

    log = Logger()

    def __init__(self, relay: ClientRelay, source: Any) -> None:
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
        _to_peer(self, self.relay.stats, self.record, transport, datagrams, "UDP {udp}")

    def _connect(self) -> None:
        self.record.state = "connecting"
        attempt = self.relay.endpoint.connect(_ConnectionFactory(self))
        self.connecting = attempt
        attempt.addCallbacks(self._connected, self._failed)

    def connectionMade(self, connection: _Connection) -> None:
        """
        A connection of this flow is up (called before the attempt's
        Deferred fires).
        """
        stats = self.relay.stats
        self.connection = connection
        self.record.attach(connection.transport)
        stats.connections += 1
        _watch_capture(stats, connection.transport)
        self.log.info(
            "flow {udp}: fake-TCP connection {local} -> {peer} up (MSS {mss})",
            udp=self.record.udp,
            local=f"{connection.transport.getHost().host}:{connection.transport.getHost().port}",
            peer=self.record.peer,
            mss=connection.transport.flow.mss,
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
            reason=reason.getErrorMessage() if isinstance(reason, Failure) else reason,
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


class ClientRelay(_RelayBase):
    """
    UDP in, fake-TCP out: one fake-TCP connection per UDP source address.

    @ivar flows: the flow of each UDP source.
    @ivar udp: the listening UDP port, once started.
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
        self.flows: dict[Any, _ClientFlow] = {}
        self.udp: DatagramSocket | None = None
        self.endpoint: Any = None
        #: Receive-buffer drops of the UDP socket, as of its closing.
        self.closed_socket_drops = 0
        self.stats.add_drop_source("udp-rcvbuf", self._socketDrops)

    def _socketDrops(self) -> int:
        udp = self.udp
        if udp is None:
            return self.closed_socket_drops
        return udp.receive_drops()

    def _flows(self) -> list[Any]:
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
        # A kernel socket per flow.
        self._ensureDescriptors(1)
        self._sweep()
        listen = (self.listen.host, self.listen.port)
        try:
            self.udp = DatagramSocket.bind(self.loop, listen, self.fromUDP, self._udpError, UDP_BUFFER)
        except OSError as failure:
            cannot_start(self.log, f"cannot listen on UDP {host_port(*listen)}: {failure.strerror or failure}")
        self.udp.start()
        super().startService()
        self._startExpiry()
        self.log.info(
            "faketcp-relay client ready: UDP {address} -> {forward}",
            address=self.udp.address(),
            forward=redact(self.faketcp),
        )

    def fromUDP(self, datagrams: list[bytes], sources: list[Any] | None) -> None:
        """
        A batch of datagrams from UDP sources: each to its source's flow.
        """
        assert sources is not None
        # Each source's datagrams in order, for one call per flow (a batch
        # mostly comes from one source).
        first = sources[0]
        if sources.count(first) == len(sources):
            by_source = {first: datagrams}
        else:
            by_source = {}
            for datagram, source in zip(datagrams, sources):
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
        self.stats.drop(_udp_error(code), count)

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
        super().stopService()
        self._stopExpiry()
        waits: list[defer.Deferred[Any]] = []
        udp, self.udp = self.udp, None
        if udp is not None:
            self.closed_socket_drops = udp.receive_drops()
            udp.close()
        for flow in list(self.flows.values()):
            waits.append(flow.close())
        return self._finishStop(waits)
