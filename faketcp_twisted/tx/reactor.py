# -*- test-case-name: tests.test_integration -*-
"""
L{EventLoop} over a Twisted reactor that provides L{IReactorFDSet}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFDSet, IReadDescriptor, IWriteDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer

from ..engine.loop import EventLoop, Timer, cached_adapter


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
        # the same, before the process exits with rules still installed,
        # but only once the peers of flows just closed with FIN had time to
        # answer (a program that stops the reactor in connectionLost).
        from ..engine.shutdown import shutdown

        # (Before: during shutdown the reactor no longer reads.  The
        # application's services stop in the same phase, closing their
        # flows with FIN: quiescent() waits for those too.)
        reactor.addSystemEventTrigger("before", "shutdown", self._linger)
        reactor.addSystemEventTrigger("during", "shutdown", shutdown)

    #: Most seconds the reactor's shutdown waits for closing flows.
    lingerLimit = 2.0

    def _linger(self) -> Deferred[None] | None:
        """
        A Deferred that fires once every capture is quiescent, or after
        L{lingerLimit} seconds (L{None} when they all are already).
        """
        from ..engine.shutdown import quiescent

        if quiescent():
            return None
        return when_quiescent(self.reactor, self.lingerLimit)

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


def loop_for(reactor: Any) -> EventLoop:
    """
    The adapter of a Twisted reactor (one per reactor, see
    L{cached_adapter}).
    """
    return cached_adapter(reactor, TwistedLoop)


def when_quiescent(reactor: Any, limit: float) -> Deferred[None]:
    """
    A Deferred that fires once no capture of the process waits for a
    peer's FIN any more (see L{faketcp_twisted.engine.shutdown.quiescent}),
    or after C{limit} seconds: what must pass before the process exits, or
    that FIN meets a kernel with no socket for it, which answers with a RST
    nothing silences.
    """
    from ..engine.shutdown import quiescent

    waiting: Deferred[None] = Deferred()
    deadline = reactor.seconds() + limit

    def look() -> None:
        if quiescent() or reactor.seconds() >= deadline:
            waiting.callback(None)
        else:
            reactor.callLater(0.02, look)

    look()
    return waiting
