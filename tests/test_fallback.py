# -*- test-case-name: tests.test_fallback -*-
"""
Active-probe resistance (issue 16): a keyed port hands every connection that
is not a keyed peer to a real TCP service, so a prober sees exactly what
that service says, while keyed fake-TCP flows go on beside it.

Everything runs in a fresh lab through a NAT router whose conntrack drops
INVALID packets (L{netlab.routed_nat})::

    C 198.18.1.2 -- R (MASQUERADE, conntrack INVALID drop) -- S 198.19.0.2
      2001:2:0:1::2     (IPv6 routed, not NATed)               2001:2:0:2::2

The services in S are real: C{python -m http.server} serving 256 KiB of
random bytes, C{openssl s_server -www} with a self-signed certificate made
for the test, and a small banner service in this process (greets as an SSH
server would, then echoes).  The probes are real: C{curl} in C (HTTP GET,
TLS handshake and GET), and plain TCP sockets in C.

A probe's answer through the keyed port is compared with a direct fetch
from the service: byte for byte (HTTP: the body's SHA-256 and every header
but C{Date}), or in structure where the service's own answer changes from
session to session (TLS: the status page with its session id, keys and
counters masked), plus the certificate curl saw.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
import socket
import statistics
import time
from collections import Counter
from dataclasses import replace
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.task import LoopingCall
from twisted.trial.unittest import SkipTest, TestCase

from faketcp_twisted import aio
from faketcp_twisted.io.firewall import silencer
from lab import netlab
from tests import test_aio, test_wire
from tests.fallbacklab import (
    BANNER,
    HTTP_FILE,
    WIRE_FIELDS,
    Fetch,
    Prober,
    WireSegment,
    WireVerdict,
    close_probers,
    counted,
    curl,
    curl_in_thread,
    established,
    http_service,
    listen_banner,
    next_stats,
    open_descriptors,
    pem_certificates,
    start_probers,
    tls_page_structure,
    tls_service,
    url_host,
    wire_problems,
    wire_segments,
)
from tests.relaylab import (
    PacedStream,
    ProbePort,
    RelayProcess,
    UDPClient,
    format_timeline,
    listen_udp,
    temp_dir,
)
from tests.support import Recorder, RecordingFactory, require_root, silencing_rules, sleep, wait_until

KEY = "fallback test key"
WRONG_KEY = "a key that is not the server's"
#: The keyed fake-TCP port.
FAKETCP_PORT = 9191
#: The UDP target behind the server relay, and the client relay's UDP port.
ECHO_PORT = 5000
CLIENT_PORT = 4000
#: The fallback services in S.
HTTP_PORT = 8080
TLS_PORT = 8443
BANNER_PORT = 2222
#: Datagrams a second of the keyed stream that runs beside the probes.
STREAM_RATE = 100
#: The share of the keyed stream that must come back while probes run, and
#: the least share of any one second of it.
STREAM_SHARE = 0.95
STREAM_SECOND_SHARE = 0.5
#: Concurrent plain TCP probers, and the relay's fallbackLimit for them.
PROBERS = 200
FALLBACK_LIMIT = 32
#: Descriptors a spliced connection holds in the relay: the accepted kernel
#: socket and the relay's socket to the service (a proxy needs both; the
#: relay's splice copies through a buffer, no pipe).  A connection waiting
#: for its first bytes holds one (its kernel socket), a reset one none.
PER_SPLICE = 2
#: Descriptors the relay may open beyond that for reasons of its own (log
#: rotation, a timer, a metrics scrape), and that may linger a moment.
SLACK = 16
#: curl options of a probe that reads slowly (256 KiB in 2 s).
SLOW = ("--limit-rate", "128k")
#: curl runs each way for the time to first byte, and the time to first
#: byte above which an answer waited for a retransmission (Linux's least
#: retransmission timeout is 200 ms; a direct answer takes 1-2 ms).
TTFB_RUNS = 10
LATE = 0.1
#: Captures of a probe on the wire, at most, until one is in order.
WIRE_ATTEMPTS = 3


def sha256(data: bytes) -> str:
    """
    C{data}'s SHA-256, in hex.
    """
    return hashlib.sha256(data).hexdigest()


class FallbackLabTestCase(TestCase):
    """
    A fresh routed NAT lab (removed at the end) and a temporary directory.
    """

    timeout = 60

    def setUp(self) -> None:
        require_root()
        self.lab = netlab.routed_nat()
        self.addCleanup(self.lab.destroy)
        self.directory = temp_dir(self)


class RelayFallbackTestCase(FallbackLabTestCase):
    """
    A routed NAT lab with a UDP echo behind where the server relay
    forwards, and helpers to run keyed relays and a keyed stream.
    """

    def setUp(self) -> None:
        super().setUp()
        self.echo = ProbePort(echo=True)
        listen_udp(self, self.lab.S, self.echo, ECHO_PORT)
        self.relays: list[RelayProcess] = []

    def relay(self, ns: str, name: str, *args: str) -> RelayProcess:
        """
        Start a relay in C{ns} (stats every second), killed at the end.
        """
        relay = RelayProcess(self.lab, ns, [*args, "--stats-interval", "1"], self.directory, name)
        self.addCleanup(relay.kill)
        self.relays.append(relay)
        return relay.start()

    def describe(self) -> str:
        """
        Every relay's log, for failure messages.
        """
        return "\n".join(relay.describe() for relay in self.relays)

    async def server(self, fallback: str, listen: str = f"key={KEY}") -> RelayProcess:
        """
        The keyed server relay in S on every address (dual stack), UDP to
        the echo, C{--fallback FALLBACK}.
        """
        server = self.relay(
            self.lab.S, "server",
            "--listen", rf"faketcp:{FAKETCP_PORT}:interface=\:\::{listen}",
            "--forward", f"udp:host=127.0.0.1:port={ECHO_PORT}",
            "--fallback", fallback,
        )  # fmt: skip
        return await server.ready()

    async def client(self, key: str = KEY, name: str = "client", extra: str = "") -> RelayProcess:
        """
        A client relay in C: UDP on 127.0.0.1:4000, fake-TCP with C{key} to
        the server's IPv4 address.
        """
        client = self.relay(
            self.lab.C, name,
            "--listen", f"udp:{CLIENT_PORT}:interface=127.0.0.1",
            "--forward", f"faketcp:host={self.lab.server4}:port={FAKETCP_PORT}:key={key}{extra}",
        )  # fmt: skip
        return await client.ready()

    async def keyed_stream(self) -> tuple[PacedStream, ProbePort]:
        """
        A keyed client relay and a paced stream of numbered datagrams
        through it to the echo and back, flowing.

        @return: the stream and the port it comes back to.
        """
        await self.client()
        sender = ProbePort(target=("127.0.0.1", CLIENT_PORT))
        listen_udp(self, self.lab.C, sender)
        stream = PacedStream(sender, b"ky", STREAM_RATE).start()
        self.addCleanup(stream.stop)
        try:
            await wait_until(lambda: sender.count(b"ky") > 0, timeout=10)
        except AssertionError:
            raise AssertionError(f"the keyed stream never came back\n{self.describe()}") from None
        return stream, sender

    async def assertStreamFlowed(self, stream: PacedStream, sender: ProbePort, start: float, end: float) -> None:
        """
        The keyed stream came back while probes ran (C{start} to C{end}):
        L{STREAM_SHARE} of it, and at least L{STREAM_SECOND_SHARE} of each
        second.
        """
        # Datagrams sent just before the end are still on their way.
        await sleep(0.5)
        arrived, sent = stream.delivered(sender, start, end)
        timeline = [bucket for bucket in stream.timeline(sender, start) if 0 <= bucket[0] and start + bucket[0] < end]
        message = (
            f"keyed stream: {arrived}/{sent} came back while probes ran; per second: "
            f"{format_timeline(timeline)}\n{self.describe()}"
        )
        self.assertGreater(sent, 0, message)
        self.assertGreaterEqual(arrived, STREAM_SHARE * sent, message)
        for _, got, of in timeline:
            self.assertGreaterEqual(got, STREAM_SECOND_SHARE * of, message)

    async def fetch(self, url: str, name: str, *options: str) -> Fetch:
        """
        curl C{url} from C (in a thread: the reactor serves the echo and
        the keyed stream meanwhile).
        """
        fetched: Fetch = await curl_in_thread(self.lab, self.lab.C, url, self.directory, name, *options)
        return fetched


class ProbeTests(RelayFallbackTestCase):
    """
    Probes through a keyed relay port get the real service's answers, byte
    for byte, while a keyed flow keeps echoing.
    """

    async def test_http_probes(self) -> None:
        """
        An HTTP GET of a 256 KiB file through the keyed port, over IPv4
        (through the NAT) and IPv6 at once, each read slowly, gets what a
        direct GET gets: the same
        body (SHA-256) and the same status line and headers but C{Date}.
        The service served both probes to the relay (its log shows them
        from 127.0.0.1), the relay counted two fallbacks and no failure,
        and the keyed stream kept coming back all along.
        """
        service, content = http_service(self, self.lab, self.lab.S, HTTP_PORT, self.directory)
        server = await self.server(f"127.0.0.1:{HTTP_PORT}")
        stream, sender = await self.keyed_stream()

        direct = await self.fetch(f"http://{self.lab.server4}:{HTTP_PORT}/{HTTP_FILE}", "direct")
        self.assertEqual((direct.status, direct.sha256()), (0, sha256(content)), direct.describe())
        self.assertEqual(direct.headers[0], "HTTP/1.0 200 OK")

        # Both at once, each read at 128 KiB/s (2 s): the splices carry
        # data all the while the keyed stream runs beside them.
        start = time.monotonic()
        families = {"IPv4": self.lab.server4, "IPv6": self.lab.server6}
        fetched = await defer.gatherResults(
            [
                curl_in_thread(
                    self.lab, self.lab.C, f"http://{url_host(address)}:{FAKETCP_PORT}/{HTTP_FILE}",
                    self.directory, f"probe-{family}", *SLOW,
                )  # fmt: skip
                for family, address in families.items()
            ]
        )
        end = time.monotonic()
        probes = dict(zip(families, fetched, strict=True))

        for family, probe in probes.items():
            message = f"{family} probe: {probe.describe()}\n{service.describe()}\n{self.describe()}"
            self.assertEqual(probe.status, 0, message)
            self.assertEqual(probe.sha256(), sha256(content), message)
            self.assertEqual(probe.headers_except_date(), direct.headers_except_date(), message)
        served = re.findall(rf"127\.0\.0\.1 - - \[[^]]*\] \"GET /{HTTP_FILE} HTTP/1\.1\" 200", service.output())
        self.assertEqual(len(served), 2, service.describe())

        await next_stats(server)
        self.assertEqual(
            (counted(server, "fallback"), counted(server, "fallback-failed")), (2, 0), server.describe()
        )
        await self.assertStreamFlowed(stream, sender, start, end)

    async def test_tls_probes(self) -> None:
        """
        C{curl -k https://...} through a keyed port whose fallback is a TLS
        server (given by its IPv6 loopback address, C{[::1]:PORT}), over
        IPv4 and IPv6: the handshake completes (curl sent a real
        ClientHello and got the page), the page has the structure of a
        direct fetch's, and the certificate curl saw is the server's.
        """
        service, certificate = tls_service(self, self.lab, self.lab.S, TLS_PORT, self.directory)
        server = await self.server(f"[::1]:{TLS_PORT}")
        stream, sender = await self.keyed_stream()
        options = ("-k", "-w", "%{certs}")

        direct = await self.fetch(f"https://{self.lab.server4}:{TLS_PORT}/", "direct", *options)
        self.assertEqual(direct.status, 0, direct.describe())
        self.assertEqual(pem_certificates(direct.stdout), [certificate])
        self.assertIn(b"SSL-Session:", direct.body)

        start = time.monotonic()
        probes = {}
        for family, address in (("IPv4", self.lab.server4), ("IPv6", self.lab.server6)):
            url = f"https://{url_host(address)}:{FAKETCP_PORT}/"
            probes[family] = await self.fetch(url, f"probe-{family}", *options)
        end = time.monotonic()

        for family, probe in probes.items():
            message = f"{family} probe: {probe.describe()}\n{service.describe()}\n{self.describe()}"
            self.assertEqual(probe.status, 0, message)
            self.assertEqual(probe.headers, direct.headers, message)
            self.assertEqual(tls_page_structure(probe.body), tls_page_structure(direct.body), message)
            self.assertEqual(pem_certificates(probe.stdout), [certificate], message)

        await next_stats(server)
        self.assertEqual(
            (counted(server, "fallback"), counted(server, "fallback-failed")), (2, 0), server.describe()
        )
        await self.assertStreamFlowed(stream, sender, start, end)


class WrongKeyTests(RelayFallbackTestCase):
    """
    A fake-TCP client with the wrong key is a non-peer like any other.
    """

    async def test_handed_to_fallback_not_reset(self) -> None:
        """
        A client relay with another key: the server relay hands its
        connection to the fallback service (counted as C{fallback}; the
        service got the connection), sends it no RST (counted at S's
        output and at C's input), and its datagram never reaches the UDP
        target; the client gives up on its own, at its authentication
        deadline, because the server never proved the key.
        """
        banner = listen_banner(self, self.lab, self.lab.S, BANNER_PORT)
        resets = ["-p", "tcp", "--sport", str(FAKETCP_PORT), "--tcp-flags", "RST", "RST"]
        self.lab.count_packets(self.lab.S, "rst-sent", resets, chain="OUTPUT")
        self.lab.count_packets(self.lab.C, "rst-received", resets)
        self.lab.count_packets(self.lab.S, "rst-sent", resets, v6=True, chain="OUTPUT")
        server = await self.server(f"127.0.0.1:{BANNER_PORT}")
        client = await self.client(WRONG_KEY, "wrong-key-client", ":authTimeout=2")
        source = UDPClient(("127.0.0.1", CLIENT_PORT))
        listen_udp(self, self.lab.C, source)
        source.send(b"let me in")

        await client.wait_log(r"cannot connect to .*did not prove knowledge of the key", timeout=15)
        resets_seen = (
            self.lab.read_count(self.lab.S, "rst-sent"),
            self.lab.read_count(self.lab.S, "rst-sent", v6=True),
            self.lab.read_count(self.lab.C, "rst-received"),
        )
        self.assertEqual(resets_seen, (0, 0, 0), self.describe())
        self.assertEqual(len(banner.connected), 1, self.describe())
        await next_stats(server)
        self.assertEqual(
            (counted(server, "fallback"), counted(server, "fallback-failed")), (1, 0), server.describe()
        )
        self.assertEqual((self.echo.sources, self.echo.corrupt), (set(), 0))
        self.assertNotIn("let me in", server.log())


class ManyProbersTests(RelayFallbackTestCase):
    """
    A flood of probers stays within the relay's limits.
    """

    timeout = 90

    async def test_many_probers_within_limits(self) -> None:
        """
        200 plain TCP probers at once (all from the NAT's one address)
        against a relay with C{fallbackLimit=32} (and its key in a
        C{keyFile}), each sending one line and holding its connection open:
        exactly 32 get spliced to the banner service and get its answer
        (the banner, then their own line echoed); every other one is reset
        without a byte, counted as C{fallback-limit}, those whose handshake
        the port's older limits refused (at most 64 embryonic flows from one
        address) too, once their adoption gives up; none is left waiting;
        the keyed stream keeps coming back; the relay's descriptors stay within
        L{PER_SPLICE} per spliced connection once the flood has been
        sorted (and within one more per prober meanwhile, while their
        first bytes are awaited), and return to the baseline once the
        probers close.
        """
        banner = listen_banner(self, self.lab, self.lab.S, BANNER_PORT)
        resets = ["-p", "tcp", "--sport", str(FAKETCP_PORT), "--tcp-flags", "RST", "RST"]
        self.lab.count_packets(self.lab.C, "rst-received", resets)
        key_file = os.path.join(self.directory, "key")
        with open(key_file, "w") as written:
            written.write(KEY + "\n")
        listen = f"keyFile={key_file}:fallbackLimit={FALLBACK_LIMIT}"
        server = await self.server(f"127.0.0.1:{BANNER_PORT}", listen=listen)
        stream, sender = await self.keyed_stream()
        assert server.process is not None
        pid = server.process.pid
        await sleep(0.5)
        baseline = open_descriptors(pid)
        peak = [baseline]

        def sample() -> None:
            peak[0] = max(peak[0], open_descriptors(pid))

        sampler = LoopingCall(sample)
        sampler.start(0.02)
        self.addCleanup(lambda: sampler.running and sampler.stop())

        start = time.monotonic()
        probers = start_probers(
            self.lab, self.lab.C, self.lab.server4, FAKETCP_PORT, [b"PROBE %d\r\n" % n for n in range(PROBERS)]
        )
        self.addCleanup(close_probers, probers)

        def answered(prober: Prober) -> bool:
            return prober.ended is None and prober.received == BANNER + prober.request

        def outcome() -> str:
            kinds: Counter[str] = Counter()
            for prober in probers:
                kinds["answered" if answered(prober) else (prober.ended or "waiting")] += 1
            reasons = Counter(prober.reason for prober in probers if prober.reason)
            return (
                f"probers: {dict(kinds)}; reasons {dict(reasons)}; service live {banner.live()} of "
                f"{len(banner.connected)}; descriptors baseline {baseline} peak {peak[0]} now {open_descriptors(pid)}"
            )

        try:
            await wait_until(lambda: sum(1 for prober in probers if answered(prober)) >= FALLBACK_LIMIT, 20, 0.1)
        except AssertionError:
            raise AssertionError(f"{outcome()}\n{self.describe()}") from None
        # Let the flood be sorted: every prober answered or ended (those
        # whose handshake a limit refused after the adoption's wait, 3 s).
        settled = time.monotonic() + 8.0
        while time.monotonic() < settled and not all(answered(prober) or prober.ended for prober in probers):
            await sleep(0.1)
        await sleep(1.0)
        plateau = open_descriptors(pid)
        end = time.monotonic()
        await next_stats(server)
        figures = (
            f"{outcome()}; plateau {plateau}; relay counted fallback={counted(server, 'fallback')} "
            f"fallback-limit={counted(server, 'fallback-limit')} "
            f"embryo-address-limit={counted(server, 'embryo-address-limit')}"
        )
        print(f"\n    {figures}")
        message = f"{figures}\n{self.describe()}"
        self.assertEqual(sum(1 for prober in probers if answered(prober)), FALLBACK_LIMIT, message)
        unanswered = [prober.received for prober in probers if not answered(prober)]
        self.assertEqual(unanswered, [b""] * (PROBERS - FALLBACK_LIMIT), message)
        self.assertEqual(banner.live(), FALLBACK_LIMIT, message)
        self.assertEqual(
            sorted(connection.received for connection in banner.connected if connection.open),
            sorted(prober.request for prober in probers if answered(prober)),
        )
        self.assertEqual(counted(server, "fallback"), FALLBACK_LIMIT, message)
        self.assertEqual(counted(server, "fallback-failed"), 0, message)
        self.assertEqual(sum(1 for prober in probers if answered(prober) or prober.ended), PROBERS, message)
        self.assertEqual(counted(server, "fallback-limit"), PROBERS - FALLBACK_LIMIT, message)
        reset = sum(1 for prober in probers if prober.ended in ("reset", "failed"))
        self.assertGreaterEqual(self.lab.read_count(self.lab.C, "rst-received"), reset, message)
        self.assertLessEqual(plateau, baseline + PER_SPLICE * FALLBACK_LIMIT + SLACK, message)
        self.assertLessEqual(peak[0], baseline + PROBERS + PER_SPLICE * FALLBACK_LIMIT + SLACK, message)
        await self.assertStreamFlowed(stream, sender, start, end)

        await close_probers(probers)
        try:
            await wait_until(lambda: banner.live() == 0, timeout=10)
            await wait_until(lambda: open_descriptors(pid) <= baseline + 2, timeout=10)
        except AssertionError:
            raise AssertionError(f"{outcome()}\n{self.describe()}") from None
        sampler.stop()
        # The keyed flow is still there, and the stream still comes back.
        after = time.monotonic()
        await sleep(1.5)
        await self.assertStreamFlowed(stream, sender, after, after + 1.0)


class WireVerdictTests(TestCase):
    """
    L{wire_problems} on made-up captures (no root, no capture): what it
    finds in a segment of ours, a reset, reordering and tshark's items.
    """

    ANSWER = b"A" * 100 + b"B" * 50
    REQUEST = b"GET / 1.0\n"
    RETRANSMISSION = "This frame is a (suspected) retransmission"

    def connection(self) -> list[WireSegment]:
        """
        An ordinary one: the handshake, the request sent twice, the answer
        in two segments, a FIN each way.
        """
        request, answer = self.REQUEST, self.ANSWER
        return [
            WireSegment(1, False, "S", 0, 0, None),
            WireSegment(2, True, "S", 0, 0, 1),
            WireSegment(3, False, "", 1, 0, 1),
            WireSegment(4, False, "", 1, len(request), 1, request),
            WireSegment(5, False, "", 1, len(request), 1, request),
            WireSegment(6, True, "", 1, 0, 11),
            WireSegment(7, True, "", 1, 100, 11, answer[:100]),
            WireSegment(8, True, "", 101, 50, 11, answer[100:]),
            WireSegment(9, True, "F", 151, 0, 11),
            WireSegment(10, False, "F", 11, 0, 152),
            WireSegment(11, True, "", 152, 0, 12),
        ]

    def items(self, *extra: tuple[int, str, str]) -> list[test_wire.ExpertItem]:
        """
        tshark's items for L{connection}, and C{extra} ones (frame,
        severity, message).
        """
        found = [
            (1, "Chat", "Connection establish request (SYN): server port 9191"),
            (5, "Note", self.RETRANSMISSION),
            (7, "Warning", "TCP window specified by the receiver is now completely full"),
            (9, "Note", "This frame initiates the connection closing"),
            (10, "Note", "This frame undergoes the connection closing"),
            *extra,
        ]
        return [test_wire.ExpertItem(frame, severity, "Sequence", message) for frame, severity, message in found]

    def verdict(self, segments: list[WireSegment], items: list[test_wire.ExpertItem]) -> WireVerdict:
        """
        L{wire_problems} of C{segments} and C{items} with L{ANSWER} and
        L{REQUEST}.
        """
        return wire_problems(segments, items, self.ANSWER, len(self.REQUEST))

    def test_ordinary(self) -> None:
        """
        Nothing wrong or out of order; one retransmission counted; none
        needed.
        """
        verdict = self.verdict(self.connection(), self.items())
        self.assertEqual((verdict.wrong, verdict.disorder, verdict.retransmissions), ([], [], 1))
        once = [segment for segment in self.connection() if segment.frame != 5]
        verdict = self.verdict(once, [item for item in self.items() if item.frame != 5])
        self.assertEqual((verdict.wrong, verdict.disorder, verdict.retransmissions), ([], [], 0))

    def test_segment_of_ours(self) -> None:
        """
        A server segment in the stream's place but with other bytes (as a
        fake-TCP segment would be, continuing the handshake's numbers) is
        wrong, before or after the kernel's.
        """
        for place in (6, 8):
            segments = self.connection()
            segments.insert(place, WireSegment(7, True, "", 1, 32, 11, b"\x17" * 32))
            segments = [replace(segment, frame=number) for number, segment in enumerate(segments, 1)]
            verdict = self.verdict(segments, [])
            self.assertTrue(any("are not the service's answer" in line for line in verdict.wrong), verdict)

    def test_reset_and_acks(self) -> None:
        """
        A RST either way is wrong; so is an ack for bytes the prober had not
        sent, and a request not all acknowledged.
        """
        for frame in (10, 11):
            segments = self.connection()
            segments[frame - 1] = replace(segments[frame - 1], flags="R")
            self.assertIn(f"frame {frame}: a RST", self.verdict(segments, self.items()).wrong)
        segments = self.connection()
        segments[5] = replace(segments[5], ack=50)
        self.assertIn("frame 6: the server acks 50, the prober had sent to 11", self.verdict(segments, []).wrong)
        segments = [replace(segment, ack=min(segment.ack, 5)) if segment.from_server and segment.ack else segment
                    for segment in self.connection()]  # fmt: skip
        self.assertTrue(self.verdict(segments, []).wrong)

    def test_reordering(self) -> None:
        """
        Two server segments swapped, and tshark's items for a reordering
        or a lost segment, are disorder (tried again), not wrong; a
        retransmission Note is allowed only on the prober's first data
        segment; an Error is wrong.
        """
        segments = self.connection()
        segments[6], segments[7] = replace(segments[7], frame=7), replace(segments[6], frame=8)
        verdict = self.verdict(segments, self.items())
        self.assertEqual(verdict.wrong, [])
        self.assertIn("frame 7: server segment at 101 (50 bytes, flags -), its stream was at 1", verdict.disorder)
        for frame, severity, message in [
            (8, "Warning", "Previous segment(s) not captured (common at capture start)"),
            (8, "Warning", "This frame is a (suspected) out-of-order segment"),
            (8, "Note", self.RETRANSMISSION),
            (4, "Note", self.RETRANSMISSION),
            (6, "Warning", "ACKed segment that wasn't captured (common at capture start)"),
            (10, "Note", "Duplicate ACK (#1)"),
            (10, "Warning", "TCP Zero Window segment"),
            (11, "Warning", "Connection reset (RST)"),
        ]:
            verdict = self.verdict(self.connection(), self.items((frame, severity, message)))
            self.assertEqual((verdict.wrong, verdict.disorder), ([], [f"frame {frame}: {severity} {message!r}"]))
        verdict = self.verdict(self.connection(), self.items((7, "Error", "Bad checksum [should be 0x1234]")))
        self.assertEqual(len(verdict.wrong), 1)


class ErrorTests(TestCase):
    """
    C{fallback} without a key is a one-line error in every face.
    """

    timeout = 30

    def assertOneLine(self, message: str) -> None:
        self.assertNotIn("\n", message.strip())
        self.assertIn("fallback", message.lower())
        self.assertIn("key", message.lower())

    def test_endpoint_string_without_key(self) -> None:
        """
        A server endpoint string with C{fallback=} and no C{key=} or
        C{keyFile=} raises ValueError naming both; with a key, IPv4 and
        bracketed IPv6 fallbacks parse.
        """
        for description in (
            rf"faketcp:{FAKETCP_PORT}:fallback=127.0.0.1\:{HTTP_PORT}",
            rf"faketcp:{FAKETCP_PORT}:fallback=[\:\:1]\:{HTTP_PORT}:fallbackLimit=8",
        ):
            failure = self.assertRaises(ValueError, serverFromString, reactor, description)
            self.assertOneLine(str(failure))
        for description in (
            rf"faketcp:{FAKETCP_PORT}:key={KEY}:fallback=127.0.0.1\:{HTTP_PORT}",
            rf"faketcp:{FAKETCP_PORT}:key={KEY}:fallback=[\:\:1]\:{HTTP_PORT}:fallbackLimit=8",
        ):
            self.assertIsNotNone(serverFromString(reactor, description))

    def test_asyncio_without_key(self) -> None:
        """
        C{aio.create_server(..., fallback=(host, port))} without a key
        raises ValueError naming both.
        """
        require_root()
        lab = netlab.two_hosts()
        self.addCleanup(lab.destroy)

        async def attempt() -> Any:
            server = await aio.create_server(
                asyncio.Protocol, host="0.0.0.0", port=FAKETCP_PORT, fallback=("127.0.0.1", HTTP_PORT)
            )
            # Not refused: close what was opened before the test fails.
            server.close()
            await server.wait_closed()
            return server

        with netlab.in_namespace(lab.S):
            failure = self.assertRaises(ValueError, asyncio.run, attempt())
        self.assertOneLine(str(failure))

    async def test_relay_without_key(self) -> None:
        """
        C{--fallback} while C{--listen} has no key: the relay exits with a
        non-zero status and one line naming the problem.
        """
        require_root()
        lab = netlab.two_hosts()
        self.addCleanup(lab.destroy)
        directory = temp_dir(self)
        relay = RelayProcess(
            lab, lab.S,
            ["--listen", f"faketcp:{FAKETCP_PORT}:interface=0.0.0.0",
             "--forward", f"udp:host=127.0.0.1:port={ECHO_PORT}", "--fallback", f"127.0.0.1:{HTTP_PORT}"],
            directory, "keyless",
        )  # fmt: skip
        self.addCleanup(relay.kill)
        relay.start()
        status = await relay.stop(0, timeout=15)
        output = relay.stderr() + relay.log()
        self.assertNotEqual(status, 0, output)
        self.assertNotIn("Traceback", output)
        lines = [line for line in output.splitlines() if "fallback" in line.lower() and "key" in line.lower()]
        self.assertTrue(lines, output)


class TwistedEndpointTests(FallbackLabTestCase):
    """
    The Twisted server endpoint (C{serverFromString} with C{fallback=}) in
    this process: probes go to the fallback, a keyed client is served.

    The port listens in S, and the test's thread then goes back to its own
    namespace, as the project's other in-process tests do: the connection
    to the fallback service must be made where the port lives (where the
    service's address means that service), as every other socket of the
    port is.
    """

    def setUp(self) -> None:
        super().setUp()
        self.service, self.content = http_service(self, self.lab, self.lab.S, HTTP_PORT, self.directory)

    async def test_probe_and_keyed_client(self) -> None:
        """
        With C{key=}, C{authTimeout=1} and C{fallback=127.0.0.1\\:PORT}: a
        keyed client's datagrams are echoed; a curl GET gets the service's
        file and headers; a prober that says nothing is handed over at the
        authentication deadline (the listener's C{fallbacks} shows it while
        it lasts) and then gets the file for its own request; only the
        keyed client ever reached the factory.
        """
        factory = RecordingFactory(_Echo)
        description = (
            rf"faketcp:{FAKETCP_PORT}:interface=0.0.0.0:key={KEY}:authTimeout=1:fallback=127.0.0.1\:{HTTP_PORT}"
        )
        with netlab.in_namespace(self.lab.S):
            listening = serverFromString(reactor, description).listen(factory)
        port = await listening
        self.addCleanup(port.stopListening)
        self.addCleanup(port.abortConnections)
        listener = port._listener
        with netlab.in_namespace(self.lab.C):
            connecting = clientFromString(
                reactor, f"faketcp:host={self.lab.server4}:port={FAKETCP_PORT}:key={KEY}"
            ).connect(RecordingFactory())
        client = await connecting
        self.addCleanup(lambda: client.transport.connected and client.transport.abortConnection())
        client.transport.write(b"keyed 0")
        await wait_until(lambda: client.received == [b"keyed 0"])

        url = f"{self.lab.server4}:{{}}/{HTTP_FILE}"
        direct: Fetch = await curl_in_thread(
            self.lab, self.lab.C, "http://" + url.format(HTTP_PORT), self.directory, "direct"
        )
        probe: Fetch = await curl_in_thread(
            self.lab, self.lab.C, "http://" + url.format(FAKETCP_PORT), self.directory, "probe"
        )
        drops = port.demuxes[socket.AF_INET].drops
        message = f"{probe.describe()}; port drops {dict(drops)}\n{self.service.describe()}"
        self.assertEqual((direct.status, direct.sha256()), (0, sha256(self.content)), direct.describe())
        self.assertEqual((probe.status, probe.sha256()), (0, sha256(self.content)), message)
        self.assertEqual(probe.headers_except_date(), direct.headers_except_date(), message)
        await wait_until(lambda: listener.fallbacks == 0, timeout=5)

        [silent] = start_probers(self.lab, self.lab.C, self.lab.server4, FAKETCP_PORT, [b""])
        self.addCleanup(close_probers, [silent])
        await wait_until(lambda: listener.fallbacks == 1, timeout=5)
        self.assertIsNone(silent.ended)
        client.transport.write(b"keyed 1")
        await wait_until(lambda: client.received == [b"keyed 0", b"keyed 1"])
        silent.transport.write(f"GET /{HTTP_FILE} HTTP/1.0\r\n\r\n".encode())
        await wait_until(lambda: silent.ended is not None, timeout=10)
        self.assertEqual(silent.ended, "closed")
        head, _, body = silent.received.partition(b"\r\n\r\n")
        self.assertEqual(head.split(b"\r\n")[0], b"HTTP/1.0 200 OK")
        self.assertEqual(sha256(body), sha256(self.content))
        await wait_until(lambda: listener.fallbacks == 0, timeout=5)

        self.assertEqual((drops["fallback"], drops["fallback-failed"]), (2, 0))
        self.assertEqual(len(factory.built), 1)
        client.transport.write(b"keyed 2")
        await wait_until(lambda: client.received[-1:] == [b"keyed 2"])
        await port.stopListening()
        port.abortConnections()
        await wait_until(lambda: silencing_rules(self.lab, self.lab.S) == [], timeout=5)
        self.assertEqual(established(self.lab, self.lab.S, FAKETCP_PORT), [])


class _Echo(Recorder):
    """
    Records and echoes every datagram.
    """

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        self.transport.write(data)  # type: ignore[union-attr]


class AsyncioServerTests(test_aio.AioLabTestCase):
    """
    The asyncio server (C{create_server(..., fallback=(host, port))}):
    a probe goes to the fallback, a keyed client is served.  As in
    L{TwistedEndpointTests}, the loop's thread is outside S after the
    server is made.
    """

    def makeLab(self) -> Any:
        """
        The routed NAT lab rather than two hosts on one link.
        """
        return netlab.routed_nat()

    def setUp(self) -> None:
        super().setUp()
        self.directory = temp_dir(self)
        self.service, self.content = http_service(self, self.lab, self.lab.S, HTTP_PORT, self.directory)

    def assertNothingLeft(self, port: int | None = None) -> None:
        """
        No rule, no rule held here, and no established connection of the
        port (the fallback connections' kernel sockets may wait in
        TIME-WAIT: they are closed).
        """
        for ns in (self.lab.S, self.lab.C):
            self.assertEqual(silencing_rules(self.lab, ns), [])
            self.assertEqual(established(self.lab, ns, port or self.port), [])
        self.assertEqual(silencer.installed(), [])

    def test_probe_and_keyed_client(self) -> None:
        """
        With C{key=} and C{fallback=("::1", PORT)}: a curl GET over IPv6
        gets the service's file and headers, byte for byte; a keyed client
        is echoed before and after; the factory only ever saw the keyed
        client; the listener counted one fallback and has none left.
        """

        async def test() -> None:
            factory = test_aio.ProtocolFactory(echo=True)
            server = await self.listen(factory, host="::", key=KEY, fallback=("::1", HTTP_PORT), auth_timeout=1)
            listener = server._listener
            transport, protocol = await self.connect(test_aio.Recorder, key=KEY)
            transport.write(b"keyed 0")
            await test_aio.wait_until(lambda: protocol.received == [b"keyed 0"])

            url = f"http://{url_host(self.lab.server6)}:{{}}/{HTTP_FILE}"
            direct = await asyncio.to_thread(
                curl, self.lab, self.lab.C, url.format(HTTP_PORT), self.directory, "direct"
            )
            probe = await asyncio.to_thread(
                curl, self.lab, self.lab.C, url.format(self.port), self.directory, "probe"
            )
            drops: Counter[str] = Counter()
            for demux in listener.demuxes.values():
                drops.update(demux.drops)
            message = f"{probe.describe()}; port drops {dict(drops)}\n{self.service.describe()}"
            self.assertEqual((direct.status, direct.sha256()), (0, sha256(self.content)), direct.describe())
            self.assertEqual((probe.status, probe.sha256()), (0, sha256(self.content)), message)
            self.assertEqual(probe.headers_except_date(), direct.headers_except_date(), message)

            transport.write(b"keyed 1")
            await test_aio.wait_until(lambda: protocol.received == [b"keyed 0", b"keyed 1"])
            await test_aio.wait_until(lambda: listener.fallbacks == 0)
            drops = Counter()
            for demux in listener.demuxes.values():
                drops.update(demux.drops)
            self.assertEqual((drops["fallback"], drops["fallback-failed"]), (1, 0))
            self.assertEqual(len(factory.built), 1)

        self.run_async(test)


class WireProbeTests(RelayFallbackTestCase):
    """
    A probe's connection through the fallback, as the prober's own TCP
    sees it: captured with tcpdump on C's interface and read by tshark's
    TCP analysis, with L{tests.test_wire}'s capture and tshark settings
    (whole packets, checksums verified, sequence analysis on, the payload
    decoded as plain data).

    Needs C{tcpdump} and C{tshark}; skips otherwise.
    """

    tshark = test_wire.WireTests.tshark
    judge = test_wire.WireTests.judge
    frames = test_wire.WireTests.frames
    checksum_offload_off = test_wire.WireTests.checksum_offload_off

    def setUp(self) -> None:
        missing = [tool for tool in ("tcpdump", "tshark") if shutil.which(tool) is None]
        if missing:
            raise SkipTest(f"the wire check needs {' and '.join(missing)}")
        super().setUp()
        # tshark's own configuration directory (see test_wire.WireTests).
        self.tshark_config = os.path.join(self.directory, "wireshark")
        os.mkdir(self.tshark_config)

    async def probe_on_the_wire(self, name: str, content: bytes) -> tuple[WireVerdict, str]:
        """
        One curl GET of the file through the keyed port (IPv4, through the
        NAT), captured on C's interface; curl must get the file.

        @return: L{wire_problems}'s verdict, and a description of the
            capture for messages (tshark's counts and summary, the frames
            of the problems, curl's result, the logs).
        """
        # test_wire's tcpdump and tshark settings are for its port: ours.
        self.assertEqual(test_wire.FAKETCP_PORT, FAKETCP_PORT)
        pcap = os.path.join(self.directory, f"{name}.pcap")
        tcpdump = test_wire.Tcpdump(self.lab.C, self.lab.client_if, pcap).start()
        self.addCleanup(tcpdump.kill)
        await tcpdump.listening()
        url = f"http://{self.lab.server4}:{FAKETCP_PORT}/{HTTP_FILE}"
        probe = await self.fetch(url, name, "-w", "%{size_request} %{size_header}")
        # The last segment: the server's ack of the prober's FIN.
        await sleep(0.3)
        counts = await tcpdump.stop()
        message = f"{probe.describe()}\n{self.describe()}"
        self.assertEqual((probe.status, probe.sha256()), (0, sha256(content)), message)
        request, header = (int(size) for size in probe.stdout.split())
        answer = "".join(line + "\r\n" for line in [*probe.headers, ""]).encode("latin-1") + probe.body
        self.assertEqual(len(answer), header + len(probe.body), message)

        judgement = self.judge(name, pcap, counts, 0)
        fields = [arg for wire_field in WIRE_FIELDS for arg in ("-e", wire_field)]
        segments = wire_segments(
            self.tshark("-r", pcap, "-T", "fields", "-E", "separator=/t", *fields), FAKETCP_PORT
        )  # fmt: skip
        verdict = wire_problems(segments, judgement.items, answer, request)
        problems = verdict.wrong + verdict.disorder
        frames = sorted({int(number) for line in problems for number in re.findall(r"^frame (\d+)", line)})
        description = (
            f"{judgement.report()}\n--- tshark -z expert ---\n{judgement.summary}"
            f"\n--- the problems' frames, each with the one before ---\n{self.frames(pcap, frames)}\n{message}"
        )
        return verdict, description

    async def test_probe_on_the_wire(self) -> None:
        """
        A curl GET of the 256 KiB file through the keyed port (IPv4, through
        the NAT), captured at the prober: curl gets the file, and the
        connection is an ordinary one whose only oddity is that the prober
        may send its first data segment again (L{wire_problems}): the
        server's segments are the kernel connection's alone (a SYN+ACK at
        its ISN, then each exactly where its stream is, carrying the
        service's answer there, then the FIN; no RST); every byte of the
        request was acknowledged and no ack of the server's covers a byte
        the prober had not sent; tshark's only Notes are retransmission
        Notes of the prober's first data segment and the closing Notes on
        the FINs, its only Warning the sender's window-full on a server
        data segment (flow control: a direct fetch has it too); no segment
        not captured, none acked unseen, none out of order, no duplicate
        ack, no zero window, no RST, no Error.

        The lab's veths reorder segments at times (a direct fetch then has
        out-of-order segments and duplicate acks too), so a capture whose
        only problems are of order (L{WireVerdict.disorder}) is tried again,
        up to L{WIRE_ATTEMPTS} captures in all; what reordering does not
        explain (L{WireVerdict.wrong}: a segment of ours would carry other
        bytes than the service's) fails at once.
        """
        _, content = http_service(self, self.lab, self.lab.S, HTTP_PORT, self.directory)
        server = await self.server(f"127.0.0.1:{HTTP_PORT}")
        self.checksum_offload_off(
            self.lab, [(self.lab.C, self.lab.client_if), (self.lab.R, self.lab.router_client_if)]
        )  # fmt: skip
        reordered = []
        for attempt in range(1, WIRE_ATTEMPTS + 1):
            verdict, description = await self.probe_on_the_wire(f"probe-{attempt}", content)
            if verdict.wrong:
                self.fail(
                    "the probe's connection is not an ordinary one:\n  "
                    + "\n  ".join((verdict.wrong + verdict.disorder)[:30]) + f"\n{description}"
                )  # fmt: skip
            if not verdict.disorder:
                break
            reordered.append(description)
        else:
            self.fail(
                f"{WIRE_ATTEMPTS} captures, each out of order:\n  " + "\n  ".join(verdict.disorder[:30])
                + "\n" + "\n".join(reordered)
            )  # fmt: skip
        print(
            f"\n    {description.partition(chr(10))[0]}; retransmissions of the prober's first data segment: "
            f"{verdict.retransmissions}; earlier captures out of order: {attempt - 1}"
        )
        await next_stats(server)
        self.assertEqual(
            (counted(server, "fallback"), counted(server, "fallback-failed")), (attempt, 0), server.describe()
        )

    async def test_time_to_first_byte(self) -> None:
        """
        The time to first byte of a curl GET (C{%{time_starttransfer}})
        through the fallback and directly to the service, L{TTFB_RUNS}
        times each, alternating: every fetch gets the file.  The medians
        are printed, and how many fetches through the fallback came over
        L{LATE} s: those whose request the muted socket dropped, answered
        after the prober's first retransmission (one retransmission
        timeout); a request the kernel took before the socket was muted is
        answered at once.
        """
        service, content = http_service(self, self.lab, self.lab.S, HTTP_PORT, self.directory)
        await self.server(f"127.0.0.1:{HTTP_PORT}")
        times: dict[int, list[float]] = {FAKETCP_PORT: [], HTTP_PORT: []}
        for run in range(TTFB_RUNS):
            for port, runs in times.items():
                url = f"http://{self.lab.server4}:{port}/{HTTP_FILE}"
                fetched = await self.fetch(url, f"ttfb-{port}-{run}", "-w", "%{time_starttransfer}")
                message = f"port {port}, run {run}: {fetched.describe()}\n{service.describe()}\n{self.describe()}"
                self.assertEqual((fetched.status, fetched.sha256()), (0, sha256(content)), message)
                runs.append(float(fetched.stdout))
        fallback, direct = times[FAKETCP_PORT], times[HTTP_PORT]
        late = [t for t in fallback if t > LATE]
        prompt = [t for t in fallback if t <= LATE]
        print(
            f"\n    time to first byte, median of {TTFB_RUNS}: through the fallback {statistics.median(fallback):.3f} s"
            f" ({len(late)} over {LATE} s, median {statistics.median(late or [0]):.3f} s; the rest median"
            f" {statistics.median(prompt or [0]):.3f} s), direct {statistics.median(direct):.3f} s"
            f" (max {max(direct):.3f} s)"
        )
