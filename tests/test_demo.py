"""
The README's C{make demo} runs end to end: the relay pair carries the
ping-pong, and the demo leaves no relay, rule or namespace behind.  Its
figures (rates, round trips, loss) are the demo's to show, not checked here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import TestCase

from tests.support import require_root

ROOT = Path(__file__).resolve().parent.parent


class DemoTests(TestCase):
    """
    C{python -m lab.demo}, as C{make demo} runs it, only shorter.
    """

    def test_runs_and_cleans_up(self) -> None:
        """
        A one-second demo exits 0, gets echoes back through both relays,
        and reports no silencing rule and no namespace left.
        """
        require_root()
        result = subprocess.run(
            [sys.executable, "-m", "lab.demo", "--seconds", "1", "--rate", "200"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            timeout=120,
        )
        output = result.stdout + result.stderr
        self.assertEqual(result.returncode, 0, output)
        total = re.search(r"^total: (\d+) sent, (\d+) echoed", result.stdout, re.MULTILINE)
        assert total is not None, output
        self.assertGreater(int(total.group(2)), 0, output)
        self.assertIn("silencing rules left in the namespaces: 0", result.stdout, output)
        self.assertIn("namespaces left: 0;", result.stdout, output)
