"""
Limits against hostile clients over real sockets, each with a healthy call alongside that must
not notice; and many concurrent calls relayed with nothing lost.
"""

from __future__ import annotations

from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial.unittest import TestCase

from gateway.service import GatewayService
from gateway.testing import configure
from tests.system.harness import start_standin, clip, settle_autobahn_timers, wait_until
from tests.system.twilio_client import twilio_call

ORDER = clip("caller-order-8k-mulaw.wav").data
UPGRADE = (b"GET /twilio HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


class RawClient(protocol.Protocol):
    """A TCP client that records what it gets and when it is closed."""

    def __init__(self) -> None:
        self.received = b""
        self.closed: defer.Deferred = defer.Deferred()
        self.upgraded: defer.Deferred = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if not self.upgraded.called and b"\r\n\r\n" in self.received:
            self.upgraded.callback(self.received)

    @defer.inlineCallbacks
    def upgrade(self) -> defer.Deferred:
        """Send the upgrade and wait for the 101 (a client may not send frames before it)."""
        self.transport.write(UPGRADE)
        head = yield self.upgraded.addTimeout(10, reactor)
        assert head.startswith(b"HTTP/1.1 101"), head[:60]

    def connectionLost(self, reason) -> None:
        self.closed.callback(self.received)


def masked_text_frame(payload: bytes) -> bytes:
    """A client text frame (masked with a zero key, which is legal)."""
    n = len(payload)
    if n < 126:
        header = bytes([0x81, 0x80 | n])
    elif n < 65536:
        header = bytes([0x81, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        header = bytes([0x81, 0x80 | 127]) + n.to_bytes(8, "big")
    return header + b"\0\0\0\0" + payload


class LimitTests(TestCase):
    """Each limit, tested with a hostile client."""

    timeout = 60

    @defer.inlineCallbacks
    def setUp(self) -> None:
        self.standin = yield start_standin(self)

    @defer.inlineCallbacks
    def gateway(self, **gateway_options) -> defer.Deferred:
        configured = configure({"gateway": gateway_options}, {"DEEPGRAM_AGENT_URL": self.standin.url("agent")})
        service = GatewayService(configured, "tcp:0:interface=127.0.0.1", reactor)
        yield service.startService()
        self.addCleanup(service.stopService)
        self.port = service.port.getHost().port
        self.service = service

    def raw(self) -> defer.Deferred:
        return connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), RawClient())

    def healthy_call(self) -> defer.Deferred:
        return twilio_call(reactor, f"ws://127.0.0.1:{self.port}/twilio", ORDER, stop_after_s=1.5)

    @defer.inlineCallbacks
    def assertHealthy(self, call: defer.Deferred) -> defer.Deferred:
        result = yield call.addTimeout(30, reactor)
        self.assertEqual(result.close_code, 1000)
        session = self.standin.sessions[0]
        yield session.closed
        self.assertEqual(session.audio, ORDER)

    @defer.inlineCallbacks
    def test_header_flood(self) -> None:
        """Request headers past 16 KiB: 431 (gateway.httplimits) and closed."""
        yield self.gateway()
        call = self.healthy_call()
        client = yield self.raw()
        client.transport.write(b"GET /twilio HTTP/1.1\r\n" + b"X-Junk: " + b"a" * 20_000 + b"\r\n")
        received = yield client.closed.addTimeout(10, reactor)
        self.assertTrue(received.startswith(b"HTTP/1.1 431 "), received[:40])
        yield self.assertHealthy(call)

    @defer.inlineCallbacks
    def test_slow_headers(self) -> None:
        """Headers dribbled a byte at a time: cut at handshake_timeout_s, whatever the bytes."""
        yield self.gateway(handshake_timeout_s=0.5)
        call = self.healthy_call()
        client = yield self.raw()
        started = reactor.seconds()
        ticker = _Dribble(client, UPGRADE[:-2])
        yield client.closed.addTimeout(10, reactor)
        ticker.stop()
        self.assertLess(reactor.seconds() - started, 3.0)
        yield self.assertHealthy(call)

    @defer.inlineCallbacks
    def test_oversized_message(self) -> None:
        """A 100 KB message on /twilio: the socket closes with 1009; other calls go on."""
        yield self.gateway()
        call = self.healthy_call()
        client = yield self.raw()
        yield client.upgrade()
        client.transport.write(masked_text_frame(b'{"event": "media", "media": {"payload": "' + b"A" * 100_000 + b'"}}'))
        received = yield client.closed.addTimeout(10, reactor)
        self.assertIn(b"101 Switching Protocols", received)
        close = received.split(b"\r\n\r\n", 1)[1]
        self.assertEqual(close[0], 0x88)
        self.assertEqual(int.from_bytes(close[2:4], "big"), 1009)
        yield self.assertHealthy(call)

    @defer.inlineCallbacks
    def test_garbage_frames(self) -> None:
        """Garbage JSON is rejected and counted, the stream stays open; invalid UTF-8 closes it (1007)."""
        yield self.gateway()
        client = yield self.raw()
        yield client.upgrade()
        head = len(client.received)
        for junk in (b"{nope", b"[]", b'{"event": "dance"}', b'{"event": "media"}'):
            client.transport.write(masked_text_frame(junk))
        call = self.healthy_call()
        yield self.assertHealthy(call)
        self.assertEqual(len(client.received), head, "the garbage stream is still open")
        client.transport.write(masked_text_frame(b"\xff\xfe"))
        received = yield client.closed.addTimeout(10, reactor)
        close = received[head:]
        self.assertEqual((close[0], int.from_bytes(close[2:4], "big")), (0x88, 1007))
        # the gateway side's Autobahn timers go when its call has closed
        yield wait_until(lambda: not self.service.gateway.calls)
        yield settle_autobahn_timers()
        rejected = self.service.gateway.metrics.totals
        counts = {labels[0]: n for (name, labels), n in rejected.items() if name == "caller_messages_rejected"}
        self.assertEqual(counts, {"bad_json": 1, "not_object": 1, "unknown_event": 1, "missing_field": 1})

    @defer.inlineCallbacks
    def test_max_calls(self) -> None:
        """Past max_calls, upgrades get HTTP 503 and /readyz says so."""
        yield self.gateway(max_calls=1)
        call = twilio_call(reactor, f"ws://127.0.0.1:{self.port}/twilio", ORDER, stop_after_s=1.5)
        yield wait_until(lambda: self.service.gateway.calls)
        refused = yield twilio_call(reactor, f"ws://127.0.0.1:{self.port}/twilio", ORDER).addTimeout(10, reactor)
        self.assertEqual(refused.handshake_status, 503)
        yield self.assertHealthy(call)


class _Dribble:
    """Writes one byte every 50 ms."""

    def __init__(self, client: RawClient, data: bytes) -> None:
        from twisted.internet.task import LoopingCall

        self.data = data
        self.client = client
        self.loop = LoopingCall(self.tick)
        self.loop.start(0.05)

    def tick(self) -> None:
        if self.data and self.client.transport.connected:
            self.client.transport.write(self.data[:1])
            self.data = self.data[1:]

    def stop(self) -> None:
        if self.loop.running:
            self.loop.stop()


class NothingLostTests(TestCase):
    """Many calls at once: every caller byte reaches Deepgram once and in order, and back."""

    timeout = 90

    @defer.inlineCallbacks
    def test_concurrent_calls(self) -> None:
        """40 concurrent calls, each with its own clip slice, relayed exactly both ways."""
        standin = yield start_standin(self)
        service = GatewayService(configure(None, {"DEEPGRAM_AGENT_URL": standin.url("agent")}),
                                 "tcp:0:interface=127.0.0.1", reactor)
        yield service.startService()
        self.addCleanup(service.stopService)
        url = f"ws://127.0.0.1:{service.port.getHost().port}/twilio"
        audios = [ORDER[i * 400:] + ORDER[: i * 400] for i in range(40)]
        results = yield defer.gatherResults(
            [twilio_call(reactor, url, audio, stop_after_s=2.0) for audio in audios]).addTimeout(60, reactor)
        yield defer.gatherResults([s.closed for s in standin.sessions])
        received = sorted(s.audio for s in standin.sessions)
        self.assertEqual(received, sorted(audios))
        for result in results:
            self.assertEqual(result.close_code, 1000)
            self.assertEqual(result.agent_audio, b"\xff" * 800)
