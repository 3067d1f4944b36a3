"""
Deepgram's messages both ways through a call (issue 16): /client control messages judged by the
SDK's types and routed through the gate, FunctionCallCancelled, LatencyReport figures, unknown
server message types, and Flux as a third mode; fake legs and a Clock.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs
from twisted.trial.unittest import SynchronousTestCase

from gateway.events import Audio, CallerControl, StreamStopped, UpstreamClosed
from gateway.testing import FakeCallerLeg
from tests.test_call import CallHarness, dg
from tests.test_call_control import _forget_dropins, request, responses

HERE = os.path.dirname(os.path.abspath(__file__))


@attrs.define
class TalkingCallerLeg(FakeCallerLeg):
    """A fake caller leg that keeps the text of each error, not just its code."""

    errors: list[tuple[str, str]] = attrs.field(factory=list)

    def send_error(self, code: str, message: str) -> None:
        super().send_error(code, message)
        self.errors.append((code, message))


def harness(config: dict | None = None, mode: str = "agent") -> CallHarness:
    config = dict(config or {})
    config.setdefault("gateway", {})["mode"] = mode
    h = CallHarness(config)
    h.caller = TalkingCallerLeg()
    return h


def live(mode: str = "agent", config: dict | None = None) -> CallHarness:
    h = harness(config, mode)
    h.start()
    h.open_upstream()
    if mode == "agent":
        h.call.from_upstream(dg("SettingsApplied"))
    elif mode == "flux":
        h.call.from_upstream(dg("Connected", request_id="req-1", sequence_id=0))
    return h


def control(h: CallHarness, message: dict[str, Any]) -> None:
    h.call.from_caller(CallerControl(message))


def sent(h: CallHarness, kind: str | None = None) -> list[dict]:
    return [m for m in h.upstream.messages() if kind is None or m["type"] == kind]


class ControlMessageTests(SynchronousTestCase):
    """A /client app's control messages: typed and judged by the SDK, routed through the gate."""

    def test_update_prompt_and_inject(self) -> None:
        """UpdatePrompt and both InjectAgentMessage forms reach Deepgram unchanged, counted by type."""
        h = live()
        messages = [
            {"type": "UpdatePrompt", "prompt": "You are a pirate."},
            {"type": "InjectAgentMessage", "message": "One moment please.", "behavior": "queue"},
            {"type": "InjectAgentMessage", "is_dynamic": True},
            {"type": "UpdateThink_Live", "think_live": {"provider": {"type": "deepgram"}}},
            {"type": "ForceEndTurn"},
        ]
        for message in messages:
            control(h, message)
        self.assertEqual(sent(h)[1:], messages)
        self.assertEqual(h.caller.errors, [])
        self.assertEqual(h.call.info.counters[("control_messages", (("type", "InjectAgentMessage"),))], 2)

    def test_held_until_live_in_order(self) -> None:
        """Before SettingsApplied a control message waits, in order with the audio, then goes."""
        h = harness()
        h.start()
        h.open_upstream()
        h.call.caller_audio(Audio(b"\x01" * 160))
        control(h, {"type": "UpdatePrompt", "prompt": "Be brief."})
        h.call.caller_audio(Audio(b"\x02" * 160))
        self.assertEqual([m["type"] for m in sent(h)], ["Settings"])
        h.call.from_upstream(dg("SettingsApplied"))
        kinds = [(k, p if k == "audio" else p["type"]) for k, p in h.upstream.sent]
        self.assertEqual(kinds, [("json", "Settings"), ("audio", b"\x01" * 160),
                                 ("json", "UpdatePrompt"), ("audio", b"\x02" * 160)])

    def test_refusals_name_the_field(self) -> None:
        """One Error per refused message, naming the field; nothing goes to Deepgram; the call goes on."""
        h = live()
        cases = [
            ({"type": "UpdatePrompt", "prompt": 5}, "INVALID_MESSAGE", "message.prompt"),
            ({"type": "UpdatePrompt", "prompt": "x", "append": True}, "INVALID_MESSAGE", "message.append"),
            ({"type": "InjectAgentMessage", "content": "Hi"}, "INVALID_MESSAGE", "message.content"),
            ({"type": "UpdateSpeak", "speak": {"provider": {"type": "deepgram"}}}, "INVALID_MESSAGE",
             "message.speak.provider.model"),
            ({"type": "Settings", "audio": {}}, "UNKNOWN_MESSAGE", "message.type"),
            ({"type": "FunctionCallResponse", "id": "1", "name": "x", "content": "y"}, "UNKNOWN_MESSAGE",
             "message.type"),
            ({"type": "Finalize"}, "UNKNOWN_MESSAGE", "message.type"),
            ({"kind": "nothing"}, "UNKNOWN_MESSAGE", "message.type"),
        ]
        for message, code, field in cases:
            control(h, message)
        self.assertEqual([code for code, _ in h.caller.errors], [c for _, c, _ in cases])
        for (code, text), (_, _, field) in zip(h.caller.errors, cases):
            self.assertTrue(text.startswith(field + ":"), text)
        self.assertIn("UpdatePrompt", h.caller.errors[4][1], "the refusal lists what an app may send")
        self.assertEqual(sent(h)[1:], [])
        counters = h.call.info.counters
        self.assertEqual(counters[("caller_messages_rejected", (("reason", "invalid_message"),))], 4)
        self.assertEqual(counters[("caller_messages_rejected", (("reason", "unknown_message"),))], 4)
        self.assertEqual(h.call.phase, "live")

    def test_listen_mode(self) -> None:
        """On /v1/listen an app may send Finalize and Configure, not the agent's messages."""
        h = live("listen")
        control(h, {"type": "Finalize"})
        control(h, {"type": "Configure", "keyterms": ["refund"], "features": {"numerals": True}})
        control(h, {"type": "UpdatePrompt", "prompt": "x"})
        control(h, {"type": "CloseStream"})
        self.assertEqual([m["type"] for m in sent(h)], ["Finalize", "Configure"])
        self.assertEqual([c for c, _ in h.caller.errors], ["UNKNOWN_MESSAGE", "UNKNOWN_MESSAGE"])

    def test_flux_mode(self) -> None:
        """On Flux an app may send Configure and ForceEndTurn; a bad threshold key is named."""
        h = live("flux")
        control(h, {"type": "Configure", "thresholds": {"eot_threshold": 0.8}, "keyterms": ["order"]})
        control(h, {"type": "ForceEndTurn"})
        control(h, {"type": "Configure", "thresholds": {"eot": 0.8}})
        control(h, {"type": "KeepAlive"})
        self.assertEqual([m["type"] for m in sent(h)], ["Configure", "ForceEndTurn"])
        self.assertEqual(h.caller.errors[0][0], "INVALID_MESSAGE")
        self.assertTrue(h.caller.errors[0][1].startswith("message.thresholds.eot:"))
        self.assertEqual(h.caller.errors[1][0], "UNKNOWN_MESSAGE")


