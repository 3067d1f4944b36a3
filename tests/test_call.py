"""Tests for gateway.call: the lifecycle, the sinks and the endings, with fake legs and a Clock."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gateway.call import Call
from gateway.errors import AuthError
from gateway.events import (
    Audio,
    ClientHello,
    DeepgramEvent,
    Handshake,
    StreamStarted,
    StreamStopped,
    UpstreamClosed,
    UpstreamMessage,
)
from gateway.interfaces import LegState
from gateway.testing import FakeCallerLeg, FakeConnector, FakeUpstreamLeg, TEST_API_KEY, configure

SID = "MZ" + "1" * 32


def dg(type_: str, **fields: object) -> DeepgramEvent:
    return DeepgramEvent(type_, {"type": type_, **fields})


class CallHarness:
    """A call wired to fakes."""

    def __init__(self, config: dict | None = None, env: dict | None = None, leg: str = "twilio") -> None:
        self.clock = Clock()
        self.connector = FakeConnector()
        self.closed: list = []
        self.call = Call(configure(config, env), leg, self.clock, self.connector, self.closed.append)
        self.caller = FakeCallerLeg()
        self.upstream = FakeUpstreamLeg()

    def start(self, params: dict | None = None, headers: dict | None = None) -> None:
        self.call.caller_handshake(Handshake("twilio", "/twilio", headers or {}, "peer"))
        self.call.caller_opened(self.caller)
        self.call.from_caller(StreamStarted(SID, "CA1", custom_parameters=params or {}))

    def open_upstream(self, request_id: str = "req-1", welcome: bool = True) -> None:
        """The last attempt opens; the Voice Agent then says Welcome (Settings go after it)."""
        url, headers, port, d = self.connector.attempts[-1]
        port.upstream_opened(self.upstream, request_id)
        d.callback(self.upstream)
        if welcome and self.call.info.mode == "agent":
            self.call.from_upstream(dg("Welcome", request_id=request_id))


class LifecycleTests(SynchronousTestCase):
    """A Twilio Voice Agent call from handshake to closed."""

    def test_happy_path(self) -> None:
        """Settings first, held audio released in order, agent audio out, clear, clean ending."""
        h = CallHarness()
        h.start()
        self.assertEqual(h.call.phase, "connecting")
        url, headers, _, _ = h.connector.attempts[0]
        self.assertEqual(url, "wss://agent.deepgram.com/v1/agent/converse")
        self.assertEqual(headers, {"Authorization": f"Token {TEST_API_KEY}"})
        frames = [bytes([i]) * 160 for i in range(1, 6)]
        for f in frames[:3]:
            h.call.caller_audio(Audio(f))
        h.open_upstream()
        self.assertEqual(h.call.phase, "configuring")
        self.assertEqual([k for k, _ in h.upstream.sent], ["json"])
        settings = h.upstream.messages()[0]
        self.assertEqual(settings["type"], "Settings")
        self.assertEqual(settings["audio"]["input"], {"encoding": "mulaw", "sample_rate": 8000})
        self.assertEqual(settings["audio"]["output"]["container"], "none")
        h.call.caller_audio(Audio(frames[3]))
        h.call.from_upstream(dg("SettingsApplied"))
        self.assertEqual(h.call.phase, "live")
        h.call.caller_audio(Audio(frames[4]))
        self.assertEqual(h.upstream.audio(), b"".join(frames))
        h.call.upstream_audio(Audio(b"agent", "outbound"))
        h.call.from_upstream(dg("UserStartedSpeaking"))
        self.assertEqual(h.caller.sent, [("event", "Welcome"), ("event", "SettingsApplied"), ("audio", b"agent"),
                                         ("clear", None), ("event", "UserStartedSpeaking")])
        h.call.from_caller(StreamStopped())
        self.assertEqual(h.upstream.closed_with, 1000)
        self.assertIsNone(h.caller.closed_with, "the caller waits for Deepgram to close")
        h.call.upstream_closed(UpstreamClosed(1000, None, True))
        self.assertEqual(h.caller.closed_with, (1000, "CALLER_HANGUP"))
        h.call.caller_closed(1000, None, True)
        self.assertEqual(h.call.phase, "closed")
        self.assertEqual(h.closed, [h.call])
        self.assertEqual(h.call.diagnosis.code, "CALLER_HANGUP")
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_settings_rejected(self) -> None:
        """An Error then a no-status close before SettingsApplied ends the call with 4500."""
        h = CallHarness()
        h.start()
        h.open_upstream("req-9")
        h.call.from_upstream(dg("Error", code="INVALID_SETTINGS", description="agent.think.provider.type"))
        h.call.upstream_closed(UpstreamClosed(None, None, True))
        self.assertEqual(h.caller.closed_with, (4500, "DG_SETTINGS_REJECTED"))
        d = h.call.diagnosis
        self.assertEqual((d.code, d.phase, d.error["code"]), ("DG_SETTINGS_REJECTED", "configuring", "INVALID_SETTINGS"))
        h.call.caller_closed(4500, None, True)
        self.assertEqual(h.call.phase, "closed")
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_upgrade_refused(self) -> None:
        """A 401 on the upgrade keeps dg-error and dg-request-id in the diagnosis."""
        h = CallHarness()
        h.start()
        h.call.upstream_closed(UpstreamClosed(1006, "upgrade failed", False, http_status=401,
                                              dg_error="Invalid credentials.", dg_request_id="r-401"))
        d = h.call.diagnosis
        self.assertEqual((d.code, d.http_status, d.dg_error, d.dg_request_id),
                         ("DG_AUTH_FAILED", 401, "Invalid credentials.", "r-401"))
        self.assertEqual(h.caller.closed_with, (4500, "DG_AUTH_FAILED"))

    def test_unreachable(self) -> None:
        """A refused TCP connection is DG_UNREACHABLE (with reconnection off)."""
        h = CallHarness({"deepgram": {"reconnect_attempts": 0}})
        h.start()
        h.connector.attempts[0][3].errback(Failure(ConnectionRefusedError()))
        self.assertEqual(h.call.diagnosis.code, "DG_UNREACHABLE")
        self.assertEqual(h.caller.closed_with, (4500, "DG_UNREACHABLE"))

    def test_connect_timeout(self) -> None:
        """No answer within deepgram.connect_timeout_s ends the call, no timer left."""
        h = CallHarness({"deepgram": {"connect_timeout_s": 2, "reconnect_attempts": 0}})
        h.start()
        h.clock.advance(2)
        self.assertEqual(h.call.diagnosis.code, "DG_UNREACHABLE")
        h.call.caller_closed(4500, None, True)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_caller_drops_mid_call(self) -> None:
        """A caller drop closes Deepgram normally."""
        h = CallHarness()
        h.start()
        h.open_upstream()
        h.call.from_upstream(dg("SettingsApplied"))
        h.call.caller_closed(1006, "dropped", False)
        self.assertEqual(h.upstream.closed_with, 1000)
        self.assertEqual(h.call.diagnosis.code, "CALLER_DROPPED")
        h.call.upstream_closed(UpstreamClosed(1000, None, True))
        self.assertEqual(h.call.phase, "closed")

    def test_legs_that_never_close_are_aborted(self) -> None:
        """At end_timeout_s after the end began, legs still open are aborted."""
        h = CallHarness({"gateway": {"end_timeout_s": 3}})
        h.start()
        h.open_upstream()
        h.call.from_caller(StreamStopped())
        h.clock.advance(3)
        self.assertTrue(h.upstream.aborted)
        self.assertTrue(h.caller.aborted)
        self.assertEqual(h.call.phase, "closed")

    def test_empty_audio_never_reaches_deepgram(self) -> None:
        """Even with empty_frames out of the chain, an empty frame is not sent."""
        h = CallHarness({"gateway": {"chain": ["auth", "settings"]}})
        h.start()
        h.open_upstream()
        h.call.from_upstream(dg("SettingsApplied"))
        h.call.caller_audio(Audio(b""))
        self.assertEqual(h.upstream.audio(), b"")


class ListenTests(SynchronousTestCase):
    """/v1/listen mode."""

    def test_listen_url_and_close_stream(self) -> None:
        """The query string is derived; stop sends CloseStream and waits for Deepgram's close."""
        h = CallHarness({"gateway": {"mode": "listen"}, "settings": {"listen": {"model": "nova-2", "diarize": True}}})
        h.start()
        url = h.connector.attempts[0][0]
        parts = urlsplit(url)
        self.assertEqual(parts.path, "/v1/listen")
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        self.assertEqual((query["encoding"], query["sample_rate"], query["model"], query["diarize"]),
                         ("mulaw", "8000", "nova-2", "true"))
        h.call.caller_audio(Audio(b"\x01" * 160))
        h.open_upstream()
        self.assertEqual(h.call.phase, "live")
        self.assertEqual(h.upstream.audio(), b"\x01" * 160)
        h.call.from_upstream(dg("Results", is_final=True))
        self.assertEqual(h.caller.sent, [("event", "Results")])
        h.call.from_caller(StreamStopped())
        self.assertEqual(h.upstream.messages(), [{"type": "CloseStream"}])
        self.assertIsNone(h.upstream.closed_with)
        h.call.from_upstream(dg("Metadata", request_id="req-1"))
        h.call.upstream_closed(UpstreamClosed(1000, None, True))
        self.assertEqual(h.caller.closed_with, (1000, "CALLER_HANGUP"))


