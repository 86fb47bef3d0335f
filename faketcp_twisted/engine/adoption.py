# -*- test-case-name: tests.test_integration -*-
"""
Adoption: turning a kernel socket the kernel has just accepted or
connected into a flow with its L{FlowConnection}, routed by the
demultiplexer (the owner then binds a face to it).

The capture usually read the handshake before the reactor reports the
socket, but not always (both become readable in one wake-up, in no
particular order), so adoption first reads the capture, and if the
handshake is still unseen waits for later batches, up to a deadline.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from ..core.flow import FlowKey
from ..io import kernel
from .connection import FlowConnection
from .demux import Demultiplexer

#: Seconds to wait for the capture to show a handshake the kernel finished.
HANDSHAKE_WAIT = 3.0
#: The kernel socket's receive buffer once silenced: what it receives is a
#: copy of what the capture delivered, so it only needs to stay small.
SILENCED_RECEIVE_BUFFER = 4096


def flow_key(sock: socket.socket) -> FlowKey:
    """
    The 4-tuple of a connected kernel socket, addresses packed.  An
    IPv4-mapped IPv6 address (a dual-stack listener) is unmapped, because
    its segments travel, and are captured, as IPv4.
    """
    local = sock.getsockname()
    remote = sock.getpeername()
    return FlowKey(_pack(local[0]), local[1], _pack(remote[0]), remote[1])


def _pack(host: str) -> bytes:
    if ":" in host:
        packed = socket.inet_pton(socket.AF_INET6, host.split("%", 1)[0])
        if packed[:12] == b"\0" * 10 + b"\xff\xff":
            return packed[12:]
        return packed
    return socket.inet_pton(socket.AF_INET, host)


def silence(sock: socket.socket) -> None:
    """
    Silence a kernel socket the moment it is connected (see L{kernel}).
    """
    kernel.silence(sock)
    if sock.family == socket.AF_INET6:
        # An IPv6 socket may carry IPv4 (dual stack): set both TTLs.
        try:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 1)
        except OSError:
            pass


def adopt(
    demux: Demultiplexer,
    sock: socket.socket,
    key: FlowKey,
    start: Callable[[FlowConnection], None],
    give_up: Callable[[], None],
) -> None:
    """
    Adopt the flow of C{sock} now if its handshake was seen, else when it
    is; call C{start} with its new connection, or C{give_up} at the
    deadline.
    """
    table = demux.table
    if not table.handshake_known(key):
        demux.doRead()
    if table.handshake_known(key):
        start(_connection(demux, sock, key))
        return
    deadline = demux.loop.seconds() + HANDSHAKE_WAIT
    # Meanwhile the kernel holds the connection: the table must not reset
    # it as an orphan.
    table.awaiting_adoption.add(key)

    def waiter() -> bool:
        if table.handshake_known(key):
            table.awaiting_adoption.discard(key)
            start(_connection(demux, sock, key))
            return True
        if demux.loop.seconds() >= deadline:
            table.awaiting_adoption.discard(key)
            demux.count_drop("handshake-unseen")
            give_up()
            return True
        return False

    demux.wait_for(waiter)


def _connection(demux: Demultiplexer, sock: socket.socket, key: FlowKey) -> FlowConnection:
    info = kernel.kernel_tcp_info(sock)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SILENCED_RECEIVE_BUFFER)
    except OSError:
        pass
    options = demux.options
    now = demux.loop.seconds()
    # Timestamps where the kernel's handshake agreed on them (and the
    # options allow): every segment then continues the kernel's clock, and
    # 12 bytes of each carry the option instead of data.
    timestamps = info.timestamps and options.timestamps
    mss = info.mss if info.mss > 0 else 536
    if timestamps:
        mss -= kernel.TIMESTAMP_OPTION
    flow, early = demux.table.adopt(
        key,
        mss,
        now,
        idle_timeout=options.idle_timeout,
        keepalive_interval=options.keepalive,
        peer_wscale=info.send_wscale,
        receive_wscale=info.receive_wscale,
    )
    if timestamps:
        try:
            flow.use_timestamps(kernel.current_timestamp(sock), now, info.timestamp_rate)
        except OSError:
            # No TCP_TIMESTAMP (a kernel before 4.13?): without the
            # kernel's clock a made-up one would jump; send none.
            flow.mss += kernel.TIMESTAMP_OPTION
    # Announce this side's scaled window at once: until the peer and the
    # firewalls on the path see it, they only know the handshake's window.
    flow.pending.append(flow.bare_ack(now))
    connection = FlowConnection(demux, flow, sock)
    connection.early = early
    demux.attach(connection)
    return connection
