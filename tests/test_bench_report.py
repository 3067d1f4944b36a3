"""python -m gateway.bench.report: the Markdown table of BENCHMARKS.md from a saved run."""

from __future__ import annotations

import contextlib
import io
import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from gateway.bench.report import main, markdown
from gateway.testing import temp_path


def step(mode: str, cpu: float, proxy: float | None = None) -> dict[str, Any]:
    direction = {"sent": 10, "received": 10, "lost": 0, "duplicated": 0, "reordered": 0,
                 "misrouted": 0}
    return {"mode": mode, "calls": 150, "procs": 1, "repeats": 1, "gateway_cpu_pct": cpu * 15,
            "cpu_ms_per_call_s": cpu, "rss_kb_per_call": 50.0, "in_p50_ms": 0.2,
            "in_p99_ms": 4.0, "out_p50_ms": 0.3, "out_p99_ms": 5.0, "kernel_pct_of_cpu": 40.0,
            "proxy_cpu_pct": proxy, "inbound": direction, "outbound": dict(direction)}


def document() -> dict[str, Any]:
    steps, floors = [step("relay", 4.0), step("tls-haproxy", 6.0, 12.0)], [step("relay", 2.0),
                                                                          step("tls-haproxy", 3.0, 9.0)]
    for s, f in zip(steps, floors):
        s["floor"] = f
        s["vs_floor"] = {"cpu_ms_per_call_s": s["cpu_ms_per_call_s"] / f["cpu_ms_per_call_s"],
                         "cpu_ms_per_call_s_runs": [2.0]}
    runs = [{"mode": s["mode"], "calls": 150, "procs": 1, "cpu_ms_per_call_s": s["cpu_ms_per_call_s"]}
            for s in steps]
    floor_runs = [dict(r, cpu_ms_per_call_s=f["cpu_ms_per_call_s"]) for r, f in zip(runs, floors)]
    return {"steps": steps, "runs": runs, "floor_steps": floors, "floor_runs": floor_runs,
            "argv": ["--mode", "relay,tls-haproxy"], "started": "now"}


class MarkdownTests(SynchronousTestCase):
    """Rows for the gateway and the floor, with the ratios to the floor and to relay."""

    def test_rows_and_ratios(self) -> None:
        """tls-haproxy at 6.0 against relay at 4.0 is 1.50x relay and 2.00x its floor; HAProxy's
        CPU shows beside it."""
        lines = markdown(document()).splitlines()
        self.assertEqual(len(lines), 2 + 4)
        tls = [line for line in lines if line.startswith("| tls-haproxy 150 x1 | gateway")][0]
        cells = [c.strip() for c in tls.split("|")]
        self.assertEqual(cells[4:9], ["6.00 (6.00)", "**2.00** (2.00)", "1.50", "40", "12.0"])
        self.assertIn("| floor |", lines[-1])

    def test_command(self) -> None:
        """The command prints one table per file, headed by how it was run."""
        path = temp_path(self, "run.json")
        with open(path, "w") as f:
            json.dump(document(), f)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            self.assertEqual(main([path]), 0)
        self.assertIn("gateway-bench --mode relay,tls-haproxy", out.getvalue())
        self.assertIn("| relay 150 x1 | gateway |", out.getvalue())
