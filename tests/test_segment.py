"""
Tests for L{faketcp_twisted.core.segment}: the IPv4/IPv6 + TCP codec.

Checksums are checked against packets written out byte by byte in this
module (independently cross-checked with C{tcpdump -vv}, which reported
every TCP checksum as correct) and against a plain reference implementation
of RFC 1071: a loop over 16-bit words with end-around carry.
"""

from __future__ import annotations

import socket
import struct

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from faketcp_twisted.core.segment import (
    ACK,
    FIN,
    MALFORMED_REASONS,
    PSH,
    SYN,
    MalformedSegment,
    Segment,
    TCPOptions,
    build_packet,
    build_tcp,
    internet_checksum_sum,
    ip_header,
    parse_options,
    parse_packet,
    seq_after,
    tcp_checksum,
)

SRC4 = socket.inet_pton(socket.AF_INET, "192.0.2.1")
DST4 = socket.inet_pton(socket.AF_INET, "198.51.100.7")
SRC6 = socket.inet_pton(socket.AF_INET6, "2001:db8::1")
DST6 = socket.inet_pton(socket.AF_INET6, "2001:db8::2")

IPPROTO_UDP = 17
IPPROTO_HOPOPTS = 0

# -- known packets -----------------------------------------------------------
#
# Each one was written out field by field; the TCP checksum of every one was
# confirmed by tcpdump -vv ("cksum 0x.... (correct)").  The IPv4 ones carry a
# real IP header checksum too; the codec never looks at it.

#: IPv4, 192.0.2.1:40000 -> 198.51.100.7:443, PSH|ACK, seq 0x12345678,
#: ack 0x9abcdef0, window 0xffff, 15 bytes of payload (odd length).
KNOWN_IPV4_DATA = bytes.fromhex(
    "450000370000400040064e85c0000201c6336407"
    "9c4001bb123456789abcdef05018ffff33d80000"
    "68656c6c6f2c2066616b6520746370"
)
KNOWN_IPV4_DATA_CHECKSUM = 0x33D8

#: IPv4 SYN, seq 0x01020304, window 64240, with options MSS 1460,
#: SACK-permitted, timestamps (123456, 0), NOP, window scale 7.
KNOWN_IPV4_SYN = bytes.fromhex(
    "4500003c0000400040064e80c0000201c6336407"
    "9c4001bb0102030400000000a002faf0dc8f0000"
    "020405b40402080a0001e2400000000001030307"
)
KNOWN_IPV4_SYN_CHECKSUM = 0xDC8F

#: IPv6, 2001:db8::1:40000 -> 2001:db8::2:443, PSH|ACK, seq 0xfffffff0,
#: ack 0x10, hop limit 64, 18 bytes of payload.
KNOWN_IPV6_DATA = bytes.fromhex(
    "600000000026064020010db8000000000000000000000001"
    "20010db8000000000000000000000002"
    "9c4001bbfffffff0000000105018ffff2c0b0000"
    "646174616772616d206f7665722069707636"
)
KNOWN_IPV6_DATA_CHECKSUM = 0x2C0B

#: IPv6 FIN|PSH|ACK, seq 7, ack 8, 3 bytes of payload (odd length).
KNOWN_IPV6_FIN = bytes.fromhex(
    "600000000017064020010db8000000000000000000000001"
    "20010db8000000000000000000000002"
    "9c4001bb00000007000000085019ffffe2e40000"
    "6f6464"
)
KNOWN_IPV6_FIN_CHECKSUM = 0xE2E4


# -- a reference implementation, written for clarity, not speed -------------


def reference_sum(data: bytes) -> int:
    """
    The RFC 1071 one's complement sum of C{data}: 16-bit big-endian words
    added one at a time, each carry out of bit 15 added back in at once; an
    odd last byte is padded with a zero byte.

    @return: a value in [0, 0xffff] (0 only for all-zero input).
    """
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return total


def reference_checksum(data: bytes) -> int:
    """
    The RFC 1071 checksum: the one's complement of L{reference_sum}.
    """
    return ~reference_sum(data) & 0xFFFF


def reference_pseudo_header(src: bytes, dst: bytes, tcp_length: int) -> bytes:
    """
    The TCP pseudo-header of RFC 793 (IPv4) or RFC 8200 section 8.1 (IPv6).
    """
    if len(src) == 4:
        return src + dst + bytes([0, 6]) + tcp_length.to_bytes(2, "big")
    return src + dst + tcp_length.to_bytes(4, "big") + bytes([0, 0, 0, 6])


def reference_tcp_checksum(src: bytes, dst: bytes, segment: bytes) -> int:
    """
    The checksum of a TCP segment (header with checksum field zeroed, and
    payload) computed with the reference loop.
    """
    return reference_checksum(reference_pseudo_header(src, dst, len(segment)) + segment)


def zero_checksum_field(segment: bytes) -> bytes:
    """
    C{segment} (TCP header and payload) with its checksum field zeroed.
    """
    return segment[:16] + b"\x00\x00" + segment[18:]


def raw_ipv4(
    tcp: bytes,
    protocol: int = 6,
    fragment: int = 0x4000,
    total: int | None = None,
    ihl: int = 5,
    options: bytes = b"",
    version: int = 4,
    ttl: int = 64,
) -> bytes:
    """
    An IPv4 packet around C{tcp}, with every header field overridable.
    """
    if total is None:
        total = 20 + len(options) + len(tcp)
    header = struct.pack(
        "!BBHHHBBH4s4s",
        (version << 4) | ihl,
        0,
        total,
        0x1234,
        fragment,
        ttl,
        protocol,
        0,
        SRC4,
        DST4,
    )
    return header + options + tcp


