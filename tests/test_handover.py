"""
Handing a live call to another process (plugins/handover.py, gateway/handover/), with fake legs,
a `Clock` and the in-memory store: when a call is given away, what is saved, how it is taken up.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.events import MarkEchoed, SendMark, StreamStarted, StreamStopped, UpstreamClosed
from gateway.handover.store import MemoryStore
from gateway.testing import FakeUpstreamLeg
from gateway.tokens import mint_resume_token
from tests.test_call import SID, CallHarness, dg

SECRET = "s" * 32
CALL_SID = "CA" + "7" * 32


def harness(store: MemoryStore | None = None, config: dict | None = None) -> CallHarness:
    h = CallHarness(config, env={"GATEWAY_TOKEN_SECRET": SECRET})
    factory = h.call._stages["handover"].factory
    factory._store = store if store is not None else MemoryStore(h.clock)
    h.store = factory._store
    return h


def start(h: CallHarness, params: dict) -> None:
    from gateway.events import Handshake

    h.call.caller_handshake(Handshake("twilio", "/twilio", {}, "peer"))
    h.call.caller_opened(h.caller)
    h.call.from_caller(StreamStarted(SID, CALL_SID, custom_parameters=params))


def tick(h: CallHarness, seconds: float) -> None:
    """Let ``seconds`` pass in the 50 ms steps the handover stage looks for its quiet point at."""
    h.clock.pump([0.05] * round(seconds / 0.05))


def echo_marks(h: CallHarness) -> None:
    """Twilio plays out what was sent: every mark sent to the caller comes back."""
    for kind, name in h.caller.sent:
        if kind == "mark":
            h.call.from_caller(MarkEchoed(name))


def live(h: CallHarness) -> None:
    h.open_upstream("req-A")
    h.call.from_upstream(dg("SettingsApplied"))


class GivingAwayTests(SynchronousTestCase):
    """The draining process: a quiet point, a saved record, a normal close."""

    def test_waits_for_the_quiet_point(self) -> None:
        """Not while the agent speaks or its audio plays (per the mark): then saved, 1000 to Twilio."""
        h = harness()
        start(h, {"gateway_handover": "1", "prompt": "be brief"})
        live(h)
        h.call.from_upstream(dg("ConversationText", role="assistant", content="Hello! How can I help?"))
        h.call.from_upstream(dg("AgentStartedSpeaking"))
        h.call.request_handover(30)
        tick(h, 1)
        self.assertEqual(h.store.records, {}, "the agent is speaking")
        h.call.from_upstream(dg("AgentAudioDone"))
        h.call.chain.outbound(SendMark("turn-1"))
        tick(h, 1)
        self.assertEqual(h.store.records, {}, "its audio is still playing at Twilio")
        echo_marks(h)
        tick(h, 0.1)
        record, _ = h.store.records[CALL_SID]
        self.assertEqual(record["call_id"], h.call.info.call_id)
        self.assertEqual(record["custom_parameters"], {"gateway_handover": "1", "prompt": "be brief"})
        self.assertEqual(record["states"]["settings"]["history"],
                         [{"type": "History", "role": "assistant", "content": "Hello! How can I help?"}])
        self.assertEqual(record["handovers"], 1)
        self.assertEqual(len(record["segments"]), 1)
        self.assertEqual(h.upstream.closed_with, 1000)
        h.call.upstream_closed(UpstreamClosed(1000, None, True))
        self.assertEqual(h.caller.closed_with, (1000, "HANDED_OVER"))

    def test_not_between_question_and_answer(self) -> None:
        """
        Once the caller's turn is recognised the agent's answer is pending: no handover until its
        audio is done (a handover there left the question unanswered on the next process).
        """
        h = harness()
        start(h, {"gateway_handover": "1"})
        live(h)
        h.call.from_upstream(dg("ConversationText", role="user", content="Where is my order?"))
        h.call.request_handover(30)
        tick(h, 1)
        self.assertEqual(h.store.records, {}, "the answer is pending")
        h.call.from_upstream(dg("AgentThinking"))
        h.call.from_upstream(dg("AgentStartedSpeaking"))
        tick(h, 1)
        self.assertEqual(h.store.records, {})
        h.call.from_upstream(dg("AgentAudioDone"))
        echo_marks(h)
        tick(h, 0.2)
        self.assertIn(CALL_SID, h.store.records)

    def test_saved_before_the_drain_deadline(self) -> None:
        """A drain deadline shorter than quiet_deadline_s: the save starts with the store's time to spare."""
        h = harness(config={"handover": {"quiet_deadline_s": 10, "store_timeout_s": 1}})
        start(h, {"gateway_handover": "1"})
        live(h)
        h.call.from_upstream(dg("UserStartedSpeaking"))
        h.call.request_handover(3)
        tick(h, 1.4)
        self.assertEqual(h.store.records, {})
        tick(h, 0.2)
        self.assertEqual(h.store.records[CALL_SID][0]["at"], "deadline")

    def test_caller_mid_utterance_then_deadline(self) -> None:
        """A caller who keeps talking is handed over at quiet_deadline_s all the same."""
        h = harness(config={"handover": {"quiet_deadline_s": 3}})
        start(h, {"gateway_handover": "1"})
        live(h)
        h.call.from_upstream(dg("UserStartedSpeaking"))
        h.call.request_handover(30)
        tick(h, 2.9)
        self.assertEqual(h.store.records, {})
        tick(h, 0.2)
        self.assertEqual(h.store.records[CALL_SID][0]["at"], "deadline")

    def test_store_down_keeps_the_call(self) -> None:
        """A store that is down: the call stays here (the plain drain applies) and it is said why."""
        store = MemoryStore()
        store.down = True
        h = harness(store)
        start(h, {"gateway_handover": "1"})
        live(h)
        h.call.request_handover(30)
        tick(h, 1)
        self.assertEqual(h.call.phase, "live")
        self.assertIsNone(h.caller.closed_with)
        self.assertEqual(h.call.info.counters[("handovers_out", (("result", "store_down"),))], 1)
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_not_from_our_webhook(self) -> None:
        """A stream Twilio will not come back for (no <Connect action>) is never handed over."""
        h = harness()
        start(h, {})
        live(h)
        h.call.request_handover(30)
        tick(h, 20)
        self.assertEqual((h.store.records, h.call.phase), ({}, "live"))


