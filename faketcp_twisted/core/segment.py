# -*- test-case-name: tests.test_segment -*-
"""
The wire format: IPv4 and IPv6 packets carrying one TCP segment.

Parsing turns the bytes a capture socket hands over (starting at the IP
header) into a L{Segment}; building turns a segment's fields into the bytes
a raw socket with a header-including option sends.  Nothing here touches a
socket or a clock.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from typing import NamedTuple

#: What the codec reads from: bytes, or a view of a receive buffer.
BytesLike = bytes | bytearray | memoryview

# TCP flag bits.
FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20

IPPROTO_TCP = 6

_IPV4_HEADER = struct.Struct("!BBHHHBBH4s4s")
_IPV6_HEADER = struct.Struct("!IHBB16s16s")
_TCP_HEADER = struct.Struct("!HHIIBBHHH")
_PSEUDO_TAIL = struct.Struct("!HH")  # protocol (zero-padded) and TCP length
_TIMESTAMPS = struct.Struct("!II")


#: Every L{MalformedSegment.reason} L{parse_packet} gives, with what it means:
#:  - C{truncated}: too short for the IP header, or for a TCP header after it.
#:  - C{bad-length}: an IP header length, IP total/payload length or TCP data
#:    offset that contradicts the bytes captured or the other lengths.
#:  - C{bad-version}: an IP version other than 4 or 6.
#:  - C{fragment}: an IPv4 fragment (MF set or a non-zero offset).
#:  - C{not-tcp}: another protocol, or IPv6 extension headers before TCP.
#:  - C{ip-options}: an IPv4 header with options (IHL > 5).
#:  - C{bad-checksum}: the TCP checksum does not verify.
MALFORMED_REASONS = frozenset(
    {"truncated", "bad-length", "bad-version", "fragment", "not-tcp", "ip-options", "bad-checksum"}
)


class MalformedSegment(ValueError):
    """
    A captured packet that is not a usable IP/TCP segment.

    @ivar reason: a short, stable word naming why (used as a counter name);
        always one of L{MALFORMED_REASONS}.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TCPOptions(NamedTuple):
    """
    The TCP options this project cares about, as seen in a handshake.

    @ivar mss: the maximum segment size option, or L{None}.
    @ivar wscale: the window scale shift, or L{None} when not offered.
    @ivar sack_permitted: whether SACK was offered.
    @ivar timestamp: (TSval, TSecr), or L{None}.
    """

    mss: int | None = None
    wscale: int | None = None
    sack_permitted: bool = False
    timestamp: tuple[int, int] | None = None


class Segment(NamedTuple):
    """
    One TCP segment with the addresses of the IP packet that carried it.

    Addresses are packed (4 or 16 bytes) because flow keys are made from
    them on every packet, and packing is what the wire already has.
    """

    src: bytes
    dst: bytes
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    window: int
    payload: bytes
    options: bytes = b""
    ttl: int = 64

    @property
    def family(self) -> int:
        """
        @return: C{AF_INET} or C{AF_INET6}, from the address length.
        """
        return socket.AF_INET if len(self.src) == 4 else socket.AF_INET6


class FlowKey(NamedTuple):
    """
    The full 4-tuple of a flow, seen from this side, addresses packed.

    For a segment from the peer that is (dst, dport, src, sport).  Defined
    with the codec, beside L{Segment}, because the fast path builds one per
    captured packet while it parses; L{faketcp_twisted.core.flow} re-exports it.
    """

    local_addr: bytes
    local_port: int
    remote_addr: bytes
    remote_port: int


def internet_checksum_sum(*parts: BytesLike) -> int:
    """
    One's complement sum of 16-bit big-endian words, reduced modulo 0xffff.

    Because 2**16 == 1 (mod 0xffff), a byte string read as one big integer
    is congruent to the sum of its 16-bit words; C{int.from_bytes} does that
    read in C, which is many times faster than any Python loop over words.
    Every part but the last must have an even length (each is added as if
    it started on a word boundary); an odd last part is padded with a zero.

    @return: the sum modulo 0xffff (0 stands for both +0 and -0).
    """
    total = 0
    for part in parts:
        value = int.from_bytes(part, "big")
        if len(part) & 1:
            value <<= 8
        total += value
    return total % 0xFFFF


def checksum_field(total: int) -> int:
    """
    The checksum field for a one's complement sum reduced modulo 0xffff
    (see L{internet_checksum_sum}).

    A sum of exactly 0xffff (reduced to 0) has the checksum 0, as RFC 1071
    and the kernel write it; 0xffff would be accepted too.
    """
    return 0xFFFF - total if total else 0


