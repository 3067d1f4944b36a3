"""
The emulator's HTTP side: one twisted.web ``Site`` for the three WebSocket paths (the Voice Agent,
``/v1/listen``, Flux's ``/v2/listen``), ``GET /v1/projects`` and ``POST /v1/auth/grant``, the
handshake checks, and the `Emulator` that ties it together.

Upgrades are checked here before Autobahn sees them (faults, then the credentials, then the listen
query string), so that a refusal can carry ``dg-error``, ``dg-request-id`` and a JSON body, which
Autobahn's ``ConnectionDeny`` cannot. Accepted requests go to ``WebSocketResource``. Every
response carries ``dg-request-id``. Credentials are the API key (``Authorization: Token``, or the
``token`` subprotocol) or an access token from the grant endpoint (``Authorization: Bearer``, or
the ``bearer`` subprotocol), as Deepgram takes them. What a refusal says, and the listen query
check, are in `gateway.emulator.handshake`.
"""

from __future__ import annotations

import collections
import json
import uuid
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import attrs
from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.web import resource, server

from gateway.delayproxy import Delay, DelayProxy
from gateway.emulator.agent import AgentProtocol
from gateway.emulator.faults import Fault, FaultSpecError, parse_fault
from gateway.emulator.flux import FluxProtocol
from gateway.emulator.grants import GrantError, Grants
from gateway.emulator.handshake import FAULT_PARAM, REFUSALS, HandshakeRefused, check_listen_query
from gateway.emulator.listen import ListenProtocol
from gateway.emulator.options import EmulatorOptions
from gateway.emulator.session import EmulatorProtocol, Session

# REFUSALS, HandshakeRefused and check_listen_query are re-exported from gateway.emulator.handshake.
__all__ = ["Emulator", "AGENT_PATH", "LISTEN_PATH", "FLUX_PATH", "PROJECTS_PATH", "GRANT_PATH", "REFUSALS",
           "HandshakeRefused", "check_listen_query"]

AGENT_PATH = "/v1/agent/converse"
LISTEN_PATH = "/v1/listen"
FLUX_PATH = "/v2/listen"
PROJECTS_PATH = "/v1/projects"
GRANT_PATH = "/v1/auth/grant"
#: The listen API version of each listen path.
_VERSIONS = {LISTEN_PATH: "v1", FLUX_PATH: "v2"}
FAULT_HEADER = b"x-emulator-fault"


def _header(request: Any, name: bytes) -> str | None:
    value = request.getHeader(name)
    return value.decode("utf-8", "replace") if value is not None else None


@attrs.frozen
class _Pending:
    """An upgrade that passed the checks, waiting for Autobahn's ``onConnect``."""

    request_id: str
    faults: tuple[Fault, ...]


class _Root(resource.Resource):
    """The only resource: routes by path, answers errors as JSON, hands upgrades to Autobahn."""

    isLeaf = True

    def __init__(self, emulator: Emulator, agent_ws: WebSocketResource, listen_ws: WebSocketResource,
                 flux_ws: WebSocketResource) -> None:
        super().__init__()
        self.emulator = emulator
        self.ws = {AGENT_PATH: agent_ws, LISTEN_PATH: listen_ws, FLUX_PATH: flux_ws}

    def render(self, request: Any) -> Any:
        request_id = str(uuid.uuid4())
        request.setHeader(b"dg-request-id", request_id.encode())
        path = request.path.decode("utf-8", "replace").rstrip("/") or "/"
        try:
            if path == PROJECTS_PATH:
                return self._projects(request, request_id)
            if path == GRANT_PATH:
                return self._grant(request)
            ws = self.ws.get(path)
            if ws is None:
                raise HandshakeRefused(404, f"No such path {path!r}.")
            self.emulator.upgrade_attempts += 1
            faults = self.emulator._faults_for(request)
            for fault in faults:
                if fault.kind == "refuse":
                    raise HandshakeRefused(fault.status or 503, fault.reason)
            if not self.emulator._authorised(request):
                raise HandshakeRefused(401)
            if path in _VERSIONS:
                check_listen_query(parse_qsl(urlsplit(request.uri.decode("utf-8", "replace")).query),
                                   _VERSIONS[path])
        except HandshakeRefused as refused:
            return _json_error(request, request_id, refused)
        self.emulator._pending = _Pending(request_id, faults)
        try:
            return ws.render(request)
        finally:
            self.emulator._pending = None

    def _projects(self, request: Any, request_id: str) -> bytes:
        if request.method not in (b"GET", b"HEAD"):
            raise HandshakeRefused(405, "Method not allowed.", "METHOD_NOT_ALLOWED")
        if not self.emulator._authorised(request, subprotocol=False, bearer=False):
            raise HandshakeRefused(401)  # access tokens do not open the management APIs
        request.setHeader(b"content-type", b"application/json")
        body = {"projects": [{"project_id": self.emulator.options.project_id, "name": "Emulator project"}]}
        return json.dumps(body).encode()

    def _grant(self, request: Any) -> bytes:
        """``POST /v1/auth/grant``: an access token for the API key (never for another token)."""
        if request.method != b"POST":
            raise HandshakeRefused(405, "Method not allowed.", "METHOD_NOT_ALLOWED")
        if not self.emulator._authorised(request, subprotocol=False, bearer=False):
            raise HandshakeRefused(401)
        try:
            ttl = self.emulator.grants.ttl_from_body(request.content.read())
        except GrantError as e:
            raise HandshakeRefused(400, f"Bad Request: {e}.")
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(self.emulator.grants.issue(self.emulator.reactor.seconds(), ttl)).encode()


