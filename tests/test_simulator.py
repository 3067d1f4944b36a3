"""
Tests for the call simulator (`gateway.simulator`) against small fake gateways on loopback.

The fakes are Autobahn servers written here: a Twilio-facing one that records what arrives,
answers with media/mark/clear on a script, and closes with 1000 after ``stop``; and a /client one.
Every test waits for the server side of each connection to close, so the reactor ends clean.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import tempfile
from typing import Any, Callable

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twilio.request_validator import RequestValidator
from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from gateway.codecs.g711 import ulaw_to_linear16
from gateway.codecs.wav import WavAudio, read_wav
from gateway.simulator import CallResult, ClientCall, Playback, TwilioCall
from gateway.simulator.audio import to_mulaw_8k
from gateway.simulator.cli import main
from gateway.simulator.report import format_event, summary_lines

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DATA = os.path.join(HERE, "data")

#: 0.625 s of mu-law: 31 whole 160-byte frames and a short one of 44 bytes.
YES_8K = read_wav(os.path.join(DATA, "caller-yes-8k-mulaw.wav"))
YES_16K = read_wav(os.path.join(DATA, "caller-yes-16k-s16le.wav"))

Script = Callable[["FakeGateway", dict], None]


class FakeGateway(WebSocketServerProtocol):
    """A Twilio-facing fake: records messages; ``factory.on_message`` answers; 1000 after stop."""

    def onConnect(self, request: Any) -> None:
        self.factory.requests.append(request)
        if self.factory.refuse is not None:
            raise ConnectionDeny(self.factory.refuse, "refused by the test")

    def onOpen(self) -> None:
        self.received: list[tuple[float, bool, Any]] = []
        self.stream_sid: str | None = None
        self.closed: defer.Deferred = defer.Deferred()
        self.factory.sessions.append(self)
        if self.factory.on_open is not None:
            self.factory.on_open(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        message = payload if isBinary else json.loads(payload)
        self.received.append((reactor.seconds(), isBinary, message))
        if isinstance(message, dict) and message.get("event") == "start":
            self.stream_sid = message["streamSid"]
        if self.factory.on_message is not None:
            self.factory.on_message(self, message)
        if isinstance(message, dict) and message.get("event") == "stop" and self.factory.close_on_stop:
            self.sendClose(1000)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if hasattr(self, "closed") and not self.closed.called:
            self.closed.callback(code)

    def send_json(self, message: dict) -> None:
        """Send one JSON text frame."""
        if self.state == self.STATE_OPEN:
            self.sendMessage(json.dumps(message).encode(), False)

    def media(self, payload: bytes) -> None:
        """Play ``payload`` (mu-law) on the stream, as the gateway would."""
        self.send_json({"event": "media", "streamSid": self.stream_sid,
                        "media": {"payload": base64.b64encode(payload).decode()}})

    def mark(self, name: str) -> None:
        """Ask for a mark echo."""
        self.send_json({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}})

    def clear(self) -> None:
        """Barge-in."""
        self.send_json({"event": "clear", "streamSid": self.stream_sid})

    def texts(self) -> list[dict]:
        """The JSON messages received, in order."""
        return [m for _, binary, m in self.received if not binary]


class FakeServer:
    """One listening fake gateway on 127.0.0.1, port 0, stopped at the end of the test."""

    def __init__(self, test: TestCase, protocol: type = FakeGateway, refuse: int | None = None,
                 on_message: Script | None = None, on_open: Callable | None = None,
                 close_on_stop: bool = True, path: str = "/twilio") -> None:
        factory = WebSocketServerFactory("ws://127.0.0.1")
        factory.protocol = protocol
        factory.requests = []
        factory.sessions = []
        factory.refuse = refuse
        factory.on_message = on_message
        factory.on_open = on_open
        factory.close_on_stop = close_on_stop
        self.factory = factory
        self.port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        test.addCleanup(self.port.stopListening)
        self.url = f"ws://127.0.0.1:{self.port.getHost().port}{path}"

    @property
    def session(self) -> FakeGateway:
        """The one connection the test made."""
        [session] = self.factory.sessions
        return session

    def all_closed(self) -> defer.Deferred:
        """Fires once every server-side connection has closed."""
        return defer.gatherResults([s.closed for s in self.factory.sessions])


@defer.inlineCallbacks
def place(call: Any, server: FakeServer, timeout_s: float = 10.0) -> Any:
    """Run ``call`` to its end and wait for the server side to close too."""
    result = yield call.run().addTimeout(timeout_s, reactor)
    yield server.all_closed().addTimeout(timeout_s, reactor)
    return result


def frames(data: bytes, size: int) -> list[bytes]:
    """``data`` cut into ``size``-byte frames, the last one possibly short."""
    return [data[i : i + size] for i in range(0, len(data), size)]


def kinds(result: CallResult) -> list[str]:
    """The kinds of the recorded events, in order."""
    return [kind for _, kind, _ in result.events]


class TwilioCallTests(TestCase):
    """A Twilio-shaped call against a fake gateway."""

    timeout = 20

    @defer.inlineCallbacks
    def test_message_sequence(self) -> None:
        """connected, start (with customParameters), string-counted media carrying the clip exactly, stop."""
        server = FakeServer(self)
        call = TwilioCall(reactor, url=server.url, audio=YES_8K, custom_parameters={"token": "t-1"},
                          realtime=False, wait_s=0)
        result = yield place(call, server)
        messages = server.session.texts()
        self.assertEqual(messages[0], {"event": "connected", "protocol": "Call", "version": "1.0.0"})
        sid = call.stream_sid
        self.assertRegex(sid, "^MZ[0-9a-f]{32}$")
        self.assertRegex(call.call_sid, "^CA[0-9a-f]{32}$")
        self.assertEqual(messages[1], {
            "event": "start", "sequenceNumber": "1", "streamSid": sid,
            "start": {"accountSid": call.account_sid, "streamSid": sid, "callSid": call.call_sid,
                      "tracks": ["inbound"], "customParameters": {"token": "t-1"},
                      "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}})
        media = messages[2:-1]
        clip_frames = frames(YES_8K.data, 160)
        self.assertEqual(len(media), len(clip_frames))
        for n, (message, expected) in enumerate(zip(media, clip_frames), start=1):
            self.assertEqual(message, {
                "event": "media", "sequenceNumber": str(n + 1), "streamSid": sid,
                "media": {"track": "inbound", "chunk": str(n), "timestamp": str(20 * (n - 1)),
                          "payload": base64.b64encode(expected).decode()}})
        self.assertEqual(len(base64.b64decode(media[-1]["media"]["payload"])), 44)
        self.assertEqual(b"".join(base64.b64decode(m["media"]["payload"]) for m in media), YES_8K.data)
        self.assertEqual(messages[-1], {
            "event": "stop", "sequenceNumber": str(len(media) + 2), "streamSid": sid,
            "stop": {"accountSid": call.account_sid, "callSid": call.call_sid}})
        self.assertFalse(any(binary for _, binary, _ in server.session.received))
        self.assertEqual(result.sent_audio, YES_8K.data)
        self.assertEqual(result.frames_sent, len(clip_frames))
        self.assertEqual((result.close_code, result.closed_by, result.was_clean), (1000, "gateway", True))
        self.assertTrue(result.stop_sent)
        self.assertEqual(result.violations, [])
        self.assertIsNone(result.failure())
        self.assertIn("sim.stop_sent", kinds(result))

    @defer.inlineCallbacks
    def test_silence_while_waiting(self) -> None:
        """After the clip, 0xFF silence frames flow in real time for wait_s, then stop."""
        server = FakeServer(self)
        call = TwilioCall(reactor, url=server.url, audio=YES_8K, realtime=False, wait_s=0.2)
        result = yield place(call, server)
        media = [m for m in server.session.texts() if m["event"] == "media"]
        payloads = [base64.b64decode(m["media"]["payload"]) for m in media]
        clip_count = len(frames(YES_8K.data, 160))
        self.assertEqual(payloads[clip_count:], [b"\xff" * 160] * 10)
        self.assertEqual(result.sent_audio, YES_8K.data + b"\xff" * 1600)
        self.assertGreaterEqual(result.duration_s, 0.2)
        self.assertIsNotNone(result.send_lateness)

    @defer.inlineCallbacks
    def test_realtime_pace(self) -> None:
        """In real time frame n leaves about 20 ms after frame n-1: 0.3 s of audio takes 0.3 s."""
        server = FakeServer(self)
        clip = WavAudio("mulaw", 8000, 1, b"\x7f" * 2400)
        call = TwilioCall(reactor, url=server.url, audio=clip, realtime=True, wait_s=0)
        result = yield place(call, server)
        times = [t for t, _, m in server.session.received if m["event"] == "media"]
        self.assertEqual(len(times), 15)
        self.assertGreaterEqual(times[-1] - times[0], 0.27)
        self.assertGreaterEqual(result.duration_s, 0.3)
        self.assertEqual(result.send_lateness.count, 15)

    @defer.inlineCallbacks
    def test_agent_audio_and_latency(self) -> None:
        """Agent media is decoded in order; latency is measured from the caller's last speech frame."""
        agent = bytes(range(256)) * 2
        sent = []

        def answer(session: FakeGateway, message: dict) -> None:
            if message.get("event") == "media" and message["media"]["chunk"] == "32" and not sent:
                sent.append(True)
                session.media(agent[:300])
                session.media(agent[300:])

        server = FakeServer(self, on_message=answer)
        # The 64 ms of agent audio must finish playing (a wall-clock timer in the playback model)
        # before the call ends: 0.2 s of trailing silence was once not enough on a loaded CI host.
        call = TwilioCall(reactor, url=server.url, audio=YES_8K, realtime=False, wait_s=1.0)
        result = yield place(call, server)
        self.assertEqual(result.agent_audio, agent)
        self.assertEqual(result.media_events, 2)
        self.assertAlmostEqual(result.agent_audio_s, 0.064)
        self.assertIsNotNone(result.speech_end_s)
        self.assertIsNotNone(result.first_agent_audio_after_speech_s)
        self.assertGreaterEqual(result.first_agent_audio_after_speech_s, 0.0)
        self.assertLess(result.first_agent_audio_after_speech_s, 1.0)
        order = kinds(result)
        self.assertLess(order.index("sim.speech_end"), order.index("media"))
        self.assertLess(order.index("sim.agent_started"), order.index("sim.agent_stopped"))
        self.assertEqual(result.agent_media_gaps.count, 1)

    @defer.inlineCallbacks
    def test_marks_played_and_cleared(self) -> None:
        """A mark with nothing queued returns at once; one after 50 ms of audio when it has played;
        one behind a second of audio comes back as cleared on clear."""

        def script(session: FakeGateway, message: dict) -> None:
            if message.get("event") != "start":
                return
            session.mark("idle")
            session.media(b"\x00" * 400)
            session.mark("short")
            session.media(b"\x00" * 8000)
            session.mark("long")
            reactor.callLater(0.2, session.clear)

        server = FakeServer(self, on_message=script)
        call = TwilioCall(reactor, url=server.url, audio=YES_8K, realtime=False, wait_s=0.5)
        result = yield place(call, server)
        self.assertEqual(result.marks_received, ["idle", "short", "long"])
        self.assertEqual(result.marks_echoed, [("idle", "played"), ("short", "played"), ("long", "cleared")])
        self.assertEqual(result.clears, 1)
        echoes = [m for m in server.session.texts() if m["event"] == "mark"]
        self.assertEqual([m["mark"] for m in echoes], [{"name": "idle"}, {"name": "short"}, {"name": "long"}])
        sequence = [int(m["sequenceNumber"]) for m in server.session.texts() if "sequenceNumber" in m]
        self.assertEqual(sequence, list(range(1, len(sequence) + 1)))
        for echo in echoes:
            self.assertEqual(set(echo), {"event", "sequenceNumber", "streamSid", "mark"})
            self.assertEqual(echo["streamSid"], call.stream_sid)
        at = {m["name"]: t for t, kind, m in result.events if kind == "sim.mark_echoed"}
        received = {m["mark"]["name"]: t for t, kind, m in result.events if kind == "mark"}
        self.assertGreaterEqual(at["short"] - received["short"], 0.045)
        self.assertGreaterEqual(at["long"] - received["long"], 0.15)
        [cleared] = [m for _, kind, m in result.events if kind == "sim.cleared"]
        self.assertEqual(cleared["marks"], ["long"])
        self.assertGreater(cleared["dropped_s"], 0.5)
        self.assertEqual(result.violations, [])

    @defer.inlineCallbacks
    def test_marks_not_echoed_on_request(self) -> None:
        """With echo_marks=False nothing goes back, but the marks are still recorded."""
        server = FakeServer(self, on_message=lambda s, m: s.mark("m") if m.get("event") == "start" else None)
        call = TwilioCall(reactor, url=server.url, audio=YES_8K, realtime=False, wait_s=0.1, echo_marks=False)
        result = yield place(call, server)
        self.assertEqual(result.marks_received, ["m"])
        self.assertEqual(result.marks_echoed, [])
        self.assertNotIn("mark", [m["event"] for m in server.session.texts()])

    @defer.inlineCallbacks
    def test_dtmf(self) -> None:
        """Digits go out at their stream time in Twilio's shape; late ones just before stop."""
        server = FakeServer(self)
        call = TwilioCall(reactor, url=server.url, audio=YES_8K, realtime=False, wait_s=0,
                          dtmf=[(0.04, "5"), (60.0, "#")])
        result = yield place(call, server)
        messages = server.session.texts()
        events = [m["event"] for m in messages]
        first = events.index("dtmf")
        self.assertEqual(events[first - 2 : first + 1], ["media", "media", "dtmf"])
        self.assertEqual(messages[first - 1]["media"]["timestamp"], "20")
        self.assertEqual(messages[first], {"event": "dtmf", "streamSid": call.stream_sid,
                                           "sequenceNumber": str(int(messages[first - 1]["sequenceNumber"]) + 1),
                                           "dtmf": {"track": "inbound_track", "digit": "5"}})
        self.assertEqual(events[-2:], ["dtmf", "stop"])
        self.assertEqual(messages[-2]["dtmf"]["digit"], "#")
        self.assertEqual([d for _, d in result.dtmf_sent], ["5", "#"])

    @defer.inlineCallbacks
    def test_signature(self) -> None:
        """X-Twilio-Signature signs the public wss:// URL, not the connect URL; twilio agrees."""
        server = FakeServer(self)
        public = "wss://gw.example.com/twilio"
        call = TwilioCall(reactor, url=server.url, audio=YES_8K, realtime=False, wait_s=0,
                          auth_token="secret-token", signed_url=public, extra_headers={"X-Test": "1"})
        yield place(call, server)
        [request] = server.factory.requests
        signature = request.headers["x-twilio-signature"]
        self.assertEqual(request.headers["x-test"], "1")
        validator = RequestValidator("secret-token")
        self.assertTrue(validator.validate(public, {}, signature))
        self.assertFalse(validator.validate(server.url, {}, signature))
        self.assertFalse(RequestValidator("other").validate(public, {}, signature))

    @defer.inlineCallbacks
    def test_unsigned_by_default(self) -> None:
        """Without an auth token there is no signature header."""
        server = FakeServer(self)
        yield place(TwilioCall(reactor, url=server.url, audio=YES_8K, realtime=False, wait_s=0), server)
        self.assertNotIn("x-twilio-signature", server.factory.requests[0].headers)

    @defer.inlineCallbacks
    def test_refused_handshake(self) -> None:
        """A 403 on the upgrade is recorded with its status; the Deferred still succeeds."""
        server = FakeServer(self, refuse=403)
        call = TwilioCall(reactor, url=server.url, audio=YES_8K, realtime=False, wait_s=0,
                          auth_token="wrong")
        result = yield call.run().addTimeout(10, reactor)
        self.assertEqual(result.handshake_status, 403)
        self.assertFalse(result.opened)
        self.assertIsNone(result.close_code)
        self.assertEqual(result.frames_sent, 0)
        self.assertIn("403", result.failure())
        self.assertEqual(server.factory.sessions, [])

    @defer.inlineCallbacks
    def test_connection_refused(self) -> None:
        """Nothing listening: the result says so instead of failing."""
        port = reactor.listenTCP(0, WebSocketServerFactory(), interface="127.0.0.1")
        number = port.getHost().port
        yield port.stopListening()
        call = TwilioCall(reactor, url=f"ws://127.0.0.1:{number}/twilio", audio=YES_8K, wait_s=0)
        result = yield call.run().addTimeout(10, reactor)
        self.assertIsNotNone(result.connect_error)
        self.assertIn("could not connect", result.failure())

    @defer.inlineCallbacks
    def test_violations(self) -> None:
        """What Twilio rejects is counted: binary (31950), non-JSON, unknown event, wrong streamSid,
        extra and missing fields (31951)."""

        def script(session: FakeGateway, message: dict) -> None:
            if message.get("event") != "start":
                return
            session.sendMessage(b"\x00\x01", True)
            session.sendMessage(b"not json", False)
            session.send_json({"event": "hello", "streamSid": session.stream_sid})
            session.send_json({"event": "media", "streamSid": "MZwrong", "media": {"payload": ""}})
            session.send_json({"event": "mark", "streamSid": session.stream_sid, "mark": {"name": "x"},
                               "extra": 1})
            session.send_json({"event": "clear"})

        server = FakeServer(self, on_message=script)
        call = TwilioCall(reactor, url=server.url, audio=YES_8K, realtime=False, wait_s=0.1)
        result = yield place(call, server)
        self.assertEqual(result.binary_frames, 1)
        self.assertEqual(len(result.violations), 6, result.violations)
        self.assertTrue(result.violations[0].startswith("31950"))
        self.assertTrue(all(v.startswith("31951") for v in result.violations[1:]))
        self.assertIn("MZwrong", " ".join(result.violations))
        self.assertIn("extra", " ".join(result.violations))
        self.assertEqual(result.close_code, 1000)
        self.assertIn("protocol violation", result.failure())

    @defer.inlineCallbacks
    def test_hang_up_without_stop(self) -> None:
        """send_stop=False: no stop, the simulator closes with 1000 (a caller drop)."""
        server = FakeServer(self)
        call = TwilioCall(reactor, url=server.url, audio=YES_8K, realtime=False, wait_s=0, send_stop=False)
        result = yield place(call, server)
        self.assertNotIn("stop", [m["event"] for m in server.session.texts()])
        self.assertEqual((result.close_code, result.closed_by, result.stop_sent), (1000, "simulator", False))
        self.assertIsNone(result.failure())

    @defer.inlineCallbacks
    def test_stop_unanswered(self) -> None:
        """A gateway that stays open after stop is closed by the simulator, and that is a failure."""
        server = FakeServer(self, close_on_stop=False)
        call = TwilioCall(reactor, url=server.url, audio=YES_8K, realtime=False, wait_s=0, close_timeout_s=0.2)
        result = yield place(call, server)
        self.assertTrue(result.stop_unanswered)
        self.assertEqual((result.close_code, result.closed_by), (1000, "simulator"))
        self.assertIn("did not close", result.failure())

    @defer.inlineCallbacks
    def test_until_gateway_closes(self) -> None:
        """wait_s=None streams silence until the gateway closes; its code and reason are kept."""
        server = FakeServer(self, on_open=lambda s: reactor.callLater(0.3, s.sendClose, 4000, "agent hung up"))
        call = TwilioCall(reactor, url=server.url, audio=YES_8K, realtime=False, wait_s=None)
        result = yield place(call, server)
        self.assertEqual((result.close_code, result.close_reason), (4000, "agent hung up"))
        self.assertEqual(result.closed_by, "gateway")
        self.assertFalse(result.stop_sent)
        self.assertGreater(result.frames_sent, len(frames(YES_8K.data, 160)))
        self.assertIn("4000", result.failure())

    @defer.inlineCallbacks
    def test_linear16_clip_is_converted(self) -> None:
        """A 16 kHz linear16 clip goes out as mu-law 8 kHz, a quarter of the bytes."""
        server = FakeServer(self)
        call = TwilioCall(reactor, url=server.url, audio=YES_16K, realtime=False, wait_s=0)
        result = yield place(call, server)
        self.assertEqual(len(result.sent_audio), len(YES_16K.data) // 4)
        self.assertEqual(result.sent_audio, to_mulaw_8k(YES_16K))
        decoded = ulaw_to_linear16(result.sent_audio)
        self.assertEqual(len(decoded), len(YES_16K.data) // 2)

    @defer.inlineCallbacks
    def test_concurrent_calls(self) -> None:
        """Many calls from one process, each with its own streamSid and result."""
        server = FakeServer(self)
        calls = [TwilioCall(reactor, url=server.url, audio=YES_8K, realtime=False, wait_s=0.05)
                 for _ in range(20)]
        results = yield defer.gatherResults([c.run() for c in calls]).addTimeout(15, reactor)
        yield server.all_closed().addTimeout(10, reactor)
        self.assertEqual(len({c.stream_sid for c in calls}), 20)
        self.assertTrue(all(r.ok for r in results))
        received = sorted(s.stream_sid for s in server.factory.sessions)
        self.assertEqual(received, sorted(c.stream_sid for c in calls))

    @defer.inlineCallbacks
    def test_run_twice(self) -> None:
        """A call object places one call."""
        server = FakeServer(self)
        call = TwilioCall(reactor, url=server.url, audio=YES_8K, realtime=False, wait_s=0)
        d = call.run()
        self.assertRaises(RuntimeError, call.run)
        yield d.addTimeout(10, reactor)
        yield server.all_closed().addTimeout(10, reactor)

    @defer.inlineCallbacks
    def test_cancel(self) -> None:
        """Cancelling the Deferred aborts the connection and leaves no timer behind."""
        server = FakeServer(self)
        call = TwilioCall(reactor, url=server.url, audio=YES_8K, realtime=True, wait_s=30)
        d = call.run()
        reactor.callLater(0.2, d.cancel)
        yield self.assertFailure(d, defer.CancelledError)
        yield server.all_closed().addTimeout(10, reactor)
        self.assertIsNone(call._tick_call)
        self.assertGreater(call.result.frames_sent, 0)


class PoliteCallerTests(TestCase):
    """after_greeting and until_answered: the caller neither talks over the agent nor waits idly."""

    timeout = 20

    def agent(self, answer_after_clip: bool = True) -> tuple[FakeServer, list]:
        """A fake that greets (0.2 s and a mark) on start and answers (0.2 s and a mark) the clip."""
        seen: list = []

        def script(session: FakeGateway, message: dict) -> None:
            event = message.get("event")
            if event == "start":
                session.media(b"\x10" * 1600)
                session.mark("greeting")
            elif event == "mark":
                seen.append(("echo", message["mark"]["name"], reactor.seconds()))
            elif event == "media":
                payload = base64.b64decode(message["media"]["payload"])
                if payload != b"\xff" * len(payload) and not any(k == "speech" for k, *_ in seen):
                    seen.append(("speech", message["media"]["chunk"], reactor.seconds()))
                    if answer_after_clip:
                        session.media(b"\x20" * 1600)
                        session.mark("answer")

        return FakeServer(self, on_message=script), seen

    @defer.inlineCallbacks
    def test_clip_waits_for_the_greeting(self) -> None:
        """The clip's first frame leaves after the greeting's mark was echoed as played; silence before."""
        server, seen = self.agent(answer_after_clip=False)
        call = TwilioCall(reactor, url=server.url, audio=YES_8K, realtime=False, wait_s=0,
                          after_greeting=True)
        result = yield place(call, server)
        echo = next(t for kind, name, t in seen if kind == "echo" and name == "greeting")
        speech = next((chunk, t) for kind, chunk, t in seen if kind == "speech")
        self.assertGreaterEqual(speech[1], echo)
        self.assertEqual(result.clears, 0)
        media = [m for m in server.session.texts() if m["event"] == "media"]
        lead = int(speech[0]) - 1
        self.assertGreaterEqual(lead, 9)  # 0.2 s of greeting at 20 ms per frame, at least
        payloads = [base64.b64decode(m["media"]["payload"]) for m in media]
        self.assertEqual(payloads[:lead], [b"\xff" * 160] * lead)
        self.assertEqual(b"".join(payloads[lead:]), YES_8K.data)
        self.assertEqual([m["media"]["chunk"] for m in media], [str(n) for n in range(1, len(media) + 1)])
        self.assertEqual(result.frames_sent, len(media))
        waited = [m for _, kind, m in result.events if kind == "sim.greeting_waited"]
        self.assertEqual(waited[0]["why"], "greeting over")

    @defer.inlineCallbacks
    def test_no_greeting(self) -> None:
        """No agent audio within greeting_timeout_s: the clip starts anyway."""
        server = FakeServer(self)
        call = TwilioCall(reactor, url=server.url, audio=YES_8K, realtime=False, wait_s=0,
                          after_greeting=True, greeting_timeout_s=0.1)
        result = yield place(call, server)
        waited = [m for _, kind, m in result.events if kind == "sim.greeting_waited"]
        self.assertEqual(waited[0]["why"], "no greeting within 0.1 s")
        self.assertTrue(result.sent_audio.endswith(YES_8K.data))

    @defer.inlineCallbacks
    def test_until_answered(self) -> None:
        """The call ends once the answer's mark has played, long before wait_s."""
        server, seen = self.agent()
        call = TwilioCall(reactor, url=server.url, audio=YES_8K, realtime=False, wait_s=15,
                          after_greeting=True, until_answered=True)
        result = yield place(call, server)
        self.assertIn("sim.answered", kinds(result))
        self.assertLess(result.duration_s, 10)
        self.assertEqual([name for name, how in result.marks_echoed], ["greeting", "answer"])
        self.assertEqual(result.close_code, 1000)

    @defer.inlineCallbacks
    def test_client_waits_for_agent_audio_done(self) -> None:
        """/client: the greeting ends with AgentAudioDone and the playback running dry."""
        order: list[str] = []

        def script(session: "FakeClientGateway", message: Any) -> None:
            if isinstance(message, dict) and "token" in message:
                session.sendMessage(b"\x00\x01" * 1600, True)
                session.send_json({"type": "AgentAudioDone"})
            elif isinstance(message, bytes) and message.strip(b"\x00") and "speech" not in order:
                order.append("speech")

        server = FakeServer(self, protocol=FakeClientGateway, on_message=script, path="/client")
        call = ClientCall(reactor, url=server.url, audio=YES_16K, token="t", realtime=False, wait_s=0,
                          after_greeting=True)
        result = yield place(call, server)
        self.assertEqual(order, ["speech"])
        waited = [t for t, kind, _ in result.events if kind == "sim.greeting_waited"]
        stopped = [t for t, kind, _ in result.events if kind == "sim.agent_stopped"]
        self.assertGreaterEqual(waited[0], stopped[0])


class PlaybackTests(TestCase):
    """Twilio's playback queue on a fake clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.seen: list[tuple[float, str, Any]] = []
        self.playback = Playback(self.clock, 8000,
                                 lambda name, how: self.seen.append((self.clock.seconds(), name, how)),
                                 lambda on: self.seen.append((self.clock.seconds(), "speaking", on)))

    def test_marks_play_in_order(self) -> None:
        """Marks come back when the audio before them has played, in real time."""
        self.playback.mark("first")
        self.playback.audio(800)
        self.playback.mark("a")
        self.playback.audio(1600)
        self.playback.mark("b")
        self.clock.advance(0.1)
        self.clock.advance(0.2)
        seen = [(round(t, 6), what, how) for t, what, how in self.seen]
        self.assertEqual(seen, [(0, "first", "played"), (0, "speaking", True), (0.1, "a", "played"),
                                (0.3, "b", "played"), (0.3, "speaking", False)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_clear(self) -> None:
        """clear drops the queue and returns pending marks at once."""
        self.playback.audio(8000)
        self.playback.mark("x")
        self.clock.advance(0.25)
        dropped_s, marks = self.playback.clear()
        self.assertEqual((round(dropped_s, 3), marks), (0.75, ["x"]))
        self.assertEqual(self.seen[-2:], [(0.25, "x", "cleared"), (0.25, "speaking", False)])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.playback.mark("y")
        self.assertEqual(self.seen[-1], (0.25, "y", "played"))

    def test_gap_between_bursts(self) -> None:
        """Audio arriving after the queue ran dry starts a new utterance."""
        self.playback.audio(80)
        self.clock.advance(0.5)
        self.playback.audio(80)
        self.clock.advance(0.5)
        self.assertEqual([on for _, what, on in self.seen], [True, False, True, False])


class FakeClientGateway(FakeGateway):
    """A /client fake: ``factory.on_message`` answers; it never closes on its own unless told."""

    def texts(self) -> list[dict]:
        return [m for _, binary, m in self.received if not binary]

    def binaries(self) -> list[bytes]:
        """The binary frames received, in order."""
        return [m for _, binary, m in self.received if binary]


class ClientCallTests(TestCase):
    """A raw-audio client against a fake /client endpoint."""

    timeout = 20

    @defer.inlineCallbacks
    def test_token_then_frames(self) -> None:
        """Token frame first, then 640-byte PCM frames of the clip; agent audio, transcripts and
        barge-ins are recorded; the client closes with 1000 at the end."""
        agent = b"\x01\x02" * 800

        def script(session: FakeClientGateway, message: Any) -> None:
            if isinstance(message, dict) and "token" in message:
                session.send_json({"type": "ConversationText", "role": "assistant", "content": "Hello!"})
                session.sendMessage(agent, True)
                session.send_json({"type": "UserStartedSpeaking"})
                session.send_json({"type": "ConversationText", "role": "user", "content": "Yes."})

        server = FakeServer(self, protocol=FakeClientGateway, on_message=script, path="/client")
        call = ClientCall(reactor, url=server.url, audio=YES_16K, token="tok", parameters={"voice": "a"},
                          realtime=False, wait_s=0.1)
        result = yield place(call, server)
        session = server.session
        first = session.received[0]
        self.assertEqual((first[1], first[2]), (False, {"token": "tok", "parameters": {"voice": "a"},
                                                        "handover": True}))
        binaries = session.binaries()
        clip_frames = frames(YES_16K.data, 640)
        self.assertEqual(binaries[: len(clip_frames)], clip_frames)
        self.assertEqual(binaries[len(clip_frames):], [b"\x00" * 640] * 5)
        self.assertEqual(result.sent_audio, b"".join(binaries))
        self.assertEqual(result.agent_audio, agent)
        self.assertEqual((result.agent_encoding, result.agent_sample_rate_hz), ("linear16", 16000))
        self.assertEqual([(role, text) for _, role, text in result.transcript],
                         [("assistant", "Hello!"), ("user", "Yes.")])
        self.assertEqual(result.clears, 1)
        self.assertEqual((result.close_code, result.closed_by), (1000, "simulator"))
        self.assertIsNone(result.failure())
        types = [m.get("type") for _, _, m in result.events if isinstance(m, dict)]
        self.assertIn("UserStartedSpeaking", types)

    @defer.inlineCallbacks
    def test_errors_recorded(self) -> None:
        """The gateway's JSON error before a 4xxx close is kept, with the close code."""

        def script(session: FakeClientGateway, message: Any) -> None:
            if isinstance(message, dict):
                session.send_json({"type": "Error", "code": "AUTH_FAILED", "message": "bad token"})
                session.sendClose(4003, "AUTH_FAILED")

        server = FakeServer(self, protocol=FakeClientGateway, on_message=script, path="/client")
        call = ClientCall(reactor, url=server.url, audio=YES_16K, token="forged", realtime=False, wait_s=1)
        result = yield place(call, server)
        self.assertEqual([e["code"] for e in result.errors], ["AUTH_FAILED"])
        self.assertEqual((result.close_code, result.close_reason, result.closed_by), (4003, "AUTH_FAILED", "gateway"))
        self.assertIn("4003", result.failure())

    @defer.inlineCallbacks
    def test_without_token(self) -> None:
        """token=None sends nothing at all and waits for the gateway's verdict."""
        server = FakeServer(self, protocol=FakeClientGateway, path="/client",
                            on_open=lambda s: reactor.callLater(0.2, s.sendClose, 4001, "AUTH_TIMEOUT"))
        call = ClientCall(reactor, url=server.url, audio=YES_16K, token=None, realtime=False, wait_s=5)
        result = yield place(call, server)
        self.assertEqual(server.session.received, [])
        self.assertEqual((result.close_code, result.frames_sent), (4001, 0))

    @defer.inlineCallbacks
    def test_mulaw_clip_is_converted(self) -> None:
        """A mu-law 8 kHz clip goes out as PCM 16 kHz: four times the bytes, 640-byte frames."""
        server = FakeServer(self, protocol=FakeClientGateway, path="/client")
        call = ClientCall(reactor, url=server.url, audio=YES_8K, token="t", realtime=False, wait_s=0)
        result = yield place(call, server)
        self.assertEqual(len(result.sent_audio), 4 * len(YES_8K.data))
        self.assertTrue(all(len(b) == 640 for b in server.session.binaries()[:-1]))

    @defer.inlineCallbacks
    def test_bad_text_is_a_violation(self) -> None:
        """A text frame that is not a JSON object with a type breaks the /client protocol."""
        server = FakeServer(self, protocol=FakeClientGateway, path="/client",
                            on_open=lambda s: s.sendMessage(b"[1]", False))
        call = ClientCall(reactor, url=server.url, audio=YES_16K, token="t", realtime=False, wait_s=0.1)
        result = yield place(call, server)
        self.assertEqual(len(result.violations), 1)
        self.assertFalse(result.ok)


class ReportTests(TestCase):
    """The words the CLI prints."""

    def test_event_lines(self) -> None:
        """Transcripts, barge-ins, agent speech and marks get a line each; media does not."""
        self.assertEqual(format_event(1.5, "ConversationText", {"role": "user", "content": "Hi"}),
                         "   1.500  caller: Hi")
        self.assertIn("agent: Hello", format_event(2, "ConversationText", {"role": "assistant", "content": "Hello"}))
        self.assertIn("barge-in", format_event(3, "sim.cleared", {"dropped_s": 1.0, "marks": ["a"]}))
        self.assertIn("agent speaking", format_event(3, "sim.agent_started", {}))
        self.assertIn("played", format_event(3, "sim.mark_echoed", {"name": "a", "how": "played", "sent": True}))
        self.assertIsNone(format_event(3, "media", {"event": "media"}))

    def test_summary(self) -> None:
        """The summary names the close code in words."""
        result = CallResult(opened=True, close_code=1000, closed_by="gateway", was_clean=True)
        text = "\n".join(summary_lines(result))
        self.assertIn("1000 (normal closure)", text)
        refused = CallResult(handshake_status=403)
        self.assertIn("HTTP 403", "\n".join(summary_lines(refused)))


class CliTests(TestCase):
    """``gateway-call`` in a subprocess against a fake gateway; exit statuses."""

    timeout = 60

    def run_cli(self, *args: str) -> defer.Deferred:
        """Run the CLI in a child Python with this checkout first on its path."""
        env = {k: v for k, v in os.environ.items() if k not in ("TWILIO_AUTH_TOKEN", "PYTHONPATH")}
        env["PYTHONPATH"] = ROOT
        return getProcessOutputAndValue(sys.executable, ("-m", "gateway.simulator.cli") + args,
                                        env=env, path=ROOT)

    @defer.inlineCallbacks
    def test_normal_call(self) -> None:
        """A call ending with 1000 and no violation exits 0, prints events and a summary, saves audio."""
        server = FakeServer(self, on_message=lambda s, m: (s.media(b"\x11" * 320), s.mark("end"))
                            if m.get("event") == "start" else None)
        path = os.path.join(tempfile.mkdtemp(), "agent.wav")
        out, err, code = yield self.run_cli("--url", server.url, "--audio", os.path.join(DATA, "caller-yes-8k-mulaw.wav"),
                                            "--fast", "--wait-s", "0.2", "--save-audio", path,
                                            "--dtmf", "1@0.1", "--param", "token=abc")
        yield server.all_closed()
        self.assertEqual(code, 0, err)
        text = out.decode()
        self.assertIn("agent speaking", text)
        self.assertIn("mark 'end'", text)
        self.assertIn("1000 (normal closure)", text)
        self.assertEqual(read_wav(path), WavAudio("mulaw", 8000, 1, b"\x11" * 320))
        start = server.session.texts()[1]
        self.assertEqual(start["start"]["customParameters"], {"token": "abc"})
        self.assertIn("dtmf", [m["event"] for m in server.session.texts()])

    @defer.inlineCallbacks
    def test_json(self) -> None:
        """--json prints the result as one JSON object."""
        server = FakeServer(self)
        out, err, code = yield self.run_cli("--url", server.url, "--fast", "--wait-s", "0", "--json")
        yield server.all_closed()
        self.assertEqual(code, 0, err)
        result = json.loads(out)
        self.assertEqual((result["close_code"], result["ok"], result["mode"]), (1000, True, "twilio"))
        self.assertEqual(result["frames_sent"], 264)

    @defer.inlineCallbacks
    def test_refused(self) -> None:
        """A refused upgrade exits non-zero with one line naming the HTTP status."""
        server = FakeServer(self, refuse=403)
        out, err, code = yield self.run_cli("--url", server.url, "--fast", "--wait-s", "0")
        self.assertEqual(code, 1)
        self.assertEqual(err.decode().strip().splitlines()[-1],
                         "gateway-call: the gateway refused the WebSocket upgrade with HTTP 403")

    @defer.inlineCallbacks
    def test_violation_and_close_code(self) -> None:
        """A binary frame from the gateway is a violation; exit non-zero saying so."""
        server = FakeServer(self, on_message=lambda s, m: s.sendMessage(b"\x00", True)
                            if m.get("event") == "start" else None)
        out, err, code = yield self.run_cli("--url", server.url, "--fast", "--wait-s", "0",
                                            "--audio", os.path.join(DATA, "caller-yes-8k-mulaw.wav"))
        yield server.all_closed()
        self.assertEqual(code, 1)
        self.assertIn("31950", err.decode())

    @defer.inlineCallbacks
    def test_client_mode_close_code(self) -> None:
        """Client mode: a 4003 close exits non-zero naming the code and reason."""

        def script(session: FakeClientGateway, message: Any) -> None:
            if isinstance(message, dict):
                session.send_json({"type": "Error", "code": "AUTH_FAILED", "message": "no"})
                session.sendClose(4003, "AUTH_FAILED")

        server = FakeServer(self, protocol=FakeClientGateway, on_message=script, path="/client")
        out, err, code = yield self.run_cli("--url", server.url, "--mode", "client", "--token", "x",
                                            "--fast", "--wait-s", "1")
        yield server.all_closed()
        self.assertEqual(code, 1)
        self.assertIn("4003", err.decode())
        self.assertIn("AUTH_FAILED", out.decode())

    def test_usage_errors(self) -> None:
        """Bad arguments and an unreadable clip return 2 without starting a reactor."""
        self.assertEqual(main(["--dtmf", "x"]), 2)
        self.assertEqual(main(["--audio", os.path.join(DATA, "missing.wav")]), 2)

    @defer.inlineCallbacks
    def test_http_url(self) -> None:
        """--url http://...: one line naming the fix, status 2, no traceback, nothing connected."""
        server = FakeServer(self)
        http_url = "http" + server.url[len("ws"):]
        out, err, code = yield self.run_cli("--url", http_url, "--fast", "--wait-s", "0")
        self.assertEqual(code, 2)
        self.assertEqual(err.decode().strip(), f"gateway-call: --url: expected a ws:// or wss:// URL, "
                                               f"got {http_url!r} (did you mean {server.url}?)")
        self.assertEqual(server.factory.requests, [])

    @defer.inlineCallbacks
    def test_save_audio_into_a_missing_folder(self) -> None:
        """--save-audio in a folder that does not exist: one line, status 2, before any call."""
        server = FakeServer(self)
        path = os.path.join(tempfile.mkdtemp(), "missing", "agent.wav")
        out, err, code = yield self.run_cli("--url", server.url, "--fast", "--wait-s", "0",
                                            "--save-audio", path)
        self.assertEqual(code, 2)
        self.assertEqual(err.decode().strip().splitlines(),
                         [f"gateway-call: --save-audio: the folder {os.path.dirname(path)!r} does not exist"])
        self.assertNotIn(b"saved", out)
        self.assertEqual(server.factory.requests, [])

    @defer.inlineCallbacks
    def test_no_agent_audio_writes_nothing(self) -> None:
        """A call without agent audio leaves an existing file alone and says so; status 0."""
        server = FakeServer(self)
        path = os.path.join(tempfile.mkdtemp(), "agent.wav")
        with open(path, "wb") as f:
            f.write(b"earlier")
        out, err, code = yield self.run_cli("--url", server.url, "--fast", "--wait-s", "0",
                                            "--save-audio", path)
        yield server.all_closed()
        self.assertEqual(code, 0, err)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"earlier")
        self.assertNotIn(b"saved", out)
        self.assertIn(f"no agent audio received: {path} not written".encode(), err)

    def test_write_failure_is_not_claimed(self) -> None:
        """A write that fails after the call is reported as such, never as saved."""
        from gateway.simulator.cli import _save_audio

        result = CallResult(agent_audio=b"\x11" * 160)
        path = os.path.join(tempfile.mkdtemp(), "gone", "agent.wav")
        saved, line = _save_audio(result, path)
        self.assertFalse(saved)
        self.assertTrue(line.startswith(f"could not save the agent audio to {path}: "), line)

    @defer.inlineCallbacks
    def test_twilio_mode_says_where_the_conversation_is(self) -> None:
        """Twilio mode: a Media Stream has no text; the summary says where the conversation is."""
        from gateway.simulator.report import TWILIO_NO_TEXT

        server = FakeServer(self)
        out, err, code = yield self.run_cli("--url", server.url, "--fast", "--wait-s", "0")
        yield server.all_closed()
        self.assertEqual(code, 0, err)
        self.assertIn(f"conversation: {TWILIO_NO_TEXT}", out.decode())
