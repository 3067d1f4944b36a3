"""
The events that flow through a call's plugin chain.

Each event is a small immutable attrs class named for what happened (`Audio`, the 20 ms frames,
is read-only by contract rather than frozen: see there). *Inbound* events travel from the caller
towards Deepgram, *outbound* events from Deepgram towards the caller (Twilio's sense of
``track``). Stages pick events by class; the chain dispatches by class, so a stage that does not
list ``Audio`` never sees the 20 ms frames. No behaviour lives here.
"""

from __future__ import annotations

import enum
from typing import Any, ClassVar, Mapping

import attrs

from gateway.codecs.formats import AudioFormat

__all__ = [
    "Direction",
    "Handshake",
    "ClientHello",
    "StreamStarted",
    "Audio",
    "MarkEchoed",
    "Dtmf",
    "StreamStopped",
    "CallerControl",
    "CallerClosed",
    "UpstreamMessage",
    "UpstreamOpened",
    "DeepgramEvent",
    "deepgram_event",
    "typed",
    "SettingsApplied",
    "UserStartedSpeaking",
    "AgentAudioDone",
    "FunctionCallRequest",
    "FunctionCallCancelled",
    "ConversationText",
    "DeepgramError",
    "UpstreamClosed",
    "UpstreamReconnecting",
    "Clear",
    "SendMark",
    "CallerError",
    "CallerHandover",
]


class Direction(enum.Enum):
    """Which way an event travels."""

    INBOUND = "inbound"
    OUTBOUND = "outbound"


