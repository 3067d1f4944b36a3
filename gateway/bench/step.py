"""
One step of a benchmark: K calls through the measured processes, and what they cost.

Reset the peer, open K calls at ``ramp_rate`` calls/s, wait until every call receives agent audio,
warm up, then measure a fixed window (the measured processes' CPU from /proc, the load side's own
CPU and scheduling lateness, one-way latencies), then read VmRSS, stop both audio sources, let
frames in flight land, count what was sent against what arrived (for the whole step, not just the
window), and end every call with Twilio ``stop`` (the gateway closes Deepgram, then the caller,
with 1000).
"""

from __future__ import annotations

import os
import pickle
import time
from typing import TYPE_CHECKING, Any

from gateway.bench import procstat
from gateway.bench import sampling
from gateway.bench.loop import percentiles
from gateway.bench.summary import StepResult
from gateway.bench.workers import LOAD_CPU, Worker, child_setup

if TYPE_CHECKING:
    from gateway.bench.orchestrate import Bench

__all__ = ["run_step", "SATURATED_CPU_PCT", "SATURATED_LATENESS_MS", "GATEWAY_SATURATED_PCT"]

SATURATED_CPU_PCT = 85.0
SATURATED_LATENESS_MS = 4.0
GATEWAY_SATURATED_PCT = 97.0


def _cpu(pids: list[int]) -> tuple[float, float, float]:
    """(user s, system s, on-CPU s from schedstat) summed over ``pids``."""
    user = system = sched = 0.0
    for pid in pids:
        u, s = procstat.user_system_seconds(pid)
        user, system, sched = user + u, system + s, sched + procstat.schedstat_seconds(pid)
    return user, system, sched


