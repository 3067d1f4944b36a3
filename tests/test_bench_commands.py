"""The load-side processes' command base (`gateway.bench.loop.Commands`)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.bench.loop import Commands


class Echo(Commands):
    latency_key = "echo_latency"

    def cmd_echo(self, cmd: dict) -> dict:
        return {"echo": cmd["text"]}


class CommandsTests(SynchronousTestCase):
    """Dispatch by name to ``cmd_<name>``; the measured window; exit."""

    def setUp(self) -> None:
        self.side = Echo(control=False)

    def test_dispatch(self) -> None:
        """A subclass's command answers; an unknown one is an error naming it."""
        self.assertEqual(self.side.command({"cmd": "echo", "text": "hi"}), {"echo": "hi"})
        self.assertEqual(self.side.command({"cmd": "nope"}), {"error": "unknown command 'nope'"})

    def test_window(self) -> None:
        """mark opens a window; endwindow closes it with CPU, lateness and the latencies under
        the subclass's name, in milliseconds."""
        self.side.command({"cmd": "mark"})
        self.assertTrue(self.side.in_window)
        self.side.lateness.append(2_000_000)
        self.side.latency += [1_000_000, 3_000_000]
        answer = self.side.command({"cmd": "endwindow"})
        assert answer is not None
        self.assertFalse(self.side.in_window)
        self.assertEqual(answer["lateness"]["p50"], 2.0)
        self.assertEqual((answer["echo_latency"]["n"], answer["echo_latency"]["max"]), (2, 3.0))
        self.assertGreaterEqual(answer["cpu_s"], 0)
        self.assertIn("cpu_pct", answer)

    def test_exit(self) -> None:
        """exit stops the loop."""
        self.assertEqual(self.side.command({"cmd": "exit"}), {"ok": True})
        self.assertFalse(self.side.loop.running)
