# -*- test-case-name: tests.test_relay -*-
"""
What both relay modes share: their settings, the service both are (flow
expiry, the descriptor limit, the sweep of stale rules, the shutdown), the
send of datagrams as segments with its oversize check, and the one line a
relay that cannot start exits with.

One datagram is one segment is one datagram: a datagram larger than the
connection's MSS is dropped and counted (and logged once per flow), never
split, since the far side would deliver the pieces as separate datagrams.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from ..core.rotation import Rotation
from ..engine.demux import Demultiplexer
from ..engine.loop import EventLoop
from ..io.firewall import FirewallUnavailable, sweep
from ..io.kernel import ensure_open_files, has_privileges
from ..tx.reactor import loop_for, when_quiescent
from .contracts import RelayTransport
from .stats import FlowRecord, RelayStats, path_mtu

#: Descriptors a relay holds besides its flows' (captures, raw sockets, its
#: UDP socket, log files, the metrics port): a margin, generously.
BASE_DESCRIPTORS = 64


def time_wait_descriptors(captures: int) -> int:
    """
    The most kernel sockets C{captures} captures hold for ended flows in
    time-wait (see L{Demultiplexer.timeWaitSockets}).
    """
    return captures * max(Demultiplexer.timeWaitSockets, 0)


#: Seconds the shutdown waits for connections to close before aborting them.
STOP_GRACE = 5.0


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


class RelayFlow(Protocol):
    """
    What L{RelayService} needs of a flow of either mode.
    """

    @property
    def record(self) -> FlowRecord:
        """
        The flow's counters and activity.
        """

    def close(self) -> object:
        """
        End the flow with FIN.
        """

    def abort(self) -> None:
        """
        End the flow at once with RST.
        """


class LogOwner(Protocol):
    """
    Something with a Twisted C{log}: a class attribute L{Logger} builds a
    new Logger on each access, so it is looked up only when needed.
    """

    @property
    def log(self) -> Logger:
        """
        The logger of the owner.
        """


def udp_drop_reason(code: int) -> str:
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


def watch_capture(stats: RelayStats, transport: RelayTransport) -> None:
    """
    Count the drops of the capture C{transport}'s segments arrive on
    (malformed, orphan and time-wait segments never reach a transport).
    """
    stats.watch_capture(transport.capture_drops)


def send_to_peer(
    owner: LogOwner,
    stats: RelayStats,
    record: FlowRecord,
    transport: RelayTransport,
    datagrams: list[bytes],
    source: str,
) -> None:
    """
    Send each datagram as one segment to the fake-TCP peer, or drop it
    whole: never split, never truncated.  The transport is open (the
    caller checked).  Only what goes out as segments counts as sent;
    datagrams too large (C{oversize}), empty (C{empty}) or given after
    this side's FIN (C{closed}) are counted as drops.

    @param owner: what logs an oversize drop.
    @param source: where the datagrams came from, for that log line, with
        C{{udp}} standing for the flow's UDP address (formatted only then,
        not per datagram).
    """
    if not datagrams:
        return
    flow = transport.flow
    if not flow.can_send:
        # This side's FIN is sent: the flow would drop them.
        stats.drop("closed", len(datagrams))
        return
    mss = flow.mss
    sizes = [len(datagram) for datagram in datagrams]
    if max(sizes) > mss or min(sizes) == 0:
        empty = 0
        for size in sizes:
            if size > mss:
                _oversize(owner.log, stats, record, transport, size, source.format(udp=record.udp))
            elif not size:
                empty += 1
        if empty:
            # A segment without payload carries no datagram (the peer
            # would take it for a bare ACK).
            stats.drop("empty", empty)
        datagrams = [datagram for datagram in datagrams if 0 < len(datagram) <= mss]
        sizes = [size for size in sizes if 0 < size <= mss]
        if not datagrams:
            return
    # One call for the batch: the connection checks its state once.
    transport.send_datagrams(datagrams)
    counts = record.counts
    counts.up_datagrams += len(sizes)
    counts.up_bytes += sum(sizes)


def _oversize(
    log: Logger, stats: RelayStats, record: FlowRecord, transport: RelayTransport, size: int, source: str
) -> None:
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


def cannot_start(log: Logger, failure: object) -> NoReturn:
    """
    Log why the relay cannot start, in one line, and exit with status 1.

    twistd would print a full traceback for an exception raised from
    startService; the reason (not root, port in use...) is all an operator
    needs.  Services are ordered so that nothing holding a firewall rule
    has started yet when this is called.

    @param failure: the reason: an exception, or a sentence.
    """
    log.critical("faketcp-relay cannot start: {error}", error=failure)
    raise SystemExit(1)


class RelayService(service.Service):
    """
    The service both relays are: counters, settings, flow expiry, the
    descriptor limit, the sweep of stale rules, shutdown.  A mode says
    what its flows are (L{_flows}).

    @ivar reactor: the reactor the relay runs on.
    @ivar stats: the relay's counters.
    @ivar settings: the relay's tunables.
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
        self._expiryRotation: Rotation[RelayFlow] = Rotation()

    @property
    def loop(self) -> EventLoop:
        """
        The event loop adapter of the reactor, which reads the UDP sockets.
        """
        return loop_for(self.reactor)

    def _flows(self) -> Sequence[RelayFlow]:
        """
        The live flows, as a list of its own (flows end while it is walked).
        """
        raise NotImplementedError

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
                self.log.info(
                    "flow {udp} idle for {idle:g} s: closing",
                    udp=flow.record.udp,
                    idle=self.settings.udp_idle_timeout,
                )
                flow.close()

    def _ensureDescriptors(self, per_flow: int, captures: int = 1, extra: int = 0) -> None:
        """
        Make room in the descriptor limit for C{max_flows} flows of
        C{per_flow} descriptors each, for the kernel sockets that each of
        C{captures} captures holds for time-wait (at most
        L{Demultiplexer.timeWaitSockets} each), and for C{extra} more (a
        server's fallback connections), or say how many flows fit.
        """
        reserved = BASE_DESCRIPTORS + time_wait_descriptors(captures) + extra
        wanted = reserved + per_flow * self.settings.max_flows
        limit = ensure_open_files(wanted)
        if limit < wanted:
            self.log.warn(
                "the descriptor limit of {limit} leaves room for about {fit} flows, fewer than the {flows} "
                "of --max-flows (raise it with ulimit -n, or run with CAP_SYS_RESOURCE)",
                limit=limit,
                fit=max(limit - reserved, 0) // per_flow,
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
            # The process exits next: wait until no capture waits for a
            # peer's FIN (the flows just closed with FIN), at most STOP_GRACE.
            when_quiescent(self.reactor, STOP_GRACE).chainDeferred(done)

        pending.addCallback(finished)
        return done

    def _abortRemaining(self) -> None:
        for flow in list(self._flows()):
            flow.abort()
