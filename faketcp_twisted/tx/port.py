# -*- test-case-name: tests.test_integration -*-
"""
The Twisted listening port: an L{IListeningPort} over the shared
L{Listener}, building one protocol per connection from a factory.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python import log as legacy_log
from zope.interface import implementer

from ..core.auth import DEFAULT_TIMEOUT, AuthKey
from ..engine.connection import FlowConnection
from ..engine.demux import Demultiplexer
from ..engine.errors import FakeTCPError
from ..engine.listener import Listener
from ..engine.options import DEFAULT_FALLBACK_LIMIT, FlowOptions
from .errors import twisted_listen_error
from .reactor import loop_for
from .transport import connect_protocol, log_prefix_of


@implementer(IListeningPort)
class FakeTCPPort:
    """
    A fake-TCP listening port.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        port: int,
        factory: Any,
        interface: str = "",
        backlog: int = 50,
        options: FlowOptions | None = None,
        auth: AuthKey | None = None,
        auth_timeout: float = DEFAULT_TIMEOUT,
        fallback: tuple[str, int] | None = None,
        fallback_limit: int = DEFAULT_FALLBACK_LIMIT,
    ) -> None:
        """
        @param auth: the key clients must prove before the factory builds
            their protocol, or L{None}.
        @param auth_timeout: seconds a client's proof may take.
        @param fallback: the TCP service that gets the connections that do
            not prove the key (see L{faketcp_twisted.engine.fallback}).
        @param fallback_limit: most connections spliced to it at once.
        """
        self.reactor = reactor
        self.factory = factory
        self.interface = interface
        self.connected = False
        self._listener = Listener(
            loop_for(reactor),
            port,
            interface,
            backlog,
            options or FlowOptions(),
            self._connection,
            auth=auth,
            auth_timeout=auth_timeout,
            fallback=fallback,
            fallback_limit=fallback_limit,
        )
        self._stopped: defer.Deferred[None] | None = None

    @property
    def port(self) -> int:
        """
        The port number listened on.
        """
        return self._listener.port

    @property
    def demuxes(self) -> dict[int, Demultiplexer]:
        """
        The demultiplexer of each address family listened on.
        """
        return self._listener.demuxes

    @property
    def capture_drops(self) -> list[Counter[str]]:
        """
        The drop counters, by reason, of each capture the port reads (one
        per address family listened on): segments refused before any
        connection exists (malformed, orphan, time-wait...).
        """
        return [demux.drops for demux in self._listener.demuxes.values()]

    @property
    def fallback_limit(self) -> int:
        """
        The most connections spliced to the fallback service at once (two
        descriptors each): 0 without a fallback.
        """
        fallback = self._listener.fallback
        return 0 if fallback is None else fallback.limit

    def startListening(self) -> None:
        """
        Start listening.

        @raise CannotListenError: a subclass naming the reason.
        """
        try:
            self._listener.start()
        except FakeTCPError as failure:
            raise twisted_listen_error(self.interface, self._listener.port, failure) from failure
        self.connected = True
        # Twisted's TCP ports' line, word for word (tools and tests match it).
        legacy_log.msg(f"{log_prefix_of(self.factory)} starting on {self.port}")
        self.factory.doStart()

    def _connection(self, connection: FlowConnection) -> None:
        connect_protocol(connection, self.factory)

    def stopListening(self) -> defer.Deferred[None]:
        """
        Stop accepting.  Connections already made go on, as with Twisted's
        TCP ports; the captures and silencing rules go when the last of them
        ends.
        """
        if self._stopped is None:
            stopped = self._stopped = defer.Deferred()
            if self.connected:
                self.connected = False
                legacy_log.msg(f"(TCP Port {self.port} Closed)")
                self.factory.doStop()
            self._listener.close()
            self.reactor.callLater(0, stopped.callback, None)
        return self._stopped

    loseConnection = stopListening

    def abortConnections(self) -> None:
        """
        Reset every connection this port accepted (a server shutting down:
        its peers learn at once instead of at their idle timeout).
        """
        self._listener.abort_all()

    def getHost(self) -> IPv4Address | IPv6Address:
        """
        The address listened on, of type C{"TCP"}.
        """
        host = self.interface or "0.0.0.0"
        if ":" in host:
            return IPv6Address("TCP", host, self.port)
        return IPv4Address("TCP", host, self.port)

    def logPrefix(self) -> str:
        """
        The prefix of log lines about this port.
        """
        return f"FakeTCPPort {self.port}"

    def __repr__(self) -> str:
        return f"<FakeTCPPort {self.interface or '0.0.0.0'}:{self.port}>"
