"""
The browser demo's resources: ``/demo/`` (the files of `DEMO_DIR`) and the demo-only
``POST /demo/token``, mounted by `gateway.api.make_site` only while ``[gateway] demo`` is on.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.web import pages, resource
from twisted.web.iweb import IRequest

from gateway.http import json_response
from gateway.tokens import TOKEN_TTL_S, mint_token

__all__ = ["DEMO_DIR", "DEMO_TYPES", "DemoResource", "DemoToken", "demo_resource"]

#: The browser demo's files, shipped in the package.
DEMO_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo")


class DemoToken(resource.Resource):
    """
    ``POST /demo/token``: a short-lived ``/client`` token for the demo page, with no credentials.
    It exists only while the demo is enabled (production mints tokens with ``GATEWAY_API_KEY``
    at ``POST /v1/tokens``).
    """

    isLeaf = True

    def __init__(self, gateway: Any) -> None:
        super().__init__()
        self.gateway = gateway

    def render_POST(self, request: IRequest) -> bytes:
        if self.gateway.draining:
            return json_response(request, 503, {
                "error": "the gateway is draining (shutting down): reload the page"})
        token = mint_token(self.gateway.config.token_secret, self.gateway.reactor.seconds())
        return json_response(request, 200, {"token": token, "expires_in": TOKEN_TTL_S})


#: The demo's file types; only files with these suffixes are served.
DEMO_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".mjs": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".txt": b"text/plain; charset=utf-8",
    ".svg": b"image/svg+xml",
    ".png": b"image/png",
}

_CSP = (b"default-src 'self'; connect-src 'self' ws: wss:; media-src 'self' blob:; "
        b"img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


class _DemoFile(resource.Resource):
    """One of the demo's files, read when requested (they are small; edits show on reload)."""

    isLeaf = True

    def __init__(self, path: str, content_type: bytes) -> None:
        super().__init__()
        self.path = path
        self.content_type = content_type

    def render_GET(self, request: IRequest) -> bytes:
        with open(self.path, "rb") as f:
            body = f.read()
        request.setHeader(b"content-type", self.content_type)
        request.setHeader(b"content-security-policy", _CSP)
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"cache-control", b"no-cache")
        return body

    render_HEAD = render_GET


class DemoResource(resource.Resource):
    """
    ``/demo/``: the files of `DEMO_DIR` by name (a fixed list made at start-up, so no path can
    leave the directory), ``index.html`` at ``/demo/``, and ``POST /demo/token``.
    """

    def __init__(self, gateway: Any, directory: str = DEMO_DIR) -> None:
        super().__init__()
        for name in sorted(os.listdir(directory)):
            path = os.path.join(directory, name)
            kind = DEMO_TYPES.get(os.path.splitext(name)[1])
            if kind is not None and os.path.isfile(path):
                self.putChild(name.encode(), _DemoFile(path, kind))
        if b"index.html" in self.children:
            self.putChild(b"", self.children[b"index.html"])
        self.putChild(b"token", DemoToken(gateway))

    def getChild(self, path: bytes, request: IRequest) -> resource.IResource:
        return pages.notFound()

    def render_GET(self, request: IRequest) -> bytes:
        # /demo without the slash: the page's relative URLs need /demo/. A relative Location keeps
        # any path prefix a proxy added in front of the gateway.
        _, sep, query = request.uri.partition(b"?")
        request.redirect(b"demo/" + sep + query)
        return b""


def demo_resource(gateway: Any) -> resource.Resource:
    """``/demo/``: the browser client's files and ``POST /demo/token``."""
    return DemoResource(gateway)
