"""
The emulator's streaming STT endpoint (/v1/listen), driven by the ``websockets`` sync client.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from gateway.emulator.faults import REASONS
from tests.test_emulator import Client, EmulatorTestCase, clip, frames, run_client

ORDER = clip("caller-order-8k-mulaw.wav")
SILENCE = b"\xff" * 16000  # 2 s of mu-law silence
QUERY = ("?encoding=mulaw&sample_rate=8000&channels=1&model=nova-2&language=en&interim_results=true"
         "&vad_events=true&utterance_end_ms=1000&endpointing=300")


def send(client: Client, audio: bytes, size: int = 1600) -> None:
    for frame in frames(audio, size):
        client.send(frame)


class ListenTranscriptTests(EmulatorTestCase):
    """Results, SpeechStarted, UtteranceEnd and Metadata from the audio received."""

    @defer.inlineCallbacks
    def test_whole_stream(self) -> None:
        """Interim and final Results timed on the audio, SpeechStarted, UtteranceEnd, Metadata, 1000."""

        def script(client: Client) -> None:
            send(client, SILENCE[:4000] + ORDER + SILENCE)
            client.send_json({"type": "CloseStream"})
            client.drain()

        outcome = yield run_client(self.emu.url("listen") + QUERY, script)
        session = self.emu.sessions[0]
        self.assertEqual(session.query["model"], "nova-2")
        self.assertEqual(outcome.close_code, 1000)
        types = outcome.types
        self.assertEqual(types[-1], "Metadata")
        self.assertIn("SpeechStarted", types)
        self.assertIn("UtteranceEnd", types)
        started = outcome.texts[types.index("SpeechStarted")]
        self.assertLess(abs(started["timestamp"] - 0.5), 0.05)  # 4000 bytes of silence first
        results = [m for m in outcome.texts if m["type"] == "Results"]
        interim = [r for r in results if not r["is_final"]]
        final = [r for r in results if r["is_final"]]
        self.assertTrue(interim)
        spoken = [r for r in final if r["channel"]["alternatives"][0]["transcript"]]
        self.assertEqual(spoken[0]["channel"]["alternatives"][0]["transcript"],
                         "Hello, I would like to check the status of my order.")
        self.assertTrue(spoken[0]["speech_final"])
        first = spoken[0]["channel"]["alternatives"][0]["words"]
        last = spoken[-1]["channel"]["alternatives"][0]["words"]
        self.assertLess(abs(first[0]["start"] - 0.5), 0.05)  # speech starts 0.04 s into the clip
        self.assertLess(abs(last[-1]["end"] - (0.5 + 4.98)), 0.05)  # and ends 4.98 s into it
        # Final segments tile the stream: each starts where the last ended, up to the audio's end.
        total = (4000 + len(ORDER) + len(SILENCE)) / 8000
        position = 0.0
        for r in final:
            self.assertAlmostEqual(r["start"], position, places=2)
            position = r["start"] + r["duration"]
        self.assertLess(abs(position - total), 0.01)
        metadata = outcome.texts[-1]
        self.assertEqual(metadata["request_id"], session.request_id)
        self.assertLess(abs(metadata["duration"] - total), 0.01)
        self.assertEqual(results[0]["metadata"]["request_id"], session.request_id)
        self.assertEqual(results[0]["channel_index"], [0, 1])
        self.assertEqual(session.texts, [{"type": "CloseStream"}])
        self.assertEqual(session.audio, SILENCE[:4000] + ORDER + SILENCE)

    @defer.inlineCallbacks
    def test_plain_query(self) -> None:
        """Without interim_results, vad_events or utterance_end_ms: only final Results."""

        def script(client: Client) -> None:
            send(client, ORDER + SILENCE)
            client.send_json({"type": "CloseStream"})
            client.drain()

        outcome = yield run_client(self.emu.url("listen") + "?encoding=mulaw&sample_rate=8000", script)
        self.assertEqual(set(outcome.types), {"Results", "Metadata"})
        self.assertTrue(all(m["is_final"] for m in outcome.texts if m["type"] == "Results"))

    @defer.inlineCallbacks
    def test_linear16(self) -> None:
        """linear16 16 kHz: timings count 2-byte samples at the declared rate."""
        audio = clip("caller-yes-16k-s16le.wav")

        def script(client: Client) -> None:
            send(client, audio + b"\x00" * 32000, 640)
            client.send_json({"type": "CloseStream"})
            client.drain()

        outcome = yield run_client(self.emu.url("listen") + "?encoding=linear16&sample_rate=16000", script)
        self.assertLess(abs(outcome.texts[-1]["duration"] - (len(audio) + 32000) / 32000), 0.01)

    @defer.inlineCallbacks
    def test_finalize(self) -> None:
        """Finalize mid-speech: a final result with from_finalize true."""

        def script(client: Client) -> dict[str, Any]:
            send(client, ORDER[:16000])
            client.send_json({"type": "Finalize"})
            result = client.until("Results")
            while not result["is_final"]:
                result = client.until("Results")
            return result

        outcome = yield run_client(self.emu.url("listen") + "?encoding=mulaw&sample_rate=8000", script)
        self.assertTrue(outcome.value["from_finalize"])
        self.assertTrue(outcome.value["channel"]["alternatives"][0]["transcript"])

    @defer.inlineCallbacks
    def test_empty_frame_ends_stream(self) -> None:
        """An empty binary frame is treated as end of stream: Metadata, then 1000."""

        def script(client: Client) -> None:
            send(client, SILENCE)
            client.send(b"")
            client.drain()

        outcome = yield run_client(self.emu.url("listen") + "?encoding=mulaw&sample_rate=8000", script)
        self.assertEqual((outcome.types[-1], outcome.close_code), ("Metadata", 1000))


class ListenFailureTests(EmulatorTestCase):
    """NET-0001 and DATA-0000."""

    options = {"net0001_timeout_s": 0.4}

    @defer.inlineCallbacks
    def test_net0001(self) -> None:
        """No audio within the window: 1011 with Deepgram's NET-0001 sentence."""
        outcome = yield run_client(self.emu.url("listen") + "?encoding=mulaw&sample_rate=8000",
                                   lambda c: c.drain())
        self.assertEqual((outcome.close_code, outcome.close_reason), (1011, REASONS["NET-0001"]))
        self.assertIn("dpgr.am/net0001", outcome.close_reason)
        self.assertEqual(self.emu.sessions[0].sent_close, (1011, REASONS["NET-0001"]))

    @defer.inlineCallbacks
    def test_keepalive_alone_strict(self) -> None:
        """Strict reading (default): KeepAlive alone does not reset the NET-0001 timer."""

        def script(client: Client) -> None:
            for _ in range(10):
                client.send_json({"type": "KeepAlive"})
                client.quiet(0.1)

        outcome = yield run_client(self.emu.url("listen") + "?encoding=mulaw&sample_rate=8000", script)
        self.assertEqual(outcome.close_code, 1011)

    @defer.inlineCallbacks
    def test_keepalive_documented(self) -> None:
        """keepalive_counts=True: KeepAlive every 0.1 s keeps the stream open past the window."""
        self.emu.options = self.emu.options.__class__(net0001_timeout_s=0.4, keepalive_counts=True)

        def script(client: Client) -> None:
            for _ in range(10):
                client.send_json({"type": "KeepAlive"})
                client.quiet(0.1)
            client.send_json({"type": "CloseStream"})
            client.drain()

        outcome = yield run_client(self.emu.url("listen") + "?encoding=mulaw&sample_rate=8000", script)
        self.assertEqual(outcome.close_code, 1000)

    @defer.inlineCallbacks
    def test_audio_resets_timer(self) -> None:
        """Audio every 0.1 s keeps the stream open past the window."""

        def script(client: Client) -> None:
            for _ in range(10):
                client.send(b"\xff" * 160)
                client.quiet(0.1)
            client.send_json({"type": "CloseStream"})
            client.drain()

        outcome = yield run_client(self.emu.url("listen") + "?encoding=mulaw&sample_rate=8000", script)
        self.assertEqual(outcome.close_code, 1000)

    @defer.inlineCallbacks
    def test_data0000(self) -> None:
        """Odd-length linear16 frames and container magic on raw audio: 1008 DATA-0000."""
        for query, frame in [("?encoding=linear16&sample_rate=16000", b"\x00" * 641),
                             ("?encoding=mulaw&sample_rate=8000", b"RIFF\x24\x00\x00\x00WAVEfmt "),
                             ("?encoding=linear16&sample_rate=16000", b"OggS" + b"\x00" * 60),
                             ("?encoding=linear16&sample_rate=8000&channels=2", b"\x00" * 642)]:
            def script(client: Client, frame: bytes = frame) -> None:
                client.send(frame)
                client.drain()

            outcome = yield run_client(self.emu.url("listen") + query, script)
            self.assertEqual(outcome.close_code, 1008, query)
            self.assertIn("data0000", outcome.close_reason)