def run_step(bench: "Bench", calls: int, warmup_s: float = 3.0, window_s: float = 20.0,
             ramp_rate: float = 100.0, primer: bool = False) -> StepResult:
    """One step of ``calls`` calls on a started `Bench` (see the module docstring)."""
    peer, loadgen = bench.workers()
    joined = bench.transcode
    pids = bench.measured_pids()
    first = bench.take_indices(calls)
    peer.ask({"cmd": "reset", "joined": joined, "in_unit": 640, "out_unit": 640,
              "burst": bench.burst})
    loadgen.send({"cmd": "start", "calls": calls, "host": "127.0.0.1",
                  "port": bench.gateway_port, "joined": joined, "ramp_rate": ramp_rate,
                  "first_index": first, "timeout_s": calls / ramp_rate + 20,
                  "mask": bench.mask, "burst": bench.burst})
    ready = loadgen.read(calls / ramp_rate + 40)
    result: StepResult = {"mode": bench.mode, "target": bench.target, "calls": calls,
                          "procs": bench.procs, "ready": ready["ready"], "failed": ready["failed"],
                          "errors": list(ready["errors"])}
    time.sleep(warmup_s)
    user0, system0, sched0 = _cpu(pids)
    proxy0 = _cpu([bench.proxy.pid]) if bench.proxy is not None else None
    w0 = time.monotonic_ns()
    loadgen.ask({"cmd": "mark"})
    peer.ask({"cmd": "mark"})
    sampler, name = None, ""
    if bench.sample_dir and bench.py_spy and not primer and bench.target == "gateway":
        name = os.path.join(bench.sample_dir, f"{bench.mode}-{calls}-{bench.next_sample()}")
        sampler = sampling.Sampler(bench.py_spy, pids[0], window_s, name + ".raw",
                                   preexec_fn=child_setup(LOAD_CPU if bench.pin else None))
    time.sleep(window_s)
    lg = loadgen.ask({"cmd": "endwindow"})
    pr = peer.ask({"cmd": "endwindow"})
    user1, system1, sched1 = _cpu(pids)
    proxy1 = _cpu([bench.proxy.pid]) if bench.proxy is not None else None
    w1 = time.monotonic_ns()
    rss = sum(procstat.rss_kb(pid) for pid in pids)
    wall = (w1 - w0) / 1e9
    if sampler is not None:
        problem = sampler.wait()
        if problem:
            bench.say(f"[{bench.mode}] no sample at {calls} calls: {problem}")
        else:
            with open(name + ".txt", "w") as f:
                f.write(sampling.render(sampling.summarise(sampler.path)))
            bench.say(f"[{bench.mode}] py-spy sample of {calls} calls in {name}.txt")
    lt, pt = _settle(peer, loadgen)
    latency_in, latency_out = pr["in_latency"], lg["out_latency"]
    if joined:
        latency_in, latency_out = _joined_latency(bench.dir, peer, loadgen, w0, w1)
    loadgen.send({"cmd": "stop", "timeout_s": 15})
    closed = loadgen.read(30)
    deadline = time.monotonic() + 10
    status = peer.ask({"cmd": "status"})
    while status["open"] and time.monotonic() < deadline:
        time.sleep(0.1)
        status = peer.ask({"cmd": "status"})
    time.sleep(0.2)
    result.update(_counts(lt, pt, joined))
    load_cpu = lg["cpu_pct"] + pr["cpu_pct"]
    lateness = max(lg["lateness"]["p99"] or 0.0, pr["lateness"]["p99"] or 0.0)
    cpu_s = sched1 - sched0
    result.update({
        "window_s": round(wall, 3),
        "gateway_cpu_s": round(cpu_s, 4),
        "gateway_cpu_s_stat": round((user1 + system1) - (user0 + system0), 3),
        # the kernel's share (system calls: recv, send, epoll; loopback TCP on both ends)
        "gateway_cpu_user_s": round(user1 - user0, 3),
        "gateway_cpu_system_s": round(system1 - system0, 3),
        "gateway_cpu_pct": round(100 * cpu_s / wall, 2),
        "cpu_ms_per_call_s": round(1000 * cpu_s / (calls * wall), 3),
        "rss_kb": rss,
        "baseline_rss_kb": bench.baseline_rss_kb,
        "rss_kb_per_call": (round((rss - bench.baseline_rss_kb) / calls, 2)
                            if bench.baseline_rss_kb else None),
        "latency_in_ms": latency_in,
        "latency_out_ms": latency_out,
        "load_cpu_pct": {"loadgen": round(lg["cpu_pct"], 2), "peer": round(pr["cpu_pct"], 2),
                         "total": round(load_cpu, 2)},
        "load_lateness_ms": {"loadgen": lg["lateness"], "peer": pr["lateness"]},
        "teardown": {"closed": closed.get("closed"), "forced": closed.get("forced"),
                     "peer_open_after": status["open"]},
    })
    if proxy0 is not None and proxy1 is not None:
        # HAProxy's share, already inside the figures above (it is one of the measured pids).
        result["proxy_cpu_s"] = round(proxy1[2] - proxy0[2], 4)
        result["proxy_cpu_pct"] = round(100 * (proxy1[2] - proxy0[2]) / wall, 2)
    errors = result["errors"] + lt["errors"] + pt["errors"] + closed.get("errors", [])
    result["error_count"] = (lt["error_count"] + pt["error_count"] + closed.get("error_count", 0)
                             + len(ready["errors"]))
    new_errors = bench.floor_errors()
    errors += new_errors
    result["error_count"] += len(new_errors)
    result["errors"] = errors[:20]
    peer.ask({"cmd": "reset"})
    per_core = SATURATED_CPU_PCT if bench.pin else SATURATED_CPU_PCT * 2
    flags = []
    if load_cpu > per_core or max(lg["cpu_pct"], pr["cpu_pct"]) > SATURATED_CPU_PCT:
        flags.append("load side saturated (CPU)")
    if lateness > SATURATED_LATENESS_MS:
        flags.append(f"load side late (p99 {lateness:.1f} ms)")
    if result["ready"] < calls or result["failed"]:
        flags.append("calls failed")
    result["flags"] = flags
    result["valid"] = not flags
    # Not a fault of the measurement, but it changes what the figures mean: a saturated
    # gateway queues (latency grows) and its CPU per call-second is only 1 core / K.
    result["gateway_saturated"] = result["gateway_cpu_pct"] >= GATEWAY_SATURATED_PCT * bench.procs
    return result


