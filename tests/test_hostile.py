"""
Hostile input, property-based: whatever a caller sends, the codec either parses it or rejects it
with a CallerProtocolError naming a reason, and the caller leg counts it and carries on.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.call import Call
from gateway.codecs import twilio
from gateway.errors import CallerProtocolError
from gateway.events import DeepgramEvent, Handshake
from gateway.legs.caller import TwilioProtocol
from gateway.testing import FakeCallerLeg, FakeConnector, FakeUpstreamLeg, configure

SID = "MZ" + "2" * 32

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
events = st.sampled_from(["connected", "start", "media", "mark", "dtmf", "stop", "dance", "", "MEDIA"])
twilio_like = st.fixed_dictionaries(
    {"event": events | json_values},
    optional={
        "streamSid": json_values,
        "sequenceNumber": json_values,
        "media": st.fixed_dictionaries({}, optional={"payload": json_values | st.text(), "track": json_values}) | json_values,
        "start": st.fixed_dictionaries({}, optional={"streamSid": json_values, "customParameters": json_values,
                                                     "mediaFormat": json_values, "tracks": json_values}) | json_values,
        "mark": json_values,
        "dtmf": json_values,
    },
)
frames = (
    st.binary(max_size=300)
    | st.text(max_size=200).map(lambda t: t.encode("utf-8"))
    | twilio_like.map(lambda d: json.dumps(d).encode())
    | json_values.map(lambda d: json.dumps(d).encode())
)


class CodecPropertyTests(SynchronousTestCase):
    """The Twilio codec never raises anything but CallerProtocolError."""

    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(frames)
    def test_parse_total(self, frame: bytes) -> None:
        """Any frame parses or is rejected with a stable reason."""
        try:
            twilio.parse_message(frame)
        except CallerProtocolError as e:
            self.assertIn(e.reason, twilio.REASONS)
            self.assertTrue(e.message)


class LegPropertyTests(SynchronousTestCase):
    """The Twilio leg survives any sequence of frames, counting every rejection."""

    def make(self) -> tuple[TwilioProtocol, Call, FakeUpstreamLeg]:
        call = Call(configure(), "twilio", Clock(), FakeConnector())
        call.caller_handshake(Handshake("twilio", "/twilio", {}, ""))
        proto = TwilioProtocol()
        proto.call = call
        call.caller_opened(FakeCallerLeg())
        return proto, call, FakeUpstreamLeg()

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(st.tuples(frames, st.booleans()), max_size=15))
    def test_any_sequence(self, sequence: list) -> None:
        """No exception escapes onMessage; the call stays consistent."""
        proto, call, _ = self.make()
        for frame, binary in sequence:
            proto.onMessage(frame, binary)
        self.assertIn(call.phase, {"authenticating", "connecting", "ending", "closed"})

    def test_each_rejection_is_counted(self) -> None:
        """Media before start, a second start, binary frames, bad JSON, unknown events, huge frames."""
        proto, call, up = self.make()
        start = {"event": "start", "start": {"streamSid": SID, "callSid": "CA"}, "streamSid": SID}
        media = {"event": "media", "media": {"payload": "/w=="}, "streamSid": SID}
        proto.onMessage(json.dumps(media).encode(), False)
        proto.onMessage(json.dumps(start).encode(), False)
        proto.onMessage(json.dumps(start).encode(), False)
        proto.onMessage(b"\x00\x01", True)
        proto.onMessage(b"{not json", False)
        proto.onMessage(b'{"event": "dance"}', False)
        proto.onMessage(b'{"event": "media", "media": {"payload": 5}}', False)
        proto.onMessage(b" " * 70_000, False)
        proto.onMessage(b'"\xff\xfe"', False)
        counted = {labels[0][1]: n for (name, labels), n in call.info.counters.items()
                   if name == "caller_messages_rejected"}
        self.assertEqual(counted, {"media_before_start": 1, "second_start": 1, "binary_frame": 1,
                                   "bad_json": 1, "unknown_event": 1, "wrong_type": 1, "too_big": 1,
                                   "bad_utf8": 1})
        # and the call carries on: it connected upstream on the one good start
        self.assertEqual(call.phase, "connecting")
        call.upstream_opened(up, "r")
        call.from_upstream(DeepgramEvent("SettingsApplied", {"type": "SettingsApplied"}))
        proto.onMessage(json.dumps(media).encode(), False)
        self.assertEqual(up.audio(), b"\xff")
