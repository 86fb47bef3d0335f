# -*- test-case-name: tests.test_integration -*-
"""
Errors with one-line reasons, face-neutral.

The engine raises L{FakeTCPError}, which names what went wrong (a
L{Problem}); each face turns it into the exceptions its programs already
handle: Twisted's L{CannotListenError} and L{ConnectError} subclasses
(L{faketcp_twisted.tx.errors}), OSError subclasses in the asyncio face
(L{faketcp_twisted.aio.errors}).
"""

from __future__ import annotations

import enum
import errno

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
    FALLBACK = "cannot find the fallback service"
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
