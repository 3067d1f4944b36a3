"""
The benchmark's output: a plain-text table per mode, the JSON document, and (``python -m
gateway.bench.report RUN.json...``) the Markdown table of BENCHMARKS.md from saved runs.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from typing import Any

__all__ = ["table", "markdown", "machine", "write_json", "profile_summary"]


def _f(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _lost(direction: dict) -> str:
    r = direction["reordered"]
    return f"{direction['lost']}/{direction['duplicated']}/{'n/a' if r is None else r}"


def table(steps: list[dict]) -> str:
    """
    One row per (mode, calls): medians over the repeats; under it, when the floor ran, the
    floor's row on the same traffic, and the gateway's CPU per call over the floor's (``x floor``).
    ``CPU%`` is summed over the measured processes (``procs``, and HAProxy in tls-haproxy);
    ``kern%`` is the kernel's share of it (system time over user + system).
    """
    head = ("mode", "target", "calls", "procs", "rep", "CPU%", "kern%", "ms CPU/call-s", "x floor",
            "KB/call",
            "in p50", "in p99", "out p50", "out p99", "in lost/dup/reord", "out lost/dup/reord",
            "load CPU%", "flags")
    rows = [head]

    def row(s: dict, target: str, versus: str) -> tuple:
        return (s["mode"], target, str(s["calls"]), str(s.get("procs", 1)), str(s["repeats"]),
                _f(s["gateway_cpu_pct"], 1), _f(s.get("kernel_pct_of_cpu"), 0),
                _f(s["cpu_ms_per_call_s"]), versus, _f(s["rss_kb_per_call"], 1),
                _f(s["in_p50_ms"]), _f(s["in_p99_ms"]), _f(s["out_p50_ms"]), _f(s["out_p99_ms"]),
                _lost(s["inbound"]), _lost(s["outbound"]), _f(s["load_cpu_pct"], 1),
                "; ".join(s["flags"] + ([f"{target[:5]} saturated"] if s.get("gateway_saturated") else []))
                or "ok")

    for s in steps:
        versus = s.get("vs_floor")
        rows.append(row(s, "gw", _f(versus["cpu_ms_per_call_s"]) if versus else "-"))
        if s.get("floor"):
            rows.append(row(s["floor"], "floor", "1"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def machine() -> dict:
    """What the figures were measured on."""
    info: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform(),
                            "cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    for name in ("twisted", "autobahn"):
        try:
            module = __import__(name)
            info[name] = getattr(module, "__version__", None) or str(getattr(module, "version", ""))
        except ImportError:
            pass
    try:
        from autobahn.websocket import protocol as _p  # noqa: F401
        import autobahn.websocket as ws
        info["autobahn_nvx"] = bool(getattr(ws, "USES_NVX", False))
    except ImportError:
        pass
    return info


def write_json(path: str, document: dict) -> None:
    with open(path, "w") as f:
        json.dump(document, f, indent=2, sort_keys=False)
        f.write("\n")


def profile_summary(stats_path: str, limit: int = 25) -> str:
    """The top of a cProfile dump, by own time and by cumulative time."""
    import io
    import pstats

    out = io.StringIO()
    stats = pstats.Stats(stats_path, stream=out)
    stats.strip_dirs().sort_stats("tottime").print_stats(limit)
    stats.sort_stats("cumulative").print_stats(limit)
    return out.getvalue()


def _runs(step: dict, runs: list[dict]) -> str:
    """CPU per call of each run of ``step``, in the order they ran."""
    values = [r["cpu_ms_per_call_s"] for r in runs
              if r["mode"] == step["mode"] and r["calls"] == step["calls"]
              and r.get("procs", 1) == step.get("procs", 1)]
    return ", ".join(_f(v) for v in values)


def markdown(document: dict) -> str:
    """
    The side-by-side table of one run of ``gateway-bench`` in Markdown: per step the gateway's
    row and the floor's, CPU per call (each run's in brackets), the ratio to the floor, the ratio
    to the relay mode's gateway at the same calls and process count (``x relay``, when the run
    had a relay step), the kernel's share, memory per call and the one-way latencies.
    """
    head = ("| mode, calls x procs | target | CPU % | ms CPU / call-s (runs) | x floor | x relay "
            "| kernel % | HAProxy CPU % | KB / call | in p50 / p99 | out p50 / p99 | lost/dup/reord |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    relay = {(s["calls"], s.get("procs", 1)): s["cpu_ms_per_call_s"]
             for s in document["steps"] if s["mode"] == "relay"}
    floor_relay = {(s["calls"], s.get("procs", 1)): s["cpu_ms_per_call_s"]
                   for s in document.get("floor_steps", []) if s["mode"] == "relay"}

    def row(s: dict, target: str, runs: list[dict], versus: str, base: dict) -> str:
        key = (s["calls"], s.get("procs", 1))
        x_relay = (_f(s["cpu_ms_per_call_s"] / base[key]) if key in base and base[key]
                   and s["cpu_ms_per_call_s"] is not None else "-")
        lost = f"{_lost(s['inbound'])}, {_lost(s['outbound'])}"
        name = f"{s['mode']} {s['calls']} x{s.get('procs', 1)}" if target == "gateway" else ""
        return (f"| {name} | {target} | {_f(s['gateway_cpu_pct'], 1)} | "
                f"{_f(s['cpu_ms_per_call_s'])} ({_runs(s, runs)}) | {versus} | {x_relay} | "
                f"{_f(s.get('kernel_pct_of_cpu'), 0)} | {_f(s.get('proxy_cpu_pct'), 1)} | "
                f"{_f(s['rss_kb_per_call'], 1)} | {_f(s['in_p50_ms'])} / {_f(s['in_p99_ms'], 1)} | "
                f"{_f(s['out_p50_ms'])} / {_f(s['out_p99_ms'], 1)} | {lost} |")

    for s in document["steps"]:
        versus = s.get("vs_floor")
        ratio = (f"**{_f(versus['cpu_ms_per_call_s'])}** "
                 f"({', '.join(_f(v) for v in versus['cpu_ms_per_call_s_runs'])})" if versus else "-")
        lines.append(row(s, "gateway", document["runs"], ratio, relay))
        if s.get("floor"):
            lines.append(row(s["floor"], "floor", document["floor_runs"], "1", floor_relay))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        print("usage: python -m gateway.bench.report RUN.json...", file=sys.stderr)
        return 2
    for path in paths:
        with open(path) as f:
            document = json.load(f)
        print(f"<!-- {os.path.basename(path)}: {document.get('started')}, "
              f"gateway-bench {' '.join(document.get('argv', []))} -->")
        print(markdown(document))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
