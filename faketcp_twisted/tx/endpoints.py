# -*- test-case-name: tests.test_endpoints -*-
"""
Endpoints and the C{faketcp:} endpoint string parsers.

Server::

    faketcp:PORT[:interface=ADDR][:backlog=N][:idleTimeout=S][:keepalive=S][:mark=M]
        [:key=SECRET | :keyFile=PATH][:authTimeout=S][:timestamps=yes|no][:firewall=auto|nftables|iptables]
        [:fallback=HOST\\:PORT][:fallbackLimit=N]

Client::

    faketcp:host=HOST:port=PORT[:timeout=S][:bindAddress=ADDR[:PORT]][:idleTimeout=S][:keepalive=S][:mark=M]
        [:key=SECRET | :keyFile=PATH][:authTimeout=S][:timestamps=yes|no][:firewall=auto|nftables|iptables]

Colons inside values are escaped with a backslash (C{interface=\\:\\:},
C{key=a\\:b}; an IPv6 C{bindAddress} with a port is bracketed:
C{bindAddress=[2001\\:2\\:\\:1]\\:5000}).  The parsers convert every
argument before an endpoint is made: a bad one is a L{ValueError} with a
one-line message naming it.

With C{key} or C{keyFile}, connections are authenticated with that
pre-shared key (see L{faketcp_twisted.core.auth}); a key on a command line
is visible to every local user through C{ps}, a key file is not.  A keyed
server with C{fallback} gives every connection that does not prove the key
to that TCP service (C{fallback=127.0.0.1\\:8443},
C{fallback=[\\:\\:1]\\:443}), see L{faketcp_twisted.engine.fallback}.
This module imports nothing heavy at import time: the plugin loads it on
every C{serverFromString} call, for every prefix.
"""

from __future__ import annotations

import inspect
import math
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

from ..engine.options import (
    FALLBACK_NEEDS_KEY,
    auth_from,
    auth_timeout,
    fallback_from,
    flow_options,
    is_ip_address,
    parse_address,
    split_address,
)


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
        authTimeout: float | None = None,
        timestamps: bool | None = None,
        firewall: str | None = None,
        fallback: str | tuple[str, int] | None = None,
        fallbackLimit: int | None = None,
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
        @param firewall: the backend of the silencing rules: C{"auto"}
            (default: an nftables table the kernel removes with the process
            where the kernel can, else iptables), C{"nftables"} or
            C{"iptables"}.
        @param fallback: a TCP service (C{"HOST:PORT"}, C{"[IPV6]:PORT"} or
            a (host, port) pair) that gets every connection that does not
            prove the key, spliced both ways, so that a prober sees that
            service (see the README); only with C{key} or C{keyFile}.
        @param fallbackLimit: most connections spliced to it at once
            (default 256); past it, such a connection is reset.
        @raise ValueError: a port outside 0 to 65535, both C{key} and
            C{keyFile}, or an empty or unreadable key, or an C{authTimeout}
            that is not positive, or a C{fallback} without a key or that is
            no address.
        """
        _check_port(port, 0)
        self._reactor = reactor
        self._port = port
        self._interface = interface
        self._backlog = backlog
        self._options = flow_options(idleTimeout, keepalive, mark, timestamps, firewall)
        self._auth = auth_from(key, keyFile)
        self._auth_timeout = auth_timeout(authTimeout)
        self._fallback, self._fallback_limit = fallback_from(fallback, fallbackLimit, self._auth)

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
            fallback=self._fallback,
            fallback_limit=self._fallback_limit,
        )

        def listening() -> FakeTCPPort:
            port.startListening()
            return port

        return defer.execute(listening)


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
        authTimeout: float | None = None,
        timestamps: bool | None = None,
        firewall: str | None = None,
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
        @param firewall: as for L{FakeTCPServerEndpoint}.
        @raise ValueError: a port outside 1 to 65535 (or a C{bindAddress}
            port outside 0 to 65535), both C{key} and C{keyFile}, or an
            empty or unreadable key, or an C{authTimeout} that is not
            positive.
        """
        _check_port(port, 1)
        self._reactor = reactor
        self._host = host
        self._port = port
        self._timeout = timeout
        if isinstance(bindAddress, str):
            bindAddress = (bindAddress, 0)
        if bindAddress is not None:
            _check_port(bindAddress[1], 0, "bindAddress port")
        self._bindAddress = bindAddress
        self._options = flow_options(idleTimeout, keepalive, mark, timestamps, firewall)
        self._auth = auth_from(key, keyFile)
        self._auth_timeout = auth_timeout(authTimeout)

    def connect(self, protocolFactory: Any) -> defer.Deferred[Any]:
        """
        Connect; fires with the connected protocol or fails with a
        L{ConnectError} subclass (or Twisted's L{NoProtocol} when the
        factory builds no protocol).
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
        from .transport import connect_protocol

        def connected(connection: Any) -> None:
            protocol = connect_protocol(connection, protocolFactory)
            if protocol is None:
                # As Twisted's own endpoints; the connection was reset.
                result.errback(NoProtocol())
                return
            result.callback(protocol)

        def failed(failure: Any) -> None:
            result.errback(twisted_connect_error(failure))

        def cancel(_: defer.Deferred[Any]) -> None:
            connector.cancel()

        from twisted.internet.error import NoProtocol

        result: defer.Deferred[Any] = defer.Deferred(cancel)
        connector = Connector(
            loop_for(self._reactor),
            host,
            self._port,
            self._timeout,
            self._bindAddress,
            self._options,
            connected,
            failed,
            auth=self._auth,
            auth_timeout=self._auth_timeout,
        )
        connector.start()
        return result


def _check_port(port: object, low: int, name: str = "port") -> None:
    """
    Check a port number given to an endpoint class directly (the string
    parsers check theirs before).

    @raise ValueError: not a whole number from C{low} to 65535, naming it.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not low <= port <= 65535:
        raise ValueError(f"faketcp: {name} must be a number from {low} to 65535, not {port!r}")


