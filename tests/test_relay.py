# -*- test-case-name: tests.test_relay -*-
"""
C{twistd faketcp-relay} end to end: real twistd processes in two lab
namespaces, a UDP echo behind the server relay, UDP clients in front of the
client relay.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
import subprocess
import sys

from twisted.trial.unittest import SkipTest, TestCase

from lab import netlab
from tests.relaylab import (
    CHECKOUT,
    TWISTD,
    RelayProcess,
    UDPClient,
    UDPEcho,
    drops_in,
    listen_udp,
    pids_of,
    rules,
    temp_dir,
    udp_sockets,
)
from tests.support import require_root, sleep, wait_until

FAKETCP_PORT = 9191
ECHO_PORT = 5000
CLIENT_PORT = 4000


class RelayTestCase(TestCase):
    """
    A two-host lab with a UDP echo in S, and helpers to run the relays.
    """

    timeout = 60

    def setUp(self) -> None:
        require_root()
        self.lab = netlab.two_hosts()
        self.addCleanup(self.lab.destroy)
        self.directory = temp_dir(self)
        self.echo = UDPEcho()
        listen_udp(self, self.lab.S, self.echo, ECHO_PORT)

    def relay(self, ns: str, name: str, *args: str, twistd_args: tuple[str, ...] = ()) -> RelayProcess:
        relay = RelayProcess(self.lab, ns, list(args), self.directory, name, twistd_args)
        self.addCleanup(relay.kill)
        return relay

    def server(self, *extra: str) -> RelayProcess:
        return self.relay(
            self.lab.S, "server",
            "--listen", f"faketcp:{FAKETCP_PORT}:interface=0.0.0.0",
            "--forward", f"udp:host=127.0.0.1:port={ECHO_PORT}",
            "--stats-interval", "1", *extra,
        )  # fmt: skip

    def client(self, *extra: str) -> RelayProcess:
        return self.relay(
            self.lab.C, "client",
            "--listen", f"udp:{CLIENT_PORT}:interface=127.0.0.1",
            "--forward", f"faketcp:host={self.lab.server4}:port={FAKETCP_PORT}",
            "--stats-interval", "1", *extra,
        )  # fmt: skip

    async def pair(
        self, server_args: tuple[str, ...] = (), client_args: tuple[str, ...] = ()
    ) -> tuple[RelayProcess, RelayProcess]:
        server = self.server(*server_args).start()
        client = self.client(*client_args).start()
        await server.ready()
        await client.ready()
        return server, client

    def udp_client(self) -> UDPClient:
        client = UDPClient(("127.0.0.1", CLIENT_PORT))
        listen_udp(self, self.lab.C, client)
        return client

    async def ping(self, client: UDPClient, tag: bytes, timeout: float = 10.0) -> None:
        """
        Send C{tag} every 0.2 s until it comes back.
        """
        waited = 0.0
        count = 0
        while True:
            payload = tag + b"#%d" % count
            client.send(payload)
            count += 1
            for _ in range(4):
                await sleep(0.05)
                waited += 0.05
                if any(d.startswith(tag + b"#") for d in client.received):
                    return
            if waited > timeout:
                raise AssertionError(f"{tag!r} never came back")

    def assertNoRules(self) -> None:
        for ns in (self.lab.S, self.lab.C):
            self.assertEqual(rules(self.lab, ns), [], ns)


class EndToEndTests(RelayTestCase):
    """
    Many UDP sources through a client relay and a server relay.
    """

    async def test_many_clients(self) -> None:
        """
        20 UDP sources each get their own fake-TCP connection and their own
        UDP socket toward the target; every datagram comes back whole and to
        its own source only; SIGUSR1 logs the flow table; SIGTERM stops
        both relays with status 0 and leaves no rule.
        """
        server, client = await self.pair()
        sources = [self.udp_client() for _ in range(20)]
        sent: list[list[bytes]] = []
        for index, source in enumerate(sources):
            mine = [b"%d:%d:" % (index, n) + b"d" * (n * 145) for n in range(10)]
            sent.append(mine)
            for datagram in mine:
                source.send(datagram)
        try:
            await wait_until(lambda: all(len(s.received) >= 10 for s in sources), timeout=10)
        except AssertionError:
            counts = [len(s.received) for s in sources]
            server.signal(signal.SIGUSR1)
            client.signal(signal.SIGUSR1)
            await sleep(0.5)
            raise AssertionError(f"echoes per source: {counts}\n{client.describe()}\n{server.describe()}") from None
        await sleep(0.2)
        for source, mine in zip(sources, sent, strict=True):
            self.assertEqual(source.received, mine)
        self.assertEqual(len(self.echo.sources), 20)
        self.assertEqual(len(udp_sockets(self.lab, self.lab.S, ECHO_PORT)), 20)

        await server.wait_log(r"stats 1s: flows 20 ")
        server.signal(signal.SIGUSR1)
        client.signal(signal.SIGUSR1)
        await server.wait_log(r"flow table: 20 flow\(s\)")
        await client.wait_log(r"flow table: 20 flow\(s\)")

        await client.terminate()
        await server.terminate()
        self.assertNoRules()
        for relay in (client, server):
            totals = relay.totals()
            self.assertIn("udp->faketcp 200 dgrams", totals)
            self.assertIn("faketcp->udp 200 dgrams", totals)
            self.assertIn("drops none", totals)

    async def test_ipv6(self) -> None:
        """
        The relays carry datagrams over IPv6 fake-TCP, to an IPv6 target.
        """
        echo6 = UDPEcho()
        listen_udp(self, self.lab.S, echo6, ECHO_PORT + 1, interface="::1")
        server = self.relay(
            self.lab.S, "server6",
            "--listen", rf"faketcp:{FAKETCP_PORT}:interface=\:\:",
            "--forward", rf"udp:host=\:\:1:port={ECHO_PORT + 1}",
        ).start()  # fmt: skip
        server6 = self.lab.server6.replace(":", "\\:")
        client = self.relay(
            self.lab.C, "client6",
            "--listen", rf"udp:{CLIENT_PORT}:interface=\:\:1",
            "--forward", f"faketcp:host={server6}:port={FAKETCP_PORT}",
        ).start()  # fmt: skip
        await server.ready()
        await client.ready()
        source = UDPClient(("::1", CLIENT_PORT))
        listen_udp(self, self.lab.C, source, interface="::1")
        await self.ping(source, b"six")
        self.assertTrue(echo6.received)
        await client.terminate()
        await server.terminate()
        self.assertNoRules()


    async def test_asyncio_reactor(self) -> None:
        """
        Both relays run on twistd's asyncio reactor as well.
        """
        server = self.relay(
            self.lab.S, "server-asyncio",
            "--listen", f"faketcp:{FAKETCP_PORT}", "--forward", f"udp:host=127.0.0.1:port={ECHO_PORT}",
            twistd_args=("--reactor=asyncio",),
        ).start()  # fmt: skip
        client = self.relay(
            self.lab.C, "client-asyncio",
            "--listen", f"udp:{CLIENT_PORT}", "--forward", f"faketcp:host={self.lab.server4}:port={FAKETCP_PORT}",
            twistd_args=("--reactor=asyncio",),
        ).start()  # fmt: skip
        await server.ready()
        await client.ready()
        self.assertIn("AsyncioSelectorReactor", server.log())
        await self.ping(self.udp_client(), b"asyncio")
        await client.terminate()
        await server.terminate()
        self.assertNoRules()


class OversizeTests(RelayTestCase):
    """
    Datagrams larger than the MSS are dropped whole, counted, logged once.
    """

    async def oversize(
        self, mss: int, server_args: tuple[str, ...] = (), client_args: tuple[str, ...] = ()
    ) -> tuple[RelayProcess, RelayProcess]:
        """
        One byte over C{mss} is dropped (in either direction), exactly
        C{mss} passes, nothing arrives truncated or split, and the drops
        are counted and logged once per flow with the room and the path MTU
        (1500 on the lab's veth).
        """
        server, client = await self.pair(server_args, client_args)
        source = self.udp_client()
        await self.ping(source, b"small")
        source.received.clear()
        source.send(b"o" * (mss + 1))
        source.send(b"m" * mss)
        await wait_until(lambda: len(source.received) == 1)
        self.assertEqual(source.received, [b"m" * mss])
        # Far above Twisted's default read size of 8192: seen whole, dropped.
        source.send(b"o" * 9000)
        # The target's reply is the one too large, on the server's side.
        source.send(b"BIG:%d" % (mss + 1))
        source.send(b"after")
        await wait_until(lambda: source.received[-1:] == [b"after"])
        self.assertEqual(source.received, [b"m" * mss, b"after"])
        self.assertEqual([d for d in self.echo.received if d.startswith(b"o")], [])
        self.assertNotIn(mss + 1, [len(d) for d in self.echo.received])

        room = rf"larger than the {mss} bytes a fake-TCP segment carries \(path MTU 1500"
        await client.wait_log(rf"dropped a {mss + 1}-byte datagram from UDP .*{room}")
        await server.wait_log(rf"dropped a {mss + 1}-byte datagram from the UDP target .*{room}")
        await client.terminate()
        await server.terminate()
        self.assertEqual(len(re.findall("dropped a ", client.log())), 1)
        self.assertEqual(drops_in(client.totals(), "oversize"), 2)
        self.assertEqual(drops_in(server.totals(), "oversize"), 1)
        return server, client

    async def test_oversize_dropped_not_truncated(self) -> None:
        """
        With timestamps (the default; the kernel's handshake agreed on
        them), a segment on a 1500-byte IPv4 path carries 1448 bytes, and
        the log line says where the other 12 went.
        """
        _, client = await self.oversize(1448)
        self.assertIn("12 bytes of each segment carry TCP timestamps, --no-timestamps gives them back", client.log())

    async def test_oversize_without_timestamps(self) -> None:
        """
        With C{--no-timestamps} on both relays, segments carry no options
        and 1460 bytes each.
        """
        await self.oversize(1460, ("--no-timestamps",), ("--no-timestamps",))


class LifecycleTests(RelayTestCase):
    """
    Idle expiry, reconnection, and the firewall rules across stops and
    kills.
    """

    timeout = 90

    async def test_idle_expiry_frees_udp_socket(self) -> None:
        """
        A flow idle for --idle-timeout is closed on both relays and the
        server's UDP socket toward the target is freed; the same source
        then gets a new flow.
        """
        server, client = await self.pair(("--idle-timeout", "1"), ("--idle-timeout", "1"))
        source = self.udp_client()
        await self.ping(source, b"one")
        self.assertEqual(len(udp_sockets(self.lab, self.lab.S, ECHO_PORT)), 1)
        await wait_until(lambda: not udp_sockets(self.lab, self.lab.S, ECHO_PORT), timeout=5, step=0.1)
        await client.wait_log(r"idle for 1 s: closing")
        await server.wait_log(r"flow from fake-TCP .* closed")
        await server.wait_log(r"stats 1s: flows 0 ")
        await self.ping(source, b"two")
        self.assertEqual(len(udp_sockets(self.lab, self.lab.S, ECHO_PORT)), 1)

    async def test_reconnect_after_server_restart(self) -> None:
        """
        After the server relay is stopped (FIN) or killed (silence: found
        dead by keepalives and the peer timeout) and started again, the
        same UDP source gets through again, on a new connection; the killed
        relay's table went with it (the default backend, nftables).
        """
        server, client = await self.pair(client_args=("--keepalive", "0.3", "--peer-timeout", "1.5"))
        source = self.udp_client()
        await self.ping(source, b"before")

        await server.terminate(signal.SIGTERM)
        await client.wait_log(r"connection to .* ended \(.*\); a new one is made on the next datagram")
        server.start()
        await server.ready()
        await self.ping(source, b"after-term")

        await server.stop(signal.SIGKILL)
        self.assertEqual(rules(self.lab, self.lab.S), [])
        server.start()
        await server.ready()
        self.assertEqual(pids_of(rules(self.lab, self.lab.S)), {server.process.pid})  # type: ignore[union-attr]
        await self.ping(source, b"after-kill", timeout=15)
        self.assertEqual(len(re.findall(r"a new one is made on the next datagram", client.log())), 2)
        self.assertEqual(len(re.findall(r"flow 127\.0\.0\.1:\d+: fake-TCP connection .* up", client.log())), 3)

    async def test_sigterm_leaves_nothing(self) -> None:
        """
        SIGTERM and SIGINT stop the relays with status 0 and remove every
        rule; no kernel socket of the port is left.
        """
        server, client = await self.pair()
        for n in range(3):
            await self.ping(self.udp_client(), b"flow%d" % n)
        self.assertTrue(rules(self.lab, self.lab.S))
        self.assertTrue(rules(self.lab, self.lab.C))
        await client.terminate(signal.SIGINT)
        await server.terminate(signal.SIGTERM)
        self.assertNoRules()
        for ns in (self.lab.S, self.lab.C):
            sockets = self.lab.run(ns, "ss", "-tanH", check=False).stdout
            self.assertNotIn(f":{FAKETCP_PORT} ", sockets)

    async def test_no_iptables_libraries_needed(self) -> None:
        """
        With the default firewall backend the relays need no iptables
        libraries: where python-iptables cannot load them, they start,
        carry traffic and stop clean.
        """
        nowhere = {"XTABLES_LIBDIR": "/nonexistent", "IPTABLES_LIBDIR": "/nonexistent"}
        server = self.server().start(extra_env=dict(nowhere))
        client = self.client().start(extra_env=dict(nowhere))
        await server.ready()
        await client.ready()
        await self.ping(self.udp_client(), b"no iptables")
        self.assertTrue(all(line.startswith("faketcp_twisted_") for line in rules(self.lab, self.lab.S)))
        await client.terminate()
        await server.terminate()
        self.assertNoRules()

    async def test_sigkill_leaves_nothing(self) -> None:
        """
        With the default firewall backend (an nftables table owned by the
        relay's netlink socket), relays killed with SIGKILL leave no rule,
        chain or table one second later, with no restart; started again,
        they carry traffic.
        """
        server, client = await self.pair()
        await self.ping(self.udp_client(), b"x")
        self.assertEqual(pids_of(rules(self.lab, self.lab.S)), {server.process.pid})  # type: ignore[union-attr]
        self.assertEqual(pids_of(rules(self.lab, self.lab.C)), {client.process.pid})  # type: ignore[union-attr]
        await client.stop(signal.SIGKILL)
        await server.stop(signal.SIGKILL)
        await sleep(1.0)
        for ns in (self.lab.S, self.lab.C):
            tables = self.lab.run(ns, "nft", "list", "tables").stdout
            self.assertNotIn("faketcp_twisted", tables, ns)
            self.assertEqual(rules(self.lab, ns), [], ns)
        server.start()
        client.start()
        await server.ready()
        await client.ready()
        await self.ping(self.udp_client(), b"y")
        await client.terminate()
        await server.terminate()
        self.assertNoRules()

    async def test_two_processes_one_namespace(self) -> None:
        """
        Two client relays in one namespace silence the same destination
        (overlapping rules, each in its own process's table); killing one
        with SIGKILL takes its table and nothing of the other's, whose flow
        goes on.
        """
        server = self.server().start()
        first = self.client().start()
        second = self.relay(
            self.lab.C, "second-client",
            "--listen", f"udp:{CLIENT_PORT + 1}:interface=127.0.0.1",
            "--forward", f"faketcp:host={self.lab.server4}:port={FAKETCP_PORT}",
        ).start()  # fmt: skip
        for relay in (server, first, second):
            await relay.ready()
        through_first = self.udp_client()
        through_second = UDPClient(("127.0.0.1", CLIENT_PORT + 1))
        listen_udp(self, self.lab.C, through_second)
        await self.ping(through_first, b"first")
        await self.ping(through_second, b"second")
        second_pid = second.process.pid  # type: ignore[union-attr]
        self.assertEqual(pids_of(rules(self.lab, self.lab.C)), {first.process.pid, second_pid})  # type: ignore[union-attr]
        kept = [line for line in rules(self.lab, self.lab.C) if line.startswith(f"faketcp_twisted_{second_pid}:")]
        await first.stop(signal.SIGKILL)
        await sleep(0.5)
        self.assertEqual(rules(self.lab, self.lab.C), kept)
        through_second.received.clear()
        await self.ping(through_second, b"still")
        await second.terminate()
        await server.terminate()
        self.assertNoRules()

    async def test_sigkill_iptables_rules_swept_by_next_start(self) -> None:
        """
        With C{--firewall iptables}, SIGKILLed relays leave their rules;
        the next start of each sweeps them at once (the client before it
        has made any connection).
        """
        server, client = await self.pair(("--firewall", "iptables"), ("--firewall", "iptables"))
        await self.ping(self.udp_client(), b"x")
        killed_server, killed_client = server.process.pid, client.process.pid  # type: ignore[union-attr]
        await client.stop(signal.SIGKILL)
        await server.stop(signal.SIGKILL)
        self.assertEqual(pids_of(rules(self.lab, self.lab.S)), {killed_server})
        self.assertEqual(pids_of(rules(self.lab, self.lab.C)), {killed_client})
        client.start()
        await client.ready()
        self.assertEqual(rules(self.lab, self.lab.C), [])
        server.start()
        await server.ready()
        self.assertEqual(pids_of(rules(self.lab, self.lab.S)), {server.process.pid})  # type: ignore[union-attr]
        await client.wait_log(r"removed 1 stale silencing rule")
        await self.ping(self.udp_client(), b"y")
        await client.terminate()
        await server.terminate()
        self.assertNoRules()


    async def test_unreachable_server_and_stop_while_connecting(self) -> None:
        """
        A server that never answers: the attempt times out, its queued
        datagrams are counted as connect-failed, datagrams within
        --reconnect-delay are dropped, the next one tries again; SIGTERM
        during an attempt stops at once and leaves no rule.
        """
        self.lab.iptables(self.lab.S, "-A", "INPUT", "-p", "tcp", "--dport", str(FAKETCP_PORT), "-j", "DROP")
        client = self.client("--connect-timeout", "0.5", "--reconnect-delay", "1").start()
        await client.ready()
        source = self.udp_client()
        source.send(b"first")
        source.send(b"second")
        await client.wait_log(r"cannot connect to .*: .*\(1 failed attempt")
        source.send(b"too soon")
        await sleep(1.0)
        source.send(b"again")
        await sleep(0.2)
        self.assertTrue(rules(self.lab, self.lab.C))
        await client.terminate()
        self.assertNoRules()
        totals = client.totals()
        self.assertEqual(drops_in(totals, "connect-failed"), 2)
        self.assertEqual(drops_in(totals, "reconnect-wait"), 1)


class UDPSideTests(RelayTestCase):
    """
    The relays' own UDP sockets: a target that is not listening, a port in
    use, room for the flows asked for.
    """

    async def test_target_not_listening_counted(self) -> None:
        """
        Datagrams to a target port nobody listens on come back as ICMP
        port-unreachable errors on the flow's socket: counted as
        udp-refused, and the flow keeps working once the target is up.
        """
        closed = ECHO_PORT + 1
        server = self.relay(
            self.lab.S, "server",
            "--listen", f"faketcp:{FAKETCP_PORT}:interface=0.0.0.0",
            "--forward", f"udp:host=127.0.0.1:port={closed}",
            "--stats-interval", "1",
        ).start()  # fmt: skip
        client = self.client().start()
        await server.ready()
        await client.ready()
        source = self.udp_client()
        for i in range(5):
            source.send(b"nobody %d" % i)
            await sleep(0.05)
        await server.wait_log(r"udp-refused=\d+")
        listen_udp(self, self.lab.S, UDPEcho(), closed)
        await self.ping(source, b"now")

    async def test_receive_buffer_drops_counted(self) -> None:
        """
        Datagrams the kernel drops because a server flow's UDP socket is
        full (the relay stopped, here by SIGSTOP, while the target sent
        megabytes) are counted as udp-rcvbuf once the relay reads again.
        """
        server, client = await self.pair()
        source = self.udp_client()
        await self.ping(source, b"hello")
        (flow_socket,) = self.echo.sources
        server.signal(signal.SIGSTOP)
        try:
            for _ in range(4000):
                self.echo.transport.write(b"f" * 1200, flow_socket)
        finally:
            server.signal(signal.SIGCONT)
        found = await server.wait_log(r"drops [^|]*udp-rcvbuf=(\d+)")
        self.assertGreater(int(found.group(1)), 0)

    async def test_client_port_in_use(self) -> None:
        """
        A client relay whose UDP port is taken says so in one line and
        exits 1.
        """
        with netlab.in_namespace(self.lab.C):
            taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            taken.bind(("127.0.0.1", CLIENT_PORT))
        self.addCleanup(taken.close)
        client = self.client().start()
        assert client.process is not None
        await wait_until(lambda: client.process.poll() is not None, timeout=15)
        self.assertEqual(client.process.returncode, 1)
        self.assertIn(f"cannot listen on UDP 127.0.0.1:{CLIENT_PORT}: Address already in use", client.log())
        self.assertNotIn("Traceback", client.log())

    async def test_descriptor_limit_fits_max_flows(self) -> None:
        """
        A server relay raises its descriptor limit to fit --max-flows
        flows of two descriptors each (kernel socket, UDP socket) and the
        kernel sockets held for time-wait, or, where
        the hard limit cannot be raised (no CAP_SYS_RESOURCE, as in some
        containers), raises it to the hard limit and says how many flows
        fit.
        """
        import resource

        from faketcp_twisted.relay.common import time_wait_descriptors

        # Besides the flows: the kernel sockets the captures (one per
        # address family) hold for time-wait.
        reserved = 64 + time_wait_descriptors(2)
        server = await self.server("--max-flows", "30000").start().ready()
        assert server.process is not None
        with open(f"/proc/{server.process.pid}/limits") as limits:
            soft, hard = next(line for line in limits if line.startswith("Max open files")).split()[3:5]
        wanted = reserved + 2 * 30000
        if int(soft) >= wanted:
            return
        ours = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        self.assertEqual((int(soft), int(hard)), (ours, ours))
        await server.wait_log(
            rf"descriptor limit of {ours} leaves room for about {(ours - reserved) // 2} flows, fewer than the 30000"
        )


class PlainTCPTests(RelayTestCase):
    """
    A kernel TCP client knocking at the relay's port.
    """

    async def plain_tcp_junk(
        self, server_args: tuple[str, ...] = (), client_args: tuple[str, ...] = ()
    ) -> tuple[list[bytes], bool]:
        """
        Open a plain TCP connection to the relay server's port beside a
        working flow, send junk on it, and return what of it reached the
        UDP target and whether the relay reset the connection; the working
        flow must not be disturbed.
        """
        server, client = await self.pair(server_args, client_args)
        source = self.udp_client()
        await self.ping(source, b"good-1")
        with netlab.in_namespace(self.lab.C):
            plain = socket.create_connection((self.lab.server4, FAKETCP_PORT), timeout=5)
        reset = False
        try:
            for n in range(5):
                try:
                    plain.send(b"JUNK %d " % n * 20)
                except (ConnectionResetError, BrokenPipeError):
                    reset = True
                    break
                await sleep(0.1)
            await self.ping(source, b"good-2")
            await sleep(0.5)
        finally:
            # RST, so nothing lingers in the client namespace.
            plain.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            plain.close()
        await self.ping(source, b"good-3")
        await client.terminate()
        await server.terminate()
        self.assertNoRules()
        return [d for d in self.echo.received if b"JUNK" in d], reset

    async def test_plain_tcp_junk_unkeyed(self) -> None:
        """
        An unkeyed port cannot tell a plain TCP client's data segments from
        a fake-TCP peer's (both carry timestamps, as current tcpraw's do):
        each segment reaches the target as one datagram, as with tcpraw and
        udp2raw (the README says so).  The working flow is not disturbed.
        """
        junk, _ = await self.plain_tcp_junk()
        self.assertTrue(junk)
        self.assertTrue(all(d.startswith(b"JUNK ") for d in junk), junk)

    async def test_plain_tcp_junk_keyed(self) -> None:
        """
        With a key, a plain TCP client's bytes never reach the target: they
        are not a proof of the key, so its connection is reset.
        """
        key_file = os.path.join(self.directory, "key")
        with open(key_file, "w") as out:
            out.write("relay test key\n")
        keyed = f":keyFile={key_file}"
        junk, reset = await self.plain_tcp_junk(
            ("--listen", f"faketcp:{FAKETCP_PORT}:interface=0.0.0.0{keyed}"),
            ("--forward", f"faketcp:host={self.lab.server4}:port={FAKETCP_PORT}{keyed}"),
        )
        self.assertEqual(junk, [])
        self.assertTrue(reset)


class MetricsTests(RelayTestCase):
    """
    The Prometheus endpoint.
    """

    async def test_metrics_endpoint(self) -> None:
        """
        --metrics serves the relay's counters.
        """
        try:
            import prometheus_client.twisted  # noqa: F401
        except ImportError:
            raise SkipTest("prometheus_client is not installed (pip install 'faketcp_twisted[metrics]')") from None
        server, _client = await self.pair(server_args=("--metrics", "9100"))
        await server.wait_log(r"metrics on http://127\.0\.0\.1:9100/metrics")
        source = self.udp_client()
        await self.ping(source, b"counted")
        fetch = (
            "import urllib.request;"
            "print(urllib.request.urlopen('http://127.0.0.1:9100/metrics', timeout=5).read().decode())"
        )
        page = self.lab.run(self.lab.S, sys.executable, "-c", fetch).stdout
        self.assertIn('faketcp_relay_flows{mode="server"} 1.0', page)
        found = re.search(r'faketcp_relay_datagrams_total\{direction="faketcp_to_udp",mode="server"\} (\S+)', page)
        self.assertIsNotNone(found, page)
        self.assertGreaterEqual(float(found.group(1)), 1)  # type: ignore[union-attr]
        self.assertIn("faketcp_relay_rx_loss_ratio", page)

    def test_metrics_without_prometheus_client(self) -> None:
        """
        Without prometheus_client, --metrics fails at once with the command
        that installs it.
        """
        hide = os.path.join(self.directory, "hide")
        os.makedirs(os.path.join(hide, "prometheus_client"))
        with open(os.path.join(hide, "prometheus_client", "__init__.py"), "w") as module:
            module.write("raise ImportError('hidden by the test')\n")
        result = subprocess.run(
            [TWISTD, "-n", "--pidfile=", "faketcp-relay", "--listen", "faketcp:9191",
             "--forward", "udp:host=127.0.0.1:port=5000", "--metrics", "9100"],
            capture_output=True, text=True, timeout=30,
            env={**os.environ, "PYTHONPATH": hide + os.pathsep + CHECKOUT},
            cwd=self.directory,
        )  # fmt: skip
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("pip install 'faketcp_twisted[metrics]'", result.stdout + result.stderr)

