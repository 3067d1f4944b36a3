"""
The Deepgram leg: an Autobahn client protocol for the Voice Agent and ``/v1/listen``.

Binary frames are audio, text frames are JSON events; both go to the call. On a failed upgrade
Autobahn hides the response, so `failHandshake` keeps the HTTP status, ``dg-error`` and
``dg-request-id`` for the diagnosis. The API key travels only in the ``Authorization`` header and
is never logged.

The leg reports its end to the call exactly once, as early as it is known: when Deepgram's Close
frame arrives (the leg is then ``CLOSING``: Autobahn has answered it and waits for Deepgram to
drop TCP, a round trip later), or when the connection ends without one. Waiting for ``onClose``
left the call believing, for a round trip, that a closing leg could still be written to.

The leg's ``call`` is the `gateway.call.UpstreamPort` of its attempt, which the call detaches once
it is done with the session; the leg knows it only as a `gateway.interfaces.UpstreamSink`.

``wss://`` runs over `gateway.legs.tls` (the stdlib's ``ssl`` under a thin protocol, not Twisted's
TLS: see that module for why and the figures). A TLS failure before the WebSocket opened (a
certificate refused, a wrong host name) is a failed connection, like a refused TCP connection: the
Deferred of `connect_deepgram` errbacks with the ``ssl.SSLError``, and the call diagnoses
``DG_UNREACHABLE`` ("DNS, TCP or TLS") with OpenSSL's reason in the detail. (With Twisted's TLS it
surfaced as a WebSocket that dropped, ``DG_DROPPED``, the SSL error only in the close reason.)
"""

from __future__ import annotations

import ssl
from typing import Any, Mapping, cast
from urllib.parse import urlsplit

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.defer import Deferred
from twisted.internet.protocol import connectionDone
from twisted.internet.endpoints import HostnameEndpoint
from twisted.python.failure import Failure

from gateway.codecs.deepgram import encode_message, parse_server_message
from gateway.errors import UpstreamProtocolError
from gateway.events import Audio, UpstreamClosed
from gateway.interfaces import UpstreamSink
from gateway.legs.pressure import Pressure, attach
from gateway.legs.tls import TLSClientFactory
from gateway.legs.wire import FastLane

__all__ = ["DeepgramProtocol", "DeepgramFactory", "connect_deepgram"]

#: Close codes in IANA's registry that Autobahn refuses as reserved (1014: Bad Gateway).
_REGISTERED_CLOSE_CODES = frozenset({1014})


# Autobahn's two bases disagree on the types of ``peer`` and ``_transport_details`` (their own
# declarations, not ours): mypy reports that on every subclass.
class DeepgramProtocol(FastLane, WebSocketClientProtocol):  # type: ignore[misc]
    """One call's WebSocket to Deepgram."""

    # Autobahn 26 never applies the factory's tcpNoDelay (perf-notes §4.4): set it here.
    tcpNoDelay = True

    _http_status: int | None = None
    _dg_error: str | None = None
    _dg_request_id: str | None = None
    _opened = False
    _bad_messages = 0
    _reported = False
    _pressure = Pressure()
    #: True while more than the send budget waits to be written to Deepgram (`Pressure`).
    congested = False
    #: The call this leg belongs to (set by `DeepgramFactory.buildProtocol`).
    call: UpstreamSink

    def failHandshake(self, reason: str) -> None:
        status_line = getattr(self, "http_status_line", None) or ""
        parts = status_line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            self._http_status = int(parts[1])
        headers = getattr(self, "http_headers", None) or {}
        self._dg_error = headers.get("dg-error")
        self._dg_request_id = headers.get("dg-request-id")
        super().failHandshake(reason)

    def onConnect(self, response: Any) -> None:
        self._dg_request_id = response.headers.get("dg-request-id")

    def onOpen(self) -> None:
        self.open_fast_lane()
        self._opened = True
        self._pressure = attach(self.transport, self.call.config.send_budget_bytes, self)
        self.factory.opened(self)
        self.call.upstream_opened(self, self._dg_request_id)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if isBinary:
            self.call.upstream_audio(Audio(payload, "outbound"))  # positional: -1k instructions a frame
            return
        try:
            event = parse_server_message(payload)
        except UpstreamProtocolError as e:
            self.call.count("upstream_messages_rejected", reason=e.reason)
            self._bad_messages += 1
            if self._bad_messages <= 5:
                self.call.log.warn("rejected a message from Deepgram: {message}", message=e.message,
                                   log_category="DG_MESSAGE_REJECTED")
            return
        self.call.from_upstream(event)

    def onCloseFrame(self, code: int | None, reasonRaw: bytes | None) -> bool | None:
        received = code
        if code in _REGISTERED_CLOSE_CODES:
            # IANA-registered codes Autobahn does not know (1014 Bad Gateway) would fail the
            # connection as a protocol violation; answer them as the normal close they are.
            code = 1000
        # Autobahn annotates both as never None, yet passes None for a Close frame without a code.
        result = super().onCloseFrame(code, reasonRaw)  # type: ignore[arg-type]
        if result is True:
            return result  # Autobahn failed the connection (bad reason text): onClose reports
        self._report(received, self.remoteCloseReason, True)
        return result

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self._opened and isinstance(reason.value, ssl.SSLError):
            # TLS failed before the WebSocket opened: the connection was never made.
            self.factory.failed(reason)
        super().connectionLost(reason)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.finished()
        self._report(code, reason, wasClean)

    def _report(self, code: int | None, reason: str | None, was_clean: bool) -> None:
        if self._reported:
            return
        self._reported = True
        self.call.upstream_closed(
            UpstreamClosed(
                code=code,
                reason=reason,
                was_clean=was_clean,
                http_status=self._http_status,
                dg_error=self._dg_error,
                dg_request_id=self._dg_request_id,
            )
        )

    # --- what the call asks of the Deepgram leg (only while ``state`` is OPEN) ---

    def send_audio(self, payload: bytes) -> None:
        self.sendMessage(payload, True)

    def send_message(self, message: Mapping[str, Any]) -> None:
        self.sendMessage(encode_message(message), False)

    def close(self, code: int = 1000) -> None:
        if self.state == WebSocketProtocol.STATE_OPEN:
            self.sendClose(code)

    def abort(self) -> None:
        transport: Any = self.transport  # an ITCPTransport (ITransport has no abortConnection)
        if transport is not None:
            transport.abortConnection()


