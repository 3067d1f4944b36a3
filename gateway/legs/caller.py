"""
The caller leg: Autobahn server protocols for Twilio Media Streams (``/twilio``) and raw-audio
clients (``/client``).

The leg only translates. Each frame goes to the connection's sans-IO stream
(`gateway.codecs.twilio.TwilioStream`, `gateway.codecs.client.ClientStream`), which holds the
protocol's rules and returns the event for the call; each thing the call sends back is
serialised by the stream and written here (a stream that has nothing to send for it returns
None). A message the stream refuses is counted, logged with one precise line (the first few per
call; then only counted) and answered as the stream says; the call goes on. When the connection
ends, the leg tells the call whether the gateway ended it and under which rule (Autobahn knows:
``failedByMe`` and the code it sent), so a close the gateway enforced is never reported as the
caller's.

The leg knows its call only as a `gateway.interfaces.CallerSink` and the running gateway as a
`gateway.interfaces.CallerGateway`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping, Protocol

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny

from gateway.codecs import client as client_codec
from gateway.codecs.client import ClientStream
from gateway.codecs.close_codes import sendable
from gateway.codecs.twilio import TwilioStream
from gateway.errors import AuthError, CallerProtocolError
from gateway.events import Audio, ClientHello, DeepgramEvent, Handshake
from gateway.interfaces import CallerEvent, CallerGateway, CallerSink
from gateway.legs.pressure import Pressure, attach
from gateway.legs.wire import FastLane

__all__ = ["TwilioProtocol", "ClientProtocol", "CallerFactory", "CLIENT_FORWARDED_EVENTS"]

#: How many rejections per call are logged one by one; the rest are only counted.
LOGGED_REJECTIONS = 5

#: Deepgram's server messages the SDK knows, forwarded to raw-audio clients as JSON text frames.
CLIENT_FORWARDED_EVENTS = client_codec.FORWARDED_EVENTS

#: The rule behind each close code Autobahn fails a connection with (``_fail_connection``).
_FAILED_RULES = {1002: "protocol_error", 1007: "invalid_utf8", 1009: "message_too_big"}


class CallerStream(Protocol):
    """What the caller leg asks of its connection's sans-IO stream (one per caller protocol)."""

    #: Whether audio goes out in binary frames (else text).
    audio_binary: ClassVar[bool]

    def receive(self, frame: bytes, is_binary: bool) -> CallerEvent | Audio | None:
        """The event for the call, None for nothing, or `CallerProtocolError`."""

    def media(self, payload: bytes) -> bytes | None: ...
    def mark(self, name: str) -> bytes | None: ...
    def clear(self) -> bytes | None: ...
    def event(self, message: Mapping[str, Any]) -> bytes | None: ...
    def error(self, code: str, message: str) -> bytes | None: ...
    def reply_to(self, error: CallerProtocolError) -> bytes | None: ...


