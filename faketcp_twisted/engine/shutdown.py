# -*- test-case-name: tests.test_integration -*-
"""
Leaving nothing behind when the program ends without closing its ports and
connections: the reactor shutting down, or the interpreter exiting.

Captures and listeners register here while they are open.  Shutting down
resets every connection (its peer learns at once), closes every kernel
socket while the silencing rules still drop what the kernel says on
closing, and only then removes the rules.
"""

from __future__ import annotations

import atexit
import weakref
from typing import Any, Protocol

from ..core.flow import FlowState


class _Closable(Protocol):
    @property
    def closed(self) -> bool: ...

    @property
    def quiescent(self) -> bool: ...

    @property
    def connections(self) -> dict[Any, Any]: ...

    def close(self) -> None: ...


_captures: weakref.WeakSet[Any] = weakref.WeakSet()
_listeners: weakref.WeakSet[Any] = weakref.WeakSet()


def track_capture(demux: _Closable) -> None:
    """
    Close C{demux} (and its connections) at shutdown if still open.
    """
    _captures.add(demux)


def track_listener(listener: Any) -> None:
    """
    Reset the connections of C{listener} and close it at shutdown.
    """
    _listeners.add(listener)


def quiescent() -> bool:
    """
    Whether every open capture may close now: none has a flow that ended
    with a FIN so recently that the peer's answer may still be on its way
    (see L{Demultiplexer.quiescent}).  Closing before would leave that
    answer to a kernel with no socket for it, which answers with a RST
    nothing silences.
    """
    for demux in list(_captures):
        if demux.closed:
            continue
        if not demux.quiescent:
            return False
        # A flow that sent its FIN and waits for the peer's (its connection
        # ends on the next turn, and the capture's wait begins then).
        if any(connection.flow.state is FlowState.WRITE_CLOSED for connection in demux.connections.values()):
            return False
    return True


def shutdown() -> None:
    """
    Close everything still open, then remove the silencing rules.
    """
    from ..io.firewall import silencer

    for listener in list(_listeners):
        listener.abort_all()
        listener.close()
    for demux in list(_captures):
        demux.close()
    silencer.release_all()


atexit.register(shutdown)
