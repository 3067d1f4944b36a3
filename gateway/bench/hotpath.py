"""
The per-frame path, counted (issue 21): ``python -m gateway.bench.hotpath``.

A deterministic micro-benchmark of what a 20 ms frame costs the gateway in Python, for before /
after comparisons that the machine's noise cannot blur. One process holds the whole gateway as
``twistd`` runs it (the `gateway.service.Gateway` and its site on the epoll reactor, the bench's
default configuration, `gateway.bench.orchestrate.gateway_config`) and, on loopback TCP, plain
blocking sockets playing Twilio and Deepgram. Each step sends one Twilio ``media`` frame per call
(masked with a seeded random key, as real clients mask) and one agent audio frame per call back,
and turns the reactor once after each side: ``calls`` frames arrive per reactor turn, so
``--calls 1`` is evenly spread traffic (a wake-up per frame) and ``--calls 10`` a burst. The
reactor's clock is fake and advances 20 ms per step, so the gateway's timers (keepalive, caller
pings, idle checks) fire as they would in 20 ms steps, at the same frames every run. The reactor
gets the lean event dispatch the service installs at start-up (`gateway.legs.dispatch`);
``--stock-dispatch`` keeps Twisted's own, to measure what it costs.

``--callgrind`` runs it twice under ``valgrind --tool=callgrind`` (``frames`` and twice as many
per call), counting only the measured steps (``--toggle-collect``; set-up, imports and teardown
are not counted, and would not repeat: name resolution runs on a thread), and prints the
difference in instructions per frame pair: the per-frame work in user space (the harness's own
sends and receives included, the same before and after; the kernel's part is not counted).
Instruction counts repeat closely whatever else the machine is doing.

``--target floor`` puts the floor relay (`gateway.bench.floor`, in-process, its loop turned by
hand) where the gateway was, on the same frames.

``--mode tls`` is the relay with the Deepgram leg over ``wss://``: the harness's Deepgram sockets
are the server side of TLS (the stdlib's ``ssl``, a throw-away CA from
`gateway.bench.certificates` that the gateway trusts through ``SSL_CERT_FILE``), so the count
includes the harness's own TLS work, the same whichever TLS the gateway runs: compare gateways
(Twisted's TLS before, `gateway.legs.tls` after) at the same mode, and ``tls`` against ``relay``
for what TLS adds.

    python -m gateway.bench.hotpath --frames 2000                  # µs per frame pair (noisy)
    python -m gateway.bench.hotpath --callgrind --frames 1000      # instructions per frame pair
    python -m gateway.bench.hotpath --callgrind --frames 1000 --target floor
    python -m gateway.bench.hotpath --callgrind --frames 1000 --mode tls
"""

from __future__ import annotations

import argparse
import base64
import functools
import gc
import hashlib
import importlib.util
import json
import os
import random
import re
import socket
import ssl
import sys
import tempfile
import time
from typing import Any

__all__ = ["main"]

_FRAME_S = 0.020


