"""
``python -m gateway.bench.hotpath --callgrind``: the harness run under ``valgrind --tool=callgrind``
at two lengths, and the difference in instructions per frame pair (see `gateway.bench.hotpath`).
Apart from the harness, which is about what a frame goes through, not how it is counted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

__all__ = ["count_instructions"]


def count_instructions(args: argparse.Namespace) -> dict:
    """
    Instructions per frame pair: runs at ``frames`` and ``2 * frames`` per call, ``repeat`` times
    each (two at a time), and the difference of the smallest counts.
    """
    env = dict(os.environ, PYTHONHASHSEED="0")
    tmp = tempfile.mkdtemp(prefix="hotpath-")
    runs = []
    for frames in (args.frames, 2 * args.frames):
        for r in range(args.repeat):
            out = os.path.join(tmp, f"callgrind.{frames}.{r}")
            # setarch -R: no address randomisation, whose effect on hashing by identity moved
            # the counts by ~0.5 % from run to run (0.03 % without it).
            cmd = ["setarch", "-R", "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                   "--collect-atstart=no", "--toggle-collect=functools_reduce",
                   sys.executable, "-m", "gateway.bench.hotpath", "--frames", str(frames),
                   "--calls", str(args.calls), "--mode", args.mode, "--mask", args.mask,
                   "--target", args.target]
            if args.legacy_config:
                cmd.append("--legacy-config")
            if args.stock_dispatch:
                cmd.append("--stock-dispatch")
            runs.append((frames, subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                                  stderr=subprocess.PIPE, text=True)))
            if len([p for _, p in runs if p.poll() is None]) >= 2:
                runs[-2][1].wait()
    counts: dict[int, list[int]] = {args.frames: [], 2 * args.frames: []}
    for frames, proc in runs:
        stdout, stderr = proc.communicate()
        match = re.search(r"Collected : (\d+)", stderr)
        if proc.returncode != 0 or match is None:
            raise RuntimeError(f"callgrind run failed: {stderr[-2000:]}")
        checked = json.loads(stdout.strip().splitlines()[-1])
        if "error" in checked:
            raise RuntimeError(f"hotpath run failed its own check: {checked}")
        counts[frames].append(int(match.group(1)))
    subprocess.run(["rm", "-rf", tmp])
    pairs = args.frames * args.calls
    per_pair = (min(counts[2 * args.frames]) - min(counts[args.frames])) / pairs
    return {"target": args.target, "frames": args.frames, "calls": args.calls, "mode": args.mode,
            "mask": args.mask, "legacy_config": args.legacy_config,
            "stock_dispatch": args.stock_dispatch, "instructions": counts,
            "instructions_per_pair": round(per_pair)}
