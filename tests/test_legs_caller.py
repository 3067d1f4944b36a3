"""
The caller leg (`gateway.legs.caller`) over an in-memory transport: real Autobahn server
protocols, the upgrade through `CallerFactory` and a recording gateway and call (what
`gateway.interfaces.CallerGateway` and `CallerSink` declare), Autobahn's timers on a Clock.
The leg only translates: frames in become the events the call is handed, what the call sends
becomes frames out, and a refused message is counted, logged with its code and answered as the
protocol says.
"""

from __future__ import annotations

import ast
import base64
import json
import os
import struct
from types import SimpleNamespace
from typing import Any

import txaio
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import Logger, capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gateway.errors import AuthError
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
)
from gateway.interfaces import LegState
from gateway.legs import caller
from gateway.legs.caller import LOGGED_REJECTIONS, CallerFactory, ClientProtocol, TwilioProtocol
from gateway.service import CALLER_OPTIONS

SID = "MZ" + "4" * 32
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


def upgrade(path: bytes) -> bytes:
    return (b"GET " + path + b" HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: " + KEY + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")


def frame(opcode: int, payload: bytes) -> bytes:
    """A final client frame, masked with a zero key."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    else:
        head = bytes((0x80 | opcode, 0x80 | 126)) + struct.pack("!H", n)
    return head + b"\0\0\0\0" + payload


def text(obj: Any) -> bytes:
    return frame(1, json.dumps(obj).encode())


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """The (opcode, payload) of each unmasked server frame in ``data``."""
    frames = []
    pos = 0
    while pos < len(data):
        opcode, n = data[pos] & 0x0F, data[pos + 1] & 0x7F
        start = pos + 2
        if n == 126:
            n, start = struct.unpack_from("!H", data, start)[0], start + 2
        frames.append((opcode, data[start:start + n]))
        pos = start + n
    return frames


START = {"event": "start", "streamSid": SID,
         "start": {"streamSid": SID, "callSid": "CA1", "accountSid": "AC1",
                   "customParameters": {"token": "t"}}}


def media(payload: bytes) -> dict[str, Any]:
    return {"event": "media", "streamSid": SID,
            "media": {"payload": base64.b64encode(payload).decode(), "track": "inbound"}}


class RecordingCall:
    """What a caller leg asks of its call (`CallerSink`), recorded in order."""

    def __init__(self, refuse: AuthError | None = None) -> None:
        self.log = Logger(namespace="gateway.call")
        self.config = SimpleNamespace(send_budget_bytes=1 << 20)
        self.refuse = refuse
        self.received: list[Any] = []
        self.counts: list[tuple[str, dict[str, str]]] = []
        self.leg: Any = None

    def count(self, name: str, amount: int = 1, **labels: str) -> None:
        self.counts.append((name, labels))

    def caller_handshake(self, event: Handshake) -> None:
        self.received.append(event)
        if self.refuse is not None:
            raise self.refuse

    def caller_opened(self, leg: Any) -> None:
        self.leg = leg

    def from_caller(self, event: Any) -> None:
        self.received.append(event)

    def caller_audio(self, event: Audio) -> None:
        self.received.append(event)

    def caller_closed(self, code: int | None, reason: str | None, was_clean: bool,
                      gateway_rule: str | None = None) -> None:
        self.received.append(("closed", code, was_clean, gateway_rule))

    def rejected(self) -> list[str]:
        return [labels["reason"] for name, labels in self.counts
                if name == "caller_messages_rejected"]


class RecordingGateway:
    """What the caller factory asks of the running gateway (`CallerGateway`)."""

    def __init__(self, busy: str | None = None, refuse: AuthError | None = None,
                 admit: str | None = None) -> None:
        self.busy, self.refuse, self.admit = busy, refuse, admit
        self.calls: list[RecordingCall] = []
        self.upgraded: list[RecordingCall] = []

    def refuse_upgrade(self) -> str | None:
        return self.busy

    def source_address(self, peer: Any, headers: Any) -> str:
        return peer.host

    def new_call(self, leg: str, address: str = "") -> RecordingCall:
        call = RecordingCall(self.refuse)
        self.calls.append(call)
        return call

    def caller_upgraded(self, call: Any) -> str | None:
        self.upgraded.append(call)
        return self.admit


class Transport(StringTransport):
    def unregisterProducer(self) -> None:
        self.producer = None


class _LegTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        saved = txaio.config.loop
        self.clock = Clock()
        txaio.config.loop = self.clock
        self.addCleanup(setattr, txaio.config, "loop", saved)

    def connect(self, cls: type, gateway: RecordingGateway | None = None) -> tuple[Any, Transport]:
        factory = CallerFactory(gateway or RecordingGateway(), cls)
        factory.setProtocolOptions(**CALLER_OPTIONS)
        proto, transport = factory.buildProtocol(None), Transport()
        proto.makeConnection(transport)
        proto.dataReceived(upgrade(b"/twilio" if cls is TwilioProtocol else b"/client"))
        return proto, transport

    def open(self, cls: type) -> tuple[Any, Transport, RecordingCall]:
        proto, transport = self.connect(cls)
        self.assertIn(b" 101 ", transport.value())
        self.assertIs(proto.call.leg, proto)
        self.assertEqual(proto.state, LegState.OPEN)
        transport.clear()
        return proto, transport, proto.call

    def sent(self, transport: Transport) -> list[tuple[int, bytes]]:
        frames = server_frames(transport.value())
        transport.clear()
        return frames


class UpgradeTests(_LegTestCase):
    """The upgrade: what the gateway and the call's chain decide, the leg carries out."""

    def test_handshake_reaches_the_call(self) -> None:
        """The call sees the upgrade as a Handshake; admission then sees the call."""
        gateway = RecordingGateway()
        proto, transport = self.connect(TwilioProtocol, gateway)
        self.assertIn(b" 101 ", transport.value())
        [call] = gateway.calls
        [handshake] = call.received
        self.assertEqual((handshake.leg, handshake.path), ("twilio", "/twilio"))
        self.assertEqual(gateway.upgraded, [call])

    def test_busy_is_503_before_any_call(self) -> None:
        """A gateway that takes no new call refuses with 503 and makes none."""
        gateway = RecordingGateway(busy="draining")
        proto, transport = self.connect(TwilioProtocol, gateway)
        self.assertIn(b" 503 ", transport.value())
        self.assertEqual(gateway.calls, [])
        proto.connectionLost(Failure(ConnectionDone()))

    def test_auth_refusal_is_its_status_and_code(self) -> None:
        """A refusal from the chain is its HTTP status, logged as CALLER_UPGRADE_REFUSED."""
        gateway = RecordingGateway(refuse=AuthError("AUTH_FAILED", "bad signature", http_status=403))
        with capturedLogs() as events:
            proto, transport = self.connect(TwilioProtocol, gateway)
        self.assertIn(b" 403 ", transport.value())
        self.assertNotIn(b"bad signature", transport.value())
        self.assertEqual([e["log_category"] for e in events if "log_category" in e],
                         ["CALLER_UPGRADE_REFUSED"])
        self.assertEqual(gateway.upgraded, [])

    def test_admission_refusal_is_503(self) -> None:
        """Admission's refusal after the handshake is a 503."""
        gateway = RecordingGateway(admit="busy")
        proto, transport = self.connect(ClientProtocol, gateway)
        self.assertIn(b" 503 ", transport.value())


class TwilioLegTests(_LegTestCase):
    """``/twilio``: text frames in and out, ordered by the stream."""

    def test_frames_to_events(self) -> None:
        """connected is nothing for the call; start, media, mark, dtmf and stop arrive in order."""
        proto, transport, call = self.open(TwilioProtocol)
        proto.dataReceived(text({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        proto.dataReceived(text(START))
        proto.dataReceived(text(media(b"\xff\x7f")))
        proto.dataReceived(text({"event": "mark", "streamSid": SID, "mark": {"name": "m1"}}))
        proto.dataReceived(text({"event": "dtmf", "streamSid": SID, "dtmf": {"digit": "5"}}))
        proto.dataReceived(text({"event": "stop", "streamSid": SID}))
        kinds = [type(e) for e in call.received[1:]]
        self.assertEqual(kinds, [StreamStarted, Audio, MarkEchoed, Dtmf, StreamStopped])
        self.assertEqual(call.received[1].stream_sid, SID)
        self.assertEqual(call.received[2].payload, b"\xff\x7f")
        self.assertEqual(call.counts, [])
        self.assertEqual(self.sent(transport), [])

    def test_refusals_counted_and_coded(self) -> None:
        """Media before start, a binary frame, a second start: counted, logged with a code."""
        proto, transport, call = self.open(TwilioProtocol)
        with capturedLogs() as events:
            proto.dataReceived(text(media(b"\x00")))
            proto.dataReceived(frame(2, b"\x00\x01"))
            proto.dataReceived(text(START))
            proto.dataReceived(text(START))
        self.assertEqual(call.rejected(), ["media_before_start", "binary_frame", "second_start"])
        self.assertEqual([e.get("log_category") for e in events if e["log_level"].name == "warn"],
                         ["CALLER_MESSAGE_REJECTED"] * 3)
        self.assertEqual([type(e) for e in call.received[1:]], [StreamStarted])
        self.assertEqual(self.sent(transport), [], "Twilio is never answered")
        self.assertEqual(proto.state, LegState.OPEN)

    def test_nothing_goes_out_before_start(self) -> None:
        """Before start there is no streamSid to address: the leg sends nothing."""
        proto, transport, call = self.open(TwilioProtocol)
        proto.send_audio(b"\xff" * 160)
        proto.send_mark("m")
        proto.send_clear()
        self.assertEqual(self.sent(transport), [])

    def test_events_to_frames(self) -> None:
        """Audio, marks and clears go out as text; Deepgram's events and errors not at all."""
        proto, transport, call = self.open(TwilioProtocol)
        proto.dataReceived(text(START))
        proto.send_audio(b"\xff\x00")
        proto.send_mark("m1")
        proto.send_clear()
        proto.send_event(DeepgramEvent("Welcome", {"type": "Welcome"}))
        proto.send_error("INVALID_MESSAGE", "no")
        frames = self.sent(transport)
        self.assertEqual([opcode for opcode, _ in frames], [1, 1, 1])
        sent = [json.loads(payload) for _, payload in frames]
        self.assertEqual(sent[0], {"event": "media", "streamSid": SID,
                                   "media": {"payload": base64.b64encode(b"\xff\x00").decode()}})
        self.assertEqual(sent[1], {"event": "mark", "streamSid": SID, "mark": {"name": "m1"}})
        self.assertEqual(sent[2], {"event": "clear", "streamSid": SID})

    def test_only_the_first_rejections_are_logged(self) -> None:
        """The first LOGGED_REJECTIONS are logged one by one, then one line; all are counted."""
        proto, transport, call = self.open(TwilioProtocol)
        with capturedLogs() as events:
            for _ in range(LOGGED_REJECTIONS + 3):
                proto.dataReceived(text({"event": "dance"}))
        codes = [e.get("log_category") for e in events if e["log_level"].name == "warn"]
        self.assertEqual(codes, ["CALLER_MESSAGE_REJECTED"] * LOGGED_REJECTIONS
                         + ["CALLER_REJECTIONS_COUNTED"])
        self.assertEqual(call.rejected(), ["unknown_event"] * (LOGGED_REJECTIONS + 3))

    def test_close_reported(self) -> None:
        """The caller's close reaches the call once, with no gateway rule."""
        proto, transport, call = self.open(TwilioProtocol)
        proto.dataReceived(frame(8, struct.pack("!H", 1000)))
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(call.received[-1], ("closed", 1000, True, None))


class ClientLegTests(_LegTestCase):
    """``/client``: a hello, then binary audio and JSON control messages."""

    def test_frames_to_events(self) -> None:
        """The hello, audio and a control message, in order; nothing is answered."""
        proto, transport, call = self.open(ClientProtocol)
        proto.dataReceived(text({"token": "t", "parameters": {"g": "1"}}))
        proto.dataReceived(frame(2, b"\x01\x02"))
        proto.dataReceived(text({"type": "KeepAlive"}))
        hello, audio, control = call.received[1:]
        self.assertEqual((type(hello), hello.token, dict(hello.parameters)), (ClientHello, "t", {"g": "1"}))
        self.assertEqual(audio, Audio(b"\x01\x02"))
        self.assertEqual(control, CallerControl({"type": "KeepAlive"}))
        self.assertEqual(call.counts, [])
        self.assertEqual(self.sent(transport), [])

    def test_bad_hello_counted_and_passed_on(self) -> None:
        """A hello that is not one is counted by reason and still handed to the call (4002 is its job)."""
        proto, transport, call = self.open(ClientProtocol)
        proto.dataReceived(frame(2, b"\x00"))
        [hello] = call.received[1:]
        self.assertEqual((hello.token, hello.reason), ("", "binary_frame"))
        self.assertEqual(call.rejected(), ["binary_frame"])

    def test_bad_control_answered(self) -> None:
        """A control message that is not a JSON object: counted, coded, answered INVALID_MESSAGE."""
        proto, transport, call = self.open(ClientProtocol)
        proto.dataReceived(text({"token": "t"}))
        with capturedLogs() as events:
            proto.dataReceived(frame(1, b"[1, 2]"))
        self.assertEqual(call.rejected(), ["not_object"])
        self.assertEqual([e.get("log_category") for e in events], ["CALLER_MESSAGE_REJECTED"])
        [(opcode, payload)] = self.sent(transport)
        reply = json.loads(payload)
        self.assertEqual((opcode, reply["type"], reply["source"], reply["code"]),
                         (1, "Error", "gateway", "INVALID_MESSAGE"))
        self.assertEqual(len(call.received), 2, "nothing more for the call")
        self.assertEqual(proto.state, LegState.OPEN)

    def test_events_to_frames(self) -> None:
        """Audio goes out binary, events and errors as JSON text; clears and marks not at all."""
        proto, transport, call = self.open(ClientProtocol)
        proto.send_audio(b"\x01\x00" * 4)
        proto.send_clear()
        proto.send_mark("m")
        proto.send_event(DeepgramEvent("UserStartedSpeaking", {"type": "UserStartedSpeaking"}))
        proto.send_error("UPSTREAM_FAILED", "gone")
        frames = self.sent(transport)
        self.assertEqual([opcode for opcode, _ in frames], [2, 1, 1])
        self.assertEqual(frames[0][1], b"\x01\x00" * 4)
        self.assertEqual(json.loads(frames[1][1]), {"type": "UserStartedSpeaking"})
        error = json.loads(frames[2][1])
        self.assertEqual((error["code"], error["message"], error["description"]),
                         ("UPSTREAM_FAILED", "gone", "gone"))


class IndependenceTests(SynchronousTestCase):
    """The legs know their call through `gateway.interfaces`, never `gateway.call`."""

    def test_legs_do_not_import_the_call(self) -> None:
        """Neither leg module imports gateway.call (nor gateway.service)."""
        legs = os.path.dirname(caller.__file__)
        for name in ("caller.py", "deepgram.py"):
            with open(os.path.join(legs, name)) as f:
                tree = ast.parse(f.read())
            imported = set()
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module:
                    imported.add(node.module)
                elif isinstance(node, ast.Import):
                    imported.update(alias.name for alias in node.names)
            self.assertFalse(imported & {"gateway.call", "gateway.service"}, name)
