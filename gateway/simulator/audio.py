"""
The caller's audio: converting a WAV clip into what each protocol sends, framing it, and finding
where the speech in it ends.

Twilio carries mu-law 8 kHz; raw-audio clients send PCM s16le 16 kHz mono. The conversions here
are deliberately simple (pair averaging, sample repetition, linear interpolation): the simulator
needs plausible audio, not studio resampling, and a clip already in the target format passes
through byte for byte.
"""

from __future__ import annotations

import os

import numpy as np

from gateway.codecs.g711 import linear16_to_ulaw, ulaw_to_linear16
from gateway.codecs.wav import WavAudio

__all__ = [
    "DATA_DIR",
    "default_clip_path",
    "to_mulaw_8k",
    "to_linear16_16k",
    "speech_end_bytes",
]

#: The clips shipped with the package (``gateway/data``).
DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")

_DEFAULT_CLIPS = {
    "twilio": "caller-order-8k-mulaw.wav",
    "client": "caller-order-16k-s16le.wav",
}

#: RMS (of 16-bit samples) above which a 20 ms frame counts as speech: about -36 dBFS.
SPEECH_RMS = 500.0


def default_clip_path(mode: str) -> str:
    """The packaged caller clip for ``mode`` (``twilio`` or ``client``)."""
    return os.path.join(DATA_DIR, _DEFAULT_CLIPS[mode])


def _linear_samples(audio: WavAudio) -> np.ndarray:
    """The clip as mono int16 samples at its own rate (channels averaged)."""
    if audio.encoding == "mulaw":
        pcm = ulaw_to_linear16(audio.data)
    elif audio.encoding == "linear16":
        pcm = audio.data[: len(audio.data) - len(audio.data) % (2 * audio.channels)]
    else:
        raise ValueError(f"cannot play {audio.encoding!r} audio; expected mulaw or linear16")
    samples = np.frombuffer(pcm, dtype="<i2")
    if audio.channels > 1:
        usable = len(samples) - len(samples) % audio.channels
        samples = samples[:usable].reshape(-1, audio.channels).mean(axis=1).astype("<i2")
    return samples


def _resample(samples: np.ndarray, rate_hz: int, target_hz: int) -> np.ndarray:
    """Simple rate change: block averages for whole-number ratios down, repetition up, else interp."""
    if rate_hz == target_hz or len(samples) == 0:
        return samples
    if rate_hz > target_hz and rate_hz % target_hz == 0:
        ratio = rate_hz // target_hz
        usable = len(samples) - len(samples) % ratio
        blocks = samples[:usable].astype(np.int32).reshape(-1, ratio)
        return (blocks.sum(axis=1) // ratio).astype("<i2")
    if target_hz > rate_hz and target_hz % rate_hz == 0:
        return np.repeat(samples, target_hz // rate_hz)
    count = int(len(samples) * target_hz / rate_hz)
    positions = np.arange(count) * (rate_hz / target_hz)
    return np.interp(positions, np.arange(len(samples)), samples).astype("<i2")


def to_mulaw_8k(audio: WavAudio) -> bytes:
    """What Twilio would send for this clip: mu-law, 8 kHz, mono (mu-law 8 kHz mono as is)."""
    if audio.encoding == "mulaw" and audio.sample_rate == 8000 and audio.channels == 1:
        return audio.data
    samples = _resample(_linear_samples(audio), audio.sample_rate, 8000)
    return linear16_to_ulaw(samples.astype("<i2").tobytes())


def to_linear16_16k(audio: WavAudio) -> bytes:
    """What a raw-audio client sends for this clip: PCM s16le, 16 kHz, mono (as is if already so)."""
    if audio.encoding == "linear16" and audio.sample_rate == 16000 and audio.channels == 1:
        return audio.data[: len(audio.data) - len(audio.data) % 2]
    samples = _resample(_linear_samples(audio), audio.sample_rate, 16000)
    return samples.astype("<i2").tobytes()


def speech_end_bytes(data: bytes, encoding: str, frame_bytes: int) -> int:
    """
    The byte offset in ``data`` where the last frame holding speech ends.

    A frame holds speech when its RMS is above `SPEECH_RMS`. A clip with no such frame counts as
    speech throughout (its end is returned), so the latency figure still means something.
    """
    if not data:
        return 0
    pcm = ulaw_to_linear16(data) if encoding == "mulaw" else data[: len(data) - len(data) % 2]
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    per_frame = frame_bytes if encoding == "mulaw" else frame_bytes // 2
    frames = (len(samples) + per_frame - 1) // per_frame
    padded = np.zeros(frames * per_frame)
    padded[: len(samples)] = samples
    rms = np.sqrt((padded.reshape(frames, per_frame) ** 2).mean(axis=1))
    loud = np.nonzero(rms > SPEECH_RMS)[0]
    if len(loud) == 0:
        return len(data)
    return min(len(data), (int(loud[-1]) + 1) * frame_bytes)
