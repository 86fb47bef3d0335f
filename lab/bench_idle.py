# -*- test-case-name: tests.test_bench -*-
"""
The benchmark's idle-flow holder: many fake-TCP client connections to one
server, each of which sends one datagram, waits for its echo and then stays
silent (but for keepalives, as a relay client's flows do).

The benchmark starts it in the client namespace and drives it through
stdin, one command a line, so that it can measure the server with few
flows and then with many from the same holder (the holder's capture sees
the active flow's packets too, and costs the same either way)::

    python -m lab.bench_idle --host 198.18.0.2 --port 27122
    open 1        -> {"open": 1, "live": 1, "failed": 0, "retried": 0, ...}
    open 9999     -> {"open": 10000, ...}

Every answer is one JSON line on stdout.  The holder exits when stdin
closes or on SIGTERM; the namespace it lives in goes with the benchmark.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from typing import Any, NoReturn

from twisted.internet import defer, stdio, task
from twisted.internet.endpoints import clientFromString
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from faketcp_twisted.tx.transport import FakeTCPTransport

#: Connection attempts in flight at once: enough to open 10,000 flows in
#: seconds, and half of what a faketcp server keeps half-open per remote
#: address (its flow table's C{embryos_per_address}, 64): more, and it
#: drops handshakes from this one address as a flood.
CONCURRENCY = 32

#: Seconds a new flow waits for the echo of its one datagram.
REPLY_TIMEOUT = 5.0

#: Connection attempts per flow.
ATTEMPTS = 3


class IdleFlow(Protocol):
    """
    Sends one datagram when connected, notes its echo, then says nothing.
    """

    def __init__(self, holder: Holder) -> None:
        self.holder = holder
        self.replied: defer.Deferred[None] = defer.Deferred()
        self.given_up = False

    def connectionMade(self) -> None:
        self.holder.live += 1
        self._transport().write(b"idle flow hello")

    def dataReceived(self, data: bytes) -> None:
        if not self.replied.called:
            self.replied.callback(None)

    def _transport(self) -> FakeTCPTransport:
        # What the faketcp: endpoint connects this protocol to.
        transport = self.transport
        assert isinstance(transport, FakeTCPTransport)
        return transport

    def give_up(self) -> None:
        """
        End a flow whose hello was never echoed.
        """
        self.given_up = True
        self._transport().abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.holder.live -= 1
        if not self.given_up:
            self.holder.lost += 1


class Holder:
    """
    Opens flows on command and keeps those the server answers.

    A flow whose hello is not echoed is given up and opened again (up to
    L{ATTEMPTS} times): the server may have dropped its handshake (a busy
    server sheds half-open connections) while this side took the
    connection as made, and such a flow would count here but not there.
    """

    def __init__(self, reactor: Any, host: str, port: int, keepalive: float) -> None:
        self.reactor = reactor
        self.endpoint = clientFromString(
            reactor, f"faketcp:host={host}:port={port}:timeout=30:keepalive={keepalive:g}"
        )
        self.flows: list[IdleFlow] = []
        self.live = 0
        self.lost = 0
        self.failed = 0
        self.retried = 0
        self.errors: dict[str, int] = {}

    async def _attempt(self, semaphore: defer.DeferredSemaphore) -> IdleFlow | None:
        await semaphore.acquire()
        try:
            flow: IdleFlow = await self.endpoint.connect(Factory.forProtocol(lambda: IdleFlow(self)))
        except Exception as failure:
            name = type(failure).__name__
            self.errors[name] = self.errors.get(name, 0) + 1
            return None
        finally:
            semaphore.release()
        try:
            await flow.replied.addTimeout(REPLY_TIMEOUT, self.reactor)
        except defer.TimeoutError:
            self.errors["unanswered"] = self.errors.get("unanswered", 0) + 1
            flow.give_up()
            return None
        return flow

    async def _open_one(self, semaphore: defer.DeferredSemaphore) -> None:
        for attempt in range(ATTEMPTS):
            if attempt:
                self.retried += 1
            flow = await self._attempt(semaphore)
            if flow is not None:
                self.flows.append(flow)
                return
        self.failed += 1

    async def open(self, count: int) -> dict[str, Any]:
        """
        Open C{count} more flows and wait until each is answered or given up.
        """
        started = time.monotonic()
        semaphore = defer.DeferredSemaphore(CONCURRENCY)
        await defer.gatherResults(
            [defer.ensureDeferred(self._open_one(semaphore)) for _ in range(count)]
        )
        return {
            "open": len(self.flows),
            "live": self.live,
            "lost": self.lost,
            "failed": self.failed,
            "retried": self.retried,
            "errors": self.errors,
            "seconds": time.monotonic() - started,
        }


class Commands(LineReceiver):
    """
    Reads C{open K} lines from stdin and answers each with a JSON line.
    """

    delimiter = b"\n"

    def __init__(self, holder: Holder, done: defer.Deferred[None]) -> None:
        self.holder = holder
        self.done = done
        self.queue: defer.Deferred[None] = defer.succeed(None)

    def lineReceived(self, line: bytes) -> None:
        words = line.decode().split()
        if len(words) != 2 or words[0] != "open" or not words[1].isdigit():
            self._reply({"error": f"unknown command {line!r}"})
            return
        count = int(words[1])
        # One command at a time, in order.
        self.queue.addCallback(lambda _: defer.ensureDeferred(self._open(count)))

    async def _open(self, count: int) -> None:
        self._reply(await self.holder.open(count))

    def _reply(self, answer: dict[str, Any]) -> None:
        # Twisted's LineReceiver.sendLine is not annotated.
        self.sendLine(json.dumps(answer).encode())  # type: ignore[no-untyped-call]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.done.called:
            self.done.callback(None)


def _raise_file_limit(needed: int) -> None:
    """
    Every flow holds a kernel socket: 10,000 flows need more descriptors
    than the usual soft limit of 1024.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, max(hard, needed)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str] | None = None) -> NoReturn:
    """
    Hold flows to C{--host}:C{--port} until stdin closes, then exit.
    """
    parser = argparse.ArgumentParser(prog="python -m lab.bench_idle", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--keepalive", type=float, default=10.0, help="keepalive interval of each flow, as a relay client's (0: none)"
    )
    parser.add_argument("--max-flows", type=int, default=100_000, help="descriptors to reserve")
    args = parser.parse_args(argv)
    _raise_file_limit(args.max_flows + 1024)

    def run(reactor: Any) -> defer.Deferred[None]:
        done: defer.Deferred[None] = defer.Deferred()
        holder = Holder(reactor, args.host, args.port, args.keepalive)
        stdio.StandardIO(Commands(holder, done), reactor=reactor)
        return done

    task.react(run)


if __name__ == "__main__":
    main()
