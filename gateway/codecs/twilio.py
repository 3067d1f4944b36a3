"""
Twilio Media Streams messages: parse what Twilio sends, serialise what we send back.

Twilio sends JSON text frames (``connected``, ``start``, ``media``, ``mark``, ``dtmf``, ``stop``)
whose counters are decimal *strings*; we send ``media``, ``mark`` and ``clear`` as text, never
binary (protocols.md §1). Parsing raises `CallerProtocolError` with a stable ``reason`` label and
a message naming the field, what was expected and what came. Every message is decoded within
`gateway.codecs.bounded_json`'s bounds (nesting depth, strict UTF-8, valid Unicode), so whatever
a peer sends is parsed or refused, never an exception of another kind.

`TwilioStream` holds the stream's ordering rules, sans-IO (h11's ``Connection`` in small): the
caller leg feeds it every frame and gets back the event for the call, or nothing, or a precise
`CallerProtocolError`; it serialises what the call sends back, once ``start`` named the stream.
"""

from __future__ import annotations

import binascii
import json
from typing import Any, ClassVar, Mapping, Union

import attrs
import msgspec

from gateway.codecs import bounded_json
from gateway.codecs.formats import AudioFormat, MULAW_8K
from gateway.errors import CallerProtocolError
from gateway.events import Audio, Dtmf, MarkEchoed, StreamStarted, StreamStopped

__all__ = [
    "Connected",
    "TwilioInbound",
    "TwilioEvent",
    "TwilioStream",
    "STREAM_REASONS",
    "parse_message",
    "media_message",
    "media_prefix",
    "mark_message",
    "clear_message",
    "MAX_MESSAGE_BYTES",
    "DTMF_DIGITS",
    "REASONS",
]

#: Twilio's media frames are ~400 bytes; anything near this is not Twilio.
MAX_MESSAGE_BYTES = 64 * 1024

_ENCODINGS = {"audio/x-mulaw": "mulaw"}

#: The keys Twilio reports in ``dtmf.digit``: 0-9, * and # for certain; A-D, the rest of the
#: DTMF alphabet, are UNCONFIRMED (protocols.md §1) and accepted. One key per message; ``w``
#: (a pause) exists only in what we may *send* (``sendDigits``), never in what Twilio detects.
DTMF_DIGITS = frozenset("0123456789*#ABCD")

#: Every ``reason`` `parse_message` may refuse a message with.
REASONS = frozenset(
    {"too_big", "bad_utf8", "too_deep", "bad_json", "bad_unicode", "not_object", "missing_field",
     "wrong_type", "bad_digit", "unknown_event", "unsupported_format"}
)

#: Every ``reason`` `TwilioStream.receive` may refuse a frame with beyond `REASONS`.
STREAM_REASONS = frozenset({"binary_frame", "media_before_start", "second_start"})


@attrs.frozen
class Connected:
    """Twilio's first message: the protocol name and version."""

    protocol: str
    version: str


TwilioInbound = Union[Connected, StreamStarted, Audio, MarkEchoed, Dtmf, StreamStopped]

#: What `TwilioStream.receive` hands on to the call.
TwilioEvent = Union[StreamStarted, Audio, MarkEchoed, Dtmf, StreamStopped]


def _field(obj: dict[str, Any], name: str, path: str) -> Any:
    try:
        return obj[name]
    except KeyError:
        raise CallerProtocolError("missing_field", f"missing field {path}{name}", path + name)


def _str(obj: dict[str, Any], name: str, path: str) -> str:
    value = _field(obj, name, path)
    if not isinstance(value, str):
        raise CallerProtocolError(
            "wrong_type",
            f"expected a string for {path}{name}, got {type(value).__name__} {value!r:.40}",
            path + name,
        )
    return value


def _obj(obj: dict[str, Any], name: str, path: str) -> dict[str, Any]:
    value = _field(obj, name, path)
    if not isinstance(value, dict):
        raise CallerProtocolError(
            "wrong_type",
            f"expected an object for {path}{name}, got {type(value).__name__}",
            path + name,
        )
    return value


def _media_format(start: dict[str, Any]) -> AudioFormat:
    fmt = start.get("mediaFormat")
    if fmt is None:
        return MULAW_8K
    if not isinstance(fmt, dict):
        raise CallerProtocolError(
            "wrong_type", "expected an object for start.mediaFormat", "start.mediaFormat"
        )
    encoding = _ENCODINGS.get(fmt.get("encoding", "audio/x-mulaw"))
    try:
        rate = int(fmt.get("sampleRate", 8000))
        channels = int(fmt.get("channels", 1))
    except (TypeError, ValueError, OverflowError):
        raise CallerProtocolError(
            "wrong_type",
            "expected numbers for start.mediaFormat.sampleRate and channels",
            "start.mediaFormat",
        )
    if encoding is None or rate != 8000 or channels != 1:
        raise CallerProtocolError(
            "unsupported_format",
            f"unsupported start.mediaFormat {fmt!r:.80}: expected audio/x-mulaw, 8000 Hz, 1 channel",
            "start.mediaFormat",
        )
    return AudioFormat(encoding, rate)


