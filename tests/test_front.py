"""The demo's local front (`gateway.front.LocalFront`): each connection to the first ready backend."""

from __future__ import annotations

import http.client
import http.server
import threading

from twisted.trial.unittest import SynchronousTestCase

from gateway.front import LocalFront


def backend(test: SynchronousTestCase, name: str, ready: bool) -> int:
    """A tiny HTTP server: /readyz 200 or 503, anything else answers its ``name``."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = ((200 if ready else 503), b"ready") if self.path == "/readyz" else (200, name.encode())
            self.send_response(status)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    test.addCleanup(server.server_close)
    test.addCleanup(server.shutdown)
    return server.server_address[1]


def get(front: LocalFront, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", front.port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


class LocalFrontTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.front = LocalFront()
        self.addCleanup(self.front.close)

    def test_first_ready_backend(self) -> None:
        """A draining backend (503 on /readyz) is passed over; the bytes go both ways untouched."""
        draining, healthy = backend(self, "A", False), backend(self, "B", True)
        self.front.backends = [draining, healthy]
        self.assertEqual(get(self.front, "/hello"), (200, b"B"))
        self.assertEqual(self.front.picks, [healthy])

    def test_none_ready(self) -> None:
        """No backend ready: an HTTP 503 from the front itself."""
        self.front.backends = [backend(self, "A", False)]
        status, body = get(self.front, "/twilio/voice")
        self.assertEqual((status, body), (503, b"no gateway process is ready\n"))
        self.assertEqual(self.front.picks, [None])
