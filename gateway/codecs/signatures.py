"""
Twilio's ``X-Twilio-Signature``: base64(HMAC-SHA1(auth token, URL + sorted POST parameters)).

Valid exactly when the official ``twilio`` package's ``RequestValidator.validate`` would accept
it: the URL is tried as written with any port removed and with a default port added (443 for
``https``, 80 for every other scheme, ``wss`` included), compared in constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Mapping, Sequence
from urllib.parse import urlsplit, urlunsplit

__all__ = ["compute_signature", "validate_signature"]


def compute_signature(
    auth_token: str, url: str, params: Mapping[str, str | Sequence[str]] | None = None
) -> str:
    """The signature Twilio computes for ``url`` and the POST ``params``."""
    message = url
    for name in sorted(set(params or {})):
        values = (params or {})[name]
        if isinstance(values, str):
            values = [values]
        for value in sorted(set(values)):
            message += name + value
    digest = hmac.new(auth_token.encode("utf-8"), message.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii").strip()


def _without_port(url: str) -> str:
    parts = urlsplit(url)
    if parts.port is None:
        return url
    netloc = parts.netloc.rsplit(":", 1)[0]
    return urlunsplit(parts._replace(netloc=netloc))


def _with_port(url: str) -> str:
    parts = urlsplit(url)
    if parts.port is not None:
        return url
    port = 443 if parts.scheme == "https" else 80
    return urlunsplit(parts._replace(netloc=f"{parts.netloc}:{port}"))


def validate_signature(
    auth_token: str,
    url: str,
    signature: str,
    params: Mapping[str, str | Sequence[str]] | None = None,
) -> bool:
    """Whether ``signature`` is Twilio's for ``url`` (in either port form) and ``params``."""
    if not signature:
        return False
    given = signature.encode("utf-8")
    ok = False
    for candidate in (_without_port(url), _with_port(url)):
        expected = compute_signature(auth_token, candidate, params).encode("utf-8")
        ok |= hmac.compare_digest(expected, given)
    return ok
