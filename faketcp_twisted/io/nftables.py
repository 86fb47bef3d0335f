# -*- test-case-name: tests.test_nftables -*-
"""
The silencing rules on nftables: one table per process and network
namespace, owned by the netlink socket that made it.

A table created with the owner flag (C{NFT_TABLE_F_OWNER}, Linux 5.12 and
later) belongs to the netlink socket that created it.  Only that socket may
change it, and the kernel deletes it the moment the socket closes, also when
the process is killed: nothing is left behind for a later start to sweep.

The rules mean what the iptables rules of L{faketcp_twisted.io.firewall}
mean: drop every outgoing TCP segment without SYN from a kernel socket that
carries the mark, per listening port (a server) or per destination address
and port (a client), IPv4 and IPv6 alike.  One table of family C{inet}
holds both families, with one base chain on the output hook::

    table inet faketcp_twisted_PID {
        chain output {
            type filter hook output priority 0; policy accept;
            meta mark 0x46540000 meta nfproto ipv4 tcp sport 9191 tcp flags & syn == 0 drop
            meta mark 0x46540000 ip6 daddr 2001:2::2 tcp dport 9191 tcp flags & syn == 0 drop
        }
    }

Each change is one netlink batch on a plain blocking netlink socket of our
own, answered synchronously by the kernel.  Not pyroute2's
L{NFTables<pyroute2.nftables.main.NFTables>}: it drives its socket with an
asyncio event loop of its own and fails inside a running one (the asyncio
reactor), and its C{table("add", flags=...)} takes C{flags} as the netlink
header's flags, so it cannot set the owner flag.  Nor pyroute2's message
classes: every message (table, chain, rules, the probes that explain a
refusal) is encoded here, by a few lines of struct packing, and the module
imports nothing beyond the standard library.  Importing pyroute2 costs about
170 ms, which the first connection of a process would pay; its generic
attribute encoder takes about 2 ms of CPU for a rule of 14 expressions, this
one about 70 us.  tests.test_nftables checks that both give the same bytes.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    # Only for annotations: firewall.py is to import this module as one of
    # its backends, and a run-time import back would be a cycle.
    from faketcp_twisted.io.firewall import SilenceRule

__all__ = [
    "CHAIN",
    "TABLE_PREFIX",
    "NftablesUnavailable",
    "OwnedTable",
    "describe",
    "describe_table",
]

#: The table name's prefix; an owned table adds C{_PID}.
TABLE_PREFIX: Final = "faketcp_twisted"
#: The base chain every table holds.
CHAIN: Final = "output"

# Constants of the kernel's uapi (linux/netlink.h, linux/netfilter.h,
# linux/netfilter/nfnetlink.h, linux/netfilter/nf_tables.h), spelled here
# because the messages are encoded without pyroute2.  tests.test_nftables
# checks them against pyroute2's definitions where it has one (the owner
# flag, the output hook's number and the batch markers it has not; the
# latter are literals in its code), and the encoded messages byte for byte
# against pyroute2's encoding.
NETLINK_NETFILTER: Final = 12
NFT_TABLE_F_OWNER: Final = 0x2
NFNL_MSG_BATCH_BEGIN: Final = 0x10  # NLMSG_MIN_TYPE
NFNL_MSG_BATCH_END: Final = 0x11
NFNL_SUBSYS_NFTABLES: Final = 10
NFT_MSG_NEWTABLE: Final = 0
NFT_MSG_GETTABLE: Final = 1
NFT_MSG_NEWCHAIN: Final = 3
NFT_MSG_NEWRULE: Final = 6
NFT_MSG_DELRULE: Final = 8
NFT_MSG_GETGEN: Final = 16
NFPROTO_INET: Final = 1
NFPROTO_IPV4: Final = 2
NFPROTO_IPV6: Final = 10
NLM_F_REQUEST: Final = 0x1
NLM_F_ACK: Final = 0x4
NLM_F_ECHO: Final = 0x8
NLM_F_APPEND: Final = 0x800
NLM_F_EXCL: Final = 0x200
NLM_F_CREATE: Final = 0x400
NFT_REG_VERDICT: Final = 0
NFT_REG_1: Final = 1
NFT_CMP_EQ: Final = 0
NFT_META_MARK: Final = 3
NFT_META_NFPROTO: Final = 15
NFT_META_L4PROTO: Final = 16
# Attribute numbers of the messages encoded here.
NFTA_TABLE_NAME: Final = 1
NFTA_TABLE_FLAGS: Final = 2
NFTA_CHAIN_TABLE: Final = 1
NFTA_CHAIN_NAME: Final = 3
NFTA_CHAIN_HOOK: Final = 4
NFTA_CHAIN_POLICY: Final = 5
NFTA_CHAIN_TYPE: Final = 7
NFTA_HOOK_HOOKNUM: Final = 1
NFTA_HOOK_PRIORITY: Final = 2
NFTA_RULE_TABLE: Final = 1
NFTA_RULE_CHAIN: Final = 2
NFTA_RULE_HANDLE: Final = 3
NFTA_RULE_EXPRESSIONS: Final = 4
NFTA_LIST_ELEM: Final = 1
NFTA_EXPR_NAME: Final = 1
NFTA_EXPR_DATA: Final = 2
NFTA_DATA_VALUE: Final = 1
NFTA_DATA_VERDICT: Final = 2
NFTA_VERDICT_CODE: Final = 1
NFTA_META_DREG: Final = 1
NFTA_META_KEY: Final = 2
NFTA_CMP_SREG: Final = 1
NFTA_CMP_OP: Final = 2
NFTA_CMP_DATA: Final = 3
NFTA_PAYLOAD_DREG: Final = 1
NFTA_PAYLOAD_BASE: Final = 2
NFTA_PAYLOAD_OFFSET: Final = 3
NFTA_PAYLOAD_LEN: Final = 4
NFTA_BITWISE_SREG: Final = 1
NFTA_BITWISE_DREG: Final = 2
NFTA_BITWISE_LEN: Final = 3
NFTA_BITWISE_MASK: Final = 4
NFTA_BITWISE_XOR: Final = 5
NFTA_IMMEDIATE_DREG: Final = 1
NFTA_IMMEDIATE_DATA: Final = 2
NLA_TYPE_MASK: Final = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER
NF_INET_LOCAL_OUT: Final = 3  # the output hook
NF_DROP: Final = 0
NF_ACCEPT: Final = 1
NFT_PAYLOAD_NETWORK_HEADER: Final = 1
NFT_PAYLOAD_TRANSPORT_HEADER: Final = 2
NFPROTO_UNSPEC: Final = 0
NFNETLINK_V0: Final = 0
NLMSG_ERROR: Final = 2
NLMSG_DONE: Final = 3
SOL_NETLINK: Final = 270
NETLINK_CAP_ACK: Final = 10  # acks without a copy of the request
TCP_FLAG_SYN: Final = 0x02
TCP_FLAGS_OFFSET: Final = 13

_NLMSGHDR: Final = struct.Struct("=IHHII")
_NFGENMSG: Final = struct.Struct("!BBH")
_NLATTR: Final = struct.Struct("=HH")
_REPLY_TIMEOUT: Final = 5


class NftablesUnavailable(RuntimeError):
    """
    nftables cannot be used here: its one-line message says what is missing
    and how to get it.
    """


def _kernel_release() -> tuple[int, int]:
    parts = os.uname().release.split(".")
    try:
        return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)
    except (IndexError, ValueError):
        return (0, 0)


def _explain(
    stage: str, code: int, nf_tables: bool, release: tuple[int, int], exists: bool = False, name: str = "?"
) -> RuntimeError:
    """
    Turn the errno of a failed step into the error to raise.

    @param stage: C{"socket"} (opening the netlink socket), C{"table"}
        (creating the owned table and its chain) or another step's name.
    @param code: the errno.
    @param nf_tables: whether the kernel answers nf_tables requests at all.
    @param release: the kernel's (major, minor) release.
    @param exists: whether a table of the name exists already (a table
        owned by another socket is refused with C{EPERM}).
    @param name: the table's name.
    @return: an L{NftablesUnavailable} for what the host lacks, a
        L{RuntimeError} for anything else.
    """
    if stage == "socket" and code in (errno.EPROTONOSUPPORT, errno.EAFNOSUPPORT):
        return NftablesUnavailable(
            "the kernel has no nfnetlink (CONFIG_NETFILTER_NETLINK): use a kernel built with nf_tables"
        )
    if stage == "table" and exists:
        return RuntimeError(
            f"the nftables table inet {name} exists already in this network namespace "
            "(another OwnedTable of this process holds it, or it was made by hand)"
        )
    if code == errno.EPERM:
        return NftablesUnavailable(
            "not permitted to change nftables in this network namespace: run as root or with CAP_NET_ADMIN"
        )
    if stage == "table" and not nf_tables:
        return NftablesUnavailable(
            "the kernel has no nf_tables (CONFIG_NF_TABLES): load it with 'modprobe nf_tables' "
            "or use a kernel built with it"
        )
    if stage == "table" and code == errno.EAFNOSUPPORT:
        return NftablesUnavailable(
            "the kernel's nf_tables lacks the inet family (CONFIG_NF_TABLES_INET): use a kernel built with it"
        )
    if stage == "table" and code in (errno.EINVAL, errno.EOPNOTSUPP):
        # Before 5.12 the kernel rejects a table flag it does not know
        # (EINVAL); 5.12 and later answer EOPNOTSUPP to unknown flags.
        return NftablesUnavailable(
            f"the kernel (Linux {release[0]}.{release[1]}) cannot make owned nftables tables "
            "(NFT_TABLE_F_OWNER needs Linux 5.12 or later): upgrade the kernel or use the iptables backend"
        )
    return RuntimeError(f"nftables refused to {stage}: {os.strerror(code)} (errno {code})")


def _rule_family(rule: SilenceRule) -> int:
    if rule.family not in (socket.AF_INET, socket.AF_INET6):
        raise ValueError(f"not an IP address family: {rule.family}")
    if not 0 <= rule.port <= 0xFFFF:
        raise ValueError(f"not a port: {rule.port}")
    if not 0 <= rule.mark <= 0xFFFFFFFF:
        raise ValueError(f"not a 32-bit firewall mark: {rule.mark:#x}")
    return rule.family


def _remote(rule: SilenceRule) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    assert rule.remote is not None
    address = ipaddress.ip_address(rule.remote)
    wanted = 6 if rule.family == socket.AF_INET6 else 4
    if address.version != wanted:
        raise ValueError(f"{rule.remote} is not an IPv{wanted} address")
    return address


def _matches(rule: SilenceRule) -> list[str]:
    """
    The rule's statements in nft syntax, in the order of its expressions.
    """
    family = _rule_family(rule)
    parts = [f"meta mark {rule.mark:#x}"]
    if rule.remote is None:
        # The family is matched although "tcp sport" alone would catch both:
        # an IPv4 rule and an IPv6 rule of one port are separate rules, added
        # and removed on their own, as they are in iptables and ip6tables.
        parts.append("meta nfproto " + ("ipv6" if family == socket.AF_INET6 else "ipv4"))
        parts.append(f"tcp sport {rule.port}")
    else:
        parts.append(("ip6" if family == socket.AF_INET6 else "ip") + f" daddr {_remote(rule)}")
        parts.append(f"tcp dport {rule.port}")
    parts += ["tcp flags & syn == 0", "drop"]
    return parts


def describe(rule: SilenceRule, table: str = TABLE_PREFIX) -> str:
    """
    The rule as an C{nft} command, for an operator who manages the rules
    (C{--print-rules}).

    The statements are quoted for the shell (C{&} would otherwise end the
    command); C{nft} joins its arguments, so the command works as printed.
    Run the lines of L{describe_table} first.

    @param rule: the rule.
    @param table: the table of family C{inet} that holds the chain
        C{output}.  An operator's table must not be named like an owned
        one (C{faketcp_twisted_PID}).
    @raise ValueError: the rule is malformed (address of the other family,
        port or mark out of range).
    @return: for example C{nft add rule inet faketcp_twisted output 'meta
        mark 0x46540000 meta nfproto ipv4 tcp sport 9191 tcp flags & syn ==
        0 drop'}.
    """
    return f"nft add rule inet {table} {CHAIN} '{' '.join(_matches(rule))}'"


def describe_table(table: str = TABLE_PREFIX) -> list[str]:
    """
    The C{nft} commands that create the table and chain the rules of
    L{describe} go in.

    An owned table cannot be made from the command line (it would vanish
    when C{nft} exits), so these make an ordinary table, which stays until
    the operator deletes it.
    """
    return [
        f"nft add table inet {table}",
        f"nft add chain inet {table} {CHAIN} '{{ type filter hook output priority 0; policy accept; }}'",
    ]


# -- the messages, encoded by hand ----------------------------------------------


def _attr(kind: int, payload: bytes) -> bytes:
    # A netlink attribute: length, type, payload, padded to 4 bytes.
    length = _NLATTR.size + len(payload)
    return _NLATTR.pack(length, kind) + payload + b"\0" * (-length % 4)


def _string(kind: int, text: str) -> bytes:
    return _attr(kind, text.encode() + b"\0")


def _be32(kind: int, number: int) -> bytes:
    return _attr(kind, struct.pack("!I", number))


def _expr(name: str, *attributes: bytes) -> bytes:
    return _attr(NFTA_LIST_ELEM, _string(NFTA_EXPR_NAME, name) + _attr(NFTA_EXPR_DATA, b"".join(attributes)))


def _load_meta(key: int) -> bytes:
    return _expr("meta", _be32(NFTA_META_DREG, NFT_REG_1), _be32(NFTA_META_KEY, key))


def _load_payload(base: int, offset: int, length: int) -> bytes:
    return _expr(
        "payload",
        _be32(NFTA_PAYLOAD_DREG, NFT_REG_1),
        _be32(NFTA_PAYLOAD_BASE, base),
        _be32(NFTA_PAYLOAD_OFFSET, offset),
        _be32(NFTA_PAYLOAD_LEN, length),
    )


def _equals(data: bytes) -> bytes:
    return _expr(
        "cmp",
        _be32(NFTA_CMP_SREG, NFT_REG_1),
        _be32(NFTA_CMP_OP, NFT_CMP_EQ),
        _attr(NFTA_CMP_DATA, _attr(NFTA_DATA_VALUE, data)),
    )


def _bitwise_and(mask: bytes) -> bytes:
    return _expr(
        "bitwise",
        _be32(NFTA_BITWISE_SREG, NFT_REG_1),
        _be32(NFTA_BITWISE_DREG, NFT_REG_1),
        _be32(NFTA_BITWISE_LEN, len(mask)),
        _attr(NFTA_BITWISE_MASK, _attr(NFTA_DATA_VALUE, mask)),
        _attr(NFTA_BITWISE_XOR, _attr(NFTA_DATA_VALUE, bytes(len(mask)))),
    )


def _verdict(code: int) -> bytes:
    verdict = _attr(NFTA_DATA_VERDICT, _be32(NFTA_VERDICT_CODE, code))
    return _expr("immediate", _be32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT), _attr(NFTA_IMMEDIATE_DATA, verdict))


def _expressions(rule: SilenceRule) -> bytes:
    """
    The rule's expressions, what C{nft} makes of the statements of
    L{describe} (compare C{nft --debug=netlink add rule ...}): the
    C{NFTA_RULE_EXPRESSIONS} attribute.
    """
    family = _rule_family(rule)
    v6 = family == socket.AF_INET6
    # The mark is a host-order u32 in the register; protocol numbers are
    # one byte; addresses and ports are compared as they are on the wire.
    parts = [_load_meta(NFT_META_MARK), _equals(struct.pack("=I", rule.mark))]
    parts += [_load_meta(NFT_META_NFPROTO), _equals(bytes([NFPROTO_IPV6 if v6 else NFPROTO_IPV4]))]
    if rule.remote is not None:
        # daddr: offset 16 of the IPv4 header, 24 of the IPv6 header.
        address = _remote(rule).packed
        parts += [_load_payload(NFT_PAYLOAD_NETWORK_HEADER, 24 if v6 else 16, len(address)), _equals(address)]
    parts += [_load_meta(NFT_META_L4PROTO), _equals(bytes([socket.IPPROTO_TCP]))]
    # sport at offset 0 of the TCP header, dport at 2.
    port_offset = 0 if rule.remote is None else 2
    parts += [_load_payload(NFT_PAYLOAD_TRANSPORT_HEADER, port_offset, 2), _equals(struct.pack("!H", rule.port))]
    # tcp flags & syn == 0: load the flags byte, keep SYN, compare to 0.
    parts += [
        _load_payload(NFT_PAYLOAD_TRANSPORT_HEADER, TCP_FLAGS_OFFSET, 1),
        _bitwise_and(bytes([TCP_FLAG_SYN])),
        _equals(b"\0"),
        _verdict(NF_DROP),
    ]
    return _attr(NFTA_RULE_EXPRESSIONS, b"".join(parts))


def _message(kind: int, flags: int, sequence: int, family: int, attributes: bytes, res_id: int = 0) -> bytes:
    """
    A netfilter netlink message: header, C{struct nfgenmsg}, attributes.
    """
    length = _NLMSGHDR.size + _NFGENMSG.size + len(attributes)
    header = _NLMSGHDR.pack(length, kind, flags, sequence, 0)
    return header + _NFGENMSG.pack(family, NFNETLINK_V0, res_id) + attributes


def _new_table(name: str, sequence: int) -> bytes:
    # EXCL: a table of that name, ours or not, is an error, not a reuse.
    flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    attributes = _string(NFTA_TABLE_NAME, name) + _be32(NFTA_TABLE_FLAGS, NFT_TABLE_F_OWNER)
    return _message((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWTABLE, flags, sequence, NFPROTO_INET, attributes)


def _new_chain(table: str, sequence: int) -> bytes:
    # The base chain: type filter hook output priority 0; policy accept.
    # The priority is a signed 32-bit number.
    flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    hook = _be32(NFTA_HOOK_HOOKNUM, NF_INET_LOCAL_OUT) + _attr(NFTA_HOOK_PRIORITY, struct.pack("!i", 0))
    attributes = (
        _string(NFTA_CHAIN_TABLE, table)
        + _string(NFTA_CHAIN_NAME, CHAIN)
        + _attr(NFTA_CHAIN_HOOK, hook)
        + _be32(NFTA_CHAIN_POLICY, NF_ACCEPT)
        + _string(NFTA_CHAIN_TYPE, "filter")
    )
    return _message((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWCHAIN, flags, sequence, NFPROTO_INET, attributes)


def _get_table(name: str, sequence: int) -> bytes:
    # A probe: whether a table of that name exists (in family inet).
    attributes = _string(NFTA_TABLE_NAME, name)
    flags = NLM_F_REQUEST | NLM_F_ACK
    return _message((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE, flags, sequence, NFPROTO_INET, attributes)


def _get_generation(sequence: int) -> bytes:
    # A probe: the ruleset's generation, the cheapest nf_tables request.
    flags = NLM_F_REQUEST | NLM_F_ACK
    return _message((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN, flags, sequence, NFPROTO_UNSPEC, b"")


def _new_rule(table: str, rule: SilenceRule, sequence: int) -> bytes:
    # ECHO: the kernel sends the rule back with its handle, which is what
    # deleting it takes.
    flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND | NLM_F_ECHO
    attributes = _string(NFTA_RULE_TABLE, table) + _string(NFTA_RULE_CHAIN, CHAIN) + _expressions(rule)
    return _message((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWRULE, flags, sequence, NFPROTO_INET, attributes)


def _delete_rule(table: str, handle: int, sequence: int) -> bytes:
    attributes = (
        _string(NFTA_RULE_TABLE, table)
        + _string(NFTA_RULE_CHAIN, CHAIN)
        + _attr(NFTA_RULE_HANDLE, struct.pack("!Q", handle))
    )
    flags = NLM_F_REQUEST | NLM_F_ACK
    return _message((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELRULE, flags, sequence, NFPROTO_INET, attributes)


def _batch_marker(kind: int, sequence: int) -> bytes:
    # The batch's begin and end: family unspecified, res_id the subsystem.
    return _message(kind, NLM_F_REQUEST, sequence, NFPROTO_UNSPEC, b"", NFNL_SUBSYS_NFTABLES)


def _rule_handle(message: bytes) -> int | None:
    """
    The C{NFTA_RULE_HANDLE} of a rule message the kernel sent.
    """
    offset = _NLMSGHDR.size + _NFGENMSG.size
    while offset + _NLATTR.size <= len(message):
        length, kind = _NLATTR.unpack_from(message, offset)
        if length < _NLATTR.size:
            break
        if kind & NLA_TYPE_MASK == NFTA_RULE_HANDLE and length == _NLATTR.size + 8:
            return int(struct.unpack_from("!Q", message, offset + _NLATTR.size)[0])
        offset += (length + 3) & ~3
    return None


#: Encodes one message of a batch, given its sequence number.
_Encoder = Callable[[int], bytes]


def _open_socket(protocol: int) -> socket.socket:
    # A plain socket: it lives in the calling thread's network namespace,
    # is close-on-exec (a child that execs does not keep the table alive),
    # and needs no event loop.
    return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol)


class OwnedTable:
    """
    One nftables table of this process in the calling thread's network
    namespace, owned by a netlink socket of its own: the kernel deletes the
    table, with every rule in it, when L{close} closes that socket or the
    process dies.

    The socket stays in the namespace it was opened in: L{add} and
    L{remove} may be called from any thread, in any namespace.  They are
    serialised by a lock.  A process makes one table per network namespace;
    two processes never share one (the name carries the pid, and the kernel
    refuses changes to an owned table from any other socket).

    Keep the object while its rules are needed: Python closes the socket of
    an object it collects, and that deletes the table.  The socket also keeps
    its network namespace alive after C{ip netns del}, until it closes.  It is
    close-on-exec, but a child forked without exec shares it: the table then
    lasts until both processes have closed it.

    @ivar name: the table's name (family C{inet}).
    @ivar netns: the identity (inode) of its network namespace.
    """

    def __init__(self, name: str | None = None) -> None:
        """
        Create the table and its chain, in one netlink batch.

        @param name: the table's name; by default C{faketcp_twisted_PID}.
        @raise NftablesUnavailable: the kernel or the permissions are
            lacking (the message says which).
        @raise RuntimeError: the kernel refused for another reason, for
            example a table of that name exists.
        """
        self.name = name if name is not None else f"{TABLE_PREFIX}_{os.getpid()}"
        self.netns = os.stat("/proc/thread-self/ns/net").st_ino
        self._lock = threading.Lock()
        self._handles: dict[SilenceRule, int] = {}
        self._sequence = 0
        try:
            self._socket: socket.socket | None = _open_socket(NETLINK_NETFILTER)
        except OSError as error:
            raise _explain("socket", error.errno or 0, True, _kernel_release()) from error
        try:
            self._socket.bind((0, 0))  # the kernel picks the port id that owns the table
            self._socket.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            # A blocking socket with a receive timeout of the kernel's own
            # (Python's settimeout would make MSG_DONTWAIT reads wait too).
            self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("@ll", int(_REPLY_TIMEOUT), 0))
            self._create()
        except BaseException:
            self._socket.close()
            self._socket = None
            raise

    # -- the messages ------------------------------------------------------

    def _create(self) -> None:
        name = self.name
        try:
            self._batch([lambda sequence: _new_table(name, sequence), lambda sequence: _new_chain(name, sequence)])
        except _Refused as refused:
            code = refused.code
            # Another socket's owned table of this name answers EPERM, an
            # ordinary one EEXIST: look before blaming the permissions.
            exists = code in (errno.EPERM, errno.EEXIST) and self._table_exists()
            raise _explain("table", code, self._nf_tables(), _kernel_release(), exists, self.name) from None

    # -- the public operations ---------------------------------------------

    def add(self, rule: SilenceRule) -> None:
        """
        Add C{rule} to the table's chain, in one netlink batch.

        @raise ValueError: the table holds the rule already, or the rule is
            malformed.
        @raise RuntimeError: the table is closed, or the kernel refused.
        """
        _rule_family(rule)  # a malformed rule fails here, not in the kernel
        with self._lock:
            if rule in self._handles:
                raise ValueError(f"the table holds this rule already: {describe(rule, self.name)}")
            try:
                echoed = self._batch([lambda sequence: _new_rule(self.name, rule, sequence)])
            except _Refused as refused:
                raise _explain("add a rule", refused.code, True, _kernel_release()) from None
            handles = [handle for handle in map(_rule_handle, echoed) if handle is not None]
            if len(handles) != 1:
                raise RuntimeError(f"the kernel did not echo the handle of {describe(rule, self.name)}")
            self._handles[rule] = handles[0]

    def remove(self, rule: SilenceRule) -> None:
        """
        Delete C{rule} from the table, in one netlink batch.

        @raise KeyError: the table does not hold the rule.
        @raise RuntimeError: the table is closed, or the kernel refused.
        """
        with self._lock:
            handle = self._handles[rule]
            try:
                self._batch([lambda sequence: _delete_rule(self.name, handle, sequence)])
            except _Refused as refused:
                raise _explain("remove a rule", refused.code, True, _kernel_release()) from None
            del self._handles[rule]

    def rules(self) -> list[SilenceRule]:
        """
        The rules the table holds, in the order they were added.
        """
        with self._lock:
            return list(self._handles)

    @property
    def closed(self) -> bool:
        """
        Whether L{close} has run.
        """
        return self._socket is None

    def close(self) -> None:
        """
        Close the socket: the kernel deletes the table and its rules.
        Idempotent.
        """
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None
                self._handles.clear()

    def __enter__(self) -> OwnedTable:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self._handles)} rules"
        return f"<OwnedTable inet {self.name} ({state})>"

    # -- netlink -----------------------------------------------------------

    def _next_sequence(self) -> int:
        self._sequence = (self._sequence + 1) & 0xFFFFFFFF
        return self._sequence

    def _batch(self, messages: list[_Encoder]) -> list[bytes]:
        """
        Send C{messages} as one batch (all or nothing) and wait for the
        kernel's answer to each.

        @param messages: encoders, each given its sequence number.
        @return: the rule messages the kernel echoed, whole.
        @raise _Refused: the kernel refused the batch.
        """
        if self._socket is None:
            raise RuntimeError(f"the nftables table {self.name} is closed")
        self._discard_pending()
        # A refusal of the whole batch (no permission, no nf_tables) is
        # answered with the sequence number of its begin marker.
        begin = self._next_sequence()
        data = [_batch_marker(NFNL_MSG_BATCH_BEGIN, begin)]
        pending: set[int] = set()
        for encode in messages:
            sequence = self._next_sequence()
            data.append(encode(sequence))
            pending.add(sequence)
        data.append(_batch_marker(NFNL_MSG_BATCH_END, self._next_sequence()))
        try:
            self._socket.send(b"".join(data))
        except OSError as error:
            raise _Refused(error.errno or 0) from error
        echoed: list[bytes] = []
        refusal: int | None = None
        while pending and refusal is None:
            for kind, sequence, payload in self._receive():
                if kind == NLMSG_ERROR and (sequence in pending or sequence == begin):
                    (code,) = struct.unpack_from("=i", payload)
                    pending.discard(sequence)
                    if code < 0 and refusal is None:
                        refusal = -code
                elif kind == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWRULE and sequence in pending:
                    echoed.append(payload)
        if refusal is not None:
            # The kernel reports every message of a failed batch at once;
            # leave none of it for the next batch to read.
            self._discard_pending()
            raise _Refused(refusal)
        return echoed

    def _receive(self) -> list[tuple[int, int, bytes]]:
        """
        One datagram from the kernel, as (type, sequence, message) for each
        message in it; the message of an error starts with its errno, and
        any other is the whole message, header included.
        """
        assert self._socket is not None
        try:
            datagram = self._socket.recv(65536)
        except BlockingIOError:  # SO_RCVTIMEO ran out
            raise RuntimeError(f"the kernel did not answer within {_REPLY_TIMEOUT} s") from None
        return _split(datagram)

    def _discard_pending(self) -> None:
        assert self._socket is not None
        while True:
            try:
                self._socket.recv(65536, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return

    def _answered(self, encode: _Encoder) -> bool:
        """
        Whether the kernel answers the request C{encode} makes with what was
        asked (rather than an error): a probe, run only to explain a refusal.
        """
        assert self._socket is not None
        sequence = self._next_sequence()
        self._discard_pending()
        try:
            self._socket.send(encode(sequence))
            while True:
                for kind, number, payload in self._receive():
                    if number != sequence:
                        continue
                    if kind == NLMSG_ERROR:
                        (code,) = struct.unpack_from("=i", payload)
                        return int(code) == 0
                    if kind != NLMSG_DONE:
                        return True
        except (OSError, RuntimeError):
            return False

    def _nf_tables(self) -> bool:
        """
        Whether the kernel answers nf_tables requests at all (the ruleset's
        generation, the cheapest one).
        """
        return self._answered(_get_generation)

    def _table_exists(self) -> bool:
        """
        Whether this namespace has a table of our name already.
        """
        name = self.name
        return self._answered(lambda sequence: _get_table(name, sequence))


class _Refused(Exception):
    """
    The kernel refused a batch; C{code} is the errno.
    """

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _split(datagram: bytes) -> list[tuple[int, int, bytes]]:
    """
    The netlink messages of a datagram: (type, sequence, payload) where the
    payload of an error starts with its errno and that of anything else is
    the whole message.
    """
    found = []
    offset = 0
    while offset + _NLMSGHDR.size <= len(datagram):
        length, kind, _flags, sequence, _pid = _NLMSGHDR.unpack_from(datagram, offset)
        if length < _NLMSGHDR.size:
            break
        if kind == NLMSG_ERROR:
            found.append((kind, sequence, datagram[offset + _NLMSGHDR.size : offset + length]))
        else:
            found.append((kind, sequence, datagram[offset : offset + length]))
        offset += (length + 3) & ~3
    return found
