"""
Redacting secrets out of messages before they are logged (the per-call debug switch).

Settings can carry third-party credentials (``agent.think.endpoint.headers``, provider
``credentials``, API keys); Twilio parameters can carry tokens. Any field whose name looks like a
secret has its value replaced, at any depth.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["redact"]

_SECRET_NAMES = re.compile(
    r"(authorization|api[_-]?key|apikey|token|secret|password|passwd|credential|signature|"
    r"^key$|access[_-]?key|session[_-]?key|headers)",
    re.IGNORECASE,
)


def redact(value: Any, _depth: int = 0) -> Any:
    """A copy of ``value`` (JSON-like) with secret-looking fields replaced by ``"[redacted]"``."""
    if _depth > 20:
        return "[too deep]"
    if isinstance(value, dict):
        return {
            k: "[redacted]" if isinstance(k, str) and _SECRET_NAMES.search(k) else redact(v, _depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [redact(v, _depth + 1) for v in value]
    return value
