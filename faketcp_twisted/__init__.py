"""
faketcp_twisted: datagrams in a TCP disguise, for Twisted and asyncio.

A fake-TCP connection looks like one established TCP connection to every
middlebox on the path and behaves like UDP: no retransmission, no
congestion control, no head-of-line blocking.  Twisted programs use it
through the C{faketcp:} endpoint strings::

    serverFromString(reactor, "faketcp:9191:interface=0.0.0.0")
    clientFromString(reactor, "faketcp:host=198.18.0.2:port=9191")

asyncio programs through L{faketcp_twisted.aio}.  The layers, each a
subpackage that imports only those below it:

  - L{faketcp_twisted.core}: sans-IO (codec, BPF, flow, table, key proofs);
  - L{faketcp_twisted.io}: the kernel (capture, kernel sockets, firewall,
    the C fast path);
  - L{faketcp_twisted.engine}: face-neutral (event-loop contract,
    demultiplexer, connections, listening and connecting, options);
  - L{faketcp_twisted.tx} and L{faketcp_twisted.aio}: the Twisted and the
    asyncio faces;
  - L{faketcp_twisted.relay}: C{twistd faketcp-relay}.

The endpoint classes below are imported on first use, so importing any
submodule (the core, say) does not import Twisted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .tx.endpoints import FakeTCPClientEndpoint, FakeTCPServerEndpoint

__all__ = ["FakeTCPClientEndpoint", "FakeTCPServerEndpoint"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in __all__:
        from .tx import endpoints

        return getattr(endpoints, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
