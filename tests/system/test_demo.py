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

    def run_demo(self, *args: str, wav: str | None = None) -> tuple[subprocess.CompletedProcess, str]:
        wav = wav or temp_path(self, "agent.wav")
        gateway = os.path.join(os.path.dirname(sys.executable), "gateway")
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DEEPGRAM_API_KEY")}
        result = subprocess.run([gateway, "demo", "--fast", "--save-audio", wav, *args],
                                capture_output=True, text=True, timeout=100, env=env,
                                cwd=os.path.dirname(wav), stdin=subprocess.DEVNULL)
        return result, wav

    def test_voice_agent_demo(self) -> None:
        """Voice Agent: both sides of the conversation printed, the agent's audio saved; the caller
        speaks only once the greeting has played out (no barge-in drops agent audio) and hangs up
        once the answer has played, not after a fixed wait."""
        result, wav = self.run_demo()
        out = result.stdout
        self.assertEqual(result.returncode, 0, out + result.stderr)
        self.assertIn("agent: ", out)
        self.assertIn("caller: ", out)
        self.assertIn("closed by the gateway: 1000", out)
        greeting_played = out.index("echoed: played")
        speaks = out.index("caller starts speaking (greeting over")
        self.assertLess(greeting_played, speaks, out)
        self.assertNotRegex(out, r"queued agent audio dropped \((?!0\.00 s)", out)
        self.assertIn("the agent's answer has played out; ending the call", out)
        self.assertIn(f"agent audio saved to {wav}", out)
        audio = read_wav(wav)
        self.assertEqual((audio.encoding, audio.sample_rate), ("mulaw", 8000))
        self.assertGreater(audio.duration_s, 1.0)

    def test_listen_demo(self) -> None:
        """Streaming speech-to-text: the caller's transcript printed; an existing agent WAV is left
        alone (listen mode has no agent audio) and nothing claims it was saved."""
        wav = temp_path(self, "agent.wav")
        with open(wav, "wb") as f:
            f.write(b"an earlier demo's audio")
        result, _ = self.run_demo("--mode", "listen", wav=wav)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("caller: ", result.stdout)
        self.assertNotIn("saved", result.stdout)
        with open(wav, "rb") as f:
            self.assertEqual(f.read(), b"an earlier demo's audio")

    def test_flux_demo(self) -> None:
        """Flux (/v2/listen) on the emulator: the caller's turn printed when it ends; nothing saved."""
        result, _ = self.run_demo("--mode", "flux")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("caller: Hello, I would like to check the status of my order.", result.stdout)
        self.assertIn("closed by the gateway: 1000", result.stdout)
        self.assertNotIn("saved", result.stdout)

    def test_bad_config(self) -> None:
        """A configuration error is the one line start-up prints, without --verbose; status 1."""
        bad = temp_path(self, "bad.toml")
        with open(bad, "w") as f:
            f.write('[gateway]\nmdoe = "agent"\n')
        result, _ = self.run_demo("--config", bad)
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stdout, "")
        [line] = result.stderr.splitlines()
        self.assertTrue(line.startswith("gateway: configuration error: gateway.mdoe: unknown key; "
                                        "did you mean 'mode'?"), line)

    def test_save_audio_into_a_missing_folder(self) -> None:
        """--save-audio in a folder that does not exist: one line and status 2 before anything runs."""
        missing = os.path.join(os.path.dirname(temp_path(self, "x")), "missing", "agent.wav")
        result, _ = self.run_demo("--save-audio", missing)
        self.assertEqual(result.returncode, 2)
        self.assertEqual(result.stderr.strip(), f"demo: --save-audio: the folder "
                                                f"{os.path.dirname(missing)!r} does not exist")