class CallerFactory(WebSocketServerFactory):
    """
    The factory of one caller endpoint. ``gateway`` is the running `gateway.service.Gateway`
    (it makes calls and says whether new ones are accepted).
    """

    def __init__(self, gateway: CallerGateway, protocol: type[_CallerProtocol], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gateway = gateway
        self.protocol = protocol


# Autobahn's two bases disagree on the types of ``peer`` and ``_transport_details`` (their own
# declarations, not ours): mypy reports that on every subclass.
class _CallerProtocol(FastLane, WebSocketServerProtocol):  # type: ignore[misc]
    # Autobahn 26 never applies the factory's tcpNoDelay (perf-notes §4.4): set it here.
    tcpNoDelay = True
    leg = ""

    factory: CallerFactory
    call: CallerSink
    _rejections = 0
    _pressure = Pressure()
    #: True while more than the send budget waits to be written to the caller (`Pressure`).
    congested = False
    #: Once closed: the rule the gateway enforced if it ended the connection itself, else None.
    gateway_rule: str | None = None
    #: Set when the gateway itself drops the connection (`onAutoPingTimeout`, `abort`).
    _dropped_for: str | None = None

    def __init__(self) -> None:
        super().__init__()
        self._stream = self._new_stream()

    def _new_stream(self) -> CallerStream:
        raise NotImplementedError

    def onConnect(self, request: Any) -> None:
        """
        The upgrade: refused with 503 while draining or when every call slot is held; then the
        chain's auth stage sees the handshake (a signed Twilio stream authenticates here and
        takes a slot); a socket still unauthenticated joins admission's budget, or gets 503 when
        that budget is full of sockets too young to make room.
        """
        gateway = self.factory.gateway
        refusal = gateway.refuse_upgrade()
        if refusal is not None:
            raise ConnectionDeny(503, refusal)
        transport: Any = self.transport
        address = gateway.source_address(transport.getPeer(), request.headers)
        self.call = gateway.new_call(self.leg, address)
        try:
            self.call.caller_handshake(
                Handshake(self.leg, request.path, request.headers, request.peer)
            )
        except AuthError as e:
            self.call.log.warn(
                "refused {leg} upgrade from {peer}: {code} ({message})",
                leg=self.leg,
                peer=request.peer,
                code=e.code,
                message=e.message,
                log_category="CALLER_UPGRADE_REFUSED",
            )
            # Nothing useful to an attacker in the response: just the status.
            raise ConnectionDeny(e.http_status)
        refusal = gateway.caller_upgraded(self.call)
        if refusal is not None:
            raise ConnectionDeny(503, refusal)
        return None

    def onOpen(self) -> None:
        self.open_fast_lane()
        self._pressure = attach(self.transport, self.call.config.send_budget_bytes, self)
        self.call.caller_opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """Frame -> stream -> the call: audio on the hot path, anything else as an event."""
        try:
            event = self._stream.receive(payload, isBinary)
        except CallerProtocolError as e:
            self._reject(e.reason, e.message)
            reply = self._stream.reply_to(e)
            if reply is not None:
                self.sendMessage(reply, False)
            return
        if isinstance(event, Audio):
            self.call.caller_audio(event)
        elif event is not None:
            if type(event) is ClientHello and event.reason is not None:
                # The auth stage logs the problem and ends the call (4002); count it by reason.
                self.call.count("caller_messages_rejected", reason=event.reason)
            self.call.from_caller(event)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.gateway_rule = self._gateway_rule()
        if getattr(self, "call", None) is not None:
            self.call.caller_closed(code, reason, wasClean, self.gateway_rule)

    def _gateway_rule(self) -> str | None:
        """
        The rule the gateway enforced if it ended the connection itself (see
        `gateway.events.CallerClosed.gateway_rule`), None if the caller closed or dropped it or
        the call closed it.
        """
        if self.failedByMe:
            # Autobahn refused something the caller sent and closed with the matching code.
            sent: Any = self.localCloseCode
            return _FAILED_RULES.get(sent, "protocol_error")
        if self._dropped_for is not None:
            return self._dropped_for
        if self.wasCloseHandshakeTimeout:
            return "close_timeout"
        return None

    def onAutoPingTimeout(self) -> None:
        self._dropped_for = "ping_timeout"
        super().onAutoPingTimeout()

    def _reject(self, reason: str, message: str) -> None:
        self.call.count("caller_messages_rejected", reason=reason)
        self._rejections += 1
        if self._rejections <= LOGGED_REJECTIONS:
            self.call.log.warn(
                "rejected a message from the caller: {message} [{reason}]",
                message=message,
                reason=reason,
                log_category="CALLER_MESSAGE_REJECTED",
            )
            if self._rejections == LOGGED_REJECTIONS:
                self.call.log.warn(
                    "further rejections on this call are only counted",
                    log_category="CALLER_REJECTIONS_COUNTED",
                )

    # --- what the call asks of every caller leg (`gateway.interfaces.CallerLeg`) ---

    def send_audio(self, payload: bytes) -> None:
        frame = self._stream.media(payload)
        if frame is not None:
            self.sendMessage(frame, self._stream.audio_binary)

    def send_clear(self) -> None:
        frame = self._stream.clear()
        if frame is not None:
            self.sendMessage(frame, False)

    def send_mark(self, name: str) -> None:
        frame = self._stream.mark(name)
        if frame is not None:
            self.sendMessage(frame, False)

    def send_event(self, event: DeepgramEvent) -> None:
        frame = self._stream.event(event.message)
        if frame is not None:
            self.sendMessage(frame, False)

    def send_error(self, code: str, message: str) -> None:
        frame = self._stream.error(code, message)
        if frame is not None:
            self.sendMessage(frame, False)

    def close(self, code: int, reason: str) -> None:
        """Close with ``code`` (never 1005/1006/1015: unsendable codes become 1011)."""
        if not sendable(code):
            code = 1011
        reason_bytes = reason.encode("utf-8")[:123]
        if code == 1000 or 3000 <= code <= 4999:
            self.sendClose(code, reason_bytes.decode("utf-8", "ignore"))
        else:
            # Autobahn's sendClose refuses 1001 and 1011; the frame itself is legal.
            self.sendCloseFrame(code=code, reasonUtf8=reason_bytes, isReply=False)

    def abort(self) -> None:
        transport: Any = self.transport  # an ITCPTransport (ITransport has no abortConnection)
        if transport is not None:
            if self._dropped_for is None:
                self._dropped_for = "aborted"
            transport.abortConnection()


class TwilioProtocol(_CallerProtocol):
    """Twilio Media Streams, bidirectional (``<Connect><Stream>``)."""

    leg = "twilio"

    def _new_stream(self) -> CallerStream:
        return TwilioStream()


class ClientProtocol(_CallerProtocol):
    """Raw-audio clients: a token first, then PCM s16le 16 kHz binary frames (CONTRACT.md)."""

    leg = "client"

    def _new_stream(self) -> CallerStream:
        return ClientStream()