def raw_ipv6(
    tcp: bytes, next_header: int = 6, payload_length: int | None = None, hop_limit: int = 64
) -> bytes:
    """
    An IPv6 packet around C{tcp}, with every header field overridable.
    """
    if payload_length is None:
        payload_length = len(tcp)
    header = struct.pack(
        "!IHBB16s16s", 6 << 28, payload_length, next_header, hop_limit, SRC6, DST6
    )
    return header + tcp


def raw_tcp(
    src: bytes = SRC4,
    dst: bytes = DST4,
    payload: bytes = b"",
    data_offset: int = 5,
    options: bytes = b"",
    flags: int = PSH | ACK,
) -> bytes:
    """
    A TCP segment with a correct checksum (from the reference) and an
    overridable data offset field.
    """
    header = struct.pack(
        "!HHIIBBHHH", 40000, 443, 1000, 2000, data_offset << 4, flags, 0xFFFF, 0, 0
    )
    segment = header + options + payload
    checksum = reference_tcp_checksum(src, dst, segment)
    return segment[:16] + checksum.to_bytes(2, "big") + segment[18:]


# -- checksums ---------------------------------------------------------------


class ReferenceSelfTests(SynchronousTestCase):
    """
    The reference implementation itself agrees with the literature, so the
    comparisons below mean something.
    """

    def test_rfc1071Example(self) -> None:
        """
        The reference sums RFC 1071's example words to 0xddf2.
        """
        self.assertEqual(reference_sum(bytes.fromhex("0001f203f4f5f6f7")), 0xDDF2)

    def test_knownPacketsVerify(self) -> None:
        """
        Every known packet's TCP checksum matches the reference.
        """
        for packet, start, src, dst, expected in [
            (KNOWN_IPV4_DATA, 20, SRC4, DST4, KNOWN_IPV4_DATA_CHECKSUM),
            (KNOWN_IPV4_SYN, 20, SRC4, DST4, KNOWN_IPV4_SYN_CHECKSUM),
            (KNOWN_IPV6_DATA, 40, SRC6, DST6, KNOWN_IPV6_DATA_CHECKSUM),
            (KNOWN_IPV6_FIN, 40, SRC6, DST6, KNOWN_IPV6_FIN_CHECKSUM),
        ]:
            segment = packet[start:]
            self.assertEqual(int.from_bytes(segment[16:18], "big"), expected)
            self.assertEqual(
                reference_tcp_checksum(src, dst, zero_checksum_field(segment)), expected
            )


class InternetChecksumSumTests(SynchronousTestCase):
    """
    L{internet_checksum_sum} is the one's complement sum modulo 0xffff.
    """

    def test_rfc1071Example(self) -> None:
        """
        RFC 1071's example words 0x0001 0xf203 0xf4f5 0xf6f7 sum to 0xddf2.
        """
        self.assertEqual(internet_checksum_sum(bytes.fromhex("0001f203f4f5f6f7")), 0xDDF2)

    def test_rfc1071ExampleSplit(self) -> None:
        """
        Splitting the example at word boundaries does not change the sum.
        """
        self.assertEqual(
            internet_checksum_sum(bytes.fromhex("0001f203"), bytes.fromhex("f4f5f6f7")),
            0xDDF2,
        )
        self.assertEqual(
            internet_checksum_sum(
                bytes.fromhex("0001"),
                b"",
                bytes.fromhex("f203f4f5"),
                bytes.fromhex("f6f7"),
            ),
            0xDDF2,
        )

    def test_empty(self) -> None:
        """
        The sum of nothing is zero.
        """
        self.assertEqual(internet_checksum_sum(), 0)
        self.assertEqual(internet_checksum_sum(b""), 0)

    def test_oddLastPartPaddedWithZero(self) -> None:
        """
        An odd last part is summed as if followed by a zero byte.
        """
        self.assertEqual(internet_checksum_sum(b"\x12\x34\x56"), 0x1234 + 0x5600)
        self.assertEqual(internet_checksum_sum(b"\x12\x34", b"\x56"), 0x1234 + 0x5600)

    def test_negativeZeroIsZero(self) -> None:
        """
        A sum of 0xffff (one's complement -0) is reported as 0.
        """
        self.assertEqual(internet_checksum_sum(b"\xff\xff"), 0)
        self.assertEqual(internet_checksum_sum(b"\xff\xfe\x00\x01"), 0)

    def test_wrapsWithEndAroundCarry(self) -> None:
        """
        Carries out of the top bit are added back in (0xffff + 0x0002 = 0x0002).
        """
        self.assertEqual(internet_checksum_sum(b"\xff\xff\x00\x02"), 2)
        self.assertEqual(
            internet_checksum_sum(b"\xff" * 1001),
            reference_sum(b"\xff" * 1001) % 0xFFFF,
        )

    @settings(max_examples=300, deadline=None)
    @given(
        data=st.binary(max_size=300),
        cuts=st.lists(st.integers(min_value=0, max_value=150), max_size=6),
    )
    def test_agreesWithReferenceForAnyWordAlignedSplit(
        self, data: bytes, cuts: list[int]
    ) -> None:
        """
        For any data cut into parts at even offsets (only the last part may
        be odd), the sum is the reference sum modulo 0xffff.
        """
        points = sorted({min(2 * cut, len(data)) for cut in cuts})
        parts = []
        start = 0
        for point in points:
            parts.append(data[start:point])
            start = point
        parts.append(data[start:])
        self.assertEqual(b"".join(parts), data)
        self.assertEqual(internet_checksum_sum(*parts), reference_sum(data) % 0xFFFF)


