# -*- test-case-name: tests.test_aio -*-
"""
What the asyncio face asks of an asyncio event loop (uvloop's too): the
engine's L{EventLoop} over it, and name resolution.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any, cast

from ..engine.loop import EventLoop, Timer, cached_adapter
from ..engine.options import is_ip_address

__all__ = ["AsyncioLoop", "loop_for", "resolve"]


class _AsyncioTimer:
    def __init__(
        self, loop: asyncio.AbstractEventLoop, delay: float, callback: Callable[..., object], args: tuple[Any, ...]
    ) -> None:
        self._fired = False
        self._callback = callback
        self._handle = loop.call_later(delay, self._fire, *args)

    def _fire(self, *args: Any) -> None:
        self._fired = True
        self._callback(*args)

    def cancel(self) -> None:
        self._handle.cancel()

    def active(self) -> bool:
        return not self._fired and not self._handle.cancelled()


class AsyncioLoop:
    """
    L{EventLoop} over an asyncio event loop (uvloop's too).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def seconds(self) -> float:
        return self.loop.time()

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> Timer:
        return _AsyncioTimer(self.loop, delay, callback, args)

    def add_reader(self, fd: int, callback: Callable[[], object]) -> None:
        self.loop.add_reader(fd, callback)

    def remove_reader(self, fd: int) -> None:
        self.loop.remove_reader(fd)

    def add_writer(self, fd: int, callback: Callable[[], object]) -> None:
        self.loop.add_writer(fd, callback)

    def remove_writer(self, fd: int) -> None:
        self.loop.remove_writer(fd)


def loop_for(loop: asyncio.AbstractEventLoop) -> EventLoop:
    """
    The adapter of an asyncio loop (one per loop, see L{cached_adapter}).
    """
    return cached_adapter(loop, AsyncioLoop)


async def resolve(loop: asyncio.AbstractEventLoop, host: str, port: int, family: int, passive: bool = False) -> str:
    """
    The first address of C{host}; IP addresses are used as they are, with
    no turn of the loop (so sockets are made in the caller's namespace).

    @raise OSError: the name does not resolve.
    """
    if is_ip_address(host):
        return host
    flags = socket.AI_PASSIVE if passive else 0
    answers = await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_STREAM, flags=flags)
    if not answers:
        raise OSError(f"getaddrinfo({host!r}) returned an empty list")
    return cast(str, answers[0][4][0])
