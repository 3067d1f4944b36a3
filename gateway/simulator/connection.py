"""
The thin Autobahn glue under a simulated call: one client protocol class and its factory.

The protocol forwards everything to its call object (a `CallSink`:
`gateway.simulator.call.SimulatedCall`), which holds the state; the factory records a TCP
connection that never came up. Autobahn 26 never applies the factory's ``tcpNoDelay``, hence the
class attribute.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol
from urllib.parse import urlsplit

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol, connectWS
from twisted.internet.interfaces import IConnector
from twisted.python.failure import Failure

__all__ = ["CallSink", "SimulatorProtocol", "SimulatorFactory", "connect", "local_url"]


class CallSink(Protocol):
    """What the connection reports to its call (`gateway.simulator.call.SimulatedCall`)."""

    def _handshake_failed(self, status: int | None, reason: str) -> None: ...
    def _opened(self, proto: SimulatorProtocol) -> None: ...
    def _received(self, payload: bytes, is_binary: bool) -> None: ...
    def _closed(self, was_clean: bool, code: int | None, reason: str | None) -> None: ...
    def _connect_failed(self, message: str) -> None: ...


def local_url(url: str, public_url: str | None, base_url: str | None) -> str:
    """
    A public URL (from TwiML, or a ``Handover`` message) moved onto ``base_url``: the gateway
    or the proxy in front of it, where the public name does not resolve (tests, demos). The
    path after the public URL's own prefix is kept; ``wss``/``ws`` URLs get ``ws(s)`` on the
    base, ``http(s)`` URLs ``http(s)``. Without both URLs, or for a URL elsewhere, ``url`` as is.
    """
    if not public_url or not base_url:
        return url
    public = public_url.rstrip("/")
    public_ws = public.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
    if not (url.startswith(public_ws) or url.startswith(public)):
        return url
    path = url.split("://", 1)[1]
    path = path[path.find("/"):] if "/" in path else ""
    prefix = urlsplit(public).path.rstrip("/")
    if prefix and path.startswith(prefix):
        path = path[len(prefix):]
    base = base_url.rstrip("/")
    if url.startswith(("ws://", "wss://")):
        base = base.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
    return base + path


class SimulatorProtocol(WebSocketClientProtocol):
    """A WebSocket client that hands every happening to ``factory.call``."""

    tcpNoDelay = True

    def failHandshake(self, reason: str) -> None:
        """Keep the HTTP status of a refused upgrade before Autobahn drops the connection."""
        status = None
        parts = (getattr(self, "http_status_line", None) or "").split()
        if len(parts) >= 2 and parts[1].isdigit():
            status = int(parts[1])
        self.factory.call._handshake_failed(status, reason)
        super().failHandshake(reason)

    def onOpen(self) -> None:
        self.factory.call._opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.call._received(payload, isBinary)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.call._closed(wasClean, code, reason)


class SimulatorFactory(WebSocketClientFactory):
    """A factory for one call's connection; reports a failed TCP connect to the call."""

    protocol = SimulatorProtocol

    def __init__(self, call: CallSink, url: str, headers: Mapping[str, str], reactor: Any) -> None:
        super().__init__(url, headers=dict(headers), reactor=reactor)
        self.call = call
        # Keep-alive pings would be noise in the recording; the simulated calls are short.
        self.setProtocolOptions(autoPingInterval=0, openHandshakeTimeout=10, closeHandshakeTimeout=2)

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        self.call._connect_failed(reason.getErrorMessage())


def connect(factory: SimulatorFactory, timeout_s: float = 10.0) -> IConnector:
    """Open the TCP (or TLS, for ``wss://``) connection of ``factory`` on its reactor."""
    context = None
    if factory.isSecure:
        from twisted.internet import ssl

        context = ssl.optionsForClientTLS(factory.host)
    return connectWS(factory, contextFactory=context, timeout=timeout_s)
