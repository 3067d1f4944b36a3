"""
Live events (plugins/live_events.py) and their sender (gateway.webhooks.BatchSender), on a Clock
with a fake HTTP client: what becomes an event, batching, the per-call and per-process bounds
(drop the oldest, count), retries with backoff, signatures, order, and the options.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from gateway.errors import ConfigError
from gateway.events import DeepgramEvent, StreamStarted, UpstreamMessage
from gateway.testing import RecordingContext, call_info, configure
from gateway.webhooks import BatchLimits, BatchSender, ReportSender, sign
from plugins.live_events import LiveEventsFactory, LiveOptions, event_data


@attrs.define
class FakeResponse:
    code: int

    def content(self) -> defer.Deferred:
        return defer.succeed(b"")


@attrs.define
class Post:
    url: str
    body: bytes
    headers: dict
    d: defer.Deferred

    @property
    def document(self) -> dict:
        return json.loads(self.body)

    def answer(self, code: int = 200) -> None:
        self.d.callback(FakeResponse(code))


class FakeHttp:
    """treq's ``post``, answered by the test."""

    def __init__(self) -> None:
        self.posts: list[Post] = []

    def post(self, url: str, data: bytes, headers: dict, timeout: float, persistent: bool) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.posts.append(Post(url, data, headers, d))
        return d


def categories(events: list[dict[str, Any]]) -> list[str]:
    """The ``log_category`` of each captured event that has one, in order."""
    return [e["log_category"] for e in events if "log_category" in e]


def envelope(batch: int, events: list) -> dict:
    return {"batch": batch, "events": events}


def results(text: str, final: bool = True) -> DeepgramEvent:
    return DeepgramEvent("Results", {"type": "Results", "is_final": final, "speech_final": final,
                                     "start": 1.0, "duration": 0.5,
                                     "channel": {"alternatives": [{"transcript": text, "confidence": 0.9,
                                                                   "words": [{"word": text}]}]}})