def _frozen_dict(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return dict(value or {})


# --- from the caller (inbound) ---------------------------------------------------------------


@attrs.frozen
class Handshake:
    """
    A caller's WebSocket upgrade request, before the socket opens.

    ``leg`` is ``twilio`` or ``client``; ``headers`` have lower-case names. A stage that refuses
    it calls ``ctx.refuse(http_status, code, message)``, which becomes an HTTP error on the upgrade.
    """

    leg: str
    path: str
    headers: Mapping[str, str] = attrs.field(converter=_frozen_dict, repr=False)
    peer: str = ""


@attrs.frozen
class ClientHello:
    """
    The first message of a raw-audio client: ``{"token": ..., "parameters": {...}}``.
    ``problem`` says why it is not one (not JSON, no token, binary first...); the auth stage
    answers that with 4002 INVALID_AUTH. ``reason`` is then the codec's stable label for it
    (``bad_json``, ``too_deep``, ``bad_unicode``, ``missing_field``...; see
    `gateway.codecs.client.HELLO_REASONS`). ``handover`` is the hello's ``"handover": true``: the
    client follows a ``Handover`` message (`CallerHandover`), so a draining process may hand
    its call over.
    """

    token: str = attrs.field(repr=False)
    parameters: Mapping[str, str] = attrs.field(converter=_frozen_dict, factory=dict)
    problem: str | None = None
    reason: str | None = None
    handover: bool = False


@attrs.frozen
class StreamStarted:
    """
    The stream is described and authenticated enough to start: Twilio's ``start``, or a raw
    client's accepted hello. ``media_format`` is what the caller sends and expects back.
    """

    stream_sid: str
    call_sid: str = ""
    account_sid: str = ""
    tracks: tuple[str, ...] = ("inbound",)
    media_format: AudioFormat = AudioFormat("mulaw", 8000)
    custom_parameters: Mapping[str, str] = attrs.field(converter=_frozen_dict, factory=dict)


# Not frozen, unlike every other event: two are made per relayed frame pair, and a frozen attrs
# class sets each field through object.__setattr__ (4.8k instructions per Audio against 1.8k,
# counted under callgrind; about 4 % of a relayed frame pair, issue 21). Nothing changes one in
# place (stages that change audio return a new one), nothing relies on the FrozenInstanceError.
@attrs.define(unsafe_hash=True)
class Audio:
    """
    A piece of audio, raw bytes in the format of the leg it came from.

    Inbound it is caller audio (Twilio ``media`` payload already base64-decoded), outbound it is
    agent audio. ``defect`` is set by a codec that could not decode the frame (``bad_base64``);
    the payload is then empty and the empty_frames stage drops it.

    Read-only by contract, like every event, though not frozen (for speed, on the 20 ms path): a
    stage that changes the audio returns a new ``Audio`` (or ``attrs.evolve(event,
    payload=...)``) and never assigns to one it was given, which an earlier stage may still
    hold. It compares and hashes by value, as the frozen events do.
    """

    payload: bytes = attrs.field(repr=lambda p: f"<{len(p)} bytes>")
    track: str = "inbound"
    defect: str | None = None


@attrs.frozen
class MarkEchoed:
    """Twilio echoed a mark we sent: the audio before it has played (or was cleared)."""

    name: str


@attrs.frozen
class Dtmf:
    """The caller pressed a key."""

    digit: str
    track: str = "inbound_track"


@attrs.frozen
class HandoverRequested:
    """
    Hand this call to another gateway process at its next quiet point, at the latest after
    ``deadline_s`` (the service sends it on drain, or an operator for one call). Inbound; the
    handover stage acts on it.
    """

    deadline_s: float
    reason: str = "drain"


@attrs.frozen
class StreamStopped:
    """Twilio's ``stop``: the stream is over (the caller hung up or the call moved on)."""


@attrs.frozen
class CallerControl:
    """A later JSON message from a raw-audio client that no stage has claimed."""

    message: Mapping[str, Any] = attrs.field(converter=_frozen_dict)


@attrs.frozen
class CallerClosed:
    """
    The caller's WebSocket closed. ``code`` is None for a close frame with no status.

    ``gateway_rule`` is set when the gateway itself ended the connection, to the rule it
    enforced: ``message_too_big`` (1009), ``invalid_utf8`` (1007), ``protocol_error`` (1002),
    ``ping_timeout``, ``close_timeout`` or ``aborted`` (see
    `gateway.codecs.close_codes.CALLER_RULES`). None: the caller closed or dropped it, or the
    call closed it (the call's own diagnosis then says why).
    """

    code: int | None
    reason: str | None
    was_clean: bool
    diagnosis: Any = None
    gateway_rule: str | None = None


# --- towards Deepgram (inbound, handled at the end of the chain) -------------------------------


@attrs.frozen
class UpstreamMessage:
    """A JSON message for Deepgram (``Settings``, ``KeepAlive``, ``CloseStream``...)."""

    message: Mapping[str, Any] = attrs.field(converter=_frozen_dict)

    @property
    def type(self) -> str:
        return str(self.message.get("type", ""))


# --- from Deepgram (outbound) ------------------------------------------------------------------


@attrs.frozen
class UpstreamOpened:
    """The Deepgram WebSocket is open; ``request_id`` is its ``dg-request-id``."""

    request_id: str | None
    mode: str


@attrs.frozen(eq=False)
class DeepgramEvent:
    """
    A JSON message from Deepgram. ``type`` is its discriminator (``Welcome``, ``SettingsApplied``,
    ``UserStartedSpeaking``, ``Results``, ``Error``...); ``message`` the whole object as received.

    The messages the gateway acts on come as subclasses with typed fields (`SettingsApplied`,
    `UserStartedSpeaking`, `AgentAudioDone`, `FunctionCallRequest`, `FunctionCallCancelled`,
    `ConversationText`, `DeepgramError`); `deepgram_event` makes the right one. A stage routing
    `DeepgramEvent` sees them all; one routing `SettingsApplied` sees only those. Two events are
    equal when their ``type`` and ``message`` are, whichever class carries them.
    """

    type: str
    message: Mapping[str, Any] = attrs.field(converter=_frozen_dict, repr=False)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DeepgramEvent):
            return NotImplemented
        return self.type == other.type and self.message == other.message

    def __hash__(self) -> int:
        return hash(self.type)


@attrs.frozen(eq=False)
class SettingsApplied(DeepgramEvent):
    """The Voice Agent accepted the session's ``Settings``: the call may go live."""


@attrs.frozen(eq=False)
class UserStartedSpeaking(DeepgramEvent):
    """The caller started speaking (barge-in: what the agent was saying is cut)."""


@attrs.frozen(eq=False)
class AgentAudioDone(DeepgramEvent):
    """The agent sent the last audio of its turn."""


