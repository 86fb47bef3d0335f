# -*- test-case-name: tests.test_relay_tap -*-
"""
C{twistd faketcp-relay}: its options and the service it makes.

This module is loaded by twistd only when the command is used (the plugin
names it); it imports no reactor at import time.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

from twisted.python import usage

from ..engine.options import FALLBACK_NEEDS_KEY, parse_address
from ..io import nftables
from ..io.firewall import BACKENDS
from . import spec as relayspec

#: The table --print-rules names: a hand-made copy, apart from any relay's own.
MANUAL_TABLE = "faketcp_twisted_manual"

EXAMPLES = """
Examples:
  server side: fake-TCP in, UDP out (to a local WireGuard):
    twistd -n faketcp-relay --listen faketcp:9191:interface=0.0.0.0 \\
        --forward udp:host=127.0.0.1:port=51820
  client side: UDP in, fake-TCP out:
    twistd -n faketcp-relay --listen udp:51820:interface=127.0.0.1 \\
        --forward faketcp:host=203.0.113.7:port=9191
  the rules the server would install, then exit (no root needed):
    twistd -n faketcp-relay --listen faketcp:9191 --forward udp:host=127.0.0.1:port=51820 --print-rules
  IPv6 (escape colons): --listen faketcp:9191:interface=\\:\\:
    --forward faketcp:host=2001\\:db8\\:\\:7:port=9191
  keepalive every 5 s, peer dead after 30 s of silence, Prometheus on :9100:
    ... --keepalive 5 --peer-timeout 30 --metrics 9100 --metrics-interface 0.0.0.0

