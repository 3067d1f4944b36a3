"""
Recording through a whole gateway and the emulator: a real-time Twilio call is recorded to a
two-channel WAV file with the caller on the left and the agent on the right, each aligned with
what the simulated phone sent and heard within 20 ms; consent by a custom parameter; the
recording and its side file uploaded to a real local S3-compatible server (moto's standalone
server, ``moto[server]`` from PyPI: MinIO's server is not packaged by Debian or PyPI).
"""

from __future__ import annotations

import glob
import json
import os
import re
import sys
import wave
from typing import Any

from twisted.internet import defer, protocol, reactor, threads
from twisted.trial.unittest import TestCase

from gateway.codecs.g711 import audioop
from gateway.recording import SILENT_PEAK
from gateway.simulator import TwilioCall
from gateway.testing import temp_path
from tests.system.harness import clip, start_emulator, start_gateway, wait_until

CHAIN = ["auth", "settings", "empty_frames", "record", "transcoder", "keepalive", "call_control", "close_codes"]
RATE = 8000
TOLERANCE_S = 0.020


def channel(stereo: bytes, side: int) -> bytes:
    return audioop.tomono(stereo, 2, 1 - side, side)


def find_sample(haystack: bytes, needle: bytes) -> int:
    """The sample index where ``needle`` (16-bit audio) starts in ``haystack``, or -1."""
    at = haystack.find(needle)
    while at != -1 and at % 2:
        at = haystack.find(needle, at + 1)
    return -1 if at == -1 else at // 2


def read_recording(directory: str) -> tuple[bytes, bytes, dict[str, Any], str]:
    wavs = glob.glob(os.path.join(directory, "*", "*.wav"))
    assert len(wavs) == 1, wavs
    with wave.open(wavs[0]) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (2, 2, RATE)
        stereo = w.readframes(w.getnframes())
    with open(wavs[0][:-4] + ".json") as f:
        side = json.load(f)
    return channel(stereo, 0), channel(stereo, 1), side, wavs[0]


