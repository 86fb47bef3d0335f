# -*- test-case-name: tests.test_fallback,tests.test_splice -*-
"""
The fallback of a keyed listening port: every connection that does not
prove the key is given back to the kernel and spliced to a real TCP
service, so that a prober sees that service and nothing else.

This works because the kernel made a real TCP connection for every
client, and a keyed server says nothing before its client proved the key
(L{FlowConnection.quiet<faketcp_twisted.engine.connection.FlowConnection.quiet>}):
no segment of ours is in the prober's sequence space, and none of the
prober's bytes was acknowledged.  The kernel socket kept the numbers of
the handshake; the bytes it took before it was muted are still queued in
it (the demultiplexer keeps them, see
L{Demultiplexer.keepKernelQueue<faketcp_twisted.engine.demux.Demultiplexer.keepKernelQueue>}),
and the prober's own retransmissions bring the rest once the socket has
its mark, TTL and filter back.  The splice then carries the connection
both ways (L{faketcp_twisted.engine.splice}).

What counts as a non-peer is what authentication refuses: a wrong proof,
data that is not a proof, a FIN before any proof, or nothing by the
authentication timeout.  A peer that reset its connection is gone and is
not handed over.  At most L{Fallback.limit} connections are spliced at
once; past it a non-peer is reset as without a fallback (counted as
C{fallback-limit}), so a flood of probers holds a bounded number of
descriptors (two each) and cannot starve the port's fake-TCP flows.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from ..core.flow import FlowKey
from ..io import kernel, netns
from .connection import FlowConnection
from .contracts import Demux
from .demux import Demultiplexer
from .errors import FakeTCPError, Problem
from .loop import EventLoop
from .options import DEFAULT_FALLBACK_LIMIT
from .splice import Splice

log = logging.getLogger(__name__)


def resolve(address: tuple[str, int]) -> tuple[int, tuple[Any, ...]]:
    """
    The family and socket address of the fallback service (resolved once,
    when the port starts listening).

    @raise ValueError: the host does not resolve, with a one-line reason.
    """
    host, port = address
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as failure:
        raise ValueError(f"cannot resolve {host!r}: {failure}") from failure
    family, _type, _proto, _name, sockaddr = found[0]
    return family, sockaddr


class Fallback:
    """
    The fallback service of one listening port, and the connections
    spliced to it.

    @ivar address: the service's (host, port), as given.
    @ivar target: its family and socket address.
    @ivar limit: most connections spliced at once.
    @ivar splices: the connections spliced now.
    """

    def __init__(self, loop: EventLoop, address: tuple[str, int], limit: int = DEFAULT_FALLBACK_LIMIT) -> None:
        """
        @param limit: checked by the faces' arguments (see
            L{faketcp_twisted.engine.options.fallback_from}).
        """
        self.loop = loop
        self.address = address
        self.target: tuple[int, tuple[Any, ...]] | None = None
        self.limit = limit
        self.splices: set[Splice] = set()
        self._namespace: int | None = None

    def start(self) -> None:
        """
        Find the service's address, once, when the port starts listening,
        and remember that namespace: the connections to the service are
        made from the port's namespace, whichever the loop's thread is in
        when a prober comes.

        @raise FakeTCPError: the address does not resolve.
        """
        try:
            self.target = resolve(self.address)
        except ValueError as failure:
            raise FakeTCPError(Problem.FALLBACK, failure) from failure
        if self._namespace is None:
            self._namespace = netns.open_current()

    def __len__(self) -> int:
        return len(self.splices)

    def take(self, connection: FlowConnection) -> bool:
        """
        Give C{connection}'s peer to the fallback service, if there is room.

        @return: whether the connection was taken (it is then ended, and
            gone from its capture); if not, the caller resets it.
        """
        demux = connection.demux
        if not self._room(demux):
            return False
        self._splice(demux, connection.flow.key, connection.hand_off())
        return True

    def take_unadopted(self, demux: Demultiplexer, sock: socket.socket, key: FlowKey) -> bool:
        """
        Give the peer of a kernel socket that was never adopted (its
        handshake unseen by the capture, or refused by a limit of the
        table) to the fallback service, if there is room.

        @return: whether the socket was taken; if not, the caller closes it.
        """
        if not self._room(demux):
            return False
        demux.hand_off_unadopted(key)
        self._splice(demux, key, sock)
        return True

    def _room(self, demux: Demux) -> bool:
        if self.target is None or self._namespace is None or len(self.splices) >= self.limit:
            demux.count_drop("fallback-limit")
            return False
        return True

    def _splice(self, demux: Demux, key: FlowKey, downstream: socket.socket) -> None:
        target, namespace = self.target, self._namespace
        assert target is not None and namespace is not None
        try:
            kernel.unsilence(downstream)
        except OSError as failure:
            # Half given back, it would answer with segments the rule still
            # drops: close it (its RST may be silenced; the prober times out).
            log.warning("cannot give a connection back to the kernel for the fallback: %s", failure.strerror)
            kernel.close_abortively(downstream)
            demux.release_hand_off(key)
            demux.count_drop("fallback-failed")
            return

        def ended(splice: Splice) -> None:
            self.splices.discard(splice)
            if splice.failed:
                demux.count_drop("fallback-failed")
            demux.release_hand_off(key)

        splice = Splice(self.loop, downstream, target, ended, lambda: netns.InNamespace(namespace))
        self.splices.add(splice)
        demux.count_drop("fallback")
        splice.start()

    def close(self) -> None:
        """
        End every spliced connection, as the service stopping would, and
        let go of the namespace.
        """
        for splice in list(self.splices):
            splice.close()
        namespace, self._namespace = self._namespace, None
        if namespace is not None:
            os.close(namespace)
