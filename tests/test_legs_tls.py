"""
The Deepgram leg's TLS (`gateway.legs.tls`): the layer in memory against a stdlib TLS server
(handshake, data both ways, closes, failures), then the leg over real loopback ``wss://``
(`gateway.legs.deepgram.connect_deepgram`: audio both ways byte-exact, certificates refused, a
peer that drops or stops reading), then whole calls through the gateway to the emulator over
``wss://``, directly and 40 ms away.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import ssl
import tempfile
from functools import lru_cache
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.bench.certificates import Authority
from gateway.legs import tls
from gateway.legs.deepgram import connect_deepgram
from gateway.legs.pressure import Pressure
from gateway.service import UPSTREAM_OPTIONS
from gateway.testing import configure

# --- a test PKI ----------------------------------------------------------------------------------


@lru_cache(maxsize=None)
def _pki() -> dict[str, Any]:
    """The trusted CA and its good and wrong-host certificates; an untrusted CA's good one."""
    trusted = Authority(tempfile.mkdtemp(prefix="legs-tls-"), "legs-tls trusted CA")
    other = Authority(tempfile.mkdtemp(prefix="legs-tls-"), "legs-tls untrusted CA")
    return {"ca": trusted.ca_pem, "good": trusted.issue("localhost", "127.0.0.1"),
            "wrong_host": trusted.issue("wrong.example"),
            "untrusted": other.issue("localhost", "127.0.0.1")}


def _trust_test_ca(test: Any) -> None:
    """Point the platform trust store (``SSL_CERT_FILE``) at the test CA, with fresh contexts."""
    saved = os.environ.get("SSL_CERT_FILE")
    os.environ["SSL_CERT_FILE"] = _pki()["ca"]
    tls.client_context.cache_clear()

    def restore() -> None:
        if saved is None:
            os.environ.pop("SSL_CERT_FILE", None)
        else:
            os.environ["SSL_CERT_FILE"] = saved
        tls.client_context.cache_clear()

    test.addCleanup(restore)


def _server_context(which: str = "good", maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*_pki()[which])
    if maximum is not None:
        context.maximum_version = maximum
    return context


# --- the layer in memory -------------------------------------------------------------------------


class _Inner(Protocol):
    """The wrapped protocol: records what it is given."""

    def __init__(self) -> None:
        self.received = b""
        self.lost: Failure | None = None
        self.made = False

    def connectionMade(self) -> None:
        self.made = True

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = ConnectionDone()) -> None:  # type: ignore[assignment]
        self.lost = reason


class _Wire(StringTransport):
    def abortConnection(self) -> None:
        self.aborted = True
        self.loseConnection()


class _Pair:
    """A `TLSClientProtocol` on a string transport and a stdlib TLS server in memory."""

    def __init__(self, test: SynchronousTestCase, host: str = "localhost", server: str = "good",
                 maximum: ssl.TLSVersion | None = None) -> None:
        _trust_test_ca(test)
        self.inner = _Inner()
        self.client = tls.TLSClientProtocol(tls.client_context(host), host, self.inner)
        self.wire = _Wire()
        self.wire.aborted = False
        self.s_in, self.s_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.server = _server_context(server, maximum).wrap_bio(self.s_in, self.s_out, server_side=True)
        self.server_got = b""
        self.server_error: Exception | None = None
        self.server_closed = False
        self.client.makeConnection(self.wire)

    def to_server(self) -> None:
        """What the client wrote reaches the server, which handshakes and reads."""
        data = self.wire.value()
        self.wire.clear()
        if data:
            self.s_in.write(data)
        try:
            self.server.do_handshake()
            while True:
                data = self.server.read(65536)
                if not data:
                    self.server_closed = True
                    break
                self.server_got += data
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            pass
        except ssl.SSLZeroReturnError:
            self.server_closed = True
        except ssl.SSLError as e:
            self.server_error = e

    def to_client(self) -> bytes:
        """What the server wrote, handed to the client in one read; returns it."""
        data = self.s_out.read()
        if data:
            self.client.dataReceived(data)
        return data

    def handshake(self) -> None:
        for _ in range(4):
            self.to_server()
            self.to_client()
        self.to_server()

    def lose_tcp(self, reason: Failure) -> None:
        self.client.connectionLost(reason)


