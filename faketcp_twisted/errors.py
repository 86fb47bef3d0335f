# -*- test-case-name: tests.test_errors -*-
"""
Errors with one-line reasons.

The shared machinery raises L{FakeTCPError}, which names what went wrong
(a L{Problem}); each face turns it into the exceptions its programs already
handle: Twisted's L{CannotListenError} and L{ConnectError} subclasses here,
OSError subclasses in the asyncio face.
"""

from __future__ import annotations

import enum
import errno

from twisted.internet import error

NEEDS_PRIVILEGE = "fake-TCP needs root or CAP_NET_RAW and CAP_NET_ADMIN (raw sockets, firewall rules)"


class Problem(enum.Enum):
    """
    What kept a port from listening or a connection from being made.
    """

    PERMISSION = NEEDS_PRIVILEGE
    FIREWALL = "cannot install the silencing firewall rule"
    PORT_IN_USE = "port in use"
    ADDRESS_NOT_AVAILABLE = "address not available on this host"
    REFUSED = "connection refused"
    NO_ROUTE = "no route to host"
    TIMEOUT = "connection timed out"
    HANDSHAKE_UNSEEN = "the capture did not see the handshake"
    AUTH_FAILED = "the server did not prove knowledge of the key"
    OTHER = "system error"


class FakeTCPError(Exception):
    """
    A fake-TCP operation failed.

    @ivar problem: what went wrong.
    @ivar detail: more about it (an OS error message, a library's words).
    @ivar errno: the OS error number, when there was one.
    """

    def __init__(self, problem: Problem, detail: object = None, errno: int | None = None) -> None:
        self.problem = problem
        self.detail = detail
        self.errno = errno
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.detail is None or self.problem is Problem.PERMISSION:
            return self.problem.value
        return f"{self.problem.value}: {self.detail}"

    @classmethod
    def from_os_error(cls, failure: OSError) -> FakeTCPError:
        """
        The error for an OSError raised by a socket call.
        """
        return cls.from_errno(failure.errno or 0, failure.strerror)

    @classmethod
    def from_errno(cls, code: int, detail: object = None) -> FakeTCPError:
        """
        The error for an errno from a socket call (connect, bind).
        """
        problem = _BY_ERRNO.get(code, Problem.OTHER)
        if problem is not Problem.OTHER:
            detail = None
        elif detail is None:
            detail = errno.errorcode.get(code, str(code))
        return cls(problem, detail, code)


_BY_ERRNO = {
    errno.EPERM: Problem.PERMISSION,
    errno.EACCES: Problem.PERMISSION,
    errno.EADDRINUSE: Problem.PORT_IN_USE,
    errno.EADDRNOTAVAIL: Problem.ADDRESS_NOT_AVAILABLE,
    errno.ECONNREFUSED: Problem.REFUSED,
    # A reset during the handshake: nobody (any more) accepts it there.
    errno.ECONNRESET: Problem.REFUSED,
    errno.EHOSTUNREACH: Problem.NO_ROUTE,
    errno.ENETUNREACH: Problem.NO_ROUTE,
    errno.ETIMEDOUT: Problem.TIMEOUT,
}


# -- Twisted's exceptions ------------------------------------------------


class FakeTCPListenError(error.CannotListenError):
    """
    A fake-TCP port could not listen.
    """

    def __init__(self, interface: str, port: int, cause: FakeTCPError) -> None:
        super().__init__(interface, port, str(cause))
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


# -- asyncio's exceptions ------------------------------------------------


class FakeTCPOSError(OSError):
    """
    A fake-TCP operation of the asyncio face failed.  An L{OSError}, as
    C{loop.create_server} and C{loop.create_connection} raise, carrying the
    errno a plain socket would have given where there is one.

    @ivar cause: the machinery's error.
    """

    cause: FakeTCPError


class FakeTCPPermissionError(FakeTCPOSError, PermissionError):
    """
    Not root: no raw sockets, no firewall rules.
    """


class FakeTCPFirewallError(FakeTCPOSError):
    """
    The silencing rule could not be installed (iptables libraries missing,
    no legacy iptables support in the kernel).
    """


class FakeTCPConnectionRefusedError(FakeTCPOSError, ConnectionRefusedError):
    """
    Nobody listens on the remote port.
    """


class FakeTCPTimeoutError(FakeTCPOSError, TimeoutError):
    """
    The handshake was not answered in time.
    """


class FakeTCPHandshakeNotSeenError(FakeTCPOSError):
    """
    The kernel connected, but the capture never saw the handshake, so the
    sequence numbers are unknown.
    """


class FakeTCPAuthenticationError(FakeTCPOSError, ConnectionError):
    """
    A key was given, and the server did not prove that it knows it.
    """


_ASYNCIO_ERRORS: dict[Problem, tuple[type[FakeTCPOSError], int | None]] = {
    Problem.PERMISSION: (FakeTCPPermissionError, errno.EPERM),
    Problem.FIREWALL: (FakeTCPFirewallError, None),
    Problem.PORT_IN_USE: (FakeTCPOSError, errno.EADDRINUSE),
    Problem.ADDRESS_NOT_AVAILABLE: (FakeTCPOSError, errno.EADDRNOTAVAIL),
    Problem.REFUSED: (FakeTCPConnectionRefusedError, errno.ECONNREFUSED),
    Problem.NO_ROUTE: (FakeTCPOSError, errno.EHOSTUNREACH),
    Problem.TIMEOUT: (FakeTCPTimeoutError, errno.ETIMEDOUT),
    Problem.HANDSHAKE_UNSEEN: (FakeTCPHandshakeNotSeenError, None),
    Problem.AUTH_FAILED: (FakeTCPAuthenticationError, None),
    Problem.OTHER: (FakeTCPOSError, None),
}


def asyncio_error(cause: FakeTCPError, context: str | None = None) -> FakeTCPOSError:
    """
    The L{OSError} subclass for a failure to listen or connect.

    @param context: what was being done (C{"connecting to 198.18.0.2:9"}),
        added to the one-line reason.
    """
    kind, default_errno = _ASYNCIO_ERRORS.get(cause.problem, (FakeTCPOSError, None))
    # The errno the socket call gave wins (ENETUNREACH stays ENETUNREACH).
    code = cause.errno if cause.errno else default_errno
    text = str(cause) if context is None else f"{cause} ({context})"
    # Without an errno, OSError prints "[Errno None] ...": give the text alone.
    made = kind(code, text) if code is not None else kind(text)
    made.cause = cause
    return made
