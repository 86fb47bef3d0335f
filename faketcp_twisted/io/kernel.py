# -*- test-case-name: tests.test_integration -*-
"""
The kernel's TCP socket of each flow: made to do the real handshake, then
silenced and kept open so it never answers the fake segments with RST.

Silencing has two layers.  The socket carries a firewall mark from birth
(a listener's mark is inherited by every accepted socket), and one OUTPUT
rule drops every marked segment that is not a SYN, so no kernel ACK or RST
escapes even in the instant between the handshake and the next step.  The
TTL (hop limit) is then set to 1, so that without the rule (an operator who
manages rules by hand, say) such a segment still dies at the first router.

A connection goes back to the kernel with L{unsilence} (a keyed port's
fallback, L{faketcp_twisted.engine.fallback}), or ends with the kernel's
own RST with L{reset}.
"""

from __future__ import annotations

import errno
import os
import resource
import socket
import struct
from collections.abc import Callable
from typing import NamedTuple

from ..core.bpf import detach_filter
from ..core.segment import TIMESTAMP_OPTION_BYTES

#: struct tcp_info offsets (linux/tcp.h): options byte, the two 4-bit window
#: scale fields, the send MSS, and the advertised MSS.
_TCPI_OPTIONS = 5
_TCPI_WSCALE = 6
_TCPI_SND_MSS = 16
_TCPI_ADVMSS = 84
_TCPI_OPT_TIMESTAMPS = 1
_TCPI_OPT_WSCALE = 4
#: The connection's timestamps tick in microseconds (Linux 6.7 and later,
#: where a route asks for it), not milliseconds.
_TCPI_OPT_USEC_TS = 64
_TCP_INFO_SIZE = 104
#: getsockopt(IPPROTO_TCP, TCP_TIMESTAMP): the TSval the socket would send
#: now (its clock plus its random per-connection offset).
TCP_TIMESTAMP = 24

#: The size of the TCP timestamp option as the kernel pads it (NOP, NOP,
#: TS); the kernel's MSS excludes it.
TIMESTAMP_OPTION = TIMESTAMP_OPTION_BYTES

IPV6_UNICAST_HOPS = getattr(socket, "IPV6_UNICAST_HOPS", 16)


class KernelTCPInfo(NamedTuple):
    """
    What the kernel negotiated in the handshake.

    @ivar mss: the largest payload of an option-less segment toward the peer
        (a segment with timestamps carries L{TIMESTAMP_OPTION} bytes less).
    @ivar send_wscale: the peer's window scale shift.
    @ivar receive_wscale: this side's window scale shift.
    @ivar timestamps: whether the handshake agreed on TCP timestamps.
    @ivar timestamp_rate: the ticks per second of this side's TSval (1000,
        or a million where the connection uses microsecond timestamps).
    """

    mss: int
    send_wscale: int
    receive_wscale: int
    timestamps: bool = False
    timestamp_rate: float = 1000.0


_CAP_NET_ADMIN = 12
_CAP_NET_RAW = 13


