# -*- test-case-name: tests.test_endpoints -*-
"""
What both faces take from their users: the tunables of a port's or a
connection's flows made from endpoint-style arguments (values: the Twisted
face's parsers convert endpoint strings first), the key, and address
formatting for logs and errors.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from ..core.auth import DEFAULT_TIMEOUT, AuthKey, auth_key
from ..core.table import TableLimits
from ..io.firewall import BACKENDS, DEFAULT_MARK


@dataclass(slots=True)
class FlowOptions:
    """
    Tunables of the flows of a port or connection.

    @ivar idle_timeout: seconds without a segment from the peer after which
        a flow ends with C{TimeoutError}; 0 never.
    @ivar keepalive: seconds between bare-ACK keepalives on a flow that sent
        nothing; 0 sends none.
    @ivar default_keepalive: the interval C{setTcpKeepAlive(True)} uses.
    @ivar mark: the firewall mark of the silenced kernel sockets.
    @ivar timestamps: whether segments carry TCP timestamps when the
        kernel's handshake agreed on them (12 bytes of each segment; off,
        segments carry no options, as tcpraw 1.2.25's and phantun's).
    @ivar firewall: the backend of the silencing rules: C{auto} (nftables
        where the kernel can, else iptables), C{nftables} or C{iptables}
        (see L{faketcp_twisted.io.firewall}).
    @ivar limits: bounds of the flow table.
    """

    idle_timeout: float = 180.0
    keepalive: float = 0.0
    default_keepalive: float = 10.0
    mark: int = DEFAULT_MARK
    timestamps: bool = True
    firewall: str = "auto"
    limits: TableLimits = field(default_factory=TableLimits)


def flow_options(
    idleTimeout: float | None = None,
    keepalive: float | None = None,
    mark: int | None = None,
    timestamps: bool | None = None,
    firewall: str | None = None,
) -> FlowOptions:
    """
    L{FlowOptions} from endpoint arguments; L{None} keeps the default.
    """
    options = FlowOptions()
    if timestamps is not None:
        options.timestamps = timestamps
    if firewall is not None:
        if firewall not in BACKENDS:
            raise ValueError(f"faketcp: firewall must be one of {', '.join(BACKENDS)}, not {firewall!r}")
        options.firewall = firewall
    if idleTimeout is not None:
        options.idle_timeout = float(idleTimeout)
    if keepalive is not None:
        options.keepalive = float(keepalive)
    if mark is not None:
        options.mark = mark
    return options


def auth_from(key: str | bytes | None, keyFile: str | None) -> AuthKey | None:
    """
    The L{AuthKey} of endpoint arguments, or L{None}.

    @raise ValueError: both given, or an empty or unreadable key.
    """
    if key is None and keyFile is None:
        return None
    return auth_key(key, keyFile)


def auth_timeout(authTimeout: float | None) -> float:
    """
    The seconds a peer's proof may take: C{authTimeout}, or the default.

    @raise ValueError: not a positive number.
    """
    if authTimeout is None:
        return DEFAULT_TIMEOUT
    if not authTimeout > 0:
        raise ValueError(f"authTimeout must be positive, not {authTimeout!r}")
    return float(authTimeout)


#: Connections a listening port splices to its fallback at once by default.
DEFAULT_FALLBACK_LIMIT = 256
#: The error of a fallback without a key: without one, every connection
#: is a fake-TCP peer, and none is left for the fallback.
FALLBACK_NEEDS_KEY = "a fallback needs a key (key= or keyFile=): only a keyed port can tell a prober from a peer"


def split_address(text: str) -> tuple[str, str | None]:
    """
    The host and the port text of C{HOST:PORT} or C{[IPV6]:PORT}; the port
    is L{None} for a bare C{HOST}, C{[IPV6]} or IPv6 address.  An empty
    host means the text is none of these.
    """
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return "", None
        return host, rest[1:] if rest else None
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, port
    return text, None


def parse_address(text: str) -> tuple[str, int]:
    """
    The (host, port) of C{HOST:PORT}, or of C{[IPV6]:PORT}.

    @raise ValueError: with a one-line reason.
    """
    host, port = split_address(text)
    if not host or port is None:
        raise ValueError(f"{text!r} is not HOST:PORT (an IPv6 address in brackets: [::1]:443)")
    if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"{port!r} in {text!r} is not a port number (1-65535)")
    return host, int(port)


def fallback_from(
    fallback: str | tuple[str, int] | None, limit: int | None, auth: AuthKey | None
) -> tuple[tuple[str, int] | None, int]:
    """
    The fallback service of a server's arguments (C{HOST:PORT} text or a
    (host, port) pair, or L{None}) and its limit (L{None}: the default).

    @raise ValueError: a fallback without a key, an address that is not
        one, or a limit below 1, with a one-line reason.
    """
    if limit is None:
        limit = DEFAULT_FALLBACK_LIMIT
    elif limit < 1:
        raise ValueError(f"fallbackLimit must be at least 1, not {limit!r}")
    if fallback is None:
        return None, limit
    if auth is None:
        raise ValueError(FALLBACK_NEEDS_KEY)
    if isinstance(fallback, str):
        try:
            return parse_address(fallback), limit
        except ValueError as failure:
            raise ValueError(f"fallback: {failure}") from None
    host, port = fallback
    if not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"fallback: {port!r} is not a port number (1-65535)")
    return (str(host), port), limit


def redact(description: str) -> str:
    """
    An endpoint string fit for logs: the value of every C{key=} field is
    replaced by C{***} (a C{keyFile=} path is kept; it is no secret).

    Fields are found as Twisted finds them: separated by colons that no
    backslash escapes.
    """
    fields: list[str] = []
    current: list[str] = []
    escaped = False
    for char in description:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            current.append(char)
            escaped = True
        elif char == ":":
            fields.append("".join(current))
            current = []
        else:
            current.append(char)
    fields.append("".join(current))
    return ":".join("key=***" if field.startswith("key=") else field for field in fields)


def host_port(host: str, port: int) -> str:
    """
    C{host:port}, with brackets around an IPv6 host: how logs and errors
    show an address.
    """
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_ip_address(host: str) -> bool:
    """
    Whether C{host} is an IPv4 or IPv6 address (not a name to resolve).
    """
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
            return True
        except OSError:
            pass
    return False
