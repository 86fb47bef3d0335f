# -*- test-case-name: tests.test_aio -*-
"""
The asyncio client: L{create_connection} opens a fake-TCP connection as
C{loop.create_connection} opens a TCP one, on the engine's L{Connector<faketcp_twisted.engine.connector.Connector>},
and returns its L{AioTransport} and protocol.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import TypeVar

from ..core.auth import DEFAULT_TIMEOUT, auth_key
from ..engine.connection import FlowConnection
from ..engine.connector import Connector
from ..engine.errors import FakeTCPError
from ..engine.options import flow_options, host_port
from .errors import asyncio_error
from .loop import loop_for, resolve
from .transport import AioTransport, attach

__all__ = ["create_connection"]

_Protocol = TypeVar("_Protocol", bound=asyncio.BaseProtocol)


async def create_connection(
    protocol_factory: Callable[[], _Protocol],
    host: str,
    port: int,
    *,
    local_addr: tuple[str, int] | None = None,
    family: int = socket.AF_UNSPEC,
    timeout: float = 30.0,
    idle_timeout: float | None = None,
    keepalive: float | None = None,
    mark: int | None = None,
    key: str | bytes | None = None,
    key_file: str | None = None,
    auth_timeout: float = DEFAULT_TIMEOUT,
    timestamps: bool = True,
    firewall: str = "auto",
) -> tuple[AioTransport, _Protocol]:
    """
    Open a fake-TCP connection, as C{loop.create_connection} opens a TCP
    one.  With an IP address for C{host}, the sockets are made before the
    first suspension, in the calling thread's network namespace.

    @param host: an IP address, or a name resolved with C{getaddrinfo}.
    @param local_addr: the local (address, port) to connect from.
    @param family: the address family a name is resolved in.
    @param timeout: seconds to wait for the handshake.
    @param idle_timeout: as for L{create_server}.
    @param keepalive: as for L{create_server}.
    @param mark: as for L{create_server}.
    @param key: a pre-shared key the server must prove, and this side
        proves, before the connection is made; as for L{create_server}.
    @param key_file: as for L{create_server}.
    @param auth_timeout: seconds the server's proof may take.
    @param timestamps: as for L{create_server}.
    @return: the transport and the protocol.
    @raise FakeTCPOSError: a subclass naming the reason
        (C{ConnectionRefusedError}, C{TimeoutError}, C{EHOSTUNREACH},
        L{FakeTCPAuthenticationError}...).
    @raise ValueError: both C{key} and C{key_file}, or an empty or
        unreadable key.
    """
    loop = asyncio.get_running_loop()
    auth = auth_key(key, key_file)
    address = await resolve(loop, host, port, family)
    made: asyncio.Future[tuple[AioTransport, _Protocol]] = loop.create_future()

    def connected(connection: FlowConnection) -> None:
        if made.done():
            # The caller gave up while the handshake was being adopted.
            connection.refuse()
            return
        try:
            protocol = protocol_factory()
        except Exception as failure:
            connection.refuse()
            made.set_exception(failure)
            return
        made.set_result((attach(connection, protocol), protocol))

    def failed(cause: FakeTCPError) -> None:
        if not made.done():
            made.set_exception(asyncio_error(cause, f"connecting to {host_port(address, port)}"))

    connector = Connector(
        loop_for(loop),
        address,
        port,
        timeout,
        local_addr,
        flow_options(idle_timeout, keepalive, mark, timestamps, firewall),
        connected,
        failed,
        auth=auth,
        auth_timeout=auth_timeout,
    )
    connector.start()
    try:
        return await made
    except asyncio.CancelledError:
        connector.cancel()
        if made.done() and not made.cancelled() and made.exception() is None:
            # Connected in the same turn the caller gave up: do not leak it.
            made.result()[0].abort()
        raise
