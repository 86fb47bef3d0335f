# -*- test-case-name: tests.test_bpf -*-
"""
Classic BPF socket filters for the capture socket.

The capture socket (C{AF_PACKET}/C{SOCK_DGRAM}, so every packet starts at the
IP header) would otherwise copy every IP packet on the interface into user
space, where Python would throw nearly all of them away.  A kernel-side
filter keeps only TCP segments to (server) or from (client) our port, and
drops the C{PACKET_OUTGOING} copy a packet socket also sees of what this host
sends, so nothing reaches the protocol twice.

The module holds a tiny assembler (L{Instruction}, L{Program}, with symbolic
jump labels), the filter itself (L{capture_filter}) and the C{setsockopt}
plumbing to install and remove it (L{attach_filter}, L{detach_filter}).
Only the standard library is used.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import socket
import struct
from collections.abc import Sequence
from typing import NamedTuple

# Instruction classes (the low three bits of the opcode).
BPF_LD = 0x00
BPF_LDX = 0x01
BPF_ALU = 0x04
BPF_JMP = 0x05
BPF_RET = 0x06

# Load sizes.
BPF_W = 0x00
BPF_H = 0x08
BPF_B = 0x10

# Load modes.
BPF_IMM = 0x00
BPF_ABS = 0x20
BPF_IND = 0x40
BPF_MSH = 0xA0

# ALU operations.
BPF_AND = 0x50

# Jump conditions.
BPF_JA = 0x00
BPF_JEQ = 0x10
BPF_JSET = 0x40

# Operand source: the immediate C{k} (as opposed to C{BPF_X}, the X register).
BPF_K = 0x00
BPF_X = 0x08

# Ancillary data: loads at negative offsets read packet metadata instead of
# packet bytes (include/uapi/linux/filter.h).
SKF_AD_OFF = -0x1000
SKF_AD_PKTTYPE = 4

# skb->pkt_type of the copy a packet socket sees of a packet this host sends.
PACKET_OUTGOING = 4

# Socket options from asm-generic/socket.h; Python's socket module lacks them.
SO_ATTACH_FILTER = 26
SO_DETACH_FILTER = 27

# The kernel refuses longer classic programs (BPF_MAXINSNS).
BPF_MAXINSNS = 4096

# How much of an accepted packet to keep: more than any IP packet, so "keep
# the whole packet" in practice.
ACCEPT = 0x40000
REJECT = 0

_SOCK_FILTER = struct.Struct("HBBI")


class Instruction(NamedTuple):
    """
    One C{struct sock_filter}: a classic BPF instruction.

    @ivar code: the opcode (class | size | mode, or class | op | source).
    @ivar jt: for conditional jumps, how many instructions to skip when true.
    @ivar jf: for conditional jumps, how many instructions to skip when false.
    @ivar k: the 32-bit unsigned operand.
    """

    code: int
    jt: int
    jf: int
    k: int


def _u32(k: int) -> int:
    """
    Turn an operand into the unsigned 32-bit value C{struct sock_filter}
    holds, so negative ancillary offsets like C{SKF_AD_OFF + 4} can be
    written naturally.

    @param k: an operand in the range [-2**31, 2**32).
    @return: C{k} modulo 2**32.
    @raise ValueError: if C{k} does not fit in 32 bits.
    """
    if not -(2**31) <= k < 2**32:
        raise ValueError(f"BPF operand {k!r} does not fit in 32 bits")
    return k & 0xFFFFFFFF


def stmt(code: int, k: int = 0) -> Instruction:
    """
    Build a non-jump instruction (the C{BPF_STMT} macro).

    @param code: the opcode.
    @param k: the operand; negative values are stored two's complement.
    @return: the instruction.
    """
    return Instruction(code, 0, 0, _u32(k))


def jump(code: int, k: int, jt: int, jf: int) -> Instruction:
    """
    Build a jump with numeric relative offsets (the C{BPF_JUMP} macro).

    @param code: the opcode.
    @param k: the value compared against.
    @param jt: instructions to skip when the condition holds (0-255).
    @param jf: instructions to skip when it does not (0-255).
    @return: the instruction.
    @raise ValueError: if an offset does not fit in a byte.
    """
    for offset in (jt, jf):
        if not 0 <= offset <= 255:
            raise ValueError(f"BPF jump offset {offset} is not in 0..255")
    return Instruction(code, jt, jf, _u32(k))


def pack(instructions: Sequence[Instruction]) -> bytes:
    """
    Serialise instructions as an array of C{struct sock_filter}.

    @param instructions: the program.
    @return: the bytes the kernel expects, in native byte order.
    """
    return b"".join(_SOCK_FILTER.pack(*insn) for insn in instructions)


class _Jump(NamedTuple):
    """
    A conditional jump whose targets are still label names.

    @ivar code: the opcode.
    @ivar k: the (already 32-bit) operand.
    @ivar jt: the label jumped to when true, or L{None} for the next one.
    @ivar jf: the label jumped to when false, or L{None} for the next one.
    """

    code: int
    k: int
    jt: str | None
    jf: str | None


class Program:
    """
    A classic BPF program under construction, with named jump targets.

    Counting relative offsets by hand is how filters get subtly broken when
    an instruction is added; here jumps name labels and L{assemble} counts::

        p = Program()
        p.stmt(BPF_LD | BPF_B | BPF_ABS, 9)
        p.jump(BPF_JMP | BPF_JEQ | BPF_K, 6, jf="reject")
        p.stmt(BPF_RET | BPF_K, ACCEPT)
        p.label("reject")
        p.stmt(BPF_RET | BPF_K, 0)
    """

    def __init__(self) -> None:
        self._items: list[Instruction | _Jump] = []
        self._labels: dict[str, int] = {}

    def __len__(self) -> int:
        """
        @return: the number of instructions emitted so far.
        """
        return len(self._items)

    def label(self, name: str) -> None:
        """
        Name the next instruction emitted.

        @param name: the label; several labels may name one instruction.
        @raise ValueError: if the label is already defined.
        """
        if name in self._labels:
            raise ValueError(f"BPF label {name!r} defined twice")
        self._labels[name] = len(self._items)

    def stmt(self, code: int, k: int = 0) -> None:
        """
        Emit a non-jump instruction.

        @param code: the opcode.
        @param k: the operand; negative values are stored two's complement.
        """
        self._items.append(stmt(code, k))

    def jump(
        self, code: int, k: int, jt: str | None = None, jf: str | None = None
    ) -> None:
        """
        Emit a conditional jump to labels defined later.

        @param code: the opcode (C{BPF_JMP | condition | BPF_K}).
        @param k: the value compared against.
        @param jt: the label to go to when the condition holds; L{None}
            falls through to the next instruction.
        @param jf: the label to go to when it does not; L{None} falls
            through.
        """
        self._items.append(_Jump(code, _u32(k), jt, jf))

    def _offset(self, index: int, target: str | None) -> int:
        """
        Resolve a jump target to the relative offset classic BPF wants.

        @param index: the position of the jump instruction.
        @param target: the label name, or L{None} for fall-through.
        @return: how many instructions to skip (0-255).
        @raise ValueError: if the label is unknown, does not come after the
            jump, names no instruction, or is more than 255 ahead.
        """
        if target is None:
            return 0
        try:
            destination = self._labels[target]
        except KeyError:
            raise ValueError(f"unknown BPF label {target!r}") from None
        if destination >= len(self._items):
            raise ValueError(f"BPF label {target!r} names no instruction")
        # Classic BPF only jumps forward (that is how the kernel knows every
        # program terminates), and the offset counts from the next insn.
        offset = destination - index - 1
        if offset < 0:
            raise ValueError(
                f"BPF jump at {index} to label {target!r} goes backwards"
            )
        if offset > 255:
            raise ValueError(
                f"BPF jump at {index} to label {target!r} is {offset} "
                "instructions away; at most 255 fit in jt/jf"
            )
        return offset

    def assemble(self) -> list[Instruction]:
        """
        Resolve labels into relative jump offsets.

        @return: the finished instructions.
        @raise ValueError: on an unknown label, a backwards jump, a jump
            further than 255 instructions, or a label after the last
            instruction.
        """
        program: list[Instruction] = []
        for index, item in enumerate(self._items):
            if isinstance(item, _Jump):
                item = Instruction(
                    item.code,
                    self._offset(index, item.jt),
                    self._offset(index, item.jf),
                    item.k,
                )
            program.append(item)
        return program

    def to_bytes(self) -> bytes:
        """
        Assemble and serialise as an array of C{struct sock_filter}.

        @return: the bytes the kernel expects, in native byte order.
        @raise ValueError: as L{assemble}.
        """
        return pack(self.assemble())


def capture_filter(family: int, port: int, match: str) -> list[Instruction]:
    """
    Build the filter for a capture socket that sees packets from the IP header
    on (C{AF_PACKET}, C{SOCK_DGRAM}).

    Accepted are TCP segments of the given family whose destination
    (C{match="dst"}, a server) or source (C{match="src"}, a client) port is
    C{port}, except the C{PACKET_OUTGOING} copies of packets this host sends,
    which would otherwise be seen a second time on loopback.  IPv4 fragments
    and IPv6 packets with extension headers are refused: the TCP port is not
    where the filter looks in them, and nothing this project sends makes
    them.  Packets too short to hold the port are refused too (an
    out-of-bounds load ends a classic program with 0).

    @param family: C{socket.AF_INET} or C{socket.AF_INET6}.
    @param port: the TCP port, 0-65535.
    @param match: C{"dst"} or C{"src"}: which port of the segment to compare.
    @return: the program's instructions.
    @raise ValueError: on an unknown family or match or an out-of-range port.
    """
    if family not in (socket.AF_INET, socket.AF_INET6):
        raise ValueError(f"unsupported address family {family!r}")
    if match not in ("src", "dst"):
        raise ValueError(f"match must be 'src' or 'dst', not {match!r}")
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port {port!r} is not in 0..65535")
    # Offset of the port field within the TCP header.
    port_offset = 0 if match == "src" else 2

    p = Program()
    # A packet socket sees what this host sends as PACKET_OUTGOING as well;
    # on loopback the same packet then comes back in as PACKET_HOST.  Keep
    # only the incoming copy.
    p.stmt(BPF_LD | BPF_B | BPF_ABS, SKF_AD_OFF + SKF_AD_PKTTYPE)
    p.jump(BPF_JMP | BPF_JEQ | BPF_K, PACKET_OUTGOING, jt="reject")
    # The version nibble, so that a socket bound to ETH_P_ALL (or a packet
    # with a wrong protocol tag) is not misparsed as the other family.
    p.stmt(BPF_LD | BPF_B | BPF_ABS, 0)
    p.stmt(BPF_ALU | BPF_AND | BPF_K, 0xF0)
    if family == socket.AF_INET:
        p.jump(BPF_JMP | BPF_JEQ | BPF_K, 0x40, jf="reject")
        p.stmt(BPF_LD | BPF_B | BPF_ABS, 9)  # protocol
        p.jump(BPF_JMP | BPF_JEQ | BPF_K, socket.IPPROTO_TCP, jf="reject")
        # Any fragment (more-fragments set or a non-zero offset) either
        # lacks the TCP header or has it somewhere we would not look.
        p.stmt(BPF_LD | BPF_H | BPF_ABS, 6)
        p.jump(BPF_JMP | BPF_JSET | BPF_K, 0x3FFF, jt="reject")
        # X = 4 * IHL: where TCP starts, past any IP options.
        p.stmt(BPF_LDX | BPF_B | BPF_MSH, 0)
        p.stmt(BPF_LD | BPF_H | BPF_IND, port_offset)
    else:
        p.jump(BPF_JMP | BPF_JEQ | BPF_K, 0x60, jf="reject")
        # Next header straight after the fixed header must be TCP; walking
        # extension headers is not worth it for traffic we never produce.
        p.stmt(BPF_LD | BPF_B | BPF_ABS, 6)
        p.jump(BPF_JMP | BPF_JEQ | BPF_K, socket.IPPROTO_TCP, jf="reject")
        p.stmt(BPF_LD | BPF_H | BPF_ABS, 40 + port_offset)
    p.jump(BPF_JMP | BPF_JEQ | BPF_K, port, jf="reject")
    p.stmt(BPF_RET | BPF_K, ACCEPT)
    p.label("reject")
    p.stmt(BPF_RET | BPF_K, REJECT)
    return p.assemble()


class _SockFprog(ctypes.Structure):
    """
    C{struct sock_fprog}: the length and address of a filter array.
    """

    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _instructions(
    program: Program | Sequence[Instruction],
) -> list[Instruction]:
    """
    Accept either a builder or already assembled instructions.

    @param program: a L{Program} or a sequence of L{Instruction}.
    @return: the instructions.
    """
    if isinstance(program, Program):
        return program.assemble()
    return list(program)


def attach_filter(
    sock: socket.socket, program: Program | Sequence[Instruction]
) -> None:
    """
    Install a classic BPF filter on a socket (C{SO_ATTACH_FILTER}).

    The filter replaces any previous one and is not locked, so it can be
    swapped or removed later.  Packets queued before the call are not
    filtered retroactively.

    @param sock: the socket to filter.
    @param program: a L{Program} or a sequence of L{Instruction}.
    @raise ValueError: if the program is empty or longer than the kernel
        allows (or, for a L{Program}, does not assemble).
    @raise OSError: if the kernel rejects the program or the socket.
    """
    instructions = _instructions(program)
    if not 0 < len(instructions) <= BPF_MAXINSNS:
        raise ValueError(
            f"a BPF program needs 1..{BPF_MAXINSNS} instructions, "
            f"not {len(instructions)}"
        )
    data = pack(instructions)
    # The kernel copies the array during setsockopt; this name keeps the
    # buffer alive until then, since sock_fprog only holds its address.
    buffer = ctypes.create_string_buffer(data, len(data))
    fprog = _SockFprog(len(instructions), ctypes.addressof(buffer))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(fprog))
    except OSError as e:
        raise OSError(
            e.errno,
            f"kernel rejected BPF filter of {len(instructions)} "
            f"instructions (SO_ATTACH_FILTER): {e.strerror}",
        ) from e


def detach_filter(sock: socket.socket) -> None:
    """
    Remove a socket's filter (C{SO_DETACH_FILTER}); a no-op if it has none.

    @param sock: the socket.
    @raise OSError: if the kernel refuses (other than for a missing filter).
    """
    try:
        # The value is ignored, but the kernel wants at least an int's worth.
        sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
    except OSError as e:
        if e.errno != _errno.ENOENT:
            raise
