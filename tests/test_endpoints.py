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
        try:
            for attempt in (
                lambda: serverFromString(reactor, "faketcp:9191").listen(Factory.forProtocol(Protocol)),
                lambda: clientFromString(reactor, "faketcp:host=127.0.0.1:port=9191").connect(Factory.forProtocol(Protocol)),
            ):
                yield attempt().addCallbacks(lambda r: print("unexpected success", r), show)
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

    def _try(self, argv: list[str], env: dict[str, str] | None = None) -> str:
        environment = dict(os.environ, PYTHONPATH=CHECKOUT, **(env or {}))
        result = subprocess.run(
            argv + [sys.executable, "-c", _TRY_LISTEN],
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

    def test_iptables_libraries_missing(self) -> None:
        """
        When python-iptables cannot load the iptables libraries, listening
        and connecting fail with the firewall errors, naming the fix.
        """
        require_root()
        namespace = f"ftt-{os.getpid()}-noipt"
        subprocess.run(["ip", "netns", "add", namespace], check=True)
        self.addCleanup(subprocess.run, ["ip", "netns", "del", namespace])
        subprocess.run(["ip", "-n", namespace, "link", "set", "lo", "up"], check=True)
        output = self._try(
            ["ip", "netns", "exec", namespace],
            env={"XTABLES_LIBDIR": "/nonexistent", "IPTABLES_LIBDIR": "/nonexistent"},
        )
        self.assertIn("ListenFirewallError", output, output)
        self.assertIn("ConnectFirewallError", output, output)
