"""
Function calls, marks, end_call, transfer_call and DTMF, through a call with fake legs and a Clock
(the whole-gateway end_call test is in tests/system/test_call_control_e2e.py).
"""

from __future__ import annotations

import json

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from gateway.events import Dtmf, MarkEchoed
from tests.test_call import CallHarness, dg

DROPIN_FUNCTIONS = None


def request(*items: dict) -> object:
    return dg("FunctionCallRequest", functions=list(items))


def responses(h: CallHarness) -> list[dict]:
    return [m for m in h.upstream.messages() if m["type"] == "FunctionCallResponse"]


class FunctionTests(SynchronousTestCase):
    """Dispatching client-side function calls."""

    def live(self, config: dict | None = None) -> CallHarness:
        h = CallHarness(config)
        h.start()
        h.open_upstream()
        h.call.from_upstream(dg("SettingsApplied"))
        return h

    def test_declared_in_settings(self) -> None:
        """The settings plugin declares the plugins' functions in agent.think.functions."""
        h = self.live()
        think = h.upstream.messages()[0]["agent"]["think"]
        self.assertEqual([f["name"] for f in think["functions"]], ["end_call"])
        self.assertNotIn("endpoint", think["functions"][0])

    def test_errors_the_agent_can_speak_about(self) -> None:
        """Unknown function, non-JSON arguments, schema mismatch: a response each, counted."""
        h = self.live()
        h.call.from_upstream(request(
            {"id": "1", "name": "fly_to_moon", "arguments": "{}", "client_side": True},
            {"id": "2", "name": "end_call", "arguments": "{nope", "client_side": True},
            {"id": "3", "name": "end_call", "arguments": json.dumps({"reason": 5}), "client_side": True},
            {"id": "4", "name": "server_side", "arguments": "{}", "client_side": False},
        ))
        got = {r["id"]: r for r in responses(h)}
        self.assertEqual(sorted(got), ["1", "2", "3"])
        self.assertIn("no function named 'fly_to_moon'", got["1"]["content"])
        self.assertIn("not a JSON object", got["2"]["content"])
        self.assertIn("invalid arguments for end_call at reason", got["3"]["content"])
        self.assertEqual(got["3"]["name"], "end_call")
        counters = h.call.info.counters
        self.assertEqual(counters[("function_calls", (("function", "unknown"), ("outcome", "unknown_function")))], 1)
        self.assertEqual(h.call.phase, "live")

    def test_dropin_functions(self) -> None:
        """A drop-in's functions: a Deferred result, an exception and a timeout, each answered."""
        import os

        here = os.path.dirname(os.path.abspath(__file__))
        h = self.live({"gateway": {"dropin_dirs": [os.path.join(here, "dropins", "functions")],
                                   "chain": ["auth", "settings", "call_control", "flaky"]}})
        self.addCleanup(_forget_dropins)
        declared = [f["name"] for f in h.upstream.messages()[0]["agent"]["think"]["functions"]]
        self.assertEqual(declared, ["end_call", "explode", "hang", "later"])
        h.call.from_upstream(request(
            {"id": "a", "name": "explode", "arguments": "{}", "client_side": True},
            {"id": "b", "name": "hang", "arguments": "{}", "client_side": True},
            {"id": "c", "name": "later", "arguments": "{}", "client_side": True},
        ))
        self.flushLoggedErrors(ValueError)
        self.assertEqual([r["id"] for r in responses(h)], ["a"])
        h.clock.advance(1)
        h.clock.advance(9)
        got = {r["id"]: r["content"] for r in responses(h)}
        self.assertIn("the order database is down", got["a"])
        self.assertIn("did not answer within 10 seconds", got["b"])
        self.assertEqual(json.loads(got["c"]), {"status": "shipped"})
        self.assertEqual(h.call.phase, "live")


def _forget_dropins() -> None:
    import sys

    import gateway.dropins

    gateway.dropins.__path__[:] = gateway.dropins.__path__[:1]
    for name in [n for n in sys.modules if n.startswith("gateway.dropins.")]:
        del sys.modules[name]


class MarkTests(SynchronousTestCase):
    """Marks after each agent turn; cleared ones recognised."""

    def test_played_and_cleared(self) -> None:
        """A mark per AgentAudioDone; echoes after a barge-in count as cleared."""
        h = FunctionTests.live(self)  # type: ignore[arg-type]
        stage = h.call._functions.servers["call_control"]
        h.call.from_upstream(dg("AgentStartedSpeaking"))
        h.call.from_upstream(dg("AgentAudioDone"))
        self.assertIn(("mark", "agent-turn-1"), h.caller.sent)
        h.call.from_caller(MarkEchoed("agent-turn-1"))
        h.call.from_upstream(dg("AgentAudioDone"))
        h.call.from_upstream(dg("UserStartedSpeaking"))
        h.call.from_caller(MarkEchoed("agent-turn-2"))
        self.assertEqual((stage.played, stage.cleared), (["agent-turn-1"], ["agent-turn-2"]))

    live = FunctionTests.live


class EndCallTests(SynchronousTestCase):
    """end_call waits for the goodbye to be played."""

    live = FunctionTests.live

    def test_waits_for_the_mark(self) -> None:
        """The stream ends only after the mark of the agent's last audio is echoed."""
        h = self.live()
        h.call.from_upstream(request({"id": "e", "name": "end_call", "arguments": "{}", "client_side": True}))
        self.assertEqual(len(responses(h)), 1)
        h.call.from_upstream(dg("AgentStartedSpeaking"))
        h.clock.advance(5)
        h.call.from_upstream(dg("AgentAudioDone"))
        self.assertIsNone(h.caller.closed_with)
        h.call.from_caller(MarkEchoed("agent-turn-1"))
        self.assertEqual(h.caller.closed_with, (1000, "AGENT_ENDED_CALL"))

    def test_no_goodbye(self) -> None:
        """With nothing left to play, the call ends after the grace period."""
        h = self.live()
        h.call.from_upstream(request({"id": "e", "name": "end_call", "arguments": "{}", "client_side": True}))
        h.clock.advance(2.9)
        self.assertIsNone(h.caller.closed_with)
        h.clock.advance(0.1)
        self.assertEqual(h.caller.closed_with, (1000, "AGENT_ENDED_CALL"))

    def test_bounded(self) -> None:
        """A mark that never comes back: the call ends at end_call_timeout_s."""
        h = self.live({"call_control": {"end_call_timeout_s": 6}})
        h.call.from_upstream(request({"id": "e", "name": "end_call", "arguments": "{}", "client_side": True}))
        h.call.from_upstream(dg("AgentStartedSpeaking"))
        h.call.from_upstream(dg("AgentAudioDone"))
        h.clock.advance(6)
        self.assertEqual(h.caller.closed_with, (1000, "AGENT_ENDED_CALL"))


class DtmfTests(SynchronousTestCase):
    """Key presses."""

    live = FunctionTests.live

    def test_injected(self) -> None:
        """A digit becomes an InjectUserMessage with the configured text."""
        h = self.live({"call_control": {"dtmf_message": "Key {digit} was pressed."}})
        h.call.from_caller(Dtmf("5"))
        self.assertEqual(h.upstream.messages()[-1], {"type": "InjectUserMessage", "content": "Key 5 was pressed."})

    def test_off(self) -> None:
        """An empty dtmf_message turns it off."""
        h = self.live({"call_control": {"dtmf_message": ""}})
        h.call.from_caller(Dtmf("5"))
        self.assertEqual([m["type"] for m in h.upstream.messages()], ["Settings"])
