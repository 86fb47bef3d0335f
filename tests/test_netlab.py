"""Tests for :mod:`lab.netlab`, the network-namespace lab helper."""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
import time

from pyroute2 import netns
from twisted.trial import unittest

from lab import netlab

_ROOT_SKIP = "needs root to create network namespaces" if os.geteuid() != 0 else None

SYN_ONLY = ["-p", "tcp", "--tcp-flags", "SYN,ACK,RST,FIN", "SYN"]


def _own_namespaces() -> list[str]:
    prefix = f"{netlab.NAMESPACE_PREFIX}{os.getpid()}-"
    return [n for n in netns.listnetns() if n.startswith(prefix)]


def _ns_inode() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _tcp_exchange(
    server_ns: str, client_ns: str, listen_on: str, connect_to: str
) -> tuple[str, str]:
    """Kernel-TCP round trip from ``client_ns`` to a listener in ``server_ns``.

    Returns (client address seen by the server, local address the server
    accepted on).
    """
    family = _family(connect_to)
    with netlab.in_namespace(server_ns):
        listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.bind((listen_on, 0))
        listener.listen(1)
        listener.settimeout(5)
        port = listener.getsockname()[1]
        with netlab.in_namespace(client_ns):
            client = socket.socket(family, socket.SOCK_STREAM)
        try:
            client.settimeout(5)
            client.connect((connect_to, port))
            conn, peer = listener.accept()
            with conn:
                conn.settimeout(5)
                client.sendall(b"ping")
                assert conn.recv(4) == b"ping"
                conn.sendall(b"pong")
                assert client.recv(4) == b"pong"
                return peer[0], conn.getsockname()[0]
        finally:
            client.close()
    finally:
        listener.close()


def _send_udp(ns: str, dst: str, count: int = 1, hops: int | None = None) -> None:
    family = _family(dst)
    with netlab.in_namespace(ns):
        sock = socket.socket(family, socket.SOCK_DGRAM)
    with sock:
        if hops is not None:
            if family == socket.AF_INET:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, hops)
            else:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, hops)
        for _ in range(count):
            sock.sendto(b"x", (dst, 9))