class AuthTests(SynchronousTestCase):
    """No unauthenticated stream opens a Deepgram connection."""

    def test_bad_signature_refused_at_handshake(self) -> None:
        """With TWILIO_AUTH_TOKEN set, a wrong signature raises AuthError; nothing connects."""
        h = CallHarness(env={"TWILIO_AUTH_TOKEN": "secret", "GATEWAY_PUBLIC_URL": "https://gw.example.com"})
        with self.assertRaises(AuthError) as cm:
            h.call.caller_handshake(Handshake("twilio", "/twilio", {"x-twilio-signature": "nope"}, "peer"))
        self.assertEqual(cm.exception.http_status, 403)
        h.call.caller_closed(1006, None, False)
        self.assertEqual(h.connector.attempts, [])
        self.assertEqual(h.call.diagnosis.code, "AUTH_FAILED")
        self.assertEqual(h.call.phase, "closed")


class ReconnectTests(SynchronousTestCase):
    """The Deepgram leg is replaced mid-call on retryable failures; the caller stays."""

    def live_call(self, config: dict | None = None) -> CallHarness:
        h = CallHarness(config or {"deepgram": {"reconnect_attempts": 2, "reconnect_backoff_s": 1}})
        h.call.sessions.budget.random = lambda: 1.0
        h.start()
        h.open_upstream("req-1")
        h.call.from_upstream(dg("SettingsApplied"))
        return h

    def test_reconnect_restores_conversation(self) -> None:
        """NET-0000: backoff, audio held and replayed in order, history restored, no second greeting."""
        h = self.live_call()
        h.call.caller_audio(Audio(b"\x01" * 160))
        h.call.from_upstream(dg("ConversationText", role="assistant", content="Hello! How can I help?"))
        h.call.from_upstream(dg("ConversationText", role="user", content="Where is my order?"))
        h.call.upstream_closed(UpstreamClosed(1011, "See https://dpgr.am/net0000", True))
        self.assertEqual(h.call.phase, "reconnecting")
        self.assertIsNone(h.caller.closed_with)
        gap = [bytes([i]) * 160 for i in (2, 3, 4)]
        for frame in gap:
            h.call.caller_audio(Audio(frame))
        self.assertEqual(len(h.connector.attempts), 1)
        h.clock.advance(1)
        self.assertEqual(len(h.connector.attempts), 2)
        first = h.upstream
        h.upstream = FakeUpstreamLeg()
        h.open_upstream("req-2")
        settings = h.upstream.messages()[0]
        self.assertNotIn("greeting", settings["agent"])
        self.assertEqual(settings["agent"]["context"]["messages"], [
            {"type": "History", "role": "assistant", "content": "Hello! How can I help?"},
            {"type": "History", "role": "user", "content": "Where is my order?"}])
        self.assertEqual(h.upstream.audio(), b"")
        h.call.from_upstream(dg("SettingsApplied"))
        h.call.caller_audio(Audio(b"\x05" * 160))
        # The last replay_ms of audio sent to the lost session goes first (it may have been in
        # flight when the session died), then the gap, then the live audio.
        self.assertEqual(h.upstream.audio(), b"\x01" * 160 + b"".join(gap) + b"\x05" * 160)
        self.assertEqual(first.audio(), b"\x01" * 160)
        self.assertEqual(h.call.info.request_ids, ["req-1", "req-2"])
        self.assertEqual(h.call.info.counters[("reconnects", (("diagnosis", "DG_NET_0000"),))], 1)

    def test_gives_up_after_the_cap(self) -> None:
        """Past reconnect_attempts the call ends with the last diagnosis."""
        h = self.live_call()
        h.call.upstream_closed(UpstreamClosed(1006, "dropped", False))
        for _ in range(2):
            h.clock.advance(10)
            h.connector.attempts[-1][3].errback(Failure(ConnectionRefusedError()))
        self.assertEqual(h.call.diagnosis.code, "DG_UNREACHABLE")
        self.assertEqual(h.caller.closed_with, (4500, "DG_UNREACHABLE"))
        self.assertEqual(len(h.connector.attempts), 3)

    def test_total_time_cap(self) -> None:
        """reconnect_max_s bounds the whole outage."""
        h = self.live_call({"deepgram": {"reconnect_attempts": 10, "reconnect_backoff_s": 4,
                                         "reconnect_max_s": 5}})
        h.call.upstream_closed(UpstreamClosed(1006, "dropped", False))
        h.clock.advance(4)
        h.clock.advance(6)  # the second attempt's connect times out past the budget
        self.assertEqual(h.call.phase, "ending")

    def test_not_retryable_ends_at_once(self) -> None:
        """A 401 or a rejected Settings ends the call with no attempt."""
        h = self.live_call()
        h.call.from_upstream(dg("Error", code="INVALID_SETTINGS", description="x"))
        h.call.upstream_closed(UpstreamClosed(None, None, True))
        self.assertEqual(h.call.phase, "ending")
        self.assertEqual(len(h.connector.attempts), 1)

    def test_rate_limited_upgrade_is_retried(self) -> None:
        """A 429 on the first upgrade is retried."""
        h = CallHarness({"deepgram": {"reconnect_attempts": 1}})
        h.start()
        h.call.upstream_closed(UpstreamClosed(1006, "upgrade failed", False, http_status=429))
        self.assertEqual(h.call.phase, "reconnecting")
        h.clock.advance(1)
        h.open_upstream("req-2")
        h.call.from_upstream(dg("SettingsApplied"))
        self.assertEqual(h.call.phase, "live")

    def test_caller_leaves_while_reconnecting(self) -> None:
        """The caller hanging up during the gap ends the call with no timer left."""
        h = self.live_call()
        h.call.upstream_closed(UpstreamClosed(1006, "dropped", False))
        h.call.from_caller(StreamStopped())
        self.assertEqual(h.caller.closed_with, (1000, "CALLER_HANGUP"))
        h.call.caller_closed(1000, None, True)
        self.assertEqual(h.call.phase, "closed")
        self.assertEqual(h.clock.getDelayedCalls(), [])