class SenderTests(SynchronousTestCase):
    """BatchSender: batched, bounded, retried, in order, never blocking."""

    def sender(self, **limits: Any) -> tuple[BatchSender, FakeHttp, Clock]:
        clock, http = Clock(), FakeHttp()
        sender = BatchSender(clock, "http://hook/live", BatchLimits(**limits), envelope,
                             secret=b"s3cret", http=http)
        return sender, http, clock

    def test_batch_after_batch_ms(self) -> None:
        """Events wait at most batch_ms for company, then go in one signed POST."""
        sender, http, clock = self.sender(batch_s=0.25, max_batch=10)
        sender.put("a", {"n": 1})
        clock.advance(0.1)
        sender.put("a", {"n": 2})
        self.assertEqual(http.posts, [])
        clock.advance(0.15)
        self.assertEqual(len(http.posts), 1)
        post = http.posts[0]
        self.assertEqual(post.document, {"batch": 1, "events": [{"n": 1}, {"n": 2}]})
        self.assertEqual(post.headers[b"X-Gateway-Signature"], [sign(b"s3cret", post.body).encode()])
        self.assertEqual(post.headers[b"X-Gateway-Signature"][0].decode(),
                         "sha256=" + hmac.new(b"s3cret", post.body, hashlib.sha256).hexdigest())
        post.answer(200)
        self.assertEqual((sender.sent_events, sender.sent_batches, sender.queued), (2, 1, 0))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_full_batch_at_once_and_one_post_at_a_time(self) -> None:
        """max_batch waiting events go at once; the next batch waits for the POST in flight."""
        sender, http, clock = self.sender(batch_s=10, max_batch=3)
        for n in range(7):
            sender.put("a", n)
        self.assertEqual(len(http.posts), 1)
        self.assertEqual(http.posts[0].document["events"], [0, 1, 2])
        http.posts[0].answer()
        self.assertEqual(len(http.posts), 2)
        self.assertEqual(http.posts[1].document["events"], [3, 4, 5])
        http.posts[1].answer()
        self.assertEqual(len(http.posts), 2)  # one event left: it waits for batch_s
        clock.advance(10)
        self.assertEqual(http.posts[2].document["events"], [6])
        http.posts[2].answer()
        self.assertEqual(sender.sent_events, 7)

    def test_order_across_calls(self) -> None:
        """A batch takes the oldest events of every call, in arrival order."""
        sender, http, clock = self.sender(batch_s=1, max_batch=4)
        for item in [("a", 1), ("b", 2), ("a", 3), ("c", 4), ("b", 5)]:
            sender.put(*item)
        self.assertEqual(http.posts[0].document["events"], [1, 2, 3, 4])
        http.posts[0].answer()
        clock.advance(1)
        self.assertEqual(http.posts[1].document["events"], [5])

    def test_call_bound_drops_the_oldest(self) -> None:
        """Past max_queue a call's oldest waiting event is dropped, reported and counted."""
        sender, http, clock = self.sender(batch_s=1, max_batch=2, max_queue=3, max_queue_total=100)
        sender.put("a", 0)
        sender.put("a", 1)  # a full batch: in flight
        with capturedLogs() as events:
            drops = [sender.put("a", n) for n in range(2, 7)]
        self.assertEqual(drops, [None, None, None, ("a", "call_queue_full"), ("a", "call_queue_full")])
        self.assertEqual(categories(events), ["LIVE_EVENTS_QUEUE_FULL"])  # warned once
        self.assertEqual(sender.queued, 3)
        self.assertEqual(sender.dropped["call_queue_full"], 2)
        http.posts[0].answer()
        http.posts[1].answer()
        clock.advance(1)
        sent = [e for p in http.posts for e in p.document["events"]]
        self.assertEqual(sent, [0, 1, 4, 5, 6])

    def test_process_bound_drops_the_oldest_of_any_call(self) -> None:
        """Past max_queue_total the process's oldest waiting event goes, whichever call's."""
        sender, http, clock = self.sender(batch_s=1, max_batch=100, max_queue=10, max_queue_total=4)
        for item in [("a", 1), ("b", 2), ("a", 3), ("b", 4)]:
            self.assertIsNone(sender.put(*item))
        self.assertEqual(sender.put("c", 5), ("a", "process_queue_full"))
        self.assertEqual(sender.put("c", 6), ("b", "process_queue_full"))
        self.assertEqual(sender.queued, 4)
        clock.advance(1)
        self.assertEqual(http.posts[0].document["events"], [3, 4, 5, 6])

    def test_bounded_while_the_receiver_is_down(self) -> None:
        """A dead receiver: memory stays within the bounds whatever comes; put never blocks."""
        sender, http, clock = self.sender(batch_s=0.1, max_batch=5, max_queue=20, max_queue_total=50,
                                          attempts=3, backoff_s=1, backoff_max_s=2)
        for n in range(10_000):
            sender.put(f"call-{n % 7}", n)
            self.assertLessEqual(sender.queued, 50)
        self.assertEqual(len(http.posts), 1)  # one POST in flight, no pile of requests
        self.assertEqual(sum(sender.dropped.values()), 10_000 - 5 - 50)

    def test_retries_with_backoff_then_gives_up(self) -> None:
        """A failing batch is retried backoff_s * 2**n apart (capped), then dropped and counted."""
        sender, http, clock = self.sender(batch_s=0, max_batch=10, attempts=4, backoff_s=1, backoff_max_s=3)
        sender.put("a", "x")
        clock.advance(0)
        http.posts[0].answer(500)
        self.assertEqual(len(http.posts), 1)
        clock.advance(0.99)
        self.assertEqual(len(http.posts), 1)
        clock.advance(0.01)
        self.assertEqual(len(http.posts), 2)  # after 1 s
        http.posts[1].d.errback(ConnectionRefusedError("refused"))
        clock.advance(2)
        self.assertEqual(len(http.posts), 3)  # after 2 s
        http.posts[2].answer(503)
        clock.advance(2.99)
        self.assertEqual(len(http.posts), 3)
        clock.advance(0.01)
        self.assertEqual(len(http.posts), 4)  # after 3 s (4 capped to backoff_max_s)
        self.assertEqual({p.body for p in http.posts}, {http.posts[0].body})  # the same batch
        with capturedLogs() as events:
            http.posts[3].answer(500)
        self.assertEqual((sender.failed_batches, sender.failed_events, sender.sent_events), (1, 1, 0))
        self.assertEqual(categories(events), ["LIVE_EVENTS_NOT_DELIVERED"])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_retry_then_success_keeps_order(self) -> None:
        """Events put during a retry wait behind the failing batch, then follow it in order."""
        sender, http, clock = self.sender(batch_s=0.5, max_batch=2, attempts=3, backoff_s=1)
        sender.put("a", 1)
        sender.put("a", 2)
        http.posts[0].answer(500)
        sender.put("a", 3)
        clock.advance(1)
        http.posts[1].answer(200)
        clock.advance(0.5)
        self.assertEqual([p.document["events"] for p in http.posts], [[1, 2], [1, 2], [3]])

    def test_stop_sends_what_waits(self) -> None:
        """stop(): the retry wait is cut short, what waits goes out once, then nothing is timed."""
        sender, http, clock = self.sender(batch_s=5, max_batch=2, attempts=5, backoff_s=10)
        sender.put("a", 1)
        sender.put("a", 2)
        http.posts[0].answer(500)
        sender.put("a", 3)
        d = sender.stop()
        self.assertEqual(len(http.posts), 2)
        http.posts[1].answer(200)
        self.successResultOf(d)
        self.assertEqual(http.posts[1].document["events"], [3])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_report_sender_unchanged(self) -> None:
        """The call report's sender still signs the same way and retries on its own schedule."""
        clock, http = Clock(), FakeHttp()
        sender = ReportSender(clock, "http://hook/report", attempts=2, backoff_s=1, secret=b"k", http=http)
        d = sender.send({"call_id": "c1"})
        http.posts[0].answer(500)
        clock.advance(1)
        http.posts[1].answer(204)
        self.assertIs(self.successResultOf(d), True)
        self.assertEqual(http.posts[1].headers[b"X-Gateway-Signature"],
                         [("sha256=" + hmac.new(b"k", http.posts[1].body, hashlib.sha256).hexdigest()).encode()])

    def test_report_sender_gives_up(self) -> None:
        """A report refused on every attempt fires False, is counted and logged with its code."""
        clock, http = Clock(), FakeHttp()
        sender = ReportSender(clock, "http://hook/report", attempts=2, backoff_s=1, secret=b"k", http=http)
        with capturedLogs() as events:
            d = sender.send({"call_id": "c1"})
            http.posts[0].answer(500)
            clock.advance(1)
            http.posts[1].answer(500)
        self.assertIs(self.successResultOf(d), False)
        self.assertEqual(sender.failed, 1)
        self.assertEqual(categories(events), ["CALL_REPORT_NOT_DELIVERED"])


