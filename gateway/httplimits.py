"""
Bounds on every HTTP request the gateway's port reads, whichever resource it is for.

twisted.web alone spools any request body to a temporary file before a resource sees it (a
500 MB ``POST /v1/tokens`` was written to disk before its 401), lets a body arrive one byte
every few seconds for ever (each byte restarts the idle timeout), and drops a connection whose
one header line passes 16 KiB without answering. `LimitedSite` builds `LimitedChannel`s and
`LimitedRequest`s that decide from the request head, before any of the body is stored:

- a ``Content-Length`` over ``max_body_bytes``: **413**, without reading the body (and before a
  ``100 Continue``); a chunked body is counted as it arrives and refused the same way;
- a request head not complete within ``head_timeout_s`` of its first byte (of the connection's
  opening, for the first request): **408** (a connection that sent nothing is simply closed);
- a body not complete within ``body_timeout_s`` of the end of its head: **408**;
- a request line over ``max_header_bytes``: **414**; header lines together over
  ``max_header_bytes``, or more than ``max_headers`` of them: **431**.

Bodies are kept in memory (they are at most ``max_body_bytes``). A refusal is a short JSON error
with ``Connection: close``; the gateway then stops sending (a TCP half-close) and reads and
discards what the client still sends for a moment, so that the client gets to read the answer
before the connection goes instead of a reset.
"""

from __future__ import annotations

import collections
import io
import json
from typing import Any

import attrs
from twisted.internet.interfaces import ITransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server

__all__ = ["HttpLimits", "http_limits", "LimitedChannel", "LimitedRequest", "LimitedSite"]

#: After a refusal: how long, and how many bytes, the client may still send before the
#: connection is aborted.
LINGER_S = 2.0
LINGER_BYTES = 1024 * 1024

_REASONS = {
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
}


@attrs.frozen
class HttpLimits:
    """
    ``[http]`` (and ``[gateway] handshake_timeout_s`` as ``head_timeout_s``): the bounds on every
    request. ``idle_timeout_s`` closes a connection that has sent nothing for that long.
    """

    max_body_bytes: int = 64 * 1024
    body_timeout_s: float = 10.0
    max_header_bytes: int = 16 * 1024
    max_headers: int = 100
    head_timeout_s: float = 10.0
    idle_timeout_s: float = 60.0


def http_limits(section: Any, head_timeout_s: float = 10.0) -> HttpLimits:
    """Validate the ``[http]`` section (a `gateway.section.Section`)."""
    return HttpLimits(
        max_body_bytes=section.int("max_body_bytes", 64 * 1024, minimum=1024),
        body_timeout_s=section.float("body_timeout_s", 10.0, minimum=0.1),
        max_header_bytes=section.int("max_header_bytes", 16 * 1024, minimum=1024),
        max_headers=section.int("max_headers", 100, minimum=10),
        head_timeout_s=head_timeout_s,
        idle_timeout_s=section.float("idle_timeout_s", 60.0, minimum=1.0),
    )


class LimitedRequest(server.Request):
    """A request whose body is kept in memory and counted against the channel's limit."""

    _body: io.BytesIO | None = None

    def gotLength(self, length: int | None) -> None:
        # Never a temporary file: the channel has refused any declared length over the limit,
        # and a chunked body is refused once it passes it (handleContentChunk).
        self._body = io.BytesIO()
        # Twisted declares Request.content as the class attribute None, without an annotation,
        # though it is the body's file once the length is known (twisted.web.http.Request).
        self.content = self._body  # type: ignore[assignment]

    def handleContentChunk(self, data: bytes) -> None:
        channel = self.channel
        body = self._body
        if channel is None or body is None:
            # The connection is gone, or a chunk came before the head said a body follows.
            return
        if isinstance(channel, LimitedChannel):
            if channel.refused:
                return
            limit = channel.limits.max_body_bytes
            if body.tell() + len(data) > limit:
                channel.refuse(413, f"the request body is larger than {limit} bytes")
                return
        body.write(data)