class _FakeTime:
    """The reactor's clock: advanced 20 ms per step by the harness."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _frames(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """Whole frames in ``data`` (unmasked, as servers send): [(opcode, payload)], rest."""
    out = []
    pos, end = 0, len(data)
    while end - pos >= 2:
        n = data[pos + 1] & 0x7F
        start = pos + 2
        if n == 126:
            if end - pos < 4:
                break
            n = int.from_bytes(data[pos + 2:pos + 4], "big")
            start = pos + 4
        masked = data[pos + 1] & 0x80
        stop = start + (4 if masked else 0) + n
        if stop > end:
            break
        payload = data[stop - n:stop]
        if masked:
            from gateway.bench.framing import mask
            payload = mask(data[start:start + 4], payload)
        out.append((data[pos] & 0x0F, payload))
        pos = stop
    return out, data[pos:]


class Harness:
    """The gateway on a real epoll reactor, with ``calls`` Twilio and Deepgram sockets."""

    def __init__(self, calls: int, transcode: bool, mask: str, legacy: bool,
                 target: str = "gateway", stock_dispatch: bool = False, tls: bool = False) -> None:
        random.seed(21)               # the gateway's own masking keys towards Deepgram
        self.rng = random.Random(8)   # the Twilio side's keys
        self.mask = mask
        self.transcode = transcode
        self.tls: ssl.SSLContext | None = None
        self.scheme = "ws"
        if tls:
            from gateway.bench.certificates import make_certificates

            ca, cert, key = make_certificates(tempfile.mkdtemp(prefix="hotpath-"))
            # The gateway (and the floor) verify the harness's certificate against it.
            os.environ["SSL_CERT_FILE"] = ca
            self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.tls.load_cert_chain(cert, key)
            self.scheme = "wss"
        self.dg = socket.socket()
        self.dg.bind(("127.0.0.1", 0))
        self.dg.listen(64)
        self.dg.setblocking(False)
        port = self.dg.getsockname()[1]
        if target == "floor":
            self._start_floor(port)
        else:
            self._start_gateway(port, legacy, stock_dispatch)
        self.twilio: list[socket.socket] = []
        self.deepgram: list[socket.socket] = []
        for index in range(calls):
            self._open_call(index)
        self.pings = 0

    def _start_gateway(self, port: int, legacy: bool, stock_dispatch: bool) -> None:
        from twisted.internet import epollreactor

        epollreactor.install()
        from twisted.internet import reactor as installed

        reactor: Any = installed  # the epoll reactor just installed, driven by hand below
        self.reactor = reactor
        # Running (its thread pool resolves the Deepgram host), turned by hand: `turn`.
        reactor.startRunning(installSignalHandlers=False)
        self.clock = _FakeTime()
        reactor.seconds = self.clock  # callLater and txaio's timers (the global reactor) use it
        if not stock_dispatch:
            from gateway.legs import dispatch

            dispatch.install(reactor)  # as GatewayService.startService does

        if importlib.util.find_spec("gateway.bench.configs") is not None:
            from gateway.bench.configs import gateway_config
        else:  # before orchestrate.py was split
            from gateway.bench.orchestrate import gateway_config  # type: ignore[no-redef]
        from gateway.cli import load_config
        from gateway.service import Gateway

        with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
            f.write(gateway_config(self.transcode, legacy))
        try:
            configured = load_config(f.name, {
                "DEEPGRAM_API_KEY": "bench-key",
                "DEEPGRAM_AGENT_URL": f"{self.scheme}://127.0.0.1:{port}/v1/agent/converse"})
        finally:
            os.unlink(f.name)
        self.gateway = Gateway(configured, reactor)
        self.listening = reactor.listenTCP(0, self.gateway.make_site(),
                                           interface="127.0.0.1").getHost().port
        self.turn = lambda: reactor.iterate(0)
        self._wait = lambda: reactor.iterate(0.001)

    def _start_floor(self, port: int) -> None:
        """The floor relay (`gateway.bench.floor`) in place of the gateway, turned by hand."""
        from gateway.bench.floor import Floor, Listener

        self.reactor = None
        self.clock = _FakeTime()
        floor = Floor(f"{self.scheme}://127.0.0.1:{port}/v1/agent/converse", self.transcode,
                      control=False)
        self.listening = Listener(floor).sock.getsockname()[1]
        self.turn = lambda: floor.loop.turn(0)
        self._wait = lambda: floor.loop.turn(0.001)

    # -- plumbing

    def _until(self, condition: Any, what: str) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if condition():
                return
            self._wait()
        raise RuntimeError(f"hotpath harness: no {what}")

    def stop(self) -> None:
        """Stop the reactor's thread pool (the process would not exit otherwise)."""
        pool = getattr(self.reactor, "threadpool", None)
        if pool is not None:
            pool.stop()

    def _masked(self, opcode: int, payload: bytes) -> bytes:
        from gateway.bench.framing import encode_frame

        key = self.rng.getrandbits(32).to_bytes(4, "big") if self.mask == "random" else None
        return encode_frame(opcode, payload, True, key)

    @staticmethod
    def _recv(sock: socket.socket) -> bytes:
        try:
            return sock.recv(1 << 20)
        except (BlockingIOError, ssl.SSLWantReadError):
            return b""

    def _open_call(self, index: int) -> None:
        tw = socket.create_connection(("127.0.0.1", self.listening))
        tw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        tw.setblocking(False)
        key = base64.b64encode(os.urandom(16))
        tw.send(b"GET /twilio HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key
                + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
        got = [b""]
        self._until(lambda: got.__setitem__(0, got[0] + self._recv(tw)) or b"\r\n\r\n" in got[0],
                    "101 from the gateway")
        assert got[0].startswith(b"HTTP/1.1 101"), got[0][:80]
        sid = f"MZ{index:032x}"
        tw.send(self._masked(1, b'{"event":"connected","protocol":"Call","version":"1.0.0"}'))
        start = {"event": "start", "sequenceNumber": "1",
                 "start": {"accountSid": "AC" + "1" * 32, "streamSid": sid,
                           "callSid": f"CA{index:032x}", "tracks": ["inbound"],
                           "customParameters": {"From": "+14155550000", "To": "+14155550100",
                                                "CallSid": f"CA{index:032x}",
                                                "gateway_handover": "1",
                                                "greeting": f"bench-{index}"},
                           "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000,
                                           "channels": 1}},
                 "streamSid": sid}
        tw.send(self._masked(1, json.dumps(start, separators=(",", ":")).encode()))
        conn: list[Any] = [None]

        def accepted() -> bool:
            try:
                conn[0], _ = self.dg.accept()
            except BlockingIOError:
                return False
            return True

        self._until(accepted, "Deepgram connection")
        dg = conn[0]
        dg.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        dg.setblocking(False)
        if self.tls is not None:
            dg = self.tls.wrap_socket(dg, server_side=True, do_handshake_on_connect=False)

            def handshaken() -> bool:
                try:
                    dg.do_handshake()
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    return False
                return True

            self._until(handshaken, "TLS handshake with the gateway")
        head = [b""]
        self._until(lambda: head.__setitem__(0, head[0] + self._recv(dg)) or b"\r\n\r\n" in head[0],
                    "upgrade request to Deepgram")
        found = re.search(rb"Sec-WebSocket-Key: (\S+)", head[0], re.I)
        if found is None:
            raise RuntimeError("the gateway's upgrade request to Deepgram has no Sec-WebSocket-Key")
        ws_key = found.group(1)
        accept = base64.b64encode(hashlib.sha1(ws_key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        dg.send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
                + bytes((0x81, 39)) + b'{"type":"Welcome","request_id":"bench"}')
        got = [b""]
        self._until(lambda: got.__setitem__(0, got[0] + self._recv(dg))
                    or any(b"Settings" in p for _, p in _frames(got[0])[0]), "Settings")
        dg.send(bytes((0x81, 26)) + b'{"type":"SettingsApplied"}')
        self.turn()
        self.twilio.append(tw)
        self.deepgram.append(dg)

    # -- the measured steps
    def prepare(self, frames: int) -> None:
        payload = base64.b64encode(bytes(range(80, 240))).decode()   # 160 bytes of mu-law
        self.inbound = [[self._masked(1, (
            f'{{"event":"media","sequenceNumber":"{n + 3}","media":{{"track":"inbound",'
            f'"chunk":"{n + 1}","timestamp":"{n * 20}","payload":"{payload}"}},'
            f'"streamSid":"MZ{c:032x}"}}').encode()) for c in range(len(self.twilio))]
            for n in range(frames)]
        size = 640 if self.transcode else 160     # agent audio: 20 ms in Deepgram's format
        self.outbound = (bytes((0x82, 126)) + size.to_bytes(2, "big")
                         + bytes((i * 7) & 0xFF for i in range(size)))

    def run(self, frames: int) -> dict:
        """
        ``frames`` steps. They run inside ``functools.reduce`` (a C function nothing else in the
        process calls), so that callgrind can count exactly them: ``--toggle-collect``.
        """
        seen = [0, 0]
        tw_rest = [b""] * len(self.twilio)

        def step(seen: list[int], n: int) -> list[int]:
            self.clock.now += _FRAME_S
            for tw, frame in zip(self.twilio, self.inbound[n]):
                tw.send(frame)
            self.turn()
            for dg in self.deepgram:
                if self._recv(dg):
                    seen[0] += 1
            for dg in self.deepgram:
                dg.send(self.outbound)
            self.turn()
            for i, tw in enumerate(self.twilio):
                frames_in, tw_rest[i] = _frames(tw_rest[i] + self._recv(tw))
                for op, payload in frames_in:
                    if op == 1:
                        seen[1] += 1
                    elif op == 9:
                        self.pings += 1
                        tw.send(self._masked(10, payload))
            return seen

        functools.reduce(step, range(frames), seen)
        return {"inbound_reads": seen[0], "outbound_frames": seen[1]}


def _measure(args: argparse.Namespace) -> dict:
    harness = Harness(args.calls, args.mode == "transcode", args.mask, args.legacy_config,
                      args.target, args.stock_dispatch, tls=args.mode == "tls")
    harness.prepare(args.frames)
    # What set-up left is old: the collector's full passes no longer scan it (as in a gateway
    # that has been up for a while), so that the counts move with the per-frame work only.
    gc.collect()
    gc.freeze()
    t0, c0 = time.perf_counter(), time.process_time()
    seen = harness.run(args.frames)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    harness.stop()
    pairs = args.frames * args.calls
    from gateway.legs import wire

    result = {"target": args.target, "frames": args.frames, "calls": args.calls, "pairs": pairs,
              "lane_masker": getattr(wire, "MASKER", "python"),
              "deepgram_tls": (None if args.mode != "tls" else _tls_stack() if args.target == "gateway"
                               else "ssl.SSLSocket (the floor)"),
              "mode": args.mode, "stock_dispatch": args.stock_dispatch,
              "mask": args.mask, **seen, "pings_answered": harness.pings,
              "us_per_pair_wall": round(1e6 * wall / pairs, 2),
              "us_per_pair_cpu": round(1e6 * cpu / pairs, 2)}
    if seen["outbound_frames"] < pairs or seen["inbound_reads"] < pairs * 0.99:
        result["error"] = "frames went missing: the harness measured something else"
    return result


def _tls_stack() -> str:
    """Which TLS the gateway's Deepgram leg runs ("gateway.legs.tls" or Twisted's), for the record."""
    return ("gateway.legs.tls" if importlib.util.find_spec("gateway.legs.tls") is not None
            else "twisted.protocols.tls")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gateway.bench.hotpath",
                                description=__doc__.split("\n\n")[0].strip())
    p.add_argument("--frames", type=int, default=1000, help="frame pairs per call")
    p.add_argument("--calls", type=int, default=1, help="calls (frames per reactor turn)")
    p.add_argument("--mode", choices=("relay", "transcode", "tls"), default="relay",
                   help="tls: relay with the Deepgram leg over wss:// (the harness ends TLS)")
    p.add_argument("--mask", choices=("random", "zero"), default="random")
    p.add_argument("--legacy-config", action="store_true")
    p.add_argument("--stock-dispatch", action="store_true",
                   help="Twisted's own epoll dispatch (a log context built per event) instead of "
                        "the lean one the service installs (gateway.legs.dispatch)")
    p.add_argument("--target", choices=("gateway", "floor"), default="gateway",
                   help="what relays the frames: the gateway, or the floor (gateway.bench.floor)")
    p.add_argument("--callgrind", action="store_true",
                   help="count instructions per frame pair under valgrind")
    p.add_argument("--repeat", type=int, default=3, help="--callgrind: runs of each length")
    args = p.parse_args(argv)
    if args.callgrind:
        from gateway.bench.callgrind import count_instructions

        result = count_instructions(args)
        print(json.dumps(result))
        return 0
    try:
        result = _measure(args)
        print(json.dumps(result))
        code = 1 if "error" in result else 0
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)   # the reactor's thread pool (name resolution) would keep the process up


if __name__ == "__main__":
    sys.exit(main())
