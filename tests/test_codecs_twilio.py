"""Tests for gateway.codecs.twilio: every Twilio event, malformed input, and what we send."""

from __future__ import annotations

import base64
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from gateway.codecs import twilio
from gateway.codecs.formats import MULAW_8K
from gateway.errors import CallerProtocolError
from gateway.events import Audio, Dtmf, MarkEchoed, StreamStarted, StreamStopped

SID = "MZ" + "0" * 32


def frame(obj: object) -> bytes:
    return json.dumps(obj).encode()


START = {
    "event": "start",
    "sequenceNumber": "1",
    "start": {
        "accountSid": "AC1",
        "streamSid": SID,
        "callSid": "CA1",
        "tracks": ["inbound"],
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        "customParameters": {"token": "abc", "prompt": "be brief"},
    },
    "streamSid": SID,
}


class ParseTests(SynchronousTestCase):
    """Parsing each message Twilio sends."""

    def test_connected(self) -> None:
        """``connected`` carries the protocol and version."""
        event = twilio.parse_message(frame({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        self.assertEqual(event, twilio.Connected("Call", "1.0.0"))

    def test_start(self) -> None:
        """``start`` gives the ids, the tracks, the format and the custom parameters."""
        event = twilio.parse_message(frame(START))
        self.assertEqual(
            event,
            StreamStarted(SID, "CA1", "AC1", ("inbound",), MULAW_8K, {"token": "abc", "prompt": "be brief"}),
        )

    def test_start_without_custom_parameters(self) -> None:
        """A missing ``customParameters`` is treated as empty (protocols.md: UNCONFIRMED)."""
        msg = json.loads(json.dumps(START))
        del msg["start"]["customParameters"]
        self.assertEqual(twilio.parse_message(frame(msg)).custom_parameters, {})

    def test_media(self) -> None:
        """``media`` decodes the base64 payload; counters arrive as strings and are ignored."""
        payload = bytes(range(160))
        msg = {
            "event": "media",
            "sequenceNumber": "4",
            "media": {"track": "inbound", "chunk": "2", "timestamp": "5",
                      "payload": base64.b64encode(payload).decode()},
            "streamSid": SID,
        }
        self.assertEqual(twilio.parse_message(frame(msg)), Audio(payload, "inbound"))

    def test_media_bad_base64(self) -> None:
        """A payload that is not base64 gives an empty frame marked ``bad_base64``."""
        msg = {"event": "media", "media": {"payload": "!!!not base64"}, "streamSid": SID}
        self.assertEqual(twilio.parse_message(frame(msg)), Audio(b"", "inbound", defect="bad_base64"))

    def test_mark_dtmf_stop(self) -> None:
        """``mark``, ``dtmf`` and ``stop`` become their events."""
        self.assertEqual(
            twilio.parse_message(frame({"event": "mark", "mark": {"name": "m1"}, "streamSid": SID})),
            MarkEchoed("m1"),
        )
        self.assertEqual(
            twilio.parse_message(
                frame({"event": "dtmf", "dtmf": {"track": "inbound_track", "digit": "5"}, "streamSid": SID})
            ),
            Dtmf("5", "inbound_track"),
        )
        self.assertEqual(
            twilio.parse_message(frame({"event": "stop", "stop": {}, "streamSid": SID})), StreamStopped()
        )


def outcome(frame: bytes) -> object:
    """What parsing ``frame`` gives: the event, or the refusal's reason and message."""
    try:
        return twilio.parse_message(frame)
    except CallerProtocolError as e:
        return (e.reason, e.message)


def general_outcome(frame: bytes) -> object:
    """The same by the general path alone (no typed fast parse)."""
    try:
        return twilio._parse_general(frame)
    except CallerProtocolError as e:
        return (e.reason, e.message)


# A media message's parts: base64 strict and not (bad characters, padding, length), escapes,
# non-ASCII; counters of other types, nesting, fields Twilio does not send, repeated keys.
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
payload_text = st.one_of(
    st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()),
    st.text(alphabet=_B64 + "=", max_size=12),
    st.tuples(st.binary(max_size=12).map(lambda b: base64.b64encode(b).decode()),
              st.sampled_from(["=", "==", "\n", r"\n", " ", "A", "-", "_", r"\u0041", r"\/", r"\u00e9", "é",
                               r"\ud800"]),
              st.integers(0, 16)).map(lambda t: t[0][:t[2]] + t[1] + t[0][t[2]:]),
)
json_values = st.one_of(st.text(max_size=4), st.integers(), st.none(), st.booleans(),
                        st.lists(st.integers(), max_size=2), st.just({"k": [1, {"a": "b"}]}))


@st.composite
def media_frames(draw) -> bytes:
    """A media-like message as JSON text, assembled by hand (so keys may repeat)."""
    payload = draw(payload_text)
    body = [f'"payload":"{payload}"']
    for name in draw(st.lists(st.sampled_from(["track", "chunk", "timestamp", "payload", "x"]), max_size=4)):
        value = draw(st.one_of(json_values, st.just("inbound"), st.just("outbound")))
        if name == "payload":
            value = draw(payload_text)
            body.append(f'"payload":"{value}"')
        else:
            body.append(f"{json.dumps(name)}:{json.dumps(value)}")
    draw(st.randoms()).shuffle(body)
    top = ['"event":"media"', "\"media\":{" + ",".join(body) + "}"]
    for name in draw(st.lists(st.sampled_from(["sequenceNumber", "streamSid", "event", "extra"]), max_size=3)):
        top.append(f"{json.dumps(name)}:{json.dumps(draw(st.one_of(json_values, st.just('media'))))}")
    draw(st.randoms()).shuffle(top)
    return ("{" + ",".join(top) + "}").encode()


class FastParseTests(SynchronousTestCase):
    """The typed fast parse of ``media`` gives what the general path gives, always."""

    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(media_frames())
    def test_same_as_general(self, frame: bytes) -> None:
        """Any media-like message: the same event or the same refusal by either path."""
        self.assertEqual(outcome(frame), general_outcome(frame))

    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(payload_text)
    def test_payloads_same_as_general(self, payload: str) -> None:
        """Any payload text in Twilio's message: the same audio (or defect) by either path."""
        frame = ('{"event":"media","sequenceNumber":"4","media":{"track":"inbound","chunk":"2",'
                 '"timestamp":"5","payload":"%s"},"streamSid":"%s"}' % (payload, SID)).encode()
        self.assertEqual(outcome(frame), general_outcome(frame))

    def test_twilio_shape_is_typed(self) -> None:
        """Twilio's own media message (every field it sends) takes the typed parse."""
        payload = bytes(range(160))
        frame = json.dumps({
            "event": "media", "sequenceNumber": "4",
            "media": {"track": "inbound", "chunk": "2", "timestamp": "5",
                      "payload": base64.b64encode(payload).decode()},
            "streamSid": SID}).encode()
        typed = twilio._decode_frame(frame)
        self.assertIsNotNone(typed.media)
        self.assertEqual(typed.media.payload, payload)
        self.assertEqual(twilio.parse_message(frame), Audio(payload, "inbound"))

    def test_refusals_by_the_typed_parse(self) -> None:
        """What the typed parse refuses (bad base64, another field, deep nesting) is still parsed."""
        deep = "[" * 20_000 + "]" * 20_000
        for frame, expected in [
            (b'{"event":"media","media":{"payload":"/w="}}', Audio(b"", "inbound", defect="bad_base64")),
            (b'{"event":"media","media":{"payload":"/w==","extra":1}}', Audio(b"\xff", "inbound")),
            (b'{"event":"media","media":{"payload":"/w=="},"sequenceNumber":4}', Audio(b"\xff", "inbound")),
            ('{"event":"media","media":{"payload":"/w==","x":%s}}' % deep, ("too_deep", None)),
        ]:
            got = outcome(frame.encode() if isinstance(frame, str) else frame)
            if isinstance(expected, tuple):
                self.assertEqual(got[0], expected[0])
            else:
                self.assertEqual(got, expected)


class MalformedTests(SynchronousTestCase):
    """Each malformed message raises CallerProtocolError with a stable reason and the field."""

    def assertRejected(self, data: bytes | str, reason: str, field: str | None = None) -> CallerProtocolError:
        with self.assertRaises(CallerProtocolError) as cm:
            twilio.parse_message(data)
        self.assertEqual(cm.exception.reason, reason)
        if field is not None:
            self.assertEqual(cm.exception.field, field)
        return cm.exception

    def test_not_json(self) -> None:
        """Text that is not JSON."""
        self.assertRejected(b"{nope", "bad_json")

    def test_invalid_utf8(self) -> None:
        """Bytes that are not UTF-8."""
        self.assertRejected(b'{"event": "\xff"}', "bad_utf8")

    def test_not_object(self) -> None:
        """A JSON array."""
        self.assertRejected(b"[1, 2]", "not_object")

    def test_missing_event(self) -> None:
        """No ``event`` field."""
        self.assertRejected(frame({"streamSid": SID}), "missing_field", "event")

    def test_wrong_type(self) -> None:
        """``media.payload`` as a number; the message names the field and what came."""
        e = self.assertRejected(
            frame({"event": "media", "media": {"payload": 12}}), "wrong_type", "media.payload"
        )
        self.assertIn("expected a string for media.payload, got int", e.message)

    def test_missing_media(self) -> None:
        """``media`` without its object."""
        self.assertRejected(frame({"event": "media"}), "missing_field", "media")

    def test_unknown_event(self) -> None:
        """An event Twilio does not define."""
        self.assertRejected(frame({"event": "dance"}), "unknown_event", "event")

    def test_too_big(self) -> None:
        """Anything over the size limit is refused before parsing."""
        self.assertRejected(b" " * (twilio.MAX_MESSAGE_BYTES + 1), "too_big")

    def test_unsupported_format(self) -> None:
        """A start announcing another format is refused."""
        msg = json.loads(json.dumps(START))
        msg["start"]["mediaFormat"]["sampleRate"] = 16000
        self.assertRejected(frame(msg), "unsupported_format", "start.mediaFormat")

    def test_custom_parameters_not_strings(self) -> None:
        """customParameters must map strings to strings."""
        msg = json.loads(json.dumps(START))
        msg["start"]["customParameters"] = {"a": 1}
        self.assertRejected(frame(msg), "wrong_type", "start.customParameters")


class SerialiseTests(SynchronousTestCase):
    """What we send to Twilio."""

    def test_media_round_trip(self) -> None:
        """A media message carries the streamSid and the base64 payload, and is valid JSON."""
        payload = bytes(range(256)) * 3
        msg = json.loads(twilio.media_message(SID, payload))
        self.assertEqual(msg, {"event": "media", "streamSid": SID,
                               "media": {"payload": base64.b64encode(payload).decode()}})

    def test_mark_and_clear(self) -> None:
        """mark and clear carry the streamSid."""
        self.assertEqual(json.loads(twilio.mark_message(SID, 'a "b"')),
                         {"event": "mark", "streamSid": SID, "mark": {"name": 'a "b"'}})
        self.assertEqual(json.loads(twilio.clear_message(SID)), {"event": "clear", "streamSid": SID})


class StreamTests(SynchronousTestCase):
    """`twilio.TwilioStream`: the stream's ordering rules, sans-IO (no reactor, no socket)."""

    def receive_all(self, stream: twilio.TwilioStream, messages: list) -> list:
        out = []
        for message in messages:
            try:
                out.append(stream.receive(frame(message)))
            except CallerProtocolError as e:
                out.append(e.reason)
        return out

    def test_order(self) -> None:
        """connected is nothing for the call; start names the stream; the rest are its events."""
        stream = twilio.TwilioStream()
        connected = {"event": "connected", "protocol": "Call", "version": "1.0.0"}
        media = {"event": "media", "streamSid": SID, "media": {"payload": "/w=="}}
        out = self.receive_all(stream, [connected, START, media, {"event": "stop"}])
        self.assertEqual([type(e) for e in out], [type(None), StreamStarted, Audio, StreamStopped])
        self.assertEqual(stream.stream_sid, SID)

    def test_refusals(self) -> None:
        """Media before start, a second start and binary frames are refused with their reason."""
        stream = twilio.TwilioStream()
        media = {"event": "media", "streamSid": SID, "media": {"payload": "/w=="}}
        out = self.receive_all(stream, [media, START, START, media])
        self.assertEqual([e if isinstance(e, str) else type(e) for e in out],
                         ["media_before_start", StreamStarted, "second_start", Audio])
        with self.assertRaises(CallerProtocolError) as cm:
            stream.receive(b"\x00\x01", True)
        self.assertEqual(cm.exception.reason, "binary_frame")
        self.assertEqual(cm.exception.message, "binary frame of 2 bytes (Twilio sends text)")
        self.assertLessEqual({"media_before_start", "second_start", "binary_frame"},
                             twilio.STREAM_REASONS)

    def test_malformed_is_refused_before_start_too(self) -> None:
        """The codec's own refusals pass through unchanged, started or not."""
        stream = twilio.TwilioStream()
        self.assertEqual(self.receive_all(stream, [{"event": "dance"}]), ["unknown_event"])
        with self.assertRaises(CallerProtocolError) as cm:
            stream.receive(b"{not json")
        self.assertEqual(cm.exception.reason, "bad_json")

    def test_start_without_a_stream_sid_starts_nothing(self) -> None:
        """A start whose streamSid is empty leaves the stream unstarted (as the leg always did)."""
        stream = twilio.TwilioStream()
        empty = {"event": "start", "start": {"streamSid": ""}}
        media = {"event": "media", "media": {"payload": "/w=="}}
        out = self.receive_all(stream, [empty, media, START])
        self.assertEqual([e if isinstance(e, str) else type(e) for e in out],
                         [StreamStarted, "media_before_start", StreamStarted])

    def test_nothing_to_send_before_start(self) -> None:
        """Before start, media, mark and clear have no stream to address."""
        stream = twilio.TwilioStream()
        self.assertEqual((stream.media(b"\xff"), stream.mark("m"), stream.clear()), (None, None, None))

    def test_frames_out(self) -> None:
        """After start: the same bytes as the message functions; events and errors never."""
        stream = twilio.TwilioStream()
        stream.receive(frame(START))
        payload = bytes(range(160))
        self.assertEqual(stream.media(payload), twilio.media_message(SID, payload))
        self.assertEqual(stream.mark("m"), twilio.mark_message(SID, "m"))
        self.assertEqual(stream.clear(), twilio.clear_message(SID))
        self.assertIsNone(stream.event({"type": "Welcome"}))
        self.assertIsNone(stream.error("INVALID_MESSAGE", "x"))
        self.assertIsNone(stream.reply_to(CallerProtocolError("bad_json", "x")))
        self.assertFalse(stream.audio_binary)


class RegressionTests(SynchronousTestCase):
    """Cases hypothesis found."""

    def test_non_ascii_payload(self) -> None:
        """A payload with non-ASCII characters is bad base64, not a crash."""
        frame = b'{"event":"media","media":{"payload":"\\u0080"}}'
        self.assertEqual(twilio.parse_message(frame), Audio(b"", "inbound", defect="bad_base64"))
