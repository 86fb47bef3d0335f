# -*- test-case-name: tests.test_integration -*-
"""
The connecting side, for every face: the kernel connects a marked socket
while a capture that was opened first watches for the SYN-ACK;
connections to the same remote port (in one network namespace) share that
capture.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable

from ..core.auth import DEFAULT_TIMEOUT, Authenticator, AuthKey, Refusal
from ..core.table import Role
from ..io import kernel
from ..io.firewall import FirewallUnavailable, SilenceRule, silencer
from ..io.netns import netns_id
from . import adoption
from .connection import FlowConnection
from .demux import Demultiplexer
from .errors import FakeTCPError, Problem
from .loop import EventLoop, Timer
from .options import FlowOptions


class _SharedCaptures:
    """
    The client demultiplexers, one per (event loop, network namespace,
    family, remote port, mark).  One stays open while a connection to its
    remote port is being made or is up; closing the last one closes the
    capture at once (its flows' time-wait ends with it).
    """

    def __init__(self) -> None:
        self._demuxes: dict[tuple[int, int, int, int, int], Demultiplexer] = {}
        self._connecting: dict[Demultiplexer, int] = {}

    def acquire(self, loop: EventLoop, family: int, port: int, options: FlowOptions) -> Demultiplexer:
        """
        The demultiplexer for a new connection attempt to C{port}.
        """
        key = (id(loop), netns_id(), family, port, options.mark)
        demux = self._demuxes.get(key)
        if demux is None or demux.closed:
            demux = Demultiplexer(loop, family, port, Role.CLIENT, options)
            demux.on_released = lambda: self._maybeClose(key, demux)
            self._demuxes[key] = demux
        self._connecting[demux] = self._connecting.get(demux, 0) + 1
        return demux

    def attempt_over(self, demux: Demultiplexer) -> None:
        """
        A connection attempt ended, made or failed.
        """
        self._connecting[demux] -= 1
        if demux.on_released is not None:
            demux.on_released()

    def _maybeClose(self, key: tuple[int, int, int, int, int], demux: Demultiplexer) -> None:
        if demux.connections or self._connecting.get(demux, 0) > 0 or not demux.quiescent:
            return
        self._connecting.pop(demux, None)
        if self._demuxes.get(key) is demux:
            del self._demuxes[key]
        demux.close()


captures = _SharedCaptures()


class Connector:
    """
    One fake-TCP connection attempt, face-neutral.

    Exactly one of C{on_connected} (with the new connection, to which the
    face binds itself) and C{on_failed} (with a L{FakeTCPError}) is
    called.
    """

    def __init__(
        self,
        loop: EventLoop,
        host: str,
        port: int,
        timeout: float,
        bind_address: tuple[str, int] | None,
        options: FlowOptions,
        on_connected: Callable[[FlowConnection], None],
        on_failed: Callable[[FakeTCPError], None],
        auth: AuthKey | None = None,
        auth_timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        """
        @param host: an IP address (names are resolved by the face).
        @param timeout: seconds the whole attempt may take, authentication
            included.
        @param auth: the key the server must prove (and this side proves),
            or L{None} for none.
        @param auth_timeout: seconds after adoption the server's proof may
            take.
        """
        self.loop = loop
        self.host = host
        self.port = port
        self.timeout = timeout
        self.bind_address = bind_address
        self.options = options
        self.on_connected = on_connected
        self.on_failed = on_failed
        self.auth = auth
        self.auth_timeout = auth_timeout
        self.connection: FlowConnection | None = None
        self.sock: socket.socket | None = None
        self.demux: Demultiplexer | None = None
        self.rule: SilenceRule | None = None
        self._expected: tuple[int, bytes, int] | None = None
        self._timeout_call: Timer | None = None
        self._fd = -1
        self._writing = False
        self.done = False
        self._namespace = netns_id()

    def start(self) -> None:
        """
        Start connecting.  Sockets are created in the calling thread's
        network namespace, before this returns; failures are reported
        through C{on_failed}, never raised.
        """
        try:
            self._start()
        except FakeTCPError as failure:
            self._fail(failure)
        except OSError as failure:
            self._fail(FakeTCPError.from_os_error(failure))

    def _start(self) -> None:
        if not kernel.has_privileges():
            raise FakeTCPError(Problem.PERMISSION)
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        remote = socket.inet_pton(family, self.host)
        rule = SilenceRule(family, self.port, remote=self.host, mark=self.options.mark)
        try:
            silencer.acquire(rule, self.options.firewall)
        except FirewallUnavailable as failure:
            raise FakeTCPError(Problem.FIREWALL, failure) from failure
        self.rule = rule
        self.demux = captures.acquire(self.loop, family, self.port, self.options)
        sock = self.sock = kernel.stream_socket(family, self.options.mark)
        self._fd = sock.fileno()
        if self.bind_address is not None:
            sock.bind(self.bind_address)
        else:
            sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
        self._expected = (sock.getsockname()[1], remote, self.port)
        self.demux.table.expect(*self._expected)
        code = sock.connect_ex((self.host, self.port))
        if code not in (0, errno.EINPROGRESS):
            raise FakeTCPError.from_errno(code)
        self._timeout_call = self.loop.call_later(self.timeout, self._timedOut)
        self._writing = True
        self.loop.add_writer(self._fd, self._writable)

    def _writable(self) -> None:
        self._stopWriting()
        sock = self.sock
        if sock is None or self.done:
            return
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self._fail(FakeTCPError.from_errno(code))
            return
        try:
            adoption.silence(sock)
            key = adoption.flow_key(sock)
        except OSError as failure:
            self._fail(FakeTCPError.from_os_error(failure))
            return
        assert self.demux is not None
        adoption.adopt(
            self.demux,
            sock,
            key,
            self._adopted,
            lambda: self._fail(FakeTCPError(Problem.HANDSHAKE_UNSEEN)),
        )

    def _adopted(self, connection: FlowConnection) -> None:
        demux = self.demux
        assert demux is not None
        if self.done:
            connection.refuse()
            return
        # The connection owns the kernel socket now, and with it the use of
        # the silencing rule, released once the socket is closed.
        self.sock = None
        connection.on_socket_closed = _release_rule(self.rule, self._namespace)
        self.rule = None
        if self.auth is None:
            self._connected(connection)
            return
        self._stopWriting()
        self.connection = connection
        flow = connection.flow
        assert flow.local_isn is not None and flow.remote_isn is not None
        authenticator = Authenticator(
            self.auth, Role.CLIENT, flow.local_isn, flow.remote_isn, self.loop.seconds(), self.auth_timeout
        )
        connection.authenticate(authenticator, self._authenticated)

    def _connected(self, connection: FlowConnection) -> None:
        demux = self.demux
        assert demux is not None
        self._finishAttempt()
        self.connection = None
        captures.attempt_over(demux)
        self.on_connected(connection)

    def _authenticated(self, connection: FlowConnection, accepted: bool) -> None:
        if self.done:
            return
        if accepted:
            self._connected(connection)
            return
        self.connection = None
        auth = connection.auth
        refusal = auth.refusal if auth is not None else None
        if refusal is Refusal.TIMEOUT:
            detail = f"no proof from {self.host}:{self.port} within {self.auth_timeout:g} s (no key, or another one)"
        elif refusal is Refusal.CLOSED:
            detail = f"{self.host}:{self.port} ended the connection during authentication (another key, or none)"
        else:
            detail = f"{self.host}:{self.port} sent something else than its proof"
        self._fail(FakeTCPError(Problem.AUTH_FAILED, detail))

    def _stopWriting(self) -> None:
        if self._writing:
            self._writing = False
            self.loop.remove_writer(self._fd)

    def _timedOut(self) -> None:
        self._timeout_call = None
        self._fail(FakeTCPError(Problem.TIMEOUT, f"no answer from {self.host}:{self.port} in {self.timeout:g} s"))

    def cancel(self) -> None:
        """
        Give up the attempt (the caller reports the cancellation itself).
        """
        self._cleanup()

    def _finishAttempt(self) -> None:
        """
        The attempt is over (either way): stop its timer and watches.
        """
        self.done = True
        self._stopWriting()
        if self._timeout_call is not None and self._timeout_call.active():
            self._timeout_call.cancel()
        self._timeout_call = None
        if self._expected is not None and self.demux is not None:
            self.demux.table.unexpect(*self._expected)

    def _cleanup(self) -> bool:
        if self.done:
            return False
        self._finishAttempt()
        connection, self.connection = self.connection, None
        if connection is not None:
            # Given up while authenticating: reset the peer, release the
            # flow (its socket and rule go when its time-wait ends).
            connection.cancel_authentication()
        sock, self.sock = self.sock, None
        if sock is not None:
            kernel.close_silently(sock)
        if self.demux is not None:
            captures.attempt_over(self.demux)
            self.demux = None
        if self.rule is not None:
            silencer.release(self.rule, self._namespace)
            self.rule = None
        return True

    def _fail(self, failure: FakeTCPError) -> None:
        if self._cleanup():
            self.on_failed(failure)


def _release_rule(rule: SilenceRule | None, namespace: int) -> Callable[[], None]:
    """
    What to do once a client connection's kernel socket is closed: drop its
    use of the destination's silencing rule.
    """

    def closed() -> None:
        if rule is not None:
            silencer.release(rule, namespace)

    return closed
