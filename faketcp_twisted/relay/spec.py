# -*- test-case-name: tests.test_relay_tap -*-
"""
What the relay's C{--listen} and C{--forward} strings say.

One side is a C{faketcp:} endpoint string, exactly as the endpoint parsers
take it; the other is a UDP address::

    udp:PORT[:interface=ADDR]        (listen; interface defaults to 127.0.0.1)
    udp:host=HOST:port=PORT          (forward)

A relay whose C{--listen} is fake-TCP is a I{server} (fake-TCP in, UDP out);
one whose C{--forward} is fake-TCP is a I{client} (UDP in, fake-TCP out).
Strings are parsed the way Twisted parses endpoint strings: fields are
separated by colons, C{key=value} fields are keyword arguments, and a
backslash escapes the next character (C{interface=\\:\\:}).

Nothing here opens a socket or needs privileges, so C{--print-rules} works
for any user.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from ..engine.listener import listen_families
from ..engine.options import host_port, redact
from ..io.firewall import DEFAULT_MARK, SilenceRule


class SpecError(ValueError):
    """
    A C{--listen} or C{--forward} string that cannot be used.
    """


@dataclass(frozen=True, slots=True)
class Description:
    """
    An endpoint string split into its prefix, positional and keyword fields.

    @ivar text: the string as given.
    @ivar prefix: the first field (C{"faketcp"}, C{"udp"}).
    @ivar args: the other fields without C{=}.
    @ivar kwargs: the C{key=value} fields.
    """

    text: str
    prefix: str
    args: tuple[str, ...] = ()
    kwargs: dict[str, str] = field(default_factory=dict)


def split(text: str) -> Description:
    """
    Split an endpoint string as Twisted's C{serverFromString} would: colons
    separate fields, the first C{=} of a field makes it a keyword field,
    and a backslash takes the next character literally.

    @param text: the endpoint string.
    @return: its parts, unescaped.
    @raise SpecError: the string ends with a lone backslash.
    """
    fields: list[list[str]] = [[""]]
    escaped = False
    for char in text:
        if escaped:
            fields[-1][-1] += char
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            fields.append([""])
        elif char == "=" and len(fields[-1]) == 1:
            fields[-1].append("")
        else:
            fields[-1][-1] += char
    if escaped:
        raise SpecError(f"{text!r} ends with a lone backslash")
    prefix = fields[0][0] if len(fields[0]) == 1 else ""
    args = tuple(each[0] for each in fields[1:] if len(each) == 1)
    kwargs = {each[0]: each[1] for each in fields[1:] if len(each) == 2}
    return Description(text, prefix.lower(), args, kwargs)


def escape(value: str) -> str:
    """
    Escape the characters an endpoint string field cannot hold as they are.
    """
    return value.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


def with_defaults(text: str, defaults: dict[str, str]) -> str:
    """
    Append C{key=value} fields to an endpoint string for the keys it does
    not set itself, so that an explicit argument always wins.

    @param text: a C{faketcp:} endpoint string.
    @param defaults: the values to use when absent.
    @return: the completed string.
    """
    present = split(text).kwargs
    extra = "".join(f":{key}={escape(value)}" for key, value in defaults.items() if key not in present)
    return text + extra


@dataclass(frozen=True, slots=True)
class UDPAddress:
    """
    One side of the relay that speaks UDP.

    @ivar host: the address to listen on, or the (unresolved) host to
        forward to.
    @ivar port: the UDP port.
    """

    host: str
    port: int

    def describe(self) -> str:
        """
        C{host:port}, with brackets around an IPv6 address.
        """
        return host_port(self.host, self.port)


def _port(value: str, what: str, allow_zero: bool) -> int:
    try:
        port = int(value)
    except ValueError:
        raise SpecError(f"{what}: port {value!r} is not a number") from None
    if not (0 if allow_zero else 1) <= port <= 65535:
        raise SpecError(f"{what}: port {port} is out of range")
    return port


def parse_udp_listen(text: str) -> UDPAddress:
    """
    Parse C{udp:PORT[:interface=ADDR]}.

    @raise SpecError: it is not such a string.
    """
    parts = split(text)
    unknown = set(parts.kwargs) - {"interface", "port"}
    if parts.prefix != "udp" or unknown or len(parts.args) > 1:
        raise SpecError(f"--listen {text!r}: expected udp:PORT[:interface=ADDR]")
    port = parts.args[0] if parts.args else parts.kwargs.get("port")
    if port is None:
        raise SpecError(f"--listen {text!r}: the UDP port is missing")
    interface = parts.kwargs.get("interface", "127.0.0.1")
    return UDPAddress(interface, _port(port, "--listen", allow_zero=True))


def parse_udp_forward(text: str) -> UDPAddress:
    """
    Parse C{udp:host=HOST:port=PORT}.

    @raise SpecError: it is not such a string.
    """
    parts = split(text)
    unknown = set(parts.kwargs) - {"host", "port"}
    if parts.prefix != "udp" or unknown or parts.args:
        raise SpecError(f"--forward {text!r}: expected udp:host=HOST:port=PORT")
    if "host" not in parts.kwargs or "port" not in parts.kwargs:
        raise SpecError(f"--forward {text!r}: both host= and port= are needed")
    return UDPAddress(parts.kwargs["host"], _port(parts.kwargs["port"], "--forward", allow_zero=False))


@dataclass(frozen=True, slots=True)
class RelaySpec:
    """
    A relay's two sides.

    @ivar mode: C{"server"} (fake-TCP in, UDP out) or C{"client"} (UDP in,
        fake-TCP out).
    @ivar faketcp: the C{faketcp:} endpoint string, as given.
    @ivar udp: the UDP side: the target (server) or the listening address
        (client).
    """

    mode: str
    faketcp: str
    udp: UDPAddress

    @property
    def faketcp_args(self) -> Description:
        """
        The parts of the C{faketcp:} string.
        """
        return split(self.faketcp)

    def describe(self) -> str:
        """
        One line naming both sides.
        """
        if self.mode == "server":
            return f"fake-TCP {redact(self.faketcp)} -> UDP {self.udp.describe()}"
        return f"UDP {self.udp.describe()} -> fake-TCP {redact(self.faketcp)}"


def parse(listen: str, forward: str) -> RelaySpec:
    """
    Make sense of C{--listen} and C{--forward}: exactly one of them is a
    C{faketcp:} string, the other a UDP address.

    @raise SpecError: they do not describe a relay.
    """
    listening, forwarding = split(listen).prefix, split(forward).prefix
    if listening == "faketcp" and forwarding == "udp":
        spec = RelaySpec("server", listen, parse_udp_forward(forward))
        if not spec.faketcp_args.args and "port" not in spec.faketcp_args.kwargs:
            raise SpecError(f"--listen {listen!r}: the fake-TCP port is missing (faketcp:PORT)")
        return spec
    if listening == "udp" and forwarding == "faketcp":
        spec = RelaySpec("client", forward, parse_udp_listen(listen))
        kwargs = spec.faketcp_args.kwargs
        if "host" not in kwargs or "port" not in kwargs:
            raise SpecError(f"--forward {forward!r}: expected faketcp:host=HOST:port=PORT")
        return spec
    raise SpecError(
        "one side must be fake-TCP and the other UDP: "
        "--listen faketcp:PORT --forward udp:host=H:port=P (server) or "
        "--listen udp:PORT --forward faketcp:host=H:port=P (client)"
    )


def _mark(parts: Description) -> int:
    mark = parts.kwargs.get("mark")
    if mark is None:
        return DEFAULT_MARK
    try:
        return int(mark, 0)
    except ValueError:
        raise SpecError(f"mark={mark!r} is not a number") from None


def resolve(host: str) -> tuple[int, str]:
    """
    The family and address of C{host} (an address, or a name resolved with
    getaddrinfo, first answer).

    @raise SpecError: the name does not resolve.
    """
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
            return family, host
        except OSError:
            pass
    try:
        answers = socket.getaddrinfo(host, None, 0, socket.SOCK_DGRAM)
    except OSError as failure:
        raise SpecError(f"cannot resolve {host!r}: {failure}") from None
    family, _type, _proto, _name, address = answers[0]
    return int(family), str(address[0])


def silence_rules(spec: RelaySpec) -> list[SilenceRule]:
    """
    The silencing rules a relay with C{spec} installs: one per address
    family of a server's port, one per destination of a client.

    @raise SpecError: the port is 0 (chosen at start, so unknown now), or
        the fake-TCP host does not resolve.
    """
    parts = spec.faketcp_args
    mark = _mark(parts)
    if spec.mode == "server":
        port_text = parts.args[0] if parts.args else parts.kwargs["port"]
        port = _port(port_text, "--listen", allow_zero=True)
        if port == 0:
            raise SpecError("faketcp:0 picks its port at start: the rule's port is not known before")
        try:
            _family, families = listen_families(parts.kwargs.get("interface", ""))
        except OSError:
            raise SpecError(f"interface={parts.kwargs.get('interface')!r} is not an address") from None
        return [SilenceRule(family, port, mark=mark) for family in families]
    family, address = resolve(parts.kwargs["host"])
    port = _port(parts.kwargs["port"], "--forward", allow_zero=False)
    return [SilenceRule(family, port, remote=address, mark=mark)]