The faketcp: strings take every argument of the faketcp: endpoints
(interface, backlog, timeout, bindAddress, idleTimeout, keepalive, mark,
timestamps, firewall); an explicit keepalive=, idleTimeout=, timeout=,
timestamps= or firewall=
there wins over --keepalive, --peer-timeout, --connect-timeout and
--no-timestamps and --firewall.  Signals: SIGTERM and SIGINT stop the
relay and remove its firewall rules; SIGUSR1 logs the per-flow table.
"""


def _seconds(value: str) -> float:
    seconds = float(value)
    if seconds < 0:
        raise ValueError("must not be negative")
    return seconds


def _backend(value: str) -> str:
    if value not in BACKENDS:
        raise ValueError(f"must be one of {', '.join(BACKENDS)}")
    return value


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError("must be at least 1")
    return number


def _port(value: str) -> int:
    number = int(value)
    if not 0 <= number <= 65535:
        raise ValueError("must be a port number")
    return number


class Options(usage.Options):
    """
    The command line of C{twistd faketcp-relay}.
    """

    synopsis = "--listen LISTEN --forward FORWARD [options]"
    longdesc = (
        "Relay UDP datagrams over fake-TCP (wire compatible with tcpraw, kcptun --tcp): "
        "one UDP datagram is one TCP segment is one datagram out. A server listens "
        "fake-TCP and forwards UDP; a client listens UDP and forwards fake-TCP."
    )

    optParameters: list[list[Any]] = [
        [
            "firewall",
            None,
            "auto",
            "Where the silencing rules go: auto (an nftables table the kernel removes with the relay, "
            "even after SIGKILL, where the kernel can: Linux 5.12+; else legacy iptables), nftables, "
            "or iptables. Example: --firewall iptables.",
            _backend,
        ],
        [
            "listen",
            None,
            None,
            "Where to listen: faketcp:PORT[:interface=ADDR][:...] (server: e.g. "
            "faketcp:9191:interface=0.0.0.0) or udp:PORT[:interface=ADDR] (client: e.g. "
            "udp:51820:interface=127.0.0.1; interface defaults to 127.0.0.1).",
        ],
        [
            "forward",
            None,
            None,
            "Where to send: udp:host=HOST:port=PORT (server: e.g. udp:host=127.0.0.1:port=51820) "
            "or faketcp:host=HOST:port=PORT[:...] (client: e.g. faketcp:host=203.0.113.7:port=9191).",
        ],
        [
            "keepalive",
            None,
            10.0,
            "Seconds between keepalive ACKs on a quiet fake-TCP connection, so NAT mappings and "
            "the peer's dead-peer timer stay fresh; 0 sends none. Example: --keepalive 5.",
            _seconds,
        ],
        [
            "peer-timeout",
            None,
            60.0,
            "Seconds without any segment from the fake-TCP peer (keepalives count) after which "
            "the peer is taken for dead and its connection closed; a client reconnects on the "
            "next datagram. 0 never. Example: --peer-timeout 30.",
            _seconds,
        ],
        [
            "idle-timeout",
            None,
            180.0,
            "Seconds without a datagram either way after which a flow is closed (its connection "
            "ends with FIN, its UDP socket or source mapping is freed). 0 never. "
            "Example: --idle-timeout 600.",
            _seconds,
        ],
        [
            "connect-timeout",
            None,
            10.0,
            "Client: seconds to wait for a fake-TCP handshake. Example: --connect-timeout 5.",
            _seconds,
        ],
        [
            "reconnect-delay",
            None,
            1.0,
            "Client: seconds after a failed connection attempt during which a flow's datagrams "
            "are dropped (counted as reconnect-wait) instead of trying again. "
            "Example: --reconnect-delay 3.",
            _seconds,
        ],
        [
            "queue",
            None,
            64,
            "Client: most datagrams of a flow kept while its connection is being made; more are "
            "dropped (queue-full). Example: --queue 256.",
            _positive,
        ],
        [
            "max-flows",
            None,
            1024,
            "Most flows at once; a server resets further connections, a client drops datagrams "
            "of further sources (flow-limit). Example: --max-flows 10000.",
            _positive,
        ],
        [
            "stats-interval",
            None,
            10.0,
            "Seconds between stats lines in the log (flows, datagrams and bytes each way, loss "
            "and reordering, drops by reason); 0 turns them off. Example: --stats-interval 60.",
            _seconds,
        ],
        [
            "fallback",
            None,
            None,
            "Server, with key= or keyFile= on --listen: give every connection that does not prove "
            "the key to this TCP service, spliced both ways, so that a prober sees that service "
            "and not a tunnel (at most fallbackLimit=N at once, default 256; set it on --listen). "
            "Example: --fallback 127.0.0.1:443, --fallback [::1]:443.",
        ],
        [
            "metrics",
            None,
            None,
            "Serve Prometheus metrics on this TCP port (needs prometheus_client: "
            "pip install 'faketcp_twisted[metrics]'). Example: --metrics 9100.",
            _port,
        ],
        [
            "metrics-interface",
            None,
            "127.0.0.1",
            "Address of the metrics endpoint. Example: --metrics-interface 0.0.0.0.",
        ],
    ]

    optFlags: list[list[Any]] = [
        [
            "no-timestamps",
            None,
            "Send segments without TCP timestamps, as tcpraw 1.2.25 and phantun do: each segment "
            "then has 12 more bytes of room (an MSS of 1460 instead of 1448 on a 1500-byte IPv4 "
            "path). By default segments carry timestamps when the handshake agreed on them, as "
            "the kernel's own would.",
        ],
        [
            "print-rules",
            None,
            "Print the firewall rules the relay would install (iptables-save syntax) and exit; "
            "no root needed.",
        ],
    ]

    def getUsage(self, width: int | None = None) -> str:
        """
        The usual usage text, followed by examples.
        """
        return super().getUsage(width) + EXAMPLES

    def postOptions(self) -> None:
        """
        Check that --listen and --forward describe a relay.

        @raise usage.UsageError: they do not.
        """
        if self["listen"] is None or self["forward"] is None:
            raise usage.UsageError("both --listen and --forward are needed (see --help)")
        try:
            self.spec = relayspec.parse(self["listen"], self["forward"])
        except relayspec.SpecError as failure:
            raise usage.UsageError(str(failure)) from None
        if self["fallback"] is not None:
            self._checkFallback(self["fallback"])
        if self["metrics"] is not None and not self["print-rules"]:
            from .metrics import MetricsUnavailable, require

            try:
                require()
            except MetricsUnavailable as failure:
                raise usage.UsageError(str(failure)) from None

    def _checkFallback(self, text: str) -> None:
        if self.spec.mode != "server":
            raise usage.UsageError("--fallback is for a server relay (--listen faketcp:...)")
        arguments = self.spec.faketcp_args.kwargs
        if "key" not in arguments and "keyFile" not in arguments:
            raise usage.UsageError(f"--fallback: {FALLBACK_NEEDS_KEY} on --listen")
        try:
            parse_address(text)
        except ValueError as failure:
            raise usage.UsageError(f"--fallback: {failure}") from None

    def faketcp(self) -> str:
        """
        The C{faketcp:} string with the relay's defaults for what it does
        not say itself.
        """
        defaults = {
            "keepalive": f"{self['keepalive']:g}",
            "idleTimeout": f"{self['peer-timeout']:g}",
        }
        if self["no-timestamps"]:
            defaults["timestamps"] = "no"
        defaults["firewall"] = self["firewall"]
        if self["fallback"] is not None:
            defaults["fallback"] = self["fallback"]
        if self.spec.mode == "client":
            defaults["timeout"] = f"{self['connect-timeout']:g}"
        return relayspec.with_defaults(self.spec.faketcp, defaults)


def print_rules(spec: relayspec.RelaySpec, out: TextIO, backend: str = "auto") -> int:
    """
    Print the rules a relay with C{spec} would install, in the syntax of
    C{backend} (both, for C{auto}: which one the relay takes depends on
    the kernel it runs on).

    @return: the exit status.
    """
    try:
        rules = relayspec.silence_rules(spec)
    except relayspec.SpecError as failure:
        print(f"faketcp-relay: {failure}", file=sys.stderr)
        return 1
    print(f"# faketcp-relay {spec.mode}: {spec.describe()}", file=out)
    if backend != "iptables":
        where = " (--firewall auto takes it where the kernel has owned tables, Linux 5.12+)"
        print(
            "# nftables"
            + (where if backend == "auto" else "")
            + ": the relay's own table is owned by its netlink socket and goes with the relay, even after "
            "SIGKILL; one made with these commands is an ordinary table, which stays until "
            f"'nft delete table inet {MANUAL_TABLE}'",
            file=out,
        )
        for line in nftables.describe_table(MANUAL_TABLE):
            print(line, file=out)
        for rule in rules:
            print(nftables.describe(rule, MANUAL_TABLE), file=out)
    if backend == "nftables":
        return 0
    if backend == "auto":
        print("# iptables, where nftables cannot be had:", file=out)
    print(
        "# the relay inserts these at the top of the filter table's OUTPUT chain (legacy iptables) "
        "when it starts listening (server) or connecting (client), and removes them when it stops;",
        file=out,
    )
    print(
        "# printed with the comment 'faketcp_twisted manual', which no start sweeps; the relay's own "
        "copies carry 'faketcp_twisted pid=PID start=T', swept once that process has exited",
        file=out,
    )
    for rule in rules:
        print(rule.describe(comment="faketcp_twisted manual"), file=out)
    return 0


class _ToTwistedLog(logging.Handler):
    """
    Hands the package's stdlib log records (auth refusals, accept pauses)
    to Twisted's log, so they land in twistd's log file with the rest.
    """

    def emit(self, record: logging.LogRecord) -> None:
        from twisted.logger import Logger, LogLevel

        level = LogLevel.warn if record.levelno >= logging.WARNING else LogLevel.info
        Logger(namespace=record.name).emit(level, "{message}", message=self.format(record))


def _log_stdlib_to_twisted() -> None:
    logger = logging.getLogger("faketcp_twisted")
    if not any(isinstance(handler, _ToTwistedLog) for handler in logger.handlers):
        logger.addHandler(_ToTwistedLog())
        logger.setLevel(logging.INFO)
        logger.propagate = False


def makeService(options: Options) -> Any:
    """
    The relay (and its stats reporter and metrics endpoint) as one service;
    with C{--print-rules}, print the rules and exit instead.
    """
    if options["print-rules"]:
        raise SystemExit(print_rules(options.spec, sys.stdout, options["firewall"]))
    from twisted.application.service import MultiService
    from twisted.internet import reactor

    from .client import ClientRelay
    from .common import RelayService, RelaySettings
    from .server import ServerRelay
    from .stats import RelayStats, StatsReporter

    _log_stdlib_to_twisted()
    stats = RelayStats()
    settings = RelaySettings(
        udp_idle_timeout=options["idle-timeout"],
        max_flows=options["max-flows"],
        queue_limit=options["queue"],
        reconnect_delay=options["reconnect-delay"],
    )
    spec = options.spec
    top = MultiService()
    # The relay starts last: when anything before it fails to start, no
    # firewall rule is held yet.
    if options["metrics"] is not None:
        from .metrics import MetricsService

        metrics = MetricsService(reactor, options["metrics"], options["metrics-interface"], stats, spec.mode)
        metrics.setServiceParent(top)  # type: ignore[no-untyped-call]
    StatsReporter(reactor, stats, options["stats-interval"]).setServiceParent(top)  # type: ignore[no-untyped-call]
    relay: RelayService
    if spec.mode == "server":
        relay = ServerRelay(reactor, options.faketcp(), spec.udp, stats, settings)
    else:
        relay = ClientRelay(reactor, spec.udp, options.faketcp(), stats, settings)
    relay.setServiceParent(top)  # type: ignore[no-untyped-call]
    return top
