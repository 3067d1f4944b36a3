"""
The Deepgram side of the benchmark: a lean Voice Agent peer (perf-notes §4.1's "dg").

It accepts the gateway's WebSocket (``ws://`` or, with a certificate, ``wss://``), checks
``Authorization: Token``, answers the JSON ``Settings`` with ``SettingsApplied`` and learns the
call's index from ``agent.greeting`` (``bench-<index>``) when the configuration put it there, or
else (relay modes, the gateway's default configuration) from the first stamped caller frame. From
then on it sends one binary frame of agent audio every 20 ms at the call's own phase (160 bytes of
stamped mu-law in relay modes, 640 bytes of linear16 16 kHz when transcoding) and accounts for the
caller audio it receives. On the gateway's close it answers the close and closes the TCP
connection (the server side closes first).

Run by the orchestrator as ``python -m gateway.bench.peer [--cert PEM --key PEM]``.
"""

from __future__ import annotations

import argparse
import json
import pickle
import socket
import ssl
import time
from array import array
from typing import Any

from gateway.bench.framing import (OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, FrameParser,
                                   encode_frame, parse_http_head, server_handshake_response)
from gateway.bench.loop import FRAME_NS, Commands, Conn, phase_ns
from gateway.bench.tracking import SeqTrack, stamp, unstamp

_APPLIED = encode_frame(OP_TEXT, b'{"type":"SettingsApplied"}')
_WELCOME = encode_frame(OP_TEXT, b'{"type":"Welcome","request_id":"bench"}')


