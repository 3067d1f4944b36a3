"""Tests for short-lived client tokens."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.errors import AuthError
from gateway.tokens import mint_token, verify_token

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
