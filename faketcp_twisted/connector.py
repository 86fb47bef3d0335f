# -*- test-case-name: tests.test_integration -*-
"""
Client connections: the kernel connects a marked socket while a capture
that was opened first watches for the SYN-ACK; connections to the same
remote port (in one network namespace) share that capture.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

from twisted.internet import defer, error
from twisted.internet.interfaces import IWriteDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from . import adoption, kernel
from .demux import Demultiplexer, FlowOptions
from .errors import ConnectFirewallError, ConnectPermissionError, HandshakeNotSeenError, connect_error
from .firewall import FirewallUnavailable, SilenceRule, netns_id, silencer
from .table import Role
from .transport import FakeTCPTransport


class _SharedCaptures:
    """
    The client demultiplexers, one per (network namespace, family, remote
    port, mark).  One stays open while a connection to its remote port is
    being made or is up; closing the last one closes the capture at once
    (its flows' time-wait ends with it).
    """

    def __init__(self) -> None:
        self._demuxes: dict[tuple[int, int, int, int], Demultiplexer] = {}
        self._connecting: dict[Demultiplexer, int] = {}

    def acquire(self, reactor: Any, family: int, port: int, options: FlowOptions) -> Demultiplexer:
        """
        The demultiplexer for a new connection attempt to C{port}.
        """
        key = (netns_id(), family, port, options.mark)
        demux = self._demuxes.get(key)
        if demux is None:
            demux = Demultiplexer(reactor, family, port, Role.CLIENT, options)
            demux.on_released = lambda: self._maybeClose(key, demux)
            self._demuxes[key] = demux
        self._connecting[demux] = self._connecting.get(demux, 0) + 1
        return demux

    def attempt_over(self, demux: Demultiplexer) -> None:
        """
        A connection attempt ended, made or failed.
        """
        self._connecting[demux] -= 1
        demux.on_released()  # type: ignore[misc]

    def _maybeClose(self, key: tuple[int, int, int, int], demux: Demultiplexer) -> None:
        if demux.transports or self._connecting.get(demux, 0) > 0:
            return
        self._connecting.pop(demux, None)
        if self._demuxes.get(key) is demux:
            del self._demuxes[key]
        demux.close()


captures = _SharedCaptures()


@implementer(IWriteDescriptor)
class FakeTCPConnector:
    """
    One fake-TCP connection attempt.

    @ivar deferred: fires with the protocol once connected and adopted, or
        fails with a L{ConnectError} subclass.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        host: str,
        port: int,
        factory: Any,
        timeout: float = 30.0,
        bindAddress: tuple[str, int] | None = None,
        options: FlowOptions | None = None,
    ) -> None:
        self.reactor = reactor
        self.host = host
        self.port = port
        self.factory = factory
        self.timeout = timeout
        self.bindAddress = bindAddress
        self.options = options or FlowOptions()
        self.deferred: defer.Deferred[Any] = defer.Deferred(self._cancel)
        self.sock: socket.socket | None = None
        self.demux: Demultiplexer | None = None
        self.rule: SilenceRule | None = None
        self._expected: tuple[int, bytes, int] | None = None
        self._timeout_call: Any = None
        self._writing = False
        self._done = False
        self._namespace = netns_id()

    # -- IWriteDescriptor (connect completion) ----------------------------

    def fileno(self) -> int:
        return -1 if self.sock is None else self.sock.fileno()

    def logPrefix(self) -> str:
        return f"FakeTCPConnector {self.host}:{self.port}"

    def connectionLost(self, reason: Failure) -> None:
        # The reactor saw an error or hang-up on the connecting socket (a
        # refused connection, say); SO_ERROR tells which.
        self._writing = False
        sock = self.sock
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) if sock is not None else 0
        self._fail(connect_error(code) if code else error.ConnectError(string=str(reason.value)))

    def doWrite(self) -> None:
        self._stopWriting()
        sock = self.sock
        if sock is None or self._done:
            return
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self._fail(connect_error(code))
            return
        self._connected()

    def _stopWriting(self) -> None:
        if self._writing:
            self._writing = False
            self.reactor.removeWriter(self)

    # -- the attempt -----------------------------------------------------

    def connect(self) -> defer.Deferred[Any]:
        """
        Start connecting.  Sockets are created in the calling thread's
        network namespace, before this returns.
        """
        try:
            self._start()
        except Exception:
            self._fail(Failure())
        return self.deferred

    def _start(self) -> None:
        kernel.require_privileges(ConnectPermissionError)
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        remote = socket.inet_pton(family, self.host)
        rule = SilenceRule(family, self.port, remote=self.host, mark=self.options.mark)
        try:
            silencer.acquire(rule)
        except FirewallUnavailable as failure:
            raise ConnectFirewallError(failure) from failure
        self.rule = rule
        try:
            self.demux = captures.acquire(self.reactor, family, self.port, self.options)
            sock = self.sock = kernel.stream_socket(family, self.options.mark)
        except PermissionError as failure:
            raise ConnectPermissionError(failure) from failure
        if self.bindAddress is not None:
            sock.bind(self.bindAddress)
        else:
            sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
        local_port = sock.getsockname()[1]
        self._expected = (local_port, remote, self.port)
        self.demux.table.expect(*self._expected)
        code = sock.connect_ex((self.host, self.port))
        if code not in (0, errno.EINPROGRESS):
            raise connect_error(code)
        self._timeout_call = self.reactor.callLater(self.timeout, self._timedOut)
        if code == 0:
            self.reactor.callLater(0, self.doWrite)
        else:
            self._writing = True
            self.reactor.addWriter(self)

    def _timedOut(self) -> None:
        self._timeout_call = None
        self._fail(error.TimeoutError(string=f"no answer from {self.host}:{self.port}"))

    def _cancel(self, _deferred: defer.Deferred[Any]) -> None:
        self._fail(error.ConnectingCancelledError(self._address()))

    def _address(self) -> Any:
        from .transport import address_of

        return address_of(socket.inet_pton(socket.AF_INET6 if ":" in self.host else socket.AF_INET, self.host), self.port)

    def _connected(self) -> None:
        sock = self.sock
        demux = self.demux
        assert sock is not None and demux is not None
        try:
            adoption.silence(sock)
            key = adoption.flow_key(sock)
        except OSError as failure:
            self._fail(connect_error(failure.errno or 0))
            return

        def start(transport: FakeTCPTransport) -> None:
            if self._done:
                transport.refuse()
                return
            self._finishAttempt()
            self.sock = None
            transport.on_socket_closed = self._transportClosed(demux, self.rule, self._namespace)
            protocol = self.factory.buildProtocol(transport.getPeer())
            if protocol is None:
                transport.refuse()
            else:
                adoption.connect_protocol(transport, protocol)
            captures.attempt_over(demux)
            if protocol is None:
                self.deferred.errback(error.ConnectError(string="the factory built no protocol"))
            else:
                self.deferred.callback(protocol)

        adoption.adopt(demux, sock, key, start, lambda: self._fail(HandshakeNotSeenError()))

    @staticmethod
    def _transportClosed(demux: Demultiplexer, rule: SilenceRule | None, namespace: int) -> Any:
        def closed() -> None:
            if rule is not None:
                silencer.release(rule, namespace)

        return closed

    def _finishAttempt(self) -> None:
        """
        The attempt is over (either way): stop its timer and watches.  The
        socket, capture and rule now belong to the transport.
        """
        self._done = True
        self._stopWriting()
        if self._timeout_call is not None and self._timeout_call.active():
            self._timeout_call.cancel()
        self._timeout_call = None
        if self._expected is not None and self.demux is not None:
            self.demux.table.unexpect(*self._expected)

    def _fail(self, reason: Any) -> None:
        if self._done:
            return
        self._finishAttempt()
        sock, self.sock = self.sock, None
        if sock is not None:
            kernel.close_silently(sock)
        if self.demux is not None:
            captures.attempt_over(self.demux)
            self.demux = None
        if self.rule is not None:
            silencer.release(self.rule, self._namespace)
            self.rule = None
        if not self.deferred.called:
            self.deferred.errback(reason)
