"""
faketcp_twisted: datagrams in a TCP disguise, for Twisted and asyncio.

A fake-TCP connection looks like one established TCP connection to every
middlebox on the path and behaves like UDP: no retransmission, no
congestion control, no head-of-line blocking.  Twisted programs use it
through the C{faketcp:} endpoint strings::

    serverFromString(reactor, "faketcp:9191:interface=0.0.0.0")
    clientFromString(reactor, "faketcp:host=198.18.0.2:port=9191")
"""

from .endpoints import FakeTCPClientEndpoint, FakeTCPServerEndpoint

__all__ = ["FakeTCPClientEndpoint", "FakeTCPServerEndpoint"]
__version__ = "0.1.0"
