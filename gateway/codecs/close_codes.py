"""
Close codes: which may be sent, and how a received close maps onto a diagnosis code.

The mapping is one table of rows, as data, read top to bottom; the first row that matches wins.
Deepgram's close reasons are sentences with a link ("... See https://dpgr.am/net0001"), so they
are matched on a case-insensitive substring, never by equality (protocols.md §3.4).
"""

from __future__ import annotations

from typing import Callable, Mapping

import attrs

__all__ = [
    "Predicate",
    "Row",
    "NEVER_SENT",
    "sendable",
    "classify_upstream_close",
    "classify_caller_close",
    "CALLER_RULES",
    "UPSTREAM_ROWS",
]

#: Local-only values that must never appear in a Close frame (RFC 6455 §7.4).
NEVER_SENT = frozenset({1004, 1005, 1006, 1015})


def sendable(code: int) -> bool:
    """Whether ``code`` may be put in a Close frame we send."""
    return code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1011, 1012, 1013) or (
        3000 <= code <= 4999
    )


#: A row's test: ``(code, reason, http_status, phase, last_error_code) -> bool``.
Predicate = Callable[[int | None, str | None, int | None, str, str | None], bool]


@attrs.frozen
class Row:
    """``when`` decides on (code, reason, http_status, phase, last_error_code) -> bool."""

    diagnosis: str
    when: Predicate
    description: str


def _reason_has(*needles: str) -> Predicate:
    def match(code: int | None, reason: str | None, http_status: int | None, phase: str,
              error_code: str | None) -> bool:
        text = (reason or "").lower().replace("-", "")
        return any(n in text for n in needles)

    return match


def _all(*preds: Predicate) -> Predicate:
    return lambda *a: all(p(*a) for p in preds)


def _code(*codes: int | None) -> Predicate:
    return lambda code, reason, http_status, phase, error_code: code in codes and (
        http_status is None
    )


def _http(lo: int, hi: int | None = None) -> Predicate:
    top = lo if hi is None else hi
    return lambda code, reason, http_status, phase, error_code: (
        http_status is not None and lo <= http_status <= top
    )


def _before_applied(code: int | None, reason: str | None, http_status: int | None, phase: str,
                    error_code: str | None) -> bool:
    return phase in ("connecting", "configuring")


def _has_error(code: int | None, reason: str | None, http_status: int | None, phase: str,
               error_code: str | None) -> bool:
    return error_code is not None


def _error_is(*names: str) -> Predicate:
    return lambda code, reason, http_status, phase, error_code: error_code in names


_SETUP_ERRORS = (
    "INVALID_SETTINGS",
    "UNPARSABLE_CLIENT_MESSAGE",
    "NON_SETTINGS_MESSAGE_BEFORE_SETTINGS",
    "SETTINGS_ALREADY_APPLIED",
    "INVALID_AGENT_ID",
    "AGENT_ID_NOT_SUPPORTED",
)

UPSTREAM_ROWS = (
    Row("DG_BAD_REQUEST", _http(400), "upgrade refused: 400"),
    Row("DG_AUTH_FAILED", _http(401), "upgrade refused: 401"),
    Row("DG_FORBIDDEN", _http(403), "upgrade refused: 403"),
    Row("DG_RATE_LIMITED", _http(429), "upgrade refused: 429"),
    Row("DG_UNAVAILABLE", _http(500, 599), "upgrade refused: 5xx"),
    Row("DG_UPGRADE_REFUSED", _http(100, 599), "upgrade refused: other status"),
    Row("DG_GOING_AWAY", _error_is("SERVER_GOING_AWAY"), "Error SERVER_GOING_AWAY"),
    Row(
        "DG_SETTINGS_REJECTED",
        _all(_code(None, 1005), _error_is(*_SETUP_ERRORS)),
        "no status after a Settings Error",
    ),
    Row(
        "DG_SETTINGS_REJECTED_NO_ERROR",
        _all(_code(None, 1005), _before_applied, lambda *a: not _has_error(*a)),
        "no status before SettingsApplied, no Error",
    ),
    Row("DG_FATAL_ERROR", _all(_code(None, 1005), _has_error), "no status after an Error"),
    Row("DG_NO_STATUS", _code(None, 1005), "no status, no Error"),
    Row("DG_NET_0001", _all(_code(1011), _reason_has("net0001")), "1011 NET-0001"),
    Row("DG_NET_0000", _all(_code(1011), _reason_has("net0000")), "1011 NET-0000"),
    Row("DG_DATA_0000", _all(_code(1008), _reason_has("data0000")), "1008 DATA-0000"),
    # An older Deepgram page pairs DATA-0000 with 1002 (protocols.md §3.4).
    Row("DG_DATA_0000", _all(_code(1002), _reason_has("data0000")), "1002 DATA-0000"),
    Row("DG_POLICY", _code(1008), "1008 other"),
    Row("DG_MESSAGE_TOO_BIG", _code(1009), "1009"),
    Row("DG_INTERNAL_ERROR", _code(1011), "1011 other"),
    Row("DG_GOING_AWAY", _code(1001, 1012, 1013), "1001/1012/1013"),
    Row("DG_SETTINGS_REJECTED_NO_ERROR", _all(_code(1000), _before_applied), "1000 before SettingsApplied"),
    Row("DG_CLOSED", _code(1000), "1000"),
    Row("DG_BAD_GATEWAY", _code(1014), "1014 bad gateway"),
    Row("DG_DROPPED", _code(1006), "1006: no close frame"),
    Row("DG_CLOSE_OTHER", lambda *a: True, "anything else"),
)


def classify_upstream_close(
    code: int | None,
    reason: str | None,
    http_status: int | None,
    phase: str,
    last_error: Mapping[str, object] | None,
) -> str:
    """The diagnosis code for a Deepgram leg that ended as described."""
    error_code = None if last_error is None else str(last_error.get("code"))
    for row in UPSTREAM_ROWS:
        if row.when(code, reason, http_status, phase, error_code):
            return row.diagnosis
    raise AssertionError("the last row matches everything")


#: The diagnosis for each rule the gateway enforces by ending a caller's connection itself
#: (`gateway.events.CallerClosed.gateway_rule`, which the caller leg learns from Autobahn).
CALLER_RULES: Mapping[str, str] = {
    "protocol_error": "CALLER_PROTOCOL_ERROR",  # Autobahn closed with 1002
    "invalid_utf8": "CALLER_INVALID_UTF8",  # 1007
    "message_too_big": "CALLER_MESSAGE_TOO_BIG",  # 1009
    "ping_timeout": "CALLER_PING_TIMEOUT",  # no pong in time: the gateway dropped it
    "close_timeout": "CALLER_ABORTED",  # no Close in reply to ours in time: dropped
    "aborted": "CALLER_ABORTED",  # the call's end deadline passed: dropped
}


def classify_caller_close(
    code: int | None, was_clean: bool, stopped: bool, gateway_rule: str | None = None
) -> str:
    """
    The diagnosis code for a caller leg that ended (``stopped``: Twilio sent ``stop``).

    ``gateway_rule`` is set when the gateway ended the connection itself (see `CALLER_RULES`):
    then the close is the gateway's, named by the rule, whatever code the caller echoed.
    """
    if stopped:
        return "CALLER_HANGUP"
    if gateway_rule is not None:
        return CALLER_RULES[gateway_rule]
    if not was_clean or code == 1006:
        return "CALLER_DROPPED"
    return "CALLER_CLOSED"
