"""
Every way a call can end, as data: a stable code, what it means, what to do, and what the caller
gets.

Logs, close reasons, metric labels and the README's table all come from `DIAGNOSES`; tests assert
codes, not prose. The classification of raw closes into these codes is in
`gateway.codecs.close_codes`.
"""

from __future__ import annotations

from typing import Any, Mapping

import attrs

from gateway.codecs.close_codes import classify_upstream_close
from gateway.events import UpstreamClosed

__all__ = ["Entry", "DIAGNOSES", "Diagnosis", "entry", "caller_close_for", "diagnose_upstream"]

#: Close codes the gateway sends to callers (besides 1000 and 1001).
AUTH_TIMEOUT = 4001
INVALID_AUTH = 4002
AUTH_FAILED = 4003
SESSION_SETUP_FAILED = 4500
UPSTREAM_FAILED = 4501
INTERNAL_ERROR = 4502
CALLER_IDLE = 4408


@attrs.frozen
class Entry:
    """
    One row of the table. ``caller_close`` is the WebSocket close code the caller gets when this
    ends the call (only codes that may be sent: 1000, 1001, 3000-4999); ``retryable`` says
    whether opening a new Deepgram session could help.
    """

    code: str
    summary: str
    action: str
    retryable: bool
    caller_close: int


def _e(code: str, summary: str, action: str, retryable: bool, caller_close: int) -> Entry:
    return Entry(code, summary, action, retryable, caller_close)