class TCPChecksumTests(SynchronousTestCase):
    """
    L{tcp_checksum}, L{build_tcp} and L{build_packet} produce the checksums
    of the known packets and of the reference implementation.
    """

    def test_knownIPv4Data(self) -> None:
        """
        The checksum of the known IPv4 data segment is the one on the wire.
        """
        segment = zero_checksum_field(KNOWN_IPV4_DATA[20:])
        self.assertEqual(
            tcp_checksum(SRC4, DST4, segment[:20], segment[20:]), KNOWN_IPV4_DATA_CHECKSUM
        )

    def test_knownIPv4SynWithOptions(self) -> None:
        """
        Options are covered by the checksum of the known IPv4 SYN.
        """
        segment = zero_checksum_field(KNOWN_IPV4_SYN[20:])
        self.assertEqual(tcp_checksum(SRC4, DST4, segment), KNOWN_IPV4_SYN_CHECKSUM)

    def test_knownIPv6Data(self) -> None:
        """
        The IPv6 pseudo-header (32-bit length, next header) is used for IPv6.
        """
        segment = zero_checksum_field(KNOWN_IPV6_DATA[40:])
        self.assertEqual(
            tcp_checksum(SRC6, DST6, segment[:20], segment[20:]), KNOWN_IPV6_DATA_CHECKSUM
        )

    def test_knownIPv6OddPayload(self) -> None:
        """
        An odd-length payload is padded with a zero byte for the checksum.
        """
        segment = zero_checksum_field(KNOWN_IPV6_FIN[40:])
        self.assertEqual(
            tcp_checksum(SRC6, DST6, segment[:20], segment[20:]), KNOWN_IPV6_FIN_CHECKSUM
        )

    def test_buildPacketReproducesKnownIPv4(self) -> None:
        """
        L{build_packet} reproduces the known IPv4 packet byte for byte, but
        for the IP header checksum it leaves to the kernel.
        """
        packet = build_packet(
            SRC4, DST4, 40000, 443, 0x12345678, 0x9ABCDEF0, PSH | ACK, 0xFFFF, b"hello, fake tcp"
        )
        expected = KNOWN_IPV4_DATA[:10] + b"\x00\x00" + KNOWN_IPV4_DATA[12:]
        self.assertEqual(packet, expected)

    def test_buildPacketReproducesKnownIPv4Options(self) -> None:
        """
        L{build_packet} with options reproduces the known IPv4 SYN.
        """
        packet = build_packet(
            SRC4,
            DST4,
            40000,
            443,
            0x01020304,
            0,
            SYN,
            64240,
            options=KNOWN_IPV4_SYN[40:60],
        )
        expected = KNOWN_IPV4_SYN[:10] + b"\x00\x00" + KNOWN_IPV4_SYN[12:]
        self.assertEqual(packet, expected)

    def test_buildPacketReproducesKnownIPv6(self) -> None:
        """
        L{build_packet} reproduces both known IPv6 packets byte for byte.
        """
        self.assertEqual(
            build_packet(
                SRC6,
                DST6,
                40000,
                443,
                0xFFFFFFF0,
                0x10,
                PSH | ACK,
                0xFFFF,
                b"datagram over ipv6",
            ),
            KNOWN_IPV6_DATA,
        )
        self.assertEqual(
            build_packet(SRC6, DST6, 40000, 443, 7, 8, FIN | PSH | ACK, 0xFFFF, b"odd"),
            KNOWN_IPV6_FIN,
        )

    def test_knownPacketsParseWithVerification(self) -> None:
        """
        C{parse_packet(verify_checksum=True)} accepts every known packet.
        """
        for packet in [KNOWN_IPV4_DATA, KNOWN_IPV4_SYN, KNOWN_IPV6_DATA, KNOWN_IPV6_FIN]:
            parse_packet(packet, verify_checksum=True)

    def test_knownIPv4Fields(self) -> None:
        """
        The fields of the known IPv4 data packet are read correctly.
        """
        self.assertEqual(
            parse_packet(KNOWN_IPV4_DATA),
            Segment(
                SRC4,
                DST4,
                40000,
                443,
                0x12345678,
                0x9ABCDEF0,
                PSH | ACK,
                0xFFFF,
                b"hello, fake tcp",
                b"",
                64,
            ),
        )

    def test_knownIPv6Fields(self) -> None:
        """
        The fields of the known IPv6 FIN packet are read correctly.
        """
        segment = parse_packet(KNOWN_IPV6_FIN)
        self.assertEqual(
            segment,
            Segment(SRC6, DST6, 40000, 443, 7, 8, FIN | PSH | ACK, 0xFFFF, b"odd", b"", 64),
        )
        self.assertEqual(segment.family, socket.AF_INET6)
        self.assertEqual(parse_packet(KNOWN_IPV4_DATA).family, socket.AF_INET)

    def test_zeroLengthPayload(self) -> None:
        """
        A segment with no payload (a bare ACK) has the reference checksum,
        for both families.
        """
        for src, dst in [(SRC4, DST4), (SRC6, DST6)]:
            tcp = build_tcp(src, dst, 1, 2, 3, 4, ACK, 0xFFFF)
            self.assertEqual(len(tcp), 20)
            self.assertEqual(
                int.from_bytes(tcp[16:18], "big"),
                reference_tcp_checksum(src, dst, zero_checksum_field(tcp)),
            )
            packet = build_packet(src, dst, 1, 2, 3, 4, ACK, 0xFFFF)
            self.assertEqual(parse_packet(packet).payload, b"")

    def test_oddLengthPayloads(self) -> None:
        """
        Payloads of every length from 1 to 9 bytes (odd and even) get the
        reference checksum and verify.
        """
        for src, dst in [(SRC4, DST4), (SRC6, DST6)]:
            for length in range(1, 10):
                payload = bytes(range(0xF0, 0xF0 + length))
                tcp = build_tcp(src, dst, 40000, 443, 5, 6, PSH | ACK, 0xFFFF, payload)
                self.assertEqual(
                    int.from_bytes(tcp[16:18], "big"),
                    reference_tcp_checksum(src, dst, zero_checksum_field(tcp)),
                )
                packet = build_packet(src, dst, 40000, 443, 5, 6, PSH | ACK, 0xFFFF, payload)
                self.assertEqual(parse_packet(packet).payload, payload)

    def test_payloadMakingTheSumWrap(self) -> None:
        """
        A payload of 0xff bytes, whose sum carries out of 16 bits many times,
        gets the reference checksum and verifies.
        """
        for src, dst in [(SRC4, DST4), (SRC6, DST6)]:
            for payload in [b"\xff" * 1400, b"\xff" * 1401, b"\xff\xff"]:
                tcp = build_tcp(
                    src, dst, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFF, 0xFFFF, payload
                )
                self.assertEqual(
                    int.from_bytes(tcp[16:18], "big"),
                    reference_tcp_checksum(src, dst, zero_checksum_field(tcp)),
                )
                packet = build_packet(
                    src, dst, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFF, 0xFFFF, payload
                )
                self.assertEqual(parse_packet(packet, verify_checksum=True).payload, payload)

    def test_sumOfExactlyNegativeZero(self) -> None:
        """
        When the one's complement sum of the pseudo-header and segment is
        0xffff, the checksum is its complement, 0x0000 (RFC 1071, and what
        the kernel and gopacket, hence tcpraw, put on the wire), and the
        packet still verifies.
        """
        for src, dst in [(SRC4, DST4), (SRC6, DST6)]:
            header = struct.pack("!HHIIBBHHH", 40000, 443, 1, 2, 5 << 4, PSH | ACK, 0xFFFF, 0, 0)
            # Choose the two payload bytes that bring the sum to exactly 0xffff.
            partial = reference_sum(reference_pseudo_header(src, dst, 22) + header + b"\x00\x00")
            payload = (0xFFFF - partial).to_bytes(2, "big")
            self.assertEqual(
                reference_sum(reference_pseudo_header(src, dst, 22) + header + payload), 0xFFFF
            )
            self.assertEqual(reference_tcp_checksum(src, dst, header + payload), 0x0000)
            self.assertEqual(tcp_checksum(src, dst, header, payload), 0x0000)
            packet = build_packet(src, dst, 40000, 443, 1, 2, PSH | ACK, 0xFFFF, payload)
            self.assertEqual(parse_packet(packet, verify_checksum=True).payload, payload)

    def test_checksumFieldOfAllOnesAlsoVerifies(self) -> None:
        """
        A packet carrying 0xffff where 0x0000 is computed (the two zeros of
        one's complement) is accepted: verification is a sum to -0.
        """
        header = struct.pack("!HHIIBBHHH", 40000, 443, 1, 2, 5 << 4, PSH | ACK, 0xFFFF, 0, 0)
        partial = reference_sum(reference_pseudo_header(SRC4, DST4, 22) + header + b"\x00\x00")
        payload = (0xFFFF - partial).to_bytes(2, "big")
        for field in [b"\x00\x00", b"\xff\xff"]:
            tcp = header[:16] + field + header[18:] + payload
            parse_packet(raw_ipv4(tcp), verify_checksum=True)