#: How endpoint strings say yes and no.
_BOOLEANS = {"yes": True, "true": True, "on": True, "1": True, "no": False, "false": False, "off": False, "0": False}


def _integer(name: str, text: str, low: int, high: int, base: int = 10) -> int:
    """
    A whole-number argument from C{low} to C{high}.

    @param base: as for L{int} (0 also takes C{0x} hex and C{0o} octal).
    @raise ValueError: anything else, naming the argument.
    """
    try:
        value = int(text, base)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        shown = f"{low} to {high:#x}" if base == 0 else f"{low} to {high}"
        raise ValueError(f"faketcp: {name} must be a number from {shown}, not {text!r}")
    return value


def _seconds(name: str, text: str, positive: bool) -> float:
    """
    A number of seconds: more than 0 if C{positive}, else 0 or more.

    @raise ValueError: anything else (also infinity and NaN), naming the
        argument.
    """
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        wanted = "a positive number of seconds" if positive else "a number of seconds, 0 or more"
        raise ValueError(f"faketcp: {name} must be {wanted}, not {text!r}")
    return value


def _boolean(name: str, text: str) -> bool:
    """
    A yes/no argument: yes/no, true/false, on/off or 1/0, in any case.

    @raise ValueError: anything else, naming the argument.
    """
    value = _BOOLEANS.get(text.strip().lower())
    if value is None:
        raise ValueError(f"faketcp: {name} must be yes or no, not {text!r}")
    return value


def _bind_address(text: str) -> tuple[str, int]:
    """
    A C{bindAddress}: C{HOST}, C{HOST:PORT}, or C{[IPV6]:PORT} (a bare IPv6
    address has no port).  No port is port 0, any free one.

    @raise ValueError: anything else, naming the argument.
    """
    host, port = split_address(text)
    port = "0" if port is None else port
    if host and port.isascii() and port.isdigit() and int(port) <= 65535:
        return host, int(port)
    raise ValueError(f"faketcp: bindAddress must be HOST, HOST:PORT or [IPV6]:PORT (PORT up to 65535), not {text!r}")


