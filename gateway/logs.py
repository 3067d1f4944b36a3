"""
Log output for production: one JSON object per line, with secrets redacted.

Use it with ``twistd -n --logger gateway.logs.json_observer gateway ...``. Every per-call event
already carries ``call_id``, ``stream_sid`` and ``phase`` (see `gateway.call.CallLogger`); this
observer renders the message, keeps the structured fields as top-level keys, and replaces any
secret from the environment (``DEEPGRAM_API_KEY``, ``TWILIO_AUTH_TOKEN``, ``GATEWAY_API_KEY``,
``GATEWAY_TOKEN_SECRET``) wherever it appears, as a last line of defence.

Fields keep their shape: a dict or a list (the end-of-call ``call_report``, say) is written as
nested JSON, not as a Python ``repr`` string, down to `MAX_DEPTH` levels; anything JSON has no
type for (bytes, objects) is written as its ``repr``.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Callable, Iterable, TextIO

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
)

__all__ = ["json_observer", "render_json", "Redactor", "SECRET_VARIABLES", "MAX_DEPTH"]

#: Nesting kept in a field's JSON; deeper values are written as their repr.
MAX_DEPTH = 12

SECRET_VARIABLES = ("DEEPGRAM_API_KEY", "TWILIO_AUTH_TOKEN", "GATEWAY_API_KEY", "GATEWAY_TOKEN_SECRET")

_SKIP = {"log_logger", "log_source", "log_format", "log_level", "log_namespace", "log_time",
         "log_failure", "log_trace", "log_io", "log_text", "log_system", "log_flattened",
         "format", "message", "isError", "system", "time", "failure", "why"}


class Redactor:
    """Replaces each secret (of at least 6 characters) with ``[redacted]`` in text."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets = sorted({s for s in secrets if s and len(s) >= 6}, key=len, reverse=True)

    @classmethod
    def from_environ(cls, environ: dict[str, str] | None = None) -> Redactor:
        env = os.environ if environ is None else environ
        return cls(env.get(name, "") for name in SECRET_VARIABLES)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, "[redacted]")
        return text


def _jsonable(value: Any, depth: int = 0) -> Any:
    """``value`` as JSON types: dicts (string keys) and lists kept nested, the rest as repr."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if depth >= MAX_DEPTH:
        return repr(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, depth + 1) for v in value]
    return repr(value)


def render_json(event: dict[str, Any], redact: Callable[[str], str]) -> str:
    """One event as one JSON line."""
    level = event.get("log_level")
    out: dict[str, Any] = {
        "ts": round(event.get("log_time", 0.0), 6),
        "level": level.name if isinstance(level, type(LogLevel.info)) else "info",
        "ns": event.get("log_namespace"),
        "msg": formatEvent(event),
    }
    for key, value in event.items():
        if key in _SKIP or key.startswith("log_"):
            continue
        out[key] = _jsonable(value)
    failure = event.get("log_failure") or event.get("failure")
    if failure is not None:
        out["traceback"] = failure.getTraceback()
    return redact(json.dumps(out, default=repr)) + "\n"


def json_observer(
    out: TextIO | None = None, environ: dict[str, str] | None = None
) -> FilteringLogObserver:
    """The ``--logger`` factory: JSON lines on stdout, info and above, secrets redacted."""
    redact = Redactor.from_environ(environ)
    stream = out if out is not None else sys.stdout
    observer = FileLogObserver(stream, lambda event: render_json(event, redact))
    return FilteringLogObserver(observer, [LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)])