class ReportTests(SynchronousTestCase):
    """The call report, field by field."""

    def test_report(self) -> None:
        """Ids, mode, duration, frames and bytes, drops, reconnects, request ids, last Error, diagnosis."""
        h = CallHarness({"deepgram": {"reconnect_attempts": 1, "replay_ms": 0}})
        h.call.sessions.budget.random = lambda: 0.0
        h.start()
        h.open_upstream("req-1")
        h.call.from_upstream(dg("SettingsApplied"))
        h.call.caller_audio(Audio(b"\x01" * 160))
        h.call.caller_audio(Audio(b""))
        h.call.upstream_audio(Audio(b"\x02" * 80, "outbound"))
        h.call.from_upstream(dg("ConversationText", role="user", content="Hi"))
        h.call.upstream_closed(UpstreamClosed(1006, "dropped", False))
        h.clock.advance(0.5)
        h.open_upstream("req-2")
        h.call.from_upstream(dg("SettingsApplied"))
        h.call.from_upstream(dg("Error", code="FAILED_TO_THINK", description="LLM down"))
        h.clock.advance(2)
        h.call.upstream_closed(UpstreamClosed(None, None, True))
        h.call.caller_closed(4501, None, True)
        report = h.call.report
        self.assertEqual((report["call_id"], report["stream_sid"], report["mode"], report["leg"]),
                         (h.call.info.call_id, SID, "agent", "twilio"))
        self.assertEqual(report["duration_s"], 2.5)
        self.assertEqual(report["frames"], {"caller_in": 2, "caller_out": 1, "deepgram_in": 1, "deepgram_out": 1})
        self.assertEqual(report["bytes"], {"caller_in": 160, "caller_out": 80, "deepgram_in": 80, "deepgram_out": 160})
        self.assertEqual(report["dropped"], {"empty_at_leg": 1} if "empty_frames" not in h.call.chain.names
                         else {"empty": 1})
        self.assertEqual(report["reconnects"], 1)
        self.assertEqual(report["dg_request_ids"], ["req-1", "req-2"])
        self.assertEqual(report["last_error"]["code"], "FAILED_TO_THINK")
        self.assertEqual((report["diagnosis"]["code"], report["diagnosis"]["caller_close"], report["diagnosis"]["phase"]),
                         ("DG_FATAL_ERROR", 4501, "live"))
        self.assertEqual(h.call.transcript.items, [{"role": "user", "content": "Hi"}])


