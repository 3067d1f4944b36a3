"""
A step's figures over its repeated runs (`median_step`), the gateway's over the floor's from the
same minutes (`versus_floor`), and the largest step that met the latency target (`knee`).
"""

from __future__ import annotations

import statistics
from typing import Any, Callable

__all__ = ["StepResult", "median_step", "versus_floor", "knee", "P99_TARGET_MS"]

#: One run of one step, as `gateway.bench.step.run_step` returns it (JSON-ready).
StepResult = dict

#: Issue 21's latency target: p99 one-way, both ways, per frame.
P99_TARGET_MS = 10.0


def median_step(runs: list[StepResult]) -> StepResult:
    """The median of each figure over repeated runs of one step, with the spread."""
    def med(get: Callable[[StepResult], Any]) -> Any:
        values = [v for v in (get(r) for r in runs) if v is not None]
        return round(statistics.median(values), 3) if values else None

    def spread(get: Callable[[StepResult], Any]) -> Any:
        values = [v for v in (get(r) for r in runs) if v is not None]
        return [round(min(values), 3), round(max(values), 3)] if values else None

    first = runs[0]
    out = {"mode": first["mode"], "calls": first["calls"], "repeats": len(runs),
           "procs": first.get("procs", 1)}
    getters: dict[str, Callable[[StepResult], Any]] = {
        "gateway_cpu_pct": lambda r: r["gateway_cpu_pct"],
        "cpu_ms_per_call_s": lambda r: r["cpu_ms_per_call_s"],
        "rss_kb_per_call": lambda r: r["rss_kb_per_call"],
        "in_p50_ms": lambda r: r["latency_in_ms"]["p50"],
        "in_p99_ms": lambda r: r["latency_in_ms"]["p99"],
        "out_p50_ms": lambda r: r["latency_out_ms"]["p50"],
        "out_p99_ms": lambda r: r["latency_out_ms"]["p99"],
        "load_cpu_pct": lambda r: r["load_cpu_pct"]["total"],
        "kernel_pct_of_cpu": lambda r: (round(100 * r["gateway_cpu_system_s"] / r["gateway_cpu_s_stat"], 1)
                                        if r.get("gateway_cpu_s_stat") else None),
        "proxy_cpu_pct": lambda r: r.get("proxy_cpu_pct"),
    }
    for key, get in getters.items():
        out[key] = med(get)
        out[key + "_range"] = spread(get)
    for direction in ("inbound", "outbound"):
        out[direction] = {k: (sum(r[direction][k] for r in runs) if first[direction][k] is not None else None)
                          for k in first[direction]}
    out["method"] = first["method"]
    out["flags"] = sorted({f for r in runs for f in r["flags"]})
    out["valid"] = all(r["valid"] for r in runs)
    out["gateway_saturated"] = any(r.get("gateway_saturated") for r in runs)
    out["error_count"] = sum(r["error_count"] for r in runs)
    return out


#: The figures compared with the floor's (step medians).
_VERSUS = ("cpu_ms_per_call_s", "rss_kb_per_call", "in_p50_ms", "in_p99_ms", "out_p50_ms",
           "out_p99_ms")


def versus_floor(runs: list[StepResult], floor_runs: list[StepResult], step: dict,
                 floor_step: dict) -> dict:
    """
    The gateway's figures over the floor's, from the same minutes: the ratio of the medians, and
    CPU per call run by run (each gateway run with the floor run next to it). A saturated gateway
    (or floor) shows only 1 core / K as its CPU per call: the ratio is then not its cost
    (``saturated``).
    """
    def ratio(a: Any, b: Any) -> Any:
        return round(a / b, 2) if a is not None and b else None

    out: dict[str, Any] = {key: ratio(step[key], floor_step[key]) for key in _VERSUS}
    out["cpu_ms_per_call_s_runs"] = [ratio(g["cpu_ms_per_call_s"], f["cpu_ms_per_call_s"])
                                     for g, f in zip(runs, floor_runs)]
    out["saturated"] = bool(step.get("gateway_saturated") or floor_step.get("gateway_saturated"))
    return out


def meets_target(step: dict, p99_ms: float = P99_TARGET_MS) -> bool:
    """A step median with p99 at or under ``p99_ms`` both ways, nothing lost or misrouted and no
    failed call. (A late load side is a flag on the figures, not a miss: `knee` carries flags.)"""
    if step["error_count"] or "calls failed" in step["flags"]:
        return False
    for direction in ("inbound", "outbound"):
        d = step[direction]
        if d["lost"] or d["duplicated"] or d["misrouted"] or d["reordered"]:
            return False
    p99 = (step["in_p99_ms"], step["out_p99_ms"])
    return all(v is not None and v <= p99_ms for v in p99)


def knee(steps: list[dict], p99_ms: float = P99_TARGET_MS) -> dict[str, Any]:
    """
    Per mode and process count: the most calls of a step that met the target (`meets_target`),
    and that step's CPU per call; ``None`` when no step did. The most calls *measured*, not the
    most possible: run steps up to where the target fails.
    """
    out: dict[str, Any] = {}
    for step in steps:
        key = f"{step['mode']} x{step.get('procs', 1)}"
        best = out.setdefault(key, {"mode": step["mode"], "procs": step.get("procs", 1),
                                    "calls": None, "cpu_ms_per_call_s": None,
                                    "largest_failed": None, "flags": []})
        if meets_target(step, p99_ms):
            if best["calls"] is None or step["calls"] > best["calls"]:
                best["calls"] = step["calls"]
                best["cpu_ms_per_call_s"] = step["cpu_ms_per_call_s"]
                best["flags"] = step["flags"]
        elif best["largest_failed"] is None or step["calls"] > best["largest_failed"]:
            best["largest_failed"] = step["calls"]
    return out
