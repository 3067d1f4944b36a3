"""
Short-lived tokens: stateless, HMAC-SHA256 signed, verifiable by any gateway process that shares
``GATEWAY_TOKEN_SECRET``.

A token is ``base64url(payload) "." base64url(signature)`` where the payload is compact JSON.
Every token has ``exp``, ``iat`` and a random ``jti`` (its identity). Two kinds exist:

- **client tokens** (``POST /v1/tokens``, ``/client``'s first message): no ``typ`` (or
  ``"typ": "client"``); ``"use": "once"`` marks a single-use token.
- **stream tokens** (``"typ": "stream"``): minted by the voice webhook into the TwiML as a
  ``<Parameter>`` and bound to the call's ``CallSid`` (``sid``); always single-use.
- **resume tokens** (``"typ": "resume"``): minted by the handover action URL into the TwiML of a
  call handed over by a draining process, bound to its ``CallSid`` (``sid``); single use comes
  from the handover store, whose record is taken once (`gateway.handover.store`). A ``/client``
  call has no ``CallSid``: its resume token carries instead the random id of its handover record
  (``hid``), is sent to the client in the ``Handover`` message and comes back as the token of the
  new socket's hello (`verify_hello_token`). Both stay near 170 characters, far under Twilio's
  500-character limit for a ``<Parameter>``.

A token of one kind never verifies as the other. Expired, tampered and malformed tokens are
refused with `AuthError` (``AUTH_FAILED``). Single use is remembered by `UsedTokens`, in the
process that verified the token: a process knows nothing of the jtis another one has seen.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import json
import os
from typing import Any

from gateway.errors import AuthError

__all__ = [
    "mint_token",
    "verify_token",
    "mint_stream_token",
    "verify_stream_token",
    "mint_resume_token",
    "verify_resume_token",
    "new_handover_id",
    "mint_client_resume_token",
    "verify_client_resume_token",
    "verify_hello_token",
    "UsedTokens",
    "TOKEN_TTL_S",
    "STREAM_TOKEN_PARAMETER",
]

TOKEN_TTL_S = 300

#: The TwiML ``<Parameter>`` name carrying a stream token (its name marks it a secret for the
#: debug log's redaction, which goes by names).
STREAM_TOKEN_PARAMETER = "gateway_stream_token"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: bytes, claims: dict[str, Any]) -> str:
    payload = json.dumps(claims, separators=(",", ":")).encode()
    signature = hmac.new(secret, payload, hashlib.sha256).digest()
    return f"{_b64(payload)}.{_b64(signature)}"


def _claims(secret: bytes, token: str, now: float) -> dict[str, Any]:
    """The verified claims of any kind of token (signature, shape and expiry checked)."""
    if not isinstance(token, str):
        raise AuthError("AUTH_FAILED", f"expected a string token, got {type(token).__name__}")
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
        if not isinstance(claims.get("jti"), str):
            raise TypeError("jti")
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        raise AuthError("AUTH_FAILED", "token payload is malformed")
    if now >= expires:
        raise AuthError("AUTH_FAILED", f"token expired {int(now - expires)} s ago")
    return claims


def mint_token(secret: bytes, now: float, ttl_s: int = TOKEN_TTL_S, single_use: bool = False) -> str:
    """A client token valid for ``ttl_s`` seconds from ``now`` (accepted once if ``single_use``)."""
    claims: dict[str, Any] = {"exp": int(now) + ttl_s, "iat": int(now), "jti": _b64(os.urandom(9))}
    if single_use:
        claims["use"] = "once"
    return _sign(secret, claims)


def verify_token(secret: bytes, token: str, now: float) -> dict:
    """A client token's claims, or `AuthError` saying (to the log) what is wrong with it."""
    claims = _claims(secret, token, now)
    if claims.get("typ", "client") != "client":
        raise AuthError("AUTH_FAILED", f"a {claims.get('typ')!r} token is not a client token")
    return claims


def _mint_for_call(secret: bytes, typ: str, now: float, call_sid: str, ttl_s: float) -> str:
    """A token of kind ``typ`` bound to the Twilio call ``call_sid``, valid for ``ttl_s`` seconds."""
    return _sign(secret, {
        "typ": typ,
        "sid": call_sid,
        "exp": int(now + ttl_s) + 1,
        "iat": int(now),
        "jti": _b64(os.urandom(9)),
    })


def _check_call(claims: dict, typ: str, call_sid: str) -> dict:
    """``claims`` are of kind ``typ`` and bound to ``call_sid``; else `AuthError`."""
    if claims.get("typ") != typ:
        raise AuthError("AUTH_FAILED", f"not a {typ} token")
    if not call_sid or not hmac.compare_digest(str(claims.get("sid", "")).encode(), call_sid.encode()):
        raise AuthError("AUTH_FAILED", f"the {typ} token belongs to another CallSid")
    return claims