class LayerTests(SynchronousTestCase):
    """The layer against a stdlib server, bytes pumped by hand."""

    def test_handshake_then_data_both_ways(self) -> None:
        """The inner protocol is connected at once; what it writes before the handshake goes,
        in order, once it is done; data both ways is byte-exact, one record per write."""
        pair = _Pair(self)
        self.assertTrue(pair.inner.made)
        pair.client.write(b"GET / HTTP/1.1\r\n")
        pair.client.writeSequence([b"Host: x\r\n", b"\r\n"])
        self.assertFalse(pair.client.handshake_done)
        pair.handshake()
        self.assertTrue(pair.client.handshake_done)
        self.assertEqual(pair.server_got, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        payloads = [bytes((i * 7 + n) & 0xFF for i in range(n)) for n in (1, 166, 16384, 70000)]
        for payload in payloads:
            pair.client.write(payload)
        pair.to_server()
        self.assertEqual(pair.server_got[27:], b"".join(payloads))
        for payload in payloads:
            pair.server.write(payload)
        pair.to_client()
        self.assertEqual(pair.inner.received, b"".join(payloads))
        self.assertIsNone(pair.inner.lost)

    def test_one_frame_one_record_one_write(self) -> None:
        """After the handshake a write reaches the TCP transport at once, as one TLS record."""
        pair = _Pair(self)
        pair.handshake()
        pair.wire.clear()
        pair.client.write(b"x" * 166)
        record = pair.wire.value()
        self.assertEqual((record[0], int.from_bytes(record[3:5], "big")), (23, len(record) - 5))

    def test_data_with_the_last_handshake_flight(self) -> None:
        """TLS 1.2: the server's Finished and its first data arrive in one read; the data is
        delivered at once."""
        pair = _Pair(self, maximum=ssl.TLSVersion.TLSv1_2)
        pair.to_server()
        pair.to_client()            # ServerHello .. ServerHelloDone
        pair.to_server()            # the client's key exchange and Finished: the server is done
        pair.server.write(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
        pair.to_client()            # the server's Finished and the data, together
        self.assertTrue(pair.client.handshake_done)
        self.assertEqual(pair.client._tls.version(), "TLSv1.2")
        self.assertEqual(pair.inner.received, b"HTTP/1.1 101 Switching Protocols\r\n\r\n")

    def test_session_tickets_are_read_and_ignored(self) -> None:
        """TLS 1.3: the server's session tickets, then data, in one read: only the data is
        delivered."""
        pair = _Pair(self)
        pair.handshake()            # the server's NewSessionTickets are now in its BIO
        pair.server.write(b"hello")
        self.assertEqual(pair.client._tls.version(), "TLSv1.3")
        pair.to_client()
        self.assertEqual(pair.inner.received, b"hello")

    def test_peer_close_notify(self) -> None:
        """The peer's close_notify is answered with ours, the TCP connection closes, and the
        inner protocol sees a clean close (what came before it delivered)."""
        pair = _Pair(self)
        pair.handshake()
        pair.server.write(b"last words")
        try:
            pair.server.unwrap()
        except ssl.SSLWantReadError:
            pass
        pair.to_client()
        self.assertEqual(pair.inner.received, b"last words")
        self.assertTrue(pair.wire.disconnecting)
        pair.to_server()
        self.assertTrue(pair.server_closed, "our close_notify reached the server")
        pair.client.write(b"too late")
        self.assertEqual(pair.wire.value(), b"")
        pair.lose_tcp(Failure(ConnectionDone()))
        self.assertIsInstance(pair.inner.lost.value, ConnectionDone)

    def test_lose_connection_sends_close_notify(self) -> None:
        """loseConnection: close_notify goes out, then the TCP connection closes; later writes
        are dropped."""
        pair = _Pair(self)
        pair.handshake()
        pair.client.write(b"before")
        pair.client.loseConnection()
        pair.client.write(b"after")
        self.assertTrue(pair.client.disconnecting)
        self.assertTrue(pair.wire.disconnecting)
        pair.to_server()
        self.assertEqual(pair.server_got, b"before")
        self.assertTrue(pair.server_closed)
        pair.lose_tcp(Failure(ConnectionDone()))
        self.assertIsInstance(pair.inner.lost.value, ConnectionDone)

    def test_lose_connection_before_handshake_aborts(self) -> None:
        """Before the handshake nothing can be said: loseConnection aborts (as Twisted's TLS)."""
        pair = _Pair(self)
        pair.client.loseConnection()
        self.assertTrue(pair.wire.aborted)

    def test_lose_connection_waits_for_pending_writes(self) -> None:
        """Writes made before the handshake still go once it is done, then close_notify."""
        pair = _Pair(self)
        pair.client.write(b"upgrade request")
        pair.client.loseConnection()
        self.assertFalse(pair.wire.aborted)
        pair.handshake()
        self.assertEqual(pair.server_got, b"upgrade request")
        self.assertTrue(pair.server_closed)
        self.assertTrue(pair.wire.disconnecting)

    def test_abort(self) -> None:
        """abortConnection aborts the TCP connection; nothing more is delivered."""
        pair = _Pair(self)
        pair.handshake()
        pair.server.write(b"unread")
        pair.client.abortConnection()
        self.assertTrue(pair.wire.aborted)
        pair.to_client()
        self.assertEqual(pair.inner.received, b"")
        pair.lose_tcp(Failure(ConnectionAborted()))
        self.assertIsInstance(pair.inner.lost.value, ConnectionAborted)

    def test_truncation(self) -> None:
        """A peer that closes TCP without close_notify: what came is delivered, then
        ConnectionLost (a truncation, as Twisted reports it)."""
        pair = _Pair(self)
        pair.handshake()
        pair.server.write(b"partial")
        pair.to_client()
        pair.lose_tcp(Failure(ConnectionDone()))
        self.assertEqual(pair.inner.received, b"partial")
        self.assertIsInstance(pair.inner.lost.value, ConnectionLost)

    def test_drop_during_handshake(self) -> None:
        """TCP closed in the middle of the handshake: ConnectionLost."""
        pair = _Pair(self)
        pair.to_server()
        pair.lose_tcp(Failure(ConnectionDone()))
        self.assertIsInstance(pair.inner.lost.value, ConnectionLost)

    def test_wrong_host(self) -> None:
        """A certificate for another name: the handshake fails, the server gets an alert, TCP
        closes and the inner protocol's connectionLost gets the verification error."""
        pair = _Pair(self, server="wrong_host")
        pair.client.write(b"never sent")
        pair.handshake()
        self.assertTrue(pair.wire.disconnecting)
        self.assertIsInstance(pair.server_error, ssl.SSLError)
        self.assertEqual(pair.server_got, b"")
        pair.lose_tcp(Failure(ConnectionDone()))
        self.assertIsInstance(pair.inner.lost.value, ssl.SSLCertVerificationError)
        self.assertIn("Hostname mismatch", pair.inner.lost.value.verify_message)

    def test_untrusted_ca(self) -> None:
        """A certificate from a CA the trust store lacks: the same, with the issuer named."""
        pair = _Pair(self, server="untrusted")
        pair.handshake()
        pair.lose_tcp(Failure(ConnectionDone()))
        self.assertIsInstance(pair.inner.lost.value, ssl.SSLCertVerificationError)
        self.assertIn("issuer", pair.inner.lost.value.verify_message)

    def test_garbage_after_handshake(self) -> None:
        """Bytes that are no TLS record: the connection closes with the SSL error as reason."""
        pair = _Pair(self)
        pair.handshake()
        pair.client.dataReceived(b"\x17\x03\x03\x00\x05hello")
        self.assertTrue(pair.wire.disconnecting)
        pair.lose_tcp(Failure(ConnectionDone()))
        self.assertIsInstance(pair.inner.lost.value, ssl.SSLError)

    def test_context(self) -> None:
        """One context per host per process: certificate and host name required, TLS >= 1.2."""
        _trust_test_ca(self)
        context = tls.client_context("api.deepgram.com")
        self.assertIs(tls.client_context("api.deepgram.com"), context)
        self.assertEqual((context.verify_mode, context.check_hostname, context.minimum_version),
                         (ssl.CERT_REQUIRED, True, ssl.TLSVersion.TLSv1_2))

    def test_producer_passes_through(self) -> None:
        """A producer registered on the layer is the TCP transport's."""
        pair = _Pair(self)
        pressure = Pressure()
        pair.client.registerProducer(pressure, True)
        self.assertIs(pair.wire.producer, pressure)
        self.assertIs(pair.client.tcp_transport, pair.wire)
        pair.client.unregisterProducer()
        self.assertIsNone(pair.wire.producer)


# --- the leg over real loopback wss:// -----------------------------------------------------------


class _Port:
    """What the leg reports to (a `gateway.call.UpstreamPort`), recorded."""

    def __init__(self, budget: int = 1 << 20) -> None:
        self.config = configure({"gateway": {"send_budget_bytes": budget}}).config
        self.log = Logger()
        self.reports: list = []
        self.opened: list = []
        self.audio: list[bytes] = []
        self.events: list = []
        self.counted: list = []

    def count(self, name: str, amount: int = 1, **labels: Any) -> None:
        self.counted.append((name, labels))

    def upstream_opened(self, leg: Any, request_id: Any) -> None:
        self.opened.append(request_id)

    def upstream_closed(self, event: Any) -> None:
        self.reports.append(event)

    def upstream_audio(self, event: Any) -> None:
        self.audio.append(event.payload)

    def from_upstream(self, event: Any) -> None:
        self.events.append(event)


class _Peer(Protocol):
    """
    A minimal WebSocket server behind Twisted's TLS: answers the upgrade, then echoes every
    binary frame (``mode`` "echo"), stops reading ("stuck"), or drops TCP after the first frame
    ("drop"), or closes TLS with close_notify after it ("close").
    """

    def __init__(self, mode: str, peers: list) -> None:
        self.mode = mode
        self.buffer = b""
        self.open = False
        self.frames = 0
        self.lost: defer.Deferred = defer.Deferred()
        peers.append(self)

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if not self.open:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            key = re.search(rb"Sec-WebSocket-Key: (\S+)", self.buffer[:end], re.I).group(1)
            accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
            self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                 b"Connection: Upgrade\r\ndg-request-id: tls-1\r\n"
                                 b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
            self.buffer = self.buffer[end + 4:]
            self.open = True
            if self.mode == "stuck":
                self.transport.pauseProducing()  # reads nothing more
                return
        while len(self.buffer) >= 2:
            n = self.buffer[1] & 0x7F
            start = 2
            if n == 126:
                n, start = int.from_bytes(self.buffer[2:4], "big"), 4
            elif n == 127:
                n, start = int.from_bytes(self.buffer[2:10], "big"), 10
            if len(self.buffer) < start + 4 + n:
                return
            key, payload = self.buffer[start:start + 4], self.buffer[start + 4:start + 4 + n]
            opcode = self.buffer[0] & 0x0F
            self.buffer = self.buffer[start + 4 + n:]
            payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
            self.frames += 1
            if opcode == 8:
                self.transport.write(bytes((0x88, len(payload))) + payload)
                self.transport.loseConnection()
                return
            if self.mode == "drop":
                self.transport.abortConnection()
                return
            if self.mode == "close":
                self.transport.loseConnection()
                return
            header = bytes((0x82, n)) if n < 126 else (
                bytes((0x82, 126)) + n.to_bytes(2, "big") if n < 65536
                else bytes((0x82, 127)) + n.to_bytes(8, "big"))
            self.transport.write(header + payload)

    def connectionLost(self, reason: Failure = ConnectionDone()) -> None:  # type: ignore[assignment]
        self.lost.callback(None)


class _LegCase(TestCase):
    timeout = 30

    def setUp(self) -> None:
        _trust_test_ca(self)
        self.peers: list[_Peer] = []

    def listen(self, mode: str = "echo", which: str = "good") -> int:
        from twisted.internet import ssl as tssl

        cert, key = _pki()[which]
        with open(cert) as c, open(key) as k:
            options = tssl.PrivateCertificate.loadPEM(c.read() + k.read()).options()
        port = reactor.listenSSL(0, Factory.forProtocol(lambda: _Peer(mode, self.peers)), options,
                                 interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port

    def connect(self, port: int, host: str = "127.0.0.1", budget: int = 1 << 20) -> tuple[defer.Deferred, _Port]:
        call = _Port(budget)
        d = connect_deepgram(reactor, f"wss://{host}:{port}/v1/agent/converse",
                             {"Authorization": "Token k"}, call, UPSTREAM_OPTIONS)
        return d, call

    @defer.inlineCallbacks
    def closed(self, leg: Any) -> Any:
        """Wait for the leg's connection (and the peer's) to be gone, timers settled."""
        from tests.system.harness import settle_autobahn_timers

        for peer in self.peers:
            yield peer.lost
        yield settle_autobahn_timers()
        _ = leg


class LegTests(_LegCase):
    """`connect_deepgram` over wss:// to a real TLS peer on loopback."""

    @defer.inlineCallbacks
    def test_audio_both_ways_byte_exact(self) -> None:
        """Frames of every size (one record, several records, beyond the fast lane's 64 KiB)
        reach the peer and come back byte-exact and in order; the leg closes cleanly."""
        d, call = self.connect(self.listen("echo"))
        leg = yield d
        yield _turn()
        self.assertEqual(call.opened, ["tls-1"])
        self.assertIsInstance(leg.transport, tls.TLSClientProtocol)
        self.assertTrue(leg.transport.getTcpNoDelay(), "Autobahn's setTcpNoDelay reached the socket")
        sent = [bytes((i * 31 + n) & 0xFF for i in range(n)) for n in (160, 640, 20000, 65535, 70000)]
        sent += [os.urandom(160) for _ in range(50)]
        for payload in sent:
            leg.send_audio(payload)
        while len(call.audio) < len(sent):
            yield _turn()
        self.assertEqual(call.audio, sent)
        leg.close(1000)
        yield self.closed(leg)
        self.assertEqual([(e.code, e.was_clean) for e in call.reports], [(1000, True)])

    @defer.inlineCallbacks
    def test_wrong_host(self) -> None:
        """A certificate for another host: the connection fails with the verification error
        (the call diagnoses DG_UNREACHABLE: see WssCallTests)."""
        d, call = self.connect(self.listen("echo", "wrong_host"))
        failure = yield self.assertFailure(d, ssl.SSLCertVerificationError)
        self.assertIn("mismatch", failure.verify_message)
        self.assertEqual(call.opened, [])
        yield self.closed(None)

    @defer.inlineCallbacks
    def test_untrusted_ca(self) -> None:
        """A certificate from a CA the trust store lacks: the connection fails likewise."""
        d, call = self.connect(self.listen("echo", "untrusted"))
        failure = yield self.assertFailure(d, ssl.SSLCertVerificationError)
        self.assertIn("issuer", failure.verify_message)
        yield self.closed(None)

    @defer.inlineCallbacks
    def test_peer_drops_mid_send(self) -> None:
        """The peer drops TCP (no close_notify) while the leg sends: reported once, as a drop."""
        d, call = self.connect(self.listen("drop"))
        leg = yield d
        for _ in range(200):
            if leg.state != leg.STATE_OPEN:
                break
            leg.send_audio(b"\x7f" * 160)
            yield _turn()
        yield self.closed(leg)
        self.assertEqual([(e.code, e.was_clean) for e in call.reports], [(1006, False)])

    @defer.inlineCallbacks
    def test_peer_close_notify(self) -> None:
        """The peer ends TLS with close_notify (no WebSocket close): answered, reported as a drop
        of the WebSocket (1006), nothing logged as an error."""
        d, call = self.connect(self.listen("close"))
        leg = yield d
        transport = leg.transport
        leg.send_audio(b"\x7f" * 160)
        yield self.closed(leg)
        self.assertTrue(transport._peer_closed)
        self.assertEqual([(e.code, e.was_clean) for e in call.reports], [(1006, False)])

    @defer.inlineCallbacks
    def test_abort(self) -> None:
        """The leg's abort (a cancelled attempt, a call giving up) aborts the connection."""
        d, call = self.connect(self.listen("echo"))
        leg = yield d
        leg.abort()
        yield self.closed(leg)
        self.assertEqual([(e.code, e.was_clean) for e in call.reports], [(1006, False)])

    @defer.inlineCallbacks
    def test_send_budget_applies(self) -> None:
        """A peer that stops reading: once more than the budget waits in the TCP transport
        under the TLS layer, the leg is congested (as on ws://)."""
        d, call = self.connect(self.listen("stuck"), budget=64 * 1024)
        leg = yield d
        tcp = leg.transport.tcp_transport
        self.assertIs(tcp.producer, leg._pressure)
        sent = 0
        while not leg.congested and sent < 256 * 1024 * 1024:
            leg.send_audio(b"\x7f" * 60000)
            sent += 60000
        self.assertTrue(leg.congested)
        self.assertGreater(len(tcp.dataBuffer) + tcp._tempDataLen, 64 * 1024)
        leg.abort()
        for peer in self.peers:
            peer.transport.abortConnection()
        yield self.closed(leg)


def _turn() -> defer.Deferred:
    d: defer.Deferred = defer.Deferred()
    reactor.callLater(0.001, d.callback, None)
    return d


# --- whole calls over wss:// ---------------------------------------------------------------------


class _WssCall:
    """A Twilio call through the gateway to the emulator over wss:// (mixed into TestCases)."""

    timeout = 90
    #: One-way delay between the gateway and Deepgram (the emulator's delay proxy ends TLS).
    latency_ms = 0.0

    def setUp(self) -> None:
        _trust_test_ca(self)

    @defer.inlineCallbacks
    def start(self, which: str = "good", config: dict | None = None) -> Any:
        from tests.system.harness import settle_autobahn_timers, start_emulator, start_gateway

        self.addCleanup(settle_autobahn_timers)
        cert, key = _pki()[which]
        emulator = yield start_emulator(self, latency_ms=self.latency_ms, latency_seed=3)
        yield emulator.stop()  # listen again over TLS
        emulator.sessions.clear()
        yield emulator.listen(f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}")
        emulator_url = emulator.url

        class _Secure:
            def url(self, kind: str) -> str:
                return "wss" + emulator_url(kind)[2:]

        gateway = yield start_gateway(self, _Secure(), config)
        return emulator, gateway

    @defer.inlineCallbacks
    def test_call_byte_exact(self) -> None:
        """The caller's audio reaches Deepgram byte-exact over wss://, agent audio comes back,
        and both ends close with 1000."""
        from gateway.simulator import TwilioCall
        from tests.system.harness import clip

        order = clip("caller-order-8k-mulaw.wav")
        emulator, gateway = yield self.start()
        call = TwilioCall(reactor, url=gateway.url + "/twilio", audio=order, realtime=False, wait_s=3.0)
        result = yield call.run().addTimeout(60, reactor)
        session = emulator.sessions[0]
        yield session.closed
        self.assertEqual(session.audio[: len(order.data)], order.data)
        self.assertGreater(len(result.agent_audio), 0)
        self.assertEqual(result.violations, [])
        self.assertEqual((result.close_code, session.close_code), (1000, 1000))


class WssCallTests(_WssCall, TestCase):
    """Whole calls over wss://: audio both ways, certificates refused."""

    @defer.inlineCallbacks
    def test_wrong_host_diagnosed(self) -> None:
        """A certificate for another host: the call ends with DG_UNREACHABLE, OpenSSL's reason
        in the diagnosis; nothing reached Deepgram."""
        yield self._refused("wrong_host", "IP address mismatch")

    @defer.inlineCallbacks
    def test_untrusted_ca_diagnosed(self) -> None:
        """A certificate from an unknown CA: the same."""
        yield self._refused("untrusted", "CERTIFICATE_VERIFY_FAILED")

    @defer.inlineCallbacks
    def _refused(self, which: str, why: str) -> Any:
        from twisted.logger import globalLogPublisher

        from gateway.simulator import TwilioCall
        from tests.system.harness import clip

        seen: list[dict] = []
        globalLogPublisher.addObserver(seen.append)
        self.addCleanup(globalLogPublisher.removeObserver, seen.append)
        emulator, gateway = yield self.start(which, {"deepgram": {"reconnect_attempts": 0}})
        call = TwilioCall(reactor, url=gateway.url + "/twilio", audio=clip("caller-yes-8k-mulaw.wav"),
                          realtime=False, wait_s=1.0)
        result = yield call.run().addTimeout(60, reactor)
        self.assertEqual(result.close_reason, "DG_UNREACHABLE")
        self.assertEqual(emulator.sessions, [])
        texts = [str(e.get("description", ""))
                 for e in seen]
        self.assertTrue([t for t in texts if why in t], ("OpenSSL's reason was logged", [e.get("log_format") for e in seen]))


class WssDelayedCallTests(_WssCall, TestCase):
    """A whole call over wss://, Deepgram 40 ms away (the emulator's delay proxy ends TLS).
    (The refused certificates are not repeated here: the proxy, on Twisted's TLS, fails to
    abort its link to the emulator after a failed handshake, a fault of the test peer.)"""

    latency_ms = 40.0
