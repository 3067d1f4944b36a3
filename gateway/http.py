"""
Small helpers shared by the gateway's HTTP resources (`gateway.api`, `gateway.twiml`,
`gateway.demopage`): JSON answers and the operator API key check.

They depend on nothing of the gateway's own, so every resource module imports them at the top and
none of those modules needs another.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from twisted.web.iweb import IRequest

__all__ = ["json_response", "bearer_refusal"]


def json_response(request: IRequest, status: int, body: dict[str, Any]) -> bytes:
    """Set ``status`` and a JSON content type on ``request``; return the encoded ``body``."""
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(body).encode()


def bearer_refusal(request: IRequest, api_key: str | None, disabled: str) -> bytes | None:
    """
    The answer to a request that does not carry ``Authorization: Bearer <api_key>``, or None when
    it does: 503 with ``disabled`` as the error when no key is configured (``api_key`` empty or
    None), 401 with ``WWW-Authenticate`` for a missing or wrong key. The key is compared in
    constant time.
    """
    if not api_key:
        return json_response(request, 503, {"error": disabled})
    header = (request.getHeader(b"authorization") or b"").decode("latin-1")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), api_key.encode()):
        request.setHeader(b"www-authenticate", b'Bearer realm="gateway"')
        return json_response(request, 401, {
            "error": "missing or invalid Authorization: Bearer <GATEWAY_API_KEY>"})
    return None
