"""Tests for X-Twilio-Signature, with the official twilio package as the oracle."""

from __future__ import annotations

from twilio.request_validator import RequestValidator
from twisted.trial.unittest import SynchronousTestCase

from gateway.codecs.signatures import compute_signature, validate_signature

TOKEN = "12345"


class SignatureTests(SynchronousTestCase):
    """Our validation accepts exactly what RequestValidator accepts."""

    def test_vectors(self) -> None:
        """The published vectors (protocols.md §1.5)."""
        params = {"CallSid": "CA1234567890ABCDE", "Caller": "+14158675309", "Digits": "1234",
                  "From": "+14158675309", "To": "+18005551212"}
        self.assertEqual(compute_signature(TOKEN, "https://mycompany.com/myapp.php?foo=1&bar=2", params),
                         "RSOYDt4T1cUTdK1PDd93/VVr8B8=")
        self.assertEqual(compute_signature(TOKEN, "wss://example.com/media"), "7PR3qMkpDyEJtMrVOY/LDyNq8J8=")

    def test_agrees_with_oracle(self) -> None:
        """For URL forms with and without ports, signed as written or in the other form."""
        oracle = RequestValidator(TOKEN)
        urls = ["wss://gw.example.com/twilio", "wss://gw.example.com:443/twilio",
                "wss://gw.example.com:8443/twilio", "https://gw.example.com/twilio/voice",
                "https://gw.example.com:443/twilio/voice", "ws://127.0.0.1:8080/twilio"]
        for signed_url in urls:
            signature = oracle.compute_signature(signed_url, {})
            for url in urls:
                self.assertEqual(
                    validate_signature(TOKEN, url, signature),
                    oracle.validate(url, {}, signature),
                    (signed_url, url),
                )

    def test_params(self) -> None:
        """Webhook form parameters are part of the signature (sorted)."""
        oracle = RequestValidator(TOKEN)
        params = {"To": "+1", "From": "+2", "CallSid": "CA1"}
        sig = oracle.compute_signature("https://gw.example.com/twilio/voice", params)
        self.assertTrue(validate_signature(TOKEN, "https://gw.example.com/twilio/voice", sig, params))
        self.assertFalse(validate_signature(TOKEN, "https://gw.example.com/twilio/voice", sig, {"To": "+1"}))

    def test_rejects(self) -> None:
        """Wrong token, empty and garbage signatures."""
        sig = compute_signature(TOKEN, "wss://gw.example.com/twilio")
        self.assertFalse(validate_signature("other", "wss://gw.example.com/twilio", sig))
        self.assertFalse(validate_signature(TOKEN, "wss://gw.example.com/twilio", ""))
        self.assertFalse(validate_signature(TOKEN, "wss://gw.example.com/twilio", "é" * 28))
