"""
Tests for the auth plugin (client tokens and their timeout, Twilio's signature, a token in
``start``), each driven through a recording context and a Clock.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.codecs.formats import LINEAR16_16K
from gateway.codecs.signatures import compute_signature
from gateway.events import CallerError, ClientHello, Handshake, StreamStarted
from gateway.testing import RecordingContext, call_info
from gateway.tokens import mint_token
from tests.stages import stage_for


class AuthStageTests(SynchronousTestCase):
    """auth."""

    def client(self) -> tuple:
        ctx = RecordingContext(call=call_info(leg="client", caller_format=LINEAR16_16K))
        stage, config = stage_for("auth", ctx)
        routes = stage.routes().inbound
        routes[Handshake](Handshake("client", "/client", {}, ""))
        return ctx, stage, routes, config

    def test_client_timeout(self) -> None:
        """No token in 10 s: AUTH_TIMEOUT error then 4001."""
        ctx, stage, routes, _ = self.client()
        ctx.clock.advance(9.9)
        self.assertEqual(ctx.ended, [])
        ctx.clock.advance(0.1)
        self.assertEqual(ctx.outbound, [CallerError("AUTH_TIMEOUT", 'no {"token": ...} message in time')])
        self.assertEqual([(d.code, d.caller_close) for d in ctx.ended], [("AUTH_TIMEOUT", 4001)])

    def test_client_invalid_first_message(self) -> None:
        """A first message that is not a token: INVALID_AUTH, 4002, timer cancelled."""
        ctx, stage, routes, _ = self.client()
        self.assertIsNone(routes[ClientHello](ClientHello("", problem="not JSON")))
        self.assertEqual([(d.code, d.caller_close) for d in ctx.ended], [("INVALID_AUTH", 4002)])
        self.assertEqual(ctx.clock.getDelayedCalls(), [])

    def test_client_bad_and_expired_token(self) -> None:
        """A forged or expired token: AUTH_FAILED, 4003."""
        for token in ("forged.token", mint_token(b"k" * 32, -1000.0)):
            ctx, stage, routes, _ = self.client()
            self.assertIsNone(routes[ClientHello](ClientHello(token)))
            self.assertEqual([(d.code, d.caller_close) for d in ctx.ended], [("AUTH_FAILED", 4003)])

    def test_client_good_token(self) -> None:
        """A valid token becomes a StreamStarted for linear16 16 kHz with the parameters."""
        ctx, stage, routes, config = self.client()
        token = mint_token(config.token_secret, ctx.clock.seconds())
        started = routes[ClientHello](ClientHello(token, {"greeting": "hi"}))
        self.assertEqual(started, StreamStarted("call-1", media_format=LINEAR16_16K,
                                                custom_parameters={"greeting": "hi"}))
        self.assertEqual(ctx.clock.getDelayedCalls(), [])

    def test_twilio_signature(self) -> None:
        """The signature of the public wss:// URL passes; anything else is refused with 403."""
        env = {"TWILIO_AUTH_TOKEN": "tw", "GATEWAY_PUBLIC_URL": "https://gw.example.com"}
        ctx = RecordingContext()
        stage, _ = stage_for("auth", ctx, env=env)
        on = stage.routes().inbound[Handshake]
        good = compute_signature("tw", "wss://gw.example.com/twilio")
        ok = Handshake("twilio", "/twilio", {"x-twilio-signature": good}, "")
        self.assertIs(on(ok), ok)
        for headers in ({}, {"x-twilio-signature": compute_signature("tw", "https://gw.example.com/twilio")}):
            self.assertIsNone(on(Handshake("twilio", "/twilio", headers, "")))
            self.assertEqual(ctx.refused[-1][:2], (403, "AUTH_FAILED"))
        self.assertEqual(len(ctx.refused), 2)

    def test_twilio_token_parameter(self) -> None:
        """With token_parameter set, start needs a valid token in customParameters."""
        ctx = RecordingContext()
        stage, config = stage_for("auth", ctx, {"auth": {"token_parameter": "token"}})
        on = stage.routes().inbound[StreamStarted]
        self.assertIsNone(on(StreamStarted("MZ1", custom_parameters={})))
        self.assertEqual(ctx.ended[0].code, "AUTH_FAILED")
        good = StreamStarted("MZ1", custom_parameters={"token": mint_token(config.token_secret, 0)})
        self.assertIs(on(good), good)
