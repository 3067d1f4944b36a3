"""
The example drop-in that uses every hook (examples/every_hook), tested as a user would test their
own plugin: through the real assembly, a Call over fakes and the gateway service.
"""

from __future__ import annotations

import json
import os
import sys

from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import IPlugin
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

import gateway.dropins
from gateway.assembly import DEFAULT_HOLD_AUDIO_MS, ConfiguredGateway
from gateway.call import Call
from gateway.codecs.formats import LINEAR16_16K, MULAW_8K
from gateway.errors import ConfigError
from gateway.events import (
    DeepgramEvent,
    Handshake,
    StreamStarted,
    StreamStopped,
    UpstreamClosed,
    deepgram_event,
)
from gateway.plugin import (
    CallerProtocolOptions,
    FunctionServer,
    HoldsAudio,
    IStreamPlugin,
    KeepsState,
    NegotiatesFormats,
    ServesFunctions,
    StartsService,
    StopsService,
    UsesAdmission,
)
from gateway.service import GatewayService
from gateway.testing import (
    FakeCallerLeg,
    FakeConnector,
    FakeUpstreamLeg,
    RecordingContext,
    configure,
    temp_path,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "every_hook")

#: A chain in which the no-op hooks could do harm: a transcoder (linear16 to Deepgram), a
#: settings hold and keepalive's pings that call_notes, listed after them, must leave alone.
CHAIN = ["auth", "settings", "transcoder", "keepalive", "call_control", "call_notes", "close_codes"]


def dg(type_: str, **fields: object) -> DeepgramEvent:
    """A Deepgram message as the Deepgram leg hands it to the call (typed by the codec)."""
    return deepgram_event({"type": type_, **fields})


