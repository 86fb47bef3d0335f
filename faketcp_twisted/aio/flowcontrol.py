# -*- test-case-name: tests.test_aio -*-
"""
Write flow control of the asyncio transport, as asyncio's own
C{_FlowControlMixin} is for its transports: when to call the protocol's
C{pause_writing()} and C{resume_writing()}.

The write buffer is the capture's send backlog, shared by every
connection of the capture: writes go to the raw socket at once, and only
what the kernel's send buffer cannot take waits there.  The protocol is
paused when the demultiplexer announces congestion (its shared
high-water mark), or when one of its writes leaves more than this
transport's high limit waiting; it is resumed once the backlog is down to
the low limit (announced when the backlog drains, looked at every
L{WriteFlowControl.drainPollInterval} otherwise).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from ..engine.connection import FlowConnection

__all__ = ["WriteFlowControl"]


class WriteFlowControl(asyncio.Transport):
    """
    The write-buffer half of L{AioTransport<faketcp_twisted.aio.transport.AioTransport>}.

    @ivar protocol: the protocol told to pause and resume writing.
    """

    #: Seconds between looks at the send backlog while the protocol is
    #: paused for this transport's own limit: the demultiplexer announces
    #: only its shared high-water mark and its full drain.
    drainPollInterval = 0.005

    def __init__(self, connection: FlowConnection, loop: asyncio.AbstractEventLoop, extra: Mapping[str, Any]) -> None:
        super().__init__(extra)
        self._connection = connection
        self._aio_loop = loop
        self.protocol: Any = None
        self._closing = False
        self._high_water = 64 * 1024
        self._low_water = 16 * 1024
        self._writing_paused = False
        self._drain_poll: asyncio.TimerHandle | None = None

    def get_write_buffer_size(self) -> int:
        """
        Bytes waiting in the capture's send backlog, for every connection of
        the capture: writes go to the raw socket at once, and only what the
        kernel's send buffer cannot take waits.
        """
        return self._connection.backlog_bytes

    def get_write_buffer_limits(self) -> tuple[int, int]:
        """
        The (low, high) limits, in bytes.
        """
        return (self._low_water, self._high_water)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """
        Pause the protocol's writing when, after one of its writes, the
        send backlog holds more than C{high} bytes (or the backlog reaches
        the capture's high-water mark), and resume it once the backlog is
        down to C{low} bytes.  Defaults as asyncio's: 64 KiB, and a quarter
        of C{high}.
        """
        if high is None:
            high = 64 * 1024 if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high_water, self._low_water = high, low
        self._maybePause()

    def congestion_changed(self, congested: bool) -> None:
        """
        The capture's shared send backlog crossed its high-water mark, or
        drained (a C{Face} method of L{faketcp_twisted.engine.contracts}:
        the connection's call).
        """
        if congested:
            self._pauseProtocol()
        elif self._connection.backlog_bytes <= self._low_water:
            self._resumeProtocol()

    def _maybePause(self) -> None:
        """
        After a write: pause the protocol if the backlog is past a limit.
        """
        if self._writing_paused or self._closing:
            return
        connection = self._connection
        if connection.congested:
            self._pauseProtocol()
        elif connection.backlog_bytes > self._high_water:
            self._pauseProtocol()
            self._startDrainPoll()

    def _startDrainPoll(self) -> None:
        if self._drain_poll is None:
            self._drain_poll = self._aio_loop.call_later(self.drainPollInterval, self._pollDrain)

    def _stopDrainPoll(self) -> None:
        poll, self._drain_poll = self._drain_poll, None
        if poll is not None:
            poll.cancel()

    def _pollDrain(self) -> None:
        self._drain_poll = None
        connection = self._connection
        if not self._writing_paused or connection.ended:
            return
        if connection.congested:
            # The demultiplexer announces its drain: congestion_changed
            # resumes.
            return
        if connection.backlog_bytes <= self._low_water:
            self._resumeProtocol()
        else:
            self._startDrainPoll()

    def _pauseProtocol(self) -> None:
        if self._writing_paused or self.protocol is None:
            return
        self._writing_paused = True
        try:
            self.protocol.pause_writing()
        except Exception as failure:
            self._aio_loop.call_exception_handler(
                {"message": "protocol.pause_writing() failed", "exception": failure, "transport": self}
            )

    def _resumeProtocol(self) -> None:
        if not self._writing_paused:
            return
        self._writing_paused = False
        self._stopDrainPoll()
        try:
            self.protocol.resume_writing()
        except Exception as failure:
            self._aio_loop.call_exception_handler(
                {"message": "protocol.resume_writing() failed", "exception": failure, "transport": self}
            )
