"""
The legs' WebSocket fast lane (`gateway.legs.wire`): its framing helpers, and — differentially —
that a `FastLane` protocol does exactly what the stock Autobahn protocol does with any byte stream.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import re
import socket
import struct

import autobahn
import txaio
from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from autobahn.websocket.protocol import WebSocketProtocol
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import tcp
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gateway.legs import wire
from gateway.legs.wire import (
    FastLane,
    autobahn_supported,
    frame_header,
    mask,
    mask_python,
    write_now,
)
from gateway.service import CALLER_OPTIONS, UPSTREAM_OPTIONS

OPEN = WebSocketProtocol.STATE_OPEN
LIMIT = 2000  # maxMessagePayloadSize on both sides of a differential test: oversize stays cheap
PROPERTY = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DIFFERENTIAL = settings(PROPERTY, max_examples=300)
SIZES = (0, 1, 125, 126, 1000, 65535, 65536)


def xor(payload: bytes, key: bytes) -> bytes:
    return bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def encode(opcode: int, payload: bytes, key: bytes | None = None, fin: bool = True, rsv: int = 0,
           form: int | None = None) -> bytes:
    """Any frame, legal or not; ``form`` forces a 7-, 16- or 64-bit length encoding."""
    n = len(payload)
    form = form or (7 if n < 126 else 16 if n < 65536 else 64)
    head = bytes((0x80 * fin | rsv << 4 | opcode,))
    m = 0x80 if key is not None else 0
    if form == 7:
        head += bytes((m | n,))
    elif form == 16:
        head += bytes((m | 126,)) + struct.pack("!H", n)
    else:
        head += bytes((m | 127,)) + struct.pack("!Q", n)
    return head + (key + xor(payload, key) if key is not None else payload)


def decode(data: bytes) -> list[tuple]:
    """RFC 6455 frames in ``data``: (fin, rsv, opcode, masking key or None, payload)."""
    frames, pos = [], 0
    while pos < len(data):
        b0, b1 = data[pos], data[pos + 1]
        n, pos = b1 & 0x7F, pos + 2
        if n == 126:
            (n,), pos = struct.unpack_from("!H", data, pos), pos + 2
        elif n == 127:
            (n,), pos = struct.unpack_from("!Q", data, pos), pos + 8
        key = None
        if b1 & 0x80:
            key, pos = data[pos:pos + 4], pos + 4
        payload, pos = data[pos:pos + n], pos + n
        assert len(payload) == n, "truncated frame"
        frames.append((bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0x0F, key,
                       xor(payload, key) if key else payload))
    return frames


# --- protocols brought to STATE_OPEN through a real opening handshake ---------------------------

class _Recording:
    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple] = []

    def onOpen(self) -> None:
        if isinstance(self, FastLane):
            self.open_fast_lane()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.events.append(("message", payload, isBinary))
        # What a leg may do from onMessage, with frames still to come in the same read.
        if payload == b"!close":
            self.sendClose(1000, "bye")
        elif payload == b"!drop":
            self.dropConnection(abort=True)
        elif payload == b"!echo" and self.state == OPEN:
            self.sendMessage(payload, isBinary)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.events.append(("close", wasClean, code, reason))


class FastServer(_Recording, FastLane, WebSocketServerProtocol): ...
class StockServer(_Recording, WebSocketServerProtocol): ...
class FastClient(_Recording, FastLane, WebSocketClientProtocol): ...
class StockClient(_Recording, WebSocketClientProtocol): ...


class Transport(StringTransport):
    """Like a TCP transport, unregistering no producer is fine (Autobahn does it when dropping)."""

    def unregisterProducer(self) -> None:
        self.producer = None


KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
UPGRADE = (b"GET /twilio HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: " + KEY + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")


def open_server(cls: type, first: bytes | None = None, log_frames: bool = False, **options) -> tuple:
    """A server protocol past the handshake; ``first`` arrives in the same read as the request."""
    factory = WebSocketServerFactory("ws://localhost")
    factory.logFrames = log_frames
    factory.setProtocolOptions(**dict(CALLER_OPTIONS, **options))
    factory.protocol = cls
    proto, transport = factory.buildProtocol(None), Transport()
    proto.makeConnection(transport)
    proto.dataReceived(UPGRADE + (first or b""))
    assert b" 101 " in transport.value(), transport.value()
    if first is None:
        assert proto.state == OPEN
        transport.clear()
    return proto, transport


def open_client(cls: type, first: bytes | None = None, log_frames: bool = False, **options) -> tuple:
    """A client protocol past the handshake; ``first`` arrives in the same read as the response."""
    factory = WebSocketClientFactory("ws://localhost/v1/agent/converse")
    factory.logFrames = log_frames
    factory.setProtocolOptions(**dict(UPSTREAM_OPTIONS, **options))
    factory.protocol = cls
    proto, transport = factory.buildProtocol(None), Transport()
    proto.makeConnection(transport)
    key = re.search(rb"Sec-WebSocket-Key: (\S+)", transport.value()).group(1)
    accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    transport.clear()
    proto.dataReceived(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                       b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n" + (first or b""))
    assert proto.state == OPEN or first
    return proto, transport


class _ClockLoop:
    """Autobahn's timers go through txaio's global loop: a Clock here, restored afterwards."""

    def setUp(self) -> None:
        saved = txaio.config.loop
        self.clock = Clock()
        txaio.config.loop = self.clock
        self.addCleanup(setattr, txaio.config, "loop", saved)


# --- strategies ---------------------------------------------------------------------------------

def pattern(n: int) -> bytes:
    return (bytes(range(256)) * (n // 256 + 1))[:n]


keys = st.binary(min_size=4, max_size=4)
ascii_json = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=200).map(
    lambda s: json.dumps({"event": "media", "media": {"payload": s}}).encode())
unicode_text = st.text(max_size=150).map(lambda s: s.encode("utf-8"))
binaries = st.binary(max_size=300) | st.sampled_from((125, 126, 127, 1000, LIMIT)).map(pattern)
bad_utf8 = st.tuples(st.text(max_size=5), st.sampled_from(
    (b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82", b"\x80", b"\xf8\x88\x80\x80")),
    st.text(max_size=5)).map(lambda t: t[0].encode() + t[1] + t[2].encode())
oversize = st.sampled_from((LIMIT + 1, LIMIT + 2, 2 * LIMIT)).map(pattern)
close_bodies = st.sampled_from((b"", b"\x03\xe8", b"\x03\xe8bye", b"\x03\xe9", b"\x03\xe7", b"\x03\xed",
                                b"\x0b\xb8", b"\x03", b"\x03\xe8\xff", b"\x0f\xa0" + "ü".encode()))


@st.composite
def fragmented(draw, key: bool) -> bytes:
    """A text or binary message in 2-4 fragments, pings and pongs between them."""
    text = draw(st.booleans())
    whole = draw(unicode_text if text else st.binary(max_size=300))
    cuts = sorted(draw(st.lists(st.integers(0, len(whole)), min_size=1, max_size=3)))
    parts = [whole[a:b] for a, b in zip([0, *cuts], [*cuts, len(whole)])]
    out = b""
    for i, part in enumerate(parts):
        opcode = (1 if text else 2) if i == 0 else 0
        out += encode(opcode, part, draw(keys) if key else None, fin=i == len(parts) - 1)
        if i < len(parts) - 1 and draw(st.booleans()):
            out += encode(draw(st.sampled_from((9, 10))), draw(st.binary(max_size=20)),
                          draw(keys) if key else None)
    return out


def valid(peer_masks: bool) -> st.SearchStrategy[bytes]:
    """What a well-behaved peer sends: masked from a client, unmasked from a server."""
    k = keys if peer_masks else st.none()
    return st.one_of(
        st.builds(encode, st.just(1), ascii_json, k),
        st.builds(encode, st.just(1), unicode_text, k),
        st.builds(encode, st.just(2), binaries, k),
        st.builds(encode, st.sampled_from((9, 10)), st.binary(max_size=125), k),
        fragmented(peer_masks),
        st.builds(encode, st.sampled_from((1, 2)), st.sampled_from((b"!echo", b"!close", b"!drop")), k),
    )


def faults(peer_masks: bool) -> st.SearchStrategy[bytes]:
    """Every way to break the protocol or a limit, a close, and garbage."""
    k = keys if peer_masks else st.none()
    wrong = st.none() if peer_masks else keys  # the other side's masking: a violation
    data = st.tuples(st.sampled_from((1, 2)), ascii_json | unicode_text | binaries)
    return st.one_of(
        st.builds(encode, st.just(1), bad_utf8 | st.binary(max_size=12), k),
        st.builds(lambda d, key: encode(*d, key), data, wrong),
        st.builds(lambda d, key, rsv: encode(*d, key, rsv=rsv), data, k, st.integers(1, 7)),
        st.builds(encode, st.sampled_from((0, 3, 4, 5, 6, 7, 11, 12, 13, 14, 15)), st.binary(max_size=30), k),
        st.builds(encode, st.sampled_from((1, 2)), oversize, k),
        st.builds(encode, st.sampled_from((1, 2)), st.binary(max_size=30), k, fin=st.just(False)),
        st.builds(encode, st.sampled_from((1, 2)), st.binary(max_size=125), k,
                  form=st.sampled_from((16, 64))),  # not the minimal length encoding
        st.builds(encode, st.just(8), close_bodies, k),
        st.builds(encode, st.just(9), st.binary(max_size=125), k, fin=st.just(False)),
        st.binary(min_size=1, max_size=40),
    )


STREAMS = {m: (valid(m), valid(m) | faults(m)) for m in (True, False)}


@st.composite
def chunked(draw, peer_masks: bool) -> list[bytes]:
    """A stream of frames, split into the reads a transport might deliver."""
    good, anything = STREAMS[peer_masks]
    parts = (draw(st.lists(good, max_size=4)) + draw(st.lists(anything, min_size=1, max_size=2))
             + draw(st.lists(good, max_size=4)))
    stream = b"".join(parts)
    if len(stream) < 2:
        return [stream]
    bounds = [sum(map(len, parts[:i])) for i in range(1, len(parts))]  # reads mostly end there
    cuts = draw(st.lists(st.integers(1, len(stream) - 1), max_size=3))
    if bounds and draw(st.booleans()):
        cuts += bounds  # a read per frame, the common case
    elif bounds:
        cuts += draw(st.lists(st.sampled_from(bounds), max_size=len(bounds)))
    cuts = sorted(set(cuts))
    return [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)])]


def snapshot(proto) -> tuple:
    """What Autobahn decided about the connection (its trafficStats are not the lane's business)."""
    return (proto.state, proto.wasClean, proto.closedByMe, proto.failedByMe, proto.droppedByMe,
            proto.localCloseCode, proto.localCloseReason, proto.remoteCloseCode, proto.remoteCloseReason,
            proto.wasMaxMessagePayloadSizeExceeded, proto.wasMaxFramePayloadSizeExceeded,
            proto.transport.disconnecting, proto.autoPingPending is None)


class MaskAndHeaderTests(_ClockLoop, SynchronousTestCase):
    """`mask` and `frame_header` agree with RFC 6455 and with Autobahn's own frames."""

    @PROPERTY
    @given(st.binary(max_size=2000), keys)
    def test_mask(self, payload: bytes, key: bytes) -> None:
        """
        Byte-wise XOR with the key repeated; applying it twice gives the payload back; the C
        masker (when installed) and the Python one agree, and both give bytes.
        """
        for masker in (mask, mask_python):
            self.assertEqual(masker(payload, key), xor(payload, key))
            self.assertEqual(masker(masker(payload, key), key), payload)
            self.assertIs(type(masker(payload, key)), bytes)

    def test_mask_known(self) -> None:
        """RFC 6455 §5.7's masked "Hello", and the empty payload."""
        for masker in (mask, mask_python):
            self.assertEqual(masker(b"Hello", b"\x37\xfa\x21\x3d"), b"\x7f\x9f\x4d\x51\x58")
            self.assertEqual(masker(b"", b"\x01\x02\x03\x04"), b"")

    def test_masker_chosen(self) -> None:
        """The lane masks in C when the websockets package is installed (as in this suite)."""
        try:
            from websockets.speedups import apply_mask
        except ImportError:
            self.assertEqual((wire.MASKER, mask), ("python", mask_python))
        else:
            self.assertEqual((wire.MASKER, mask), ("websockets.speedups", apply_mask))

    def test_header_by_hand(self) -> None:
        """7- and 16-bit lengths, masked and not, decoded by hand."""
        for args, header in (((1, 0), b"\x81\x00"), ((2, 125), b"\x82\x7d"),
                             ((1, 126), b"\x81\x7e\x00\x7e"), ((2, 65535), b"\x82\x7e\xff\xff"),
                             ((1, 5, 0x01020304), b"\x81\x85\x01\x02\x03\x04"),
                             ((2, 300, 0xA0B0C0D0), b"\x82\xfe\x01\x2c\xa0\xb0\xc0\xd0")):
            self.assertEqual(frame_header(*args), header)

    def test_header_like_autobahn(self) -> None:
        """The same bytes as Autobahn's sendFrame, from a server (unmasked) and a client (masked)."""
        server, stt = open_server(StockServer)
        client, ct = open_client(StockClient)
        for opcode in (1, 2):
            for n in (0, 1, 125, 126, 127, 1000, 65535):
                payload = pattern(n)
                server.sendFrame(opcode, payload)
                self.assertEqual(stt.value(), frame_header(opcode, n) + payload)
                client.sendFrame(opcode, payload)
                wire = ct.value()
                key = wire[2:6] if n < 126 else wire[4:8]
                header = frame_header(opcode, n, int.from_bytes(key, "big"))
                self.assertEqual(wire, header + mask(payload, key))
                stt.clear()
                ct.clear()


class DifferentialTests(_ClockLoop, SynchronousTestCase):
    """The same reads into a FastLane protocol and a stock one: the same messages, replies and close."""

    def run_both(self, server: bool, chunks: list[bytes], with_upgrade: bool = False) -> None:
        """Feed both the same reads (the first maybe with the handshake) and compare after each."""
        opener, fast, stock = (open_server, FastServer, StockServer) if server else \
            (open_client, FastClient, StockClient)
        first = chunks[0] if with_upgrade else None
        (fp, ft), (sp, stt) = (opener(cls, first, maxFramePayloadSize=LIMIT, maxMessagePayloadSize=LIMIT)
                               for cls in (fast, stock))
        self.assertEqual(fp._lane_in_limit, LIMIT)
        for chunk in chunks[1:] if with_upgrade else chunks:
            fp.dataReceived(chunk)
            sp.dataReceived(chunk)
            self.assertEqual(fp.events, sp.events)
            if server:
                self.assertEqual(ft.value(), stt.value())
            else:  # a client masks with fresh keys: compare what the frames say
                self.assertEqual([f[:3] + f[4:] for f in decode(ft.value())],
                                 [f[:3] + f[4:] for f in decode(stt.value())])
                self.assertTrue(all(f[3] for f in decode(ft.value())))
            self.assertEqual(snapshot(fp), snapshot(sp))
        self.clock.advance(CALLER_OPTIONS["closeHandshakeTimeout"] + 1)  # an unanswered close times out
        self.assertEqual(snapshot(fp), snapshot(sp))
        for proto in (fp, sp):
            proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(fp.events, sp.events)
        self.assertEqual(snapshot(fp), snapshot(sp))

    @DIFFERENTIAL
    @given(chunked(peer_masks=True), st.booleans())
    def test_server(self, chunks: list[bytes], with_upgrade: bool) -> None:
        """Anything a caller sends, split anywhere (the first read maybe with the upgrade request)."""
        self.run_both(True, chunks, with_upgrade)

    @DIFFERENTIAL
    @given(chunked(peer_masks=False), st.booleans())
    def test_client(self, chunks: list[bytes], with_upgrade: bool) -> None:
        """Anything Deepgram sends, split anywhere (a masked frame from a server is a violation)."""
        self.run_both(False, chunks, with_upgrade)

    def test_auto_ping(self) -> None:
        """A data frame taken by the lane counts as the pong Autobahn's auto-ping waits for."""
        for answer in (True, False):
            (fp, ft), (sp, stt) = open_server(FastServer), open_server(StockServer)
            self.clock.advance(CALLER_OPTIONS["autoPingInterval"])
            for t in (ft, stt):  # the payload holds a timestamp and random bytes: compare the frame
                self.assertEqual([f[:3] for f in decode(t.value())], [(True, 0, 9)])
                t.clear()
            if answer:
                for p in (fp, sp):
                    p.dataReceived(encode(1, b"{}", b"abcd"))
            self.clock.advance(CALLER_OPTIONS["autoPingTimeout"])
            self.assertEqual(snapshot(fp), snapshot(sp))
            self.assertEqual(fp.autoPingTimeoutCall is None, sp.autoPingTimeoutCall is None)
            self.assertEqual(fp.state, OPEN if answer else WebSocketProtocol.STATE_CLOSED)
            self.assertEqual(fp.events, sp.events)

    def test_examples(self) -> None:
        """Hand-picked: each fault after a good frame in the same read, or as a read of its own."""
        k = b"\x11\x22\x33\x44"
        good = encode(1, b'{"event":"media"}', k)
        for fault in (encode(1, b"\xed\xa0\x80", k), encode(2, b"x", None), encode(1, b"x", k, rsv=4),
                      encode(3, b"", k), encode(2, pattern(LIMIT + 1), k), encode(2, pattern(LIMIT), k),
                      encode(2, b"abc", k, form=16), encode(8, b"\x03\xe8", k) + good,
                      encode(9, b"hi", k) + good, encode(0, b"x", k), encode(1, b"ab", k, fin=False),
                      b"\x81"):
            self.run_both(True, [good + fault + good, good])
            self.run_both(True, [good, fault, good])


class SendTests(_ClockLoop, SynchronousTestCase):
    """sendMessage from a FastLane protocol: frames any RFC 6455 peer reads back."""

    def check(self, proto, transport, masked: bool) -> list[bytes]:
        via_autobahn, send_frame = [], proto.sendFrame
        proto.sendFrame = lambda *a, **k: (via_autobahn.append(len(k["payload"])), send_frame(*a, **k))
        keys_seen = []
        for n in SIZES:
            for binary in (False, True):
                payload = pattern(n) if binary else (b"a" * n)
                proto.sendMessage(payload, isBinary=binary)
                [(fin, rsv, opcode, key, got)] = decode(transport.value())
                transport.clear()
                self.assertEqual((fin, rsv, opcode, got), (True, 0, 2 if binary else 1, payload))
                self.assertEqual(key is not None, masked)
                keys_seen.append(key)
        self.assertEqual(via_autobahn, [65536, 65536])  # a 64-bit length: Autobahn's
        return keys_seen

    def test_server(self) -> None:
        """Unmasked, with 7-, 16- and (through Autobahn) 64-bit lengths."""
        self.check(*open_server(FastServer), masked=False)

    def test_client(self) -> None:
        """Masked, with a fresh key for each frame."""
        keys_seen = self.check(*open_client(FastClient), masked=True)
        self.assertEqual(len(set(keys_seen)), len(keys_seen))

    def test_stock_peer_reads_it(self) -> None:
        """What the fast server writes, a stock client parses into the same messages (and back)."""
        for sender, receiver in ((open_server(FastServer), open_client(StockClient)),
                                 (open_client(FastClient), open_server(StockServer))):
            (sp, stp), (rp, _) = sender, receiver
            sent = [(pattern(n) if b else b"z" * n, b) for n in SIZES for b in (False, True)]
            for payload, binary in sent:
                sp.sendMessage(payload, isBinary=binary)
            rp.dataReceived(stp.value())
            self.assertEqual(rp.events, [("message", p, b) for p, b in sent])

    def test_lane_closed_is_autobahn(self) -> None:
        """
        With the lane closed (frame logging on), every message, the empty one included, goes out
        exactly as stock Autobahn writes it: masked from a client (RFC 6455 §5.1), unmasked from a
        server. An empty message once slipped through the closed lane, unmasked from a client.
        """
        for fast, stock, masked in ((FastClient, StockClient, True), (FastServer, StockServer, False)):
            opener = open_client if masked else open_server
            (fp, ft), (sp, st_) = opener(fast, log_frames=True), opener(stock, log_frames=True)
            self.assertEqual(fp._lane_out_limit, -1)
            for payload, binary in ((b"", True), (b"", False), (b"x", True), (b"abc", False)):
                fp.sendMessage(payload, isBinary=binary)
                sp.sendMessage(payload, isBinary=binary)
                [(ffin, frsv, fop, fkey, fgot)] = decode(ft.value())
                [(sfin, srsv, sop, skey, sgot)] = decode(st_.value())
                ft.clear()
                st_.clear()
                self.assertEqual((ffin, frsv, fop, fkey is not None, fgot),
                                 (sfin, srsv, sop, skey is not None, sgot))
                self.assertEqual(fkey is not None, masked, (fast.__name__, payload, binary))


class _Sock:
    """Stands in for a tcp.Server's socket: takes ``take`` bytes, or raises ``error``."""

    def __init__(self, take: int = 0, error: int | None = None) -> None:
        self.take, self.error = take, error

    def send(self, data: bytes) -> int:
        if self.error is not None:
            raise OSError(self.error, "fake")
        return min(self.take, len(data))


class WriteNowTests(SynchronousTestCase):
    """write_now writes to an idle TCP socket directly, and through Twisted otherwise."""

    def tcp_server(self, cls: type = tcp.Server) -> tuple[tcp.Server, socket.socket]:
        a, b = socket.socketpair()
        for s in (a, b):
            s.setblocking(False)
            self.addCleanup(s.close)
        return cls(a, Protocol(), ("127.0.0.1", 1), None, 0, MemoryReactor()), b

    def test_other_transport(self) -> None:
        """Anything not exactly a tcp.Server or tcp.Client (TLS, a subclass, a fake) gets ``write``."""
        transport = StringTransport()
        write_now(transport, b"frame")
        self.assertEqual(transport.value(), b"frame")
        transport, peer = self.tcp_server(type("Sub", (tcp.Server,), {}))
        write_now(transport, b"frame")
        self.assertEqual(b"".join(transport._tempDataBuffer), b"frame")
        self.assertRaises(BlockingIOError, peer.recv, 100)

    def test_idle_socket(self) -> None:
        """An empty buffer: the bytes go straight to the socket, nothing is buffered."""
        transport, peer = self.tcp_server()
        write_now(transport, b"one")
        self.assertEqual(peer.recv(100), b"one")
        self.assertEqual((transport._tempDataLen, transport.dataBuffer), (0, b""))

    def test_busy_or_closing(self) -> None:
        """Once something waits in Twisted's buffer, later writes queue behind it; so when closing."""
        transport, peer = self.tcp_server()
        transport.write(b"first")
        write_now(transport, b"second")
        self.assertEqual(b"".join(transport._tempDataBuffer), b"firstsecond")
        self.assertRaises(BlockingIOError, peer.recv, 100)
        transport, peer = self.tcp_server()
        transport.disconnecting = True
        write_now(transport, b"late")
        self.assertRaises(BlockingIOError, peer.recv, 100)

    def test_partial_and_errors(self) -> None:
        """What the socket does not take, or any error, goes through ``write``."""
        for sock, queued in ((_Sock(take=2), b"llo"), (_Sock(error=errno.EAGAIN), b"hello"),
                             (_Sock(error=errno.ECONNRESET), b"hello"), (_Sock(take=5), b"")):
            transport, _ = self.tcp_server()
            transport.socket = sock
            write_now(transport, b"hello")
            self.assertEqual(b"".join(transport._tempDataBuffer), queued)


class AutobahnRangeTests(_ClockLoop, SynchronousTestCase):
    """
    The lane reaches into Autobahn's internals: it opens only on the releases it was written
    against (`AUTOBAHN_RANGE`); on any other, Autobahn does everything and a warning says so.
    """

    def test_versions(self) -> None:
        """Release strings inside and outside the range, and ones that cannot be read."""
        for version, expected in (("26.10.2", True), ("26.11.1", True), ("26.10", True),
                                  ("26.12.0rc1", True), ("26.9.3", False), ("25.12.1", False),
                                  ("27.0.0", False), ("", False), ("dev", False),
                                  ("26.1x.0", False)):
            self.assertEqual(autobahn_supported(version, ((26, 10), (27, 0))), expected, version)
        self.assertTrue(autobahn_supported(autobahn.__version__))  # what this suite runs on

    def test_outside_range_is_autobahn(self) -> None:
        """
        Outside the range the same reads and sends give exactly what stock Autobahn gives, none
        of it through the lane, and the first connection (only) logs WIRE_AUTOBAHN_UNSUPPORTED.
        """
        self.patch(FastLane, "_lane_allowed", False)
        self.patch(wire, "_fallback_logged", False)
        lane_writes: list[bytes] = []
        self.patch(wire, "write_now", lambda transport, data: lane_writes.append(data))
        self.patch(FastLane, "_take_frames", lambda self, data: self.fail("lane parsed a frame"))
        k = b"\x11\x22\x33\x44"
        reads = [encode(1, b'{"event":"media"}', k) + encode(2, b"abc", k), encode(9, b"hi", k),
                 encode(1, b"!echo", k), encode(8, b"\x03\xe8", k)]
        with capturedLogs() as events:
            for opener, fast, stock in ((open_server, FastServer, StockServer),
                                        (open_client, FastClient, StockClient)):
                server = opener is open_server
                (fp, ft), (sp, stt) = opener(fast), opener(stock)
                self.assertEqual((fp._lane_in_limit, fp._lane_out_limit), (0, -1))
                for chunk in reads:
                    if not server:  # a server's frames are unmasked
                        chunk = b"".join(encode(f[2], f[4]) for f in decode(chunk))
                    fp.dataReceived(chunk)
                    sp.dataReceived(chunk)
                    if sp.state == OPEN:
                        fp.sendMessage(b"out", isBinary=True)
                        sp.sendMessage(b"out", isBinary=True)
                    self.assertEqual(fp.events, sp.events)
                    self.assertEqual([f[:3] + f[4:] for f in decode(ft.value())],
                                     [f[:3] + f[4:] for f in decode(stt.value())])
                    self.assertEqual(snapshot(fp), snapshot(sp))
        self.assertEqual(lane_writes, [])
        warned = [e for e in events if e.get("log_category") == "WIRE_AUTOBAHN_UNSUPPORTED"]
        self.assertEqual(len(warned), 1)
        self.assertEqual(warned[0]["log_level"], LogLevel.warn)
        self.assertEqual(warned[0]["autobahn_version"], autobahn.__version__)
