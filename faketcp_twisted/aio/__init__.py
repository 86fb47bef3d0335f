# -*- test-case-name: tests.test_aio -*-
"""
The asyncio face: fake-TCP with C{asyncio.Protocol}s, no Twisted reactor.

    server = await aio.create_server(Echo, host="0.0.0.0", port=9191)
    transport, protocol = await aio.create_connection(Client, "198.18.0.2", 9191)

The shapes are those of C{loop.create_server} and C{loop.create_connection};
the machinery underneath (capture, flows, listener, connector) is the one
the Twisted face uses, driven through the loop's C{add_reader} and timers.

Semantics, where asyncio's stream conventions meet datagrams:

  - A write of at most one MSS arrives as exactly one C{data_received}
    (larger writes are split at the MSS); nothing is retransmitted.
  - C{close()} sends FIN: the peer gets C{eof_received()} then
    C{connection_lost(None)}.  C{abort()} sends RST: the peer gets
    C{connection_lost(ConnectionResetError)}.  Locally both end with
    C{connection_lost(None)}, as asyncio's socket transports do.
  - A peer FIN calls C{eof_received()}; a true result keeps the write side
    open (half-close), anything else closes, as asyncio does.
  - A flow silent for the idle timeout ends with C{TimeoutError}.
  - The write buffer is the capture's send backlog, shared by every
    connection of the capture: writes go to the raw socket at once, and
    only what the kernel's send buffer cannot take waits there.
  - Failures to listen or connect are L{OSError} subclasses with one-line
    reasons (see L{errors.asyncio_error}).
  - With C{key=} (or C{key_file=}), connections are authenticated with a
    pre-shared key (see L{auth}): a server's protocol factory is called, and
    C{create_connection} returns, only once the peer proved the key; a
    client whose server cannot prove it gets
    L{FakeTCPAuthenticationError}.

No netlink is needed: the kernel's own bind and connect report an address
that does not exist or an unreachable host, so this face never asks
pyroute2 anything.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from asyncio import trsock
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, cast

from ..core.auth import DEFAULT_TIMEOUT, AuthKey, auth_key
from ..engine.connection import Ending, FlowConnection
from ..engine.connector import Connector
from ..engine.demux import Demultiplexer
from ..engine.options import FlowOptions
from ..engine.options import flow_options, host_port, is_ip_address
from ..engine.errors import FakeTCPError, Problem
from .errors import (
    FakeTCPAuthenticationError,
    FakeTCPConnectionRefusedError,
    FakeTCPFirewallError,
    FakeTCPHandshakeNotSeenError,
    FakeTCPOSError,
    FakeTCPPermissionError,
    FakeTCPTimeoutError,
    asyncio_error,
)
from ..core.flow import EndReason, Flow
from ..engine.listener import Listener
from .loop import AsyncioLoop, loop_for

__all__ = [
    "AioServer",
    "AioTransport",
    "FakeTCPAuthenticationError",
    "FakeTCPConnectionRefusedError",
    "FakeTCPFirewallError",
    "FakeTCPHandshakeNotSeenError",
    "FakeTCPOSError",
    "FakeTCPPermissionError",
    "FakeTCPTimeoutError",
    "Problem",
    "create_connection",
    "create_server",
]

log = logging.getLogger(__name__)

ProtocolFactory = Callable[[], asyncio.BaseProtocol]
_Protocol = TypeVar("_Protocol", bound=asyncio.BaseProtocol)


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


class AioTransport(FlowConnection, asyncio.Transport):
    """
    One fake-TCP connection, as an asyncio transport.

    @ivar protocol: the protocol this transport drives.
    """

    #: Seconds between looks at the send backlog while the protocol is
    #: paused for this transport's own limit: the demultiplexer announces
    #: only its shared high-water mark and its full drain.
    drainPollInterval = 0.005

    def __init__(self, demux: Demultiplexer, flow: Flow, kernel_socket: socket.socket) -> None:
        FlowConnection.__init__(self, demux, flow, kernel_socket)
        self._aio_loop = cast(AsyncioLoop, demux.loop).loop
        extra = {
            "peername": _asyncio_address(self.remote_address, _kernel_name(kernel_socket.getpeername)),
            "sockname": _asyncio_address(self.local_address, _kernel_name(kernel_socket.getsockname)),
            "socket": trsock.TransportSocket(kernel_socket),
        }
        asyncio.Transport.__init__(self, extra)
        self.protocol: Any = None
        self._server: AioServer | None = None
        self._closing = False
        self._eof_sent = False
        self._eof_reported = False
        self._eof_pending = False
        self._want_reading = True
        self._resume_scheduled = False
        self._buffered = False
        self._high_water = 64 * 1024
        self._low_water = 16 * 1024
        self._writing_paused = False
        self._drain_poll: asyncio.TimerHandle | None = None
        self._lost_writes = 0

    # -- life cycle ------------------------------------------------------

    def _attach(self, protocol: asyncio.BaseProtocol, server: AioServer | None = None) -> None:
        """
        Attach the protocol, tell it the connection is made, and deliver
        what arrived before adoption.
        """
        self._server = server
        self.set_protocol(protocol)
        if server is not None:
            server._attach(self)
        try:
            protocol.connection_made(self)
        except Exception as failure:
            self._protocolFailed(failure, "connection_made")
            return
        if self.demux.congested:
            self._pauseProtocol()
        self.start()

    def _deliver(self, payload: bytes) -> None:
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
        if not self.ended:
            self.send_rst()
            self.end(Ending.FAILED, failure)

    def _peerFinished(self) -> None:
        if self._closing:
            return
        if self.reading_paused:
            # Datagrams queued while paused come before the end of file.
            self._eof_pending = True
            return
        self._reportEOF()

    def _reportEOF(self) -> None:
        self._eof_reported = True
        try:
            keep_open = self.protocol.eof_received()
        except Exception as failure:
            self._protocolFailed(failure, "eof_received")
            return
        if not keep_open:
            self.close()

    def _ended(self, ending: Ending, failure: object) -> None:
        closed_here = self._closing
        self._closing = True
        self._stopDrainPoll()
        peer_finished = self.flow.end_reason is EndReason.PEER_FIN or self._eof_pending
        if (
            ending is Ending.DONE
            and peer_finished
            and not closed_here
            and not self._eof_reported
            and self.protocol is not None
        ):
            # The peer's FIN ended a flow this side had half-closed with
            # write_eof() (or was held behind paused reading): asyncio
            # still reports the end of file before the connection's end.
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
            server, self._server = self._server, None
            if server is not None:
                server._detach(self)

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
        if not self.ended:
            self.send_fin()
            self.end_soon(Ending.DONE)

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
        FlowConnection.pause_reading(self)

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
        if not self._want_reading or self.ended or self._closing:
            return
        FlowConnection.resume_reading(self)
        if self._eof_pending and not self.reading_paused and not self.ended and not self._closing:
            self._eof_pending = False
            self._reportEOF()

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
        self.send(data if isinstance(data, bytes) else bytes(data))
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
        if self.send_fin():
            # The peer had finished already: closed both ways.
            self._closing = True
            self.end_soon(Ending.DONE)

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
        if self._closing or self.ended:
            return
        self._closing = True
        self._stopDrainPoll()
        self.send_rst()
        self.end_soon(Ending.ABORTED)

    def get_write_buffer_size(self) -> int:
        """
        Bytes waiting in the capture's send backlog, for every connection of
        the capture: writes go to the raw socket at once, and only what the
        kernel's send buffer cannot take waits.
        """
        return self.demux.backlog_bytes

    def get_write_buffer_limits(self) -> tuple[int, int]:
        """
        The (low, high) limits, in bytes.
        """
        return (self._low_water, self._high_water)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """
        Pause the protocol's writing when, after one of its writes, the
        send backlog holds more than C{high} bytes (or the backlog reaches
        the capture's high-water mark), and resume it once the backlog is
        down to C{low} bytes.  Defaults as asyncio's: 64 KiB, and a quarter
        of C{high}.
        """
        if high is None:
            high = 64 * 1024 if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high_water, self._low_water = high, low
        self._maybePause()

    def _maybePause(self) -> None:
        if self._writing_paused or self._closing:
            return
        if self.demux.congested:
            self._pauseProtocol()
        elif self.demux.backlog_bytes > self._high_water:
            self._pauseProtocol()
            self._startDrainPoll()

    def _congestion(self, congested: bool) -> None:
        if congested:
            self._pauseProtocol()
        elif self.demux.backlog_bytes <= self._low_water:
            self._resumeProtocol()

    def _startDrainPoll(self) -> None:
        if self._drain_poll is None:
            self._drain_poll = self._aio_loop.call_later(self.drainPollInterval, self._pollDrain)

    def _stopDrainPoll(self) -> None:
        poll, self._drain_poll = self._drain_poll, None
        if poll is not None:
            poll.cancel()

    def _pollDrain(self) -> None:
        self._drain_poll = None
        if not self._writing_paused or self.ended:
            return
        if self.demux.congested:
            # The demultiplexer announces its drain: _congestion resumes.
            return
        if self.demux.backlog_bytes <= self._low_water:
            self._resumeProtocol()
        else:
            self._startDrainPoll()

    def _pauseProtocol(self) -> None:
        if self._writing_paused or self.protocol is None:
            return
        self._writing_paused = True
        try:
            self.protocol.pause_writing()
        except Exception as failure:
            self._aio_loop.call_exception_handler(
                {"message": "protocol.pause_writing() failed", "exception": failure, "transport": self}
            )

    def _resumeProtocol(self) -> None:
        if not self._writing_paused:
            return
        self._writing_paused = False
        self._stopDrainPoll()
        try:
            self.protocol.resume_writing()
        except Exception as failure:
            self._aio_loop.call_exception_handler(
                {"message": "protocol.resume_writing() failed", "exception": failure, "transport": self}
            )

    def __repr__(self) -> str:
        local = "%s:%d" % self.local_address
        remote = "%s:%d" % self.remote_address
        state = "closed" if self.ended else "closing" if self._closing else "open"
        return f"<AioTransport {local} <-> {remote} {state}>"


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


class AioServer(asyncio.AbstractServer):
    """
    A fake-TCP listening port, as an asyncio server.

    Closing stops accepting; connections already made go on (close or
    abort them with L{close_clients} and L{abort_clients}).
    L{wait_closed} returns once the port is closed and every connection has
    ended, its captures closed and its silencing rules removed.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        protocol_factory: ProtocolFactory,
        host: str,
        port: int,
        backlog: int,
        options: FlowOptions,
        auth: AuthKey | None = None,
        auth_timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._loop = loop
        self._protocol_factory = protocol_factory
        self._host = host
        self._listener = Listener(
            loop_for(loop),
            port,
            host,
            backlog,
            options,
            AioTransport,
            self._accepted,
            auth=auth,
            auth_timeout=auth_timeout,
        )
        self._listener.on_closed = self._listenerClosed
        self._transports: set[AioTransport] = set()
        self._serving = False
        self._listener_closed = False
        self._closed: asyncio.Future[None] = loop.create_future()
        self._serving_forever: asyncio.Future[None] | None = None

    def _start(self) -> None:
        """
        Listen.

        @raise FakeTCPOSError: a subclass naming the reason.
        """
        try:
            self._listener.start()
        except FakeTCPError as failure:
            where = f"listening on {host_port(self._host, self._listener.port)}"
            raise asyncio_error(failure, where) from failure
        self._serving = True

    @property
    def port(self) -> int:
        """
        The port number listened on (the actual one after asking for 0).
        """
        return self._listener.port

    @property
    def sockets(self) -> tuple[trsock.TransportSocket, ...]:
        """
        The kernel's listening socket (it makes the handshakes), while
        serving.
        """
        listener = self._listener.listener
        if not self._serving or listener is None:
            return ()
        return (trsock.TransportSocket(listener),)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        """
        The loop the server runs on.
        """
        return self._loop

    def is_serving(self) -> bool:
        """
        Whether new connections are accepted.
        """
        return self._serving

    async def start_serving(self) -> None:
        """
        Nothing to do: the server listens from its creation.
        """
        await asyncio.sleep(0)

    async def serve_forever(self) -> None:
        """
        Serve until cancelled; cancelling closes the server and waits for
        it to be closed.
        """
        if self._serving_forever is not None:
            raise RuntimeError(f"server {self!r} is already being awaited on serve_forever()")
        if not self._serving:
            raise RuntimeError(f"server {self!r} is closed")
        self._serving_forever = self._loop.create_future()
        try:
            await self._serving_forever
        except asyncio.CancelledError:
            try:
                self.close()
                await self.wait_closed()
            finally:
                raise
        finally:
            self._serving_forever = None

    def close(self) -> None:
        """
        Stop accepting.  Connections already made go on.
        """
        if not self._serving and self._listener_closed:
            return
        self._serving = False
        self._listener.close()
        forever = self._serving_forever
        if forever is not None and not forever.done():
            forever.cancel()
        self._maybeClosed()

    def close_clients(self) -> None:
        """
        Close (FIN) every connection of this server.
        """
        for transport in list(self._transports):
            transport.close()

    def abort_clients(self) -> None:
        """
        Reset (RST) every connection of this server.
        """
        self._listener.abort_all()

    async def wait_closed(self) -> None:
        """
        Wait until the server is closed and every connection has ended.
        """
        await asyncio.shield(self._closed)

    # -- the listener's and the transports' calls ------------------------

    def _accepted(self, connection: FlowConnection) -> None:
        assert isinstance(connection, AioTransport)
        if not self._serving:
            # Adopted after close(): the handshake finished too late.
            connection.refuse()
            return
        try:
            protocol = self._protocol_factory()
        except Exception as failure:
            self._loop.call_exception_handler(
                {"message": "protocol factory failed", "exception": failure, "server": self}
            )
            connection.refuse()
            return
        connection._attach(protocol, self)

    def _attach(self, transport: AioTransport) -> None:
        self._transports.add(transport)

    def _detach(self, transport: AioTransport) -> None:
        self._transports.discard(transport)
        self._maybeClosed()

    def _listenerClosed(self) -> None:
        self._listener_closed = True
        self._maybeClosed()

    def _maybeClosed(self) -> None:
        if self._listener_closed and not self._transports and not self._closed.done():
            self._closed.set_result(None)

    def __repr__(self) -> str:
        return f"<AioServer faketcp {host_port(self._host, self._listener.port)}>"


async def _resolve(loop: asyncio.AbstractEventLoop, host: str, port: int, family: int, passive: bool = False) -> str:
    """
    The first address of C{host}; IP addresses are used as they are, with
    no turn of the loop (so sockets are made in the caller's namespace).
    """
    if is_ip_address(host):
        return host
    flags = socket.AI_PASSIVE if passive else 0
    answers = await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_STREAM, flags=flags)
    if not answers:
        raise OSError(f"getaddrinfo({host!r}) returned an empty list")
    return cast(str, answers[0][4][0])