class EventDataTests(SynchronousTestCase):
    """What becomes a live event, with which data."""

    options = LiveOptions(url="http://x")

    def test_listen_results(self) -> None:
        """Finals only by default; interims with interim_results; empty transcripts never."""
        kind, data = event_data("Results", results("hello there").message, self.options)
        self.assertEqual(kind, "transcript")
        self.assertEqual(data, {"source": "listen", "final": True, "speech_final": True,
                                "transcript": "hello there", "confidence": 0.9, "start": 1.0, "duration": 0.5})
        self.assertIsNone(event_data("Results", results("hel", final=False).message, self.options))
        self.assertIsNone(event_data("Results", results("").message, self.options))
        interims = LiveOptions(url="http://x", interim_results=True, words=True)
        kind, data = event_data("Results", results("hel", final=False).message, interims)
        self.assertEqual((data["final"], data["transcript"], data["words"]), (False, "hel", [{"word": "hel"}]))

    def test_flux_turns(self) -> None:
        """EndOfTurn by default; every TurnInfo event with interim_results."""
        end = {"type": "TurnInfo", "event": "EndOfTurn", "turn_index": 2, "transcript": "yes please",
               "end_of_turn_confidence": 0.8, "audio_window_start": 1.0, "audio_window_end": 2.0}
        kind, data = event_data("TurnInfo", end, self.options)
        self.assertEqual((kind, data["source"], data["final"], data["event"], data["turn_index"], data["transcript"]),
                         ("transcript", "flux", True, "EndOfTurn", 2, "yes please"))
        update = dict(end, event="Update", transcript="yes")
        self.assertIsNone(event_data("TurnInfo", update, self.options))
        _, data = event_data("TurnInfo", update, LiveOptions(url="http://x", interim_results=True))
        self.assertEqual((data["final"], data["event"]), (False, "Update"))

    def test_conversation_and_functions(self) -> None:
        """ConversationText turns; function calls by name and id, arguments only when asked."""
        self.assertEqual(event_data("ConversationText", {"role": "user", "content": "Hi"}, self.options),
                         ("conversation", {"role": "user", "content": "Hi"}))
        request = {"type": "FunctionCallRequest", "functions": [
            {"id": "f1", "name": "order_status", "arguments": '{"order": "12345"}', "client_side": True}]}
        self.assertEqual(event_data("FunctionCallRequest", request, self.options),
                         ("function_call", {"functions": [{"id": "f1", "name": "order_status", "client_side": True}]}))
        _, data = event_data("FunctionCallRequest", request, LiveOptions(url="http://x", function_arguments=True))
        self.assertEqual(data["functions"][0]["arguments"], '{"order": "12345"}')
        self.assertIsNone(event_data("Welcome", {"type": "Welcome"}, self.options))


