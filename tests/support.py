"""
Shared pieces of the integration tests: protocols that record what happens
to them, waiting helpers, and a test case base that builds a network lab
and checks that nothing is left behind.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase

from lab import netlab

ROOT_REASON = "needs root (CAP_NET_RAW, CAP_NET_ADMIN) to create namespaces, raw sockets and rules"


def require_root() -> None:
    """
    Skip the calling test unless running as root.
    """
    if os.geteuid() != 0:
        raise SkipTest(ROOT_REASON)


class Recorder(Protocol):
    """
    Records every datagram and how the connection ended.
    """

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.made: defer.Deferred[Recorder] = defer.Deferred()
        #: Fires with the exception that ended the connection.
        self.lost: defer.Deferred[BaseException] = defer.Deferred()

    def connectionMade(self) -> None:
        self.made.callback(self)

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost.callback(reason.value)


class RecordingFactory(Factory):
    """
    Builds L{Recorder}s (or C{protocol}) and keeps every one it built.
    """

    def __init__(self, protocol: Callable[[], Protocol] = Recorder) -> None:
        self.protocol = protocol  # type: ignore[assignment]
        self.built: list[Any] = []
        self.new: defer.DeferredQueue[Any] = defer.DeferredQueue()

    def buildProtocol(self, addr: Any) -> Any:
        protocol = self.protocol()
        protocol.factory = self
        self.built.append(protocol)
        self.new.put(protocol)
        return protocol


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, step: float = 0.02) -> None:
    """
    Poll C{predicate} until it is true; fail after C{timeout} seconds.
    """
    waited = 0.0
    while not predicate():
        if waited >= timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        await task.deferLater(reactor, step)
        waited += step


def sleep(seconds: float) -> defer.Deferred[None]:
    """
    A Deferred that fires after C{seconds}.
    """
    return task.deferLater(reactor, seconds)


def silencing_rules(lab: netlab.Lab, ns: str) -> list[str]:
    """
    The project's firewall rules in a lab namespace, both families.
    """
    return lab.silencing_rules(ns)


def kernel_sockets(lab: netlab.Lab, ns: str, port: int) -> list[str]:
    """
    TCP sockets in C{ns} other than listeners that involve C{port}.
    """
    output = lab.run(ns, "ss", "-tanH", check=False).stdout
    return [
        line
        for line in output.splitlines()
        if f":{port} " in line + " " and not line.startswith("LISTEN")
    ]


class LabTestCase(TestCase):
    """
    A test in a fresh two-host lab (see L{netlab.two_hosts}), with the
    server and client endpoints created inside their namespaces.
    """

    timeout = 60
    port = 9191

    def setUp(self) -> None:
        require_root()
        self.lab = self.makeLab()
        self.addCleanup(self.lab.destroy)
        # Runs after the test's own cleanups (ports, connections) and
        # before the lab goes: every test must leave nothing behind.
        self.addCleanup(self._checkNothingLeft)

    async def _checkNothingLeft(self) -> None:
        # Captures linger a moment after a flow closed with FIN (for the
        # peer's answering FIN): give them that long to go.
        for _ in range(30):
            await sleep(0.1)
            try:
                self.assertNothingLeft()
                return
            except self.failureException:
                pass
        self.assertNothingLeft()

    def makeLab(self) -> netlab.Lab:
        return netlab.two_hosts(extra_server_addresses=1)

    async def listen(self, factory: Any, description: str | None = None, ns: str | None = None) -> Any:
        description = description or f"faketcp:{self.port}:interface=0.0.0.0"
        with netlab.in_namespace(ns or self.lab.S):
            listening = serverFromString(reactor, description).listen(factory)
        port = await listening
        self.addCleanup(port.stopListening)
        self.addCleanup(port.abortConnections)
        return port

    async def connect(self, factory: Any, description: str, ns: str | None = None) -> Any:
        with netlab.in_namespace(ns or self.lab.C):
            connecting = clientFromString(reactor, description).connect(factory)
        protocol = await connecting
        self.addCleanup(_abort, protocol)
        return protocol

    def assertNothingLeft(self, port: int | None = None) -> None:
        """
        No silencing rule and no kernel socket of the port in either host.
        """
        port = port or self.port
        for ns in (self.lab.S, self.lab.C):
            self.assertEqual(silencing_rules(self.lab, ns), [])
            self.assertEqual(kernel_sockets(self.lab, ns, port), [])


def _abort(protocol: Any) -> None:
    transport = getattr(protocol, "transport", None)
    if transport is not None and getattr(transport, "connected", False):
        transport.abortConnection()
        return sleep(0.05)  # type: ignore[return-value]
    return None


def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """
    Run a command, capturing text output.
    """
    return subprocess.run(argv, capture_output=True, text=True, **kwargs)


def kill_and_reap(process: subprocess.Popen[Any] | None) -> None:
    """
    SIGKILL a child process and reap it, if it is still running (for
    cleanups).
    """
    if process is not None and process.poll() is None:
        process.kill()
        process.wait(10)
