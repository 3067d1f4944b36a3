"""
The Deepgram leg (`gateway.legs.deepgram.DeepgramProtocol`) over an in-memory transport: when it
reports its end to the call, and what its lifecycle state says meanwhile.
"""

from __future__ import annotations

import base64
import hashlib
import re
import struct

import txaio
from autobahn.exception import Disconnected
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.python.failure import Failure
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import Logger, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from gateway.interfaces import LegState
from gateway.legs.deepgram import DeepgramFactory
from gateway.service import UPSTREAM_OPTIONS
from gateway.testing import configure


class _Port:
    """Records what the leg reports (what `gateway.call.UpstreamPort` receives)."""

    def __init__(self) -> None:
        self.config = configure().config
        self.log = Logger()
        self.reports: list = []
        self.opened: list = []
        self.counted: list = []

    def count(self, name, amount=1, **labels) -> None:
        self.counted.append((name, labels))

    def upstream_opened(self, leg, request_id) -> None:
        self.opened.append(request_id)

    def upstream_closed(self, event) -> None:
        self.reports.append(event)

    def upstream_audio(self, event) -> None:
        pass

    def from_upstream(self, event) -> None:
        pass


class _Transport(StringTransport):
    def unregisterProducer(self) -> None:
        self.producer = None


def close_frame(code: int | None, reason: bytes = b"") -> bytes:
    payload = b"" if code is None else struct.pack("!H", code) + reason
    return bytes((0x88, len(payload))) + payload


class DeepgramLegTests(SynchronousTestCase):
    def setUp(self) -> None:
        saved = txaio.config.loop
        self.clock = Clock()
        txaio.config.loop = self.clock
        self.addCleanup(setattr, txaio.config, "loop", saved)

    def open(self):
        port = _Port()
        factory = DeepgramFactory(port, "ws://localhost/v1/agent/converse", {})
        factory.setProtocolOptions(**UPSTREAM_OPTIONS)
        proto, transport = factory.buildProtocol(None), _Transport()
        proto.makeConnection(transport)
        key = re.search(rb"Sec-WebSocket-Key: (\S+)", transport.value()).group(1)
        accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        transport.clear()
        proto.dataReceived(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                           b"Connection: Upgrade\r\ndg-request-id: r-1\r\n"
                           b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        self.assertEqual(port.opened, ["r-1"])
        return proto, transport, port

    def test_states_are_autobahns(self) -> None:
        """LegState's values are Autobahn's own STATE_* constants: one record of a leg's state."""
        for state in LegState:
            self.assertEqual(state, getattr(WebSocketProtocol, f"STATE_{state.name}"))

    def test_close_frame_reported_at_once_and_once(self) -> None:
        """
        Deepgram's Close frame is reported when it arrives, with the leg CLOSING (Autobahn has
        answered it); the TCP close a round trip later reports nothing more.
        """
        proto, transport, port = self.open()
        proto.dataReceived(close_frame(1011, b"NET-0000"))
        self.assertEqual([(e.code, e.reason, e.was_clean) for e in port.reports], [(1011, "NET-0000", True)])
        self.assertEqual(proto.state, LegState.CLOSING)
        self.assertTrue(transport.value().startswith(b"\x88"), "Autobahn answered the close")
        # Why the call consults the state: Autobahn refuses a send on a closing leg.
        self.assertRaises(Disconnected, proto.send_audio, b"\x00" * 160)
        proto.close(1000)  # a close on a closing leg is nothing
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(len(port.reports), 1)

    def test_1014_is_a_close_not_a_violation(self) -> None:
        """1014 (bad gateway) is reported as 1014 and answered, not failed as a protocol error."""
        proto, transport, port = self.open()
        proto.dataReceived(close_frame(1014, b"upstream unavailable"))
        self.assertEqual([(e.code, e.reason) for e in port.reports], [(1014, "upstream unavailable")])
        sent = transport.value()
        self.assertEqual(sent[0], 0x88)
        self.assertNotEqual(struct.unpack("!H", bytes(a ^ b for a, b in zip(sent[6:8], sent[2:4])))[0], 1002)

    def test_unreadable_message_counted_and_coded(self) -> None:
        """A text frame that is not JSON is counted, logged as DG_MESSAGE_REJECTED, and dropped."""
        proto, transport, port = self.open()
        with capturedLogs() as events:
            proto.dataReceived(bytes((0x81, 5)) + b"{nope")
        self.assertEqual(port.counted, [("upstream_messages_rejected", {"reason": "bad_json"})])
        self.assertEqual([e.get("log_category") for e in events], ["DG_MESSAGE_REJECTED"])
        self.assertEqual(proto.state, LegState.OPEN)

    def test_drop_reported_on_connection_lost(self) -> None:
        """No Close frame at all: the lost connection is reported once, as unclean."""
        proto, transport, port = self.open()
        proto.connectionLost(Failure(ConnectionLost()))
        self.assertEqual([(e.code, e.was_clean) for e in port.reports], [(1006, False)])
