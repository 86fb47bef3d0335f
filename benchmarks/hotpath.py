"""
Times each step of the per-packet path, for the pure-Python and the C fast
path side by side: checksum, build, parse (with and without checksum
verification), a flow's send and receive, the send syscall (one sendto per
packet against one sendmmsg per batch) and the receive syscall (one
recvmsg per packet against one recvmmsg per batch).

Run from the checkout (the syscall steps need root; they build a two-host
lab of network namespaces and remove it at the end)::

    python benchmarks/hotpath.py                 # everything
    python benchmarks/hotpath.py --no-syscalls   # codec and flow only, no root

Numbers are microseconds per packet (median of several rounds: the machine
is shared and noisy, the median is the steadiest figure).  1200-byte
payloads, as the project's benchmark and udp2raw's anchor figures use.
"""

from __future__ import annotations

import argparse
import functools
import os
import socket
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from faketcp_twisted.core import segment  # noqa: E402
from faketcp_twisted.core.flow import Flow, FlowKey  # noqa: E402
from faketcp_twisted.core.segment import ACK, PSH  # noqa: E402
from faketcp_twisted.io import fastpath  # noqa: E402

PAYLOAD = bytes(range(256)) * 4 + bytes(176)  # 1200 bytes
SRC = socket.inet_pton(socket.AF_INET, "198.18.0.1")
DST = socket.inet_pton(socket.AF_INET, "198.18.0.2")


def per_call(step: Callable[[], object], count: int, rounds: int = 7) -> float:
    """
    Median microseconds of one call of C{step}, over C{rounds} rounds of
    C{count} calls.
    """
    samples = []
    for _ in range(rounds):
        start = time.perf_counter_ns()
        for _ in range(count):
            step()
        samples.append((time.perf_counter_ns() - start) / count / 1000)
    return statistics.median(samples)


def codec_steps(implementation: fastpath.Implementation) -> dict[str, float]:
    """
    Codec and flow steps with one implementation active.
    """
    fastpath.use(implementation)
    template = fastpath.segment_template(SRC, DST, 40000, 9191, 0xFFFF)
    packet = fastpath.build_segment(template, 1000, 2000, PSH | ACK, PAYLOAD)
    parse = fastpath.parse_packet
    build = fastpath.build_segment
    checksum = fastpath.internet_checksum_sum
    results = {
        "checksum 1220 B": per_call(lambda: checksum(packet[20:]), 20000),
        "build (template)": per_call(lambda: build(template, 1000, 2000, PSH | ACK, PAYLOAD), 20000),
        "parse, no verify": per_call(lambda: parse(packet, False), 20000),
        "parse + verify": per_call(lambda: parse(packet, True), 20000),
    }
    key = FlowKey(SRC, 40000, DST, 9191)
    # A window wider than the run, so no send rewinds: the steady state of
    # a flow whose peer acks.
    sender = Flow.from_handshake(key, 1, 2, 1400, 0.0)
    sender.snd_wnd = 1 << 30
    stamped = Flow.from_handshake(key, 1, 2, 1400, 0.0)
    stamped.snd_wnd = 1 << 30
    stamped.use_timestamps(12345, 0.0)

    def send() -> None:
        sender.send(PAYLOAD, 0.0)

    results["Flow.send (state + build)"] = per_call(send, 20000)
    results["Flow.send, timestamps"] = per_call(lambda: stamped.send(PAYLOAD, 0.5), 20000)
    receiver = Flow.from_handshake(FlowKey(DST, 9191, SRC, 40000), 2, 1, 1400, 0.0)
    # A stream of in-order segments, parsed once, fed in a loop.
    segments = []
    peer = Flow.from_handshake(key, 1, 2, 1400, 0.0)
    peer.snd_wnd = 1 << 30
    peer.use_timestamps(12345, 0.0)
    for _ in range(20000):
        segments.append(parse(peer.send(PAYLOAD, 0.0), False))
    feed = iter(segments * 8)
    results["Flow.receive (in order, timestamps)"] = per_call(lambda: receiver.receive(next(feed), 0.0), 20000)
    return results


