"""
Pieces of the fallback tests (issue 16, L{tests.test_fallback}): real TCP
services in a lab namespace (C{python -m http.server}, C{openssl s_server
-www}, and a small in-process banner service), curl probes and their
comparison with a direct fetch, many plain TCP probers, and the counters
and descriptors of a relay process.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import reactor, threads
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from lab import netlab
from tests.relaylab import RelayProcess, lab_command
from tests.support import kill_and_reap, sleep

#: What the banner service says first, as an SSH server would.
BANNER = b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n"
#: Bytes of the file the HTTP service serves.
HTTP_FILE_SIZE = 256 * 1024
#: The file's name under the served directory.
HTTP_FILE = "probe.bin"


def url_host(address: str) -> str:
    """
    C{address} as it goes in a URL (IPv6 in brackets).
    """
    return f"[{address}]" if ":" in address else address


def listening(lab: netlab.Lab, ns: str, port: int) -> bool:
    """
    Whether a TCP socket listens on C{port} in C{ns}.
    """
    output = lab.run(ns, "ss", "-tlnH", check=False).stdout
    return any(line.split()[3:4] and line.split()[3].endswith(f":{port}") for line in output.splitlines())


def established(lab: netlab.Lab, ns: str, port: int) -> list[str]:
    """
    Established TCP connections in C{ns} with C{port} on either end.
    """
    output = lab.run(ns, "ss", "-tnH", "state", "established", check=False).stdout
    return [line for line in output.splitlines() if re.search(rf":{port}\b", line)]


class ServiceProcess:
    """
    A real TCP service (or any command) inside a lab namespace, its output
    in a file, killed at the test's end.
    """

    def __init__(self, test: TestCase, lab: netlab.Lab, ns: str, argv: list[str], directory: str, name: str) -> None:
        self.lab = lab
        self.ns = ns
        self.argv = argv
        self.name = name
        self.log_path = os.path.join(directory, f"{name}.log")
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                lab_command(lab, ns, argv),
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                cwd=directory,
            )
        test.addCleanup(self.kill)

    def output(self) -> str:
        """
        What the service printed so far.
        """
        with open(self.log_path, encoding="utf-8", errors="replace") as log:
            return log.read()

    def describe(self) -> str:
        """
        The service's command and output, for failure messages.
        """
        return f"--- {self.name}: {' '.join(self.argv)} ---\n{self.output()[-3000:]}"

    def wait_listening(self, port: int, timeout: float = 10.0) -> None:
        """
        Block until the service listens on C{port} (before any reactor work).

        @raise AssertionError: it exited or did not listen in time.
        """
        waited = 0.0
        while not listening(self.lab, self.ns, port):
            if self.process.poll() is not None or waited > timeout:
                raise AssertionError(f"{self.name} does not listen on {port}\n{self.describe()}")
            time.sleep(0.05)
            waited += 0.05

    def kill(self) -> None:
        """
        SIGKILL and reap, if still running.
        """
        kill_and_reap(self.process)


def http_service(test: TestCase, lab: netlab.Lab, ns: str, port: int, directory: str) -> tuple[ServiceProcess, bytes]:
    """
    C{python -m http.server} on every address (dual stack) of C{ns},
    serving a directory that holds L{HTTP_FILE}: L{HTTP_FILE_SIZE} random
    bytes.

    @return: the service (listening) and the file's content.
    """
    root = os.path.join(directory, "www")
    os.makedirs(root, exist_ok=True)
    content = os.urandom(HTTP_FILE_SIZE)
    with open(os.path.join(root, HTTP_FILE), "wb") as served:
        served.write(content)
    argv = [sys.executable, "-m", "http.server", "--bind", "::", "--directory", root, str(port)]
    service = ServiceProcess(test, lab, ns, argv, directory, "http-service")
    service.wait_listening(port)
    return service, content


def tls_service(test: TestCase, lab: netlab.Lab, ns: str, port: int, directory: str) -> tuple[ServiceProcess, bytes]:
    """
    C{openssl s_server -www} on every address of C{ns}, with a self-signed
    P-256 certificate made for it.

    @return: the service (listening) and its certificate (DER).
    """
    cert = os.path.join(directory, "cert.pem")
    key = os.path.join(directory, "key.pem")
    made = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=fallback.test"],
        capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip
    if made.returncode != 0:
        raise AssertionError(f"openssl req failed: {made.stderr}")
    with open(cert) as pem:
        der = pem_certificates(pem.read())[0]
    argv = ["openssl", "s_server", "-www", "-accept", str(port), "-cert", cert, "-key", key]
    service = ServiceProcess(test, lab, ns, argv, directory, "tls-service")
    service.wait_listening(port)
    return service, der


def pem_certificates(text: str) -> list[bytes]:
    """
    The DER of every PEM certificate block in C{text}, in order.
    """
    blocks = re.findall(r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", text, re.S)
    return [base64.b64decode("".join(block.split())) for block in blocks]


@dataclass
class Fetch:
    """
    What one curl run got.

    @ivar status: curl's exit status (0: the transfer completed).
    @ivar stdout: what C{-w} printed.
    @ivar stderr: curl's error line, if any.
    @ivar headers: the response's status line and headers, in order.
    @ivar body: the response's body.
    """

    status: int
    stdout: str
    stderr: str
    headers: list[str] = field(default_factory=list)
    body: bytes = b""

    def headers_except_date(self) -> list[str]:
        """
        L{headers} without C{Date:} (the one header that changes between
        two answers to the same request).
        """
        return [line for line in self.headers if not line.lower().startswith("date:")]

    def sha256(self) -> str:
        """
        The body's SHA-256, in hex.
        """
        return hashlib.sha256(self.body).hexdigest()

    def describe(self) -> str:
        """
        A summary for failure messages.
        """
        return (
            f"curl exited {self.status}: {self.stderr.strip()[-500:]!r}; headers {self.headers}; "
            f"{len(self.body)} body bytes"
        )


def curl(lab: netlab.Lab, ns: str, url: str, directory: str, name: str, *options: str, timeout: float = 20) -> Fetch:
    """
    C{curl -sS URL} from C{ns} (blocking): the headers and the body go to
    files in C{directory} named after C{name}, C{options} are added (for
    example C{-k}, C{-w %{certs}}).
    """
    headers_path = os.path.join(directory, f"{name}.headers")
    body_path = os.path.join(directory, f"{name}.body")
    for path in (headers_path, body_path):
        if os.path.exists(path):
            os.remove(path)
    argv = ["ip", "netns", "exec", lab.namespaces.get(ns, ns), "curl", "-sS", "-g", "--max-time", f"{timeout:g}",
            "-D", headers_path, "-o", body_path, *options, url]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout + 10)
    fetch = Fetch(done.returncode, done.stdout, done.stderr)
    if os.path.exists(headers_path):
        with open(headers_path, encoding="latin-1", newline="") as headers:
            fetch.headers = [line for line in headers.read().split("\r\n") if line]
    if os.path.exists(body_path):
        with open(body_path, "rb") as body:
            fetch.body = body.read()
    return fetch


def curl_in_thread(lab: netlab.Lab, ns: str, url: str, directory: str, name: str, *options: str) -> Any:
    """
    L{curl} in the reactor's thread pool, so the reactor (and whatever
    fake-TCP port it runs) keeps turning meanwhile.

    @return: a Deferred firing with the L{Fetch}.
    """
    return threads.deferToThread(curl, lab, ns, url, directory, name, *options)


def tls_page_structure(page: bytes) -> list[str]:
    """
    C{s_server -www}'s status page with what differs between two sessions
    masked: hex strings of 8 characters or more (session id, resumption
    PSK) and numbers (start time, the session counters).  Two fetches by
    the same client from the same server have the same structure.
    """
    text = page.decode("utf-8", errors="replace")
    text = re.sub(r"\b[0-9A-Fa-f]{8,}\b", "<hex>", text)
    text = re.sub(r"\d+", "<n>", text)
    return [line.rstrip() for line in text.splitlines()]


# --------------------------------------------------------------------------
# The banner service and plain TCP probers (in this process)
# --------------------------------------------------------------------------


class BannerConnection(Protocol):
    """
    One connection of the banner service: L{BANNER} at once, then every
    byte received is echoed back; it closes only when the peer does.
    """

    def __init__(self) -> None:
        self.received = b""
        self.open = False

    def connectionMade(self) -> None:
        self.open = True
        self.factory.connected.append(self)  # type: ignore[attr-defined]
        self.transport.write(BANNER)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self.transport.write(data)  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.open = False


class BannerService(Factory):
    """
    A TCP service that greets with L{BANNER} and echoes what it gets.

    @ivar connected: every connection it had, in order.
    """

    protocol = BannerConnection
    noisy = False

    def __init__(self) -> None:
        self.connected: list[BannerConnection] = []

    def live(self) -> int:
        """
        Connections open now.
        """
        return sum(1 for connection in self.connected if connection.open)


def listen_banner(test: TestCase, lab: netlab.Lab, ns: str, port: int, interface: str = "127.0.0.1") -> BannerService:
    """
    A L{BannerService} on C{interface}:C{port} inside C{ns}, stopped (its
    connections aborted) at the test's end.
    """
    service = BannerService()
    with netlab.in_namespace(lab.namespaces.get(ns, ns)):
        listening_port = reactor.listenTCP(port, service, interface=interface)  # type: ignore[attr-defined]

    async def stop() -> None:
        for connection in service.connected:
            if connection.open:
                connection.transport.abortConnection()  # type: ignore[union-attr]
        await listening_port.stopListening()

    test.addCleanup(stop)
    return service


class Prober(Protocol):
    """
    A plain TCP prober: sends C{request} once connected and records what
    comes back and how the connection ended.

    @ivar ended: L{None} while open, then C{"closed"} (FIN), C{"reset"}
        (any other loss: an RST) or C{"failed"} (never connected).
    @ivar reason: why it ended, in words.
    """

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.received = b""
        self.ended: str | None = None
        self.reason = ""
        self.connected = False

    def connectionMade(self) -> None:
        self.connected = True
        self.transport.write(self.request)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        from twisted.internet.error import ConnectionDone

        self.ended = "closed" if reason.check(ConnectionDone) else "reset"
        self.reason = reason.getErrorMessage()

    def close(self) -> None:
        """
        Close (FIN) if still open.
        """
        if self.connected and self.ended is None:
            self.transport.loseConnection()  # type: ignore[union-attr]


class _ProberFactory(ClientFactory):
    noisy = False

    def __init__(self, prober: Prober) -> None:
        self.prober = prober

    def buildProtocol(self, addr: Any) -> Prober:
        return self.prober

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.prober.ended = "failed"
        self.prober.reason = reason.getErrorMessage()


def start_probers(lab: netlab.Lab, ns: str, host: str, port: int, requests: list[bytes]) -> list[Prober]:
    """
    One plain TCP connection from C{ns} to C{host}:C{port} per request, all
    at once; each sends its request when connected.
    """
    probers = [Prober(request) for request in requests]
    with netlab.in_namespace(lab.namespaces.get(ns, ns)):
        for prober in probers:
            reactor.connectTCP(host, port, _ProberFactory(prober), timeout=30)  # type: ignore[attr-defined]
    return probers


async def close_probers(probers: list[Prober]) -> None:
    """
    Close every prober still open and wait (a little) for them to end.
    """
    for prober in probers:
        prober.close()
    for _ in range(100):
        if all(prober.ended is not None or not prober.connected for prober in probers):
            return
        await sleep(0.05)


# --------------------------------------------------------------------------
# A relay process's counters and descriptors
# --------------------------------------------------------------------------


def counted(relay: RelayProcess, reason: str) -> int:
    """
    C{reason}'s count so far in a relay's current run: the sum over its
    stats lines (each covers one interval) of both drop fields (the
    relay's own drops and the capture's).
    """
    total = 0
    for line in re.findall(r"stats \d+s: .*", relay.current_log()):
        for drops in re.findall(r"\| (?:capture )?drops ([^|]*)", line):
            found = re.search(rf"(?<![\w-]){re.escape(reason)}=(\d+)", drops)
            if found:
                total += int(found.group(1))
    return total


def stats_lines(relay: RelayProcess) -> int:
    """
    How many stats lines the relay's current run has logged.
    """
    return len(re.findall(r"stats \d+s: ", relay.current_log()))


async def next_stats(relay: RelayProcess, timeout: float = 5.0) -> None:
    """
    Wait until the relay logs one more stats line than it has now (its
    counters up to now are then in the log).
    """
    seen = stats_lines(relay)
    waited = 0.0
    while stats_lines(relay) <= seen:
        if waited > timeout:
            raise AssertionError(f"no stats line from {relay.name} within {timeout} s\n{relay.describe()}")
        await sleep(0.05)
        waited += 0.05


def open_descriptors(pid: int) -> int:
    """
    How many file descriptors process C{pid} has open.
    """
    return len(os.listdir(f"/proc/{pid}/fd"))


# --------------------------------------------------------------------------
# A probe's connection on the wire (tshark's view of it)
# --------------------------------------------------------------------------

#: tshark's fields for L{wire_segments}, in its order.
WIRE_FIELDS = (
    "frame.number", "tcp.srcport", "tcp.flags.syn", "tcp.flags.fin", "tcp.flags.reset", "tcp.flags.ack",
    "tcp.seq", "tcp.len", "tcp.ack", "tcp.payload",
)  # fmt: skip

#: tshark 4.0's Notes for a segment sent again (tcp.analysis.retransmission,
#: spurious_retransmission, fast_retransmission).
RETRANSMISSION_NOTES = frozenset(
    {
        "This frame is a (suspected) retransmission",
        "This frame is a (suspected) spurious retransmission",
        "This frame is a (suspected) fast retransmission",
    }
)
#: tshark 4.0's Notes on the FIN of each side of an ordinary close
#: (tcp.connection.fin_active, fin_passive).
CLOSING_NOTES = frozenset(
    {"This frame initiates the connection closing", "This frame undergoes the connection closing"}
)
#: tshark 4.0's Warning for a segment that fills the window its receiver
#: advertised (tcp.analysis.window_full): flow control, when curl reads
#: slower than the service sends; a direct fetch in the lab has it too.
WINDOW_FULL = "TCP window specified by the receiver is now completely full"


@dataclass(frozen=True)
class WireSegment:
    """
    One captured segment of a probe's connection, as tshark numbers it
    (sequence numbers relative to each side's ISN, the ack relative to the
    other side's).

    @ivar flags: which of C{S} (SYN), C{F} (FIN), C{R} (RST) are set.
    @ivar ack: the ack, or L{None} without the ACK flag.
    """

    frame: int
    from_server: bool
    flags: str
    seq: int
    length: int
    ack: int | None
    payload: bytes = b""


def wire_segments(fields: str, server_port: int) -> list[WireSegment]:
    """
    The segments of tshark's C{-T fields} output for L{WIRE_FIELDS}
    (separated by tabs), in frame order; C{server_port} tells the sides
    apart.
    """
    segments = []
    for line in fields.splitlines():
        number, sport, syn, fin, reset, acked, seq, length, ack, payload = (line.split("\t") + [""] * 10)[:10]
        if not seq:
            continue
        flags = "".join(flag for flag, value in (("S", syn), ("F", fin), ("R", reset)) if value in ("1", "True"))
        has_ack = acked in ("1", "True") and ack != ""
        segments.append(
            WireSegment(
                int(number), int(sport) == server_port, flags, int(seq), int(length or 0),
                int(ack) if has_ack else None, bytes.fromhex(payload.replace(":", "")),
            )
        )  # fmt: skip
    return segments


@dataclass
class WireVerdict:
    """
    What L{wire_problems} found, one line each.

    @ivar wrong: what no reordering on the path explains: a server segment
        that is not the service's answer at its place in the stream (one
        of ours would not be), a RST, a missing SYN+ACK or FIN, an ack for
        bytes the prober had not sent, request bytes never acknowledged,
        an expert item of severity Error (a bad checksum, a malformed
        segment).
    @ivar disorder: the rest: a segment not where its side's stream was in
        the capture's order, an expert item not allowed.  A path that
        reorders (the lab's veths do at times, a direct fetch too) makes
        these alone.
    @ivar retransmissions: the retransmission Notes of the prober's first
        data segment.
    """

    wrong: list[str] = field(default_factory=list)
    disorder: list[str] = field(default_factory=list)
    retransmissions: int = 0


def wire_problems(segments: list[WireSegment], items: list[Any], answer: bytes, request: int) -> WireVerdict:
    """
    What, in a probe's connection captured at the prober, is not an
    ordinary TCP connection whose only oddity is that the prober may send
    its first data segment again.

    The server's side must be the kernel's connection alone: a SYN+ACK at
    its ISN (relative 0), then segments each exactly at the next sequence
    number of its stream (none outside it, none again), each carrying the
    service's C{answer} at its place, then a FIN right after the answer;
    no ack for a byte the prober had not sent yet.  The prober sent
    C{request} bytes, all of them acknowledged; the only segment it sent
    again is its first data segment.  No RST either way.  tshark's expert
    items (C{items}: objects with C{frame}, C{severity} and C{message}) of
    severity Note, Warning or Error are only retransmission Notes
    (L{RETRANSMISSION_NOTES}) of the prober's first data segment, the
    closing Notes (L{CLOSING_NOTES}) on a FIN, and L{WINDOW_FULL} on a
    server data segment.
    """
    verdict = WireVerdict()
    by_frame = {segment.frame: segment for segment in segments}
    server_next: int | None = None
    server_fin: WireSegment | None = None
    prober_next = 1
    first_data: WireSegment | None = None
    highest_ack = 0

    def first_again(segment: WireSegment | None) -> bool:
        """
        Whether C{segment} is the prober's first data segment sent again.
        """
        return (
            segment is not None and not segment.from_server and first_data is not None
            and segment is not first_data and (segment.seq, segment.payload) == (1, first_data.payload)
        )  # fmt: skip

    for segment in segments:
        if "R" in segment.flags:
            verdict.wrong.append(f"frame {segment.frame}: a RST")
        if not segment.from_server:
            if "S" in segment.flags:
                continue
            if segment.length and first_data is None and segment.seq == 1:
                first_data = segment
            if segment.length and segment.seq != prober_next and not first_again(segment):
                verdict.disorder.append(
                    f"frame {segment.frame}: prober data at {segment.seq}, its stream was at {prober_next}"
                )
            prober_next = max(prober_next, segment.seq + segment.length + ("F" in segment.flags))
            continue
        if server_next is None:
            if segment.flags != "S" or segment.seq != 0:
                verdict.wrong.append(f"frame {segment.frame}: the server's first segment is not a SYN+ACK at 0")
            server_next = segment.seq + 1
            continue
        place = segment.seq - 1
        if segment.length and (place < 0 or segment.payload != answer[place : place + segment.length]):
            verdict.wrong.append(
                f"frame {segment.frame}: {segment.length} bytes from the server at {segment.seq}"
                " are not the service's answer there"
            )
        if "F" in segment.flags:
            if segment.seq + segment.length != 1 + len(answer):
                verdict.wrong.append(f"frame {segment.frame}: the server's FIN is not right after the answer")
            server_fin = segment
        if segment.seq != server_next or "S" in segment.flags:
            verdict.disorder.append(
                f"frame {segment.frame}: server segment at {segment.seq} ({segment.length} bytes, flags "
                f"{segment.flags or '-'}), its stream was at {server_next}"
            )
        server_next = max(server_next, segment.seq + segment.length + ("F" in segment.flags))
        if segment.ack is not None:
            if segment.ack > prober_next:
                verdict.wrong.append(
                    f"frame {segment.frame}: the server acks {segment.ack}, the prober had sent to {prober_next}"
                )
            highest_ack = max(highest_ack, segment.ack)
    if server_next is None:
        verdict.wrong.append("no segment from the server")
    elif server_fin is None:
        verdict.wrong.append("no FIN from the server")
    if prober_next - 1 < request:
        verdict.wrong.append(f"the prober sent {prober_next - 1} bytes of data, its request is {request}")
    if highest_ack < 1 + request:
        verdict.wrong.append(f"the server acked up to {highest_ack}, not all {request} bytes of the request")

    for item in items:
        if item.severity not in ("Note", "Warning", "Error"):
            continue
        segment = by_frame.get(item.frame)
        if item.severity == "Note" and item.message in RETRANSMISSION_NOTES and first_again(segment):
            verdict.retransmissions += 1
        elif item.severity == "Note" and item.message in CLOSING_NOTES and segment and "F" in segment.flags:
            pass
        elif item.message == WINDOW_FULL and segment and segment.from_server and segment.length:
            pass
        else:
            line = f"frame {item.frame}: {item.severity} {item.message!r}"
            (verdict.wrong if item.severity == "Error" else verdict.disorder).append(line)
    return verdict