# -- round trips and options -------------------------------------------------

OPTIONS_SYN = (
    b"\x02\x04\x05\xb4"  # MSS 1460
    b"\x04\x02"  # SACK permitted
    b"\x08\x0a\x00\x01\xe2\x40\x00\x00\x00\x00"  # timestamps 123456, 0
    b"\x01"  # NOP
    b"\x03\x03\x07"  # window scale 7
)


class RoundTripTests(SynchronousTestCase):
    """
    What L{build_packet} builds, L{parse_packet} reads back unchanged.
    """

    def assertRoundTrip(self, src: bytes, dst: bytes, options: bytes) -> None:
        packet = build_packet(
            src,
            dst,
            12345,
            54321,
            0xDEADBEEF,
            0x0BADF00D,
            PSH | ACK,
            0x1234,
            b"payload bytes",
            ttl=17,
            options=options,
        )
        self.assertEqual(
            parse_packet(packet, verify_checksum=True),
            Segment(
                src,
                dst,
                12345,
                54321,
                0xDEADBEEF,
                0x0BADF00D,
                PSH | ACK,
                0x1234,
                b"payload bytes",
                options,
                17,
            ),
        )

    def test_ipv4WithoutOptions(self) -> None:
        """
        An IPv4 segment without options round-trips.
        """
        self.assertRoundTrip(SRC4, DST4, b"")

    def test_ipv4WithOptions(self) -> None:
        """
        An IPv4 segment with options round-trips; the options come back raw.
        """
        self.assertRoundTrip(SRC4, DST4, OPTIONS_SYN)

    def test_ipv6WithoutOptions(self) -> None:
        """
        An IPv6 segment without options round-trips.
        """
        self.assertRoundTrip(SRC6, DST6, b"")

    def test_ipv6WithOptions(self) -> None:
        """
        An IPv6 segment with 40 bytes of options (the most there can be)
        round-trips.
        """
        self.assertRoundTrip(SRC6, DST6, OPTIONS_SYN + b"\x01" * 20)

    def test_unpaddedOptionsRejected(self) -> None:
        """
        Options that are not a multiple of 4 bytes are refused by the builder.
        """
        self.assertRaises(ValueError, build_tcp, SRC4, DST4, 1, 2, 3, 4, SYN, 0, b"", b"\x01")

    def test_ipHeaders(self) -> None:
        """
        L{ip_header} sets DF, TCP and the total length for IPv4, and the
        payload length for IPv6.
        """
        v4 = ip_header(SRC4, DST4, 100, ttl=5)
        self.assertEqual(len(v4), 20)
        self.assertEqual(v4[0], 0x45)
        self.assertEqual(int.from_bytes(v4[2:4], "big"), 120)
        self.assertEqual(int.from_bytes(v4[6:8], "big"), 0x4000)
        self.assertEqual((v4[8], v4[9]), (5, 6))
        self.assertEqual((v4[12:16], v4[16:20]), (SRC4, DST4))
        v6 = ip_header(SRC6, DST6, 100, ttl=5)
        self.assertEqual(len(v6), 40)
        self.assertEqual(v6[0] >> 4, 6)
        self.assertEqual(int.from_bytes(v6[4:6], "big"), 100)
        self.assertEqual((v6[6], v6[7]), (6, 5))
        self.assertEqual((v6[8:24], v6[24:40]), (SRC6, DST6))


    def test_ethernetPaddingIgnoredIPv4(self) -> None:
        """
        Bytes after the IPv4 total length (Ethernet padding of a short frame)
        are not part of the payload and do not break the checksum.
        """
        packet = build_packet(SRC4, DST4, 1, 2, 3, 4, ACK, 0xFFFF)
        segment = parse_packet(packet + b"\x00" * 6, verify_checksum=True)
        self.assertEqual(segment.payload, b"")
        packet = build_packet(SRC4, DST4, 1, 2, 3, 4, PSH | ACK, 0xFFFF, b"abc")
        segment = parse_packet(packet + b"\xaa\xbb\xcc", verify_checksum=True)
        self.assertEqual(segment.payload, b"abc")

    def test_ethernetPaddingIgnoredIPv6(self) -> None:
        """
        Bytes after the IPv6 payload length are not part of the payload.
        """
        packet = build_packet(SRC6, DST6, 1, 2, 3, 4, PSH | ACK, 0xFFFF, b"abc")
        segment = parse_packet(packet + b"\x01\x02\x03\x04", verify_checksum=True)
        self.assertEqual(segment.payload, b"abc")

    def test_checksumNotVerifiedWhenAsked(self) -> None:
        """
        With C{verify_checksum=False} a corrupted packet still parses.
        """
        packet = bytearray(build_packet(SRC4, DST4, 1, 2, 3, 4, PSH | ACK, 0xFFFF, b"abc"))
        packet[-1] ^= 1
        self.assertEqual(parse_packet(bytes(packet), verify_checksum=False).payload, b"abb")


