# -*- test-case-name: tests.test_bench -*-
"""
The benchmark: UDP load through fake-TCP tunnels between two network
namespaces, beside the same load sent directly and through udp2raw, all in
one run.

Run as root from the checkout::

    python -m lab.bench                      # direct, udp2raw, faketcp-relay
    python -m lab.bench --quick --tunnels direct --seconds 1
    python -m lab.bench --repeat 2           # best of two rounds per step: steadier on a busy machine
    python -m lab.bench --idle-flows 9950    # also that many idle flows on the relay server
    python -m lab.bench --tunnels direct,faketcp-relay,twisted-udp   # beside a plain Twisted UDP relay

All tunnels run at once, each on its own ports, and take turns at every
step with the same load:

  - round trips at a moderate rate (10,000 datagrams/s of 1200 bytes) with
    a Python pinger and echo server (L{lab.bench_udp});
  - iperf3 UDP at a ladder of rates and at its maximum (C{-b 0}): offered
    and delivered Mbit/s and packets/s, and loss;
  - CPU seconds of every process taking part, per step;
  - optionally, N idle flows held open on the relay server
    (L{lab.bench_idle}): its memory, and an active flow beside
    them.

The figures, ratios and tables come from L{lab.bench_report}.

Why two load tools: iperf3 (C) offers 400+ Mbit/s (40,000+ datagrams/s)
from one core and counts every datagram at the far end, which a Python
sender cannot; but it measures no round trips, so a paced pinger does that
at a rate Python sustains easily.  Its own cost is in every path alike, so
the relay's share is the tunnel's round trip minus the direct one.

The machine is shared and noisy: absolute numbers drift between runs, a
ratio to a peer measured in the same run does not.  Hence "direct" (the
machine's own limit, no tunnel) and "udp2raw" (the C++ tool to beat) run
beside our relay pair every time.

Topology (L{netlab.two_hosts}): client namespace C (198.18.0.1), server
namespace S (198.18.0.2 and 198.18.0.3).  iperf3's control connection goes
directly to 198.18.0.3; in C a DNAT rule sends only UDP for that address
into the local tunnel client (127.0.0.1), whose server side forwards to
127.0.0.1 in S.  "direct" sends to 198.18.0.2 without any rule.

Everything it makes (namespaces, rules, processes) is removed at the end,
also on errors and Ctrl-C; child processes die with it even if it is killed.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import fcntl
import hashlib
import json
import os
import platform
import resource
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, ParamSpec, TypeVar

from lab import bench_report, netlab

_P = ParamSpec("_P")
_R = TypeVar("_R")

#: Format of the JSON report; bump on incompatible changes.
SCHEMA = "lab.bench/1"

#: The checkout (or installation) root that holds C{faketcp_twisted/} and
#: C{twisted/plugins/}: children get it on C{PYTHONPATH}.
SOURCE_ROOT = Path(__file__).resolve().parent.parent

TUNNELS = ("direct", "udp2raw", "faketcp-relay", "twisted-udp")
#: What runs when C{--tunnels} is not given: C{twisted-udp} is asked for.
DEFAULT_TUNNELS = ("direct", "udp2raw", "faketcp-relay")
DEFAULT_RATES = (100, 200, 300, 400, 500, 600)
QUICK_RATES = (200,)
DEFAULT_SECONDS = 3.0
QUICK_SECONDS = 1.0

#: The anchor to measure against, and where its build is cached.
UDP2RAW_TARBALL = Path("/work/shared/anchors/udp2raw-e42f0e5.tar.gz")
UDP2RAW_FLAGS = ("--raw-mode", "faketcp", "--cipher-mode", "none", "--auth-mode", "none", "-a", "--fix-gro")

#: iperf3's own socket buffers lose datagrams above ~200 Mbit/s on this
#: machine kind without C{-w 4M}, even with no tunnel at all.
IPERF3_WINDOW = "4M"

#: Seconds to wait for a tunnel to carry its first datagram both ways.
READY_SECONDS = 20.0

#: Keepalive interval of the idle flows: the relay's own default, so they
#: are as idle as flows from real relay clients (without any, the relay
#: server ends them after its 60 s peer timeout).
IDLE_KEEPALIVE = 10.0

#: Seconds a tunnel process gets to stop after SIGTERM before SIGKILL.
TUNNEL_STOP_GRACE = 15.0

#: Comment on the benchmark's own DNAT rule.
RULE_COMMENT = "faketcp_twisted-bench"

_PR_SET_PDEATHSIG = 1


class Skip(Exception):
    """
    A tunnel cannot run on this machine now; the message says why.
    """


class StepError(Exception):
    """
    A measurement step failed; the message says how.
    """


# --------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------


def _die_with_parent() -> None:
    """
    In a child before exec: get SIGTERM when the benchmark dies, even by
    SIGKILL, so no relay or iperf3 outlives it inside a namespace.
    (C{ip netns exec} execs its command in the same process, and the
    setting survives exec.)
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def cpu_seconds(pid: int) -> float:
    """
    User plus system CPU seconds of process C{pid} (all its threads) so far.

    @return: 0.0 once the process is gone.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return 0.0
    # The command name may hold spaces and parentheses: split after the last ")".
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    """
    Resident memory of process C{pid}, from C{/proc/PID/status}.
    """
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def open_files(pid: int) -> int:
    """
    Number of file descriptors process C{pid} holds.
    """
    return len(os.listdir(f"/proc/{pid}/fd"))


def machine_busy_seconds() -> float:
    """
    A counter of CPU seconds all CPUs spent not idle: differences between
    two readings are the machine's busy time in between.

    Compared with the processes' own seconds, it shows how much of a step
    went to the kernel's packet work outside them, or to other tenants.
    The idle time of C{/proc/uptime} is exact on a tickless kernel, while
    the user and system times of C{/proc/stat} are sampled at timer ticks
    and miss a paced sender that runs between them.
    """
    with open("/proc/uptime") as f:
        idle = float(f.read().split()[1])
    return (os.cpu_count() or 1) * time.monotonic() - idle


@dataclass
class Measured:
    """
    How a short-lived child ended and what it cost.
    """

    returncode: int
    cpu_s: float
    wall_s: float
    output: str


class Children:
    """
    Every process the benchmark starts, so all of them are stopped and
    reaped whatever happens.
    """

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.live: list[subprocess.Popen[Any]] = []

    def spawn(
        self,
        argv: Sequence[str],
        namespace: str | None = None,
        stdout: IO[Any] | int | None = subprocess.DEVNULL,
        stdin: int | None = subprocess.DEVNULL,
    ) -> subprocess.Popen[Any]:
        """
        Start C{argv}, inside C{namespace} if given, stderr with stdout.
        """
        full = ["ip", "netns", "exec", namespace, *argv] if namespace else list(argv)
        proc = subprocess.Popen(
            full,
            stdin=stdin,
            stdout=stdout,
            stderr=subprocess.STDOUT,
            env=self.env,
            preexec_fn=_die_with_parent,
            # Out of the terminal's process group: Ctrl-C reaches only the
            # benchmark, which then stops its children in order.
            process_group=0,
            text=True,
        )
        self.live.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[Any], grace: float = 5.0) -> None:
        """
        SIGTERM (the tunnels remove their own rules then), SIGKILL after
        C{grace} seconds, and reap.
        """
        try:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(grace)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        finally:
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
            if proc in self.live:
                self.live.remove(proc)

    def stop_all(self) -> None:
        """
        Stop every live child, newest first (clients before servers).
        """
        for proc in reversed(list(self.live)):
            with contextlib.suppress(Exception):
                self.stop(proc)

    def run_measured(self, argv: Sequence[str], namespace: str, output: Path, timeout: float) -> Measured:
        """
        Run C{argv} in C{namespace} to completion, its output into C{output},
        and return its exit status and the CPU seconds it used (from
        C{wait4}: a process that has exited has no C{/proc} entry left).
        """
        started = time.monotonic()
        with open(output, "w") as sink:
            proc = self.spawn(argv, namespace, stdout=sink)
        deadline = started + timeout
        reaped: tuple[int, int, resource.struct_rusage] | None = None
        try:
            while reaped is None:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    reaped = (pid, status, usage)
                elif time.monotonic() > deadline:
                    proc.kill()
                    reaped = os.wait4(proc.pid, 0)
                else:
                    time.sleep(0.02)
        finally:
            if reaped is None:  # interrupted: still running
                proc.kill()
                proc.wait()
            self.live.remove(proc)
        _, status, usage = reaped
        # Reaped behind Popen's back: tell it, so it never waits again.
        proc.returncode = os.waitstatus_to_exitcode(status)
        return Measured(
            returncode=proc.returncode,
            cpu_s=usage.ru_utime + usage.ru_stime,
            wall_s=time.monotonic() - started,
            output=output.read_text(errors="replace"),
        )


def _read_line(stream: IO[str], timeout: float) -> str:
    """
    One line from a child's stdout pipe, or "" after C{timeout} seconds.
    """
    ready, _, _ = select.select([stream], [], [], timeout)
    return stream.readline() if ready else ""


# --------------------------------------------------------------------------
# Tunnels
# --------------------------------------------------------------------------


@dataclass
class Ports:
    """
    Ports of one tunnel, distinct per tunnel so that nothing one tunnel
    left behind (a conntrack entry, a flow in time-wait) meets the next.

    @ivar load: UDP port of the echo and iperf3 servers in S (and iperf3's
        TCP control port).
    @ivar fake: the tunnel's fake-TCP port in S.
    @ivar local: the tunnel client's UDP port on 127.0.0.1 in C.
    """

    load: int
    fake: int
    local: int


class Tunnel:
    """
    A way for UDP to get from C to S; subclasses start and stop processes.

    @ivar name: as in C{--tunnels}.
    @ivar commands: role -> command line, for the report.
    @ivar processes: role (C{tunnel-client}, C{tunnel-server}) -> process.
    """

    name = "?"

    def __init__(self, ports: Ports) -> None:
        self.ports = ports
        self.commands: dict[str, str] = {}
        self.processes: dict[str, subprocess.Popen[Any]] = {}
        self._rule: list[str] | None = None

    def target(self, lab: netlab.TwoHostsLab) -> tuple[str, int]:
        """
        Where the load generator sends: the DNAT-ed second server address.
        """
        return lab.server4_extra[0], self.ports.load

    def start(self, lab: netlab.TwoHostsLab, children: Children, logs: Path) -> None:
        """
        Start the tunnel's processes and steer the load's UDP into it.
        """
        raise NotImplementedError

    def _steer(self, lab: netlab.TwoHostsLab) -> None:
        # Only UDP is redirected: iperf3's TCP control connection stays direct.
        host, port = self.target(lab)
        self._rule = [
            "-t", "nat", "-A", "OUTPUT", "-p", "udp", "-d", host, "--dport", str(port),
            "-m", "comment", "--comment", RULE_COMMENT,
            "-j", "DNAT", "--to-destination", f"127.0.0.1:{self.ports.local}",
        ]  # fmt: skip
        lab.iptables(lab.C, *self._rule)

    def stop(self, lab: netlab.TwoHostsLab, children: Children) -> None:
        """
        Stop the processes (client first) and remove the DNAT rule.
        """
        for role in ("tunnel-client", "tunnel-server"):
            proc = self.processes.pop(role, None)
            if proc is not None:
                # The relay may take its own grace (5 s) to close its flows
                # with FIN; only then it removes its rules.
                children.stop(proc, grace=TUNNEL_STOP_GRACE)
        if self._rule is not None:
            delete = ["-D" if word == "-A" else word for word in self._rule]
            with contextlib.suppress(netlab.LabError):
                lab.iptables(lab.C, *delete)
            self._rule = None

    def _spawn(self, role: str, argv: list[str], namespace: str, children: Children, log: Path) -> None:
        self.commands[role] = shlex.join(argv)
        with open(log, "w") as sink:
            self.processes[role] = children.spawn(argv, namespace, stdout=sink)


class Direct(Tunnel):
    """
    No tunnel: UDP straight from C to S, the machine's own limit.
    """

    name = "direct"

    def target(self, lab: netlab.TwoHostsLab) -> tuple[str, int]:
        return lab.server4, self.ports.load

    def start(self, lab: netlab.TwoHostsLab, children: Children, logs: Path) -> None:
        self.commands = {"tunnel": "(none: UDP from C to S directly)"}


class Udp2raw(Tunnel):
    """
    wangyu-/udp2raw in faketcp mode without crypto, with the flags of the
    anchors README.
    """

    name = "udp2raw"

    def __init__(self, ports: Ports, binary: Path) -> None:
        super().__init__(ports)
        self.binary = binary

    def start(self, lab: netlab.TwoHostsLab, children: Children, logs: Path) -> None:
        p = self.ports
        server = [str(self.binary), "-s", f"-l0.0.0.0:{p.fake}", f"-r127.0.0.1:{p.load}", *UDP2RAW_FLAGS]
        client = [str(self.binary), "-c", f"-l127.0.0.1:{p.local}", f"-r{lab.server4}:{p.fake}", *UDP2RAW_FLAGS]
        self._spawn("tunnel-server", server, lab.S, children, logs / "udp2raw-server.log")
        self._spawn("tunnel-client", client, lab.C, children, logs / "udp2raw-client.log")
        self._steer(lab)


class FaketcpRelay(Tunnel):
    """
    Our relay pair: C{twistd -n faketcp-relay} in each namespace.
    """

    name = "faketcp-relay"

    def __init__(self, ports: Ports, twistd: list[str], max_flows: int | None = None) -> None:
        super().__init__(ports)
        self.twistd = twistd
        self.max_flows = max_flows

    def start(self, lab: netlab.TwoHostsLab, children: Children, logs: Path) -> None:
        p = self.ports
        # --pidfile= : two twistd -n in one directory would otherwise fight
        # over ./twistd.pid.  The backlog lets the idle-flows step connect
        # many clients at once.
        server = [
            *self.twistd, "-n", "--pidfile=", f"--logfile={logs / 'relay-server.log'}", "faketcp-relay",
            "--listen", f"faketcp:{p.fake}:interface=0.0.0.0:backlog=1024",
            "--forward", f"udp:host=127.0.0.1:port={p.load}",
        ]  # fmt: skip
        if self.max_flows is not None:
            # Its default (1024 flows) would refuse most of the idle flows.
            server += ["--max-flows", str(self.max_flows)]
        client = [
            *self.twistd, "-n", "--pidfile=", f"--logfile={logs / 'relay-client.log'}", "faketcp-relay",
            "--listen", f"udp:{p.local}:interface=127.0.0.1",
            "--forward", f"faketcp:host={lab.server4}:port={p.fake}",
        ]  # fmt: skip
        self._spawn("tunnel-server", server, lab.S, children, logs / "relay-server.out")
        self._spawn("tunnel-client", client, lab.C, children, logs / "relay-client.out")
        self._steer(lab)


class TwistedUdp(Tunnel):
    """
    A plain UDP relay pair on Twisted's reactor (C{bench_udp forward}): no
    fake TCP, so its round trip is the floor of any relay that Twisted's
    reactor drives, ours included.
    """

    name = "twisted-udp"

    def start(self, lab: netlab.TwoHostsLab, children: Children, logs: Path) -> None:
        p = self.ports
        forward = [sys.executable, "-m", "lab.bench_udp", "forward"]
        server = [*forward, "--listen", f"0.0.0.0:{p.fake}", "--to", f"127.0.0.1:{p.load}"]
        client = [*forward, "--listen", f"127.0.0.1:{p.local}", "--to", f"{lab.server4}:{p.fake}"]
        self._spawn("tunnel-server", server, lab.S, children, logs / "twisted-udp-server.log")
        self._spawn("tunnel-client", client, lab.C, children, logs / "twisted-udp-client.log")
        self._steer(lab)


def cache_dir() -> Path:
    """
    Where built anchors are kept between runs (C{$XDG_CACHE_HOME} honoured).
    """
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "faketcp_twisted"


def ensure_udp2raw(tarball: Path, cache: Path) -> Path:
    """
    The udp2raw binary built from C{tarball}, building it (about 15 s) into
    C{cache} if it is not there yet.

    @raise Skip: no tarball, no compiler, or the build failed.
    """
    name = tarball.name.removesuffix(".tar.gz")
    binary = cache / name / "udp2raw_dynamic"
    if os.access(binary, os.X_OK):
        return binary
    if not tarball.is_file():
        raise Skip(f"udp2raw source {tarball} not found (use --udp2raw-tarball or --udp2raw-binary)")
    missing = [tool for tool in ("make", "g++") if shutil.which(tool) is None]
    if missing:
        raise Skip(f"cannot build udp2raw: {' and '.join(missing)} not installed (apt-get install g++ make)")
    cache.mkdir(parents=True, exist_ok=True)
    # A lock, so that two benchmarks started together build it once.
    with open(cache / ".udp2raw.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.access(binary, os.X_OK):
            return binary
        print(f"building udp2raw from {tarball} into {binary.parent} (about 15 s) ...", file=sys.stderr)
        work = Path(tempfile.mkdtemp(prefix=f"{name}.", dir=cache))
        try:
            with tarfile.open(tarball) as archive:
                if hasattr(tarfile, "data_filter"):
                    archive.extractall(work, filter="data")
                else:  # pragma: no cover - Python < 3.11.4
                    archive.extractall(work)
            build = subprocess.run(
                ["make", "-C", str(work), "dynamic"], capture_output=True, text=True, timeout=600
            )
            (work / "build.log").write_text(build.stdout + build.stderr)
            if build.returncode != 0 or not os.access(work / "udp2raw_dynamic", os.X_OK):
                tail = (build.stdout + build.stderr).strip().splitlines()[-3:]
                raise Skip(f"udp2raw build failed (make dynamic exited {build.returncode}): {' | '.join(tail)}")
            work.rename(binary.parent)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
    return binary


def twistd_command() -> list[str]:
    """
    The venv's twistd, next to this interpreter (or twistd run through it).
    """
    twistd = Path(sys.executable).parent / "twistd"
    if os.access(twistd, os.X_OK):
        return [str(twistd)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def check_relay(env: dict[str, str]) -> list[str]:
    """
    The twistd command line prefix, if the C{faketcp-relay} plugin loads.

    @raise Skip: the plugin is not there yet, or does not load.
    """
    plugin = SOURCE_ROOT / "twisted" / "plugins" / "faketcp_relay.py"
    if not plugin.is_file():
        raise Skip(f"relay plugin {plugin.relative_to(SOURCE_ROOT)} not found: faketcp-relay is not written yet")
    twistd = twistd_command()
    probe = subprocess.run(
        [*twistd, "faketcp-relay", "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        cwd=tempfile.gettempdir(),
    )
    if probe.returncode != 0:
        tail = (probe.stdout + probe.stderr).strip().splitlines()[-2:]
        raise Skip(f"`twistd faketcp-relay --help` exited {probe.returncode}: {' | '.join(tail)}")
    return twistd


# --------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------


@dataclass
class Options:
    """
    What to measure (from the command line).
    """

    tunnels: list[str]
    rates: list[float]
    seconds: float
    size: int
    max_step: bool = True
    repeat: int = 1
    rtt_rate: float = 10000.0
    rtt_seconds: float = 3.0
    idle_flows: int = 0
    base_port: int = 27100
    udp2raw_tarball: Path = UDP2RAW_TARBALL
    udp2raw_binary: Path | None = None
    json_path: Path = Path("bench-results/bench.json")
    plot_path: Path | None = None
    command: str = ""
    notes: list[str] = field(default_factory=list)


class Bench:
    """
    Measures tunnels side by side in one lab.

    All tunnels run at once (each on its own ports, idle while another is
    measured), and every step goes round all of them before the next:
    the round trips, then each rate of the ladder.  On a shared machine
    whose load changes from minute to minute, a tunnel's step and its
    peers' are then seconds apart, not minutes.
    """

    def __init__(self, lab: netlab.TwoHostsLab, children: Children, options: Options, logs: Path) -> None:
        self.lab = lab
        self.children = children
        self.options = options
        self.logs = logs
        #: tunnel name -> its echo or iperf3 server (they share the load port).
        self.servers: dict[str, subprocess.Popen[Any]] = {}
        #: Further processes whose CPU every step accounts for (role -> process).
        self.extra: dict[str, subprocess.Popen[Any]] = {}

    # -- load servers in S ---------------------------------------------------

    def start_echo(self, tunnel: Tunnel) -> None:
        """
        The pinger's echo server on the tunnel's load port in S.
        """
        self.stop_server(tunnel)
        port = tunnel.ports.load
        proc = self.children.spawn(
            [sys.executable, "-m", "lab.bench_udp", "echo", "--port", str(port)],
            self.lab.S,
            stdout=subprocess.PIPE,
        )
        self.servers[tunnel.name] = proc
        assert proc.stdout is not None
        if _read_line(proc.stdout, 15.0).strip() != "ready":
            raise StepError(f"echo server on port {port} did not start")

    def start_iperf3(self, tunnel: Tunnel) -> None:
        """
        A persistent iperf3 server on the tunnel's load port in S; wait
        until it listens.
        """
        self.stop_server(tunnel)
        port = tunnel.ports.load
        log = self.logs / f"iperf3-server-{tunnel.name}.log"
        with open(log, "a") as sink:
            proc = self.children.spawn(["iperf3", "-s", "-p", str(port)], self.lab.S, stdout=sink)
        self.servers[tunnel.name] = proc
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            listening = self.lab.run(self.lab.S, "ss", "-Hltn", f"sport = :{port}", check=False).stdout
            if listening.strip():
                return
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        raise StepError(f"iperf3 server on port {port} did not start (see {log})")

    def stop_server(self, tunnel: Tunnel) -> None:
        """
        Stop the tunnel's echo or iperf3 server.
        """
        proc = self.servers.pop(tunnel.name, None)
        if proc is not None:
            self.children.stop(proc)

    # -- CPU accounting ------------------------------------------------------

    def _cpu_snapshot(self, tunnel: Tunnel) -> dict[str, float]:
        pids = {role: proc.pid for role, proc in [*tunnel.processes.items(), *self.extra.items()]}
        server = self.servers.get(tunnel.name)
        if server is not None:
            pids["load-server"] = server.pid
        snapshot = {role: cpu_seconds(pid) for role, pid in pids.items()}
        snapshot["machine-busy"] = machine_busy_seconds()
        return snapshot

    @staticmethod
    def _cpu_delta(before: dict[str, float], after: dict[str, float], client: float) -> dict[str, float]:
        delta = {role: round(after[role] - before[role], 3) for role in before if role in after}
        delta["load-client"] = round(client, 3)
        # What the machine did besides these processes: the kernel's packet
        # work in softirq threads, and other tenants of a shared machine.
        delta["rest"] = round(delta["machine-busy"] - sum(v for k, v in delta.items() if k != "machine-busy"), 3)
        return delta

    # -- steps ---------------------------------------------------------------

    def ping(self, tunnel: Tunnel, label: str, wait: float = 0.0) -> dict[str, Any]:
        """
        Round trips at the moderate rate; the tunnel's echo server runs.
        """
        host, port = tunnel.target(self.lab)
        base = [
            sys.executable, "-m", "lab.bench_udp", "ping",
            "--host", host, "--port", str(port), "--size", str(self.options.size),
        ]  # fmt: skip
        argv = [*base, "--rate", f"{self.options.rtt_rate:g}", "--seconds", f"{self.options.rtt_seconds:g}"]
        if wait > 0:
            # Readiness first, in its own run, so that its probes and the
            # tunnel's handshake stay out of the measured CPU seconds.
            probe = self.children.run_measured(
                [*base, "--seconds", "0.01", "--wait", f"{wait:g}"],
                self.lab.C,
                self.logs / f"ready-{tunnel.name}.json",
                timeout=wait + 30,
            )
            if probe.returncode != 0:
                raise StepError(f"{tunnel.name} carried nothing within {wait:g} s (logs in {self.logs})")
        before = self._cpu_snapshot(tunnel)
        measured = self.children.run_measured(
            argv, self.lab.C, self.logs / f"ping-{tunnel.name}-{label}.json", timeout=self.options.rtt_seconds + 30
        )
        after = self._cpu_snapshot(tunnel)
        try:
            result: dict[str, Any] = json.loads(measured.output.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise StepError(f"pinger failed (exit {measured.returncode}): {measured.output.strip()[-300:]}") from None
        result["cpu_s"] = self._cpu_delta(before, after, measured.cpu_s)
        result["wall_s"] = round(measured.wall_s, 3)
        return result

    def load_step(self, tunnel: Tunnel, rate: float | None, round_: int = 0, tag: str = "") -> dict[str, Any]:
        """
        One iperf3 UDP run at C{rate} Mbit/s (None: as fast as it can).
        """
        host, port = tunnel.target(self.lab)
        label = "max" if rate is None else f"{rate:g}"
        seconds = self.options.seconds
        argv = [
            "iperf3", "-c", host, "-p", str(port), "-u", "-l", str(self.options.size),
            "-b", "0" if rate is None else f"{rate:g}M", "-t", f"{seconds:g}", "-w", IPERF3_WINDOW, "--json",
        ]  # fmt: skip
        step: dict[str, Any] = {"label": label, "rate_mbps": rate, "round": round_, "command": shlex.join(argv)}
        before = self._cpu_snapshot(tunnel)
        measured = self.children.run_measured(
            argv, self.lab.C, self.logs / f"iperf3-{tunnel.name}-{label}{tag}-{round_}.json", timeout=seconds + 30
        )
        after = self._cpu_snapshot(tunnel)
        step["cpu_s"] = self._cpu_delta(before, after, measured.cpu_s)
        step["wall_s"] = round(measured.wall_s, 3)
        try:
            report = json.loads(measured.output)
        except ValueError:
            step["error"] = (
                f"iperf3 exited {measured.returncode} without a JSON report: {measured.output.strip()[-300:]}"
            )
            return step
        if report.get("error") or "sum_sent" not in report.get("end", {}):
            step["error"] = f"iperf3: {report.get('error') or 'no totals in its report'}"
            return step
        sent, received = report["end"]["sum_sent"], report["end"]["sum_received"]
        # iperf3 counts "lost" from sequence gaps, which cannot see datagrams
        # lost at the end of the run: count what arrived against what was sent.
        duration = sent["seconds"] or seconds
        sent_packets = int(sent["packets"])
        delivered_packets = max(int(received["packets"]) - int(received["lost_packets"]), 0)
        size_bits = self.options.size * 8
        step.update(
            seconds=round(duration, 3),
            sent_packets=sent_packets,
            delivered_packets=delivered_packets,
            offered_mbps=round(sent_packets * size_bits / duration / 1e6, 2),
            delivered_mbps=round(delivered_packets * size_bits / duration / 1e6, 2),
            offered_pps=round(sent_packets / duration),
            delivered_pps=round(delivered_packets / duration),
            loss=round(1 - delivered_packets / sent_packets, 6) if sent_packets else 0.0,
            iperf3_lost_percent=received.get("lost_percent"),
            iperf3_out_of_order=received.get("out_of_order"),
        )
        if delivered_packets:
            # CPU per delivered datagram; meaningful at rates without much
            # loss (at "max" the tunnel client also burns time on datagrams
            # that are then lost).
            step["cpu_us_per_packet"] = {
                role: round(seconds_ * 1e6 / delivered_packets, 2)
                for role, seconds_ in step["cpu_s"].items()
                if role not in ("machine-busy", "rest")
            }
        return step

    def run(self, tunnels: list[Tunnel]) -> dict[str, dict[str, Any]]:
        """
        Start every tunnel, then round trips and each load step for all of
        them in turn, then (for our relay, alone) the idle flows.  A failure
        ends that tunnel's measurements, not the others'.
        """
        results: dict[str, dict[str, Any]] = {
            t.name: {"name": t.name, "status": "ok", "ports": vars(t.ports), "steps": []} for t in tunnels
        }
        active: list[Tunnel] = []

        def attempt(
            tunnel: Tunnel, what: str, action: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs
        ) -> _R | None:
            try:
                return action(*args, **kwargs)
            except (StepError, netlab.LabError, OSError) as failure:
                results[tunnel.name].update(status="failed", note=f"{what}: {failure}")
                _progress(f"{tunnel.name}: FAILED ({what}): {failure}")
                if tunnel in active:
                    active.remove(tunnel)
                self.stop_server(tunnel)
                tunnel.stop(self.lab, self.children)
                return None

        try:
            for tunnel in tunnels:
                active.append(tunnel)
                attempt(tunnel, "start", self._start, tunnel)
                results[tunnel.name]["commands"] = dict(tunnel.commands)
            rounds = range(self.options.repeat)
            for round_ in rounds:
                for tunnel in list(active):
                    _progress(f"{tunnel.name}: round trips at {self.options.rtt_rate:g} datagrams/s ...")
                    wait = READY_SECONDS if round_ == 0 else 0.0
                    rtt = attempt(tunnel, "round trips", self.ping, tunnel, f"rtt-{round_}", wait=wait)
                    if rtt is not None:
                        rtt["round"] = round_
                        results[tunnel.name].setdefault("rtt_rounds", []).append(rtt)
                        _progress(f"{tunnel.name}: {bench_report.rtt_line(rtt)}")
            for tunnel in list(active):
                attempt(tunnel, "iperf3 server", self.start_iperf3, tunnel)
            ladder: list[float | None] = list(self.options.rates)
            if self.options.max_step:
                ladder.append(None)
            for rate in ladder:
                for round_ in rounds:
                    for tunnel in list(active):
                        step = attempt(tunnel, f"step {rate or 'max'}", self._checked_step, tunnel, rate, round_)
                        if step is not None:
                            results[tunnel.name]["steps"].append(step)
                            _progress(f"{tunnel.name}: {bench_report.step_line(step)}")
                        time.sleep(0.3)  # let queues drain between steps
            relay = next((t for t in active if isinstance(t, FaketcpRelay)), None)
            if self.options.idle_flows and relay is not None:
                # Alone: the other tunnels' captures would see its packets.
                for tunnel in list(active):
                    if tunnel is not relay:
                        self.stop_server(tunnel)
                        tunnel.stop(self.lab, self.children)
                idle = attempt(relay, "idle flows", lambda: self.idle_flows(relay))
                if idle is not None:
                    results[relay.name]["idle_flows"] = idle
        finally:
            for tunnel in tunnels:
                self.stop_server(tunnel)
                tunnel.stop(self.lab, self.children)
        return results

    def _start(self, tunnel: Tunnel) -> None:
        # The echo server first: a tunnel's first datagram then has a taker.
        self.start_echo(tunnel)
        tunnel.start(self.lab, self.children, self.logs)

    def _checked_step(self, tunnel: Tunnel, rate: float | None, round_: int) -> dict[str, Any]:
        step = self.load_step(tunnel, rate, round_)
        self._check_alive(tunnel)
        return step

    def _check_alive(self, tunnel: Tunnel) -> None:
        for role, proc in tunnel.processes.items():
            if proc.poll() is not None:
                raise StepError(f"{tunnel.name} {role} exited with {proc.returncode} (logs in {self.logs})")

    # -- idle flows ----------------------------------------------------------

    def idle_flows(self, tunnel: Tunnel) -> dict[str, Any]:
        """
        N idle fake-TCP flows on the relay server: its memory, and an active
        flow's round trips and maximum with one idle flow and with N.

        The holder runs in C next to the relay client; its capture sees the
        active flow's packets as well, so "without" is measured with the
        holder holding one flow, and only the number of flows differs.
        """
        count = self.options.idle_flows
        _progress(f"{tunnel.name}: idle flows: opening 1, measuring the active flow ...")
        self.start_echo(tunnel)
        holder = self.children.spawn(
            [
                sys.executable, "-m", "lab.bench_idle", "--host", self.lab.server4,
                "--port", str(tunnel.ports.fake), "--max-flows", str(count + 16),
                "--keepalive", f"{IDLE_KEEPALIVE:g}",
            ],
            self.lab.C,
            stdout=subprocess.PIPE,
            stdin=subprocess.PIPE,
        )  # fmt: skip
        # Its keepalives and its capture cost CPU beside the active flow.
        self.extra["idle-holder"] = holder
        try:
            result: dict[str, Any] = {"flows": count, "keepalive_s": IDLE_KEEPALIVE}
            result["holder_one"] = self._holder_open(holder, 1, timeout=60)
            without = {"rtt": self.ping(tunnel, "idle-1")}
            self.start_iperf3(tunnel)
            without["max"] = self.load_step(tunnel, None, tag="-idle-1")
            self._check_alive(tunnel)
            result["server_before"] = self._server_state(tunnel)
            _progress(f"{tunnel.name}: idle flows: opening {count - 1} more ...")
            self.start_echo(tunnel)
            result["holder_all"] = self._holder_open(holder, count - 1, timeout=max(120.0, count / 20))
            time.sleep(2.0)  # let the server settle (timers, garbage)
            self._check_alive(tunnel)
            result["server_after"] = self._server_state(tunnel)
            _progress(f"{tunnel.name}: idle flows: measuring the active flow beside {count} ...")
            with_idle = {"rtt": self.ping(tunnel, f"idle-{count}")}
            self.start_iperf3(tunnel)
            with_idle["max"] = self.load_step(tunnel, None, tag=f"-idle-{count}")
            self._check_alive(tunnel)
            result["server_end"] = self._server_state(tunnel)
            result["active_without"] = without
            result["active_with"] = with_idle
            # Per flow the server really holds: a client may believe in a
            # flow whose handshake the server dropped.
            before, after = result["server_before"], result["server_after"]
            added = after["flows"] - before["flows"]
            grown = after["rss_mb"] - before["rss_mb"]
            if added > 0:
                result["rss_kb_per_flow"] = round(grown * 1024 / added, 2)
                result["rss_mb_projected"] = round(before["rss_mb"] + grown * (count - before["flows"]) / added, 1)
            return result
        finally:
            self.extra.pop("idle-holder", None)
            self.children.stop(holder)

    def _server_state(self, tunnel: Tunnel) -> dict[str, float]:
        """
        The relay server's memory and descriptors, and how many fake-TCP
        flows it holds: its kernel sockets on the fake port in ESTABLISHED
        (it keeps one open per adopted flow, and closes those it refused).
        """
        server = tunnel.processes["tunnel-server"]
        listing = self.lab.run(
            self.lab.S, "ss", "-Htn", "state", "established", f"( sport = :{tunnel.ports.fake} )", check=False
        ).stdout
        return {
            "rss_mb": round(rss_bytes(server.pid) / 2**20, 2),
            "fds": open_files(server.pid),
            "flows": len(listing.splitlines()),
        }

    def _holder_open(self, holder: subprocess.Popen[Any], count: int, timeout: float) -> dict[str, Any]:
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.write(f"open {count}\n")
        holder.stdin.flush()
        line = _read_line(holder.stdout, timeout)
        try:
            answer: dict[str, Any] = json.loads(line)
        except ValueError:
            raise StepError(
                f"idle-flow holder gave no answer to 'open {count}' within {timeout:g} s: {line!r}"
            ) from None
        return answer


# --------------------------------------------------------------------------
# Running it
# --------------------------------------------------------------------------


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_start": " ".join(f"{v:.2f}" for v in os.getloadavg()),
    }


def _source_digest() -> str:
    """
    A digest of the package's and plugins' Python files as measured: the
    commit alone does not say what an uncommitted tree held.
    """
    digest = hashlib.sha256()
    for path in sorted([*SOURCE_ROOT.glob("faketcp_twisted/*.py"), *SOURCE_ROOT.glob("twisted/plugins/faketcp*.py")]):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _source_revision() -> str | None:
    try:
        head = subprocess.run(
            ["git", "-C", str(SOURCE_ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() or None


def _prepare_tunnels(options: Options, env: dict[str, str]) -> tuple[list[Tunnel], dict[str, dict[str, Any]]]:
    """
    The tunnels that can run, and skip notes for those that cannot.
    """
    runnable: list[Tunnel] = []
    skipped: dict[str, dict[str, Any]] = {}
    for index, name in enumerate(TUNNELS):
        if name not in options.tunnels:
            continue
        base = options.base_port + 10 * index
        ports = Ports(load=base + 1, fake=base + 2, local=base + 3)
        try:
            if name == "direct":
                runnable.append(Direct(ports))
            elif name == "udp2raw":
                binary = options.udp2raw_binary or ensure_udp2raw(options.udp2raw_tarball, cache_dir())
                runnable.append(Udp2raw(ports, binary))
            elif name == "twisted-udp":
                runnable.append(TwistedUdp(ports))
            else:
                max_flows = options.idle_flows + 64 if options.idle_flows + 64 > 1024 else None
                runnable.append(FaketcpRelay(ports, check_relay(env), max_flows))
        except (Skip, OSError, subprocess.SubprocessError) as reason:
            skipped[name] = {"name": name, "status": "skipped", "note": str(reason), "steps": []}
            _progress(f"{name}: SKIPPED: {reason}")
    return runnable, skipped


@contextlib.contextmanager
def _terminating_signals() -> Iterator[None]:
    """
    Turn SIGINT, SIGTERM and SIGHUP into KeyboardInterrupt, so the same
    cleanup runs for each (SIGINT too: a shell without job control starts
    background commands with SIGINT ignored).
    """

    owner = os.getpid()

    def interrupt(signum: int, frame: Any) -> None:
        if os.getpid() != owner:
            # A forked helper (pyroute2 forks to create namespaces) must not
            # run the benchmark's cleanup: it would remove the lab.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise KeyboardInterrupt(signal.Signals(signum).name)

    saved = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _raise_file_limit() -> int:
    """
    Children inherit it: a relay server holding 10,000 flows needs about
    20,000 descriptors (a kernel socket and a UDP socket per flow).  Raising
    the hard limit needs CAP_SYS_RESOURCE, which a container may lack.

    @return: the soft limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 200_000
    for limits in ((max(soft, want), max(hard, want)), (hard, hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def run(options: Options) -> dict[str, Any]:
    """
    Build the lab, measure every tunnel, tear everything down, and return
    the report (also when interrupted: then C{interrupted} is true).
    """
    started = datetime.datetime.now().astimezone()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SOURCE_ROOT), env.get("PYTHONPATH")]))
    logs = options.json_path.resolve().with_suffix(".logs")
    # The logs belong to this report: a rerun to the same path starts afresh
    # (twistd would append to its old log, iperf3 leave files of other steps).
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "started": started.isoformat(timespec="seconds"),
        "command": options.command,
        "source": _source_revision(),
        "source_digest": _source_digest(),
        "machine": _machine(),
        "options": {
            "tunnels": options.tunnels,
            "rates_mbps": options.rates,
            "max_step": options.max_step,
            "repeat": options.repeat,
            "seconds": options.seconds,
            "size": options.size,
            "rtt_rate": options.rtt_rate,
            "rtt_seconds": options.rtt_seconds,
            "idle_flows": options.idle_flows,
            "loss_target": bench_report.LOSS_TARGET,
        },
        "logs": str(logs),
        "tunnels": {},
        "notes": list(options.notes),
        "interrupted": False,
    }
    results: dict[str, dict[str, Any]] = {}
    report["machine"]["open_files_limit"] = files = _raise_file_limit()
    if options.idle_flows and 2 * options.idle_flows + 256 > files:
        report["notes"].append(
            f"--idle-flows {options.idle_flows}: the relay server holds about two descriptors per flow, and"
            f" processes here may open only {files} (RLIMIT_NOFILE; raising it needs CAP_SYS_RESOURCE)"
        )
    children = Children(env)
    lab: netlab.TwoHostsLab | None = None
    with _terminating_signals():
        try:
            runnable, skipped = _prepare_tunnels(options, env)
            results.update(skipped)
            if runnable:
                lab = netlab.two_hosts(extra_server_addresses=1)
                report["lab"] = {
                    "namespaces": sorted(lab.namespaces.values()),
                    "client": lab.client4,
                    "server": lab.server4,
                    "server_dnat": lab.server4_extra[0],
                }
                # DNAT to 127.0.0.1 needs this in C (the anchors README way).
                lab.run(lab.C, "sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1")
                results.update(Bench(lab, children, options, logs).run(runnable))
        except KeyboardInterrupt:
            report["interrupted"] = True
            _progress("interrupted: cleaning up")
        finally:
            children.stop_all()
            if lab is not None:
                lab.destroy()
    # Tunnels in the fixed order, whatever order they ran or were skipped in.
    report["tunnels"] = {name: results[name] for name in TUNNELS if name in results}
    bench_report.summarize(report)
    report["machine"]["loadavg_end"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    report["finished"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    return report


def _parse_rates(text: str) -> list[float]:
    rates = [float(part) for part in text.split(",") if part.strip()]
    if any(rate <= 0 for rate in rates):
        raise argparse.ArgumentTypeError("rates are positive Mbit/s values, e.g. 100,200,400")
    return rates


def _parse_tunnels(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in TUNNELS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"tunnels are a comma-separated subset of {','.join(TUNNELS)}")
    return names


def parse_options(argv: list[str]) -> Options:
    """
    The command line, with C{--quick} filling in what was not given.
    """
    parser = argparse.ArgumentParser(
        prog="python -m lab.bench",
        description="UDP load through fake-TCP tunnels (direct, udp2raw, faketcp-relay) between two namespaces.",
    )
    parser.add_argument(
        "--tunnels",
        type=_parse_tunnels,
        default=list(DEFAULT_TUNNELS),
        help=f"default {','.join(DEFAULT_TUNNELS)}; also twisted-udp (a plain UDP relay pair on Twisted's reactor)",
    )
    parser.add_argument(
        "--rates", type=_parse_rates, help="Mbit/s ladder, default " + ",".join(map(str, DEFAULT_RATES))
    )
    parser.add_argument("--no-max", action="store_true", help="skip the unlimited (iperf3 -b 0) step")
    parser.add_argument(
        "--repeat", type=int, default=1, metavar="N",
        help="rounds of every step, the best one reported (a busy machine only ever slows a step down)",
    )  # fmt: skip
    parser.add_argument("--seconds", type=float, help=f"seconds per step (default {DEFAULT_SECONDS:g})")
    parser.add_argument("--size", type=int, default=1200, help="datagram size in bytes (default 1200)")
    parser.add_argument("--rtt-rate", type=float, default=10000.0, help="datagrams/s for round trips (default 10000)")
    parser.add_argument("--rtt-seconds", type=float, help="seconds of round trips (default: --seconds)")
    parser.add_argument(
        "--idle-flows", type=int, default=0, metavar="N", help="also hold N idle flows on the relay server"
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"one rate ({QUICK_RATES[0]} Mbit/s) and max, {QUICK_SECONDS:g} s each"
    )
    parser.add_argument(
        "--json", type=Path, dest="json_path", help="report path (default bench-results/bench-TIME.json)"
    )
    parser.add_argument(
        "--plot", type=Path, dest="plot_path", help="PNG of delivered vs offered load (needs matplotlib)"
    )
    parser.add_argument("--base-port", type=int, default=27100, help="first of the ports used (default 27100)")
    parser.add_argument("--udp2raw-tarball", type=Path, default=UDP2RAW_TARBALL, help="udp2raw source to build")
    parser.add_argument("--udp2raw-binary", type=Path, help="use this udp2raw instead of building one")
    args = parser.parse_args(argv)
    if not 64 <= args.size <= 1350:
        # udp2raw's own header must fit too (anchors README: under ~1375).
        parser.error("--size must be between 64 and 1350")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.idle_flows < 0 or args.idle_flows == 1:
        parser.error("--idle-flows must be 0 (off) or at least 2")
    seconds = args.seconds or (QUICK_SECONDS if args.quick else DEFAULT_SECONDS)
    rates = args.rates or list(QUICK_RATES if args.quick else DEFAULT_RATES)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Options(
        tunnels=args.tunnels,
        rates=rates,
        seconds=seconds,
        size=args.size,
        max_step=not args.no_max,
        repeat=args.repeat,
        rtt_rate=args.rtt_rate,
        rtt_seconds=args.rtt_seconds or seconds,
        idle_flows=args.idle_flows,
        base_port=args.base_port,
        udp2raw_tarball=args.udp2raw_tarball,
        udp2raw_binary=args.udp2raw_binary,
        json_path=args.json_path or Path("bench-results") / f"bench-{stamp}.json",
        plot_path=args.plot_path,
        command=shlex.join(["python", "-m", "lab.bench", *argv]),
    )


def main(argv: list[str] | None = None) -> int:
    """
    Run the benchmark; print the table, write the JSON (and the plot).
    """
    argv = sys.argv[1:] if argv is None else argv
    options = parse_options(argv)
    if os.geteuid() != 0:
        print(
            "the benchmark creates network namespaces, raw sockets and firewall rules: run it as root", file=sys.stderr
        )
        return 1
    missing = [tool for tool in ("iperf3", "ip", "iptables", "ss") if shutil.which(tool) is None]
    if missing:
        print(f"missing tools: {', '.join(missing)} (apt-get install iperf3 iproute2 iptables)", file=sys.stderr)
        return 1
    report = run(options)
    if options.plot_path is not None:
        reason = bench_report.plot(report, options.plot_path)
        report["plot"] = None if reason else str(options.plot_path)
        if reason:
            report["notes"].append(reason)
    options.json_path.parent.mkdir(parents=True, exist_ok=True)
    options.json_path.write_text(json.dumps(report, indent=1) + "\n")
    print(bench_report.format_report(report))
    print(f"\nJSON: {options.json_path}   logs: {report['logs']}")
    if report["interrupted"]:
        return 130
    return 0 if all(t["status"] != "failed" for t in report["tunnels"].values()) else 2


if __name__ == "__main__":
    sys.exit(main())