class DebugSwitchTests(SynchronousTestCase):
    """The per-call debug switch."""

    def test_debug_parameter(self) -> None:
        """A call with debug=1 logs its control messages both ways, secrets redacted; others do not."""
        from twisted.logger import formatEvent, globalLogPublisher

        lines: list[str] = []
        observer = lambda e: lines.append(formatEvent(e))  # noqa: E731
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        template = {"agent": {"listen": {"provider": {"type": "deepgram", "model": "nova-3"}},
                              "think": {"provider": {"type": "open_ai", "model": "gpt-4o-mini"},
                                        "endpoint": {"url": "https://llm", "headers": {"authorization": "Bearer sk-LLM"}}},
                              "speak": {"provider": {"type": "deepgram", "model": "aura-2-thalia-en"}}}}
        quiet = CallHarness({"settings": {"template": template}})
        quiet.start()
        self.assertFalse([line for line in lines if "debug " in line])
        h = CallHarness({"settings": {"template": template}})
        h.start(params={"debug": "1", "token": "secret-token"})
        h.open_upstream()
        h.call.from_upstream(dg("SettingsApplied"))
        h.call.caller_audio(Audio(b"\xff" * 160))
        debug = [line for line in lines if "debug " in line]
        self.assertTrue(any("caller -> gateway: StreamStarted" in line for line in debug))
        self.assertTrue(any("gateway -> deepgram: UpstreamMessage" in line and "Settings" in line for line in debug))
        self.assertTrue(any("deepgram -> gateway: DeepgramEvent" in line for line in debug))
        self.assertFalse([line for line in debug if ": Audio " in line])
        self.assertFalse([line for line in lines if "sk-LLM" in line or "secret-token" in line])