def _parse_start(msg: dict[str, Any]) -> StreamStarted:
    start = _obj(msg, "start", "")
    stream_sid = _str(start, "streamSid", "start.") if "streamSid" in start else None
    if stream_sid is None:
        stream_sid = _str(msg, "streamSid", "")
    params = start.get("customParameters") or {}
    if not isinstance(params, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in params.items()
    ):
        raise CallerProtocolError(
            "wrong_type",
            "expected an object of strings for start.customParameters",
            "start.customParameters",
        )
    tracks = start.get("tracks", ["inbound"])
    if not isinstance(tracks, list) or not all(isinstance(t, str) for t in tracks):
        raise CallerProtocolError(
            "wrong_type", "expected a list of strings for start.tracks", "start.tracks"
        )
    return StreamStarted(
        stream_sid=stream_sid,
        call_sid=str(start.get("callSid", "")),
        account_sid=str(start.get("accountSid", "")),
        tracks=tuple(tracks),
        media_format=_media_format(start),
        custom_parameters=params,
    )


def _parse_media(msg: dict[str, Any]) -> Audio:
    media = _obj(msg, "media", "")
    payload = _str(media, "payload", "media.")
    track = media.get("track", "inbound")
    if not isinstance(track, str):
        raise CallerProtocolError("wrong_type", "expected a string for media.track", "media.track")
    try:
        data = binascii.a2b_base64(payload, strict_mode=True)
    except ValueError:
        # binascii.Error for bad base64; a plain ValueError for non-ASCII text
        return Audio(b"", track, defect="bad_base64")
    return Audio(data, track)


