"""
Counts what the kernel's TCP does with a flow's fake segments: an Echo-free
one-way stream of 20,000 datagrams over fake-TCP between the two hosts of a
lab, with the server's TCP counters (nstat) and the silencing rule's drop
counter read before and after.

Run as root from the checkout::

    python benchmarks/kernel_acks.py            # kernel sockets muted (the default)
    python benchmarks/kernel_acks.py --no-mute  # as before: not muted

Unmuted, the server's kernel answers every segment with a duplicate ACK
(Tcp OutSegs grows by one per segment) that the silencing rule then drops;
muted (L{faketcp_twisted.engine.demux.mute}), it sends nothing and the rule drops
nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import defer, task  # noqa: E402
from twisted.internet.endpoints import clientFromString, serverFromString  # noqa: E402
from twisted.internet.protocol import Factory, Protocol  # noqa: E402

from faketcp_twisted.engine import demux  # noqa: E402
from lab import netlab  # noqa: E402

COUNT = 20000
COUNTERS = ("TcpInSegs", "TcpOutSegs", "TcpExtTCPACKSkippedSeq", "TcpExtTCPRcvQDrop")


class Counter(Protocol):
    """
    Counts the datagrams it receives.
    """

    received = 0

    def dataReceived(self, data: bytes) -> None:
        Counter.received += 1


def nstat(lab: netlab.Lab, ns: str) -> dict[str, int]:
    """
    The absolute values of the kernel's network counters in C{ns}.
    """
    found = {}
    for line in lab.run(ns, "nstat", "-az").stdout.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[1].isdigit():
            found[fields[0]] = int(fields[1])
    return found


def rule_drops(lab: netlab.Lab, ns: str) -> int:
    """
    Packets the project's OUTPUT rules in C{ns} dropped so far.
    """
    lines = lab.run(ns, "iptables-legacy", "-L", "OUTPUT", "-v", "-n", "-x").stdout.splitlines()
    return sum(int(line.split()[0]) for line in lines[2:] if "faketcp_twisted" in line)


@defer.inlineCallbacks
def measure(reactor: Any, mute: bool) -> Any:
    if not mute:
        demux.mute = lambda sock: False
    lab = netlab.two_hosts()
    try:
        with netlab.in_namespace(lab.S):
            port = yield serverFromString(reactor, "faketcp:9191:interface=0.0.0.0").listen(
                Factory.forProtocol(Counter)
            )
        with netlab.in_namespace(lab.C):
            client = yield clientFromString(reactor, f"faketcp:host={lab.server4}:port=9191").connect(
                Factory.forProtocol(Protocol)
            )
        yield task.deferLater(reactor, 0.3, lambda: None)
        before, dropped = nstat(lab, lab.S), rule_drops(lab, lab.S)
        datagram = b"x" * 1200
        for _ in range(COUNT // 50):
            for _ in range(50):
                client.transport.write(datagram)
            yield task.deferLater(reactor, 0.0005, lambda: None)
        yield task.deferLater(reactor, 1.0, lambda: None)
        after, dropped = nstat(lab, lab.S), rule_drops(lab, lab.S) - dropped
        print(f"kernel sockets {'muted' if mute else 'not muted'}: {Counter.received} of {COUNT} datagrams delivered")
        for name in COUNTERS:
            print(f"  server {name:26} +{after.get(name, 0) - before.get(name, 0)}")
        print(f"  server {'silencing-rule drops':26} +{dropped}")
        client.transport.abortConnection()
        yield port.stopListening()
        yield task.deferLater(reactor, 0.2, lambda: None)
    finally:
        lab.destroy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-mute", action="store_true", help="leave the kernel sockets unmuted")
    options = parser.parse_args()
    task.react(measure, [not options.no_mute])


if __name__ == "__main__":
    main()
