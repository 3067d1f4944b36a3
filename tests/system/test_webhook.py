"""The call report POSTed to a webhook: a local HTTP server on loopback stands in for the receiver."""

from __future__ import annotations

import hashlib
import hmac
import json

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase
from twisted.web import resource, server

from gateway.service import GatewayService
from gateway.testing import configure
from tests.system.harness import start_standin, clip
from tests.system.twilio_client import twilio_call


class Receiver(resource.Resource):
    """Answers 500 to the first POST, 200 after; records bodies and headers."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.posts: list[tuple[dict, bytes]] = []

    def render_POST(self, request) -> bytes:
        body = request.content.read()
        self.posts.append((dict(request.requestHeaders.getAllRawHeaders()), body))
        request.setResponseCode(500 if len(self.posts) == 1 else 200)
        return b"ok"


class WebhookTests(TestCase):
    """Reports reach the webhook, retried past a failure, signed."""

    timeout = 60

    @defer.inlineCallbacks
    def test_report_posted(self) -> None:
        """A listen-mode call's report arrives with the transcript after one retry."""
        standin = yield start_standin(self)
        receiver = Receiver()
        site = server.Site(receiver)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        configured = configure(
            {"gateway": {"mode": "listen"},
             "report": {"webhook_url": f"http://127.0.0.1:{port.getHost().port}/calls", "webhook_attempts": 3}},
            {"DEEPGRAM_LISTEN_URL": standin.url("listen"), "GATEWAY_WEBHOOK_SECRET": "hook-secret"})
        service = GatewayService(configured, "tcp:0:interface=127.0.0.1", reactor)
        yield service.startService()
        self.addCleanup(service.stopService)
        service.gateway.reports.backoff_s = 0.05
        audio = clip("caller-order-8k-mulaw.wav").data
        url = f"ws://127.0.0.1:{service.port.getHost().port}/twilio"
        yield twilio_call(reactor, url, audio).addTimeout(30, reactor)
        for _ in range(200):
            if len(receiver.posts) >= 2:
                break
            yield task.deferLater(reactor, 0.02, lambda: None)
        self.assertEqual(len(receiver.posts), 2)
        headers, body = receiver.posts[1]
        report = json.loads(body)
        signature = headers[b"X-Gateway-Signature"][0].decode()
        self.assertEqual(signature, "sha256=" + hmac.new(b"hook-secret", body, hashlib.sha256).hexdigest())
        self.assertEqual((report["mode"], report["diagnosis"]["code"]), ("listen", "CALLER_HANGUP"))
        self.assertEqual(report["frames"]["deepgram_out"], len(range(0, len(audio), 160)))
        self.assertEqual(report["dg_request_ids"], [standin.sessions[0].request_id])
        self.assertIn("transcript", report)
        self.assertEqual(service.gateway.reports.sent, 1)
