"""
How Twilio calls arrive: the voice webhook (``POST /twilio/voice``) and the TwiML it answers.

The phone number's voice webhook points here. The request is checked against
``X-Twilio-Signature`` over the *public* webhook URL (``GATEWAY_PUBLIC_URL`` + ``/twilio/voice``,
plus the query string if Twilio was given one) and the POST form parameters, exactly as Twilio's
``RequestValidator`` does; never over the request's ``Host`` header. A valid request gets::

    <?xml version="1.0" encoding="UTF-8"?>
    <Response>
      <Connect>
        <Stream url="wss://PUBLIC/twilio">
          <Parameter name="From" value="..."/>   (the [twiml] forward fields, when present)
          <Parameter name="..." value="..."/>    (the [twiml] parameters)
          <Parameter name="gateway_stream_token" value="..."/>  (with require_stream_token)
        </Stream>
      </Connect>
      ...                                        ([twiml] after_connect)
    </Response>

The TwiML is built with ``xml.etree`` so every value is escaped. A bad or missing signature gets a
bare 403; a gateway without a public URL answers 503 naming ``GATEWAY_PUBLIC_URL``.

With ``[gateway] require_stream_token``, the TwiML also carries a stream token
(`gateway.tokens.mint_stream_token`): signed with ``GATEWAY_TOKEN_SECRET``, valid for
``stream_token_ttl_s``, bound to the request's ``CallSid`` and accepted once, so that a stream
upgrade with a captured (and, in Twilio's scheme, per-URL constant) signature but no fresh token is
refused by the auth stage. TwiML written by hand (a TwiML Bin) has no such token: leave the option
off there.

Also here: ``POST /twilio/handover``, Twilio's ``<Connect action>`` request when a stream ends
(`HandoverAction`). The browser demo's resources are in `gateway.demopage`.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any, Mapping, Sequence
from urllib.parse import parse_qs

from twisted.logger import Logger
from twisted.web import resource
from twisted.web.server import NOT_DONE_YET

from gateway.codecs.signatures import validate_signature
from gateway.config import TWIML_PARAMETER_MAX_CHARS
from gateway.handover import HANDOVER_PARAMETER, RESUME_PARAMETER
from gateway.http import json_response
from gateway.tokens import STREAM_TOKEN_PARAMETER, mint_resume_token, mint_stream_token

__all__ = [
    "build_twiml",
    "continuation",
    "handover_url",
    "webhook_url",
    "HandoverAction",
    "VoiceWebhook",
]

_FORM = b"application/x-www-form-urlencoded"


def webhook_url(public_url: str) -> str:
    """The URL Twilio requests (and signs) for the voice webhook."""
    return public_url.rstrip("/") + "/twilio/voice"


def build_twiml(
    stream_url: str,
    parameters: Sequence[tuple[str, str]] = (),
    after_connect: str = "",
    action: str | None = None,
) -> bytes:
    """
    The TwiML document: ``<Connect><Stream url=stream_url>`` with one ``<Parameter>`` per
    ``(name, value)`` in order, then the elements of the ``after_connect`` fragment (well-formed
    TwiML, checked when the configuration was loaded). With ``action``, ``<Connect action=...>``:
    when the stream ends Twilio requests that URL and runs what it answers instead of the verbs
    after ``<Connect>`` (so ``after_connect`` is answered there: `continuation`).
    """
    response = ET.Element("Response")
    connect = ET.SubElement(response, "Connect", {"action": action} if action else {})
    stream = ET.SubElement(connect, "Stream", {"url": stream_url})
    for name, value in parameters:
        ET.SubElement(stream, "Parameter", {"name": name, "value": value})
    if after_connect and not action:
        response.extend(list(ET.fromstring(f"<Response>{after_connect}</Response>")))
    return _document(response)


def continuation(after_connect: str) -> bytes:
    """What follows a stream that ended for good: ``after_connect``, or a hang-up."""
    response = ET.fromstring(f"<Response>{after_connect or '<Hangup/>'}</Response>")
    return _document(response)


def _document(response: Any) -> bytes:
    body = ET.tostring(response, encoding="unicode", short_empty_elements=True)
    return ('<?xml version="1.0" encoding="UTF-8"?>' + body).encode("utf-8")


def handover_url(public_url: str) -> str:
    """The ``<Connect action>`` URL Twilio requests (and signs) when a stream ends."""
    return public_url.rstrip("/") + "/twilio/handover"


def _form(request: Any) -> dict[str, list[str]]:
    """The POST body's form parameters (never the query string: Twilio signs those apart)."""
    content_type = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    if content_type and content_type != _FORM:
        return {}
    request.content.seek(0)
    body = request.content.read().decode("utf-8", errors="replace")
    return parse_qs(body, keep_blank_values=True)