def has_privileges() -> bool:
    """
    Whether this process holds CAP_NET_RAW and CAP_NET_ADMIN (raw sockets,
    socket marks, firewall rules).
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    effective = int(line.split()[1], 16)
                    needed = (1 << _CAP_NET_ADMIN) | (1 << _CAP_NET_RAW)
                    return effective & needed == needed
    except OSError:
        pass
    return os.geteuid() == 0


def require_privileges(error: Callable[[], Exception]) -> None:
    """
    Raise C{error()} unless the process may use raw sockets and rules.
    """
    if not has_privileges():
        raise error()


def kernel_tcp_info(sock: socket.socket) -> KernelTCPInfo:
    """
    Read the MSS, window scaling and timestamps of a connected socket from
    TCP_INFO.
    """
    raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
    options = raw[_TCPI_OPTIONS]
    (snd_mss,) = struct.unpack_from("=I", raw, _TCPI_SND_MSS)
    timestamps = bool(options & _TCPI_OPT_TIMESTAMPS)
    mss = snd_mss + (TIMESTAMP_OPTION if timestamps else 0)
    if options & _TCPI_OPT_WSCALE:
        scales = raw[_TCPI_WSCALE]
        send_wscale, receive_wscale = scales & 0x0F, scales >> 4
    else:
        send_wscale = receive_wscale = 0
    rate = 1e6 if options & _TCPI_OPT_USEC_TS else 1000.0
    return KernelTCPInfo(mss, send_wscale, receive_wscale, timestamps, rate)


def current_timestamp(sock: socket.socket) -> int:
    """
    The TSval the kernel would put on the socket's next segment: fake
    segments continue the kernel's connection from it, at the same rate.

    Since Linux 6.7 the low bit of the value the kernel gives says whether
    the connection's timestamps tick in microseconds, so a millisecond
    value arrives rounded down to even: up to one tick behind what the
    kernel put on the wire a moment ago (helper-4's captures showed TSval
    going back by one at adoption).  One tick more is never behind, and a
    tick ahead is what the next segment would carry anyway.
    """
    return (sock.getsockopt(socket.IPPROTO_TCP, TCP_TIMESTAMP) + 1) & 0xFFFFFFFF


def handshake_window_field() -> int:
    """
    The window field of the handshake's last ACK, which a client's capture
    sends in the kernel's stead (see L{faketcp_twisted.core.table}): about the
    64 KiB a fresh Linux socket advertises, in the window scale the kernel
    offered in its SYN.  The kernel picks that scale from the largest
    receive buffer allowed (C{tcp_select_initial_window}), so the same
    reckoning gives it here; a window this small only grows when the flow
    announces its own, never shrinks (the right edge never moves left).
    """
    space = 0
    try:
        with open("/proc/sys/net/ipv4/tcp_rmem") as rmem:
            space = int(rmem.read().split()[2])
        with open("/proc/sys/net/core/rmem_max") as rmem_max:
            space = max(space, int(rmem_max.read()))
    except (OSError, ValueError, IndexError):
        pass
    scale = 0
    while space > 0xFFFF and scale < 14:
        space >>= 1
        scale += 1
    return max(0xFFFF >> scale, 1)


def stream_socket(family: int, mark: int) -> socket.socket:
    """
    A non-blocking TCP socket carrying the silencing mark.
    """
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def silence(sock: socket.socket) -> None:
    """
    Give the socket's segments a TTL (hop limit) of 1.
    """
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_UNICAST_HOPS, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 1)


def unsilence(sock: socket.socket) -> None:
    """
    Give a silenced, muted kernel socket back to the kernel: no firewall
    mark (the silencing rule lets its segments pass), the default TTL and
    hop limit, no socket filter, and a receive buffer a real connection
    can use.  The connection then goes on as the kernel's own, from the
    numbers of its handshake.

    The filter goes last: a segment the kernel took before the mark and
    TTL were back would be answered by an ACK that goes nowhere.

    @raise OSError: the kernel refused one of the options (the socket may
        then be half given back; the caller closes it).
    """
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, 0)
    # -1 is "the system default" for both (ip(7), ipv6(7)).
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_UNICAST_HOPS, -1)
        try:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, -1)
        except OSError:
            pass  # an IPv6-only socket
    else:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, -1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, default_receive_buffer())
    detach_filter(sock)


def reset(sock: socket.socket) -> None:
    """
    Close a silenced kernel socket with a RST that reaches its peer (the
    kernel's own, with the connection's real numbers).
    """
    try:
        unsilence(sock)
    except OSError:
        pass  # the RST may then be silenced; the socket goes anyway
    close_abortively(sock)


def default_receive_buffer() -> int:
    """
    The receive buffer the kernel gives a new TCP socket (the middle value
    of C{net.ipv4.tcp_rmem}), or 128 KiB where it cannot be read.
    """
    try:
        with open("/proc/sys/net/ipv4/tcp_rmem") as rmem:
            return int(rmem.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 128 * 1024


def drain(sock: socket.socket, budget: int = 64) -> bool:
    """
    Read and discard what the kernel queued on a silenced socket.

    @return: C{False} when the socket is finished (EOF or an error such as
        a reset), C{True} otherwise.
    """
    for _ in range(budget):
        try:
            if not sock.recv(1 << 20):
                return False
        except BlockingIOError:
            return True
        except OSError:
            return False
    return True


def close_silently(sock: socket.socket) -> None:
    """
    Close a kernel socket at once, without FIN_WAIT or TIME_WAIT.

    A zero linger makes the close abortive: the kernel sends a RST (marked,
    so the silencing rule drops it) and frees the socket now, instead of
    leaving a FIN_WAIT socket retransmitting FINs (the kernel-socket leak
    tcpraw has).  The caller must close sockets before removing the rule.
    """
    close_abortively(sock)


def close_abortively(sock: socket.socket) -> None:
    """
    Close a TCP socket at once with a RST (a zero linger), whatever it
    still had to send.
    """
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


def connect_error_name(code: int) -> str:
    """
    The short name of a connect errno, for error messages.
    """
    return errno.errorcode.get(code, str(code))


def ensure_open_files(wanted: int) -> int:
    """
    Raise this process's descriptor limit (RLIMIT_NOFILE) to C{wanted} if
    it is lower: the soft limit up to the hard one, and with privileges
    (CAP_SYS_RESOURCE) the hard one too, up to the kernel's C{fs.nr_open}.

    Every flow holds its kernel socket open, and a relay server flow a UDP
    socket besides, so the usual soft limit of 1024 (or a hard limit of a
    few thousand) would refuse flows long before memory runs short.

    @return: the soft limit now in force, which may still be lower than
        C{wanted} (the caller says so).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if wanted <= soft:
        return soft
    infinity = resource.RLIM_INFINITY
    if hard != infinity and wanted > hard:
        try:
            with open("/proc/sys/fs/nr_open") as f:
                ceiling = int(f.read())
        except (OSError, ValueError):
            ceiling = wanted
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, ceiling), min(wanted, ceiling)))
            return min(wanted, ceiling)
        except (OSError, ValueError):
            pass  # unprivileged: the hard limit stands
    target = wanted if hard == infinity else min(wanted, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError):
        return soft
    return target
