# -*- test-case-name: tests.test_errors -*-
"""
Errors with one-line reasons, as subclasses of the exceptions Twisted
programs already handle (L{CannotListenError}, L{ConnectError}).
"""

from __future__ import annotations

import errno

from twisted.internet import error

NEEDS_PRIVILEGE = "fake-TCP needs root or CAP_NET_RAW and CAP_NET_ADMIN (raw sockets, firewall rules)"


class FakeTCPListenError(error.CannotListenError):
    """
    A fake-TCP port could not listen.
    """

    reason = "cannot listen"

    def __init__(self, interface: str, port: int, detail: object = None) -> None:
        message = self.reason if detail is None else f"{self.reason}: {detail}"
        super().__init__(interface, port, message)


class ListenPermissionError(FakeTCPListenError):
    """
    Not root: no raw sockets, no firewall rules.
    """

    reason = NEEDS_PRIVILEGE


class ListenFirewallError(FakeTCPListenError):
    """
    The silencing rule could not be installed (iptables libraries missing,
    no legacy iptables support in the kernel).
    """

    reason = "cannot install the silencing firewall rule"


class PortInUseError(FakeTCPListenError):
    """
    Another socket already listens on the port.
    """

    reason = "port in use"


class FakeTCPConnectError(error.ConnectError):
    """
    A fake-TCP connection could not be made.
    """


class ConnectPermissionError(FakeTCPConnectError):
    """
    Not root: no raw sockets, no firewall rules.
    """

    def __init__(self, detail: object = None) -> None:
        super().__init__(string=NEEDS_PRIVILEGE)


class ConnectFirewallError(FakeTCPConnectError):
    """
    The silencing rule could not be installed.
    """

    def __init__(self, detail: object = None) -> None:
        super().__init__(string=f"cannot install the silencing firewall rule: {detail}")


class HandshakeNotSeenError(FakeTCPConnectError):
    """
    The kernel connected, but the capture never saw the handshake, so the
    sequence numbers are unknown.
    """

    def __init__(self) -> None:
        super().__init__(string="the capture did not see the handshake's SYN-ACK")


def connect_error(code: int, text: str = "") -> error.ConnectError:
    """
    The Twisted connect error for a connect() errno.
    """
    if code == errno.ECONNREFUSED:
        return error.ConnectionRefusedError(string="connection refused")
    if code in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return error.NoRouteError(string="no route to host")
    if code == errno.ETIMEDOUT:
        return error.TCPTimedOutError(string="connection timed out")
    if code in (errno.EPERM, errno.EACCES):
        return ConnectPermissionError()
    return FakeTCPConnectError(osError=code, string=text or errno.errorcode.get(code, str(code)))


def listen_error(interface: str, port: int, cause: OSError) -> FakeTCPListenError:
    """
    The listen error for an OSError raised while opening a port.
    """
    if cause.errno in (errno.EPERM, errno.EACCES):
        return ListenPermissionError(interface, port)
    if cause.errno == errno.EADDRINUSE:
        return PortInUseError(interface, port)
    if cause.errno == errno.EADDRNOTAVAIL:
        return FakeTCPListenError(interface, port, "address not available on this host")
    return FakeTCPListenError(interface, port, cause.strerror or cause)
