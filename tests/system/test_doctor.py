"""`gateway doctor` against the emulator: OK, and the right diagnosis for each fault."""

from __future__ import annotations

import os
import sys

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from gateway.doctor import run_doctor
from gateway.testing import TEST_API_KEY, configure
from tests.system.harness import emulator_env, start_emulator


class DoctorTests(TestCase):
    """The probe call's verdict, in plain words."""

    timeout = 60

    @defer.inlineCallbacks
    def doctor(self, emulator, config: dict | None = None, **env: str) -> defer.Deferred:
        environ = {**emulator_env(emulator), "DEEPGRAM_API_URL": emulator.http_url, **env}
        lines: list[str] = []
        status = yield run_doctor(reactor, configure(config, environ), environ, lines.append)
        return status, "\n".join(lines)

    @defer.inlineCallbacks
    def test_ok(self) -> None:
        """A configured session: status 0, OK with the request id."""
        emulator = yield start_emulator(self)
        status, out = yield self.doctor(emulator)
        self.assertEqual(status, 0, out)
        self.assertIn("key check: OK", out)
        self.assertIn(f"dg-request-id {emulator.sessions[0].request_id}", out)
        self.assertEqual(emulator.sessions[0].settings["type"], "Settings")
        self.assertGreater(len(emulator.sessions[0].audio), 0)

    @defer.inlineCallbacks
    def test_listen_ok(self) -> None:
        """listen mode: the configured query string opens a session."""
        emulator = yield start_emulator(self)
        status, out = yield self.doctor(emulator, {"gateway": {"mode": "listen"}})
        self.assertEqual(status, 0, out)
        self.assertEqual(emulator.sessions[0].path, "/v1/listen")

    @defer.inlineCallbacks
    def test_bad_key(self) -> None:
        """A refused key: the HTTP check says so with dg-error; status 1."""
        emulator = yield start_emulator(self)
        status, out = yield self.doctor(emulator, DEEPGRAM_API_KEY="wrong-key")
        self.assertEqual(status, 1)
        self.assertIn("refused DEEPGRAM_API_KEY with HTTP 401", out)
        self.assertNotIn("wrong-key", out)

    @defer.inlineCallbacks
    def test_settings_rejected(self) -> None:
        """Settings rejected: the Error's code and field."""
        emulator = yield start_emulator(self)
        emulator.queue_fault("error:INVALID_SETTINGS:agent.speak.provider.model is not valid")
        status, out = yield self.doctor(emulator)
        self.assertEqual(status, 1)
        self.assertIn("DG_SETTINGS_REJECTED", out)
        self.assertIn("agent.speak.provider.model", out)

    @defer.inlineCallbacks
    def test_no_status_after_settings(self) -> None:
        """A close with no status and no Error right after Settings."""
        emulator = yield start_emulator(self)
        emulator.queue_fault("close:none")
        status, out = yield self.doctor(emulator)
        self.assertEqual(status, 1)
        self.assertIn("DG_SETTINGS_REJECTED_NO_ERROR", out)

    @defer.inlineCallbacks
    def test_network_failure(self) -> None:
        """Nothing listening: DG_UNREACHABLE."""
        emulator = yield start_emulator(self)
        status, out = yield self.doctor(emulator, DEEPGRAM_AGENT_URL="ws://127.0.0.1:9/v1/agent/converse")
        self.assertEqual(status, 1)
        self.assertIn("DG_UNREACHABLE", out)

    @defer.inlineCallbacks
    def test_command(self) -> None:
        """The console script exits 0 on success and prints OK."""
        emulator = yield start_emulator(self)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.update(emulator_env(emulator), DEEPGRAM_API_URL=emulator.http_url, DEEPGRAM_API_KEY=TEST_API_KEY)
        env.pop("TWILIO_AUTH_TOKEN", None)
        from twisted.internet import utils

        out, err, code = yield utils.getProcessOutputAndValue(
            os.path.join(os.path.dirname(sys.executable), "gateway"), ["doctor"], env=env)
        self.assertEqual(code, 0, out + err)
        self.assertIn(b"result: OK", out)
