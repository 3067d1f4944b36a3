"""
The emulator's Flux endpoint (``/v2/listen``), its access tokens (``POST /v1/auth/grant`` and
``Authorization: Bearer``), and the server messages it produces on cue; every message it sends is
judged strictly by the SDK's types. Driven by the ``websockets`` sync client, as the other
emulator tests.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer

from gateway.codecs.deepgram_messages import check_server_message
from gateway.emulator.grants import Grants
from tests.test_emulator import KEY, Client, EmulatorTestCase, clip, frames, refused, run_client, settings
from twisted.trial.unittest import SynchronousTestCase

ORDER = clip("caller-order-8k-mulaw.wav")
SILENCE = b"\xff" * 8000  # 1 s of mu-law silence
QUERY = "?model=flux-general-en&encoding=mulaw&sample_rate=8000"


def speak(client: Client, audio: bytes = ORDER, silence: bytes = SILENCE) -> None:
    for frame in frames(audio + silence, 1600):
        client.send(frame)


def strictly(test: Any, messages: list[Any], endpoint: str) -> None:
    """Every JSON message validates strictly against the SDK's server types of ``endpoint``."""
    for message in messages:
        if isinstance(message, dict):
            check_server_message(message, endpoint)


def turns(outcome: Any) -> list[str]:
    return [m["event"] for m in outcome.texts if m["type"] == "TurnInfo"]


