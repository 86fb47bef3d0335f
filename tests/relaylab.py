"""
Pieces of the relay tests: C{twistd faketcp-relay} as a real subprocess in
a lab namespace, and small in-process UDP endpoints.
"""

from __future__ import annotations

import os
import re
import signal as signals
import subprocess
import sys
import tempfile
from typing import Any

from twisted.internet import reactor
from twisted.internet.protocol import DatagramProtocol
from twisted.trial.unittest import TestCase

from faketcp_twisted import netlab
from faketcp_twisted.udp import enlarge_buffers
from tests.support import sleep

#: The twistd of the running interpreter's environment.
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
#: The checkout root, so the children use this tree's code and plugins.
CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_READY = re.compile(r"faketcp-relay (server|client) ready")


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
        env["PYTHONPATH"] = CHECKOUT + (os.pathsep + extra_env.pop("PYTHONPATH") if extra_env and "PYTHONPATH" in extra_env else "")
        env.update(extra_env or {})
        argv = ["ip", "netns", "exec", self.lab.namespaces.get(self.ns, self.ns), TWISTD, "-n", "--pidfile=",
                f"--logfile={self.log_path}", *self.twistd_args, "faketcp-relay", *self.args]  # fmt: skip
        with open(self.stderr_path, "ab") as stderr:
            self.process = subprocess.Popen(argv, env=env, stdout=stderr, stderr=stderr, cwd=os.path.dirname(self.log_path))
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
        process = self.process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(10)

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
    found = []
    for save in ("iptables-legacy-save", "ip6tables-legacy-save"):
        output = lab.run(ns, save, check=False).stdout
        found += [line for line in output.splitlines() if "faketcp_twisted" in line]
    return found


def pids_of(rule_lines: list[str]) -> set[int]:
    """
    The owner pids named in rule comments.
    """
    return {int(m) for line in rule_lines for m in re.findall(r"pid=(\d+)", line)}