class StageTests(SynchronousTestCase):
    """The stage: events of the call in order, with the call's ids; drops counted per call."""

    def stage(self, call_id: str = "call-1", max_queue: int = 10) -> tuple[Any, RecordingContext]:
        self.http = FakeHttp()
        limits = BatchLimits(batch_s=0.2, max_batch=50, max_queue=max_queue, max_queue_total=10)
        self.factory = LiveEventsFactory(LiveOptions(url="http://hook/live", limits=limits), b"k",
                                         http=self.http, origin="host:1")
        ctx = RecordingContext(call=call_info(mode="agent", call_id=call_id))
        ctx.call.started_at = 100.0
        ctx.clock.advance(100.0)
        return self.factory(ctx), ctx

    def test_a_call(self) -> None:
        """call.started, the turns, a function call and its answer, call.ended: one batch, in order."""
        stage, ctx = self.stage()
        ctx.call.stream_sid, ctx.call.call_sid = "MZ1", "CA1"
        routes = stage.routes()
        self.assertEqual(set(routes.inbound), {StreamStarted, UpstreamMessage})
        self.assertEqual(set(routes.outbound), {DeepgramEvent})
        ctx.clock.advance(1.5)
        routes.inbound[StreamStarted](StreamStarted("MZ1", "CA1"))
        routes.outbound[DeepgramEvent](DeepgramEvent("ConversationText", {"role": "user", "content": "Hi"}))
        routes.outbound[DeepgramEvent](DeepgramEvent("FunctionCallRequest", {"functions": [
            {"id": "f1", "name": "lookup", "arguments": "{}", "client_side": True}]}))
        routes.inbound[UpstreamMessage](UpstreamMessage({"type": "FunctionCallResponse", "id": "f1",
                                                         "name": "lookup", "content": "shipped"}))
        routes.inbound[UpstreamMessage](UpstreamMessage({"type": "KeepAlive"}))
        routes.outbound[DeepgramEvent](DeepgramEvent("AgentAudioDone", {}))
        self.assertEqual(self.http.posts, [])
        ctx.call.diagnosis_code = "CALLER_HANGUP"  # the call sets it when it begins to end
        stage.close()  # the end of the call sends at once
        document = self.http.posts[0].document
        self.assertEqual({k: document[k] for k in ("type", "version", "origin", "batch", "dropped_total")},
                         {"type": "gateway.live_events", "version": 1, "origin": "host:1", "batch": 1,
                          "dropped_total": 0})
        events = document["events"]
        self.assertEqual([(e["seq"], e["type"]) for e in events],
                         [(1, "call.started"), (2, "conversation"), (3, "function_call"),
                          (4, "function_response"), (5, "call.ended")])
        self.assertEqual({(e["call_id"], e["stream_sid"]) for e in events}, {("call-1", "MZ1")})
        self.assertEqual((events[1]["at"], events[1]["offset_s"]), (101.5, 1.5))
        self.assertEqual(events[0]["data"]["call_sid"], "CA1")
        self.assertEqual(events[3]["data"], {"id": "f1", "name": "lookup"})
        self.assertEqual(events[4]["data"], {"diagnosis": "CALLER_HANGUP", "duration_s": 1.5, "events": 5,
                                             "dropped": 0})

    def test_client_call_stream_id(self) -> None:
        """A /client call (no Twilio stream id on the call): its events carry the StreamStarted's."""
        stage, ctx = self.stage()
        stage.on_started(StreamStarted("call-1", custom_parameters={"record": "yes"}))
        stage.close()
        events = self.http.posts[0].document["events"]
        self.assertEqual({e["stream_sid"] for e in events}, {"call-1"})

    def test_drops_counted_on_the_call(self) -> None:
        """A call over its bound counts live_events_dropped and says so in call.ended."""
        stage, ctx = self.stage(max_queue=3)
        stage.on_started(StreamStarted("MZ1"))
        for n in range(6):
            stage.on_event(DeepgramEvent("ConversationText", {"role": "user", "content": str(n)}))
        self.assertEqual(ctx.counted("live_events_dropped", reason="call_queue_full"), 4)
        stage.close()
        self.assertEqual(stage.dropped, 5)  # call.ended itself pushed out one more
        events = self.http.posts[0].document["events"]
        self.assertEqual([e["type"] for e in events], ["conversation", "conversation", "call.ended"])
        self.assertEqual(events[-1]["data"]["dropped"], 4)
        self.assertEqual([e["seq"] for e in events], [6, 7, 8])  # the gap shows the loss