def _wait_count(
    lab: netlab.Lab, ns: str, name: str, want: int, v6: bool = False
) -> int:
    """Poll a counter briefly (packets cross the veth asynchronously)."""
    deadline = time.monotonic() + 2
    while True:
        got = lab.read_count(ns, name, v6=v6)
        if got >= want or time.monotonic() > deadline:
            return got
        time.sleep(0.01)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _send_syn_fin(ns: str, src: str, dst: str) -> None:
    """Send one TCP segment with SYN+FIN set (conntrack state INVALID)."""
    header = struct.pack("!HHIIBBHHH", 40000, 80, 1, 0, 5 << 4, 0x03, 1024, 0, 0)
    pseudo = (
        ipaddress.IPv4Address(src).packed
        + ipaddress.IPv4Address(dst).packed
        + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(header))
    )
    csum = _checksum(pseudo + header)
    header = header[:16] + struct.pack("!H", csum) + header[18:]
    with netlab.in_namespace(ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    with sock:
        sock.sendto(header, (dst, 0))


class TwoHostsTests(unittest.TestCase):
    skip = _ROOT_SKIP

    def setUp(self) -> None:
        self.lab = netlab.two_hosts()
        self.addCleanup(self.lab.destroy)

    def test_names_and_addresses(self) -> None:
        lab = self.lab
        prefix = f"ftt-{os.getpid()}-"
        self.assertTrue(lab.C.startswith(prefix))
        self.assertTrue(lab.S.startswith(prefix))
        self.assertEqual(sorted(_own_namespaces()), sorted([lab.C, lab.S]))
        for ifname in (lab.client_if, lab.server_if):
            self.assertLessEqual(len(ifname), 15)
        for address in (lab.client4, lab.server4, lab.client6, lab.server6):
            ip = ipaddress.ip_address(address)
            net = "198.18.0.0/15" if ip.version == 4 else "2001:2::/48"
            self.assertIn(ip, ipaddress.ip_network(net))
        offload = lab.run(lab.C, "ethtool", "-k", lab.client_if).stdout
        self.assertIn("tx-checksumming: off", offload)

    def test_tcp_v4(self) -> None:
        peer, _ = _tcp_exchange(
            self.lab.S, self.lab.C, self.lab.server4, self.lab.server4
        )
        self.assertEqual(peer, self.lab.client4)

    def test_tcp_v6(self) -> None:
        peer, _ = _tcp_exchange(
            self.lab.S, self.lab.C, self.lab.server6, self.lab.server6
        )
        self.assertEqual(peer, self.lab.client6)

    def test_count_syn(self) -> None:
        lab = self.lab
        lab.count_packets(lab.S, "syn", SYN_ONLY)
        lab.count_packets(lab.S, "syn", SYN_ONLY, v6=True)
        self.assertEqual(lab.read_count(lab.S, "syn"), 0)
        _tcp_exchange(lab.S, lab.C, lab.server4, lab.server4)
        self.assertEqual(lab.read_count(lab.S, "syn"), 1)
        self.assertEqual(lab.read_count(lab.S, "syn", v6=True), 0)
        _tcp_exchange(lab.S, lab.C, lab.server6, lab.server6)
        self.assertEqual(lab.read_count(lab.S, "syn", v6=True), 1)
        self.assertRaises(KeyError, lab.read_count, lab.C, "syn")

    def test_count_rst_and_ttl(self) -> None:
        lab = self.lab
        rst = ["-p", "tcp", "--tcp-flags", "RST", "RST"]
        lab.count_packets(lab.C, "rst", rst)
        lab.count_packets(lab.C, "rst", rst, v6=True)
        lab.count_packets(lab.S, "ttl1", ["-p", "udp", "-m", "ttl", "--ttl-eq", "1"])
        lab.count_packets(
            lab.S, "hl1", ["-p", "udp", "-m", "hl", "--hl-eq", "1"], v6=True
        )
        for address in (lab.server4, lab.server6):
            with netlab.in_namespace(lab.C):
                sock = socket.socket(_family(address), socket.SOCK_STREAM)
            with sock:
                sock.settimeout(5)
                self.assertRaises(ConnectionRefusedError, sock.connect, (address, 9))
        self.assertEqual(lab.read_count(lab.C, "rst"), 1)
        self.assertEqual(lab.read_count(lab.C, "rst", v6=True), 1)

        _send_udp(lab.C, lab.server4, count=2, hops=1)
        _send_udp(lab.C, lab.server4, count=1, hops=2)
        _send_udp(lab.C, lab.server6, count=3, hops=1)
        self.assertEqual(_wait_count(lab, lab.S, "ttl1", 2), 2)
        self.assertEqual(_wait_count(lab, lab.S, "hl1", 3, v6=True), 3)

    def test_in_namespace_restores_on_exception(self) -> None:
        before = _ns_inode()
        with self.assertRaises(ZeroDivisionError):
            with netlab.in_namespace(self.lab.C):
                self.assertNotEqual(_ns_inode(), before)
                with netlab.in_namespace(self.lab.S):
                    inner = _ns_inode()
                self.assertNotEqual(inner, _ns_inode())
                raise ZeroDivisionError("inside the namespaces")
        self.assertEqual(_ns_inode(), before)
        self.assertRaises(netlab.LabError, netlab.in_namespace("ftt-missing").__enter__)
        self.assertEqual(_ns_inode(), before)

    def test_destroy(self) -> None:
        self.lab.destroy()
        self.lab.destroy()
        self.assertEqual(_own_namespaces(), [])


class ExtraAddressTests(unittest.TestCase):
    skip = _ROOT_SKIP

    def test_wildcard_listener_two_addresses(self) -> None:
        lab = netlab.two_hosts(extra_server_addresses=1)
        self.addCleanup(lab.destroy)
        self.assertEqual(lab.server4_extra, ["198.18.0.3"])
        self.assertEqual(lab.server6_extra, ["2001:2::3"])
        for wildcard, addresses in (
            ("0.0.0.0", lab.server4_all),
            ("::", lab.server6_all),
        ):
            for address in addresses:
                peer, local = _tcp_exchange(lab.S, lab.C, wildcard, address)
                self.assertEqual(local, address)
                self.assertIn(peer, (lab.client4, lab.client6))


class RoutedNatTests(unittest.TestCase):
    skip = _ROOT_SKIP

    def setUp(self) -> None:
        self.lab = netlab.routed_nat()
        self.addCleanup(self.lab.destroy)

    def test_nat_v4(self) -> None:
        lab = self.lab
        lab.count_packets(lab.S, "syn", SYN_ONLY)
        peer, _ = _tcp_exchange(lab.S, lab.C, lab.server4, lab.server4)
        self.assertEqual(peer, lab.router_server4)
        self.assertEqual(peer, lab.nat_address4)
        self.assertEqual(lab.read_count(lab.S, "syn"), 1)
        self.assertEqual(lab.conntrack_invalid_drops(), 0)

    def test_routed_v6(self) -> None:
        lab = self.lab
        peer, _ = _tcp_exchange(lab.S, lab.C, lab.server6, lab.server6)
        self.assertEqual(peer, lab.client6)
        self.assertEqual(lab.conntrack_invalid_drops(v6=True), 0)

    def test_conntrack_invalid_drops(self) -> None:
        lab = self.lab
        synfin = ["-p", "tcp", "--tcp-flags", "SYN,FIN", "SYN,FIN"]
        lab.count_packets(lab.R, "synfin", synfin)
        lab.count_packets(lab.S, "tcp", ["-p", "tcp"])
        _send_syn_fin(lab.C, lab.client4, lab.server4)
        self.assertEqual(_wait_count(lab, lab.R, "synfin", 1), 1)
        self.assertEqual(lab.conntrack_invalid_drops(lab.R), 1)
        self.assertEqual(lab.read_count(lab.S, "tcp"), 0)

    def test_no_loss_rule_by_default(self) -> None:
        self.assertRaises(KeyError, self.lab.loss_drops)


class LossTests(unittest.TestCase):
    skip = _ROOT_SKIP

    def test_total_loss(self) -> None:
        lab = netlab.routed_nat(loss=1.0)
        self.addCleanup(lab.destroy)
        lab.count_packets(lab.R, "udp", ["-p", "udp"])
        lab.count_packets(lab.S, "udp", ["-p", "udp"])
        lab.count_packets(lab.R, "udp", ["-p", "udp"], v6=True)
        _send_udp(lab.C, lab.server4, count=3)
        _send_udp(lab.C, lab.server6, count=2)
        self.assertEqual(_wait_count(lab, lab.R, "udp", 3), 3)
        self.assertEqual(_wait_count(lab, lab.R, "udp", 2, v6=True), 2)
        self.assertEqual(lab.loss_drops(), 3)
        self.assertEqual(lab.loss_drops(v6=True), 2)
        self.assertEqual(lab.read_count(lab.S, "udp"), 0)


class SweepTests(unittest.TestCase):
    skip = _ROOT_SKIP

    def test_sweep_stale(self) -> None:
        dead = "ftt-999999-x"
        alive = f"ftt-{os.getpid()}-sweep-x"
        for name in (dead, alive):
            if name not in netns.listnetns():
                netlab.create_namespace(name)
        self.addCleanup(lambda: alive in netns.listnetns() and netns.remove(alive))
        self.assertIn(dead, netlab.sweep_stale())
        names = netns.listnetns()
        self.assertNotIn(dead, names)
        self.assertIn(alive, names)

    def test_lab_creation_sweeps(self) -> None:
        dead = "ftt-999998-y"
        netlab.create_namespace(dead)
        lab = netlab.two_hosts()
        self.addCleanup(lab.destroy)
        self.assertNotIn(dead, netns.listnetns())
