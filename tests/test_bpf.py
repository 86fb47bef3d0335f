"""
Tests for L{faketcp_twisted.core.bpf}.

The filters run in the real kernel: attached to one end of an C{AF_UNIX}
datagram socket pair, they see each datagram the other end sends exactly
as a capture socket would see an IP packet, without needing root.  One test
uses a real C{AF_PACKET} socket in a throwaway network namespace to show
that outgoing copies on loopback are dropped; it needs root.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import Sequence

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from faketcp_twisted.core import bpf
from faketcp_twisted.core.bpf import (
    ACCEPT,
    BPF_ABS,
    BPF_B,
    BPF_JEQ,
    BPF_JMP,
    BPF_K,
    BPF_LD,
    BPF_RET,
    PACKET_OUTGOING,
    SKF_AD_OFF,
    SKF_AD_PKTTYPE,
    Instruction,
    Program,
    attach_filter,
    capture_filter,
    detach_filter,
    jump,
    pack,
    stmt,
)

PORT = 4433
OTHER = 5555

SRC4 = socket.inet_pton(socket.AF_INET, "192.0.2.1")
DST4 = socket.inet_pton(socket.AF_INET, "192.0.2.2")
SRC6 = socket.inet_pton(socket.AF_INET6, "2001:db8::1")
DST6 = socket.inet_pton(socket.AF_INET6, "2001:db8::2")

IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_HOPOPTS = 0

# IPv4 flags/fragment-offset field values.
MORE_FRAGMENTS = 0x2000
DONT_FRAGMENT = 0x4000


def tcp(sport: int = OTHER, dport: int = PORT) -> bytes:
    """
    A 20-byte TCP header (a SYN); the checksum is left zero since BPF does
    not look at it.
    """
    return struct.pack(
        "!HHIIBBHHH", sport, dport, 1000, 0, 5 << 4, 0x02, 65535, 0, 0
    )


def udp(sport: int = OTHER, dport: int = PORT) -> bytes:
    """
    An 8-byte UDP header: its ports sit where TCP's do.
    """
    return struct.pack("!HHHH", sport, dport, 8, 0)


def ipv4(
    payload: bytes,
    protocol: int = IPPROTO_TCP,
    fragment: int = DONT_FRAGMENT,
    options: bytes = b"",
    version: int = 4,
) -> bytes:
    """
    An IPv4 packet around C{payload}.

    @param fragment: the flags/fragment-offset halfword.
    @param options: IP options, a multiple of 4 bytes (raises IHL).
    """
    ihl = 5 + len(options) // 4
    header = struct.pack(
        "!BBHHHBBH4s4s",
        (version << 4) | ihl,
        0,
        ihl * 4 + len(payload),
        0x1234,
        fragment,
        64,
        protocol,
        0,
        SRC4,
        DST4,
    )
    return header + options + payload


def ipv6(
    payload: bytes, next_header: int = IPPROTO_TCP, version: int = 6
) -> bytes:
    """
    An IPv6 packet around C{payload}.
    """
    header = struct.pack(
        "!IHBB16s16s", version << 28, len(payload), next_header, 64, SRC6, DST6
    )
    return header + payload


def deliver(
    program: Program | Sequence[Instruction], packets: Sequence[bytes]
) -> list[bytes]:
    """
    Send C{packets} through a socket filtered by C{program}.

    @return: the datagrams that got through, in arrival order.
    """
    sender, receiver = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        attach_filter(receiver, program)
        for packet in packets:
            # A filtered-out datagram is dropped silently: send still
            # reports success.
            sender.send(packet)
        receiver.setblocking(False)
        received = []
        while True:
            try:
                received.append(receiver.recv(65536))
            except BlockingIOError:
                return received
    finally:
        sender.close()
        receiver.close()


class CaptureFilterIPv4Tests(SynchronousTestCase):
    """
    L{capture_filter} for C{AF_INET} keeps unfragmented IPv4 TCP segments to
    or from the port.
    """

    def test_destinationPortMatchAccepted(self) -> None:
        """
        In C{"dst"} mode a TCP segment to the port is accepted, whole.
        """
        packet = ipv4(tcp(dport=PORT) + b"payload")
        self.assertEqual(
            deliver(capture_filter(socket.AF_INET, PORT, "dst"), [packet]),
            [packet],
        )

    def test_wrongPortRejected(self) -> None:
        """
        A TCP segment to another port is dropped; the order of the rest is
        kept.
        """
        first = ipv4(tcp(dport=PORT) + b"1")
        second = ipv4(tcp(dport=PORT) + b"2")
        self.assertEqual(
            deliver(
                capture_filter(socket.AF_INET, PORT, "dst"),
                [first, ipv4(tcp(dport=OTHER)), second],
            ),
            [first, second],
        )

    def test_destinationModeIgnoresSourcePort(self) -> None:
        """
        In C{"dst"} mode a segment I{from} the port is dropped.
        """
        self.assertEqual(
            deliver(
                capture_filter(socket.AF_INET, PORT, "dst"),
                [ipv4(tcp(sport=PORT, dport=OTHER))],
            ),
            [],
        )

    def test_sourceModeMatchesSourcePort(self) -> None:
        """
        In C{"src"} mode (a client) a segment from the port is accepted and
        one merely to the port is dropped.
        """
        fromPort = ipv4(tcp(sport=PORT, dport=OTHER))
        toPort = ipv4(tcp(sport=OTHER, dport=PORT))
        self.assertEqual(
            deliver(
                capture_filter(socket.AF_INET, PORT, "src"), [toPort, fromPort]
            ),
            [fromPort],
        )

    def test_udpRejected(self) -> None:
        """
        UDP to the port is dropped even though its ports sit where TCP's do.
        """
        self.assertEqual(
            deliver(
                capture_filter(socket.AF_INET, PORT, "dst"),
                [ipv4(udp(dport=PORT), protocol=IPPROTO_UDP)],
            ),
            [],
        )

    def test_firstFragmentRejected(self) -> None:
        """
        A first fragment (more-fragments set, offset 0) is dropped even
        though it carries the TCP header with the right port.
        """
        self.assertEqual(
            deliver(
                capture_filter(socket.AF_INET, PORT, "dst"),
                [ipv4(tcp(), fragment=MORE_FRAGMENTS)],
            ),
            [],
        )

    def test_laterFragmentRejected(self) -> None:
        """
        A fragment with a non-zero offset is dropped even when its data
        looks like a TCP header to the port.
        """
        self.assertEqual(
            deliver(
                capture_filter(socket.AF_INET, PORT, "dst"),
                [
                    ipv4(tcp(), fragment=185),
                    ipv4(tcp(), fragment=MORE_FRAGMENTS | 1),
                ],
            ),
            [],
        )

    def test_dontFragmentAccepted(self) -> None:
        """
        The don't-fragment flag alone does not make a packet a fragment.
        """
        packets = [
            ipv4(tcp(), fragment=DONT_FRAGMENT),
            ipv4(tcp(), fragment=0),
        ]
        self.assertEqual(
            deliver(capture_filter(socket.AF_INET, PORT, "dst"), packets),
            packets,
        )

    def test_optionsSkippedToFindPort(self) -> None:
        """
        With IP options (IHL 6) the TCP header is found after them.
        """
        packet = ipv4(tcp(dport=PORT), options=b"\x01\x01\x01\x00")
        self.assertEqual(
            deliver(capture_filter(socket.AF_INET, PORT, "dst"), [packet]),
            [packet],
        )

    def test_optionsAreNotReadAsPorts(self) -> None:
        """
        Options whose bytes sit where a 20-byte header's TCP ports would be
        are not mistaken for them.
        """
        options = struct.pack("!HH", PORT, PORT)
        self.assertEqual(
            deliver(
                capture_filter(socket.AF_INET, PORT, "dst"),
                [ipv4(tcp(sport=OTHER, dport=OTHER), options=options)],
            ),
            [],
        )

    def test_otherVersionRejected(self) -> None:
        """
        Packets whose version nibble is not 4 are dropped, IPv6 included.
        """
        self.assertEqual(
            deliver(
                capture_filter(socket.AF_INET, PORT, "dst"),
                [ipv4(tcp(), version=5), ipv4(tcp(), version=6), ipv6(tcp())],
            ),
            [],
        )

    def test_truncatedBeforeDestinationPortRejected(self) -> None:
        """
        A packet ending inside the destination port is dropped (classic BPF
        returns 0 on an out-of-bounds load); one ending right after it is
        accepted.
        """
        short = ipv4(tcp(dport=PORT)[:3])
        enough = ipv4(tcp(dport=PORT)[:4])
        self.assertEqual(
            deliver(
                capture_filter(socket.AF_INET, PORT, "dst"), [short, enough]
            ),
            [enough],
        )

    def test_truncatedBeforeSourcePortRejected(self) -> None:
        """
        In C{"src"} mode a packet ending inside the source port is dropped;
        one ending right after it is accepted.
        """
        short = ipv4(tcp(sport=PORT)[:1])
        enough = ipv4(tcp(sport=PORT)[:2])
        self.assertEqual(
            deliver(
                capture_filter(socket.AF_INET, PORT, "src"), [short, enough]
            ),
            [enough],
        )

    def test_truncatedIPHeaderRejected(self) -> None:
        """
        Packets cut inside the IP header, or empty, are dropped.
        """
        whole = ipv4(tcp())
        self.assertEqual(
            deliver(
                capture_filter(socket.AF_INET, PORT, "dst"),
                [b"", whole[:1], whole[:8], whole[:19]],
            ),
            [],
        )


class CaptureFilterIPv6Tests(SynchronousTestCase):
    """
    L{capture_filter} for C{AF_INET6} keeps IPv6 packets whose first header
    is TCP and whose port matches.
    """

    def test_destinationPortMatchAccepted(self) -> None:
        """
        In C{"dst"} mode a TCP segment to the port is accepted; one to
        another port is dropped.
        """
        packet = ipv6(tcp(dport=PORT) + b"payload")
        self.assertEqual(
            deliver(
                capture_filter(socket.AF_INET6, PORT, "dst"),
                [ipv6(tcp(dport=OTHER)), packet],
            ),
            [packet],
        )

    def test_sourceModeMatchesSourcePort(self) -> None:
        """
        In C{"src"} mode a segment from the port is accepted and one to it
        dropped.
        """
        fromPort = ipv6(tcp(sport=PORT, dport=OTHER))
        toPort = ipv6(tcp(sport=OTHER, dport=PORT))
        self.assertEqual(
            deliver(
                capture_filter(socket.AF_INET6, PORT, "src"),
                [fromPort, toPort],
            ),
            [fromPort],
        )

    def test_udpRejected(self) -> None:
        """
        UDP to the port is dropped.
        """
        self.assertEqual(
            deliver(
                capture_filter(socket.AF_INET6, PORT, "dst"),
                [ipv6(udp(dport=PORT), next_header=IPPROTO_UDP)],
            ),
            [],
        )

    def test_extensionHeaderRejected(self) -> None:
        """
        A packet with an extension header (hop-by-hop, next header 0) is
        dropped, even when the extension header's bytes sit at the port's
        fixed offset and equal the port.
        """
        hopByHop = struct.pack("!BBHI", IPPROTO_TCP, 0, PORT, 0)
        packet = ipv6(hopByHop + tcp(dport=PORT), next_header=IPPROTO_HOPOPTS)
        self.assertEqual(
            deliver(capture_filter(socket.AF_INET6, PORT, "dst"), [packet]),
            [],
        )

    def test_otherVersionRejected(self) -> None:
        """
        Packets whose version nibble is not 6 are dropped, IPv4 included.
        """
        self.assertEqual(
            deliver(
                capture_filter(socket.AF_INET6, PORT, "dst"),
                [ipv6(tcp(), version=4), ipv6(tcp(), version=7), ipv4(tcp())],
            ),
            [],
        )

    def test_truncatedBeforePortRejected(self) -> None:
        """
        A packet ending inside the port is dropped; one ending right after it
        is accepted.
        """
        short = ipv6(tcp(dport=PORT)[:3])
        enough = ipv6(tcp(dport=PORT)[:4])
        self.assertEqual(
            deliver(
                capture_filter(socket.AF_INET6, PORT, "dst"),
                [ipv6(b""), short, enough, enough[:39]],
            ),
            [enough],
        )


class CaptureFilterPropertyTests(SynchronousTestCase):
    """
    Over arbitrary ports, the filter's decision is exactly "the selected
    port equals the configured one".
    """

    @settings(max_examples=60, deadline=None)
    @given(
        family=st.sampled_from([socket.AF_INET, socket.AF_INET6]),
        match=st.sampled_from(["src", "dst"]),
        sport=st.integers(0, 0xFFFF),
        dport=st.integers(0, 0xFFFF),
        data=st.data(),
    )
    def test_acceptedExactlyWhenPortMatches(
        self,
        family: int,
        match: str,
        sport: int,
        dport: int,
        data: st.DataObject,
    ) -> None:
        """
        A well-formed TCP segment is accepted iff its source (C{"src"}) or
        destination (C{"dst"}) port is the filter's port.
        """
        port = data.draw(
            st.one_of(st.just(sport), st.just(dport), st.integers(0, 0xFFFF)),
            label="port",
        )
        segment = tcp(sport=sport, dport=dport)
        packet = ipv4(segment) if family == socket.AF_INET else ipv6(segment)
        selected = sport if match == "src" else dport
        expected = [packet] if selected == port else []
        self.assertEqual(
            deliver(capture_filter(family, port, match), [packet]), expected
        )


class CaptureFilterProgramTests(SynchronousTestCase):
    """
    The shape of L{capture_filter}'s program and its argument checks.
    """

    def test_outgoingCopiesRejectedFirst(self) -> None:
        """
        Every program starts by loading the packet type and returning 0 for
        C{PACKET_OUTGOING}, so a host's own packets on loopback are seen
        once.  (An C{AF_UNIX} socket always reads as C{PACKET_HOST}; see
        L{PacketSocketTests} for the real thing.)
        """
        reject = Instruction(BPF_RET | BPF_K, 0, 0, 0)
        for family in (socket.AF_INET, socket.AF_INET6):
            for match in ("src", "dst"):
                program = capture_filter(family, PORT, match)
                self.assertEqual(
                    program[0],
                    Instruction(
                        BPF_LD | BPF_B | BPF_ABS,
                        0,
                        0,
                        (SKF_AD_OFF + SKF_AD_PKTTYPE) & 0xFFFFFFFF,
                    ),
                )
                check = program[1]
                self.assertEqual(
                    (check.code, check.k, check.jf),
                    (BPF_JMP | BPF_JEQ | BPF_K, PACKET_OUTGOING, 0),
                )
                self.assertEqual(program[2 + check.jt], reject)

    def test_acceptKeepsWholePacket(self) -> None:
        """
        The only accepting return keeps up to C{ACCEPT} (0x40000) bytes.
        """
        program = capture_filter(socket.AF_INET, PORT, "dst")
        returns = [i.k for i in program if i.code == BPF_RET | BPF_K]
        self.assertEqual(sorted(returns), [0, ACCEPT])
        self.assertEqual(ACCEPT, 0x40000)

    def test_badArgumentsRaiseValueError(self) -> None:
        """
        An unknown family or match, or a port outside 0-65535, is refused.
        """
        for family, port, match in [
            (socket.AF_UNIX, PORT, "dst"),
            (socket.AF_INET, PORT, "both"),
            (socket.AF_INET, -1, "dst"),
            (socket.AF_INET6, 65536, "dst"),
        ]:
            self.assertRaises(ValueError, capture_filter, family, port, match)


class ProgramTests(SynchronousTestCase):
    """
    L{Program} resolves symbolic jump labels into classic BPF's relative,
    forward-only, one-byte offsets.
    """

    def test_labelsResolveToRelativeOffsets(self) -> None:
        """
        A jump's offset counts the instructions between it and its label;
        an omitted target falls through (offset 0).
        """
        p = Program()
        p.stmt(BPF_LD | BPF_B | BPF_ABS, 9)
        p.jump(BPF_JMP | BPF_JEQ | BPF_K, 6, jt="yes", jf="no")
        p.jump(BPF_JMP | BPF_JEQ | BPF_K, 17, jf="no")
        p.label("yes")
        p.stmt(BPF_RET | BPF_K, 1)
        p.label("no")
        p.stmt(BPF_RET | BPF_K, 0)
        self.assertEqual(
            p.assemble(),
            [
                Instruction(BPF_LD | BPF_B | BPF_ABS, 0, 0, 9),
                Instruction(BPF_JMP | BPF_JEQ | BPF_K, 1, 2, 6),
                Instruction(BPF_JMP | BPF_JEQ | BPF_K, 0, 1, 17),
                Instruction(BPF_RET | BPF_K, 0, 0, 1),
                Instruction(BPF_RET | BPF_K, 0, 0, 0),
            ],
        )
        self.assertEqual(len(p), 5)

    def test_unknownLabel(self) -> None:
        """
        Jumping to a label that is never defined raises L{ValueError}.
        """
        p = Program()
        p.jump(BPF_JMP | BPF_JEQ | BPF_K, 0, jt="nowhere")
        p.stmt(BPF_RET | BPF_K, 0)
        exc = self.assertRaises(ValueError, p.assemble)
        self.assertIn("nowhere", str(exc))

    def test_backwardsJump(self) -> None:
        """
        Jumping to a label before the jump raises L{ValueError}: classic BPF
        only jumps forward.
        """
        p = Program()
        p.label("top")
        p.stmt(BPF_LD | BPF_B | BPF_ABS, 0)
        p.jump(BPF_JMP | BPF_JEQ | BPF_K, 0, jt="top")
        p.stmt(BPF_RET | BPF_K, 0)
        self.assertRaises(ValueError, p.assemble)

    def test_longestJumpFits(self) -> None:
        """
        A jump over exactly 255 instructions assembles to offset 255.
        """
        p = Program()
        p.jump(BPF_JMP | BPF_JEQ | BPF_K, 0, jt="far")
        for _ in range(255):
            p.stmt(BPF_RET | BPF_K, 0)
        p.label("far")
        p.stmt(BPF_RET | BPF_K, 1)
        self.assertEqual(p.assemble()[0].jt, 255)

    def test_tooFarJump(self) -> None:
        """
        A jump over 256 instructions does not fit in jt/jf and raises
        L{ValueError}.
        """
        p = Program()
        p.jump(BPF_JMP | BPF_JEQ | BPF_K, 0, jf="far")
        for _ in range(256):
            p.stmt(BPF_RET | BPF_K, 0)
        p.label("far")
        p.stmt(BPF_RET | BPF_K, 1)
        exc = self.assertRaises(ValueError, p.assemble)
        self.assertIn("far", str(exc))

    def test_duplicateLabel(self) -> None:
        """
        Defining a label twice raises L{ValueError}.
        """
        p = Program()
        p.label("here")
        self.assertRaises(ValueError, p.label, "here")

    def test_labelAfterLastInstruction(self) -> None:
        """
        A jump to a label that names no instruction raises L{ValueError}.
        """
        p = Program()
        p.jump(BPF_JMP | BPF_JEQ | BPF_K, 0, jt="end")
        p.stmt(BPF_RET | BPF_K, 0)
        p.label("end")
        self.assertRaises(ValueError, p.assemble)

    def test_toBytesPacksSockFilters(self) -> None:
        """
        L{Program.to_bytes} packs each instruction as a native
        C{struct sock_filter} (u16 code, u8 jt, u8 jf, u32 k), negative
        operands as two's complement.
        """
        p = Program()
        p.stmt(BPF_LD | BPF_B | BPF_ABS, SKF_AD_OFF + SKF_AD_PKTTYPE)
        p.jump(BPF_JMP | BPF_JEQ | BPF_K, 4, jt="out")
        p.label("out")
        p.stmt(BPF_RET | BPF_K, 0)
        data = p.to_bytes()
        self.assertEqual(len(data), 3 * 8)
        self.assertEqual(
            list(struct.iter_unpack("HBBI", data)),
            [
                (BPF_LD | BPF_B | BPF_ABS, 0, 0, 0xFFFFF004),
                (BPF_JMP | BPF_JEQ | BPF_K, 0, 0, 4),
                (BPF_RET | BPF_K, 0, 0, 0),
            ],
        )
        self.assertEqual(data, pack(p.assemble()))

    def test_helpersCheckRanges(self) -> None:
        """
        L{stmt} and L{jump} refuse operands beyond 32 bits and offsets beyond
        a byte.
        """
        self.assertEqual(stmt(BPF_RET | BPF_K, -1).k, 0xFFFFFFFF)
        self.assertEqual(
            jump(BPF_JMP, 5, 255, 0), Instruction(BPF_JMP, 255, 0, 5)
        )
        self.assertRaises(ValueError, stmt, BPF_RET | BPF_K, 2**32)
        self.assertRaises(ValueError, stmt, BPF_RET | BPF_K, -(2**31) - 1)
        self.assertRaises(ValueError, jump, BPF_JMP, 0, 256, 0)
        self.assertRaises(ValueError, jump, BPF_JMP, 0, 0, -1)


class AttachFilterTests(SynchronousTestCase):
    """
    L{attach_filter} and L{detach_filter} install and remove filters.
    """

    def setUp(self) -> None:
        self.sender, self.receiver = socket.socketpair(
            socket.AF_UNIX, socket.SOCK_DGRAM
        )
        self.addCleanup(self.sender.close)
        self.addCleanup(self.receiver.close)

    def receiveAll(self) -> list[bytes]:
        """
        @return: everything queued on the receiver.
        """
        self.receiver.setblocking(False)
        received = []
        while True:
            try:
                received.append(self.receiver.recv(65536))
            except BlockingIOError:
                return received

    def rejectAll(self) -> Program:
        """
        @return: a program that drops every packet.
        """
        p = Program()
        p.stmt(BPF_RET | BPF_K, 0)
        return p

    def test_acceptsProgramBuilder(self) -> None:
        """
        A L{Program} can be attached as it is.
        """
        attach_filter(self.receiver, self.rejectAll())
        self.sender.send(b"x")
        self.assertEqual(self.receiveAll(), [])

    def test_kernelRejectionRaisesOSError(self) -> None:
        """
        A program the kernel's checker refuses (here: a jump past the end)
        raises L{OSError} with the kernel's errno and a message naming the
        operation.
        """
        broken = [
            jump(BPF_JMP | BPF_JEQ | BPF_K, 0, 5, 0),
            stmt(BPF_RET | BPF_K, 0),
        ]
        exc = self.assertRaises(OSError, attach_filter, self.receiver, broken)
        self.assertEqual(exc.errno, errno.EINVAL)
        self.assertIn("SO_ATTACH_FILTER", str(exc))

    def test_emptyProgramRaisesValueError(self) -> None:
        """
        An empty program is refused before reaching the kernel.
        """
        self.assertRaises(ValueError, attach_filter, self.receiver, [])

    def test_attachReplacesPreviousFilter(self) -> None:
        """
        Attaching again replaces the filter (it is not locked).
        """
        attach_filter(self.receiver, self.rejectAll())
        attach_filter(
            self.receiver, capture_filter(socket.AF_INET, PORT, "dst")
        )
        packet = ipv4(tcp())
        self.sender.send(packet)
        self.assertEqual(self.receiveAll(), [packet])

    def test_detachLetsEverythingThrough(self) -> None:
        """
        After L{detach_filter} the socket receives everything again.
        """
        attach_filter(self.receiver, self.rejectAll())
        self.sender.send(b"dropped")
        detach_filter(self.receiver)
        self.sender.send(b"kept")
        self.assertEqual(self.receiveAll(), [b"kept"])

    def test_detachWithoutFilterIsNoOp(self) -> None:
        """
        Detaching from a socket with no filter does nothing.
        """
        detach_filter(self.receiver)
        self.sender.send(b"kept")
        self.assertEqual(self.receiveAll(), [b"kept"])


# Run inside a fresh network namespace: capture on lo with AF_PACKET while a
# TCP connection attempt goes to a closed port, once through the filter and
# once unfiltered as a control.  Prints JSON: for each family, the packet
# types (and destination ports) the filtered socket got, and the packet types
# of the unfiltered socket's copies of the SYN.
_PACKET_SOCKET_CHECK = r"""
import importlib.util, json, select, socket, struct, sys