class FluxTests(EmulatorTestCase):
    """Connected, TurnInfo along Flux's state machine, Configure, ForceEndTurn, CloseStream."""

    @defer.inlineCallbacks
    def test_turn(self) -> None:
        """One utterance is one turn: StartOfTurn, Updates, EndOfTurn (model); then a close without status."""

        def script(client: Client) -> None:
            client.until("Connected")
            speak(client)
            client.until("TurnInfo")
            end = None
            while end is None:
                message = client.until("TurnInfo")
                end = message if message["event"] == "EndOfTurn" else None
            client.send_json({"type": "CloseStream"})
            client.drain()

        outcome = yield run_client(self.emu.url("flux") + QUERY, script)
        strictly(self, outcome.messages, "flux")
        events = turns(outcome)
        self.assertEqual(events[0], "StartOfTurn")
        self.assertEqual(events[-1], "EndOfTurn")
        self.assertIn("Update", events)
        self.assertNotIn("EagerEndOfTurn", events)
        end = [m for m in outcome.texts if m.get("event") == "EndOfTurn"][0]
        self.assertEqual((end["turn_index"], end["trigger"]), (0, "model"))
        self.assertEqual(end["transcript"], "Hello, I would like to check the status of my order.")
        self.assertEqual([m["sequence_id"] for m in outcome.texts], list(range(len(outcome.texts))))
        self.assertEqual(outcome.texts[0], {"type": "Connected", "request_id": self.emu.sessions[0].request_id,
                                            "sequence_id": 0})
        self.assertTrue(outcome.close_frame)
        self.assertEqual(outcome.close_code, 1005, "Flux closes after CloseStream without a status code")

    @defer.inlineCallbacks
    def test_eager_end_of_turn(self) -> None:
        """With eager_eot_threshold, EagerEndOfTurn comes first with the EndOfTurn's transcript."""

        def script(client: Client) -> None:
            client.until("Connected")
            speak(client)
            while client.until("TurnInfo")["event"] != "EndOfTurn":
                pass

        outcome = yield run_client(self.emu.url("flux") + QUERY + "&eager_eot_threshold=0.4", script)
        strictly(self, outcome.messages, "flux")
        events = turns(outcome)
        self.assertLess(events.index("EagerEndOfTurn"), events.index("EndOfTurn"))
        by_event = {m["event"]: m for m in outcome.texts if m["type"] == "TurnInfo"}
        self.assertEqual(by_event["EagerEndOfTurn"]["transcript"], by_event["EndOfTurn"]["transcript"])
        for i, event in enumerate(events):
            if event == "TurnResumed":
                self.assertIn("EagerEndOfTurn", events[:i], "TurnResumed only follows EagerEndOfTurn")

    @defer.inlineCallbacks
    def test_force_end_turn_and_configure(self) -> None:
        """ForceEndTurn ends the turn (trigger manual); Configure answers with what is in effect."""

        def script(client: Client) -> Any:
            client.until("Connected")
            client.send_json({"type": "Configure", "thresholds": {"eot_threshold": 1.0}, "keyterms": ["order"]})
            configured = client.until("ConfigureSuccess")
            client.send_json({"type": "Configure", "thresholds": {"eot_threshold": 0.2}})
            failed = client.until("ConfigureFailure")
            for frame in frames(ORDER[:8000], 1600):
                client.send(frame)
            client.until("TurnInfo")
            client.send_json({"type": "ForceEndTurn"})
            while (message := client.until("TurnInfo"))["event"] != "EndOfTurn":
                pass
            return configured, failed, message

        outcome = yield run_client(self.emu.url("flux") + QUERY + "&keyterm=refund", script)
        strictly(self, outcome.messages, "flux")
        configured, failed, end = outcome.value
        self.assertEqual(configured["thresholds"], {"eot_threshold": 1.0, "eot_timeout_ms": 5000})
        self.assertEqual(configured["keyterms"], ["order"])
        self.assertIn("eot_threshold", failed["description"])
        self.assertEqual((end["trigger"], end["turn_index"]), ("manual", 0))

    @defer.inlineCallbacks
    def test_timeout_ends_turn_when_detection_is_off(self) -> None:
        """eot_threshold=1 turns native detection off: eot_timeout_ms of quiet ends the turn."""

        def script(client: Client) -> Any:
            client.until("Connected")
            speak(client, silence=SILENCE * 2)
            while (message := client.until("TurnInfo"))["event"] != "EndOfTurn":
                pass
            return message

        outcome = yield run_client(self.emu.url("flux") + QUERY + "&eot_threshold=1.0&eot_timeout_ms=1500", script)
        self.assertEqual(outcome.value["trigger"], "timeout")

    @defer.inlineCallbacks
    def test_not_a_flux_message(self) -> None:
        """KeepAlive is not a Flux message: a fatal Error (sequence-numbered), then no-status close."""

        def script(client: Client) -> None:
            client.until("Connected")
            client.send_json({"type": "KeepAlive"})
            client.drain()

        outcome = yield run_client(self.emu.url("flux") + QUERY, script)
        strictly(self, outcome.messages, "flux")
        error = outcome.texts[-1]
        self.assertEqual((error["type"], error["code"], error["sequence_id"]), ("Error", "UNPARSABLE_CLIENT_MESSAGE", 1))
        self.assertEqual(outcome.close_code, 1005)

    @defer.inlineCallbacks
    def test_query_validated(self) -> None:
        """No model, a v1 option, or a threshold out of Flux's range: HTTP 400 naming it."""
        for query, words in [("?encoding=mulaw&sample_rate=8000", "model"),
                             (QUERY + "&interim_results=true", "interim_results"),
                             (QUERY + "&eot_threshold=0.2", "eot_threshold"),
                             (QUERY + "&eager_eot_threshold=abc", "eager_eot_threshold")]:
            status, headers, _ = yield refused(self.emu.url("flux") + query)
            self.assertEqual(status, 400, query)
            self.assertIn(words, headers["dg-error"])

    @defer.inlineCallbacks
    def test_warning_on_cue(self) -> None:
        """A warning fault gives Flux's Warning shape (request_id, sequence_id)."""
        self.emu.queue_fault("warning:SLOW_AUDIO:Audio arrives slowly.")
        outcome = yield run_client(self.emu.url("flux") + QUERY, lambda c: c.until("Warning"))
        strictly(self, outcome.messages, "flux")
        self.assertEqual((outcome.value["code"], outcome.value["sequence_id"]), ("SLOW_AUDIO", 1))


