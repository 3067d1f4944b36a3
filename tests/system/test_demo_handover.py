"""
``gateway demo --handover``: two gateway processes behind the local front, a whole Twilio call
started on the first, SIGTERM to it mid-call; the conversation goes on in the second.
"""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.trial.unittest import TestCase

from gateway.codecs.wav import read_wav
from gateway.testing import temp_path


def run_demo(*args: str, wav: str) -> subprocess.CompletedProcess:
    gateway = os.path.join(os.path.dirname(sys.executable), "gateway")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DEEPGRAM_API_KEY")}
    return subprocess.run([gateway, "demo", "--save-audio", wav, *args], capture_output=True, text=True,
                          timeout=150, env=env, cwd=os.path.dirname(wav), stdin=subprocess.DEVNULL)


class HandoverDemoTests(TestCase):
    """The demo ends by itself with status 0 and shows the agent remembering after the restart."""

    timeout = 180

    def test_conversation_survives_the_restart(self) -> None:
        wav = temp_path(self, "agent.wav")
        result = run_demo("--handover", wav=wav)
        out = result.stdout
        self.assertEqual(result.returncode, 0, out + result.stderr)
        # Each source's lines in order: gateway A's, gateway B's (each echoed by the demo as it
        # logs them) and the simulator's (written by its own process, so the three interleave
        # only roughly).
        sources = {
            "A": ["[A] agent: Hello! How can I help you today?",
                  "[A] caller: Hello, I would like to check the status of my order.",
                  "[A] agent: Sure, I can help with that.",
                  "SIGTERM to A",
                  "[A] HANDED_OVER: "],
            # The next turn of the same conversation, on B, and no second greeting.
            "B": ["[B] HANDOVER_RESUMED: ",
                  "[B] caller: The number is four five six seven.",
                  "[B] agent: Thanks, let me look that up for you."],
            "simulator": ["closed by the gateway: 1000 (normal closure) 'HANDED_OVER'",
                          "Twilio requests the <Connect action> URL: HTTP 200, a new <Connect><Stream>",
                          "carrying a resume token",
                          "the agent's answer has played out; ending the call"],
        }
        for source, order in sources.items():
            missing = [text for text in order if text not in out]
            self.assertEqual(missing, [], out)
            positions = [out.find(text) for text in order]
            self.assertEqual(positions, sorted(positions), f"{source}'s lines out of order:\n{out}")
        self.assertNotIn("[B] agent: Hello!", out)
        self.assertIn("2 stream(s), 1 action request(s)", out)
        self.assertIn("gateway A exited after its drain", out)
        self.assertGreater(read_wav(wav).duration_s, 1.0)

    def test_only_the_agent_demo(self) -> None:
        """--handover with another mode or a configuration: one line, status 2, nothing started."""
        wav = temp_path(self, "agent.wav")
        result = run_demo("--handover", "--mode", "listen", wav=wav)
        self.assertEqual((result.returncode, result.stdout), (2, ""))
        [line] = result.stderr.splitlines()
        self.assertTrue(line.startswith("demo: --handover shows the Voice Agent"), line)
