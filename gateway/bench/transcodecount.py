"""
The transcoder's instructions per 20 ms frame, each way: ``python -m gateway.bench.transcodecount``.

What `gateway.bench.hotpath --mode transcode --callgrind` counts for the whole gateway, for the
`gateway.codecs.transcode.Transcoder` alone (issue 21, item 3): mu-law 8 kHz -> linear16 16 kHz
("up", Twilio towards Deepgram) and linear16 16 kHz -> mu-law 8 kHz ("down", Deepgram's audio
towards Twilio), the same pair as ``gateway.bench.unitcost``'s ``transcode_costs``. Each direction
runs under ``valgrind --tool=callgrind`` at ``frames`` and twice as many frames, counting only the
conversions (``--toggle-collect``), and the difference divided by ``frames`` is printed:
load-independent, so a before / after on a busy host compares. The frames are 50 fixed
pseudo-random ones (every mu-law byte value, so the loud ones that need clipping too), cycled.

    python -m gateway.bench.transcodecount [--frames 1000]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import re
import subprocess
import sys
import tempfile

__all__ = ["main", "convert_frames"]


def _frames(direction: str) -> tuple[object, list[bytes]]:
    """The transcoder for ``direction`` ("up" or "down") and its 50 input frames."""
    from gateway.codecs.formats import AudioFormat
    from gateway.codecs.transcode import make_transcoder

    ulaw, lin16 = AudioFormat.parse("mulaw/8000"), AudioFormat.parse("linear16/16000")
    rng = random.Random(1)
    frames = [bytes(rng.randrange(256) for _ in range(160)) for _ in range(50)]
    if direction == "down":
        up = make_transcoder(ulaw, lin16)
        return make_transcoder(lin16, ulaw), [up.convert(f) for f in frames]
    return make_transcoder(ulaw, lin16), frames


def convert_frames(direction: str, count: int) -> int:
    """
    Convert ``count`` frames in ``direction`` (after one untimed pass over the 50), inside
    ``functools.reduce``, the function callgrind's ``--toggle-collect`` names; returns the bytes
    produced by the counted frames.
    """
    transcoder, frames = _frames(direction)
    convert = transcoder.convert  # type: ignore[attr-defined]
    for frame in frames:
        convert(frame)

    def step(total: int, i: int) -> int:
        return total + len(convert(frames[i % 50]))

    return functools.reduce(step, range(count), 0)


def _count(direction: str, frames: int, out: str) -> int:
    """Instructions callgrind collected for ``frames`` frames in ``direction``."""
    cmd = ["setarch", "-R", "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
           "--collect-atstart=no", "--toggle-collect=functools_reduce",
           sys.executable, "-m", "gateway.bench.transcodecount", "--run", direction,
           "--frames", str(frames)]
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONHASHSEED="0"))
    match = re.search(r"Collected : (\d+)", proc.stderr)
    if proc.returncode != 0 or match is None:
        raise RuntimeError(f"callgrind run failed: {proc.stderr[-2000:]}")
    return int(match.group(1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gateway.bench.transcodecount",
                                description=__doc__.split("\n\n")[0].strip())
    p.add_argument("--frames", type=int, default=1000)
    p.add_argument("--run", choices=("up", "down"), help=argparse.SUPPRESS)  # the counted child
    args = p.parse_args(argv)
    if args.run:
        convert_frames(args.run, args.frames)
        return 0
    result: dict[str, object] = {"frames": args.frames}
    with tempfile.TemporaryDirectory(prefix="transcodecount-") as tmp:
        for direction in ("up", "down"):
            counts = [_count(direction, n, os.path.join(tmp, f"{direction}.{n}"))
                      for n in (args.frames, 2 * args.frames)]
            result[f"{direction}_instructions_per_frame"] = round(
                (counts[1] - counts[0]) / args.frames)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
