"""Tests for `gateway.http`: the JSON answer and the API-key check the HTTP resources share."""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from gateway.http import bearer_refusal, json_response


def _request(authorization: bytes | None = None) -> DummyRequest:
    request = DummyRequest([b""])
    if authorization is not None:
        request.requestHeaders.setRawHeaders(b"authorization", [authorization])
    return request


class JsonResponseTests(SynchronousTestCase):
    """`json_response` sets the status and headers and returns the encoded body."""

    def test_status_headers_body(self) -> None:
        """The code, a JSON content type, no caching, and the body as JSON bytes."""
        request = _request()
        body = json_response(request, 418, {"error": "short and stout", "n": 1})
        self.assertEqual(request.responseCode, 418)
        self.assertEqual(request.responseHeaders.getRawHeaders(b"content-type"), [b"application/json"])
        self.assertEqual(request.responseHeaders.getRawHeaders(b"cache-control"), [b"no-store"])
        self.assertEqual(json.loads(body), {"error": "short and stout", "n": 1})


class BearerRefusalTests(SynchronousTestCase):
    """`bearer_refusal`: None for the right key, 401 for a wrong one, 503 without a key."""

    def test_right_key(self) -> None:
        """``Bearer <key>`` (any case of the scheme, spaces around the key) passes."""
        for header in (b"Bearer api-key", b"bearer api-key", b"BEARER  api-key "):
            request = _request(header)
            self.assertIsNone(bearer_refusal(request, "api-key", "disabled"))
            self.assertIsNone(request.responseCode)
            self.assertIsNone(request.responseHeaders.getRawHeaders(b"www-authenticate"))

    def test_wrong_or_missing_key(self) -> None:
        """A missing header, another scheme or another key: 401 naming the variable, with a
        ``WWW-Authenticate`` challenge."""
        for header in (None, b"", b"Bearer wrong", b"Token api-key", b"Bearer", b"api-key"):
            request = _request(header)
            body = bearer_refusal(request, "api-key", "disabled")
            assert body is not None
            self.assertEqual(request.responseCode, 401, header)
            self.assertIn("GATEWAY_API_KEY", json.loads(body)["error"])
            self.assertEqual(request.responseHeaders.getRawHeaders(b"www-authenticate"),
                             [b'Bearer realm="gateway"'])

    def test_no_key_configured(self) -> None:
        """No key configured (None or empty): 503 with the given message, whatever was sent."""
        for key in (None, ""):
            request = _request(b"Bearer ")
            body = bearer_refusal(request, key, "minting is off: set GATEWAY_API_KEY")
            assert body is not None
            self.assertEqual(request.responseCode, 503)
            self.assertEqual(json.loads(body), {"error": "minting is off: set GATEWAY_API_KEY"})
