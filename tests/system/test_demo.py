"""The README's first command: `gateway demo` runs the emulator, twistd and a simulated call."""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.trial.unittest import TestCase

from gateway.codecs.wav import read_wav
from gateway.testing import temp_path


class DemoTests(TestCase):
    """The demo ends by itself with status 0, prints a conversation and saves the agent's audio."""

    timeout = 120

    def run_demo(self, *args: str) -> tuple[subprocess.CompletedProcess, str]:
        wav = temp_path(self, "agent.wav")
        gateway = os.path.join(os.path.dirname(sys.executable), "gateway")
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DEEPGRAM_API_KEY")}
        result = subprocess.run([gateway, "demo", "--fast", "--wait-s", "4", "--save-audio", wav, *args],
                                capture_output=True, text=True, timeout=100, env=env,
                                cwd=os.path.dirname(wav), stdin=subprocess.DEVNULL)
        return result, wav

    def test_voice_agent_demo(self) -> None:
        """Voice Agent: both sides of the conversation printed, the agent's audio saved."""
        result, wav = self.run_demo()
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("agent: ", result.stdout)
        self.assertIn("caller: ", result.stdout)
        self.assertIn("closed by the gateway: 1000", result.stdout)
        audio = read_wav(wav)
        self.assertEqual((audio.encoding, audio.sample_rate), ("mulaw", 8000))
        self.assertGreater(audio.duration_s, 1.0)

    def test_listen_demo(self) -> None:
        """Streaming speech-to-text: the caller's transcript printed."""
        result, _ = self.run_demo("--mode", "listen")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("caller: ", result.stdout)
