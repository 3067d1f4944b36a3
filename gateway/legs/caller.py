"""
The caller leg: Autobahn server protocols for Twilio Media Streams (``/twilio``) and raw-audio
clients (``/client``).

Each frame is parsed by a codec (`gateway.codecs.twilio`, `gateway.codecs.client`) and handed to
the call; each event the call sends back is serialised by the codec and written here. Twilio only
ever gets text frames with the stream's ``streamSid``. A malformed message is rejected with one
precise log line (the first few per call; then only counted) and a counter, and the call goes on.
When the connection ends, the leg tells the call whether the gateway ended it and under which
rule (Autobahn knows: ``failedByMe`` and the code it sent), so a close the gateway enforced is
never reported as the caller's.
"""

from __future__ import annotations

from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny

from gateway.codecs import client as client_codec
from gateway.codecs import twilio as twilio_codec
from gateway.codecs.close_codes import sendable
from gateway.errors import AuthError, CallerProtocolError
from gateway.legs.pressure import Pressure, attach
from gateway.legs.wire import FastLane
from gateway.events import Audio, DeepgramEvent, Handshake, StreamStarted

__all__ = ["TwilioProtocol", "ClientProtocol", "CallerFactory", "CLIENT_FORWARDED_EVENTS"]

#: How many rejections per call are logged one by one; the rest are only counted.
LOGGED_REJECTIONS = 5

#: Deepgram's server messages the SDK knows, forwarded to raw-audio clients as JSON text frames.
CLIENT_FORWARDED_EVENTS = client_codec.FORWARDED_EVENTS

#: The rule behind each close code Autobahn fails a connection with (``_fail_connection``).
_FAILED_RULES = {1002: "protocol_error", 1007: "invalid_utf8", 1009: "message_too_big"}


class CallerFactory(WebSocketServerFactory):
    """
    The factory of one caller endpoint. ``gateway`` is the running `gateway.service.Gateway`
    (it makes calls and says whether new ones are accepted).
    """

    def __init__(self, gateway: Any, protocol: type, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gateway = gateway
        self.protocol = protocol


class _CallerProtocol(FastLane, WebSocketServerProtocol):
    # Autobahn 26 never applies the factory's tcpNoDelay (perf-notes §4.4): set it here.
    tcpNoDelay = True
    leg = ""

    call: Any = None
    _rejections = 0
    _pressure = Pressure()
    #: True while more than the send budget waits to be written to the caller (`Pressure`).
    congested = False
    #: Once closed: the rule the gateway enforced if it ended the connection itself, else None.
    gateway_rule: str | None = None
    #: Set when the gateway itself drops the connection (`onAutoPingTimeout`, `abort`).
    _dropped_for: str | None = None

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
        address = gateway.source_address(self.transport.getPeer(), request.headers)
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

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.gateway_rule = self._gateway_rule()
        if self.call is not None:
            self.call.caller_closed(code, reason, wasClean, self.gateway_rule)

    def _gateway_rule(self) -> str | None:
        """
        The rule the gateway enforced if it ended the connection itself (see
        `gateway.events.CallerClosed.gateway_rule`), None if the caller closed or dropped it or
        the call closed it.
        """
        if self.failedByMe:
            # Autobahn refused something the caller sent and closed with the matching code.
            return _FAILED_RULES.get(self.localCloseCode, "protocol_error")
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
            )
            if self._rejections == LOGGED_REJECTIONS:
                self.call.log.warn("further rejections on this call are only counted")

    # --- what the call asks of every caller leg ---

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
        if self.transport is not None:
            if self._dropped_for is None:
                self._dropped_for = "aborted"
            self.transport.abortConnection()


class TwilioProtocol(_CallerProtocol):
    """Twilio Media Streams, bidirectional (``<Connect><Stream>``)."""

    leg = "twilio"
    stream_sid = ""
    _media_prefix = b""

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if isBinary:
            self._reject("binary_frame", f"binary frame of {len(payload)} bytes (Twilio sends text)")
            return
        try:
            event = twilio_codec.parse_message(payload)
        except CallerProtocolError as e:
            self._reject(e.reason, e.message)
            return
        kind = type(event)
        if kind is Audio:
            if not self.stream_sid:
                self._reject("media_before_start", "media before start")
                return
            self.call.caller_audio(event)
        elif kind is StreamStarted:
            if self.stream_sid:
                self._reject("second_start", "a second start on one stream")
                return
            self.stream_sid = event.stream_sid
            self._media_prefix = twilio_codec.media_prefix(event.stream_sid)
            self.call.from_caller(event)
        elif kind is twilio_codec.Connected:
            return
        else:
            self.call.from_caller(event)

    def send_audio(self, payload: bytes) -> None:
        if self.stream_sid:
            self.sendMessage(
                twilio_codec.media_message(self.stream_sid, payload, self._media_prefix), False
            )

    def send_clear(self) -> None:
        if self.stream_sid:
            self.sendMessage(twilio_codec.clear_message(self.stream_sid), False)

    def send_mark(self, name: str) -> None:
        if self.stream_sid:
            self.sendMessage(twilio_codec.mark_message(self.stream_sid, name), False)

    def send_event(self, event: DeepgramEvent) -> None:
        """Twilio has no use for Deepgram's JSON events."""

    def send_error(self, code: str, message: str) -> None:
        """Twilio has no error message; the close code carries the diagnosis."""


class ClientProtocol(_CallerProtocol):
    """Raw-audio clients: a token first, then PCM s16le 16 kHz binary frames (CONTRACT.md)."""

    leg = "client"
    _hello = False

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if not self._hello:
            self._hello = True
            hello = client_codec.parse_hello(payload, isBinary)
            if hello.reason is not None:
                # The auth stage logs the problem and ends the call (4002); count it by reason.
                self.call.count("caller_messages_rejected", reason=hello.reason)
            self.call.from_caller(hello)
            return
        if isBinary:
            self.call.caller_audio(Audio(payload))
            return
        try:
            control = client_codec.parse_control(payload)
        except CallerProtocolError as e:
            self._reject(e.reason, e.message)
            self.send_error("INVALID_MESSAGE", e.message)
            return
        self.call.from_caller(control)

    def send_audio(self, payload: bytes) -> None:
        self.sendMessage(payload, True)

    def send_clear(self) -> None:
        """Clients drop queued audio themselves on UserStartedSpeaking (forwarded)."""

    def send_mark(self, name: str) -> None:
        """Marks are a Twilio feature."""

    def send_event(self, event: DeepgramEvent) -> None:
        """
        Every Deepgram event, as it came: the types the SDK knows (`CLIENT_FORWARDED_EVENTS`)
        and any newer one (the call counts those), never an error.
        """
        self.sendMessage(client_codec.event_message(event.message), False)

    def send_error(self, code: str, message: str) -> None:
        self.sendMessage(client_codec.error_message(code, message), False)