class ServerMessageTests(SynchronousTestCase):
    """Deepgram's server messages: handled, counted, forwarded."""

    def test_acknowledgements_forwarded(self) -> None:
        """PromptUpdated, InjectionRefused, ThinkLiveUpdated... reach the caller as they came."""
        h = live()
        for kind in ("PromptUpdated", "SpeakUpdated", "ThinkUpdated", "ListenUpdated", "ThinkLiveUpdated"):
            h.call.from_upstream(dg(kind))
        h.call.from_upstream(dg("InjectionRefused", message="The user is speaking."))
        h.call.from_upstream(dg("FrustrationDetected", count=1, escalated=False))
        h.call.from_upstream(dg("FunctionCallResponse", id="s1", name="lookup", content="done"))
        events = [name for kind, name in h.caller.sent if kind == "event"]
        self.assertEqual(events[-8:], ["PromptUpdated", "SpeakUpdated", "ThinkUpdated", "ListenUpdated",
                                       "ThinkLiveUpdated", "InjectionRefused", "FrustrationDetected",
                                       "FunctionCallResponse"])
        self.assertEqual(sent(h, "FunctionCallResponse"), [], "a server-side response is not answered")
        self.assertEqual(h.call.info.counters[("upstream_messages_unknown", ())], 0)

    def test_latency_report(self) -> None:
        """Deepgram's own latency figures are counted per stage and summarised in the report."""
        h = live()
        h.call.from_upstream(dg("LatencyReport", tts_latency=0.2, total_latency=0.9, ttt_text_latency=None))
        h.call.from_upstream(dg("LatencyReport", tts_latency=0.4, total_latency=1.1))
        counters = h.call.info.counters
        self.assertEqual(counters[("deepgram_latency_ms", (("stage", "tts"),))], 600)
        self.assertEqual(counters[("deepgram_latency_reports", (("stage", "total"),))], 2)
        self.assertNotIn(("deepgram_latency_reports", (("stage", "ttt_text"),)), counters)
        h.call.from_caller(StreamStopped())
        h.call.upstream_closed(UpstreamClosed(1000, None, True))
        h.call.caller_closed(1000, None, True)
        self.assertEqual(h.call.report["deepgram_latency"], {"total": {"mean_s": 1.0, "reports": 2},
                                                             "tts": {"mean_s": 0.3, "reports": 2}})

    def test_unknown_type_forwarded_and_counted(self) -> None:
        """A type newer than the SDK: forwarded, counted, logged once, never an error."""
        from twisted.logger import capturedLogs

        h = live()
        with capturedLogs() as events:
            h.call.from_upstream(dg("AgentDreaming", content="sheep"))
            h.call.from_upstream(dg("AgentDreaming", content="more sheep"))
        self.assertEqual([n for k, n in h.caller.sent if k == "event"][-2:], ["AgentDreaming"] * 2)
        self.assertEqual(h.call.info.counters[("upstream_messages_unknown", ())], 2)
        logged = [e for e in events if "does not know" in (e.get("log_format") or "")]
        self.assertEqual(len(logged), 1)
        self.assertEqual(h.call.phase, "live")


