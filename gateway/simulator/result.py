"""
What a simulated call saw: `CallResult`, filled in while the call runs and complete once the
WebSocket is closed.

Times are seconds since `run()` was called, on the reactor's clock. ``events`` holds, in order,
every message that arrived (JSON as dicts, under their ``event``/``type`` name; binary frames as
their length under ``binary``; undecodable text under ``invalid``) and the simulator's own
observations under names starting with ``sim.`` (agent speaking, marks echoed, barge-ins, DTMF and
``stop`` sent, the close).
"""

from __future__ import annotations

import base64
from typing import Any

import attrs

__all__ = ["CallResult", "Handover", "Stats", "close_code_words", "MAX_VIOLATIONS"]

#: Violations recorded one by one; past this many only their number grows.
MAX_VIOLATIONS = 100

_CLOSE_WORDS = {
    1000: "normal closure",
    1001: "going away",
    1002: "protocol error",
    1003: "unsupported data",
    1005: "no status code in the close frame",
    1006: "connection dropped without a close frame",
    1007: "invalid payload data",
    1008: "policy violation",
    1009: "message too big",
    1011: "internal server error",
    1012: "service restart",
    1013: "try again later",
    1015: "TLS handshake failure",
    4001: "AUTH_TIMEOUT: no token in time",
    4002: "INVALID_AUTH: the first message was not a token",
    4003: "AUTH_FAILED: the token was refused",
    4500: "SESSION_SETUP_FAILED",
    4501: "upstream (Deepgram) failed",
    4502: "gateway internal error",
}


def close_code_words(code: int | None) -> str:
    """A WebSocket close code in plain words (``None``: no close code at all)."""
    if code is None:
        return "no close code"
    if code in _CLOSE_WORDS:
        return _CLOSE_WORDS[code]
    if 3000 <= code <= 4999:
        return "application-defined close code"
    return "unknown close code"


@attrs.frozen
class Stats:
    """Summary of a series of measurements, in milliseconds."""

    count: int
    mean_ms: float
    p50_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def of(cls, values_s: list[float]) -> Stats | None:
        """Summarise values given in seconds; ``None`` for an empty series."""
        if not values_s:
            return None
        ordered = sorted(values_s)
        n = len(ordered)

        def at(q: float) -> float:
            return ordered[min(n - 1, int(q * n))] * 1000.0

        return cls(n, sum(ordered) / n * 1000.0, at(0.5), at(0.99), ordered[-1] * 1000.0)


@attrs.define
class Handover:
    """
    One WebSocket replaced by the next after a handover (a Twilio ``<Connect action>``, a
    ``/client`` ``Handover`` message): when the old one closed, when the new one opened, and the
    caller-heard gap, from the last agent audio before to the first agent audio after (in the
    call's own time; ``None`` where not measurable).
    """

    closed_at: float
    opened_at: float | None
    last_agent_audio_at: float | None
    first_agent_audio_at: float | None = None

    @property
    def gap_s(self) -> float | None:
        if self.last_agent_audio_at is None or self.first_agent_audio_at is None:
            return None
        return self.first_agent_audio_at - self.last_agent_audio_at

    @property
    def stream_gap_s(self) -> float | None:
        return None if self.opened_at is None else self.opened_at - self.closed_at

    def to_json(self) -> dict[str, Any]:
        return {**attrs.asdict(self), "gap_s": self.gap_s, "stream_gap_s": self.stream_gap_s}


