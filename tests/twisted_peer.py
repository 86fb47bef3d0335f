"""
A Twisted fake-TCP peer in a process of its own, for the tests that mix the
asyncio face with the Twisted one (trial already runs a Twisted reactor in
the test process, and an asyncio loop cannot share its thread).  Run it in a
lab namespace with C{ip netns exec}::

    python -m tests.twisted_peer server PORT INTERFACE
    python -m tests.twisted_peer client HOST PORT COUNT close|abort

It prints one JSON object per line on stdout: C{{"event": "listening",
"port": N}}, C{{"event": "received", "data": [...]}} (a client's echoes),
C{{"event": "lost", "reason": "ConnectionDone"}} (each connection's end).
A server runs until its standard input closes, then resets its connections,
stops listening and exits once its captures and rules are gone.  A client
sends COUNT datagrams, waits for their echoes (5 s at most), closes with FIN
or RST, and exits when its connection is over.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from twisted.internet import defer, reactor, stdio, task
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.wire import Echo


def report(**event: Any) -> None:
    """
    Print one event as a JSON line, at once (the test reads it live).
    """
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


class ReportingEcho(Echo):
    """
    Echo, reporting how each connection ended.
    """

    def connectionLost(self, reason: Any = None) -> None:
        report(event="lost", reason=type(reason.value).__name__)


class StopOnEOF(Protocol):
    """
    Standard input: its end is the test's signal to stop.
    """

    def __init__(self) -> None:
        self.closed: defer.Deferred[None] = defer.Deferred()

    def connectionLost(self, reason: Any = None) -> None:
        self.closed.callback(None)


class Counter(Protocol):
    """
    Collects echoes; reports its end.
    """

    def __init__(self) -> None:
        self.received: list[str] = []
        self.lost: defer.Deferred[str] = defer.Deferred()
        self.transport: Any = None

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data.decode())

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(type(reason.value).__name__)


async def serve(port: int, interface: str) -> None:
    description = f"faketcp:{port}:interface={interface.replace(':', chr(92) + ':')}"
    listening = await serverFromString(reactor, description).listen(Factory.forProtocol(ReportingEcho))
    report(event="listening", port=listening.port)
    stdin = StopOnEOF()
    stdio.StandardIO(stdin)
    await stdin.closed
    listening.abortConnections()
    await listening.stopListening()
    # Let the aborted connections' time-wait end with the port's captures.
    await task.deferLater(reactor, 0.1)


async def connect(host: str, port: int, count: int, ending: str) -> None:
    description = f"faketcp:host={host.replace(':', chr(92) + ':')}:port={port}:timeout=5"
    counter = Counter()
    await clientFromString(reactor, description).connect(Factory.forProtocol(lambda: counter))
    for n in range(count):
        counter.transport.write(b"twisted %d" % n)
    for _ in range(250):
        if len(counter.received) >= count:
            break
        await task.deferLater(reactor, 0.02)
    report(event="received", data=counter.received)
    if ending == "abort":
        counter.transport.abortConnection()
    else:
        counter.transport.loseConnection()
    report(event="lost", reason=await counter.lost)


def main(argv: list[str]) -> None:
    if argv[0] == "server":
        work = serve(int(argv[1]), argv[2])
    else:
        work = connect(argv[1], int(argv[2]), int(argv[3]), argv[4])
    # react() stops the reactor when the work is done, and exits non-zero
    # (with the traceback on stderr) when it failed.
    task.react(lambda _reactor: defer.ensureDeferred(work))


if __name__ == "__main__":
    main(sys.argv[1:])
