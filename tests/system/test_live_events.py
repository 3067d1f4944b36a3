"""
Live events through a whole gateway and the emulator: a local HTTP receiver (twisted.web on
127.0.0.1) gets transcripts and conversation turns while the call is still going on, in signed
batches; a stalled receiver makes the queue drop (counted), never holds the call up.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase
from twisted.web import resource, server

from gateway.simulator import TwilioCall
from tests.system.harness import clip, start_emulator, start_gateway, wait_until

SECRET = b"live-events-secret"
CHAIN = ["auth", "settings", "empty_frames", "transcoder", "keepalive", "call_control", "close_codes",
         "live_events"]


class Receiver(resource.Resource):
    """The live-events webhook: records each POST with whether the call was still on."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.posts: list[dict[str, Any]] = []
        self.live = lambda: True
        self.stalled: list[Any] = []
        self.stall = False

    def render_POST(self, request: Any) -> Any:
        body = request.content.read()
        self.posts.append({"body": body, "live": self.live(),
                           "signature": request.getHeader("X-Gateway-Signature")})
        if self.stall:
            self.stalled.append(request)
            return server.NOT_DONE_YET
        return b"ok"

    def release(self) -> None:
        self.stall = False
        for request in self.stalled:
            request.write(b"ok")
            request.finish()
        self.stalled = []

    @property
    def documents(self) -> list[dict[str, Any]]:
        return [json.loads(p["body"]) for p in self.posts]

    @property
    def events(self) -> list[dict[str, Any]]:
        return [e for d in self.documents for e in d["events"]]


class LiveEventsTests(TestCase):
    """Transcripts and turns at a webhook during the call."""

    timeout = 120

    @defer.inlineCallbacks
    def start(self, mode: str, **options: Any) -> Any:
        receiver = Receiver()
        port = reactor.listenTCP(0, server.Site(receiver), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        emulator = yield start_emulator(self)
        live = {"url": f"http://127.0.0.1:{port.getHost().port}/live", **options}
        gateway = yield start_gateway(self, emulator, {"gateway": {"mode": mode, "chain": CHAIN},
                                                       "live_events": live},
                                      {"GATEWAY_WEBHOOK_SECRET": SECRET.decode()})
        receiver.live = lambda: bool(gateway.gateway.calls)
        return gateway, receiver

    @defer.inlineCallbacks
    def call(self, gateway: Any, receiver: Any) -> Any:
        call = TwilioCall(reactor, url=gateway.url + "/twilio", audio=clip("caller-order-8k-mulaw.wav"),
                          realtime=False, wait_s=3.0)
        result = yield call.run().addTimeout(60, reactor)
        yield wait_until(lambda: not gateway.gateway.calls, 10)
        yield wait_until(lambda: receiver.events and receiver.events[-1]["type"] == "call.ended", 10)
        return call, result

    def assertSigned(self, receiver: Receiver) -> None:
        for post in receiver.posts:
            self.assertEqual(post["signature"],
                             "sha256=" + hmac.new(SECRET, post["body"], hashlib.sha256).hexdigest())

    @defer.inlineCallbacks
    def test_listen_transcripts_during_the_call(self) -> None:
        """/v1/listen finals reach the webhook before the call ends, signed, in order."""
        gateway, receiver = yield self.start("listen")
        call, result = yield self.call(gateway, receiver)
        transcripts = [(p["live"], e) for p in receiver.posts for e in json.loads(p["body"])["events"]
                       if e["type"] == "transcript"]
        self.assertGreaterEqual(len(transcripts), 2)
        self.assertTrue(all(live for live, _ in transcripts), "a transcript arrived after the call ended")
        self.assertIn("order", " ".join(e["data"]["transcript"] for _, e in transcripts))
        self.assertEqual({e["data"]["source"] for _, e in transcripts}, {"listen"})
        self.assertTrue(all(e["data"]["final"] for _, e in transcripts))
        self.assertSigned(receiver)
        events = receiver.events
        self.assertEqual([e["seq"] for e in events], list(range(1, len(events) + 1)))
        self.assertEqual((events[0]["type"], events[-1]["type"]), ("call.started", "call.ended"))
        self.assertEqual({e["stream_sid"] for e in events}, {call.stream_sid})
        self.assertEqual(events[0]["data"]["call_sid"], call.call_sid)
        self.assertEqual(events[-1]["data"]["dropped"], 0)
        self.assertEqual([d["batch"] for d in receiver.documents], list(range(1, len(receiver.posts) + 1)))

    @defer.inlineCallbacks
    def test_agent_turns_batched(self) -> None:
        """Voice Agent turns, batched (at most max_batch per POST; events close together share one)."""
        gateway, receiver = yield self.start("agent", batch_ms=500, max_batch=2)
        yield self.call(gateway, receiver)
        turns = [(p["live"], e["data"]) for p in receiver.posts for e in json.loads(p["body"])["events"]
                 if e["type"] == "conversation"]
        self.assertEqual([d["role"] for _, d in turns], ["assistant", "user", "assistant"])
        self.assertTrue(all(live for live, _ in turns))
        sizes = [len(d["events"]) for d in receiver.documents]
        self.assertLessEqual(max(sizes), 2)
        self.assertIn(2, sizes)
        self.assertLess(len(receiver.posts), len(receiver.events))
        self.assertSigned(receiver)

    @defer.inlineCallbacks
    def test_stalled_receiver_drops_never_blocks(self) -> None:
        """A receiver that does not answer: the call runs as usual, the queue stays bounded and
        drops the oldest (counted); once it answers, the rest arrives in order."""
        gateway, receiver = yield self.start("agent", batch_ms=0, max_batch=1, max_queue=1, timeout_s=30)
        receiver.stall = True
        call, result = yield self.call_stalled(gateway)
        self.assertEqual(result.close_code, 1000)
        self.assertEqual(len(receiver.posts), 1)  # one POST in flight, nothing piled up
        factory = dict(gateway.gateway.configured.stages)["live_events"]
        self.assertLessEqual(factory.sender.queued, 1)
        dropped = gateway.gateway.metrics.registry.get_sample_value(
            "gateway_plugin_events_total",
            {"plugin": "live_events", "name": "live_events_dropped", "detail": "reason=call_queue_full"})
        self.assertGreaterEqual(dropped, 2)
        receiver.release()
        yield wait_until(lambda: receiver.events and receiver.events[-1]["type"] == "call.ended", 10)
        events = receiver.events
        seqs = [e["seq"] for e in events]
        self.assertEqual(seqs, sorted(seqs))
        self.assertLess(len(events), seqs[-1])  # the gaps are the dropped events
        self.assertGreaterEqual(events[-1]["data"]["dropped"], 2)

    @defer.inlineCallbacks
    def call_stalled(self, gateway: Any) -> Any:
        call = TwilioCall(reactor, url=gateway.url + "/twilio", audio=clip("caller-order-8k-mulaw.wav"),
                          realtime=False, wait_s=3.0)
        result = yield call.run().addTimeout(60, reactor)
        yield wait_until(lambda: not gateway.gateway.calls, 10)
        return call, result
