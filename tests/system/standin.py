"""
A minimal Deepgram stand-in for whole-gateway tests (a test fixture, started by
`tests.system.harness.start_standin`): both endpoints on one port, recording what it receives.

It speaks just enough of the Voice Agent and ``/v1/listen`` protocols for the gateway's spine to
be tested end to end over real sockets: the key check (401 with ``dg-error`` and
``dg-request-id``), ``Welcome``, ``SettingsApplied``, some agent audio in the declared output
format, ``UserStartedSpeaking`` once caller audio arrives, ``Results`` per second of listen audio,
and ``Metadata`` plus a 1000 close after ``CloseStream``. A Settings whose ``tags`` contain
``reject`` gets an ``INVALID_SETTINGS`` Error and a close with no status code, as Deepgram does.
`gateway.emulator` is the package's one Deepgram fake, complete and faithful; this fixture stays
small on purpose, because the spine, webhook, drain, admission and limits tests assert its exact
answers (one ``UserStartedSpeaking``, 100 ms of silence as agent audio, the ``reject`` tag) that
the emulator's scripted, speech-driven sessions do not give.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import attrs
from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.web import resource, server

__all__ = ["StandIn", "StandInSession"]


@attrs.define(eq=False)
class StandInSession:
    """What one Deepgram session received, in order."""

    path: str
    query: dict[str, str]
    headers: dict[str, str] = attrs.field(repr=False)
    request_id: str
    received: list[tuple[str, Any]] = attrs.field(factory=list)
    close_code: int | None = None
    closed: Deferred = attrs.field(factory=Deferred)

    @property
    def audio(self) -> bytes:
        return b"".join(p for kind, p in self.received if kind == "binary")


class _Factory(WebSocketServerFactory):
    standin: StandIn


class _Protocol(WebSocketServerProtocol):
    tcpNoDelay = True
    factory: _Factory
    session: StandInSession
    _spoke = False
    _listen_bytes = 0
    _output = ("mulaw", 8000)

    def onConnect(self, request: Any) -> Any:
        session = self.factory.standin._accept(request)
        self.session = session
        return (None, {"dg-request-id": session.request_id})

    def onOpen(self) -> None:
        if self.session.path.endswith("/agent/converse"):
            self._send_json({"type": "Welcome", "request_id": self.session.request_id})

    def _send_json(self, message: dict[str, Any]) -> None:
        self.sendMessage(json.dumps(message).encode(), False)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        session = self.session
        if isBinary:
            session.received.append(("binary", payload))
            self._audio(payload)
            return
        message = json.loads(payload)
        session.received.append(("text", message))
        kind = message.get("type")
        if kind == "Settings":
            if "reject" in message.get("tags", []):
                self._send_json({"type": "Error", "code": "INVALID_SETTINGS",
                            "description": "Error parsing client message. Check the agent.think field."})
                self.sendClose()
                return
            output = message["audio"]["output"]
            self._output = (output["encoding"], output["sample_rate"])
            self._send_json({"type": "SettingsApplied"})
            self._agent_audio()
        elif kind == "CloseStream":
            self._send_json({"type": "Metadata", "request_id": session.request_id, "duration": 0.0})
            self.sendClose(1000)

    def _agent_audio(self) -> None:
        encoding, rate = self._output
        silence = b"\xff" if encoding == "mulaw" else b"\x00\x00"
        self._send_json({"type": "ConversationText", "role": "assistant", "content": "Hello!"})
        self._send_json({"type": "AgentStartedSpeaking", "total_latency": 0.1})
        self.sendMessage(silence * (rate // 10), True)
        self._send_json({"type": "AgentAudioDone"})

    def _audio(self, payload: bytes) -> None:
        if self.session.path.endswith("/agent/converse"):
            if not self._spoke:
                self._spoke = True
                self._send_json({"type": "UserStartedSpeaking"})
            return
        before = self._listen_bytes // 8000
        self._listen_bytes += len(payload)
        if self._listen_bytes // 8000 > before:
            self._send_json({"type": "Results", "is_final": True, "speech_final": False,
                        "start": float(before), "duration": 1.0,
                        "channel": {"alternatives": [{"transcript": "", "confidence": 1.0, "words": []}]},
                        "metadata": {"request_id": self.session.request_id}})

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        session = getattr(self, "session", None)
        if session is not None and not session.closed.called:
            session.close_code = code
            session.closed.callback(session)


class _Endpoint(resource.Resource):
    isLeaf = True

    def __init__(self, standin: StandIn, ws: WebSocketResource) -> None:
        super().__init__()
        self.standin = standin
        self.ws = ws

    def render(self, request: Any) -> Any:
        self.standin.upgrade_attempts += 1
        auth = (request.getHeader(b"authorization") or b"").decode()
        request_id = str(uuid.uuid4())
        request.setHeader(b"dg-request-id", request_id.encode())
        if auth != f"Token {self.standin.api_key}":
            message = "Invalid credentials."
            request.setResponseCode(401)
            request.setHeader(b"dg-error", message.encode())
            request.setHeader(b"content-type", b"application/json")
            return json.dumps({"err_code": "INVALID_AUTH", "err_msg": message,
                               "request_id": request_id}).encode()
        self.standin._next_request_id = request_id
        return self.ws.render(request)


class StandIn:
    """The stand-in server. ``sessions`` lists accepted sessions in arrival order."""

    def __init__(self, reactor: Any, api_key: str) -> None:
        self.reactor = reactor
        self.api_key = api_key
        self.sessions: list[StandInSession] = []
        self.upgrade_attempts = 0
        self._next_request_id = ""
        self.port: Any = None

    def _accept(self, request: Any) -> StandInSession:
        session = StandInSession(
            path=request.path,
            query={k: v[0] for k, v in request.params.items()},
            headers=dict(request.headers),
            request_id=self._next_request_id,
        )
        self.sessions.append(session)
        return session

    def listen(self, endpoint: str = "tcp:0:interface=127.0.0.1") -> Deferred:
        factory = _Factory()
        factory.protocol = _Protocol
        factory.standin = self
        factory.setProtocolOptions(webStatus=False)
        ws = WebSocketResource(factory)
        root = resource.Resource()
        v1 = resource.Resource()
        root.putChild(b"v1", v1)
        agent = resource.Resource()
        v1.putChild(b"agent", agent)
        agent.putChild(b"converse", _Endpoint(self, ws))
        v1.putChild(b"listen", _Endpoint(self, ws))
        site = server.Site(root)
        site.noisy = False

        def listening(port: Any) -> Any:
            self.port = port
            return port

        return serverFromString(self.reactor, endpoint).listen(site).addCallback(listening)

    def url(self, mode: str) -> str:
        port = self.port.getHost().port
        path = "/v1/agent/converse" if mode == "agent" else "/v1/listen"
        return f"ws://127.0.0.1:{port}{path}"

    def stop(self) -> Deferred:
        return self.port.stopListening()
