"""
Hostile traffic for the hardening tests (C{tests.test_hardening}): IPv4
packets built byte by byte and sent on an interface with an C{AF_PACKET}
socket, so nothing in the sender's kernel fixes them up (a raw IP socket
would rewrite the total length and the header checksum, and refuse short
packets).  It runs in a process of its own, in the client's namespace::

    python -m tests.junk MODE IFACE DEST_MAC JSON_ARGUMENTS

and prints one JSON object when done: how many packets of each class it
sent.  Modes (arguments in the JSON object):

  - C{fuzz}: C{count} packets of every class in L{CLASSES} (malformed,
    filtered by the kernel, valid segments of random 4-tuples, valid
    segments of the live 4-tuple with sequence numbers far from its
    window), at C{rate} packets per second.
  - C{synflood}: C{count} SYNs from the addresses in C{sources}, random
    ports and initial sequence numbers.
  - C{orphans}: C{count} valid non-SYN segments (ACK, data, FIN, RST) of
    random 4-tuples from C{source}.
  - C{inject}: the segments listed in C{segments} (each a dict of
    C{sport}, C{seq}, C{ack}, C{flags}, C{payload} in hex), on the
    4-tuple of C{source} and C{port}.
  - C{blind}: C{count} segments with C{flags} on the 4-tuple of C{sport},
    random sequence numbers, and C{ack} or random acks (see L{blind}).

Every mode sends to C{server}:C{port}; C{avoid_sport} is never used as a
random source port (it is the live flow's).
"""

from __future__ import annotations

import json
import random
import socket
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator

from faketcp_twisted.core.segment import ACK, FIN, PSH, RST, SYN, URG, internet_checksum_sum, tcp_checksum

ETH_P_IP = 0x0800
_IP = struct.Struct("!BBHHHBBH4s4s")
_TCP = struct.Struct("!HHIIBBHHH")

#: What each fuzz class is expected to become at the server: a
#: L{MalformedSegment} reason (counted by the demultiplexer), C{"filtered"}
#: (refused by the capture's kernel BPF filter, so never seen by Python),
#: C{"table"} (a valid segment of no flow: a flow table drop reason) or
#: C{"flow"} (a valid segment of the live flow that its acceptance checks
#: refuse).
CLASSES: dict[str, str] = {
    "truncated": "truncated",
    "bad-total-long": "bad-length",
    "bad-total-short": "bad-length",
    "bad-offset": "bad-length",
    "ip-options": "ip-options",
    "bad-checksum": "bad-checksum",
    "fragment": "filtered",
    "not-tcp": "filtered",
    "bad-version": "filtered",
    "runt": "filtered",
    "other-port": "filtered",
    "random-tuple": "table",
    "odd-options": "table",
    "random-tuple-syn": "table-syn",
    "odd-options-syn": "table-syn",
    "live-tuple": "flow",
}
#: The classes C{fuzz} draws from; a segment of a random 4-tuple that
#: opens a handshake (SYN without ACK or RST) is reported under the class
#: name plus C{-syn}, since it makes an embryo rather than a drop.
FUZZ_KINDS = [kind for kind in CLASSES if not kind.endswith("-syn")]


class Builder:
    """
    Builds IPv4 packets from C{source} (or spoofed sources) to the server.
    """

    def __init__(self, rng: random.Random, source: str, server: str, port: int) -> None:
        self.rng = rng
        self.source = socket.inet_aton(source)
        self.server = socket.inet_aton(server)
        self.port = port

    def ip(
        self,
        payload: bytes,
        src: bytes | None = None,
        proto: int = socket.IPPROTO_TCP,
        options: bytes = b"",
        total: int | None = None,
        frag: int = 0x4000,
        version: int = 4,
    ) -> bytes:
        """
        An IPv4 header (with a correct header checksum unless a field is
        deliberately wrong) and C{payload}.
        """
        ihl = 5 + len(options) // 4
        length = 20 + len(options) + len(payload) if total is None else total
        header = _IP.pack(
            (version << 4) | ihl, 0, length & 0xFFFF, self.rng.getrandbits(16), frag, 64, proto, 0,
            src or self.source, self.server,
        ) + options  # fmt: skip
        checksum = 0xFFFF - internet_checksum_sum(header)
        return header[:10] + struct.pack("!H", checksum) + header[12:] + payload

    def tcp(
        self,
        sport: int,
        seq: int,
        ack: int,
        flags: int,
        payload: bytes = b"",
        options: bytes = b"",
        src: bytes | None = None,
        dport: int | None = None,
        offset: int | None = None,
        corrupt: bool = False,
    ) -> bytes:
        """
        A TCP segment with a valid checksum (or a wrong one with
        C{corrupt}); C{offset} overrides the data offset field.
        """
        words = 5 + len(options) // 4 if offset is None else offset
        header = _TCP.pack(
            sport, self.port if dport is None else dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
            words << 4, flags, self.rng.getrandbits(16), 0, 0,
        ) + options  # fmt: skip
        checksum = tcp_checksum(src or self.source, self.server, header, payload)
        if corrupt:
            checksum ^= 1 + self.rng.getrandbits(15)
        return header[:16] + struct.pack("!H", checksum) + header[18:] + payload

    def random_port(self, avoid: int) -> int:
        port = avoid
        while port == avoid:
            port = self.rng.randrange(1024, 65536)
        return port

    def random_flags(self) -> int:
        return self.rng.choice([SYN, ACK, PSH | ACK, FIN | ACK, RST, RST | ACK, SYN | ACK, 0, URG | ACK]) | (
            self.rng.getrandbits(8) if self.rng.random() < 0.2 else 0
        )

    def payload(self) -> bytes:
        return self.rng.randbytes(self.rng.choice([0, 0, 1, 20, 100, 1000]))


