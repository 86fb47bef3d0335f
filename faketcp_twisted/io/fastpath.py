# -*- test-case-name: tests.test_fastpath -*-
"""
The per-packet hot path, in C when the optional extension
C{faketcp_twisted.io._fastpath} was built, else in pure Python with the same
semantics.

Seven operations carry every packet, and each has two implementations that
give the same results and raise the same errors (the tests compare them on
many random packets):

  - L{internet_checksum_sum}: the one's complement sum behind every TCP
    checksum.
  - L{build_segment}: a whole IP packet from a per-flow header template
    (L{segment_template}), so a flow packs its addresses, ports and window
    once, not per packet.  A template made with C{timestamps=True} carries
    the TCP timestamps option as Linux lays it out on established segments
    (C{NOP, NOP, kind 8, length 10, TSval, TSecr}: 12 option bytes, data
    offset 8), and the TSval and TSecr given are written into each segment.
  - L{parse_packet}: the codec's parser, with checksum verification.
  - L{receive_segments}: a batch of captured packets, parsed, with their
    flow keys (C: one C{recvmmsg} per 64 packets; Python: C{recvmsg_into}
    into one reused buffer, so only the payload is copied).
  - L{send_batch}: a batch of packets out of the raw socket (C: one
    C{sendmmsg} per 64 packets; Python: C{sendto} each).
  - L{receive_datagrams}: a batch of datagrams from one of the relay's UDP
    sockets, with their sources (C: one C{recvmmsg} per 64 datagrams, and
    the last source's address tuple reused; Python: C{recvfrom} each).
  - L{send_datagrams}: a batch of datagrams out of one of those sockets
    (C: one C{sendmmsg} per 64 datagrams; Python: C{send} or C{sendto}
    each).

The C implementation is used when it imports, unless the environment sets
C{FAKETCP_PURE_PYTHON=1}; L{use} switches at run time (for tests).  Callers
look the functions up on this module at call time (C{fastpath.parse_packet}),
never bind them at import, so a switch reaches them.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..core import segment as _segment
from ..core.segment import IPPROTO_TCP, BytesLike, FlowKey, MalformedSegment, Segment

#: A batch of parsed captured packets: the segments, the flow key of each
#: (this side's view: local address and port first), and the reason of
#: every packet refused as malformed.
Received = tuple[list[Segment], list[FlowKey], list[str]]

#: Items of a send batch: (whole IP packet, destination socket address).
#: The C implementation sends each packet to the destination in its own IP
#: header, which for the packets this project builds is the same address
#: (and refuses, with EINVAL, a packet too short to have one); the Python
#: one sends to the address given.
Outgoing = tuple[bytes, tuple[Any, ...]]

#: A batch of datagrams read from a UDP socket, and the source address of
#: each (as C{socket.recvfrom} gives it) or L{None} when not asked for.
Datagrams = tuple[list[bytes], list[tuple[Any, ...]] | None]

_TCP_HEADER = struct.Struct("!HHIIBBHHH")
_SEQ_ACK = struct.Struct("!II")
_PSEUDO4_TAIL = struct.Struct("!HH")
_PSEUDO6_TAIL = struct.Struct("!II")
#: The TCP timestamps option as the Linux kernel lays it out on established
#: segments: NOP, NOP, kind 8, length 10, then TSval and TSecr (4 bytes
#: each, big-endian), 12 bytes in all.
_TIMESTAMPS_HEAD = b"\x01\x01\x08\x0a"

SOL_PACKET = 263
PACKET_AUXDATA = 8
#: tpacket_auxdata.tp_status bits: the checksum was never computed (the
#: packet did not leave the machine), or the kernel verified it already.
_TRUSTED = (1 << 3) | (1 << 7)
_AUXDATA = struct.Struct("=I")
_AUX_SPACE = socket.CMSG_SPACE(20)
#: As L{capture.Capture.maxPacket}: an IP packet cannot be longer.
MAX_PACKET = 65535


def segment_template(
    src: bytes, dst: bytes, sport: int, dport: int, window: int, ttl: int = 64, timestamps: bool = False
) -> bytes:
    """
    The header template of a flow's segments for L{build_segment}: an IP
    header and a TCP header with everything that never changes within a
    flow (addresses, ports, window, TTL) and zero where the sequence and
    ack numbers, flags, lengths and checksum go.

    @param src: packed source address (4 or 16 bytes).
    @param dst: packed destination address.
    @param timestamps: whether the segments carry the TCP timestamps option
        (C{01 01 08 0a} then TSval and TSecr, zero here: L{build_segment}
        fills them), which makes the TCP header's data offset 8.  Without
        it the TCP header has no options (data offset 5).
    @return: 40 bytes (IPv4) or 60 (IPv6) without timestamps; 52 or 72
        with them.
    """
    options = _TIMESTAMPS_HEAD + bytes(8) if timestamps else b""
    ip = _segment.ip_header(src, dst, 20 + len(options), ttl)
    offset = (5 + len(options) // 4) << 4
    return ip + _TCP_HEADER.pack(sport, dport, 0, 0, offset, 0, window, 0, 0) + options


# -- the pure-Python implementation -------------------------------------------


class SegmentBuilder(Protocol):
    """
    The type of L{build_segment}: positional arguments only, 5, 6 or 7 of
    them, as the C implementation takes them.
    """

    def __call__(
        self, template: bytes, seq: int, ack: int, flags: int, payload: BytesLike, tsval: int = 0, tsecr: int = 0, /
    ) -> bytes:
        """
        A whole IP packet carrying one TCP segment: the template (from
        L{segment_template}) with the sequence and ack numbers, flags,
        lengths and TCP checksum filled in, then C{payload}.

        With a template made with C{timestamps=True} (52 bytes for IPv4, 72
        for IPv6), C{tsval} and C{tsecr} are written, big-endian, into its
        timestamps option, whose 12 bytes count in the TCP length, the IP
        length and the checksum.  With an option-less template (40 or 60
        bytes) they are ignored, though still range-checked, so a caller
        may pass them whatever its template is.

        @raise ValueError: for a template that is not one of those four
            (its IP version, TCP data offset and option bytes must be what
            its size says), or a payload too long for one IP packet.
        @raise OverflowError: for C{seq}, C{ack}, C{tsval} or C{tsecr}
            outside 0..2**32-1, or C{flags} outside 0..255.
        """


def _py_build_segment(
    template: bytes, seq: int, ack: int, flags: int, payload: BytesLike, tsval: int = 0, tsecr: int = 0, /
) -> bytes:
    """
    L{build_segment} in Python (see L{SegmentBuilder.__call__}).
    """
    size = len(template)
    if size == 40 or size == 52:
        v6 = False
        start = 20
    elif size == 60 or size == 72:
        v6 = True
        start = 40
    else:
        raise ValueError("not a segment template")
    # The IP version, the TCP data offset and the option layout must be what
    # the size says.
    tcp_header = size - start
    if (
        template[0] >> 4 != (6 if v6 else 4)
        or template[start + 12] >> 4 != tcp_header >> 2
        or (tcp_header != 20 and template[start + 20 : start + 24] != _TIMESTAMPS_HEAD)
    ):
        raise ValueError("not a segment template")
    if not (0 <= seq <= 0xFFFFFFFF and 0 <= ack <= 0xFFFFFFFF):
        raise OverflowError("seq, ack or flags out of range")
    if not 0 <= flags <= 0xFF:
        raise OverflowError("seq, ack or flags out of range")
    if not (0 <= tsval <= 0xFFFFFFFF and 0 <= tsecr <= 0xFFFFFFFF):
        raise OverflowError("tsval or tsecr out of range")
    tcp_length = tcp_header + len(payload)
    if (tcp_length if v6 else 20 + tcp_length) > 0xFFFF:
        raise ValueError("payload too long for one IP packet")
    if v6:
        ip = template[:4] + tcp_length.to_bytes(2, "big") + template[6:40]
        pseudo = template[8:40] + _PSEUDO6_TAIL.pack(tcp_length, IPPROTO_TCP)
    else:
        ip = template[:2] + (20 + tcp_length).to_bytes(2, "big") + template[4:20]
        pseudo = template[12:20] + _PSEUDO4_TAIL.pack(IPPROTO_TCP, tcp_length)
    tcp = (
        template[start : start + 4]
        + _SEQ_ACK.pack(seq, ack)
        + bytes((template[start + 12], flags))
        + template[start + 14 : start + 16]
    )
    # The urgent pointer, then the timestamps option when there is one.
    after = template[start + 18 : start + 20]
    if tcp_header != 20:
        after += _TIMESTAMPS_HEAD + _SEQ_ACK.pack(tsval, tsecr)
    # Pseudo header, the header's 16 bytes before the checksum field and
    # what follows it, then the payload: the sum needs no concatenation of
    # the payload (int.from_bytes reads it in place).
    checksum = _segment.checksum_field(_segment.internet_checksum_sum(pseudo + tcp + after, payload))
    return ip + tcp + checksum.to_bytes(2, "big") + after + payload


class _ReceiveBuffer(threading.local):
    """
    The pure-Python receive buffer, one per thread: packets are read into it
    and parsed from a view, so only their payload is ever copied.
    """

    def __init__(self) -> None:
        self.buffer = bytearray(MAX_PACKET)
        self.view = memoryview(self.buffer)
        self.buffers = [self.buffer]


_receive_buffer = _ReceiveBuffer()


def _py_receive_segments(sock: socket.socket, budget: int) -> Received:
    """
    L{receive_segments} in Python.
    """
    segments: list[Segment] = []
    keys: list[FlowKey] = []
    malformed: list[str] = []
    local = _receive_buffer
    view, buffers = local.view, local.buffers
    receive = sock.recvmsg_into
    parse = _segment.parse_packet
    for _ in range(budget):
        try:
            size, ancillary, _flags, _address = receive(buffers, _AUX_SPACE)
        except (BlockingIOError, InterruptedError):
            break
        except OSError:
            if segments or keys or malformed:
                break
            raise
        verify = True
        for level, kind, value in ancillary:
            if level == SOL_PACKET and kind == PACKET_AUXDATA:
                verify = not (_AUXDATA.unpack_from(value)[0] & _TRUSTED)
        try:
            segment = parse(view[:size], verify)
        except MalformedSegment as refused:
            malformed.append(refused.reason)
            continue
        segments.append(segment)
        keys.append(FlowKey(segment.dst, segment.dport, segment.src, segment.sport))
    return segments, keys, malformed


def _py_send_batch(sock: socket.socket, items: list[Outgoing], start: int) -> tuple[int, list[int]]:
    """
    L{send_batch} in Python.
    """
    errors: list[int] = []
    sendto = sock.sendto
    first = index = max(start, 0)
    end = len(items)
    while index < end:
        try:
            packet, address = items[index]
            sendto(packet, address)
        except BlockingIOError:
            break
        except OSError as failure:
            errors.append(failure.errno or 0)
        except Exception:
            # Never raise once an item is done with (the caller would lose
            # the index): a malformed item is then refused, as C does.
            if index == first and not errors:
                raise
            errors.append(errno.EINVAL)
        index += 1
    return index, errors


def _py_receive_datagrams(sock: socket.socket, budget: int, with_sources: bool) -> Datagrams:
    """
    L{receive_datagrams} in Python.
    """
    datagrams: list[bytes] = []
    sources: list[tuple[Any, ...]] | None = [] if with_sources else None
    receive = sock.recvfrom
    for _ in range(budget):
        try:
            datagram, source = receive(MAX_PACKET)
        except (BlockingIOError, InterruptedError):
            break
        except OSError:
            if datagrams:
                break
            raise
        datagrams.append(datagram)
        if sources is not None:
            sources.append(source)
    return datagrams, sources


def _py_send_datagrams(
    sock: socket.socket, datagrams: list[bytes], destinations: list[tuple[Any, ...]] | None
) -> tuple[int, list[int]]:
    """
    L{send_datagrams} in Python.
    """
    if destinations is not None and len(destinations) != len(datagrams):
        raise ValueError("one destination per datagram")
    errors: list[int] = []
    index = 0
    end = len(datagrams)
    while index < end:
        try:
            if destinations is None:
                sock.send(datagrams[index])
            else:
                sock.sendto(datagrams[index], destinations[index])
        except BlockingIOError:
            break
        except InterruptedError:
            continue
        except OSError as failure:
            errors.append(failure.errno or 0)
        except Exception:
            # Never raise once a datagram is done with (the caller would
            # lose the index): a malformed one is then refused, as C does.
            if index == 0 and not errors:
                raise
            errors.append(errno.EINVAL)
        index += 1
    return index, errors


# -- the two implementations --------------------------------------------------


@dataclass(frozen=True)
class Implementation:
    """
    One implementation of the hot path.

    @ivar name: C{"c"} or C{"python"}.
    """

    name: str
    internet_checksum_sum: Callable[..., int]
    build_segment: SegmentBuilder
    parse_packet: Callable[..., Segment]
    receive_segments: Callable[[socket.socket, int], Received]
    send_batch: Callable[[socket.socket, list[Outgoing], int], tuple[int, list[int]]]
    receive_datagrams: Callable[[socket.socket, int, bool], Datagrams]
    send_datagrams: Callable[[socket.socket, list[bytes], list[tuple[Any, ...]] | None], tuple[int, list[int]]]


PYTHON = Implementation(
    name="python",
    internet_checksum_sum=_segment.internet_checksum_sum,
    build_segment=_py_build_segment,
    parse_packet=_segment.parse_packet,
    receive_segments=_py_receive_segments,
    send_batch=_py_send_batch,
    receive_datagrams=_py_receive_datagrams,
    send_datagrams=_py_send_datagrams,
)


def _load_c() -> Implementation | None:
    try:
        from . import _fastpath
    except ImportError:
        return None
    _fastpath.configure(Segment, FlowKey, MalformedSegment)
    return Implementation(
        name="c",
        internet_checksum_sum=_fastpath.internet_checksum_sum,
        build_segment=_fastpath.build_segment,
        parse_packet=_fastpath.parse_packet,
        receive_segments=_fastpath.receive_segments,
        send_batch=_fastpath.send_batch,
        receive_datagrams=_fastpath.receive_datagrams,
        send_datagrams=_fastpath.send_datagrams,
    )


#: The C implementation, or L{None} when the extension was not built.
C: Implementation | None = _load_c()


def available() -> Sequence[Implementation]:
    """
    Every implementation that can run here, the pure-Python one first.
    """
    return (PYTHON,) if C is None else (PYTHON, C)


# The active implementation's functions, as module attributes (see the
# module docstring); L{use} rebinds them.
active: Implementation = PYTHON
internet_checksum_sum: Callable[..., int] = PYTHON.internet_checksum_sum
build_segment: SegmentBuilder = PYTHON.build_segment
parse_packet: Callable[..., Segment] = PYTHON.parse_packet
receive_segments: Callable[[socket.socket, int], Received] = PYTHON.receive_segments
send_batch: Callable[[socket.socket, list[Outgoing], int], tuple[int, list[int]]] = PYTHON.send_batch
receive_datagrams: Callable[[socket.socket, int, bool], Datagrams] = PYTHON.receive_datagrams
send_datagrams: Callable[[socket.socket, list[bytes], list[tuple[Any, ...]] | None], tuple[int, list[int]]] = (
    PYTHON.send_datagrams
)


def use(implementation: Implementation | str) -> Implementation:
    """
    Make C{implementation} (or the one of that name) the active one.

    @return: the implementation that was active before, to restore later.
    @raise LookupError: for the name of an implementation not available.
    """
    global active, internet_checksum_sum, build_segment, parse_packet, receive_segments, send_batch
    global receive_datagrams, send_datagrams
    if isinstance(implementation, str):
        found = [each for each in available() if each.name == implementation]
        if not found:
            names = [each.name for each in available()]
            raise LookupError(f"no {implementation!r} fast path here (available: {names})")
        implementation = found[0]
    previous = active
    active = implementation
    internet_checksum_sum = implementation.internet_checksum_sum
    build_segment = implementation.build_segment
    parse_packet = implementation.parse_packet
    receive_segments = implementation.receive_segments
    send_batch = implementation.send_batch
    receive_datagrams = implementation.receive_datagrams
    send_datagrams = implementation.send_datagrams
    return previous


def _default() -> Implementation:
    if os.environ.get("FAKETCP_PURE_PYTHON", "") not in ("", "0") or C is None:
        return PYTHON
    return C


use(_default())