class ParseOptionsTests(SynchronousTestCase):
    """
    L{parse_options} reads the handshake options and stops safely at
    anything malformed.
    """

    def test_empty(self) -> None:
        """
        No options: nothing offered.
        """
        self.assertEqual(parse_options(b""), TCPOptions(None, None, False, None))

    def test_linuxSyn(self) -> None:
        """
        The options of a Linux SYN are all read.
        """
        self.assertEqual(
            parse_options(OPTIONS_SYN), TCPOptions(1460, 7, True, (123456, 0))
        )

    def test_knownPacketOptions(self) -> None:
        """
        The options of the known SYN, as parsed, read as tcpdump read them.
        """
        self.assertEqual(
            parse_options(parse_packet(KNOWN_IPV4_SYN).options),
            TCPOptions(1460, 7, True, (123456, 0)),
        )

    def test_timestampsFullRange(self) -> None:
        """
        Both timestamp values are read as unsigned 32-bit numbers.
        """
        options = b"\x01\x01\x08\x0a\xff\xff\xff\xff\x80\x00\x00\x01"
        self.assertEqual(parse_options(options).timestamp, (0xFFFFFFFF, 0x80000001))

    def test_wscaleClamped(self) -> None:
        """
        A window scale above 14 is read as 14 (RFC 7323).
        """
        self.assertEqual(parse_options(b"\x03\x03\x0e").wscale, 14)
        self.assertEqual(parse_options(b"\x03\x03\x0f").wscale, 14)
        self.assertEqual(parse_options(b"\x03\x03\xff").wscale, 14)
        self.assertEqual(parse_options(b"\x03\x03\x00").wscale, 0)

    def test_nopsSkipped(self) -> None:
        """
        NOPs before, between and after options are skipped.
        """
        self.assertEqual(
            parse_options(b"\x01\x01\x02\x04\x00\x10\x01\x04\x02\x01"),
            TCPOptions(16, None, True, None),
        )

    def test_eolEndsList(self) -> None:
        """
        Nothing after End of Option List is read.
        """
        self.assertEqual(
            parse_options(b"\x02\x04\x05\xb4\x00\x04\x02\x03\x03\x07"),
            TCPOptions(1460, None, False, None),
        )

    def test_unknownOptionSkippedByLength(self) -> None:
        """
        An unknown option is skipped by its length byte.
        """
        self.assertEqual(
            parse_options(b"\x1e\x06\x02\x04\x05\xb4\x04\x02"),
            TCPOptions(None, None, True, None),
        )

    def test_knownKindWithWrongLengthIgnored(self) -> None:
        """
        A known kind with the wrong length is skipped, not misread.
        """
        self.assertEqual(
            parse_options(b"\x02\x05\x05\xb4\x00\x03\x02\x04\x03"),
            TCPOptions(None, None, False, None),
        )

    def test_lengthBelowTwoStops(self) -> None:
        """
        A length byte of 0 or 1 (which would loop forever) ends the scan.
        """
        for size in (0, 1):
            self.assertEqual(
                parse_options(b"\x04\x02" + bytes([30, size]) + b"\x02\x04\x05\xb4"),
                TCPOptions(None, None, True, None),
            )

    def test_lengthBeyondEndStops(self) -> None:
        """
        An option whose length runs past the end is not read.
        """
        self.assertEqual(
            parse_options(b"\x04\x02\x08\x0a\x00\x00"), TCPOptions(None, None, True, None)
        )
        self.assertEqual(parse_options(b"\x02\x04\x05"), TCPOptions())

    def test_kindWithoutLengthStops(self) -> None:
        """
        A kind byte at the very end, with no length byte, ends the scan.
        """
        self.assertEqual(parse_options(b"\x04\x02\x02"), TCPOptions(None, None, True, None))

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=60))
    def test_arbitraryBytesNeverRaise(self, options: bytes) -> None:
        """
        Any option bytes give a L{TCPOptions} with a wscale of at most 14.
        """
        result = parse_options(options)
        self.assertIsInstance(result, TCPOptions)
        if result.wscale is not None:
            self.assertLessEqual(result.wscale, 14)


