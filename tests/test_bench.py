"""
The benchmark command runs, cleans up after itself, and writes a report
of the documented shape.  Its figures are never judged here: this machine
is shared, and timing is the benchmark's business, not the tests'.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SkipTest, TestCase

from lab import bench, bench_report, bench_udp
from tests.support import ROOT_REASON

ROOT = Path(__file__).resolve().parent.parent


class PercentileTests(TestCase):
    """
    The pinger's nearest-rank percentile.
    """

    def test_empty(self) -> None:
        self.assertEqual(bench_udp.percentile([], 0.5), 0.0)

    def test_ranks(self) -> None:
        values = list(range(1, 101))
        self.assertEqual(bench_udp.percentile(values, 0.5), 51.0)
        self.assertEqual(bench_udp.percentile(values, 0.99), 100.0)
        self.assertEqual(bench_udp.percentile(values, 1.0), 100.0)


class SummaryTests(TestCase):
    """
    Best lossless rate, ratios and round-trip differences from steps.
    """

    def _steps(self, *rows: tuple[float | None, float, float]) -> list[dict[str, Any]]:
        return [
            {
                "label": "max" if rate is None else f"{rate:g}",
                "rate_mbps": rate,
                "delivered_mbps": delivered,
                "loss": loss,
                "cpu_us_per_packet": {"tunnel-client": 5.0, "tunnel-server": 6.0},
            }
            for rate, delivered, loss in rows
        ]

    def test_best_lossless_ignores_lossy_steps(self) -> None:
        result: dict[str, Any] = {
            "steps": self._steps((100, 100.0, 0.0), (200, 199.9, 0.0005), (300, 250.0, 0.2), (None, 260.0, 0.5))
        }
        summary = bench_report.summarize_tunnel(result, None)
        self.assertEqual(summary["best_lossless_mbps"], 199.9)
        self.assertEqual(summary["best_lossless_step"], "200")
        self.assertEqual(summary["max_delivered_mbps"], 260.0)
        self.assertEqual(summary["tunnel_us_per_packet"], 11.0)

    def test_best_of_rounds(self) -> None:
        steps = self._steps((100, 90.0, 0.1), (100, 100.0, 0.0), (None, 300.0, 0.5), (None, 320.0, 0.6))
        steps.append({"label": "200", "rate_mbps": 200, "error": "iperf3: busy"})
        best = bench_report.best_steps({"steps": steps})
        self.assertEqual(
            [(s["label"], s.get("delivered_mbps")) for s in best], [("100", 100.0), ("max", 320.0), ("200", None)]
        )

    def test_rtt_added_and_ratios(self) -> None:
        def rtt(p50: float, p99: float) -> dict[str, Any]:
            return {"rtt_us": {"p50": p50, "p99": p99}, "received": 1}

        direct: dict[str, Any] = {"steps": self._steps((100, 100.0, 0.0)), "rtt_rounds": [rtt(40.0, 80.0)]}
        relay: dict[str, Any] = {
            "steps": self._steps((100, 100.0, 0.0), (200, 150.0, 0.3)),
            "rtt_rounds": [rtt(900.0, 950.0), rtt(140.0, 300.0)],
        }
        peer: dict[str, Any] = {"steps": self._steps((100, 50.0, 0.0)), "rtt_rounds": [rtt(90.0, 200.0)]}
        tunnels: dict[str, dict[str, Any]] = {"direct": direct, "udp2raw": peer, "faketcp-relay": relay}
        report: dict[str, Any] = {"tunnels": tunnels, "notes": []}
        bench_report.summarize(report)
        self.assertEqual(relay["summary"]["rtt_added_p50_us"], 100.0)
        self.assertNotIn("rtt_added_p50_us", direct["summary"])
        self.assertEqual(report["ratios"]["faketcp-relay/udp2raw"]["best_lossless_mbps"], 2.0)
        self.assertEqual(report["targets"]["relay_rtt_added_p50_under_200us"], True)
        self.assertEqual(report["targets"]["relay_400mbps_at_0.1pct_loss"], False)


class QuickRunTests(TestCase):
    """
    C{python -m lab.bench --quick --tunnels direct --seconds 1}
    as root: the JSON report has the documented shape and nothing is left.
    """

    def setUp(self) -> None:
        if os.geteuid() != 0:
            raise SkipTest(ROOT_REASON)
        if shutil.which("iperf3") is None:
            raise SkipTest("needs iperf3 (apt-get install iperf3)")

    def test_quick_direct(self) -> None:
        work = Path(tempfile.mkdtemp(prefix="faketcp-bench-test-"))
        self.addCleanup(shutil.rmtree, work, True)
        report_path = work / "report.json"
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        run = subprocess.run(
            [sys.executable, "-m", "lab.bench", "--quick", "--tunnels", "direct",
             "--seconds", "1", "--rtt-rate", "2000", "--json", str(report_path)],
            capture_output=True, text=True, timeout=120, cwd=work, env=env,
        )  # fmt: skip
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        self.assertIn("direct", run.stdout)
        report = json.loads(report_path.read_text())
        self.assertEqual(report["schema"], bench.SCHEMA)
        self.assertFalse(report["interrupted"])
        self.assertEqual(list(report["tunnels"]), ["direct"])
        direct = report["tunnels"]["direct"]
        self.assertEqual(direct["status"], "ok")
        self.assertEqual([step["label"] for step in direct["steps"]], ["200", "max"])
        for step in direct["steps"]:
            self.assertNotIn("error", step)
            for key in ("offered_mbps", "delivered_mbps", "offered_pps", "delivered_pps", "loss", "cpu_s"):
                self.assertIn(key, step)
            self.assertGreater(step["delivered_pps"], 0)
            self.assertIn("load-client", step["cpu_s"])
            self.assertIn("load-server", step["cpu_s"])
        self.assertGreater(direct["rtt"]["received"], 0)
        for key in ("p50", "p99"):
            self.assertIn(key, direct["rtt"]["rtt_us"])
        self.assertIn("best_lossless_mbps", direct["summary"])
        self.assertEqual(report["ratios"], {})
        # Nothing left behind: the lab's namespaces (and all in them) are gone.
        self.assertEqual(len(report["lab"]["namespaces"]), 2)
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
        for name in report["lab"]["namespaces"]:
            self.assertNotIn(name, listed)

    def test_twisted_udp_floor(self) -> None:
        """
        The C{twisted-udp} tunnel (a plain UDP relay pair on Twisted's
        reactor) carries the round trips and the load, and is compared with
        the direct path.
        """
        work = Path(tempfile.mkdtemp(prefix="faketcp-bench-test-"))
        self.addCleanup(shutil.rmtree, work, True)
        report_path = work / "report.json"
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        run = subprocess.run(
            [sys.executable, "-m", "lab.bench", "--quick", "--no-max", "--tunnels", "direct,twisted-udp",
             "--seconds", "1", "--rtt-rate", "2000", "--json", str(report_path)],
            capture_output=True, text=True, timeout=120, cwd=work, env=env,
        )  # fmt: skip
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        report = json.loads(report_path.read_text())
        floor = report["tunnels"]["twisted-udp"]
        self.assertEqual(floor["status"], "ok")
        self.assertGreater(floor["rtt"]["received"], 0)
        self.assertEqual([step["label"] for step in floor["steps"]], ["200"])
        self.assertGreater(floor["steps"][0]["delivered_pps"], 0)
        self.assertIn("twisted-udp/direct", report["ratios"])
        self.assertIn("rtt_added_p50_us", floor["summary"])
