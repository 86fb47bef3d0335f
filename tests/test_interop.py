# -*- test-case-name: tests.test_interop -*-
"""
Real-world interoperability and outages (issue 12), always through a NAT
router whose conntrack drops INVALID packets (L{netlab.routed_nat})::

    C 198.18.1.2 -- R (MASQUERADE, conntrack INVALID drop, random loss, cut) -- S 198.19.0.2

1. Interop at 1% random loss each way in R, against the two generations of
   tcpraw that people run:

   - current tcpraw (C{tcprawpeer}, upstream HEAD built from the anchor's
     source: C{NOP,NOP,TS} on every data segment), both ways: 2000 numbered
     datagrams of varied sizes, each carrying its own digest, go through a
     UDP echo behind the far end; at least 95% must arrive intact at the
     echo (forward) and at least 95% of the echoed ones must come back
     (backward), with none corrupted;
   - tcpraw 1.2.25 inside Debian's kcptun (C{--tcp}), both ways: KCP
     retransmits, so a stream through kcptun must arrive whole and intact
     within a time bound.

2. Outage under load: 6000 datagrams of 1200 bytes a second each way (58
   Mbit/s: a sender in C in front of the client side, another in S sending
   from the UDP target back to whichever socket reached it last), then R
   drops every forwarded packet for 12 s (86 MB offered each way meanwhile:
   more than the 64 MiB that the largest window field means at the window
   scale Linux negotiates here, so neither a receiver's window nor R's
   conntrack can take a sender that simply carried on), then the path comes
   back: both directions must flow again within 5 s of the restore, and keep
   flowing (at least half of each half second's datagrams delivered, to the
   end of the test).
   Between our two relays, and with current tcpraw on either side (our
   relay then sends keepalives every second: a tcpraw sender whose sequence
   ran ahead in the outage comes back on our next ACK).

The measured figures are printed (for the README), and every failure
message carries them, R's drop counters and the relays' and peers' logs
(the relays' flow tables included).
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory
from twisted.trial.unittest import SkipTest, TestCase

from lab import netlab
from tests.relaylab import (
    PacedStream,
    PeerProcess,
    ProbePort,
    RelayProcess,
    format_timeline,
    listen_udp,
    listens,
    probe,
    tcprawpeer_binary,
    temp_dir,
)
from tests.support import require_root, sleep, wait_until
from tests.test_kcptun import KCP_PORT, KCPTUN_FLAGS, KCPTUN_LOCAL, CheckingEcho, StreamClient

FAKETCP_PORT = 9191
#: The UDP target behind the server side.
TARGET_PORT = 5000
#: The UDP port of the client side (our relay client or tcprawpeer's).
CLIENT_PORT = 4000
#: kcptun's TCP target in S.
KCPTUN_TARGET = 5201

#: Random loss in R, each way, for the interop tests.
INTEROP_LOSS = 0.01
#: Datagrams sent through the echo, and their rate.
INTEROP_COUNT = 2000
INTEROP_RATE = 1000
#: The share that must arrive intact in each direction.
INTEROP_SHARE = 0.95
#: Bytes of the stream through kcptun each way, and the time it may take.
KCPTUN_BYTES = 8 * 1024 * 1024
KCPTUN_BOUND = 30.0

#: Datagrams a second each way during the outage test, and their size.
OUTAGE_RATE = 6000
OUTAGE_SIZE = 1200
#: Seconds of load before the cut, of the cut, and after the restore.
BEFORE_CUT = 3.0
OUTAGE = 12.0
AFTER_RESTORE = 8.0
#: Both directions must be flowing again this long after the restore.
RECOVERY_BOUND = 5.0
#: Before the cut, each direction must deliver this share (else the
#: machine cannot carry the load and the test measures nothing).
BASELINE_SHARE = 0.9


def percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def _outage_size(seq: int) -> int:
    return OUTAGE_SIZE


class PathTestCase(TestCase):
    """
    A fresh C-R-S lab with random loss C{loss} in R, and helpers to run our
    relays and the foreign peers in it.
    """

    timeout = 60
    loss = 0.0

    def setUp(self) -> None:
        require_root()
        self.lab = netlab.routed_nat(loss=self.loss)
        self.addCleanup(self.lab.destroy)
        self.addCleanup(self.lab.restore)
        # Segments reaching each end's fake-TCP port, and those of them that
        # carry a timestamp option (current tcpraw's data, kernels' segments).
        for ns, name, match in ((self.lab.S, "to-server", "--dport"), (self.lab.C, "to-client", "--sport")):
            self.lab.count_packets(ns, name, ["-p", "tcp", match, str(FAKETCP_PORT)])
            self.lab.count_packets(ns, name + "-ts", ["-p", "tcp", match, str(FAKETCP_PORT), "--tcp-option", "8"])
        self.directory = temp_dir(self)
        self.relays: list[RelayProcess] = []
        self.peers: list[PeerProcess] = []

    # -- processes ---------------------------------------------------------

    def relay(self, ns: str, name: str, *args: str) -> RelayProcess:
        relay = RelayProcess(self.lab, ns, [*args, "--stats-interval", "1"], self.directory, name)
        self.addCleanup(relay.kill)
        self.relays.append(relay)
        return relay.start()

    async def relay_server(self, *extra: str, target: int = TARGET_PORT) -> RelayProcess:
        """
        Our relay server in S: fake-TCP on 9191, UDP to 127.0.0.1:C{target}.
        """
        server = self.relay(
            self.lab.S, "relay-server",
            "--listen", f"faketcp:{FAKETCP_PORT}:interface=0.0.0.0",
            "--forward", f"udp:host=127.0.0.1:port={target}", *extra,
        )  # fmt: skip
        return await server.ready()

    async def relay_client(self, *extra: str) -> RelayProcess:
        """
        Our relay client in C: UDP on 127.0.0.1:4000, fake-TCP to S.
        """
        client = self.relay(
            self.lab.C, "relay-client",
            "--listen", f"udp:{CLIENT_PORT}:interface=127.0.0.1",
            "--forward", f"faketcp:host={self.lab.server4}:port={FAKETCP_PORT}", *extra,
        )  # fmt: skip
        return await client.ready()

    def peer(self, ns: str, name: str, *argv: str) -> PeerProcess:
        peer = PeerProcess(self.lab, ns, list(argv), self.directory, name)
        self.addCleanup(peer.stop)
        self.peers.append(peer)
        return peer.start()

    async def tcpraw_server(self) -> PeerProcess:
        """
        tcprawpeer server in S: fake-TCP on 9191, UDP to the target.
        """
        binary = tcprawpeer_binary()
        server = self.peer(self.lab.S, "tcprawpeer-server", binary, "-v", "-mode", "server",
                           "-listen", f":{FAKETCP_PORT}", "-target", f"127.0.0.1:{TARGET_PORT}")  # fmt: skip
        await server.wait_output(r"server: fake-TCP on")
        return server

    async def tcpraw_client(self) -> PeerProcess:
        """
        tcprawpeer client in C: UDP on 127.0.0.1:4000, fake-TCP to S (it
        connects at once, so our server must already listen).
        """
        binary = tcprawpeer_binary()
        client = self.peer(self.lab.C, "tcprawpeer-client", binary, "-v", "-mode", "client",
                           "-listen", f"127.0.0.1:{CLIENT_PORT}",
                           "-remote", f"{self.lab.server4}:{FAKETCP_PORT}")  # fmt: skip
        # A lost SYN costs the kernel's 1 s retransmission.
        await client.wait_output(r"client: UDP \S+ <-> fake-TCP", timeout=15)
        return client

    # -- diagnostics -------------------------------------------------------

    def counters(self) -> str:
        """
        R's drop counters (both families), and the TCP segments of the
        fake-TCP port that reached S and C.
        """
        lab = self.lab
        parts = []
        try:
            if self.loss > 0:
                parts.append(f"random-loss drops {lab.loss_drops() + lab.loss_drops(v6=True)}")
            parts.append(
                f"conntrack INVALID drops {lab.conntrack_invalid_drops() + lab.conntrack_invalid_drops(v6=True)}"
            )
            parts.append(f"cut drops {lab.cut_drops()}")
            arrived = [
                f"{lab.read_count(ns, name)} ({lab.read_count(ns, name + '-ts')} with timestamps) arrived at {where}"
                for ns, name, where in ((lab.S, "to-server", "S"), (lab.C, "to-client", "C"))
            ]
        except (KeyError, netlab.LabError) as e:
            return f"R: {', '.join(parts)} (counters unreadable: {e})"
        return f"R: {', '.join(parts)}; segments of port {FAKETCP_PORT}: " + ", ".join(arrived)

    async def describe(self) -> str:
        """
        Everything a failure message needs: R's counters, then the relays'
        logs (after a SIGUSR1, so their flow tables are in) and the peers'.
        """
        running = [relay for relay in self.relays if relay.process is not None and relay.process.poll() is None]
        for relay in running:
            relay.signal(signal.SIGUSR1)
        if running:
            await sleep(0.5)
        return "\n".join(
            [self.counters(), *(relay.describe() for relay in self.relays), *(peer.describe() for peer in self.peers)]
        )

    async def stop_relays(self) -> None:
        """
        Stop our relays with SIGTERM, checking they stop cleanly.
        """
        for relay in self.relays:
            await relay.terminate()

    # -- probe endpoints ---------------------------------------------------

    def endpoints(self, echo: bool) -> tuple[ProbePort, ProbePort]:
        """
        C{(near, far)}: a probe port in C sending to the client side, and
        the UDP target in S (an echo, or a sender back to its latest source).
        """
        near = ProbePort(target=("127.0.0.1", CLIENT_PORT))
        listen_udp(self, self.lab.C, near)
        far = ProbePort(echo=echo)
        listen_udp(self, self.lab.S, far, TARGET_PORT)
        return near, far

    def stream(self, port: ProbePort, tag: bytes, rate: float, **kwargs: Any) -> PacedStream:
        stream = PacedStream(port, tag, rate, **kwargs)
        self.addCleanup(stream.stop)
        return stream.start()


class CutTests(PathTestCase):
    """
    The lab's outage switch itself (what the outage tests rely on).
    """

    async def test_cut_and_restore(self) -> None:
        """
        L{netlab.RoutedNatLab.cut} stops forwarded UDP both ways and counts
        the drops; L{restore} lets it through again and leaves no rule.
        """
        near = ProbePort(target=(self.lab.server4, TARGET_PORT))
        listen_udp(self, self.lab.C, near, interface="0.0.0.0")
        listen_udp(self, self.lab.S, ProbePort(echo=True), TARGET_PORT, interface=self.lab.server4)

        async def exchange(tag: bytes) -> int:
            for seq in range(20):
                near.transport.write(probe(tag, seq, 200), near.target)
            await sleep(0.3)
            return near.count(tag)

        self.assertEqual(await exchange(b"b1"), 20)
        self.lab.cut()
        self.lab.cut()
        self.assertEqual(await exchange(b"c1"), 0)
        self.assertGreaterEqual(self.lab.cut_drops(), 20)
        self.lab.restore()
        self.assertEqual(await exchange(b"a1"), 20)
        self.assertGreaterEqual(self.lab.cut_dropped, 20)
        for save in ("iptables-save", "ip6tables-save"):
            self.assertNotIn("ftt-cut", self.lab.run(self.lab.R, save).stdout)


class TcprawInteropTests(PathTestCase):
    """
    Current tcpraw (C{NOP,NOP,TS} on every data segment) and our relay,
    both ways, at 1% random loss each way behind a NAT.
    """

    loss = INTEROP_LOSS

    def setUp(self) -> None:
        require_root()
        tcprawpeer_binary()
        super().setUp()

    async def carry_datagrams(self, what: str, near: ProbePort, far: ProbePort) -> None:
        """
        Send L{INTEROP_COUNT} probes from C through the far echo; check the
        share that arrived intact each way.
        """
        # The connection is up (whoever makes it, and whatever a lost SYN
        # costs) once the far end hears from us; go on regardless after a
        # while, so a tunnel that carries nothing fails on the figures.
        warm = 0
        while far.count(b"wu") == 0 and warm < 160:
            near.transport.write(probe(b"wu", warm, 100), near.target)
            warm += 1
            await sleep(0.05)
        warmed = far.count(b"wu") > 0
        stream = self.stream(near, b"fw", INTEROP_RATE, count=INTEROP_COUNT)
        await stream.done
        # Until nothing more comes for a second (at most 5 s).
        last, quiet = (-1, -1), 0.0
        for _ in range(50):
            now = (far.count(b"fw"), near.count(b"fw"))
            quiet = quiet + 0.1 if now == last else 0.0
            if quiet >= 1.0:
                break
            last = now
            await sleep(0.1)
        sent = len(stream.sent_at)
        forward, back = far.count(b"fw"), near.count(b"fw")
        figures = (
            f"{what}: forward {forward}/{sent} ({percent(forward, sent)}) arrived intact at the echo, "
            f"backward {back}/{forward} ({percent(back, forward)}) of those came back "
            f"(round trip {percent(back, sent)}); corrupt: at the echo {far.corrupt}, back {near.corrupt}; "
            f"duplicates: at the echo {far.duplicates}, back {near.duplicates}; "
            f"send errors {stream.errors}; warm-up {'got through' if warmed else 'never reached the echo in 8 s'}"
        )
        print(f"\n    {figures}; {self.counters()}")
        ok = (
            sent == INTEROP_COUNT
            and forward >= INTEROP_SHARE * sent
            and back >= INTEROP_SHARE * forward
            and far.corrupt == near.corrupt == 0
        )
        if not ok:
            self.fail(f"{figures}\n{await self.describe()}")

    async def test_tcpraw_client_to_relay_server(self) -> None:
        """
        tcprawpeer client (current tcpraw) in C -> our relay server in S ->
        UDP echo: at least 95% of 2000 datagrams arrive intact each way.
        """
        near, far = self.endpoints(echo=True)
        await self.relay_server()
        await self.tcpraw_client()
        await self.carry_datagrams("tcprawpeer client -> relay server", near, far)
        await self.stop_relays()

    async def test_relay_client_to_tcpraw_server(self) -> None:
        """
        Our relay client in C -> tcprawpeer server (current tcpraw) in S ->
        UDP echo: at least 95% of 2000 datagrams arrive intact each way.
        """
        near, far = self.endpoints(echo=True)
        await self.tcpraw_server()
        await self.relay_client()
        await self.carry_datagrams("relay client -> tcprawpeer server", near, far)
        await self.stop_relays()


class KcptunInteropTests(PathTestCase):
    """
    tcpraw 1.2.25 (Debian's kcptun C{--tcp}) and our relay, both ways, at 1%
    random loss each way behind a NAT, carrying a KCP stream.
    """

    loss = INTEROP_LOSS

    def setUp(self) -> None:
        require_root()
        for binary in ("kcptun-server", "kcptun-client"):
            if shutil.which(binary) is None:
                raise SkipTest(f"{binary} is missing (Debian package kcptun)")
        super().setUp()
        self.target = Factory.forProtocol(CheckingEcho)
        self.target.connections = []  # type: ignore[attr-defined]
        with netlab.in_namespace(self.lab.S):
            port = reactor.listenTCP(KCPTUN_TARGET, self.target, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)

    def kcptun(self, ns: str, name: str, *argv: str) -> PeerProcess:
        return self.peer(ns, name, *argv, *KCPTUN_FLAGS)

    async def listening(self, ns: str, kind: str, port: int, timeout: float = 10.0) -> None:
        """
        Wait until something in C{ns} listens on C{port} (C{kind} C{t} or C{u}).
        """
        if not await listens(self.lab, ns, kind, port, timeout):
            raise AssertionError(f"nothing listens on {kind} {port} in {ns}\n{await self.describe()}")

    async def carry(self, what: str) -> None:
        """
        A L{KCPTUN_BYTES} stream each way through kcptun-client's port in
        C, whole and intact within L{KCPTUN_BOUND} seconds.
        """
        payload = os.urandom(KCPTUN_BYTES)
        client = StreamClient(payload)
        started = time.monotonic()
        with netlab.in_namespace(self.lab.C):
            connecting = connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", KCPTUN_LOCAL), client)
        await connecting

        def abort() -> None:
            if client.transport.connected:
                client.transport.abortConnection()

        self.addCleanup(abort)
        try:
            await wait_until(lambda: len(client.echoed) >= len(client.message), timeout=KCPTUN_BOUND, step=0.1)
        except AssertionError:
            got = [c.received for c in self.target.connections]  # type: ignore[attr-defined]
            self.fail(
                f"{what}: {len(client.echoed)} of {len(client.message)} bytes echoed within {KCPTUN_BOUND:g} s; "
                f"target received {got}\n{await self.describe()}"
            )
        elapsed = time.monotonic() - started
        print(f"\n    {what}: {KCPTUN_BYTES >> 20} MiB each way in {elapsed:.1f} s; {self.counters()}")
        self.assertTrue(self.target.connections[-1].complete)  # type: ignore[attr-defined]
        self.assertEqual(bytes(client.echoed), client.message)
        client.transport.loseConnection()
        await client.lost

    async def test_kcptun_client_to_relay_server(self) -> None:
        """
        kcptun-client --tcp (tcpraw 1.2.25) in C -> our relay server in S ->
        kcptun-server over UDP: the stream arrives intact each way in time.
        """
        lab = self.lab
        self.kcptun(
            lab.S, "kcptun-server", "kcptun-server", "-l", f"127.0.0.1:{KCP_PORT}", "-t", f"127.0.0.1:{KCPTUN_TARGET}"
        )
        await self.relay_server(target=KCP_PORT)
        await self.listening(lab.S, "u", KCP_PORT)
        self.kcptun(
            lab.C,
            "kcptun-client",
            "kcptun-client",
            "--tcp",
            "-r",
            f"{lab.server4}:{FAKETCP_PORT}",
            "-l",
            f"127.0.0.1:{KCPTUN_LOCAL}",
        )
        await self.listening(lab.C, "t", KCPTUN_LOCAL)
        await self.carry("kcptun-client --tcp -> relay server")
        await self.stop_relays()

    async def test_relay_client_to_kcptun_server(self) -> None:
        """
        kcptun-client over UDP -> our relay client in C -> kcptun-server
        --tcp (tcpraw 1.2.25) in S: the stream arrives intact each way in time.
        """
        lab = self.lab
        self.kcptun(
            lab.S,
            "kcptun-server",
            "kcptun-server",
            "--tcp",
            "-l",
            f":{FAKETCP_PORT}",
            "-t",
            f"127.0.0.1:{KCPTUN_TARGET}",
        )
        await self.listening(lab.S, "t", FAKETCP_PORT)
        await self.relay_client()
        self.kcptun(
            lab.C, "kcptun-client", "kcptun-client", "-r", f"127.0.0.1:{CLIENT_PORT}", "-l", f"127.0.0.1:{KCPTUN_LOCAL}"
        )
        await self.listening(lab.C, "t", KCPTUN_LOCAL)
        await self.carry("kcptun-client -> relay client -> kcptun-server --tcp")
        await self.stop_relays()


class OutageTests(PathTestCase):
    """
    A 12 s outage of the path under 58 Mbit/s each way, no random loss:
    both directions flow again within 5 s of the restore.
    """

    timeout = 90

    async def outage(self, what: str) -> None:
        """
        Load both ways, cut the path in R, restore it, and check how soon
        (and how steadily) each direction flows again.
        """
        near, far = self.endpoints(echo=False)
        forward = self.stream(near, b"fw", OUTAGE_RATE, size=_outage_size)
        # Sends nothing until the target heard from a relay socket; then to
        # whichever socket reached it last.
        backward = self.stream(far, b"bw", OUTAGE_RATE, size=_outage_size)
        try:
            await wait_until(lambda: far.count(b"fw") > 0 and near.count(b"bw") > 0, timeout=15, step=0.05)
        except AssertionError:
            self.fail(
                f"{what}: nothing flowed before the cut (forward {far.count(b'fw')}, backward {near.count(b'bw')} "
                f"datagrams in 15 s)\n{await self.describe()}"
            )
        flowing = time.monotonic()
        await sleep(BEFORE_CUT)
        cut = time.monotonic()
        self.lab.cut()
        await sleep(OUTAGE)
        self.lab.restore()
        restored = time.monotonic()
        await sleep(AFTER_RESTORE)
        end = time.monotonic()
        forward.stop()
        backward.stop()
        await sleep(1.0)

        directions = (("forward", forward, far), ("backward", backward, near))
        lines, failures = [], []
        for name, stream, receiver in directions:
            before = stream.delivered(receiver, flowing + 0.5, cut - 0.2)
            offered = stream.delivered(receiver, cut, restored)[1] * OUTAGE_SIZE
            leaked = sum(1 for at in receiver.arrivals.get(stream.tag, {}).values() if cut + 0.5 <= at < restored)
            later = [at - restored for at in receiver.arrivals.get(stream.tag, {}).values() if at >= restored]
            first = min(later) if later else None
            recovered = stream.recovery(receiver, restored, end)
            last = stream.delivered(receiver, end - 2.0, end)
            lines.append(
                f"{name}: before the cut {percent(*before)} delivered; {offered / 1e6:.0f} MB offered during the cut; "
                f"after the restore: first datagram at {'never' if first is None else f'+{first:.2f} s'}, "
                f"flowing (>= 50% per 0.5 s) from {'never' if recovered is None else f'+{recovered:.1f} s'}, "
                f"last 2 s {percent(*last)} delivered; send errors {stream.errors}\n"
                f"    per second of send time, from the restore: {format_timeline(stream.timeline(receiver, restored))}"
            )
            if before[0] < BASELINE_SHARE * before[1] or not before[1]:
                failures.append(f"{name} delivered only {percent(*before)} before the cut (the load is too much?)")
            if leaked:
                failures.append(f"{name}: {leaked} datagrams arrived during the cut (the cut leaks?)")
            if recovered is None or recovered > RECOVERY_BOUND:
                failures.append(f"{name} not flowing within {RECOVERY_BOUND:g} s of the restore")
        report = f"{what}, {OUTAGE:g} s outage at {OUTAGE_RATE} x {OUTAGE_SIZE} B/s each way:\n  " + "\n  ".join(lines)
        print(f"\n    {report}\n    {self.counters()}")
        if failures:
            self.fail("; ".join(failures) + "\n" + report + "\n" + await self.describe())
        await self.stop_relays()

    async def test_relay_pair(self) -> None:
        """
        Our relay client in C, our relay server in S: after a 12 s outage
        under load, both directions flow again within 5 s and keep flowing.
        """
        await self.relay_server()
        await self.relay_client()
        await self.outage("relay client -> relay server")

    async def test_relay_client_to_tcpraw_server(self) -> None:
        """
        Our relay client in C (keepalive 1 s), tcprawpeer server (current
        tcpraw) in S: after a 12 s outage under load, both directions flow
        again within 5 s and keep flowing.
        """
        tcprawpeer_binary()
        await self.tcpraw_server()
        await self.relay_client("--keepalive", "1")
        await self.outage("relay client -> tcprawpeer server")

    async def test_tcpraw_client_to_relay_server(self) -> None:
        """
        tcprawpeer client (current tcpraw) in C, our relay server in S
        (keepalive 1 s): after a 12 s outage under load, both directions
        flow again within 5 s and keep flowing.
        """
        tcprawpeer_binary()
        await self.relay_server("--keepalive", "1")
        await self.tcpraw_client()
        await self.outage("tcprawpeer client -> relay server")
