"""gateway-bench's summaries: the knee (most calls within the p99 target) over steps."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from gateway.bench.summary import knee, meets_target, median_step


def step(calls: int, in_p99: float, out_p99: float, procs: int = 1, lost: int = 0,
         flags: tuple[str, ...] = (), mode: str = "relay") -> dict[str, Any]:
    direction = {"sent": 100, "received": 100 - lost, "lost": lost, "duplicated": 0,
                 "reordered": 0, "misrouted": 0}
    return {"mode": mode, "calls": calls, "procs": procs, "in_p99_ms": in_p99,
            "out_p99_ms": out_p99, "cpu_ms_per_call_s": 4.0, "inbound": direction,
            "outbound": dict(direction, lost=0, received=100), "error_count": 0,
            "flags": list(flags)}


class KneeTests(SynchronousTestCase):
    """`knee`: per mode and process count, the largest step within p99 <= 10 ms both ways."""

    def test_largest_step_within_target(self) -> None:
        """The largest passing step is the knee; the smallest failing one is named too."""
        result = knee([step(100, 1.0, 1.2), step(200, 4.0, 9.9), step(300, 10.5, 3.0)])
        self.assertEqual(result["relay x1"]["calls"], 200)
        self.assertEqual(result["relay x1"]["largest_failed"], 300)

    def test_per_process_count_and_mode(self) -> None:
        """Steps of 1 and 2 processes, and of two modes, have a knee each."""
        result = knee([step(200, 4.0, 4.0), step(400, 6.0, 6.0, procs=2),
                       step(150, 30.0, 30.0, mode="tls")])
        self.assertEqual((result["relay x1"]["calls"], result["relay x2"]["calls"]), (200, 400))
        self.assertEqual(result["relay x2"]["procs"], 2)
        self.assertIsNone(result["tls x1"]["calls"])

    def test_loss_or_failed_calls_miss(self) -> None:
        """A step that lost a frame or failed a call misses, whatever its latency; a late load
        side is only carried as a flag."""
        self.assertFalse(meets_target(step(100, 1.0, 1.0, lost=1)))
        self.assertFalse(meets_target(step(100, 1.0, 1.0, flags=("calls failed",))))
        late = step(100, 1.0, 1.0, flags=("load side late (p99 5.0 ms)",))
        self.assertTrue(meets_target(late))
        self.assertEqual(knee([late])["relay x1"]["flags"], ["load side late (p99 5.0 ms)"])

    def test_median_step_keeps_procs_and_proxy(self) -> None:
        """A step's medians carry its process count and HAProxy's CPU when there is one."""
        run = {"mode": "tls-haproxy", "calls": 10, "procs": 2, "gateway_cpu_pct": 10.0,
               "cpu_ms_per_call_s": 10.0, "rss_kb_per_call": 50.0,
               "latency_in_ms": {"p50": 1.0, "p99": 2.0}, "latency_out_ms": {"p50": 1.0, "p99": 2.0},
               "load_cpu_pct": {"total": 5.0}, "gateway_cpu_system_s": 1.0,
               "gateway_cpu_s_stat": 4.0, "proxy_cpu_pct": 3.0,
               "inbound": {"lost": 0}, "outbound": {"lost": 0}, "method": "stamped payloads",
               "flags": [], "valid": True, "error_count": 0}
        median = median_step([run, dict(run, proxy_cpu_pct=5.0)])
        self.assertEqual((median["procs"], median["proxy_cpu_pct"], median["kernel_pct_of_cpu"]),
                         (2, 4.0, 25.0))
