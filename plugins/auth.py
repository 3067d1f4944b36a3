"""
auth: no unauthenticated stream reaches Deepgram.

- Twilio (``/twilio``): when ``TWILIO_AUTH_TOKEN`` is set, the upgrade's ``X-Twilio-Signature``
  must be Twilio's signature of the public ``wss://`` stream URL (derived from
  ``GATEWAY_PUBLIC_URL``, never from the Host header); otherwise HTTP 403. Optionally
  (``token_parameter``) a gateway token must also arrive in ``start.customParameters``.
- Raw-audio clients (``/client``): the first message must be ``{"token": "..."}`` within
  ``client_timeout_s``; otherwise a JSON error and a close with 4001 ``AUTH_TIMEOUT``, 4002
  ``INVALID_AUTH`` or 4003 ``AUTH_FAILED``.

The stage lets `StreamStarted` through only once the stream is authenticated; the settings stage
opens the Deepgram leg on seeing it, so nothing unauthenticated ever opens one.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.plugin import IPlugin
from zope.interface import implementer

from gateway.codecs.formats import LINEAR16_16K
from gateway.codecs.signatures import validate_signature
from gateway.config import GatewayConfig, Section
from gateway.diagnostics import Diagnosis
from gateway.errors import AuthError
from gateway.events import CallerError, ClientHello, Handshake, HandshakeRefused, StreamStarted
from gateway.plugin import IStreamPlugin, Routes, StageContext, cancel
from gateway.redact import remember_secret
from gateway.tokens import verify_token

__all__ = ["plugin", "AuthOptions", "AuthStage"]


@attrs.frozen
class AuthOptions:
    """``[auth]``: ``token_parameter`` (a customParameters name, "" = off), ``client_timeout_s``."""

    token_parameter: str
    client_timeout_s: float
    twilio_auth_token: str | None = attrs.field(repr=False)
    stream_url: str | None
    token_secret: bytes = attrs.field(repr=False)


@attrs.define
class AuthStage:
    """The per-call auth stage."""

    ctx: StageContext
    options: AuthOptions
    _timer: Any = None
    _done: bool = False

    def routes(self) -> Routes:
        return Routes(
            inbound={
                Handshake: self.on_handshake,
                ClientHello: self.on_hello,
                StreamStarted: self.on_start,
            }
        )

    def on_handshake(self, event: Handshake) -> Any:
        if event.leg == "client":
            self._timer = self.ctx.clock.callLater(self.options.client_timeout_s, self._timed_out)
            return event
        token = self.options.twilio_auth_token
        if token is None:
            return event
        assert self.options.stream_url is not None
        signature = event.headers.get("x-twilio-signature", "")
        remember_secret(signature)  # masked by value wherever it may be logged later
        if not validate_signature(token, self.options.stream_url, signature):
            self.ctx.count("auth_failures", reason="bad_signature" if signature else "no_signature")
            return HandshakeRefused(
                403,
                "AUTH_FAILED",
                "X-Twilio-Signature missing" if not signature else "X-Twilio-Signature does not match",
            )
        return event

    def on_hello(self, event: ClientHello) -> Any:
        self._cancel()
        if self._done:
            return None
        self._done = True
        if event.problem is not None:
            self._fail("INVALID_AUTH", event.problem)
            return None
        try:
            verify_token(self.options.token_secret, event.token, self.ctx.clock.seconds())
        except AuthError as e:
            self._fail("AUTH_FAILED", e.message)
            return None
        return StreamStarted(
            stream_sid=self.ctx.call.call_id,
            media_format=LINEAR16_16K,
            custom_parameters=event.parameters,
        )

    def on_start(self, event: StreamStarted) -> Any:
        name = self.options.token_parameter
        if not name or self.ctx.call.leg != "twilio":
            return event
        try:
            token = event.custom_parameters.get(name)
            if token is None:
                raise AuthError("AUTH_FAILED", f"no {name!r} in start.customParameters")
            verify_token(self.options.token_secret, token, self.ctx.clock.seconds())
        except AuthError as e:
            self._fail("AUTH_FAILED", e.message)
            return None
        return event

    def _timed_out(self) -> None:
        self._timer = None
        if not self._done:
            self._done = True
            self._fail("AUTH_TIMEOUT", f"no token within {self.options.client_timeout_s:g} s")

    def _fail(self, code: str, detail: str) -> None:
        self.ctx.count("auth_failures", reason=code.lower())
        self.ctx.log.warn("authentication failed: {code} ({detail})", code=code, detail=detail)
        public = {
            "AUTH_TIMEOUT": "no {\"token\": ...} message in time",
            "INVALID_AUTH": "the first message must be {\"token\": \"...\"}",
            "AUTH_FAILED": "the token is invalid or expired",
        }[code]
        self.ctx.emit_outbound(CallerError(code, public))
        self.ctx.end_call(Diagnosis(code, leg="caller", phase=self.ctx.call.phase))

    def _cancel(self) -> None:
        cancel(self._timer)
        self._timer = None

    def close(self) -> None:
        self._cancel()


@implementer(IPlugin, IStreamPlugin)
@attrs.frozen
class AuthPlugin:
    """The auth plugin."""

    name: str = "auth"

    def configure(self, section: Section, gateway: GatewayConfig) -> Any:
        options = AuthOptions(
            token_parameter=section.str("token_parameter", ""),
            client_timeout_s=section.float("client_timeout_s", 10.0, minimum=0.1),
            twilio_auth_token=gateway.twilio_auth_token,
            stream_url=gateway.stream_url,
            token_secret=gateway.token_secret,
        )
        return lambda ctx: AuthStage(ctx, options)


plugin = AuthPlugin()
