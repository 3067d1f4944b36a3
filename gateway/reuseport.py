"""
``reuseport:PORT[:interface=HOST][:backlog=N]``: a TCP server endpoint with ``SO_REUSEPORT``, so
that several ``twistd gateway`` processes can listen on one port and the kernel spreads new
connections over them (``twistd -n --pidfile= gateway --port reuseport:8080:interface=0.0.0.0``).

The parser is registered by ``twisted/plugins/gateway_reuseport.py``. The socket is made here
(``SO_REUSEADDR`` + ``SO_REUSEPORT``, bind, listen) and handed to the reactor with
``adoptStreamPort``, which works on every Twisted the project supports (``makeBinding(reusePort=
True)`` exists only from Twisted 26.10).

Trade-offs (deploy/README.md): the kernel hashes connections over the listeners, with no
least-connections balancing and no health checks, and a draining process keeps listening (it
answers new upgrades with 503, as the drain contract says), so some new calls are refused while a
process drains. Behind a proxy, prefer one port per process; ``reuseport:`` suits setups where the
processes face a load balancer that retries, or a single host without a proxy. Linux drops the
connections still queued on a listener when it closes.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IStreamServerEndpoint
from zope.interface import implementer

__all__ = ["ReusePortEndpoint", "parse_reuseport"]


@implementer(IStreamServerEndpoint)
class ReusePortEndpoint:
    """Listens on ``interface:port`` with ``SO_REUSEADDR`` and ``SO_REUSEPORT`` set."""

    def __init__(self, reactor: Any, port: int, interface: str = "", backlog: int = 128) -> None:
        if not hasattr(socket, "SO_REUSEPORT"):
            raise ValueError("reuseport: this platform has no SO_REUSEPORT")
        self.reactor = reactor
        self.port = port
        self.interface = interface
        self.backlog = backlog

    def listen(self, factory: Any) -> defer.Deferred:
        """Bind and listen; fires with the `IListeningPort`."""
        return defer.execute(self._listen, factory)

    def _listen(self, factory: Any) -> Any:
        family = socket.AF_INET6 if ":" in self.interface else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((self.interface, self.port))
            sock.listen(self.backlog)
            sock.setblocking(False)
            # adoptStreamPort duplicates the descriptor; ours is closed below either way.
            return self.reactor.adoptStreamPort(sock.fileno(), family, factory)
        finally:
            sock.close()


def parse_reuseport(reactor: Any, port: str, interface: str = "", backlog: str = "128") -> ReusePortEndpoint:
    """The ``reuseport:`` endpoint-string parser: ``reuseport:8080:interface=127.0.0.1``."""
    try:
        number = int(port)
        depth = int(backlog)
    except ValueError:
        raise ValueError(f"reuseport: expected a port number and an integer backlog, got {port!r}, {backlog!r}")
    if not 0 <= number <= 65535:
        raise ValueError(f"reuseport: port must be 0-65535, got {number}")
    return ReusePortEndpoint(reactor, number, interface=interface, backlog=depth)