class TakingUpTests(SynchronousTestCase):
    """The process Twilio's new stream lands on."""

    def saved(self) -> dict:
        a = harness()
        start(a, {"gateway_handover": "1", "prompt": "be brief"})
        live(a)
        a.call.from_upstream(dg("ConversationText", role="assistant", content="Hello!"))
        a.call.from_upstream(dg("ConversationText", role="user", content="Where is my order?"))
        a.call.from_upstream(dg("AgentAudioDone"))  # (the answer's audio, done and played)
        echo_marks(a)
        a.call.request_handover(30)
        tick(a, 0.1)
        return a.store.records[CALL_SID][0]

    def test_resumed_call(self) -> None:
        """Same call id and parameters, the conversation in Settings, no greeting, one report."""
        record = self.saved()
        h = harness()
        h.store.records[CALL_SID] = (record, h.clock.seconds() + 60)
        token = mint_resume_token(SECRET.encode(), h.clock.seconds(), CALL_SID, 60)
        start(h, {"gateway_handover": "1", "gateway_resume": token})
        self.assertEqual(h.call.info.call_id, record["call_id"])
        self.assertEqual(h.call.info.custom_parameters, {"gateway_handover": "1", "prompt": "be brief"})
        self.assertEqual(h.store.records, {}, "taken: a call is taken up once")
        h.open_upstream("req-B")
        settings = h.upstream.messages()[0]
        self.assertNotIn("greeting", settings["agent"])
        self.assertEqual([m.get("content") for m in settings["agent"]["context"]["messages"]],
                         ["Hello!", "Where is my order?"])
        h.call.from_upstream(dg("SettingsApplied"))
        h.call.from_caller(StreamStopped())
        h.call.upstream_closed(UpstreamClosed(1000, None, True))
        h.call.caller_closed(1000, None, True)
        self.assertEqual(h.call.report["handovers"], 1)
        self.assertEqual(len(h.call.report["segments"]), 1)
        self.assertEqual(h.call.report["call_id"], record["call_id"])

    def test_missing_record_is_a_fresh_call(self) -> None:
        """Expired or already taken: a fresh call (with its greeting), a clear line, no crash."""
        h = harness()
        token = mint_resume_token(SECRET.encode(), h.clock.seconds(), CALL_SID, 60)
        start(h, {"gateway_handover": "1", "gateway_resume": token})
        h.open_upstream()
        self.assertIn("greeting", h.upstream.messages()[0]["agent"])
        self.assertEqual(h.call.info.counters[("handovers_in", (("result", "missing"),))], 1)

    def test_forged_token_is_a_fresh_call(self) -> None:
        """A resume token for another CallSid (or not signed by us) takes nothing up."""
        record = self.saved()
        h = harness()
        h.store.records[CALL_SID] = (record, h.clock.seconds() + 60)
        token = mint_resume_token(SECRET.encode(), h.clock.seconds(), "CA-other", 60)
        start(h, {"gateway_handover": "1", "gateway_resume": token})
        self.assertNotEqual(h.call.info.call_id, record["call_id"])
        self.assertIn(CALL_SID, h.store.records)

    def test_store_down_is_a_fresh_call(self) -> None:
        """The store failing while a call is taken up: a fresh call, never a dropped one."""
        h = harness()
        h.store.down = True
        token = mint_resume_token(SECRET.encode(), h.clock.seconds(), CALL_SID, 60)
        start(h, {"gateway_handover": "1", "gateway_resume": token})
        self.assertEqual(h.call.phase, "connecting")
        self.assertEqual(len(self.flushLoggedErrors()), 0)
        _ = FakeUpstreamLeg