def tcp_checksum(src: bytes, dst: bytes, tcp: bytes, payload: bytes = b"") -> int:
    """
    The TCP checksum of a segment whose checksum field holds zero.

    @param src: packed source address (4 or 16 bytes).
    @param dst: packed destination address.
    @param tcp: the TCP header (an even number of bytes).
    @param payload: the data after the header.
    @return: the 16-bit value for the checksum field.
    """
    length = len(tcp) + len(payload)
    if len(src) == 4:
        pseudo = src + dst + _PSEUDO_TAIL.pack(IPPROTO_TCP, length)
    else:
        pseudo = src + dst + struct.pack("!II", length, IPPROTO_TCP)
    return checksum_field(internet_checksum_sum(pseudo, tcp, payload))


class MalformedOptions(ValueError):
    """
    A TCP option list that no TCP stack would send: an option whose length
    byte is missing, below 2 or past the end of the list, or a known option
    of the wrong length.
    """


#: The first four option bytes of an established segment from Linux (and
#: from current tcpraw, and from this project): NOP, NOP, then the
#: timestamps option's kind and length.  Its twelve bytes end with TSval
#: and TSecr.
TIMESTAMP_PREFIX = b"\x01\x01\x08\x0a"
#: The bytes that layout takes of every segment that carries it.
TIMESTAMP_OPTION_BYTES = 12
#: The length each known option must have (SACK blocks are checked apart).
_OPTION_LENGTHS = {2: 4, 3: 3, 4: 2, 8: 10}


def _walk_options(options: BytesLike) -> Iterator[tuple[int, BytesLike]]:
    """
    Every option of an option list as (kind, body), up to the end or an
    end-of-list option; NOPs are skipped.

    @raise MalformedOptions: at the first malformed option (see there).
    """
    i, end = 0, len(options)
    while i < end:
        kind = options[i]
        if kind == 0:
            return
        if kind == 1:
            i += 1
            continue
        if i + 1 >= end:
            raise MalformedOptions(f"option {kind} has no length")
        size = options[i + 1]
        if size < 2 or i + size > end:
            raise MalformedOptions(f"option {kind} has length {size}")
        known = _OPTION_LENGTHS.get(kind)
        if (known is not None and size != known) or (kind == 5 and (size - 2) % 8):
            raise MalformedOptions(f"option {kind} has length {size}")
        yield kind, options[i + 2 : i + size]
        i += size


def parse_options(options: bytes) -> TCPOptions:
    """
    Read the handshake options from the bytes after a TCP header.

    A malformed option list ends the scan (the segment stays usable, its
    options are simply not trusted further).  It never raises for any
    bytes: options come from the wire, and a bad option list must not cost
    more than the segment.
    """
    mss = wscale = None
    sack = False
    timestamp = None
    try:
        for kind, body in _walk_options(options):
            if kind == 2:
                mss = int.from_bytes(body, "big")
            elif kind == 3:
                wscale = min(body[0], 14)
            elif kind == 4:
                sack = True
            elif kind == 8:
                timestamp = (int.from_bytes(body[:4], "big"), int.from_bytes(body[4:], "big"))
    except MalformedOptions:
        pass
    return TCPOptions(mss, wscale, sack, timestamp)


def timestamp_value(options: bytes) -> int | None:
    """
    The peer's TSval in the options of an established segment.

    Established segments of real stacks carry NOP, EOL, timestamps and SACK
    blocks (and a few rarer options); all are accepted, and only a
    malformed list is refused.  The layout of Linux and tcpraw (NOP, NOP,
    timestamps) is recognised without a scan: it is on every segment of a
    current tcpraw peer.

    @return: TSval, or L{None} when the segment has no timestamps option.
    @raise MalformedOptions: for a malformed option list.
    """
    if len(options) == 12 and options[:4] == TIMESTAMP_PREFIX:
        return int.from_bytes(options[4:8], "big")
    value = None
    for kind, body in _walk_options(options):
        if kind == 8:
            value = int.from_bytes(body[:4], "big")
    return value


def timestamp_option(tsval: int, tsecr: int) -> bytes:
    """
    The twelve option bytes of an established segment with timestamps, as
    Linux lays them out: NOP, NOP, timestamps (TSval, TSecr).
    """
    return TIMESTAMP_PREFIX + _TIMESTAMPS.pack(tsval & 0xFFFFFFFF, tsecr & 0xFFFFFFFF)


