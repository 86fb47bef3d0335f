# -*- test-case-name: tests.test_table -*-
"""
Periodic work over every flow, a share at a time.

A timer that visits 10,000 flows at once stalls the event loop for
milliseconds, and every active flow's datagrams with it.  A L{Rotation}
hands out the items of a changing collection in shares, so that the work of
one period is spread over several shorter ones: each item still comes round
once a period.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

T = TypeVar("T")


class Rotation(Generic[T]):
    """
    A round-robin over a collection that changes between calls.

    A round starts with a snapshot of the collection; each L{take} hands out
    the next 1/C{slices} of it.  Items added during a round come in the next
    one; items gone since the snapshot are still handed out, for the caller
    to skip.
    """

    __slots__ = ("_pending", "_share")

    def __init__(self) -> None:
        self._pending: list[T] = []
        self._share = 0

    def take(self, items: Callable[[], Iterable[T]], slices: int) -> list[T]:
        """
        The next share of the round: with C{slices} of 1 or less, all of
        C{items()} now (and no round is kept).
        """
        pending = self._pending
        if slices <= 1:
            pending.clear()
            return list(items())
        if not pending:
            pending.extend(items())
            pending.reverse()
            self._share = -(-len(pending) // slices)
        cut = max(len(pending) - self._share, 0)
        taken = pending[cut:]
        del pending[cut:]
        return taken
