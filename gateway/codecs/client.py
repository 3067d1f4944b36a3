"""
The raw-audio client protocol (``/client``, CONTRACT.md): parse what a client sends, serialise
what we send back.

Sans-IO. A client's first message is a text frame ``{"token": "...", "parameters": {...}}``
(``"handover": true`` optional: the client follows a ``Handover`` message, `handover_message`);
then binary frames are PCM audio and text frames are JSON control messages. Every text frame is
decoded within `gateway.codecs.bounded_json`'s bounds, so a hostile one is refused with a stable
reason and never raises anything else: the hello becomes a `ClientHello` with a ``problem`` (the
auth stage answers 4002), a control message raises `CallerProtocolError` (the leg answers with
an error event and the call goes on).

`ClientStream` holds that order, sans-IO: the caller leg feeds it every frame and gets back the
event for the call or a `CallerProtocolError`, and it serialises what the call sends back.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar, Mapping, Union

import attrs

from gateway.codecs import bounded_json
from gateway.codecs.deepgram_messages import ENDPOINTS, known_server_types
from gateway.errors import CallerProtocolError
from gateway.events import Audio, CallerControl, ClientHello

__all__ = [
    "MAX_TEXT_BYTES",
    "FORWARDED_EVENTS",
    "HELLO_REASONS",
    "CONTROL_REASONS",
    "INVALID_MESSAGE",
    "ClientEvent",
    "ClientStream",
    "parse_hello",
    "parse_control",
    "event_message",
    "error_message",
    "handover_message",
]

#: The largest text frame read (Autobahn's caller limit is the same 64 KiB).
MAX_TEXT_BYTES = 64 * 1024

#: Deepgram's server messages on every endpoint, read from the SDK (agent, listen, Flux): what a
#: raw-audio client is sent as JSON text frames. A type not listed here (one Deepgram added after
#: the installed SDK) is forwarded too, and counted by the call.
FORWARDED_EVENTS = frozenset().union(*(known_server_types(e) for e in ENDPOINTS))

#: Every ``reason`` a refused hello (``ClientHello.reason``) may carry.
HELLO_REASONS = frozenset(
    {"binary_frame", "too_big", "not_object", "missing_field", "wrong_type"}
    | bounded_json.REASONS
)

#: Every ``reason`` `parse_control` may raise `CallerProtocolError` with.
CONTROL_REASONS = frozenset({"too_big", "not_object"} | bounded_json.REASONS)

#: The error code a refused control message is answered with (`ClientStream.reply_to`).
INVALID_MESSAGE = "INVALID_MESSAGE"

#: What `ClientStream.receive` hands on to the call.
ClientEvent = Union[ClientHello, Audio, CallerControl]


def _refused(reason: str, problem: str) -> ClientHello:
    return ClientHello("", problem=problem, reason=reason)


def _too_big(payload: bytes | str) -> str | None:
    if len(payload) > MAX_TEXT_BYTES:
        return f"message of {len(payload)} bytes, limit {MAX_TEXT_BYTES}"
    return None


def parse_hello(payload: bytes | str, is_binary: bool) -> ClientHello:
    """
    The client's first message as a `ClientHello`; never raises. A hello that is not one has
    an empty token, a ``problem`` for the log and a ``reason`` from `HELLO_REASONS`.
    """
    if is_binary:
        return _refused("binary_frame", 'the first message was binary, not {"token": ...}')
    big = _too_big(payload)
    if big is not None:
        return _refused("too_big", f"the first message is too big: {big}")
    try:
        message = bounded_json.loads(payload, CallerProtocolError)
    except CallerProtocolError as e:
        return _refused(e.reason, f"the first message is not usable JSON: {e.message}")
    if not isinstance(message, dict):
        return _refused("not_object", f"the first message is a JSON {type(message).__name__}, "
                                      "not an object")
    token = message.get("token")
    if token is None:
        return _refused("missing_field", "the first message has no 'token'")
    if not isinstance(token, str):
        return _refused("wrong_type", f"expected a string for token, got {type(token).__name__}")
    params = message.get("parameters") or {}
    if not isinstance(params, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in params.items()
    ):
        return _refused("wrong_type", "'parameters' must be an object of strings")
    handover = message.get("handover", False)
    if not isinstance(handover, bool):
        return _refused("wrong_type", f"expected true or false for handover, got {type(handover).__name__}")
    return ClientHello(token, params, handover=handover)


def parse_control(payload: bytes | str) -> CallerControl:
    """
    A later text frame as a `CallerControl`, or `CallerProtocolError` with a reason from
    `CONTROL_REASONS` and a message the client may be shown.
    """
    big = _too_big(payload)
    if big is not None:
        raise CallerProtocolError("too_big", big)
    message = bounded_json.loads(payload, CallerProtocolError)
    if not isinstance(message, dict):
        raise CallerProtocolError(
            "not_object", f"text frames must be JSON objects, got a {type(message).__name__}"
        )
    return CallerControl(message)


def event_message(message: Mapping[str, Any]) -> bytes:
    """
    A Deepgram event forwarded to the client as it came (ASCII-escaped JSON); an ``Error`` gets
    the one Error shape of ``/client`` (see `error_message`): ``"source": "deepgram"`` and its
    ``description`` repeated as ``message``.
    """
    if message.get("type") == "Error":
        message = {**message, "source": "deepgram", "message": message.get("description", "")}
    return json.dumps(message).encode()


def error_message(code: str, message: str) -> bytes:
    """
    The gateway's error event, in the one Error shape of ``/client``, shared with Deepgram's
    forwarded ``Error``: ``{"type": "Error", "source": "gateway", "code": ..., "description":
    ..., "message": ...}``. ``description`` (Deepgram's name) and ``message`` (the gateway's
    name before they were unified) carry the same text, so a client written for either reads it.
    """
    return json.dumps({"type": "Error", "source": "gateway", "code": code, "description": message,
                       "message": message}).encode()


def handover_message(url: str | None, token: str, expires_in_s: int, retry_after_ms: int = 0) -> dict[str, Any]:
    """
    The ``Handover`` control message that tells a ``/client`` caller its call goes on in another
    gateway process: ``{"type": "Handover", "url": ..., "token": ..., "expires_in": ...,
    "retry_after_ms": ...}``. The client opens ``url`` (``None``: the URL it is connected to,
    when the gateway has no public URL) after ``retry_after_ms`` and sends ``{"token": token}``
    as its hello; the token is a resume token, accepted once within ``expires_in`` seconds. The
    gateway then closes the socket with 1000 ``HANDED_OVER``.
    """
    return {"type": "Handover", "url": url, "token": token, "expires_in": expires_in_s,
            "retry_after_ms": retry_after_ms}


@attrs.define
class ClientStream:
    """
    One raw-audio client's connection, without I/O: the order of CONTRACT.md.

    Inbound, `receive` takes each WebSocket message: the first is the hello (always a
    `ClientHello`, whose ``reason`` says why it is not one, see `parse_hello`); after it a
    binary frame is `Audio` (PCM s16le 16 kHz) and a text frame a `CallerControl`, or
    `CallerProtocolError` with a reason from `CONTROL_REASONS`, which the client is told about
    (`reply_to`).

    Outbound, each method returns the frame to send or None: audio goes as it came, in binary
    frames; Deepgram's events and the gateway's errors as JSON text; ``clear`` and ``mark`` are
    nothing (clients drop queued audio themselves on the forwarded ``UserStartedSpeaking``;
    marks are a Twilio feature).
    """

    #: Client audio travels in binary frames.
    audio_binary: ClassVar[bool] = True

    _hello_seen: bool = attrs.field(default=False, init=False)

    def receive(self, frame: bytes, is_binary: bool) -> ClientEvent:
        """One WebSocket message from the client, as the event for the call."""
        if not self._hello_seen:
            self._hello_seen = True
            return parse_hello(frame, is_binary)
        if is_binary:
            return Audio(frame)
        return parse_control(frame)

    def media(self, payload: bytes) -> bytes:
        """Audio for the client: the payload itself, in a binary frame."""
        return payload

    def mark(self, name: str) -> None:
        """Nothing: marks are a Twilio feature."""
        return None

    def clear(self) -> None:
        """Nothing: clients drop queued audio themselves on UserStartedSpeaking (forwarded)."""
        return None

    def event(self, message: Mapping[str, Any]) -> bytes:
        """
        Every Deepgram event, as it came: the types the SDK knows (`FORWARDED_EVENTS`) and any
        newer one (the call counts those); see `event_message`.
        """
        return event_message(message)

    def error(self, code: str, message: str) -> bytes:
        """The gateway's error event (`error_message`)."""
        return error_message(code, message)

    def reply_to(self, error: CallerProtocolError) -> bytes:
        """What a refused control message is answered with: an ``INVALID_MESSAGE`` error."""
        return error_message(INVALID_MESSAGE, error.message)