def legacy_steps() -> dict[str, float]:
    """
    The codec as it was before the fast path: every field packed per packet.
    """
    return {
        "build_packet (per-field)": per_call(
            lambda: segment.build_packet(SRC, DST, 40000, 9191, 1000, 2000, PSH | ACK, 0xFFFF, PAYLOAD), 20000
        ),
    }


def syscall_steps() -> dict[str, dict[str, float]]:
    """
    Send and receive syscalls in a two-host lab: C sends raw segments to S,
    where a capture with the project's filter queues them.
    """
    from faketcp_twisted.io.capture import Capture
    from lab import netlab

    lab = netlab.two_hosts()
    results: dict[str, dict[str, float]] = {"python": {}, "c": {}}
    try:
        # A veth whose peer is down swallows what is routed to it (this
        # kernel has no dummy device): sends there cost the syscall and the
        # OUTPUT path only, no receiver.
        lab.run(lab.C, "ip", "link", "add", "sink", "type", "veth", "peer", "name", "sink-peer")
        lab.run(lab.C, "ip", "link", "set", "sink", "up")
        lab.run(lab.C, "ip", "route", "add", "198.18.99.0/24", "dev", "sink")
        lab.run(lab.C, "ip", "neigh", "add", "198.18.99.1", "lladdr", "02:00:00:00:00:01", "dev", "sink")
        # S has no socket on the port: drop the RSTs its kernel answers
        # with, as the silencing rule would, so they cost no work in C.
        lab.iptables(lab.S, "-A", "OUTPUT", "-p", "tcp", "--sport", "9191", "-j", "DROP")
        with netlab.in_namespace(lab.C):
            sender = Capture(socket.AF_INET, 9191, "src")
        with netlab.in_namespace(lab.S):
            receiver = Capture(socket.AF_INET, 9191, "dst")
        template_sink = fastpath.segment_template(SRC, socket.inet_aton("198.18.99.1"), 40000, 9191, 0xFFFF)
        template_peer = fastpath.segment_template(SRC, DST, 40000, 9191, 0xFFFF)
        batch = 64
        for implementation in fastpath.available():
            fastpath.use(implementation)
            row = results[implementation.name]
            sink = [
                (fastpath.build_segment(template_sink, i, 0, PSH | ACK, PAYLOAD), ("198.18.99.1", 0))
                for i in range(batch)
            ]
            send_to_sink = functools.partial(fastpath.send_batch, sender.sender, sink, 0)
            row["send, no receiver (sendto each | sendmmsg)"] = per_call(send_to_sink, 300) / batch
            peer = [
                (fastpath.build_segment(template_peer, i, 0, PSH | ACK, PAYLOAD), ("198.18.0.2", 0))
                for i in range(batch)
            ]
            # Through the veth to S (whose softirq work runs in this thread:
            # its capture, and IP up to finding no socket), and S's capture
            # queue drained between rounds.
            samples = []
            for _ in range(7):
                start = time.perf_counter_ns()
                for _ in range(20):
                    fastpath.send_batch(sender.sender, peer, 0)
                samples.append((time.perf_counter_ns() - start) / 20 / batch / 1000)
                while fastpath.receive_segments(receiver.capture, 4096)[0]:
                    pass
            row["send over veth to a capture"] = statistics.median(samples)
            # Receive: fill S's capture with 1024 packets, then time draining.
            samples = []
            verified = []
            for _ in range(7):
                for _ in range(16):
                    fastpath.send_batch(sender.sender, peer, 0)
                start = time.perf_counter_ns()
                got = 0
                while True:
                    segments, _keys, bad = fastpath.receive_segments(receiver.capture, 256)
                    if not segments and not bad:
                        break
                    got += len(segments)
                    verified.append(len(bad))
                samples.append((time.perf_counter_ns() - start) / max(got, 1) / 1000)
            row["receive+parse+verify (recvmsg_into | recvmmsg)"] = statistics.median(samples)
        results["kernel"] = kernel_work(lab, sender)
        sender.close()
        receiver.close()
    finally:
        lab.destroy()
    return results


