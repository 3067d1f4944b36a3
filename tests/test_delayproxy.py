"""
Tests for gateway.delayproxy: the delay is applied (nothing arrives before the clock says so),
bytes arrive exact and in order under jitter, closes follow the data, aborts stay aborts; and the
emulator's latency option puts a proxy in front of it.
"""

from __future__ import annotations

import random

from twisted.internet import defer, protocol, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.delayproxy import Delay, DelayProxy

TARGET = ("127.0.0.1", 9999)


class _Wire:
    """One proxied connection in memory: the client's and the target's transports."""

    def __init__(self, client_side: protocol.Protocol, client: StringTransport) -> None:
        self.client_side = client_side
        self.client = client
        self.target_side: protocol.Protocol | None = None
        self.target: StringTransport | None = None


def _proxy(clock: MemoryReactorClock, **kwargs: object) -> DelayProxy:
    proxy = DelayProxy(clock, TARGET, **kwargs)  # type: ignore[arg-type]
    proxy.listen()
    return proxy


def _accept(clock: MemoryReactorClock, proxy: DelayProxy, connect_target: bool = True) -> _Wire:
    """A client connects to ``proxy``; the proxy's connection to the target is made too."""
    factory = clock.tcpServers[-1][1]
    side = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport()
    side.makeConnection(transport)
    wire = _Wire(side, transport)
    if connect_target:
        _connect_target(clock, wire)
    return wire


def _connect_target(clock: MemoryReactorClock, wire: _Wire) -> None:
    host, port, factory = clock.tcpClients[-1][:3]
    assert (host, port) == TARGET
    wire.target_side = factory.buildProtocol(IPv4Address("TCP", host, port))
    wire.target = StringTransport()
    wire.target_side.makeConnection(wire.target)


class DelayTests(SynchronousTestCase):
    """`Delay` draws."""

    def test_sample_range(self) -> None:
        """Draws lie within one_way +- jitter and are never negative."""
        rng = random.Random(1)
        draws = [Delay(40, 10).sample_s(rng) for _ in range(1000)]
        self.assertTrue(all(0.030 <= d <= 0.050 for d in draws))
        self.assertGreater(max(draws) - min(draws), 0.015)
        self.assertTrue(all(Delay(2, 10).sample_s(rng) >= 0 for _ in range(1000)))
        self.assertEqual(Delay(25, 0).sample_s(rng), 0.025)

    def test_validation(self) -> None:
        """Negative, NaN and non-number delays are refused, naming the field."""
        for bad in (-1, float("nan"), "40", True):
            with self.assertRaises(ValueError) as caught:
                Delay(bad, 0)  # type: ignore[arg-type]
            self.assertIn("one_way_ms", str(caught.exception))
        with self.assertRaises(ValueError):
            DelayProxy(MemoryReactorClock(), ("127.0.0.1", "80"))  # type: ignore[arg-type]


