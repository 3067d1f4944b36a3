"""
A small Twilio-shaped client for whole-gateway tests (the full simulator is `gateway.simulator`).

It sends ``connected``, ``start``, the clip as 20 ms ``media`` frames (as fast as possible),
waits, sends ``stop``, and records what the gateway sends back.
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import attrs
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol, connectWS
from twisted.internet.defer import Deferred

from gateway.codecs.signatures import compute_signature


@attrs.define
class Result:
    """What the client saw."""

    events: list[dict] = attrs.field(factory=list)
    binary_frames: int = 0
    handshake_status: int | None = None
    close_code: int | None = None
    close_reason: str | None = None
    agent_audio: bytes = b""
    violations: list[str] = attrs.field(factory=list)

    def count(self, event: str) -> int:
        return sum(1 for e in self.events if e.get("event") == event)


class _Twilio(WebSocketClientProtocol):
    tcpNoDelay = True

    def failHandshake(self, reason: str) -> None:
        parts = (getattr(self, "http_status_line", "") or "").split()
        if len(parts) >= 2 and parts[1].isdigit():
            self.factory.result.handshake_status = int(parts[1])
        super().failHandshake(reason)

    def onOpen(self) -> None:
        f = self.factory
        send = lambda obj: self.sendMessage(json.dumps(obj).encode(), False)  # noqa: E731
        send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        send({"event": "start", "sequenceNumber": "1", "streamSid": f.stream_sid,
              "start": {"streamSid": f.stream_sid, "accountSid": "AC" + "0" * 32, "callSid": "CA" + "0" * 32,
                        "tracks": ["inbound"], "customParameters": f.parameters,
                        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}})
        for n, i in enumerate(range(0, len(f.audio), 160), start=1):
            send({"event": "media", "sequenceNumber": str(n + 1), "streamSid": f.stream_sid,
                  "media": {"track": "inbound", "chunk": str(n), "timestamp": str(20 * (n - 1)),
                            "payload": base64.b64encode(f.audio[i:i + 160]).decode()}})
        if f.stop_after_s is not None:
            f.reactor.callLater(f.stop_after_s, self._stop)

    def _stop(self) -> None:
        if self.state == self.STATE_OPEN:
            self.sendMessage(json.dumps({"event": "stop", "streamSid": self.factory.stream_sid,
                                         "stop": {}}).encode(), False)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        result = self.factory.result
        if isBinary:
            result.binary_frames += 1
            return
        message = json.loads(payload)
        result.events.append(message)
        if message.get("streamSid") != self.factory.stream_sid:
            result.violations.append(f"wrong streamSid in {message.get('event')}")
        if message.get("event") == "media":
            result.agent_audio += base64.b64decode(message["media"]["payload"])
        elif message.get("event") == "mark":
            self.sendMessage(json.dumps({"event": "mark", "streamSid": self.factory.stream_sid,
                                         "mark": message["mark"]}).encode(), False)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        result = self.factory.result
        result.close_code, result.close_reason = code, reason
        if not self.factory.done.called:
            self.factory.done.callback(result)


def twilio_call(reactor: Any, url: str, audio: bytes, stop_after_s: float | None = 1.0,
                parameters: dict | None = None, auth_token: str | None = None,
                signed_url: str | None = None) -> Deferred:
    """Place one call; fires with a `Result` when the WebSocket is closed."""
    headers = {}
    if auth_token is not None:
        headers["X-Twilio-Signature"] = compute_signature(auth_token, signed_url or url)
    factory = WebSocketClientFactory(url, headers=headers)
    factory.protocol = _Twilio
    factory.reactor = reactor
    factory.stream_sid = "MZ" + uuid.uuid4().hex
    factory.audio = audio
    factory.parameters = parameters or {}
    factory.stop_after_s = stop_after_s
    factory.result = Result()
    factory.done = Deferred()
    connectWS(factory)
    return factory.done
