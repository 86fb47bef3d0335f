# -*- test-case-name: tests.test_integration -*-
"""
Client connections: the kernel connects a marked socket while a capture
that was opened first watches for the SYN-ACK; connections to the same
remote port (in one network namespace) share that capture.
"""

from __future__ import annotations

import errno
import os
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
from .firewall import FirewallUnavailable, SilenceRule, silencer
from .table import Role
from .transport import FakeTCPTransport


def _netns() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


class _SharedCaptures:
    """
    The client demultiplexers, one per (network namespace, family, remote
    port, mark), with a count of users: connections being made and
    connections up.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[int, int, int, int], list[Any]] = {}

    def acquire(self, reactor: Any, family: int, port: int, options: FlowOptions) -> Demultiplexer:
        key = (_netns(), family, port, options.mark)
        entry = self._entries.get(key)
        if entry is None or entry[0]._closed:
            demux = Demultiplexer(reactor, family, port, Role.CLIENT, options)
            entry = self._entries[key] = [demux, 0]
        entry[1] += 1
        return entry[0]

    def release(self, demux: Demultiplexer) -> None:
        for key, entry in list(self._entries.items()):
            if entry[0] is demux:
                entry[1] -= 1
                if entry[1] <= 0:
                    del self._entries[key]
                    demux.close()
                return


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
        self._namespace = _netns()

    # -- IWriteDescriptor (connect completion) ----------------------------

    def fileno(self) -> int:
        return -1 if self.sock is None else self.sock.fileno()

    def logPrefix(self) -> str:
        return f"FakeTCPConnector {self.host}:{self.port}"

    def connectionLost(self, reason: Failure) -> None:
        self._fail(error.ConnectError(string="reactor stopped"))

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
            transport.on_socket_closed = self._transportClosed(demux, self.rule, self._namespace)
            protocol = self.factory.buildProtocol(transport.getPeer())
            if protocol is None:
                transport.refuse()
                self.deferred.errback(error.ConnectError(string="the factory built no protocol"))
                return
            adoption.connect_protocol(transport, protocol)
            self.deferred.callback(protocol)

        adoption.adopt(demux, sock, key, start, lambda: self._fail(HandshakeNotSeenError()))

    @staticmethod
    def _transportClosed(demux: Demultiplexer, rule: SilenceRule | None, namespace: int) -> Any:
        def closed() -> None:
            captures.release(demux)
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
            captures.release(self.demux)
            self.demux = None
        if self.rule is not None:
            silencer.release(self.rule, self._namespace)
            self.rule = None
        if not self.deferred.called:
            self.deferred.errback(reason)