def mint_stream_token(secret: bytes, now: float, call_sid: str, ttl_s: float) -> str:
    """A single-use stream token for the Twilio call ``call_sid``, valid for ``ttl_s`` seconds."""
    return _mint_for_call(secret, "stream", now, call_sid, ttl_s)


def verify_stream_token(secret: bytes, token: str, now: float, call_sid: str) -> dict:
    """A stream token's claims, checked against the stream's ``call_sid``; else `AuthError`."""
    return _check_call(_claims(secret, token, now), "stream", call_sid)


class UsedTokens:
    """
    The jtis of single-use tokens already accepted by this process, each kept until its token
    expires (after that the token is refused as expired anyway), so memory is bounded by the
    tokens accepted within one token lifetime.
    """

    def __init__(self) -> None:
        self._seen: dict[str, float] = {}
        # (exp, jti) in the order accepted; expiry is nearly monotonic (one TTL per kind), and
        # an entry left a little late only costs memory, never a wrong answer.
        self._order: collections.deque[tuple[float, str]] = collections.deque()

    def __len__(self) -> int:
        return len(self._seen)

    def claim(self, claims: dict[str, Any], now: float) -> bool:
        """Record the token's use; False if it was used before (refuse it)."""
        self._prune(now)
        jti = claims["jti"]
        if jti in self._seen:
            return False
        expires = float(claims["exp"])
        self._seen[jti] = expires
        self._order.append((expires, jti))
        return True

    def _prune(self, now: float) -> None:
        order = self._order
        while order and order[0][0] <= now:
            _, jti = order.popleft()
            self._seen.pop(jti, None)


def mint_resume_token(secret: bytes, now: float, call_sid: str, ttl_s: float) -> str:
    """
    A resume token (``"typ": "resume"``) for the Twilio call ``call_sid``: the ``<Parameter>``
    that tells the process taking up a handed-over call which saved state is its own.
    """
    return _mint_for_call(secret, "resume", now, call_sid, ttl_s)


def verify_resume_token(secret: bytes, token: str, now: float, call_sid: str) -> dict:
    """A resume token's claims, checked against the stream's ``call_sid``; else `AuthError`."""
    claims = _claims(secret, token, now)
    if claims.get("typ") == "resume" and "hid" in claims:
        raise AuthError("AUTH_FAILED", "a /client resume token is not for a Twilio stream")
    return _check_call(claims, "resume", call_sid)


#: The longest handover id a resume token may carry (`new_handover_id` makes 16 characters).
_MAX_HANDOVER_ID = 64


def new_handover_id() -> str:
    """A random handover id (96 bits, base64url): the key of a ``/client`` call's handover record."""
    return _b64(os.urandom(12))


def mint_client_resume_token(secret: bytes, now: float, handover_id: str, ttl_s: float) -> str:
    """
    A resume token (``"typ": "resume"``) for a ``/client`` call handed over by a draining
    process: it names the call's handover record by ``handover_id`` (``hid``), since a raw-audio
    call has no ``CallSid``. The client sends it as the token of its next hello.
    """
    return _sign(secret, {
        "typ": "resume",
        "hid": handover_id,
        "exp": int(now + ttl_s) + 1,
        "iat": int(now),
        "jti": _b64(os.urandom(9)),
    })


def verify_client_resume_token(secret: bytes, token: str, now: float) -> dict:
    """A ``/client`` resume token's claims (its ``hid`` checked for shape); else `AuthError`."""
    return _client_resume_claims(_claims(secret, token, now))


def _client_resume_claims(claims: dict) -> dict:
    if claims.get("typ") != "resume":
        raise AuthError("AUTH_FAILED", "not a resume token")
    handover_id = claims.get("hid")
    if "sid" in claims:
        raise AuthError("AUTH_FAILED", "a Twilio stream's resume token is not for /client")
    if not isinstance(handover_id, str) or not 0 < len(handover_id) <= _MAX_HANDOVER_ID:
        raise AuthError("AUTH_FAILED", "the resume token names no handover record")
    return claims


def verify_hello_token(secret: bytes, token: str, now: float) -> dict:
    """
    The claims of the token in a ``/client`` hello: a client token, or the resume token of a
    ``/client`` call handed over by a draining process (``"typ": "resume"`` with ``hid``).
    Stream tokens and Twilio resume tokens are refused with `AuthError`.
    """
    claims = _claims(secret, token, now)
    kind = claims.get("typ", "client")
    if kind == "resume":
        return _client_resume_claims(claims)
    if kind != "client":
        raise AuthError("AUTH_FAILED", f"a {kind!r} token is not a client token")
    return claims
