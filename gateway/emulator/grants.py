"""
Temporary access tokens, as Deepgram's ``POST /v1/auth/grant`` issues them.

Deepgram answers a grant (made with ``Authorization: Token <API key>``, optional JSON body
``{"ttl_seconds": n}``) with ``{"access_token": "<JWT>", "expires_in": 30}``; the token then opens
the voice APIs with ``Authorization: Bearer <JWT>`` (or the ``["bearer", <JWT>]`` WebSocket
subprotocols) until it expires, never the management APIs. A raw API key presented as ``Bearer``
is refused (protocols.md §2.1).

The emulator's tokens are real JWTs (HS256), signed with a key drawn once per emulator, so the
SDK's grant client and anything that decodes JWTs take them as they are; the emulator checks the
signature and the expiry on every upgrade. Sans-IO: the caller gives the time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import os
import uuid
from typing import Any

import attrs

__all__ = ["GrantError", "Grants", "DEFAULT_TTL_S", "MAX_TTL_S"]

#: Deepgram's default lifetime of an access token, in seconds.
DEFAULT_TTL_S = 30.0
#: The longest lifetime the emulator grants (Deepgram's maximum is not documented; our choice).
MAX_TTL_S = 3600.0


class GrantError(ValueError):
    """A grant request Deepgram would refuse with HTTP 400 (``message`` says why)."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@attrs.define
class Grants:
    """Issues and verifies the emulator's access tokens."""

    _key: bytes = attrs.field(factory=lambda: os.urandom(32), repr=False)
    issued: int = 0

    def ttl_from_body(self, body: bytes) -> float:
        """The token lifetime a grant request asks for (its optional JSON body), or `GrantError`."""
        if not body.strip():
            return DEFAULT_TTL_S
        try:
            request = json.loads(body)
        except ValueError:
            raise GrantError("the body is not JSON") from None
        if not isinstance(request, dict):
            raise GrantError("the body must be a JSON object")
        ttl = request.get("ttl_seconds")
        if ttl is None:
            return DEFAULT_TTL_S
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not math.isfinite(ttl) \
                or not 1 <= ttl <= MAX_TTL_S:
            raise GrantError(f"ttl_seconds must be a number from 1 to {MAX_TTL_S:g}, got {ttl!r:.40}")
        return float(ttl)

    def issue(self, now: float, ttl_s: float = DEFAULT_TTL_S) -> dict[str, Any]:
        """The grant's answer: ``{"access_token": ..., "expires_in": ...}``."""
        header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        claims = {"iat": int(now), "exp": int(now + ttl_s), "jti": str(uuid.uuid4()),
                  "scopes": ["usage:write"], "iss": "deepgram-emulator"}
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
        signature = _b64(hmac.new(self._key, f"{header}.{payload}".encode(), hashlib.sha256).digest())
        self.issued += 1
        return {"access_token": f"{header}.{payload}.{signature}", "expires_in": ttl_s}

    def valid(self, token: str, now: float) -> bool:
        """Whether ``token`` is one of ours, unaltered and unexpired."""
        parts = token.split(".")
        if len(parts) != 3:
            return False
        header, payload, signature = parts
        expected = _b64(hmac.new(self._key, f"{header}.{payload}".encode(), hashlib.sha256).digest())
        if not hmac.compare_digest(expected, signature):
            return False
        try:
            claims = json.loads(_unb64(payload))
        except ValueError:
            return False
        exp = claims.get("exp") if isinstance(claims, dict) else None
        return isinstance(exp, int) and now < exp
