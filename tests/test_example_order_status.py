"""The example drop-in (examples/order_status), tested as a user would test their own plugin."""

from __future__ import annotations

import json
import os

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase
from twisted.web import resource, server

from gateway.call import Call
from gateway.events import DeepgramEvent, Handshake, StreamStarted, UpstreamClosed
from gateway.testing import FakeCallerLeg, FakeConnector, FakeUpstreamLeg, configure

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Orders(resource.Resource):
    """A local order service: 4567 is shipped, anything else unknown."""

    isLeaf = True

    def render_GET(self, request) -> bytes:
        if request.path == b"/orders/4567":
            request.setHeader(b"content-type", b"application/json")
            return json.dumps({"status": "shipped", "eta": "tomorrow"}).encode()
        request.setResponseCode(404)
        return b"{}"


class OrderStatusTests(TestCase):
    """The agent asks, the plugin looks the order up over HTTP, the agent gets words to say."""

    timeout = 30

    def setUp(self) -> None:
        import gateway.dropins

        saved = list(gateway.dropins.__path__)
        self.addCleanup(lambda: gateway.dropins.__path__.__setitem__(slice(None), saved))
        port = reactor.listenTCP(0, server.Site(Orders()), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.service = f"http://127.0.0.1:{port.getHost().port}"

    @defer.inlineCallbacks
    def ask(self, arguments: str) -> defer.Deferred:
        configured = configure({
            "gateway": {"dropin_dirs": [os.path.join(ROOT, "examples", "order_status")],
                        "chain": ["auth", "settings", "call_control", "order_status"]},
            "order_status": {"service_url": self.service}})
        call = Call(configured, "twilio", reactor, FakeConnector())
        call.caller_handshake(Handshake("twilio", "/twilio", {}, ""))
        call.caller_opened(FakeCallerLeg())
        call.from_caller(StreamStarted("MZ1"))
        upstream = FakeUpstreamLeg()
        call.upstream_opened(upstream, "r")
        call.from_upstream(DeepgramEvent("Welcome", {"type": "Welcome"}))
        declared = [f["name"] for f in upstream.messages()[0]["agent"]["think"]["functions"]]
        self.assertIn("order_status", declared)
        call.from_upstream(DeepgramEvent("SettingsApplied", {"type": "SettingsApplied"}))
        call.from_upstream(DeepgramEvent("FunctionCallRequest", {"type": "FunctionCallRequest", "functions": [
            {"id": "fc1", "name": "order_status", "arguments": arguments, "client_side": True}]}))
        for _ in range(200):
            answers = [m for m in upstream.messages() if m["type"] == "FunctionCallResponse"]
            if answers:
                break
            yield defer.Deferred().addTimeout(0.01, reactor).addErrback(lambda f: None)
        call.end(call._caller_diagnosis(1000, True), "caller")
        call.upstream_closed(UpstreamClosed(1000, None, True))
        call.caller_closed(1000, None, True)
        return answers[0]

    @defer.inlineCallbacks
    def test_found(self) -> None:
        """A known order: its status and ETA, as JSON for the agent."""
        answer = yield self.ask('{"order_number": "4567"}')
        self.assertEqual(answer["id"], "fc1")
        self.assertEqual(json.loads(answer["content"]),
                         {"found": True, "order_number": "4567", "status": "shipped", "eta": "tomorrow"})

    @defer.inlineCallbacks
    def test_unknown_and_invalid(self) -> None:
        """An unknown order is said so; a malformed number is refused by the schema."""
        answer = yield self.ask('{"order_number": "1111"}')
        self.assertFalse(json.loads(answer["content"])["found"])
        answer = yield self.ask('{"order_number": "four"}')
        self.assertIn("invalid arguments for order_status", answer["content"])