def parse_packet(packet: BytesLike, verify_checksum: bool = True) -> Segment:
    """
    Parse an IPv4 or IPv6 packet carrying a TCP segment.

    @param packet: bytes starting at the IP header (or a view of them: the
        payload and options are copied out, nothing else is).
    @param verify_checksum: check the TCP checksum (skip it only when the
        kernel vouched for the packet, or the checksum was never computed
        because the packet did not leave the machine).
    @raise MalformedSegment: for anything that is not one whole, valid,
        unfragmented TCP segment (and for nothing else: any bytes either
        parse or raise this, with a C{reason} from L{MALFORMED_REASONS}).
    """
    size = len(packet)
    if size < 20:
        raise MalformedSegment("truncated")
    version = packet[0] >> 4
    if version == 4:
        (vihl, _tos, total, _ident, frag, ttl, proto, _csum, src, dst) = _IPV4_HEADER.unpack_from(
            packet
        )
        ihl = (vihl & 0x0F) * 4
        if ihl < 20 or total < ihl or total > size:
            raise MalformedSegment("bad-length")
        if frag & 0x3FFF:
            raise MalformedSegment("fragment")
        if proto != IPPROTO_TCP:
            raise MalformedSegment("not-tcp")
        if ihl != 20:
            # Neither the kernel's TCP nor any fake-TCP peer sends IP
            # options (and routers drop or strip most of them): a packet
            # with options is crafted, so it is dropped and counted rather
            # than parsed around.  The checks above come first so that a
            # header too long for the packet is still "bad-length".
            raise MalformedSegment("ip-options")
        start, end = ihl, total
    elif version == 6:
        if size < 40:
            raise MalformedSegment("truncated")
        (_vtcfl, plen, nxt, ttl, src, dst) = _IPV6_HEADER.unpack_from(packet)
        if nxt != IPPROTO_TCP:
            # Extension headers are legal but never used by fake-TCP peers;
            # refusing them keeps the parser (and the BPF filter) simple.
            raise MalformedSegment("not-tcp")
        start, end = 40, 40 + plen
        if end > size:
            raise MalformedSegment("bad-length")
    else:
        raise MalformedSegment("bad-version")
    if end - start < 20:
        raise MalformedSegment("truncated")
    (sport, dport, seq, ack, offset, flags, window, _csum, _urg) = _TCP_HEADER.unpack_from(
        packet, start
    )
    header = (offset >> 4) * 4
    if header < 20 or start + header > end:
        raise MalformedSegment("bad-length")
    segment = packet[start:end] if (start or end != size) else packet
    if verify_checksum:
        length = end - start
        if len(src) == 4:
            pseudo = src + dst + _PSEUDO_TAIL.pack(IPPROTO_TCP, length)
        else:
            pseudo = src + dst + struct.pack("!II", length, IPPROTO_TCP)
        if internet_checksum_sum(pseudo, segment) != 0:
            raise MalformedSegment("bad-checksum")
    return Segment(
        src,
        dst,
        sport,
        dport,
        seq,
        ack,
        flags,
        window,
        bytes(segment[header:]),
        bytes(segment[20:header]),
        ttl,
    )


def build_tcp(
    src: bytes,
    dst: bytes,
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    window: int,
    payload: bytes = b"",
    options: bytes = b"",
) -> bytes:
    """
    Build a TCP header and payload with a valid checksum (no IP header).

    @param options: raw option bytes, already padded to a multiple of 4.
    """
    if len(options) % 4:
        raise ValueError("TCP options must be padded to a multiple of 4 bytes")
    offset = (5 + len(options) // 4) << 4
    header = _TCP_HEADER.pack(sport, dport, seq, ack, offset, flags, window, 0, 0) + options
    checksum = tcp_checksum(src, dst, header, payload)
    return header[:16] + checksum.to_bytes(2, "big") + header[18:] + payload


def ip_header(src: bytes, dst: bytes, payload_length: int, ttl: int = 64) -> bytes:
    """
    An IP header for a TCP packet from C{src} to C{dst}.

    For IPv4 the identification and checksum fields are left zero: the
    kernel fills both for raw sockets with IP_HDRINCL.  DF is set, as the
    kernel's own TCP does, so the path MTU is never silently fragmented.
    """
    if len(src) == 4:
        return _IPV4_HEADER.pack(
            0x45, 0, 20 + payload_length, 0, 0x4000, ttl, IPPROTO_TCP, 0, src, dst
        )
    return _IPV6_HEADER.pack(0x60000000, payload_length, IPPROTO_TCP, ttl, src, dst)


def build_packet(
    src: bytes,
    dst: bytes,
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    window: int,
    payload: bytes = b"",
    ttl: int = 64,
    options: bytes = b"",
) -> bytes:
    """
    Build a whole IP packet carrying one TCP segment.

    The IPv4 header checksum is left zero (the kernel fills it on send; a
    parser here never checks it because the capture path already did).
    """
    tcp = build_tcp(src, dst, sport, dport, seq, ack, flags, window, payload, options)
    return ip_header(src, dst, len(tcp), ttl) + tcp


def seq_after(a: int, b: int) -> bool:
    """
    Whether sequence number C{a} lies after C{b} in 32-bit serial arithmetic.
    """
    return 0 < ((a - b) & 0xFFFFFFFF) < 0x80000000
