"""
Short-lived client tokens: stateless, HMAC-SHA256 signed, verifiable by any gateway process that
shares ``GATEWAY_TOKEN_SECRET``.

A token is ``base64url(payload) "." base64url(signature)`` where the payload is compact JSON
``{"exp": <unix seconds>, "iat": ..., "jti": <random>}``. Expired, tampered and malformed tokens
are refused with `AuthError` (``AUTH_FAILED``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os

from gateway.errors import AuthError

__all__ = ["mint_token", "verify_token", "TOKEN_TTL_S"]

TOKEN_TTL_S = 300


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def mint_token(secret: bytes, now: float, ttl_s: int = TOKEN_TTL_S) -> str:
    """A token valid for ``ttl_s`` seconds from ``now``."""
    payload = json.dumps(
        {"exp": int(now) + ttl_s, "iat": int(now), "jti": _b64(os.urandom(9))},
        separators=(",", ":"),
    ).encode()
    signature = hmac.new(secret, payload, hashlib.sha256).digest()
    return f"{_b64(payload)}.{_b64(signature)}"


def verify_token(secret: bytes, token: str, now: float) -> dict:
    """The token's claims, or `AuthError` saying (to the log) what is wrong with it."""
    head, sep, tail = token.partition(".")
    try:
        if not sep:
            raise ValueError("no signature part")
        payload = _unb64(head)
        signature = _unb64(tail)
    except (ValueError, UnicodeError):
        raise AuthError("AUTH_FAILED", "malformed token")
    expected = hmac.new(secret, payload, hashlib.sha256).digest()
    if not hmac.compare_digest(expected, signature):
        raise AuthError("AUTH_FAILED", "token signature does not verify")
    try:
        claims = json.loads(payload)
        expires = float(claims["exp"])
    except (ValueError, KeyError, TypeError):
        raise AuthError("AUTH_FAILED", "token payload is malformed")
    if now >= expires:
        raise AuthError("AUTH_FAILED", f"token expired {int(now - expires)} s ago")
    return claims
