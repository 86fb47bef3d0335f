# -*- test-case-name: tests.test_netlab -*-
"""
Throwaway network labs (network namespaces and veth pairs) for the
integration tests, the demo and the benchmark.

Every lab lives in its own set of network namespaces, so tests can create
raw sockets, install firewall rules and route packets without touching the
host.  All of this needs root (C{CAP_NET_ADMIN} and C{CAP_SYS_ADMIN}).

Conventions
===========

  - Addresses come only from the benchmarking ranges 198.18.0.0/15 and
    2001:2::/48 (RFC 2544 / RFC 5180).
  - Every namespace is called C{ftt-<pid>-<lab number>-<role>} (for example
    C{ftt-1234-1-c}), where C{<pid>} is the creating process.
    L{sweep_stale} removes namespaces whose creator is dead; it runs
    whenever a lab is built.
  - Interface names are short: C{<this side>-<other side>} (C{c-s},
    C{r-c}...).
  - Checksum offload (C{ethtool -K IFACE tx off}) is disabled on every veth
    end, so packets made by the kernel carry real checksums on the wire.
  - IPv6 duplicate address detection is disabled, so IPv6 addresses are
    usable as soon as the topology function returns.

Typical use in a C{twisted.trial} test::

    from lab import netlab

    lab = netlab.two_hosts()
    self.addCleanup(lab.destroy)
    with netlab.in_namespace(lab.S):
        port = reactor.listenTCP(0, factory, interface=lab.server4)
    with netlab.in_namespace(lab.C):
        reactor.connectTCP(lab.server4, port.getHost().port, client_factory)

Topologies
==========

L{two_hosts}::

    C [c-s] 198.18.0.1/24  <--veth-->  198.18.0.2/24 [s-c] S
            2001:2::1/64                2001:2::2/64
                                        (+ 198.18.0.3 / 2001:2::3 with
                                         extra_server_addresses=1, ...)

L{routed_nat}::

    C [c-r] ------------------ [r-c] R [r-s] ------------------ [s-r] S
      198.18.1.2/24     198.18.1.1/24   198.19.0.1/24      198.19.0.2/24
      2001:2:0:1::2/64 2001:2:0:1::1/64 2001:2:0:2::1/64  2001:2:0:2::2/64

    IPv4 from C is masqueraded by R (S sees 198.19.0.1); IPv6 is routed
    without NAT (S sees 2001:2:0:1::2).

Caveats
=======

  - pyroute2 0.9 drives netlink through asyncio internally: the topology
    functions use its I{synchronous} C{IPRoute} and therefore must not be
    called from inside a running asyncio event loop (Twisted trial's
    default reactor is fine).  A L{RuntimeError} is raised if one is
    detected.
  - IPv6 MLD reports are sent with hop limit 1; always restrict hop-limit
    counters to the protocol of interest (C{-p tcp -m hl --hl-eq 1}).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import errno
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Final, Self

from pyroute2 import IPRoute, netns

__all__ = [
    "NAMESPACE_PREFIX",
    "Lab",
    "LabError",
    "RoutedNatLab",
    "TwoHostsLab",
    "create_namespace",
    "in_namespace",
    "routed_nat",
    "sweep_stale",
    "two_hosts",
]

#: Prefix shared by every namespace any netlab ever creates.
NAMESPACE_PREFIX: Final = "ftt-"

_NETNS_DIR: Final = "/var/run/netns"
_STALE_RE: Final = re.compile(r"^ftt-(\d+)-")
_COUNTER_NAME_RE: Final = re.compile(r"^[A-Za-z0-9_.-]+$")
_IFA_F_NODAD: Final = 0x02
_INVALID_COMMENT: Final = "ftt-invalid-drop"
_LOSS_COMMENT: Final = "ftt-loss"
_CUT_COMMENT: Final = "ftt-cut"
_COUNT_PREFIX: Final = "ftt-count-"


class LabError(RuntimeError):
    """
    A lab could not be built or a lab helper command failed.
    """


# --------------------------------------------------------------------------
# Namespace switching
# --------------------------------------------------------------------------


def _netns_path(name: str) -> str:
    return os.path.join(_NETNS_DIR, name)


def _setns_fd(fd: int) -> None:
    # pyroute2's setns() with an int uses the fd as is (and does not close it).
    netns.setns(fd, flags=0)


@contextlib.contextmanager
def in_namespace(name: str) -> Iterator[None]:
    """
    Switch the I{current thread} into network namespace C{name}.

    Sockets created inside the C{with} block (and child processes started
    from it) live in C{name}; sockets keep their namespace after the block
    ends.  The thread's original namespace is always restored, even if the
    block raises.  Blocks can be nested.

    This is what C{netns.pushns}/C{netns.popns} do, but with a per-call
    saved descriptor of C{/proc/thread-self/ns/net}: pyroute2 keeps a
    process-global stack and saves C{/proc/self/ns/net} (the I{main}
    thread's namespace), which is wrong when used from other threads.

    @raise LabError: there is no namespace C{name}.
    """
    saved = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            target = os.open(_netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise LabError(f"no such network namespace: {name!r}") from None
        try:
            _setns_fd(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns_fd(saved)
    finally:
        os.close(saved)


def create_namespace(name: str) -> None:
    """
    Make network namespace C{name}.

    @raise LabError: C{ip netns add} failed.
    """
    # iproute2 (fork and exec), not pyroute2's netns.create, which forks
    # the test process and runs Python in the child: after a test on
    # Twisted's asyncio reactor such a child ran the rest of the suite
    # instead of returning (and the parent timed out waiting for it).
    result = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if result.returncode != 0:
        raise LabError(f"cannot create network namespace {name!r}: {result.stderr.strip()}")


@contextlib.contextmanager
def _iproute(name: str) -> Iterator[IPRoute]:
    """
    An rtnetlink socket in namespace C{name}, made by this thread from
    inside it (C{IPRoute(netns=...)} forks, as C{netns.create} does).
    """
    with in_namespace(name), IPRoute() as ipr:
        yield ipr


# --------------------------------------------------------------------------
# Stale namespace cleanup
# --------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_namespace(name: str) -> bool:
    """
    Remove namespace C{name}.

    @return: whether it existed.
    """
    try:
        netns.remove(name)
    except FileNotFoundError:
        return False
    except OSError as e:
        if e.errno == errno.ENOENT:
            return False
        raise
    return True


def sweep_stale() -> list[str]:
    """
    Remove C{ftt-<pid>-*} namespaces whose C{<pid>} is not running: the
    leftovers of crashed test runs.

    @return: the removed names.
    """
    removed = []
    for name in sorted(netns.listnetns()):
        m = _STALE_RE.match(name)
        if m is None or _pid_alive(int(m.group(1))):
            continue
        if _remove_namespace(name):
            removed.append(name)
    return removed


# --------------------------------------------------------------------------
# Lab base class
# --------------------------------------------------------------------------

_labs_lock = threading.Lock()
_live_labs: dict[int, Lab] = {}
_lab_counter = 0


def _next_lab_number() -> int:
    global _lab_counter
    with _labs_lock:
        _lab_counter += 1
        return _lab_counter


@atexit.register
def _destroy_all_labs() -> None:
    """
    The atexit safety net: tear down labs a test forgot to destroy.
    """
    with _labs_lock:
        # Skip labs inherited by a forked child: they belong to the parent.
        labs = [lab for lab in _live_labs.values() if lab.pid == os.getpid()]
    for lab in labs:
        with contextlib.suppress(Exception):
            lab.destroy()


def _ensure_no_running_loop() -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(
        "netlab uses pyroute2's synchronous API, which cannot run inside a "
        "running asyncio event loop; build the lab outside of it"
    )


class Lab:
    """
    A set of network namespaces made by one topology function.

    @ivar pid: the pid of the creating process.
    @ivar number: the lab number, unique within the process.
    @ivar namespaces: role (C{"C"}, C{"S"}, C{"R"}) -> namespace name.
    @ivar destroyed: whether L{destroy} has run.
    """

    def __init__(self, roles: Sequence[str]) -> None:
        self.pid: int = os.getpid()
        self.number: int = _next_lab_number()
        self.namespaces: dict[str, str] = {
            role: f"{NAMESPACE_PREFIX}{self.pid}-{self.number}-{role.lower()}"
            for role in roles
        }
        self.destroyed: bool = False
        self._created: list[str] = []
        self._counters: dict[tuple[str, str, bool], str] = {}
        self._links: list[tuple[str, str]] = []

    # -- lifecycle ---------------------------------------------------------

    def _create_namespaces(self) -> None:
        _ensure_no_running_loop()
        sweep_stale()
        with _labs_lock:
            _live_labs[id(self)] = self
        for name in self.namespaces.values():
            create_namespace(name)
            self._created.append(name)
            # Sysctls are per-namespace; writing /proc/sys from a thread that
            # joined the namespace affects that namespace.
            with in_namespace(name):
                for conf in ("all", "default"):
                    _write_sysctl(f"net/ipv6/conf/{conf}/accept_dad", "0")
                    _write_sysctl(f"net/ipv6/conf/{conf}/dad_transmits", "0")
                _write_sysctl("net/ipv6/conf/default/router_solicitations", "0")

    def destroy(self) -> None:
        """
        Remove every namespace of this lab (veths vanish with them).

        Idempotent; safe to register with C{addCleanup} and to call again.

        @raise LabError: a namespace could not be removed.
        """
        errors = []
        for name in list(self._created):
            try:
                _remove_namespace(name)
            except OSError as e:  # pragma: no cover - unexpected
                errors.append(f"{name}: {e}")
                continue
            self._created.remove(name)
        self.destroyed = True
        with _labs_lock:
            _live_labs.pop(id(self), None)
        if errors:
            raise LabError("could not remove namespaces: " + "; ".join(errors))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.destroy()

    def in_namespace(self, ns: str) -> contextlib.AbstractContextManager[None]:
        """
        The module-level L{in_namespace}; C{ns} may be a role.
        """
        return in_namespace(self._ns(ns))

    def _ns(self, ns: str) -> str:
        return self.namespaces.get(ns, ns)

    # -- commands ----------------------------------------------------------

    def run(
        self, ns: str, *argv: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """
        Run C{ip netns exec NS argv...}, its output captured as text.

        @param ns: a namespace name or a role.
        @param check: whether a non-zero exit status is an error.
        @return: the completed process.
        @raise LabError: with C{check}, a non-zero exit status (the message
            carries stderr).
        """
        cmd = ["ip", "netns", "exec", self._ns(ns), *argv]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, check=False, timeout=30
        )
        if check and proc.returncode != 0:
            raise LabError(
                f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()}"
            )
        return proc

    def silencing_rules(self, ns: str) -> list[str]:
        """
        The project's silencing rules in a namespace, in both backends: the
        iptables lines (legacy tables, both families) that carry its
        comment, and the rules of its nftables tables (C{faketcp_twisted_*}),
        one line each, prefixed with the table's name.

        @param ns: a namespace name or a role.
        """
        found = []
        for save in ("iptables-legacy-save", "ip6tables-legacy-save"):
            output = self.run(ns, save, check=False).stdout
            found += [line for line in output.splitlines() if "faketcp_twisted" in line]
        listed = self.run(ns, "nft", "list", "ruleset", check=False).stdout
        table = None
        for line in listed.splitlines():
            words = line.split()
            if words[:1] == ["table"]:
                table = words[2] if len(words) > 2 and words[2].startswith("faketcp_twisted") else None
            elif table is not None and words and words[-1] == "drop":
                found.append(f"{table}: {line.strip()}")
        return found

    def iptables(
        self, ns: str, *args: str, v6: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """
        Run C{iptables ARGS} (C{ip6tables} if C{v6}) inside C{ns}.
        """
        return self.run(ns, "ip6tables" if v6 else "iptables", "-w", *args)

    # -- counters ----------------------------------------------------------

    def count_packets(
        self,
        ns: str,
        name: str,
        match_args: Sequence[str],
        v6: bool = False,
        chain: str = "PREROUTING",
    ) -> None:
        """
        Start counting packets matching C{match_args} inside C{ns}.

        Inserts at the top of the C{raw} table's C{chain} (PREROUTING:
        packets arriving at the namespace; OUTPUT: packets it sends) a rule
        without a target, so it only counts and never changes a verdict.
        Read it with L{read_count}.

        @param match_args: for example C{["-p", "tcp", "--tcp-flags", "RST",
            "RST"]}, C{["-p", "tcp", "-m", "ttl", "--ttl-eq", "1"]} (IPv4)
            or C{["-p", "tcp", "-m", "hl", "--hl-eq", "1"]} (IPv6).
        @raise ValueError: a bad C{name}, or one already counting in C{ns}.
        """
        if not _COUNTER_NAME_RE.match(name):
            raise ValueError(f"counter name must match {_COUNTER_NAME_RE.pattern}")
        key = (self._ns(ns), name, v6)
        if key in self._counters:
            raise ValueError(f"counter {name!r} already exists in {ns} (v6={v6})")
        self.iptables(
            ns,
            "-t", "raw", "-I", chain, "1",
            *match_args,
            "-m", "comment", "--comment", _COUNT_PREFIX + name,
            v6=v6,
        )  # fmt: skip
        self._counters[key] = chain

    def read_count(self, ns: str, name: str, v6: bool = False) -> int:
        """
        Packets counted so far by the rule from L{count_packets}.

        @raise KeyError: no such counter.
        """
        if (self._ns(ns), name, v6) not in self._counters:
            raise KeyError(f"no counter {name!r} in {ns} (v6={v6})")
        return self._read_comment_counter(ns, "raw", _COUNT_PREFIX + name, v6)

    def conntrack_invalid_drops(self, ns: str, v6: bool = False) -> int:
        """
        Packets dropped by the C{--ctstate INVALID} FORWARD rule in C{ns}.
        """
        return self._read_comment_counter(ns, "filter", _INVALID_COMMENT, v6)

    def loss_drops(self, ns: str, v6: bool = False) -> int:
        """
        Packets dropped by the random-loss FORWARD rule in C{ns}.
        """
        return self._read_comment_counter(ns, "filter", _LOSS_COMMENT, v6)

    def _read_comment_counter(
        self, ns: str, table: str, comment: str, v6: bool
    ) -> int:
        save = "ip6tables-save" if v6 else "iptables-save"
        out = self.run(ns, save, "-c", "-t", table).stdout
        pattern = re.compile(
            r'^\[(\d+):\d+\] .*--comment "?' + re.escape(comment) + r'"?(\s|$)'
        )
        total = None
        for line in out.splitlines():
            m = pattern.match(line)
            if m:
                total = (total or 0) + int(m.group(1))
        if total is None:
            raise KeyError(f"no rule commented {comment!r} in {ns} {table}")
        return total

    # -- building blocks ---------------------------------------------------

    def _veth(
        self, ns_a: str, if_a: str, ns_b: str, if_b: str
    ) -> None:
        """
        Create veth C{if_a} in C{ns_a} paired with C{if_b} in C{ns_b}.
        """
        with _iproute(ns_a) as ipr:
            ipr.link(
                "add",
                ifname=if_a,
                kind="veth",
                peer={"ifname": if_b, "net_ns_fd": ns_b},
            )
        for ns, ifname in ((ns_a, if_a), (ns_b, if_b)):
            self._links.append((ns, ifname))
            with in_namespace(ns):
                _write_sysctl(f"net/ipv6/conf/{ifname}/accept_dad", "0")
            self.run(ns, "ethtool", "-K", ifname, "tx", "off")

    def _configure(
        self,
        ns: str,
        ifname: str,
        addresses: Sequence[tuple[str, int]],
        gateways: Sequence[str] = (),
    ) -> None:
        """
        Bring C{lo} and C{ifname} up, add addresses and default routes.
        """
        with _iproute(ns) as ipr:
            lo = ipr.link_lookup(ifname="lo")[0]
            idx = ipr.link_lookup(ifname=ifname)[0]
            ipr.link("set", index=lo, state="up")
            for address, prefixlen in addresses:
                kwargs = {"flags": _IFA_F_NODAD} if ":" in address else {}
                ipr.addr(
                    "add", index=idx, address=address, prefixlen=prefixlen,
                    **kwargs,
                )  # fmt: skip
            ipr.link("set", index=idx, state="up")
            for gw in gateways:
                dst = "::/0" if ":" in gw else "0.0.0.0/0"
                ipr.route("add", dst=dst, gateway=gw, oif=idx)


    def _wait_links_up(self, timeout: float = 5.0) -> None:
        """
        Wait until every veth end reports operstate UP (carrier on).

        @raise LabError: one did not within C{timeout} seconds.
        """
        deadline = time.monotonic() + timeout
        for ns, ifname in self._links:
            with _iproute(ns) as ipr:
                idx = ipr.link_lookup(ifname=ifname)[0]
                while True:
                    link = ipr.link("get", index=idx)[0]
                    if link.get("IFLA_OPERSTATE") == "UP":
                        break
                    if time.monotonic() > deadline:
                        raise LabError(f"{ns}/{ifname} did not come up")
                    time.sleep(0.01)


def _write_sysctl(path: str, value: str) -> None:
    with open(f"/proc/sys/{path}", "w") as f:
        f.write(value)


def _build(lab: Lab, body: Callable[[], None]) -> None:
    """
    Run C{body()} after creating the namespaces; destroy them on failure.
    """
    try:
        lab._create_namespaces()
        body()
        lab._wait_links_up()
    except BaseException:
        with contextlib.suppress(Exception):
            lab.destroy()
        raise


# --------------------------------------------------------------------------
# Topology 1/2: two hosts on one link
# --------------------------------------------------------------------------


class TwoHostsLab(Lab):
    """
    Client C{C} and server C{S} joined by one veth pair.

    @ivar C: the client's namespace name.
    @ivar S: the server's namespace name.
    @ivar client_if: C{"c-s"}, in C.
    @ivar server_if: C{"s-c"}, in S.
    @ivar client4: 198.18.0.1 (prefix length L{prefixlen4}, 24).
    @ivar server4: 198.18.0.2.
    @ivar client6: 2001:2::1 (prefix length L{prefixlen6}, 64).
    @ivar server6: 2001:2::2.
    @ivar server4_extra: additional server addresses (198.18.0.3, then .4,
        ...), on-link for C.
    @ivar server6_extra: additional server addresses (2001:2::3, then ::4,
        ...), on-link for C.
    """

    prefixlen4: Final = 24
    prefixlen6: Final = 64

    def __init__(self, extra_server_addresses: int = 0) -> None:
        if not 0 <= extra_server_addresses <= 200:
            raise ValueError("extra_server_addresses must be in 0..200")
        super().__init__(["C", "S"])
        self.C: str = self.namespaces["C"]
        self.S: str = self.namespaces["S"]
        self.client_if: str = "c-s"
        self.server_if: str = "s-c"
        self.client4: str = "198.18.0.1"
        self.server4: str = "198.18.0.2"
        self.client6: str = "2001:2::1"
        self.server6: str = "2001:2::2"
        self.server4_extra: list[str] = [
            f"198.18.0.{3 + i}" for i in range(extra_server_addresses)
        ]
        self.server6_extra: list[str] = [
            f"2001:2::{3 + i:x}" for i in range(extra_server_addresses)
        ]

    @property
    def server4_all(self) -> list[str]:
        """
        The server's IPv4 addresses: L{server4}, then L{server4_extra}.
        """
        return [self.server4, *self.server4_extra]

    @property
    def server6_all(self) -> list[str]:
        """
        The server's IPv6 addresses: L{server6}, then L{server6_extra}.
        """
        return [self.server6, *self.server6_extra]

    def _setup(self) -> None:
        self._veth(self.C, self.client_if, self.S, self.server_if)
        self._configure(
            self.C,
            self.client_if,
            [(self.client4, self.prefixlen4), (self.client6, self.prefixlen6)],
        )
        self._configure(
            self.S,
            self.server_if,
            [(a, self.prefixlen4) for a in self.server4_all]
            + [(a, self.prefixlen6) for a in self.server6_all],
        )


def two_hosts(extra_server_addresses: int = 0) -> TwoHostsLab:
    """
    Build the two-host lab; see L{TwoHostsLab} for the addresses.

    @param extra_server_addresses: more address pairs for the server: 1
        gives it 198.18.0.3 and 2001:2::3, so a server listening on the
        wildcard address can be reached through two different local
        addresses.
    @raise LabError: the lab could not be built (what was made is removed).
    """
    lab = TwoHostsLab(extra_server_addresses)
    _build(lab, lab._setup)
    return lab


# --------------------------------------------------------------------------
# Topology 3: client - NAT router - server
# --------------------------------------------------------------------------


class RoutedNatLab(Lab):
    """
    Client C{C} -- router/NAT C{R} -- server C{S}.

    In R (iptables and ip6tables unless noted), in FORWARD order:
    C{-m conntrack --ctstate INVALID -j DROP} (counter:
    L{conntrack_invalid_drops}), then if C{loss > 0}
    C{-m statistic --mode random --probability LOSS -j DROP} (both
    directions, counter: L{loss_drops}); IPv4 only:
    C{-t nat POSTROUTING -o r-s -j MASQUERADE}.  IPv6 is routed, not NATed.

    L{cut} takes the path down (a DROP rule at the top of R's FORWARD
    chain, both families) and L{restore} brings it back.

    @ivar C: the client's namespace name.
    @ivar R: the router's namespace name.
    @ivar S: the server's namespace name.
    @ivar client_if: C{"c-r"}, in C.
    @ivar router_client_if: C{"r-c"}, in R.
    @ivar router_server_if: C{"r-s"}, in R.
    @ivar server_if: C{"s-r"}, in S.
    @ivar client4: 198.18.1.2/24, with L{router_client4} as its gateway.
    @ivar router_client4: 198.18.1.1/24.
    @ivar router_server4: 198.19.0.1/24, the server's gateway.
    @ivar server4: 198.19.0.2/24.
    @ivar client6: 2001:2:0:1::2/64, with L{router_client6} as its gateway.
    @ivar router_client6: 2001:2:0:1::1/64.
    @ivar router_server6: 2001:2:0:2::1/64, the server's gateway.
    @ivar server6: 2001:2:0:2::2/64.
    @ivar nat_address4: what S sees as the client's IPv4 address
        (L{router_server4}).
    @ivar loss: the drop probability of R's FORWARD loss rule (0: none).
    """

    prefixlen4: Final = 24
    prefixlen6: Final = 64

    def __init__(self, loss: float = 0.0) -> None:
        if not 0.0 <= loss <= 1.0:
            raise ValueError("loss must be within [0, 1]")
        super().__init__(["C", "R", "S"])
        self.C: str = self.namespaces["C"]
        self.R: str = self.namespaces["R"]
        self.S: str = self.namespaces["S"]
        self.client_if: str = "c-r"
        self.router_client_if: str = "r-c"
        self.router_server_if: str = "r-s"
        self.server_if: str = "s-r"
        self.client4: str = "198.18.1.2"
        self.router_client4: str = "198.18.1.1"
        self.router_server4: str = "198.19.0.1"
        self.server4: str = "198.19.0.2"
        self.client6: str = "2001:2:0:1::2"
        self.router_client6: str = "2001:2:0:1::1"
        self.router_server6: str = "2001:2:0:2::1"
        self.server6: str = "2001:2:0:2::2"
        self.nat_address4: str = self.router_server4
        self.loss: float = loss
        #: Whether the path is cut now (see L{cut}).
        self.is_cut: bool = False
        #: Packets R dropped during the cuts restored so far (IPv4 + IPv6).
        self.cut_dropped: int = 0

    def conntrack_invalid_drops(self, ns: str | None = None, v6: bool = False) -> int:
        """
        The INVALID-drop counter of C{ns} (default: the router R).
        """
        return super().conntrack_invalid_drops(ns or self.R, v6=v6)

    def loss_drops(self, ns: str | None = None, v6: bool = False) -> int:
        """
        The random-loss drop counter of C{ns} (default: the router R).
        """
        return super().loss_drops(ns or self.R, v6=v6)

    def cut(self) -> None:
        """
        Take the path down: R drops every forwarded packet, both ways.

        Inserts C{-m comment --comment ftt-cut -j DROP} at the top of R's
        FORWARD chain (iptables and ip6tables), ahead of the INVALID and
        loss rules.  Nothing reaches the other side and nothing tells the
        hosts (no ICMP).  R's conntrack still sees the packets (it runs
        before FORWARD), as a NAT router before a broken link would.
        Idempotent; undo with L{restore}.
        """
        if self.is_cut:
            return
        for v6 in (False, True):
            self.iptables(
                self.R, "-I", "FORWARD", "1",
                "-m", "comment", "--comment", _CUT_COMMENT, "-j", "DROP",
                v6=v6,
            )  # fmt: skip
        self.is_cut = True

    def restore(self) -> None:
        """
        Bring the path back after L{cut} (idempotent).

        Adds what the cut rules dropped to L{cut_dropped}, then deletes
        them.
        """
        for v6 in (False, True):
            try:
                self.cut_dropped += self._read_comment_counter(
                    self.R, "filter", _CUT_COMMENT, v6
                )
            except (KeyError, LabError):
                continue
            while self.run(
                self.R, "ip6tables" if v6 else "iptables", "-w",
                "-D", "FORWARD",
                "-m", "comment", "--comment", _CUT_COMMENT, "-j", "DROP",
                check=False,
            ).returncode == 0:  # fmt: skip
                pass
        self.is_cut = False

    def cut_drops(self) -> int:
        """
        Packets dropped by cuts so far, the current one included.
        """
        current = 0
        for v6 in (False, True):
            with contextlib.suppress(KeyError):
                current += self._read_comment_counter(
                    self.R, "filter", _CUT_COMMENT, v6
                )
        return self.cut_dropped + current

    def _setup(self) -> None:
        p4, p6 = self.prefixlen4, self.prefixlen6
        self._veth(self.C, self.client_if, self.R, self.router_client_if)
        self._veth(self.R, self.router_server_if, self.S, self.server_if)
        with in_namespace(self.R):
            _write_sysctl("net/ipv4/ip_forward", "1")
            _write_sysctl("net/ipv6/conf/all/forwarding", "1")
        self._configure(
            self.C,
            self.client_if,
            [(self.client4, p4), (self.client6, p6)],
            gateways=[self.router_client4, self.router_client6],
        )
        self._configure(
            self.R,
            self.router_client_if,
            [(self.router_client4, p4), (self.router_client6, p6)],
        )
        self._configure(
            self.R,
            self.router_server_if,
            [(self.router_server4, p4), (self.router_server6, p6)],
        )
        self._configure(
            self.S,
            self.server_if,
            [(self.server4, p4), (self.server6, p6)],
            gateways=[self.router_server4, self.router_server6],
        )
        self.iptables(
            self.R, "-t", "nat", "-A", "POSTROUTING",
            "-o", self.router_server_if, "-j", "MASQUERADE",
        )  # fmt: skip
        for v6 in (False, True):
            self.iptables(
                self.R, "-A", "FORWARD",
                "-m", "conntrack", "--ctstate", "INVALID",
                "-m", "comment", "--comment", _INVALID_COMMENT, "-j", "DROP",
                v6=v6,
            )  # fmt: skip
            if self.loss > 0:
                self.iptables(
                    self.R, "-A", "FORWARD",
                    "-m", "statistic", "--mode", "random",
                    "--probability", f"{self.loss:.6f}",
                    "-m", "comment", "--comment", _LOSS_COMMENT, "-j", "DROP",
                    v6=v6,
                )  # fmt: skip


def routed_nat(loss: float = 0.0) -> RoutedNatLab:
    """
    Build the client/NAT-router/server lab; see L{RoutedNatLab}.

    @param loss: more than 0 makes R drop forwarded packets (both
        directions, IPv4 and IPv6) at random with that probability.
    @raise LabError: the lab could not be built (what was made is removed).
    """
    lab = RoutedNatLab(loss)
    _build(lab, lab._setup)
    return lab
