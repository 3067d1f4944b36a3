"""
A tiny local front for ``gateway demo --handover``: what the HAProxy of ``deploy/`` does for
several gateway processes, on one loopback port, with nothing to install.

Each TCP connection goes to the first backend whose ``GET /readyz`` answers 200 when the
connection arrives (a draining gateway answers 503 at once, so new connections, Twilio's
``<Connect action>`` request and the new stream among them, go to a healthy one); with none
ready, the connection gets an HTTP 503. Bytes are copied both ways by two threads per connection
and never parsed, so plain HTTP and WebSocket upgrades pass alike. It is a demo's tool: blocking
sockets and threads, no reactor, no limits; use a real proxy in production.
"""

from __future__ import annotations

import http.client
import socket
import threading

__all__ = ["LocalFront"]

_UNAVAILABLE = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n"
                b"content-length: 28\r\nconnection: close\r\n\r\nno gateway process is ready\n")


class LocalFront:
    """
    Listens on ``host`` (an ephemeral port, `port`) and forwards to ``backends`` (ports on the
    same host, in order of preference; the list may be filled in after the front starts, since
    the gateways must know the front's address before they start). ``picks`` records the
    backend each connection went to (None: none was ready).
    """

    def __init__(self, host: str = "127.0.0.1", health_timeout_s: float = 2.0) -> None:
        self.host = host
        self.backends: list[int] = []
        self.picks: list[int | None] = []
        self._timeout_s = health_timeout_s
        self._listener = socket.create_server((host, 0))
        self.port: int = self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, name="front-accept", daemon=True).start()

    @property
    def url(self) -> str:
        """``http://HOST:PORT``: the public URL of the gateways behind this front."""
        return f"http://{self.host}:{self.port}"

    def ready(self, port: int) -> bool:
        """Whether the gateway on ``port`` answers ``/readyz`` with 200."""
        connection = http.client.HTTPConnection(self.host, port, timeout=self._timeout_s)
        try:
            connection.request("GET", "/readyz")
            return connection.getresponse().status == 200
        except OSError:
            return False
        finally:
            connection.close()

    def pick(self) -> int | None:
        """The first ready backend, or None."""
        return next((port for port in list(self.backends) if self.ready(port)), None)

    def close(self) -> None:
        """Stop accepting (connections in progress finish on their own)."""
        self._closed = True
        try:
            self._listener.close()
        except OSError:
            pass

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), name="front-conn", daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        port = self.pick()
        self.picks.append(port)
        if port is None:
            try:
                client.sendall(_UNAVAILABLE)
            except OSError:
                pass
            client.close()
            return
        try:
            upstream = socket.create_connection((self.host, port), timeout=self._timeout_s)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pair = _Pair(client, upstream)
        threading.Thread(target=pair.copy, args=(upstream, client), name="front-down", daemon=True).start()
        pair.copy(client, upstream)


class _Pair:
    """One forwarded connection: two directions, both sockets closed once both have ended."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self._sockets = (client, upstream)
        self._ended = 0
        self._lock = threading.Lock()

    def copy(self, source: socket.socket, sink: socket.socket) -> None:
        """Copy ``source`` to ``sink`` until ``source`` ends, then end ``sink``'s writing side."""
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        try:
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        with self._lock:
            self._ended += 1
            last = self._ended == 2
        if last:
            for sock in self._sockets:
                sock.close()
