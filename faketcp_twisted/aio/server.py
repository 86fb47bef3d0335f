# -*- test-case-name: tests.test_aio -*-
"""
The asyncio server: a fake-TCP listening port as an
C{asyncio.AbstractServer}, made by L{create_server} as
C{loop.create_server} makes TCP ones.

It stands on the engine's L{Listener<faketcp_twisted.engine.listener.Listener>}; each connection the listener
accepts (and, with a key, authenticated) gets a protocol from the factory
and an L{AioTransport}.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from asyncio import trsock
from collections.abc import Callable

from ..core.auth import DEFAULT_TIMEOUT, AuthKey, auth_key
from ..engine.connection import FlowConnection
from ..engine.errors import FakeTCPError
from ..engine.listener import Listener
from ..engine.options import DEFAULT_FALLBACK_LIMIT, FlowOptions, fallback_from, flow_options, host_port
from .errors import FakeTCPOSError, asyncio_error
from .loop import loop_for, resolve
from .transport import AioTransport, attach

__all__ = ["AioServer", "ProtocolFactory", "create_server"]

#: Makes one protocol per connection.
ProtocolFactory = Callable[[], asyncio.BaseProtocol]


class AioServer(asyncio.AbstractServer):
    """
    A fake-TCP listening port, as an asyncio server.

    Closing stops accepting; connections already made go on (close or
    abort them with L{close_clients} and L{abort_clients}).
    L{wait_closed} returns once the port is closed and every connection has
    ended, its captures closed and its silencing rules removed.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        protocol_factory: ProtocolFactory,
        host: str,
        port: int,
        backlog: int,
        options: FlowOptions,
        auth: AuthKey | None = None,
        auth_timeout: float = DEFAULT_TIMEOUT,
        fallback: tuple[str, int] | None = None,
        fallback_limit: int = DEFAULT_FALLBACK_LIMIT,
    ) -> None:
        self._loop = loop
        self._protocol_factory = protocol_factory
        self._host = host
        self._listener = Listener(
            loop_for(loop),
            port,
            host,
            backlog,
            options,
            self._accepted,
            auth=auth,
            auth_timeout=auth_timeout,
            fallback=fallback,
            fallback_limit=fallback_limit,
        )
        self._listener.on_closed = self._listenerClosed
        self._transports: set[AioTransport] = set()
        self._serving = False
        self._listener_closed = False
        self._closed: asyncio.Future[None] = loop.create_future()
        self._serving_forever: asyncio.Future[None] | None = None

    def _start(self) -> None:
        """
        Listen.

        @raise FakeTCPOSError: a subclass naming the reason.
        """
        try:
            self._listener.start()
        except FakeTCPError as failure:
            where = f"listening on {host_port(self._host, self._listener.port)}"
            raise asyncio_error(failure, where) from failure
        self._serving = True

    @property
    def port(self) -> int:
        """
        The port number listened on (the actual one after asking for 0).
        """
        return self._listener.port

    @property
    def sockets(self) -> tuple[trsock.TransportSocket, ...]:
        """
        The kernel's listening socket (it makes the handshakes), while
        serving.
        """
        listener = self._listener.listener
        if not self._serving or listener is None:
            return ()
        return (trsock.TransportSocket(listener),)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        """
        The loop the server runs on.
        """
        return self._loop

    def is_serving(self) -> bool:
        """
        Whether new connections are accepted.
        """
        return self._serving

    async def start_serving(self) -> None:
        """
        Nothing to do: the server listens from its creation.
        """
        await asyncio.sleep(0)

    async def serve_forever(self) -> None:
        """
        Serve until cancelled; cancelling closes the server and waits for
        it to be closed.
        """
        if self._serving_forever is not None:
            raise RuntimeError(f"server {self!r} is already being awaited on serve_forever()")
        if not self._serving:
            raise RuntimeError(f"server {self!r} is closed")
        self._serving_forever = self._loop.create_future()
        try:
            await self._serving_forever
        except asyncio.CancelledError:
            try:
                self.close()
                await self.wait_closed()
            finally:
                raise
        finally:
            self._serving_forever = None

    def close(self) -> None:
        """
        Stop accepting.  Connections already made go on.
        """
        if not self._serving and self._listener_closed:
            return
        self._serving = False
        self._listener.close()
        forever = self._serving_forever
        if forever is not None and not forever.done():
            forever.cancel()
        self._maybeClosed()

    def close_clients(self) -> None:
        """
        Close (FIN) every connection of this server.
        """
        for transport in list(self._transports):
            transport.close()

    def abort_clients(self) -> None:
        """
        Reset (RST) every connection of this server.
        """
        self._listener.abort_all()

    async def wait_closed(self) -> None:
        """
        Wait until the server is closed and every connection has ended.
        """
        await asyncio.shield(self._closed)

    # -- the listener's and the transports' calls ------------------------

    def _accepted(self, connection: FlowConnection) -> None:
        if not self._serving:
            # Adopted after close(): the handshake finished too late.
            connection.refuse()
            return
        try:
            protocol = self._protocol_factory()
        except Exception as failure:
            self._loop.call_exception_handler(
                {"message": "protocol factory failed", "exception": failure, "server": self}
            )
            connection.refuse()
            return
        attach(connection, protocol, on_made=self._transports.add, on_lost=self._transportLost)

    def _transportLost(self, transport: AioTransport) -> None:
        self._transports.discard(transport)
        self._maybeClosed()

    def _listenerClosed(self) -> None:
        self._listener_closed = True
        self._maybeClosed()

    def _maybeClosed(self) -> None:
        if self._listener_closed and not self._transports and not self._closed.done():
            self._closed.set_result(None)

    def __repr__(self) -> str:
        return f"<AioServer faketcp {host_port(self._host, self._listener.port)}>"