class FunctionCancelledTests(SynchronousTestCase):
    """FunctionCallCancelled: the running function is cancelled and its response never sent."""

    def test_cancelled_function_is_never_answered(self) -> None:
        """Two running functions; Deepgram cancels one: only the other is answered."""
        h = live(config={"gateway": {"dropin_dirs": [os.path.join(HERE, "dropins", "functions")],
                                     "chain": ["auth", "settings", "call_control", "flaky"]}})
        self.addCleanup(_forget_dropins)
        h.call.from_upstream(request(
            {"id": "a", "name": "later", "arguments": "{}", "client_side": True},
            {"id": "b", "name": "later", "arguments": "{}", "client_side": True},
            {"id": "c", "name": "hang", "arguments": "{}", "client_side": True},
        ))
        self.assertEqual(sorted(h.call._functions.running), ["a", "b", "c"])
        h.call.from_upstream(dg("FunctionCallCancelled", functions=[{"id": "a", "name": "later"},
                                                                    {"id": "c", "name": "hang"},
                                                                    {"id": "zz", "name": "later"}]))
        self.assertEqual(sorted(h.call._functions.running), ["b"])
        h.clock.advance(15)
        self.assertEqual([r["id"] for r in responses(h)], ["b"])
        counters = h.call.info.counters
        self.assertEqual(counters[("function_calls", (("function", "later"), ("outcome", "cancelled")))], 1)
        self.assertEqual(counters[("function_calls", (("function", "hang"), ("outcome", "cancelled")))], 1)
        self.assertEqual(h.caller.sent[-1], ("event", "FunctionCallCancelled"))
        self.assertEqual(h.call.phase, "live")

    def test_cancel_after_the_answer(self) -> None:
        """A cancellation for a request already answered changes nothing."""
        h = live()
        h.call.from_upstream(request({"id": "1", "name": "nope", "arguments": "{}", "client_side": True}))
        h.call.from_upstream(dg("FunctionCallCancelled", functions=[{"id": "1", "name": "nope"}]))
        self.assertEqual([r["id"] for r in responses(h)], ["1"])


