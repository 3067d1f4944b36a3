"""
The HTTP limits (gateway.httplimits) over real sockets: 413 decided from the head (the body is
never read), 408 for a body that trickles, 431 for an oversize header; /healthz answers
throughout.
"""

from __future__ import annotations

from unittest import mock

import treq
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial.unittest import TestCase

from gateway.service import GatewayService
from gateway.testing import configure
from tests.system.harness import start_standin


class RawHttp(protocol.Protocol):
    """A TCP client that records the answer and when the connection ends."""

    def __init__(self) -> None:
        self.received = b""
        self.answered: defer.Deferred = defer.Deferred()
        self.closed: defer.Deferred = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if not self.answered.called and b"\r\n\r\n" in self.received:
            self.answered.callback(int(self.received.split(b" ", 2)[1]))

    def connectionLost(self, reason) -> None:
        if not self.answered.called:
            self.answered.callback(None)
        self.closed.callback(self.received)


class HttpLimitTests(TestCase):
    """Each bound, against the real gateway port."""

    timeout = 60

    @defer.inlineCallbacks
    def setUp(self) -> None:
        standin = yield start_standin(self)
        configured = configure({"http": {"max_body_bytes": 4096, "body_timeout_s": 0.5}},
                               {"DEEPGRAM_AGENT_URL": standin.url("agent"), "GATEWAY_API_KEY": "k"})
        self.service = GatewayService(configured, "tcp:0:interface=127.0.0.1", reactor)
        yield self.service.startService()
        self.addCleanup(self.service.stopService)
        self.port = self.service.port.getHost().port

    @defer.inlineCallbacks
    def raw(self, data: bytes) -> defer.Deferred:
        client = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), RawHttp())
        client.transport.write(data)
        return client

    @defer.inlineCallbacks
    def assertHealthy(self) -> defer.Deferred:
        response = yield treq.get(f"http://127.0.0.1:{self.port}/healthz", persistent=False).addTimeout(30, reactor)
        yield response.content()
        self.assertEqual(response.code, 200)

    @defer.inlineCallbacks
    def test_big_body_refused_before_reading_it(self) -> None:
        """500 MB announced to /v1/tokens and /healthz: 413 at once, with no byte of body sent."""
        with mock.patch("tempfile.TemporaryFile") as spool:
            for path in (b"/v1/tokens", b"/healthz"):
                client = yield self.raw(b"POST " + path + b" HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer k\r\n"
                                        b"Content-Length: 500000000\r\n\r\n")
                status = yield client.answered.addTimeout(30, reactor)
                self.assertEqual(status, 413)
                yield client.closed.addTimeout(30, reactor)
        spool.assert_not_called()
        self.assertEqual(self.service.gateway.site.refusals[413], 2)
        yield self.assertHealthy()

    @defer.inlineCallbacks
    def test_big_chunked_body(self) -> None:
        """A chunked body to /healthz passing the limit: 413 while it is still being sent."""
        client = yield self.raw(b"POST /healthz HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(3):
            client.transport.write(b"800\r\n" + b"a" * 0x800 + b"\r\n")
        status = yield client.answered.addTimeout(30, reactor)
        self.assertEqual(status, 413)
        yield client.closed.addTimeout(30, reactor)
        yield self.assertHealthy()

    @defer.inlineCallbacks
    def test_slow_body(self) -> None:
        """A body that stops coming: 408 at body_timeout_s (the connection does not stay open)."""
        client = yield self.raw(b"POST /v1/tokens HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer k\r\n"
                                b"Content-Length: 100\r\n\r\n{")
        status = yield client.answered.addTimeout(30, reactor)
        self.assertEqual(status, 408)
        yield client.closed.addTimeout(30, reactor)
        yield self.assertHealthy()

    @defer.inlineCallbacks
    def test_huge_header(self) -> None:
        """A 20 KB header: 431, not a TCP close without an answer."""
        client = yield self.raw(b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX-Junk: " + b"a" * 20_000 + b"\r\n\r\n")
        status = yield client.answered.addTimeout(30, reactor)
        self.assertEqual(status, 431)
        received = yield client.closed.addTimeout(30, reactor)
        self.assertIn(b'"error"', received)
        yield self.assertHealthy()