# -- rejections --------------------------------------------------------------


class RejectionTests(SynchronousTestCase):
    """
    L{parse_packet} refuses anything that is not one whole, valid,
    unfragmented TCP segment, naming why in C{reason}.
    """

    def assertReason(self, packet: bytes, reason: str, verify: bool = True) -> None:
        error = self.assertRaises(MalformedSegment, parse_packet, packet, verify)
        self.assertEqual(error.reason, reason)
        self.assertEqual(str(error), reason)
        self.assertIsInstance(error, ValueError)

    def test_sanity(self) -> None:
        """
        The helpers build packets that parse, so each rejection below is due
        to the one field it changes.
        """
        parse_packet(raw_ipv4(raw_tcp(payload=b"x")))
        parse_packet(raw_ipv6(raw_tcp(SRC6, DST6, payload=b"x")))

    def test_truncatedBelowIPv4Header(self) -> None:
        """
        Fewer than 20 bytes is truncated, whatever the version nibble says.
        """
        self.assertReason(b"", "truncated")
        self.assertReason(KNOWN_IPV4_DATA[:19], "truncated")
        self.assertReason(b"\x60" + b"\x00" * 18, "truncated")

    def test_truncatedIPv6Header(self) -> None:
        """
        An IPv6 packet shorter than its 40-byte header is truncated.
        """
        self.assertReason(KNOWN_IPV6_DATA[:39], "truncated")
        self.assertReason(KNOWN_IPV6_DATA[:20], "truncated")

    def test_truncatedTCPHeaderIPv4(self) -> None:
        """
        An IPv4 packet with room for less than a 20-byte TCP header is
        truncated.
        """
        self.assertReason(raw_ipv4(raw_tcp()[:19]), "truncated")
        self.assertReason(raw_ipv4(b""), "truncated")

    def test_truncatedTCPHeaderIPv6(self) -> None:
        """
        An IPv6 packet with room for less than a 20-byte TCP header is
        truncated.
        """
        self.assertReason(raw_ipv6(raw_tcp(SRC6, DST6)[:10]), "truncated")
        self.assertReason(raw_ipv6(b""), "truncated")

    def test_ipv4TotalLengthBeyondBuffer(self) -> None:
        """
        An IPv4 total length larger than the bytes captured is bad-length.
        """
        tcp = raw_tcp(payload=b"abcd")
        self.assertReason(raw_ipv4(tcp, total=20 + len(tcp) + 1), "bad-length")

    def test_ipv4TotalLengthBelowHeader(self) -> None:
        """
        An IPv4 total length smaller than the IP header is bad-length.
        """
        self.assertReason(raw_ipv4(raw_tcp(), total=19), "bad-length")

    def test_ihlBelowFive(self) -> None:
        """
        An IHL below 5 words is bad-length.
        """
        for ihl in range(5):
            self.assertReason(raw_ipv4(raw_tcp(), ihl=ihl), "bad-length")

    def test_ihlBeyondPacket(self) -> None:
        """
        An IHL larger than the packet is bad-length.
        """
        self.assertReason(raw_ipv4(raw_tcp(), ihl=15, total=40), "bad-length")

    def test_dataOffsetBelowFive(self) -> None:
        """
        A TCP data offset below 5 words is bad-length.
        """
        for offset in range(5):
            self.assertReason(raw_ipv4(raw_tcp(data_offset=offset)), "bad-length")
            self.assertReason(
                raw_ipv6(raw_tcp(SRC6, DST6, data_offset=offset)), "bad-length"
            )

    def test_dataOffsetBeyondPacket(self) -> None:
        """
        A TCP data offset running past the end of the packet is bad-length.
        """
        self.assertReason(raw_ipv4(raw_tcp(data_offset=6)), "bad-length")
        self.assertReason(raw_ipv4(raw_tcp(data_offset=15, payload=b"x" * 39)), "bad-length")
        self.assertReason(raw_ipv6(raw_tcp(SRC6, DST6, data_offset=6)), "bad-length")

    def test_dataOffsetCoveringWholePacket(self) -> None:
        """
        A data offset that ends exactly at the end of the packet is fine:
        the segment simply carries options and no payload.
        """
        segment = parse_packet(raw_ipv4(raw_tcp(data_offset=6, options=b"\x01\x01\x01\x00")))
        self.assertEqual(segment.payload, b"")
        self.assertEqual(segment.options, b"\x01\x01\x01\x00")

    def test_dataOffsetBeyondIPv4TotalLength(self) -> None:
        """
        The data offset is checked against the IP total length, not the
        buffer: trailing padding cannot make a header fit.
        """
        tcp = raw_tcp(data_offset=6)
        self.assertReason(raw_ipv4(tcp) + b"\x00" * 4, "bad-length")

    def test_ipv6PayloadLengthBeyondBuffer(self) -> None:
        """
        An IPv6 payload length larger than the bytes captured is bad-length.
        """
        tcp = raw_tcp(SRC6, DST6, payload=b"abcd")
        self.assertReason(raw_ipv6(tcp, payload_length=len(tcp) + 1), "bad-length")
        self.assertReason(raw_ipv6(tcp, payload_length=0xFFFF), "bad-length")

    def test_moreFragments(self) -> None:
        """
        A first fragment (MF set, offset zero) is refused as a fragment.
        """
        self.assertReason(raw_ipv4(raw_tcp(), fragment=0x2000), "fragment")
        self.assertReason(raw_ipv4(raw_tcp(), fragment=0x6000), "fragment")

    def test_fragmentOffset(self) -> None:
        """
        A later fragment (offset non-zero, with or without MF) is refused.
        """
        for fragment in (0x0001, 0x1FFF, 0x2001, 0x4001):
            self.assertReason(raw_ipv4(raw_tcp(), fragment=fragment), "fragment")

    def test_dontFragmentAndReservedBitAccepted(self) -> None:
        """
        DF alone, or no flags at all, is not a fragment.
        """
        parse_packet(raw_ipv4(raw_tcp(), fragment=0x4000))
        parse_packet(raw_ipv4(raw_tcp(), fragment=0x0000))

    def test_ipv4Options(self) -> None:
        """
        An IPv4 header with options (IHL > 5), well-formed or not, is
        refused as ip-options: no fake-TCP peer (nor the kernel's TCP)
        sends them.
        """
        tcp = raw_tcp(payload=b"after ip options")
        for options in (b"\x01\x01\x01\x00", b"\x94\x04\x00\x00", b"\xff" * 4):
            self.assertReason(raw_ipv4(tcp, ihl=6, options=options), "ip-options")
        self.assertReason(raw_ipv4(tcp, ihl=15, options=b"\x01" * 40), "ip-options")

    def test_ipv4OptionsLongerThanPacket(self) -> None:
        """
        IP options that would run past the total length are bad-length, not
        ip-options: the lengths are checked first.
        """
        self.assertReason(raw_ipv4(b"", ihl=6, options=b"\x01\x01", total=22), "bad-length")

    def test_udpIPv4(self) -> None:
        """
        An IPv4 UDP packet is not-tcp.
        """
        self.assertReason(raw_ipv4(raw_tcp(), protocol=IPPROTO_UDP), "not-tcp")

    def test_hopByHopIPv6(self) -> None:
        """
        An IPv6 packet whose next header is not TCP (hop-by-hop options, UDP)
        is not-tcp.
        """
        tcp = raw_tcp(SRC6, DST6)
        self.assertReason(raw_ipv6(tcp, next_header=IPPROTO_HOPOPTS), "not-tcp")
        self.assertReason(raw_ipv6(tcp, next_header=IPPROTO_UDP), "not-tcp")

    def test_badVersion(self) -> None:
        """
        A version other than 4 or 6 is bad-version.
        """
        for version in (0, 5, 7, 15):
            self.assertReason(raw_ipv4(raw_tcp(), version=version), "bad-version")

    def test_badChecksumPayloadBit(self) -> None:
        """
        Flipping any single payload bit is caught as bad-checksum.
        """
        for good in (KNOWN_IPV4_DATA, KNOWN_IPV6_DATA, KNOWN_IPV6_FIN):
            for bit in range(8):
                packet = bytearray(good)
                packet[-1] ^= 1 << bit
                self.assertReason(bytes(packet), "bad-checksum")

    def test_badChecksumHeaderAndAddress(self) -> None:
        """
        A changed port or source address (covered by the pseudo-header) is
        caught as bad-checksum.
        """
        packet = bytearray(KNOWN_IPV4_DATA)
        packet[21] ^= 1  # source port
        self.assertReason(bytes(packet), "bad-checksum")
        packet = bytearray(KNOWN_IPV4_DATA)
        packet[15] ^= 1  # source address
        self.assertReason(bytes(packet), "bad-checksum")
        packet = bytearray(KNOWN_IPV6_DATA)
        packet[39] ^= 0x80  # destination address
        self.assertReason(bytes(packet), "bad-checksum")