class UpstreamLifecycleTests(SynchronousTestCase):
    """
    The Deepgram leg's lifecycle as the call consults it: nothing is ever sent on a leg that is
    not OPEN, and what arrives while no session is live is held, in order, for the next one.
    """

    def live_call(self, config: dict | None = None) -> CallHarness:
        h = CallHarness(config or {"deepgram": {"reconnect_backoff_s": 1}})
        h.call.sessions.budget.random = lambda: 1.0
        h.start()
        h.open_upstream("req-1")
        h.call.from_upstream(dg("SettingsApplied"))
        return h

    def test_closing_leg_is_never_written(self) -> None:
        """
        Deepgram's Close frame has arrived (the leg is CLOSING) but the call has not heard yet:
        caller audio, a DTMF injection and a KeepAlive in that window raise nothing, and the
        audio and the injection reach the next session in order.
        """
        h = self.live_call({"deepgram": {"reconnect_backoff_s": 1, "replay_ms": 0}})
        h.call.caller_audio(Audio(b"\x01" * 160))
        first = h.upstream
        first.state = LegState.CLOSING
        h.call.caller_audio(Audio(b"\x02" * 160))
        h.call.chain.inbound(UpstreamMessage({"type": "InjectUserMessage", "content": "5"}))
        h.call.chain.inbound(UpstreamMessage({"type": "KeepAlive"}))
        h.call.upstream_closed(UpstreamClosed(1011, "NET-0000", True))
        self.assertEqual(h.call.phase, "reconnecting")
        h.call.caller_audio(Audio(b"\x03" * 160))
        h.clock.advance(1)
        h.upstream = FakeUpstreamLeg()
        h.open_upstream("req-2")
        self.assertEqual([m["type"] for m in h.upstream.messages()], ["Settings"])
        self.assertEqual(h.upstream.audio(), b"", "nothing but Settings before SettingsApplied")
        h.call.from_upstream(dg("SettingsApplied"))
        self.assertEqual(h.upstream.sent[1:], [("audio", b"\x02" * 160),
                                               ("json", {"type": "InjectUserMessage", "content": "5"}),
                                               ("audio", b"\x03" * 160)])
        self.assertEqual(first.audio(), b"\x01" * 160)
        self.assertEqual(h.call.info.counters[("control_dropped", (("reason", "not_live"), ("type", "KeepAlive")))], 1)

    def test_replay_window(self) -> None:
        """The last replay_ms sent to a dying session goes to the next one first: nothing in flight is lost."""
        h = self.live_call({"deepgram": {"reconnect_backoff_s": 1, "replay_ms": 40}})
        frames = [bytes([i]) * 160 for i in range(1, 6)]  # 20 ms each at mu-law 8 kHz
        for f in frames:
            h.call.caller_audio(Audio(f))
        h.call.upstream_closed(UpstreamClosed(1011, "NET-0000", True))
        h.clock.advance(1)
        h.upstream = FakeUpstreamLeg()
        h.open_upstream("req-2")
        h.call.from_upstream(dg("SettingsApplied"))
        self.assertEqual(h.upstream.audio(), frames[3] + frames[4])

    def test_messages_wait_for_settings_applied(self) -> None:
        """A DTMF injection before the leg opens is queued and delivered after SettingsApplied, after Settings."""
        h = CallHarness()
        h.start()
        h.call.chain.inbound(UpstreamMessage({"type": "InjectUserMessage", "content": "Key 1"}))
        h.call.caller_audio(Audio(b"\x01" * 160))
        h.open_upstream(welcome=False)
        self.assertEqual(h.upstream.sent, [], "nothing before Welcome")
        h.call.from_upstream(dg("Welcome", request_id="r"))
        self.assertEqual([m["type"] for m in h.upstream.messages()], ["Settings"])
        h.call.from_upstream(dg("SettingsApplied"))
        self.assertEqual([k for k, _ in h.upstream.sent], ["json", "json", "audio"])
        self.assertEqual(h.upstream.messages()[1], {"type": "InjectUserMessage", "content": "Key 1"})

    def test_hold_is_bounded(self) -> None:
        """Beyond hold_audio_ms the held audio is dropped and counted; the rest keeps its order."""
        h = CallHarness({"settings": {"hold_audio_ms": 60}})
        h.start()
        frames = [bytes([i]) * 160 for i in range(4)]
        for f in frames:
            h.call.caller_audio(Audio(f))
        self.assertEqual(h.call.info.counters[("frames_dropped", (("reason", "held_over_limit"),))], 1)
        h.open_upstream()
        h.call.from_upstream(dg("SettingsApplied"))
        self.assertEqual(h.upstream.audio(), b"".join(frames[:3]))

    def test_setup_timeout_is_retried(self) -> None:
        """No SettingsApplied in time: that session is closed and a new one opened; the caller stays."""
        h = CallHarness({"settings": {"applied_timeout_s": 2}, "deepgram": {"reconnect_backoff_s": 1}})
        h.call.sessions.budget.random = lambda: 1.0
        h.start()
        h.open_upstream("req-1")
        h.clock.advance(2)
        self.assertEqual(h.upstream.closed_with, 1000)
        self.assertEqual(h.call.phase, "reconnecting")
        # The abandoned session's late words reach nobody.
        h.call.upstream_closed(UpstreamClosed(1000, None, True), h.connector.attempts[0][2])
        h.connector.attempts[0][2].from_upstream(dg("SettingsApplied"))
        self.assertEqual(h.call.phase, "reconnecting")
        h.clock.advance(1)
        h.upstream = FakeUpstreamLeg()
        h.open_upstream("req-2")
        h.call.from_upstream(dg("SettingsApplied"))
        self.assertEqual(h.call.phase, "live")
        self.assertIsNone(h.caller.closed_with)

    def test_no_welcome_is_diagnosed(self) -> None:
        """A session that never says Welcome is retried, then the call ends with DG_NO_WELCOME."""
        h = CallHarness({"settings": {"welcome_timeout_s": 1}, "deepgram": {"reconnect_attempts": 1}})
        h.call.sessions.budget.random = lambda: 1.0
        h.start()
        h.open_upstream(welcome=False)
        h.clock.advance(1)
        h.clock.advance(1)
        h.upstream = FakeUpstreamLeg()
        h.open_upstream(welcome=False)
        h.clock.advance(1)
        self.assertEqual(h.call.diagnosis.code, "DG_NO_WELCOME")
        self.assertEqual(h.caller.closed_with, (4500, "DG_NO_WELCOME"))

    def test_flapping_deepgram_is_bounded(self) -> None:
        """
        A Deepgram that closes every session soon after it is confirmed is reconnected at most
        reconnect_window_max times in the window, with a growing backoff; then DG_UNSTABLE, 4501.
        """
        h = CallHarness({"deepgram": {"reconnect_backoff_s": 0.5, "reconnect_window_max": 3}})
        h.call.sessions.budget.random = lambda: 1.0
        h.start()
        delays = []
        while h.call.phase not in ("ending", "closed"):
            h.upstream = FakeUpstreamLeg()
            h.open_upstream()
            h.call.from_upstream(dg("SettingsApplied"))
            h.clock.advance(0.5)
            h.call.upstream_closed(UpstreamClosed(1011, "See https://dpgr.am/net0000", True))
            if h.call.sessions.retry_timer is not None and h.call.sessions.retry_timer.active():
                delays.append(h.call.sessions.retry_timer.getTime() - h.clock.seconds())
                h.clock.advance(delays[-1])
        self.assertEqual(len(h.connector.attempts), 4)
        self.assertEqual(delays, sorted(delays))
        self.assertLess(delays[0], delays[-1])
        d = h.call.diagnosis
        self.assertEqual((d.code, d.caller_close), ("DG_UNSTABLE", 4501))
        self.assertIn("4 sessions", d.detail)
        self.assertIn("DG_NET_0000 x4", d.detail)
        self.assertEqual(h.caller.closed_with, (4501, "DG_UNSTABLE"))

    def test_per_call_limit(self) -> None:
        """reconnect_max_per_call bounds the reconnects of the whole call, however far apart."""
        h = CallHarness({"deepgram": {"reconnect_backoff_s": 0.1, "reconnect_max_per_call": 2},
                        "keepalive": {"caller_idle_timeout_s": 0}})
        h.call.sessions.budget.random = lambda: 1.0
        h.start()
        while h.call.phase not in ("ending", "closed"):
            h.upstream = FakeUpstreamLeg()
            h.open_upstream()
            h.call.from_upstream(dg("SettingsApplied"))
            h.clock.advance(600)
            h.call.upstream_closed(UpstreamClosed(1006, "dropped", False))
            h.clock.advance(10)
        self.assertEqual(len(h.connector.attempts), 3)
        self.assertEqual(h.call.diagnosis.code, "DG_UNSTABLE")

    def test_welcome_request_id(self) -> None:
        """Without a dg-request-id header, Welcome's request_id names the session."""
        h = CallHarness()
        h.start()
        h.open_upstream(request_id=None, welcome=False)
        h.call.from_upstream(dg("Welcome", request_id="from-welcome"))
        self.assertEqual((h.call.info.request_id, h.call.info.request_ids), ("from-welcome", ["from-welcome"]))

    def test_caller_closing_is_never_written(self) -> None:
        """Agent audio and events for a caller whose leg is CLOSING are not sent (and raise nothing)."""
        h = self.live_call()
        h.caller.state = LegState.CLOSING
        h.call.upstream_audio(Audio(b"agent", "outbound"))
        h.call.from_upstream(dg("UserStartedSpeaking"))
        self.assertEqual(h.caller.sent, [("event", "Welcome"), ("event", "SettingsApplied")])

    def test_debug_never_changes_auth(self) -> None:
        """With debug_calls on, a bad /client token is still 4003 and a silent client still 4001."""
        for debug in (False, True):
            h = CallHarness({"gateway": {"debug_calls": debug}}, leg="client")
            h.call.caller_handshake(Handshake("client", "/client", {}, "peer"))
            h.call.caller_opened(h.caller)
            h.call.from_caller(ClientHello("not-a-token"))
            self.assertEqual(h.caller.closed_with, (4003, "AUTH_FAILED"), debug)
            silent = CallHarness({"gateway": {"debug_calls": debug}}, leg="client")
            silent.call.caller_handshake(Handshake("client", "/client", {}, "peer"))
            silent.call.caller_opened(silent.caller)
            silent.clock.advance(10)
            self.assertEqual(silent.caller.closed_with, (4001, "AUTH_TIMEOUT"), debug)
            self.assertEqual(self.flushLoggedErrors(), [])



