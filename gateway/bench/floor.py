"""
The floor: the least a Python relay must do for gateway-bench's traffic (issue 21).

A reference, not a gateway: it runs where the gateway runs, on the same traffic, so that every
figure of the gateway comes with the same figure for a relay that does nothing it need not. One
process, a plain epoll loop (`gateway.bench.loop`), hand-rolled RFC 6455 framing:

- it accepts the Twilio-side WebSocket (``/twilio``) and, on ``start``, opens its own WebSocket
  to the Deepgram side (``Authorization: Token``), answers ``Welcome`` with a minimal
  ``Settings`` and holds the caller's audio until ``SettingsApplied``;
- per caller frame: unmask it (the load generator's random key), find the ``payload`` of a
  ``media`` message by its position (no JSON parse: Twilio's media messages all start
  ``{"event":"media"``), base64-decode it, and send it to the Deepgram side as a binary frame
  masked with a fresh random key, as a client must;
- per Deepgram frame: base64-encode the audio into a ``media`` message for the stream and send it
  to the caller as an unmasked text frame;
- with ``--transcode``, mu-law 8 kHz <-> linear16 16 kHz with ``audioop`` (``ulaw2lin`` +
  ``ratecv`` and back: the cheapest conversion there is, not the gateway's filter);
- with ``--tls``, its Deepgram-side WebSocket is ``wss://`` (Python's ``ssl``);
- ``stop`` closes both sides with 1000. Other messages (``connected``, ``mark``...) are parsed
  with ``json`` and ignored, pings are answered.

What it does not do, and the gateway does: validate what it relays (message schemas, UTF-8,
frame limits beyond what framing needs), authenticate, hold or replay audio across a lost
Deepgram session, keep timers, count, log, back pressure. The ratio gateway/floor is the price of
all of that plus Twisted and Autobahn.

Run by the orchestrator as ``python -m gateway.bench.floor --upstream ws://HOST:PORT/PATH``; it
answers ``{"hello": "floor", "port": N}`` on stdout and takes JSON-line commands (``exit``).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import ssl
import sys
from binascii import a2b_base64, b2a_base64
from random import getrandbits
from struct import Struct
from typing import Any
from urllib.parse import urlsplit

from gateway.bench.framing import parse_http_head, server_handshake_response
from gateway.bench.loop import Commands, Conn, connect_nonblocking

__all__ = ["main"]

_H16 = Struct("!BBH")
_MASKED_7 = Struct("!BBI")
_MASKED_16 = Struct("!BBHI")
_MEDIA_START = b'{"event":"media"'
_PAYLOAD_KEY = b'"payload":"'
_CLOSE_1000 = b"\x88\x02\x03\xe8"


def _unmask(data: bytes, key: bytes) -> bytes:
    n = len(data)
    keys = (key * ((n >> 2) + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(keys, "little")).to_bytes(n, "little")


def _frames(conn: Any, data: bytes) -> None:
    """Deliver the whole frames in ``conn.buf + data`` to ``conn.on_frame(opcode, payload)``."""
    buf = conn.buf + data if conn.buf else data
    pos = 0
    end = len(buf)
    while end - pos >= 2 and not conn.closed:
        b0 = buf[pos]
        b1 = buf[pos + 1]
        n = b1 & 0x7F
        start = pos + 2
        if n == 126:
            if end - pos < 4:
                break
            n = (buf[pos + 2] << 8) | buf[pos + 3]
            start = pos + 4
        elif n == 127:
            if end - pos < 10:
                break
            n = int.from_bytes(buf[pos + 2:pos + 10], "big")
            start = pos + 10
        if b1 & 0x80:
            stop = start + 4 + n
            if stop > end:
                break
            payload = _unmask(buf[start + 4:stop], buf[start:start + 4]) if n else b""
        else:
            stop = start + n
            if stop > end:
                break
            payload = buf[start:stop]
        pos = stop
        # The load side never fragments (gateway.bench.framing): FIN frames only.
        conn.on_frame(b0 & 0x0F, payload)
    conn.buf = buf[pos:] if pos < end else b""


def _text_frame(payload: bytes) -> bytes:
    """An unmasked (server to client) FIN text frame."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    return _H16.pack(0x81, 126, n) + payload


