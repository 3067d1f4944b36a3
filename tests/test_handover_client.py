"""
Handing a raw-audio ``/client`` call to another process (plugins/handover.py, plugins/auth.py,
gateway/tokens.py, gateway/codecs/client.py), with fake legs, a `Clock` and the in-memory store:
the ``Handover`` message, the 1000 ``HANDED_OVER`` close, the resume token as the next hello's
token, the record taken once.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
from twisted.trial.unittest import SynchronousTestCase

from gateway.codecs import client as client_codec
from gateway.errors import AuthError
from gateway.events import Audio, ClientHello, Handshake, UpstreamClosed
from gateway.handover.store import MemoryStore
from gateway.testing import FakeCallerLeg
from gateway.tokens import (
    mint_client_resume_token,
    mint_resume_token,
    mint_stream_token,
    mint_token,
    new_handover_id,
    verify_client_resume_token,
    verify_hello_token,
    verify_resume_token,
)
from tests.test_call import CallHarness, dg

SECRET = "s" * 32
PUBLIC = "https://gw.example.test/voice"


@attrs.define
class ClientLeg(FakeCallerLeg):
    """A fake /client leg that keeps every JSON message it was asked to send."""

    messages: list = attrs.field(factory=list)

    def send_event(self, event: Any) -> None:
        super().send_event(event)
        self.messages.append(dict(event.message))


def harness(store: MemoryStore | None = None, config: dict | None = None,
            public_url: str | None = PUBLIC) -> CallHarness:
    env = {"GATEWAY_TOKEN_SECRET": SECRET}
    if public_url:
        env["GATEWAY_PUBLIC_URL"] = public_url
    h = CallHarness(config, env=env, leg="client")
    h.caller = ClientLeg()
    factory = h.call._stages["handover"].factory
    factory._store = store if store is not None else MemoryStore(h.clock)
    h.store = factory._store
    return h


def hello(h: CallHarness, token: str | None = None, handover: bool = True, **parameters: str) -> None:
    h.call.caller_handshake(Handshake("client", "/client", {}, "peer"))
    h.call.caller_opened(h.caller)
    token = token if token is not None else mint_token(SECRET.encode(), h.clock.seconds())
    h.call.from_caller(ClientHello(token, parameters, handover=handover))


def live(h: CallHarness) -> None:
    h.open_upstream("req-A")
    h.call.from_upstream(dg("SettingsApplied"))


def tick(h: CallHarness, seconds: float) -> None:
    h.clock.pump([0.05] * round(seconds / 0.05))


def agent_turn(h: CallHarness, text: str, audio_s: float) -> None:
    """The agent says ``text``: ``audio_s`` seconds of 16 kHz PCM sent to the client."""
    h.call.from_upstream(dg("ConversationText", role="assistant", content=text))
    h.call.from_upstream(dg("AgentStartedSpeaking"))
    h.call.upstream_audio(Audio(b"\x00\x01" * int(16000 * audio_s), "outbound"))
    h.call.from_upstream(dg("AgentAudioDone"))


def handed_over(test: SynchronousTestCase) -> tuple[CallHarness, dict]:
    """A /client call that was handed over: (its harness, the Handover message it got)."""
    h = harness()
    hello(h, prompt="be brief")
    live(h)
    h.call.from_upstream(dg("ConversationText", role="user", content="Where is my order?"))
    agent_turn(h, "It left the warehouse today.", 1.0)
    h.call.request_handover(30)
    tick(h, 1.2)
    [message] = [m for m in h.caller.messages if m.get("type") == "Handover"]
    return h, message


class GivingAwayTests(SynchronousTestCase):
    """The draining process: a quiet point, a record under a handover id, Handover, 1000."""

    def test_handover_message_then_normal_close(self) -> None:
        """At the quiet point: the record saved, the Handover message, then 1000 HANDED_OVER."""
        h, message = handed_over(self)
        self.assertEqual(set(message), {"type", "url", "token", "expires_in", "retry_after_ms"})
        self.assertEqual(message["url"], "wss://gw.example.test/voice/client")
        self.assertEqual((message["expires_in"], message["retry_after_ms"]), (60, 0))
        claims = verify_client_resume_token(SECRET.encode(), message["token"], h.clock.seconds())
        [(key, (record, _))] = h.store.records.items()
        self.assertEqual(key, "client:" + claims["hid"])
        self.assertEqual(record["call_id"], h.call.info.call_id)
        self.assertEqual(record["custom_parameters"], {"prompt": "be brief", "gateway_handover": "1"})
        self.assertEqual([m["content"] for m in record["states"]["settings"]["history"]],
                         ["Where is my order?", "It left the warehouse today."])
        # The message goes before the close, and the close is a normal one.
        kinds = [kind for kind, _ in h.caller.sent]
        self.assertEqual(kinds[-1], "event")
        self.assertEqual(h.upstream.closed_with, 1000)
        h.call.upstream_closed(UpstreamClosed(1000, None, True))
        self.assertEqual(h.caller.closed_with, (1000, "HANDED_OVER"))
        h.call.caller_closed(1000, "HANDED_OVER", True)
        self.assertEqual(h.call.diagnosis.code, "HANDED_OVER")
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_waits_for_the_client_to_play_the_turn(self) -> None:
        """No marks on /client: the turn's audio (3 s of it) is reckoned to play out first."""
        h = harness()
        hello(h)
        live(h)
        agent_turn(h, "A long answer.", 3.0)
        h.call.request_handover(30)
        tick(h, 2.0)
        self.assertEqual(h.store.records, {}, "the client is still playing the agent's answer")
        tick(h, 1.5)
        self.assertEqual(len(h.store.records), 1)

    def test_without_a_public_url_the_url_is_null(self) -> None:
        """No GATEWAY_PUBLIC_URL: "url": null, the client reconnects where it is connected."""
        h = harness(public_url=None)
        hello(h)
        live(h)
        h.call.request_handover(30)
        tick(h, 0.2)
        [message] = [m for m in h.caller.messages if m.get("type") == "Handover"]
        self.assertIsNone(message["url"])

    def test_a_client_that_did_not_ask_drains_as_before(self) -> None:
        """A hello without "handover": true: never handed over (an old client would be cut off)."""
        h = harness()
        hello(h, handover=False)
        live(h)
        h.call.request_handover(30)
        tick(h, 20)
        self.assertEqual((h.store.records, h.call.phase), ({}, "live"))
        self.assertNotIn("Handover", [m.get("type") for m in h.caller.messages])

    def test_store_down_keeps_the_call(self) -> None:
        """The store failing while saving: no Handover message, the call stays (the plain drain)."""
        store = MemoryStore()
        store.down = True
        h = harness(store)
        hello(h)
        live(h)
        h.call.request_handover(30)
        tick(h, 1)
        self.assertEqual(h.call.phase, "live")
        self.assertIsNone(h.caller.closed_with)
        self.assertNotIn("Handover", [m.get("type") for m in h.caller.messages])