class PrivacyTests(SynchronousTestCase):
    """What was said is kept in one place, after the chain."""

    def test_redacting_stage_changes_every_copy(self) -> None:
        """A stage that masks digits masks them in the conversation log line and the report too."""
        import os

        from twisted.logger import formatEvent, globalLogPublisher

        lines: list[str] = []
        observer = lambda e: lines.append(formatEvent(e) + repr(e.get("call_report")))  # noqa: E731
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        dropins = os.path.join(os.path.dirname(__file__), "dropins", "masking")
        h = CallHarness({"gateway": {"dropin_dirs": [dropins], "log_conversation": True,
                                     "chain": ["auth", "settings", "close_codes", "mask_digits"]}})
        h.start()
        h.open_upstream()
        h.call.from_upstream(dg("SettingsApplied"))
        h.call.from_upstream(dg("ConversationText", role="user", content="My order number is 12345."))
        h.call.from_caller(StreamStopped())
        h.call.upstream_closed(UpstreamClosed(1000, None, True))
        h.call.caller_closed(1000, None, True)
        self.assertEqual(h.call.transcript.items, [{"role": "user", "content": "My order number is #####."}])
        self.assertTrue([line for line in lines if "#####" in line])
        self.assertFalse([line for line in lines if "12345" in line])


