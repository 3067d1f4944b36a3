"""
Whole-gateway tests of the spine on loopback: a Twilio-shaped client, the gateway (in process and
as a real twistd), and the minimal Deepgram stand-in.
"""

from __future__ import annotations

import os
from urllib.parse import parse_qs

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from gateway.service import GatewayService
from gateway.testing import TEST_API_KEY, configure
from tests.system.harness import start_standin, DROPINS, TwistdGateway, clip
from tests.system.client_client import client_call
from tests.system.twilio_client import twilio_call


def capture_logs(test: TestCase) -> list[str]:
    """Every log event emitted during ``test``, formatted, in a list."""
    from twisted.logger import formatEvent, globalLogPublisher

    lines: list[str] = []

    def observe(event: dict) -> None:
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    test.addCleanup(globalLogPublisher.removeObserver, observe)
    return lines

ORDER = clip("caller-order-8k-mulaw.wav").data


class SpineTests(TestCase):
    """The end-to-end call through the real stack."""

    timeout = 60

    @defer.inlineCallbacks
    def setUp(self) -> None:
        self.standin = yield start_standin(self)

    def env(self, **more: str) -> dict:
        return {"DEEPGRAM_AGENT_URL": self.standin.url("agent"),
                "DEEPGRAM_LISTEN_URL": self.standin.url("listen"), **more}

    @defer.inlineCallbacks
    def gateway(self, config: dict | None = None, **env: str) -> defer.Deferred:
        service = GatewayService(configure(config, self.env(**env)), "tcp:0:interface=127.0.0.1", reactor)
        yield service.startService()
        self.addCleanup(service.stopService)
        return f"ws://127.0.0.1:{service.port.getHost().port}"

    def assertCall(self, result, session) -> None:
        kind, first = session.received[0]
        self.assertEqual((kind, first["type"]), ("text", "Settings"))
        frames = [p for k, p in session.received if k == "binary"]
        self.assertNotIn(b"", frames)
        self.assertEqual(session.audio, ORDER)
        media = [e for e in result.events if e["event"] == "media"]
        self.assertGreater(len(media), 0)
        self.assertEqual(result.violations, [])
        self.assertEqual(result.binary_frames, 0)
        self.assertEqual(result.count("clear"), 1)
        self.assertEqual((result.close_code, session.close_code), (1000, 1000))
        self.assertEqual(result.close_reason, "CALLER_HANGUP")

    @defer.inlineCallbacks
    def test_call(self) -> None:
        """Settings first, the clip byte-exact with no empty frame, media back, one clear, clean stop."""
        url = yield self.gateway()
        result = yield twilio_call(reactor, url + "/twilio", ORDER).addTimeout(30, reactor)
        session = self.standin.sessions[0]
        yield session.closed
        self.assertCall(result, session)
        self.assertEqual(session.headers["authorization"], f"Token {TEST_API_KEY}")

    @defer.inlineCallbacks
    def test_twistd(self) -> None:
        """The same call through a real `twistd -n gateway` process from the installed package."""
        gw = TwistdGateway(["--port", "tcp:0:interface=127.0.0.1"],
                           {"DEEPGRAM_API_KEY": TEST_API_KEY, **self.env()})
        self.addCleanup(gw.stop)
        port = yield gw.listening.addTimeout(60, reactor)
        result = yield twilio_call(reactor, f"ws://127.0.0.1:{port}/twilio", ORDER).addTimeout(30, reactor)
        session = self.standin.sessions[0]
        yield session.closed
        self.assertCall(result, session)
        yield gw.stop()
        self.assertIn("ended: CALLER_HANGUP", gw.output)
        self.assertNotIn(TEST_API_KEY, gw.output)

    @defer.inlineCallbacks
    def test_bad_signature(self) -> None:
        """With TWILIO_AUTH_TOKEN set, a bad or missing signature is refused before Deepgram is contacted."""
        url = yield self.gateway(TWILIO_AUTH_TOKEN="tw-secret", GATEWAY_PUBLIC_URL="https://gw.example.com")
        for token in ("wrong", None):
            result = yield twilio_call(reactor, url + "/twilio", ORDER, auth_token=token,
                                       signed_url="wss://gw.example.com/twilio").addTimeout(30, reactor)
            self.assertEqual(result.handshake_status, 403)
        self.assertEqual(self.standin.upgrade_attempts, 0)
        result = yield twilio_call(reactor, url + "/twilio", ORDER, auth_token="tw-secret",
                                   signed_url="wss://gw.example.com/twilio").addTimeout(30, reactor)
        self.assertEqual(result.close_code, 1000)
        self.assertEqual(self.standin.upgrade_attempts, 1)

    @defer.inlineCallbacks
    def test_dropin(self) -> None:
        """A drop-in from a configured directory runs in its place in the chain."""
        # "loud" sends every frame twice: twice the bytes the held audio is bounded by.
        url = yield self.gateway({"gateway": {"dropin_dirs": [os.path.join(DROPINS, "good")],
                                              "chain": ["auth", "settings", "loud", "close_codes"]},
                                  "settings": {"hold_audio_ms": 60_000}})
        yield twilio_call(reactor, url + "/twilio", ORDER).addTimeout(30, reactor)
        session = self.standin.sessions[0]
        yield session.closed
        frames = [ORDER[i:i + 160] for i in range(0, len(ORDER), 160)]
        self.assertEqual(session.audio, b"".join(f * 2 for f in frames))

    @defer.inlineCallbacks
    def test_listen(self) -> None:
        """listen mode: the configured query string, the clip, Results reaching the chain, CloseStream."""
        url = yield self.gateway({
            "gateway": {"mode": "listen", "dropin_dirs": [os.path.join(DROPINS, "recorder")],
                        "chain": ["auth", "settings", "empty_frames", "keepalive", "close_codes", "recorder"]},
            "settings": {"listen": {"model": "nova-2", "diarize": True}}})
        result = yield twilio_call(reactor, url + "/twilio", ORDER).addTimeout(30, reactor)
        session = self.standin.sessions[0]
        yield session.closed
        self.assertEqual(session.path, "/v1/listen")
        self.assertEqual({k: session.query[k] for k in ("model", "diarize", "encoding", "sample_rate")},
                         {"model": "nova-2", "diarize": "true", "encoding": "mulaw", "sample_rate": "8000"})
        self.assertEqual(session.audio, ORDER)
        self.assertEqual(session.received[-1], ("text", {"type": "CloseStream"}))
        from gateway.dropins import recorder  # imported by the gateway from tests/dropins

        seen = [name for events in recorder.SEEN.values() for d, name in events]
        self.assertIn("Results", seen)
        self.assertIn("Metadata", seen)
        self.assertEqual((result.close_code, session.close_code), (1000, 1000))
        _ = parse_qs

    @defer.inlineCallbacks
    def test_transcoding(self) -> None:
        """mu-law 8 kHz in, linear16 16 kHz to Deepgram; linear16 24 kHz agent audio, mu-law 8 kHz out."""
        from gateway.codecs.formats import LINEAR16_16K, LINEAR16_24K, MULAW_8K
        from gateway.codecs.transcode import make_transcoder

        url = yield self.gateway({"transcoder": {"deepgram_input": "linear16/16000",
                                                 "deepgram_output": "linear16/24000"}})
        result = yield twilio_call(reactor, url + "/twilio", ORDER).addTimeout(30, reactor)
        session = self.standin.sessions[0]
        yield session.closed
        settings = session.received[0][1]
        self.assertEqual(settings["audio"]["input"], {"encoding": "linear16", "sample_rate": 16000})
        self.assertEqual(settings["audio"]["output"]["sample_rate"], 24000)
        frames = [ORDER[i:i + 160] for i in range(0, len(ORDER), 160)]
        expected = make_transcoder(MULAW_8K, LINEAR16_16K)
        self.assertEqual(session.audio, b"".join(expected.convert(f) for f in frames))
        # 100 ms of linear16 24 kHz silence from the stand-in comes back as 100 ms of mu-law.
        self.assertEqual(len(result.agent_audio), 800)
        _ = LINEAR16_24K

    @defer.inlineCallbacks
    def test_settings_rejected(self) -> None:
        """An Error then a no-status close: 4500 to the caller, one line with the Error and the request id."""
        events = capture_logs(self)
        url = yield self.gateway({"settings": {"template": {
            "tags": ["reject"], "agent": {"listen": {"provider": {"type": "deepgram", "model": "nova-3"}},
                                          "think": {"provider": {"type": "open_ai", "model": "gpt-4o-mini"}},
                                          "speak": {"provider": {"type": "deepgram", "model": "aura-2-thalia-en"}}}}}})
        result = yield twilio_call(reactor, url + "/twilio", ORDER, stop_after_s=None).addTimeout(30, reactor)
        self.assertEqual((result.close_code, result.close_reason), (4500, "DG_SETTINGS_REJECTED"))
        ended = [line for line in events if "ended: DG_SETTINGS_REJECTED in configuring" in line]
        self.assertEqual(len(ended), 1, events)
        self.assertIn("INVALID_SETTINGS", ended[0])
        self.assertIn("agent.think", ended[0])
        self.assertIn(self.standin.sessions[0].request_id, ended[0])

    @defer.inlineCallbacks
    def test_bad_key(self) -> None:
        """A 401 upgrade: 4500 DG_AUTH_FAILED to the caller, dg-error in the log (reconnection off)."""
        events = capture_logs(self)
        url = yield self.gateway({"deepgram": {"reconnect_attempts": 0}}, DEEPGRAM_API_KEY="wrong-key")
        result = yield twilio_call(reactor, url + "/twilio", ORDER, stop_after_s=None).addTimeout(30, reactor)
        self.assertEqual((result.close_code, result.close_reason), (4500, "DG_AUTH_FAILED"))
        ended = [line for line in events if "ended: DG_AUTH_FAILED" in line]
        self.assertEqual(len(ended), 1, events)
        self.assertIn("HTTP 401", ended[0])
        self.assertIn("dg-error 'Invalid credentials.'", ended[0])
        self.assertFalse([line for line in events if "wrong-key" in line])


