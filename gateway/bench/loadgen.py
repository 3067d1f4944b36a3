"""
The Twilio side of the benchmark: K paced calls to the gateway's ``/twilio`` WebSocket.

Each call sends ``connected``, ``start`` shaped as Twilio's (random 34-character SIDs, the
tracks and media format, and the custom parameters the gateway's own voice webhook puts in its
TwiML: ``From``, ``To``, ``CallSid``, ``gateway_handover``; plus ``greeting = "bench-<index>"``,
which a configuration that maps it to the Settings ``agent.greeting`` uses to tell the peer which
call a Deepgram connection is; in relay modes the peer learns it from the first stamped frame),
then one ``media`` message every 20 ms at its own phase of the period (spread evenly, or with
``burst`` in ten 2 ms slots), each masked with a fresh random 32-bit key as a real client's are
(``mask: "zero"`` for the all-zero key), and decodes the ``media`` messages the gateway sends
back. Relay modes stamp each 160-byte payload (`gateway.bench.tracking.STAMP`) and check the
peer's stamps; transcoding modes record send and arrival times per frame index for the
orchestrator to join.

Run by the orchestrator as ``python -m gateway.bench.loadgen``; commands arrive as JSON lines on
stdin.
"""

from __future__ import annotations

import binascii
import json
import os
import pickle
import time
from array import array
from random import getrandbits
from typing import Any

from gateway.bench.framing import (OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, FrameParser,
                                   client_handshake, encode_frame)
from gateway.bench.loop import FRAME_NS, Commands, Conn, connect_nonblocking, phase_ns
from gateway.bench.tracking import SeqTrack, stamp, unstamp

ACCOUNT = "AC" + os.urandom(16).hex()
_MEDIA = (b'{"event":"media","sequenceNumber":"%d","media":{"track":"inbound","chunk":"%d",'
          b'"timestamp":"%d","payload":"%s"},"streamSid":"%s"}')
_PAYLOAD_KEY = b'"payload":"'


