"""
Redacting secrets out of structures before they are logged (the per-call debug switch), by name
and by value.

By name: settings can carry third-party credentials (``agent.think.endpoint.headers``, provider
``credentials``, API keys); any field whose name looks like a secret has its value replaced, at
any depth.

By value: a secret under an innocent name (a client token in a Twilio ``<Parameter
name="auth">``, the API key pasted into a prompt) is masked wherever it appears, also inside a
longer string. The secrets the gateway knows are registered in one place, `SECRETS`: the
configuration registers the environment's keys when it is loaded (`register_config`), the auth
stage the per-call credentials it sees (`remember_secret`: Twilio signatures), and anything
shaped like a gateway client token (``<base64url>.<43 base64url characters>``, which is how
`gateway.tokens` mints them, wherever they were minted) or a JWT is masked without being
registered: the ``StreamStarted`` line is logged before any stage has looked at the stream.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any

__all__ = [
    "redact",
    "SecretRegistry",
    "SECRETS",
    "register_secret",
    "remember_secret",
    "register_config",
    "mask",
    "MASK",
    "MIN_SECRET_CHARS",
]

MASK = "[redacted]"

#: Shorter values are not masked by value: they would mask ordinary words and numbers.
MIN_SECRET_CHARS = 8

_SECRET_NAMES = re.compile(
    r"(authorization|api[_-]?key|apikey|token|secret|password|passwd|credential|signature|"
    r"^key$|access[_-]?key|session[_-]?key|headers)",
    re.IGNORECASE,
)

# A gateway client token (base64url payload "." 32-byte HMAC in base64url) or a JWT (three
# base64url parts), also with characters run on. The look-behind keeps the scan linear on a long
# base64 run: only the run's first position can start a match.
_TOKEN_SHAPES = re.compile(
    r"(?<![A-Za-z0-9_-])(?:[A-Za-z0-9_-]{16,}\.){1,2}[A-Za-z0-9_-]{43,}"
    r"|(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"
)


class SecretRegistry:
    """
    The secret values this process knows, for masking by value.

    Long-lived secrets (`add`: keys from the environment) stay; per-call ones (`remember`:
    signatures seen on upgrades) are kept most recent first, at most ``recent_limit`` of them,
    so a flood of forged upgrades cannot grow the registry. Values shorter than
    `MIN_SECRET_CHARS` are ignored.
    """

    def __init__(self, recent_limit: int = 512) -> None:
        self._lasting: set[str] = set()
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._recent_limit = recent_limit
        self._ordered: list[str] | None = None

    def add(self, value: str | bytes | None) -> None:
        """Register a long-lived secret (bytes are taken as UTF-8 text, if they are)."""
        text = _text(value)
        if text is not None and text not in self._lasting:
            self._lasting.add(text)
            self._ordered = None

    def remember(self, value: str | bytes | None) -> None:
        """Register a per-call secret; the oldest is forgotten past ``recent_limit``."""
        text = _text(value)
        if text is None or text in self._lasting:
            return
        if text in self._recent:
            self._recent.move_to_end(text)
            return
        self._recent[text] = None
        while len(self._recent) > self._recent_limit:
            self._recent.popitem(last=False)
        self._ordered = None

    def forget(self, value: str | bytes | None) -> None:
        """Unregister ``value`` (tests; a rotated key)."""
        text = _text(value)
        if text is not None:
            self._lasting.discard(text)
            self._recent.pop(text, None)
            self._ordered = None

    def __contains__(self, value: object) -> bool:
        return value in self._lasting or value in self._recent

    def __len__(self) -> int:
        return len(self._lasting) + len(self._recent)

    def mask(self, text: str) -> str:
        """``text`` with every known secret and every token-shaped substring replaced."""
        if len(text) < MIN_SECRET_CHARS:
            return text
        ordered = self._ordered
        if ordered is None:
            # Longest first, so a secret containing another is masked whole.
            ordered = self._ordered = sorted(
                self._lasting.union(self._recent), key=len, reverse=True
            )
        for secret in ordered:
            if secret in text:
                text = text.replace(secret, MASK)
        if "." in text:
            text = _TOKEN_SHAPES.sub(MASK, text)
        return text


def _text(value: str | bytes | None) -> str | None:
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            return None  # random bytes (a generated key) never appear in text
    if not isinstance(value, str) or len(value) < MIN_SECRET_CHARS:
        return None
    return value


#: The process's registry: what `redact` masks by value.
SECRETS = SecretRegistry()


def register_secret(*values: str | bytes | None) -> None:
    """Register long-lived secrets in `SECRETS` (None and short values are skipped)."""
    for value in values:
        SECRETS.add(value)


def remember_secret(value: str | bytes | None) -> None:
    """Register a per-call secret (a credential seen on a call) in `SECRETS`."""
    SECRETS.remember(value)


def register_config(config: Any) -> None:
    """
    Register every secret a `gateway.config.GatewayConfig` holds: the Deepgram API key, the
    Twilio auth token, the token-signing secret, the API key for minting tokens and the
    webhook secret (a random token secret is bytes that never appear in text and is skipped).
    """
    register_secret(*(getattr(config, name, None) for name in _CONFIG_SECRETS))


_CONFIG_SECRETS = (
    "api_key", "twilio_auth_token", "token_secret", "gateway_api_key", "webhook_secret"
)


def mask(text: str) -> str:
    """``text`` with every secret `SECRETS` knows, and every token-shaped string, masked."""
    return SECRETS.mask(text)


def redact(value: Any, _depth: int = 0, *, registry: SecretRegistry | None = None) -> Any:
    """
    A copy of ``value`` (JSON-like) with secret-looking fields replaced by ``"[redacted]"`` and
    every known secret masked in every string, keys included. Other leaves are kept, unless
    their ``repr`` shows a secret: then they become that ``repr``, masked.
    """
    registry = SECRETS if registry is None else registry
    if _depth > 20:
        return "[too deep]"
    if isinstance(value, str):
        return registry.mask(value)
    if isinstance(value, dict):
        return {
            _key(k, registry): MASK if isinstance(k, str) and _SECRET_NAMES.search(k)
            else redact(v, _depth + 1, registry=registry)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [redact(v, _depth + 1, registry=registry) for v in value]
    if isinstance(value, (bool, int, float, type(None))):
        return value
    shown = repr(value)
    masked = registry.mask(shown)
    return value if masked == shown else masked


def _key(key: Any, registry: SecretRegistry) -> Any:
    return registry.mask(key) if isinstance(key, str) else key