def odd_options(rng: random.Random) -> bytes:
    """
    TCP option bytes no sane stack sends: zero or overlong lengths, unknown
    kinds, truncated timestamps; padded to a multiple of four.
    """
    choices = [
        b"\x02\x00",  # MSS with length 0
        b"\x03\xff\x07",  # window scale claiming 255 bytes
        b"\x08\x03\x00",  # timestamp cut short
        bytes([rng.randrange(9, 256), rng.randrange(0, 40)]),
        b"\x01" * rng.randrange(1, 8),
        b"\x00",
        rng.randbytes(rng.randrange(1, 20)),
    ]
    raw = b"".join(rng.choice(choices) for _ in range(rng.randrange(1, 5)))[:40]
    return raw + b"\x00" * (-len(raw) % 4)


def far_seq(rng: random.Random, center: int, radius: int) -> int:
    """
    A sequence number at least C{radius} away from C{center} either way.
    """
    return (center + radius + rng.randrange(0, (1 << 32) - 2 * radius)) & 0xFFFFFFFF


def fuzz(builder: Builder, arguments: dict[str, object]) -> Iterator[tuple[str, bytes]]:
    """
    C{count} packets of every class, interleaved at random.
    """
    rng = builder.rng
    count = int(arguments["count"])  # type: ignore[arg-type]
    live_sport = int(arguments["live_sport"])  # type: ignore[arg-type]
    center = int(arguments["live_seq"])  # type: ignore[arg-type]
    radius = int(arguments.get("radius", 1 << 26))  # type: ignore[arg-type]
    last_flags = [0]

    def random_segment(options: bytes = b"", corrupt: bool = False) -> bytes:
        flags = last_flags[0] = builder.random_flags()
        return builder.tcp(
            builder.random_port(live_sport), rng.getrandbits(32), rng.getrandbits(32),
            flags, builder.payload(), options=options, corrupt=corrupt,
        )  # fmt: skip

    makers: dict[str, Callable[[], bytes]] = {
        "truncated": lambda: builder.ip(random_segment()[: rng.randrange(4, 20)]),
        "bad-total-long": lambda: builder.ip(random_segment(), total=20 + 20 + 1 + rng.randrange(0, 3000) + 1100),
        "bad-total-short": lambda: builder.ip(random_segment(), total=rng.randrange(0, 20)),
        "bad-offset": lambda: builder.ip(
            builder.tcp(builder.random_port(live_sport), 1, 1, ACK, rng.randbytes(rng.randrange(0, 8)),
                        offset=rng.choice([0, 1, 2, 3, 4, 14, 15]))  # fmt: skip
        ),
        "ip-options": lambda: builder.ip(
            random_segment(),
            options=rng.choice([b"\x01\x01\x01\x00", b"\x94\x04\x00\x00", rng.randbytes(4 * rng.randrange(1, 11))]),
        ),
        "bad-checksum": lambda: builder.ip(random_segment(corrupt=True)),
        "fragment": lambda: builder.ip(
            random_segment(), frag=rng.choice([0x2000, 0x2000 | rng.randrange(1, 0x1FFF), rng.randrange(1, 0x1FFF)])
        ),
        "not-tcp": lambda: builder.ip(
            random_segment(), proto=rng.choice([socket.IPPROTO_UDP, socket.IPPROTO_ICMP, 0, 255])
        ),
        "bad-version": lambda: builder.ip(random_segment(), version=rng.choice([0, 5, 6, 7, 15])),
        "runt": lambda: builder.ip(b"")[: rng.randrange(1, 20)],
        "other-port": lambda: builder.ip(
            builder.tcp(rng.randrange(1024, 65536), rng.getrandbits(32), 0, SYN, dport=builder.port + 1)
        ),
        "random-tuple": lambda: builder.ip(random_segment()),
        "odd-options": lambda: builder.ip(random_segment(options=odd_options(rng))),
        "live-tuple": lambda: builder.ip(
            builder.tcp(live_sport, far_seq(rng, center, radius), rng.getrandbits(32), builder.random_flags(),
                        builder.payload(), options=odd_options(rng) if rng.random() < 0.2 else b"")  # fmt: skip
        ),
    }
    order = [kind for kind in FUZZ_KINDS for _ in range(count)]
    rng.shuffle(order)
    for kind in order:
        packet = makers[kind]()
        if kind in ("random-tuple", "odd-options") and last_flags[0] & (SYN | ACK | RST) == SYN:
            kind += "-syn"
        yield kind, packet


