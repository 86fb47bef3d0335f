# -*- test-case-name: tests.test_aio -*-
"""
The asyncio face: fake-TCP with C{asyncio.Protocol}s, no Twisted reactor.

    server = await aio.create_server(Echo, host="0.0.0.0", port=9191)
    transport, protocol = await aio.create_connection(Client, "198.18.0.2", 9191)

The shapes are those of C{loop.create_server} and C{loop.create_connection};
the machinery underneath (capture, flows, listener, connector) is the one
the Twisted face uses, driven through the loop's C{add_reader} and timers.

The face is a short layer of modules, one job each: L{transport} (the
asyncio transport of one connection, with L{flowcontrol} for its write
buffer), L{server} (L{create_server}, L{AioServer}), L{client}
(L{create_connection}), L{errors} (the L{OSError}s), L{loop} (the engine's
event loop over asyncio's).  This module re-exports their public names.

Semantics, where asyncio's stream conventions meet datagrams:

  - A write of at most one MSS arrives as exactly one C{data_received}
    (larger writes are split at the MSS); nothing is retransmitted.
  - C{close()} sends FIN: the peer gets C{eof_received()} then
    C{connection_lost(None)}.  C{abort()} sends RST: the peer gets
    C{connection_lost(ConnectionResetError)}.  Locally both end with
    C{connection_lost(None)}, as asyncio's socket transports do.
  - A peer FIN calls C{eof_received()}; a true result keeps the write side
    open (half-close), anything else closes, as asyncio does.
  - A flow silent for the idle timeout ends with C{TimeoutError}.
  - The write buffer is the capture's send backlog, shared by every
    connection of the capture: writes go to the raw socket at once, and
    only what the kernel's send buffer cannot take waits there.
  - Failures to listen or connect are L{OSError} subclasses with one-line
    reasons (see L{errors.asyncio_error}).
  - With C{key=} (or C{key_file=}), connections are authenticated with a
    pre-shared key (see L{auth}): a server's protocol factory is called, and
    C{create_connection} returns, only once the peer proved the key; a
    client whose server cannot prove it gets
    L{FakeTCPAuthenticationError}.

No netlink is needed: the kernel's own bind and connect report an address
that does not exist or an unreachable host, so this face never asks
pyroute2 anything.
"""

from __future__ import annotations

from ..engine.errors import Problem
from .client import create_connection
from .errors import (
    FakeTCPAuthenticationError,
    FakeTCPConnectionRefusedError,
    FakeTCPFirewallError,
    FakeTCPHandshakeNotSeenError,
    FakeTCPOSError,
    FakeTCPPermissionError,
    FakeTCPTimeoutError,
)
from .server import AioServer, create_server
from .transport import AioTransport

__all__ = [
    "AioServer",
    "AioTransport",
    "FakeTCPAuthenticationError",
    "FakeTCPConnectionRefusedError",
    "FakeTCPFirewallError",
    "FakeTCPHandshakeNotSeenError",
    "FakeTCPOSError",
    "FakeTCPPermissionError",
    "FakeTCPTimeoutError",
    "Problem",
    "create_connection",
    "create_server",
]
