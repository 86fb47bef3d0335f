# -*- test-case-name: tests.test_nftables -*-
"""
Tests for L{faketcp_twisted.io.nftables}: the silencing rules in an
nftables table owned by a netlink socket (issue 15).

The root-only tests build their own network namespaces (C{ftt-nft-PID-N},
or a L{netlab} two-host lab for traffic) and remove them in cleanups.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import select
import signal
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

from twisted.trial.unittest import SkipTest, TestCase

from faketcp_twisted.io import nftables
from faketcp_twisted.io.firewall import DEFAULT_MARK, SilenceRule
from faketcp_twisted.io.nftables import NftablesUnavailable, OwnedTable, describe, describe_table

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT_SKIP = (
    "needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) to create network namespaces and nftables tables"
    if os.geteuid() != 0
    else None
)

SERVER4 = SilenceRule(socket.AF_INET, 9191)
SERVER6 = SilenceRule(socket.AF_INET6, 9191)
CLIENT4 = SilenceRule(socket.AF_INET, 9191, "198.18.0.2")
CLIENT6 = SilenceRule(socket.AF_INET6, 9191, "2001:2::2")
ALL_RULES = [SERVER4, SERVER6, CLIENT4, CLIENT6]

_numbers = itertools.count(1)


# -- helpers -------------------------------------------------------------------


def make_namespace(test: TestCase) -> str:
    """
    A new empty network namespace, removed when C{test} ends.
    """
    # netlab imports pyroute2: only root-only tests get this far.  Its
    # prefix and pid make leftovers of a dead run sweepable by netlab.
    from lab import netlab

    name = f"{netlab.NAMESPACE_PREFIX}{os.getpid()}-nft-{next(_numbers)}"
    netlab.create_namespace(name)
    test.addCleanup(subprocess.run, ["ip", "netns", "del", name], capture_output=True, check=False)
    return name


def require_nft() -> None:
    """
    Skip unless the C{nft} command is there to look at the ruleset.
    """
    if subprocess.run(["sh", "-c", "command -v nft"], capture_output=True).returncode != 0:
        raise SkipTest("needs the nft command: install Debian's nftables package (scripts/bootstrap-system)")


def in_namespace(name: str) -> Any:
    # netlab imports pyroute2: only root-only tests get this far.
    from lab import netlab

    return netlab.in_namespace(name)


def run_in(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, check=check, timeout=30)


def ruleset(ns: str) -> dict[str, list[dict[str, Any]]]:
    """
    The namespace's nftables objects by kind (C{table}, C{chain}, C{rule}).
    """
    found: dict[str, list[dict[str, Any]]] = {"table": [], "chain": [], "rule": []}
    for item in json.loads(run_in(ns, "nft", "-j", "list", "ruleset").stdout)["nftables"]:
        for kind, body in item.items():
            if kind in found:
                found[kind].append(body)
    return found


def tables(ns: str) -> list[str]:
    return [t["name"] for t in ruleset(ns)["table"]]


def rule_exprs(ns: str, table: str) -> list[list[Any]]:
    return [r["expr"] for r in ruleset(ns)["rule"] if r["table"] == table]


def wait_for(predicate: Any, timeout: float) -> float:
    """
    Poll C{predicate} until true; return the time it took, or fail.
    """
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.01)
    return time.monotonic() - start


def expected_head(rule: SilenceRule) -> list[Any]:
    """
    The first three statements of a rule as C{nft -j} shows them: the mark,
    the family or the address, the port.  (How the flags test shows varies
    between nft versions; the comparison with a table C{nft} made from
    L{describe} covers it.)
    """
    head: list[Any] = [{"match": {"op": "==", "left": {"meta": {"key": "mark"}}, "right": rule.mark}}]
    v6 = rule.family == socket.AF_INET6
    if rule.remote is None:
        head.append({"match": {"op": "==", "left": {"meta": {"key": "nfproto"}}, "right": "ipv6" if v6 else "ipv4"}})
        field = "sport"
    else:
        protocol = "ip6" if v6 else "ip"
        address = {"payload": {"protocol": protocol, "field": "daddr"}}
        head.append({"match": {"op": "==", "left": address, "right": rule.remote}})
        field = "dport"
    head.append({"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": field}}, "right": rule.port}})
    return head


CHILD = """
import atexit, socket, sys, time
from faketcp_twisted.io.firewall import SilenceRule
from faketcp_twisted.io.nftables import OwnedTable
atexit.register(lambda: print("cleanup ran", flush=True))
table = OwnedTable()
table.add(SilenceRule(socket.AF_INET, 9191))
table.add(SilenceRule(socket.AF_INET6, 9191, "2001:2::2"))
print("ready", table.name, flush=True)
time.sleep(120)
"""


def start_child(test: TestCase, ns: str, script: str = CHILD) -> tuple[subprocess.Popen[str], str]:
    """
    Start C{python -c script} in namespace C{ns}; wait for its "ready NAME"
    line and return the process and NAME.
    """
    with in_namespace(ns):
        # A child is born in the namespace of the thread that starts it.
        child = subprocess.Popen(
            [sys.executable, "-c", script],
            cwd=CHECKOUT,
            env={**os.environ, "PYTHONPATH": CHECKOUT},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    test.addCleanup(stop_child, child)
    assert child.stdout is not None
    ready, _, _ = select.select([child.stdout], [], [], 15)
    line = child.stdout.readline() if ready else ""
    if not line.startswith("ready "):
        child.kill()
        raise AssertionError(f"child not ready: {line!r} {child.communicate()[1]}")
    return child, line.split()[1]


def stop_child(child: subprocess.Popen[str]) -> None:
    if child.poll() is None:
        os.kill(child.pid, signal.SIGKILL)
    child.communicate(timeout=10)


# A fresh process's first rule, imports included: the clock starts before
# the first import of the project.  Then five later rules, then cleanup.
FRESH_TABLE = """
import time
start = time.perf_counter()
import socket
from faketcp_twisted.io.nftables import OwnedTable
from faketcp_twisted.io.firewall import SilenceRule
imported = time.perf_counter()
table = OwnedTable()
table.add(SilenceRule(socket.AF_INET, 9191))
first = time.perf_counter()
later = []
for n in range(10, 15):
    t0 = time.perf_counter()
    table.add(SilenceRule(socket.AF_INET, 9191, f"198.18.0.{n}"))
    later.append(time.perf_counter() - t0)
