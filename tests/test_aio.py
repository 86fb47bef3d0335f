"""
The asyncio face (L{faketcp_twisted.aio}): asyncio protocols over fake-TCP
between two network namespaces, the close and abort semantics each side
sees, errors as OSError subclasses, write-buffer flow control, mixing with
the Twisted face, and uvloop.

Each test builds its lab before any asyncio loop runs (netlab uses
pyroute2's synchronous API, which refuses to run inside a running loop),
then runs its coroutine on a fresh loop.  The Twisted peers of the mixed
tests run in processes of their own (C{tests.twisted_peer}), since trial's
reactor and the test's asyncio loop cannot share a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from faketcp_twisted import aio
from faketcp_twisted.aio.errors import (
    FakeTCPConnectionRefusedError,
    FakeTCPFirewallError,
    FakeTCPHandshakeNotSeenError,
    FakeTCPOSError,
    FakeTCPPermissionError,
    FakeTCPTimeoutError,
    asyncio_error,
)
from faketcp_twisted.engine.errors import FakeTCPError, Problem
from faketcp_twisted.io import kernel
from faketcp_twisted.io.firewall import silencer
from lab import netlab
from tests.support import kernel_sockets, require_root, silencing_rules

uvloop: Any
try:
    import uvloop
except ImportError:  # pragma: no cover - depends on the environment
    uvloop = None

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Recorder(asyncio.Protocol):
    """
    Records every datagram and callback; echoes when asked to.

    @ivar events: the callbacks, in order (C{"made"}, C{"eof"}, C{"lost"}).
    """

    def __init__(self, echo: bool = False, keep_open: bool = False) -> None:
        loop = asyncio.get_running_loop()
        self.echo = echo
        self.keep_open = keep_open
        self.transport: Any = None
        self.received: list[bytes] = []
        self.events: list[str] = []
        self.made: asyncio.Future[Recorder] = loop.create_future()
        self.eof: asyncio.Future[None] = loop.create_future()
        #: The exception (or None) connection_lost was given.
        self.lost: asyncio.Future[BaseException | None] = loop.create_future()
        self.writing: list[str] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.events.append("made")
        self.made.set_result(self)

    def data_received(self, data: bytes) -> None:
        self.received.append(data)
        if self.echo:
            self.transport.write(data)

    def eof_received(self) -> bool:
        self.events.append("eof")
        self.eof.set_result(None)
        return self.keep_open

    def connection_lost(self, exc: BaseException | None) -> None:
        self.events.append("lost")
        self.lost.set_result(exc)

    def pause_writing(self) -> None:
        self.writing.append("pause")

    def resume_writing(self) -> None:
        self.writing.append("resume")


class Greeter(Recorder):
    """
    Writes its first datagram in connection_made, before the server could
    have adopted the flow.
    """

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.transport.write(b"first")


class Failing(Recorder):
    """
    Raises from data_received on b"boom".
    """

    def data_received(self, data: bytes) -> None:
        if data == b"boom":
            raise RuntimeError("protocol bug")
        super().data_received(data)


class Collecting(asyncio.BufferedProtocol):
    """
    A buffered protocol with a small buffer: a datagram spans buffers.
    """

    def __init__(self) -> None:
        self.buffer = bytearray(4)
        self.chunks: list[bytes] = []

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.chunks.append(bytes(self.buffer[:nbytes]))


class ProtocolFactory:
    """
    Makes protocols (L{Recorder}s by default) and keeps every one it made.
    """

    def __init__(self, kind: Callable[..., Any] = Recorder, **arguments: Any) -> None:
        self.kind = kind
        self.arguments = arguments
        self.built: list[Any] = []
        self.new: asyncio.Queue[Any] = asyncio.Queue()

    def __call__(self) -> Any:
        protocol = self.kind(**self.arguments)
        self.built.append(protocol)
        self.new.put_nowait(protocol)
        return protocol


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, step: float = 0.01) -> None:
    """
    Poll C{predicate} until it is true; fail after C{timeout} seconds.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() >= deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(step)


def within(awaitable: Awaitable[Any], timeout: float = 5.0) -> Awaitable[Any]:
    """
    C{awaitable}, failing with TimeoutError after C{timeout} seconds.
    """
    return asyncio.wait_for(awaitable, timeout)


