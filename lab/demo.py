# -*- test-case-name: tests.test_demo -*-
"""
The README's first command, C{make demo}: the relay pair between two
network namespaces, carrying a UDP ping-pong, with a live line per second::

    client namespace                          server namespace
    UDP pinger -> faketcp-relay (client) ==fake-TCP==> faketcp-relay (server) -> UDP echo

Both relays are real C{twistd -n faketcp-relay} processes.  At the end they
are stopped with SIGTERM, and the demo shows that no firewall rule and no
namespace is left.

Run as root: C{python -m lab.demo [--seconds N] [--rate PPS] [--size BYTES]}.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from typing import Any

from twisted.internet import defer, task
from twisted.internet.protocol import DatagramProtocol

from lab import netlab

_STAMP = struct.Struct("!Qd")
FAKETCP_PORT = 9191
ECHO_PORT = 5000
CLIENT_PORT = 4000
#: Seconds after which a datagram that has not come back counts as lost.
LOSS_AFTER = 0.5


class Echo(DatagramProtocol):
    """
    The UDP service behind the server relay.
    """

    noisy = False
    transport: Any

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.transport.write(datagram, addr)


class Pinger(DatagramProtocol):
    """
    Sends numbered, timestamped datagrams to the client relay and measures
    what comes back.
    """

    noisy = False
    transport: Any

    def __init__(self, size: int) -> None:
        self.size = size
        self.padding = b"." * (size - _STAMP.size)
        self.sent = 0
        self.received = 0
        self.bytes_received = 0
        self.lost = 0
        self.rtts: list[float] = []
        self.outstanding: dict[int, float] = {}

    def send_batch(self, count: int) -> None:
        """
        Send C{count} datagrams now.
        """
        now = time.perf_counter()
        for _ in range(count):
            self.outstanding[self.sent] = now
            self.transport.write(_STAMP.pack(self.sent, now) + self.padding, ("127.0.0.1", CLIENT_PORT))
            self.sent += 1

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        number, sent_at = _STAMP.unpack_from(datagram)
        if self.outstanding.pop(number, None) is None:
            return
        self.rtts.append(time.perf_counter() - sent_at)
        self.received += 1
        self.bytes_received += len(datagram)

    def count_lost(self) -> int:
        """
        Count (and forget) datagrams out for longer than L{LOSS_AFTER}.
        """
        cutoff = time.perf_counter() - LOSS_AFTER
        late = [number for number, sent_at in self.outstanding.items() if sent_at < cutoff]
        for number in late:
            del self.outstanding[number]
        self.lost += len(late)
        return len(late)


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(len(ordered) * fraction), len(ordered) - 1)] if ordered else 0.0


def _twistd() -> str:
    beside = os.path.join(os.path.dirname(sys.executable), "twistd")
    return beside if os.path.exists(beside) else (shutil.which("twistd") or beside)


class Relay:
    """
    One C{twistd -n faketcp-relay} in a namespace, logging to a file.
    """

    def __init__(self, namespace: str, name: str, directory: str, args: list[str]) -> None:
        self.name = name
        self.log_path = os.path.join(directory, f"{name}.log")
        # The directory holding this package, so the child uses this code
        # and finds its twistd plugin (a checkout or site-packages alike).
        env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
        argv = ["ip", "netns", "exec", namespace, _twistd(), "-n", "--pidfile=", f"--logfile={self.log_path}",
                "faketcp-relay", *args]  # fmt: skip
        self.command = " ".join(["twistd -n faketcp-relay", *args])
        self.process = subprocess.Popen(
            argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd=directory
        )

    def log(self) -> str:
        """
        What the relay logged so far.
        """
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as log:
                return log.read()
        except FileNotFoundError:
            return ""

    async def ready(self, reactor: Any, timeout: float = 20.0) -> None:
        """
        Wait for the relay's ready line.

        @raise RuntimeError: it exited or took too long.
        """
        deadline = time.monotonic() + timeout
        while "faketcp-relay server ready" not in self.log() and "faketcp-relay client ready" not in self.log():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the {self.name} relay did not start:\n{self.log()[-3000:]}")
            await task.deferLater(reactor, 0.05)

    def last(self, word: str) -> str:
        """
        The message of the relay's last log line containing C{word}.
        """
        lines = [line for line in self.log().splitlines() if word in line]
        return lines[-1].split("] ", 1)[-1] if lines else "(none)"

    def stop(self, timeout: float = 15.0) -> int | None:
        """
        SIGTERM, and wait for the exit (blocking: the demo is ending).
        """
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def _rules(lab: netlab.Lab) -> int:
    return sum(len(lab.silencing_rules(ns)) for ns in lab.namespaces.values())


def _clean_up(lab: netlab.Lab, relays: list[Relay], directory: str) -> None:
    """
    Stop the relays (SIGTERM, so they remove their rules), show that no
    rule is left, remove the namespaces and the logs.  Runs once.
    """
    if lab.destroyed:
        return
    statuses = [(relay.name, relay.stop()) for relay in relays]
    if statuses:
        print("\nstopped the relays with SIGTERM: " + ", ".join(
            f"{name} {'clean' if code in (0, -signal.SIGTERM, -signal.SIGINT) else f'exit {code}'}"
            for name, code in statuses
        ), flush=True)  # fmt: skip
    # Flushed: after a signal the process ends without flushing stdout.
    print(f"silencing rules left in the namespaces: {_rules(lab)}", flush=True)
    lab.destroy()
    shutil.rmtree(directory, ignore_errors=True)


async def run_demo(reactor: Any, seconds: float, rate: int, size: int) -> None:
    """
    Build the lab, start the relays, ping for C{seconds}, clean up.
    """
    directory = tempfile.mkdtemp(prefix="faketcp-demo-")
    print("creating namespaces: client 198.18.0.1 <-> server 198.18.0.2 (veth)")
    lab = netlab.two_hosts()
    relays: list[Relay] = []
    ports: list[Any] = []
    # Ctrl-C stops the reactor without finishing this coroutine: clean up
    # on the way out all the same.
    shutting_down = False

    def on_shutdown() -> None:
        nonlocal shutting_down
        shutting_down = True
        _clean_up(lab, relays, directory)

    trigger = reactor.addSystemEventTrigger("before", "shutdown", on_shutdown)
    try:
        with netlab.in_namespace(lab.S):
            ports.append(reactor.listenUDP(ECHO_PORT, Echo(), interface="127.0.0.1"))
        print(f"server namespace: UDP echo on 127.0.0.1:{ECHO_PORT}")
        server = Relay(lab.S, "server", directory, [
            "--listen", f"faketcp:{FAKETCP_PORT}:interface=0.0.0.0",
            "--forward", f"udp:host=127.0.0.1:port={ECHO_PORT}", "--stats-interval", "1",
        ])  # fmt: skip
        relays.append(server)
        client = Relay(lab.C, "client", directory, [
            "--listen", f"udp:{CLIENT_PORT}:interface=127.0.0.1",
            "--forward", f"faketcp:host={lab.server4}:port={FAKETCP_PORT}", "--stats-interval", "1",
        ])  # fmt: skip
        relays.append(client)
        for relay in relays:
            await relay.ready(reactor)
            print(f"{relay.name} namespace: {relay.command}")
        print(f"silencing rules installed: {_rules(lab)} (server: at listen; client: at its first connection)")
        pinger = Pinger(size)
        with netlab.in_namespace(lab.C):
            ports.append(reactor.listenUDP(0, pinger, interface="127.0.0.1"))
        print(f"\npinging through the relays: {rate} datagrams/s of {size} bytes for {seconds:g} s\n")
        tick = 0.01
        per_tick = max(rate * tick, 1)
        owed = 0.0

        def send() -> None:
            nonlocal owed
            owed += per_tick
            count = int(owed)
            owed -= count
            pinger.send_batch(count)

        sender = task.LoopingCall(send)
        sender.start(tick)
        last_sent = last_received = last_bytes = 0
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            await task.deferLater(reactor, 1.0)
            lost = pinger.count_lost()
            rtts, pinger.rtts = pinger.rtts, []
            sent, received, volume = pinger.sent, pinger.received, pinger.bytes_received
            window = max(sent - last_sent, 1)
            print(
                f"t={time.monotonic() - started:4.1f}s  sent {sent - last_sent:5d}/s  "
                f"echoed {received - last_received:5d}/s  {(volume - last_bytes) * 8 / 1e6:6.2f} Mbit/s  "
                f"RTT p50 {_percentile(rtts, 0.5) * 1e3:6.3f} ms  p99 {_percentile(rtts, 0.99) * 1e3:6.3f} ms  "
                f"loss {100.0 * lost / window:5.2f}%",
                flush=True,
            )
            last_sent, last_received, last_bytes = sent, received, volume
        # The relays' view of the last full second of pinging.
        server_line, client_line = server.last("stats 1s"), client.last("stats 1s")
        sender.stop()
        await task.deferLater(reactor, LOSS_AFTER + 0.2)
        pinger.count_lost()
        print(
            f"\ntotal: {pinger.sent} sent, {pinger.received} echoed, {pinger.lost} lost "
            f"({100.0 * pinger.lost / max(pinger.sent, 1):.2f}%)"
        )
        print(f"server relay: {server_line}")
        print(f"client relay: {client_line}")
    finally:
        for port in ports:
            # A UDP port the reactor's shutdown already stopped answers None.
            await defer.maybeDeferred(port.stopListening)
        _clean_up(lab, relays, directory)
        if not shutting_down:
            reactor.removeSystemEventTrigger(trigger)
    mine = (
        [name for name in os.listdir("/run/netns") if name in lab.namespaces.values()]
        if os.path.isdir("/run/netns")
        else []
    )
    host_rules = subprocess.run(["iptables-legacy-save"], capture_output=True, text=True, check=False).stdout
    print(
        f"namespaces left: {len(mine)}; rules left on the host: "
        f"{sum('faketcp_twisted' in line for line in host_rules.splitlines())}"
    )


def main(argv: list[str] | None = None) -> int:
    """
    Parse arguments, check privileges, and run the demo on the reactor.
    """
    parser = argparse.ArgumentParser(prog="python -m lab.demo", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="how long to ping (default 5)")
    parser.add_argument("--rate", type=int, default=2000, help="datagrams per second (default 2000)")
    parser.add_argument("--size", type=int, default=1200, help="datagram size in bytes (default 1200)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print(
            "the demo creates network namespaces, raw sockets and firewall rules: run it as root (sudo make demo)",
            file=sys.stderr,
        )
        return 1
    if not _STAMP.size <= args.size <= 1460:
        parser.error(f"--size must be between {_STAMP.size} and 1460 (the MSS of the demo's 1500-byte link)")
    outcome: list[int] = []

    def run(reactor: Any) -> defer.Deferred[None]:
        return defer.ensureDeferred(run_demo(reactor, args.seconds, args.rate, args.size))

    try:
        task.react(run)
    except SystemExit as exit_:
        outcome.append(int(exit_.code or 0))
    return outcome[0] if outcome else 0


if __name__ == "__main__":
    sys.exit(main())
