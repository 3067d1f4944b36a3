"""
Hearing the caller without ASR: decoding raw audio, sanity checks, and an energy-based detector.

Sans-IO. Everything is measured in audio time (samples received in the declared format), never
wall-clock time, so a client that sends faster than real time gets the same events.

The format check (`audio_problem`) is the emulator's heuristic for Deepgram's ``DATA-0000``:
a raw stream (linear16, linear32, mulaw, alaw) that starts with a container's magic bytes
(``RIFF``, ``OggS``, ``ID3``, ``fLaC``, ``#!AMR``, ``caff``, EBML/WebM), or a linear16/linear32
frame whose length is not a whole number of samples across all channels, cannot be what was
declared.
"""

from __future__ import annotations

import math

import attrs
import numpy as np

from gateway.codecs.g711 import audioop

__all__ = [
    "DECODABLE",
    "SAMPLE_WIDTH",
    "decode",
    "audio_problem",
    "SpeechStarted",
    "SpeechEnded",
    "SpeechDetector",
]

#: Encodings the emulator decodes, with their bytes per sample.
SAMPLE_WIDTH = {"linear16": 2, "linear32": 4, "mulaw": 1, "alaw": 1}
DECODABLE = tuple(SAMPLE_WIDTH)

_MAGIC = (b"RIFF", b"OggS", b"ID3", b"fLaC", b"#!AMR", b"caff", b"\x1a\x45\xdf\xa3")


def decode(data: bytes, encoding: str, channels: int = 1) -> np.ndarray:
    """Samples of the first channel of ``data`` as float64 in [-1, 1). Trailing partial samples are ignored."""
    width = SAMPLE_WIDTH[encoding]
    usable = len(data) - len(data) % (width * channels)
    data = data[:usable]
    if encoding == "mulaw":
        samples = np.frombuffer(audioop.ulaw2lin(data, 2), "<i2") / 32768.0
    elif encoding == "alaw":
        samples = np.frombuffer(audioop.alaw2lin(data, 2), "<i2") / 32768.0
    elif encoding == "linear16":
        samples = np.frombuffer(data, "<i2") / 32768.0
    else:
        samples = np.frombuffer(data, "<i4") / 2147483648.0
    return samples[::channels] if channels > 1 else samples


def audio_problem(frame: bytes, encoding: str, channels: int, first: bool) -> str | None:
    """Why ``frame`` cannot be raw ``encoding`` audio, or None. ``first``: the stream's first frame."""
    if encoding not in SAMPLE_WIDTH:
        return None  # containerised or compressed: the emulator does not judge it
    if first:
        for magic in _MAGIC:
            if frame.startswith(magic):
                return f"audio starts with container magic {magic!r}, declared raw {encoding}"
    block = SAMPLE_WIDTH[encoding] * channels
    if block > 1 and len(frame) % block:
        return f"{encoding} frame of {len(frame)} bytes is not a whole number of {block}-byte samples"
    return None


@attrs.frozen
class SpeechStarted:
    """Speech began at ``start_s`` (audio time of its first loud analysis frame)."""

    start_s: float


@attrs.frozen
class SpeechEnded:
    """Speech that began at ``start_s`` ended at ``end_s``; it was noticed at ``detected_s``."""

    start_s: float
    end_s: float
    detected_s: float


@attrs.define
class SpeechDetector:
    """
    Energy-based voice activity detection over 20 ms analysis frames.

    A frame is loud when its RMS level is at or above ``threshold_dbfs``. Speech starts after
    ``start_ms`` of consecutive loud frames and ends after ``end_ms`` of consecutive quiet ones.
    Feed samples (from `decode`) with `feed`; it returns the events in order.
    """

    sample_rate_hz: int
    threshold_dbfs: float = -40.0
    start_ms: int = 60
    end_ms: int = 600
    frame_ms: int = 20
    samples_seen: int = 0
    in_speech: bool = False
    _carry: np.ndarray = attrs.field(factory=lambda: np.zeros(0))
    _loud_run: int = 0
    _quiet_run: int = 0
    _run_start: int = 0
    _speech_start: int = 0
    _last_loud_end: int = 0

    @property
    def now_s(self) -> float:
        """Audio time received so far, in seconds."""
        return self.samples_seen / self.sample_rate_hz

    @property
    def speech_start_s(self) -> float:
        """Start of the current (or last) speech, in seconds."""
        return self._speech_start / self.sample_rate_hz

    def feed(self, samples: np.ndarray) -> list[SpeechStarted | SpeechEnded]:
        """Analyse more samples; return the speech starts and ends they complete."""
        frame = max(1, self.sample_rate_hz * self.frame_ms // 1000)
        threshold = 10 ** (self.threshold_dbfs / 20)
        start_frames = max(1, math.ceil(self.start_ms / self.frame_ms))
        end_frames = max(1, math.ceil(self.end_ms / self.frame_ms))
        events: list[SpeechStarted | SpeechEnded] = []
        buf = np.concatenate((self._carry, samples)) if len(self._carry) else samples
        base = self.samples_seen - len(self._carry)
        n_frames = len(buf) // frame
        if n_frames:
            blocks = buf[: n_frames * frame].reshape(n_frames, frame)
            loud = np.sqrt(np.mean(blocks * blocks, axis=1)) >= threshold
            for i, is_loud in enumerate(loud):
                begin = base + i * frame
                if is_loud:
                    if self._loud_run == 0:
                        self._run_start = begin
                    self._loud_run += 1
                    self._quiet_run = 0
                    self._last_loud_end = begin + frame
                    if not self.in_speech and self._loud_run >= start_frames:
                        self.in_speech = True
                        self._speech_start = self._run_start
                        events.append(SpeechStarted(self._run_start / self.sample_rate_hz))
                else:
                    self._loud_run = 0
                    self._quiet_run += 1
                    if self.in_speech and self._quiet_run >= end_frames:
                        self.in_speech = False
                        rate = self.sample_rate_hz
                        events.append(SpeechEnded(self._speech_start / rate,
                                                  self._last_loud_end / rate, (begin + frame) / rate))
        self._carry = buf[n_frames * frame:].copy()
        self.samples_seen += len(samples)
        return events

    def force_end(self) -> SpeechEnded | None:
        """End the current speech now (Finalize, end of stream); None when not in speech."""
        if not self.in_speech:
            return None
        self.in_speech = False
        self._loud_run = self._quiet_run = 0
        rate = self.sample_rate_hz
        return SpeechEnded(self._speech_start / rate, self._last_loud_end / rate, self.now_s)