class AioLabTestCase(SynchronousTestCase):
    """
    A test in a fresh two-host lab, run as a coroutine on a fresh loop.
    Servers and connections it opens are closed when it ends, pass or fail;
    then nothing may be left: no rule, no kernel socket, no namespace.

    @cvar loop_factory: makes the loop (L{None}: asyncio's default).
    """

    port = 9191
    #: Seconds a test's coroutine may take.
    deadline = 45.0
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None

    def setUp(self) -> None:
        require_root()
        # Built here, before any loop runs: see the module's docstring.
        self.lab = self.makeLab()
        self.addCleanup(self.assertNamespacesGone, self.lab)
        self.addCleanup(self.lab.destroy)

    def makeLab(self) -> netlab.TwoHostsLab:
        return netlab.two_hosts()

    def assertNamespacesGone(self, lab: netlab.Lab) -> None:
        left = set(netlab.netns.listnetns()) & set(lab.namespaces.values())
        self.assertEqual(left, set())

    def run_async(self, test: Callable[[], Awaitable[None]]) -> None:
        """
        Run C{test()} on a new loop, then close what it left open and check
        that nothing is left.
        """

        # What reached the loop's exception handler: an error in a callback
        # of the machinery, which no await would otherwise show.
        unexpected: list[dict[str, Any]] = []

        async def guarded() -> None:
            asyncio.get_running_loop().set_exception_handler(lambda _loop, context: unexpected.append(context))
            async with contextlib.AsyncExitStack() as stack:
                self.stack = stack
                await asyncio.wait_for(test(), self.deadline)
            # Captures linger a moment after a flow closed with FIN (for the
            # peer's answering FIN): let them close on this loop.
            for _ in range(60):
                if not silencer.installed():
                    break
                await asyncio.sleep(0.05)

        with asyncio.Runner(loop_factory=self.loop_factory) as runner:
            runner.run(guarded())
        self.assertEqual([context.get("exception", context["message"]) for context in unexpected], [])
        self.assertNothingLeft()

    def assertNothingLeft(self, port: int | None = None) -> None:
        """
        No silencing rule and no kernel socket of the port in either host,
        and no rule held by this process.
        """
        port = port or self.port
        for ns in (self.lab.S, self.lab.C):
            self.assertEqual(silencing_rules(self.lab, ns), [])
            self.assertEqual(kernel_sockets(self.lab, ns, port), [])
        self.assertEqual(silencer.installed(), [])

    # -- opening, with cleanups ------------------------------------------

    async def listen(
        self, factory: Callable[[], Any], host: str | None = "0.0.0.0", ns: str | None = None, **arguments: Any
    ) -> aio.AioServer:
        """
        An asyncio fake-TCP server in the server's namespace.
        """
        # create_server makes its sockets before its first suspension (the
        # host is an address), inside the namespace.
        with netlab.in_namespace(ns or self.lab.S):
            server = await aio.create_server(factory, host=host, port=self.port, **arguments)
        self.stack.push_async_callback(self._closeServer, server)
        return server

    async def _closeServer(self, server: aio.AioServer) -> None:
        server.close()
        server.abort_clients()
        await within(server.wait_closed())

    async def connect(
        self, factory: Callable[[], Any], host: str | None = None, ns: str | None = None, **arguments: Any
    ) -> tuple[Any, Any]:
        """
        An asyncio fake-TCP connection from the client's namespace.
        """
        # The sockets are made before create_connection first suspends, so
        # inside the namespace; the thread stays there while the handshake
        # is awaited, which is harmless: meanwhile the loop only uses
        # sockets that already exist (an accepted socket belongs to its
        # listener's namespace) and rules are removed where they were made.
        with netlab.in_namespace(ns or self.lab.C):
            transport, protocol = await aio.create_connection(
                factory, host or self.lab.server4, self.port, **arguments
            )
        self.stack.push_async_callback(self._abort, transport, protocol)
        return transport, protocol

    async def _abort(self, transport: Any, protocol: Any) -> None:
        transport.abort()
        lost = getattr(protocol, "lost", None)
        if lost is not None:
            await within(asyncio.shield(lost))
        else:
            await asyncio.sleep(0.05)

    async def spawn_peer(self, ns: str, *arguments: str) -> asyncio.subprocess.Process:
        """
        A Twisted peer (L{tests.twisted_peer}) in namespace C{ns}.
        """
        process = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", ns, sys.executable, "-m", "tests.twisted_peer", *arguments,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=CHECKOUT,
            env={**os.environ, "PYTHONPATH": CHECKOUT},
        )
        self.stack.push_async_callback(self._reap, process)
        return process

    async def _reap(self, process: asyncio.subprocess.Process) -> None:
        if process.returncode is None:
            assert process.stdin is not None
            process.stdin.close()
            try:
                await within(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()

    async def peer_event(self, process: asyncio.subprocess.Process, timeout: float = 10.0) -> dict[str, Any]:
        """
        The next event the peer reports.
        """
        assert process.stdout is not None and process.stderr is not None
        line = await within(process.stdout.readline(), timeout)
        if not line:
            await process.wait()
            error = (await process.stderr.read()).decode(errors="replace")
            self.fail(f"the Twisted peer exited ({process.returncode}): {error}")
        return json.loads(line)  # type: ignore[no-any-return]

    async def peer_exit(self, process: asyncio.subprocess.Process) -> None:
        """
        Tell a peer to stop (its standard input ends) and check it exits 0.
        """
        assert process.stdin is not None and process.stderr is not None
        process.stdin.close()
        code = await within(process.wait(), 10)
        error = (await process.stderr.read()).decode(errors="replace")
        self.assertEqual(code, 0, error)


class EchoTests(AioLabTestCase):
    """
    Datagram semantics with an asyncio echo server and client.
    """

    def test_echo_ipv4(self) -> None:
        """
        Each write of at most one MSS comes back as exactly one
        data_received, both ways.
        """

        async def test() -> None:
            await self.listen(ProtocolFactory(echo=True))
            transport, client = await self.connect(Recorder)
            messages = [b"datagram %d " % i * (i + 1) for i in range(50)]
            for message in messages:
                transport.write(message)
            await wait_until(lambda: len(client.received) == len(messages))
            self.assertEqual(client.received, messages)

        self.run_async(test)

    def test_echo_ipv6(self) -> None:
        """
        A server on :: carries datagrams over IPv6; addresses are asyncio's
        IPv6 4-tuples.
        """

        async def test() -> None:
            await self.listen(ProtocolFactory(echo=True), host="::")
            transport, client = await self.connect(Recorder, self.lab.server6)
            self.assertEqual(transport.get_extra_info("peername"), (self.lab.server6, self.port, 0, 0))
            self.assertEqual(transport.get_extra_info("sockname")[0], self.lab.client6)
            transport.writelines([b"over ", b"six"])
            await wait_until(lambda: client.received == [b"over six"])

        self.run_async(test)

    def test_default_host_is_dual_stack(self) -> None:
        """
        With no host the server listens on every address: IPv4 and IPv6
        clients both reach it.
        """

        async def test() -> None:
            server = await self.listen(ProtocolFactory(echo=True), host=None)
            self.assertEqual(server.sockets[0].family, socket.AF_INET6)
            four, client4 = await self.connect(Recorder, self.lab.server4)
            six, client6 = await self.connect(Recorder, self.lab.server6)
            four.write(b"four")
            six.write(b"six")
            await wait_until(lambda: client4.received == [b"four"] and client6.received == [b"six"])
            self.assertEqual(four.get_extra_info("peername"), (self.lab.server4, self.port))

        self.run_async(test)

    def test_extra_info_and_server(self) -> None:
        """
        The transport answers get_extra_info like asyncio's socket
        transports; the server is an asyncio AbstractServer.
        """

        async def test() -> None:
            server = await self.listen(ProtocolFactory())
            self.assertIsInstance(server, asyncio.AbstractServer)
            self.assertTrue(server.is_serving())
            self.assertIs(server.get_loop(), asyncio.get_running_loop())
            self.assertEqual(server.sockets[0].getsockname(), ("0.0.0.0", self.port))
            transport, _client = await self.connect(Recorder)
            self.assertIsInstance(transport, asyncio.Transport)
            self.assertEqual(transport.get_extra_info("peername"), (self.lab.server4, self.port))
            host, local_port = transport.get_extra_info("sockname")
            self.assertEqual(host, self.lab.client4)
            sock = transport.get_extra_info("socket")
            self.assertEqual(sock.getsockname(), (host, local_port))
            self.assertEqual(sock.type, socket.SOCK_STREAM)
            self.assertIsNone(transport.get_extra_info("nothing"))
            self.assertTrue(transport.can_write_eof())
            self.assertTrue(transport.is_reading())
            self.assertFalse(transport.is_closing())

        self.run_async(test)

    def test_first_datagram_arrives(self) -> None:
        """
        A datagram written in connection_made, racing the server's accept,
        is kept by the server's embryonic entry and delivered.
        """

        async def test() -> None:
            server = ProtocolFactory()
            await self.listen(server)
            await self.connect(Greeter)
            peer = await within(server.new.get())
            await wait_until(lambda: peer.received == [b"first"])

        self.run_async(test)

    def test_large_write_split_at_mss(self) -> None:
        """
        A write larger than the MSS arrives as MSS-sized datagrams.
        """

        async def test() -> None:
            server = ProtocolFactory()
            await self.listen(server)
            transport, _client = await self.connect(Recorder)
            mss = transport.flow.mss
            transport.write(bytearray(b"x" * (2 * mss + 7)))
            peer = await within(server.new.get())
            await wait_until(lambda: len(peer.received) == 3)
            self.assertEqual([len(d) for d in peer.received], [mss, mss, 7])

        self.run_async(test)

    def test_clients_share_one_capture(self) -> None:
        """
        Connections to one remote port share one capture, and each gets only
        its own datagrams back.
        """

        async def test() -> None:
            await self.listen(ProtocolFactory(echo=True))
            pairs = [await self.connect(Recorder) for _ in range(8)]
            self.assertEqual(len({id(transport.connection.demux) for transport, _ in pairs}), 1)
            for index, (transport, _client) in enumerate(pairs):
                for n in range(5):
                    transport.write(b"client %d message %d" % (index, n))
            await wait_until(lambda: all(len(client.received) == 5 for _, client in pairs))
            for index, (_transport, client) in enumerate(pairs):
                self.assertEqual(client.received, [b"client %d message %d" % (index, n) for n in range(5)])

        self.run_async(test)

    async def paused_peer(self) -> tuple[Any, Any]:
        """
        A connection whose server side got b"hello" and then paused
        reading: the client's transport and the server's protocol.
        """
        server = ProtocolFactory()
        await self.listen(server)
        transport, _client = await self.connect(Recorder)
        transport.write(b"hello")
        peer = await within(server.new.get())
        await wait_until(lambda: peer.received == [b"hello"])
        peer.transport.pause_reading()
        return transport, peer

    def test_pause_reading(self) -> None:
        """
        While reading is paused datagrams are queued; resuming delivers
        them in order, on a later turn of the loop.
        """

        async def test() -> None:
            transport, peer = await self.paused_peer()
            self.assertFalse(peer.transport.is_reading())
            for n in range(5):
                transport.write(b"%d" % n)
            await asyncio.sleep(0.2)
            self.assertEqual(peer.received, [b"hello"])
            peer.transport.resume_reading()
            self.assertTrue(peer.transport.is_reading())
            self.assertEqual(peer.received, [b"hello"])
            await wait_until(lambda: len(peer.received) == 6)
            self.assertEqual(peer.received, [b"hello", b"0", b"1", b"2", b"3", b"4"])

        self.run_async(test)

    def test_eof_after_paused_data(self) -> None:
        """
        A FIN that arrives while reading is paused is reported after the
        datagrams queued before it.
        """

        async def test() -> None:
            transport, peer = await self.paused_peer()
            transport.write(b"last")
            transport.close()
            await asyncio.sleep(0.2)
            self.assertEqual(peer.events, ["made"])
            peer.transport.resume_reading()
            self.assertIsNone(await within(peer.lost))
            self.assertEqual(peer.received, [b"hello", b"last"])
            self.assertEqual(peer.events, ["made", "eof", "lost"])

        self.run_async(test)

    def test_reset_after_paused_data(self) -> None:
        """
        A RST that arrives while reading is paused is reported after the
        datagrams queued before it, as over kernel TCP (whose paused
        transport reads neither).
        """

        async def test() -> None:
            transport, peer = await self.paused_peer()
            transport.write(b"last")
            transport.abort()
            await asyncio.sleep(0.2)
            self.assertEqual(peer.events, ["made"])
            peer.transport.resume_reading()
            self.assertIsInstance(await within(peer.lost), ConnectionResetError)
            self.assertEqual(peer.received, [b"hello", b"last"])
            self.assertEqual(peer.events, ["made", "lost"])

        self.run_async(test)

    def test_reset_while_paused_seen_on_write(self) -> None:
        """
        A RST held while reading is paused is reported at once when the
        protocol writes, as a write to a reset kernel socket fails.
        """

        async def test() -> None:
            transport, peer = await self.paused_peer()
            transport.write(b"never read")
            transport.abort()
            await asyncio.sleep(0.2)
            self.assertEqual(peer.events, ["made"])
            peer.transport.write(b"into a reset")
            self.assertIsInstance(await within(peer.lost), ConnectionResetError)
            self.assertEqual(peer.received, [b"hello"])

        self.run_async(test)

    def test_buffered_protocol(self) -> None:
        """
        An asyncio.BufferedProtocol gets each datagram through as many
        buffers as it takes.
        """

        async def test() -> None:
            server = ProtocolFactory(Collecting)
            await self.listen(server)
            transport, _client = await self.connect(Recorder)
            transport.write(b"0123456789")
            peer = await within(server.new.get())
            await wait_until(lambda: b"".join(peer.chunks) == b"0123456789")
            self.assertEqual(peer.chunks, [b"0123", b"4567", b"89"])

        self.run_async(test)


class ClosingTests(AioLabTestCase):
    """
    FIN, RST and idleness, as each side's protocol sees them.
    """

    async def pair(self, **server_arguments: Any) -> tuple[aio.AioServer, Any, Recorder, Recorder]:
        factory = ProtocolFactory(**server_arguments.pop("protocol", {}))
        server = await self.listen(factory, **server_arguments)
        transport, client = await self.connect(Recorder)
        transport.write(b"hello")
        peer = await within(factory.new.get())
        await wait_until(lambda: peer.received == [b"hello"])
        return server, transport, client, peer

    def test_close_seen_by_peer(self) -> None:
        """
        close() sends FIN: the peer gets eof_received and then
        connection_lost(None); the closing side connection_lost(None) alone.
        """

        async def test() -> None:
            _server, transport, client, peer = await self.pair()
            transport.close()
            self.assertTrue(transport.is_closing())
            self.assertIsNone(await within(peer.lost))
            self.assertIsNone(await within(client.lost))
            self.assertEqual(peer.events, ["made", "eof", "lost"])
            self.assertEqual(client.events, ["made", "lost"])
            self.assertTrue(peer.transport.is_closing())

        self.run_async(test)

    def test_server_close_seen_by_client(self) -> None:
        """
        The server's transport closing is seen by the client as end of file,
        then connection_lost(None).
        """

        async def test() -> None:
            _server, _transport, client, peer = await self.pair()
            peer.transport.close()
            self.assertIsNone(await within(client.lost))
            self.assertEqual(client.events, ["made", "eof", "lost"])

        self.run_async(test)

    def test_half_close(self) -> None:
        """
        write_eof() half-closes: a peer whose eof_received returns true may
        still write; its close ends the connection on both sides.
        """

        async def test() -> None:
            _server, transport, client, peer = await self.pair(protocol={"keep_open": True})
            transport.write_eof()
            self.assertFalse(transport.is_closing())
            with self.assertRaises(RuntimeError):
                transport.write(b"too late")
            await within(peer.eof)
            peer.transport.write(b"answer after eof")
            await wait_until(lambda: client.received == [b"answer after eof"])
            peer.transport.close()
            self.assertIsNone(await within(client.lost))
            self.assertIsNone(await within(peer.lost))
            self.assertEqual(client.events, ["made", "eof", "lost"])
            self.assertEqual(peer.events, ["made", "eof", "lost"])

        self.run_async(test)

    def test_abort_seen_by_peer(self) -> None:
        """
        abort() sends RST: the peer gets ConnectionResetError and no end of
        file; the aborting side connection_lost(None), as asyncio's do.
        """

        async def test() -> None:
            _server, transport, client, peer = await self.pair()
            transport.abort()
            self.assertIsInstance(await within(peer.lost), ConnectionResetError)
            self.assertIsNone(await within(client.lost))
            self.assertEqual(peer.events, ["made", "lost"])

        self.run_async(test)

    def test_idle_flow_expires(self) -> None:
        """
        A flow silent for idle_timeout seconds ends with TimeoutError.
        """

        async def test() -> None:
            _server, _transport, _client, peer = await self.pair(idle_timeout=1)
            self.assertIsInstance(await within(peer.lost), TimeoutError)

        self.run_async(test)

    def test_failing_protocol_loses_only_its_connection(self) -> None:
        """
        An exception in data_received goes to the loop's exception handler
        and ends that connection only (its peer gets a reset).
        """

        async def test() -> None:
            loop = asyncio.get_running_loop()
            reported: list[dict[str, Any]] = []
            loop.set_exception_handler(lambda _loop, context: reported.append(context))
            factory = ProtocolFactory(Failing, echo=True)
            await self.listen(factory)
            bad, bad_client = await self.connect(Recorder)
            good, good_client = await self.connect(Recorder)
            bad.write(b"boom")
            self.assertIsInstance(await within(bad_client.lost), ConnectionResetError)
            failed = factory.built[0]
            self.assertIsInstance(await within(failed.lost), RuntimeError)
            good.write(b"still here")
            await wait_until(lambda: good_client.received == [b"still here"])
            self.assertEqual([type(c["exception"]) for c in reported], [RuntimeError])

        self.run_async(test)

    def test_server_close_keeps_connections(self) -> None:
        """
        Closing the server stops accepting; connections go on, and
        wait_closed returns once the last one has ended.
        """

        async def test() -> None:
            server, transport, client, _peer = await self.pair(protocol={"echo": True})
            server.close()
            self.assertFalse(server.is_serving())
            self.assertEqual(server.sockets, ())
            waiting = asyncio.ensure_future(server.wait_closed())
            transport.write(b"still served")
            await wait_until(lambda: client.received[-1:] == [b"still served"])
            self.assertFalse(waiting.done())
            with self.assertRaises(ConnectionRefusedError):
                await self.connect(Recorder)
            transport.close()
            await within(waiting)
            self.assertEqual(silencing_rules(self.lab, self.lab.S), [])

        self.run_async(test)

    def test_abort_clients(self) -> None:
        """
        abort_clients resets every connection of the server.
        """

        async def test() -> None:
            server, _transport, client, peer = await self.pair()
            server.abort_clients()
            self.assertIsInstance(await within(client.lost), ConnectionResetError)
            self.assertIsNone(await within(peer.lost))

        self.run_async(test)

    def test_close_clients_and_async_with(self) -> None:
        """
        close_clients sends FIN on every connection; leaving "async with"
        closes the server and waits until it is closed.
        """

        async def test() -> None:
            server, _transport, client, _peer = await self.pair()
            async with server:
                server.close_clients()
                self.assertIsNone(await within(client.lost))
                self.assertEqual(client.events, ["made", "eof", "lost"])
            self.assertFalse(server.is_serving())
            self.assertEqual(silencing_rules(self.lab, self.lab.S), [])

        self.run_async(test)


    def test_serve_forever_cancelled(self) -> None:
        """
        Cancelling serve_forever closes the server.
        """

        async def test() -> None:
            server = await self.listen(ProtocolFactory())
            serving = asyncio.ensure_future(server.serve_forever())
            await asyncio.sleep(0.05)
            with self.assertRaises(RuntimeError):
                await server.serve_forever()
            serving.cancel()
            with self.assertRaises(asyncio.CancelledError):
                await serving
            self.assertFalse(server.is_serving())
            await within(server.wait_closed())
            self.assertEqual(silencing_rules(self.lab, self.lab.S), [])

        self.run_async(test)


class WriteBufferTests(AioLabTestCase):
    """
    Write-buffer limits: the buffer is the capture's shared send backlog.
    """

    def test_limits(self) -> None:
        """
        Limits default to asyncio's and are checked as asyncio checks them;
        with the kernel's send buffer taking every write, nothing waits.
        """

        async def test() -> None:
            await self.listen(ProtocolFactory())
            transport, client = await self.connect(Recorder)
            self.assertEqual(transport.get_write_buffer_limits(), (16 * 1024, 64 * 1024))
            transport.set_write_buffer_limits(high=100)
            self.assertEqual(transport.get_write_buffer_limits(), (25, 100))
            transport.set_write_buffer_limits(low=10)
            self.assertEqual(transport.get_write_buffer_limits(), (10, 40))
            with self.assertRaises(ValueError):
                transport.set_write_buffer_limits(high=10, low=20)
            transport.write(b"x" * 1000)
            self.assertEqual(transport.get_write_buffer_size(), 0)
            self.assertEqual(client.writing, [])

        self.run_async(test)

    def test_congestion_pauses_writing(self) -> None:
        """
        The capture's congestion pauses the protocol's writing; its drain
        resumes it.
        """

        async def test() -> None:
            await self.listen(ProtocolFactory())
            transport, client = await self.connect(Recorder)
            transport.connection.congestion_changed(True)
            transport.connection.congestion_changed(True)
            self.assertEqual(client.writing, ["pause"])
            transport.connection.congestion_changed(False)
            self.assertEqual(client.writing, ["pause", "resume"])

        self.run_async(test)

    def test_backlog_pauses_and_resumes_writing(self) -> None:
        """
        Behind a slow link (a token-bucket qdisc that holds what it cannot
        send yet), the send buffer fills, packets wait in the backlog, and
        the protocol is paused past its high limit and resumed once the
        backlog is down to its low limit.
        """

        async def test() -> None:
            self.lab.run(
                self.lab.C, "tc", "qdisc", "add", "dev", self.lab.client_if, "root",
                "tbf", "rate", "100mbit", "burst", "64kb", "limit", "64mb",
            )
            server = ProtocolFactory()
            await self.listen(server)
            transport, client = await self.connect(Recorder)
            # One datagram first: until the server's scaled window is known
            # (its first segment), the flow holds datagrams back.
            transport.write(b"hello")
            peer = await within(server.new.get())
            await wait_until(lambda: peer.received == [b"hello"])
            transport.set_write_buffer_limits(high=256 * 1024)
            datagram = b"p" * 1400
            written = 0
            while not client.writing and written < 20000:
                transport.write(datagram)
                written += 1
            self.assertEqual(client.writing, ["pause"])
            self.assertGreater(transport.get_write_buffer_size(), 256 * 1024)
            await wait_until(lambda: client.writing == ["pause", "resume"], timeout=20)
            self.assertLessEqual(transport.get_write_buffer_size(), 64 * 1024)
            await wait_until(lambda: len(peer.received) >= written * 0.9, timeout=20)

        self.run_async(test)


class ErrorTests(AioLabTestCase):
    """
    Failures as the OSError subclasses asyncio programs already handle.
    """

    def test_port_in_use(self) -> None:
        """
        Listening twice on one port fails with errno EADDRINUSE.
        """

        async def test() -> None:
            await self.listen(ProtocolFactory())
            with self.assertRaises(OSError) as caught:
                await self.listen(ProtocolFactory())
            self.assertIsInstance(caught.exception, FakeTCPOSError)
            self.assertEqual(caught.exception.errno, errno.EADDRINUSE)
            self.assertIn("port in use", str(caught.exception))
            self.assertEqual(len(silencing_rules(self.lab, self.lab.S)), 1)

        self.run_async(test)

    def test_address_not_available(self) -> None:
        """
        Listening on an address the host does not have: EADDRNOTAVAIL.
        """

        async def test() -> None:
            with self.assertRaises(OSError) as caught:
                await self.listen(ProtocolFactory(), host="198.18.0.77")
            self.assertEqual(caught.exception.errno, errno.EADDRNOTAVAIL)
            self.assertEqual(silencing_rules(self.lab, self.lab.S), [])

        self.run_async(test)

    def test_connection_refused(self) -> None:
        """
        Nobody listening: ConnectionRefusedError, and no rule left behind.
        """

        async def test() -> None:
            with self.assertRaises(ConnectionRefusedError) as caught:
                await self.connect(Recorder)
            self.assertIsInstance(caught.exception, FakeTCPConnectionRefusedError)
            self.assertEqual(caught.exception.errno, errno.ECONNREFUSED)
            self.assertIn(f"{self.lab.server4}:{self.port}", str(caught.exception))
            self.assertEqual(str(caught.exception).count("\n"), 0)
            self.assertEqual(silencing_rules(self.lab, self.lab.C), [])

        self.run_async(test)

    def test_no_route(self) -> None:
        """
        No route to the host: OSError with EHOSTUNREACH (or ENETUNREACH).
        """

        async def test() -> None:
            with self.assertRaises(OSError) as caught:
                await self.connect(Recorder, "198.19.200.1")
            self.assertIn(caught.exception.errno, (errno.EHOSTUNREACH, errno.ENETUNREACH))
            self.assertIn("no route to host", str(caught.exception))

        self.run_async(test)

    def test_timeout(self) -> None:
        """
        A silent host: TimeoutError after the connection's timeout.
        """

        async def test() -> None:
            self.lab.iptables(self.lab.S, "-A", "INPUT", "-p", "tcp", "--dport", str(self.port), "-j", "DROP")
            with self.assertRaises(TimeoutError) as caught:
                await self.connect(Recorder, timeout=1)
            self.assertIsInstance(caught.exception, FakeTCPTimeoutError)
            self.assertEqual(silencing_rules(self.lab, self.lab.C), [])

        self.run_async(test)

    def test_cancelled_connect_leaves_nothing(self) -> None:
        """
        A connection attempt given up with wait_for leaves no rule behind.
        """

        async def test() -> None:
            self.lab.iptables(self.lab.S, "-A", "INPUT", "-p", "tcp", "--dport", str(self.port), "-j", "DROP")
            with self.assertRaises(asyncio.TimeoutError):
                await asyncio.wait_for(self.connect(Recorder), 0.3)
            self.assertEqual(silencing_rules(self.lab, self.lab.C), [])

        self.run_async(test)


class MixedFaceTests(AioLabTestCase):
    """
    The asyncio face against the Twisted face, each in its own process.
    """

    def test_asyncio_client_twisted_server(self) -> None:
        """
        An asyncio client's datagrams come back from a Twisted Echo server;
        its close is ConnectionDone there.
        """

        async def test() -> None:
            peer = await self.spawn_peer(self.lab.S, "server", str(self.port), "0.0.0.0")
            self.assertEqual(await self.peer_event(peer), {"event": "listening", "port": self.port})
            transport, client = await self.connect(Recorder)
            messages = [b"asyncio %d" % n for n in range(20)]
            for message in messages:
                transport.write(message)
            await wait_until(lambda: len(client.received) == len(messages))
            self.assertEqual(client.received, messages)
            transport.close()
            self.assertEqual(await self.peer_event(peer), {"event": "lost", "reason": "ConnectionDone"})
            self.assertIsNone(await within(client.lost))
            await self.peer_exit(peer)

        self.run_async(test)

    def test_asyncio_abort_seen_by_twisted_server(self) -> None:
        """
        An asyncio client's abort is ConnectionLost (not Done) for Twisted.
        """

        async def test() -> None:
            peer = await self.spawn_peer(self.lab.S, "server", str(self.port), "::")
            await self.peer_event(peer)
            transport, client = await self.connect(Recorder, self.lab.server6)
            transport.write(b"six")
            await wait_until(lambda: client.received == [b"six"])
            transport.abort()
            self.assertEqual(await self.peer_event(peer), {"event": "lost", "reason": "ConnectionLost"})
            await self.peer_exit(peer)

        self.run_async(test)

    def test_twisted_client_asyncio_server(self) -> None:
        """
        A Twisted client's datagrams come back from an asyncio echo server;
        its loseConnection is end of file, then connection_lost(None), here.
        """

        async def test() -> None:
            factory = ProtocolFactory(echo=True)
            await self.listen(factory)
            peer = await self.spawn_peer(self.lab.C, "client", self.lab.server4, str(self.port), "20", "close")
            received = await self.peer_event(peer)
            self.assertEqual(received, {"event": "received", "data": [f"twisted {n}" for n in range(20)]})
            self.assertEqual(await self.peer_event(peer), {"event": "lost", "reason": "ConnectionDone"})
            served = factory.built[0]
            self.assertIsNone(await within(served.lost))
            self.assertEqual(served.events, ["made", "eof", "lost"])
            await self.peer_exit(peer)

        self.run_async(test)

    def test_twisted_abort_seen_by_asyncio_server(self) -> None:
        """
        A Twisted client's abortConnection is ConnectionResetError here.
        """

        async def test() -> None:
            factory = ProtocolFactory(echo=True)
            await self.listen(factory, host="::")
            peer = await self.spawn_peer(self.lab.C, "client", self.lab.server6, str(self.port), "3", "abort")
            self.assertEqual(len((await self.peer_event(peer))["data"]), 3)
            self.assertEqual(await self.peer_event(peer), {"event": "lost", "reason": "ConnectionAborted"})
            self.assertIsInstance(await within(factory.built[0].lost), ConnectionResetError)
            await self.peer_exit(peer)

        self.run_async(test)


class ExampleTests(AioLabTestCase):
    """
    The asyncio echo examples work as their docstrings say.
    """

    async def example(self, ns: str, name: str, *arguments: str) -> asyncio.subprocess.Process:
        process = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", ns, sys.executable, os.path.join(CHECKOUT, "examples", name), *arguments,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": CHECKOUT},
        )
        self.stack.push_async_callback(self._reap_example, process)
        return process

    async def _reap_example(self, process: asyncio.subprocess.Process) -> None:
        if process.returncode is None:
            process.kill()
            await process.wait()

    def test_echo_examples(self) -> None:
        """
        The client's datagrams all come back from the server; Ctrl-C stops
        the server cleanly, leaving no rule behind.
        """

        async def test() -> None:
            server = await self.example(self.lab.S, "asyncio_echo_server.py", "--port", str(self.port))
            assert server.stdout is not None and server.stderr is not None
            banner = await within(server.stdout.readline(), 10)
            self.assertEqual(banner.decode().strip(), f"echoing on fake-TCP 0.0.0.0:{self.port}")
            client = await self.example(
                self.lab.C, "asyncio_echo_client.py", self.lab.server4, str(self.port),
                "--count", "5", "--interval", "0.01",
            )
            output, errors = await within(client.communicate(), 15)
            self.assertEqual(client.returncode, 0, errors.decode())
            lines = output.decode().splitlines()
            self.assertEqual(lines[-1], "5 of 5 datagrams echoed")
            self.assertEqual(len([line for line in lines if line.startswith("echo ")]), 5)
            server.send_signal(signal.SIGINT)
            output, errors = await within(server.communicate(), 10)
            self.assertEqual(server.returncode, 0, errors.decode())
            self.assertIn("gone: closed", output.decode())

        self.run_async(test)


