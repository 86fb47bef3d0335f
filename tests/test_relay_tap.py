# -*- test-case-name: tests.test_relay_tap -*-
"""
The relay's command line: endpoint-string parsing, options, --help and
--print-rules (which needs no privileges).  No root, no namespaces.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess

from twisted.python import usage
from twisted.trial.unittest import SkipTest, TestCase

from faketcp_twisted.io import firewall
from faketcp_twisted.io.firewall import DEFAULT_MARK
from faketcp_twisted.relay import spec as relayspec
from faketcp_twisted.relay.tap import Options, print_rules
from tests.relaylab import CHECKOUT, TWISTD


class SplitTests(TestCase):
    """
    Endpoint strings split as Twisted splits them.
    """

    def test_positional_and_keywords(self) -> None:
        parts = relayspec.split("faketcp:9191:interface=0.0.0.0:keepalive=5")
        self.assertEqual((parts.prefix, parts.args), ("faketcp", ("9191",)))
        self.assertEqual(parts.kwargs, {"interface": "0.0.0.0", "keepalive": "5"})

    def test_escaped_colons(self) -> None:
        parts = relayspec.split(r"faketcp:host=2001\:2\:\:2:port=9191")
        self.assertEqual(parts.kwargs, {"host": "2001:2::2", "port": "9191"})

    def test_value_with_equals(self) -> None:
        self.assertEqual(relayspec.split("udp:host=a=b:port=1").kwargs["host"], "a=b")

    def test_with_defaults_never_overrides(self) -> None:
        text = relayspec.with_defaults("faketcp:9191:keepalive=2", {"keepalive": "10", "idleTimeout": "60"})
        self.assertEqual(text, "faketcp:9191:keepalive=2:idleTimeout=60")

    def test_with_defaults_escapes(self) -> None:
        text = relayspec.with_defaults("faketcp:9191", {"interface": "::"})
        self.assertEqual(relayspec.split(text).kwargs["interface"], "::")


class ParseTests(TestCase):
    """
    --listen and --forward make a server or a client, or an error.
    """

    def test_server(self) -> None:
        spec = relayspec.parse("faketcp:9191:interface=0.0.0.0", "udp:host=127.0.0.1:port=51820")
        self.assertEqual(spec.mode, "server")
        self.assertEqual(spec.udp, relayspec.UDPAddress("127.0.0.1", 51820))

    def test_client(self) -> None:
        spec = relayspec.parse("udp:51820:interface=127.0.0.1", "faketcp:host=203.0.113.7:port=9191")
        self.assertEqual(spec.mode, "client")
        self.assertEqual(spec.udp, relayspec.UDPAddress("127.0.0.1", 51820))

    def test_client_default_interface(self) -> None:
        spec = relayspec.parse("udp:51820", "faketcp:host=203.0.113.7:port=9191")
        self.assertEqual(spec.udp.host, "127.0.0.1")

    def test_errors(self) -> None:
        for listen, forward in [
            ("udp:1", "udp:host=a:port=2"),
            ("faketcp:9191", "faketcp:host=a:port=2"),
            ("faketcp:9191", "udp:host=a"),
            ("faketcp:9191", "udp:port=5"),
            ("udp:1:bogus=2", "faketcp:host=a:port=2"),
            ("udp:99999", "faketcp:host=a:port=2"),
            ("udp:1", "faketcp:port=2"),
            ("faketcp:interface=0.0.0.0", "udp:host=a:port=2"),
            ("tcp:80", "udp:host=a:port=2"),
        ]:
            with self.assertRaises(relayspec.SpecError, msg=(listen, forward)):
                relayspec.parse(listen, forward)


class RulesTests(TestCase):
    """
    The rules --print-rules shows are those the port and connector make.
    """

    def test_server_ipv4(self) -> None:
        rules = relayspec.silence_rules(relayspec.parse("faketcp:9191", "udp:host=127.0.0.1:port=1"))
        self.assertEqual(
            [(r.family, r.port, r.remote, r.mark) for r in rules], [(socket.AF_INET, 9191, None, DEFAULT_MARK)]
        )

    def test_server_dual_stack(self) -> None:
        rules = relayspec.silence_rules(relayspec.parse(r"faketcp:9191:interface=\:\:", "udp:host=127.0.0.1:port=1"))
        self.assertEqual(sorted(r.family for r in rules), sorted([socket.AF_INET, socket.AF_INET6]))

    def test_client_with_mark(self) -> None:
        spec = relayspec.parse("udp:1", "faketcp:host=198.18.0.2:port=9191:mark=0x10")
        (rule,) = relayspec.silence_rules(spec)
        self.assertEqual((rule.family, rule.port, rule.remote, rule.mark), (socket.AF_INET, 9191, "198.18.0.2", 0x10))

    def test_port_zero_unknown(self) -> None:
        with self.assertRaises(relayspec.SpecError):
            relayspec.silence_rules(relayspec.parse("faketcp:0", "udp:host=127.0.0.1:port=1"))

    def test_print_rules(self) -> None:
        """
        C{--firewall iptables}: the iptables rule, with a comment no start
        sweeps.
        """
        out = io.StringIO()
        spec = relayspec.parse("faketcp:9191", "udp:host=127.0.0.1:port=1")
        self.assertEqual(print_rules(spec, out, "iptables"), 0)
        lines = [line for line in out.getvalue().splitlines() if not line.startswith("#")]
        self.assertEqual(len(lines), 1)
        self.assertTrue(
            lines[0].startswith(
                "iptables -A OUTPUT -p tcp --sport 9191 ! --tcp-flags SYN SYN -m mark --mark 0x46540000"
            )
        )
        # A rule installed by hand from this output is never swept as a
        # dead process's leftover.
        self.assertIn('--comment "faketcp_twisted manual"', lines[0])
        self.assertIsNone(firewall._OWNER.search(lines[0]))

    def test_print_rules_nftables(self) -> None:
        """
        C{--firewall nftables}: the table, the chain and the rule in nft
        syntax, in a table apart from any relay's own.
        """
        out = io.StringIO()
        spec = relayspec.parse("faketcp:9191", "udp:host=127.0.0.1:port=1")
        self.assertEqual(print_rules(spec, out, "nftables"), 0)
        lines = [line for line in out.getvalue().splitlines() if not line.startswith("#")]
        self.assertEqual(
            lines,
            [
                "nft add table inet faketcp_twisted_manual",
                "nft add chain inet faketcp_twisted_manual output "
                "'{ type filter hook output priority 0; policy accept; }'",
                "nft add rule inet faketcp_twisted_manual output "
                "'meta mark 0x46540000 meta nfproto ipv4 tcp sport 9191 tcp flags & syn == 0 drop'",
            ],
        )

    def test_print_rules_auto(self) -> None:
        """
        C{--firewall auto} (the default): both, nftables first, since which
        one the relay takes depends on the kernel it runs on.
        """
        out = io.StringIO()
        spec = relayspec.parse("faketcp:9191", "udp:host=127.0.0.1:port=1")
        self.assertEqual(print_rules(spec, out), 0)
        lines = [line for line in out.getvalue().splitlines() if not line.startswith("#")]
        self.assertEqual([line.split()[0] for line in lines], ["nft", "nft", "nft", "iptables"])


class OptionsTests(TestCase):
    """
    The twistd options.
    """

    def parse(self, *argv: str) -> Options:
        options = Options()
        options.parseOptions(list(argv))
        return options

    def test_defaults_added_to_faketcp(self) -> None:
        options = self.parse("--listen", "udp:4000", "--forward", "faketcp:host=198.18.0.2:port=9191")
        kwargs = relayspec.split(options.faketcp()).kwargs
        self.assertEqual((kwargs["keepalive"], kwargs["idleTimeout"], kwargs["timeout"]), ("10", "60", "10"))
        self.assertEqual((options["idle-timeout"], options["stats-interval"]), (180.0, 10.0))

    def test_operator_overrides(self) -> None:
        options = self.parse(
            "--listen", "faketcp:9191:keepalive=3", "--forward", "udp:host=127.0.0.1:port=1",
            "--keepalive", "5", "--peer-timeout", "20", "--idle-timeout", "0", "--stats-interval", "0",
        )  # fmt: skip
        kwargs = relayspec.split(options.faketcp()).kwargs
        self.assertEqual((kwargs["keepalive"], kwargs["idleTimeout"]), ("3", "20"))
        self.assertNotIn("timeout", kwargs)
        self.assertEqual((options["idle-timeout"], options["stats-interval"]), (0.0, 0.0))

    def test_missing_or_wrong(self) -> None:
        self.assertRaises(usage.UsageError, self.parse, "--listen", "faketcp:9191")
        self.assertRaises(usage.UsageError, self.parse, "--listen", "udp:1", "--forward", "udp:host=a:port=2")
        self.assertRaises(
            usage.UsageError, self.parse, "--listen", "udp:1", "--forward", "faketcp:host=a:port=2", "--keepalive", "-1"
        )

    def test_fallback(self) -> None:
        """
        --fallback reaches the server's faketcp string (escaped); it needs
        a server, a key on --listen, and HOST:PORT, each refused in one
        line.
        """
        forward = ("--forward", "udp:host=127.0.0.1:port=1")
        for listen in ("faketcp:9191:key=k", "faketcp:9191:keyFile=/k"):
            options = self.parse("--listen", listen, *forward, "--fallback", "[::1]:443")
            self.assertEqual(relayspec.split(options.faketcp()).kwargs["fallback"], "[::1]:443")
        cases = [
            (("--listen", "faketcp:9191", *forward, "--fallback", "127.0.0.1:443"), "needs a key"),
            (("--listen", "udp:1", "--forward", "faketcp:host=a:port=2:key=k", "--fallback", "a:1"), "server"),
            (("--listen", "faketcp:9191:key=k", *forward, "--fallback", "127.0.0.1"), "HOST:PORT"),
            (("--listen", "faketcp:9191:key=k", *forward, "--fallback", "::1:443"), "HOST:PORT"),
            (("--listen", "faketcp:9191:key=k", *forward, "--fallback", "a:99999"), "port number"),
        ]
        for argv, words in cases:
            error = self.assertRaises(usage.UsageError, self.parse, *argv)
            self.assertIn(words, str(error))
            self.assertNotIn("\n", str(error))

    def test_help_documents_every_option(self) -> None:
        """
        --help names every option, each with an example, and the examples
        of both sides.
        """
        text = Options().getUsage(width=200)
        for name, _short, _default, doc, *_rest in Options.optParameters:
            self.assertIn(f"--{name}", text)
            self.assertTrue("Example" in doc or "e.g." in doc, name)
        self.assertIn("--print-rules", text)
        self.assertIn("--listen faketcp:9191:interface=0.0.0.0", text)
        self.assertIn("--forward faketcp:host=203.0.113.7:port=9191", text)


class CommandTests(TestCase):
    """
    The real twistd command.
    """

    def twistd(self, *argv: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*prefix, TWISTD, "-n", "--pidfile=", "faketcp-relay", *argv],
            capture_output=True, text=True, timeout=60,
            env={**os.environ, "PYTHONPATH": CHECKOUT}, cwd=self.mktemp_dir(),
        )  # fmt: skip

    def mktemp_dir(self) -> str:
        path = self.mktemp()
        os.makedirs(path)
        return path

    def test_help(self) -> None:
        result = self.twistd("--help")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("--forward", result.stdout)
        self.assertIn("Examples:", result.stdout)

    def test_print_rules_without_privileges(self) -> None:
        """
        --print-rules prints the rules and exits 0 in a process with no
        capabilities at all (no raw sockets, no iptables).
        """
        prefix: tuple[str, ...] = ()
        if os.geteuid() == 0:
            if shutil.which("setpriv") is None:
                raise SkipTest("setpriv (util-linux) is needed to drop capabilities")
            prefix = ("setpriv", "--bounding-set=-all", "--inh-caps=-all")
        result = self.twistd(
            "--listen", "udp:51820", "--forward", "faketcp:host=198.18.0.2:port=9191", "--print-rules", prefix=prefix
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("iptables -A OUTPUT -p tcp -d 198.18.0.2/32 --dport 9191", result.stdout)

    def test_not_privileged(self) -> None:
        """
        Without privileges, the relay says why in one line and exits 1.
        """
        if os.geteuid() == 0:
            if shutil.which("setpriv") is None:
                raise SkipTest("setpriv (util-linux) is needed to drop capabilities")
            prefix: tuple[str, ...] = ("setpriv", "--bounding-set=-all", "--inh-caps=-all")
        else:
            prefix = ()
        result = self.twistd(
            "--listen", "faketcp:9191", "--forward", "udp:host=127.0.0.1:port=1", "--stats-interval", "0", prefix=prefix
        )
        self.assertEqual(result.returncode, 1)
        self.assertIn("faketcp-relay cannot start", result.stdout)
        self.assertIn("needs root", result.stdout)
        self.assertNotIn("Traceback", result.stdout + result.stderr)