def synflood(builder: Builder, arguments: dict[str, object]) -> Iterator[tuple[str, bytes]]:
    """
    SYNs from many source addresses.
    """
    rng = builder.rng
    sources = [socket.inet_aton(text) for text in arguments["sources"]]  # type: ignore[union-attr]
    avoid = int(arguments.get("avoid_sport", 0))  # type: ignore[arg-type]
    for _ in range(int(arguments["count"])):  # type: ignore[arg-type]
        src = rng.choice(sources)
        # An MSS and window-scale option, as real SYNs carry.
        options = b"\x02\x04\x05\xb4\x03\x03\x07\x00"
        yield (
            "syn",
            builder.ip(
                builder.tcp(builder.random_port(avoid), rng.getrandbits(32), 0, SYN, options=options, src=src), src=src
            ),
        )


def orphans(builder: Builder, arguments: dict[str, object]) -> Iterator[tuple[str, bytes]]:
    """
    Valid segments of 4-tuples nobody has, without SYN.
    """
    rng = builder.rng
    avoid = int(arguments.get("avoid_sport", 0))  # type: ignore[arg-type]
    for _ in range(int(arguments["count"])):  # type: ignore[arg-type]
        flags = rng.choice([ACK, PSH | ACK, FIN | ACK, RST, RST | ACK])
        payload = rng.randbytes(rng.choice([0, 64, 1000])) if flags & PSH else b""
        yield (
            "orphan",
            builder.ip(
                builder.tcp(builder.random_port(avoid), rng.getrandbits(32), rng.getrandbits(32), flags, payload)
            ),
        )


def inject(builder: Builder, arguments: dict[str, object]) -> Iterator[tuple[str, bytes]]:
    """
    Exactly the segments asked for.
    """
    for each in arguments["segments"]:  # type: ignore[union-attr]
        yield (
            str(each.get("name", "inject")),
            builder.ip(
                builder.tcp(
                    int(each["sport"]),
                    int(each["seq"]),
                    int(each["ack"]),
                    int(each["flags"]),
                    bytes.fromhex(each.get("payload", "")),
                )
            ),
        )


def blind(builder: Builder, arguments: dict[str, object]) -> Iterator[tuple[str, bytes]]:
    """
    C{count} segments on the 4-tuple of C{sport} with C{flags}, random
    sequence numbers, C{ack} (random when absent), and the payload
    C{"blind NNNNN"} (the segment's index) when C{flags} has PSH.
    """
    rng = builder.rng
    sport = int(arguments["sport"])  # type: ignore[arg-type]
    flags = int(arguments["flags"])  # type: ignore[arg-type]
    known = arguments.get("ack")
    for index in range(int(arguments["count"])):  # type: ignore[arg-type]
        ack = rng.getrandbits(32) if known is None else int(known)  # type: ignore[arg-type]
        payload = b"blind %05d" % index if flags & PSH else b""
        yield "blind", builder.ip(builder.tcp(sport, rng.getrandbits(32), ack, flags, payload))


MODES = {"fuzz": fuzz, "synflood": synflood, "orphans": orphans, "inject": inject, "blind": blind}


def send_all(
    sock: socket.socket, address: tuple[str, int, int, int, bytes], packets: Iterator[tuple[str, bytes]], rate: float
) -> Counter[str]:
    """
    Send C{packets} at about C{rate} per second (in bursts every 10 ms),
    counting them by class.  A full send buffer is waited out, not skipped.
    """
    sent: Counter[str] = Counter()
    burst = max(1, int(rate / 100))
    start = time.monotonic()
    done = 0
    for kind, packet in packets:
        while True:
            try:
                sock.sendto(packet, address)
                break
            except BlockingIOError:
                time.sleep(0.001)
        sent[kind] += 1
        done += 1
        if done % burst == 0:
            ahead = start + done / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    return sent


def main(argv: list[str]) -> None:
    mode, interface, mac, raw = argv
    arguments = json.loads(raw)
    rng = random.Random(arguments.get("seed", 4))
    builder = Builder(rng, str(arguments["source"]), str(arguments["server"]), int(arguments["port"]))
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    address = (interface, ETH_P_IP, 0, 0, bytes.fromhex(mac.replace(":", "")))
    started = time.monotonic()
    sent = send_all(sock, address, MODES[mode](builder, arguments), float(arguments.get("rate", 20000)))
    sock.close()
    print(json.dumps({"sent": dict(sent), "seconds": time.monotonic() - started}))


if __name__ == "__main__":
    main(sys.argv[1:])