async def create_server(
    protocol_factory: ProtocolFactory,
    host: str | None = None,
    port: int = 0,
    *,
    backlog: int = 100,
    idle_timeout: float | None = None,
    keepalive: float | None = None,
    mark: int | None = None,
    key: str | bytes | None = None,
    key_file: str | None = None,
    auth_timeout: float = DEFAULT_TIMEOUT,
    timestamps: bool = True,
    firewall: str = "auto",
    fallback: tuple[str, int] | None = None,
    fallback_limit: int | None = None,
) -> AioServer:
    """
    Listen for fake-TCP connections, as C{loop.create_server} listens for
    TCP ones.

    @param protocol_factory: makes one protocol per connection.
    @param host: the local address; L{None} or C{""} for every address
        (C{::}, which also serves IPv4 where the system allows dual stack),
        C{"0.0.0.0"} for every IPv4 address.  A name is resolved to its
        first address.
    @param port: the TCP port (0 picks a free one: see L{AioServer.port}).
    @param backlog: the kernel listener's backlog.
    @param idle_timeout: seconds of silence from a peer after which its
        connection ends with C{TimeoutError} (default 180; 0 never).
    @param keepalive: seconds between keepalive ACKs on a quiet connection
        (default 0: none).
    @param mark: the firewall mark of the silenced kernel sockets.
    @param key: a pre-shared key clients must prove before
        C{protocol_factory} is called for them (a string is taken as UTF-8).
        A key in a command line is visible to every local user through
        C{ps}: prefer C{key_file}.
    @param key_file: a file holding the key instead (surrounding whitespace
        ignored).
    @param auth_timeout: seconds a client's proof may take.
    @param timestamps: whether segments carry TCP timestamps when the
        handshake agreed on them (12 bytes of each segment's room).
    @param fallback: the (host, port) of a TCP service that gets every
        connection that does not prove the key, spliced both ways, so that
        a prober sees that service (see the README); only with C{key} or
        C{key_file}.
    @param fallback_limit: most connections spliced to it at once (default
        256); past it, such a connection is reset.
    @raise FakeTCPOSError: a subclass naming the reason (C{errno} is
        C{EADDRINUSE} for a port in use).
    @raise ValueError: both C{key} and C{key_file}, or an empty or
        unreadable key, or a C{fallback} without a key.
    """
    loop = asyncio.get_running_loop()
    options = flow_options(idle_timeout, keepalive, mark, timestamps, firewall)
    auth = auth_key(key, key_file)
    falling_back, limit = fallback_from(fallback, fallback_limit, auth)

    def server_on(address: str) -> AioServer:
        return AioServer(
            loop, protocol_factory, address, port, backlog, options, auth, auth_timeout, falling_back, limit
        )

    if host:
        host = await resolve(loop, host, port, socket.AF_UNSPEC, passive=True)
        server = server_on(host)
        server._start()
        return server
    # Every address: dual stack, or IPv4 alone on a host without IPv6.
    server = server_on("::")
    try:
        server._start()
    except FakeTCPOSError as failure:
        if failure.errno != errno.EAFNOSUPPORT:
            raise
        server = server_on("0.0.0.0")
        server._start()
    return server
