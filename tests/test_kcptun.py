# -*- test-case-name: tests.test_kcptun -*-
"""
Wire compatibility with tcpraw 1.2.25 as shipped in Debian's kcptun, both
ways, carrying a real TCP stream through kcptun and our relay:

1. our relay server accepts tcpraw clients::

     C: tcp client -> kcptun-client --tcp (tcpraw) ==fake-TCP==>
     S: faketcp-relay server -> UDP -> kcptun-server (KCP over UDP) -> tcp target

2. our relay client talks to a tcpraw server::

     C: tcp client -> kcptun-client (KCP over UDP) -> UDP -> faketcp-relay client ==fake-TCP==>
     S: kcptun-server --tcp (tcpraw) -> tcp target

kcptun does not carry a TCP half-close, so the stream says its own length:
an 8-byte length, its SHA-256, then that many bytes; the target checks the
digest and echoes everything back, and the client checks what came back.
Two streams go through each tunnel, with an idle second between them in
which the relay sends the tcpraw peer keepalive ACKs.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import struct
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SkipTest, TestCase

from lab import netlab
from tests.relaylab import PeerProcess, RelayProcess, listens, temp_dir
from tests.support import require_root, sleep, wait_until

FAKETCP_PORT = 9191
KCP_PORT = 29900
TARGET_PORT = 5201
KCPTUN_LOCAL = 8388
RELAY_UDP = 4000
#: Bytes carried each way through each tunnel.
STREAM_BYTES = 3 * 1024 * 1024
_LENGTH = struct.Struct("!Q")
#: kcptun's common flags: no encryption or compression (the payload is
#: random anyway), the fastest profile.
KCPTUN_FLAGS = ["--crypt", "none", "--nocomp", "--mode", "fast3", "--quiet"]


class CheckingEcho(Protocol):
    """
    The TCP target: echoes everything, and checks the length-prefixed
    stream it receives against its digest.
    """

    def connectionMade(self) -> None:
        self.buffer = b""
        self.expected: int | None = None
        self.received = 0
        self.digest = hashlib.sha256()
        self.factory.connections.append(self)  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)
        if self.expected is None:
            self.buffer += data
            if len(self.buffer) < _LENGTH.size + 32:
                return
            (self.expected,) = _LENGTH.unpack_from(self.buffer)
            self.sent_digest = self.buffer[_LENGTH.size : _LENGTH.size + 32]
            data = self.buffer[_LENGTH.size + 32 :]
            self.buffer = b""
        self.received += len(data)
        self.digest.update(data)

    @property
    def complete(self) -> bool:
        """
        The whole stream arrived and matches the digest it announced.
        """
        return self.expected is not None and self.received == self.expected and self.digest.digest() == self.sent_digest


class StreamClient(Protocol):
    """
    Sends C{length}, digest, payload; collects the echo.
    """

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.message = _LENGTH.pack(len(payload)) + hashlib.sha256(payload).digest() + payload
        self.echoed = bytearray()
        self.lost = defer.Deferred()

    def connectionMade(self) -> None:
        # In pieces, so the stream is paced by TCP rather than one huge
        # buffer handed over at once.
        step = 64 * 1024
        for start in range(0, len(self.message), step):
            self.transport.write(self.message[start : start + step])

    def dataReceived(self, data: bytes) -> None:
        self.echoed += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)


class KcptunTests(TestCase):
    """
    kcptun through our relay, both directions.
    """

    timeout = 120

    def setUp(self) -> None:
        require_root()
        for binary in ("kcptun-server", "kcptun-client"):
            if shutil.which(binary) is None:
                raise SkipTest(f"{binary} is missing (Debian package kcptun)")
        self.lab = netlab.two_hosts()
        self.addCleanup(self.lab.destroy)
        self.directory = temp_dir(self)
        self.processes: list[PeerProcess | RelayProcess] = []
        self.target = Factory.forProtocol(CheckingEcho)
        self.target.connections = []  # type: ignore[attr-defined]
        with netlab.in_namespace(self.lab.S):
            port = reactor.listenTCP(TARGET_PORT, self.target, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)

    def kcptun(self, ns: str, name: str, *argv: str) -> PeerProcess:
        process = PeerProcess(self.lab, ns, [*argv, *KCPTUN_FLAGS], self.directory, name).start()
        self.addCleanup(process.stop)
        self.processes.append(process)
        return process

    def relay(self, ns: str, name: str, *args: str) -> RelayProcess:
        # Keepalives every 0.2 s: the idle second between two streams sends
        # the tcpraw peer several, which it must take in its stride.
        relay = RelayProcess(self.lab, ns, [*args, "--stats-interval", "1", "--keepalive", "0.2"], self.directory, name)
        self.addCleanup(relay.kill)
        self.processes.append(relay)
        return relay.start()

    def describe(self) -> str:
        return "\n".join(process.describe() for process in self.processes)

    async def listening(self, ns: str, kind: str, port: int, timeout: float = 10.0) -> None:
        """
        Wait until something in C{ns} listens on C{port} (C{kind} C{t} or C{u}).
        """
        if not await listens(self.lab, ns, kind, port, timeout):
            raise AssertionError(f"nothing listens on {kind} {port} in {ns}\n{self.describe()}")

    async def carry_twice(self) -> None:
        """
        Carry a stream, let the tunnel idle while the relay sends keepalive
        ACKs to the tcpraw peer, and carry another.
        """
        await self.carry()
        await sleep(1.0)
        await self.carry()
        self.assertEqual(len(self.target.connections), 2)  # type: ignore[attr-defined]

    async def carry(self) -> None:
        """
        Carry the stream through kcptun-client's local port in C, and check
        both ends.
        """
        payload = os.urandom(STREAM_BYTES)
        client = StreamClient(payload)
        with netlab.in_namespace(self.lab.C):
            connecting = reactor.connectTCP("127.0.0.1", KCPTUN_LOCAL, _OneShot(client))  # type: ignore[attr-defined]
        self.addCleanup(connecting.disconnect)
        try:
            await wait_until(lambda: len(client.echoed) >= len(client.message), timeout=60, step=0.1)
        except AssertionError:
            target = self.target.connections  # type: ignore[attr-defined]
            got = [c.received for c in target]
            raise AssertionError(
                f"echoed {len(client.echoed)} of {len(client.message)} bytes; target received {got}\n{self.describe()}"
            ) from None
        self.assertTrue(self.target.connections[-1].complete)  # type: ignore[attr-defined]
        self.assertEqual(bytes(client.echoed), client.message)
        connecting.disconnect()
        await client.lost

    async def test_tcpraw_client_to_relay_server(self) -> None:
        """
        kcptun-client --tcp (tcpraw) -> our relay server -> kcptun-server
        over plain UDP: a 3 MB stream each way arrives intact.
        """
        lab = self.lab
        self.kcptun(
            lab.S, "kcptun-server", "kcptun-server", "-l", f"127.0.0.1:{KCP_PORT}", "-t", f"127.0.0.1:{TARGET_PORT}"
        )
        server = self.relay(
            lab.S, "relay-server",
            "--listen", f"faketcp:{FAKETCP_PORT}:interface=0.0.0.0",
            "--forward", f"udp:host=127.0.0.1:port={KCP_PORT}",
        )  # fmt: skip
        await server.ready()
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
        await self.carry_twice()
        await server.wait_log(r"flow from fake-TCP 198\.18\.0\.1:\d+ opened")
        await server.terminate(signal.SIGTERM)
        self.assertNotIn("udp->faketcp 0 dgrams", server.totals())

    async def test_relay_client_to_tcpraw_server(self) -> None:
        """
        kcptun-client over plain UDP -> our relay client -> kcptun-server
        --tcp (tcpraw): a 3 MB stream each way arrives intact.
        """
        lab = self.lab
        self.kcptun(
            lab.S, "kcptun-server", "kcptun-server", "--tcp", "-l", f":{FAKETCP_PORT}", "-t", f"127.0.0.1:{TARGET_PORT}"
        )
        await self.listening(lab.S, "t", FAKETCP_PORT)
        client = self.relay(
            lab.C, "relay-client",
            "--listen", f"udp:{RELAY_UDP}:interface=127.0.0.1",
            "--forward", f"faketcp:host={lab.server4}:port={FAKETCP_PORT}",
        )  # fmt: skip
        await client.ready()
        self.kcptun(
            lab.C, "kcptun-client", "kcptun-client", "-r", f"127.0.0.1:{RELAY_UDP}", "-l", f"127.0.0.1:{KCPTUN_LOCAL}"
        )
        await self.listening(lab.C, "t", KCPTUN_LOCAL)
        await self.carry_twice()
        await client.wait_log(r"fake-TCP connection .* -> 198\.18\.0\.2:9191 up")
        await client.terminate(signal.SIGTERM)
        self.assertNotIn("faketcp->udp 0 dgrams", client.totals())


class _OneShot(Factory):
    """
    A client factory handing out one prepared protocol.
    """

    noisy = False

    def __init__(self, protocol: Protocol) -> None:
        self.protocol_instance = protocol

    def buildProtocol(self, addr: Any) -> Protocol:
        self.protocol_instance.factory = self
        return self.protocol_instance

    def startedConnecting(self, connector: Any) -> None:
        pass

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        self.protocol_instance.lost.callback(None)  # type: ignore[attr-defined]

    def clientConnectionLost(self, connector: Any, reason: Any) -> None:
        pass
