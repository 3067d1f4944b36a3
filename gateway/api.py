"""
The HTTP side of the gateway's one port: the resource tree, the heartbeat and readiness checks.
The voice webhook (``/twilio/voice``, ``/twilio/handover``) lives in `gateway.twiml`, the browser
demo (``/demo/``) in `gateway.demopage`, the JSON and API-key helpers they share in
`gateway.http`, and the bounds on every request (body size and time, head size and time) in
`gateway.httplimits`.

``/twilio`` is a small dispatching resource (``WebSocketResource`` is a leaf, so on its own it
would swallow ``/twilio/voice``): the WebSocket upgrade at the exact path, HTTP children below.
"""

from __future__ import annotations

import json
import os
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.web import resource

from gateway.demopage import demo_resource
from gateway.http import bearer_refusal, json_response
from gateway.httplimits import HttpLimits, LimitedSite
from gateway.tokens import TOKEN_TTL_S, mint_token
from gateway.twiml import HandoverAction, VoiceWebhook

__all__ = ["make_site", "Calls", "Heartbeat", "Metrics", "Readiness", "Tokens", "TwilioResource",
           "WebSocketEndpoint"]


class Heartbeat(resource.Resource):
    """``GET /healthz``: 200 while the process is up; never depends on Deepgram."""

    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return json_response(request, 200, {"status": "ok", "pid": os.getpid()})


class Readiness(resource.Resource):
    """``GET /readyz``: 200 while accepting calls; 503 while draining or full (``max_calls``)."""

    isLeaf = True

    def __init__(self, gateway: Any) -> None:
        super().__init__()
        self.gateway = gateway

    def render_GET(self, request: Any) -> bytes:
        refusal = self.gateway.refuse_new_call()
        # Authenticated calls only: sockets still authenticating hold no slot.
        body = {"ready": refusal is None, "calls": self.gateway.live_calls}
        if refusal is not None:
            body["reason"] = refusal
        return json_response(request, 200 if refusal is None else 503, body)


class Tokens(resource.Resource):
    """
    ``POST /v1/tokens`` with ``Authorization: Bearer $GATEWAY_API_KEY``: 200
    ``{"token": ..., "expires_in": 300, "single_use": false}``; an optional JSON body
    ``{"single_use": true}`` mints a token that ``/client`` accepts once. 401 with a JSON error
    for a wrong key; 400 for a body that is not such an object; 503 naming the variable when
    ``GATEWAY_API_KEY`` is not set, and 503 while the gateway is draining (a token minted here
    would be refused by this process's ``/client`` anyway).
    """

    isLeaf = True

    def __init__(self, gateway: Any) -> None:
        super().__init__()
        self.gateway = gateway

    def render_POST(self, request: Any) -> bytes:
        config = self.gateway.config
        refused = bearer_refusal(request, config.gateway_api_key,
                                 "token minting is disabled: set GATEWAY_API_KEY on the gateway")
        if refused is not None:
            return refused
        if self.gateway.draining:
            request.setHeader(b"retry-after", b"1")
            return json_response(request, 503, {
                "error": "the gateway is draining (shutting down): mint tokens on another instance"})
        single_use, problem = _token_options(request)
        if problem is not None:
            return json_response(request, 400, {"error": problem})
        token = mint_token(config.token_secret, self.gateway.reactor.seconds(), single_use=single_use)
        return json_response(request, 200, {
            "token": token, "expires_in": TOKEN_TTL_S, "single_use": single_use})


