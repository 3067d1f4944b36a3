"""
`CallInfo`: the facts of one call that stages read (``ctx.call``), its logger, and the metrics
a call made without a gateway reports to (nowhere).
"""

from __future__ import annotations

import collections
from typing import Any

import attrs
from twisted.logger import Logger

from gateway.codecs.formats import AudioFormat

__all__ = ["CallInfo", "CallLogger", "NoMetrics"]


@attrs.define
class CallInfo:
    """The facts of one call that stages may read (through ``ctx.call``)."""

    call_id: str
    leg: str
    mode: str
    caller_format: AudioFormat
    upstream_input: AudioFormat
    upstream_output: AudioFormat
    started_at: float
    stream_sid: str = ""
    call_sid: str = ""
    account_sid: str = ""
    custom_parameters: dict[str, str] = attrs.field(factory=dict)
    request_id: str | None = None
    request_ids: list[str | None] = attrs.field(factory=list)
    last_error: dict[str, Any] | None = None
    last_error_seen: dict[str, Any] | None = None
    last_warning: dict[str, Any] | None = None
    phase: str = "handshake"
    #: Why the call ended (a diagnosis code), once it is ending; None before.
    diagnosis_code: str | None = None
    functions: list[dict[str, Any]] = attrs.field(factory=list)
    frames_from_caller: int = 0
    bytes_from_caller: int = 0
    frames_from_upstream: int = 0
    bytes_from_upstream: int = 0
    frames_to_upstream: int = 0
    bytes_to_upstream: int = 0
    frames_to_caller: int = 0
    bytes_to_caller: int = 0
    counters: collections.Counter = attrs.field(factory=collections.Counter, repr=False)
    #: Which stage first counted each counter name (``ctx.count``), for gateway.metrics.
    counted_by: dict[str, str] = attrs.field(factory=dict, repr=False)


class NoMetrics:
    """Metrics that go nowhere (a call made without a gateway, in tests)."""

    def connected(self, mode: str, seconds: float) -> None: ...
    def settings_applied(self, seconds: float) -> None: ...
    def agent_responded(self, seconds: float) -> None: ...
    def caller_heard(self, seconds: float) -> None: ...
    def leg_closed(self, leg: str, code: int | None) -> None: ...


class CallLogger(Logger):
    """A `Logger` that adds the call's ``call_id``, ``stream_sid`` and ``phase`` to every event."""

    def __init__(self, namespace: str, info: CallInfo) -> None:
        super().__init__(namespace=namespace)
        self._info = info

    def emit(self, level: Any, format: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("call_id", self._info.call_id)
        kwargs.setdefault("stream_sid", self._info.stream_sid)
        kwargs.setdefault("phase", self._info.phase)
        super().emit(level, format, **kwargs)
