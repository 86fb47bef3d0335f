# -*- test-case-name: tests.test_fallback,tests.test_nftables -*-
"""
Network namespaces: which one a thread is in, and running a block in
another one held open by a descriptor.

Whatever a port or connection makes later (a rule removed, a fallback's
connection) belongs in the namespace the port was made in, which need not
be the one the loop's thread is in by then (a program, or a test, that
enters namespaces to make its ports).
"""

from __future__ import annotations

import ctypes
import os

CLONE_NEWNET = 0x40000000
_SELF = "/proc/thread-self/ns/net"


def _setns(fd: int) -> None:
    # os.setns arrived in Python 3.12; libc's is the same call.
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def netns_id() -> int:
    """
    The identity (inode) of the calling thread's network namespace.
    """
    return os.stat(_SELF).st_ino


def open_current() -> int:
    """
    A descriptor holding the calling thread's network namespace (the
    caller closes it).
    """
    return os.open(_SELF, os.O_RDONLY | os.O_CLOEXEC)


class InNamespace:
    """
    Run a block in the network namespace held open by C{fd}, if it is not
    the current one (entering another needs CAP_SYS_ADMIN).
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.previous: int | None = None

    def __enter__(self) -> None:
        if os.fstat(self.fd).st_ino != netns_id():
            self.previous = open_current()
            _setns(self.fd)

    def __exit__(self, *exc_info: object) -> None:
        if self.previous is not None:
            _setns(self.previous)
            os.close(self.previous)
            self.previous = None