table.close()
import json, sys
print(json.dumps({"imports": imported - start, "first": first - start, "later": later,
                  "pyroute2": "pyroute2" in sys.modules}))
"""

# The same through the project's silencer, with the backend BACKEND.
FRESH_SILENCER = """
import time
start = time.perf_counter()
import socket
from faketcp_twisted.io.firewall import SilenceRule, silencer
imported = time.perf_counter()
rules = [SilenceRule(socket.AF_INET, 9191)]
silencer.acquire(rules[0], backend=BACKEND)
first = time.perf_counter()
later = []
for n in range(10, 15):
    rules.append(SilenceRule(socket.AF_INET, 9191, f"198.18.0.{n}"))
    t0 = time.perf_counter()
    silencer.acquire(rules[-1], backend=BACKEND)
    later.append(time.perf_counter() - t0)
for rule in rules:
    silencer.release(rule)
assert silencer.installed() == []
import json, sys
print(json.dumps({"imports": imported - start, "first": first - start, "later": later,
                  "pyroute2": "pyroute2" in sys.modules}))
"""


def figures(samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    p90 = ms[min(len(ms) - 1, int(len(ms) * 0.9))]
    return f"median {statistics.median(ms):7.3f} ms  p90 {p90:7.3f} ms  (n={len(ms)})"


# -- without root ----------------------------------------------------------------


class DescribeTests(TestCase):
    """
    L{describe} and L{describe_table}: the rules as nft commands.
    """

    def test_server(self) -> None:
        self.assertEqual(
            describe(SERVER4),
            "nft add rule inet faketcp_twisted output "
            "'meta mark 0x46540000 meta nfproto ipv4 tcp sport 9191 tcp flags & syn == 0 drop'",
        )
        self.assertEqual(
            describe(SilenceRule(socket.AF_INET6, 443, mark=0x10), table="manual"),
            "nft add rule inet manual output "
            "'meta mark 0x10 meta nfproto ipv6 tcp sport 443 tcp flags & syn == 0 drop'",
        )

    def test_client(self) -> None:
        self.assertEqual(
            describe(CLIENT4),
            "nft add rule inet faketcp_twisted output "
            "'meta mark 0x46540000 ip daddr 198.18.0.2 tcp dport 9191 tcp flags & syn == 0 drop'",
        )
        # Addresses in nft's own (compressed) form.
        self.assertEqual(
            describe(SilenceRule(socket.AF_INET6, 9191, "2001:0002:0:0::0002")),
            "nft add rule inet faketcp_twisted output "
            "'meta mark 0x46540000 ip6 daddr 2001:2::2 tcp dport 9191 tcp flags & syn == 0 drop'",
        )

    def test_table(self) -> None:
        self.assertEqual(
            describe_table(),
            [
                "nft add table inet faketcp_twisted",
                "nft add chain inet faketcp_twisted output '{ type filter hook output priority 0; policy accept; }'",
            ],
        )

    def test_malformed(self) -> None:
        """
        A rule that cannot be written is refused, not written half.
        """
        for rule in (
            SilenceRule(socket.AF_INET, 9191, "2001:2::2"),
            SilenceRule(socket.AF_INET6, 9191, "198.18.0.2"),
            SilenceRule(socket.AF_UNIX, 9191),
            SilenceRule(socket.AF_INET, 70000),
            SilenceRule(socket.AF_INET, 9191, mark=1 << 32),
        ):
            self.assertRaises(ValueError, describe, rule)


class ConstantsTests(TestCase):
    """
    The uapi constants the module spells itself agree with pyroute2's.
    """

    def test_agree(self) -> None:
        from pyroute2 import netlink
        from pyroute2.netlink import nfnetlink
        from pyroute2.netlink.nfnetlink import nftsocket

        expr = nftsocket.nft_contains_expr.nft_expr
        self.assertEqual(nftables.NFNL_MSG_BATCH_BEGIN, netlink.NLMSG_MIN_TYPE)
        self.assertEqual(nftables.NFNL_MSG_BATCH_END, netlink.NLMSG_MIN_TYPE + 1)
        self.assertEqual(nftables.NLMSG_ERROR, netlink.NLMSG_ERROR)
        self.assertEqual(nftables.NLMSG_DONE, netlink.NLMSG_DONE)
        self.assertEqual(nftables.SOL_NETLINK, netlink.SOL_NETLINK)
        self.assertEqual(nftables.NETLINK_NETFILTER, netlink.NETLINK_NETFILTER)
        for name in ("NLM_F_REQUEST", "NLM_F_ACK", "NLM_F_ECHO", "NLM_F_EXCL", "NLM_F_CREATE", "NLM_F_APPEND"):
            self.assertEqual(getattr(nftables, name), getattr(netlink, name), name)
        messages = ["NEWTABLE", "GETTABLE", "NEWCHAIN", "NEWRULE", "DELRULE", "GETGEN"]
        for name in [f"NFT_MSG_{m}" for m in messages] + ["NFPROTO_INET", "NFPROTO_IPV4", "NFPROTO_IPV6"]:
            self.assertEqual(getattr(nftables, name), getattr(nftsocket, name), name)
        self.assertEqual(nftables.NFNL_SUBSYS_NFTABLES, nfnetlink.NFNL_SUBSYS_NFTABLES)
        self.assertEqual(nftables.NFT_REG_VERDICT, nftsocket.Regs.NFT_REG_VERDICT)
        self.assertEqual(nftables.NFT_REG_1, nftsocket.Regs.NFT_REG_1)
        self.assertEqual(nftables.NFT_CMP_EQ, nftsocket.Cmp.NFT_CMP_EQ)
        for name in ("NFT_META_MARK", "NFT_META_NFPROTO", "NFT_META_L4PROTO"):
            self.assertEqual(getattr(nftables, name), nftsocket.Meta[name], name)
        verdicts = nftsocket.nft_data.nfta_data.verdict.verdict_code.ops
        self.assertEqual(verdicts[nftables.NF_DROP], "NF_DROP")
        self.assertEqual(verdicts[nftables.NF_ACCEPT], "NF_ACCEPT")
        bases = expr.nft_payload.base_type.ops
        self.assertEqual(bases[nftables.NFT_PAYLOAD_NETWORK_HEADER], "NFT_PAYLOAD_NETWORK_HEADER")
        self.assertEqual(bases[nftables.NFT_PAYLOAD_TRANSPORT_HEADER], "NFT_PAYLOAD_TRANSPORT_HEADER")
        # The attributes of the messages this module encodes: an attribute's
        # number is its index in pyroute2's map.
        self.assertEqual(nftsocket.nft_table_msg.name2nla("flags"), "NFTA_TABLE_FLAGS")
        maps = {
            "NFTA_TABLE_": nftsocket.nft_table_msg.nla_map,
            "NFTA_CHAIN_": nftsocket.nft_chain_msg.nla_map,
            "NFTA_HOOK_": nftsocket.nft_chain_msg.hook.nla_map,
            "NFTA_RULE_": nftsocket.nft_rule_msg.nla_map,
        }
        checked = 0
        for prefix, nla_map in maps.items():
            numbers = {n: number for number, (n, _) in enumerate(nla_map)}
            for name in dir(nftables):
                if name.startswith(prefix):
                    self.assertEqual(getattr(nftables, name), numbers[name], name)
                    checked += 1
        self.assertEqual(checked, 2 + 5 + 2 + 4)

    def test_import_is_light(self) -> None:
        """
        Importing the module loads neither pyroute2 nor asyncio (the io layer
        imports no loop library); nor does using it
        (L{TableTests.test_without_pyroute2}).
        """
        script = "import sys, faketcp_twisted.io.nftables; print(sorted({m.split('.')[0] for m in sys.modules}))"
        loaded = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=CHECKOUT
        ).stdout
        self.assertNotIn("'pyroute2'", loaded)
        self.assertNotIn("'asyncio'", loaded)


class UnavailableTests(TestCase):
    """
    What cannot work says why in one line.
    """

    def test_no_nfnetlink(self) -> None:
        """
        A kernel without nfnetlink refuses the socket.
        """

        def refuse(protocol: int) -> socket.socket:
            raise OSError(errno.EPROTONOSUPPORT, os.strerror(errno.EPROTONOSUPPORT))

        self.patch(nftables, "_open_socket", refuse)
        error = self.assertRaises(NftablesUnavailable, OwnedTable)
        self.assertIn("no nfnetlink", str(error))

    def test_explanations(self) -> None:
        """
        Each errno of table creation names what is missing and the fix.
        """
        explain = nftables._explain
        cases = [
            (explain("table", errno.EOPNOTSUPP, False, (6, 1)), NftablesUnavailable, "no nf_tables"),
            (explain("table", errno.EINVAL, True, (5, 10)), NftablesUnavailable, "Linux 5.10"),
            (explain("table", errno.EOPNOTSUPP, True, (5, 11)), NftablesUnavailable, "5.12 or later"),
            (explain("table", errno.EAFNOSUPPORT, True, (6, 1)), NftablesUnavailable, "inet family"),
            (explain("table", errno.EPERM, True, (6, 1)), NftablesUnavailable, "CAP_NET_ADMIN"),
            (explain("add a rule", errno.EPERM, True, (6, 1)), NftablesUnavailable, "CAP_NET_ADMIN"),
            (explain("table", errno.EEXIST, True, (6, 1), True), RuntimeError, "exists already"),
            (explain("table", errno.EPERM, True, (6, 1), True), RuntimeError, "exists already"),
            (explain("add a rule", errno.ENOENT, True, (6, 1)), RuntimeError, "No such file"),
        ]
        for error, kind, text in cases:
            self.assertIs(type(error), kind)
            self.assertIn(text, str(error))
            self.assertNotIn("\n", str(error))


# -- with root -------------------------------------------------------------------


class RootTestCase(TestCase):
    skip = ROOT_SKIP
    timeout = 120

    def setUp(self) -> None:
        require_nft()
        from lab import netlab

        netlab.sweep_stale()

    def open_table(self, ns: str, name: str | None = None) -> OwnedTable:
        with in_namespace(ns):
            table = OwnedTable(name)
        self.addCleanup(table.close)
        return table


class TableTests(RootTestCase):
    """
    The table, its chain and its rules, as the kernel holds them.
    """

    def test_rules_appear(self) -> None:
        """
        The owned table holds one output chain and the rules, each what nft
        makes of L{describe}'s command; removed rules go; closing the socket
        takes the table away.
        """
        ns = make_namespace(self)
        table = self.open_table(ns)
        self.assertEqual(table.name, f"faketcp_twisted_{os.getpid()}")
        for rule in ALL_RULES:
            table.add(rule)
        self.assertEqual(table.rules(), ALL_RULES)

        found = ruleset(ns)
        self.assertEqual([(t["family"], t["name"]) for t in found["table"]], [("inet", table.name)])
        # nft 1.0.6's JSON garbles table flags: read them from the text.
        self.assertIn("flags owner", run_in(ns, "nft", "list", "table", "inet", table.name).stdout)
        [chain] = found["chain"]
        self.assertEqual(
            {k: chain[k] for k in ("family", "table", "name", "type", "hook", "prio", "policy")},
            {
                "family": "inet",
                "table": table.name,
                "name": "output",
                "type": "filter",
                "hook": "output",
                "prio": 0,
                "policy": "accept",
            },
        )
        exprs = rule_exprs(ns, table.name)
        self.assertEqual([e[:3] for e in exprs], [expected_head(r) for r in ALL_RULES])
        self.assertEqual([e[-1] for e in exprs], [{"drop": None}] * 4)

        # The same rules made by nft from describe()'s commands, in a table
        # of its own: the expressions must be the same.
        for command in describe_table("ftt_reference") + [describe(r, "ftt_reference") for r in ALL_RULES]:
            run_in(ns, "sh", "-c", command)
        self.assertEqual(rule_exprs(ns, "ftt_reference"), exprs)
        run_in(ns, "nft", "delete", "table", "inet", "ftt_reference")

        table.remove(SERVER4)
        table.remove(CLIENT6)
        self.assertEqual(table.rules(), [SERVER6, CLIENT4])
        self.assertEqual([e[:3] for e in rule_exprs(ns, table.name)], [expected_head(SERVER6), expected_head(CLIENT4)])

        table.close()
        self.assertTrue(table.closed)
        took = wait_for(lambda: tables(ns) == [], 1.0)
        # close() returns once the kernel has deleted it: the first look
        # (an nft run) finds it gone.
        print(f"\n  table gone {took * 1000:.1f} ms after close() (one nft run)")
        self.assertRaises(RuntimeError, table.add, SERVER4)
        table.close()  # idempotent

    def test_misuse(self) -> None:
        """
        A rule added twice, a rule never added and a second table of one
        name are errors.
        """
        ns = make_namespace(self)
        table = self.open_table(ns)
        table.add(CLIENT4)
        self.assertRaises(ValueError, table.add, CLIENT4)
        self.assertRaises(KeyError, table.remove, SERVER4)
        error = self.assertRaises(RuntimeError, self.open_table, ns)
        self.assertIn("exists already", str(error))
        self.assertEqual(len(rule_exprs(ns, table.name)), 1)

    def test_namespaces(self) -> None:
        """
        A table lives in the namespace it was created in; its rules go there
        whichever namespace the caller is in later.  One process has one
        table of the same name per namespace.
        """
        first, second = make_namespace(self), make_namespace(self)
        one = self.open_table(first)
        two = self.open_table(second)
        one.add(SERVER4)  # from the test's own namespace
        two.add(CLIENT6)
        with in_namespace(second):
            one.add(SERVER6)
        self.assertEqual([e[:3] for e in rule_exprs(first, one.name)], [expected_head(SERVER4), expected_head(SERVER6)])
        self.assertEqual([e[:3] for e in rule_exprs(second, two.name)], [expected_head(CLIENT6)])
        self.assertEqual(one.netns, os.stat(f"/var/run/netns/{first}").st_ino)
        self.assertNotIn(one.name, _host_tables())

    def test_without_pyroute2(self) -> None:
        """
        The module works in a process where pyroute2 cannot be imported:
        table, rules, and the probes that explain a refused table.
        """
        ns = make_namespace(self)
        script = (
            "import socket, sys\n"
            "sys.modules['pyroute2'] = None  # any import of it fails\n"
            "from faketcp_twisted.io.firewall import SilenceRule\n"
            "from faketcp_twisted.io.nftables import OwnedTable\n"
            "table = OwnedTable()\n"
            "rule = SilenceRule(socket.AF_INET6, 9191, '2001:2::2')\n"
            "table.add(rule)\n"
            "table.add(SilenceRule(socket.AF_INET, 9191))\n"
            "table.remove(rule)\n"
            "try:\n"
            "    OwnedTable()\n"
            "except RuntimeError as error:\n"
            "    print('refused:', error)\n"
            "print('ready', table.name, flush=True)\n"
            "sys.stdin.read()\n"
        )
        with in_namespace(ns):
            child = subprocess.Popen(
                [sys.executable, "-c", script],
                cwd=CHECKOUT,
                env={**os.environ, "PYTHONPATH": CHECKOUT},
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        self.addCleanup(stop_child, child)
        assert child.stdout is not None
        ready, _, _ = select.select([child.stdout], [], [], 15)
        refused = child.stdout.readline() if ready else ""
        self.assertTrue(refused.startswith("refused: "), (refused, child.poll()))
        self.assertIn("exists already", refused)
        name = child.stdout.readline().split()[1]
        self.assertEqual(tables(ns), [name])
        self.assertEqual([e[:3] for e in rule_exprs(ns, name)], [expected_head(SERVER4)])
        # Closing its stdin ends the child, and its table goes.
        output, errors = child.communicate(timeout=10)
        self.assertEqual((child.returncode, errors), (0, ""))
        wait_for(lambda: tables(ns) == [], 1.0)

    def test_inside_asyncio_loop(self) -> None:
        """
        A table works inside a running asyncio event loop (the asyncio
        reactor), where pyroute2's own synchronous classes fail.
        """
        import asyncio

        ns = make_namespace(self)

        async def use() -> list[SilenceRule]:
            table = self.open_table(ns)
            table.add(SERVER6)
            return table.rules()

        self.assertEqual(asyncio.run(use()), [SERVER6])
        self.assertEqual([e[:3] for e in rule_exprs(ns, f"faketcp_twisted_{os.getpid()}")], [expected_head(SERVER6)])


def _host_tables() -> list[str]:
    output = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=False).stdout
    return [line.split()[-1] for line in output.splitlines()]


class TrafficTests(RootTestCase):
    """
    The rules drop what they should in a two-host lab, and nothing else.
    """

    def setUp(self) -> None:
        super().setUp()
        from lab import netlab

        self.lab = netlab.two_hosts()
        self.addCleanup(self.lab.destroy)

    def socket_in(self, ns: str, family: int) -> socket.socket:
        with in_namespace(ns):
            made = socket.socket(family, socket.SOCK_STREAM)
        self.addCleanup(made.close)
        made.settimeout(5)
        return made

    def nothing_arrives(self, receiver: socket.socket, seconds: float = 1.0) -> None:
        receiver.settimeout(seconds)
        self.assertRaises(TimeoutError, receiver.recv, 100)
        receiver.settimeout(5)

    def check_server_rule(self, family: int, server: str) -> None:
        """
        A marked listener's connections complete their handshake (SYN-ACK
        passes), its data does not leave; unmarked again, it does.
        """
        port = 9191
        table = self.open_table(self.lab.S)
        table.add(SilenceRule(family, port))
        listener = self.socket_in(self.lab.S, family)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, DEFAULT_MARK)
        listener.bind((server, port))
        listener.listen(4)
        client = self.socket_in(self.lab.C, family)
        client.connect((server, port))
        accepted, _ = listener.accept()  # the handshake completed
        self.addCleanup(accepted.close)
        client.sendall(b"request")  # inbound: never the rule's business
        self.assertEqual(accepted.recv(100), b"request")
        accepted.sendall(b"reply")
        self.nothing_arrives(client)
        accepted.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, 0)
        # The kernel retransmits the dropped segment, now unmarked.
        received = b""
        while len(received) < 5:
            received += client.recv(100)
        self.assertEqual(received, b"reply")

    def check_client_rule(self, family: int, server: str) -> None:
        """
        A marked client's SYN passes (connect returns) but nothing after it
        reaches the server; an unmarked client's data does.
        """
        port = 9192
        table = self.open_table(self.lab.C)
        table.add(SilenceRule(family, port, server))
        listener = self.socket_in(self.lab.S, family)
        listener.bind((server, port))
        listener.listen(4)
        marked = self.socket_in(self.lab.C, family)
        marked.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, DEFAULT_MARK)
        marked.connect((server, port))  # SYN out, SYN-ACK back
        marked.sendall(b"dropped")
        # Its handshake's last ACK and its data are dropped: the server
        # never gets an established connection out of it.
        listener.settimeout(1.0)
        self.assertRaises(TimeoutError, listener.accept)
        plain = self.socket_in(self.lab.C, family)
        plain.connect((server, port))
        plain.sendall(b"passes")
        listener.settimeout(5)
        accepted, peer = listener.accept()
        self.addCleanup(accepted.close)
        self.assertEqual(peer[1], plain.getsockname()[1])
        self.assertEqual(accepted.recv(100), b"passes")

    def test_server_ipv4(self) -> None:
        self.check_server_rule(socket.AF_INET, self.lab.server4)

    def test_server_ipv6(self) -> None:
        self.check_server_rule(socket.AF_INET6, self.lab.server6)

    def test_client_ipv4(self) -> None:
        self.check_client_rule(socket.AF_INET, self.lab.server4)

    def test_client_ipv6(self) -> None:
        self.check_client_rule(socket.AF_INET6, self.lab.server6)


class OwnershipTests(RootTestCase):
    """
    The kernel removes a killed process's table, and only that one.
    """

    def test_sigkill(self) -> None:
        """
        A process killed with SIGKILL runs no cleanup and leaves no table.
        """
        ns = make_namespace(self)
        child, name = start_child(self, ns)
        self.assertEqual(tables(ns), [name])
        self.assertEqual(len(rule_exprs(ns, name)), 2)
        os.kill(child.pid, signal.SIGKILL)
        output, _ = child.communicate(timeout=10)
        self.assertEqual(child.returncode, -signal.SIGKILL)
        self.assertNotIn("cleanup ran", output)
        took = wait_for(lambda: tables(ns) == [], 1.0)
        print(f"\n  table gone {took * 1000:.1f} ms after the process was reaped")

    def test_two_processes(self) -> None:
        """
        Two processes with the same rules have a table each; nobody else may
        delete one, a flush of the ruleset leaves them, and killing one
        process leaves the other's table as it was.
        """
        ns = make_namespace(self)
        first, first_name = start_child(self, ns)
        second, second_name = start_child(self, ns)
        self.assertEqual(sorted(tables(ns)), sorted([first_name, second_name]))
        before = rule_exprs(ns, second_name)
        self.assertEqual(before, rule_exprs(ns, first_name))
        self.assertEqual(len(before), 2)

        refused = run_in(ns, "nft", "delete", "table", "inet", second_name, check=False)
        self.assertNotEqual(refused.returncode, 0)
        self.assertIn("Operation not permitted", refused.stderr)
        run_in(ns, "nft", "flush", "ruleset")
        self.assertEqual(sorted(tables(ns)), sorted([first_name, second_name]))

        stop_child(first)
        wait_for(lambda: tables(ns) == [second_name], 1.0)
        self.assertEqual(rule_exprs(ns, second_name), before)
        self.assertIsNone(second.poll())
        stop_child(second)
        wait_for(lambda: tables(ns) == [], 1.0)


class CostTests(RootTestCase):
    """
    What installing the silencing costs; figures printed, nothing asserted.
    """

    timeout = 300
    later = [SilenceRule(socket.AF_INET, 9191, f"198.18.0.{n}") for n in range(10, 15)]

    def test_install_time(self) -> None:
        """
        nftables (a table per round: create, first rule, later rules,
        removal, close) against python-iptables (the project's silencer:
        acquire, release), in an empty namespace.
        """
        ns = make_namespace(self)
        create, first, later, remove, close = self.nftables_rounds(ns, 100)
        ipt_first, ipt_later, ipt_release = self.iptables_rounds(ns, 20)
        table = self.fresh_processes(ns, FRESH_TABLE, 20)
        via_nft = self.fresh_processes(ns, FRESH_SILENCER.replace("BACKEND", "'nftables'"), 10)
        via_ipt = self.fresh_processes(ns, FRESH_SILENCER.replace("BACKEND", "'iptables'"), 10)
        # Nothing on the nftables path imports pyroute2 (issue 15).
        self.assertEqual([r["pyroute2"] for r in table + via_nft], [False] * 30)
        print()
        print("  a fresh process, timed from before its first import of the project:")
        print(f"  nftables  imports                          {figures([r['imports'] for r in table])}")
        print(f"  nftables  first table + rule, with imports {figures([r['first'] for r in table])}")
        print(f"  nftables  first table + rule, after them   {figures([r['first'] - r['imports'] for r in table])}")
        print(f"  nftables  later rule                       {figures([t for r in table for t in r['later']])}")
        print(f"  silencer  imports                          {figures([r['imports'] for r in via_nft])}")
        print(f"  silencer  nftables first rule, w/ imports  {figures([r['first'] for r in via_nft])}")
        print(f"  silencer  nftables first rule, after them  {figures([r['first'] - r['imports'] for r in via_nft])}")
        print(f"  silencer  nftables later rule              {figures([t for r in via_nft for t in r['later']])}")
        print(f"  silencer  iptables first rule, w/ imports  {figures([r['first'] for r in via_ipt])}")
        print(f"  silencer  iptables first rule, after them  {figures([r['first'] - r['imports'] for r in via_ipt])}")
        print(f"  silencer  iptables later rule              {figures([t for r in via_ipt for t in r['later']])}")
        print("  one process, many rounds (imports done):")
        print(f"  nftables  create table+chain   {figures(create)}")
        print(f"  nftables  first rule           {figures(first)}")
        print(f"  nftables  later rule           {figures(later)}")
        print(f"  nftables  remove rule          {figures(remove)}")
        print(f"  nftables  close (table gone)   {figures(close)}")
        print(f"  nftables  table + first rule   {figures([a + b for a, b in zip(create, first, strict=True)])}")
        print(f"  iptables  acquire first rule   {figures(ipt_first)}")
        print(f"  iptables  acquire later rule   {figures(ipt_later)}")
        print(f"  iptables  release rule         {figures(ipt_release)}")

    def test_install_time_loaded(self) -> None:
        """
        The same with 300 other rules: in the owned table (a client with as
        many destinations) and in the legacy OUTPUT chain (a host's own
        firewall), since libiptc rewrites the whole table for each change.
        """
        ns = make_namespace(self)
        others = "\n".join(
            f"-A OUTPUT -p tcp -d 198.19.{n // 250}.{n % 250 + 1} --dport 1 -j ACCEPT" for n in range(300)
        )
        run_in(ns, "sh", "-c", f"printf '*filter\\n{others}\\nCOMMIT\\n' | iptables-legacy-restore --noflush")
        self.assertEqual(run_in(ns, "iptables-legacy", "-S", "OUTPUT").stdout.count("--dport 1 "), 300)
        _, _, later, remove, _ = self.nftables_rounds(ns, 20, background=300)
        ipt_first, ipt_later, ipt_release = self.iptables_rounds(ns, 4)
        print()
        print(f"  nftables  later rule (300 in the table)     {figures(later)}")
        print(f"  nftables  remove rule (300 in the table)    {figures(remove)}")
        print(f"  iptables  acquire first rule (300 in chain) {figures(ipt_first)}")
        print(f"  iptables  acquire later rule (300 in chain) {figures(ipt_later)}")
        print(f"  iptables  release rule (300 in chain)       {figures(ipt_release)}")

    def nftables_rounds(self, ns: str, rounds: int, background: int = 0) -> list[list[float]]:
        create: list[float] = []
        first: list[float] = []
        later: list[float] = []
        remove: list[float] = []
        close: list[float] = []
        clock = time.perf_counter
        others = [SilenceRule(socket.AF_INET, 1, f"198.19.{n // 250}.{n % 250 + 1}") for n in range(background)]
        with in_namespace(ns):
            OwnedTable().close()  # a warm-up: the first of the process
            for _ in range(rounds):
                t0 = clock()
                table = OwnedTable()
                t1 = clock()
                table.add(SERVER4)
                t2 = clock()
                create.append(t1 - t0)
                first.append(t2 - t1)
                for rule in others:
                    table.add(rule)
                for rule in self.later:
                    t0 = clock()
                    table.add(rule)
                    later.append(clock() - t0)
                for rule in [SERVER4, *self.later]:
                    t0 = clock()
                    table.remove(rule)
                    remove.append(clock() - t0)
                t0 = clock()
                table.close()
                close.append(clock() - t0)
        return [create, first, later, remove, close]

    def iptables_rounds(self, ns: str, rounds: int) -> list[list[float]]:
        from faketcp_twisted.io import firewall

        acquire_first: list[float] = []
        acquire_later: list[float] = []
        release: list[float] = []
        clock = time.perf_counter
        silencer = firewall.silencer
        self.addCleanup(silencer.release_all)
        with in_namespace(ns):
            for _ in range(rounds):
                t0 = clock()
                silencer.acquire(SERVER4, backend="iptables")
                acquire_first.append(clock() - t0)
                for rule in self.later:
                    t0 = clock()
                    silencer.acquire(rule, backend="iptables")
                    acquire_later.append(clock() - t0)
                for rule in [SERVER4, *self.later]:
                    t0 = clock()
                    silencer.release(rule)
                    release.append(clock() - t0)
        self.assertEqual(silencer.installed(), [])
        return [acquire_first, acquire_later, release]

    def fresh_processes(self, ns: str, script: str, runs: int) -> list[dict[str, Any]]:
        """
        Run C{python -c script} in namespace C{ns}, one warm-up and C{runs}
        counted times; each prints one JSON object.

        The project's modules are loaded from bytecode, as an installed
        package's are: the warm-up compiles them into a cache of the test's
        own (not the checkout), whatever C{PYTHONDONTWRITEBYTECODE} says.
        """
        env = {**os.environ, "PYTHONPATH": CHECKOUT, "PYTHONPYCACHEPREFIX": os.path.abspath(self.mktemp())}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        results = []
        for run in range(runs + 1):
            with in_namespace(ns):
                done = subprocess.run(
                    [sys.executable, "-c", script],
                    cwd=CHECKOUT,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=False,
                )
            self.assertEqual(done.returncode, 0, done.stderr)
            if run:
                results.append(json.loads(done.stdout))
        self.assertEqual(tables(ns), [])
        return results


class PermissionTests(RootTestCase):
    """
    The kernel's refusals, met for real in a namespace.
    """

    def test_not_permitted(self) -> None:
        """
        A process without CAP_NET_ADMIN is told it lacks it.
        """
        ns = make_namespace(self)
        # Root without CAP_NET_ADMIN: dropped from the bounding set, it is
        # not in the new program's capabilities.
        script = (
            "from faketcp_twisted.io import nftables\n"
            "try:\n"
            "    nftables.OwnedTable()\n"
            "except nftables.NftablesUnavailable as error:\n"
            "    print('unavailable:', error)\n"
        )
        output = subprocess.run(
            ["ip", "netns", "exec", ns, "setpriv", "--bounding-set=-net_admin", sys.executable, "-c", script],
            capture_output=True,
            text=True,
            cwd=CHECKOUT,
            check=False,
        )
        self.assertEqual(output.returncode, 0, output.stderr)
        self.assertIn("unavailable: not permitted", output.stdout)
        self.assertIn("CAP_NET_ADMIN", output.stdout)
        self.assertEqual(tables(ns), [])

    def test_unknown_table_flag(self) -> None:
        """
        A kernel that does not know the owner flag (simulated: a flag no
        kernel knows) is reported as too old for owned tables.
        """
        ns = make_namespace(self)
        self.patch(nftables, "NFT_TABLE_F_OWNER", 0x80000000)
        error = self.assertRaises(NftablesUnavailable, self.open_table, ns)
        self.assertIn("cannot make owned nftables tables", str(error))
        self.assertIn("5.12", str(error))
        self.assertEqual(tables(ns), [])


class EncodingTests(TestCase):
    """
    The messages the module encodes by hand are byte for byte what
    pyroute2's nf_tables classes and expression helpers make of them.
    """

    def reference_rule(self, table: str, rule: SilenceRule, sequence: int) -> bytes:
        from pyroute2 import netlink
        from pyroute2.netlink.nfnetlink import NFNL_SUBSYS_NFTABLES
        from pyroute2.netlink.nfnetlink.nftsocket import (
            NFPROTO_INET,
            NFPROTO_IPV4,
            NFPROTO_IPV6,
            NFT_MSG_NEWRULE,
            Cmp,
            Meta,
            Regs,
            nft_rule_msg,
        )
        from pyroute2.nftables.expressions import genex, verdict

        def value(data: bytes) -> dict[str, Any]:
            return {"attrs": [("NFTA_DATA_VALUE", data)]}

        def meta(key: int) -> Any:
            return genex("meta", {"dreg": Regs.NFT_REG_1, "key": key})

        def payload(base: int, offset: int, length: int) -> Any:
            return genex("payload", {"dreg": Regs.NFT_REG_1, "base": base, "offset": offset, "len": length})

        def equals(data: bytes) -> Any:
            return genex("cmp", {"sreg": Regs.NFT_REG_1, "op": Cmp.NFT_CMP_EQ, "data": value(data)})

        v6 = rule.family == socket.AF_INET6
        exprs = [meta(Meta.NFT_META_MARK), equals(rule.mark.to_bytes(4, sys.byteorder))]
        exprs += [meta(Meta.NFT_META_NFPROTO), equals(bytes([NFPROTO_IPV6 if v6 else NFPROTO_IPV4]))]
        if rule.remote is not None:
            address = socket.inet_pton(rule.family, rule.remote)
            exprs += [payload(1, 24 if v6 else 16, len(address)), equals(address)]
        exprs += [meta(Meta.NFT_META_L4PROTO), equals(bytes([6]))]
        exprs += [payload(2, 0 if rule.remote is None else 2, 2), equals(rule.port.to_bytes(2, "big"))]
        exprs += [
            payload(2, 13, 1),
            genex("bitwise", {"sreg": 1, "dreg": 1, "len": 1, "mask": value(b"\x02"), "xor": value(b"\x00")}),
            equals(b"\x00"),
        ]
        exprs += verdict(0)
        msg = nft_rule_msg()
        msg["nfgen_family"] = NFPROTO_INET
        msg["attrs"] = [["NFTA_RULE_TABLE", table], ["NFTA_RULE_CHAIN", "output"], ["NFTA_RULE_EXPRESSIONS", exprs]]
        msg["header"]["type"] = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWRULE
        msg["header"]["flags"] = (
            netlink.NLM_F_REQUEST | netlink.NLM_F_ACK | netlink.NLM_F_CREATE | netlink.NLM_F_APPEND | netlink.NLM_F_ECHO
        )
        msg["header"]["sequence_number"] = sequence
        msg.encode()
        return bytes(msg.data)

    def test_new_rule(self) -> None:
        for rule in [*ALL_RULES, SilenceRule(socket.AF_INET6, 1, "2001:2::abcd", mark=0xFFFFFFFF)]:
            self.assertEqual(
                nftables._new_rule("faketcp_twisted_1234", rule, 77),
                self.reference_rule("faketcp_twisted_1234", rule, 77),
                rule,
            )

    def test_delete_rule(self) -> None:
        from pyroute2 import netlink
        from pyroute2.netlink.nfnetlink import NFNL_SUBSYS_NFTABLES
        from pyroute2.netlink.nfnetlink.nftsocket import NFPROTO_INET, NFT_MSG_DELRULE, nft_rule_msg

        msg = nft_rule_msg()
        msg["nfgen_family"] = NFPROTO_INET
        msg["attrs"] = [["NFTA_RULE_TABLE", "t"], ["NFTA_RULE_CHAIN", "output"], ["NFTA_RULE_HANDLE", 0x1234567890]]
        msg["header"]["type"] = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELRULE
        msg["header"]["flags"] = netlink.NLM_F_REQUEST | netlink.NLM_F_ACK
        msg["header"]["sequence_number"] = 9
        msg.encode()
        self.assertEqual(nftables._delete_rule("t", 0x1234567890, 9), bytes(msg.data))
        # The handle is found in a rule message the way pyroute2 finds it.
        echoed = nft_rule_msg(bytes(msg.data))
        echoed.decode()
        self.assertEqual(nftables._rule_handle(bytes(msg.data)), echoed.get_attr("NFTA_RULE_HANDLE"))
        self.assertIsNone(nftables._rule_handle(nftables._new_rule("t", SERVER4, 1)))

    def test_batch_markers(self) -> None:
        from pyroute2 import netlink
        from pyroute2.netlink.nfnetlink import NFNL_SUBSYS_NFTABLES, nfgen_msg

        for kind in (nftables.NFNL_MSG_BATCH_BEGIN, nftables.NFNL_MSG_BATCH_END):
            marker = nfgen_msg()
            marker["res_id"] = NFNL_SUBSYS_NFTABLES
            marker["header"]["type"] = kind
            marker["header"]["flags"] = netlink.NLM_F_REQUEST
            marker["header"]["sequence_number"] = 3
            marker.encode()
            self.assertEqual(nftables._batch_marker(kind, 3), bytes(marker.data))

    def reference(self, cls: Any, kind: int, flags: int, family: int, attrs: list[Any], sequence: int) -> bytes:
        """
        A message of pyroute2's nf_tables class C{cls}, encoded by pyroute2.
        """
        from pyroute2.netlink.nfnetlink import NFNL_SUBSYS_NFTABLES

        msg = cls()
        msg["nfgen_family"] = family
        msg["attrs"] = attrs
        msg["header"]["type"] = (NFNL_SUBSYS_NFTABLES << 8) | kind
        msg["header"]["flags"] = flags
        msg["header"]["sequence_number"] = sequence
        msg.encode()
        return bytes(msg.data)

    def test_new_table(self) -> None:
        from pyroute2 import netlink
        from pyroute2.netlink.nfnetlink.nftsocket import NFPROTO_INET, NFT_MSG_NEWTABLE, nft_table_msg

        flags = netlink.NLM_F_REQUEST | netlink.NLM_F_ACK | netlink.NLM_F_CREATE | netlink.NLM_F_EXCL
        for name in ("faketcp_twisted_1234", "t", "abc", "x" * 255):
            # The owner flag: NFT_TABLE_F_OWNER, 0x2 (pyroute2 has no name
            # for it).
            attrs = [["NFTA_TABLE_NAME", name], ["NFTA_TABLE_FLAGS", 0x2]]
            self.assertEqual(
                nftables._new_table(name, 0xFFFFFFFF),
                self.reference(nft_table_msg, NFT_MSG_NEWTABLE, flags, NFPROTO_INET, attrs, 0xFFFFFFFF),
                name,
            )

    def test_new_chain(self) -> None:
        from pyroute2 import netlink
        from pyroute2.netlink.nfnetlink.nftsocket import NFPROTO_INET, NFT_MSG_NEWCHAIN, nft_chain_msg

        flags = netlink.NLM_F_REQUEST | netlink.NLM_F_ACK | netlink.NLM_F_CREATE | netlink.NLM_F_EXCL
        for name in ("faketcp_twisted_1234", "t", "abc"):
            # What pyroute2's NFTables.chain("add", hook="output",
            # priority=0, type="filter", policy=1) sends: its hook
            # "output" is number 3, policy 1 is NF_ACCEPT.
            attrs = [
                ["NFTA_CHAIN_TABLE", name],
                ["NFTA_CHAIN_NAME", "output"],
                ["NFTA_CHAIN_HOOK", {"attrs": [["NFTA_HOOK_HOOKNUM", 3], ["NFTA_HOOK_PRIORITY", 0]]}],
                ["NFTA_CHAIN_POLICY", 1],
                ["NFTA_CHAIN_TYPE", "filter"],
            ]
            self.assertEqual(
                nftables._new_chain(name, 12),
                self.reference(nft_chain_msg, NFT_MSG_NEWCHAIN, flags, NFPROTO_INET, attrs, 12),
                name,
            )

    def test_probes(self) -> None:
        """
        The requests that explain a refused table: is there a table of the
        name, does the kernel answer nf_tables requests at all.
        """
        from pyroute2 import netlink
        from pyroute2.netlink.nfnetlink.nftsocket import (
            NFPROTO_INET,
            NFT_MSG_GETGEN,
            NFT_MSG_GETTABLE,
            nft_gen_msg,
            nft_table_msg,
        )

        flags = netlink.NLM_F_REQUEST | netlink.NLM_F_ACK
        self.assertEqual(
            nftables._get_table("faketcp_twisted_1234", 5),
            self.reference(
                nft_table_msg, NFT_MSG_GETTABLE, flags, NFPROTO_INET, [["NFTA_TABLE_NAME", "faketcp_twisted_1234"]], 5
            ),
        )
        self.assertEqual(
            nftables._get_generation(6),
            self.reference(nft_gen_msg, NFT_MSG_GETGEN, flags, nftables.NFPROTO_UNSPEC, [], 6),
        )
