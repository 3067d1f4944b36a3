"""
Recording (gateway/recording.py, plugins/record.py): where the mixer puts each side's frames,
the two-channel WAV and its side file, consent, retention, the hot path's cost, the options.
"""

from __future__ import annotations

import json
import os
import struct
import time
import wave
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from gateway.codecs.formats import LINEAR16_16K, MULAW_8K
from gateway.codecs.g711 import audioop
from gateway.errors import ConfigError
from gateway.events import Audio, Clear, DeepgramEvent, StreamStarted
from gateway.recording import AGENT, CLEAR, CallRecording, FrameLog, Mixer, sweep
from gateway.testing import RecordingContext, call_info, configure, temp_path
from plugins.record import RecordFactory, RecordOptions

RATE = 8000


def tone(n: int, value: int = 1000) -> bytes:
    """``n`` samples of a constant 16-bit value (easy to find in the output)."""
    return struct.pack(f"<{n}h", *([value] * n))


def channels(stereo: bytes) -> tuple[list[int], list[int]]:
    samples = struct.unpack(f"<{len(stereo) // 2}h", stereo)
    return list(samples[0::2]), list(samples[1::2])


def runs(samples: list[int]) -> list[tuple[int, int, int]]:
    """(start, length, value) of each run of equal non-zero samples."""
    out: list[tuple[int, int, int]] = []
    for i, v in enumerate(samples):
        if v and out and out[-1][2] == v and out[-1][0] + out[-1][1] == i:
            out[-1] = (out[-1][0], out[-1][1] + 1, v)
        elif v:
            out.append((i, 1, v))
    return out


def log(frames: list) -> FrameLog:
    """A FrameLog of ``(t_s, side, payload)``."""
    out = FrameLog()
    for frame in frames:
        out.add(*frame)
    return out


def sync_run(f: Any, *args: Any) -> defer.Deferred:
    """deferToThread's stand-in: run now, on this thread."""
    try:
        return defer.succeed(f(*args))
    except Exception:
        return defer.fail()


class MixerTests(SynchronousTestCase):
    """Placement by the call's clock (20 ms = 160 samples at 8 kHz)."""

    def test_caller_contiguous_with_jitter(self) -> None:
        """Frames arriving with jitter under gap_s follow each other exactly."""
        m = Mixer(RATE, start_s=100.0)
        for i, jitter in enumerate([0, 0.015, -0.004, 0.03, 0.0]):
            m.caller(100.5 + i * 0.02 + jitter, tone(160, i + 1))
        left, right = channels(m.take())
        self.assertEqual(runs(left), [(4000 + 160 * i, 160, i + 1) for i in range(5)])
        self.assertEqual(set(right), {0})

    def test_caller_gap_is_silence(self) -> None:
        """A caller that stops sending: its next frame goes at its arrival time."""
        m = Mixer(RATE, start_s=0.0)
        m.caller(0.0, tone(160, 1))
        m.caller(1.0, tone(160, 2))
        left, _ = channels(m.take())
        self.assertEqual(runs(left), [(0, 160, 1), (8000, 160, 2)])

    def test_caller_catches_up_in_silence(self) -> None:
        """After a stall and a burst the caller runs ahead; silent frames are left out until it
        is back in step, speech never."""
        m = Mixer(RATE, start_s=0.0)
        t = 0.0
        for i in range(5):
            m.caller(i * 0.02, tone(160, 1000))
        # a 0.5 s stall: 25 frames arrive at once at t = 0.6, then real time again
        for i in range(25):
            m.caller(0.6, tone(160, 2000 if i < 3 else 0))
        for i in range(40):
            t = 0.62 + i * 0.02
            m.caller(t, tone(160, 0 if i < 30 else 3000))
        left, _ = channels(m.take())
        speech = runs(left)
        self.assertEqual(speech[0], (0, 800, 1000))
        self.assertEqual(speech[1][1:], (480, 2000))  # the burst's speech is all there
        start3, length3, _ = speech[2]
        self.assertEqual(length3, 1600)
        self.assertLessEqual(abs(start3 / RATE - (0.62 + 30 * 0.02)), 0.0051)  # back in step
        self.assertGreater(m.skipped_silence, 0)

    def test_agent_queued_in_real_time(self) -> None:
        """Agent audio sent faster than real time plays in sequence from its first send."""
        m = Mixer(RATE, start_s=0.0)
        for i in range(10):  # 10 frames sent within 10 ms
            m.agent(2.0 + i * 0.001, tone(160, 5))
        m.agent(10.0, tone(160, 6))  # a later turn starts when sent
        _, right = channels(m.take())
        self.assertEqual(runs(right), [(16000, 1600, 5), (80000, 160, 6)])

    def test_clear_cuts_what_was_not_heard(self) -> None:
        """A barge-in at 2.5 s: agent audio queued after it is gone; the next turn is placed anew."""
        m = Mixer(RATE, start_s=0.0)
        for i in range(100):  # 2 s of reply sent at once at 2.0
            m.agent(2.0, tone(160, 5))
        m.clear(2.5)
        m.agent(3.0, tone(160, 6))
        _, right = channels(m.take())
        self.assertEqual(runs(right), [(16000, 4000, 5), (24000, 160, 6)])

    def test_take_in_chunks(self) -> None:
        """Taking in chunks gives what one take gives; audio placed later than the take stays."""
        frames = [(0.5 + i * 0.02, tone(160, i % 7 + 1)) for i in range(200)]
        whole = Mixer(RATE, 0.0)
        chunked = Mixer(RATE, 0.0)
        out = b""
        for i, (t, pcm) in enumerate(frames):
            whole.caller(t, pcm)
            whole.agent(t + 0.3, pcm)
            chunked.caller(t, pcm)
            chunked.agent(t + 0.3, pcm)
            if i % 50 == 49:
                out += chunked.take(t - 1.0)
        out += chunked.take()
        self.assertEqual(out, whole.take())