spec = importlib.util.spec_from_file_location("bpf_under_test", sys.argv[1])
bpf = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bpf)
port = int(sys.argv[2])
ETH_P_ALL = 3

def packet_socket():
    s = socket.socket(
        socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL)
    )
    s.bind(("lo", 0))
    return s

def drain(s):
    seen = []
    while select.select([s], [], [], 0.3)[0]:
        data, address = s.recvfrom(65536)
        seen.append((data, address[2]))
    s.close()
    return seen

def tcp_dport(data):
    if data and data[0] >> 4 == 4 and data[9] == 6:
        start = (data[0] & 0xF) * 4
    elif data and data[0] >> 4 == 6 and data[6] == 6:
        start = 40
    else:
        return None
    return struct.unpack_from("!H", data, start + 2)[0]

result = {}
for name, family, host in (
    ("ipv4", socket.AF_INET, "127.0.0.1"),
    ("ipv6", socket.AF_INET6, "::1"),
):
    captured = packet_socket()
    bpf.attach_filter(captured, bpf.capture_filter(family, port, "dst"))
    control = packet_socket()
    client = socket.socket(family, socket.SOCK_STREAM)
    client.settimeout(5)
    try:
        client.connect((host, port))
    except ConnectionRefusedError:
        pass
    client.close()
    result[name] = {
        "captured": [[t, tcp_dport(d)] for d, t in drain(captured)],
        "control": sorted(
            t for d, t in drain(control) if tcp_dport(d) == port
        ),
    }
