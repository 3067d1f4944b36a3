"""
Whole-gateway tests against the Deepgram emulator's faults: each seed failure is diagnosed, and
retryable failures are survived by reconnecting.
"""

from __future__ import annotations

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from gateway.simulator import TwilioCall
from tests.system.harness import assert_delivered_in_order, clip, start_emulator, start_gateway
from tests.system.test_spine import capture_logs
from tests.system.twilio_client import twilio_call

ORDER = clip("caller-order-8k-mulaw.wav")


class FaultTests(TestCase):
    """The gateway against Deepgram's failure behaviour."""

    timeout = 90

    @defer.inlineCallbacks
    def test_reconnect_mid_call(self) -> None:
        """1011 NET-0000 mid-call: a new session with the conversation and no greeting; no audio lost."""
        events = capture_logs(self)
        emulator = yield start_emulator(self)
        emulator.queue_fault("close:1011:NET-0000@after_audio_bytes=16000")
        gateway = yield start_gateway(self, emulator, {"deepgram": {"reconnect_backoff_s": 0.05}})
        call = TwilioCall(reactor, url=gateway.url + "/twilio", audio=ORDER, realtime=True, wait_s=2.0)
        result = yield call.run().addTimeout(60, reactor)
        self.assertEqual(len(emulator.sessions), 2)
        first, second = emulator.sessions
        yield second.closed
        lost = [line for line in events if "Deepgram leg lost (DG_NET_0000" in line]
        self.assertEqual(len(lost), 1, events)
        self.assertIn("greeting", first.settings["agent"])
        self.assertNotIn("greeting", second.settings["agent"])
        history = second.settings["agent"]["context"]["messages"]
        self.assertEqual(history[0]["role"], "assistant")
        # Every caller byte reached Deepgram in order across both sessions; what may have been
        # in flight to the dying one (the replay window, 400 ms = 3200 bytes) went again.
        assert_delivered_in_order(self, result.sent_audio, [first.audio, second.audio], 3200)
        self.assertEqual(result.close_code, 1000)

    @defer.inlineCallbacks
    def test_settings_rejected(self) -> None:
        """An INVALID_SETTINGS Error and a no-status close: 4500, logged with the field and the request id."""
        events = capture_logs(self)
        emulator = yield start_emulator(self)
        emulator.queue_fault("error:INVALID_SETTINGS:Invalid value for agent.think.provider.type")
        gateway = yield start_gateway(self, emulator)
        result = yield twilio_call(reactor, gateway.url + "/twilio", ORDER.data, stop_after_s=None
                                   ).addTimeout(30, reactor)
        self.assertEqual((result.close_code, result.close_reason), (4500, "DG_SETTINGS_REJECTED"))
        ended = [line for line in events if "ended: DG_SETTINGS_REJECTED" in line]
        self.assertEqual(len(ended), 1)
        self.assertIn("agent.think.provider.type", ended[0])
        self.assertIn(emulator.sessions[0].request_id, ended[0])
        self.assertEqual(len(emulator.sessions), 1, "a rejected Settings is not retried")

    @defer.inlineCallbacks
    def test_upgrade_refused(self) -> None:
        """A 401 upgrade: dg-error and dg-request-id in the diagnosis; a 429 is retried."""
        events = capture_logs(self)
        emulator = yield start_emulator(self)
        gateway = yield start_gateway(self, emulator, env={"DEEPGRAM_API_KEY": "not-the-key"})
        result = yield twilio_call(reactor, gateway.url + "/twilio", ORDER.data, stop_after_s=None
                                   ).addTimeout(30, reactor)
        self.assertEqual((result.close_code, result.close_reason), (4500, "DG_AUTH_FAILED"))
        ended = [line for line in events if "ended: DG_AUTH_FAILED" in line]
        self.assertIn("dg-error", ended[0])
        self.assertEqual(emulator.upgrade_attempts, 1)

    @defer.inlineCallbacks
    def test_rate_limited_then_accepted(self) -> None:
        """A 429 on the upgrade is retried with backoff, and the call goes on."""
        emulator = yield start_emulator(self)
        emulator.queue_fault("refuse:429")
        gateway = yield start_gateway(self, emulator, {"deepgram": {"reconnect_backoff_s": 0.05}})
        result = yield twilio_call(reactor, gateway.url + "/twilio", ORDER.data, stop_after_s=1.0
                                   ).addTimeout(30, reactor)
        self.assertEqual(emulator.upgrade_attempts, 2)
        self.assertEqual(result.close_code, 1000)
        yield emulator.sessions[0].closed
        self.assertEqual(emulator.sessions[0].audio, ORDER.data)

    @defer.inlineCallbacks
    def test_silent_caller_on_listen(self) -> None:
        """A caller sending nothing: silence keeps /v1/listen open past NET-0001 (time scaled 10x)."""
        emulator = yield start_emulator(self, net0001_timeout_s=1.0)
        gateway = yield start_gateway(self, emulator, {
            "gateway": {"mode": "listen"}, "keepalive": {"silence_interval_s": 0.2}})
        result = yield twilio_call(reactor, gateway.url + "/twilio", b"", stop_after_s=3.0
                                   ).addTimeout(30, reactor)
        session = emulator.sessions[0]
        yield session.closed
        self.assertEqual((result.close_code, session.close_code), (1000, 1000))
        self.assertGreater(len(session.audio), 8000)
        self.assertEqual(set(session.audio), {0xFF})

    @defer.inlineCallbacks
    def test_without_keepalive_net0001(self) -> None:
        """The same silent caller without the keepalive plugin gets Deepgram's NET-0001, diagnosed."""
        emulator = yield start_emulator(self, net0001_timeout_s=1.0)
        gateway = yield start_gateway(self, emulator, {
            "gateway": {"mode": "listen", "chain": ["auth", "settings", "close_codes"]},
            "deepgram": {"reconnect_attempts": 0}})
        result = yield twilio_call(reactor, gateway.url + "/twilio", b"", stop_after_s=None
                                   ).addTimeout(30, reactor)
        self.assertEqual((result.close_code, result.close_reason), (4501, "DG_NET_0001"))
