"""
The bench's child processes: how each is started (pinned to a CPU, dying with the orchestrator,
the project on its ``PYTHONPATH``) and `Worker`, a load-side process spoken to in JSON lines.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import socket
import subprocess
import time
from typing import IO, Any, Callable

__all__ = ["Worker", "child_setup", "child_env", "free_port", "GATEWAY_CPU", "LOAD_CPU"]

#: With ``--pin``: the CPU of the measured process (gateway, floor, HAProxy), and of the load side.
GATEWAY_CPU, LOAD_CPU = 0, 1


def child_setup(cpu: int | None, nice: int = 0) -> Callable[[], None]:
    """A ``preexec_fn``: die with the orchestrator, run on ``cpu`` when given, and at niceness
    ``nice`` (negative: ahead of the host's other work; needs root or CAP_SYS_NICE)."""
    def setup() -> None:
        # Die with the orchestrator (PR_SET_PDEATHSIG = 1), so that nothing outlives a killed run.
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
        except OSError:
            pass
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        if nice:
            os.nice(nice)
            _autogroup(nice)
    return setup


def _autogroup(nice: int) -> None:
    """
    With the kernel's autogroup scheduling on (``kernel.sched_autogroup_enabled``), a process's
    niceness only orders it within its session's group, and each session's group gets an equal
    share of a CPU: on a host where other sessions keep the CPUs busy, ``nice`` alone changed
    nothing (measured: a busy loop at nice -15 got 23 % of its core, at nice 0 20 %). So the
    child takes a session (a group) of its own and gives the group the same niceness. Best
    effort: without autogroup, or without the privilege, it stays as it was.
    """
    try:
        with open("/proc/sys/kernel/sched_autogroup_enabled") as f:
            if f.read().strip() != "1":
                return
        os.setsid()
        with open("/proc/self/autogroup", "w") as f:
            f.write(str(nice))
    except OSError:
        pass


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment with the project's root as the only ``PYTHONPATH``."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root
    env.update(extra or {})
    return env


def free_port() -> int:
    """A loopback port free now (for a process to bind, or several with SO_REUSEPORT)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Worker:
    """A load-side process (peer, load generator, floor) spoken to in JSON lines."""

    def __init__(self, name: str, argv: list[str], cpu: int | None, stderr: Any = None,
                 env: dict[str, str] | None = None, nice: int = 0) -> None:
        self.name = name
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=stderr, env=child_env(env),
                                     preexec_fn=child_setup(cpu, nice))
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._stdin: IO[bytes] = self.proc.stdin
        self._stdout: IO[bytes] = self.proc.stdout
        self._buf = b""
        self.hello = self.read(30)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def read(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        fd = self._stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.name}: no answer within {timeout} s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise RuntimeError(f"{self.name} exited ({self.proc.wait()})")
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        answer: dict = json.loads(line)
        return answer

    def send(self, cmd: dict) -> None:
        self._stdin.write(json.dumps(cmd).encode() + b"\n")
        self._stdin.flush()

    def ask(self, cmd: dict, timeout: float = 30.0) -> dict:
        self.send(cmd)
        return self.read(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.ask({"cmd": "exit"}, 5)
            except (OSError, TimeoutError, RuntimeError, ValueError):
                pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
