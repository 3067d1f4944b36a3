"""
Whole-gateway tests on loopback with the full simulator and the Deepgram emulator (the spine's
tests with the minimal stand-in are in test_spine).
"""

from __future__ import annotations

import os
from urllib.parse import parse_qs

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from gateway.simulator import ClientCall, TwilioCall
from gateway.tokens import mint_token
from tests.system.harness import (
    DROPINS,
    clip,
    start_emulator,
    start_gateway,
)

ORDER = clip("caller-order-8k-mulaw.wav")


def binary_frames(session) -> list[bytes]:
    return [payload for kind, payload in session.received if kind == "binary"]


class TwilioCallTests(TestCase):
    """A Twilio Media Stream through the whole gateway."""

    timeout = 120

    def recorded(self) -> list:
        from gateway.dropins import recorder  # loaded by the gateway from tests/dropins/recorder

        return recorder.SEEN

    def assertVoiceAgentCall(self, emulator, result, stream_sid: str) -> None:
        self.assertEqual(len(emulator.sessions), 1)
        session = emulator.sessions[0]
        first_kind, first = session.received[0]
        self.assertEqual((first_kind, first["type"]), ("text", "Settings"))
        self.assertEqual(first["audio"]["input"], {"encoding": "mulaw", "sample_rate": 8000})
        frames = binary_frames(session)
        self.assertNotIn(b"", frames)
        # The caller's audio arrives first, byte-exact and in order (silence follows while the
        # simulated caller waits for the agent).
        self.assertEqual(session.audio[: len(ORDER.data)], ORDER.data)
        self.assertEqual(session.audio[: len(result.sent_audio)], result.sent_audio)
        self.assertGreater(result.media_events, 0)
        self.assertGreater(len(result.agent_audio), 0)
        self.assertEqual(result.violations, [])
        self.assertEqual(result.binary_frames, 0)
        self.assertEqual((result.close_code, session.close_code), (1000, 1000))

    @defer.inlineCallbacks
    def test_voice_agent_call(self) -> None:
        """Settings first, the clip byte-exact, agent audio as media, one clear per barge-in, clean stop."""
        emulator = yield start_emulator(self)
        gateway = yield start_gateway(self, emulator, {
            "gateway": {"dropin_dirs": [os.path.join(DROPINS, "recorder")],
                        "chain": ["auth", "settings", "empty_frames", "transcoder", "keepalive",
                                  "close_codes", "recorder"]}})
        call = TwilioCall(reactor, url=gateway.url + "/twilio", audio=ORDER, realtime=False, wait_s=4.0)
        result = yield call.run().addTimeout(90, reactor)
        yield emulator.sessions[0].closed
        self.assertVoiceAgentCall(emulator, result, call.stream_sid)
        seen = [name for events in self.recorded().values() for d, name in events if d == "out"]
        self.assertEqual(result.clears, seen.count("UserStartedSpeaking"))
        self.assertGreaterEqual(result.clears, 1)

    @defer.inlineCallbacks
    def test_listen_mode(self) -> None:
        """/v1/listen gets the configured query string and the clip; its Results reach the chain."""
        emulator = yield start_emulator(self)
        gateway = yield start_gateway(self, emulator, {
            "gateway": {"mode": "listen", "dropin_dirs": [os.path.join(DROPINS, "recorder")],
                        "chain": ["auth", "settings", "empty_frames", "transcoder", "keepalive",
                                  "close_codes", "recorder"]},
            "settings": {"listen": {"model": "nova-2", "diarize": True}}})
        call = TwilioCall(reactor, url=gateway.url + "/twilio", audio=ORDER, realtime=False, wait_s=2.0)
        result = yield call.run().addTimeout(60, reactor)
        session = emulator.sessions[0]
        yield session.closed
        self.assertEqual(session.path, "/v1/listen")
        self.assertEqual((session.query["model"], session.query["diarize"], session.query["encoding"],
                          session.query["sample_rate"]), ("nova-2", "true", "mulaw", "8000"))
        self.assertEqual(session.audio[: len(ORDER.data)], ORDER.data)
        texts = [p for kind, p in session.received if kind == "text"]
        self.assertEqual(texts[-1], {"type": "CloseStream"})
        seen = [name for events in self.recorded().values() for d, name in events if d == "out"]
        self.assertIn("Results", seen)
        self.assertIn("Metadata", seen)
        self.assertEqual((result.close_code, session.close_code), (1000, 1000))
        _ = parse_qs


class ClientCallTests(TestCase):
    """Raw-audio clients on /client."""

    timeout = 60
    env = {"GATEWAY_TOKEN_SECRET": "t" * 32}

    @defer.inlineCallbacks
    def test_client_call(self) -> None:
        """A valid token, then linear16 16 kHz both ways; Deepgram events arrive as JSON."""
        emulator = yield start_emulator(self)
        gateway = yield start_gateway(self, emulator, env=self.env)
        audio = clip("caller-yes-16k-s16le.wav")
        token = mint_token(b"t" * 32, reactor.seconds())
        call = ClientCall(reactor, url=gateway.url + "/client", audio=audio, token=token, realtime=False,
                          wait_s=2.0)
        result = yield call.run().addTimeout(60, reactor)
        session = emulator.sessions[0]
        yield session.closed
        self.assertEqual(session.received[0][1]["audio"]["input"], {"encoding": "linear16", "sample_rate": 16000})
        self.assertEqual(session.audio[: len(audio.data)], audio.data)
        kinds = [m.get("type") for t, kind, m in result.events if isinstance(m, dict)]
        self.assertIn("SettingsApplied", kinds)
        self.assertGreater(len(result.agent_audio), 0)