def kernel_work(lab: Any, sender: Any) -> dict[str, float]:
    """
    What a fake segment costs the receiving kernel's TCP stack, before and
    after the kernel socket is muted (L{demux.mute}).

    A real TCP connection from C to S, its server socket silenced as the
    project does (an OUTPUT rule drops its segments), then fake segments
    sent from C on its 4-tuple, far outside the socket's window.  On veth
    the receiver's softirq runs in the sender's syscall, so the sender's
    time per packet includes S's whole receive path.
    """
    from faketcp_twisted.engine.demux import mute
    from lab import netlab

    fastpath.use(fastpath.C or fastpath.PYTHON)
    lab.iptables(lab.S, "-A", "OUTPUT", "-p", "tcp", "--sport", "9192", "!", "--tcp-flags", "SYN", "SYN", "-j", "DROP")
    with netlab.in_namespace(lab.S):
        listener = socket.socket()
        listener.bind((lab.server4, 9192))
        listener.listen()
    with netlab.in_namespace(lab.C):
        client = socket.create_connection((lab.server4, 9192))
    server, _ = listener.accept()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    local_port = client.getsockname()[1]
    template = fastpath.segment_template(SRC, DST, local_port, 9192, 0xFFFF)
    batch = [
        (fastpath.build_segment(template, (1 << 31) + i * 1200, 0, PSH | ACK, PAYLOAD), ("198.18.0.2", 0))
        for i in range(64)
    ]
    results = {}
    for label in ("unmuted", "muted", "muted, raw-table drop"):
        if label == "muted":
            mute(server)
        if label == "muted, raw-table drop":
            # What a raw-table PREROUTING rule would save on top: the IP
            # input path (routing, INPUT hook, socket lookup) as well.
            lab.iptables(
                lab.S, "-t", "raw", "-A", "PREROUTING", "-p", "tcp", "--dport", "9192",
                "--tcp-flags", "SYN,RST,FIN,PSH", "PSH", "-j", "DROP",
            )  # fmt: skip
        samples = []
        for _ in range(7):
            start = time.perf_counter_ns()
            for _ in range(20):
                fastpath.send_batch(sender.sender, batch, 0)
            samples.append((time.perf_counter_ns() - start) / 20 / 64 / 1000)
        results[f"send to a silenced socket, {label}"] = statistics.median(samples)
    for each in (client, server, listener):
        each.close()
    return results


def loop_costs() -> dict[str, float]:
    """
    What scheduling a flush costs on each loop: the price of batching sends
    per reactor turn instead of one sendto per packet.
    """
    import asyncio

    from twisted.internet import reactor as installed

    reactor: Any = installed

    def nothing() -> None:
        pass

    results = {"Twisted callLater(0) + cancel": per_call(lambda: reactor.callLater(0, nothing).cancel(), 20000)}
    loop = asyncio.new_event_loop()
    results["asyncio call_later(0) + cancel"] = per_call(lambda: loop.call_later(0, nothing).cancel(), 20000)
    loop.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-syscalls", action="store_true", help="skip the steps that need root")
    options = parser.parse_args()
    table: dict[str, dict[str, float]] = {}
    for implementation in fastpath.available():
        for step, value in codec_steps(implementation).items():
            table.setdefault(step, {})[implementation.name] = value
    for step, value in legacy_steps().items():
        table.setdefault(step, {})["python"] = value
    if not options.no_syscalls and os.geteuid() == 0:
        for name, row in syscall_steps().items():
            for step, value in row.items():
                table.setdefault(step, {})[
                    "c" if name == "kernel" and fastpath.C else "python" if name == "kernel" else name
                ] = value
    for step, value in loop_costs().items():
        table.setdefault(step, {})["python"] = value
    print(f"{'step (us per packet, median)':52} {'python':>9} {'c':>9}")
    for step, row in table.items():
        cells = [f"{row[name]:9.2f}" if name in row else f"{'-':>9}" for name in ("python", "c")]
        print(f"{step:52} {' '.join(cells)}")


if __name__ == "__main__":
    main()
