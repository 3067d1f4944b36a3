"""
``gateway-bench``: ramp paced calls through a real gateway and report what they cost.

    gateway-bench --mode relay --steps 50,100,150,200 --window-s 20 --json out.json
    gateway-bench --smoke --json smoke.json        # 3 calls, 3 s, relay + transcode + tls
    gateway-bench --mode relay --procs 2 --steps 200,300 --pin   # two processes on one port

Every run of the gateway is paired with a run of the floor (`gateway.bench.floor`, a minimal
pure-Python relay) on the same traffic, alternating which goes first, so that each figure comes
with its ratio to the floor from the same minutes (``--no-floor`` to skip it). The traffic is
real-shaped by default: random 32-bit masks per frame, Twilio's ``start``, the gateway's default
configuration; ``--burst`` makes the calls' frames arrive in ten 2 ms slots. ``--procs N`` runs N
gateway processes on one port (``SO_REUSEPORT``), and N floor processes likewise; the JSON's
``knee`` gives, per mode and process count, the most calls of a step with p99 <= 10 ms both ways
and nothing lost.

Exit status: 0 when every step ran and nothing was lost, duplicated, reordered or misrouted;
1 otherwise; 2 on a usage error. (Speed is never a failure: saturation is flagged, not fatal.)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from gateway.bench import report
from gateway.bench import sampling
from gateway.bench.configs import CHAIN_EXTRAS, MODES
from gateway.bench.orchestrate import Bench
from gateway.bench.summary import knee, median_step, versus_floor

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gateway-bench", description=__doc__.split("\n\n")[0].strip())
    p.add_argument("--mode", default="relay",
                   help=f"comma-separated modes: {', '.join(MODES)} (default relay)")
    p.add_argument("--steps", default="50,100,150,200", help="concurrent calls per step, comma-separated")
    p.add_argument("--window-s", type=float, default=20.0, help="measured window per step (s)")
    p.add_argument("--warmup-s", type=float, default=3.0, help="warm-up after the ramp (s)")
    p.add_argument("--ramp-rate", type=float, default=100.0, help="new calls per second during the ramp")
    p.add_argument("--repeat", type=int, default=1, help="runs of each step (the table shows medians)")
    p.add_argument("--pin", action="store_true",
                   help="gateway on CPU 0, peer and load generator on CPU 1 (sched_setaffinity)")
    p.add_argument("--json", metavar="PATH", help="write every run and the medians as JSON")
    p.add_argument("--profile", metavar="PATH",
                   help="run the gateway under cProfile (twistd --profiler=cprofile); PATH gets the "
                        "stats, PATH.txt the top entries. Profiled figures are not the real ones.")
    p.add_argument("--smoke", action="store_true",
                   help="a quick sanity run: 3 calls, 3 s window, modes relay,transcode,tls")
    p.add_argument("--sample", metavar="DIR",
                   help="sample the gateway with py-spy (non-blocking) during every measured "
                        "window; DIR gets <mode>-<calls>-<run>.txt summaries and the raw stacks")
    p.add_argument("--coalesce-ms", type=int, default=0, metavar="MS",
                   help="put the coalesce stage in the gateway's chain (caller audio sent to the "
                        "peer in messages of MS ms, 20-200); 0 = off, the default")
    p.add_argument("--chain-extra", default="", metavar="NAMES",
                   help="comma-separated built-in plugins added to the gateway's chain, each where "
                        "the registry puts it: record (writing under the bench's directory), "
                        "redact; default none")
    p.add_argument("--reuse-gateway", action="store_true",
                   help="one gateway per mode for all its steps (faster; memory per call then "
                        "includes what earlier steps left); --profile implies it")
    p.add_argument("--floor", action=argparse.BooleanOptionalAction, default=True,
                   help="run the floor relay on the same traffic after (or before) every gateway "
                        "run and report the ratio gateway/floor (default on)")
    p.add_argument("--mask", choices=("random", "zero"), default="random",
                   help="the load generator's masking keys: a random 32-bit key per frame, as "
                        "real clients (the default), or the all-zero key (before issue 21)")
    p.add_argument("--burst", action="store_true",
                   help="the calls' frames arrive in ten 2 ms slots of the 20 ms period (a tenth "
                        "of the calls at once) instead of spread evenly; both directions")
    p.add_argument("--legacy-config", action="store_true",
                   help="the gateway config used before issue 21 (caller_idle_timeout_s = 0, the "
                        "greeting parameter in every mode, a 5 s drain) instead of the default one")
    p.add_argument("--procs", type=int, default=1, metavar="N",
                   help="N gateway processes sharing one port with SO_REUSEPORT (the gateway's "
                        "reuseport: endpoint), and N floor processes likewise; CPU and memory are "
                        "summed over them (and HAProxy's, in tls-haproxy). With --pin, process i "
                        "runs on CPU i mod the CPUs, the load side on CPU 1. Default 1")
    p.add_argument("--nice", type=int, default=0, metavar="N",
                   help="run every child (gateways, floors, HAProxy, peer, load generator) at "
                        "niceness N; a negative N puts the measurement ahead of the host's other "
                        "work on a shared machine (needs root or CAP_SYS_NICE). Default 0")
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.smoke:
        if "--mode" not in (argv if argv is not None else sys.argv):
            args.mode = "relay,transcode,tls"
        args.steps, args.window_s, args.warmup_s = "3", 3.0, 1.0
    modes = [m.strip() for m in args.mode.split(",") if m.strip()]
    for mode in modes:
        if mode not in MODES:
            print(f"gateway-bench: unknown mode {mode!r} (choose from {', '.join(MODES)})", file=sys.stderr)
            return 2
    try:
        steps = [int(s) for s in args.steps.split(",") if s.strip()]
    except ValueError:
        print(f"gateway-bench: --steps must be integers, got {args.steps!r}", file=sys.stderr)
        return 2
    if not steps or min(steps) < 1 or args.repeat < 1 or args.window_s <= 0 or args.procs < 1:
        print("gateway-bench: need at least one step of 1+ calls, --repeat >= 1, --window-s > 0, "
              "--procs >= 1", file=sys.stderr)
        return 2
    chain_extra = [n.strip() for n in args.chain_extra.split(",") if n.strip()]
    for name in chain_extra:
        if name not in CHAIN_EXTRAS:
            print(f"gateway-bench: --chain-extra takes {', '.join(CHAIN_EXTRAS)}, got {name!r}",
                  file=sys.stderr)
            return 2
    if args.coalesce_ms and not 20 <= args.coalesce_ms <= 200:
        print("gateway-bench: --coalesce-ms must be 0 (off) or 20-200", file=sys.stderr)
        return 2
    py_spy = None
    if args.sample:
        py_spy = sampling.find_py_spy()
        if py_spy is None:
            print("gateway-bench: --sample needs py-spy (pip install py-spy)", file=sys.stderr)
            return 2
        os.makedirs(args.sample, exist_ok=True)
    if args.pin and len(os.sched_getaffinity(0)) < 2:
        print("gateway-bench: --pin needs 2 CPUs", file=sys.stderr)
        return 2
    say = (lambda text: None) if args.quiet else (lambda text: print(text, file=sys.stderr, flush=True))
    document: dict[str, Any] = {"machine": report.machine(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                "argv": sys.argv[1:] if argv is None else list(argv),
                                "settings": {"steps": steps, "window_s": args.window_s,
                                             "warmup_s": args.warmup_s, "ramp_rate": args.ramp_rate,
                                             "repeat": args.repeat, "pin": args.pin,
                                             "coalesce_ms": args.coalesce_ms,
                                             "chain_extra": chain_extra,
                                             "floor": args.floor, "mask": args.mask,
                                             "burst": args.burst, "procs": args.procs,
                                             "nice": args.nice,
                                             "config": "legacy" if args.legacy_config else "default"},
                                "runs": [], "steps": []}
    if args.floor:
        document["floor_runs"] = []
        document["floor_steps"] = []
    targets = ["gateway", "floor"] if args.floor else ["gateway"]
    ok = True
    # A fresh gateway per run (the default): memory per call is then that run's own, not the
    # high-water mark an earlier, larger step left in the process (Python keeps its arenas).
    fresh = not args.reuse_gateway and not args.profile
    for mode in modes:
        benches: dict[str, Bench] = {}
        shutdowns: dict[str, list[dict]] = {target: [] for target in targets}

        def started(target: str) -> Bench:
            made = Bench(mode, pin=args.pin, profile=args.profile if target == "gateway" else None,
                         say=say, coalesce_ms=args.coalesce_ms, sample_dir=args.sample,
                         py_spy=py_spy, target=target, mask=args.mask, burst=args.burst,
                         legacy_config=args.legacy_config, chain_extra=chain_extra,
                         procs=args.procs, nice=args.nice)
            made.start()
            key = "baseline_rss_kb" if target == "gateway" else "floor_baseline_rss_kb"
            document.setdefault(key, {}).setdefault(mode, []).append(made.baseline_rss_kb)
            return made

        try:
            for calls in steps:
                runs: dict[str, list] = {target: [] for target in targets}
                for rep in range(args.repeat):
                    # Alternate which goes first, so that a drift in the machine's load over the
                    # minutes of a step falls on both alike.
                    for target in (targets if rep % 2 == 0 else targets[::-1]):
                        bench = benches.get(target)
                        if bench is None:
                            bench = benches[target] = started(target)
                        result = bench.run_step(calls, warmup_s=args.warmup_s,
                                                window_s=args.window_s, ramp_rate=args.ramp_rate)
                        result["repeat"] = rep + 1
                        runs[target].append(result)
                        say(f"[{mode}] {target} {calls} calls run {rep + 1}: "
                            f"{result['gateway_cpu_pct']}% CPU, "
                            f"{result['cpu_ms_per_call_s']} ms/call-s, {result['rss_kb_per_call']} KB/call, "
                            f"in p99 {result['latency_in_ms']['p99']} ms, "
                            f"out p99 {result['latency_out_ms']['p99']} ms, load {result['load_cpu_pct']['total']}% "
                            f"{'; '.join(result['flags'])}")
                        if fresh:
                            shutdowns[target].append(bench.close())
                            del benches[target]
                document["runs"].extend(runs["gateway"])
                step = median_step(runs["gateway"])
                if args.floor:
                    floor_step = median_step(runs["floor"])
                    document["floor_runs"].extend(runs["floor"])
                    document["floor_steps"].append(floor_step)
                    step["floor"] = floor_step
                    step["vs_floor"] = versus_floor(runs["gateway"], runs["floor"], step, floor_step)
                    say(f"[{mode}] {calls} calls: gateway/floor CPU per call "
                        f"{step['vs_floor']['cpu_ms_per_call_s']}")
                document["steps"].append(step)
        except Exception as e:  # report what ran, then fail
            say(f"[{mode}] failed: {e}")
            document.setdefault("failures", []).append(f"{mode}: {e}")
            ok = False
        finally:
            for target, bench in benches.items():
                shutdowns[target].append(bench.close())
            document.setdefault("shutdown", {})[mode] = {
                "gateway_exit": [s.get("gateway_exit") for s in shutdowns["gateway"]],
                "gateway_tracebacks": sum(s["gateway_tracebacks"] for s in shutdowns["gateway"]),
            }
            if MODES[mode].proxy:
                document["shutdown"][mode]["proxy_exit"] = [
                    s.get("proxy_exit") for target in targets for s in shutdowns[target]]
            if args.floor:
                document["shutdown"][mode]["floor_exit"] = [s.get("gateway_exit")
                                                            for s in shutdowns["floor"]]
                document["shutdown"][mode]["floor_tracebacks"] = sum(
                    s["gateway_tracebacks"] for s in shutdowns["floor"])
        if args.profile and os.path.exists(args.profile):
            summary = report.profile_summary(args.profile)
            with open(args.profile + ".txt", "w") as f:
                f.write(summary)
            say(f"[{mode}] profile written to {args.profile} (top entries in {args.profile}.txt)")
    for step in document["steps"] + document.get("floor_steps", []):
        for direction in ("inbound", "outbound"):
            d = step[direction]
            if d["lost"] or d["duplicated"] or d["reordered"] or d["misrouted"] or not d["sent"]:
                ok = False
        if step["error_count"] or "calls failed" in step["flags"]:
            ok = False
    document["ok"] = ok
    document["knee"] = knee(document["steps"])
    if args.floor:
        document["floor_knee"] = knee(document["floor_steps"])
    print(report.table(document["steps"]))
    if args.json:
        report.write_json(args.json, document)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
