"""
Messages that used to end a call instead of being refused (issue 19, item 2), property-based:
nesting under the size limit, lone surrogates anywhere, DTMF "digits" of any length. Whatever
the caller sends on ``/twilio`` or ``/client``, the codec refuses it with a stable reason (never
another exception), the leg counts it, and the call goes on.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.call import Call
from gateway.codecs import bounded_json, client, deepgram, twilio
from gateway.errors import CallerProtocolError
from gateway.events import DeepgramEvent, Handshake
from gateway.legs.caller import ClientProtocol, TwilioProtocol
from gateway.testing import FakeCallerLeg, FakeConnector, FakeUpstreamLeg, configure
from gateway.tokens import mint_token

SID = "MZ" + "3" * 32
SECRET = "s" * 32
PROPERTY = settings(max_examples=120, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
LEG = settings(PROPERTY, max_examples=60)

# --- strategies ---------------------------------------------------------------------------------

surrogates = st.integers(0xD800, 0xDFFF).map(chr)
# Text with at least one lone surrogate somewhere (json.dumps escapes it as \udxxx, as an
# attacker would write it).
with_surrogate = st.tuples(st.text(max_size=8), surrogates, st.text(max_size=8)).map("".join)


@st.composite
def deep(draw, min_depth: int = bounded_json.MAX_DEPTH + 1) -> str:
    """A value nested ``min_depth`` to 30,000 levels, arrays and objects mixed."""
    depth = draw(st.integers(min_depth, 30_000))
    opens = draw(st.lists(st.sampled_from(["[", '{"k":']), min_size=1, max_size=4))
    kinds = [opens[i % len(opens)] for i in range(depth)]
    inner = draw(st.sampled_from(["1", '"x"', "[]", "{}", "null"]))
    return "".join(kinds) + inner + "".join("]" if k == "[" else "}" for k in reversed(kinds))


def twilio_frame(event: str, body: str) -> bytes:
    """A Twilio-shaped message with ``body`` (JSON text) as its event's object."""
    return ('{"event": "%s", "streamSid": "%s", "%s": %s}' % (event, SID, event, body)).encode()


twilio_events = st.sampled_from(["connected", "start", "media", "mark", "dtmf", "stop", "dance"])

deep_twilio = st.one_of(
    deep().map(str.encode),
    st.tuples(twilio_events, deep()).map(lambda t: twilio_frame(*t)),
    st.tuples(twilio_events, deep()).map(
        lambda t: ('{"event": "%s", "extra": %s}' % t).encode()),
    deep().map(lambda d: twilio_frame("start", '{"streamSid": "x", "customParameters": %s}' % d)),
).filter(lambda f: len(f) <= twilio.MAX_MESSAGE_BYTES)


@st.composite
def surrogate_twilio(draw) -> bytes:
    """A Twilio message, well-formed but for one lone surrogate in a key or a value."""
    bad = draw(with_surrogate)
    where = draw(st.integers(0, 7))
    messages = [
        {"event": "dtmf", "dtmf": {"digit": bad, "track": "inbound_track"}},
        {"event": "dtmf", "dtmf": {"digit": "5", "track": bad}},
        {"event": "mark", "mark": {"name": bad}},
        {"event": "media", "media": {"payload": "/w==", "track": bad}},
        {"event": "media", "media": {"payload": bad}},
        {"event": "start", "start": {"streamSid": SID, "customParameters": {"auth": bad}}},
        {"event": "start", "start": {"streamSid": SID, "customParameters": {bad: "x"}}},
        {"event": bad},
    ]
    return json.dumps(dict(messages[where], streamSid=SID)).encode()


huge_digits = st.one_of(
    st.text(min_size=2, max_size=30),
    st.integers(2, 20_000).map(lambda n: "1" * n),
    st.sampled_from(["w", "W", "a", "E", " ", "", "11", "\u0661", "*#"]),
)


def dtmf(digit: str) -> bytes:
    return json.dumps({"event": "dtmf", "streamSid": SID,
                       "dtmf": {"track": "inbound_track", "digit": digit}}).encode()