class EveryHookTests(SynchronousTestCase):
    """call_notes: each hook of gateway.plugin, and its effect."""

    def setUp(self) -> None:
        saved = list(gateway.dropins.__path__)
        self.addCleanup(lambda: gateway.dropins.__path__.__setitem__(slice(None), saved))
        self.notes_file = temp_path(self, "notes.jsonl")

    def configured(self, chain: list[str] = CHAIN, **notes: object) -> ConfiguredGateway:
        return configure({
            "gateway": {"dropin_dirs": [EXAMPLE], "chain": chain},
            "settings": {"hold_audio_ms": 2000},
            "transcoder": {"deepgram_input": "linear16/16000"},
            "keepalive": {"caller_ping_interval_s": 7, "caller_ping_timeout_s": 3},
            "call_notes": {"notes_file": self.notes_file, **notes},
        })

    def written(self) -> list[dict]:
        if not os.path.exists(self.notes_file):
            return []
        with open(self.notes_file) as f:
            return [json.loads(line) for line in f]

    def test_found_and_typed(self) -> None:
        """The real assembly finds the plugin; its factory and stage provide every hook."""
        configured = self.configured()
        plugin = sys.modules["gateway.dropins.every_hook"].call_notes
        self.assertTrue(verifyObject(IStreamPlugin, plugin))
        self.assertTrue(IPlugin.providedBy(plugin))
        factory = dict(configured.stages)["call_notes"]
        for hook in (NegotiatesFormats, HoldsAudio, ServesFunctions, CallerProtocolOptions,
                     StartsService, StopsService, UsesAdmission):
            self.assertIsInstance(factory, hook)
        stage = factory(RecordingContext())
        for hook in (FunctionServer, KeepsState):
            self.assertIsInstance(stage, hook)

    def test_no_op_hooks_change_nothing(self) -> None:
        """
        Formats, hold, caller options and admission are as without call_notes, though it comes
        after the transcoder, settings and keepalive; only its function is added.
        """
        configured = self.configured()
        without = self.configured([name for name in CHAIN if name != "call_notes"])
        self.assertEqual(configured.formats, without.formats)
        self.assertEqual(configured.formats["twilio"], (LINEAR16_16K, MULAW_8K))
        self.assertEqual(configured.hold_audio_ms, 2000)
        self.assertEqual(configured.caller_protocol_options,
                         {"autoPingInterval": 7.0, "autoPingTimeout": 3.0})
        self.assertEqual(configured.caller_protocol_options, without.caller_protocol_options)
        factory = dict(configured.stages)["call_notes"]
        self.assertEqual(factory.hold_audio_ms, DEFAULT_HOLD_AUDIO_MS)
        self.assertIs(factory.with_admission(object()), factory)
        self.assertEqual(set(configured.functions) - set(without.functions), {"note"})
        self.assertEqual(configured.functions["note"][0], "call_notes")

    def test_configuration_checked(self) -> None:
        """A notes file in a directory that does not exist stops start-up naming the key."""
        with self.assertRaises(ConfigError) as cm:
            self.configured(notes_file="/nonexistent-dir/notes.jsonl")
        self.assertEqual(cm.exception.key, "call_notes.notes_file")
        with self.assertRaises(ConfigError) as cm:
            self.configured(flush_interval_s=0)
        self.assertEqual(cm.exception.key, "call_notes.flush_interval_s")

    def test_a_call(self) -> None:
        """
        Over fakes: the note function is declared and answered, turns are counted, the state
        survives snapshot/restore into another call, and the ended call's notes are flushed.
        """
        configured = self.configured()
        factory = dict(configured.stages)["call_notes"]
        clock = Clock()
        connector = FakeConnector()
        call = Call(configured, "twilio", clock, connector)
        caller, upstream = FakeCallerLeg(), FakeUpstreamLeg()
        call.caller_handshake(Handshake("twilio", "/twilio", {}, "peer"))
        call.caller_opened(caller)
        call.from_caller(StreamStarted("MZ1", "CA1"))
        _, _, port, d = connector.attempts[-1]
        port.upstream_opened(upstream, "req-1")
        d.callback(upstream)
        call.from_upstream(dg("Welcome", request_id="req-1"))
        settings = upstream.messages()[0]
        declared = {f["name"]: f for f in settings["agent"]["think"]["functions"]}
        self.assertEqual(declared["note"]["parameters"]["required"], ["text"])
        call.from_upstream(dg("SettingsApplied"))
        for role in ("user", "assistant", "user"):
            call.from_upstream(dg("ConversationText", role=role, content="..."))
        call.from_upstream(dg("FunctionCallRequest", functions=[
            {"id": "fc1", "name": "note", "arguments": '{"text": "call back at 5"}', "client_side": True},
            {"id": "fc2", "name": "note", "arguments": '{"text": ""}', "client_side": True}]))
        answers = [m for m in upstream.messages() if m["type"] == "FunctionCallResponse"]
        self.assertEqual(answers[0], {"type": "FunctionCallResponse", "id": "fc1", "name": "note",
                                      "content": "Noted."})
        self.assertEqual((answers[1]["id"], answers[1]["content"][:6]), ("fc2", "Error:"))
        self.assertEqual(call.info.counters[("call_notes_taken", ())], 1)

        state = {"caller_turns": 2, "agent_turns": 1, "notes": ["call back at 5"]}
        record = call.snapshot()
        self.assertEqual(record["states"]["call_notes"], state)
        taken_up = Call(configured, "twilio", Clock(), FakeConnector())  # another process
        taken_up.restore(json.loads(json.dumps(record)))  # as it travels: JSON
        self.assertEqual(taken_up.snapshot()["states"]["call_notes"], state)

        call.from_caller(StreamStopped())
        call.upstream_closed(UpstreamClosed(1000, None, True))
        call.caller_closed(1000, None, True)
        self.assertEqual(call.phase, "closed")
        self.assertEqual(self.written(), [], "written at the next flush, not at the call's end")
        factory.flush()
        self.assertEqual(self.written(), [{"call_id": call.info.call_id, "call_sid": "CA1", **state}])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_handed_over_call_leaves_its_notes_to_the_next_process(self) -> None:
        """A call that ended HANDED_OVER writes nothing here: its state went with it."""
        factory = dict(self.configured().stages)["call_notes"]
        ctx = RecordingContext()
        stage = factory(ctx)
        stage.call_function("note", {"text": "x"})
        ctx.call.diagnosis_code = "HANDED_OVER"
        stage.close()
        self.assertEqual(factory.pending, [])

    def test_restore_checks_the_record(self) -> None:
        """A record's wrong types are ignored, not trusted."""
        factory = dict(self.configured().stages)["call_notes"]
        stage = factory(RecordingContext())
        stage.restore_state({"caller_turns": "3", "agent_turns": True, "notes": ["a", 5, None]})
        self.assertEqual(stage.save_state(), {"caller_turns": 0, "agent_turns": 0, "notes": ["a"]})

    def test_service_starts_and_stops_the_flush(self) -> None:
        """GatewayService starts the flush timer when it listens, and stops it, flushing, on stop."""
        reactor = MemoryReactorClock()
        service = GatewayService(self.configured(flush_interval_s=30), "tcp:0:interface=127.0.0.1", reactor)
        factory = dict(service.gateway.configured.stages)["call_notes"]
        before = len(reactor.getDelayedCalls())
        self.successResultOf(service.startService())
        self.assertEqual(len(reactor.getDelayedCalls()), before + 1)
        factory.add({"call_id": "a"})
        reactor.advance(29)
        self.assertEqual(self.written(), [])
        reactor.advance(1)
        self.assertEqual(self.written(), [{"call_id": "a"}])
        factory.add({"call_id": "b"})
        self.successResultOf(service.stopService())
        self.assertEqual(self.written(), [{"call_id": "a"}, {"call_id": "b"}])
        reactor.advance(60)
        self.assertEqual(len(self.written()), 2, "no flush after the stop")
