"""
The HTTP side of the gateway's one port: the resource tree, the heartbeat and readiness checks.
The voice webhook (``/twilio/voice``) and the browser demo (``/demo/``) live in `gateway.twiml`.

``/twilio`` is a small dispatching resource (``WebSocketResource`` is a leaf, so on its own it
would swallow ``/twilio/voice``): the WebSocket upgrade at the exact path, HTTP children below.
"""

from __future__ import annotations

import hmac
import json
import os
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from twisted.web import http, resource, server

__all__ = ["make_site", "Heartbeat", "Readiness", "Tokens", "TwilioResource", "json_response"]


def json_response(request: Any, status: int, body: dict) -> bytes:
    """Set ``status`` and a JSON content type on ``request``; return the encoded ``body``."""
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(body).encode()


class Heartbeat(resource.Resource):
    """``GET /healthz``: 200 while the process is up; never depends on Deepgram."""

    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return json_response(request, 200, {"status": "ok", "pid": os.getpid()})


class Readiness(resource.Resource):
    """``GET /readyz``: 200 while accepting calls; 503 while draining (or full)."""

    isLeaf = True

    def __init__(self, gateway: Any) -> None:
        super().__init__()
        self.gateway = gateway

    def render_GET(self, request: Any) -> bytes:
        refusal = self.gateway.refuse_new_call()
        body = {"ready": refusal is None, "calls": len(self.gateway.calls)}
        if refusal is not None:
            body["reason"] = refusal
        return json_response(request, 200 if refusal is None else 503, body)


class Tokens(resource.Resource):
    """
    ``POST /v1/tokens`` with ``Authorization: Bearer $GATEWAY_API_KEY``: 200
    ``{"token": ..., "expires_in": 300}``; 401 with a JSON error otherwise; 503 naming the
    variable when ``GATEWAY_API_KEY`` is not set.
    """

    isLeaf = True

    def __init__(self, gateway: Any) -> None:
        super().__init__()
        self.gateway = gateway

    def render_POST(self, request: Any) -> bytes:
        from gateway.tokens import TOKEN_TTL_S, mint_token

        config = self.gateway.config
        if not config.gateway_api_key:
            return json_response(request, 503, {
                "error": "token minting is disabled: set GATEWAY_API_KEY on the gateway"})
        header = (request.getHeader(b"authorization") or b"").decode("latin-1")
        scheme, _, given = header.partition(" ")
        expected = config.gateway_api_key.encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
            request.setHeader(b"www-authenticate", b'Bearer realm="gateway"')
            return json_response(request, 401, {
                "error": "missing or invalid Authorization: Bearer <GATEWAY_API_KEY>"})
        token = mint_token(config.token_secret, self.gateway.reactor.seconds())
        return json_response(request, 200, {"token": token, "expires_in": TOKEN_TTL_S})


class Metrics(resource.Resource):
    """``GET /metrics``: the Prometheus text format, rendered on the reactor thread."""

    isLeaf = True

    def __init__(self, gateway: Any) -> None:
        super().__init__()
        self.gateway = gateway

    def render_GET(self, request: Any) -> bytes:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(self.gateway.metrics.registry)


class TwilioResource(resource.Resource):
    """``/twilio``: the Media Streams WebSocket at the exact path; HTTP children below it."""

    def __init__(self, websocket: Any) -> None:
        super().__init__()
        self.websocket = websocket

    def render(self, request: Any) -> Any:
        return self.websocket.render(request)


class _BoundedChannel(http.HTTPChannel):
    """
    An HTTP channel whose request headers must be complete within ``header_timeout_s``.

    twisted.web already bounds their size (16 KiB, 500 headers); a client sending them one byte
    at a time would otherwise hold the connection for the idle timeout, restarted by every byte.
    """

    header_timeout_s = 10.0
    _header_deadline: Any = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self._header_deadline = self.callLater(self.header_timeout_s, self._headers_too_slow)

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if self.transport is not None:
            self.transport.abortConnection()

    def allHeadersReceived(self) -> None:
        self.cancel_header_deadline()
        super().allHeadersReceived()

    def cancel_header_deadline(self) -> None:
        if self._header_deadline is not None and self._header_deadline.active():
            self._header_deadline.cancel()
        self._header_deadline = None

    def connectionLost(self, reason: Any) -> None:
        self.cancel_header_deadline()
        super().connectionLost(reason)


class WebSocketEndpoint(resource.Resource):
    """
    A WebSocket upgrade at exactly this path. Before Autobahn takes the connection over, the HTTP
    channel's timers are stopped: it never sees the connection again, so its idle timeout would
    otherwise stay scheduled for the life of the process.
    """

    isLeaf = True

    def __init__(self, factory: Any) -> None:
        super().__init__()
        self.websocket = WebSocketResource(factory)

    def render(self, request: Any) -> Any:
        channel = request.channel
        channel.setTimeout(None)
        if isinstance(channel, _BoundedChannel):
            channel.cancel_header_deadline()
        return self.websocket.render(request)


class _Site(server.Site):
    noisy = False
    protocol = _BoundedChannel

    def log(self, request: Any) -> None:
        """No access log line per request (the WebSocket calls log their own lines)."""


def make_site(gateway: Any, twilio_factory: Any, client_factory: Any,
              header_timeout_s: float = 10.0, idle_timeout_s: float = 60.0) -> server.Site:
    """The whole resource tree of the gateway's port."""
    from gateway.twiml import VoiceWebhook, demo_resource

    root = resource.Resource()
    twilio = TwilioResource(WebSocketEndpoint(twilio_factory))
    twilio.putChild(b"voice", VoiceWebhook(gateway))
    root.putChild(b"twilio", twilio)
    root.putChild(b"client", WebSocketEndpoint(client_factory))
    root.putChild(b"healthz", Heartbeat())
    root.putChild(b"readyz", Readiness(gateway))
    root.putChild(b"metrics", Metrics(gateway))
    v1 = resource.Resource()
    v1.putChild(b"tokens", Tokens(gateway))
    root.putChild(b"v1", v1)
    if gateway.config.demo:
        # The browser demo and its credential-free token endpoint exist only while enabled.
        root.putChild(b"demo", demo_resource(gateway))
    site = _Site(root, timeout=idle_timeout_s)
    site.protocol = type("BoundedChannel", (_BoundedChannel,), {"header_timeout_s": header_timeout_s})
    return site
