"""
``python -m tests.system.attack_front_door``: the front door under attack, measured (issue 19's
"Done when"). Not collected as a test (no TestCase here): it takes minutes and reports figures.

A real ``twistd gateway`` child (``require_stream_token``, signed Twilio, the defaults otherwise)
in front of the emulator, and from this process:

- **flood**: ``--silent`` silent ``/client`` upgrades and ``--replayed`` Twilio upgrades carrying
  a captured (valid, static) signature but no stream token, from 32 loopback addresses, every one
  re-opened as soon as the gateway closes it, so the pressure never lets up;
- meanwhile ``--calls`` whole Twilio calls (the signed voice webhook, its TwiML with a stream
  token, the stream), checked byte-exact at the emulator, and ``/healthz`` sampled every 10 ms;
- then **malformed**: ``--malformed`` generated hostile messages (deep nesting, lone surrogates,
  huge and wrong DTMF digits, wrong types, invalid UTF-8, binary frames, stray JSON) sent over
  live signed calls, each of which must still end normally; run with ``debug_calls`` off and on.

It prints one JSON summary: calls accepted and byte-exact, /healthz p50/p99/max, calls ended by
the malformed messages, and traceback lines in the gateway's log (both must be 0).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from typing import Any
from urllib.parse import urlencode

import attrs
import treq
from twisted.internet import defer, protocol, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

from gateway.codecs.signatures import compute_signature
from gateway.emulator import Emulator
from gateway.legs.wire import frame_header, mask
from gateway.simulator.voice import TwilioVoiceCall
from gateway.testing import TEST_API_KEY, temp_path
from tests.system.harness import TwistdGateway, clip, emulator_env
from tests.system.test_admission import SilentSocket, _SignedSilent

AUTH_TOKEN = "auth-token-of-the-test-account"  # test_admission's, which _SignedSilent signs with
PUBLIC = "https://gw.example.test"
ORDER = clip("caller-order-8k-mulaw.wav")


class _Shim:
    """Enough of a TestCase for the helpers that want one (cleanups run at the end)."""

    def __init__(self) -> None:
        self.cleanups: list[Any] = []

    def addCleanup(self, f: Any, *args: Any) -> None:
        self.cleanups.append((f, args))

    @defer.inlineCallbacks
    def run_cleanups(self) -> Any:
        for f, args in reversed(self.cleanups):
            yield defer.maybeDeferred(f, *args)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


class Flood:
    """Keeps ``count`` sockets of ``factory``'s kind open, re-opening each one the gateway closes."""

    def __init__(self, port: int, count: int, factory: Any) -> None:
        self.port = port
        self.count = count
        self.factory = factory
        self.opened = 0
        self.running = True
        self.sockets: list[Any] = []

    def start(self) -> None:
        for i in range(self.count):
            self._open(i)

    def _open(self, i: int) -> None:
        if not self.running:
            return
        source = f"127.0.0.{2 + i % 32}"
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port, bindAddress=(source, 0))
        d = connectProtocol(endpoint, self.factory())
        self.opened += 1

        def connected(sock: Any) -> None:
            self.sockets.append(sock)
            sock.closed.addCallback(lambda _: reactor.callLater(0.05, self._open, i))

        d.addCallbacks(connected, lambda f: reactor.callLater(0.2, self._open, i))

    def stop(self) -> None:
        self.running = False
        for sock in self.sockets:
            if sock.transport is not None and sock.transport.connected:
                sock.transport.abortConnection()


def hostile_messages(rng: random.Random, n: int) -> list[tuple[bool, bytes]]:
    """``n`` hostile frames (is_binary, payload) for a live /twilio stream."""
    out = []
    # No invalid UTF-8 in text frames: RFC 6455 makes that a protocol error that MUST fail the
    # connection (1007, CALLER_INVALID_UTF8), not a message to refuse one by one.
    kinds = ("nest", "surrogate", "digit", "digit_huge", "types", "binary", "junk", "unknown")
    for i in range(n):
        kind = kinds[i % len(kinds)]
        if kind == "nest":
            depth = rng.choice((40, 200, 2000, 20000))
            payload = b'{"event":"media","media":' + b'{"a":' * depth + b"1" + b"}" * depth + b"}"
            payload = payload[:60000]
        elif kind == "surrogate":
            payload = b'{"event":"dtmf","dtmf":{"track":"inbound_track","digit":"\\ud8%02x"}}' % rng.randrange(0, 256)
        elif kind == "digit":
            payload = json.dumps({"event": "dtmf", "dtmf": {"track": "inbound_track",
                                                               "digit": rng.choice("xyzW!?")}}).encode()
        elif kind == "digit_huge":
            payload = json.dumps({"event": "dtmf", "dtmf": {"digit": "5" * 20000}}).encode()
        elif kind == "types":
            payload = json.dumps({"event": "media", "media": {"payload": rng.choice([5, None, [], {}])}}).encode()
        elif kind == "binary":
            out.append((True, rng.randbytes(rng.randrange(1, 400))))
            continue
        elif kind == "junk":
            payload = rng.randbytes(rng.randrange(1, 200)).replace(b"\x00", b" ")
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError:
                payload = b"{not json"
        else:
            payload = json.dumps({"event": "dance" + str(i)}).encode()
        out.append((False, payload))
    return out