class VoiceWebhook(resource.Resource):
    """``POST /twilio/voice`` (``GET`` too, as Twilio may be told to use it): answers TwiML."""

    isLeaf = True
    log = Logger()

    def __init__(self, gateway: Any) -> None:
        super().__init__()
        self.gateway = gateway

    def render_POST(self, request: Any) -> bytes:
        return self._answer(request, _form(request))

    def render_GET(self, request: Any) -> bytes:
        # A GET webhook signs the URL alone; its fields are in the query string.
        return self._answer(request, {}, query_fields=True)

    def render(self, request: Any) -> bytes:
        # twisted.web answers methods outside GET/HEAD/POST with 501 "Huh?"; a method the
        # webhook does not take is a 405 with Allow (RFC 9110 15.5.6), as the README says.
        if request.method not in (b"GET", b"HEAD", b"POST"):
            request.setHeader(b"allow", b"GET, HEAD, POST")
            return json_response(request, 405, {
                "error": "method_not_allowed",
                "message": f"{request.method.decode('latin-1')} is not allowed here: "
                           "the voice webhook takes POST (or GET)",
            })
        return super().render(request)

    def _answer(self, request: Any, form: Mapping[str, list[str]], query_fields: bool = False) -> bytes:
        config = self.gateway.config
        if not config.public_url or not config.stream_url:
            self.log.error(
                "voice webhook refused: no public URL, so no <Stream url>; set GATEWAY_PUBLIC_URL "
                "(or [gateway] public_url) to the https:// address Twilio reaches",
                log_category="TWILIO_WEBHOOK_NO_PUBLIC_URL",
            )
            return json_response(request, 503, {
                "error": "the gateway has no public URL: set GATEWAY_PUBLIC_URL to the "
                         "https://host[:port][/prefix] that Twilio reaches"})
        _, _, query = request.uri.partition(b"?")
        refused = _refuse_unsigned(request, config, webhook_url(config.public_url), form, self.log,
                                   "voice webhook")
        if refused is not None:
            return refused
        fields = form
        if query_fields:
            fields = parse_qs(query.decode("utf-8", errors="replace"), keep_blank_values=True)
        parameters = []
        for name in config.twiml_forward:
            values = fields.get(name)
            if not values:
                continue
            value = values[0]
            if len(name) + len(value) >= TWIML_PARAMETER_MAX_CHARS:
                self.log.warn("voice webhook: {name} not forwarded: longer than Twilio's "
                              "parameter limit", name=name,
                              log_category="TWILIO_WEBHOOK_PARAMETER_TOO_LONG")
                continue
            parameters.append((name, value))
        parameters.extend(config.twiml_parameters.items())
        if config.require_stream_token:
            call_sid = (fields.get("CallSid") or [""])[0]
            if not call_sid:
                self.log.warn("voice webhook: no CallSid in the request; its stream token will not "
                              "match any stream", log_category="TWILIO_WEBHOOK_NO_CALL_SID")
            parameters.append((STREAM_TOKEN_PARAMETER, mint_stream_token(
                config.token_secret, self.gateway.reactor.seconds(), call_sid, config.stream_token_ttl_s)))
        action = None
        if self.gateway.handover_enabled:
            # Twilio comes back to /twilio/handover when the stream ends: a draining process
            # can then hand the call to a healthy one (plugins/handover.py).
            action = handover_url(config.public_url)
            parameters.append((HANDOVER_PARAMETER, "1"))
        return _twiml(request, build_twiml(config.stream_url, parameters, config.twiml_after_connect, action))