async def create_server(
    protocol_factory: ProtocolFactory,
    host: str | None = None,
    port: int = 0,
    *,
    backlog: int = 100,
    idle_timeout: float | None = None,
    keepalive: float | None = None,
    mark: int | None = None,
    key: str | bytes | None = None,
    key_file: str | None = None,
    auth_timeout: float = DEFAULT_TIMEOUT,
    timestamps: bool = True,
) -> AioServer:
    """
    Listen for fake-TCP connections, as C{loop.create_server} listens for
    TCP ones.

    @param protocol_factory: makes one protocol per connection.
    @param host: the local address; L{None} or C{""} for every address
        (C{::}, which also serves IPv4 where the system allows dual stack),
        C{"0.0.0.0"} for every IPv4 address.  A name is resolved to its
        first address.
    @param port: the TCP port (0 picks a free one: see L{AioServer.port}).
    @param backlog: the kernel listener's backlog.
    @param idle_timeout: seconds of silence from a peer after which its
        connection ends with C{TimeoutError} (default 180; 0 never).
    @param keepalive: seconds between keepalive ACKs on a quiet connection
        (default 0: none).
    @param mark: the firewall mark of the silenced kernel sockets.
    @param key: a pre-shared key clients must prove before
        C{protocol_factory} is called for them (a string is taken as UTF-8).
        A key in a command line is visible to every local user through
        C{ps}: prefer C{key_file}.
    @param key_file: a file holding the key instead (surrounding whitespace
        ignored).
    @param auth_timeout: seconds a client's proof may take.
    @param timestamps: whether segments carry TCP timestamps when the
        handshake agreed on them (12 bytes of each segment's room).
    @raise FakeTCPOSError: a subclass naming the reason (C{errno} is
        C{EADDRINUSE} for a port in use).
    @raise ValueError: both C{key} and C{key_file}, or an empty or
        unreadable key.
    """
    loop = asyncio.get_running_loop()
    options = flow_options(idle_timeout, keepalive, mark, timestamps)
    auth = auth_key(key, key_file)
    if host:
        host = await _resolve(loop, host, port, socket.AF_UNSPEC, passive=True)
        server = AioServer(loop, protocol_factory, host, port, backlog, options, auth, auth_timeout)
        server._start()
        return server
    # Every address: dual stack, or IPv4 alone on a host without IPv6.
    server = AioServer(loop, protocol_factory, "::", port, backlog, options, auth, auth_timeout)
    try:
        server._start()
    except FakeTCPOSError as failure:
        if failure.errno != errno.EAFNOSUPPORT:
            raise
        server = AioServer(loop, protocol_factory, "0.0.0.0", port, backlog, options, auth, auth_timeout)
        server._start()
    return server


