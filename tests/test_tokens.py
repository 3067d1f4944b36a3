"""Tests for short-lived client tokens."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.errors import AuthError
from gateway.tokens import (
    STREAM_TOKEN_PARAMETER,
    UsedTokens,
    mint_stream_token,
    mint_token,
    verify_stream_token,
    verify_token,
)

SECRET = b"s" * 32


class TokenTests(SynchronousTestCase):
    """Mint, verify, expire, tamper."""

    def test_round_trip(self) -> None:
        """A fresh token verifies on any holder of the secret."""
        token = mint_token(SECRET, 1000.0)
        self.assertEqual(verify_token(SECRET, token, 1299.0)["exp"], 1300)

    def test_expired(self) -> None:
        """A token is refused from its expiry on (replayed after expiry included)."""
        token = mint_token(SECRET, 1000.0)
        self.assertRaises(AuthError, verify_token, SECRET, token, 1300.0)

    def test_tampered_and_malformed(self) -> None:
        """A changed payload, another secret, or garbage are refused."""
        token = mint_token(SECRET, 1000.0)
        head, _, tail = token.partition(".")
        forged = head[:-2] + ("A" if head[-2] != "A" else "B") + head[-1] + "." + tail
        for bad in (forged, token + "x", "nodot", "", "a.b"):
            self.assertRaises(AuthError, verify_token, SECRET, bad, 1001.0)
        self.assertRaises(AuthError, verify_token, b"other", token, 1001.0)


class TokenKindTests(SynchronousTestCase):
    """jti, single use, and stream tokens bound to a CallSid."""

    def test_every_token_has_a_jti(self) -> None:
        """Each token carries its own random jti; single_use marks it "use": "once"."""
        a, b = (verify_token(SECRET, mint_token(SECRET, 1000.0), 1001.0) for _ in range(2))
        self.assertNotEqual(a["jti"], b["jti"])
        self.assertNotIn("use", a)
        self.assertEqual(verify_token(SECRET, mint_token(SECRET, 1000.0, single_use=True), 1001.0)["use"], "once")

    def test_used_tokens(self) -> None:
        """A jti is accepted once while its token lives, and forgotten after it expires."""
        used = UsedTokens()
        claims = verify_token(SECRET, mint_token(SECRET, 1000.0), 1001.0)
        self.assertTrue(used.claim(claims, 1001.0))
        self.assertFalse(used.claim(claims, 1002.0))
        other = verify_token(SECRET, mint_token(SECRET, 1400.0), 1400.0)
        self.assertTrue(used.claim(other, 1400.0))
        self.assertEqual(len(used), 1)

    def test_stream_token(self) -> None:
        """A stream token verifies for its CallSid only, before it expires, and is no client token."""
        token = mint_stream_token(SECRET, 1000.0, "CA1", 60)
        self.assertEqual(verify_stream_token(SECRET, token, 1059.0, "CA1")["sid"], "CA1")
        for now, sid in ((1062.0, "CA1"), (1001.0, "CA2"), (1001.0, "")):
            self.assertRaises(AuthError, verify_stream_token, SECRET, token, now, sid)
        self.assertRaises(AuthError, verify_token, SECRET, token, 1001.0)
        self.assertRaises(AuthError, verify_stream_token, SECRET, mint_token(SECRET, 1000.0), 1001.0, "CA1")
        self.assertLess(len(STREAM_TOKEN_PARAMETER) + len(token), 500, "Twilio's <Parameter> limit")

    def test_payload_without_jti(self) -> None:
        """A signed payload without a jti is malformed."""
        from gateway.tokens import _sign

        self.assertRaises(AuthError, verify_token, SECRET, _sign(SECRET, {"exp": 2000}), 1000.0)