class RecordingFileTests(SynchronousTestCase):
    """CallRecording: a playable stereo WAV after every chunk; the side file; retention."""

    def test_wav(self) -> None:
        """mu-law caller and agent decoded to linear16, caller left, agent right."""
        base = temp_path(self, "2026-01-01/call")
        rec = CallRecording(base, RATE, 0.0, MULAW_8K, MULAW_8K)
        caller = audioop.lin2ulaw(tone(160, 3000), 2)
        agent = audioop.lin2ulaw(tone(160, -3000), 2)
        rec.write(log([(0.0, 0, caller), (0.1, 1, agent)]), 0.05)
        with wave.open(rec.wav_path) as w:  # readable mid-call
            self.assertEqual((w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()), (2, 2, RATE, 400))
        rec.write(FrameLog(), None)
        self.assertEqual(rec.close(), (800 + 160) / RATE)
        with wave.open(rec.wav_path) as w:
            left, right = channels(w.readframes(w.getnframes()))
        decoded = audioop.ulaw2lin(caller, 2)
        self.assertEqual(left[:160], list(struct.unpack("<160h", decoded)))
        self.assertEqual(runs(right)[0][:2], (800, 160))
        rec.write_side_file({"audio": {}, "call_id": "c"})
        with open(rec.json_path) as f:
            self.assertEqual(json.load(f)["audio"]["file"], "call.wav")

    def test_odd_linear16_frames(self) -> None:
        """linear16 frames of odd lengths (Deepgram's may be): samples stay whole, none lost."""
        base = temp_path(self, "call")
        rec = CallRecording(base, 16000, 0.0, LINEAR16_16K, LINEAR16_16K)
        agent = tone(320, 1234)
        rec.write(log([(0.0, 1, agent[:301]), (0.0, 1, agent[301:640])]), None)
        rec.close()
        with wave.open(rec.wav_path) as w:
            _, right = channels(w.readframes(w.getnframes()))
        self.assertEqual(runs(right), [(0, 320, 1234)])

    def test_clear_in_arrival_order(self) -> None:
        """A clear cuts the agent audio that came before it, not what came after at the same instant."""
        base = temp_path(self, "call")
        rec = CallRecording(base, RATE, 0.0, MULAW_8K, MULAW_8K)
        old, new = audioop.lin2ulaw(tone(160, 1000), 2), audioop.lin2ulaw(tone(160, -1000), 2)
        rec.write(log([(1.0, AGENT, old), (1.0, AGENT, old), (1.0, CLEAR), (1.0, AGENT, new)]), None)
        rec.close()
        with wave.open(rec.wav_path) as w:
            _, right = channels(w.readframes(w.getnframes()))
        self.assertEqual([r[0] for r in runs(right)], [RATE])
        self.assertLess(runs(right)[0][2], 0)

    def test_never_overwrites(self) -> None:
        """A second recording with the same name gets -2."""
        base = temp_path(self, "call")
        first = CallRecording(base, RATE, 0.0, MULAW_8K, MULAW_8K)
        first.close()
        second = CallRecording(base, RATE, 0.0, MULAW_8K, MULAW_8K)
        second.close()
        self.assertEqual(os.path.basename(second.wav_path), "call-2.wav")

    def test_sweep(self) -> None:
        """Recordings older than retention_days go, newer ones and other files stay, and so do
        directories that still hold something."""
        directory = temp_path(self, "recordings")
        now = time.time()
        files = {"2026-01-01/a.wav": 40, "2026-01-01/a.json": 40, "2026-02-01/b.wav": 5,
                 "2026-02-01/b.json": 5, "notes.txt": 400, "2026-01-02/c.json.part": 31}
        for name, age_days in files.items():
            path = os.path.join(directory, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write("x")
            os.utime(path, (now - age_days * 86400, now - age_days * 86400))
        deleted = sweep(directory, 30, now)
        self.assertEqual(sorted(os.path.relpath(p, directory) for p in deleted),
                         ["2026-01-01/a.json", "2026-01-01/a.wav", "2026-01-02/c.json.part"])
        self.assertEqual(sorted(os.listdir(directory)), ["2026-02-01", "notes.txt"])
        self.assertEqual(sweep(directory, 0, now), [])


class StageTests(SynchronousTestCase):
    """The record stage on a Clock, its writing run synchronously."""

    def factory(self, **options: Any) -> RecordFactory:
        directory = temp_path(self, "recordings")
        return RecordFactory(RecordOptions(directory=directory, **options), run=sync_run)

    def stage(self, factory: RecordFactory, leg: str = "twilio") -> tuple[Any, RecordingContext]:
        fmt = MULAW_8K if leg == "twilio" else LINEAR16_16K
        ctx = RecordingContext(call=call_info(leg=leg, caller_format=fmt, call_id="c-1"))
        ctx.clock.advance(1_767_225_600.0)  # 2026-01-01
        ctx.call.started_at = ctx.clock.seconds()
        return factory(ctx), ctx

    def test_a_recorded_call(self) -> None:
        """Frames appended, written in chunks, finished at the end with a complete side file."""
        factory = self.factory(chunk_s=1.0, transcript=True)
        stage, ctx = self.stage(factory)
        routes = stage.routes()
        ctx.call.stream_sid, ctx.call.request_ids = "MZ9", ["req-1"]
        routes.inbound[StreamStarted](StreamStarted("MZ9"))
        silence = b"\xff" * 160
        speech = audioop.lin2ulaw(tone(160, 2000), 2)
        for i in range(150):
            ctx.clock.advance(0.02)
            self.assertIs(routes.inbound[Audio](Audio(speech if i < 50 else silence)).payload,
                          speech if i < 50 else silence)
            if i == 60:
                for _ in range(25):
                    routes.outbound[Audio](Audio(speech, track="outbound"))
        routes.outbound[DeepgramEvent](DeepgramEvent("ConversationText", {"role": "user", "content": "Hi"}))
        self.assertTrue(os.path.exists(stage.recording.wav_path))  # chunks already written
        stage.close()
        self.successResultOf(factory.idle())
        with wave.open(stage.recording.wav_path) as w:
            left, right = channels(w.readframes(w.getnframes()))
        pcm = struct.unpack("<h", audioop.ulaw2lin(speech[:1], 2))[0]
        self.assertEqual(runs(left)[0][1:], (50 * 160, pcm))
        right_runs = runs(right)
        self.assertEqual(right_runs[0][1:], (25 * 160, pcm))
        self.assertLessEqual(abs(right_runs[0][0] - runs(left)[0][0] - 61 * 160), 2)
        with open(stage.recording.json_path) as f:
            side = json.load(f)
        self.assertEqual({k: side[k] for k in ("complete", "call_id", "stream_sid", "leg", "started_at",
                                                "dg_request_ids", "consent", "retention")},
                         {"complete": True, "call_id": "c-1", "stream_sid": "MZ9", "leg": "twilio",
                          "started_at": "2026-01-01T00:00:00Z", "dg_request_ids": ["req-1"],
                          "consent": {"basis": "configuration"},
                          "retention": {"retention_days": None, "delete_after": None}})
        self.assertEqual(side["audio"], {"file": os.path.basename(stage.recording.wav_path), "encoding": "linear16",
                                         "sample_rate": 8000, "channels": ["caller", "agent"],
                                         "time_zero": "started_at"})
        self.assertEqual(side["transcript"], [{"role": "user", "content": "Hi"}])
        self.assertEqual(os.path.dirname(stage.recording.wav_path),
                         os.path.join(factory.options.directory, "2026-01-01"))
        self.assertEqual(ctx.clock.getDelayedCalls(), [])
        self.assertEqual(ctx.counted("recordings", outcome="started"), 1)

    def test_ends_with_the_call(self) -> None:
        """Agent audio queued beyond the call's end was never played: the file stops at the end."""
        factory = self.factory()
        stage, ctx = self.stage(factory)
        stage.on_started(StreamStarted("MZ1"))
        ctx.clock.advance(1.0)
        for _ in range(100):  # 2 s of agent audio sent at once, then the caller hangs up 0.5 s later
            stage.on_agent(Audio(audioop.lin2ulaw(tone(160, 2000), 2), track="outbound"))
        ctx.clock.advance(0.5)
        stage.close()
        with wave.open(stage.recording.wav_path) as w:
            self.assertEqual(w.getnframes(), int(1.5 * RATE))
            _, right = channels(w.readframes(w.getnframes()))
        self.assertEqual(runs(right)[0][:2], (RATE, RATE // 2))

    def test_no_transcript_unless_configured(self) -> None:
        """The side file has no transcript by default."""
        factory = self.factory()
        stage, ctx = self.stage(factory)
        stage.on_started(StreamStarted("MZ1"))
        stage.on_event(DeepgramEvent("ConversationText", {"role": "user", "content": "Hi"}))
        stage.close()
        with open(stage.recording.json_path) as f:
            self.assertNotIn("transcript", json.load(f))

    def test_consent(self) -> None:
        """require_parameter: recorded only when the parameter is true; otherwise the stage leaves
        the audio routes and writes nothing."""
        factory = self.factory(require_parameter="record", retention_days=30)
        stage, ctx = self.stage(factory)
        stage.on_caller(Audio(b"\xff" * 160))
        stage.on_started(StreamStarted("MZ1", custom_parameters={"record": "no"}))
        self.assertIsNone(stage.recording)
        self.assertIn((Audio, "inbound"), ctx.unrouted)
        self.assertIn((Audio, "outbound"), ctx.unrouted)
        stage.close()
        self.assertFalse(os.path.exists(factory.options.directory))
        self.assertEqual(ctx.counted("recordings", outcome="no_consent"), 1)

        stage, ctx = self.stage(factory)
        stage.on_started(StreamStarted("MZ2", custom_parameters={"record": "Yes"}))
        stage.close()
        with open(stage.recording.json_path) as f:
            side = json.load(f)
        self.assertEqual(side["consent"], {"basis": "parameter", "parameter": "record", "value": "Yes"})
        self.assertEqual(side["retention"], {"retention_days": 30.0, "delete_after": "2026-01-31T00:00:00Z"})

    def test_retention_sweep_at_start_and_daily(self) -> None:
        """With retention_days: a sweep when the first call starts, then every 24 h; stop() ends it."""
        factory = self.factory(retention_days=1)
        old = os.path.join(factory.options.directory, "2020-01-01", "old.wav")
        os.makedirs(os.path.dirname(old))
        open(old, "w").close()
        os.utime(old, (0, 0))
        stage, ctx = self.stage(factory)
        self.assertFalse(os.path.exists(old))
        self.assertEqual(factory.last_sweep, [[old]])
        self.stage(factory)  # a second call: no second sweep
        self.assertEqual(len(factory.last_sweep), 1)
        ctx.clock.advance(86400)
        self.assertEqual(len(factory.last_sweep), 2)
        self.successResultOf(factory.stop_service())
        self.assertEqual(ctx.clock.getDelayedCalls(), [])

    def test_one_writer_job_for_every_call(self) -> None:
        """Every chunk_s, one thread job writes the chunks of all the calls being recorded; a
        recording that fails stops only its own call."""
        jobs: list[Any] = []

        def counting(f: Any, *args: Any) -> defer.Deferred:
            jobs.append(f.__name__)
            return sync_run(f, *args)

        factory = RecordFactory(RecordOptions(directory=temp_path(self, "r"), chunk_s=1), run=counting)
        first, ctx = self.stage(factory)
        second = factory(RecordingContext(call=call_info(call_id="c-2"), clock=ctx.clock))
        second.ctx.call.started_at = ctx.call.started_at
        for stage in (first, second):
            stage.on_started(StreamStarted("MZ"))
        self.assertEqual(jobs, [])

        def broken(log: Any, until_s: float) -> None:
            raise OSError(28, "No space left on device")

        second.recording.write = broken
        for _ in range(100):
            ctx.clock.advance(0.02)
            first.on_caller(Audio(b"\xff" * 160))
            second.on_caller(Audio(b"\xff" * 160))
        ctx.clock.advance(0.05)
        self.assertEqual(jobs, ["write_chunks", "write_chunks"])
        self.assertEqual((first.stopped, second.stopped), ("", "write_failed"))
        self.assertIn((Audio, "inbound"), second.ctx.unrouted)
        self.flushLoggedErrors()
        first.close()
        self.assertEqual(jobs[-1], "finish")
        self.assertEqual(ctx.clock.getDelayedCalls(), [])

    def test_writer_behind_is_bounded(self) -> None:
        """A writer that does not finish: frames beyond max_pending_s are dropped and counted."""
        stuck: list[defer.Deferred] = []

        def never(f: Any, *args: Any) -> defer.Deferred:
            d: defer.Deferred = defer.Deferred()
            stuck.append(d)
            return d

        factory = RecordFactory(RecordOptions(directory=temp_path(self, "r"), chunk_s=1, max_pending_s=2), run=never)
        stage, ctx = self.stage(factory)
        stage.on_started(StreamStarted("MZ1"))
        for _ in range(500):  # 10 s of caller audio
            ctx.clock.advance(0.02)
            stage.on_caller(Audio(b"\xff" * 160))
        self.assertLessEqual(stage.pending_frames, 200 + 100)
        self.assertGreater(ctx.counted("record_frames_dropped", reason="writer_behind"), 0)
        stage.close()

    def test_max_duration(self) -> None:
        """Past max_duration_s the stage stops recording (the file keeps what was written)."""
        factory = self.factory(chunk_s=1, max_duration_s=3)
        stage, ctx = self.stage(factory)
        stage.on_started(StreamStarted("MZ1"))
        for _ in range(150):
            stage.on_caller(Audio(audioop.lin2ulaw(tone(160, 2000), 2)))
            ctx.clock.advance(0.02)
        ctx.clock.advance(0.1)
        self.assertEqual(stage.stopped, "max_duration")
        self.assertIn((Audio, "inbound"), ctx.unrouted)
        ctx.clock.advance(10)
        stage.close()
        with open(stage.recording.json_path) as f:
            self.assertEqual(json.load(f)["stopped"], "max_duration")
        with wave.open(stage.recording.wav_path) as w:
            self.assertTrue(3 * RATE <= w.getnframes() <= 3.1 * RATE, w.getnframes())  # to the stop
            left, _ = channels(w.readframes(w.getnframes()))
        self.assertEqual(runs(left)[0][:2], (0, 3 * RATE))

    def test_client_leg_after_transcoder(self) -> None:
        """After the transcoder the stage sees Deepgram's formats; the file is at the caller's rate."""
        factory = self.factory(after_transcoder=True)
        ctx = RecordingContext(call=call_info(leg="client", caller_format=LINEAR16_16K,
                                              upstream_input=MULAW_8K, upstream_output=MULAW_8K))
        stage = factory(ctx)
        stage.on_started(StreamStarted("c"))
        ctx.clock.advance(0.5)
        stage.on_caller(Audio(audioop.lin2ulaw(tone(160, 2000), 2)))
        ctx.clock.advance(0.1)
        stage.close()
        with wave.open(stage.recording.wav_path) as w:
            self.assertEqual(w.getframerate(), 16000)
            left, _ = channels(w.readframes(w.getnframes()))
        self.assertGreater(max(left), 1500)
        self.assertLess(left.index(max(left)) / 16000 - 0.5, 0.01)

    def test_per_frame_cost_is_an_append(self) -> None:
        """The hot path does nothing but append: no disk, no encoding, no timer per frame."""
        factory = self.factory()
        stage, ctx = self.stage(factory)
        stage.on_started(StreamStarted("MZ1"))
        before = len(ctx.clock.getDelayedCalls())
        event = Audio(b"\xff" * 160)
        for _ in range(100):
            self.assertIs(stage.on_caller(event), event)
            self.assertIs(stage.on_agent(event), event)
        self.assertEqual(stage.pending_frames, 200)
        self.assertEqual(bytes(stage._log.caller_audio), event.payload * 100)
        self.assertEqual(len(ctx.clock.getDelayedCalls()), before)
        stage.close()


class OptionsTests(SynchronousTestCase):
    """[record] is validated at start-up."""

    chain = ["auth", "settings", "empty_frames", "record", "transcoder", "keepalive", "call_control", "close_codes"]

    def test_defaults(self) -> None:
        directory = temp_path(self, "rec")
        configured = configure({"gateway": {"chain": self.chain}, "record": {"directory": directory}})
        factory = dict(configured.stages)["record"]
        self.assertEqual(factory.options, RecordOptions(directory=directory))
        self.assertTrue(os.path.isdir(directory))

    def test_refusals(self) -> None:
        directory = temp_path(self, "rec")
        cases = [
            ({}, "record.directory: missing required value"),
            ({"directory": directory, "retention_days": -1}, "record.retention_days: expected at least 0"),
            ({"directory": directory, "s3": {"prefix": "x/"}}, "record.s3.bucket: missing required value"),
            ({"directory": directory, "s3": {"bucket": "b", "endpoint_url": "s3.example"}},
             "record.s3.endpoint_url: expected an http(s) URL"),
            ({"directory": directory, "s3": {"bucket": "b", "buckt": "c"}}, "record.s3.buckt: unknown key"),
            ({"directory": "/proc/no-such-dir/x"}, "record.directory: cannot create"),
        ]
        for section, message in cases:
            with self.assertRaises(ConfigError) as caught:
                configure({"gateway": {"chain": self.chain}, "record": section})
            self.assertIn(message, str(caught.exception))
        with self.assertRaises(ConfigError) as caught:
            configure({"gateway": {"chain": [c for c in self.chain if c != "record"] + ["redact", "record"]},
                       "record": {"directory": directory, "transcript": True}})
        self.assertEqual(caught.exception.key, "gateway.chain")

    def test_position_decides_the_formats(self) -> None:
        """Before the transcoder: the caller's formats; after it: Deepgram's."""
        directory = temp_path(self, "rec")
        after = [c for c in self.chain if c != "record"] + ["record"]
        factory = dict(configure({"gateway": {"chain": after}, "record": {"directory": directory}}).stages)["record"]
        self.assertTrue(factory.options.after_transcoder)


def example_keys_read(test: Any, plugin: str, uncomment: str = "") -> tuple[dict[str, set], str]:
    """
    Load deploy/gateway.example.toml with ``plugin`` added to its chain (and the commented-out
    table ``uncomment`` turned on); returns the keys each section's reader asked for and the file.
    """
    import re

    from gateway.section import Section
    from gateway.testing import load_config

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "deploy", "gateway.example.toml")) as f:
        text = f.read()
    edited = re.sub(r'^chain = \[(.*)\]$', lambda m: f'chain = [{m.group(1)}, "{plugin}", "redact"]',
                    text, count=1, flags=re.M)
    if uncomment:
        block = text[text.index(f"# [{uncomment}]"):]
        block = block[:block.index("\n\n")]
        edited = edited.replace(block, re.sub(r"^# ", "", block, flags=re.M))
    path = temp_path(test, "gateway.toml")
    with open(path, "w") as f:
        f.write(edited.replace('directory = "recordings"', f'directory = "{os.path.dirname(path)}/rec"'))
    seen: dict[str, set] = {}
    original = Section._get

    def recording(self: Any, name: str, *args: Any, **kwargs: Any) -> Any:
        seen.setdefault(self.path, set()).add(name)
        return original(self, name, *args, **kwargs)

    Section._get = recording
    try:
        load_config(path, {"DEEPGRAM_API_KEY": "k", "TWILIO_AUTH_TOKEN": "t",
                           "GATEWAY_PUBLIC_URL": "https://gw.example.com"})
    finally:
        Section._get = original
    return seen, text


class ExampleConfigTests(SynchronousTestCase):
    """deploy/gateway.example.toml documents every [record] and [record.s3] key."""

    def test_every_key_documented(self) -> None:
        import re

        seen, text = example_keys_read(self, "record", uncomment="record.s3")
        self.assertTrue(seen.get("record.s3"))
        for section in ("record", "record.s3"):
            for key in seen[section]:
                self.assertTrue(re.search(rf"^#? ?{re.escape(key)} =", text, re.M)
                                or f"[{section}.{key}]" in text,
                                f"{section}.{key} is not documented in the example")
