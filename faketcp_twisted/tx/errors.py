# -*- test-case-name: tests.test_integration -*-
"""
The Twisted face's exceptions: L{CannotListenError} and L{ConnectError}
subclasses with one-line reasons, made from the engine's L{FakeTCPError}.
"""

from __future__ import annotations

from twisted.internet import error

from ..engine.errors import FakeTCPError, Problem


class FakeTCPListenError(error.CannotListenError):
    """
    A fake-TCP port could not listen.
    """

    def __init__(self, interface: str, port: int, cause: FakeTCPError) -> None:
        # Twisted's CannotListenError.__init__ is not annotated.
        super().__init__(interface, port, str(cause))  # type: ignore[no-untyped-call]
        self.cause = cause


class ListenPermissionError(FakeTCPListenError):
    """
    Not root: no raw sockets, no firewall rules.
    """


class ListenFirewallError(FakeTCPListenError):
    """
    The silencing rule could not be installed (iptables libraries missing,
    no legacy iptables support in the kernel).
    """


class PortInUseError(FakeTCPListenError):
    """
    Another socket already listens on the port.
    """


class FakeTCPConnectError(error.ConnectError):
    """
    A fake-TCP connection could not be made.
    """


class ConnectPermissionError(FakeTCPConnectError):
    """
    Not root: no raw sockets, no firewall rules.
    """


class ConnectFirewallError(FakeTCPConnectError):
    """
    The silencing rule could not be installed.
    """


class HandshakeNotSeenError(FakeTCPConnectError):
    """
    The kernel connected, but the capture never saw the handshake, so the
    sequence numbers are unknown.
    """


class AuthenticationError(FakeTCPConnectError):
    """
    A key was given, and the server did not prove that it knows it: it has
    another key or none, or it refused this client's proof.
    """


_LISTEN_ERRORS = {
    Problem.PERMISSION: ListenPermissionError,
    Problem.FIREWALL: ListenFirewallError,
    Problem.PORT_IN_USE: PortInUseError,
}


def twisted_listen_error(interface: str, port: int, cause: FakeTCPError) -> error.CannotListenError:
    """
    The L{CannotListenError} subclass for a failure to listen.
    """
    return _LISTEN_ERRORS.get(cause.problem, FakeTCPListenError)(interface, port, cause)


def twisted_connect_error(cause: FakeTCPError) -> error.ConnectError:
    """
    The L{ConnectError} subclass for a failure to connect.
    """
    text = str(cause)
    kinds: dict[Problem, type[error.ConnectError]] = {
        Problem.REFUSED: error.ConnectionRefusedError,
        Problem.NO_ROUTE: error.NoRouteError,
        Problem.TIMEOUT: error.TimeoutError,
        Problem.PERMISSION: ConnectPermissionError,
        Problem.FIREWALL: ConnectFirewallError,
        Problem.HANDSHAKE_UNSEEN: HandshakeNotSeenError,
        Problem.AUTH_FAILED: AuthenticationError,
    }
    kind = kinds.get(cause.problem, FakeTCPConnectError)
    return kind(osError=cause.errno, string=text)