class LimitedChannel(http.HTTPChannel):
    """
    An `HTTPChannel` enforcing `HttpLimits` (set by `LimitedSite`); see the module docstring.

    Every refusal goes through `refuse`, which answers once and then only discards input.
    """

    log = Logger()
    limits = HttpLimits()
    #: Counts refusals by status (a `collections.Counter` shared with the site), for metrics.
    refusals: collections.Counter[int] | None = None
    refused = False
    _head_timer: Any = None
    _body_timer: Any = None
    _linger: Any = None
    _await_request = False
    _request_line = True
    _head_bytes = 0
    _discarded = 0

    def connectionMade(self) -> None:
        limits = self.limits
        # One line (LineReceiver) and all lines of a head (HTTPChannel) share the bound.
        self.MAX_LENGTH = limits.max_header_bytes
        self.totalHeadersSize = limits.max_header_bytes
        self.maxHeaders = limits.max_headers
        super().connectionMade()
        self._arm_head()

    # --- timers ---

    def _arm_head(self) -> None:
        self._cancel(self._head_timer)
        self._head_bytes = 0
        self._head_timer = self.callLater(self.limits.head_timeout_s, self._head_too_slow)

    @staticmethod
    def _cancel(timer: Any) -> None:
        if timer is not None and timer.active():
            timer.cancel()

    def _cancel_timers(self) -> None:
        self._cancel(self._head_timer)
        self._cancel(self._body_timer)
        self._head_timer = self._body_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self._head_bytes:
            self.refuse(408, f"the request head was not complete within {self.limits.head_timeout_s:g} s")
        elif self.transport is not None:
            # Nothing sent at all: no request to answer.
            _abort(self.transport)

    def _body_too_slow(self) -> None:
        self._body_timer = None
        self.refuse(408, f"the request body was not complete within {self.limits.body_timeout_s:g} s")

    def upgraded(self) -> None:
        """A WebSocket took the connection over: this channel will never see it again."""
        self._cancel_timers()
        self.setTimeout(None)

    # --- parsing, with the bounds ---

    def dataReceived(self, data: bytes) -> None:
        if self.refused:
            self._discard(data)
            return
        if self._await_request:
            self._await_request = False
            self._arm_head()
        if self._head_timer is not None:
            self._head_bytes += len(data)
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if self.refused:
            return
        if self._request_line and line:
            self._request_line = False
        elif self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            self.refuse(431, f"the request header fields are larger than {self.totalHeadersSize} bytes")
            return
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        if self._request_line:
            self.refuse(414, f"the request line is longer than {self.MAX_LENGTH} bytes")
        else:
            self.refuse(431, f"a request header line is longer than {self.MAX_LENGTH} bytes")

    def headerReceived(self, line: bytes) -> bool:
        if self.refused:
            return False
        if self._receivedHeaderCount >= self.maxHeaders:
            self.refuse(431, f"more than {self.maxHeaders} request header fields")
            return False
        return super().headerReceived(line)

    def allHeadersReceived(self) -> None:
        if self.refused:
            return
        self._cancel(self._head_timer)
        self._head_timer = None
        limit = self.limits.max_body_bytes
        if self.length is not None and self.length > limit:
            # Decided from the head alone: no byte of the body is read or stored.
            self.refuse(413, f"the request body is larger than {limit} bytes")
            return
        super().allHeadersReceived()
        if self.length != 0:
            self._body_timer = self.callLater(self.limits.body_timeout_s, self._body_too_slow)

    def rawDataReceived(self, data: bytes) -> None:
        if self.refused:
            return
        super().rawDataReceived(data)

    def allContentReceived(self) -> None:
        if self.refused:
            return
        self._cancel(self._body_timer)
        self._body_timer = None
        self._request_line = True
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:
        # The next byte begins the next request's head (a keep-alive connection waits for it
        # under the idle timeout, not the head deadline).
        self._await_request = True
        super().requestDone(request)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_timers()
        self._cancel(self._linger)
        self._linger = None
        super().connectionLost(reason)

    # --- refusing ---

    def refuse(self, status: int, message: str) -> None:
        """Answer ``status`` with a JSON error, stop reading requests, and close."""
        if self.refused:
            return
        self.refused = True
        self._cancel_timers()
        self.setTimeout(None)
        if self.refusals is not None:
            self.refusals[status] += 1
        transport = self.transport
        if transport is None:
            return
        peer = transport.getPeer()
        self.log.info("HTTP {status} to {peer}: {problem}", status=status,
                      peer=getattr(peer, "host", str(peer)), problem=message)
        body = json.dumps({"error": message}).encode()
        transport.write(
            b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status])
            + b"Content-Type: application/json\r\nCache-Control: no-store\r\nConnection: close\r\n"
            + b"Content-Length: %d\r\n\r\n" % len(body)
            + body
        )
        # Half-close once the answer is written, keep reading (and discarding) for a moment:
        # closing with unread input would make the kernel send a reset that can destroy the
        # answer before the client reads it. Stream transports (TCP, UNIX, TLS) have these
        # methods beyond ITransport; TLS cannot half-close.
        unregister = getattr(transport, "unregisterProducer", None)
        if unregister is not None:
            unregister()
        lose_write = getattr(transport, "loseWriteConnection", None)
        if lose_write is None:
            transport.loseConnection()
            return
        resume = getattr(transport, "resumeProducing", None)
        if resume is not None:
            resume()
        lose_write()
        self._linger = self.callLater(LINGER_S, self._stop_lingering)

    def _discard(self, data: bytes) -> None:
        self._discarded += len(data)
        if self._discarded > LINGER_BYTES:
            self._stop_lingering()

    def _stop_lingering(self) -> None:
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self._linger = None
        if self.transport is not None:
            _abort(self.transport)


def _abort(transport: ITransport) -> None:
    """
    Drop ``transport`` without flushing. Every stream transport has ``abortConnection`` (TCP,
    UNIX and TLS ones; it is outside `ITransport`); one without it is closed instead.
    """
    abort = getattr(transport, "abortConnection", None)
    if abort is not None:
        abort()
    else:
        transport.loseConnection()


class LimitedSite(server.Site):
    """A `Site` whose connections are `LimitedChannel`s under ``limits``; no access log."""

    noisy = False
    # Twisted types HTTPFactory.protocol as the factory of its HTTP/2-negotiating wrapper; a
    # channel class is what Site builds its connections with otherwise (HTTP/1.1 only here).
    protocol = LimitedChannel  # type: ignore[assignment]
    requestFactory = LimitedRequest

    def __init__(self, resource: Any, limits: HttpLimits = HttpLimits(), reactor: Any = None) -> None:
        super().__init__(resource, requestFactory=LimitedRequest, timeout=limits.idle_timeout_s,
                         reactor=reactor)
        self.limits = limits
        #: HTTP refusals by status, for /metrics.
        self.refusals: collections.Counter[int] = collections.Counter()

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        channel.limits = self.limits
        channel.refusals = self.refusals
        return channel

    def log(self, request: Any) -> None:
        """No access log line per request (the WebSocket calls log their own lines)."""