@st.composite
def surrogate_client(draw) -> bytes:
    """A /client text frame with one lone surrogate."""
    bad = draw(with_surrogate)
    shape = draw(st.integers(0, 3))
    return json.dumps([{"token": bad}, {"token": "x", "parameters": {"g": bad}},
                       {"type": bad}, {bad: 1}][shape]).encode()


deep_client = st.one_of(
    deep().map(str.encode),
    deep().map(lambda d: ('{"token": "x", "parameters": %s}' % d).encode()),
    deep().map(lambda d: ('{"type": "Ping", "data": %s}' % d).encode()),
).filter(lambda f: len(f) <= client.MAX_TEXT_BYTES)


def parse_twilio(frame: bytes) -> CallerProtocolError | None:
    try:
        twilio.parse_message(frame)
    except CallerProtocolError as e:
        return e
    return None


# --- the codecs ---------------------------------------------------------------------------------


class TwilioCodecTests(SynchronousTestCase):
    """The Twilio codec refuses each hostile message with its precise reason."""

    @PROPERTY
    @given(deep_twilio)
    def test_nesting(self, frame: bytes) -> None:
        """Nesting past the limit under 64 KiB: too_deep, never RecursionError."""
        error = parse_twilio(frame)
        self.assertIsNotNone(error)
        self.assertEqual(error.reason, "too_deep")

    @PROPERTY
    @given(surrogate_twilio())
    def test_lone_surrogates(self, frame: bytes) -> None:
        """A lone surrogate in any key or value: bad_unicode."""
        error = parse_twilio(frame)
        self.assertIsNotNone(error)
        self.assertEqual(error.reason, "bad_unicode")
        error.message.encode("utf-8")  # the message itself can be logged

    @PROPERTY
    @given(huge_digits)
    def test_digits(self, digit: str) -> None:
        """Anything but one DTMF key is bad_digit (bad_unicode if it holds a surrogate)."""
        assume(digit not in twilio.DTMF_DIGITS)
        error = parse_twilio(dtmf(digit))
        self.assertIsNotNone(error)
        expected = "bad_unicode" if not bounded_json.is_valid_unicode(digit) else "bad_digit"
        self.assertEqual((error.reason, error.field), (expected, None if expected == "bad_unicode"
                                                       else "dtmf.digit"))
        self.assertLess(len(error.message), 200)

    def test_valid_digits(self) -> None:
        """0-9, *, # and A-D are keys."""
        for digit in "0123456789*#ABCD":
            self.assertEqual(twilio.parse_message(dtmf(digit)).digit, digit)

    def test_nesting_within_limit_and_in_strings(self) -> None:
        """Brackets in strings are not nesting; a mark name full of them is a mark."""
        name = "[" * 10_000
        self.assertEqual(twilio.parse_message(json.dumps({"event": "mark", "mark": {"name": name}})).name,
                         name)

    def test_cesu_surrogate_bytes(self) -> None:
        """A surrogate encoded in UTF-8 bytes (CESU-8) is not UTF-8."""
        self.assertEqual(parse_twilio(b'{"event": "dtmf", "dtmf": {"digit": "\xed\xa0\x80"}}').reason,
                         "bad_utf8")

    def test_overflowing_sample_rate(self) -> None:
        """1e999 is not a JSON number the gateway takes (int(inf) raised OverflowError)."""
        frame = ('{"event": "start", "start": {"streamSid": "%s", "mediaFormat": '
                 '{"sampleRate": 1e999}}}' % SID).encode()
        self.assertEqual(parse_twilio(frame).reason, "bad_json")

    @PROPERTY
    @given(st.one_of(deep_twilio, surrogate_twilio(), huge_digits.map(dtmf),
                     st.binary(max_size=200)))
    def test_reasons_are_stable(self, frame: bytes) -> None:
        """Every refusal's reason is one of twilio.REASONS."""
        error = parse_twilio(frame)
        if error is not None:
            self.assertIn(error.reason, twilio.REASONS)