class Call(Conn):
    def __init__(self, gen: "LoadGen", index: int) -> None:
        self.gen = gen
        self.index = index
        self.sid = ("MZ" + os.urandom(16).hex()).encode()
        self.call_sid = "CA" + os.urandom(16).hex()
        self.state = "connecting"
        self.head = b""
        self.parser = FrameParser()
        self.seq = 0          # Twilio sequenceNumber of the last message sent
        self.frames = 0       # media frames sent
        self.sending = False
        self.out = SeqTrack()
        self.out_bytes = 0
        self.got_media = False
        # Send and arrival times per 20 ms, for the orchestrator to join (filled when joined).
        self.in_send = array("q")
        self.out_recv = array("q")
        self.other = 0
        super().__init__(gen.loop, connect_nonblocking(gen.host, gen.port), connecting=True)

    def connection_made(self) -> None:
        request, self.expect = client_handshake(self.gen.host, self.gen.port, "/twilio")
        self.state = "upgrading"
        self.write(request)

    def _key(self) -> bytes | None:
        return getrandbits(32).to_bytes(4, "big") if self.gen.random_masks else None

    def _send_json(self, obj: dict) -> None:
        self.write(encode_frame(OP_TEXT, json.dumps(obj, separators=(",", ":")).encode(), True,
                                self._key()))

    def _opened(self) -> None:
        self.state = "open"
        sid = self.sid.decode()
        self._send_json({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        self.seq = 1
        # As Twilio sends it (its documentation's example, field for field), with the parameters
        # of the gateway's own TwiML (the [twiml] forward fields and handover's parameter).
        self._send_json({
            "event": "start", "sequenceNumber": "1",
            "start": {"accountSid": ACCOUNT, "streamSid": sid, "callSid": self.call_sid,
                      "tracks": ["inbound"],
                      "customParameters": {"From": f"+1415555{self.index % 10000:04d}",
                                           "To": "+14155550100", "CallSid": self.call_sid,
                                           "gateway_handover": "1",
                                           "greeting": f"bench-{self.index}"},
                      "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}},
            "streamSid": sid,
        })
        self.sending = True
        now = time.monotonic_ns()
        base = (now // FRAME_NS + 1) * FRAME_NS + phase_ns(self.index, burst=self.gen.burst)
        self.loop.call_at(base, self.tick)

    def tick(self, now: int, due: int) -> int | None:
        if not self.sending or self.closed:
            return None
        gen = self.gen
        if gen.in_window:
            gen.lateness.append(now - due)
        n = self.frames
        t = time.monotonic_ns()
        payload = stamp(b"BI", self.index, n, t, 160, b"\xff")
        self.seq += 1
        msg = _MEDIA % (self.seq, n + 1, n * 20, binascii.b2a_base64(payload, newline=False), self.sid)
        self.write(encode_frame(OP_TEXT, msg, True,
                                getrandbits(32).to_bytes(4, "big") if gen.random_masks else None))
        if gen.joined:
            self.in_send.append(t)
        self.frames = n + 1
        return due + FRAME_NS

    def send_stop(self) -> None:
        self.sending = False
        if self.state != "open":
            return
        self.state = "stopping"
        self.seq += 1
        sid = self.sid.decode()
        self._send_json({"event": "stop", "sequenceNumber": str(self.seq), "streamSid": sid,
                         "stop": {"accountSid": ACCOUNT, "callSid": self.call_sid}})

    def data_received(self, data: bytes) -> None:
        if self.state == "upgrading":
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, rest = self.head[:end], self.head[end + 4:]
            if not head.startswith(b"HTTP/1.1 101") or self.expect not in head:
                self.gen.errors.append(f"call {self.index}: upgrade refused: {head[:80]!r}")
                self.close("refused")
                return
            self._opened()
            if not rest:
                return
            data = rest
        now = time.monotonic_ns()
        for op, payload in self.parser.feed(data):
            if op == OP_TEXT:
                i = payload.find(_PAYLOAD_KEY)
                if i >= 0 and payload.startswith(b'{"event":"media"'):
                    j = payload.index(b'"', i + 11)
                    self._audio(binascii.a2b_base64(payload[i + 11:j]), now)
                else:
                    self.other += 1
            elif op == OP_PING:
                self.write(encode_frame(OP_PONG, payload, True, self._key()))
            elif op == OP_CLOSE:
                if self.state != "closing":
                    self.write(encode_frame(OP_CLOSE, payload[:2], True, self._key()))
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
                self.state = "closing"
            elif op == OP_BINARY:
                self.other += 1

    def _audio(self, audio: bytes, now: int) -> None:
        self.got_media = True
        gen = self.gen
        if gen.joined:
            before = self.out_bytes // 160
            self.out_bytes += len(audio)
            for _ in range(self.out_bytes // 160 - before):
                self.out_recv.append(now)
            return
        for k in range(0, len(audio) - 159, 160):
            magic, call, seq, t = unstamp(audio[k:k + 18])
            track = self.out
            if magic != b"BO":
                track.bad += 1
                continue
            if call != self.index:
                track.misrouted += 1
                continue
            track.see(seq)
            if gen.in_window:
                gen.latency.append(now - t)

    def connection_lost(self, why: str) -> None:
        gen = self.gen
        clean = self.state == "closing" and getattr(self, "close_code", None) == 1000
        if not clean:
            gen.errors.append(f"call {self.index}: lost in state {self.state}: {why}")
        gen.closed_calls += 1
        self.state = "closed"


class LoadGen(Commands):
    """The load generator's commands: ``start`` (open K calls; answers when they are up),
    ``quiesce``, ``totals``, ``dump``, ``stop`` (answers when they are closed), and the base's."""

    latency_key = "out_latency"

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[Call] = []
        self.reset({})

    def reset(self, cmd: dict) -> None:
        self.host = cmd.get("host", "127.0.0.1")
        self.port = cmd.get("port", 0)
        self.joined = cmd.get("joined", False)
        self.random_masks = cmd.get("mask", "random") != "zero"
        self.burst = bool(cmd.get("burst", False))
        self.calls = []
        self.errors: list[str] = []
        self.closed_calls = 0
        self.in_window = False
        self.lateness = []
        self.latency = []
        self._waiting: str | None = None
        self._expected = 0
        self._deadline = 0.0

    def cmd_start(self, cmd: dict) -> None:
        self.reset(cmd)
        now = time.monotonic_ns()
        gap = int(1e9 / cmd.get("ramp_rate", 100.0))
        for i in range(cmd["calls"]):
            self.loop.call_at(now + i * gap, self._opener(cmd.get("first_index", 0) + i))
        self._waiting = "ready"
        self._deadline = time.monotonic() + cmd.get("timeout_s", 30.0)
        self.loop.call_at(now + 50_000_000, self._poll)
        self._expected = cmd["calls"]

    def cmd_quiesce(self, cmd: dict) -> dict:
        for call in self.calls:
            call.sending = False
        return {"ok": True}

    def cmd_totals(self, cmd: dict) -> dict:
        return {"calls": {c.index: {"in_sent": c.frames, "out": c.out.as_dict(),
                                    "out_units": c.out_bytes // 160, "other": c.other}
                          for c in self.calls},
                "errors": self.errors[:20], "error_count": len(self.errors)}

    def cmd_dump(self, cmd: dict) -> dict:
        with open(cmd["path"], "wb") as f:
            pickle.dump({c.index: (c.in_send, c.out_recv) for c in self.calls}, f)
        return {"ok": True}

    def cmd_stop(self, cmd: dict) -> None:
        for call in self.calls:
            call.send_stop()
        self._waiting = "closed"
        self._deadline = time.monotonic() + cmd.get("timeout_s", 15.0)
        self.loop.call_at(time.monotonic_ns() + 50_000_000, self._poll)

    def _opener(self, index: int) -> Any:
        def open_call(now: int, due: int) -> None:
            try:
                self.calls.append(Call(self, index))
            except OSError as e:
                self.errors.append(f"call {index}: connect: {e}")
                self.closed_calls += 1
        return open_call

    def _poll(self, now: int, due: int) -> int | None:
        if self._waiting == "ready":
            up = sum(1 for c in self.calls if c.got_media)
            failed = self.closed_calls
            if up + failed >= self._expected or time.monotonic() > self._deadline:
                self._waiting = None
                self.loop.reply({"ready": up, "failed": failed, "errors": self.errors[:20]})
                return None
        elif self._waiting == "closed":
            if self.closed_calls >= len(self.calls) or time.monotonic() > self._deadline:
                left = [c for c in self.calls if not c.closed]
                for call in left:
                    call.close("teardown timeout")
                self._waiting = None
                self.loop.reply({"closed": self.closed_calls, "forced": len(left),
                                 "errors": self.errors[:20], "error_count": len(self.errors)})
                return None
        else:
            return None
        return now + 50_000_000


def main() -> None:
    gen = LoadGen()
    gen.loop.reply({"hello": "loadgen"})
    gen.loop.run()


if __name__ == "__main__":
    main()
