"""
Pieces of the relay tests: C{twistd faketcp-relay} as a real subprocess in
a lab namespace, and small in-process UDP endpoints.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import signal as signals
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import LoopingCall
from twisted.trial.unittest import SkipTest, TestCase

from faketcp_twisted.relay.udp import enlarge_buffers
from lab import netlab
from tests.support import kill_and_reap, sleep, wait_until

#: The twistd of the running interpreter's environment.
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
#: The checkout root, so the children use this tree's code and plugins.
CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_READY = re.compile(r"faketcp-relay (server|client) ready")


async def listens(lab: netlab.Lab, ns: str, kind: str, port: int, timeout: float = 10.0) -> bool:
    """
    Whether something in C{ns} listens on C{port} (C{kind} C{t} or C{u})
    within C{timeout} seconds.
    """

    def found() -> bool:
        output = lab.run(ns, "ss", f"-{kind}lnH", check=False).stdout
        return any(line.split()[3].endswith(f":{port}") for line in output.splitlines() if len(line.split()) > 3)

    try:
        await wait_until(found, timeout=timeout, step=0.1)
    except AssertionError:
        return False
    return True


def lab_command(lab: netlab.Lab, ns: str, argv: list[str]) -> list[str]:
    """
    C{argv} run in the lab namespace C{ns}, killed (SIGKILL) should this
    test process die first: a test runner killed mid-test must not leave
    relays and services running in namespaces that are gone.
    """
    return ["ip", "netns", "exec", lab.namespaces.get(ns, ns), "setpriv", "--pdeathsig", "KILL", "--", *argv]


class RelayProcess:
    """
    One C{twistd -n faketcp-relay} inside a namespace, logging to a file.

    @ivar log_path: the twistd log file.
    @ivar process: the child (C{ip netns exec} execs twistd, so its pid is
        twistd's).
    """

    def __init__(
        self, lab: netlab.Lab, ns: str, args: list[str], directory: str, name: str, twistd_args: tuple[str, ...] = ()
    ) -> None:
        self.lab = lab
        self.ns = ns
        self.args = args
        self.twistd_args = twistd_args
        self.name = name
        self.log_path = os.path.join(directory, f"{name}.log")
        self.stderr_path = os.path.join(directory, f"{name}.stderr")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, extra_env: dict[str, str] | None = None) -> RelayProcess:
        """
        Start the relay (a restart appends to the same log).
        """
        env = dict(os.environ)
        env["PYTHONPATH"] = CHECKOUT + (
            os.pathsep + extra_env.pop("PYTHONPATH") if extra_env and "PYTHONPATH" in extra_env else ""
        )
        env.update(extra_env or {})
        argv = lab_command(self.lab, self.ns, [TWISTD, "-n", "--pidfile=", f"--logfile={self.log_path}",
                                               *self.twistd_args, "faketcp-relay", *self.args])  # fmt: skip
        with open(self.stderr_path, "ab") as stderr:
            self.process = subprocess.Popen(
                argv, env=env, stdout=stderr, stderr=stderr, cwd=os.path.dirname(self.log_path)
            )
        self._log_offset = len(self.log())
        return self

    def log(self) -> str:
        """
        Everything the relay logged so far (every run of it).
        """
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as log:
                return log.read()
        except FileNotFoundError:
            return ""

    def current_log(self) -> str:
        """
        What the current run logged.
        """
        return self.log()[self._log_offset :]

    def stderr(self) -> str:
        """
        The relay's standard output and error.
        """
        try:
            with open(self.stderr_path, encoding="utf-8", errors="replace") as output:
                return output.read()
        except FileNotFoundError:
            return ""

    def describe(self) -> str:
        """
        The relay's output, for failure messages.
        """
        return f"--- {self.name} log ---\n{self.log()[-6000:]}\n--- {self.name} stderr ---\n{self.stderr()[-3000:]}"

    async def ready(self, timeout: float = 15.0) -> RelayProcess:
        """
        Wait for the relay's ready line.
        """
        waited = 0.0
        while not _READY.search(self.current_log()):
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.process.returncode}\n{self.describe()}")
            if waited > timeout:
                raise AssertionError(f"{self.name} not ready within {timeout} s\n{self.describe()}")
            await sleep(0.05)
            waited += 0.05
        return self

    async def wait_log(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """
        Wait for a line matching C{pattern} in the current run's log.
        """
        waited = 0.0
        while True:
            found = re.search(pattern, self.current_log())
            if found:
                return found
            if waited > timeout:
                raise AssertionError(f"{pattern!r} not logged by {self.name} within {timeout} s\n{self.describe()}")
            await sleep(0.05)
            waited += 0.05

    def signal(self, number: int) -> None:
        """
        Send a signal to the relay.
        """
        assert self.process is not None
        self.process.send_signal(number)

    async def stop(self, number: int = signals.SIGTERM, timeout: float = 15.0) -> int:
        """
        Signal the relay and wait for it to exit (without blocking the
        reactor); returns its exit status.
        """
        process = self.process
        assert process is not None
        if process.poll() is None:
            process.send_signal(number)
        waited = 0.0
        while process.poll() is None:
            if waited > timeout:
                self.kill()
                raise AssertionError(f"{self.name} did not exit within {timeout} s\n{self.describe()}")
            await sleep(0.05)
            waited += 0.05
        return process.returncode

    async def terminate(self, number: int = signals.SIGTERM) -> None:
        """
        Stop the relay with SIGTERM or SIGINT and check it stopped cleanly:
        its totals logged, and the exit twistd makes after a signal (it
        re-raises the signal once the reactor has stopped, so the status
        is that signal's).
        """
        status = await self.stop(number)
        if status not in (0, -number) or "stopped; totals:" not in self.current_log():
            raise AssertionError(f"{self.name} exited with {status}\n{self.describe()}")

    def kill(self) -> None:
        """
        SIGKILL and reap, if still running (for cleanups).
        """
        kill_and_reap(self.process)

    def totals(self) -> str:
        """
        The totals line the current run logged when it stopped.
        """
        found = re.search(r"totals: .*", self.current_log())
        if found is None:
            raise AssertionError(f"no totals line\n{self.describe()}")
        return found.group(0)


def drops_in(line: str, reason: str) -> int:
    """
    The count of C{reason} in the drops field of a stats or totals line.
    """
    drops = re.search(r"\| drops ([^|]*)", line)
    assert drops is not None, line
    found = re.search(rf"\b{re.escape(reason)}=(\d+)", drops.group(1))
    return int(found.group(1)) if found else 0


class UDPEcho(DatagramProtocol):
    """
    A UDP echo that records what it received; C{BIG:N} is answered with N
    bytes instead (a target whose reply does not fit the path).
    """

    noisy = False

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.sources: set[Any] = set()

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.received.append(datagram)
        self.sources.add(addr)
        if datagram.startswith(b"BIG:"):
            self.transport.write(b"B" * int(datagram[4:]), addr)
        else:
            self.transport.write(datagram, addr)


class UDPClient(DatagramProtocol):
    """
    A UDP client with its own source port, recording what came back.
    """

    noisy = False

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.received: list[bytes] = []

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.received.append(datagram)

    def send(self, datagram: bytes) -> None:
        """
        Send one datagram to the target.
        """
        self.transport.write(datagram, self.target)


def listen_udp(test: TestCase, ns: str, protocol: DatagramProtocol, port: int = 0, interface: str = "127.0.0.1") -> Any:
    """
    Listen on UDP inside namespace C{ns}, stopped at the test's end.
    """
    with netlab.in_namespace(ns):
        listening = reactor.listenUDP(port, protocol, interface=interface, maxPacketSize=65535)  # type: ignore[attr-defined]
    # A burst to (or from) many flows must not overflow the default buffer
    # while this process's reactor is busy elsewhere.
    enlarge_buffers(listening.getHandle())
    test.addCleanup(listening.stopListening)
    return listening


def temp_dir(test: TestCase) -> str:
    """
    A directory for the relays' logs, removed at the test's end (a failing
    test's message carries the logs).
    """
    directory = tempfile.mkdtemp(prefix="faketcp-relay-test-")

    def remove() -> None:
        import shutil

        shutil.rmtree(directory, ignore_errors=True)

    test.addCleanup(remove)
    return directory


def udp_sockets(lab: netlab.Lab, ns: str, peer_port: int) -> list[str]:
    """
    UDP sockets in C{ns} connected to local port C{peer_port}.
    """
    output = lab.run(ns, "ss", "-uanH", check=False).stdout
    return [line for line in output.splitlines() if line.split()[-1:] and line.split()[-1].endswith(f":{peer_port}")]


def rules(lab: netlab.Lab, ns: str) -> list[str]:
    """
    The project's silencing rules in a namespace, both families.
    """
    return lab.silencing_rules(ns)


def pids_of(rule_lines: list[str]) -> set[int]:
    """
    The owner pids named in iptables rule comments (C{pid=N}) and in
    nftables table names (C{faketcp_twisted_N:}).
    """
    pids = set()
    for line in rule_lines:
        for in_comment, in_table in re.findall(r"pid=(\d+)|^faketcp_twisted_(\d+):", line):
            pids.add(int(in_comment or in_table))
    return pids


# --------------------------------------------------------------------------
# Numbered, self-checking datagrams and paced streams of them (the interop
# and outage tests)
# --------------------------------------------------------------------------

#: A probe's header: stream tag (2 bytes), sequence number, total length.
_PROBE = struct.Struct("!2sIH")
_DIGEST = 16
#: The smallest probe: header and digest, no filler.
MIN_PROBE = _PROBE.size + _DIGEST


def probe(tag: bytes, seq: int, size: int) -> bytes:
    """
    A datagram of exactly C{size} bytes: C{tag}, C{seq}, the length, random
    filler, and a digest of all of that, so that a truncated, merged or
    corrupted datagram is never counted as delivered.  C{tag} is 2 bytes.
    """
    assert len(tag) == 2, tag
    body = _PROBE.pack(tag, seq, size) + os.urandom(size - MIN_PROBE)
    return body + hashlib.blake2b(body, digest_size=_DIGEST).digest()


def parse_probe(datagram: bytes) -> tuple[bytes, int] | None:
    """
    C{(tag, seq)} of an intact probe; C{None} for anything else.
    """
    if len(datagram) < MIN_PROBE:
        return None
    tag, seq, size = _PROBE.unpack_from(datagram)
    if size != len(datagram):
        return None
    if hashlib.blake2b(datagram[:-_DIGEST], digest_size=_DIGEST).digest() != datagram[-_DIGEST:]:
        return None
    return tag, seq


def varied_size(seq: int, largest: int = 1200) -> int:
    """
    Sizes from L{MIN_PROBE} to C{largest} in a scattered order (every size
    once in each run of C{largest - MIN_PROBE + 1} sequence numbers).
    """
    return MIN_PROBE + (seq * 7919) % (largest - MIN_PROBE + 1)


class ProbePort(DatagramProtocol):
    """
    A UDP endpoint that sends paced probe streams (L{PacedStream}) and
    records the probes it receives: for each stream tag, the arrival time
    (C{time.monotonic}) of the first intact copy of each sequence number.

    @ivar target: where streams go; C{None}: to the latest source heard
        from (a target answering whatever relay socket reached it last).
    @ivar echo: answer every intact probe to its source, unchanged.
    """

    noisy = False

    def __init__(self, target: tuple[str, int] | None = None, echo: bool = False) -> None:
        self.target = target
        self.echo = echo
        self.source: Any = None
        self.sources: set[Any] = set()
        self.arrivals: dict[bytes, dict[int, float]] = {}
        self.duplicates = 0
        self.corrupt = 0
        self.echo_errors = 0

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        now = time.monotonic()
        self.source = addr
        self.sources.add(addr)
        parsed = parse_probe(datagram)
        if parsed is None:
            self.corrupt += 1
            return
        tag, seq = parsed
        seen = self.arrivals.setdefault(tag, {})
        if seq in seen:
            self.duplicates += 1
        else:
            seen[seq] = now
        if self.echo:
            try:
                self.transport.write(datagram, addr)
            except OSError:
                self.echo_errors += 1

    def destination(self) -> Any:
        """
        Where a stream's next datagram goes, if anywhere yet.
        """
        return self.target or self.source

    def count(self, tag: bytes) -> int:
        """
        Intact, distinct probes of stream C{tag} received.
        """
        return len(self.arrivals.get(tag, ()))

    def first_arrival(self, tag: bytes) -> float | None:
        """
        When the first probe of stream C{tag} arrived.
        """
        times = self.arrivals.get(tag)
        return min(times.values()) if times else None


class PacedStream:
    """
    Probes of one tag sent from a L{ProbePort} at C{rate} a second (in
    bursts every few milliseconds, on schedule: a late tick sends what was
    due, at most C{maxBurst} of it), until C{count} were sent or
    L{stop}.  A tick with no destination yet sends nothing.

    @ivar sent_at: the send time (C{time.monotonic}) of each sequence number.
    """

    tick = 0.005
    maxBurst = 200

    def __init__(
        self,
        port: ProbePort,
        tag: bytes,
        rate: float,
        count: int | None = None,
        size: Callable[[int], int] = varied_size,
    ) -> None:
        self.port = port
        self.tag = tag
        self.rate = rate
        self.count = count
        self.size = size
        self.sent_at: list[float] = []
        self.errors = 0
        self.done: defer.Deferred[None] = defer.Deferred()
        self._loop: LoopingCall | None = None
        self._origin = 0.0

    def start(self) -> PacedStream:
        self._origin = time.monotonic()
        self._loop = LoopingCall(self._send_due)
        self._loop.start(self.tick, now=True)
        return self

    def stop(self) -> None:
        """
        Stop sending (idempotent; also for cleanups).
        """
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if not self.done.called:
            self.done.callback(None)

    def _send_due(self) -> None:
        now = time.monotonic()
        destination = self.port.destination()
        if destination is None or self.port.transport is None:
            self._origin = now - len(self.sent_at) / self.rate
            return
        due = int((now - self._origin) * self.rate) + 1
        if self.count is not None:
            due = min(due, self.count)
        burst = due - len(self.sent_at)
        if burst > self.maxBurst:
            # Fell behind (a busy reactor): carry on from here rather than
            # catch up in one flood.
            burst = self.maxBurst
            self._origin = now - (len(self.sent_at) + burst) / self.rate
        for _ in range(burst):
            seq = len(self.sent_at)
            try:
                self.port.transport.write(probe(self.tag, seq, self.size(seq)), destination)
            except OSError:
                self.errors += 1
            self.sent_at.append(now)
        if self.count is not None and len(self.sent_at) >= self.count:
            self.stop()

    def delivered(self, receiver: ProbePort, start: float = 0.0, end: float = float("inf")) -> tuple[int, int]:
        """
        C{(arrived, sent)} for the probes sent in [C{start}, C{end}).
        """
        arrivals = receiver.arrivals.get(self.tag, {})
        sent = [seq for seq, at in enumerate(self.sent_at) if start <= at < end]
        return sum(1 for seq in sent if seq in arrivals), len(sent)

    def timeline(self, receiver: ProbePort, origin: float, step: float = 1.0) -> list[tuple[float, int, int]]:
        """
        C{(start, arrived, sent)} per C{step} seconds of send time, C{start}
        relative to C{origin}.
        """
        arrivals = receiver.arrivals.get(self.tag, {})
        buckets: dict[int, list[int]] = {}
        for seq, at in enumerate(self.sent_at):
            bucket = buckets.setdefault(math.floor((at - origin) / step), [0, 0])
            bucket[1] += 1
            if seq in arrivals:
                bucket[0] += 1
        return [(index * step, arrived, sent) for index, (arrived, sent) in sorted(buckets.items())]

    def recovery(
        self, receiver: ProbePort, restored: float, end: float, step: float = 0.5, share: float = 0.5
    ) -> float | None:
        """
        Seconds after C{restored} from which every C{step} of datagrams sent
        up to C{end} had at least C{share} of them delivered; C{None} if the
        stream never got there.
        """
        buckets = [b for b in self.timeline(receiver, restored, step) if b[0] >= 0 and restored + b[0] + step <= end]
        recovered: float | None = None
        for start, arrived, sent in buckets:
            if sent and arrived >= share * sent:
                if recovered is None:
                    recovered = start
            else:
                recovered = None
        return recovered


def format_timeline(timeline: list[tuple[float, int, int]]) -> str:
    """
    A stream's timeline as C{t=start: percent delivered} items.
    """
    return " ".join(
        f"{start:+.0f}s:{100 * arrived / sent:.0f}%" if sent else f"{start:+.0f}s:-"
        for start, arrived, sent in timeline
    )


class PeerProcess:
    """
    A foreign peer (tcprawpeer, kcptun) inside a namespace, its standard
    output and error in a file.
    """

    def __init__(self, lab: netlab.Lab, ns: str, argv: list[str], directory: str, name: str) -> None:
        self.lab = lab
        self.ns = ns
        self.argv = argv
        self.name = name
        self.log_path = os.path.join(directory, f"{name}.log")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> PeerProcess:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(lab_command(self.lab, self.ns, self.argv), stdout=log, stderr=log)
        return self

    def output(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as log:
                return log.read()
        except FileNotFoundError:
            return ""

    def describe(self) -> str:
        """
        The peer's output, for failure messages.
        """
        status = (
            "running"
            if self.process is not None and self.process.poll() is None
            else f"exited {self.process and self.process.returncode}"
        )
        return f"--- {self.name} ({status}): {' '.join(self.argv)} ---\n{self.output()[-4000:]}"

    async def wait_output(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """
        Wait for C{pattern} in the peer's output.
        """
        waited = 0.0
        while True:
            found = re.search(pattern, self.output())
            if found:
                return found
            assert self.process is not None
            if self.process.poll() is not None or waited > timeout:
                raise AssertionError(f"{pattern!r} not printed by {self.name} within {timeout} s\n{self.describe()}")
            await sleep(0.05)
            waited += 0.05

    def stop(self, timeout: float = 5.0) -> int | None:
        """
        SIGTERM (tcprawpeer then removes its rule), SIGKILL after
        C{timeout}; reaps.  For cleanups: blocks.
        """
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        return process.returncode


#: Where the current tcpraw's peer is built (see /work/shared/anchors).
TCPRAW_BUILD = os.environ.get("FAKETCP_TCPRAW_BUILD", "/work/shared/anchors/tcpraw-current/build.sh")
_tcprawpeer: list[str | SkipTest] = []


def tcprawpeer_binary() -> str:
    """
    The C{tcprawpeer} binary (current upstream tcpraw), built on first use
    into C{~/.cache/tcprawpeer} (blocks; about 15 s, more if Debian's Go
    must be installed).  Raises L{SkipTest} with the reason when it cannot
    be built; a failed build is not retried in the same run.
    """
    if not _tcprawpeer:
        out = os.path.join(os.path.expanduser("~"), ".cache", "tcprawpeer")
        try:
            if not os.path.exists(TCPRAW_BUILD):
                raise SkipTest(f"tcprawpeer cannot be built: {TCPRAW_BUILD} is missing")
            built = subprocess.run([TCPRAW_BUILD, out], capture_output=True, text=True, timeout=900, check=False)
            path = built.stdout.strip().splitlines()[-1] if built.stdout.strip() else ""
            if built.returncode != 0 or not os.access(path, os.X_OK):
                raise SkipTest(
                    f"tcprawpeer cannot be built ({TCPRAW_BUILD} exited {built.returncode}): "
                    f"{built.stderr.strip()[-500:]}"
                )
            _tcprawpeer.append(path)
        except SkipTest as reason:
            _tcprawpeer.append(reason)
        except (OSError, subprocess.TimeoutExpired) as e:
            _tcprawpeer.append(SkipTest(f"tcprawpeer cannot be built: {e}"))
    result = _tcprawpeer[0]
    if isinstance(result, SkipTest):
        raise result
    return result