class PeerConn(Conn):
    def __init__(self, peer: "Peer", sock: socket.socket) -> None:
        self.peer = peer
        self.state = "http"
        self.head = b""
        self.parser = FrameParser()
        self.index = -1
        self.sending = False
        self.frames = 0
        self.inbound = SeqTrack()
        self.in_bytes = 0
        # Arrival and send times per 20 ms, for the orchestrator to join (filled when joined).
        self.in_recv = array("q")
        self.out_send = array("q")
        self.texts = 0
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().__init__(peer.loop, sock, tls=peer.tls, server_side=True)

    def data_received(self, data: bytes) -> None:
        if self.state == "http":
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            line, headers = parse_http_head(self.head[:end])
            rest = self.head[end + 4:]
            if not headers.get("authorization", "").startswith("Token ") or "sec-websocket-key" not in headers:
                self.peer.errors.append(f"bad upgrade: {line!r}")
                self.write(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")
                self.close("refused")
                return
            self.write(server_handshake_response(headers["sec-websocket-key"]))
            self.write(_WELCOME)
            self.state = "settings"
            if not rest:
                return
            data = rest
        now = time.monotonic_ns()
        for op, payload in self.parser.feed(data):
            if op == OP_BINARY:
                self._audio(payload, now)
            elif op == OP_TEXT:
                self._text(payload)
            elif op == OP_PING:
                self.write(encode_frame(OP_PONG, payload))
            elif op == OP_CLOSE:
                self.sending = False
                self.write(encode_frame(OP_CLOSE, payload[:2]))
                self.state = "closing"
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
                self._shutdown()
                return

    def _shutdown(self) -> None:
        if self.wbuf:
            # Let the close frame out first; the loop closes us when the buffer drains.
            self.peer.loop.call_at(time.monotonic_ns() + 20_000_000, lambda now, due: self._shutdown())
            return
        self.close("closed by peer")

    def _text(self, payload: bytes) -> None:
        self.texts += 1
        if self.state != "settings":
            return
        try:
            message = json.loads(payload)
        except ValueError:
            self.peer.errors.append("undecodable text frame")
            return
        if message.get("type") != "Settings":
            return
        agent = message.get("agent")
        greeting = str(agent.get("greeting", "")) if isinstance(agent, dict) else ""
        self.write(_APPLIED)
        self.state = "open"
        if greeting.startswith("bench-"):
            try:
                self._start(int(greeting[6:]))
                return
            except ValueError:
                pass
        if self.peer.joined:
            # Transcoded audio carries no stamps: the configuration must map the greeting.
            self.peer.errors.append(f"Settings without a bench greeting: {greeting!r:.40}")
        # Relay: the first stamped caller frame says which call this is (`_audio`).

    def _start(self, index: int) -> None:
        """This connection is call ``index``: account for it, and start the agent audio."""
        self.index = index
        self.peer.by_index[index] = self
        self.sending = True
        now = time.monotonic_ns()
        base = (now // FRAME_NS + 1) * FRAME_NS + phase_ns(index, 0.5, self.peer.burst)
        self.peer.loop.call_at(base, self.tick)

    def tick(self, now: int, due: int) -> int | None:
        if not self.sending or self.closed:
            return None
        peer = self.peer
        if peer.in_window:
            peer.lateness.append(now - due)
        t = time.monotonic_ns()
        if peer.joined:
            self.write(peer.out_frame_lin16)
            self.out_send.append(t)
        else:
            self.write(encode_frame(OP_BINARY, stamp(b"BO", self.index, self.frames, t, 160, b"\xff")))
        self.frames += 1
        return due + FRAME_NS

    def _audio(self, payload: bytes, now: int) -> None:
        peer = self.peer
        if peer.joined:
            size = peer.in_unit
            before = self.in_bytes // size
            self.in_bytes += len(payload)
            for _ in range(self.in_bytes // size - before):
                self.in_recv.append(now)
            return
        track = self.inbound
        if self.index < 0 and len(payload) >= 160:
            magic, call, _, _ = unstamp(payload[:18])
            if magic != b"BI":
                self.peer.errors.append(f"an unstamped first caller frame: {payload[:18]!r}")
                return
            self._start(call)
        for k in range(0, len(payload) - 159, 160):
            magic, call, seq, t = unstamp(payload[k:k + 18])
            if magic != b"BI":
                track.bad += 1
                continue
            if call != self.index:
                track.misrouted += 1
                continue
            track.see(seq)
            if peer.in_window:
                peer.latency.append(now - t)

    def connection_lost(self, why: str) -> None:
        if not (self.state == "closing" and getattr(self, "close_code", None) == 1000):
            self.peer.errors.append(f"connection {self.index} lost in state {self.state}: {why}")
        self.peer.open_conns.discard(self)


class Listener:
    def __init__(self, peer: "Peer", port: int) -> None:
        self.peer = peer
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(1024)
        self.sock.setblocking(False)
        peer.loop.add(self.sock.fileno(), self, 1)

    def on_event(self, events: int) -> None:
        while True:
            try:
                sock, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            conn = PeerConn(self.peer, sock)
            self.peer.open_conns.add(conn)
            self.peer.accepted += 1


class Peer(Commands):
    """The peer's commands: ``reset``, ``quiesce``, ``totals``, ``status``, ``dump``, and the
    base's."""

    latency_key = "in_latency"

    def __init__(self, tls: ssl.SSLContext | None) -> None:
        super().__init__()
        self.tls = tls
        self.open_conns: set[PeerConn] = set()
        self.accepted = 0
        self.reset({})

    def reset(self, cmd: dict) -> None:
        self.joined = cmd.get("joined", False)
        self.burst = bool(cmd.get("burst", False))
        # transcoding: Deepgram receives (and sends) linear16 16 kHz, 640 bytes per 20 ms
        self.in_unit = cmd.get("in_unit", 640)
        self.out_frame_lin16 = encode_frame(OP_BINARY, bytes(cmd.get("out_unit", 640)))
        self.by_index: dict[int, PeerConn] = {}
        self.errors: list[str] = []
        self.in_window = False
        self.lateness = []
        self.latency = []

    def cmd_reset(self, cmd: dict) -> dict:
        self.reset(cmd)
        return {"ok": True}

    def cmd_quiesce(self, cmd: dict) -> dict:
        for conn in self.by_index.values():
            conn.sending = False
        return {"ok": True}

    def cmd_totals(self, cmd: dict) -> dict:
        return {"calls": {i: {"out_sent": c.frames, "in": c.inbound.as_dict(),
                              "in_units": c.in_bytes // self.in_unit, "texts": c.texts}
                          for i, c in self.by_index.items()},
                "open": len(self.open_conns), "errors": self.errors[:20],
                "error_count": len(self.errors)}

    def cmd_status(self, cmd: dict) -> dict:
        return {"open": len(self.open_conns), "accepted": self.accepted,
                "errors": self.errors[:20], "error_count": len(self.errors)}

    def cmd_dump(self, cmd: dict) -> dict:
        with open(cmd["path"], "wb") as f:
            pickle.dump({i: (c.in_recv, c.out_send) for i, c in self.by_index.items()}, f)
        return {"ok": True}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="gateway.bench.peer")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    args = parser.parse_args(argv)
    tls = None
    if args.cert:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(args.cert, args.key)
    peer = Peer(tls)
    listener = Listener(peer, args.port)
    peer.loop.reply({"hello": "peer", "port": listener.sock.getsockname()[1]})
    peer.loop.run()


if __name__ == "__main__":
    main()