_ROWS = [
    # normal ends
    _e("CALL_COMPLETED", "the call ended normally", "nothing to do", False, 1000),
    _e("AGENT_ENDED_CALL", "the agent called end_call and its last words were played",
       "nothing to do: Twilio continues with the next TwiML verb or hangs up", False, 1000),
    _e("HANDED_OVER", "the call was handed to another gateway process (drain or operator request)",
       "nothing to do: Twilio requested the <Connect action> URL and the call goes on elsewhere",
       False, 1000),
    _e("CALLER_HANGUP", "Twilio sent 'stop': the caller hung up or the call moved on",
       "nothing to do", False, 1000),
    _e("CALLER_CLOSED", "the caller closed the WebSocket", "nothing to do", False, 1000),
    _e("CALLER_IDLE", "the caller sent no audio for keepalive.caller_idle_timeout_s",
       "check the caller: Twilio streams audio continuously, even silence", False, CALLER_IDLE),
    _e("CALLER_DROPPED", "the caller's connection dropped without a WebSocket close",
       "check the caller's network or the proxy's timeouts (longer than the ping interval)",
       False, 1000),
    # the gateway ended the caller's connection itself, enforcing a rule
    _e("CALLER_PROTOCOL_ERROR",
       "the gateway closed the caller's WebSocket (1002): the caller broke the WebSocket protocol",
       "read the 'failing WebSocket connection' line logged with it; fix the caller's WebSocket "
       "client or the proxy in between", False, 1002),
    _e("CALLER_INVALID_UTF8",
       "the gateway closed the caller's WebSocket (1007): a text frame that is not valid UTF-8",
       "send JSON text frames as UTF-8; audio goes in binary frames (/client) or base64 media "
       "messages (/twilio)", False, 1007),
    _e("CALLER_MESSAGE_TOO_BIG",
       "the gateway closed the caller's WebSocket (1009): a message over the 64 KiB limit",
       "send smaller messages: Twilio's are about 400 bytes, a /client sends 20 ms of audio "
       "(640 bytes) per frame", False, 1009),
    _e("CALLER_PING_TIMEOUT",
       "the caller did not answer the gateway's WebSocket ping in time; the gateway dropped it",
       "check the caller's network and any proxy in between ([keepalive] "
       "caller_ping_interval_s, caller_ping_timeout_s)", False, 1000),
    _e("CALLER_ABORTED",
       "the gateway aborted the caller's connection: no closing handshake in time",
       "check that the caller answers a Close frame with a Close frame (the gateway waits 2 s, "
       "end_timeout_s for the whole call)", False, 1000),
    _e("DG_CLOSED", "Deepgram closed the session normally (1000)",
       "nothing to do if the call was ending; otherwise see the last Deepgram Error", False, 1000),
    # Deepgram closes with a diagnosis
    _e("DG_SETTINGS_REJECTED",
       "Deepgram rejected the Settings: an Error, then a close with no status code (the '1005')",
       "fix the Settings field named in the Error; run 'gateway check-config'", False,
       SESSION_SETUP_FAILED),
    _e("DG_SETTINGS_REJECTED_NO_ERROR",
       "Deepgram closed with no status code right after Settings, without an Error",
       "validate the Settings locally ('gateway check-config') and compare with Deepgram's schema",
       False, SESSION_SETUP_FAILED),
    _e("DG_FATAL_ERROR",
       "Deepgram sent a fatal Error, then closed with no status code",
       "read the Error's code and description in the log line", False, UPSTREAM_FAILED),
    _e("DG_NO_STATUS", "Deepgram closed with no status code and no Error",
       "retry; if it repeats, report the dg-request-id to Deepgram", True, UPSTREAM_FAILED),
    _e("DG_NET_0001",
       "Deepgram received no audio for ~10 s (1011 NET-0001)",
       "keep audio flowing: the keepalive plugin sends silence on /v1/listen", True,
       UPSTREAM_FAILED),
    _e("DG_NET_0000",
       "Deepgram did not produce a response in time (1011 NET-0000)",
       "retry; if it repeats, report the dg-request-id to Deepgram", True, UPSTREAM_FAILED),
    _e("DG_DATA_0000",
       "Deepgram could not decode the audio as declared (1008 DATA-0000)",
       "check the encoding and sample_rate the transcoder declares against what is sent", False,
       UPSTREAM_FAILED),
    _e("DG_MESSAGE_TOO_BIG", "Deepgram refused a message as too big (1009)",
       "send audio in smaller frames", False, UPSTREAM_FAILED),
    _e("DG_INTERNAL_ERROR", "Deepgram closed with an internal error (1011)",
       "retry; report the dg-request-id if it repeats", True, UPSTREAM_FAILED),
    _e("DG_GOING_AWAY", "Deepgram is going away (1001 or SERVER_GOING_AWAY)",
       "retry on a new session", True, UPSTREAM_FAILED),
    _e("DG_POLICY", "Deepgram closed for a policy violation (1008)",
       "read the close reason in the log line", False, UPSTREAM_FAILED),
    _e("DG_CLOSE_OTHER", "Deepgram closed with an unexpected code",
       "read the code and reason in the log line", False, UPSTREAM_FAILED),
    _e("DG_DROPPED", "the Deepgram connection dropped without a WebSocket close (1006)",
       "check the network path to Deepgram; retryable", True, UPSTREAM_FAILED),
    _e("DG_BAD_GATEWAY", "Deepgram's front end could not reach its back end (1014 bad gateway)",
       "retry; check Deepgram's status page if it repeats", True, UPSTREAM_FAILED),
    _e("DG_UNSTABLE",
       "Deepgram kept losing the session: the reconnect budget for the call is spent",
       "read the sessions and closes in the log line; check Deepgram's status page and the "
       "[deepgram] reconnect_window_max / reconnect_max_per_call options", False, UPSTREAM_FAILED),
    _e("DG_NO_WELCOME", "Deepgram opened the session but sent no Welcome in time",
       "retry; check the settings.welcome_timeout_s option and the network path", True,
       SESSION_SETUP_FAILED),
    # failed upgrades
    _e("DG_BAD_REQUEST", "Deepgram refused the upgrade with 400: invalid parameters",
       "read dg-error; fix the listen parameters or the URL", False, SESSION_SETUP_FAILED),
    _e("DG_AUTH_FAILED", "Deepgram refused the key (401)",
       "check DEEPGRAM_API_KEY (run 'gateway doctor')", False, SESSION_SETUP_FAILED),
    _e("DG_FORBIDDEN", "Deepgram refused access (403), e.g. the project lacks the model",
       "read dg-error; check the key's project and permissions", False, SESSION_SETUP_FAILED),
    _e("DG_RATE_LIMITED", "Deepgram's concurrency limit was reached (429)",
       "lower concurrency or raise the project's limit; retryable", True, SESSION_SETUP_FAILED),
    _e("DG_UNAVAILABLE", "Deepgram answered the upgrade with a server error (5xx)",
       "retry; check Deepgram's status page", True, SESSION_SETUP_FAILED),
    _e("DG_UPGRADE_REFUSED", "Deepgram refused the upgrade with an unexpected HTTP status",
       "read dg-error and the status in the log line", False, SESSION_SETUP_FAILED),
    _e("DG_UNREACHABLE", "the gateway could not connect to Deepgram (DNS, TCP or TLS)",
       "check DEEPGRAM_AGENT_URL / DEEPGRAM_LISTEN_URL and the network", True,
       SESSION_SETUP_FAILED),
    _e("DG_SETUP_TIMEOUT", "Deepgram did not confirm the Settings in time",
       "retry; check the settings.applied_timeout_s option", True, SESSION_SETUP_FAILED),
    # caller-side
    _e("AUTH_TIMEOUT", "the client sent no token in time", "send {\"token\": ...} first",
       False, AUTH_TIMEOUT),
    _e("INVALID_AUTH", "the client's first message was not JSON with a token",
       "send {\"token\": ...} as the first text frame", False, INVALID_AUTH),
    _e("AUTH_FAILED", "the token or signature was invalid or expired",
       "mint a new token with POST /v1/tokens; check TWILIO_AUTH_TOKEN and GATEWAY_PUBLIC_URL",
       False, AUTH_FAILED),
    _e("SESSION_SETUP_FAILED", "the Deepgram side of the call could not be set up",
       "see the Deepgram diagnosis logged with it", False, SESSION_SETUP_FAILED),
    _e("PLUGIN_ERROR", "a plugin raised an unexpected exception; the call was ended",
       "read the traceback logged with the call id", False, INTERNAL_ERROR),
    _e("GATEWAY_FULL", "the call authenticated when every max_calls slot was taken",
       "retry the call (another process or later); raise [gateway] max_calls or add processes",
       False, 1013),
    _e("DRAINED", "the gateway was shutting down and the drain deadline passed",
       "nothing: Twilio continues with the next TwiML verb", False, 1001),
]