class AccessTokenTests(EmulatorTestCase):
    """POST /v1/auth/grant and Bearer credentials, as Deepgram takes them."""

    @defer.inlineCallbacks
    def grant(self, headers: dict[str, str], body: bytes = b"") -> Any:
        response = yield self.http().post(self.emu.http_url + "/v1/auth/grant", data=body,
                                          headers={k: [v] for k, v in headers.items()})
        content = yield response.json()
        return response.code, content

    @defer.inlineCallbacks
    def test_grant_then_bearer(self) -> None:
        """A key gets a JWT; the JWT opens every path as Bearer or the bearer subprotocol."""
        code, body = yield self.grant({"Authorization": f"Token {KEY}"}, json.dumps({"ttl_seconds": 60}).encode())
        self.assertEqual(code, 200)
        self.assertEqual(body["expires_in"], 60)
        token = body["access_token"]
        self.assertEqual(token.count("."), 2)
        outcome = yield run_client(self.emu.url("agent"), lambda c: c.until("Welcome"),
                                   headers={"Authorization": f"Bearer {token}"})
        self.assertEqual(outcome.value["type"], "Welcome")
        outcome = yield run_client(self.emu.url("flux") + QUERY, lambda c: c.until("Connected"),
                                   headers=None, subprotocols=["bearer", token])
        self.assertEqual(outcome.subprotocol, "bearer")

    @defer.inlineCallbacks
    def test_refusals(self) -> None:
        """No key, a key as Bearer, a forged token, a bad TTL: refused; tokens do not mint tokens."""
        code, _ = yield self.grant({})
        self.assertEqual(code, 401)
        code, _ = yield self.grant({"Authorization": f"Token {KEY}"}, b'{"ttl_seconds": -1}')
        self.assertEqual(code, 400)
        _, body = yield self.grant({"Authorization": f"Token {KEY}"})
        self.assertEqual(body["expires_in"], 30)
        token = body["access_token"]
        code, _ = yield self.grant({"Authorization": f"Bearer {token}"})
        self.assertEqual(code, 401)
        for auth in (f"Bearer {KEY}", f"Bearer {token[:-2]}xx"):
            status, _, _ = yield refused(self.emu.url("agent"), {"Authorization": auth})
            self.assertEqual(status, 401, auth)
        response = yield self.http().get(self.emu.http_url + "/v1/projects",
                                         headers={"Authorization": [f"Bearer {token}"]})
        self.assertEqual(response.code, 401, "access tokens do not open the management API")
        yield response.content()


class GrantUnitTests(SynchronousTestCase):
    """Token expiry and tampering, with the time given."""

    def test_expiry(self) -> None:
        grants = Grants()
        token = grants.issue(1000.0, 30)["access_token"]
        self.assertTrue(grants.valid(token, 1029.0))
        self.assertFalse(grants.valid(token, 1030.0))
        self.assertFalse(Grants().valid(token, 1000.0), "another emulator's key")


