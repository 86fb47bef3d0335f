# -*- test-case-name: tests.test_integration -*-
"""
The few event-loop services the shared machinery needs (watch a descriptor,
call later, tell the time), over Twisted's reactor or an asyncio loop.

The capture reader, listener and connector are written once against
L{EventLoop}; the Twisted and asyncio faces each hand them an adapter.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.interfaces import IReactorFDSet, IReadDescriptor, IWriteDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer


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


@implementer(IReadDescriptor, IWriteDescriptor)
class _Watch:
    """
    A descriptor as Twisted's reactor wants one: a file number and the
    callbacks for readable and writable.
    """

    # One per watched descriptor: a relay server has two per flow.
    __slots__ = ("fd", "read", "write", "prefix")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.read: Callable[[], object] | None = None
        self.write: Callable[[], object] | None = None
        # Asked for by the reactor on every event: made once.
        self.prefix = f"faketcp fd {fd}"

    def fileno(self) -> int:
        return self.fd

    def doRead(self) -> None:
        if self.read is not None:
            self.read()

    def doWrite(self) -> None:
        if self.write is not None:
            self.write()

    def connectionLost(self, reason: Failure) -> None:
        # The reactor dropped the descriptor: an error or hang-up (a refused
        # connect, say) or the reactor shutting down.  It is no longer
        # watched; let each owner look at its socket once and find out.
        callbacks = [callback for callback in (self.write, self.read) if callback is not None]
        self.read = self.write = None
        for callback in callbacks:
            callback()

    def logPrefix(self) -> str:
        return self.prefix


class TwistedLoop:
    """
    L{EventLoop} over a Twisted reactor providing L{IReactorFDSet}.
    """

    def __init__(self, reactor: Any) -> None:
        if not IReactorFDSet.providedBy(reactor):
            raise TypeError(f"fake-TCP needs a reactor providing IReactorFDSet, not {reactor!r}")
        self.reactor = reactor
        self._watches: dict[int, _Watch] = {}
        # Twisted closes its own connections when the reactor stops; do
        # the same, before the process exits with rules still installed.
        from .shutdown import shutdown

        reactor.addSystemEventTrigger("during", "shutdown", shutdown)

    def seconds(self) -> float:
        return float(self.reactor.seconds())

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> Timer:
        return self.reactor.callLater(delay, callback, *args)  # type: ignore[no-any-return]

    def _watch(self, fd: int) -> _Watch:
        watch = self._watches.get(fd)
        if watch is None:
            watch = self._watches[fd] = _Watch(fd)
        return watch

    def _forget(self, fd: int, watch: _Watch) -> None:
        if watch.read is None and watch.write is None:
            del self._watches[fd]

    def add_reader(self, fd: int, callback: Callable[[], object]) -> None:
        watch = self._watch(fd)
        watch.read = callback
        self.reactor.addReader(watch)

    def remove_reader(self, fd: int) -> None:
        watch = self._watches.get(fd)
        if watch is not None:
            self.reactor.removeReader(watch)
            watch.read = None
            self._forget(fd, watch)

    def add_writer(self, fd: int, callback: Callable[[], object]) -> None:
        watch = self._watch(fd)
        watch.write = callback
        self.reactor.addWriter(watch)

    def remove_writer(self, fd: int) -> None:
        watch = self._watches.get(fd)
        if watch is not None:
            self.reactor.removeWriter(watch)
            watch.write = None
            self._forget(fd, watch)


class _AsyncioTimer:
    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float, callback: Callable[..., object], args: tuple[Any, ...]) -> None:
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


def loop_for(reactor_or_loop: Any) -> EventLoop:
    """
    The adapter for a Twisted reactor or an asyncio loop, cached on it so
    every user of one reactor or loop shares one adapter: one set of watches,
    and one identity under which client captures are shared.
    """
    adapter: Any = getattr(reactor_or_loop, "_faketcp_loop", None)
    if adapter is None:
        if isinstance(reactor_or_loop, asyncio.AbstractEventLoop):
            adapter = AsyncioLoop(reactor_or_loop)
        else:
            adapter = TwistedLoop(reactor_or_loop)
        try:
            reactor_or_loop._faketcp_loop = adapter
        except AttributeError:
            pass
    return adapter  # type: ignore[no-any-return]
