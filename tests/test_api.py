"""Tests for the HTTP API with treq's in-memory StubTreq (no sockets)."""

from __future__ import annotations

import json

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.service import Gateway
from gateway.testing import configure
from gateway.tokens import verify_token


class ApiTests(SynchronousTestCase):
    """heartbeat, readiness, tokens."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)

    def client(self, env: dict | None = None) -> tuple[StubTreq, Gateway]:
        gateway = Gateway(configure(env=env), self.clock)
        return StubTreq(gateway.make_site().resource), gateway

    def request(self, d) -> tuple[int, dict]:
        response = self.successResultOf(d)
        body = self.successResultOf(response.content())
        return response.code, json.loads(body)

    def test_health_and_readiness(self) -> None:
        """healthz is always 200; readyz turns 503 while draining."""
        treq, gateway = self.client()
        self.assertEqual(self.request(treq.get("http://gw/healthz"))[0], 200)
        self.assertEqual(self.request(treq.get("http://gw/readyz")), (200, {"ready": True, "calls": 0}))
        gateway.draining = True
        code, body = self.request(treq.get("http://gw/readyz"))
        self.assertEqual((code, body["ready"], body["reason"]), (503, False, "draining"))
        self.assertEqual(self.request(treq.get("http://gw/healthz"))[0], 200)

    def test_tokens(self) -> None:
        """POST /v1/tokens mints a 5-minute token for the right API key only."""
        treq, gateway = self.client({"GATEWAY_API_KEY": "api-key", "GATEWAY_TOKEN_SECRET": "s" * 32})
        code, body = self.request(treq.post("http://gw/v1/tokens", headers={"Authorization": "Bearer api-key"}))
        self.assertEqual((code, body["expires_in"]), (200, 300))
        verify_token(b"s" * 32, body["token"], self.clock.seconds() + 299)
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Token api-key"}):
            code, body = self.request(treq.post("http://gw/v1/tokens", headers=headers))
            self.assertEqual(code, 401)
            self.assertIn("GATEWAY_API_KEY", body["error"])

    def test_tokens_disabled(self) -> None:
        """Without GATEWAY_API_KEY, minting answers 503 naming the variable."""
        treq, _ = self.client()
        code, body = self.request(treq.post("http://gw/v1/tokens", headers={"Authorization": "Bearer x"}))
        self.assertEqual(code, 503)
        self.assertIn("GATEWAY_API_KEY", body["error"])

    def test_tokens_single_use(self) -> None:
        """{"single_use": true} mints a token marked for one use; other bodies are refused with 400."""
        env = {"GATEWAY_API_KEY": "api-key", "GATEWAY_TOKEN_SECRET": "s" * 32}
        treq, _ = self.client(env)
        auth = {"Authorization": "Bearer api-key", "Content-Type": "application/json"}
        code, body = self.request(treq.post("http://gw/v1/tokens", headers=auth, data=b'{"single_use": true}'))
        self.assertEqual((code, body["single_use"]), (200, True))
        self.assertEqual(verify_token(b"s" * 32, body["token"], self.clock.seconds())["use"], "once")
        code, body = self.request(treq.post("http://gw/v1/tokens", headers=auth))
        self.assertEqual((code, body["single_use"]), (200, False))
        for bad in (b"nope", b"[]", b'{"single_use": "yes"}', b'{"ttl": 5}'):
            code, body = self.request(treq.post("http://gw/v1/tokens", headers=auth, data=bad))
            self.assertEqual(code, 400, bad)

    def test_no_tokens_while_draining(self) -> None:
        """While draining, minting answers 503 with a JSON error saying so."""
        treq, gateway = self.client({"GATEWAY_API_KEY": "api-key"})
        gateway.draining = True
        code, body = self.request(treq.post("http://gw/v1/tokens", headers={"Authorization": "Bearer api-key"}))
        self.assertEqual(code, 503)
        self.assertIn("draining", body["error"])
        self.assertNotIn("token", body)

    def test_readiness_counts_authenticated_calls(self) -> None:
        """Sockets still authenticating do not make the gateway full."""
        treq, gateway = self.client()
        for _ in range(gateway.config.max_calls + 5):
            call = gateway.new_call("client", "10.0.0.1")
            gateway.caller_upgraded(call)
        self.assertEqual(self.request(treq.get("http://gw/readyz")), (200, {"ready": True, "calls": 0}))