class RawStream(protocol.Protocol):
    """A signed /twilio stream over a raw socket: start, then whatever frames we write."""

    def __init__(self, call_sid: str, token: str, stream_sid: str) -> None:
        self.call_sid, self.token, self.stream_sid = call_sid, token, stream_sid
        self.received = b""
        self.upgraded: defer.Deferred = defer.Deferred()
        self.closed: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        signature = compute_signature(AUTH_TOKEN, PUBLIC.replace("https://", "wss://") + "/twilio").encode()
        self.transport.write(
            b"GET /twilio HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-Twilio-Signature: " + signature
            + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")

    def send(self, payload: bytes, binary: bool = False) -> None:
        key = random.getrandbits(32)
        opcode = 2 if binary else 1
        if len(payload) > 0xFFFF:
            payload = payload[:0xFFFF]
        self.transport.write(frame_header(opcode, len(payload), key) + mask(payload, key.to_bytes(4, "big")))

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if not self.upgraded.called and b"\r\n\r\n" in self.received:
            self.upgraded.callback(int(self.received.split(b" ", 2)[1]))

    def connectionLost(self, reason: Any) -> None:
        if not self.upgraded.called:
            self.upgraded.callback(None)
        self.closed.callback(None)

    def close_code(self) -> int | None:
        data = self.received.split(b"\r\n\r\n", 1)[-1]
        while len(data) >= 2:
            n, start = data[1] & 0x7F, 2
            if n == 126:
                n, start = int.from_bytes(data[2:4], "big"), 4
            if data[0] & 0x0F == 8 and n >= 2:
                return int.from_bytes(data[start:start + 2], "big")
            data = data[start + n:]
        return None


@defer.inlineCallbacks
def webhook(http: str, call_sid: str) -> Any:
    """The voice webhook, signed: the stream token in its TwiML."""
    import xml.etree.ElementTree as ET

    form = {"CallSid": call_sid, "AccountSid": "AC" + "1" * 32, "From": "+15005550006", "To": "+15005550001"}
    signature = compute_signature(AUTH_TOKEN, PUBLIC + "/twilio/voice", form)
    response = yield treq.post(http + "/twilio/voice", data=urlencode(form).encode(), persistent=False,
                               headers={"Content-Type": "application/x-www-form-urlencoded",
                                        "X-Twilio-Signature": signature})
    body = yield response.content()
    return {p.get("name"): p.get("value") for p in ET.fromstring(body).iter("Parameter")}


@defer.inlineCallbacks
def start_gateway(shim: _Shim, emulator: Any, debug: bool) -> Any:
    config = temp_path(shim, "gateway.toml")
    with open(config, "w") as f:
        f.write("[gateway]\nrequire_stream_token = true\nmax_calls = 200\n"
                f"debug_calls = {'true' if debug else 'false'}\n"
                "[keepalive]\ncaller_idle_timeout_s = 0\n[handover]\nenabled = false\n")
    gw = TwistdGateway(["--port", "tcp:0:interface=127.0.0.1", "--config", config],
                       {"DEEPGRAM_API_KEY": TEST_API_KEY, "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
                        "GATEWAY_PUBLIC_URL": PUBLIC, "GATEWAY_TOKEN_SECRET": "a" * 32, **emulator_env(emulator)})
    shim.addCleanup(gw.stop)
    port = yield gw.listening.addTimeout(60, reactor)
    return gw, port


@defer.inlineCallbacks
def flood_phase(args: Any, shim: _Shim, emulator: Any) -> Any:
    gw, port = yield start_gateway(shim, emulator, debug=False)
    http = f"http://127.0.0.1:{port}"
    floods = [Flood(port, args.silent, lambda: SilentSocket(b"/client")),
              Flood(port, args.replayed, _SignedSilent)]
    for flood in floods:
        flood.start()
    yield task.deferLater(reactor, 3, lambda: None)
    latencies: list[float] = []
    failures = [0]

    @defer.inlineCallbacks
    def probe() -> Any:
        t0 = time.monotonic()
        try:
            response = yield treq.get(http + "/healthz", persistent=False).addTimeout(5, reactor)
            yield response.content()
            latencies.append((time.monotonic() - t0) * 1000)
        except Exception:
            failures[0] += 1

    sampler = task.LoopingCall(probe)
    sampler.start(0.01)
    accepted = exact = 0
    sessions_before = len(emulator.sessions)

    @defer.inlineCallbacks
    def one_call(i: int) -> Any:
        nonlocal accepted, exact
        # Each call's audio starts with its own 20 ms, so its Deepgram session can be told apart.
        audio = attrs.evolve(ORDER, data=bytes([i % 250 + 1]) * 160 + ORDER.data)
        call = TwilioVoiceCall(reactor, http, PUBLIC, audio, auth_token=AUTH_TOKEN, realtime=True,
                               wait_s=1.0, form={"CallSid": f"CA{i:032d}"})
        result = yield call.run()
        if result.streams and result.streams[0].opened and result.streams[0].close_code == 1000:
            accepted += 1
            sent = result.streams[0].sent_audio
            mine = [s for s in emulator.sessions[sessions_before:] if s.audio[:160] == sent[:160]]
            for session in mine:
                yield session.closed
            if sent and any(s.audio == sent for s in mine):
                exact += 1
            else:
                print(json.dumps({"not_exact": i, "sent": len(sent),
                                  "sessions": [len(s.audio) for s in mine]}), flush=True)

    for batch in range(0, args.calls, 10):
        yield defer.DeferredList([one_call(i) for i in range(batch, min(args.calls, batch + 10))])
    sampler.stop()
    opened = sum(f.opened for f in floods)
    for flood in floods:
        flood.stop()
    return {"flood_sockets_opened": opened, "calls": args.calls, "accepted": accepted, "byte_exact": exact,
            "healthz_samples": len(latencies), "healthz_failures": failures[0],
            "healthz_ms": {"p50": round(percentile(latencies, 50), 2), "p99": round(percentile(latencies, 99), 2),
                           "max": round(max(latencies or [float("nan")]), 2)},
            "tracebacks_in_log": len(re.findall(r"Traceback|Unhandled [Ee]rror", gw.output))}


@defer.inlineCallbacks
def malformed_phase(args: Any, shim: _Shim, emulator: Any, debug: bool) -> Any:
    gw, port = yield start_gateway(shim, emulator, debug=debug)
    http = f"http://127.0.0.1:{port}"
    rng = random.Random(19 + debug)
    per_call = max(1, args.malformed // args.streams)
    ended_abnormally = 0
    sent_total = 0
    media = json.dumps({"event": "media", "media": {"track": "inbound", "chunk": "1", "timestamp": "0",
                                                       "payload": "/////w=="}}).encode()

    @defer.inlineCallbacks
    def stream(i: int) -> Any:
        nonlocal ended_abnormally, sent_total
        call_sid = f"CA{(i + 10_000):032d}"
        params = yield webhook(http, call_sid)
        stream_sid = f"MZ{i:032d}"
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        sock = yield connectProtocol(endpoint, RawStream(call_sid, params.get("gateway_stream_token", ""), stream_sid))
        status = yield sock.upgraded
        if status != 101:
            ended_abnormally += 1
            return
        sock.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}).encode())
        sock.send(json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": stream_sid, "start": {
            "accountSid": "AC" + "1" * 32, "streamSid": stream_sid, "callSid": call_sid, "tracks": ["inbound"],
            "customParameters": params,
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}).encode())
        batch = hostile_messages(rng, per_call)
        for k in range(0, len(batch), 500):
            for binary, payload in batch[k:k + 500]:
                sock.send(payload, binary)
                sent_total += 1
            sock.send(media.replace(b'"event"', b'"streamSid":"%s","event"' % stream_sid.encode()))
            yield task.deferLater(reactor, 0.01, lambda: None)
            if sock.closed.called:
                break
        sock.send(json.dumps({"event": "stop", "streamSid": stream_sid, "sequenceNumber": "9",
                              "stop": {"accountSid": "AC" + "1" * 32, "callSid": call_sid}}).encode())
        yield defer.DeferredList([sock.closed]).addTimeout(30, reactor)
        if sock.close_code() != 1000:
            ended_abnormally += 1

    yield defer.DeferredList([stream(i) for i in range(args.streams)])
    ended = re.findall(r"ended: ([A-Z_0-9]+)", gw.output)
    return {"debug_calls": debug, "messages_sent": sent_total, "streams": args.streams,
            "streams_not_ended_normally": ended_abnormally,
            "diagnoses": {code: ended.count(code) for code in sorted(set(ended))},
            "tracebacks_in_log": len(re.findall(r"Traceback|Unhandled [Ee]rror", gw.output))}