class TakingUpTests(SynchronousTestCase):
    """The process the client reconnects to."""

    def test_resume_token_as_the_hello(self) -> None:
        """{"token": <resume token>}: the same call id and parameters, the history, no greeting."""
        a, message = handed_over(self)
        record, _ = a.store.records["client:" + verify_client_resume_token(
            SECRET.encode(), message["token"], a.clock.seconds())["hid"]]
        b = harness(a.store)
        b.clock.advance(a.clock.seconds())
        hello(b, message["token"], handover=False, prompt="ignored: the call's own are restored")
        self.assertEqual(b.call.info.call_id, record["call_id"])
        self.assertEqual(b.call.info.custom_parameters, {"prompt": "be brief", "gateway_handover": "1"})
        self.assertEqual(b.store.records, {}, "taken: a call is taken up once")
        b.open_upstream("req-B")
        settings = b.upstream.messages()[0]
        self.assertNotIn("greeting", settings["agent"])
        self.assertEqual([m.get("content") for m in settings["agent"]["context"]["messages"]],
                         ["Where is my order?", "It left the warehouse today."])
        b.call.from_upstream(dg("SettingsApplied"))
        self.assertEqual(b.call.phase, "live")
        self.assertEqual(b.call.info.counters[("handovers_in", (("result", "resumed"),))], 1)
        # Still a call a draining process may hand over again.
        b.call.request_handover(30)
        tick(b, 0.2)
        self.assertEqual(len(b.store.records), 1)

    def test_replayed_resume_token_is_refused(self) -> None:
        """A resume token whose record was taken: 4003 AUTH_FAILED, nothing opened upstream."""
        a, message = handed_over(self)
        b = harness(a.store)
        b.clock.advance(a.clock.seconds())
        hello(b, message["token"])
        c = harness(a.store)
        c.clock.advance(a.clock.seconds())
        hello(c, message["token"])
        self.assertIn(("error", "AUTH_FAILED"), c.caller.sent)
        self.assertEqual(c.caller.closed_with[0], 4003)
        self.assertEqual(c.connector.attempts, [])
        self.assertEqual(c.call.info.counters[("handovers_in", (("result", "missing"),))], 1)

    def test_replay_on_the_same_process_is_refused_by_auth(self) -> None:
        """The process remembers a resume token's jti too: refused there even if a record waited."""
        a, message = handed_over(self)
        saved = dict(a.store.records)
        b = harness(a.store)
        b.clock.advance(a.clock.seconds())
        hello(b, message["token"])
        a.store.records.update(saved)  # as if the store had not deleted it
        again = harness(a.store)
        again.call._stages["auth"].used = b.call._stages["auth"].used  # one process's memory
        again.clock.advance(a.clock.seconds())
        hello(again, message["token"])
        self.assertIn(("error", "AUTH_FAILED"), again.caller.sent)
        self.assertEqual(again.caller.closed_with[0], 4003)
        self.assertEqual(a.store.records, saved, "auth refused it before anything was taken")

    def test_store_down_is_a_fresh_call(self) -> None:
        """The store failing at the take: a fresh call (with its greeting), never a dropped one."""
        a, message = handed_over(self)
        a.store.down = True
        b = harness(a.store)
        b.clock.advance(a.clock.seconds())
        hello(b, message["token"])
        b.open_upstream()
        self.assertIn("greeting", b.upstream.messages()[0]["agent"])
        self.assertEqual(b.call.info.counters[("handovers_in", (("result", "store_down"),))], 1)
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_other_tokens_do_not_resume(self) -> None:
        """A Twilio resume token or a stream token as the hello: 4003; a parameter cannot resume."""
        for token in (mint_resume_token(SECRET.encode(), 0, "CA" + "1" * 32, 60),
                      mint_stream_token(SECRET.encode(), 0, "CA" + "1" * 32, 60)):
            h = harness()
            hello(h, token)
            self.assertEqual(h.caller.closed_with[0], 4003, token)
        a, message = handed_over(self)
        b = harness(a.store)
        b.clock.advance(a.clock.seconds())
        hello(b, gateway_resume=message["token"])
        self.assertEqual(len(b.store.records), 1, "a resume token in parameters takes nothing up")
        b.open_upstream()
        self.assertIn("greeting", b.upstream.messages()[0]["agent"])