class Calls(resource.Resource):
    """
    ``POST /v1/calls/<call_id>/handover`` with ``Authorization: Bearer $GATEWAY_API_KEY``: hand
    one live call to another process at its next quiet point (``?deadline_s=N``, default the
    handover's ``quiet_deadline_s``), as a drain does for every call. 202 ``{"call_id": ...,
    "status": "requested"}``; 404 for a call this process does not have; 409 for a call that
    cannot be handed over (not a Twilio stream started by this gateway's webhook); 503 when
    handover is off. Only the process the call is on knows it: address it directly, not
    through the proxy.
    """

    isLeaf = True

    def __init__(self, gateway: Any) -> None:
        super().__init__()
        self.gateway = gateway

    def render_POST(self, request: Any) -> bytes:
        refused = bearer_refusal(request, self.gateway.config.gateway_api_key,
                                 "the operator API is disabled: set GATEWAY_API_KEY on the gateway")
        if refused is not None:
            return refused
        parts = [p for p in request.postpath if p]
        if len(parts) != 2 or parts[1] != b"handover":
            return json_response(request, 404, {"error": "expected POST /v1/calls/<call_id>/handover"})
        call_id = parts[0].decode("utf-8", "replace")
        handover = self.gateway.handover
        if handover is None:
            return json_response(request, 503, {"error": "handover is off ([handover] enabled = false)"})
        call = next((c for c in self.gateway.calls if c.info.call_id == call_id), None)
        if call is None or call.is_closed:
            return json_response(request, 404, {"error": f"no live call {call_id!r} on this process"})
        stage = getattr(call, "_stages", {}).get("handover")
        if stage is None or not stage.can_hand_over:
            return json_response(request, 409, {
                "error": "this call cannot be handed over: a Twilio stream not started by this "
                         "gateway's voice webhook (no <Connect action>), or a /client whose hello "
                         "did not say \"handover\": true"})
        deadline = handover.options.quiet_deadline_s
        raw = request.args.get(b"deadline_s")
        if raw:
            try:
                deadline = max(0.0, min(float(raw[0]), 3600.0))
            except ValueError:
                return json_response(request, 400, {"error": "deadline_s must be a number of seconds"})
        call.request_handover(deadline, reason="operator")
        return json_response(request, 202, {"call_id": call_id, "status": "requested", "deadline_s": deadline})


def _token_options(request: Any) -> tuple[bool, str | None]:
    """``single_use`` from the optional JSON body of ``POST /v1/tokens``, or a problem."""
    request.content.seek(0)
    body = request.content.read()
    if not body.strip():
        return False, None
    try:
        options = json.loads(body)
    except (ValueError, RecursionError):
        return False, "the body must be empty or a JSON object such as {\"single_use\": true}"
    if not isinstance(options, dict) or set(options) - {"single_use"}:
        return False, "the body may only hold {\"single_use\": true|false}"
    single_use = options.get("single_use", False)
    if not isinstance(single_use, bool):
        return False, "single_use must be true or false"
    return single_use, None


class Metrics(resource.Resource):
    """``GET /metrics``: the Prometheus text format, rendered on the reactor thread."""

    isLeaf = True

    def __init__(self, gateway: Any) -> None:
        super().__init__()
        self.gateway = gateway

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(self.gateway.metrics.registry)


class TwilioResource(resource.Resource):
    """``/twilio``: the Media Streams WebSocket at the exact path; HTTP children below it."""

    def __init__(self, websocket: Any) -> None:
        super().__init__()
        self.websocket = websocket

    def render(self, request: Any) -> Any:
        return self.websocket.render(request)


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
        upgraded = getattr(channel, "upgraded", None)
        if upgraded is not None:
            upgraded()
        else:
            channel.setTimeout(None)
        return self.websocket.render(request)


def make_site(gateway: Any, twilio_factory: Any, client_factory: Any,
              limits: HttpLimits = HttpLimits()) -> LimitedSite:
    """The whole resource tree of the gateway's port, every request under ``limits``."""
    root = resource.Resource()
    twilio = TwilioResource(WebSocketEndpoint(twilio_factory))
    twilio.putChild(b"voice", VoiceWebhook(gateway))
    twilio.putChild(b"handover", HandoverAction(gateway))
    root.putChild(b"twilio", twilio)
    root.putChild(b"client", WebSocketEndpoint(client_factory))
    root.putChild(b"healthz", Heartbeat())
    root.putChild(b"readyz", Readiness(gateway))
    root.putChild(b"metrics", Metrics(gateway))
    v1 = resource.Resource()
    v1.putChild(b"tokens", Tokens(gateway))
    v1.putChild(b"calls", Calls(gateway))
    root.putChild(b"v1", v1)
    if gateway.config.demo:
        # The browser demo and its credential-free token endpoint exist only while enabled.
        root.putChild(b"demo", demo_resource(gateway))
    return LimitedSite(root, limits, reactor=gateway.reactor)