DIAGNOSES: Mapping[str, Entry] = {row.code: row for row in _ROWS}

#: Deepgram diagnoses that no close frame produced (a close code would be made up).
_NOT_A_CLOSE = frozenset({"DG_SETUP_TIMEOUT", "DG_NO_WELCOME", "DG_UNSTABLE", "DG_UNREACHABLE"})


def entry(code: str) -> Entry:
    """The row for ``code``; an unknown code is a bug, reported as such."""
    return DIAGNOSES[code]


@attrs.frozen
class Diagnosis:
    """
    Why one leg of one call ended: the table row plus the facts of this close.

    ``leg`` is ``upstream`` or ``caller``; ``phase`` the call's state when it happened;
    ``close_code`` the received code (None: no status), ``http_status`` for refused upgrades;
    ``error`` the last Deepgram ``Error`` message (``code``/``description``) when there was one.
    """

    code: str
    leg: str
    phase: str = ""
    close_code: int | None = None
    close_reason: str | None = None
    http_status: int | None = None
    dg_error: str | None = None
    dg_request_id: str | None = None
    error: Mapping[str, str] | None = None
    #: Facts that fit no field above (DG_UNSTABLE: the sessions and the closes that ended them).
    detail: str | None = None

    @property
    def entry(self) -> Entry:
        return DIAGNOSES[self.code]

    @property
    def caller_close(self) -> int:
        return self.entry.caller_close

    @property
    def retryable(self) -> bool:
        return self.entry.retryable

    def describe(self) -> str:
        """One line for a log: what happened, the facts, and what to do."""
        facts = []
        if self.http_status is not None:
            facts.append(f"HTTP {self.http_status}")
        if self.close_code is not None or (
            self.leg == "upstream" and self.http_status is None and self.code not in _NOT_A_CLOSE
        ):
            facts.append(f"close {self.close_code if self.close_code is not None else 'no-status'}")
        if self.close_reason:
            facts.append(f"reason {self.close_reason!r}")
        if self.dg_error:
            facts.append(f"dg-error {self.dg_error!r}")
        if self.error:
            facts.append(
                f"Deepgram Error {self.error.get('code')}: {self.error.get('description')}"
            )
        if self.detail:
            facts.append(self.detail)
        detail = "; ".join(facts)
        return f"{self.entry.summary}" + (f" ({detail})" if detail else "") + (
            f" -> {self.entry.action}"
        )


def caller_close_for(diagnosis: Diagnosis) -> tuple[int, str]:
    """The (code, reason) the caller's WebSocket is closed with for ``diagnosis``."""
    return diagnosis.caller_close, diagnosis.code[:123]


def diagnose_upstream(event: UpstreamClosed, last_error: Mapping[str, Any] | None) -> Diagnosis:
    """The diagnosis of a Deepgram leg that ended as ``event`` says."""
    if event.connect_failed:
        code = "DG_UNREACHABLE"
    else:
        code = classify_upstream_close(
            event.code, event.reason, event.http_status, event.phase, last_error
        )
    return Diagnosis(
        code=code,
        leg="upstream",
        phase=event.phase,
        close_code=event.code,
        close_reason=event.reason,
        http_status=event.http_status,
        dg_error=event.dg_error,
        dg_request_id=event.dg_request_id,
        error=(
            {"code": str(last_error.get("code")), "description": str(last_error.get("description"))}
            if last_error
            else None
        ),
    )