class TranscriptEndTests(SynchronousTestCase):
    """A transcription call the caller ends before Deepgram is ready still gets transcribed."""

    def test_held_audio_reaches_deepgram_before_close_stream(self) -> None:
        """listen: audio held while connecting, then Twilio's stop: the session opens, gets it, then CloseStream."""
        h = CallHarness({"gateway": {"mode": "listen"}})
        h.start()
        frames = [bytes([i]) * 160 for i in range(1, 4)]
        for f in frames:
            h.call.caller_audio(Audio(f))
        h.call.from_caller(StreamStopped())
        self.assertEqual(h.call.phase, "ending")
        h.open_upstream()
        self.assertEqual(h.upstream.audio(), b"".join(frames))
        self.assertEqual(h.upstream.messages(), [{"type": "CloseStream"}])
        h.call.upstream_closed(UpstreamClosed(1000, None, True))
        self.assertEqual(h.caller.closed_with, (1000, "CALLER_HANGUP"))

    def test_voice_bot_drops_what_is_held(self) -> None:
        """agent: a caller who hung up needs no answer; the attempt is abandoned, nothing sent."""
        h = CallHarness()
        h.start()
        h.call.caller_audio(Audio(b"\x01" * 160))
        h.call.from_caller(StreamStopped())
        self.assertEqual(h.call.info.counters[("frames_dropped", (("reason", "call_ending"),))], 1)
        self.assertEqual(h.call.phase, "ending")