# -- properties --------------------------------------------------------------

addresses4 = st.tuples(st.binary(min_size=4, max_size=4), st.binary(min_size=4, max_size=4))
addresses6 = st.tuples(st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16))
u16 = st.integers(min_value=0, max_value=0xFFFF)
u32 = st.integers(min_value=0, max_value=0xFFFFFFFF)
options_strategy = st.integers(min_value=0, max_value=10).flatmap(
    lambda words: st.binary(min_size=4 * words, max_size=4 * words)
)


@st.composite
def mangled_packets(draw: st.DrawFn) -> bytes:
    """
    A valid packet of either family with a few bytes overwritten and maybe
    cut short or extended: closer to the edge cases than random bytes.
    """
    src, dst = draw(st.one_of(addresses4, addresses6))
    packet = bytearray(
        build_packet(
            src,
            dst,
            draw(u16),
            draw(u16),
            draw(u32),
            draw(u32),
            draw(st.integers(0, 255)),
            draw(u16),
            draw(st.binary(max_size=64)),
            options=draw(options_strategy),
        )
    )
    for _ in range(draw(st.integers(0, 4))):
        index = draw(st.integers(0, len(packet) - 1))
        packet[index] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(packet)))
    return bytes(packet[:cut]) + draw(st.binary(max_size=8))


