"""
What the call needs of its two legs, typed, so the core never imports ``gateway.legs``.

A leg's lifecycle is one explicit value, `LegState`: ``CONNECTING``, ``OPEN``, ``CLOSING``,
``CLOSED``. The legs are Autobahn protocols whose own ``state`` attribute *is* that value (the
numbers are Autobahn's ``STATE_*`` constants, checked by a test), so the call consults the one
record of a leg's state that exists instead of a boolean mirrored beside it. A leg is ``CLOSING``
from the moment either side's Close frame is sent or received: nothing may be sent on it any more,
though it is not closed yet (one round trip to Deepgram, tens of milliseconds over the internet).
"""

from __future__ import annotations

import enum
from typing import Any, Mapping, Protocol

__all__ = ["LegState", "CallerLeg", "UpstreamLeg"]


class LegState(enum.IntEnum):
    """One leg's WebSocket lifecycle (the values of Autobahn's ``WebSocketProtocol.STATE_*``)."""

    CLOSED = 0
    CONNECTING = 1
    CLOSING = 2
    OPEN = 3


class CallerLeg(Protocol):
    """What the call asks of the caller's WebSocket protocol (gateway.legs.caller)."""

    #: The leg's lifecycle; the call sends only while it is `LegState.OPEN`.
    state: int
    congested: bool

    def send_audio(self, payload: bytes) -> None: ...
    def send_clear(self) -> None: ...
    def send_mark(self, name: str) -> None: ...
    def send_event(self, event: Any) -> None: ...
    def send_error(self, code: str, message: str) -> None: ...
    def close(self, code: int, reason: str) -> None: ...
    def abort(self) -> None: ...


class UpstreamLeg(Protocol):
    """What the call asks of the Deepgram WebSocket protocol (gateway.legs.deepgram)."""

    #: The leg's lifecycle; the call sends only while it is `LegState.OPEN`.
    state: int
    congested: bool

    def send_audio(self, payload: bytes) -> None: ...
    def send_message(self, message: Mapping[str, Any]) -> None: ...
    def close(self, code: int = 1000) -> None: ...
    def abort(self) -> None: ...
