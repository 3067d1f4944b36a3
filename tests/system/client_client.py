"""A small raw-audio (/client) client for whole-gateway tests (the full one is gateway.simulator)."""

from __future__ import annotations

import json
from typing import Any

import attrs
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol, connectWS
from twisted.internet.defer import Deferred


@attrs.define
class ClientResult:
    events: list[dict] = attrs.field(factory=list)
    agent_audio: bytes = b""
    close_code: int | None = None
    close_reason: str | None = None


class _Client(WebSocketClientProtocol):
    tcpNoDelay = True

    def onOpen(self) -> None:
        f = self.factory
        if f.first is not None:
            self.sendMessage(f.first, False)
        for i in range(0, len(f.audio), 640):
            self.sendMessage(f.audio[i:i + 640], True)
        if f.close_after_s is not None:
            f.reactor.callLater(f.close_after_s, self.sendClose, 1000)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if isBinary:
            self.factory.result.agent_audio += payload
        else:
            self.factory.result.events.append(json.loads(payload))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        r = self.factory.result
        r.close_code, r.close_reason = code, reason
        if not self.factory.done.called:
            self.factory.done.callback(r)


def client_call(reactor: Any, url: str, audio: bytes, token: str | None, parameters: dict | None = None,
                first: bytes | None = None, close_after_s: float | None = 1.0) -> Deferred:
    factory = WebSocketClientFactory(url)
    factory.protocol = _Client
    factory.reactor = reactor
    if first is None and token is not None:
        first = json.dumps({"token": token, "parameters": parameters or {}}).encode()
    factory.first = first
    factory.audio = audio
    factory.close_after_s = close_after_s
    factory.result = ClientResult()
    factory.done = Deferred()
    connectWS(factory)
    return factory.done
