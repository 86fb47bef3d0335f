# -*- test-case-name: tests.test_integration -*-
"""
The few event-loop services the engine needs (watch a descriptor, call
later, tell the time), as a contract.

The capture reader, listener and connector are written once against
L{EventLoop}; each face hands them an adapter over its own loop:
L{faketcp_twisted.tx.reactor.TwistedLoop} over a Twisted reactor,
L{faketcp_twisted.aio.loop.AsyncioLoop} over an asyncio loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol


class Timer(Protocol):
    """
    A scheduled call.
    """

    def cancel(self) -> None:
        """
        Do not make the call.
        """

    def active(self) -> bool:
        """
        Whether the call is still to be made.
        """


class EventLoop(Protocol):
    """
    What the shared machinery asks of an event loop.
    """

    def seconds(self) -> float:
        """
        The loop's clock, in seconds.
        """

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> Timer:
        """
        Call C{callback(*args)} after C{delay} seconds.
        """

    def add_reader(self, fd: int, callback: Callable[[], object]) -> None:
        """
        Call C{callback} whenever C{fd} is readable.
        """

    def remove_reader(self, fd: int) -> None:
        """
        Stop watching C{fd} for reading.
        """

    def add_writer(self, fd: int, callback: Callable[[], object]) -> None:
        """
        Call C{callback} whenever C{fd} is writable.
        """

    def remove_writer(self, fd: int) -> None:
        """
        Stop watching C{fd} for writing.
        """


def cached_adapter(owner: Any, make: Callable[[Any], EventLoop]) -> EventLoop:
    """
    The adapter of a reactor or loop, made by C{make} once and cached on
    it, so every user of one reactor or loop shares one adapter: one set of
    watches, and one identity under which client captures are shared.
    """
    adapter: Any = getattr(owner, "_faketcp_loop", None)
    if adapter is None:
        adapter = make(owner)
        try:
            owner._faketcp_loop = adapter
        except AttributeError:
            pass
    return adapter  # type: ignore[no-any-return]
