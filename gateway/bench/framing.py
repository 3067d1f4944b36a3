"""
Lean RFC 6455 framing and opening handshakes for the load side (perf-notes §4.1).

Only what the benchmark needs: whole (FIN) text and binary frames, close, ping and pong;
continuation frames are reassembled. Client frames are masked with the key given, or the all-zero
key (RFC 6455 allows any key; the zero key makes masking a no-op for the sender, but a receiver
that skips work for it would be measured on traffic no real client sends, so the load generator
uses a fresh random key per frame unless told otherwise).
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct

__all__ = [
    "OP_TEXT", "OP_BINARY", "OP_CLOSE", "OP_PING", "OP_PONG",
    "encode_frame", "FrameParser", "client_handshake", "accept_key", "server_handshake_response",
    "parse_http_head", "mask",
]

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_H16 = struct.Struct("!BBH")
_H64 = struct.Struct("!BBQ")
_ZERO_KEY = b"\0\0\0\0"


def encode_frame(opcode: int, payload: bytes, masked: bool = False, key: bytes | None = None) -> bytes:
    """One FIN frame; ``masked`` (client to server) uses ``key`` (4 bytes), else the all-zero key."""
    n = len(payload)
    b0 = 0x80 | opcode
    m = 0x80 if masked else 0
    if n < 126:
        head = bytes((b0, m | n))
    elif n < 65536:
        head = _H16.pack(b0, m | 126, n)
    else:
        head = _H64.pack(b0, m | 127, n)
    if masked:
        if key is None or key == _ZERO_KEY:
            return b"".join((head, _ZERO_KEY, payload))
        return b"".join((head, key, _unmask(key, payload)))
    return head + payload


def mask(key: bytes, data: bytes) -> bytes:
    """``data`` XOR the 4-byte ``key`` repeated (RFC 6455 §5.3): masking and unmasking alike."""
    return _unmask(key, data)


def _unmask(key: bytes, data: bytes) -> bytes:
    if key == _ZERO_KEY or not data:
        return data
    n = len(data)
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(k, "little")).to_bytes(n, "little")


class FrameParser:
    """Incremental parser: `feed` bytes, get back a list of ``(opcode, payload)`` messages."""

    def __init__(self) -> None:
        self.buf = b""
        self._frag_op = 0
        self._frags: list[bytes] = []

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self.buf + data if self.buf else data
        out = []
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            n = b1 & 0x7F
            hl = 2
            if n == 126:
                if end - pos < 4:
                    break
                n = (buf[pos + 2] << 8) | buf[pos + 3]
                hl = 4
            elif n == 127:
                if end - pos < 10:
                    break
                n = int.from_bytes(buf[pos + 2:pos + 10], "big")
                hl = 10
            masked = b1 & 0x80
            if masked:
                hl += 4
            if end - pos < hl + n:
                break
            payload = buf[pos + hl:pos + hl + n]
            if masked:
                payload = _unmask(buf[pos + hl - 4:pos + hl], payload)
            pos += hl + n
            op = b0 & 0x0F
            fin = b0 & 0x80
            if op == OP_CONT:
                self._frags.append(payload)
                if fin:
                    out.append((self._frag_op, b"".join(self._frags)))
                    self._frags = []
            elif not fin and op < 8:
                self._frag_op = op
                self._frags = [payload]
            else:
                out.append((op, payload))
        self.buf = buf[pos:] if pos < end else b""
        return out


def client_handshake(host: str, port: int, path: str) -> tuple[bytes, bytes]:
    """The upgrade request and the ``Sec-WebSocket-Accept`` value the server must answer."""
    key = base64.b64encode(os.urandom(16))
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key.decode()}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    return request, accept_key(key)


def accept_key(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key.strip() + GUID).digest())


def parse_http_head(head: bytes) -> tuple[str, dict[str, str]]:
    """The first line and the headers (lower-case names) of an HTTP head."""
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return lines[0], headers


def server_handshake_response(key: str) -> bytes:
    return (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept_key(key.encode()).decode()}\r\n\r\n"
    ).encode()