class OptionsTests(SynchronousTestCase):
    """[live_events] is validated at start-up."""

    chain = ["auth", "settings", "empty_frames", "transcoder", "keepalive", "call_control", "close_codes"]

    def test_defaults(self) -> None:
        configured = configure({"gateway": {"chain": self.chain + ["live_events"]},
                                "live_events": {"url": "https://hooks.example.com/live"}},
                               {"GATEWAY_WEBHOOK_SECRET": "s"})
        factory = dict(configured.stages)["live_events"]
        self.assertEqual(factory.options, LiveOptions(url="https://hooks.example.com/live"))
        self.assertEqual(factory.secret, b"s")

    def test_refusals(self) -> None:
        """A missing or non-http URL, bounds out of range, and live_events after redact."""
        cases = [
            ({}, "live_events.url: missing required value"),
            ({"url": "ftp://x"}, "live_events.url: expected an http(s) URL"),
            ({"url": "http://x", "max_batch": 0}, "live_events.max_batch: expected at least 1"),
            ({"url": "http://x", "max_queue": 100, "max_queue_process": 10},
             "live_events.max_queue_process: must be at least max_queue"),
        ]
        for section, message in cases:
            with self.assertRaises(ConfigError) as caught:
                configure({"gateway": {"chain": self.chain + ["live_events"]}, "live_events": section})
            self.assertIn(message, str(caught.exception))
        with self.assertRaises(ConfigError) as caught:
            configure({"gateway": {"chain": self.chain + ["redact", "live_events"]},
                       "live_events": {"url": "http://x"}})
        self.assertEqual(caught.exception.key, "gateway.chain")
        configure({"gateway": {"chain": self.chain + ["live_events", "redact"]}, "live_events": {"url": "http://x"}})


class ExampleConfigTests(SynchronousTestCase):
    """deploy/gateway.example.toml documents every [live_events] key, and they load."""

    def test_every_key_documented(self) -> None:
        import re

        from tests.test_record import example_keys_read

        seen, text = example_keys_read(self, "live_events")
        self.assertGreaterEqual(len(seen["live_events"]), 12)
        for key in seen["live_events"]:
            self.assertTrue(re.search(rf"^#? ?{re.escape(key)} =", text, re.M),
                            f"live_events.{key} is not documented in the example")