class KeyTests(SynchronousTestCase):
    """A /client call's record is never taken by a Twilio stream, whatever its CallSid says."""

    def test_twilio_stream_cannot_name_a_client_record(self) -> None:
        from gateway.events import StreamStarted
        from tests.test_call import SID

        a, message = handed_over(self)
        [key] = a.store.records
        h = CallHarness(env={"GATEWAY_TOKEN_SECRET": SECRET})
        h.call._stages["handover"].factory._store = a.store
        token = mint_resume_token(SECRET.encode(), a.clock.seconds(), key, 60)
        h.clock.advance(a.clock.seconds())
        h.call.caller_handshake(Handshake("twilio", "/twilio", {}, "peer"))
        h.call.caller_opened(h.caller)
        h.call.from_caller(StreamStarted(SID, key, custom_parameters={"gateway_handover": "1",
                                                                       "gateway_resume": token}))
        self.assertIn(key, a.store.records)
        self.assertEqual(h.call.info.counters[("handovers_in", (("result", "refused"),))], 1)


class TokenTests(SynchronousTestCase):
    """The /client resume token: its claims, its kinds, its size."""

    def test_kinds_do_not_mix(self) -> None:
        secret = SECRET.encode()
        hid = new_handover_id()
        token = mint_client_resume_token(secret, 1000, hid, 60)
        self.assertEqual(verify_hello_token(secret, token, 1000)["hid"], hid)
        self.assertEqual(verify_hello_token(secret, mint_token(secret, 1000), 1000).get("typ"), None)
        # Not for a Twilio stream, even one with no CallSid; a Twilio one not for /client.
        self.assertRaises(AuthError, verify_resume_token, secret, token, 1000, "CA1")
        self.assertRaises(AuthError, verify_resume_token, secret, token, 1000, "")
        twilio = mint_resume_token(secret, 1000, "CA1", 60)
        self.assertRaises(AuthError, verify_hello_token, secret, twilio, 1000)
        self.assertRaises(AuthError, verify_hello_token, secret, mint_stream_token(secret, 1000, "CA1", 60), 1000)
        # Expired and foreign.
        self.assertRaises(AuthError, verify_hello_token, secret, token, 1062)
        self.assertRaises(AuthError, verify_hello_token, b"other" * 8, token, 1000)

    def test_well_under_500_characters(self) -> None:
        """Both resume tokens fit a Twilio <Parameter> (name plus value under 500) with room."""
        secret = SECRET.encode()
        self.assertLess(len(mint_client_resume_token(secret, 2_000_000_000, new_handover_id(), 3600)), 250)
        self.assertLess(len(mint_resume_token(secret, 2_000_000_000, "CA" + "f" * 32, 3600)), 250)


class HelloCodecTests(SynchronousTestCase):
    """``"handover": true`` in the hello; the Handover message's shape."""

    def test_handover_flag(self) -> None:
        self.assertTrue(client_codec.parse_hello(b'{"token": "t", "handover": true}', False).handover)
        self.assertFalse(client_codec.parse_hello(b'{"token": "t"}', False).handover)
        refused = client_codec.parse_hello(b'{"token": "t", "handover": "yes"}', False)
        self.assertEqual((refused.reason, refused.token), ("wrong_type", ""))

    def test_handover_message(self) -> None:
        message = client_codec.handover_message("wss://h/client", "tok", 60)
        self.assertEqual(json.loads(client_codec.event_message(message)),
                         {"type": "Handover", "url": "wss://h/client", "token": "tok",
                          "expires_in": 60, "retry_after_ms": 0})
