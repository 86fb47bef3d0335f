# -*- test-case-name: tests.test_integration -*-
"""
The listening side, for every face: a real kernel listener makes the
handshakes, one capture per address family sees the port's segments, one
silencing rule per family keeps the kernel quiet.  With a key, each
adopted connection is authenticated (see L{auth}) before the face hears of
it.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable

from ..core.auth import DEFAULT_TIMEOUT, Authenticator, AuthKey, Refusal
from ..core.flow import FlowKey
from ..core.table import Role
from ..io import kernel
from ..io.firewall import FirewallUnavailable, SilenceRule, silencer
from ..io.netns import netns_id
from . import adoption, shutdown
from .connection import FlowConnection
from .demux import Demultiplexer
from .errors import FakeTCPError, Problem
from .fallback import Fallback
from .loop import EventLoop, Timer
from .options import DEFAULT_FALLBACK_LIMIT, FALLBACK_NEEDS_KEY, FlowOptions

log = logging.getLogger(__name__)


def listen_families(interface: str) -> tuple[int, list[int]]:
    """
    The family of the listener for C{interface}, and the families to
    capture: both for the IPv6 wildcard, which is dual stack.

    @raise OSError: C{interface} is not an IP address.
    """
    host = interface or "0.0.0.0"
    if ":" not in host:
        socket.inet_pton(socket.AF_INET, host)
        return socket.AF_INET, [socket.AF_INET]
    if socket.inet_pton(socket.AF_INET6, host) == bytes(16):
        return socket.AF_INET6, [socket.AF_INET6, socket.AF_INET]
    return socket.AF_INET6, [socket.AF_INET6]


class Listener:
    """
    A fake-TCP listening port, face-neutral.

    @ivar port: the port number (the actual one after binding to 0).
    @ivar demuxes: the demultiplexer of each address family listened on.
    @ivar rules: the silencing rules this listener holds.
    @ivar auth: the pre-shared key connections must prove, or L{None}.
    @ivar authenticating: connections waiting for their client's proof.
    @ivar fallback: where connections that do not prove the key go, or
        L{None} (they are reset).
    """

    #: Most connections accepted per wake-up.
    acceptsPerRead = 64
    #: Seconds accepting pauses when the process is out of descriptors or
    #: memory: the listener stays readable meanwhile, and retrying at once
    #: would spin (and log) as fast as the loop turns.
    acceptPause = 1.0
    #: Most connections waiting for their client's proof at once; past it a
    #: new connection is reset at once (counted as C{auth-pending-limit}).
    #: Each waits at most the authentication timeout, so connections that
    #: never prove anything cannot pile up beyond this.
    authPendingLimit = 256

    def __init__(
        self,
        loop: EventLoop,
        port: int,
        interface: str,
        backlog: int,
        options: FlowOptions,
        on_connection: Callable[[FlowConnection], None],
        auth: AuthKey | None = None,
        auth_timeout: float = DEFAULT_TIMEOUT,
        fallback: tuple[str, int] | None = None,
        fallback_limit: int = DEFAULT_FALLBACK_LIMIT,
    ) -> None:
        """
        @param on_connection: called with each new connection, to bind a
            face to it and start it (or L{FlowConnection.refuse} it); with
            C{auth}, only once its client proved the key.
        @param auth: the key clients must prove, or L{None} for none (the
            wire is then exactly tcpraw's).
        @param auth_timeout: seconds after adoption a client's proof may
            take.
        @param fallback: the (host, port) of a TCP service that gets every
            connection that does not prove the key (see L{fallback}); only
            with C{auth}.
        @param fallback_limit: most connections given to it at once.
        @raise ValueError: a fallback without a key.
        """
        if fallback is not None and auth is None:
            raise ValueError(FALLBACK_NEEDS_KEY)
        self.loop = loop
        self.port = port
        self.interface = interface
        self.backlog = backlog
        self.options = options
        self.on_connection = on_connection
        self.auth = auth
        self.auth_timeout = auth_timeout
        self.authenticating: set[FlowConnection] = set()
        self.listener: socket.socket | None = None
        self.demuxes: dict[int, Demultiplexer] = {}
        self.rules: list[SilenceRule] = []
        self.on_closed: Callable[[], None] | None = None
        self._closing = False
        self._accept_timer: Timer | None = None
        self._namespace = netns_id()
        self.fallback = None if fallback is None else Fallback(loop, fallback, fallback_limit)

    @property
    def fallbacks(self) -> int:
        """
        How many connections are spliced to the fallback service now.
        """
        return 0 if self.fallback is None else len(self.fallback)

    def start(self) -> None:
        """
        Bind, install the silencing rules, open the captures, then listen:
        the captures exist before the first handshake can start.

        @raise FakeTCPError: naming the problem.
        """
        self._namespace = netns_id()
        if not kernel.has_privileges():
            raise FakeTCPError(Problem.PERMISSION)
        try:
            family, families = listen_families(self.interface)
        except OSError as failure:
            raise FakeTCPError(Problem.ADDRESS_NOT_AVAILABLE, f"{self.interface!r} is not an IP address") from failure
        host = self.interface or "0.0.0.0"
        if self.fallback is not None:
            self.fallback.start()
        listener = None
        try:
            listener = kernel.stream_socket(family, self.options.mark)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                try:
                    listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if len(families) == 2 else 1)
                except OSError:
                    families = [socket.AF_INET6]
            listener.bind((host, self.port))
            self.port = listener.getsockname()[1]
            for each in families:
                rule = SilenceRule(each, self.port, mark=self.options.mark)
                silencer.acquire(rule, self.options.firewall)
                self.rules.append(rule)
            for each in families:
                demux = Demultiplexer(self.loop, each, self.port, Role.SERVER, self.options)
                demux.on_released = self._maybeFinish
                demux.on_handshake = self._accept
                # A connection that may go back to the kernel keeps its
                # first bytes there (see fallback).
                demux.keepKernelQueue = self.fallback is not None
                self.demuxes[each] = demux
            listener.listen(self.backlog)
        except FirewallUnavailable as failure:
            self._release(listener)
            raise FakeTCPError(Problem.FIREWALL, failure) from failure
        except OSError as failure:
            self._release(listener)
            raise FakeTCPError.from_os_error(failure) from failure
        except BaseException:
            self._release(listener)
            raise
        self.listener = listener
        shutdown.track_listener(self)
        listener_fd = listener.fileno()
        self._listener_fd = listener_fd
        self.loop.add_reader(listener_fd, self._accept)

    def _release(self, listener: socket.socket | None) -> None:
        if listener is not None:
            kernel.close_silently(listener)
        if self.fallback is not None:
            self.fallback.close()
        for demux in self.demuxes.values():
            demux.close()
        self.demuxes.clear()
        for rule in self.rules:
            silencer.release(rule, self._namespace)
        self.rules.clear()

    def _accept(self) -> None:
        listener = self.listener
        if listener is None or self._accept_timer is not None:
            return
        for _ in range(self.acceptsPerRead):
            try:
                sock, _address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as failure:
                if failure.errno in (errno.ECONNABORTED, errno.EPERM):
                    continue
                # Out of descriptors or memory: the kernel keeps the
                # connection queued; pause, then try again.
                self._pauseAccepting(failure)
                return
            self._accepted(sock)

    def _pauseAccepting(self, failure: OSError) -> None:
        if self._accept_timer is not None or self.listener is None:
            return
        log.warning(
            "cannot accept on fake-TCP port %d: %s; pausing accepts for %g s",
            self.port,
            failure.strerror,
            self.acceptPause,
        )
        self.loop.remove_reader(self._listener_fd)
        self._accept_timer = self.loop.call_later(self.acceptPause, self._resumeAccepting)

    def _resumeAccepting(self) -> None:
        self._accept_timer = None
        if self.listener is not None:
            self.loop.add_reader(self._listener_fd, self._accept)
            self._accept()

    def _accepted(self, sock: socket.socket) -> None:
        try:
            sock.setblocking(False)
            adoption.silence(sock)
            key = adoption.flow_key(sock)
        except OSError:
            # Reset by the peer before we could look at it.
            kernel.close_silently(sock)
            return
        demux = self.demuxes.get(socket.AF_INET if len(key.local_addr) == 4 else socket.AF_INET6)
        if demux is None:
            kernel.close_silently(sock)
            return
        adoption.adopt(demux, sock, key, self._adopted, lambda: self._unseen(demux, sock, key))

    def _unseen(self, demux: Demultiplexer, sock: socket.socket, key: FlowKey) -> None:
        # The capture never saw this handshake (or a limit refused it): a
        # keyed port with a fallback gives the peer to the service, as any
        # connection that did not prove the key.  Otherwise the kernel
        # resets it, unsilenced: a peer left waiting would only find out at
        # its own timeout, and one that is told tries again at once.
        if self.fallback is None or not self.fallback.take_unadopted(demux, sock, key):
            kernel.reset(sock)

    def _adopted(self, connection: FlowConnection) -> None:
        if self.auth is None:
            self.on_connection(connection)
            return
        # Nothing goes to the client before it proved the key: a prober
        # learns nothing, and its connection can go back to the kernel.
        connection.quiet = True
        fallback = self.fallback
        if len(self.authenticating) >= self.authPendingLimit:
            connection.demux.count_drop("auth-pending-limit")
            if fallback is None or not fallback.take(connection):
                connection.refuse()
            return
        flow = connection.flow
        assert flow.local_isn is not None and flow.remote_isn is not None
        self.authenticating.add(connection)
        authenticator = Authenticator(
            self.auth, Role.SERVER, flow.local_isn, flow.remote_isn, self.loop.seconds(), self.auth_timeout
        )
        connection.authenticate(authenticator, self._authenticated, None if fallback is None else self._fallBack)

    def _fallBack(self, connection: FlowConnection, _refusal: Refusal) -> bool:
        return self.fallback is not None and self.fallback.take(connection)

    def _authenticated(self, connection: FlowConnection, accepted: bool) -> None:
        self.authenticating.discard(connection)
        if accepted:
            if self.fallback is not None:
                # What the kernel queued before the mute is the peer's
                # proof, already taken from the capture.
                kernel.drain(connection.socket)
            self.on_connection(connection)

    def close(self) -> None:
        """
        Stop accepting.  Connections already made go on; the captures and
        rules go when the last of them ends, then L{on_closed} is called.
        """
        if self._closing:
            return
        self._closing = True
        # Connections still proving the key were never accepted as far as
        # the application knows: reset them now rather than let them finish
        # into a port that stopped accepting.  (While the listener is still
        # set, their release cannot finish the close half-way.)
        for connection in list(self.authenticating):
            connection.cancel_authentication()
        self.authenticating.clear()
        if self.fallback is not None:
            # The port's fallback connections end with it: the application
            # never saw them, and nothing else would ever close them.
            self.fallback.close()
        listener, self.listener = self.listener, None
        if self._accept_timer is not None:
            if self._accept_timer.active():
                self._accept_timer.cancel()
            self._accept_timer = None
        if listener is not None:
            self.loop.remove_reader(self._listener_fd)
            # Handshakes the kernel finished but nobody accepted are reset
            # by their (marked, so silenced) sockets.
            kernel.close_silently(listener)
        self._maybeFinish()

    def _maybeFinish(self) -> None:
        if not self._closing or self.listener is not None:
            return
        if any(demux.connections or not demux.quiescent for demux in self.demuxes.values()):
            return
        self._release(None)
        closed, self.on_closed = self.on_closed, None
        if closed is not None:
            closed()

    def abort_all(self) -> None:
        """
        Reset every connection of this listener (a server shutting down).
        """
        for demux in list(self.demuxes.values()):
            demux.abort_all()