def _settle(peer: Worker, loadgen: Worker) -> tuple[dict, dict]:
    """Stop both audio sources and wait (up to 60 s) until what is in flight has landed: a
    saturated gateway holds a backlog. Returns both sides' totals."""
    peer.ask({"cmd": "quiesce"})
    loadgen.ask({"cmd": "quiesce"})
    time.sleep(0.5)
    last: tuple[int, int] | None = None
    settle_deadline = time.monotonic() + 60
    while True:
        lt = loadgen.ask({"cmd": "totals"}, 60)
        pt = peer.ask({"cmd": "totals"}, 60)
        seen = (sum(c["out"]["unique"] + c["out_units"] for c in lt["calls"].values()),
                sum(c["in"]["unique"] + c["in_units"] for c in pt["calls"].values()))
        if seen == last or time.monotonic() > settle_deadline:
            return lt, pt
        last = seen
        time.sleep(0.5)


def _counts(lt: dict, pt: dict, joined: bool) -> dict:
    """Sent against received, each way: by stamp (relay) or by 20 ms units (transcoding)."""
    lcalls = {int(k): v for k, v in lt["calls"].items()}
    pcalls = {int(k): v for k, v in pt["calls"].items()}
    inbound: dict[str, Any] = {"sent": 0, "received": 0, "lost": 0, "duplicated": 0,
                               "reordered": 0, "misrouted": 0}
    outbound = dict(inbound)
    for index, lc in lcalls.items():
        pc = pcalls.get(index)
        inbound["sent"] += lc["in_sent"]
        if pc is None:
            inbound["lost"] += lc["in_sent"]
            continue
        outbound["sent"] += pc["out_sent"]
        if joined:
            got_in, got_out = pc["in_units"], lc["out_units"]
            inbound["received"] += got_in
            outbound["received"] += got_out
            inbound["lost"] += max(0, lc["in_sent"] - got_in)
            inbound["duplicated"] += max(0, got_in - lc["in_sent"])
            outbound["lost"] += max(0, pc["out_sent"] - got_out)
            outbound["duplicated"] += max(0, got_out - pc["out_sent"])
        else:
            for (side, track, sent) in ((inbound, pc["in"], lc["in_sent"]),
                                        (outbound, lc["out"], pc["out_sent"])):
                side["received"] += track["unique"] + track["dup"]
                side["lost"] += max(0, sent - track["unique"])
                side["duplicated"] += track["dup"]
                side["reordered"] += track["reorder"]
                side["misrouted"] += track["misrouted"] + track["bad"]
    if joined:
        inbound["reordered"] = outbound["reordered"] = None   # not observable: see BENCHMARKS.md
    return {"inbound": inbound, "outbound": outbound,
            "method": "frame index (counts)" if joined else "stamped payloads"}


def _joined_latency(directory: str, peer: Worker, loadgen: Worker, w0: int,
                    w1: int) -> tuple[dict, dict]:
    """Transcoding: the n-th 20 ms out of the gateway is the n-th 20 ms in, per call."""
    import numpy as np

    lpath = os.path.join(directory, "loadgen.pickle")
    ppath = os.path.join(directory, "peer.pickle")
    loadgen.ask({"cmd": "dump", "path": lpath}, 60)
    peer.ask({"cmd": "dump", "path": ppath}, 60)
    with open(lpath, "rb") as f:
        lg = pickle.load(f)
    with open(ppath, "rb") as f:
        pr = pickle.load(f)
    os.unlink(lpath)
    os.unlink(ppath)
    ins: list[Any] = []
    outs: list[Any] = []
    for index, (in_send, out_recv) in lg.items():
        if index not in pr:
            continue
        in_recv, out_send = pr[index]
        for sent, got, bucket in ((in_send, in_recv, ins), (out_send, out_recv, outs)):
            n = min(len(sent), len(got))
            s = np.frombuffer(sent, dtype=np.int64)[:n]
            g = np.frombuffer(got, dtype=np.int64)[:n]
            keep = (s >= w0) & (s <= w1)
            bucket.append(g[keep] - s[keep])

    def summary(chunks: list[Any]) -> dict:
        data = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)
        return percentiles(data.tolist())
    return summary(ins), summary(outs)