class _MediaBody(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """The ``media`` object of a media message as Twilio sends it; the payload base64-decoded."""

    payload: bytes
    track: str = "inbound"
    chunk: str = ""
    timestamp: str = ""


class _Frame(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """
    The shape of a well-formed ``media`` message, for the typed fast parse: every field Twilio
    sends, and nothing else. A value is either one of these two objects or a string, so the
    decoder never descends further than two levels, whatever it is given: a nested value where a
    string belongs, or any field not listed here, is refused at once, where skipping it would
    recurse once per nesting level (a deep message then raised RecursionError). Refused, the
    message takes the general path (`_parse_general`), which parses it within
    `gateway.codecs.bounded_json`'s bounds and names the field at fault.
    """

    event: str
    sequenceNumber: str = ""
    media: Union[_MediaBody, None] = None
    streamSid: str = ""


_decode_frame = msgspec.json.Decoder(_Frame).decode
_Invalid = (msgspec.DecodeError, msgspec.ValidationError)


def parse_message(frame: bytes | str) -> TwilioInbound:
    """
    Parse one text frame from Twilio into an event.

    Raises `CallerProtocolError` with one of `REASONS` (``too_big``, ``bad_utf8``, ``too_deep``,
    ``bad_json``, ``bad_unicode``, ``not_object``, ``missing_field``, ``wrong_type``,
    ``bad_digit``, ``unknown_event``, ``unsupported_format``).

    A well-formed ``media`` message (50 a second) takes a typed parse (msgspec, in C, the base64
    payload decoded on the way); everything else, and anything the typed parse refuses (a field
    Twilio does not send, a payload that is not strict base64: padded, whole quads, nothing but
    the alphabet, as ``binascii.a2b_base64(strict_mode=True)`` wants), takes the general path,
    which gives the same event for every message the typed parse accepts (tests/
    test_codecs_twilio.py checks it) and names the field at fault for the rest.
    """
    if len(frame) > MAX_MESSAGE_BYTES:
        raise CallerProtocolError(
            "too_big", f"message of {len(frame)} bytes, limit {MAX_MESSAGE_BYTES}"
        )
    # msgspec refuses invalid UTF-8 and lone surrogates itself; it never nests deeper than
    # _Frame (see there), so no depth check is needed before it.
    try:
        typed = _decode_frame(frame)
    except _Invalid:
        pass
    else:
        media = typed.media
        if media is not None and typed.event == "media":
            return Audio(media.payload, media.track)
    return _parse_general(frame)


def _parse_general(frame: bytes | str) -> TwilioInbound:
    msg = bounded_json.loads(frame, CallerProtocolError)
    if not isinstance(msg, dict):
        raise CallerProtocolError(
            "not_object", f"expected a JSON object, got {type(msg).__name__}"
        )
    event = _str(msg, "event", "")
    if event == "media":
        return _parse_media(msg)
    if event == "start":
        return _parse_start(msg)
    if event == "mark":
        return MarkEchoed(_str(_obj(msg, "mark", ""), "name", "mark."))
    if event == "dtmf":
        return _parse_dtmf(msg)
    if event == "stop":
        return StreamStopped()
    if event == "connected":
        return Connected(str(msg.get("protocol", "")), str(msg.get("version", "")))
    raise CallerProtocolError("unknown_event", f"unknown event {event!r:.40}", "event")


def _parse_dtmf(msg: dict[str, Any]) -> Dtmf:
    dtmf = _obj(msg, "dtmf", "")
    digit = _str(dtmf, "digit", "dtmf.")
    if digit not in DTMF_DIGITS:
        raise CallerProtocolError(
            "bad_digit",
            f"expected one DTMF key (0-9, *, #, A-D) for dtmf.digit, got {len(digit)} "
            f"characters {digit!r:.24}",
            "dtmf.digit",
        )
    track = _str(dtmf, "track", "dtmf.") if "track" in dtmf else "inbound_track"
    return Dtmf(digit, track)


def _json_str(value: str) -> bytes:
    return json.dumps(value).encode()


def media_prefix(stream_sid: str) -> bytes:
    """What every ``media`` message on the stream starts with (see `media_message`)."""
    return b'{"event":"media","streamSid":' + _json_str(stream_sid) + b',"media":{"payload":"'


def media_message(stream_sid: str, payload: bytes, prefix: bytes | None = None) -> bytes:
    """
    A ``media`` message playing ``payload`` (raw mu-law 8 kHz) on the stream. A leg sending many
    passes the stream's `media_prefix` as ``prefix``, computed once.
    """
    if prefix is None:
        prefix = media_prefix(stream_sid)
    return prefix + binascii.b2a_base64(payload, newline=False) + b'"}}'


def mark_message(stream_sid: str, name: str) -> bytes:
    """A ``mark`` message: Twilio echoes ``name`` once the audio before it has played."""
    return json.dumps(
        {"event": "mark", "streamSid": stream_sid, "mark": {"name": name}},
        separators=(",", ":"),
    ).encode()


def clear_message(stream_sid: str) -> bytes:
    """A ``clear`` message: drop the audio queued at Twilio (barge-in)."""
    return json.dumps({"event": "clear", "streamSid": stream_sid}, separators=(",", ":")).encode()


@attrs.define
class TwilioStream:
    """
    One Twilio Media Stream as the gateway sees it, without I/O: the ordering rules of
    protocols.md §1 over `parse_message`.

    Inbound, `receive` takes each WebSocket message and returns the event for the call, None
    for what the call has no use for (``connected``), or raises `CallerProtocolError` with a
    reason from `REASONS` or `STREAM_REASONS`:

    - Twilio sends text only: a binary frame is ``binary_frame``;
    - ``media`` before the stream's ``start`` is ``media_before_start``;
    - a second ``start`` on one stream is ``second_start``.

    The stream is started once a ``start`` names a non-empty ``streamSid``. What follows
    ``stop`` is passed on as it comes (the call ends on ``stop``), and ``sequenceNumber`` and
    the media ``chunk``/``timestamp`` counters are not checked: Twilio numbers its messages,
    but a gap or a repeat has no consequence the gateway could act on.

    Outbound, `media`, `mark` and `clear` return the text frame to send, or None before the
    stream started (Twilio ignores messages without a ``streamSid``); `event` and `error`
    return None always: Twilio has no use for Deepgram's JSON events and no error message (the
    close code carries the diagnosis).
    """

    #: Twilio audio travels in text frames (base64 in JSON), never binary (protocols.md §1).
    audio_binary: ClassVar[bool] = False

    #: The stream's ``streamSid`` once ``start`` named it ("" until then).
    stream_sid: str = attrs.field(default="", init=False)
    _media_prefix: bytes = attrs.field(default=b"", init=False, repr=False)

    def receive(self, frame: bytes | str, is_binary: bool = False) -> TwilioEvent | None:
        """One WebSocket message from Twilio: the event for the call, or None (``connected``)."""
        if is_binary:
            raise CallerProtocolError(
                "binary_frame", f"binary frame of {len(frame)} bytes (Twilio sends text)"
            )
        event = parse_message(frame)
        if type(event) is Audio:  # the hot path first: 50 a second
            if not self.stream_sid:
                raise CallerProtocolError("media_before_start", "media before start")
            return event
        if type(event) is StreamStarted:
            if self.stream_sid:
                raise CallerProtocolError("second_start", "a second start on one stream")
            self.stream_sid = event.stream_sid
            self._media_prefix = media_prefix(event.stream_sid)
            return event
        if isinstance(event, Connected):
            return None
        return event

    def media(self, payload: bytes) -> bytes | None:
        """A ``media`` frame playing ``payload`` (raw mu-law 8 kHz), once started."""
        if self.stream_sid:
            # `media_message` with the stream's prefix, inlined: 50 a second.
            return self._media_prefix + binascii.b2a_base64(payload, newline=False) + b'"}}'
        return None

    def mark(self, name: str) -> bytes | None:
        """A ``mark`` frame, once started."""
        if self.stream_sid:
            return mark_message(self.stream_sid, name)
        return None

    def clear(self) -> bytes | None:
        """A ``clear`` frame, once started."""
        if self.stream_sid:
            return clear_message(self.stream_sid)
        return None

    def event(self, message: Mapping[str, Any]) -> None:
        """Nothing: Twilio has no use for Deepgram's JSON events."""
        return None

    def error(self, code: str, message: str) -> None:
        """Nothing: Twilio has no error message; the close code carries the diagnosis."""
        return None

    def reply_to(self, error: CallerProtocolError) -> None:
        """Nothing: a refused message is only counted and logged; Twilio gets no answer."""
        return None