class DeepgramFactory(WebSocketClientFactory):
    """A factory per call (each call has its own URL and query); ``done`` fires when it ends."""

    protocol = DeepgramProtocol
    noisy = False

    def __init__(self, call: UpstreamSink, url: str, headers: Mapping[str, str], **kwargs: Any) -> None:
        super().__init__(url, headers=dict(headers), **kwargs)
        self.call = call
        self.done: Deferred = Deferred(self._cancel)
        self.protocol_instance: DeepgramProtocol | None = None

    def buildProtocol(self, addr: Any) -> DeepgramProtocol:
        proto = cast(DeepgramProtocol, super().buildProtocol(addr))  # ``protocol`` is one
        proto.call = self.call
        self.protocol_instance = proto
        return proto

    def opened(self, proto: DeepgramProtocol) -> None:
        if not self.done.called:
            self.done.callback(proto)

    def finished(self) -> None:
        # Closed before it opened: the leg has reported the close to the call itself.
        if not self.done.called:
            self.done.callback(None)

    def failed(self, reason: Failure) -> None:
        """The connection failed before the WebSocket opened (TLS): ``done`` errbacks with it."""
        if not self.done.called:
            self.done.errback(reason)

    def _cancel(self, d: Deferred) -> None:
        if self.protocol_instance is not None:
            self.protocol_instance.abort()


def connect_deepgram(
    reactor: Any,
    url: str,
    headers: Mapping[str, str],
    call: UpstreamSink,
    protocol_options: Mapping[str, Any] | None = None,
) -> Deferred:
    """
    Open a Deepgram leg for ``call``. The returned Deferred fires with the protocol once the
    WebSocket is open (or with None if it closed first, already reported to the call), and
    errbacks if the TCP or TLS connection fails (for TLS with the ``ssl.SSLError``); cancelling
    it aborts the attempt.
    """
    parts = urlsplit(url)
    secure = parts.scheme == "wss"
    host = parts.hostname or ""
    port = parts.port or (443 if secure else 80)
    factory = DeepgramFactory(call, url, headers, reactor=reactor)
    factory.setProtocolOptions(**dict(protocol_options or {}))
    endpoint: Any = HostnameEndpoint(reactor, host, port)
    connecting = endpoint.connect(TLSClientFactory(factory, host) if secure else factory)

    def tcp_failed(failure: Failure) -> Failure:
        if not factory.done.called:
            factory.done.errback(failure)
        return None  # type: ignore[return-value]

    connecting.addErrback(tcp_failed)
    done = factory.done

    def cancel_tcp(result: Any) -> Any:
        if not connecting.called:
            connecting.cancel()
        return result

    done.addBoth(cancel_tcp)
    return done