def _masked_frame(b0: int, payload: bytes) -> bytes:
    """A masked (client to server) FIN frame with a fresh random key."""
    n = len(payload)
    key = getrandbits(32)
    if n < 126:
        head = _MASKED_7.pack(b0, 0x80 | n, key)
    else:
        head = _MASKED_16.pack(b0, 0xFE, n, key)
    return head + _unmask(payload, key.to_bytes(4, "big")) if n else head


class Upstream(Conn):
    """The floor's WebSocket to the Deepgram side, for one caller."""

    def __init__(self, floor: "Floor", caller: "Caller", greeting: str) -> None:
        self.floor = floor
        self.caller = caller
        self.greeting = greeting
        self.state = "connecting"
        self.head = b""
        self.buf = b""
        self.held: list[bytes] = []
        self.out_state: Any = None
        super().__init__(floor.loop, connect_nonblocking(floor.host, floor.port), connecting=True,
                         tls=floor.tls)

    def _wrap(self) -> None:
        self.sock = self._tls().wrap_socket(self.sock, server_side=False,
                                            do_handshake_on_connect=False,
                                            server_hostname=self.floor.host)
        self.handshaking = True

    def connection_made(self) -> None:
        key = b2a_base64(os.urandom(16), newline=False).decode()
        self.state = "upgrading"
        self.write((f"GET {self.floor.path} HTTP/1.1\r\nHost: {self.floor.host}:{self.floor.port}\r\n"
                    "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                    f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                    "Authorization: Token bench-key\r\n\r\n").encode())

    def data_received(self, data: bytes) -> None:
        if self.state == "upgrading":
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.head.startswith(b"HTTP/1.1 101"):
                self.floor.errors.append(f"upstream upgrade refused: {self.head[:60]!r}")
                self.close("refused")
                return
            data = self.head[end + 4:]
            self.state = "welcome"
            if not data:
                return
        _frames(self, data)

    def on_frame(self, op: int, payload: bytes) -> None:
        if op == 2:
            caller = self.caller
            if caller.closed or caller.state != "open":
                return
            if self.floor.transcode:
                payload, self.out_state = self.floor.ratecv(payload, 2, 1, 16000, 8000, self.out_state)
                payload = self.floor.lin2ulaw(payload, 2)
            caller.write(_text_frame(caller.prefix + b2a_base64(payload, newline=False) + b'"}}'))
        elif op == 1:
            kind = json.loads(payload).get("type")
            if kind == "Welcome" and self.state == "welcome":
                fmt = ({"encoding": "linear16", "sample_rate": 16000} if self.floor.transcode
                       else {"encoding": "mulaw", "sample_rate": 8000})
                settings = {"type": "Settings", "audio": {"input": fmt, "output": fmt},
                            "agent": {"greeting": self.greeting}}
                self.write(_masked_frame(0x81, json.dumps(settings).encode()))
                self.state = "settings"
            elif kind == "SettingsApplied" and self.state == "settings":
                self.state = "live"
                for audio in self.held:
                    self.write(_masked_frame(0x82, audio))
                self.held = []
        elif op == 8:
            if self.state != "closing":
                self.write(_masked_frame(0x88, payload[:2]))
            self.state = "closing"
        elif op == 9:
            self.write(_masked_frame(0x8A, payload))

    def send_audio(self, audio: bytes) -> None:
        if self.state == "live":
            self.write(_masked_frame(0x82, audio))
        elif self.state in ("connecting", "upgrading", "welcome", "settings"):
            self.held.append(audio)

    def end(self) -> None:
        if self.state in ("welcome", "settings", "live"):
            self.write(_masked_frame(0x88, b"\x03\xe8"))
            self.state = "closing"
        elif self.state != "closing":
            self.close("ended before open")

    def connection_lost(self, why: str) -> None:
        if self.state != "closing":
            self.floor.errors.append(f"upstream lost in state {self.state}: {why}")


class Caller(Conn):
    """One Twilio-side WebSocket accepted by the floor."""

    def __init__(self, floor: "Floor", sock: socket.socket) -> None:
        self.floor = floor
        self.state = "http"
        self.head = b""
        self.buf = b""
        self.prefix = b""
        self.upstream: Upstream | None = None
        self.in_state: Any = None
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().__init__(floor.loop, sock)

    def data_received(self, data: bytes) -> None:
        if self.state == "http":
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            _, headers = parse_http_head(self.head[:end])
            if "sec-websocket-key" not in headers:
                self.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                self.close("refused")
                return
            self.write(server_handshake_response(headers["sec-websocket-key"]))
            self.state = "open"
            data = self.head[end + 4:]
            if not data:
                return
        _frames(self, data)

    def on_frame(self, op: int, payload: bytes) -> None:
        if op == 1:
            if payload.startswith(_MEDIA_START):
                i = payload.find(_PAYLOAD_KEY) + 11
                audio = a2b_base64(payload[i:payload.index(b'"', i)])
                upstream = self.upstream
                if upstream is not None:
                    if self.floor.transcode:
                        first = self.in_state is None
                        size = 4 * len(audio)
                        audio, self.in_state = self.floor.ratecv(
                            self.floor.ulaw2lin(audio, 2), 2, 1, 8000, 16000, self.in_state)
                        if first and len(audio) < size:
                            # ratecv's first output is a sample short: keep 20 ms per 20 ms
                            audio = bytes(size - len(audio)) + audio
                    upstream.send_audio(audio)
                return
            message = json.loads(payload)
            event = message.get("event")
            if event == "start" and self.upstream is None:
                start = message["start"]
                sid = start["streamSid"]
                self.prefix = (b'{"event":"media","streamSid":' + json.dumps(sid).encode()
                               + b',"media":{"payload":"')
                greeting = (start.get("customParameters") or {}).get("greeting", "")
                self.upstream = Upstream(self.floor, self, greeting)
            elif event == "stop":
                if self.upstream is not None:
                    self.upstream.end()
                self.write(_CLOSE_1000)
                self.state = "closing"
        elif op == 8:
            if self.state != "closing":
                self.write(b"\x88\x02" + payload[:2])
                if self.upstream is not None:
                    self.upstream.end()
            # The server closes the TCP connection first (RFC 6455 §7.1.1).
            self.state = "closed"
            self.close("closed")
        elif op == 9:
            self.write(bytes((0x8A, len(payload))) + payload)

    def connection_lost(self, why: str) -> None:
        if self.state != "closed":
            self.floor.errors.append(f"caller lost in state {self.state}: {why}")
            if self.upstream is not None:
                self.upstream.end()


class Listener:
    """The floor's listening socket: a fresh port, or ``port`` shared with other floor processes
    through ``SO_REUSEPORT`` (``reuseport``), as several gateways share theirs."""

    def __init__(self, floor: "Floor", port: int = 0, reuseport: bool = False) -> None:
        self.floor = floor
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(1024)
        self.sock.setblocking(False)
        floor.loop.add(self.sock.fileno(), self, 1)

    def on_event(self, events: int) -> None:
        while True:
            try:
                sock, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            Caller(self.floor, sock)


class Floor(Commands):
    """The floor relay's state, and its commands: ``status`` (its errors) and the base's."""

    def __init__(self, upstream: str, transcode: bool, control: bool = True) -> None:
        super().__init__(control)
        parts = urlsplit(upstream)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if parts.scheme == "wss" else 80)
        self.path = parts.path or "/"
        # Python's ssl verifies against SSL_CERT_FILE, as the gateway's TLS does in the bench.
        self.tls = ssl.create_default_context() if parts.scheme == "wss" else None
        self.transcode = transcode
        if transcode:
            from gateway.codecs.g711 import audioop

            self.ulaw2lin, self.lin2ulaw, self.ratecv = audioop.ulaw2lin, audioop.lin2ulaw, audioop.ratecv
        self.errors: list[str] = []

    def cmd_status(self, cmd: dict) -> dict:
        return {"errors": self.errors[-20:], "error_count": len(self.errors)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="gateway.bench.floor")
    parser.add_argument("--upstream", required=True, help="the Deepgram side: ws[s]://HOST:PORT/PATH")
    parser.add_argument("--transcode", action="store_true",
                        help="mu-law 8 kHz to the caller, linear16 16 kHz to the Deepgram side")
    parser.add_argument("--reuseport", type=int, default=0, metavar="PORT",
                        help="listen on PORT with SO_REUSEPORT, beside other floor processes")
    args = parser.parse_args(argv)
    floor = Floor(args.upstream, args.transcode)
    listener = Listener(floor, args.reuseport, reuseport=bool(args.reuseport))
    floor.loop.reply({"hello": "floor", "port": listener.sock.getsockname()[1]})
    floor.loop.run()
    for error in floor.errors[:20]:
        print(f"floor: {error}", file=sys.stderr)
    sys.stderr.flush()


if __name__ == "__main__":
    main()