@defer.inlineCallbacks
def run(args: Any) -> Any:
    shim = _Shim()
    emulator = Emulator(reactor, api_key=TEST_API_KEY, speed=20.0)
    yield emulator.listen("tcp:0:interface=127.0.0.1")
    shim.addCleanup(emulator.stop)
    out: dict[str, Any] = {}
    try:
        if args.silent or args.replayed or args.calls:
            out["flood"] = yield flood_phase(args, shim, emulator)
            print(json.dumps(out["flood"]), flush=True)
        if args.malformed:
            for debug in (False, True):
                out[f"malformed_debug_{'on' if debug else 'off'}"] = result = yield malformed_phase(
                    args, shim, emulator, debug)
                print(json.dumps(result), flush=True)
    finally:
        yield shim.run_cleanups()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.system.attack_front_door")
    parser.add_argument("--silent", type=int, default=500)
    parser.add_argument("--replayed", type=int, default=500)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--malformed", type=int, default=1_000_000)
    parser.add_argument("--streams", type=int, default=20, help="calls carrying the malformed messages")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()
    result: list[Any] = []
    d = run(args)
    d.addBoth(lambda r: (result.append(r), reactor.stop()))
    reactor.run()
    if result and not isinstance(result[0], dict):
        print(result[0], file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

