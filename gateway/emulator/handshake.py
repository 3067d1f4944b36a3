"""
What the emulator refuses before a WebSocket upgrade, and with what: `HandshakeRefused` (an HTTP
status, Deepgram's ``err_code`` and message, as ``dg-error`` carries them) and the listen
endpoints' query-string check (`check_listen_query`). `gateway.emulator.server` answers them.
"""

from __future__ import annotations

from gateway.codecs.deepgram_types import check_listen_options
from gateway.codecs.settings_schema import INPUT_ENCODINGS
from gateway.emulator.flux import THRESHOLD_RANGES, threshold_problem
from gateway.emulator.speech import DECODABLE
from gateway.errors import SettingsError

__all__ = ["HandshakeRefused", "REFUSALS", "FAULT_PARAM", "check_listen_query"]

#: The query parameter (on any endpoint) that names faults for the session; never an option.
FAULT_PARAM = "emulator_fault"

#: Default ``(err_code, err_msg)`` of a refused upgrade, by HTTP status.
REFUSALS = {
    400: ("Bad Request", "Bad Request: the request could not be processed."),
    401: ("INVALID_AUTH", "Invalid credentials."),
    402: ("ASR_PAYMENT_REQUIRED", "Project does not have enough credits for this request."),
    403: ("INSUFFICIENT_PERMISSIONS", "Project does not have access to the requested model."),
    404: ("NOT_FOUND", "Not found."),
    429: ("TOO_MANY_REQUESTS", "Too many requests. Concurrency limit exceeded for this project."),
    500: ("INTERNAL_SERVER_ERROR", "Internal server error."),
    502: ("BAD_GATEWAY", "Bad gateway."),
    503: ("SERVICE_UNAVAILABLE", "Service unavailable. Please try again later."),
}


class HandshakeRefused(Exception):
    """An upgrade or request to refuse with ``status`` and ``message`` (``err_code`` in the body)."""

    def __init__(self, status: int, message: str | None = None, err_code: str | None = None) -> None:
        default_code, default_message = REFUSALS.get(status, ("ERROR", f"HTTP {status}."))
        super().__init__(message or default_message)
        self.status = status
        self.message = message or default_message
        self.err_code = err_code or default_code


def check_listen_query(pairs: list[tuple[str, str]], version: str = "v1") -> None:
    """
    Raise `HandshakeRefused` (400) for a ``/v1/listen`` (or, ``version`` ``v2``, Flux) query string
    Deepgram would refuse: an option the SDK does not name or a value Deepgram refuses (the
    gateway's own check, `gateway.codecs.deepgram_types`; Flux's thresholds in their ranges and its
    required ``model``), or audio the emulator cannot take. Repeated options (``keyterm``,
    ``tag``...) are lists.
    """
    options: dict[str, list[str]] = {}
    for name, value in pairs:
        if name != FAULT_PARAM:
            options.setdefault(name, []).append(value)
    try:
        check_listen_options({k: v[0] if len(v) == 1 else v for k, v in options.items()},
                             version, path="query", complete=version == "v2")
    except SettingsError as e:
        raise HandshakeRefused(400, f"Bad Request: {e.field.removeprefix('query.')}: {e.message}.")
    query = dict(pairs)
    if version == "v2":
        for name in THRESHOLD_RANGES:
            problem = threshold_problem(name, query[name]) if name in query else None
            if problem is not None:
                raise HandshakeRefused(400, f"Bad Request: {problem}.")
    encoding = query.get("encoding")
    if encoding is not None and encoding not in INPUT_ENCODINGS:
        raise HandshakeRefused(400, f"Bad Request: encoding {encoding!r} is not supported; "
                                    f"use one of {', '.join(INPUT_ENCODINGS)}.")
    rate = query.get("sample_rate")
    if rate is not None and not (rate.isdigit() and 8000 <= int(rate) <= 48000):
        raise HandshakeRefused(400, f"Bad Request: sample_rate {rate!r} is not an integer "
                                    "between 8000 and 48000.")
    if encoding in DECODABLE and rate is None:
        raise HandshakeRefused(400, f"Bad Request: sample_rate is required with encoding={encoding}.")
    channels = query.get("channels")
    if channels is not None and not (channels.isdigit() and 1 <= int(channels) <= 8):
        raise HandshakeRefused(400, f"Bad Request: channels {channels!r} is not an integer between 1 and 8.")
