"""
The C{faketcp:} endpoint strings: plugin discovery, parsing, interfaces,
and the errors a user without privileges or without iptables sees.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable

from twisted.internet import reactor
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.interfaces import (
    IConsumer,
    IListeningPort,
    IPushProducer,
    IStreamClientEndpoint,
    IStreamClientEndpointStringParserWithReactor,
    IStreamServerEndpoint,
    IStreamServerEndpointStringParser,
    ISystemHandle,
    ITCPTransport,
)
from twisted.internet.protocol import Factory
from twisted.plugin import getPlugins
from twisted.protocols.wire import Echo
from twisted.trial.unittest import SkipTest, SynchronousTestCase
from zope.interface.verify import verifyObject

from faketcp_twisted.tx.endpoints import (
    FakeTCPClientEndpoint,
    FakeTCPClientParser,
    FakeTCPServerEndpoint,
    FakeTCPServerParser,
)
from tests.support import LabTestCase, RecordingFactory, require_root

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class PluginTests(SynchronousTestCase):
    """
    Twisted finds the parsers, and they provide their interfaces.
    """

    def test_server_parser_discovered(self) -> None:
        """
        getPlugins finds a server parser with the prefix faketcp.
        """
        prefixes = [p.prefix for p in getPlugins(IStreamServerEndpointStringParser)]
        self.assertIn("faketcp", prefixes)

    def test_client_parser_discovered(self) -> None:
        """
        getPlugins finds a client parser with the prefix faketcp.
        """
        prefixes = [p.prefix for p in getPlugins(IStreamClientEndpointStringParserWithReactor)]
        self.assertIn("faketcp", prefixes)

    def test_parsers_verify(self) -> None:
        """
        Both parsers pass zope's verifyObject.
        """
        self.assertTrue(verifyObject(IStreamServerEndpointStringParser, FakeTCPServerParser()))
        self.assertTrue(verifyObject(IStreamClientEndpointStringParserWithReactor, FakeTCPClientParser()))


class ParsingTests(SynchronousTestCase):
    """
    Endpoint strings become endpoints with the arguments they name.
    """

    def test_server_defaults(self) -> None:
        """
        A port alone listens on every IPv4 address.
        """
        endpoint = serverFromString(reactor, "faketcp:9191")
        self.assertIsInstance(endpoint, FakeTCPServerEndpoint)
        self.assertTrue(verifyObject(IStreamServerEndpoint, endpoint))
        self.assertEqual((endpoint._port, endpoint._interface, endpoint._backlog), (9191, "", 50))
        self.assertEqual(endpoint._options.idle_timeout, 180.0)

    def test_server_arguments(self) -> None:
        """
        Every server argument is read, IPv6 colons escaped.
        """
        endpoint = serverFromString(
            reactor, r"faketcp:9191:interface=\:\::backlog=7:idleTimeout=9:keepalive=2:mark=0x10"
        )
        self.assertEqual((endpoint._interface, endpoint._backlog), ("::", 7))
        options = endpoint._options
        self.assertEqual((options.idle_timeout, options.keepalive, options.mark), (9.0, 2.0, 0x10))

    def test_client_arguments(self) -> None:
        """
        Every client argument is read.
        """
        endpoint = clientFromString(
            reactor,
            r"faketcp:host=2001\:2\:\:2:port=9191:timeout=4:bindAddress=2001\:2\:\:1:idleTimeout=5",
        )
        self.assertIsInstance(endpoint, FakeTCPClientEndpoint)
        self.assertTrue(verifyObject(IStreamClientEndpoint, endpoint))
        self.assertEqual((endpoint._host, endpoint._port, endpoint._timeout), ("2001:2::2", 9191, 4.0))
        self.assertEqual(endpoint._bindAddress, ("2001:2::1", 0))
        self.assertEqual(endpoint._options.idle_timeout, 5.0)

    def test_client_needs_host_and_port(self) -> None:
        """
        A client string without host= or port= is refused with a reason.
        """
        error = self.assertRaises(ValueError, clientFromString, reactor, "faketcp:port=9191")
        self.assertIn("host=", str(error))

    def test_converted_values(self) -> None:
        """
        Every argument reaches the endpoint converted: numbers, a hex mark,
        yes/no, and a bindAddress with a port (bracketed for IPv6).
        """
        server = serverFromString(
            reactor, "faketcp:0:backlog=0:idleTimeout=0:keepalive=0.5:mark=255:authTimeout=2:timestamps=OFF"
        )
        self.assertEqual((server._port, server._backlog, server._auth_timeout), (0, 0, 2.0))
        options = server._options
        self.assertEqual(
            (options.idle_timeout, options.keepalive, options.mark, options.timestamps), (0.0, 0.5, 255, False)
        )
        client = clientFromString(
            reactor, r"faketcp:host=198.18.0.2:port=65535:timeout=0.25:bindAddress=198.18.0.1\:5000:timestamps=yes"
        )
        self.assertEqual((client._port, client._timeout, client._bindAddress), (65535, 0.25, ("198.18.0.1", 5000)))
        self.assertTrue(client._options.timestamps)
        client = clientFromString(reactor, r"faketcp:host=2001\:2\:\:2:port=9191:bindAddress=[2001\:2\:\:1]\:5000")
        self.assertEqual(client._bindAddress, ("2001:2::1", 5000))
        server = serverFromString(reactor, r"faketcp:0:key=k:fallback=[2001\:2\:\:9]\:443:fallbackLimit=8")
        self.assertEqual((server._fallback, server._fallback_limit), (("2001:2::9", 443), 8))
        server = serverFromString(reactor, r"faketcp:0:key=k:fallback=localhost\:8080")
        self.assertEqual((server._fallback, server._fallback_limit), (("localhost", 8080), 256))

    def test_port_fallback_limit(self) -> None:
        """
        A port tells its fallback limit (the relay reserves two descriptors
        for each), 0 without a fallback.
        """
        from faketcp_twisted.core.auth import AuthKey
        from faketcp_twisted.tx.port import FakeTCPPort

        key = AuthKey(b"k")
        self.assertEqual(FakeTCPPort(reactor, 0, None, auth=key).fallback_limit, 0)
        port = FakeTCPPort(reactor, 0, None, auth=key, fallback=("127.0.0.1", 443), fallback_limit=8)
        self.assertEqual(port.fallback_limit, 8)


class BadArgumentTests(SynchronousTestCase):
    """
    A bad argument in an endpoint string is a ValueError with a one-line
    message naming it and quoting the value, raised while parsing.
    """

    def assertRefused(self, parse: Callable[..., object], description: str, *expected: str) -> None:
        """
        Parsing C{description} raises a one-line ValueError that starts with
        C{faketcp:} and contains every C{expected} text.
        """
        error = self.assertRaises(ValueError, parse, reactor, description)
        message = str(error)
        self.assertTrue(message.startswith("faketcp: "), message)
        self.assertNotIn("\n", message)
        for text in expected:
            self.assertIn(text, message)

    def test_server_port(self) -> None:
        """
        The port is a number from 0 to 65535.
        """
        for value in ("abc", "-1", "65536", "1.5", ""):
            self.assertRefused(
                serverFromString, f"faketcp:{value}", f"port must be a number from 0 to 65535, not {value!r}"
            )

    def test_client_port(self) -> None:
        """
        A client's port is a number from 1 to 65535: port 0 reaches no one.
        """
        for value in ("abc", "0", "65536"):
            self.assertRefused(
                clientFromString,
                f"faketcp:host=198.18.0.2:port={value}",
                f"port must be a number from 1 to 65535, not {value!r}",
            )

    def test_backlog(self) -> None:
        """
        The backlog is a number from 0 to 65535.
        """
        for value in ("many", "-5", "70000"):
            self.assertRefused(serverFromString, f"faketcp:9191:backlog={value}", "backlog", repr(value))

    def test_seconds(self) -> None:
        """
        idleTimeout and keepalive are 0 or more seconds; the client's
        timeout and authTimeout on either side are more than 0.  None of
        them is infinite or NaN.
        """
        for name in ("idleTimeout", "keepalive"):
            for value in ("soon", "-1", "inf", "nan"):
                self.assertRefused(serverFromString, f"faketcp:9191:{name}={value}", f"{name} must", repr(value))
                self.assertRefused(
                    clientFromString, f"faketcp:host=198.18.0.2:port=9191:{name}={value}", f"{name} must", repr(value)
                )
        for value in ("soon", "0", "-1", "inf"):
            self.assertRefused(
                clientFromString,
                f"faketcp:host=198.18.0.2:port=9191:timeout={value}",
                f"timeout must be a positive number of seconds, not {value!r}",
            )
            self.assertRefused(serverFromString, f"faketcp:9191:key=k:authTimeout={value}", "authTimeout", repr(value))
            self.assertRefused(
                clientFromString, f"faketcp:host=198.18.0.2:port=9191:key=k:authTimeout={value}", "authTimeout"
            )

    def test_mark(self) -> None:
        """
        The mark is a 32-bit number, decimal or 0x hex.
        """
        for value in ("red", "-1", "0x100000000", "0xfg"):
            self.assertRefused(serverFromString, f"faketcp:9191:mark={value}", "mark must be a number", repr(value))
            self.assertRefused(clientFromString, f"faketcp:host=198.18.0.2:port=9191:mark={value}", "mark", repr(value))

    def test_timestamps(self) -> None:
        """
        timestamps is yes or no (or true/false, on/off, 1/0).
        """
        self.assertRefused(
            serverFromString, "faketcp:9191:timestamps=maybe", "timestamps must be yes or no, not 'maybe'"
        )
        self.assertRefused(clientFromString, "faketcp:host=198.18.0.2:port=9191:timestamps=2", "timestamps", "'2'")

    def test_bind_address(self) -> None:
        """
        bindAddress is HOST, HOST:PORT or [IPV6]:PORT, with a port up to
        65535.
        """
        for value in (r"198.18.0.1\:x", r"198.18.0.1\:70000", r"\:5000", "[2001", r"[2001\:2\:\:1]5000", ""):
            self.assertRefused(
                clientFromString, f"faketcp:host=198.18.0.2:port=9191:bindAddress={value}", "bindAddress must be"
            )

    def test_fallback(self) -> None:
        """
        fallback is HOST:PORT or [IPV6]:PORT on a keyed server (key or
        keyFile); fallbackLimit a number from 1.
        """
        self.assertRefused(serverFromString, r"faketcp:9191:fallback=127.0.0.1\:443", "fallback needs a key")
        for value in ("127.0.0.1", r"127.0.0.1\:0", r"127.0.0.1\:https", r"\:\:1\:443", r"\:443", r"[\:\:1]"):
            self.assertRefused(serverFromString, f"faketcp:9191:key=k:fallback={value}", "fallback must be")
        for value in ("0", "-1", "lots"):
            self.assertRefused(
                serverFromString, rf"faketcp:9191:key=k:fallback=h\:1:fallbackLimit={value}", "fallbackLimit"
            )

    def test_unknown_or_missing(self) -> None:
        """
        An unknown argument, a server string without a port, and a client
        string without host or port are refused by name.
        """
        self.assertRefused(serverFromString, "faketcp:9191:colour=blue", "colour")
        self.assertRefused(clientFromString, "faketcp:host=198.18.0.2:port=9191:colour=blue", "colour")
        self.assertRefused(serverFromString, "faketcp:interface=0.0.0.0", "port")
        self.assertRefused(clientFromString, "faketcp:host=:port=9191", "host=", "port=")


class InterfaceTests(LabTestCase):
    """
    Real ports and transports provide the interfaces Twisted programs use.
    """

    async def test_port_and_transport_verify(self) -> None:
        """
        The port is an IListeningPort; the transport an ITCPTransport,
        ISystemHandle, IConsumer and IPushProducer, with TCP addresses.
        """
        port = await self.listen(Factory.forProtocol(Echo))
        self.assertTrue(verifyObject(IListeningPort, port))
        self.assertEqual(port.getHost().port, self.port)
        client = await self.connect(RecordingFactory(), f"faketcp:host={self.lab.server4}:port={self.port}")
        transport = client.transport
        for interface in (ITCPTransport, ISystemHandle, IConsumer, IPushProducer):
            self.assertTrue(verifyObject(interface, transport))
        self.assertEqual(transport.getPeer().type, "TCP")
        self.assertEqual(transport.getHost().type, "TCP")
        self.assertEqual(transport.getHost().host, self.lab.client4)


_TRY_LISTEN = textwrap.dedent(
    """
    import sys
    from twisted.internet import reactor, defer
    from twisted.internet.endpoints import serverFromString, clientFromString
    from twisted.internet.protocol import Factory, Protocol
    def show(result):
        print(type(result.value).__name__ + ": " + str(result.value))
    @defer.inlineCallbacks
    def main():
        extra = sys.argv[1] if len(sys.argv) > 1 else ""
        try:
            for attempt in (
                lambda: serverFromString(reactor, "faketcp:9191" + extra).listen(Factory.forProtocol(Protocol)),
                lambda: clientFromString(reactor, "faketcp:host=127.0.0.1:port=9191" + extra).connect(
                    Factory.forProtocol(Protocol)
                ),
            ):
                yield attempt().addCallbacks(lambda r: print("succeeded:", type(r).__name__), show)
        finally:
            reactor.stop()
    reactor.callWhenRunning(main)
    reactor.run()
    """
)


class PrivilegeTests(SynchronousTestCase):
    """
    Without root, or without iptables, a clear one-line error.
    """

    def _try(self, argv: list[str], env: dict[str, str] | None = None, extra: str = "") -> str:
        environment = dict(os.environ, PYTHONPATH=CHECKOUT, **(env or {}))
        result = subprocess.run(
            argv + [sys.executable, "-c", _TRY_LISTEN, extra],
            capture_output=True,
            text=True,
            env=environment,
            cwd="/",
            timeout=30,
        )
        return result.stdout + result.stderr

    def test_not_root(self) -> None:
        """
        A process without CAP_NET_RAW and CAP_NET_ADMIN gets
        ListenPermissionError and ConnectPermissionError saying what is
        needed.  It keeps uid 0 and loses every capability (an empty
        bounding set), rather than becoming another user: a checkout only
        root can read (mode 0700, as in root's home) stays readable to it.
        """
        require_root()
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            raise SkipTest("setpriv (util-linux) is needed to drop privileges")
        output = self._try([setpriv, "--bounding-set=-all", "--inh-caps=-all", "--ambient-caps=-all"])
        self.assertIn("ListenPermissionError", output)
        self.assertIn("ConnectPermissionError", output)
        self.assertIn("CAP_NET_RAW and CAP_NET_ADMIN", output)

    def without_iptables_libraries(self, extra: str) -> str:
        """
        Listen and connect in a fresh namespace, python-iptables unable to
        load the iptables libraries; what the attempts printed.
        """
        require_root()
        namespace = f"ftt-{os.getpid()}-noipt"
        subprocess.run(["ip", "netns", "add", namespace], check=True)
        self.addCleanup(subprocess.run, ["ip", "netns", "del", namespace])
        subprocess.run(["ip", "-n", namespace, "link", "set", "lo", "up"], check=True)
        return self._try(
            ["ip", "netns", "exec", namespace],
            env={"XTABLES_LIBDIR": "/nonexistent", "IPTABLES_LIBDIR": "/nonexistent"},
            extra=extra,
        )

    def test_iptables_libraries_missing(self) -> None:
        """
        With C{firewall=iptables} and python-iptables unable to load the
        iptables libraries, listening and connecting fail with the
        firewall errors, naming the fix.
        """
        output = self.without_iptables_libraries(":firewall=iptables")
        self.assertIn("ListenFirewallError", output, output)
        self.assertIn("ConnectFirewallError", output, output)
        self.assertIn("Debian's iptables package", output, output)

    def test_no_iptables_needed(self) -> None:
        """
        The default firewall backend needs no iptables libraries: where the
        kernel has nftables, listening and connecting work without them.
        """
        output = self.without_iptables_libraries("")
        self.assertEqual(output.count("succeeded:"), 2, output)
        self.assertNotIn("Error", output, output)
