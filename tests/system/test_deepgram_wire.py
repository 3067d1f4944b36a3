"""
Whole-gateway tests of issue 16: every message the gateway sends Deepgram, captured at the
emulator, validates strictly against deepgram-sdk's types, in the three modes (Voice Agent,
``/v1/listen``, Flux); a ``/client`` app updates the prompt and injects an agent message mid-call
and sees the confirmations; a function Deepgram cancels is never answered; Flux turns reach the
plugins, ``/client`` and the call report.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol, connectWS
from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from gateway.codecs.deepgram_messages import check_client_message
from gateway.codecs.deepgram_types import check_listen_options
from gateway.codecs.wav import WavAudio
from gateway.simulator import TwilioCall
from gateway.tokens import mint_token
from tests.system.harness import DROPINS, clip, start_emulator, start_gateway
from tests.test_call_control import _forget_dropins

ORDER = clip("caller-order-8k-mulaw.wav")
YES_16K = clip("caller-yes-16k-s16le.wav")
SECRET = "s" * 32
ENV = {"GATEWAY_TOKEN_SECRET": SECRET}
FUNCTIONS = os.path.join(os.path.dirname(DROPINS), "dropins", "functions")
ENDPOINTS = {"/v1/agent/converse": "agent", "/v1/listen": "listen", "/v2/listen": "flux"}


class ScriptedClient(WebSocketClientProtocol):
    """
    A ``/client`` app: the token, then audio, then control messages sent as events arrive
    (``factory.react``: event type -> messages to send the first time it arrives); closes once
    ``factory.done_when(events)`` holds.
    """

    tcpNoDelay = True

    def onOpen(self) -> None:
        f = self.factory
        self.sendMessage(json.dumps({"token": f.token}).encode(), False)
        for i in range(0, len(f.audio), 640):
            self.sendMessage(f.audio[i:i + 640], True)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        f = self.factory
        if isBinary:
            return
        event = json.loads(payload)
        f.events.append(event)
        for message in f.react.pop(event.get("type"), []):
            self.sendMessage(json.dumps(message).encode(), False)
        if f.done_when(f.events) and self.state == self.STATE_OPEN:
            self.sendClose(1000)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self.factory.done.called:
            self.factory.done.callback((self.factory.events, code))


def client_app(url: str, audio: bytes, react: dict[str, list[dict]],
               done_when: Callable[[list[dict]], bool]) -> defer.Deferred:
    factory = WebSocketClientFactory(url)
    factory.protocol = ScriptedClient
    factory.token = mint_token(SECRET.encode(), reactor.seconds())
    factory.audio = audio
    factory.react = {k: list(v) for k, v in react.items()}
    factory.done_when = done_when
    factory.events = []
    factory.done = defer.Deferred()
    connectWS(factory)
    return factory.done.addTimeout(40, reactor)


class WireTests(TestCase):
    """What the gateway sends Deepgram, judged strictly by the SDK's types."""

    timeout = 90

    def assertEverythingValid(self, emulator: Any) -> None:
        """Each session: its query (listen, Flux) and every text frame, strictly by the SDK."""
        self.assertTrue(emulator.sessions)
        for session in emulator.sessions:
            endpoint = ENDPOINTS[session.path]
            if endpoint != "agent":
                version = "v2" if endpoint == "flux" else "v1"
                check_listen_options(session.query, version, path="query")
            texts = session.texts
            self.assertTrue(texts or endpoint != "agent")
            for message in texts:
                check_client_message(message, endpoint)
            self.assertNotIn(b"", [p for k, p in session.received if k == "binary"])

    @defer.inlineCallbacks
    def test_voice_agent_twilio(self) -> None:
        """Settings, DTMF's InjectUserMessage, a function's response: all valid on the wire."""
        self.addCleanup(_forget_dropins)
        emulator = yield start_emulator(self, script=("Can you check that later for me?",))
        gateway = yield start_gateway(self, emulator, {"gateway": {
            "dropin_dirs": [FUNCTIONS],
            "chain": ["auth", "settings", "empty_frames", "transcoder", "keepalive", "call_control",
                      "close_codes", "flaky"]}})
        call = TwilioCall(reactor, url=gateway.url + "/twilio", audio=ORDER, realtime=False, wait_s=3.0,
                          dtmf=[(0.5, "5")])
        yield call.run().addTimeout(60, reactor)
        yield emulator.sessions[0].closed
        self.assertEverythingValid(emulator)
        kinds = [m["type"] for m in emulator.sessions[0].texts]
        self.assertEqual(kinds[0], "Settings")
        self.assertIn("InjectUserMessage", kinds)
        self.assertIn("FunctionCallResponse", kinds)

    @defer.inlineCallbacks
    def test_cancelled_function_never_answered(self) -> None:
        """The caller speaks again while 'later' runs: Deepgram cancels it and no response is sent."""
        self.addCleanup(_forget_dropins)
        emulator = yield start_emulator(self, script=("Can you check that later for me?", "Never mind."))
        gateway = yield start_gateway(self, emulator, {"gateway": {
            "dropin_dirs": [FUNCTIONS],
            "chain": ["auth", "settings", "empty_frames", "transcoder", "keepalive", "call_control",
                      "close_codes", "flaky"]}})
        twice = WavAudio(ORDER.encoding, ORDER.sample_rate, ORDER.channels,
                         ORDER.data + b"\xff" * 8000 + ORDER.data)
        call = TwilioCall(reactor, url=gateway.url + "/twilio", audio=twice, realtime=False, wait_s=3.0)
        yield call.run().addTimeout(60, reactor)
        session = emulator.sessions[0]
        yield session.closed
        self.assertEverythingValid(emulator)
        self.assertIn("FunctionCallRequest", [kind for _, kind in session.sent])
        self.assertIn("FunctionCallCancelled", [kind for _, kind in session.sent])
        self.assertNotIn("FunctionCallResponse", [m["type"] for m in session.texts])
        totals = gateway.gateway.metrics.totals
        self.assertEqual(totals[("function_calls", ("later", "cancelled"))], 1)

    @defer.inlineCallbacks
    def test_client_app_updates_prompt_and_injects(self) -> None:
        """A /client app: UpdatePrompt -> PromptUpdated, a refused message -> one Error, an injection spoken."""
        emulator = yield start_emulator(self)
        gateway = yield start_gateway(self, emulator, env=ENV)
        inject = {"type": "InjectAgentMessage", "message": "One moment please.", "behavior": "queue"}

        def spoken(events: list[dict]) -> bool:
            return any(e.get("type") == "ConversationText" and e.get("content") == inject["message"]
                       for e in events)

        events, code = yield client_app(
            gateway.url + "/client", YES_16K.data,
            react={"SettingsApplied": [{"type": "UpdatePrompt", "prompt": "You are a pirate."},
                                       {"type": "UpdatePrompt", "prompt": 42}],
                   "PromptUpdated": [inject]},
            done_when=spoken)
        yield emulator.sessions[0].closed
        kinds = [e.get("type") for e in events]
        self.assertIn("PromptUpdated", kinds)
        errors = [e for e in events if e.get("type") == "Error"]
        self.assertEqual(len(errors), 1)
        self.assertEqual((errors[0]["source"], errors[0]["code"]), ("gateway", "INVALID_MESSAGE"))
        self.assertTrue(errors[0]["message"].startswith("message.prompt:"))
        self.assertEqual(errors[0]["description"], errors[0]["message"])
        self.assertEqual(code, 1000)
        sent = [m["type"] for m in emulator.sessions[0].texts]
        self.assertEqual(sent[:3], ["Settings", "UpdatePrompt", "InjectAgentMessage"])
        self.assertEverythingValid(emulator)

    @defer.inlineCallbacks
    def test_listen_client_app(self) -> None:
        """/v1/listen: a /client app's Configure and Finalize go through; ConfigureSuccess comes back."""
        emulator = yield start_emulator(self)
        gateway = yield start_gateway(self, emulator, {"gateway": {"mode": "listen"}}, env=ENV)
        events, code = yield client_app(
            gateway.url + "/client", YES_16K.data,
            react={"Results": [{"type": "Configure", "keyterms": ["refund"]}, {"type": "Finalize"}]},
            done_when=lambda events: any(e.get("type") == "ConfigureSuccess" for e in events))
        yield emulator.sessions[0].closed
        self.assertEverythingValid(emulator)
        self.assertEqual([m["type"] for m in emulator.sessions[0].texts][:2], ["Configure", "Finalize"])
        self.assertEqual(emulator.sessions[0].texts[-1], {"type": "CloseStream"})

    @defer.inlineCallbacks
    def test_flux_twilio(self) -> None:
        """Flux mode: /v2/listen with valid options; turns reach the plugins and the call report."""
        emulator = yield start_emulator(self)
        gateway = yield start_gateway(self, emulator, {
            "gateway": {"mode": "flux", "dropin_dirs": [os.path.join(DROPINS, "recorder")],
                        "chain": ["auth", "settings", "empty_frames", "transcoder", "keepalive",
                                  "call_control", "close_codes", "recorder"]},
            "settings": {"flux": {"eot_threshold": 0.75, "eager_eot_threshold": 0.5, "keyterm": ["order"]}}})
        ended: list = []
        closed = gateway.gateway._closed
        gateway.gateway._closed = lambda call: (ended.append(call), closed(call))
        call = TwilioCall(reactor, url=gateway.url + "/twilio", audio=ORDER, realtime=False, wait_s=2.0)
        yield call.run().addTimeout(60, reactor)
        session = emulator.sessions[0]
        yield session.closed
        self.assertEverythingValid(emulator)
        self.assertEqual(session.path, "/v2/listen")
        self.assertEqual((session.query["eot_threshold"], session.query["encoding"]), ("0.75", "mulaw"))
        self.assertEqual(session.texts[-1], {"type": "CloseStream"})
        from gateway.dropins import recorder

        seen = [name for events in recorder.SEEN.values() for d, name in events if d == "out"]
        self.assertIn("Connected", seen)
        self.assertIn("TurnInfo", seen)
        report = ended[0].report
        self.assertEqual(report["mode"], "flux")
        self.assertEqual([t["transcript"] for t in ended[0].transcript.items],
                         ["Hello, I would like to check the status of my order."])
        self.addCleanup(_forget_dropins)

    @defer.inlineCallbacks
    def test_flux_client_app(self) -> None:
        """A /client app in Flux mode sees Connected and the turn's TurnInfo, and may Configure."""
        emulator = yield start_emulator(self)
        gateway = yield start_gateway(self, emulator, {"gateway": {"mode": "flux"}}, env=ENV)
        audio = YES_16K.data + b"\x00" * 32000
        events, code = yield client_app(
            gateway.url + "/client", audio,
            react={"Connected": [{"type": "Configure", "thresholds": {"eot_threshold": 0.8}}]},
            done_when=lambda events: {"EndOfTurn", "ConfigureSuccess"} <= {e.get("event", e.get("type"))
                                                                            for e in events})
        yield emulator.sessions[0].closed
        self.assertEverythingValid(emulator)
        kinds = [e.get("type") for e in events]
        self.assertEqual(kinds[0], "Connected")
        self.assertIn("ConfigureSuccess", kinds)
        turns = [e["event"] for e in events if e.get("type") == "TurnInfo"]
        self.assertEqual((turns[0], turns[-1]), ("StartOfTurn", "EndOfTurn"))
