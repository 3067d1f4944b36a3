"""
One emulated Deepgram session: what it recorded, and the protocol base both endpoints share.

The base protocol records every frame, owns the session's timers (all cancelled when the
connection goes), sends through one path so that ``stall`` and ``slow`` faults apply to replies,
audio and closes alike, and arms the session's faults.
"""

from __future__ import annotations

import collections
import json
from typing import Any, Callable

import attrs
from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from gateway.emulator.faults import REASONS, Fault

__all__ = ["Session", "EmulatorProtocol", "AudioTimeoutProtocol"]


@attrs.define(eq=False)
class Session:
    """
    What one accepted WebSocket session received, and how it ended.

    ``received`` lists ``("text", dict_or_str)`` and ``("binary", bytes)`` in arrival order (text
    that is not JSON stays a str). ``close_code``/``close_reason`` are what Autobahn reports: the
    code of the peer's Close frame (``None`` for a Close without a code, 1006 when the connection
    ended without a close handshake). ``sent_close`` is the ``(code, reason)`` the emulator sent,
    if it closed first. ``closed`` fires with the session once the connection is gone.
    """

    path: str
    query: dict[str, str]
    headers: dict[str, str] = attrs.field(repr=False)
    request_id: str
    faults: tuple[Fault, ...] = ()
    received: list[tuple[str, Any]] = attrs.field(factory=list, repr=False)
    settings: dict[str, Any] | None = attrs.field(default=None, repr=False)
    close_code: int | None = None
    close_reason: str | None = None
    was_clean: bool | None = None
    sent_close: tuple[int | None, str | None] | None = None
    #: ``(len(received) when sent, type)`` of each JSON message sent: what had arrived before it.
    sent: list[tuple[int, Any]] = attrs.field(factory=list, repr=False)
    closed: Deferred = attrs.field(factory=Deferred, repr=False)
    _audio: bytearray = attrs.field(factory=bytearray, repr=False)
    _protocol: Any = attrs.field(default=None, repr=False)

    @property
    def audio(self) -> bytes:
        """Every binary frame received, concatenated."""
        return bytes(self._audio)

    @property
    def texts(self) -> list[Any]:
        """The text frames received, in order."""
        return [payload for kind, payload in self.received if kind == "text"]


