# -*- test-case-name: tests.test_layers -*-
"""
The package's layers import only what they may: the sans-IO core imports
neither Twisted nor asyncio nor zope, the engine and the kernel layer no
face, and the public names still resolve.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from twisted.trial.unittest import TestCase

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Modules no layer below the faces may import.
FACES = ("twisted", "zope", "asyncio", "faketcp_twisted.tx", "faketcp_twisted.aio", "faketcp_twisted.relay")


def imported_after(modules: list[str]) -> set[str]:
    """
    The top modules and this package's subpackages that importing
    C{modules} in a fresh interpreter loads.
    """
    script = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    output = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=CHECKOUT
    ).stdout
    loaded = json.loads(output)
    found = set()
    for name in loaded:
        for face in FACES:
            if name == face or name.startswith(face + "."):
                found.add(face)
    return found


class LayerTests(TestCase):
    def test_core_imports_no_loop_library(self) -> None:
        """
        The core is sans-IO: no Twisted, asyncio or zope, no face.
        """
        modules = [f"faketcp_twisted.core.{name}" for name in ("segment", "bpf", "flow", "table", "auth", "rotation")]
        self.assertEqual(imported_after(modules), set())

    def test_io_imports_no_loop_library(self) -> None:
        """
        The kernel layer stands on the core only.
        """
        modules = [f"faketcp_twisted.io.{name}" for name in ("capture", "kernel", "firewall", "fastpath")]
        self.assertEqual(imported_after(modules), set())

    def test_engine_imports_no_face(self) -> None:
        """
        The engine is written against its own event-loop contract: it
        imports neither face, nor Twisted, nor asyncio.
        """
        modules = [
            f"faketcp_twisted.engine.{name}"
            for name in (
                "loop",
                "options",
                "demux",
                "connection",
                "listener",
                "connector",
                "adoption",
                "errors",
                "shutdown",
            )
        ]
        self.assertEqual(imported_after(modules), set())

    def test_public_names(self) -> None:
        """
        What users import keeps working, and importing the package alone
        imports no face.
        """
        self.assertEqual(imported_after(["faketcp_twisted"]), set())
        import faketcp_twisted
        from faketcp_twisted import aio
        from faketcp_twisted.tx.endpoints import FakeTCPClientEndpoint, FakeTCPServerEndpoint

        self.assertIs(faketcp_twisted.FakeTCPServerEndpoint, FakeTCPServerEndpoint)
        self.assertIs(faketcp_twisted.FakeTCPClientEndpoint, FakeTCPClientEndpoint)
        self.assertTrue(callable(aio.create_server))
