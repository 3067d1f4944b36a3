"""
The call report: what one call did and how it ended, as one JSON-ready dict.

Logged as one structured event at the end of every call (``call_report`` field) and, when a
webhook is configured, POSTed there with the transcript (listen and Flux modes: Flux's turns) or
the conversation (Voice Agent mode).
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_report", "TranscriptKeeper", "MAX_TRANSCRIPT_ITEMS"]

#: A call keeps at most this many transcript / conversation items (the oldest are dropped).
MAX_TRANSCRIPT_ITEMS = 500


class TranscriptKeeper:
    """Collects final transcript segments (listen), Flux turns or conversation turns (agent), bounded."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.dropped = 0

    def _add(self, item: dict[str, Any]) -> None:
        if len(self.items) >= MAX_TRANSCRIPT_ITEMS:
            self.items.pop(0)
            self.dropped += 1
        self.items.append(item)

    def observe(self, kind: str, message: Any) -> None:
        """Look at one Deepgram event."""
        if kind == "ConversationText":
            role, content = message.get("role"), message.get("content")
            if isinstance(role, str) and isinstance(content, str):
                self._add({"role": role, "content": content})
        elif kind == "Results" and message.get("is_final"):
            try:
                text = message["channel"]["alternatives"][0]["transcript"]
            except (KeyError, IndexError, TypeError):
                return
            if isinstance(text, str) and text:
                self._add({"start": message.get("start"), "duration": message.get("duration"),
                           "transcript": text})
        elif kind == "TurnInfo" and message.get("event") == "EndOfTurn":
            text = message.get("transcript")
            if isinstance(text, str) and text:
                start, end = message.get("audio_window_start"), message.get("audio_window_end")
                duration = round(end - start, 3) if _numbers(start, end) else None
                self._add({"turn": message.get("turn_index"), "start": start, "duration": duration,
                           "transcript": text, "end_of_turn_confidence":
                           message.get("end_of_turn_confidence"), "trigger": message.get("trigger")})


def _numbers(*values: Any) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def deepgram_latency(info: Any) -> dict[str, dict[str, float | int]]:
    """
    Deepgram's own latency figures for the call (from its ``LatencyReport`` messages): per stage
    (``tts``, ``total``...), the mean in seconds and the number of reports.
    """
    sums = _counters(info, "deepgram_latency_ms")
    counts = _counters(info, "deepgram_latency_reports")
    return {stage: {"mean_s": round(sums.get(stage, 0) / n / 1000, 3), "reports": n}
            for stage, n in sorted(counts.items()) if n}


def _counters(info: Any, name: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for (counter, labels), value in info.counters.items():
        if counter == name:
            key = ",".join(v for _, v in labels) or name
            out[key] = out.get(key, 0) + value
    return out


def build_report(call: Any, now: float) -> dict[str, Any]:
    """The report of ``call`` (which has ended)."""
    info = call.info
    d = call.diagnosis
    return {
        "call_id": info.call_id,
        "leg": info.leg,
        "mode": info.mode,
        "stream_sid": info.stream_sid,
        "call_sid": info.call_sid,
        "duration_s": round(now - info.started_at, 3),
        "frames": {
            "caller_in": info.frames_from_caller,
            "caller_out": info.frames_to_caller,
            "deepgram_in": info.frames_from_upstream,
            "deepgram_out": info.frames_to_upstream,
        },
        "bytes": {
            "caller_in": info.bytes_from_caller,
            "caller_out": info.bytes_to_caller,
            "deepgram_in": info.bytes_from_upstream,
            "deepgram_out": info.bytes_to_upstream,
        },
        "dropped": _counters(info, "frames_dropped"),
        "rejected": _counters(info, "caller_messages_rejected"),
        "reconnects": sum(_counters(info, "reconnects").values()),
        "dg_request_ids": [r for r in info.request_ids if r],
        "deepgram_latency": deepgram_latency(info),
        "control_messages": _counters(info, "control_messages"),
        "unknown_messages": sum(_counters(info, "upstream_messages_unknown").values()),
        "last_error": info.last_error_seen,
        "last_warning": info.last_warning,
        "diagnosis": None if d is None else {
            "code": d.code,
            "leg": d.leg,
            "phase": d.phase,
            "summary": d.entry.summary,
            "action": d.entry.action,
            "close_code": d.close_code,
            "close_reason": d.close_reason,
            "http_status": d.http_status,
            "dg_error": d.dg_error,
            "caller_close": d.caller_close,
        },
    }