class EmulatorProtocol(WebSocketServerProtocol):
    """Shared behaviour of the agent, listen and Flux protocols; subclasses implement the ``on_*`` hooks."""

    # Autobahn 26 never applies the factory's tcpNoDelay to accepted connections.
    tcpNoDelay = True
    log = Logger()

    session: Session
    options: Any
    _stalled = False
    _slow_ms = 0
    _gone = False

    # --- Autobahn callbacks -------------------------------------------------------------------

    def onConnect(self, request: Any) -> Any:
        emulator = self.factory.emulator
        self.options = emulator.options
        self.session = emulator._accept(request, self)
        self._timers: set[Any] = set()
        self._slow_queue: collections.deque[tuple[float, Callable[[], None]]] = collections.deque()
        self._slow_call: Any = None
        self._byte_triggers: list[tuple[int, Fault]] = []
        self._settings_triggers: list[Fault] = []
        self._audio_bytes = 0
        protocols = list(request.protocols or [])
        chosen = protocols[0] if protocols[:1] in (["token"], ["bearer"]) else None
        return (chosen, {"dg-request-id": self.session.request_id})

    def onOpen(self) -> None:
        self.log.info("emulator session {request_id} opened on {path}",
                      request_id=self.session.request_id, path=self.session.path)
        self.opened()
        self.arm_faults(self.session.faults)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if isBinary:
            self.session.received.append(("binary", payload))
            self.session._audio += payload
            self._audio_bytes += len(payload)
            while self._byte_triggers and self._audio_bytes >= self._byte_triggers[0][0]:
                self.fire_fault(self._byte_triggers.pop(0)[1])
            if self.state == WebSocketProtocol.STATE_OPEN:
                self.on_binary(payload)
            return
        text = payload.decode("utf-8")
        try:
            message: Any = json.loads(text)
        except ValueError:
            message = text
        self.session.received.append(("text", message))
        if self.state == WebSocketProtocol.STATE_OPEN:
            self.on_text(message)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self._gone = True
        for call in list(self._timers):
            if call.active():
                call.cancel()
        self._timers.clear()
        if self._slow_call is not None and self._slow_call.active():
            self._slow_call.cancel()
        session = getattr(self, "session", None)
        if session is not None and not session.closed.called:
            session.close_code, session.close_reason, session.was_clean = code, reason, wasClean
            self.log.info("emulator session {request_id} closed: code {code}, clean {clean}",
                          request_id=session.request_id, code=code, clean=wasClean)
            session.closed.callback(session)

    # --- hooks ---------------------------------------------------------------------------------

    def opened(self) -> None:
        """The WebSocket is open."""

    def on_text(self, message: Any) -> None:
        """A text frame: a parsed JSON value, or the raw str when it is not JSON."""

    def on_binary(self, payload: bytes) -> None:
        """A binary frame."""

    # --- timers --------------------------------------------------------------------------------

    def call_later(self, delay_s: float, fn: Callable[..., Any], *args: Any) -> Any:
        """``reactor.callLater`` whose call is cancelled when the connection goes."""
        if self._gone:
            return None

        def run() -> None:
            self._timers.discard(call)
            fn(*args)

        call = self.factory.emulator.reactor.callLater(max(0.0, delay_s), run)
        self._timers.add(call)
        return call

    @staticmethod
    def cancel_call(call: Any) -> None:
        """Cancel a call from `call_later` if it is still pending."""
        if call is not None and call.active():
            call.cancel()

    # --- the one way out -------------------------------------------------------------------------

    @property
    def can_send(self) -> bool:
        """The WebSocket is open and nothing has started closing it."""
        return self.state == WebSocketProtocol.STATE_OPEN and not self._gone

    def _out(self, action: Callable[[], None]) -> None:
        if self._stalled or self._gone:
            return
        if self._slow_ms:
            now = self.factory.emulator.reactor.seconds()
            self._slow_queue.append((now + self._slow_ms / 1000, action))
            if self._slow_call is None:
                self._pump()
            return
        action()

    def _pump(self) -> None:
        self._slow_call = None
        now = self.factory.emulator.reactor.seconds()
        while self._slow_queue and self._slow_queue[0][0] <= now:
            _, action = self._slow_queue.popleft()
            if not self._stalled and not self._gone:
                action()
        if self._slow_queue and not self._gone:
            self._slow_call = self.call_later(self._slow_queue[0][0] - now, self._pump)

    def send_json(self, message: dict[str, Any]) -> None:
        """Send one JSON text frame (subject to stall/slow faults)."""
        data = json.dumps(message).encode("utf-8")
        kind = message.get("type")

        def send() -> None:
            if self.can_send:
                # What the peer could know when this left: how much had arrived by then.
                self.session.sent.append((len(self.session.received), kind))
                self.sendMessage(data, False)

        self._out(send)

    def send_audio(self, data: bytes) -> None:
        """Send one binary frame (subject to stall/slow faults)."""
        def send() -> None:
            if self.can_send:
                self.sendMessage(data, True)

        self._out(send)

    def close_with(self, code: int | None, reason: str | None = None) -> None:
        """Close with any code (or none at all), bypassing Autobahn's sendClose code checks."""
        self._out(lambda: self._close_now(code, reason))

    def _close_now(self, code: int | None, reason: str | None) -> None:
        if not self.can_send:
            return
        self.session.sent_close = (code, reason)
        self.log.info("emulator session {request_id} closing with {code}",
                      request_id=self.session.request_id, code=code)
        reason_utf8 = reason.encode("utf-8")[:123] if reason and code is not None else None
        self.sendCloseFrame(code=code, reasonUtf8=reason_utf8, isReply=False)

    def fatal_error(self, code: str, description: str) -> None:
        """A Voice Agent fatal ``Error``, then a Close frame with no status code (as Deepgram does)."""
        self.log.info("emulator session {request_id}: fatal {code}",
                      request_id=self.session.request_id, code=code)
        self.send_json({"type": "Error", "description": description, "code": code})
        self.close_with(None)
        self._fatal = True

    # --- faults ----------------------------------------------------------------------------------

    def arm_faults(self, faults: tuple[Fault, ...]) -> None:
        """Arm ``faults`` now: fire, schedule, or wait for their trigger."""
        for fault in faults:
            trigger = fault.trigger
            if fault.kind == "refuse":
                continue
            if trigger.kind == "on_open":
                self.fire_fault(fault)
            elif trigger.kind == "after_ms":
                self.call_later(trigger.value / 1000, self.fire_fault, fault)
            elif trigger.kind == "after_audio_bytes":
                self._byte_triggers.append((self._audio_bytes + max(trigger.value, 1), fault))
                self._byte_triggers.sort(key=lambda pair: pair[0])
            else:
                self._settings_triggers.append(fault)
        if self.session.path.endswith("/listen"):
            self.settings_applied()

    def settings_applied(self) -> None:
        """Fire the faults waiting for ``after_settings``."""
        waiting, self._settings_triggers = self._settings_triggers, []
        for fault in waiting:
            self.fire_fault(fault)

    def fire_fault(self, fault: Fault) -> None:
        """Make ``fault`` happen now."""
        if self._gone:
            return
        self.log.info("emulator session {request_id}: fault {fault}",
                      request_id=self.session.request_id, fault=fault.text)
        if fault.kind == "close":
            self.close_with(fault.code, fault.reason)
        elif fault.kind == "drop":
            self._drop()
        elif fault.kind == "stall":
            self._stalled = True
        elif fault.kind == "slow":
            self._slow_ms = fault.delay_ms or 0
        elif fault.kind == "unknown-message":
            self.send_json({"type": fault.message_type})
        elif fault.kind == "error":
            self.fatal_error(fault.error_code or "INTERNAL_SERVER_ERROR", fault.reason or "")
        elif fault.kind == "warning":
            self.send_json(self.warning_message(fault.error_code or "WARNING", fault.reason or ""))
        elif fault.kind == "message":
            message = self.canned_message(fault.message_type or "")
            if message is None:
                self.log.info("emulator session {request_id}: {path} does not send {message_type}; skipped",
                              request_id=self.session.request_id, path=self.session.path,
                              message_type=fault.message_type)
            else:
                self.send_json(message)

    def warning_message(self, code: str, description: str) -> dict[str, Any]:
        """A non-fatal ``Warning`` as this endpoint sends it."""
        return {"type": "Warning", "description": description, "code": code}

    def canned_message(self, kind: str) -> dict[str, Any] | None:
        """A ``message:TYPE`` fault's message, as this session would send it now; None: not here."""
        return None

    def shutdown(self) -> None:
        """The emulator is stopping: close with 1001, or drop a connection that is not open."""
        if self._gone:
            return
        if self.state == WebSocketProtocol.STATE_OPEN:
            self._stalled = False
            self._slow_ms = 0
            self._close_now(1001, "emulator stopping")
        else:
            self._drop()

    def _drop(self) -> None:
        """Reset the connection (no close handshake), as a network failure would."""
        # Stream transports (TCP, TLS) abort, though ITransport does not declare it.
        transport = self.transport
        abort = getattr(transport, "abortConnection", None)
        if abort is not None:
            abort()
        elif transport is not None:
            transport.loseConnection()


class AudioTimeoutProtocol(EmulatorProtocol):
    """
    The base of Deepgram's listen endpoints (``/v1/listen``, ``/v2/listen``): no audio for
    ``net0001_timeout_s`` closes the session with 1011 NET-0001. ``_finished`` is set once the
    session has ended its own way (nothing more is answered).
    """

    _finished = False
    _timer: Any = None

    def _restart_timer(self) -> None:
        self.cancel_call(self._timer)
        self._timer = self.call_later(self.options.net0001_timeout_s, self._net0001)

    def _stop_answering(self) -> None:
        """The session ends: no more timeout, nothing more answered."""
        self._finished = True
        self.cancel_call(self._timer)

    def _net0001(self) -> None:
        self._finished = True
        self.close_with(1011, REASONS["NET-0001"])