def _uvloop_factory() -> asyncio.AbstractEventLoop:
    if uvloop is None:
        raise SkipTest("uvloop is not installed")
    return uvloop.new_event_loop()  # type: ignore[no-any-return]


class UvloopEchoTests(EchoTests):
    """
    L{EchoTests} on uvloop's loop.
    """

    loop_factory = staticmethod(_uvloop_factory)

    def setUp(self) -> None:
        if uvloop is None:
            raise SkipTest("uvloop is not installed")
        super().setUp()


class UvloopClosingTests(ClosingTests):
    """
    L{ClosingTests} on uvloop's loop.
    """

    loop_factory = staticmethod(_uvloop_factory)

    def setUp(self) -> None:
        if uvloop is None:
            raise SkipTest("uvloop is not installed")
        super().setUp()


class UvloopMixedFaceTests(MixedFaceTests):
    """
    L{MixedFaceTests} on uvloop's loop (subprocesses included).
    """

    loop_factory = staticmethod(_uvloop_factory)

    def setUp(self) -> None:
        if uvloop is None:
            raise SkipTest("uvloop is not installed")
        super().setUp()


class ErrorMappingTests(SynchronousTestCase):
    """
    The machinery's errors as asyncio's, without root.
    """

    def test_classes_and_errnos(self) -> None:
        """
        Each problem becomes the OSError subclass asyncio programs catch,
        with the errno a socket would have given.
        """
        expected = {
            Problem.PERMISSION: (FakeTCPPermissionError, PermissionError, errno.EPERM),
            Problem.FIREWALL: (FakeTCPFirewallError, OSError, None),
            Problem.PORT_IN_USE: (FakeTCPOSError, OSError, errno.EADDRINUSE),
            Problem.ADDRESS_NOT_AVAILABLE: (FakeTCPOSError, OSError, errno.EADDRNOTAVAIL),
            Problem.REFUSED: (FakeTCPConnectionRefusedError, ConnectionRefusedError, errno.ECONNREFUSED),
            Problem.NO_ROUTE: (FakeTCPOSError, OSError, errno.EHOSTUNREACH),
            Problem.TIMEOUT: (FakeTCPTimeoutError, TimeoutError, errno.ETIMEDOUT),
            Problem.HANDSHAKE_UNSEEN: (FakeTCPHandshakeNotSeenError, OSError, None),
            Problem.OTHER: (FakeTCPOSError, OSError, None),
        }
        for problem, (kind, builtin, code) in expected.items():
            cause = FakeTCPError(problem)
            made = asyncio_error(cause, "connecting to 198.18.0.2:9")
            self.assertIs(type(made), kind)
            self.assertIsInstance(made, builtin)
            self.assertEqual(made.errno, code)
            self.assertIs(made.cause, cause)
            self.assertEqual(len(str(made).splitlines()), 1)
            self.assertTrue(str(made).endswith(f"{problem.value} (connecting to 198.18.0.2:9)"), str(made))

    def test_socket_errno_kept(self) -> None:
        """
        The errno of the failed socket call wins over the problem's default.
        """
        made = asyncio_error(FakeTCPError.from_errno(errno.ENETUNREACH))
        self.assertEqual(made.errno, errno.ENETUNREACH)
        self.assertEqual(str(made), f"[Errno {errno.ENETUNREACH}] no route to host")

    def test_firewall_detail(self) -> None:
        """
        A problem with details keeps them on its one line, without an errno.
        """
        made = asyncio_error(FakeTCPError(Problem.FIREWALL, "install Debian's iptables package"))
        self.assertEqual(str(made), "cannot install the silencing firewall rule: install Debian's iptables package")

    def test_without_privileges(self) -> None:
        """
        Without CAP_NET_RAW and CAP_NET_ADMIN, listening and connecting fail
        with PermissionError, before any socket or rule is made.
        """
        self.patch(kernel, "has_privileges", lambda: False)

        async def both() -> list[BaseException]:
            failures = []
            for attempt in (
                aio.create_server(asyncio.Protocol, "127.0.0.1", 9191),
                aio.create_connection(asyncio.Protocol, "127.0.0.1", 9191),
            ):
                try:
                    await attempt
                except BaseException as failure:
                    failures.append(failure)
            return failures

        failures = asyncio.run(both())
        self.assertEqual([type(f) for f in failures], [FakeTCPPermissionError, FakeTCPPermissionError])
        self.assertIn("needs root", str(failures[0]))
        self.assertEqual(silencer.installed(), [])

    def test_no_reactor_imported(self) -> None:
        """
        Importing the asyncio face installs no Twisted reactor.
        """
        code = "import sys, faketcp_twisted.aio; print('twisted.internet.reactor' in sys.modules)"
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, cwd=CHECKOUT,
            env={**os.environ, "PYTHONPATH": CHECKOUT},
        )
        self.assertEqual(result.stdout.strip(), "False", result.stderr)
