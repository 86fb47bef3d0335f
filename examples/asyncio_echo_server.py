"""
An asyncio echo server over fake-TCP: every datagram goes back to its
sender, as one datagram.

Run as root (fake-TCP needs raw sockets and a firewall rule), with the
package installed (or from the checkout with PYTHONPATH=.)::

    python examples/asyncio_echo_server.py [--host 0.0.0.0] [--port 9191] [--uvloop]

Ctrl-C stops it: its connections are reset, so their peers learn at once,
and its captures and firewall rules are gone when it exits.
"""

from __future__ import annotations

import argparse
import asyncio

from faketcp_twisted import aio


class Echo(asyncio.Protocol):
    """
    Writes every datagram back.
    """

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.peer = transport.get_extra_info("peername")
        print(f"{self.peer[0]}:{self.peer[1]} connected", flush=True)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        # None: closed (FIN) or aborted here; ConnectionResetError: the peer
        # aborted (RST); TimeoutError: nothing from the peer for too long.
        print(f"{self.peer[0]}:{self.peer[1]} gone: {exc or 'closed'}", flush=True)


async def serve(host: str, port: int) -> None:
    server = await aio.create_server(Echo, host=host, port=port)
    print(f"echoing on fake-TCP {host}:{server.port}", flush=True)
    try:
        await asyncio.Event().wait()  # until Ctrl-C
    finally:
        server.close()
        server.abort_clients()
        # Returns once every connection has ended and the rules are removed.
        await server.wait_closed()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--host", default="0.0.0.0", help="local address (:: for every address)")
    parser.add_argument("--port", type=int, default=9191)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    arguments = parser.parse_args()
    loop_factory = None
    if arguments.uvloop:
        import uvloop

        loop_factory = uvloop.new_event_loop
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(serve(arguments.host, arguments.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
