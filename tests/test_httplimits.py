"""Tests for the bounds on every HTTP request (gateway.httplimits), over a StringTransport and a Clock."""

from __future__ import annotations

import json
from unittest import mock

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web import resource

from gateway.section import Section
from gateway.errors import ConfigError
from gateway.httplimits import LINGER_S, HttpLimits, LimitedSite, http_limits

LIMITS = HttpLimits(max_body_bytes=1024, body_timeout_s=5.0, max_header_bytes=2048, max_headers=20,
                    head_timeout_s=3.0, idle_timeout_s=60.0)


class Echo(resource.Resource):
    """Answers a POST with the length of its body, a GET with "ok"."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[bytes] = []

    def render_POST(self, request) -> bytes:
        request.content.seek(0)
        body = request.content.read()
        self.bodies.append(body)
        return b"%d" % len(body)

    def render_GET(self, request) -> bytes:
        return b"ok"


class HalfClosingTransport(StringTransport):
    """A StringTransport that can half-close, as a TCP transport can."""

    write_closed = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True


class Harness:
    """One connection to a `LimitedSite` with ``limits``, on a Clock."""

    def __init__(self, limits: HttpLimits = LIMITS, transport: StringTransport | None = None) -> None:
        self.clock = Clock()
        self.echo = Echo()
        self.site = LimitedSite(self.echo, limits, reactor=self.clock)
        self.channel = self.site.buildProtocol(None)
        self.transport = transport or StringTransport()
        self.channel.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.channel.dataReceived(data)

    def status(self) -> int | None:
        head = self.transport.value().split(b"\r\n", 1)[0]
        return int(head.split()[1]) if head.startswith(b"HTTP/1.1 ") else None

    def error(self) -> str:
        return json.loads(self.transport.value().split(b"\r\n\r\n", 1)[1])["error"]

    def close(self) -> None:
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        self.channel.connectionLost(Failure(ConnectionDone()))


def post(length: int, body: bytes = b"", extra: bytes = b"") -> bytes:
    return (b"POST /x HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n" % length) + extra + b"\r\n" + body


class BodyLimitTests(SynchronousTestCase):
    """413 and 408 for bodies, decided before the body is stored."""

    def test_small_body_passes(self) -> None:
        """A body within the limit reaches the resource whole."""
        h = Harness()
        h.send(post(5, b"hello"))
        self.assertEqual(h.status(), 200)
        self.assertEqual(h.echo.bodies, [b"hello"])
        # No head or body deadline is left running: only the idle timeout waits for a next request.
        h.clock.advance(59)
        self.assertFalse(h.transport.disconnecting)

    def test_big_content_length_refused_from_the_head(self) -> None:
        """A Content-Length over the limit: 413 from the head alone, nothing stored or spooled."""
        h = Harness()
        with mock.patch("tempfile.TemporaryFile") as spool:
            h.send(post(500_000_000, extra=b"Expect: 100-continue\r\n"))
        self.assertEqual(h.status(), 413)
        self.assertNotIn(b"100 Continue", h.transport.value())
        self.assertIn("1024 bytes", h.error())
        self.assertIsNone(h.channel.requests[-1].content)
        spool.assert_not_called()
        self.assertEqual(h.echo.bodies, [])
        self.assertEqual(h.site.refusals[413], 1)
        # What follows is read and thrown away, never parsed as a request.
        h.send(b"x" * 5000 + b"GET / HTTP/1.1\r\n\r\n")
        self.assertEqual(h.echo.bodies, [])
        self.assertEqual(h.transport.value().count(b"HTTP/1.1"), 1)

    def test_chunked_body_refused_when_it_passes_the_limit(self) -> None:
        """A chunked body is counted as it arrives: 413 once it passes the limit."""
        h = Harness()
        h.send(b"POST /x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n")
        h.send(b"400\r\n" + b"a" * 0x400 + b"\r\n")
        self.assertIsNone(h.status())
        h.send(b"10\r\n" + b"b" * 0x10 + b"\r\n0\r\n\r\n")
        self.assertEqual(h.status(), 413)
        self.assertEqual(h.echo.bodies, [])

    def test_chunked_body_within_the_limit(self) -> None:
        """A chunked body under the limit is kept in memory and delivered."""
        h = Harness()
        h.send(b"POST /x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        self.assertEqual(h.status(), 200)
        self.assertEqual(h.echo.bodies, [b"hello"])

    def test_slow_body(self) -> None:
        """A body not complete within body_timeout_s of the head: 408, however it trickles."""
        h = Harness()
        h.send(post(10, b"a"))
        for _ in range(4):
            h.clock.advance(1.0)
            h.send(b"a")
        self.assertIsNone(h.status())
        h.clock.advance(1.0)
        self.assertEqual(h.status(), 408)
        self.assertEqual(h.echo.bodies, [])
        self.assertTrue(h.transport.disconnecting)


class HeadLimitTests(SynchronousTestCase):
    """414, 431 and 408 for request heads."""

    def test_huge_header_line(self) -> None:
        """One header line past max_header_bytes: 431, not a silent close."""
        h = Harness()
        h.send(b"GET / HTTP/1.1\r\nX-Junk: " + b"a" * 3000)
        self.assertEqual(h.status(), 431)

    def test_headers_too_big_together(self) -> None:
        """Header lines each small but together past max_header_bytes: 431."""
        h = Harness()
        h.send(b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"a" * 200) for i in range(15)))
        self.assertEqual(h.status(), 431)

    def test_too_many_headers(self) -> None:
        """More than max_headers fields: 431."""
        h = Harness()
        h.send(b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: a\r\n" % i for i in range(25)) + b"\r\n")
        self.assertEqual(h.status(), 431)
        self.assertIn("20", h.error())

    def test_long_request_line(self) -> None:
        """A request line past the limit: 414."""
        h = Harness()
        h.send(b"GET /" + b"a" * 3000 + b" HTTP/1.1\r\n")
        self.assertEqual(h.status(), 414)

    def test_slow_head(self) -> None:
        """A head dribbled byte by byte: 408 at head_timeout_s from its first byte."""
        h = Harness()
        for byte in b"GET / HTTP/1.1\r\nHost: g":
            h.send(bytes([byte]))
        h.clock.advance(2.9)
        self.assertIsNone(h.status())
        h.clock.advance(0.1)
        self.assertEqual(h.status(), 408)

    def test_silent_connection(self) -> None:
        """A connection that sends nothing is closed at head_timeout_s, with nothing to answer."""
        h = Harness()
        h.clock.advance(3.0)
        self.assertEqual(h.transport.value(), b"")
        self.assertTrue(h.transport.disconnecting)

    def test_keep_alive_next_request(self) -> None:
        """On a kept-alive connection the next head has its own deadline, from its first byte."""
        h = Harness()
        h.send(b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n")
        self.assertEqual(h.status(), 200)
        h.clock.advance(30)  # idle between requests: only the idle timeout (60 s) applies
        self.assertFalse(h.transport.disconnecting)
        h.transport.clear()
        h.send(b"GET / HTTP/1.1\r\n")
        h.clock.advance(3.0)
        self.assertEqual(h.status(), 408)

    def test_websocket_upgrade_stops_the_timers(self) -> None:
        """upgraded() (a WebSocket took the connection) leaves no timer behind."""
        h = Harness()
        h.send(b"GET / HTTP/1.1\r\n")
        h.channel.upgraded()
        self.assertEqual(h.clock.getDelayedCalls(), [])


class RefusalTests(SynchronousTestCase):
    """How a refusal ends the connection."""

    def test_half_close_then_linger(self) -> None:
        """The answer, a half-close, input discarded, and an abort after LINGER_S."""
        h = Harness(transport=HalfClosingTransport())
        h.send(post(500_000_000))
        self.assertEqual(h.status(), 413)
        self.assertTrue(h.transport.write_closed)
        self.assertFalse(h.transport.disconnecting)
        h.send(b"x" * 1000)
        h.clock.advance(LINGER_S)
        self.assertTrue(h.transport.disconnected)

    def test_peer_closes_first(self) -> None:
        """When the client closes after reading the answer, no timer is left."""
        h = Harness(transport=HalfClosingTransport())
        h.send(post(500_000_000))
        h.close()
        self.assertEqual(h.clock.getDelayedCalls(), [])


class ConfigTests(SynchronousTestCase):
    """The [http] section."""

    def test_defaults(self) -> None:
        """Every bound has a default."""
        self.assertEqual(http_limits(Section("http", {}), head_timeout_s=7.0),
                         HttpLimits(head_timeout_s=7.0))

    def test_values_checked(self) -> None:
        """A bound below its minimum names the key."""
        with self.assertRaises(ConfigError) as e:
            http_limits(Section("http", {"max_body_bytes": 10}))
        self.assertIn("http.max_body_bytes", str(e.exception))
