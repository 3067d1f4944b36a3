"""`gateway doctor` against the emulator: OK, and the right diagnosis for each fault."""

from __future__ import annotations

import os
import sys

from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.doctor import DEFAULT_API_URL, key_check_base, run_doctor
from gateway.testing import TEST_API_KEY, configure
from tests.system.harness import emulator_env, settle_autobahn_timers, start_emulator


class DoctorTests(TestCase):
    """The probe call's verdict, in plain words."""

    timeout = 60

    @defer.inlineCallbacks
    def doctor(self, emulator, config: dict | None = None, **env: str) -> defer.Deferred:
        # The emulator's closing handshake leaves a batched Autobahn timer behind (harness).
        self.addCleanup(settle_autobahn_timers)
        environ = {**emulator_env(emulator), **env}
        lines: list[str] = []
        status = yield run_doctor(reactor, configure(config, environ), environ, lines.append)
        return status, "\n".join(lines)

    @defer.inlineCallbacks
    def test_ok(self) -> None:
        """A configured session: status 0, OK with the request id."""
        emulator = yield start_emulator(self)
        status, out = yield self.doctor(emulator)
        self.assertEqual(status, 0, out)
        self.assertIn(f"key check: OK (GET {emulator.http_url}/v1/projects answered 200", out)
        self.assertIn(f"dg-request-id {emulator.sessions[0].request_id}", out)
        self.assertTrue(out.endswith("result: OK"), out)
        self.assertEqual(emulator.sessions[0].settings["type"], "Settings")
        self.assertGreater(len(emulator.sessions[0].audio), 0)

    @defer.inlineCallbacks
    def test_listen_ok(self) -> None:
        """listen mode: the configured query string opens a session."""
        emulator = yield start_emulator(self)
        status, out = yield self.doctor(emulator, {"gateway": {"mode": "listen"}})
        self.assertEqual(status, 0, out)
        self.assertEqual(emulator.sessions[0].path, "/v1/listen")
        self.assertIn(f"key check: OK (GET {emulator.http_url}/v1/projects", out)

    @defer.inlineCallbacks
    def test_urls_from_the_config_file(self) -> None:
        """[deepgram] agent_url in the file, no environment URL: the key check asks that host."""
        emulator = yield start_emulator(self)
        lines: list[str] = []
        environ = {"DEEPGRAM_API_KEY": TEST_API_KEY}
        configured = configure({"deepgram": {"agent_url": emulator.url("agent")}}, environ)
        self.addCleanup(settle_autobahn_timers)
        status = yield run_doctor(reactor, configured, environ, lines.append)
        out = "\n".join(lines)
        self.assertEqual(status, 0, out)
        self.assertIn(f"GET {emulator.http_url}/v1/projects answered 200", out)

    @defer.inlineCallbacks
    def test_unreachable_key_check_is_a_failure(self) -> None:
        """The key check cannot reach its URL but the session works: FAILED, never 'result: OK'."""
        emulator = yield start_emulator(self)
        status, out = yield self.doctor(emulator, DEEPGRAM_API_URL="http://127.0.0.1:9")
        self.assertEqual(status, 1, out)
        self.assertIn("key check: FAILED: could not reach http://127.0.0.1:9/v1/projects", out)
        self.assertIn("session: OK", out)
        self.assertNotIn("result: OK", out)
        self.assertTrue(out.endswith("result: FAILED: the key check (see above)"), out)

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
        env.update(emulator_env(emulator), DEEPGRAM_API_KEY=TEST_API_KEY)
        env.pop("TWILIO_AUTH_TOKEN", None)
        env.pop("DEEPGRAM_API_URL", None)
        from twisted.internet import utils

        out, err, code = yield utils.getProcessOutputAndValue(
            os.path.join(os.path.dirname(sys.executable), "gateway"), ["doctor"], env=env)
        self.assertEqual(code, 0, out + err)
        self.assertIn(b"result: OK", out)


class KeyCheckBaseTests(SynchronousTestCase):
    """Where the key check asks: it follows the configured URL unless DEEPGRAM_API_URL says."""

    def test_deepgram_hosts(self) -> None:
        """Deepgram's WebSocket hosts map to its REST base."""
        for url in ("wss://agent.deepgram.com/v1/agent/converse", "wss://api.deepgram.com/v1/listen"):
            self.assertEqual(key_check_base(url, {}), DEFAULT_API_URL)

    def test_other_hosts_are_asked_themselves(self) -> None:
        """The emulator or a self-hosted Deepgram: the same host and port, ws -> http, wss -> https."""
        self.assertEqual(key_check_base("ws://127.0.0.1:8081/v1/agent/converse", {}), "http://127.0.0.1:8081")
        self.assertEqual(key_check_base("wss://dg.internal:8443/v1/listen", {}), "https://dg.internal:8443")

    def test_environment_wins(self) -> None:
        """DEEPGRAM_API_URL, when set, is used as it is (without a trailing slash)."""
        env = {"DEEPGRAM_API_URL": "https://eu.api.example/"}
        self.assertEqual(key_check_base("ws://127.0.0.1:8081/x", env), "https://eu.api.example")
