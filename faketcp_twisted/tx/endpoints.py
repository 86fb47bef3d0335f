# -*- test-case-name: tests.test_endpoints -*-
"""
Endpoints and the C{faketcp:} endpoint string parsers.

Server::

    faketcp:PORT[:interface=ADDR][:backlog=N][:idleTimeout=S][:keepalive=S][:mark=M]
        [:key=SECRET | :keyFile=PATH][:authTimeout=S]

Client::

    faketcp:host=HOST:port=PORT[:timeout=S][:bindAddress=ADDR][:idleTimeout=S][:keepalive=S][:mark=M]
        [:key=SECRET | :keyFile=PATH][:authTimeout=S]

Colons inside values are escaped with a backslash (C{interface=\\:\\:},
C{key=a\\:b}).  With C{key} or C{keyFile}, connections are authenticated
with that pre-shared key (see L{faketcp_twisted.core.auth}); a key on a command
line is visible to every local user through C{ps}, a key file is not.
This module imports nothing heavy at import time: the plugin loads it on
every C{serverFromString} call, for every prefix.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import (
    IStreamClientEndpoint,
    IStreamClientEndpointStringParserWithReactor,
    IStreamServerEndpoint,
    IStreamServerEndpointStringParser,
)
from twisted.plugin import IPlugin
from zope.interface import implementer

from ..engine.options import auth_from, auth_timeout, flow_options, is_ip_address


@implementer(IStreamServerEndpoint)
class FakeTCPServerEndpoint:
    """
    A fake-TCP server endpoint.
    """

    def __init__(
        self,
        reactor: Any,
        port: int,
        interface: str = "",
        backlog: int = 50,
        idleTimeout: float | None = None,
        keepalive: float | None = None,
        mark: int | None = None,
        key: str | bytes | None = None,
        keyFile: str | None = None,
        authTimeout: float | str | None = None,
        timestamps: bool | str | None = None,
    ) -> None:
        """
        @param port: the TCP port (0 picks a free one).
        @param interface: the local address; C{""} or C{"0.0.0.0"} for every
            IPv4 address, C{"::"} for every address (dual stack when the
            system allows).
        @param idleTimeout: seconds of silence from a peer after which its
            connection ends with C{TimeoutError} (default 180; 0 never).
        @param keepalive: seconds between keepalive ACKs on a quiet
            connection (default 0: none).
        @param mark: the firewall mark of the silenced kernel sockets.
        @param key: a pre-shared key clients must prove before the factory
            builds their protocol (a string is taken as UTF-8).
        @param keyFile: a file holding the key instead (surrounding
            whitespace ignored).
        @param authTimeout: seconds a client's proof may take (default 5).
        @param timestamps: whether segments carry TCP timestamps when the
            handshake agreed on them (default yes; they take 12 bytes of
            each segment's payload room: see the README).
        @raise ValueError: both C{key} and C{keyFile}, or an empty or
            unreadable key, or a C{timestamps} that is not yes or no.
        """
        self._reactor = reactor
        self._port = port
        self._interface = interface
        self._backlog = backlog
        self._options = flow_options(idleTimeout, keepalive, mark, timestamps)
        self._auth = auth_from(key, keyFile)
        self._auth_timeout = auth_timeout(authTimeout)

    def listen(self, protocolFactory: Any) -> defer.Deferred[Any]:
        """
        Listen; fires with an L{IListeningPort} or fails with a
        L{CannotListenError} subclass.
        """
        from .port import FakeTCPPort

        port = FakeTCPPort(
            self._reactor,
            self._port,
            protocolFactory,
            interface=self._interface,
            backlog=self._backlog,
            options=self._options,
            auth=self._auth,
            auth_timeout=self._auth_timeout,
        )
        return defer.execute(lambda: (port.startListening(), port)[1])


@implementer(IStreamClientEndpoint)
class FakeTCPClientEndpoint:
    """
    A fake-TCP client endpoint.
    """

    def __init__(
        self,
        reactor: Any,
        host: str,
        port: int,
        timeout: float = 30,
        bindAddress: tuple[str, int] | str | None = None,
        idleTimeout: float | None = None,
        keepalive: float | None = None,
        mark: int | None = None,
        key: str | bytes | None = None,
        keyFile: str | None = None,
        authTimeout: float | str | None = None,
        timestamps: bool | str | None = None,
    ) -> None:
        """
        @param host: an IP address, or a name resolved with getaddrinfo.
        @param timeout: seconds to wait for the handshake (and, with a
            key, the server's proof).
        @param bindAddress: the local address (and optionally port) to
            connect from.
        @param key: a pre-shared key the server must prove, and this side
            proves, before the connection is made (a string is taken as
            UTF-8); a server that cannot fails the attempt with
            L{AuthenticationError}.
        @param keyFile: a file holding the key instead.
        @param authTimeout: seconds the server's proof may take (default 5).
        @param timestamps: as for L{FakeTCPServerEndpoint}.
        @raise ValueError: both C{key} and C{keyFile}, or an empty or
            unreadable key, or a C{timestamps} that is not yes or no.
        """
        self._reactor = reactor
        self._host = host
        self._port = port
        self._timeout = timeout
        if isinstance(bindAddress, str):
            bindAddress = (bindAddress, 0)
        self._bindAddress = bindAddress
        self._options = flow_options(idleTimeout, keepalive, mark, timestamps)
        self._auth = auth_from(key, keyFile)
        self._auth_timeout = auth_timeout(authTimeout)

    def connect(self, protocolFactory: Any) -> defer.Deferred[Any]:
        """
        Connect; fires with the connected protocol or fails with a
        L{ConnectError} subclass.
        """
        if is_ip_address(self._host):
            return self._connect(self._host, protocolFactory)
        from twisted.internet.threads import deferToThreadPool

        resolving = deferToThreadPool(
            self._reactor,
            self._reactor.getThreadPool(),
            socket.getaddrinfo,
            self._host,
            self._port,
            0,
            socket.SOCK_STREAM,
        )

        def resolved(answers: list[Any]) -> defer.Deferred[Any]:
            return self._connect(answers[0][4][0], protocolFactory)

        def failed(failure: Any) -> None:
            from twisted.internet.error import DNSLookupError

            failure.trap(OSError)
            raise DNSLookupError(f"cannot resolve {self._host}: {failure.value}")

        return resolving.addCallbacks(resolved, failed)

    def _connect(self, host: str, protocolFactory: Any) -> defer.Deferred[Any]:
        from ..engine.connector import Connector
        from .errors import twisted_connect_error
        from .reactor import loop_for
        from .transport import FakeTCPTransport

        def connected(connection: Any) -> None:
            protocol = protocolFactory.buildProtocol(connection.getPeer())
            if protocol is None:
                connection.refuse()
                result.errback(ConnectError(string="the factory built no protocol"))
                return
            connection.makeConnection(protocol)
            result.callback(protocol)

        def failed(failure: Any) -> None:
            result.errback(twisted_connect_error(failure))

        def cancel(_: defer.Deferred[Any]) -> None:
            connector.cancel()

        from twisted.internet.error import ConnectError

        result: defer.Deferred[Any] = defer.Deferred(cancel)
        connector = Connector(
            loop_for(self._reactor),
            host,
            self._port,
            self._timeout,
            self._bindAddress,
            self._options,
            FakeTCPTransport,
            connected,
            failed,
            auth=self._auth,
            auth_timeout=self._auth_timeout,
        )
        connector.start()
        return result


@implementer(IPlugin, IStreamServerEndpointStringParser)
class FakeTCPServerParser:
    """
    Parses C{faketcp:PORT:interface=...} server endpoint strings.
    """

    prefix = "faketcp"

    def _parseServer(
        self,
        reactor: Any,
        port: str,
        interface: str = "",
        backlog: str = "50",
        idleTimeout: str | None = None,
        keepalive: str | None = None,
        mark: str | None = None,
        key: str | None = None,
        keyFile: str | None = None,
        authTimeout: str | None = None,
        timestamps: str | None = None,
    ) -> FakeTCPServerEndpoint:
        return FakeTCPServerEndpoint(
            reactor,
            int(port),
            interface,
            int(backlog),
            idleTimeout,
            keepalive,
            mark,
            key=key,
            keyFile=keyFile,
            authTimeout=authTimeout,
            timestamps=timestamps,
        )

    def parseStreamServer(self, reactor: Any, *args: Any, **kwargs: Any) -> FakeTCPServerEndpoint:
        """
        Make a L{FakeTCPServerEndpoint} from the parsed string.
        """
        return self._parseServer(reactor, *args, **kwargs)


@implementer(IPlugin, IStreamClientEndpointStringParserWithReactor)
class FakeTCPClientParser:
    """
    Parses C{faketcp:host=HOST:port=PORT} client endpoint strings.
    """

    prefix = "faketcp"

    def _parseClient(
        self,
        reactor: Any,
        host: str | None = None,
        port: str | None = None,
        timeout: str = "30",
        bindAddress: str | None = None,
        idleTimeout: str | None = None,
        keepalive: str | None = None,
        mark: str | None = None,
        key: str | None = None,
        keyFile: str | None = None,
        authTimeout: str | None = None,
        timestamps: str | None = None,
    ) -> FakeTCPClientEndpoint:
        if host is None or port is None:
            raise ValueError("faketcp client endpoints need host= and port=")
        return FakeTCPClientEndpoint(
            reactor,
            host,
            int(port),
            float(timeout),
            bindAddress,
            idleTimeout,
            keepalive,
            mark,
            key=key,
            keyFile=keyFile,
            authTimeout=authTimeout,
            timestamps=timestamps,
        )

    def parseStreamClient(self, reactor: Any, *args: Any, **kwargs: Any) -> FakeTCPClientEndpoint:
        """
        Make a L{FakeTCPClientEndpoint} from the parsed string.
        """
        return self._parseClient(reactor, *args, **kwargs)