class ClientCodecTests(SynchronousTestCase):
    """The /client codec refuses each hostile hello and control message with a reason."""

    @PROPERTY
    @given(deep_client)
    def test_nesting(self, frame: bytes) -> None:
        """Deep nesting: a hello with problem too_deep, a control message refused too_deep."""
        hello = client.parse_hello(frame, False)
        self.assertEqual((hello.token, hello.reason), ("", "too_deep"))
        with self.assertRaises(CallerProtocolError) as cm:
            client.parse_control(frame)
        self.assertEqual(cm.exception.reason, "too_deep")

    @PROPERTY
    @given(surrogate_client())
    def test_lone_surrogates(self, frame: bytes) -> None:
        """A lone surrogate anywhere: bad_unicode, for the hello and for control messages."""
        hello = client.parse_hello(frame, False)
        self.assertEqual((hello.token, hello.reason), ("", "bad_unicode"))
        hello.problem.encode("utf-8")
        with self.assertRaises(CallerProtocolError) as cm:
            client.parse_control(frame)
        self.assertEqual(cm.exception.reason, "bad_unicode")

    @PROPERTY
    @given(st.binary(max_size=300) | st.text(max_size=100).map(str.encode), st.booleans())
    def test_anything(self, frame: bytes, binary: bool) -> None:
        """Any frame: a hello or a refusal with a stable reason; a control message or one."""
        hello = client.parse_hello(frame, binary)
        if hello.reason is not None:
            self.assertIn(hello.reason, client.HELLO_REASONS)
        try:
            client.parse_control(frame)
        except CallerProtocolError as e:
            self.assertIn(e.reason, client.CONTROL_REASONS)


class DeepgramCodecTests(SynchronousTestCase):
    """What the gateway writes to Deepgram and reads from it never raises for Unicode or depth."""

    @PROPERTY
    @given(st.dictionaries(st.text(max_size=5), st.text(max_size=10) | with_surrogate, max_size=4))
    def test_encode_message(self, fields: dict) -> None:
        """Any string, lone surrogates included, encodes to UTF-8 JSON (U+FFFD for a lone one)."""
        data = deepgram.encode_message({"type": "InjectUserMessage", **fields})
        decoded = json.loads(data.decode("utf-8"))
        self.assertEqual(set(decoded), {"type", *fields})

    def test_dtmf_surrogate_message(self) -> None:
        """The message call_control would have built from a surrogate digit is sendable."""
        data = deepgram.encode_message({"type": "InjectUserMessage",
                                        "content": "The caller pressed \ud800."})
        self.assertIn("\ufffd".encode(), data)

    def test_deep_server_message(self) -> None:
        """A deeply nested message from Deepgram is an UpstreamProtocolError, not a crash."""
        from gateway.errors import UpstreamProtocolError

        with self.assertRaises(UpstreamProtocolError) as cm:
            deepgram.parse_server_message(b'{"type": "X", "a": ' + b"[" * 5000 + b"]" * 5000 + b"}")
        self.assertEqual(cm.exception.reason, "too_deep")


# --- the legs, with a real call ----------------------------------------------------------------


