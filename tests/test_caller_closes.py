"""
Who ended the caller's connection (issue 19, item 8): the caller leg learns from Autobahn whether
the gateway closed or dropped it and under which rule, and `classify_caller_close` names that
close as the gateway's (``CALLER_MESSAGE_TOO_BIG``, ``CALLER_INVALID_UTF8``...), never as
``CALLER_CLOSED``. Real Autobahn server protocols over a string transport, timers on a Clock.
"""

from __future__ import annotations

import struct
from types import SimpleNamespace
from typing import Any

import txaio
from autobahn.twisted.websocket import WebSocketServerFactory
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gateway.codecs.close_codes import CALLER_RULES, classify_caller_close
from gateway.diagnostics import DIAGNOSES
from gateway.events import CallerClosed
from gateway.legs.caller import ClientProtocol, TwilioProtocol, _FAILED_RULES
from gateway.service import CALLER_OPTIONS

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


def upgrade(path: bytes) -> bytes:
    return (b"GET " + path + b" HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: " + KEY + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")


def frame(opcode: int, payload: bytes, masked: bool = True) -> bytes:
    """A final client frame (masked with a zero key unless ``masked`` is False)."""
    n = len(payload)
    bit = 0x80 if masked else 0
    if n < 126:
        head = bytes((0x80 | opcode, bit | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, bit | 126)) + struct.pack("!H", n)
    else:
        head = bytes((0x80 | opcode, bit | 127)) + struct.pack("!Q", n)
    return head + (b"\0\0\0\0" if masked else b"") + payload


def close_frame(code: int) -> bytes:
    return frame(8, struct.pack("!H", code))


def sent_close_code(data: bytes) -> int | None:
    """The code of the first Close frame the server wrote in ``data`` (after the 101)."""
    body = data.split(b"\r\n\r\n", 1)[1]
    pos = 0
    while pos < len(body):
        opcode, n = body[pos] & 0x0F, body[pos + 1] & 0x7F
        start = pos + 2
        if n == 126:
            n, start = struct.unpack_from("!H", body, start)[0], start + 2
        elif n == 127:
            n, start = struct.unpack_from("!Q", body, start)[0], start + 8
        if opcode == 8:
            return struct.unpack_from("!H", body, start)[0]
        pos = start + n
    return None


class RecordingCall:
    """What a caller leg needs of its call, recording the close."""

    log = Logger()

    def __init__(self) -> None:
        self.config = SimpleNamespace(send_budget_bytes=1 << 20)
        self.closed: list[tuple] = []
        self.events: list[Any] = []
        self.counts: list[tuple] = []

    def caller_opened(self, leg: Any) -> None:
        self.leg = leg

    def caller_closed(self, code: int | None, reason: str | None, was_clean: bool,
                      gateway_rule: str | None = None) -> None:
        self.closed.append((code, was_clean))

    def caller_audio(self, event: Any) -> None:
        self.events.append(event)

    def from_caller(self, event: Any) -> None:
        self.events.append(event)

    def count(self, name: str, **labels: str) -> None:
        self.counts.append((name, labels))


class _Recorded:
    """A leg whose call is a RecordingCall (onConnect, admission's business, is bypassed)."""

    def onConnect(self, request: Any) -> None:
        self.call = RecordingCall()


class Twilio(_Recorded, TwilioProtocol): ...
class Client(_Recorded, ClientProtocol): ...


class Transport(StringTransport):
    def unregisterProducer(self) -> None:
        self.producer = None


class LegCloseTests(SynchronousTestCase):
    """The rule the gateway enforced, as the leg reports it."""

    def setUp(self) -> None:
        saved = txaio.config.loop
        self.clock = Clock()
        txaio.config.loop = self.clock
        self.addCleanup(setattr, txaio.config, "loop", saved)

    def open(self, cls: type = Twilio, **options: Any) -> tuple[Any, Transport]:
        factory = WebSocketServerFactory("ws://localhost")
        factory.setProtocolOptions(**dict(CALLER_OPTIONS, **options))
        factory.protocol = cls
        proto, transport = factory.buildProtocol(None), Transport()
        proto.makeConnection(transport)
        proto.dataReceived(upgrade(b"/twilio" if cls is Twilio else b"/client"))
        self.assertIn(b" 101 ", transport.value())
        return proto, transport

    def lose(self, proto: Any, reason: type = ConnectionDone) -> None:
        proto.connectionLost(Failure(reason()))

    def diagnosis(self, proto: Any) -> str:
        code, was_clean = proto.call.closed[-1]
        return classify_caller_close(code, was_clean, False, proto.gateway_rule)

    def assertGatewayClose(self, proto: Any, transport: Transport, code: int, rule: str,
                           diagnosis: str, echo: bool = True) -> None:
        self.assertEqual(sent_close_code(transport.value()), code)
        if echo:
            proto.dataReceived(close_frame(code))  # the caller answers our Close
        self.lose(proto)
        self.assertEqual(proto.gateway_rule, rule)
        self.assertEqual(self.diagnosis(proto), diagnosis)
        self.assertEqual(DIAGNOSES[diagnosis].caller_close, code)

    def test_message_too_big(self) -> None:
        """Over 64 KiB: Autobahn closes with 1009; CALLER_MESSAGE_TOO_BIG, not CALLER_CLOSED."""
        for cls in (Twilio, Client):
            proto, transport = self.open(cls)
            proto.dataReceived(frame(1, b"x" * (64 * 1024 + 1)))
            self.assertGatewayClose(proto, transport, 1009, "message_too_big", "CALLER_MESSAGE_TOO_BIG")
            # the caller echoed 1009 and the close was clean, which used to read "the caller closed"
            self.assertEqual(proto.call.closed, [(1009, True)])

    def test_invalid_utf8(self) -> None:
        """A text frame that is not UTF-8: 1007, CALLER_INVALID_UTF8."""
        proto, transport = self.open()
        proto.dataReceived(frame(1, b'{"event": "\xff"}'))
        self.assertGatewayClose(proto, transport, 1007, "invalid_utf8", "CALLER_INVALID_UTF8")

    def test_protocol_error(self) -> None:
        """An unmasked client frame: 1002, CALLER_PROTOCOL_ERROR (also when the caller then drops)."""
        proto, transport = self.open()
        proto.dataReceived(frame(1, b"{}", masked=False))
        self.assertGatewayClose(proto, transport, 1002, "protocol_error", "CALLER_PROTOCOL_ERROR",
                                echo=False)
        self.assertEqual(proto.call.closed, [(1006, False)])

    def test_ping_timeout(self) -> None:
        """No pong in time: the gateway drops it; CALLER_PING_TIMEOUT, not CALLER_DROPPED."""
        proto, transport = self.open(autoPingInterval=1.0, autoPingTimeout=1.0)
        self.clock.advance(1.0)
        self.clock.advance(1.0)
        self.lose(proto, ConnectionLost)
        self.assertEqual(proto.gateway_rule, "ping_timeout")
        self.assertEqual(self.diagnosis(proto), "CALLER_PING_TIMEOUT")

    def test_abort(self) -> None:
        """The call's end deadline aborts the leg: CALLER_ABORTED."""
        proto, transport = self.open()
        proto.abort()
        self.lose(proto, ConnectionLost)
        self.assertEqual((proto.gateway_rule, self.diagnosis(proto)), ("aborted", "CALLER_ABORTED"))

    def test_close_handshake_timeout(self) -> None:
        """The gateway closed and the caller never answered: dropped after the timeout."""
        proto, transport = self.open()
        proto.close(4002, "INVALID_AUTH")
        self.clock.advance(CALLER_OPTIONS["closeHandshakeTimeout"])
        self.lose(proto, ConnectionLost)
        self.assertEqual((proto.gateway_rule, self.diagnosis(proto)), ("close_timeout", "CALLER_ABORTED"))

    def test_caller_closes(self) -> None:
        """The caller's own close is still CALLER_CLOSED; its drop CALLER_DROPPED."""
        proto, transport = self.open()
        proto.dataReceived(close_frame(1000))
        self.lose(proto)
        self.assertEqual((proto.gateway_rule, self.diagnosis(proto)), (None, "CALLER_CLOSED"))
        proto, transport = self.open()
        self.lose(proto, ConnectionLost)
        self.assertEqual((proto.gateway_rule, self.diagnosis(proto)), (None, "CALLER_DROPPED"))

    def test_call_closes(self) -> None:
        """A close the call asked for carries no rule: the call's own diagnosis says why."""
        proto, transport = self.open()
        proto.close(1000, "CALL_COMPLETED")
        proto.dataReceived(close_frame(1000))
        self.lose(proto)
        self.assertIsNone(proto.gateway_rule)


class TableTests(SynchronousTestCase):
    """The rules, the table and the README agree."""

    def test_every_rule_has_a_diagnosis(self) -> None:
        """Each rule the leg can report names a row of DIAGNOSES whose caller_close is sendable."""
        rules = set(_FAILED_RULES.values()) | {"ping_timeout", "close_timeout", "aborted"}
        self.assertEqual(rules, set(CALLER_RULES))
        for rule, code in CALLER_RULES.items():
            self.assertIn(code, DIAGNOSES)
            self.assertEqual(classify_caller_close(1000, True, False, rule), code)

    def test_stop_wins(self) -> None:
        """Twilio's stop is a hang-up whatever happened next; no rule keeps the old table."""
        self.assertEqual(classify_caller_close(1009, True, True, "message_too_big"), "CALLER_HANGUP")
        self.assertEqual(classify_caller_close(1000, True, False), "CALLER_CLOSED")
        self.assertEqual(classify_caller_close(1006, False, False), "CALLER_DROPPED")

    def test_event_field(self) -> None:
        """CallerClosed carries the rule (optional, after the existing fields)."""
        self.assertIsNone(CallerClosed(1000, None, True).gateway_rule)
        self.assertEqual(CallerClosed(1009, None, True, None, "message_too_big").gateway_rule,
                         "message_too_big")

    def test_readme_rows(self) -> None:
        """The README's rows for the caller diagnoses are exactly the table's."""
        import os

        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        with open(os.path.join(root, "README.md")) as f:
            readme = f.read()
        for code, entry in DIAGNOSES.items():
            if code.startswith("CALLER_"):
                row = (f"| `{code}` | {entry.summary} | {entry.action} | {entry.caller_close} | "
                       f"{'yes' if entry.retryable else 'no'} |")
                self.assertIn(row, readme)
