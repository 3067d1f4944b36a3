"""Start-up errors of a real twistd gateway: exit status 1 and one line naming the key or file."""

from __future__ import annotations

import os

from twisted.trial.unittest import TestCase

from gateway.testing import temp_path

from tests.system.harness import DROPINS, run_twistd_to_exit


class StartupTests(TestCase):
    """Start-up errors of a real twistd."""


    timeout = 60

    def test_broken_dropin(self) -> None:
        """A broken drop-in stops start-up with status 1 and the file's name."""
        config = temp_path(self)
        with open(config, "w") as f:
            f.write(f'[gateway]\ndropin_dirs = ["{os.path.join(DROPINS, "broken")}"]\n')
        result = run_twistd_to_exit(["--config", config], {"DEEPGRAM_API_KEY": "k"})
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        self.assertIn("broken.py", result.stderr)
        self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)

    def test_config_typo(self) -> None:
        """A typo exits 1 naming the key."""
        config = temp_path(self)
        with open(config, "w") as f:
            f.write('[keepalive]\nintervl_s = 3\n')
        result = run_twistd_to_exit(["--config", config], {"DEEPGRAM_API_KEY": "k"})
        self.assertEqual(result.returncode, 1)
        self.assertIn("keepalive.intervl_s", result.stderr)

    def test_missing_key(self) -> None:
        """No DEEPGRAM_API_KEY: exit 1 naming it."""
        env = {"DEEPGRAM_API_KEY": ""}
        result = run_twistd_to_exit([], env)
        self.assertEqual(result.returncode, 1)
        self.assertIn("DEEPGRAM_API_KEY", result.stderr)

    def test_cannot_listen(self) -> None:
        """A port that is taken, or an endpoint that does not parse: exit 1 naming it."""
        import socket

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        self.addCleanup(sock.close)
        port = sock.getsockname()[1]
        for endpoint in (f"tcp:{port}:interface=127.0.0.1", "tcp:http"):
            result = run_twistd_to_exit(["--port", endpoint], {"DEEPGRAM_API_KEY": "k"})
            self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
            self.assertIn("cannot listen on", result.stdout + result.stderr)
