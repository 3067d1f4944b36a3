"""
A sampling profile of the gateway during a step's measured window (``gateway-bench --sample``).

cProfile (``--profile``) instruments every call and slows the gateway by a factor of two or
more, so its shares overstate small Python functions. py-spy samples the running process from
outside without stopping it (``--nonblocking``). A sample whose innermost frame is the reactor's
``epoll`` wait is the gateway waiting for work and is left out; every other sample is work, and
a system call (``send``, ``recv``) counts for the Python function that made it, which is where
most of a relay's time goes. (py-spy's ``--gil`` mode, which keeps only samples holding the GIL,
was tried and dropped: it missed most samples and gave identical code different counts in two
runs.) py-spy runs on the load side's CPU when the bench is pinned.

py-spy is not a dependency of the gateway: install it (``pip install py-spy``) to use this.
"""

from __future__ import annotations

import collections
import os
import shutil
import subprocess
import sys
from typing import Any

__all__ = ["find_py_spy", "Sampler", "summarise"]


def find_py_spy() -> str | None:
    """The py-spy executable beside this Python, or on PATH (None if there is none)."""
    beside = os.path.join(os.path.dirname(sys.executable), "py-spy")
    if os.access(beside, os.X_OK):
        return beside
    return shutil.which("py-spy")


class Sampler:
    """py-spy recording ``pid`` for ``duration_s`` into ``path`` (raw collapsed stacks)."""

    def __init__(self, exe: str, pid: int, duration_s: float, path: str,
                 preexec_fn: Any = None, rate_hz: int = 250) -> None:
        self.path = path
        argv = [exe, "record", "-r", str(rate_hz),
                "-d", str(max(1, round(duration_s))), "-f", "raw", "-o", path, "-p", str(pid)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     preexec_fn=preexec_fn)

    def wait(self, timeout_s: float = 30.0) -> str | None:
        """Wait for the recording; return an error message if there is no profile."""
        try:
            _, err = self.proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        if self.proc.returncode != 0 or not os.path.exists(self.path):
            return f"py-spy exited {self.proc.returncode}: {err.decode(errors='replace')[-500:]}"
        return None


def _frame_name(frame: str) -> str:
    """``func (gateway/legs/wire.py:123)`` -> ``func (gateway/legs/wire.py)``."""
    name, _, where = frame.partition(" (")
    if not where:
        return name
    return f"{name} ({where.rstrip(')').rsplit(':', 1)[0]})"


#: Innermost frames of samples that wait rather than work: the reactor in ``epoll``, and the
#: idle worker thread of Twisted's thread pool (py-spy samples every thread).
WAITING = frozenset({
    "EPollReactor.doPoll (twisted/internet/epollreactor.py)",
    "Condition.wait (threading.py)",
})


def summarise(path: str, top: int = 40) -> dict:
    """
    Own and cumulative shares of the working samples in a raw py-spy file, largest first
    (``waiting``: the samples left out because the reactor was waiting in ``epoll``).
    """
    own: collections.Counter = collections.Counter()
    cumulative: collections.Counter = collections.Counter()
    total = waiting = 0
    with open(path, errors="replace") as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            frames = [_frame_name(x) for x in stack.split(";")]
            if frames[-1] in WAITING:
                waiting += n
                continue
            total += n
            own[frames[-1]] += n
            for name in set(frames):
                cumulative[name] += n
    share = (lambda n: round(100.0 * n / total, 2)) if total else (lambda n: 0.0)
    return {
        "samples": total,
        "waiting": waiting,
        "own": [(name, share(n)) for name, n in own.most_common(top)],
        "cumulative": [(name, share(n)) for name, n in cumulative.most_common(top)],
    }


def render(summary: dict) -> str:
    """The summary as text: own and cumulative percentages of the working samples."""
    lines = [f"{summary['samples']} samples of work ({summary['waiting']} more waiting in epoll or "
             f"an idle thread, left out); shares of the work", "", "own %   function"]
    lines += [f"{pct:6.2f}  {name}" for name, pct in summary["own"]]
    lines += ["", "cumulative %   function"]
    lines += [f"{pct:6.2f}  {name}" for name, pct in summary["cumulative"]]
    return "\n".join(lines) + "\n"
