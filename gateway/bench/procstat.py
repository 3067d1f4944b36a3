"""The gateway's own accounting, read from /proc: CPU time and resident memory."""

from __future__ import annotations

import os

__all__ = ["cpu_seconds", "user_system_seconds", "schedstat_seconds", "rss_kb"]

_TICK = os.sysconf("SC_CLK_TCK")


def user_system_seconds(pid: int) -> tuple[float, float]:
    """utime and stime of the whole process (all threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    fields = text[text.rindex(")") + 2:].split()
    # fields[0] is state (field 3 of proc(5)); utime and stime are fields 14 and 15.
    return int(fields[11]) / _TICK, int(fields[12]) / _TICK


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all threads), from /proc/<pid>/stat."""
    user, system = user_system_seconds(pid)
    return user + system


def schedstat_seconds(pid: int) -> float:
    """Time on CPU of every thread, in ns resolution, from /proc/<pid>/task/*/schedstat."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total / 1e9


def rss_kb(pid: int) -> int:
    """VmRSS from /proc/<pid>/status, in kB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")
