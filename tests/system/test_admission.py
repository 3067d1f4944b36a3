"""
Admission over real sockets: unauthenticated WebSockets hold no call slot and have a budget of
their own, replayed Twilio signatures without a stream token are refused, single-use tokens are
used once, and nothing is minted while draining.

The floods come from several loopback addresses (Linux routes all of 127.0.0.0/8 to ``lo``), so
the per-address budget can be shown apart from the total one. Sizes are kept to what proves the
point: the machine running the suite is small and shared.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from urllib.parse import urlencode

import treq
from twilio.request_validator import RequestValidator
from twisted.internet import defer, protocol, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial.unittest import TestCase

from gateway.service import GatewayService
from gateway.testing import configure
from gateway.tokens import STREAM_TOKEN_PARAMETER
from tests.system.client_client import client_call
from tests.system.harness import clip, settle_autobahn_timers, start_standin, wait_until
from tests.system.twilio_client import twilio_call

ORDER = clip("caller-order-8k-mulaw.wav").data
YES = clip("caller-yes-16k-s16le.wav").data
TWILIO_TOKEN = "auth-token-of-the-test-account"
PUBLIC = "https://gw.example.test"
STREAM_URL = "wss://gw.example.test/twilio"
SECRET = "s" * 32
API_KEY = "api-key-of-the-test"
#: What twilio_call sends as start.callSid.
CALL_SID = "CA" + "0" * 32


class SilentSocket(protocol.Protocol):
    """A WebSocket client that upgrades and then sends nothing; records what the gateway sends."""

    def __init__(self, path: bytes) -> None:
        self.path = path
        self.received = b""
        self.upgraded: defer.Deferred = defer.Deferred()
        self.closed: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(
            b"GET " + self.path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n")

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if not self.upgraded.called and b"\r\n\r\n" in self.received:
            self.upgraded.callback(int(self.received.split(b" ", 2)[1]))

    def connectionLost(self, reason) -> None:
        if not self.upgraded.called:
            self.upgraded.callback(None)
        self.closed.callback(None)

    def frames(self) -> list[tuple[int, bytes]]:
        """The (opcode, payload) of each whole frame after the 101 (server frames are unmasked)."""
        data = self.received.split(b"\r\n\r\n", 1)[1]
        frames = []
        while len(data) >= 2:
            n = data[1] & 0x7F
            start = 2
            if n == 126:
                n, start = int.from_bytes(data[2:4], "big"), 4
            frames.append((data[0] & 0x0F, data[start:start + n]))
            data = data[start + n:]
        return frames

    def close_code(self) -> int | None:
        for opcode, payload in self.frames():
            if opcode == 8 and len(payload) >= 2:
                return int.from_bytes(payload[:2], "big")
        return None

    def errors(self) -> list[str]:
        return [json.loads(p)["code"] for opcode, p in self.frames() if opcode == 1]


class AdmissionTests(TestCase):
    """Unauthenticated sockets over real sockets, with real calls alongside."""

    timeout = 120

    @defer.inlineCallbacks
    def setUp(self) -> None:
        self.standin = yield start_standin(self)
        self.silent: list[SilentSocket] = []

    @defer.inlineCallbacks
    def gateway(self, config: dict) -> defer.Deferred:
        env = {"DEEPGRAM_AGENT_URL": self.standin.url("agent"), "TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
               "GATEWAY_PUBLIC_URL": PUBLIC, "GATEWAY_TOKEN_SECRET": SECRET, "GATEWAY_API_KEY": API_KEY}
        self.service = GatewayService(configure(config, env), "tcp:0:interface=127.0.0.1", reactor)
        yield self.service.startService()
        self.addCleanup(self._stop)
        self.port = self.service.port.getHost().port
        self.http = f"http://127.0.0.1:{self.port}"
        self.ws = f"ws://127.0.0.1:{self.port}"

    @defer.inlineCallbacks
    def _stop(self) -> defer.Deferred:
        for socket in self.silent:
            if socket.transport is not None and socket.transport.connected:
                socket.transport.abortConnection()
        yield defer.DeferredList([s.closed for s in self.silent])
        yield wait_until(lambda: not self.service.gateway.calls)
        yield self.service.stopService()
        yield settle_autobahn_timers()

    @defer.inlineCallbacks
    def open_silent(self, path: bytes, source: str, count: int = 1, status: int = 101) -> defer.Deferred:
        """``count`` silent upgrades from ``source``, each answered (``status``) before this fires."""
        sockets = []
        for _ in range(count):
            endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port, bindAddress=(source, 0))
            socket = yield connectProtocol(endpoint, SilentSocket(path))
            self.silent.append(socket)
            sockets.append(socket)
        statuses = yield defer.gatherResults([s.upgraded for s in sockets]).addTimeout(30, reactor)
        self.assertEqual(set(statuses), {status})
        return sockets

    def signed_call(self, parameters: dict | None = None, stop_after_s: float | None = 1.5) -> defer.Deferred:
        """A signed Twilio call; ``stop_after_s=None`` for one the gateway is expected to close."""
        return twilio_call(reactor, self.ws + "/twilio", ORDER, stop_after_s=stop_after_s,
                           parameters=parameters, auth_token=TWILIO_TOKEN,
                           signed_url=STREAM_URL).addTimeout(60, reactor)

    @defer.inlineCallbacks
    def test_silent_clients_hold_no_slot(self) -> None:
        """120 silent /client upgrades held open, max_calls 2: a signed call is accepted and exact."""
        yield self.gateway({"gateway": {"max_calls": 2},
                            "admission": {"max_pending": 150, "max_pending_per_address": 10,
                                          "pending_timeout_s": 60}})
        held = []
        for i in range(12):
            held += yield self.open_silent(b"/client", f"127.0.0.{i + 2}", 10)
        gateway = self.service.gateway
        yield wait_until(lambda: gateway.admission.pending == 120)
        health = yield treq.get(self.http + "/healthz", persistent=False).addTimeout(30, reactor)
        ready = yield treq.get(self.http + "/readyz", persistent=False).addTimeout(30, reactor)
        self.assertEqual((health.code, ready.code), (200, 200))
        yield health.content()
        yield ready.content()
        result = yield self.signed_call()
        self.assertEqual(result.close_code, 1000)
        session = self.standin.sessions[0]
        yield session.closed
        self.assertEqual(session.audio, ORDER)
        self.assertEqual([s for s in held if s.closed.called], [])
        self.assertEqual(gateway.admission.pending, 120)
        self.assertEqual(self.standin.upgrade_attempts, 1)

    @defer.inlineCallbacks
    def test_per_address_budget(self) -> None:
        """Past max_pending_per_address, that address's oldest sockets go (4001) once past the
        eviction grace (before it, the newcomer gets 503); other addresses are not concerned."""
        yield self.gateway({"admission": {"max_pending": 50, "max_pending_per_address": 4,
                                          "pending_timeout_s": 60, "eviction_grace_s": 0.3}})
        gateway = self.service.gateway
        first = yield self.open_silent(b"/client", "127.0.0.2", 4)
        yield wait_until(lambda: gateway.admission.pending == 4)
        yield self.open_silent(b"/client", "127.0.0.2", 1, status=503)
        yield task.deferLater(reactor, 0.4, lambda: None)  # the first four are past the grace
        later = []
        for _ in range(3):
            later += yield self.open_silent(b"/client", "127.0.0.2")
        others = yield self.open_silent(b"/client", "127.0.0.3", 4)
        yield wait_until(lambda: sum(s.closed.called for s in first) == 3, timeout_s=30)
        for socket in first:
            if socket.closed.called:
                self.assertEqual((socket.errors(), socket.close_code()), (["AUTH_TIMEOUT"], 4001))
        self.assertEqual([s for s in later + others if s.closed.called], [])
        self.assertEqual((gateway.admission.pending_from("127.0.0.2"), gateway.admission.pending_from("127.0.0.3")),
                         (4, 4))
        self.assertEqual(gateway.admission.closed["evicted"], 3)
        self.assertEqual(gateway.admission.refused["busy"], 1)
        # A client with a token from another address is not concerned.
        token = yield self.mint()
        result = yield client_call(reactor, self.ws + "/client", YES, token).addTimeout(60, reactor)
        self.assertEqual(result.close_code, 1000)

    @defer.inlineCallbacks
    def test_deadline(self) -> None:
        """An unauthenticated socket goes at pending_timeout_s: /client with its error, both 4001."""
        yield self.gateway({"gateway": {"require_stream_token": True},
                            "admission": {"pending_timeout_s": 0.5}})
        client, = yield self.open_silent(b"/client", "127.0.0.2")
        # Twilio with stream tokens required: the signature alone does not authenticate.
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)
        twilio = yield connectProtocol(endpoint, _SignedSilent())
        self.silent.append(twilio)
        yield defer.gatherResults([client.closed, twilio.closed]).addTimeout(30, reactor)
        self.assertEqual((client.errors(), client.close_code()), (["AUTH_TIMEOUT"], 4001))
        self.assertEqual(twilio.close_code(), 4001)
        self.assertEqual(self.service.gateway.admission.closed["timeout"], 2)

    @defer.inlineCallbacks
    def webhook(self, call_sid: str = CALL_SID) -> defer.Deferred:
        """POST the signed voice webhook; the <Parameter>s of its TwiML."""
        form = {"CallSid": call_sid, "AccountSid": "AC" + "2" * 32, "From": "+15005550006", "To": "+15005550001"}
        signature = RequestValidator(TWILIO_TOKEN).compute_signature(PUBLIC + "/twilio/voice", form)
        response = yield treq.post(
            self.http + "/twilio/voice", data=urlencode(form).encode(), persistent=False,
            headers={"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": signature})
        body = yield response.content()
        self.assertEqual(response.code, 200, body)
        stream = ET.fromstring(body).find("Connect/Stream")
        return {p.get("name"): p.get("value") for p in stream.findall("Parameter")}

    @defer.inlineCallbacks
    def test_replayed_signature_refused(self) -> None:
        """With require_stream_token: the webhook's token opens one stream; a replay without it,
        or with the used one, is refused (4003) and never reaches Deepgram."""
        yield self.gateway({"gateway": {"require_stream_token": True}})
        parameters = yield self.webhook()
        self.assertIn(STREAM_TOKEN_PARAMETER, parameters)
        result = yield self.signed_call(parameters)
        self.assertEqual(result.close_code, 1000)
        session = self.standin.sessions[0]
        yield session.closed
        self.assertEqual(session.audio, ORDER)
        without = {k: v for k, v in parameters.items() if k != STREAM_TOKEN_PARAMETER}
        replayed = yield self.signed_call(without, stop_after_s=None)
        reused = yield self.signed_call(parameters, stop_after_s=None)
        other_call = yield self.webhook("CA" + "9" * 32)
        wrong_sid = yield self.signed_call(other_call, stop_after_s=None)
        self.assertEqual([r.close_code for r in (replayed, reused, wrong_sid)], [4003, 4003, 4003])
        self.assertEqual(self.standin.upgrade_attempts, 1)

    @defer.inlineCallbacks
    def test_stream_token_optional_by_default(self) -> None:
        """Without require_stream_token (a TwiML Bin), a signed stream needs no token."""
        yield self.gateway({})
        parameters = yield self.webhook()
        self.assertNotIn(STREAM_TOKEN_PARAMETER, parameters)
        result = yield self.signed_call(parameters)
        self.assertEqual(result.close_code, 1000)

    @defer.inlineCallbacks
    def mint(self, body: bytes = b"") -> defer.Deferred:
        response = yield treq.post(self.http + "/v1/tokens", data=body, persistent=False,
                                   headers={"Authorization": f"Bearer {API_KEY}"})
        answer = yield response.json()
        self.assertEqual(response.code, 200, answer)
        return answer["token"]

    @defer.inlineCallbacks
    def test_single_use_token(self) -> None:
        """A token minted single-use opens one /client call; the second use is refused (4003)."""
        yield self.gateway({})
        token = yield self.mint(b'{"single_use": true}')
        first = yield client_call(reactor, self.ws + "/client", YES, token).addTimeout(60, reactor)
        second = yield client_call(reactor, self.ws + "/client", YES, token,
                                   close_after_s=None).addTimeout(60, reactor)
        self.assertEqual((first.close_code, second.close_code), (1000, 4003))
        self.assertEqual([(e["type"], e["code"]) for e in second.events], [("Error", "AUTH_FAILED")])
        self.assertEqual(self.standin.upgrade_attempts, 1)

    @defer.inlineCallbacks
    def test_no_minting_while_draining(self) -> None:
        """Once draining, POST /v1/tokens answers 503 with a JSON error (the port still open)."""
        yield self.gateway({})
        yield self.mint()
        yield self.service.gateway.drain(1.0)
        response = yield treq.post(self.http + "/v1/tokens", persistent=False,
                                   headers={"Authorization": f"Bearer {API_KEY}"})
        answer = yield response.json()
        self.assertEqual(response.code, 503)
        self.assertIn("draining", answer["error"])
        self.assertNotIn("token", answer)


class _SignedSilent(SilentSocket):
    """A Twilio-signed /twilio upgrade that then sends nothing (a replayed signature)."""

    def __init__(self) -> None:
        super().__init__(b"/twilio")

    def connectionMade(self) -> None:
        from gateway.codecs.signatures import compute_signature

        signature = compute_signature(TWILIO_TOKEN, STREAM_URL).encode()
        self.transport.write(
            b"GET /twilio HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"X-Twilio-Signature: " + signature + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