class ClientTests(TestCase):
    """Raw-audio clients on /client through the whole gateway."""

    timeout = 60
    secret = "c" * 32

    @defer.inlineCallbacks
    def setUp(self) -> None:
        self.standin = yield start_standin(self)
        configured = configure({"auth": {"client_timeout_s": 0.5}},
                               {"DEEPGRAM_AGENT_URL": self.standin.url("agent"),
                                "GATEWAY_TOKEN_SECRET": self.secret})
        service = GatewayService(configured, "tcp:0:interface=127.0.0.1", reactor)
        yield service.startService()
        self.addCleanup(service.stopService)
        self.url = f"ws://127.0.0.1:{service.port.getHost().port}/client"

    @defer.inlineCallbacks
    def test_good_token(self) -> None:
        """linear16 16 kHz both ways; Deepgram events arrive as JSON; a normal end is 1000."""
        from gateway.tokens import mint_token

        audio = clip("caller-yes-16k-s16le.wav").data
        token = mint_token(self.secret.encode(), reactor.seconds())
        result = yield client_call(reactor, self.url, audio, token).addTimeout(30, reactor)
        session = self.standin.sessions[0]
        yield session.closed
        self.assertEqual(session.received[0][1]["audio"]["input"], {"encoding": "linear16", "sample_rate": 16000})
        self.assertEqual(session.audio, audio)
        self.assertEqual(len(result.agent_audio), 3200)
        types = [e["type"] for e in result.events]
        self.assertIn("SettingsApplied", types)
        self.assertIn("UserStartedSpeaking", types)
        self.assertEqual(result.close_code, 1000)

    @defer.inlineCallbacks
    def test_auth_errors(self) -> None:
        """No token in time: 4001; not a token: 4002; a bad token: 4003; each after its JSON error."""
        from gateway.tokens import mint_token

        cases = [
            (None, None, b"", 4001, "AUTH_TIMEOUT"),
            (None, None, b"\0" * 640, 4002, "INVALID_AUTH"),
            (None, b"hello", b"", 4002, "INVALID_AUTH"),
            (mint_token(b"another secret", reactor.seconds()), None, b"", 4003, "AUTH_FAILED"),
        ]
        for token, first, audio, code, name in cases:
            result = yield client_call(reactor, self.url, audio, token, first=first,
                                       close_after_s=None).addTimeout(30, reactor)
            self.assertEqual((result.close_code, result.close_reason), (code, name))
            self.assertEqual([(e["type"], e["code"]) for e in result.events], [("Error", name)])
        self.assertEqual(self.standin.upgrade_attempts, 0)


