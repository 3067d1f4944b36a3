"""gateway-bench's child processes: pinned, niced, speaking JSON lines (`gateway.bench.workers`)."""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from gateway.bench.workers import Worker, child_env, child_setup

ECHO = ("import json, os, sys\n"
        "print(json.dumps({'hello': 'echo', 'nice': os.nice(0), "
        "'cpus': sorted(os.sched_getaffinity(0))}), flush=True)\n"
        "for line in sys.stdin:\n"
        "    cmd = json.loads(line)\n"
        "    print(json.dumps({'got': cmd['cmd']}), flush=True)\n"
        "    if cmd['cmd'] == 'exit': break\n")


class WorkerTests(SynchronousTestCase):
    """A Worker starts its child with the bench's placement and talks to it."""

    def test_nice_cpu_and_commands(self) -> None:
        """--nice and --pin reach the child (a positive niceness needs no privilege); a command
        gets its answer; stop ends the child."""
        worker = Worker("echo", [sys.executable, "-c", ECHO], cpu=0, nice=5)
        try:
            self.assertEqual(worker.hello["cpus"], [0])
            self.assertEqual(worker.hello["nice"], os.nice(0) + 5)
            self.assertEqual(worker.ask({"cmd": "status"}), {"got": "status"})
        finally:
            worker.stop()
        self.assertEqual(worker.proc.returncode, 0)

    def test_env_and_setup(self) -> None:
        """The child sees the project's root as its only PYTHONPATH, plus what it is given."""
        env = child_env({"EXTRA": "1"})
        self.assertEqual(env["EXTRA"], "1")
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self.assertEqual(os.path.realpath(env["PYTHONPATH"]), os.path.realpath(root))
        done = subprocess.run([sys.executable, "-c", "import os; print(os.nice(0))"],
                              preexec_fn=child_setup(None, 3), capture_output=True, text=True)
        self.assertEqual(int(done.stdout), os.nice(0) + 3)
