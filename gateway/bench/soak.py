"""
``python -m gateway.bench.soak``: churn calls through one gateway for a long time and watch its
memory, to tell a leak from an allocator's high-water mark (issue 19, item 7).

Three processes: the Deepgram emulator (``gateway-emulator``), a load process that keeps
``--calls`` real-time Twilio calls going (each a short clip, then hang up, then a new call), and
this one, which runs the gateway itself (a real `gateway.service.GatewayService` on the reactor)
under ``tracemalloc``. Every ``--every-s`` it records the process's RSS, tracemalloc's current
and peak traced bytes, the number of objects the garbage collector tracks, and the calls done;
at the end it compares the last snapshot with the one taken when the warm-up ended and prints
the allocation sites that grew most. Exit status 0; the verdict is for a human (and
BENCHMARKS.md): memory that levels off is a high-water mark, memory that keeps rising is a leak.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
import tracemalloc
from typing import Any

__all__ = ["main"]


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _load(url: str, calls: int) -> None:
    """The load process: ``calls`` concurrent real-time calls, each followed by the next."""
    from twisted.internet import defer, reactor

    from gateway.codecs.wav import read_wav
    from gateway.simulator import TwilioCall

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    clip = read_wav(os.path.join(here, "data", "caller-order-8k-mulaw.wav"))  # 5.3 s of speech
    done = [0]

    @defer.inlineCallbacks
    def one_after_another() -> Any:
        while True:
            call = TwilioCall(reactor, url=url + "/twilio", audio=clip, realtime=True, wait_s=1.0,
                              keep_media=False)
            try:
                yield call.run()
            except Exception:
                pass
            done[0] += 1
            print(json.dumps({"calls_done": done[0]}), flush=True)

    for _ in range(calls):
        one_after_another()
    reactor.run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--calls", type=int, default=30, help="concurrent real-time calls")
    parser.add_argument("--every-s", type=float, default=60.0)
    parser.add_argument("--warmup-minutes", type=float, default=10.0)
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--load", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.load:
        _load(args.load, args.calls)
        return 0

    tracemalloc.start(8)
    from twisted.internet import reactor, task

    from gateway.service import GatewayService
    from gateway.testing import configure

    key = "soak-key"
    emulator_port = _free_port()
    emulator = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "gateway-emulator"), "--port",
         f"tcp:{emulator_port}:interface=127.0.0.1", "--key", key],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    configured = configure({"gateway": {"max_calls": 10_000},
                            "keepalive": {"caller_idle_timeout_s": 0}},
                           {"DEEPGRAM_API_KEY": key,
                            "DEEPGRAM_AGENT_URL": f"ws://127.0.0.1:{emulator_port}/v1/agent/converse"})
    service = GatewayService(configured, "tcp:0:interface=127.0.0.1", reactor)
    rows: list[dict[str, Any]] = []
    state: dict[str, Any] = {"calls_done": 0, "warm": None, "load": None}
    started = time.monotonic()

    def sample() -> None:
        load = state["load"]
        if load is not None:
            # Non-blocking read of the load process's progress lines.
            try:
                chunk = os.read(load.stdout.fileno(), 1 << 16).decode()
            except BlockingIOError:
                chunk = ""
            for line in chunk.splitlines():
                try:
                    state["calls_done"] = json.loads(line)["calls_done"]
                except (ValueError, KeyError):
                    pass
        current, peak = tracemalloc.get_traced_memory()
        minute = (time.monotonic() - started) / 60
        row = {"minute": round(minute, 2), "rss_kb": _rss_kb(), "traced_kb": current // 1024,
               "traced_peak_kb": peak // 1024, "gc_objects": len(gc.get_objects()),
               "live_calls": len(service.gateway.calls), "calls_done": state["calls_done"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if state["warm"] is None and minute >= args.warmup_minutes:
            state["warm"] = tracemalloc.take_snapshot()
        if minute >= args.minutes:
            reactor.stop()

    def started_listening(_: Any) -> None:
        port = service.port.getHost().port
        load = subprocess.Popen([sys.executable, "-m", "gateway.bench.soak", "--load",
                                 f"ws://127.0.0.1:{port}", "--calls", str(args.calls)],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert load.stdout is not None
        os.set_blocking(load.stdout.fileno(), False)
        state["load"] = load
        task.LoopingCall(sample).start(args.every_s, now=True)

    time.sleep(1.0)  # the emulator's start
    d = service.startService()
    d.addCallback(started_listening)
    reactor.run()
    for proc in (state["load"], emulator):
        if proc is not None:
            proc.terminate()
            proc.wait(10)
    growth = []
    if state["warm"] is not None:
        stats = tracemalloc.take_snapshot().compare_to(state["warm"], "lineno")
        growth = [{"site": str(s.traceback), "size_diff_kb": s.size_diff // 1024, "count_diff": s.count_diff}
                  for s in stats[:15]]
        print("largest growth since the warm-up:")
        for g in growth:
            print(f"  {g['size_diff_kb']:+7d} KB {g['count_diff']:+7d} objects  {g['site']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "growth": growth, "calls": args.calls}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