def _json_error(request: Any, request_id: str, refused: HandshakeRefused) -> bytes:
    Emulator.log.info("emulator refused {method} {path}: {status} {err_code}",
                      method=request.method.decode(), path=request.path.decode("utf-8", "replace"),
                      status=refused.status, err_code=refused.err_code)
    request.setResponseCode(refused.status)
    request.setHeader(b"dg-error", refused.message.encode("utf-8"))
    request.setHeader(b"content-type", b"application/json")
    body = {"err_code": refused.err_code, "err_msg": refused.message, "request_id": request_id}
    return json.dumps(body).encode()


class _Factory(WebSocketServerFactory):
    """The factory of one endpoint's sessions; they reach the `Emulator` through it."""

    emulator: Emulator


class _Site(server.Site):
    """A Site without an access log (requests may carry keys in odd places)."""

    noisy = False

    def log(self, request: Any) -> None:
        pass


class Emulator:
    """
    A Deepgram emulator: the Voice Agent (``/v1/agent/converse``), streaming STT (``/v1/listen``)
    and ``GET /v1/projects`` on one port.

    ``options`` are `EmulatorOptions` fields (``speed``, ``fault``, ``net0001_timeout_s``, ...).
    A session's faults come from, in order of precedence: the ``X-Emulator-Fault`` request header
    or the ``emulator_fault`` query parameter; else the next entry of the queue filled by
    `queue_fault` (every upgrade attempt takes one, refused ones included); else the ``fault``
    option. On the agent, a Settings ``tags`` entry ``emulator-fault:<spec>`` adds faults from then on.

    ``latency_ms`` and ``jitter_ms`` put a `gateway.delayproxy.DelayProxy` in front of the
    emulator: `listen` binds the proxy to the endpoint asked for and the emulator itself to an
    ephemeral 127.0.0.1 port, and `url`/`http_url` go through the proxy (a WAN-like path to
    Deepgram, every byte delayed, none reordered).
    """

    log = Logger()

    def __init__(self, reactor: Any, api_key: str, latency_ms: float = 0.0, jitter_ms: float = 0.0,
                 latency_seed: int = 0, **options: Any) -> None:
        self.reactor = reactor
        self._api_key = api_key
        self.options = EmulatorOptions(**options)
        #: One-way network delay of both directions (plus jitter, ``latency_seed`` for the draws).
        self.latency = Delay(latency_ms, jitter_ms)
        self._latency_seed = latency_seed
        self.proxy: DelayProxy | None = None
        self._default_faults = parse_fault(self.options.fault) if self.options.fault else ()
        self._queue: collections.deque[tuple[Fault, ...]] = collections.deque()
        self.sessions: list[Session] = []
        self.upgrade_attempts = 0
        #: The access tokens ``POST /v1/auth/grant`` issues and Bearer credentials are checked by.
        self.grants = Grants()
        self.port: Any = None
        self._listening: Any = None
        self._pending: _Pending | None = None

    def __repr__(self) -> str:
        return f"<Emulator port={self.port and self.port.getHost().port} sessions={len(self.sessions)}>"

    # --- faults ----------------------------------------------------------------------------------

    def queue_fault(self, spec: str, count: int = 1) -> None:
        """The next ``count`` upgrade attempts get ``spec``; raise `FaultSpecError` if it is bad."""
        faults = parse_fault(spec)
        self._queue.extend([faults] * count)

    def _faults_for(self, request: Any) -> tuple[Fault, ...]:
        queued = self._queue.popleft() if self._queue else None
        spec = _header(request, FAULT_HEADER)
        if spec is None:
            values = request.args.get(FAULT_PARAM.encode())
            spec = values[0].decode("utf-8", "replace") if values else None
        if spec is not None:
            try:
                return parse_fault(spec)
            except FaultSpecError as e:
                raise HandshakeRefused(400, str(e), "BAD_EMULATOR_FAULT") from None
        if queued is not None:
            return queued
        return self._default_faults

    # --- handshake -------------------------------------------------------------------------------

    def _authorised(self, request: Any, subprotocol: bool = True, bearer: bool = True) -> bool:
        """
        The API key as ``Token``, or (``bearer``) an unexpired access token from the grant
        endpoint as ``Bearer``; with ``subprotocol`` also the ``["token", key]`` and
        ``["bearer", jwt]`` WebSocket subprotocols. A key sent as ``Bearer`` is refused.
        """
        credentials = []
        auth = (_header(request, b"authorization") or "").strip()
        scheme, _, value = auth.partition(" ")
        credentials.append((scheme.lower(), value.strip()))
        if subprotocol:
            offered = [p.strip() for p in (_header(request, b"sec-websocket-protocol") or "").split(",")]
            if len(offered) >= 2:
                credentials.append((offered[0].lower(), offered[1]))
        for kind, value in credentials:
            if kind == "token" and value == self._api_key:
                return True
            if bearer and kind == "bearer" and self.grants.valid(value, self.reactor.seconds()):
                return True
        return False

    def _accept(self, request: Any, protocol: Any) -> Session:
        pending = self._pending or _Pending(str(uuid.uuid4()), self._default_faults)
        self._pending = None
        session = Session(
            path=request.path,
            query={k: v[0] for k, v in request.params.items()},
            headers=dict(request.headers),
            request_id=pending.request_id,
            faults=pending.faults,
            protocol=protocol,
        )
        self.sessions.append(session)
        return session

    # --- listening -------------------------------------------------------------------------------

    def _factory(self, protocol: type[EmulatorProtocol]) -> WebSocketServerFactory:
        factory = _Factory()
        factory.protocol = protocol
        factory.emulator = self
        factory.setProtocolOptions(webStatus=False, closeHandshakeTimeout=2)
        return factory

    def site(self) -> server.Site:
        """The twisted.web Site serving everything (for embedding in another listener)."""
        root = _Root(self, WebSocketResource(self._factory(AgentProtocol)),
                     WebSocketResource(self._factory(ListenProtocol)),
                     WebSocketResource(self._factory(FluxProtocol)))
        return _Site(root)

    def listen(self, endpoint: str = "tcp:0:interface=127.0.0.1") -> Deferred:
        """
        Listen on a server endpoint string; the Deferred fires with the IListeningPort that
        clients connect to (the delay proxy's, with latency).
        """
        delayed = not self.latency.is_zero

        def listening(port: Any) -> Any:
            self.port = self._listening = port
            if delayed:
                address = port.getHost()
                self.proxy = DelayProxy(self.reactor, ("127.0.0.1", address.port),
                                        self.latency.one_way_ms, self.latency.jitter_ms, self._latency_seed)
                return self.proxy.listen(endpoint).addCallbacks(announce, unlisten)
            return announce(port)

        def announce(port: Any) -> Any:
            self.log.info("emulator listening on {url}", url=self.url("agent").rsplit("/v1", 1)[0])
            return port

        def unlisten(failure: Any) -> Any:
            self._listening = None
            return maybeDeferred(self.port.stopListening).addBoth(lambda _: failure)

        own = "tcp:0:interface=127.0.0.1" if delayed else endpoint
        return serverFromString(self.reactor, own).listen(self.site()).addCallback(listening)

    @property
    def http_url(self) -> str:
        """``http://HOST:PORT`` of the listening port (the delay proxy's, with latency)."""
        address = (self.proxy.port if self.proxy is not None else self.port).getHost()
        host = "127.0.0.1" if address.host in ("0.0.0.0", "::", "") else address.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{address.port}"

    def url(self, kind: str) -> str:
        """The WebSocket URL of ``"agent"``, ``"listen"`` or ``"flux"``."""
        paths = {"agent": AGENT_PATH, "listen": LISTEN_PATH, "flux": FLUX_PATH}
        if kind not in paths:
            raise ValueError(f"expected 'agent', 'listen' or 'flux', got {kind!r}")
        return "ws" + self.http_url[len("http"):] + paths[kind]

    def stop(self) -> Deferred:
        """
        Stop listening and close every open session (1001), then stop the delay proxy if there
        is one; fires once all are gone.
        """
        port, self._listening = self._listening, None
        waits = [maybeDeferred(port.stopListening) if port is not None else succeed(None)]
        for session in self.sessions:
            if not session.closed.called:
                waits.append(_observe(session.closed))
                if session._protocol is not None:
                    session._protocol.shutdown()
        done = DeferredList(waits, consumeErrors=True)
        if self.proxy is not None:
            # After the sessions, so that their closing handshakes still go through it.
            proxy = self.proxy
            done.addCallback(lambda _: proxy.stop())
        return done.addCallback(lambda _: None)


def _observe(d: Deferred) -> Deferred:
    """A Deferred that fires when ``d`` does, without taking its result."""
    mine: Deferred = Deferred()

    def fire(result: Any) -> Any:
        mine.callback(None)
        return result

    d.addBoth(fire)
    return mine
