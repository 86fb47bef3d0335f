"""
An asyncio client for the echo server: sends numbered datagrams over
fake-TCP, prints each echo's round trip, then closes (FIN).

Run as root, with the package installed (or PYTHONPATH=.)::

    python examples/asyncio_echo_client.py HOST [PORT] [--count 10] [--interval 0.2] [--uvloop]

Nothing is retransmitted: a datagram lost on the way is simply missing
from the count at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from faketcp_twisted import aio


class Pinger(asyncio.Protocol):
    """
    Sends numbered datagrams and times their echoes.
    """

    def __init__(self) -> None:
        self.sent_at: dict[int, float] = {}
        self.echoed = 0
        self.lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def ping(self, number: int) -> None:
        self.sent_at[number] = time.perf_counter()
        self.transport.write(b"ping %d" % number)

    def data_received(self, data: bytes) -> None:
        number = int(data.split()[1])
        rtt = (time.perf_counter() - self.sent_at[number]) * 1000
        self.echoed += 1
        print(f"echo {number}: {rtt:.2f} ms", flush=True)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.set_result(exc)


async def ping(host: str, port: int, count: int, interval: float) -> None:
    transport, pinger = await aio.create_connection(Pinger, host, port, timeout=5)
    print(f"connected to {host}:{port} from {transport.get_extra_info('sockname')[:2]}", flush=True)
    for number in range(count):
        pinger.ping(number)
        await asyncio.sleep(interval)
    await asyncio.sleep(0.5)  # the last echoes
    transport.close()
    await pinger.lost
    print(f"{pinger.echoed} of {count} datagrams echoed", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("host", help="the server's IP address or name")
    parser.add_argument("port", type=int, nargs="?", default=9191)
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between datagrams")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    arguments = parser.parse_args()
    loop_factory = None
    if arguments.uvloop:
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(ping(arguments.host, arguments.port, arguments.count, arguments.interval))


if __name__ == "__main__":
    main()