async def create_connection(
    protocol_factory: Callable[[], _Protocol],
    host: str,
    port: int,
    *,
    local_addr: tuple[str, int] | None = None,
    family: int = socket.AF_UNSPEC,
    timeout: float = 30.0,
    idle_timeout: float | None = None,
    keepalive: float | None = None,
    mark: int | None = None,
    key: str | bytes | None = None,
    key_file: str | None = None,
    auth_timeout: float = DEFAULT_TIMEOUT,
    timestamps: bool = True,
) -> tuple[AioTransport, _Protocol]:
    """
    Open a fake-TCP connection, as C{loop.create_connection} opens a TCP
    one.  With an IP address for C{host}, the sockets are made before the
    first suspension, in the calling thread's network namespace.

    @param host: an IP address, or a name resolved with C{getaddrinfo}.
    @param local_addr: the local (address, port) to connect from.
    @param family: the address family a name is resolved in.
    @param timeout: seconds to wait for the handshake.
    @param idle_timeout: as for L{create_server}.
    @param keepalive: as for L{create_server}.
    @param mark: as for L{create_server}.
    @param key: a pre-shared key the server must prove, and this side
        proves, before the connection is made; as for L{create_server}.
    @param key_file: as for L{create_server}.
    @param auth_timeout: seconds the server's proof may take.
    @param timestamps: as for L{create_server}.
    @return: the transport and the protocol.
    @raise FakeTCPOSError: a subclass naming the reason
        (C{ConnectionRefusedError}, C{TimeoutError}, C{EHOSTUNREACH},
        L{FakeTCPAuthenticationError}...).
    @raise ValueError: both C{key} and C{key_file}, or an empty or
        unreadable key.
    """
    loop = asyncio.get_running_loop()
    auth = auth_key(key, key_file)
    address = await _resolve(loop, host, port, family)
    made: asyncio.Future[tuple[AioTransport, _Protocol]] = loop.create_future()

    def connected(connection: FlowConnection) -> None:
        assert isinstance(connection, AioTransport)
        if made.done():
            # The caller gave up while the handshake was being adopted.
            connection.refuse()
            return
        try:
            protocol = protocol_factory()
        except Exception as failure:
            connection.refuse()
            made.set_exception(failure)
            return
        connection._attach(protocol)
        made.set_result((connection, protocol))

    def failed(cause: FakeTCPError) -> None:
        if not made.done():
            made.set_exception(asyncio_error(cause, f"connecting to {host_port(address, port)}"))

    connector = Connector(
        loop_for(loop),
        address,
        port,
        timeout,
        local_addr,
        flow_options(idle_timeout, keepalive, mark, timestamps),
        AioTransport,
        connected,
        failed,
        auth=auth,
        auth_timeout=auth_timeout,
    )
    connector.start()
    try:
        return await made
    except asyncio.CancelledError:
        connector.cancel()
        if made.done() and not made.cancelled() and made.exception() is None:
            # Connected in the same turn the caller gave up: do not leak it.
            made.result()[0].abort()
        raise