def _twiml(request: Any, body: bytes) -> bytes:
    request.setResponseCode(200)
    request.setHeader(b"content-type", b"text/xml; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    return body


def _refuse_unsigned(request: Any, config: Any, url: str, form: Mapping[str, list[str]], log: Logger,
                     what: str) -> bytes | None:
    """The 403 answer to a request without a valid X-Twilio-Signature (None: signed, or no token)."""
    _, _, query = request.uri.partition(b"?")
    if query:
        url += "?" + query.decode("utf-8", errors="replace")
    token = config.twilio_auth_token
    if token is None:
        return None
    signature = (request.getHeader(b"x-twilio-signature") or b"").decode("latin-1").strip()
    if validate_signature(token, url, signature, form):
        return None
    log.warn("{what} refused (403): X-Twilio-Signature {problem} for {url}", what=what,
             problem="does not match" if signature else "missing", url=url,
             log_category="TWILIO_SIGNATURE_REFUSED")
    request.setResponseCode(403)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    return b"Forbidden\n"


class HandoverAction(resource.Resource):
    """
    ``POST /twilio/handover``: Twilio's ``<Connect action>`` request when a stream has ended.

    If the stream's process handed the call over (a record for its ``CallSid`` waits in the
    handover store), the answer is a new ``<Connect><Stream>`` to this gateway (any healthy
    process behind the proxy takes it) carrying a signed, short-lived resume token; otherwise the
    call's own continuation (``[twiml] after_connect``, or a hang-up).
    """

    isLeaf = True
    log = Logger()

    def __init__(self, gateway: Any) -> None:
        super().__init__()
        self.gateway = gateway

    def render_POST(self, request: Any) -> Any:
        config = self.gateway.config
        form = _form(request)
        if not config.public_url or not config.stream_url:
            return json_response(request, 503, {"error": "the gateway has no public URL"})
        refused = _refuse_unsigned(request, config, handover_url(config.public_url), form, self.log,
                                   "handover action")
        if refused is not None:
            return refused
        call_sid = (form.get("CallSid") or [""])[0]
        handover = self.gateway.handover
        if handover is None or not call_sid:
            return _twiml(request, continuation(config.twiml_after_connect))
        d = handover.get_store().exists(call_sid)

        def answer(waiting: bool) -> None:
            if waiting:
                body = self._resume(call_sid)
                self.log.info("handover action: call {call_sid} goes on in a new stream",
                              call_sid=call_sid)
            else:
                body = continuation(config.twiml_after_connect)
            request.write(_twiml(request, body))
            request.finish()

        def failed(failure: Any) -> None:
            self.log.error("handover action: the store failed ({why}); answering the call's "
                           "continuation", why=failure.getErrorMessage(),
                           log_category="HANDOVER_ACTION_STORE_FAILED")
            request.write(_twiml(request, continuation(config.twiml_after_connect)))
            request.finish()

        d.addCallbacks(answer, failed)
        return NOT_DONE_YET

    def _resume(self, call_sid: str) -> bytes:
        config = self.gateway.config
        now = self.gateway.reactor.seconds()
        ttl = self.gateway.handover.options.resume_ttl_s
        parameters = [(HANDOVER_PARAMETER, "1"),
                      (RESUME_PARAMETER, mint_resume_token(config.token_secret, now, call_sid, ttl))]
        if config.require_stream_token:
            parameters.append((STREAM_TOKEN_PARAMETER, mint_stream_token(
                config.token_secret, now, call_sid, config.stream_token_ttl_s)))
        return build_twiml(config.stream_url, parameters, action=handover_url(config.public_url))
