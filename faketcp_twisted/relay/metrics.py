# -*- test-case-name: tests.test_relay -*-
"""
The relay's Prometheus endpoint (C{--metrics PORT}): the relay's counters,
read when scraped, served by twisted.web with prometheus_client's
C{MetricsResource}.

prometheus_client is an optional extra (C{pip install
'faketcp_twisted[metrics]'}); L{require} says so clearly when it is
missing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from twisted.application import service
from twisted.logger import Logger

from .stats import RelayStats

PREFIX = "faketcp_relay"


class MetricsUnavailable(RuntimeError):
    """
    prometheus_client cannot be imported.
    """


def require() -> None:
    """
    Check that prometheus_client and its Twisted resource can be imported.

    @raise MetricsUnavailable: with the command that installs it.
    """
    try:
        import prometheus_client.twisted  # noqa: F401  (imports prometheus_client too)
    except ImportError as failure:
        raise MetricsUnavailable(
            f"--metrics needs prometheus_client ({failure}); "
            "install it with: pip install 'faketcp_twisted[metrics]'"
        ) from failure


class RelayCollector:
    """
    A prometheus_client collector reading a L{RelayStats} at scrape time,
    so the relay keeps one set of counters.
    """

    def __init__(self, stats: RelayStats, mode: str) -> None:
        """
        @param mode: C{"server"} or C{"client"}, as a constant label.
        """
        self.stats = stats
        self.mode = mode

    def describe(self) -> list[Any]:
        """
        No fixed description: the metrics are made at each scrape.
        """
        return []

    def collect(self) -> Iterator[Any]:
        """
        The relay's metrics now.
        """
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        stats = self.stats
        counts = stats.totals()
        mode = ["mode"]
        counter, gauge = CounterMetricFamily, GaugeMetricFamily

        def one(family: Any, name: str, text: str, value: float) -> Any:
            # A metric of one value, labelled with the relay's mode.
            metric = family(f"{PREFIX}_{name}", text, labels=mode)
            metric.add_metric([self.mode], value)
            return metric

        yield one(gauge, "flows", "Flows open now.", len(stats.flows))
        yield one(counter, "flows_opened", "Flows opened since start.", stats.opened)
        yield one(counter, "connections", "Fake-TCP connections made since start.", stats.connections)
        direction = ["mode", "direction"]
        datagrams = CounterMetricFamily(f"{PREFIX}_datagrams", "Datagrams relayed.", labels=direction)
        size = CounterMetricFamily(f"{PREFIX}_bytes", "Datagram bytes relayed.", labels=direction)
        datagrams.add_metric([self.mode, "udp_to_faketcp"], counts.up_datagrams)
        datagrams.add_metric([self.mode, "faketcp_to_udp"], counts.down_datagrams)
        size.add_metric([self.mode, "udp_to_faketcp"], counts.up_bytes)
        size.add_metric([self.mode, "faketcp_to_udp"], counts.down_bytes)
        yield datagrams
        yield size
        yield one(counter, "rx_bytes", "Fake-TCP payload bytes received (duplicates included).", counts.rx_bytes)
        gap_text = "Bytes the peer's sequence numbers skipped (presumed lost)."
        yield one(counter, "rx_gap_bytes", gap_text, counts.gap_bytes)
        late_text = "Bytes that arrived late into a gap (reordered, not lost)."
        yield one(counter, "rx_late_bytes", late_text, counts.late_bytes)
        yield one(counter, "rx_reordered_segments", "Segments that arrived inside a gap.", counts.reordered)
        yield one(gauge, "rx_loss_ratio", "Estimated fraction of the peer's bytes lost, since start.", counts.loss)
        reason = ["mode", "reason"]
        by_reason = [
            ("drops", "Datagrams the relay dropped, by reason.", stats.all_drops()),
            ("capture_drops", "Segments the fake-TCP captures dropped, by reason.", stats.capture_drops()),
        ]
        for name, text, counted in by_reason:
            metric = CounterMetricFamily(f"{PREFIX}_{name}", text, labels=reason)
            for cause, count in sorted(counted.items()):
                metric.add_metric([self.mode, cause], count)
            yield metric

class MetricsService(service.Service):
    """
    Serves C{/metrics} (and every other path) on a TCP port.
    """

    log = Logger()

    def __init__(self, reactor: Any, port: int, interface: str, stats: RelayStats, mode: str) -> None:
        """
        @param port: the TCP port of the endpoint.
        @param interface: the address it listens on.
        """
        self.reactor = reactor
        self.port = port
        self.interface = interface
        self.stats = stats
        self.mode = mode
        self.listening: Any = None

    def startService(self) -> None:
        """
        Listen (a failure is logged and twistd exits with status 1).
        """
        from twisted.internet.error import CannotListenError

        from .common import cannot_start

        try:
            require()
        except MetricsUnavailable as failure:
            cannot_start(self.log, failure)
        from prometheus_client import CollectorRegistry
        from prometheus_client.twisted import MetricsResource
        from twisted.web.resource import Resource
        from twisted.web.server import Site

        registry = CollectorRegistry()
        registry.register(RelayCollector(self.stats, self.mode))
        # An unannotated lambda of prometheus_client's.
        metrics = MetricsResource(registry=registry)  # type: ignore[no-untyped-call]
        root = Resource()
        # Typed as a WSGI resource by prometheus_client, an IResource in fact.
        root.putChild(b"metrics", metrics)  # type: ignore[arg-type]
        root.putChild(b"", metrics)  # type: ignore[arg-type]
        site = Site(root)
        site.noisy = False
        try:
            self.listening = self.reactor.listenTCP(self.port, site, interface=self.interface)
        except CannotListenError as failure:
            cannot_start(self.log, failure)
        super().startService()  # type: ignore[no-untyped-call]
        host = self.listening.getHost()
        self.log.info("metrics on http://{host}:{port}/metrics", host=host.host, port=host.port)

    def stopService(self) -> Any:
        """
        Stop listening.
        """
        super().stopService()  # type: ignore[no-untyped-call]
        listening, self.listening = self.listening, None
        if listening is not None:
            return listening.stopListening()
        return None