class _MotoServer(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.ready: defer.Deferred = defer.Deferred()
        self.ended: defer.Deferred = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data
        match = re.search(rb"Running on (http://127\.0\.0\.1:\d+)", self.output)
        if match and not self.ready.called:
            self.ready.callback(match.group(1).decode())

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        if not self.ready.called:
            self.ready.errback(RuntimeError("moto_server exited:\n" + self.output.decode(errors="replace")))
        self.ended.callback(None)


@defer.inlineCallbacks
def start_s3(test: TestCase) -> Any:
    """moto's S3-compatible server on 127.0.0.1 (a child process), stopped when ``test`` ends."""
    server = _MotoServer()
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"]
    process = reactor.spawnProcess(server, sys.executable, argv, env=dict(os.environ))

    def stop() -> defer.Deferred:
        if not server.ended.called:
            process.signalProcess("TERM")
        return server.ended

    test.addCleanup(stop)
    url = yield server.ready.addTimeout(30, reactor)
    return url


class RecordCallTests(TestCase):
    """A recorded call's file: the caller left, the agent right, aligned within 20 ms."""

    timeout = 120

    @defer.inlineCallbacks
    def start(self, record: dict[str, Any]) -> Any:
        emulator = yield start_emulator(self)
        gateway = yield start_gateway(self, emulator, {"gateway": {"chain": CHAIN}, "record": record})
        factory = dict(gateway.gateway.configured.stages)["record"]
        self.addCleanup(factory.stop_service)  # the daily retention sweep's timer
        return gateway, factory

    @defer.inlineCallbacks
    def finish(self, gateway: Any, factory: Any) -> Any:
        yield wait_until(lambda: not gateway.gateway.calls, 10)
        yield factory.idle()

    @defer.inlineCallbacks
    def test_two_channels_aligned(self) -> None:
        """The caller's speech and both agent turns are where the phone sent and heard them."""
        directory = temp_path(self, "recordings")
        gateway, factory = yield self.start({"directory": directory, "chunk_s": 1.0})
        # 3 s of silence (the greeting plays meanwhile), then "yes"; frames every 20 ms from the open.
        call = TwilioCall(reactor, url=gateway.url + "/twilio", audio=clip("caller-silence-then-yes-8k-mulaw.wav"),
                          realtime=True, until_answered=True, wait_s=8)
        result = yield call.run().addTimeout(60, reactor)
        yield self.finish(gateway, factory)
        left, right, side, path = read_recording(directory)
        self.assertEqual(side["stream_sid"], call.stream_sid)
        self.assertTrue(side["complete"])
        # The recording's time zero on the simulator's clock (both run on this reactor).
        zero = side["started_at_unix"] - call._t0

        # The caller: runs of 10 voiced frames (200 ms) near the start and the end of the clip,
        # found exactly on the left (the mixer may shorten silent frames to stay in step, never
        # voiced ones), each where the phone sent it.
        sent = result.sent_audio
        frames = [sent[i:i + 160] for i in range(0, len(sent), 160)]
        voiced = [audioop.max(audioop.ulaw2lin(f, 2), 2) >= SILENT_PEAK for f in frames]
        starts = [i for i in range(len(frames) - 10) if all(voiced[i:i + 10])]
        opened = next(t for t, kind, _ in result.events if kind == "sim.open")
        for k in (starts[0], starts[-1]):
            speech = audioop.ulaw2lin(b"".join(frames[k:k + 10]), 2)
            at = find_sample(left, speech)
            self.assertNotEqual(at, -1, "the caller's speech is not on the left channel")
            self.assertEqual(find_sample(right, speech), -1, "the caller's speech is on the agent's channel")
            sent_at = opened + k * 0.02
            self.assertLessEqual(abs(zero + at / RATE - sent_at), TOLERANCE_S)
            if k == starts[0]:
                at_left, first_sent_at = at, sent_at
        sent_at = first_sent_at

        # The agent: each turn's audio, found whole on the right (the greeting and the answer use
        # the same clip: the answer is searched for after the greeting), where the phone heard it.
        media = [(t, _payload(m)) for t, kind, m in result.events if kind == "media"]
        speech_end = result.speech_end_s
        turns = [[(t, p) for t, p in media if t < speech_end], [(t, p) for t, p in media if t > speech_end]]
        after = 0
        placed = []
        for turn in turns:
            audio = audioop.ulaw2lin(b"".join(p for _, p in turn), 2)
            at_right = find_sample(right[after * 2:], audio)
            self.assertNotEqual(at_right, -1, "an agent turn is not on the right channel whole")
            at_right += after
            self.assertEqual(find_sample(left, audio), -1, "agent audio is on the caller's channel")
            heard = turn[0][0]
            self.assertLessEqual(abs(zero + at_right / RATE - heard), TOLERANCE_S)
            # The two sides against each other, as a listener hears them.
            self.assertLessEqual(abs((at_right - at_left) / RATE - (heard - sent_at)), TOLERANCE_S)
            after = at_right + len(audio) // 2
            placed.append((at_right, after))
        # Silence where a side was silent: nothing on the right between the greeting and the
        # answer; only the caller's own quiet on the left while the greeting played.
        self.assertGreater(placed[1][0], placed[0][1])
        self.assertEqual(audioop.max(right[placed[0][1] * 2:placed[1][0] * 2], 2), 0)
        self.assertLess(audioop.max(left[:at_left * 2], 2), SILENT_PEAK)

    @defer.inlineCallbacks
    def test_client_call(self) -> None:
        """A /client call (linear16 16 kHz): a 16 kHz file with the caller's samples unchanged on the
        left, the agent on the right; its stream id is the call's id, and consent comes from the
        hello's parameters."""
        from gateway.simulator import ClientCall
        from gateway.tokens import mint_token

        directory = temp_path(self, "recordings")
        emulator = yield start_emulator(self)
        record = {"directory": directory, "require_parameter": "record"}
        gateway = yield start_gateway(self, emulator, {"gateway": {"chain": CHAIN}, "record": record},
                                      {"GATEWAY_TOKEN_SECRET": "record-test-secret-0123456789abcdef"})
        factory = dict(gateway.gateway.configured.stages)["record"]
        self.addCleanup(factory.stop_service)
        token = mint_token(b"record-test-secret-0123456789abcdef", reactor.seconds())
        call = ClientCall(reactor, url=gateway.url + "/client", audio=clip("caller-order-16k-s16le.wav"),
                          token=token, parameters={"record": "on"}, realtime=False, wait_s=8.0,
                          until_answered=True)
        result = yield call.run().addTimeout(60, reactor)
        yield self.finish(gateway, factory)
        wavs = glob.glob(os.path.join(directory, "*", "*.wav"))
        self.assertEqual(len(wavs), 1)
        with wave.open(wavs[0]) as w:
            self.assertEqual((w.getnchannels(), w.getframerate()), (2, 16000))
            stereo = w.readframes(w.getnframes())
        left, right = channel(stereo, 0), channel(stereo, 1)
        with open(wavs[0][:-4] + ".json") as f:
            side = json.load(f)
        self.assertEqual((side["leg"], side["stream_sid"], side["audio"]["sample_rate"]),
                         ("client", side["call_id"], 16000))
        self.assertEqual(side["consent"], {"basis": "parameter", "parameter": "record", "value": "on"})
        # 10 voiced frames (the mixer may shorten silent ones: the clip went out at once)
        sent = result.sent_audio
        frames = [sent[i:i + 640] for i in range(0, len(sent), 640)]
        voiced = [audioop.max(f, 2) >= SILENT_PEAK for f in frames]
        k = next(i for i in range(len(frames)) if all(voiced[i:i + 10]))
        self.assertNotEqual(find_sample(left, b"".join(frames[k:k + 10])), -1)
        # The answer's last 100 ms (the caller talked over the greeting: what it did not hear of
        # it is not in the file).
        self.assertNotEqual(find_sample(right, result.agent_audio[-3200:]), -1)
        self.assertEqual(find_sample(left, result.agent_audio[-3200:]), -1)

    @defer.inlineCallbacks
    def test_consent_and_s3(self) -> None:
        """Only the call whose customParameters say record=true is recorded; its WAV and side file
        land in the local directory and in the S3-compatible bucket, byte for byte."""
        s3_url = yield start_s3(self)
        for name, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                            "AWS_DEFAULT_REGION": "us-east-1"}.items():
            self.addCleanup(_restore, name, os.environ.get(name))
            os.environ[name] = value
        import boto3

        s3 = boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1")
        yield threads.deferToThread(s3.create_bucket, Bucket="calls")
        directory = temp_path(self, "recordings")
        gateway, factory = yield self.start({
            "directory": directory, "require_parameter": "record", "retention_days": 30,
            "s3": {"bucket": "calls", "prefix": "gw/", "endpoint_url": s3_url}})
        recorded = None
        for parameters in ({"record": "true"}, {"record": "no"}, {}):
            call = TwilioCall(reactor, url=gateway.url + "/twilio", audio=clip("caller-yes-8k-mulaw.wav"),
                              realtime=False, wait_s=1.0, custom_parameters=parameters)
            yield call.run().addTimeout(60, reactor)
            yield self.finish(gateway, factory)
            if parameters.get("record") == "true":
                recorded = call
        left, right, side, path = read_recording(directory)
        self.assertEqual(side["stream_sid"], recorded.stream_sid)
        self.assertEqual(side["consent"], {"basis": "parameter", "parameter": "record", "value": "true"})
        self.assertEqual(side["retention"]["retention_days"], 30)
        relative = os.path.relpath(path, directory)[:-4]
        self.assertEqual(side["s3"], {"bucket": "calls", "keys": [f"gw/{relative}.wav", f"gw/{relative}.json"]})
        listed = yield threads.deferToThread(s3.list_objects_v2, Bucket="calls")
        self.assertEqual(sorted(o["Key"] for o in listed["Contents"]), sorted(side["s3"]["keys"]))
        for key, local in zip(side["s3"]["keys"], (path, path[:-4] + ".json")):
            obj = yield threads.deferToThread(s3.get_object, Bucket="calls", Key=key)
            with open(local, "rb") as f:
                self.assertEqual(obj["Body"].read(), f.read())
        self.assertGreater(audioop.max(left, 2), 1000)  # the caller's "yes"


def _payload(message: dict[str, Any]) -> bytes:
    import binascii

    return binascii.a2b_base64(message["media"]["payload"])


def _restore(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
