"""
What a handed-over call carries to the process that takes it up: its identity and parameters,
each stage's saved state (`gateway.plugin.KeepsState`), the transcript so far, and the report of
each process it passed through (one segment each). Values in, values out: no IO here.
"""

from __future__ import annotations

from typing import Any, Mapping

from gateway.callinfo import CallInfo
from gateway.plugin import KeepsState

__all__ = ["take", "restore"]

#: The record's version: a process refuses nothing, but reads only what it knows.
VERSION = 1


def take(
    info: CallInfo,
    stages: Mapping[str, Any],
    transcript: list[dict[str, Any]],
    segments: list[dict[str, Any]],
    handovers: int,
) -> dict[str, Any]:
    """The record of a call (``segments``: every process's report, this one's last)."""
    states = {}
    for name, stage in stages.items():
        if isinstance(stage, KeepsState):
            state = stage.save_state()
            if state is not None:
                states[name] = state
    return {
        "v": VERSION,
        "call_id": info.call_id,
        "call_sid": info.call_sid,
        "account_sid": info.account_sid,
        "stream_sid": info.stream_sid,
        "custom_parameters": dict(info.custom_parameters),
        "states": states,
        "transcript": list(transcript),
        "segments": segments,
        "handovers": handovers,
    }


def restore(
    record: Mapping[str, Any], info: CallInfo, stages: Mapping[str, Any], transcript: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], int]:
    """
    Make a fresh call the one ``record`` describes: its id, transcript and each stage's state.
    Returns the earlier processes' report segments and the count of handovers so far.
    """
    call_id = record.get("call_id")
    if isinstance(call_id, str) and call_id:
        info.call_id = call_id[:64]
    for item in record.get("transcript") or ():
        if isinstance(item, dict):
            transcript.append(item)
    states = record.get("states") or {}
    for name, stage in stages.items():
        if isinstance(stage, KeepsState) and isinstance(states.get(name), dict):
            stage.restore_state(states[name])
    segments = [s for s in record.get("segments") or () if isinstance(s, dict)]
    return segments, int(record.get("handovers") or 0)