print(json.dumps(result))
"""


class PacketSocketTests(SynchronousTestCase):
    """
    On a real C{AF_PACKET} capture socket, the filter sees a packet this
    host sends over loopback once, not twice.
    """

    def test_loopbackSegmentCapturedOnce(self) -> None:
        """
        A SYN to a closed port on lo reaches an unfiltered packet socket
        twice (C{PACKET_OUTGOING} and C{PACKET_HOST}), but the filtered one
        only as C{PACKET_HOST}; the RST from the port is not captured in
        C{"dst"} mode.
        """
        if os.geteuid() != 0:
            raise SkipTest("needs root (CAP_NET_RAW) for AF_PACKET")
        ip = shutil.which("ip")
        if ip is None:
            raise SkipTest("needs the ip command for a network namespace")
        namespace = f"ftt-bpf-{os.getpid()}"
        added = subprocess.run(
            [ip, "netns", "add", namespace], capture_output=True, text=True
        )
        if added.returncode != 0:
            raise SkipTest(f"cannot add a network namespace: {added.stderr}")
        self.addCleanup(
            subprocess.run,
            [ip, "netns", "delete", namespace],
            capture_output=True,
        )
        subprocess.run(
            [ip, "netns", "exec", namespace, ip, "link", "set", "lo", "up"],
            check=True,
            capture_output=True,
        )
        run = subprocess.run(
            [
                ip, "netns", "exec", namespace,
                sys.executable, "-c", _PACKET_SOCKET_CHECK,
                bpf.__file__, str(PORT),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(run.returncode, 0, run.stderr)
        host, outgoing = socket.PACKET_HOST, socket.PACKET_OUTGOING
        expected = {
            "captured": [[host, PORT]],
            "control": sorted([host, outgoing]),
        }
        self.assertEqual(
            json.loads(run.stdout), {"ipv4": expected, "ipv6": expected}
        )
