"""
What the call needs of its two legs, typed, so the core never imports ``gateway.legs``.

A leg's lifecycle is one explicit value, `LegState`: ``CONNECTING``, ``OPEN``, ``CLOSING``,
``CLOSED``. The legs are Autobahn protocols whose own ``state`` attribute *is* that value (the
numbers are Autobahn's ``STATE_*`` constants, checked by a test), so the call consults the one
record of a leg's state that exists instead of a boolean mirrored beside it. A leg is ``CLOSING``
from the moment either side's Close frame is sent or received: nothing may be sent on it any more,
though it is not closed yet (one round trip to Deepgram, tens of milliseconds over the internet).

The other direction is typed here too, so the legs never import ``gateway.call``: `CallerSink`
and `UpstreamSink` are what a leg asks of the call it reports to (a `gateway.call.Call`, or for
the Deepgram leg the `gateway.call.UpstreamPort` of its attempt), and `CallerGateway` is what the
caller leg's factory asks of the running gateway at the upgrade.
"""

from __future__ import annotations

import enum
from typing import Any, Mapping, Protocol, Union

from twisted.logger import Logger

from gateway.events import (
    Audio,
    CallerControl,
    ClientHello,
    DeepgramEvent,
    Dtmf,
    Handshake,
    MarkEchoed,
    StreamStarted,
    StreamStopped,
    UpstreamClosed,
)

__all__ = [
    "LegState",
    "CallerLeg",
    "UpstreamLeg",
    "CallerEvent",
    "LegConfig",
    "LegSink",
    "CallerSink",
    "UpstreamSink",
    "CallerGateway",
]


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


# --- what a leg asks of its call ------------------------------------------------------------------

#: What the caller leg hands the call through `CallerSink.from_caller` (audio has its own method).
CallerEvent = Union[StreamStarted, MarkEchoed, Dtmf, StreamStopped, ClientHello, CallerControl]


class LegConfig(Protocol):
    """The one setting a leg reads from the call's configuration (`gateway.config`)."""

    @property
    def send_budget_bytes(self) -> int:
        """Bytes that may wait to be written to the peer before the leg is congested."""


class LegSink(Protocol):
    """What both legs ask of the call they report to."""

    @property
    def config(self) -> LegConfig: ...

    @property
    def log(self) -> Logger:
        """The call's logger (it adds ``call_id``, ``stream_sid`` and ``phase``)."""

    def count(self, name: str, amount: int = 1, **labels: str) -> None:
        """Add to one of the call's counters (rejected messages, by ``reason``)."""


class CallerSink(LegSink, Protocol):
    """What the caller leg (`gateway.legs.caller`) asks of its `gateway.call.Call`."""

    def caller_handshake(self, event: Handshake) -> None:
        """The upgrade request; raises `gateway.errors.AuthError` to refuse it."""

    def caller_opened(self, leg: CallerLeg) -> None:
        """The WebSocket is open; ``leg`` is what the call sends to from now on."""

    def from_caller(self, event: CallerEvent) -> None:
        """An event parsed from the caller (anything but audio)."""

    def caller_audio(self, event: Audio) -> None:
        """The hot path: one audio frame from the caller."""

    def caller_closed(
        self, code: int | None, reason: str | None, was_clean: bool, gateway_rule: str | None = None
    ) -> None:
        """The connection ended; ``gateway_rule`` names the rule if the gateway ended it."""


class UpstreamSink(LegSink, Protocol):
    """What the Deepgram leg (`gateway.legs.deepgram`) asks of its call's `UpstreamPort`."""

    def upstream_opened(self, leg: UpstreamLeg, request_id: str | None) -> None:
        """The WebSocket is open; ``request_id`` is Deepgram's ``dg-request-id``."""

    def from_upstream(self, event: DeepgramEvent) -> None:
        """A JSON message from Deepgram."""

    def upstream_audio(self, event: Audio) -> None:
        """The hot path: one audio frame from Deepgram."""

    def upstream_closed(self, event: UpstreamClosed) -> None:
        """The leg ended (reported once, as early as it is known)."""


class CallerGateway(Protocol):
    """What the caller leg's factory asks of the running gateway (`gateway.service.Gateway`)."""

    def refuse_upgrade(self) -> str | None:
        """Why no new call is accepted now (draining, every slot held), or None."""

    def source_address(self, peer: Any, headers: Mapping[str, str]) -> str:
        """The caller's address, from the socket's peer or a trusted proxy's header."""

    def new_call(self, leg: str, address: str = "") -> CallerSink:
        """A new call for an upgrade on ``leg`` (``twilio`` or ``client``)."""

    def caller_upgraded(self, call: Any) -> str | None:
        """Admission once the handshake passed: why the call is refused (503), or None."""