def _fallback(text: str | None, keyed: bool) -> tuple[str, int] | None:
    """
    A C{fallback}: C{HOST:PORT} or C{[IPV6]:PORT}, on a keyed server only.

    @raise ValueError: anything else, or no key, naming the argument.
    """
    if text is None:
        return None
    if not keyed:
        raise ValueError(f"faketcp: {FALLBACK_NEEDS_KEY}")
    try:
        return parse_address(text)
    except ValueError as failure:
        raise ValueError(f"faketcp: fallback must be HOST:PORT or [IPV6]:PORT: {failure}") from None


def _flow_arguments(
    idleTimeout: str | None,
    keepalive: str | None,
    mark: str | None,
    authTimeout: str | None,
    timestamps: str | None,
    firewall: str | None,
) -> dict[str, Any]:
    """
    The arguments both endpoints take, converted from an endpoint string's
    text (absent ones left out, so the endpoint's defaults hold).
    """
    converted: dict[str, Any] = {"firewall": firewall}
    if idleTimeout is not None:
        converted["idleTimeout"] = _seconds("idleTimeout", idleTimeout, positive=False)
    if keepalive is not None:
        converted["keepalive"] = _seconds("keepalive", keepalive, positive=False)
    if mark is not None:
        converted["mark"] = _integer("mark", mark, 0, 0xFFFFFFFF, base=0)
    if authTimeout is not None:
        converted["authTimeout"] = _seconds("authTimeout", authTimeout, positive=True)
    if timestamps is not None:
        converted["timestamps"] = _boolean("timestamps", timestamps)
    return converted


def _check_arguments(parse: Any, reactor: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """
    Check that an endpoint string's arguments fit C{parse}'s parameters.

    @raise ValueError: an unknown argument, one too many, or a missing one.
    """
    try:
        inspect.signature(parse).bind(reactor, *args, **kwargs)
    except TypeError as error:
        raise ValueError(f"faketcp: {error}") from None


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
        firewall: str | None = None,
        fallback: str | None = None,
        fallbackLimit: str | None = None,
    ) -> FakeTCPServerEndpoint:
        return FakeTCPServerEndpoint(
            reactor,
            _integer("port", port, 0, 65535),
            interface,
            _integer("backlog", backlog, 0, 65535),
            key=key,
            keyFile=keyFile,
            fallback=_fallback(fallback, key is not None or keyFile is not None),
            fallbackLimit=None if fallbackLimit is None else _integer("fallbackLimit", fallbackLimit, 1, 1 << 20),
            **_flow_arguments(idleTimeout, keepalive, mark, authTimeout, timestamps, firewall),
        )

    def parseStreamServer(self, reactor: Any, *args: Any, **kwargs: Any) -> FakeTCPServerEndpoint:
        """
        Make a L{FakeTCPServerEndpoint} from the parsed string.

        @raise ValueError: an argument that is unknown, missing or not
            valid, with a one-line message naming it.
        """
        _check_arguments(self._parseServer, reactor, args, kwargs)
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
        firewall: str | None = None,
    ) -> FakeTCPClientEndpoint:
        if not host or port is None:
            raise ValueError("faketcp: client endpoints need host= and port=")
        return FakeTCPClientEndpoint(
            reactor,
            host,
            _integer("port", port, 1, 65535),
            _seconds("timeout", timeout, positive=True),
            None if bindAddress is None else _bind_address(bindAddress),
            key=key,
            keyFile=keyFile,
            **_flow_arguments(idleTimeout, keepalive, mark, authTimeout, timestamps, firewall),
        )

    def parseStreamClient(self, reactor: Any, *args: Any, **kwargs: Any) -> FakeTCPClientEndpoint:
        """
        Make a L{FakeTCPClientEndpoint} from the parsed string.

        @raise ValueError: an argument that is unknown, missing or not
            valid, with a one-line message naming it.
        """
        _check_arguments(self._parseClient, reactor, args, kwargs)
        return self._parseClient(reactor, *args, **kwargs)