class PropertyTests(SynchronousTestCase):
    """
    Properties over arbitrary input.
    """

    @settings(max_examples=500, deadline=None)
    @given(
        packet=st.one_of(st.binary(max_size=120), mangled_packets()),
        verify=st.booleans(),
    )
    def test_parseNeverRaisesAnythingElse(self, packet: bytes, verify: bool) -> None:
        """
        For any bytes, L{parse_packet} returns a L{Segment} or raises
        L{MalformedSegment}, never another exception.
        """
        try:
            segment = parse_packet(packet, verify_checksum=verify)
        except MalformedSegment as error:
            self.assertIn(error.reason, MALFORMED_REASONS)
        else:
            self.assertIsInstance(segment, Segment)
            self.assertLessEqual(len(segment.payload) + len(segment.options) + 20, len(packet))

    @settings(max_examples=300, deadline=None)
    @given(
        addrs=st.one_of(addresses4, addresses6),
        sport=u16,
        dport=u16,
        seq=u32,
        ack=u32,
        flags=st.integers(0, 255),
        window=u16,
        payload=st.binary(max_size=1500),
        ttl=st.integers(0, 255),
        options=options_strategy,
    )
    def test_buildParseRoundTrip(
        self,
        addrs: tuple[bytes, bytes],
        sport: int,
        dport: int,
        seq: int,
        ack: int,
        flags: int,
        window: int,
        payload: bytes,
        ttl: int,
        options: bytes,
    ) -> None:
        """
        Any fields of either family survive build then parse, with a
        checksum that verifies and equals the reference.
        """
        src, dst = addrs
        packet = build_packet(
            src, dst, sport, dport, seq, ack, flags, window, payload, ttl, options
        )
        segment = parse_packet(packet, verify_checksum=True)
        self.assertEqual(
            segment, Segment(src, dst, sport, dport, seq, ack, flags, window, payload, options, ttl)
        )
        tcp = packet[20 if len(src) == 4 else 40 :]
        self.assertEqual(reference_sum(reference_pseudo_header(src, dst, len(tcp)) + tcp), 0xFFFF)


class SeqAfterTests(SynchronousTestCase):
    """
    L{seq_after} compares sequence numbers in 32-bit serial arithmetic.
    """

    def test_plain(self) -> None:
        """
        Larger numbers are after smaller ones; nothing is after itself.
        """
        self.assertTrue(seq_after(2, 1))
        self.assertFalse(seq_after(1, 2))
        self.assertFalse(seq_after(5, 5))
        self.assertFalse(seq_after(0, 0))

    def test_wrapAround(self) -> None:
        """
        Just past zero is after just below 2**32.
        """
        self.assertTrue(seq_after(0, 0xFFFFFFFF))
        self.assertTrue(seq_after(0x10, 0xFFFFFFF0))
        self.assertFalse(seq_after(0xFFFFFFFF, 0))
        self.assertFalse(seq_after(0xFFFFFFF0, 0x10))

    def test_halfSpace(self) -> None:
        """
        Up to 2**31 - 1 ahead is after; exactly 2**31 ahead is not.
        """
        self.assertTrue(seq_after(0x7FFFFFFF, 0))
        self.assertFalse(seq_after(0x80000000, 0))
        self.assertTrue(seq_after(0x7FFFFFFE, 0xFFFFFFFF))
        self.assertFalse(seq_after(0x7FFFFFFF, 0xFFFFFFFF))

    @settings(max_examples=200, deadline=None)
    @given(a=u32, delta=st.integers(min_value=1, max_value=0x7FFFFFFF))
    def test_antisymmetric(self, a: int, delta: int) -> None:
        """
        If C{b} is C{a} plus less than 2**31, C{b} is after C{a} and not the
        reverse.
        """
        b = (a + delta) & 0xFFFFFFFF
        self.assertTrue(seq_after(b, a))
        self.assertFalse(seq_after(a, b))
