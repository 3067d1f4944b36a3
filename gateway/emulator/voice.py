"""
The agent's voice: a bundled clip in whatever raw format the Settings asked for, cut into chunks.

The emulator does no TTS; every agent turn plays the same recorded sentence. The clip closest to
the requested format is converted: mu-law 8 kHz and linear16 16 kHz are used as they are, other
rates are interpolated with numpy (linear interpolation is enough for a test signal), and the
result is encoded as linear16, mulaw or alaw.
"""

from __future__ import annotations

import os

import numpy as np

from gateway.codecs.g711 import audioop
from gateway.codecs.wav import WavAudio, read_wav

__all__ = ["OUTPUT_ENCODINGS", "CLIPS", "agent_audio", "chunks"]

#: Output encodings the emulator can produce (Deepgram also offers compressed ones).
OUTPUT_ENCODINGS = ("linear16", "mulaw", "alaw")

_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")
CLIPS = (
    os.path.join(_DATA, "agent-greeting-8k-mulaw.wav"),
    os.path.join(_DATA, "agent-greeting-16k-s16le.wav"),
)

_cache: dict[tuple[str, int], bytes] = {}


def _linear(clip: WavAudio) -> np.ndarray:
    data = audioop.ulaw2lin(clip.data, 2) if clip.encoding == "mulaw" else clip.data
    return np.frombuffer(data, "<i2").astype(np.float64)


def _resample(samples: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    if rate_in == rate_out:
        return samples
    n_out = int(round(len(samples) * rate_out / rate_in))
    positions = np.arange(n_out) * (rate_in / rate_out)
    return np.interp(positions, np.arange(len(samples)), samples)


def agent_audio(encoding: str, sample_rate_hz: int) -> bytes:
    """The agent clip as raw mono ``encoding`` at ``sample_rate_hz`` (cached per format)."""
    if encoding not in OUTPUT_ENCODINGS:
        raise ValueError(f"the emulator cannot produce {encoding!r} audio; use one of {OUTPUT_ENCODINGS}")
    key = (encoding, sample_rate_hz)
    if key not in _cache:
        mulaw, s16 = (read_wav(path) for path in CLIPS)
        if key == ("mulaw", mulaw.sample_rate):
            _cache[key] = mulaw.data
        elif key == ("linear16", s16.sample_rate):
            _cache[key] = s16.data
        else:
            source = mulaw if sample_rate_hz <= mulaw.sample_rate else s16
            samples = _resample(_linear(source), source.sample_rate, sample_rate_hz)
            pcm = np.clip(np.round(samples), -32768, 32767).astype("<i2").tobytes()
            if encoding == "mulaw":
                pcm = audioop.lin2ulaw(pcm, 2)
            elif encoding == "alaw":
                pcm = audioop.lin2alaw(pcm, 2)
            _cache[key] = pcm
    return _cache[key]


def chunks(audio: bytes, encoding: str, sample_rate_hz: int, chunk_ms: int) -> list[bytes]:
    """``audio`` cut into ``chunk_ms`` pieces (whole samples; the last may be shorter)."""
    width = 1 if encoding in ("mulaw", "alaw") else 2
    size = max(width, sample_rate_hz * chunk_ms // 1000 * width)
    return [audio[i:i + size] for i in range(0, len(audio), size)]