def _jsonable(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return {"base64": base64.b64encode(bytes(value)).decode("ascii"), "bytes": len(value)}
    if isinstance(value, Stats):
        return attrs.asdict(value)
    if isinstance(value, Handover):
        return value.to_json()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


@attrs.define(eq=False)
class CallResult:
    """
    Everything a simulated call recorded.

    ``sent_audio`` is exactly the caller audio sent (the clip, then any silence), concatenated;
    ``agent_audio`` the outbound audio received, in order (mu-law 8 kHz from Twilio's gateway
    side, PCM s16le 16 kHz for a raw-audio client). ``marks_echoed`` pairs each echoed mark with
    ``played`` or ``cleared``. ``violations`` lists what Twilio would reject (31950 binary frames,
    31951 invalid messages) or, for clients, what breaks the /client protocol. ``handshake_status``
    is the HTTP status of a refused upgrade; ``connect_error`` says why no TCP connection was made.
    ``handovers`` lists the sockets a ``/client`` call moved across when the gateway handed it
    over (the close fields then describe the last socket).
    """

    mode: str = "twilio"
    url: str = ""
    stream_sid: str | None = None
    call_sid: str | None = None
    events: list = attrs.field(factory=list)
    sent_audio: bytes = b""
    frames_sent: int = 0
    agent_audio: bytes = b""
    agent_sample_rate_hz: int = 8000
    agent_encoding: str = "mulaw"
    media_events: int = 0
    clears: int = 0
    marks_received: list = attrs.field(factory=list)
    marks_echoed: list = attrs.field(factory=list)
    dtmf_sent: list = attrs.field(factory=list)
    violations: list = attrs.field(factory=list)
    violation_count: int = 0
    binary_frames: int = 0
    errors: list = attrs.field(factory=list)
    transcript: list = attrs.field(factory=list)
    handshake_status: int | None = None
    connect_error: str | None = None
    opened: bool = False
    stop_sent: bool = False
    closed_by: str | None = None
    stop_unanswered: bool = False
    close_code: int | None = None
    close_reason: str | None = None
    was_clean: bool = False
    speech_end_s: float | None = None
    first_agent_audio_s: float | None = None
    first_agent_audio_after_speech_s: float | None = None
    send_lateness: Stats | None = None
    agent_media_gaps: Stats | None = None
    duration_s: float = 0.0
    handovers: list = attrs.field(factory=list)

    @property
    def agent_audio_s(self) -> float:
        """Seconds of agent audio received."""
        width = 1 if self.agent_encoding == "mulaw" else 2
        return len(self.agent_audio) / (width * self.agent_sample_rate_hz)

    def violation(self, text: str) -> None:
        """Record something the caller's side would reject (bounded list, exact count)."""
        self.violation_count += 1
        if len(self.violations) < MAX_VIOLATIONS:
            self.violations.append(text)

    def failure(self) -> str | None:
        """One line saying why this call is not a success, or ``None`` when it is."""
        if self.connect_error is not None:
            return f"could not connect to {self.url}: {self.connect_error}"
        if self.handshake_status is not None:
            return f"the gateway refused the WebSocket upgrade with HTTP {self.handshake_status}"
        if not self.opened:
            return f"the WebSocket never opened ({self.close_reason or 'no reason given'})"
        if self.violation_count:
            more = f" (and {self.violation_count - 1} more)" if self.violation_count > 1 else ""
            return f"protocol violation: {self.violations[0]}{more}"
        if self.close_code != 1000:
            reason = f": {self.close_reason}" if self.close_reason else ""
            return f"the call closed with {self.close_code} ({close_code_words(self.close_code)}){reason}"
        if self.stop_unanswered:
            return "the gateway did not close the WebSocket after stop; the simulator closed it"
        return None

    @property
    def ok(self) -> bool:
        """A normal close (1000) with no protocol violation."""
        return self.failure() is None

    def to_json(self, include_audio: bool = False) -> dict[str, Any]:
        """A JSON-ready dict; audio as byte counts unless ``include_audio`` (then base64)."""
        out: dict[str, Any] = {}
        for field in attrs.fields(CallResult):
            value = getattr(self, field.name)
            if field.name in ("sent_audio", "agent_audio") and not include_audio:
                value = len(value)
            out[field.name] = _jsonable(value)
        out["agent_audio_s"] = self.agent_audio_s
        out["ok"] = self.ok
        out["failure"] = self.failure()
        return out
