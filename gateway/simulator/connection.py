"""
The thin Autobahn glue under a simulated call: one client protocol class and its factory.

The protocol forwards everything to its call object (`gateway.simulator.call.SimulatedCall`),
which holds the state; the factory records a TCP connection that never came up. Autobahn 26
never applies the factory's ``tcpNoDelay``, hence the class attribute.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol, connectWS
from twisted.internet.interfaces import IConnector
from twisted.python.failure import Failure

if TYPE_CHECKING:
    from gateway.simulator.call import SimulatedCall

__all__ = ["SimulatorProtocol", "SimulatorFactory", "connect"]


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

    def __init__(self, call: SimulatedCall, url: str, headers: Mapping[str, str], reactor: Any) -> None:
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
