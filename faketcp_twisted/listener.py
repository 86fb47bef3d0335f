# -*- test-case-name: tests.test_integration -*-
"""
The listening side, for every face: a real kernel listener makes the
handshakes, one capture per address family sees the port's segments, one
silencing rule per family keeps the kernel quiet.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable

from . import adoption, kernel
from .connection import Ending, FlowConnection
from .demux import Demultiplexer, FlowOptions
from .errors import FakeTCPError, Problem
from .firewall import FirewallUnavailable, SilenceRule, netns_id, silencer
from .loop import EventLoop
from .table import Role

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
    """

    #: Most connections accepted per wake-up.
    acceptsPerRead = 64

    def __init__(
        self,
        loop: EventLoop,
        port: int,
        interface: str,
        backlog: int,
        options: FlowOptions,
        make: adoption.ConnectionMaker,
        on_connection: Callable[[FlowConnection], None],
    ) -> None:
        """
        @param make: makes the face's connection object for a new flow.
        @param on_connection: called with each new connection, to attach
            the application (or L{FlowConnection.refuse} it).
        """
        self.loop = loop
        self.port = port
        self.interface = interface
        self.backlog = backlog
        self.options = options
        self.make = make
        self.on_connection = on_connection
        self.listener: socket.socket | None = None
        self.demuxes: dict[int, Demultiplexer] = {}
        self.rules: list[SilenceRule] = []
        self.on_closed: Callable[[], None] | None = None
        self._closing = False
        self._namespace = netns_id()

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
                silencer.acquire(rule)
                self.rules.append(rule)
            for each in families:
                demux = Demultiplexer(self.loop, each, self.port, Role.SERVER, self.options)
                demux.on_released = self._maybeFinish
                demux.on_handshake = self._accept
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
        listener_fd = listener.fileno()
        self._listener_fd = listener_fd
        self.loop.add_reader(listener_fd, self._accept)

    def _release(self, listener: socket.socket | None) -> None:
        if listener is not None:
            kernel.close_silently(listener)
        for demux in self.demuxes.values():
            demux.close()
        self.demuxes.clear()
        for rule in self.rules:
            silencer.release(rule, self._namespace)
        self.rules.clear()

    def _accept(self) -> None:
        listener = self.listener
        if listener is None:
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
                # connection queued; try again on the next wake-up.
                log.warning("cannot accept on fake-TCP port %d: %s", self.port, failure.strerror)
                return
            self._accepted(sock)

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
        adoption.adopt(demux, sock, key, self.make, self.on_connection, lambda: kernel.close_silently(sock))

    def close(self) -> None:
        """
        Stop accepting.  Connections already made go on; the captures and
        rules go when the last of them ends, then L{on_closed} is called.
        """
        if self._closing:
            return
        self._closing = True
        listener, self.listener = self.listener, None
        if listener is not None:
            self.loop.remove_reader(self._listener_fd)
            # Handshakes the kernel finished but nobody accepted are reset
            # by their (marked, so silenced) sockets.
            kernel.close_silently(listener)
        self._maybeFinish()

    def _maybeFinish(self) -> None:
        if not self._closing or self.listener is not None:
            return
        if any(demux.transports for demux in self.demuxes.values()):
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
            for connection in list(demux.transports.values()):
                connection.send_rst()
                connection.end(Ending.ABORTED)