class MetricsTests(TestCase):
    """/metrics after real calls shows the counts they caused."""

    timeout = 60

    @defer.inlineCallbacks
    def test_metrics_after_calls(self) -> None:
        """Two calls: ended counts, frames per leg, closes, connect histogram; no call ids."""
        import treq
        from prometheus_client.parser import text_string_to_metric_families

        standin = yield start_standin(self)
        service = GatewayService(configure(None, {"DEEPGRAM_AGENT_URL": standin.url("agent")}),
                                 "tcp:0:interface=127.0.0.1", reactor)
        yield service.startService()
        self.addCleanup(service.stopService)
        port = service.port.getHost().port
        for _ in range(2):
            yield twilio_call(reactor, f"ws://127.0.0.1:{port}/twilio", ORDER).addTimeout(30, reactor)
        for session in standin.sessions:
            yield session.closed
        for _ in range(200):
            if not service.gateway.calls:
                break
            yield task.deferLater(reactor, 0.01, lambda: None)
        response = yield treq.get(f"http://127.0.0.1:{port}/metrics", persistent=False)
        text = (yield response.content()).decode()
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(text) for s in family.samples}
        frames = len(range(0, len(ORDER), 160))
        self.assertEqual(samples[("gateway_calls_ended_total", (("diagnosis", "CALLER_HANGUP"), ("mode", "agent")))], 2)
        self.assertEqual(samples[("gateway_frames_total", (("direction", "in"), ("leg", "caller")))], 2 * frames)
        self.assertEqual(samples[("gateway_frames_total", (("direction", "out"), ("leg", "deepgram")))], 2 * frames)
        self.assertEqual(samples[("gateway_audio_bytes_total", (("direction", "in"), ("leg", "caller")))], 2 * len(ORDER))
        self.assertEqual(samples[("gateway_leg_closes_total", (("code", "1000"), ("leg", "deepgram")))], 2)
        self.assertEqual(samples[("gateway_deepgram_connect_seconds_count", (("mode", "agent"),))], 2)
        self.assertEqual(samples[("gateway_active_calls", ())], 0)
        self.assertNotIn("MZ", text)
