# -*- test-case-name: tests.test_aio -*-
"""
The asyncio face's exceptions: OSError subclasses with one-line reasons
(and the errno asyncio programs look at), made from the engine's
L{FakeTCPError}.
"""

from __future__ import annotations

import errno

from ..engine.errors import FakeTCPError, Problem


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
