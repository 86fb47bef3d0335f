# -*- test-case-name: tests.test_aio -*-
"""
The asyncio transport of one fake-TCP connection: asyncio's
C{Transport} API over the engine's L{FlowConnection}, which it holds and
is the face of (the C{Face} of L{faketcp_twisted.engine.contracts}).
The semantics where asyncio's stream conventions meet datagrams are
listed in L{faketcp_twisted.aio}; the write buffer is L{flowcontrol}'s.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from asyncio import trsock
from collections.abc import Callable, Iterable
from typing import Any, cast

from ..core.flow import EndReason, Flow
from ..engine.connection import Ending, FlowConnection
from .flowcontrol import WriteFlowControl
from .loop import AsyncioLoop

__all__ = ["AioTransport", "attach"]

log = logging.getLogger(__name__)


def _lost_reset() -> BaseException:
    return ConnectionResetError(errno.ECONNRESET, "connection reset by peer")


def _lost_timeout() -> BaseException:
    return TimeoutError(errno.ETIMEDOUT, "fake-TCP flow idle for too long")


def _lost_capture() -> BaseException:
    return ConnectionAbortedError(errno.ECONNABORTED, "the fake-TCP capture was closed")


#: What C{connection_lost} is given for each ending.  Both local endings
#: (close, abort) give L{None}, as asyncio's socket transports do.
_LOST: dict[Ending, Callable[[], BaseException | None]] = {
    Ending.DONE: lambda: None,
    Ending.ABORTED: lambda: None,
    Ending.RESET: _lost_reset,
    Ending.TIMEOUT: _lost_timeout,
    Ending.CAPTURE_CLOSED: _lost_capture,
}


def attach(
    connection: FlowConnection,
    protocol: asyncio.BaseProtocol,
    on_made: Callable[[AioTransport], object] | None = None,
    on_lost: Callable[[AioTransport], object] | None = None,
) -> AioTransport:
    """
    Serve a new connection: make its transport, attach C{protocol}, call
    its C{connection_made} and deliver what arrived before adoption.

    @param on_made: called with the transport before C{connection_made}
        (a server keeps its transports).
    @param on_lost: called with the transport once its protocol's
        C{connection_lost} returned (always on a later turn of the loop
        than the call that ended the connection).
    """
    transport = AioTransport(connection, on_lost)
    if on_made is not None:
        on_made(transport)
    transport._open(protocol)
    return transport


def _asyncio_address(text: tuple[str, int], kernel_name: Any) -> tuple[Any, ...]:
    """
    A socket address as asyncio gives it: (host, port) for IPv4, (host,
    port, flowinfo, scope_id) for IPv6.  The kernel's own name is used for
    IPv6 (it knows the scope); an IPv4 peer of a dual-stack listener stays
    IPv4, as its segments are.
    """
    host, port = text
    if ":" not in host:
        return (host, port)
    if isinstance(kernel_name, tuple) and len(kernel_name) == 4 and kernel_name[0].split("%", 1)[0] == host:
        return (host, port, kernel_name[2], kernel_name[3])
    return (host, port, 0, 0)


def _kernel_name(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except OSError:
        # Reset under us: the text addresses are all there is.
        return None


def _feed_buffered(protocol: asyncio.BufferedProtocol, data: bytes) -> None:
    """
    Hand one datagram to a L{asyncio.BufferedProtocol}, in as many buffers
    as it takes.
    """
    view = memoryview(data)
    while view:
        buffer = memoryview(protocol.get_buffer(len(view)))
        size = min(len(buffer), len(view))
        if not size:
            raise RuntimeError("get_buffer() returned an empty buffer")
        buffer[:size] = view[:size]
        protocol.buffer_updated(size)
        view = view[size:]


class AioTransport(WriteFlowControl):
    """
    One fake-TCP connection, as an asyncio transport.

    Besides asyncio's C{Transport} API it offers L{connection} and
    L{flow} (for tests and diagnostics), and the C{Face} methods its
    connection calls (L{deliver}, L{peer_finished}, L{connection_ended},
    L{congestion_changed}), which protocols do not.

    @ivar protocol: the protocol this transport drives.
    """

    def __init__(self, connection: FlowConnection, on_lost: Callable[[AioTransport], object] | None = None) -> None:
        """
        @param connection: the engine's connection, which this transport
            binds itself to (as its face).
        @param on_lost: see L{attach}.
        """
        kernel_socket = connection.socket
        super().__init__(
            connection,
            cast(AsyncioLoop, connection.loop).loop,
            {
                "peername": _asyncio_address(connection.remote_address, _kernel_name(kernel_socket.getpeername)),
                "sockname": _asyncio_address(connection.local_address, _kernel_name(kernel_socket.getsockname)),
                "socket": trsock.TransportSocket(kernel_socket),
            },
        )
        self._on_lost = on_lost
        self._eof_sent = False
        self._eof_reported = False
        self._want_reading = True
        self._resume_scheduled = False
        self._buffered = False
        self._lost_writes = 0
        connection.bind(self)

    @property
    def connection(self) -> FlowConnection:
        """
        The engine's connection under this transport.
        """
        return self._connection

    @property
    def flow(self) -> Flow:
        """
        The connection's sans-IO flow (its MSS, its counters).
        """
        return self._connection.flow

    def _open(self, protocol: asyncio.BaseProtocol) -> None:
        self.set_protocol(protocol)
        try:
            protocol.connection_made(self)
        except Exception as failure:
            self._protocolFailed(failure, "connection_made")
            return
        if self._connection.congested:
            self._pauseProtocol()
        self._connection.start()

    def _protocolFailed(self, failure: BaseException, callback: str) -> None:
        # One protocol's failure loses its own connection only; the peer
        # learns at once (RST) instead of at its idle timeout.
        self._aio_loop.call_exception_handler(
            {
                "message": f"Fatal error: protocol.{callback}() call failed.",
                "exception": failure,
                "transport": self,
                "protocol": self.protocol,
            }
        )
        connection = self._connection
        if not connection.ended:
            connection.send_rst()
            connection.end(Ending.FAILED, failure)

    # -- Face: what the connection tells this transport ------------------

    def deliver(self, payload: bytes) -> None:
        """
        Hand one datagram from the peer to the protocol (the connection's
        call, not the protocol's).
        """
        if self._closing:
            # asyncio stops reading at close(): nothing more is delivered.
            return
        protocol = self.protocol
        try:
            if self._buffered:
                _feed_buffered(protocol, payload)
            else:
                protocol.data_received(payload)
        except Exception as failure:
            self._protocolFailed(failure, "data_received")

    def peer_finished(self) -> None:
        """
        The peer sent FIN: C{eof_received()} (the connection holds a FIN
        that arrives while reading is paused until the datagrams queued
        before it are delivered).
        """
        if self._closing:
            return
        self._eof_reported = True
        try:
            keep_open = self.protocol.eof_received()
        except Exception as failure:
            self._protocolFailed(failure, "eof_received")
            return
        if not keep_open:
            self.close()

    def connection_ended(self, ending: Ending, failure: object) -> None:
        """
        The connection is over: C{eof_received()} if the peer's FIN ended
        it unreported, then C{connection_lost} on a later turn.
        """
        closed_here = self._closing
        self._closing = True
        self._stopDrainPoll()
        if (
            ending is Ending.DONE
            and self._connection.flow.end_reason is EndReason.PEER_FIN
            and not closed_here
            and not self._eof_reported
            and self.protocol is not None
        ):
            # The peer's FIN ended a flow this side had half-closed with
            # write_eof(): asyncio still reports the end of file before
            # the connection's end.
            self._eof_reported = True
            try:
                self.protocol.eof_received()
            except Exception as error:
                self._aio_loop.call_exception_handler(
                    {"message": "protocol.eof_received() failed", "exception": error, "transport": self}
                )
        if ending is Ending.FAILED and isinstance(failure, BaseException):
            reason: BaseException | None = failure
        else:
            reason = _LOST[ending]()
        # asyncio never calls connection_lost from inside a transport
        # method (abort_clients, a failing callback): always a turn later.
        self._aio_loop.call_soon(self._callConnectionLost, reason)

    def _callConnectionLost(self, reason: BaseException | None) -> None:
        protocol = self.protocol
        try:
            if protocol is not None:
                protocol.connection_lost(reason)
        except Exception as failure:
            self._aio_loop.call_exception_handler(
                {"message": "protocol.connection_lost() failed", "exception": failure, "transport": self}
            )
        finally:
            on_lost, self._on_lost = self._on_lost, None
            if on_lost is not None:
                on_lost(self)

    # -- asyncio.BaseTransport -------------------------------------------

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        """
        Drive C{protocol} from now on.
        """
        self.protocol = protocol
        self._buffered = isinstance(protocol, asyncio.BufferedProtocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        """
        The protocol this transport drives.
        """
        return self.protocol  # type: ignore[no-any-return]

    def is_closing(self) -> bool:
        """
        Whether the transport is closing or closed.
        """
        return self._closing

    def close(self) -> None:
        """
        Send FIN and close; C{connection_lost(None)} follows on a later turn
        of the loop.  Nothing more is delivered.
        """
        if self._closing:
            return
        self._closing = True
        self._stopDrainPoll()
        connection = self._connection
        if not connection.ended:
            connection.send_fin()
            connection.end_soon(Ending.DONE)

    # -- asyncio.ReadTransport -------------------------------------------

    def is_reading(self) -> bool:
        """
        Whether datagrams are being delivered.
        """
        return not self._closing and self._want_reading

    def pause_reading(self) -> None:
        """
        Queue this connection's datagrams (up to a bound; past it they are
        dropped, as a full UDP buffer would) instead of delivering them.
        """
        if self._closing:
            return
        self._want_reading = False
        self._connection.pause_delivery()

    def resume_reading(self) -> None:
        """
        Deliver what was queued, from the next turn of the loop (never from
        inside this call), then go on delivering.
        """
        if self._closing or self._want_reading:
            return
        self._want_reading = True
        if not self._resume_scheduled:
            self._resume_scheduled = True
            self._aio_loop.call_soon(self._resumeNow)

    def _resumeNow(self) -> None:
        self._resume_scheduled = False
        connection = self._connection
        if not self._want_reading or connection.ended or self._closing:
            return
        connection.resume_delivery()

    # -- asyncio.WriteTransport ------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """
        Send C{data} as one datagram per MSS-sized piece, at once.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data argument must be a bytes-like object, not {type(data).__name__!r}")
        if self._eof_sent:
            raise RuntimeError("Cannot call write() after write_eof()")
        if not data:
            return
        if self._closing:
            # As asyncio's transports: quiet at first, then a warning for a
            # program that keeps writing to a dead connection.
            self._lost_writes += 1
            if self._lost_writes >= 5:
                log.warning("write on a closed fake-TCP transport %r", self)
            return
        self._connection.send(data if isinstance(data, bytes) else bytes(data))
        self._maybePause()

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        """
        Send the concatenation of C{list_of_data}, as L{write} would.
        """
        self.write(b"".join(list_of_data))

    def write_eof(self) -> None:
        """
        Send FIN and keep receiving until the peer closes too.
        """
        if self._closing or self._eof_sent:
            return
        self._eof_sent = True
        connection = self._connection
        if connection.send_fin():
            # The peer had finished already: closed both ways.
            self._closing = True
            connection.end_soon(Ending.DONE)

    def can_write_eof(self) -> bool:
        """
        Always: FIN is a half-close.
        """
        return True

    def abort(self) -> None:
        """
        Send RST and close at once; the peer sees C{ConnectionResetError},
        this side C{connection_lost(None)}.
        """
        connection = self._connection
        if self._closing or connection.ended:
            return
        self._closing = True
        self._stopDrainPoll()
        connection.abort_soon()

    def __repr__(self) -> str:
        connection = self._connection
        (local, local_port), (remote, remote_port) = connection.local_address, connection.remote_address
        state = "closed" if connection.ended else "closing" if self._closing else "open"
        return f"<AioTransport {local}:{local_port} <-> {remote}:{remote_port} {state}>"
