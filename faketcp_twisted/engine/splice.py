# -*- test-case-name: tests.test_splice,tests.test_fallback -*-
"""
Splicing: a kernel TCP connection joined both ways to a new TCP
connection to another service, for as long as either side has something
to say.

A listener with a fallback hands every connection that did not prove the
key to its fallback service this way (see L{faketcp_twisted.engine.fallback}):
the kernel owns the connection again, and the prober talks to the real
service through this process.

Each direction is a L{_Pump}: it reads while the other socket takes what
it read, and otherwise stops reading until it does, so a slow reader on
one side holds back the other's sender through TCP's own flow control and
memory stays bounded by one buffer per direction.  An end of stream is
passed on as a half-close (C{shutdown(SHUT_WR)}); once both directions
ended, both sockets close.  An error or reset on either side closes both
at once, with a RST on the other (as the service's own reset would look to
the prober).
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from ..io import kernel
from .loop import EventLoop, Timer

#: Connect errors that mean "in progress" for a non-blocking socket.
_IN_PROGRESS = (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN)


class _Pump:
    """
    One direction of a splice: from C{source} to C{sink}.

    @ivar pending: bytes read from the source that the sink has not taken.
    @ivar finished: whether the source's end of stream was passed on.
    """

    __slots__ = ("splice", "source", "sink", "source_fd", "sink_fd", "pending", "finished", "moved")

    def __init__(self, splice: Splice, source: socket.socket, sink: socket.socket) -> None:
        self.splice = splice
        self.source = source
        self.sink = sink
        self.source_fd = source.fileno()
        self.sink_fd = sink.fileno()
        self.pending = b""
        self.finished = False
        self.moved = 0

    def start(self) -> None:
        self.splice.loop.add_reader(self.source_fd, self.readable)

    def stop(self) -> None:
        loop = self.splice.loop
        loop.remove_reader(self.source_fd)
        loop.remove_writer(self.sink_fd)

    def readable(self) -> None:
        try:
            data = self.source.recv(Splice.bufferSize)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.splice.abort()
            return
        if not data:
            self.splice.loop.remove_reader(self.source_fd)
            self._finish()
            return
        self.moved += len(data)
        try:
            sent = self.sink.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.splice.abort()
            return
        if sent < len(data):
            # The sink is full: stop reading until it takes the rest, so
            # the source's sender is held back by its own window.
            self.pending = data[sent:]
            loop = self.splice.loop
            loop.remove_reader(self.source_fd)
            loop.add_writer(self.sink_fd, self.writable)

    def writable(self) -> None:
        try:
            sent = self.sink.send(self.pending)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.splice.abort()
            return
        self.pending = self.pending[sent:]
        if self.pending:
            return
        loop = self.splice.loop
        loop.remove_writer(self.sink_fd)
        loop.add_reader(self.source_fd, self.readable)

    def _finish(self) -> None:
        self.finished = True
        try:
            self.sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the sink is gone already: its own pump finds out
        self.splice.pump_finished()


class Splice:
    """
    A connected kernel socket (the I{downstream}: a prober's connection)
    joined both ways to a new connection to C{upstream}.

    @ivar loop: the event loop.
    @ivar downstream: the connection handed over.
    @ivar upstream_address: where the other connection goes, as
        C{(family, sockaddr)}.
    @ivar upstream: the other connection, once made.
    @ivar ended: whether both sockets are closed.
    @ivar failed: whether the upstream could not be reached.
    """

    #: Most bytes read at once, and kept per direction while the other
    #: side is full.
    bufferSize = 64 * 1024
    #: Seconds the connection to the upstream may take.
    connectTimeout = 10.0

    def __init__(
        self,
        loop: EventLoop,
        downstream: socket.socket,
        upstream_address: tuple[int, tuple[Any, ...]],
        on_ended: Callable[[Splice], None],
        where: Callable[[], AbstractContextManager[None]] = nullcontext,
    ) -> None:
        """
        @param on_ended: called with the splice once both sockets are
            closed.
        @param where: the context the upstream socket is made in (its
            network namespace).
        """
        self.loop = loop
        self._where = where
        self.downstream = downstream
        self.upstream_address = upstream_address
        self.upstream: socket.socket | None = None
        self.ended = False
        self.failed = False
        self._on_ended = on_ended
        self._pumps: tuple[_Pump, _Pump] | None = None
        self._connect_timer: Timer | None = None

    def start(self) -> None:
        """
        Connect to the upstream; the splice runs once connected (until
        then the downstream's bytes wait in its kernel buffer).
        """
        family, address = self.upstream_address
        try:
            with self._where():
                upstream = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            self._fail()
            return
        self.upstream = upstream
        upstream.setblocking(False)
        code = upstream.connect_ex(address)
        if code == 0:
            self._connected()
            return
        if code not in _IN_PROGRESS:
            self._fail()
            return
        self.loop.add_writer(upstream.fileno(), self._connectDone)
        self._connect_timer = self.loop.call_later(self.connectTimeout, self._connectTimedOut)

    def _connectDone(self) -> None:
        upstream = self.upstream
        if upstream is None or self.ended:
            return
        self.loop.remove_writer(upstream.fileno())
        self._cancelTimer()
        if upstream.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self._fail()
            return
        self._connected()

    def _connectTimedOut(self) -> None:
        self._connect_timer = None
        if self.upstream is not None and not self.ended and self._pumps is None:
            self.loop.remove_writer(self.upstream.fileno())
            self._fail()

    def _cancelTimer(self) -> None:
        timer, self._connect_timer = self._connect_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _connected(self) -> None:
        upstream = self.upstream
        assert upstream is not None
        self._pumps = (_Pump(self, self.downstream, upstream), _Pump(self, upstream, self.downstream))
        for pump in self._pumps:
            pump.start()

    def _fail(self) -> None:
        # Nobody to hand the prober to: reset it, as a port without a
        # service behind it would.
        self.failed = True
        self.abort()

    @property
    def moved(self) -> tuple[int, int]:
        """
        Bytes passed on so far: (downstream to upstream, upstream to
        downstream).
        """
        if self._pumps is None:
            return (0, 0)
        return (self._pumps[0].moved, self._pumps[1].moved)

    def pump_finished(self) -> None:
        """
        One direction ended; once both have, close both sockets.
        """
        pumps = self._pumps
        if pumps is not None and all(pump.finished for pump in pumps):
            self._close(abortive=False)

    def abort(self) -> None:
        """
        Close both sockets at once, each with a RST.
        """
        self._close(abortive=True)

    def close(self) -> None:
        """
        Close both sockets as a service that stops would (FIN, or RST where
        unread data is left).
        """
        self._close(abortive=False)

    def _close(self, abortive: bool) -> None:
        if self.ended:
            return
        self.ended = True
        self._cancelTimer()
        if self._pumps is not None:
            for pump in self._pumps:
                pump.stop()
        elif self.upstream is not None:
            self.loop.remove_writer(self.upstream.fileno())
        for sock in (self.downstream, self.upstream):
            if sock is None:
                continue
            if abortive:
                kernel.close_abortively(sock)
            else:
                sock.close()
        self._on_ended(self)
