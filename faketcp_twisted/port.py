# -*- test-case-name: tests.test_integration -*-
"""
The listening port: a real kernel listener makes the handshakes, one
capture per address family sees the port's segments, one silencing rule
per family keeps the kernel quiet.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IListeningPort, IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from . import adoption, kernel
from .demux import Demultiplexer, FlowOptions
from .errors import ListenFirewallError, ListenPermissionError, listen_error
from .firewall import FirewallUnavailable, SilenceRule, netns_id, silencer
from .table import Role
from .transport import FakeTCPTransport


@implementer(IReadDescriptor)
class _Acceptor:
    """
    The reactor reader of the kernel listener.
    """

    def __init__(self, port: FakeTCPPort) -> None:
        self.port = port

    def fileno(self) -> int:
        listener = self.port.listener
        return -1 if listener is None else listener.fileno()

    def doRead(self) -> None:
        self.port._accept()

    def connectionLost(self, reason: Failure) -> None:
        self.port.stopListening()

    def logPrefix(self) -> str:
        return self.port.logPrefix()


@implementer(IListeningPort)
class FakeTCPPort:
    """
    A fake-TCP listening port.

    @ivar demuxes: the demultiplexer of each address family listened on.
    """

    log = Logger()

    #: Most connections accepted per reactor wake-up.
    acceptsPerRead = 64

    def __init__(
        self,
        reactor: Any,
        port: int,
        factory: Any,
        interface: str = "",
        backlog: int = 50,
        options: FlowOptions | None = None,
    ) -> None:
        self.reactor = reactor
        self.port = port
        self.factory = factory
        self.interface = interface
        self.backlog = backlog
        self.options = options or FlowOptions()
        self.listener: socket.socket | None = None
        self.demuxes: dict[int, Demultiplexer] = {}
        self.rules: list[SilenceRule] = []
        self.connected = False
        self._acceptor = _Acceptor(self)
        self._stopped: defer.Deferred[None] | None = None
        self._namespace = netns_id()

    def _families(self) -> tuple[int, list[int]]:
        host = self.interface or "0.0.0.0"
        if ":" not in host:
            return socket.AF_INET, [socket.AF_INET]
        if socket.inet_pton(socket.AF_INET6, host) == bytes(16):
            return socket.AF_INET6, [socket.AF_INET6, socket.AF_INET]
        return socket.AF_INET6, [socket.AF_INET6]

    def startListening(self) -> None:
        """
        Bind, install the silencing rules, open the captures, then listen:
        the captures exist before the first handshake can start.

        @raise CannotListenError: a subclass naming the reason.
        """
        interface = self.interface
        self._namespace = netns_id()
        kernel.require_privileges(lambda: ListenPermissionError(interface, self.port))
        try:
            family, families = self._families()
        except OSError as failure:
            raise listen_error(interface, self.port, failure) from failure
        host = interface or "0.0.0.0"
        try:
            listener = kernel.stream_socket(family, self.options.mark)
        except OSError as failure:
            raise listen_error(interface, self.port, failure) from failure
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                dual = len(families) == 2
                try:
                    listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual else 1)
                except OSError:
                    families = [socket.AF_INET6]
            listener.bind((host, self.port))
            self.port = listener.getsockname()[1]
            for each in families:
                rule = SilenceRule(each, self.port, mark=self.options.mark)
                silencer.acquire(rule)
                self.rules.append(rule)
            for each in families:
                demux = Demultiplexer(self.reactor, each, self.port, Role.SERVER, self.options)
                demux.on_released = self._maybeFinish
                demux.on_handshake = self._accept
                self.demuxes[each] = demux
            listener.listen(self.backlog)
        except FirewallUnavailable as failure:
            self._release(listener)
            raise ListenFirewallError(interface, self.port, failure) from failure
        except OSError as failure:
            self._release(listener)
            raise listen_error(interface, self.port, failure) from failure
        except BaseException:
            self._release(listener)
            raise
        self.listener = listener
        self.connected = True
        self.factory.doStart()
        self.reactor.addReader(self._acceptor)
        self.log.info(
            "{factory} listening on fake-TCP {host}:{port}",
            factory=type(self.factory).__name__,
            host=host,
            port=self.port,
        )

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
                if failure.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self.log.warn("Cannot accept: {error}", error=failure.strerror)
                    return
                if failure.errno in (errno.ECONNABORTED, errno.EPERM):
                    continue
                raise
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

        def start(transport: FakeTCPTransport) -> None:
            protocol = self.factory.buildProtocol(transport.getPeer())
            if protocol is None:
                transport.refuse()
                return
            adoption.connect_protocol(transport, protocol)

        adoption.adopt(demux, sock, key, start, lambda: kernel.close_silently(sock))

    def stopListening(self) -> defer.Deferred[None]:
        """
        Stop accepting.  Connections already made go on; the captures and
        rules go when the last of them ends.
        """
        if self._stopped is None:
            self._stopped = defer.Deferred()
            listener, self.listener = self.listener, None
            if listener is not None:
                self.reactor.removeReader(self._acceptor)
                # Handshakes the kernel finished but nobody accepted are
                # reset by their (marked, so silenced) sockets.
                kernel.close_silently(listener)
                self.connected = False
                self.factory.doStop()
            self._maybeFinish()
        return self._stopped

    loseConnection = stopListening

    def _maybeFinish(self) -> None:
        if self.listener is not None or self._stopped is None:
            return
        if any(demux.transports for demux in self.demuxes.values()):
            return
        self._release(None)
        stopped = self._stopped
        if not stopped.called:
            self.reactor.callLater(0, stopped.callback, None)

    def getHost(self) -> IPv4Address | IPv6Address:
        """
        The address listened on, of type C{"TCP"}.
        """
        host = self.interface or "0.0.0.0"
        if ":" in host:
            return IPv6Address("TCP", host, self.port)
        return IPv4Address("TCP", host, self.port)

    def logPrefix(self) -> str:
        """
        The prefix of log lines about this port.
        """
        return f"FakeTCPPort {self.port}"

    def __repr__(self) -> str:
        return f"<FakeTCPPort {self.interface or '0.0.0.0'}:{self.port}>"