class DelayProxyTests(SynchronousTestCase):
    """The proxy driven by a `MemoryReactorClock`: no wall clock anywhere."""

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()

    def test_delay_applied(self) -> None:
        """Bytes are held for exactly the one-way delay in each direction, not a moment less."""
        proxy = _proxy(self.clock, one_way_ms=40, jitter_ms=0)
        wire = _accept(self.clock, proxy)
        wire.client_side.dataReceived(b"hello")
        self.clock.advance(0.039)
        self.assertEqual(wire.target.value(), b"")
        self.clock.advance(0.001)
        self.assertEqual(wire.target.value(), b"hello")
        wire.target_side.dataReceived(b"world")
        self.clock.advance(0.0399)
        self.assertEqual(wire.client.value(), b"")
        self.clock.advance(0.0001)
        self.assertEqual(wire.client.value(), b"world")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_per_direction_delays(self) -> None:
        """to_target and to_client delays apply separately."""
        proxy = _proxy(self.clock, to_target=Delay(10), to_client=Delay(50))
        wire = _accept(self.clock, proxy)
        wire.client_side.dataReceived(b"up")
        wire.target_side.dataReceived(b"down")
        self.clock.advance(0.010)
        self.assertEqual((wire.target.value(), wire.client.value()), (b"up", b""))
        self.clock.advance(0.039)
        self.assertEqual(wire.client.value(), b"")
        self.clock.advance(0.001)
        self.assertEqual(wire.client.value(), b"down")

    def test_jitter_keeps_bytes_exact_and_in_order(self) -> None:
        """
        Chunks 1 ms apart under 30 +- 25 ms of jitter arrive byte-exact and in order both ways:
        at every instant each side has received a prefix of what was sent.
        """
        proxy = _proxy(self.clock, one_way_ms=30, jitter_ms=25, seed=7)
        wire = _accept(self.clock, proxy)
        up = [bytes([i % 256]) * (1 + i % 5) for i in range(300)]
        down = [b"<%d>" % i for i in range(300)]
        progress = set()
        for i in range(300):
            wire.client_side.dataReceived(up[i])
            wire.target_side.dataReceived(down[i])
            self.clock.advance(0.001)
            self.assertTrue(b"".join(up).startswith(wire.target.value()))
            self.assertTrue(b"".join(down).startswith(wire.client.value()))
            progress.add(len(wire.target.value()))
        self.clock.advance(0.1)
        self.assertEqual(wire.target.value(), b"".join(up))
        self.assertEqual(wire.client.value(), b"".join(down))
        self.assertGreater(len(progress), 10, "delivery was spread over time")

    def test_seed_is_deterministic(self) -> None:
        """The same seed gives the same delivery schedule; another seed another."""

        def schedule(seed: int) -> list[int]:
            clock = MemoryReactorClock()
            wire = _accept(clock, _proxy(clock, one_way_ms=20, jitter_ms=15, seed=seed))
            seen = []
            for i in range(100):
                wire.client_side.dataReceived(b"x")
                clock.advance(0.002)
                seen.append(len(wire.target.value()))
            return seen

        self.assertEqual(schedule(3), schedule(3))
        self.assertNotEqual(schedule(3), schedule(4))

    def test_data_waits_for_the_target(self) -> None:
        """What the client sends before the target connection is up is delivered once it is."""
        proxy = _proxy(self.clock, one_way_ms=5, jitter_ms=0)
        wire = _accept(self.clock, proxy, connect_target=False)
        wire.client_side.dataReceived(b"GET / HTTP/1.1\r\n\r\n")
        self.clock.advance(1)
        _connect_target(self.clock, wire)
        self.clock.advance(0)
        self.assertEqual(wire.target.value(), b"GET / HTTP/1.1\r\n\r\n")

    def test_close_after_data(self) -> None:
        """A clean close reaches the other side as loseConnection, after every earlier byte."""
        proxy = _proxy(self.clock, one_way_ms=40, jitter_ms=20, seed=1)
        wire = _accept(self.clock, proxy)
        wire.target_side.dataReceived(b"last words")
        self.clock.advance(0.005)
        wire.target_side.connectionLost(Failure(ConnectionDone()))
        for _ in range(59):
            self.clock.advance(0.001)
            if wire.client.disconnecting:
                self.assertEqual(wire.client.value(), b"last words")
        self.clock.advance(0.1)
        self.assertEqual(wire.client.value(), b"last words")
        self.assertTrue(wire.client.disconnecting)
        self.assertFalse(wire.client.disconnected, "a clean close is not an abort")

    def test_close_is_delayed(self) -> None:
        """The close itself takes the one-way delay."""
        proxy = _proxy(self.clock, one_way_ms=40, jitter_ms=0)
        wire = _accept(self.clock, proxy)
        wire.client_side.connectionLost(Failure(ConnectionDone()))
        self.clock.advance(0.039)
        self.assertFalse(wire.target.disconnecting)
        self.clock.advance(0.001)
        self.assertTrue(wire.target.disconnecting)
        self.assertFalse(wire.target.disconnected)

    def test_abort_propagated(self) -> None:
        """A reset on one side becomes abortConnection on the other, after the delay and the data."""
        proxy = _proxy(self.clock, one_way_ms=40, jitter_ms=0)
        wire = _accept(self.clock, proxy)
        wire.target_side.dataReceived(b"partial")
        wire.target_side.connectionLost(Failure(ConnectionLost()))
        self.clock.advance(0.039)
        self.assertFalse(wire.client.disconnecting)
        self.assertEqual(wire.client.value(), b"")
        self.clock.advance(0.001)
        self.assertEqual(wire.client.value(), b"partial")
        self.assertTrue(wire.client.disconnected, "an abort stays an abort")

    def test_nothing_back_to_a_gone_side(self) -> None:
        """Once a side is gone, bytes for it are dropped and its lost connection echoes nothing."""
        proxy = _proxy(self.clock, one_way_ms=10, jitter_ms=0)
        wire = _accept(self.clock, proxy)
        wire.target_side.dataReceived(b"in flight")
        wire.client_side.connectionLost(Failure(ConnectionDone()))
        self.clock.advance(0.010)
        self.assertEqual(wire.client.value(), b"")
        self.assertTrue(wire.target.disconnecting)
        wire.target_side.connectionLost(Failure(ConnectionDone()))
        self.clock.advance(1)
        self.assertEqual(proxy.connections, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_target_unreachable(self) -> None:
        """A refused connection to the target resets the client, after the delay back to it."""
        proxy = _proxy(self.clock, one_way_ms=20, jitter_ms=0)
        wire = _accept(self.clock, proxy, connect_target=False)
        factory = self.clock.tcpClients[-1][2]
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        self.clock.advance(0.019)
        self.assertFalse(wire.client.disconnecting)
        self.clock.advance(0.001)
        self.assertTrue(wire.client.disconnected)

    def test_connections_are_independent(self) -> None:
        """Two connections through one proxy each get their own bytes."""
        proxy = _proxy(self.clock, one_way_ms=10, jitter_ms=5)
        a = _accept(self.clock, proxy)
        b = _accept(self.clock, proxy)
        a.client_side.dataReceived(b"a")
        b.client_side.dataReceived(b"b")
        self.clock.advance(1)
        self.assertEqual((a.target.value(), b.target.value()), (b"a", b"b"))
        self.assertEqual(proxy.connections, 2)

    def test_stop(self) -> None:
        """stop() resets every connection, drops what waits, and fires once all are gone."""
        proxy = _proxy(self.clock, one_way_ms=10, jitter_ms=0)
        wire = _accept(self.clock, proxy)
        wire.client_side.dataReceived(b"never")
        d = proxy.stop()
        self.assertTrue(wire.client.disconnected)
        self.assertTrue(wire.target.disconnected)
        self.assertNoResult(d)
        wire.client_side.connectionLost(Failure(ConnectionLost()))
        wire.target_side.connectionLost(Failure(ConnectionLost()))
        self.successResultOf(d)
        self.assertEqual(wire.target.value(), b"")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_url_for(self) -> None:
        """url_for rewrites the target's URLs to the proxy's address and refuses others."""
        proxy = _proxy(self.clock)
        port = proxy.address[1]
        self.assertEqual(proxy.url_for("ws://127.0.0.1:9999/v1/agent/converse?x=1"),
                         f"ws://127.0.0.1:{port}/v1/agent/converse?x=1")
        self.assertEqual(proxy.url_for("http://127.0.0.1:9999"), f"http://127.0.0.1:{port}")
        for bad in ("ws://127.0.0.1:9998/", "wss://127.0.0.1:9999/", "ws://example.com:9999/"):
            self.assertRaises(ValueError, proxy.url_for, bad)
        self.assertRaises(RuntimeError, lambda: DelayProxy(self.clock, TARGET).address)


class _Echo(protocol.Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)
        if data.endswith(b"."):
            self.transport.loseConnection()


class _Collect(protocol.Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.lost: defer.Deferred = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.lost.callback(reason.value)


class LoopbackTests(TestCase):
    """The proxy on real sockets, against an echo server."""

    timeout = 20

    @defer.inlineCallbacks
    def test_echo_through_proxy(self) -> None:
        """Bytes go through and back exact and in order; the server's close reaches the client cleanly."""
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

        server = reactor.listenTCP(0, protocol.Factory.forProtocol(_Echo), interface="127.0.0.1")
        self.addCleanup(server.stopListening)
        proxy = DelayProxy(reactor, ("127.0.0.1", server.getHost().port), one_way_ms=5, jitter_ms=4, seed=2)
        yield proxy.listen()
        self.addCleanup(proxy.stop)
        client = _Collect()
        yield connectProtocol(TCP4ClientEndpoint(reactor, *proxy.address), client)
        sent = b"".join(b"%05d," % i for i in range(2000)) + b"."
        for i in range(0, len(sent), 997):
            client.transport.write(sent[i:i + 997])
        reason = yield client.lost
        self.assertIsInstance(reason, ConnectionDone)
        self.assertEqual(client.received, sent)


class EmulatorLatencyTests(TestCase):
    """The emulator's latency option."""

    timeout = 20

    @defer.inlineCallbacks
    def test_urls_go_through_the_proxy(self) -> None:
        """With latency the URLs name the proxy, which forwards to the emulator; /v1/projects answers."""
        import treq

        from gateway.emulator import Emulator

        emulator = Emulator(reactor, api_key="k", latency_ms=5, jitter_ms=2)
        yield emulator.listen()
        self.addCleanup(emulator.stop)
        proxy = emulator.proxy
        self.assertIsNotNone(proxy)
        self.assertEqual(proxy.target, ("127.0.0.1", emulator.port.getHost().port))
        self.assertEqual(emulator.url("agent"), f"ws://127.0.0.1:{proxy.address[1]}/v1/agent/converse")
        response = yield treq.get(emulator.http_url + "/v1/projects", headers={"Authorization": "Token k"},
                                  persistent=False)
        body = yield response.json()
        self.assertEqual(response.code, 200)
        self.assertIn("projects", body)

    def test_no_latency_no_proxy(self) -> None:
        """Without latency nothing changes: no proxy, the emulator's own port."""
        from gateway.emulator import Emulator

        clock = MemoryReactorClock()
        emulator = Emulator(clock, api_key="k")
        emulator.listen()
        self.assertIsNone(emulator.proxy)
        self.assertEqual(len(clock.tcpServers), 1)

    def test_cli_options(self) -> None:
        """gateway-emulator takes --latency-ms and --jitter-ms, and refuses negative values."""
        from gateway.emulator.cli import build_parser

        args = build_parser().parse_args(["--latency-ms", "40", "--jitter-ms", "10"])
        self.assertEqual((args.latency_ms, args.jitter_ms), (40.0, 10.0))
        with self.assertRaises(SystemExit):
            build_parser().parse_args(["--latency-ms", "-1"])