class _RecordingClient(ClientProtocol):
    """A ClientProtocol whose writes are recorded instead of framed."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[bytes, bool]] = []

    def sendMessage(self, payload: bytes, isBinary: bool = False, *args: object, **kwargs: object) -> None:
        self.sent.append((payload, isBinary))


def rejected(call: Call) -> dict[str, int]:
    return {labels[0][1]: n for (name, labels), n in call.info.counters.items()
            if name == "caller_messages_rejected"}


class TwilioLegTests(SynchronousTestCase):
    """The Twilio leg counts each hostile message and the call goes on (no 1006, no 4502)."""

    def make(self) -> tuple[TwilioProtocol, Call, FakeUpstreamLeg, FakeCallerLeg]:
        call = Call(configure(), "twilio", Clock(), FakeConnector())
        call.caller_handshake(Handshake("twilio", "/twilio", {}, ""))
        proto = TwilioProtocol()
        proto.call = call
        caller = FakeCallerLeg()
        call.caller_opened(caller)
        start = {"event": "start", "start": {"streamSid": SID, "callSid": "CA"}, "streamSid": SID}
        proto.onMessage(json.dumps(start).encode(), False)
        up = FakeUpstreamLeg()
        call.upstream_opened(up, "r")
        call.from_upstream(DeepgramEvent("SettingsApplied", {"type": "SettingsApplied"}))
        return proto, call, up, caller

    @LEG
    @given(st.lists(st.one_of(deep_twilio, surrogate_twilio(), huge_digits.map(dtmf)),
                    min_size=1, max_size=4))
    def test_hostile_sequence(self, frames: list[bytes]) -> None:
        """Each hostile frame is rejected and counted; the live call still relays audio."""
        proto, call, up, caller = self.make()
        for frame in frames:
            proto.onMessage(frame, False)
        self.assertEqual(call.phase, "live")
        self.assertEqual(sum(rejected(call).values()), len(frames))
        self.assertEqual([m for m in up.messages() if m.get("type") == "InjectUserMessage"], [])
        proto.onMessage(json.dumps({"event": "media", "media": {"payload": "/w=="}}).encode(), False)
        self.assertEqual(up.audio(), b"\xff")

    def test_the_reported_cases(self) -> None:
        """Issue 19's three: deep nesting, a surrogate digit, a 20,000-character digit."""
        proto, call, up, _ = self.make()
        proto.onMessage(b'{"event": "media", "x": ' + b"[" * 30_000 + b"]" * 30_000 + b"}", False)
        proto.onMessage(b'{"event": "dtmf", "dtmf": {"digit": "\\ud800"}}', False)
        proto.onMessage(dtmf("1" * 20_000), False)
        self.assertEqual(rejected(call), {"too_deep": 1, "bad_unicode": 1, "bad_digit": 1})
        self.assertEqual(call.phase, "live")
        proto.onMessage(dtmf("5"), False)
        self.assertEqual([m["content"] for m in up.messages() if m.get("type") == "InjectUserMessage"],
                         ["The caller pressed 5."])


class ClientLegTests(SynchronousTestCase):
    """The /client leg: a hostile hello is INVALID_AUTH, a hostile control message an error event."""

    def make(self) -> tuple[_RecordingClient, Call, FakeCallerLeg, Clock]:
        clock = Clock()
        call = Call(configure(None, {"GATEWAY_TOKEN_SECRET": SECRET}), "client", clock, FakeConnector())
        call.caller_handshake(Handshake("client", "/client", {}, ""))
        proto = _RecordingClient()
        proto.call = call
        caller = FakeCallerLeg()
        call.caller_opened(caller)
        return proto, call, caller, clock

    @LEG
    @given(st.one_of(deep_client, surrogate_client()))
    def test_hostile_hello(self, frame: bytes) -> None:
        """A hostile first frame ends the call as INVALID_AUTH (4002), counted by reason."""
        proto, call, caller, _ = self.make()
        proto.onMessage(frame, False)
        self.assertEqual(call.diagnosis.code, "INVALID_AUTH")
        self.assertLessEqual(set(rejected(call)), {"too_deep", "bad_unicode"})
        self.assertEqual(sum(rejected(call).values()), 1)

    @LEG
    @given(st.lists(st.one_of(deep_client, surrogate_client(), st.binary(max_size=50).map(
        lambda b: b'{"type": "' + b.hex().encode() + b'"'), ), min_size=1, max_size=4))
    def test_hostile_control(self, frames: list[bytes]) -> None:
        """After a good hello, hostile text frames get INVALID_MESSAGE and the call goes on."""
        proto, call, caller, clock = self.make()
        proto.onMessage(json.dumps({"token": mint_token(SECRET.encode(), clock.seconds())}).encode(),
                        False)
        self.assertEqual(call.phase, "connecting")
        for frame in frames:
            proto.onMessage(frame, False)
        self.assertEqual(call.phase, "connecting")
        errors = [json.loads(p) for p, binary in proto.sent if not binary]
        self.assertEqual([e["code"] for e in errors], ["INVALID_MESSAGE"] * len(frames))
        self.assertEqual(sum(rejected(call).values()), len(frames))