def _items(message: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    functions = message.get("functions")
    return [f for f in functions if isinstance(f, Mapping)] if isinstance(functions, (list, tuple)) else []


@attrs.frozen(eq=False)
class FunctionCallRequest(DeepgramEvent):
    """The agent asks for function calls; ``client_side`` ones run here."""

    @property
    def client_side(self) -> list[Mapping[str, Any]]:
        """The requests the gateway answers (``client_side: true``), in order."""
        return [f for f in _items(self.message) if f.get("client_side")]


@attrs.frozen(eq=False)
class FunctionCallCancelled(DeepgramEvent):
    """Deepgram took function requests back: no response may be sent for them."""

    @property
    def cancelled(self) -> list[tuple[str, str]]:
        """(id, name) of each request taken back."""
        return [(str(f.get("id", "")), str(f.get("name", ""))) for f in _items(self.message)]


@attrs.frozen(eq=False)
class ConversationText(DeepgramEvent):
    """One turn of the conversation as text: ``role`` is ``user`` or ``assistant``."""

    @property
    def role(self) -> str:
        role = self.message.get("role")
        return role if isinstance(role, str) else ""

    @property
    def content(self) -> str:
        content = self.message.get("content")
        return content if isinstance(content, str) else ""


@attrs.frozen(eq=False)
class DeepgramError(DeepgramEvent):
    """Deepgram's ``Error`` message (usually followed by a close)."""

    @property
    def code(self) -> str:
        return str(self.message.get("code", ""))

    @property
    def description(self) -> str:
        return str(self.message.get("description", ""))


_TYPED: Mapping[str, type[DeepgramEvent]] = {
    "SettingsApplied": SettingsApplied,
    "UserStartedSpeaking": UserStartedSpeaking,
    "AgentAudioDone": AgentAudioDone,
    "FunctionCallRequest": FunctionCallRequest,
    "FunctionCallCancelled": FunctionCallCancelled,
    "ConversationText": ConversationText,
    "Error": DeepgramError,
}


def deepgram_event(message: Mapping[str, Any]) -> DeepgramEvent:
    """The event of one Deepgram message (a dict with a string ``type``), typed when it is acted on."""
    kind = message["type"]
    return _TYPED.get(kind, DeepgramEvent)(kind, message)


def typed(event: DeepgramEvent) -> DeepgramEvent:
    """``event`` as the class its ``type`` calls for (a stage may have made a plain `DeepgramEvent`)."""
    cls = _TYPED.get(event.type, DeepgramEvent)
    return event if type(event) is cls else cls(event.type, event.message)


@attrs.frozen
class UpstreamClosed:
    """
    The Deepgram leg ended, or never opened.

    ``code`` is the WebSocket close code (None: a close frame without a status, what other
    libraries call 1005; 1006: no close frame at all). For a refused upgrade ``http_status``,
    ``dg_error`` and ``dg_request_id`` come from the HTTP response. ``diagnosis`` is filled in by
    the close_codes stage (or the call, if that stage is not configured).
    """

    code: int | None
    reason: str | None
    was_clean: bool
    http_status: int | None = None
    dg_error: str | None = None
    dg_request_id: str | None = None
    phase: str = ""
    connect_failed: bool = False
    diagnosis: Any = None


@attrs.frozen
class UpstreamReconnecting:
    """
    The Deepgram leg was lost for a retryable reason and the call will open a new one in
    ``delay_s`` (attempt ``attempt``); the caller stays connected. Stages go back to their
    pre-session state (settings holds audio again, keepalive pauses).
    """

    attempt: int
    delay_s: float
    diagnosis: Any = None


# --- towards the caller (outbound, handled at the start of the chain) ---------------------------


@attrs.frozen
class Clear:
    """Drop the audio queued at the caller (barge-in): Twilio ``clear``."""


@attrs.frozen
class SendMark:
    """Ask Twilio to echo ``name`` when the audio queued so far has played."""

    name: str


@attrs.frozen
class CallerError:
    """A JSON error for a raw-audio client: ``{"type": "Error", "code": ..., "message": ...}``."""

    code: str
    message: str


@attrs.frozen
class CallerHandover:
    """
    Tell a raw-audio client that its call goes on elsewhere: the ``Handover`` control message
    (``message``, built by `gateway.codecs.client.handover_message`: the URL to reconnect to and
    a resume token), sent just before the call ends with ``HANDED_OVER``. Legs send it as they
    send a JSON event; the Twilio leg sends none (Twilio learns it from ``<Connect action>``).
    """

    message: Mapping[str, Any] = attrs.field(converter=_frozen_dict, repr=False)
    type: ClassVar[str] = "Handover"