class OperatorEndpointTests(SynchronousTestCase):
    """``POST /v1/calls/<call_id>/handover``: one call, on an operator's word."""

    def setUp(self) -> None:
        from treq.testing import StubTreq
        from twisted.internet.task import Clock

        from gateway.service import Gateway
        from gateway.testing import configure

        self.gateway = Gateway(configure(None, {"GATEWAY_API_KEY": "ops-key", "GATEWAY_TOKEN_SECRET": SECRET}),
                               Clock())
        self.stub = StubTreq(self.gateway.make_site().resource)
        self.requests: list = []
        self.call = harness()
        start(self.call, {"gateway_handover": "1"})
        self.call.call.request_handover = lambda deadline_s, reason: self.requests.append((deadline_s, reason))
        self.gateway.calls.add(self.call.call)

    def post(self, path: str, key: str | None = "ops-key") -> tuple[int, dict]:
        import json

        headers = {"Authorization": [f"Bearer {key}"]} if key else {}
        response = self.successResultOf(self.stub.post("http://gw" + path, headers=headers))
        return response.code, json.loads(self.successResultOf(response.content()))

    def test_requested(self) -> None:
        """202 and the call asked to hand over, with the operator's deadline."""
        call_id = self.call.call.info.call_id
        code, body = self.post(f"/v1/calls/{call_id}/handover?deadline_s=4")
        self.assertEqual((code, body["status"]), (202, "requested"))
        self.assertEqual(self.requests, [(4.0, "operator")])

    def test_refusals(self) -> None:
        """401 without the key, 404 for an unknown call, 409 for a call Twilio will not come back for."""
        call_id = self.call.call.info.call_id
        self.assertEqual(self.post(f"/v1/calls/{call_id}/handover", key="wrong")[0], 401)
        self.assertEqual(self.post("/v1/calls/nope/handover")[0], 404)
        self.call.call._stages["handover"]._handover_capable = False  # as a stream without <Connect action>
        self.assertEqual(self.post(f"/v1/calls/{call_id}/handover")[0], 409)
        self.assertEqual(self.requests, [])