class AgentMessagesTests(EmulatorTestCase):
    """The Voice Agent's messages produced on cue, all strictly of the SDK's types."""

    options = {"latency_reports": True}

    @defer.inlineCallbacks
    def test_messages_on_cue(self) -> None:
        """Warning, LatencyReport, InjectionRefused, History (function calls), FrustrationDetected."""
        self.emu.queue_fault("warning:SLOW_THINK_REQUEST@after_settings;message:InjectionRefused@after_settings;"
                             "message:History@after_settings;message:FrustrationDetected@after_settings;"
                             "message:LatencyReport@after_settings;message:TurnInfo@after_settings")

        def script(client: Client) -> None:
            client.send_json(settings(greeting="Hi."))
            client.until("AgentAudioDone")

        outcome = yield run_client(self.emu.url("agent"), script)
        strictly(self, outcome.messages, "agent")
        kinds = outcome.types
        for kind in ("Warning", "InjectionRefused", "History", "FrustrationDetected", "LatencyReport"):
            self.assertIn(kind, kinds)
        self.assertNotIn("TurnInfo", kinds, "a type the agent does not send is skipped")
        self.assertEqual(kinds.count("LatencyReport"), 2, "one on cue, one with the greeting")
        greeting = [m for m in outcome.texts if m["type"] == "ConversationText"][0]
        self.assertEqual(greeting["conversational_behavior"], "default")

    @defer.inlineCallbacks
    def test_function_history_and_cancel(self) -> None:
        """A function answered is in History; one the caller interrupts is cancelled, its late answer ignored."""
        with_function = settings()
        with_function["agent"]["think"]["functions"] = [{"name": "status", "description": "Order status.",
                                                         "parameters": {"type": "object", "properties": {}}}]
        self.emu.options = type(self.emu.options)(**{**_fields(self.emu.options),
                                                     "script": ("What is my order status?",)})

        def script(client: Client) -> Any:
            client.send_json(with_function)
            client.until("SettingsApplied")
            speak(client)
            first = client.until("FunctionCallRequest")["functions"][0]
            client.send_json({"type": "FunctionCallResponse", "id": first["id"], "name": "status",
                              "content": "shipped"})
            history = client.until("History")
            while "function_calls" not in history:
                history = client.until("History")
            speak(client)
            second = client.until("FunctionCallRequest")["functions"][0]
            speak(client)
            cancelled = client.until("FunctionCallCancelled")
            client.send_json({"type": "FunctionCallResponse", "id": second["id"], "name": "status",
                              "content": "too late"})
            client.send_json({"type": "InjectAgentMessage", "is_dynamic": True, "behavior": "interrupt"})
            filler = client.until("ConversationText")
            while filler.get("conversational_behavior") != "filler":
                filler = client.until("ConversationText")
            return first, history, second, cancelled, filler

        outcome = yield run_client(self.emu.url("agent"), script, timeout=25)
        strictly(self, outcome.messages, "agent")
        first, history, second, cancelled, filler = outcome.value
        self.assertEqual(history["function_calls"], [{"id": first["id"], "name": "status", "client_side": True,
                                                      "arguments": "{}", "response": "shipped"}])
        self.assertEqual(cancelled["functions"], [{"id": second["id"], "name": "status"}])
        self.assertEqual((filler["role"], filler["conversational_behavior"]), ("assistant", "filler"))
        histories = [m for m in outcome.texts if m["type"] == "History" and "function_calls" in m]
        self.assertEqual(len(histories), 1, "the cancelled call's late response is not recorded")

    @defer.inlineCallbacks
    def test_every_client_message_accepted(self) -> None:
        """Every client message the SDK types for the agent is taken; the Update* ones acknowledged."""
        from tests.test_deepgram_messages import CLIENT_CORPUS

        accepted = [m for endpoint, m, field in CLIENT_CORPUS
                    if endpoint == "agent" and field is None and m["type"] != "FunctionCallResponse"]

        def script(client: Client) -> None:
            client.send_json(settings())
            client.until("SettingsApplied")
            for message in accepted:
                client.send_json(message)
            client.send_json({"type": "KeepAlive"})
            client.quiet(1.0)

        outcome = yield run_client(self.emu.url("agent"), script)
        strictly(self, outcome.messages, "agent")
        self.assertNotIn("Error", outcome.types)
        for ack in ("PromptUpdated", "SpeakUpdated", "ThinkUpdated", "ListenUpdated", "ThinkLiveUpdated"):
            self.assertIn(ack, outcome.types)


class ListenConfigureTests(EmulatorTestCase):
    """/v1/listen's Configure, answered as Deepgram documents."""

    @defer.inlineCallbacks
    def test_configure(self) -> None:
        """Keyterms on Nova-3 succeed; on another model they fail with Deepgram's code."""

        def script(client: Client) -> Any:
            client.send_json({"type": "Configure", "keyterms": ["refund"], "features": {"numerals": True}})
            return client.until("ConfigureSuccess")

        query = "?model=nova-3&encoding=mulaw&sample_rate=8000"
        outcome = yield run_client(self.emu.url("listen") + query, script)
        strictly(self, [m for m in outcome.messages if m.get("type") != "Metadata"], "listen")
        self.assertEqual(outcome.value["keyterms"], ["refund"])

        def fails(client: Client) -> Any:
            client.send_json({"type": "Configure", "keyterms": ["refund"]})
            return client.until("ConfigureFailure")

        outcome = yield run_client(self.emu.url("listen") + query.replace("nova-3", "nova-2"), fails)
        strictly(self, [m for m in outcome.messages if m.get("type") != "Metadata"], "listen")
        self.assertEqual(outcome.value["code"], "CONFIGURE_KEYTERMS_NOT_SUPPORTED")


def _fields(options: Any) -> dict[str, Any]:
    import attrs

    return attrs.asdict(options, recurse=False)
