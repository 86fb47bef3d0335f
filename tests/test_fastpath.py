"""
Tests for L{faketcp_twisted.io.fastpath}: the C hot path and its pure-Python
twin give the same results and the same errors, and the demultiplexer built
on them batches its syscalls and mutes the kernel's sockets.

Every codec and socket test runs once per implementation available (the
pure-Python one always, the C one when the extension is built), so the
fallback is exercised wherever the C path is; the cross-checks compare the
two on many random (and randomly broken) packets.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import socket
import subprocess
import sys
import time
from typing import Any

from hypothesis import given, settings, strategies as st
from twisted.protocols.wire import Echo
from twisted.trial.unittest import SynchronousTestCase

from faketcp_twisted.core import segment
from faketcp_twisted.core.segment import ACK, FIN, PSH, RST, SYN, FlowKey, MalformedSegment
from faketcp_twisted.io import fastpath
from lab import netlab
from tests import test_integration
from tests.support import LabTestCase, RecordingFactory, require_root, wait_until
from tests.test_segment import KNOWN_IPV4_DATA, KNOWN_IPV4_SYN, KNOWN_IPV6_DATA, KNOWN_IPV6_FIN, reference_sum

SRC4 = socket.inet_pton(socket.AF_INET, "192.0.2.1")
DST4 = socket.inet_pton(socket.AF_INET, "198.51.100.7")
SRC6 = socket.inet_pton(socket.AF_INET6, "2001:db8::1")
DST6 = socket.inet_pton(socket.AF_INET6, "2001:db8::2")

addresses4 = st.tuples(st.binary(min_size=4, max_size=4), st.binary(min_size=4, max_size=4))
addresses6 = st.tuples(st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16))
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)

#: The TCP timestamps option as Linux lays it out on established segments:
#: NOP, NOP, kind 8, length 10, then TSval and TSecr.
TS_HEAD = b"\x01\x01\x08\x0a"


def timestamps_option(tsval: int, tsecr: int) -> bytes:
    """
    The 12 option bytes of a segment carrying C{tsval} and C{tsecr}.
    """
    return TS_HEAD + tsval.to_bytes(4, "big") + tsecr.to_bytes(4, "big")


def golden_inputs() -> list[tuple[tuple[bytes, bytes, int, int, int, int], tuple[int, int, int], bytes]]:
    """
    300 deterministic (template arguments, (seq, ack, flags), payload)
    triples, both families, payloads of 0 to 1500 bytes, derived from
    SHA-512 so that they are the same on every Python version.
    """
    inputs = []
    for i in range(300):
        d = hashlib.sha512(b"golden %d" % i).digest()
        size = 4 if d[0] & 1 else 16
        template = (
            d[1 : 1 + size],
            d[17 : 17 + size],
            int.from_bytes(d[33:35], "big"),
            int.from_bytes(d[35:37], "big"),
            int.from_bytes(d[37:39], "big"),
            d[39],
        )
        fields = (int.from_bytes(d[40:44], "big"), int.from_bytes(d[44:48], "big"), d[48])
        length = d[51] % 4 if d[50] < 64 else int.from_bytes(d[52:54], "big") % 1501
        inputs.append((template, fields, (d * (length // 64 + 1))[:length]))
    return inputs


#: SHA-256 of the packets the implementations built from L{golden_inputs}
#: (each prefixed with its length as 4 bytes) before templates could carry
#: timestamps: the option-less form must keep giving exactly these bytes.
GOLDEN_PLAIN_DIGEST = "c8dc6d248fdf258af8d9608ee8febbe53b3720c8fcfe949ca7ccb16c1c25ca1f"
#: Two of those packets written out.
GOLDEN_PLAIN_IPV4 = bytes.fromhex(
    "4500002b0000400040060000c6120001c61200029c4001bb010203040a0b0c0d5018ffffe21e0000686921"
)
GOLDEN_PLAIN_IPV6 = bytes.fromhex(
    "600000000014060120010002000000000000000000000001200100020000000000000000000000029c4001bbffffffff000000005011ffffd1cf0000"
)


def outcome(parse: Any, packet: bytes, verify: bool) -> Any:
    """
    What parsing C{packet} gives: the segment, or the reason it was refused.
    """
    try:
        return parse(packet, verify)
    except MalformedSegment as refused:
        return ("malformed", refused.reason)


def _implementation_tests(implementation: fastpath.Implementation | None, name: str) -> type[SynchronousTestCase]:
    """
    The contract every implementation keeps, as a test case for one of
    them.  Made by a function, so that each case has its own test methods
    (hypothesis refuses one decorated test shared by two classes).
    """

    impl = implementation or fastpath.PYTHON

    class ImplementationTests(SynchronousTestCase):
        if implementation is None:
            skip = "the C fast path is not built (python setup.py build_ext --inplace)"

        @given(
            st.one_of(addresses4, addresses6),
            u16,
            u16,
            u32,
            u32,
            st.integers(0, 0xFF),
            u16,
            st.integers(0, 0xFF),
            st.binary(max_size=1500),
        )
        @settings(max_examples=300, deadline=None)
        def test_buildMatchesCodec(
            self,
            addresses: tuple[bytes, bytes],
            sport: int,
            dport: int,
            seq: int,
            ack: int,
            flags: int,
            window: int,
            ttl: int,
            payload: bytes,
        ) -> None:
            """
            A segment built from a flow's template is, byte for byte, the one
            the codec builds field by field.
            """
            src, dst = addresses
            template = fastpath.segment_template(src, dst, sport, dport, window, ttl)
            built = impl.build_segment(template, seq, ack, flags, payload)
            self.assertEqual(built, segment.build_packet(src, dst, sport, dport, seq, ack, flags, window, payload, ttl))

        @given(st.one_of(addresses4, addresses6), st.binary(max_size=1500))
        @settings(max_examples=200, deadline=None)
        def test_builtSegmentsVerify(self, addresses: tuple[bytes, bytes], payload: bytes) -> None:
            """
            A built segment's checksum verifies, against the codec's parser and
            the RFC 1071 reference loop.
            """
            src, dst = addresses
            template = fastpath.segment_template(src, dst, 40000, 443, 0xFFFF)
            built = impl.build_segment(template, 7, 9, PSH | ACK, payload)
            parsed = segment.parse_packet(built, True)
            self.assertEqual((parsed.payload, parsed.seq, parsed.ack), (payload, 7, 9))
            header = 20 if len(src) == 4 else 40
            pseudo = (
                src
                + dst
                + (
                    bytes([0, 6]) + (len(built) - header).to_bytes(2, "big")
                    if len(src) == 4
                    else (len(built) - header).to_bytes(4, "big") + bytes([0, 0, 0, 6])
                )
            )
            self.assertEqual(reference_sum(pseudo + built[header:]), 0xFFFF)

        def test_buildAcceptsAnyBuffer(self) -> None:
            """
            The payload may be a memoryview or bytearray (a slice of a larger
            write, say), and gives the same packet.
            """
            template = fastpath.segment_template(SRC4, DST4, 1, 2, 3)
            build = impl.build_segment
            expected = build(template, 1, 2, ACK, b"abcdef")
            self.assertEqual(build(template, 1, 2, ACK, memoryview(b"xabcdefx")[1:7]), expected)
            self.assertEqual(build(template, 1, 2, ACK, bytearray(b"abcdef")), expected)

        def test_buildRefusesBadTemplates(self) -> None:
            """
            Anything but a 40-byte IPv4 or 60-byte IPv6 template is refused.
            """
            build = impl.build_segment
            template = fastpath.segment_template(SRC4, DST4, 1, 2, 3)
            for bad in (template[:39], template + b"\0", b"\x60" + template[1:], b"\x45" + bytes(59)):
                self.assertRaises(ValueError, build, bad, 0, 0, ACK, b"")

        def test_buildRefusesOutOfRange(self) -> None:
            """
            Sequence and ack numbers beyond 32 bits, negative ones, and flags
            beyond 8 bits raise OverflowError; a payload that cannot fit one IP
            packet raises ValueError.
            """
            build = impl.build_segment
            template4 = fastpath.segment_template(SRC4, DST4, 1, 2, 3)
            template6 = fastpath.segment_template(SRC6, DST6, 1, 2, 3)
            for seq, ack, flags in ((1 << 32, 0, 0), (0, 1 << 32, 0), (-1, 0, 0), (0, -1, 0), (0, 0, 256), (0, 0, -1)):
                self.assertRaises(OverflowError, build, template4, seq, ack, flags, b"")
            self.assertRaises(ValueError, build, template4, 0, 0, ACK, bytes(65535 - 40 + 1))
            self.assertEqual(len(build(template4, 0, 0, ACK, bytes(65535 - 40))), 65535)
            self.assertRaises(ValueError, build, template6, 0, 0, ACK, bytes(65535 - 20 + 1))
            self.assertEqual(len(build(template6, 0, 0, ACK, bytes(65535 - 20))), 65535 + 40)

        @given(
            st.one_of(addresses4, addresses6),
            u16,
            u16,
            u32,
            u32,
            st.integers(0, 0xFF),
            u16,
            st.integers(0, 0xFF),
            u32,
            u32,
            st.binary(max_size=1500),
        )
        @settings(max_examples=300, deadline=None)
        def test_timestampedBuildMatchesCodec(
            self,
            addresses: tuple[bytes, bytes],
            sport: int,
            dport: int,
            seq: int,
            ack: int,
            flags: int,
            window: int,
            ttl: int,
            tsval: int,
            tsecr: int,
            payload: bytes,
        ) -> None:
            """
            A segment built from a timestamped template is, byte for byte, the
            one the codec builds with the NOP,NOP,TS option; it parses, its
            checksum verified, with data offset 8 and the timestamps given.
            """
            src, dst = addresses
            template = fastpath.segment_template(src, dst, sport, dport, window, ttl, timestamps=True)
            built = impl.build_segment(template, seq, ack, flags, payload, tsval, tsecr)
            option = timestamps_option(tsval, tsecr)
            self.assertEqual(
                built, segment.build_packet(src, dst, sport, dport, seq, ack, flags, window, payload, ttl, option)
            )
            parsed = segment.parse_packet(built, True)
            self.assertEqual(
                (
                    parsed.src,
                    parsed.dst,
                    parsed.sport,
                    parsed.dport,
                    parsed.seq,
                    parsed.ack,
                    parsed.flags,
                    parsed.window,
                    parsed.ttl,
                ),
                (src, dst, sport, dport, seq, ack, flags, window, ttl),
            )
            self.assertEqual((parsed.payload, parsed.options), (payload, option))
            self.assertEqual(segment.parse_options(parsed.options).timestamp, (tsval, tsecr))
            header = 20 if len(src) == 4 else 40
            self.assertEqual(built[header + 12] >> 4, 8)
            self.assertEqual(len(built), header + 32 + len(payload))

        @given(st.one_of(addresses4, addresses6), u32, u32, st.binary(max_size=1500))
        @settings(max_examples=200, deadline=None)
        def test_timestampedSegmentsVerify(
            self, addresses: tuple[bytes, bytes], tsval: int, tsecr: int, payload: bytes
        ) -> None:
            """
            A timestamped segment's checksum covers the option: it verifies
            against the RFC 1071 reference loop with the option's 12 bytes in
            the pseudo header's length, and changing a timestamp breaks it.
            """
            src, dst = addresses
            template = fastpath.segment_template(src, dst, 40000, 443, 0xFFFF, timestamps=True)
            built = impl.build_segment(template, 7, 9, PSH | ACK, payload, tsval, tsecr)
            header = 20 if len(src) == 4 else 40
            tcp_length = 32 + len(payload)
            ip_length = int.from_bytes(built[2:4] if header == 20 else built[4:6], "big")
            self.assertEqual(ip_length, header + tcp_length if header == 20 else tcp_length)
            pseudo = (
                src
                + dst
                + (
                    bytes([0, 6]) + tcp_length.to_bytes(2, "big")
                    if header == 20
                    else tcp_length.to_bytes(4, "big") + bytes([0, 0, 0, 6])
                )
            )
            self.assertEqual(reference_sum(pseudo + built[header:]), 0xFFFF)
            broken = bytearray(built)
            broken[header + 24] ^= 0x01  # the low bit of TSval's first byte
            self.assertRaises(MalformedSegment, segment.parse_packet, bytes(broken), True)

        def test_timestampsIgnoredWithoutOption(self) -> None:
            """
            With an option-less template, the 5-argument form gives the bytes
            it always gave, and timestamps passed (6 or 7 arguments) change
            nothing.
            """
            build = impl.build_segment
            plain4 = fastpath.segment_template(bytes([198, 18, 0, 1]), bytes([198, 18, 0, 2]), 40000, 443, 0xFFFF)
            self.assertEqual(build(plain4, 0x01020304, 0x0A0B0C0D, PSH | ACK, b"hi!"), GOLDEN_PLAIN_IPV4)
            self.assertEqual(build(plain4, 0x01020304, 0x0A0B0C0D, PSH | ACK, b"hi!", 5), GOLDEN_PLAIN_IPV4)
            self.assertEqual(build(plain4, 0x01020304, 0x0A0B0C0D, PSH | ACK, b"hi!", 5, 0xFFFFFFFF), GOLDEN_PLAIN_IPV4)
            plain6 = fastpath.segment_template(
                bytes.fromhex("20010002000000000000000000000001"),
                bytes.fromhex("20010002000000000000000000000002"),
                40000,
                443,
                0xFFFF,
                1,
            )
            self.assertEqual(build(plain6, 0xFFFFFFFF, 0, FIN | ACK, b""), GOLDEN_PLAIN_IPV6)
            self.assertEqual(build(plain6, 0xFFFFFFFF, 0, FIN | ACK, b"", 1, 2), GOLDEN_PLAIN_IPV6)

        def test_plainFormUnchanged(self) -> None:
            """
            The option-less form gives, for 300 varied segments, exactly the
            bytes it gave before templates could carry timestamps.
            """
            digest = hashlib.sha256()
            for arguments, fields, payload in golden_inputs():
                built = impl.build_segment(fastpath.segment_template(*arguments), *fields, payload)
                digest.update(len(built).to_bytes(4, "big") + built)
            self.assertEqual(digest.hexdigest(), GOLDEN_PLAIN_DIGEST)

        def test_timestampsDefaultToZero(self) -> None:
            """
            With a timestamped template, a missing TSecr (6 arguments) or both
            (5) are written as zero.
            """
            build = impl.build_segment
            template = fastpath.segment_template(SRC6, DST6, 1, 2, 3, timestamps=True)
            self.assertEqual(build(template, 1, 2, ACK, b"x"), build(template, 1, 2, ACK, b"x", 0, 0))
            self.assertEqual(build(template, 1, 2, ACK, b"x", 77), build(template, 1, 2, ACK, b"x", 77, 0))
            self.assertEqual(build(template, 1, 2, ACK, b"x", 77)[-13:-1], timestamps_option(77, 0))

        def test_buildArgumentsPositional(self) -> None:
            """
            The arguments are positional only: keywords, fewer than 5 or more
            than 7 raise TypeError.
            """
            build: Any = impl.build_segment
            template = fastpath.segment_template(SRC4, DST4, 1, 2, 3, timestamps=True)
            self.assertRaises(TypeError, build, template, 1, 2, ACK)
            self.assertRaises(TypeError, build, template, 1, 2, ACK, b"", 1, 2, 3)
            self.assertRaises(TypeError, build, template, 1, 2, ACK, b"", tsval=1)
            self.assertRaises(TypeError, build, template, 1, 2, ACK, b"", 1, tsecr=1)

        def test_buildRefusesBadTimestampTemplates(self) -> None:
            """
            A template whose size, IP version, data offset or option bytes
            are not exactly those of one of the four layouts is refused.
            """
            build = impl.build_segment
            for src, dst in ((SRC4, DST4), (SRC6, DST6)):
                template = fastpath.segment_template(src, dst, 1, 2, 3, timestamps=True)
                plain = fastpath.segment_template(src, dst, 1, 2, 3)
                tcp = len(template) - 32
                bad = [template[:-1], template + b"\0", template[:-4], template + bytes(4), plain + bytes(12)]
                # Each byte of the NOP,NOP,kind,length head changed.
                for index in range(4):
                    changed = bytearray(template)
                    changed[tcp + 20 + index] ^= 0x02
                    bad.append(bytes(changed))
                # Data offsets 5 and 9 on the timestamped size, 8 on the plain one.
                for base, offset in ((template, 5), (template, 9), (plain, 8)):
                    changed = bytearray(base)
                    changed[tcp + 12] = offset << 4
                    bad.append(bytes(changed))
                # The other family's version nibble.
                bad.append(bytes([template[0] ^ 0x20]) + template[1:])
                for each in bad:
                    self.assertRaises(ValueError, build, each, 0, 0, ACK, b"", 1, 2)
                    self.assertRaises(ValueError, build, each, 0, 0, ACK, b"")
            # The other family's sizes: a 72-byte IPv4 and a 52-byte IPv6 one.
            self.assertRaises(ValueError, build, b"\x45" + bytes(71), 0, 0, ACK, b"")
            self.assertRaises(ValueError, build, b"\x60" + bytes(51), 0, 0, ACK, b"")

        def test_buildRefusesOutOfRangeTimestamps(self) -> None:
            """
            TSval and TSecr beyond 32 bits or negative raise OverflowError, with
            either kind of template; the payload limit counts the option.
            """
            build = impl.build_segment
            for template in (
                fastpath.segment_template(SRC4, DST4, 1, 2, 3, timestamps=True),
                fastpath.segment_template(SRC6, DST6, 1, 2, 3, timestamps=True),
                fastpath.segment_template(SRC4, DST4, 1, 2, 3),
            ):
                for tsval, tsecr in ((1 << 32, 0), (0, 1 << 32), (-1, 0), (0, -1), (1 << 64, 0)):
                    self.assertRaises(OverflowError, build, template, 0, 0, ACK, b"", tsval, tsecr)
                self.assertRaises(OverflowError, build, template, 0, 0, ACK, b"", 1 << 32)
                build(template, 0, 0, ACK, b"", 0xFFFFFFFF, 0xFFFFFFFF)
            template4 = fastpath.segment_template(SRC4, DST4, 1, 2, 3, timestamps=True)
            template6 = fastpath.segment_template(SRC6, DST6, 1, 2, 3, timestamps=True)
            self.assertRaises(ValueError, build, template4, 0, 0, ACK, bytes(65535 - 52 + 1), 1, 2)
            self.assertEqual(len(build(template4, 0, 0, ACK, bytes(65535 - 52), 1, 2)), 65535)
            self.assertRaises(ValueError, build, template6, 0, 0, ACK, bytes(65535 - 32 + 1), 1, 2)
            self.assertEqual(len(build(template6, 0, 0, ACK, bytes(65535 - 32), 1, 2)), 65535 + 40)

        def test_knownPackets(self) -> None:
            """
            The packets written out by hand in the codec's tests parse, and
            verify, to what the codec says.
            """
            for packet in (KNOWN_IPV4_DATA, KNOWN_IPV4_SYN, KNOWN_IPV6_DATA, KNOWN_IPV6_FIN):
                for verify in (True, False):
                    self.assertEqual(impl.parse_packet(packet, verify), segment.parse_packet(packet, verify))

        def test_parseKeywordAndDefault(self) -> None:
            """
            C{verify_checksum} is a keyword argument defaulting to true, as in
            the codec.
            """
            broken = KNOWN_IPV4_DATA[:-1] + bytes([KNOWN_IPV4_DATA[-1] ^ 1])
            parse = impl.parse_packet
            self.assertRaises(MalformedSegment, parse, broken)
            self.assertEqual(parse(broken, verify_checksum=False).payload, broken[40:])

        def test_parsedTypes(self) -> None:
            """
            Parsing gives the codec's own L{segment.Segment}, fields typed as
            the codec types them.
            """
            parsed = impl.parse_packet(KNOWN_IPV6_DATA)
            self.assertIsInstance(parsed, segment.Segment)
            self.assertEqual(
                [type(value) for value in parsed], [bytes, bytes, int, int, int, int, int, int, bytes, bytes, int]
            )

        @given(st.binary(max_size=120), st.booleans())
        @settings(max_examples=500, deadline=None)
        def test_anyBytesParseAsTheCodecSays(self, packet: bytes, verify: bool) -> None:
            """
            For any bytes at all, the same segment or the same refusal reason.
            """
            self.assertEqual(outcome(impl.parse_packet, packet, verify), outcome(segment.parse_packet, packet, verify))

        @given(st.lists(st.binary(max_size=64).map(lambda b: b[: len(b) & ~1]), max_size=4), st.binary(max_size=200))
        @settings(max_examples=300, deadline=None)
        def test_checksumSum(self, even_parts: list[bytes], last: bytes) -> None:
            """
            The sum of word-aligned parts (the last may be odd) is the codec's,
            and, reduced modulo 0xffff, the reference loop's.
            """
            parts = [*even_parts, last]
            total = impl.internet_checksum_sum(*parts)
            self.assertEqual(total, segment.internet_checksum_sum(*parts))
            self.assertEqual(total, reference_sum(b"".join(parts)) % 0xFFFF)

        def test_checksumOfNothing(self) -> None:
            """
            No parts, or empty ones, sum to zero.
            """
            self.assertEqual(impl.internet_checksum_sum(), 0)
            self.assertEqual(impl.internet_checksum_sum(b"", b""), 0)

    ImplementationTests.__name__ = ImplementationTests.__qualname__ = name
    return ImplementationTests


PythonImplementationTests = _implementation_tests(fastpath.PYTHON, "PythonImplementationTests")
CImplementationTests = _implementation_tests(fastpath.C, "CImplementationTests")


class CrossCheckTests(SynchronousTestCase):
    """
    The C and Python implementations on many random packets, whole and
    broken, from both families and every flag combination.
    """

    if fastpath.C is None:
        skip = "the C fast path is not built (python setup.py build_ext --inplace)"

    def test_randomPackets(self) -> None:
        """
        20,000 random segments: built alike, parsed alike, and, broken by a
        few random bytes or a cut, refused (or not) alike.
        """
        assert fastpath.C is not None
        c, python = fastpath.C, fastpath.PYTHON
        chance = random.Random(5)
        for _ in range(20000):
            size = chance.choice((4, 16))
            src, dst = os.urandom(size), os.urandom(size)
            fields = (
                chance.randrange(1 << 32),
                chance.randrange(1 << 32),
                chance.choice((PSH | ACK, ACK, FIN | ACK, RST | ACK, SYN, chance.randrange(256))),
            )
            payload = os.urandom(chance.choice((0, 1, 2, 3, chance.randrange(1500))))
            template = fastpath.segment_template(
                src,
                dst,
                chance.randrange(65536),
                chance.randrange(65536),
                chance.randrange(65536),
                chance.randrange(256),
            )
            built = c.build_segment(template, *fields, payload)
            self.assertEqual(built, python.build_segment(template, *fields, payload))
            broken = bytearray(built)
            for _ in range(chance.randrange(4)):
                broken[chance.randrange(len(broken))] = chance.randrange(256)
            if chance.random() < 0.3:
                del broken[chance.randrange(len(broken) + 1) :]
            for packet in (built, bytes(broken)):
                for verify in (True, False):
                    self.assertEqual(
                        outcome(c.parse_packet, packet, verify), outcome(python.parse_packet, packet, verify)
                    )


class TemplateTests(SynchronousTestCase):
    """
    L{fastpath.segment_template} with and without the timestamps option.
    """

    def test_timestampedLayout(self) -> None:
        """
        With C{timestamps=True} the template is 52 bytes (IPv4) or 72 (IPv6):
        the option-less template with data offset 8, the IP length grown by
        12, and C{01 01 08 0a} plus 8 zero bytes after the TCP header.
        """
        for src, dst, ip in ((SRC4, DST4, 20), (SRC6, DST6, 40)):
            plain = fastpath.segment_template(src, dst, 40000, 443, 0x8001, 17)
            stamped = fastpath.segment_template(src, dst, 40000, 443, 0x8001, 17, timestamps=True)
            self.assertEqual(len(plain), ip + 20)
            self.assertEqual(len(stamped), ip + 32)
            self.assertEqual(stamped[ip + 20 :], bytes.fromhex("0101080a") + bytes(8))
            self.assertEqual(stamped[ip + 12], 8 << 4)
            self.assertEqual(plain[ip + 12], 5 << 4)
            length = slice(2, 4) if ip == 20 else slice(4, 6)
            self.assertEqual(int.from_bytes(stamped[length], "big") - int.from_bytes(plain[length], "big"), 12)
            unchanged = [i for i in range(ip + 20) if i not in range(length.start, length.stop) and i != ip + 12]
            self.assertEqual([stamped[i] for i in unchanged], [plain[i] for i in unchanged])

    def test_defaultHasNoOptions(self) -> None:
        """
        By default (and with C{timestamps=False}) the template is the
        option-less one.
        """
        self.assertEqual(
            fastpath.segment_template(SRC4, DST4, 1, 2, 3), fastpath.segment_template(SRC4, DST4, 1, 2, 3, 64, False)
        )
        self.assertEqual(len(fastpath.segment_template(SRC6, DST6, 1, 2, 3)), 60)


class TimestampCrossCheckTests(SynchronousTestCase):
    """
    The C and Python implementations on many random timestamped segments.
    """

    if fastpath.C is None:
        skip = "the C fast path is not built (python setup.py build_ext --inplace)"

    def test_randomTimestampedPackets(self) -> None:
        """
        10,000 random timestamped segments of both families, random fields
        (the 32-bit extremes often) and payloads of 0 to 1500 bytes: built
        alike, and parsed, checksum verified, to what was put in.
        """
        assert fastpath.C is not None
        c, python = fastpath.C, fastpath.PYTHON
        chance = random.Random(8)

        def u32() -> int:
            return chance.choice((0, 1, 0xFFFFFFFF, 0x80000000, chance.randrange(1 << 32)))

        for _ in range(10000):
            size = chance.choice((4, 16))
            src, dst = os.urandom(size), os.urandom(size)
            template = fastpath.segment_template(
                src,
                dst,
                chance.randrange(65536),
                chance.randrange(65536),
                chance.randrange(65536),
                chance.randrange(256),
                timestamps=True,
            )
            seq, ack, flags, tsval, tsecr = (
                u32(),
                u32(),
                chance.choice((PSH | ACK, ACK, FIN | ACK, chance.randrange(256))),
                u32(),
                u32(),
            )
            payload = os.urandom(chance.choice((0, 1, 2, 3, chance.randrange(1501))))
            built = c.build_segment(template, seq, ack, flags, payload, tsval, tsecr)
            self.assertEqual(built, python.build_segment(template, seq, ack, flags, payload, tsval, tsecr))
            parsed = c.parse_packet(built, True)
            self.assertEqual(parsed, segment.parse_packet(built, True))
            self.assertEqual((parsed.seq, parsed.ack, parsed.flags, parsed.payload), (seq, ack, flags, payload))
            self.assertEqual(segment.parse_options(parsed.options).timestamp, (tsval, tsecr))
            self.assertEqual(built[(20 if size == 4 else 40) + 12] >> 4, 8)


class SelectionTests(SynchronousTestCase):
    """
    Which implementation runs, and switching it.
    """

    def test_environmentForcesPurePython(self) -> None:
        """
        C{FAKETCP_PURE_PYTHON=1} selects the pure-Python path even when the
        C one is built; without it, the C one is used when built.
        """
        script = "from faketcp_twisted.io import fastpath; print(fastpath.active.name)"
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        for value, expected in (("1", "python"), ("", "c" if fastpath.C else "python")):
            env = dict(os.environ, FAKETCP_PURE_PYTHON=value, PYTHONPATH=root)
            found = subprocess.run(
                [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True, cwd=root
            )
            self.assertEqual(found.stdout.strip(), expected)

    def test_useSwitchesModuleFunctions(self) -> None:
        """
        L{fastpath.use} rebinds the module's functions and returns what was
        active, so a test can restore it.
        """
        previous = fastpath.use("python")
        self.addCleanup(fastpath.use, previous)
        self.assertIs(fastpath.active, fastpath.PYTHON)
        self.assertIs(fastpath.parse_packet, fastpath.PYTHON.parse_packet)
        self.assertIs(fastpath.use(previous), fastpath.PYTHON)
        self.assertIs(fastpath.build_segment, previous.build_segment)

    def test_unknownImplementation(self) -> None:
        """
        Asking for an implementation that is not here raises LookupError.
        """
        self.assertRaises(LookupError, fastpath.use, "fortran")

    def test_pythonAlwaysAvailable(self) -> None:
        """
        The pure-Python implementation is always first among those available.
        """
        self.assertIs(fastpath.available()[0], fastpath.PYTHON)


class _SocketTests:
    """
    Batch send and receive on real sockets: a raw socket in one namespace
    of a two-host lab, a capture in the other.
    """

    implementation: fastpath.Implementation
    assertEqual: Any
    addCleanup: Any

    def setUp(self) -> None:
        require_root()
        from faketcp_twisted.io.capture import Capture

        self.lab = netlab.two_hosts()
        self.addCleanup(self.lab.destroy)
        # Nothing listens on the port in S: keep its kernel's RSTs home.
        self.lab.iptables(self.lab.S, "-A", "OUTPUT", "-p", "tcp", "--sport", "9191", "-j", "DROP")
        with netlab.in_namespace(self.lab.C):
            self.sender = Capture(socket.AF_INET, 9191, "src")
        with netlab.in_namespace(self.lab.S):
            self.receiver = Capture(socket.AF_INET, 9191, "dst")
        self.addCleanup(self.sender.close)
        self.addCleanup(self.receiver.close)
        self.src = socket.inet_aton(self.lab.client4)
        self.dst = socket.inet_aton(self.lab.server4)
        self.template = fastpath.segment_template(self.src, self.dst, 40000, 9191, 0xFFFF)

    def packets(self, count: int, start: int = 0) -> list[fastpath.Outgoing]:
        address = (self.lab.server4, 0)
        return [
            (fastpath.build_segment(self.template, start + i, 0, PSH | ACK, b"%d" % (start + i)), address)
            for i in range(count)
        ]

    def receive_all(self, expected: int) -> fastpath.Received:
        segments: list[segment.Segment] = []
        keys: list[FlowKey] = []
        malformed: list[str] = []

        def more() -> bool:
            got = self.implementation.receive_segments(self.receiver.capture, 1000)
            segments.extend(got[0])
            keys.extend(got[1])
            malformed.extend(got[2])
            return len(segments) + len(malformed) >= expected

        for _ in range(200):
            if more():
                break
            time.sleep(0.005)
        return segments, keys, malformed

    def test_sendAndReceiveBatch(self) -> None:
        """
        300 packets (more than one kernel batch) go out in order and come
        back parsed, with the flow key of each as this side sees it.
        """
        items = self.packets(300)
        sent, errors = self.implementation.send_batch(self.sender.sender, items, 0)
        self.assertEqual((sent, errors), (300, []))
        segments, keys, malformed = self.receive_all(300)
        self.assertEqual(malformed, [])
        self.assertEqual([each.payload for each in segments], [b"%d" % i for i in range(300)])
        self.assertEqual(set(keys), {FlowKey(self.dst, 9191, self.src, 40000)})
        self.assertEqual(type(keys[0]), FlowKey)

    def test_sendFromStart(self) -> None:
        """
        Only the items from C{start} on are sent.
        """
        sent, errors = self.implementation.send_batch(self.sender.sender, self.packets(10), 7)
        self.assertEqual((sent, errors), (10, []))
        segments, _keys, _malformed = self.receive_all(3)
        self.assertEqual([each.payload for each in segments], [b"7", b"8", b"9"])

    def test_badChecksumReported(self) -> None:
        """
        A segment whose checksum does not verify is reported by reason, and
        the good ones around it still arrive.
        """
        items = self.packets(3)
        packet, address = items[1]
        items[1] = (packet[:-1] + bytes([packet[-1] ^ 0xFF]), address)
        self.implementation.send_batch(self.sender.sender, items, 0)
        segments, _keys, malformed = self.receive_all(3)
        self.assertEqual([each.payload for each in segments], [b"0", b"2"])
        self.assertEqual(malformed, ["bad-checksum"])

    def test_timestampedSegmentsTravel(self) -> None:
        """
        Timestamped segments go out of the raw socket and come back through
        the capture whole, their timestamps intact.
        """
        template = fastpath.segment_template(self.src, self.dst, 40000, 9191, 0xFFFF, timestamps=True)
        address = (self.lab.server4, 0)
        items = [
            (self.implementation.build_segment(template, i, 0, PSH | ACK, b"%d" % i, 1000 + i, 0xFFFFFFFF - i), address)
            for i in range(5)
        ]
        self.assertEqual(self.implementation.send_batch(self.sender.sender, items, 0), (5, []))
        segments, _keys, malformed = self.receive_all(5)
        self.assertEqual(malformed, [])
        self.assertEqual([each.payload for each in segments], [b"%d" % i for i in range(5)])
        self.assertEqual(
            [segment.parse_options(each.options).timestamp for each in segments],
            [(1000 + i, 0xFFFFFFFF - i) for i in range(5)],
        )

    def test_budget(self) -> None:
        """
        No more than the budget is read; the rest stays queued.
        """
        self.implementation.send_batch(self.sender.sender, self.packets(100), 0)
        time.sleep(0.05)
        first = self.implementation.receive_segments(self.receiver.capture, 70)
        self.assertEqual(len(first[0]), 70)
        rest = self.implementation.receive_segments(self.receiver.capture, 1000)
        self.assertEqual(len(rest[0]), 30)

    def test_emptyCapture(self) -> None:
        """
        An empty capture gives three empty lists, without blocking.
        """
        self.assertEqual(self.implementation.receive_segments(self.receiver.capture, 64), ([], [], []))

    def test_refusedPacketSkipped(self) -> None:
        """
        A packet the kernel refuses (no route to its destination) is
        skipped with its errno, and the packets after it are sent.
        """
        items = self.packets(3)
        nowhere = fastpath.segment_template(self.src, socket.inet_aton("203.0.113.9"), 40000, 9191, 0xFFFF)
        items[1] = (fastpath.build_segment(nowhere, 0, 0, PSH | ACK, b"lost"), ("203.0.113.9", 0))
        sent, errors = self.implementation.send_batch(self.sender.sender, items, 0)
        self.assertEqual((sent, errors), (3, [errno.ENETUNREACH]))
        segments, _keys, _malformed = self.receive_all(2)
        self.assertEqual([each.payload for each in segments], [b"0", b"2"])

    def test_malformedItemAfterSentRefused(self) -> None:
        """
        An item that is not a (packet, address) pair, met once items were
        sent (the second kernel batch here), does not raise: the caller
        would lose the index.  It is skipped with EINVAL, and the items
        after it are sent.  Met first, it raises (nothing was sent).
        """
        items: list[Any] = self.packets(100)
        items[70] = "not an item"
        sent, errors = self.implementation.send_batch(self.sender.sender, items, 0)
        self.assertEqual((sent, errors), (100, [errno.EINVAL]))
        segments, _keys, _malformed = self.receive_all(99)
        self.assertEqual([each.payload for each in segments], [b"%d" % i for i in range(100) if i != 70])
        items = self.packets(3)
        items[1] = (b"\x45", None)  # type: ignore[assignment]
        sent, errors = self.implementation.send_batch(self.sender.sender, items, 0)
        self.assertEqual((sent, errors), (3, [errno.EINVAL]))
        for bad in (["not an item"], [3]):
            self.assertRaises((TypeError, ValueError), self.implementation.send_batch, self.sender.sender, bad, 0)
        sender = self.sender.sender
        self.assertRaises((TypeError, ValueError), self.implementation.send_batch, sender, items[:1] + [3], 1)

    def udp_pair(self) -> tuple[socket.socket, socket.socket]:
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(receiver.close)
        self.addCleanup(sender.close)
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(2)
        sender.setblocking(False)
        return receiver, sender

    def received(self, receiver: socket.socket, count: int) -> list[bytes]:
        return [receiver.recv(100) for _ in range(count)]

    def test_malformedDatagramAfterSentRefused(self) -> None:
        """
        A datagram that is not bytes, or whose destination is malformed,
        met once datagrams were sent, is skipped with EINVAL (never a
        raise that would lose the index); met first, it raises.
        """
        receiver, sender = self.udp_pair()
        target = receiver.getsockname()
        datagrams: list[Any] = [b"%d" % i for i in range(100)]
        datagrams[80] = 80
        sent, errors = self.implementation.send_datagrams(sender, datagrams, [target] * 100)
        self.assertEqual((sent, errors), (100, [errno.EINVAL]))
        self.assertEqual(self.received(receiver, 99), [b"%d" % i for i in range(100) if i != 80])
        destinations: list[Any] = [target] * 3
        destinations[1] = ("127.0.0.1", "no port")
        sent, errors = self.implementation.send_datagrams(sender, [b"a", b"b", b"c"], destinations)
        self.assertEqual((sent, errors), (3, [errno.EINVAL]))
        self.assertEqual(self.received(receiver, 2), [b"a", b"c"])
        sender.connect(target)
        sent, errors = self.implementation.send_datagrams(sender, [b"x", "y", b"z"], None)  # type: ignore[list-item]
        self.assertEqual((sent, errors), (3, [errno.EINVAL]))
        self.assertEqual(self.received(receiver, 2), [b"x", b"z"])
        self.assertRaises(TypeError, self.implementation.send_datagrams, sender, ["y", b"z"], None)

    def test_linkLocalSourceKeepsScope(self) -> None:
        """
        A datagram from a link-local IPv6 address comes with the source
        C{socket.recvfrom} gives, scope id included (Python keeps the scope
        there, not as a C{%interface} suffix of the host, so a reply sent
        to this tuple leaves on the right link).
        """
        ifname = self.lab.client_if
        with netlab.in_namespace(self.lab.C):
            shown = self.lab.run(self.lab.C, "ip", "-6", "-o", "addr", "show", "dev", ifname, "scope", "link").stdout
            link_local = shown.split("inet6 ", 1)[1].split("/", 1)[0]
            receiver = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            sender = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        self.addCleanup(receiver.close)
        self.addCleanup(sender.close)
        with netlab.in_namespace(self.lab.C):
            scope = socket.if_nametoindex(ifname)
            receiver.bind((link_local, 0, 0, scope))
            sender.bind((link_local, 0, 0, scope))
            receiver.setblocking(False)
            target = receiver.getsockname()
            for payload in (b"one", b"two"):
                sender.sendto(payload, target)
            deadline = time.monotonic() + 2
            got: tuple[list[bytes], Any] = ([], [])
            while len(got[0]) < 1 and time.monotonic() < deadline:
                got = self.implementation.receive_datagrams(receiver, 8, True)
                time.sleep(0.01)
            sender.sendto(b"three", target)
            time.sleep(0.05)
            expected = receiver.recvfrom(100)
        self.assertEqual(got[0][:1], [b"one"])
        source = got[1][0]
        self.assertEqual(source, expected[1])
        self.assertEqual(source[3], scope)
        with netlab.in_namespace(self.lab.C):
            receiver.sendto(b"back", source)
            sender.settimeout(2)
            self.assertEqual(sender.recv(100), b"back")


class PythonSocketTests(_SocketTests, SynchronousTestCase):
    implementation = fastpath.PYTHON


class CSocketTests(_SocketTests, SynchronousTestCase):
    implementation = fastpath.C or fastpath.PYTHON
    if fastpath.C is None:
        skip = "the C fast path is not built (python setup.py build_ext --inplace)"


class PurePythonEchoTests(test_integration.EchoTests):
    """
    The transport's echo tests again, on the pure-Python fast path.
    """

    def setUp(self) -> None:
        previous = fastpath.use(fastpath.PYTHON)
        self.addCleanup(fastpath.use, previous)
        super().setUp()


class BatchingTests(LabTestCase):
    """
    What the demultiplexer hands the kernel, and when.
    """

    async def _connected(self) -> tuple[Any, Any, list[int]]:
        server = RecordingFactory(Echo)
        await self.listen(server)
        client = await self.connect(RecordingFactory(), f"faketcp:host={self.lab.server4}:port={self.port}")
        # One round trip first: until the server's scaled window is known
        # the flow holds datagrams back, which is not what is measured.
        client.transport.write(b"hello")
        await wait_until(lambda: client.received == [b"hello"])
        demux = client.transport.connection.demux
        return client, demux, _record_batches(demux)

    async def test_lonePacketLeavesAtOnce(self) -> None:
        """
        A write outside a read batch, with nothing else going on, is handed
        to the kernel before write returns.
        """
        client, demux, batches = await self._connected()
        demux._lastSent = 0.0
        client.transport.write(b"alone")
        self.assertEqual(batches, [1])
        await wait_until(lambda: client.received[-1:] == [b"alone"])

    async def test_burstLeavesInBatches(self) -> None:
        """
        A burst of writes in one turn reaches the kernel in a few batches
        of up to L{Demultiplexer.flushThreshold}, all of it before the loop
        comes round again, and arrives whole and in order.
        """
        client, demux, batches = await self._connected()
        messages = [b"burst %d" % i for i in range(300)]
        for message in messages:
            client.transport.write(message)
        self.assertLessEqual(max(batches), demux.flushThreshold)
        self.assertLessEqual(len(batches), 300 // demux.flushThreshold + 3)
        await wait_until(lambda: sum(batches) == 300)
        await wait_until(lambda: len(client.received) == 301)
        self.assertEqual(client.received[1:], messages)

    async def test_coalescedSendsLeaveTogether(self) -> None:
        """
        Within C{coalesced_sends}, writes wait and reach the kernel in one
        batch when it ends, with no call scheduled on the loop; they
        arrive whole and in order.
        """
        from faketcp_twisted.engine.demux import coalesced_sends

        client, demux, batches = await self._connected()
        messages = [b"together %d" % i for i in range(10)]
        with coalesced_sends:
            for message in messages:
                client.transport.write(message)
            self.assertEqual(batches, [])
        self.assertEqual(batches, [10])
        self.assertIsNone(demux._flushCall)
        await wait_until(lambda: len(client.received) == 11)
        self.assertEqual(client.received[1:], messages)

    async def test_timerSendsBoundedPerTick(self) -> None:
        """
        Keepalives that fall due together leave at most
        C{timerSendsPerTick} flows' worth per tick (a quarter of the backlog
        when that is more); the rest go on the next ticks.
        """
        server = RecordingFactory(Echo)
        await self.listen(server)
        clients = [
            await self.connect(RecordingFactory(), f"faketcp:host={self.lab.server4}:port={self.port}")
            for _ in range(5)
        ]
        demux = clients[0].transport.connection.demux
        self.assertTrue(all(client.transport.connection.demux is demux for client in clients))
        batches = _record_batches(demux)
        demux.timerSendsPerTick = 2
        now = demux.loop.seconds()
        for client in clients:
            flow = client.transport.flow
            flow.keepalive_interval = 1.0
            flow.last_tx = now - 5.0
        sent = []
        for _ in range(3):
            # A tick now, in place of the one scheduled.
            demux._timer.cancel()
            demux._tick()
            sent.append(sum(batches))
            batches.clear()
        self.assertEqual(sent, [2, 2, 1])
        self.assertTrue(all(not client.transport.flow.pending for client in clients))

    async def test_kernelSocketMuted(self) -> None:
        """
        The kernel answers none of an adopted flow's segments (no
        duplicate ACK for the silencing rule to drop): its TCP sends
        nothing while data flows, either way.
        """
        client, demux, _batches = await self._connected()
        before = {ns: _tcp_out_segments(self.lab, ns) for ns in (self.lab.S, self.lab.C)}
        for _ in range(200):
            client.transport.write(b"x" * 1000)
        await wait_until(lambda: len(client.received) == 201)
        for ns in (self.lab.S, self.lab.C):
            self.assertEqual(_tcp_out_segments(self.lab, ns), before[ns], ns)


def _record_batches(demux: Any) -> list[int]:
    """
    Note how many packets each call of the capture's C{send_batch} handed
    to the kernel (the call itself goes through unchanged).
    """
    batches: list[int] = []
    send_batch = demux.capture.send_batch

    def recording(items: list[Any], start: int) -> tuple[int, list[int]]:
        result: tuple[int, list[int]] = send_batch(items, start)
        batches.append(result[0] - start)
        return result

    demux.capture.send_batch = recording
    return batches


def _tcp_out_segments(lab: netlab.Lab, ns: str) -> int:
    """
    Segments the kernel's TCP of C{ns} sent (C{Tcp: OutSegs}); fake
    segments go through raw sockets and are not counted.
    """
    lines = lab.run(ns, "cat", "/proc/net/snmp").stdout.splitlines()
    header, values = [line.split() for line in lines if line.startswith("Tcp:")][:2]
    return int(values[header.index("OutSegs")])