class FluxCallTests(SynchronousTestCase):
    """Flux (/v2/listen) as the call's third mode."""

    def test_lifecycle(self) -> None:
        """The Flux URL and options; live on Connected; turns in the report; CloseStream at the end."""
        h = harness({"settings": {"flux": {"eot_threshold": 0.8, "keyterm": ["order", "refund"]}}}, "flux")
        h.start()
        url, _, _, _ = h.connector.attempts[0]
        parts = urlsplit(url)
        self.assertEqual((parts.netloc, parts.path), ("api.deepgram.com", "/v2/listen"))
        self.assertEqual(parse_qs(parts.query), {"model": ["flux-general-en"], "eot_threshold": ["0.8"],
                                                 "keyterm": ["order", "refund"], "encoding": ["mulaw"],
                                                 "sample_rate": ["8000"]})
        h.open_upstream()
        h.call.caller_audio(Audio(b"\x01" * 160))
        self.assertEqual(h.call.phase, "configuring", "Flux is confirmed by Connected, not by the open")
        self.assertEqual(h.upstream.audio(), b"")
        h.call.from_upstream(dg("Connected", request_id="req-1", sequence_id=0))
        self.assertEqual(h.call.phase, "live")
        self.assertEqual(h.upstream.audio(), b"\x01" * 160)
        turn = {"request_id": "req-1", "turn_index": 0, "audio_window_start": 0.5, "audio_window_end": 2.0,
                "words": [], "end_of_turn_confidence": 0.9}
        h.call.from_upstream(dg("TurnInfo", event="StartOfTurn", transcript="Hello", sequence_id=1, **turn))
        h.call.from_upstream(dg("TurnInfo", event="EndOfTurn", transcript="Hello there.", trigger="model",
                                sequence_id=2, **turn))
        self.assertEqual(h.caller.sent[-1], ("event", "TurnInfo"))
        h.call.from_caller(StreamStopped())
        self.assertEqual(sent(h)[-1], {"type": "CloseStream"})
        h.call.upstream_closed(UpstreamClosed(None, None, True))
        h.call.caller_closed(1000, None, True)
        self.assertEqual(h.call.transcript.items, [{"turn": 0, "start": 0.5, "duration": 1.5,
                                                    "transcript": "Hello there.", "end_of_turn_confidence": 0.9,
                                                    "trigger": "model"}])
        self.assertEqual((h.call.report["mode"], h.call.diagnosis.code), ("flux", "CALLER_HANGUP"))
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_no_connected(self) -> None:
        """A Flux session that never says Connected is replaced (DG_SETUP_TIMEOUT, retryable)."""
        h = harness(mode="flux")
        h.start()
        h.open_upstream()
        h.clock.advance(10)
        self.assertEqual(h.upstream.closed_with, 1000)
        self.assertEqual(h.call.phase, "reconnecting")
        self.assertEqual(len(h.connector.attempts), 1)
        h.clock.advance(1)
        self.assertEqual(len(h.connector.attempts), 2)

    def test_start_of_turn_clears_plugin_audio(self) -> None:
        """StartOfTurn clears Twilio's queue only when audio went to the caller since the last turn."""
        h = live("flux")
        start = dg("TurnInfo", event="StartOfTurn", transcript="", turn_index=0)
        h.call.from_upstream(start)
        self.assertNotIn(("clear", None), h.caller.sent)
        h.call.chain.outbound(Audio(b"\xff" * 160, "outbound"))  # a plugin's prompt to the caller
        h.call.from_upstream(start)
        self.assertEqual(h.caller.sent.count(("clear", None)), 1)
        h.call.from_upstream(start)
        self.assertEqual(h.caller.sent.count(("clear", None)), 1)
        self.assertEqual(h.call.info.counters[("barge_ins", (("mode", "flux"),))], 1)

    def test_flux_options_checked_at_start_up(self) -> None:
        """[settings.flux] is judged by the SDK's /v2/listen options, naming the key."""
        from gateway.errors import ConfigError
        from gateway.testing import configure

        with self.assertRaises(ConfigError) as cm:
            configure({"gateway": {"mode": "flux"}, "settings": {"flux": {"utterance_end_ms": 1000}}})
        self.assertEqual(cm.exception.key, "settings.flux.utterance_end_ms")
        with self.assertRaises(ConfigError) as cm:
            configure({"gateway": {"mode": "flux"}, "settings": {"flux": {"eot_timeout_ms": "soon"}}})
        self.assertEqual(cm.exception.key, "settings.flux.eot_timeout_ms")
        with self.assertRaises(ConfigError) as cm:
            configure({"gateway": {"mode": "flux"}, "settings": {"parameters": {"x": "interim_results"}}})
        self.assertEqual(cm.exception.key, "settings.parameters.x")

    def test_flux_url_from_the_environment(self) -> None:
        """DEEPGRAM_FLUX_URL points Flux elsewhere; [deepgram] flux_url too."""
        from gateway.testing import configure

        config = configure({"gateway": {"mode": "flux"}}, {"DEEPGRAM_FLUX_URL": "ws://127.0.0.1:9/v2/listen"}).config
        self.assertEqual(config.upstream_url, "ws://127.0.0.1:9/v2/listen")
        config = configure({"gateway": {"mode": "flux"}, "deepgram": {"flux_url": "wss://eu.example/v2/listen"}}).config
        self.assertEqual(config.upstream_url, "wss://eu.example/v2/listen")


class PluginMessageTests(SynchronousTestCase):
    """A plugin's messages for Deepgram: an SDK model or a dict, checked as strictly."""

    def test_client_message(self) -> None:
        """An SDK model is dumped as the SDK sends it; a bad dict is refused naming the field."""
        from deepgram.agent.v1.types.agent_v1inject_dynamic_agent_message import AgentV1InjectDynamicAgentMessage
        from deepgram.agent.v1.types.agent_v1update_prompt import AgentV1UpdatePrompt

        from gateway.codecs.deepgram_messages import client_message
        from gateway.errors import SettingsError

        self.assertEqual(client_message(AgentV1UpdatePrompt(prompt="Be kind."), "agent"),
                         {"type": "UpdatePrompt", "prompt": "Be kind."})
        self.assertEqual(client_message(AgentV1InjectDynamicAgentMessage(behavior="queue"), "agent"),
                         {"type": "InjectAgentMessage", "is_dynamic": True, "behavior": "queue"})
        self.assertEqual(client_message({"type": "Finalize"}, "listen"), {"type": "Finalize"})
        with self.assertRaises(SettingsError) as cm:
            client_message({"type": "InjectUserMessage", "text": "hi"}, "agent")
        self.assertEqual(cm.exception.field, "message.text")
