"""
auth: no unauthenticated stream reaches Deepgram, and none holds a call slot.

- Twilio (``/twilio``): when ``TWILIO_AUTH_TOKEN`` is set, the upgrade's ``X-Twilio-Signature``
  must be Twilio's signature of the public ``wss://`` stream URL (derived from
  ``GATEWAY_PUBLIC_URL``, never from the Host header); otherwise HTTP 403. Twilio's signature
  covers only that URL, so it is the same for every stream and a captured one can be replayed:
  with ``[gateway] require_stream_token`` the stream must also carry, in ``start``'s
  ``customParameters``, the stream token the voice webhook put in its TwiML
  (`gateway.tokens.STREAM_TOKEN_PARAMETER`): signed, short-lived, bound to the ``CallSid`` and
  accepted once. Optionally (``token_parameter``) a client token must arrive there too.
- Raw-audio clients (``/client``): the first message must be ``{"token": "..."}`` within
  ``client_timeout_s``; otherwise a JSON error and a close with 4001 ``AUTH_TIMEOUT``, 4002
  ``INVALID_AUTH`` or 4003 ``AUTH_FAILED``. A token minted single-use (``"use": "once"``), or
  every token when ``single_use_tokens`` is on, is accepted once by this process. The token may
  instead be the resume token of a ``Handover`` message (a call handed over by a draining
  process, plugins/handover.py): signed by the gateway, it authenticates the new socket in place
  of a client token, is accepted once (by this process's memory, and everywhere by the handover
  store, whose record the handover stage takes once) and is passed to the handover stage as the
  ``gateway_resume`` parameter, the hello's own parameters ignored (the call's are restored).
  ``"handover": true`` in a hello becomes the ``gateway_handover`` parameter that marks a call
  a draining process may hand over, as the voice webhook's ``<Parameter>`` does for Twilio.

A stream is authenticated at the signature (Twilio, when nothing is required in ``start``), at
``start`` (Twilio, when a token is required there) or at the hello (``/client``). Only then does
the stage ask the gateway's admission for a call slot (`with_admission`); refused (draining, or
``max_calls`` held), the call ends before anything opens. The stage lets `StreamStarted` through
only once the stream is authenticated and admitted; the settings stage opens the Deepgram leg on
seeing it, so nothing unauthenticated ever opens one.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.plugin import IPlugin
from zope.interface import implementer

from gateway.admission import AUTH_TIMEOUT_MESSAGE, REFUSAL_DIAGNOSES
from gateway.codecs.formats import LINEAR16_16K
from gateway.codecs.signatures import validate_signature
from gateway.config import GatewayConfig
from gateway.section import Section
from gateway.diagnostics import Diagnosis
from gateway.errors import AuthError
from gateway.events import CallerError, ClientHello, Handshake, StreamStarted
from gateway.handover import HANDOVER_PARAMETER, RESUME_PARAMETER
from gateway.plugin import IStreamPlugin, Routes, StageContext, cancel
from gateway.redact import remember_secret
from gateway.tokens import (
    STREAM_TOKEN_PARAMETER,
    UsedTokens,
    verify_hello_token,
    verify_stream_token,
    verify_token,
)

__all__ = ["plugin", "AuthOptions", "AuthStage", "AuthFactory"]

_PUBLIC_ERRORS = {
    "AUTH_TIMEOUT": AUTH_TIMEOUT_MESSAGE,
    "INVALID_AUTH": "the first message must be {\"token\": \"...\"}",
    "AUTH_FAILED": "the token is invalid or expired",
}

_REFUSAL_MESSAGES = {
    "draining": "the gateway is shutting down: connect again",
    "full": "the gateway is at capacity (max_calls): try again later",
}


@attrs.frozen
class AuthOptions:
    """
    ``[auth]``: ``token_parameter`` (a customParameters name, "" = off), ``client_timeout_s``,
    ``single_use_tokens``; from ``[gateway]``: ``require_stream_token``.
    """

    token_parameter: str
    client_timeout_s: float
    twilio_auth_token: str | None = attrs.field(repr=False)
    stream_url: str | None
    token_secret: bytes = attrs.field(repr=False)
    single_use_tokens: bool = False
    require_stream_token: bool = False

    def twilio_at_start(self) -> bool:
        """Whether a Twilio stream authenticates at ``start`` rather than at its upgrade."""
        return bool(self.token_parameter) or self.require_stream_token


@attrs.define
class AuthStage:
    """The per-call auth stage."""

    ctx: StageContext
    options: AuthOptions
    used: UsedTokens = attrs.field(factory=UsedTokens)
    #: The gateway's `gateway.admission.Admission` (None: every authenticated call is admitted).
    admission: Any = None
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
        if token is not None:
            assert self.options.stream_url is not None
            signature = event.headers.get("x-twilio-signature", "")
            remember_secret(signature)  # masked by value wherever it may be logged later
            if not validate_signature(token, self.options.stream_url, signature):
                self.ctx.count("auth_failures", reason="bad_signature" if signature else "no_signature")
                self.ctx.refuse(
                    403,
                    "AUTH_FAILED",
                    "X-Twilio-Signature missing" if not signature else "X-Twilio-Signature does not match",
                )
                return None
        if self.options.twilio_at_start():
            return event
        # Authenticated by the signature (or unchecked): a slot now, or a 503 on the upgrade.
        refusal = self._admit()
        if refusal is not None:
            self.ctx.refuse(503, REFUSAL_DIAGNOSES.get(refusal, "DRAINED"),
                            f"no call slot on the upgrade: {refusal}")
            return None
        return event

    def on_hello(self, event: ClientHello) -> Any:
        self._cancel()
        if self._done:
            return None
        self._done = True
        if event.problem is not None:
            self._fail("INVALID_AUTH", event.problem)
            return None
        now = self.ctx.clock.seconds()
        try:
            claims = verify_hello_token(self.options.token_secret, event.token, now)
            resuming = claims.get("typ") == "resume"
            self._use_once(claims, now, resuming or self.options.single_use_tokens
                           or claims.get("use") == "once")
        except AuthError as e:
            self._fail("AUTH_FAILED", e.message)
            return None
        if not self._admitted():
            return None
        if resuming:
            # A call handed over: the handover stage takes its record and restores its parameters.
            parameters = {RESUME_PARAMETER: event.token}
        else:
            parameters = dict(event.parameters)
            parameters.pop(RESUME_PARAMETER, None)  # only a resume token in the hello resumes
            if event.handover:
                parameters[HANDOVER_PARAMETER] = "1"
        return StreamStarted(
            stream_sid=self.ctx.call.call_id,
            media_format=LINEAR16_16K,
            custom_parameters=parameters,
        )

    def on_start(self, event: StreamStarted) -> Any:
        if self.ctx.call.leg != "twilio":
            return event
        parameters = dict(event.custom_parameters)
        stream_token = parameters.pop(STREAM_TOKEN_PARAMETER, None)
        if stream_token is not None:
            # Never passed on: no stage and no log line needs it.
            self.ctx.call.custom_parameters.pop(STREAM_TOKEN_PARAMETER, None)
            event = attrs.evolve(event, custom_parameters=parameters)
        if not self.options.twilio_at_start():
            return event
        # (A second start on one stream never gets here: the leg rejects it.)
        now = self.ctx.clock.seconds()
        try:
            if self.options.require_stream_token:
                if stream_token is None:
                    raise AuthError("AUTH_FAILED", f"no {STREAM_TOKEN_PARAMETER!r} in start.customParameters "
                                                   "(a replayed signature, or TwiML not from the voice webhook)")
                claims = verify_stream_token(self.options.token_secret, stream_token, now, event.call_sid)
                self._use_once(claims, now, True)
            name = self.options.token_parameter
            if name:
                token = parameters.get(name)
                if token is None:
                    raise AuthError("AUTH_FAILED", f"no {name!r} in start.customParameters")
                claims = verify_token(self.options.token_secret, token, now)
                self._use_once(claims, now, self.options.single_use_tokens or claims.get("use") == "once")
        except AuthError as e:
            self._fail("AUTH_FAILED", e.message)
            return None
        if not self._admitted():
            return None
        return event

    def _use_once(self, claims: dict, now: float, single_use: bool) -> None:
        if single_use and not self.used.claim(claims, now):
            raise AuthError("AUTH_FAILED", "the single-use token was already used")

    def _admit(self) -> str | None:
        if self.admission is None:
            return None
        return self.admission.authenticate(self.ctx.call.call_id)

    def _admitted(self) -> bool:
        """Take a call slot; when refused, tell the caller and end the call."""
        refusal = self._admit()
        if refusal is None:
            return True
        if refusal in REFUSAL_DIAGNOSES:
            code = REFUSAL_DIAGNOSES[refusal]
            self.ctx.log.warn("authenticated, but no call slot: {refusal}", refusal=refusal,
                              log_category="AUTH_NO_CALL_SLOT")
            self.ctx.emit_outbound(CallerError(code, _REFUSAL_MESSAGES[refusal]))
            self.ctx.end_call(Diagnosis(code, leg="gateway", phase=self.ctx.call.phase))
        # "closed": admission already ended the call.
        return False

    def _timed_out(self) -> None:
        self._timer = None
        if not self._done:
            self._done = True
            self._fail("AUTH_TIMEOUT", f"no token within {self.options.client_timeout_s:g} s")

    def _fail(self, code: str, detail: str) -> None:
        self.ctx.count("auth_failures", reason=code.lower())
        self.ctx.log.warn("authentication failed: {code} ({detail})", code=code, detail=detail,
                          log_category="AUTH_REFUSED")
        self.ctx.emit_outbound(CallerError(code, _PUBLIC_ERRORS[code]))
        self.ctx.end_call(Diagnosis(code, leg="caller", phase=self.ctx.call.phase))

    def _cancel(self) -> None:
        cancel(self._timer)
        self._timer = None

    def close(self) -> None:
        self._cancel()


@attrs.frozen
class AuthFactory:
    """
    Makes one `AuthStage` per call. The single-use memory (`UsedTokens`) is shared by every call
    of the process; `with_admission` binds a gateway's admission (the gateway does it).
    """

    options: AuthOptions
    used: UsedTokens = attrs.field(factory=UsedTokens, eq=False)
    admission: Any = attrs.field(default=None, eq=False)

    def __call__(self, ctx: StageContext) -> AuthStage:
        return AuthStage(ctx, self.options, self.used, self.admission)

    def with_admission(self, admission: Any) -> AuthFactory:
        """This factory, its stages reporting authentication to ``admission``."""
        return attrs.evolve(self, admission=admission)


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
            single_use_tokens=section.bool("single_use_tokens", False),
            require_stream_token=gateway.require_stream_token,
        )
        return AuthFactory(options)


plugin = AuthPlugin()
