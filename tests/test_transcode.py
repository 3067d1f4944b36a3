"""
Tests for gateway.codecs.transcode: every pair of supported formats, odd bytes, chunking down to
one byte, the exact G.711 round trip, and speech against the shipped sox-made clips.
"""

from __future__ import annotations

import itertools
import os
import random

import numpy as np
from twisted.trial.unittest import SynchronousTestCase

from gateway.codecs.formats import (
    LINEAR16_16K,
    LINEAR16_24K,
    LINEAR16_8K,
    MULAW_8K,
    SUPPORTED,
    AudioFormat,
)
from gateway.codecs.g711 import linear16_to_ulaw, ulaw_to_linear16
from gateway.codecs.transcode import Transcoder, make_transcoder
from gateway.codecs.wav import read_wav

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")

PAIRS = [(s, t) for s, t in itertools.product(SUPPORTED, SUPPORTED) if s != t]


def as_linear(data: bytes, fmt: AudioFormat) -> np.ndarray:
    """Audio in ``fmt`` as float samples."""
    if fmt.encoding == "mulaw":
        data = ulaw_to_linear16(data)
    return np.frombuffer(data, "<i2").astype(float)


def snr_db(got: np.ndarray, ref: np.ndarray) -> float:
    """Signal-to-noise ratio of ``got`` against ``ref``, in dB."""
    return float(10 * np.log10(np.sum(ref**2) / max(np.sum((got - ref) ** 2), 1e-9)))


def data_of(name: str) -> bytes:
    """The raw audio of a shipped clip."""
    return read_wav(os.path.join(DATA, name)).data


def speech(fmt: AudioFormat) -> bytes:
    """Half a second of caller-order in ``fmt`` (from the 16 kHz clip)."""
    pcm16 = data_of("caller-order-16k-s16le.wav")[32000:48000]
    t = Transcoder(LINEAR16_16K, fmt)
    return t.convert(pcm16) + t.flush()


def one_shot(source: AudioFormat, target: AudioFormat, data: bytes) -> bytes:
    """Convert ``data`` in one call and flush."""
    t = make_transcoder(source, target)
    return t.convert(data) + t.flush()


class IdentityTests(SynchronousTestCase):
    """A transcoder between equal formats changes nothing."""

    def test_identity(self) -> None:
        """source == target: identity is true and convert returns the very bytes given."""
        for fmt in SUPPORTED:
            t = make_transcoder(fmt, fmt)
            self.assertTrue(t.identity)
            data = b"\x01\x02\x03"
            self.assertIs(t.convert(data), data)
            self.assertEqual((t.flush(), t.delay_ms), (b"", 0.0))

    def test_not_identity(self) -> None:
        """Different formats are never an identity."""
        for source, target in PAIRS:
            self.assertFalse(make_transcoder(source, target).identity, (source, target))

    def test_make_transcoder(self) -> None:
        """make_transcoder builds a Transcoder with the formats it was given."""
        t = make_transcoder(MULAW_8K, LINEAR16_16K)
        self.assertIsInstance(t, Transcoder)
        self.assertEqual((t.source, t.target), (MULAW_8K, LINEAR16_16K))


class FramingTests(SynchronousTestCase):
    """20 ms in, 20 ms out; chunking and odd bytes never change the output."""

    def test_frame_lengths(self) -> None:
        """Every 20 ms frame of every pair gives exactly 20 ms in the target format."""
        for source, target in PAIRS:
            data = speech(source)[: source.bytes_for_ms(400)]
            t = make_transcoder(source, target)
            size = source.bytes_for_ms(20)
            lengths = {len(t.convert(data[i : i + size])) for i in range(0, len(data), size)}
            self.assertEqual(lengths, {target.bytes_for_ms(20)}, (source, target))

    def test_pieces_down_to_one_byte(self) -> None:
        """Random pieces, odd ones and single bytes included, give the one-shot bytes."""
        rnd = random.Random(11)
        for source, target in PAIRS:
            data = speech(source)[: source.bytes_for_ms(200)]
            expected = one_shot(source, target, data)
            t = make_transcoder(source, target)
            out, i = [], 0
            while i < len(data):
                n = rnd.choice((0, 1, 1, 2, 3, 5, rnd.randrange(700)))
                out.append(t.convert(data[i : i + n]))
                i += n
            self.assertEqual(b"".join(out) + t.flush(), expected, (source, target))

    def test_odd_frames_from_deepgram(self) -> None:
        """Odd-length linear16 frames never raise; the odd byte is carried to the next frame."""
        data = speech(LINEAR16_24K)
        expected = one_shot(LINEAR16_24K, MULAW_8K, data)
        t = make_transcoder(LINEAR16_24K, MULAW_8K)
        self.assertEqual(t.convert(data[:1]), b"")
        out = [t.convert(data[1:961]), t.convert(data[961:1923]), t.convert(data[1923:])]
        self.assertEqual(b"".join(out) + t.flush(), expected)

    def test_same_rate_odd_bytes(self) -> None:
        """linear16 8 kHz -> mu-law 8 kHz carries an odd byte too (no resampler involved)."""
        t = make_transcoder(LINEAR16_8K, MULAW_8K)
        pcm = b"".join(int(v).to_bytes(2, "little", signed=True) for v in (1000, -2000, 3000))
        self.assertEqual(t.convert(pcm[:3]), linear16_to_ulaw(pcm[:2]))
        self.assertEqual(t.convert(pcm[3:]), linear16_to_ulaw(pcm[2:]))
        self.assertEqual(t.flush(), b"")

    def test_flush(self) -> None:
        """flush returns the filter's delay worth, drops a lone byte and starts a new stream."""
        for source, target in PAIRS:
            data = speech(source)[: source.bytes_for_ms(40)]
            t = make_transcoder(source, target)
            first = t.convert(data)
            t.convert(b"\x00" if source.encoding == "linear16" else b"")
            tail = t.flush()
            expected_ms = t.delay_ms if source.sample_rate_hz != target.sample_rate_hz else 0
            self.assertEqual(len(tail), round(expected_ms * target.sample_rate_hz / 1000)
                             * target.sample_width, (source, target))
            self.assertEqual(t.convert(data), first, (source, target))

    def test_reset(self) -> None:
        """reset drops the carried byte and the filter history."""
        data = speech(LINEAR16_16K)[:640]
        t = make_transcoder(LINEAR16_16K, MULAW_8K)
        first = t.convert(data)
        t.convert(data[:333])
        t.reset()
        self.assertEqual(t.convert(data), first)

    def test_empty(self) -> None:
        """Empty input gives empty output for every pair."""
        for source, target in PAIRS:
            self.assertEqual(make_transcoder(source, target).convert(b""), b"")

    def test_delay(self) -> None:
        """Conversions that resample delay by at most 2 ms; the others not at all."""
        for source, target in PAIRS:
            t = make_transcoder(source, target)
            if source.sample_rate_hz == target.sample_rate_hz:
                self.assertEqual(t.delay_ms, 0.0)
            else:
                self.assertTrue(0 < t.delay_ms <= 2.0, (source, target))


class RoundTripTests(SynchronousTestCase):
    """Exact where G.711 allows it, near-exact through resampling."""

    def test_mulaw_linear_mulaw_exact(self) -> None:
        """All 256 mu-law codes survive linear16 8 kHz and back; 0x7F (-0) becomes 0xFF (+0)."""
        codes = bytes(range(256))
        pcm = make_transcoder(MULAW_8K, LINEAR16_8K).convert(codes)
        back = make_transcoder(LINEAR16_8K, MULAW_8K).convert(pcm)
        self.assertEqual(back, codes.replace(b"\x7f", b"\xff"))
        self.assertEqual(ulaw_to_linear16(b"\x7f"), ulaw_to_linear16(b"\xff"))

    def test_mulaw_clip_round_trip(self) -> None:
        """The shipped 8 kHz mu-law clip round-trips through linear16 8 kHz byte for byte."""
        data = data_of("caller-order-8k-mulaw.wav").replace(b"\x7f", b"\xff")
        there = make_transcoder(MULAW_8K, LINEAR16_8K)
        back = make_transcoder(LINEAR16_8K, MULAW_8K)
        got = b"".join(back.convert(there.convert(data[i : i + 160]))
                       for i in range(0, len(data), 160))
        self.assertEqual(got, data)

    def test_mulaw_through_16k(self) -> None:
        """mu-law 8 kHz -> 16 kHz -> mu-law 8 kHz: a 1 kHz tone keeps an SNR above 50 dB."""
        t = np.arange(8000) / 8000
        tone = linear16_to_ulaw(np.round(10000 * np.sin(2 * np.pi * 1000 * t)).astype("<i2")
                                .tobytes())
        up = make_transcoder(MULAW_8K, LINEAR16_16K)
        down = make_transcoder(LINEAR16_16K, MULAW_8K)
        got = as_linear(down.convert(up.convert(tone)), MULAW_8K)
        delay = round((up.delay_ms + down.delay_ms) * 8)
        ref = as_linear(tone, MULAW_8K)
        self.assertGreater(snr_db(got[delay + 40 :], ref[40 : len(got) - delay]), 50)


class SpeechTests(SynchronousTestCase):
    """Speech converted here against the same words converted by sox's very-high-quality filter."""

    def test_16k_to_mulaw_8k_against_sox(self) -> None:
        """caller-order 16 kHz -> mu-law 8 kHz matches the shipped 8 kHz clip above 28 dB."""
        t = make_transcoder(LINEAR16_16K, MULAW_8K)
        pcm = data_of("caller-order-16k-s16le.wav")
        got = b"".join(t.convert(pcm[i : i + 640]) for i in range(0, len(pcm), 640)) + t.flush()
        got = as_linear(got, MULAW_8K)[round(t.delay_ms * 8) :]
        ref = as_linear(data_of("caller-order-8k-mulaw.wav"), MULAW_8K)
        self.assertEqual(len(got), len(ref))
        # Both sides are mu-law (about 38 dB for speech), and sox's passband reaches higher.
        self.assertGreater(snr_db(got, ref), 28)

    def test_16k_to_linear_8k_against_sox_in_band(self) -> None:
        """Below 3.4 kHz, 16 -> 8 kHz linear16 matches sox's clip to mu-law precision (> 33 dB)."""
        t = make_transcoder(LINEAR16_16K, LINEAR16_8K)
        got = as_linear(t.convert(data_of("caller-order-16k-s16le.wav")) + t.flush(), LINEAR16_8K)
        got = got[round(t.delay_ms * 8) :]
        ref = as_linear(data_of("caller-order-8k-mulaw.wav"), MULAW_8K)
        self.assertGreater(snr_db(band(got, 8000, 3400), band(ref, 8000, 3400)), 33)

    def test_mulaw_8k_to_16k_against_ideal(self) -> None:
        """The 8 kHz clip upsampled matches an ideal (FFT) interpolation below 3.4 kHz (> 70 dB)."""
        mulaw = data_of("caller-order-8k-mulaw.wav")
        t = make_transcoder(MULAW_8K, LINEAR16_16K)
        got = as_linear(t.convert(mulaw) + t.flush(), LINEAR16_16K)[round(t.delay_ms * 16) :]
        x = as_linear(mulaw, MULAW_8K)
        ideal = np.fft.irfft(np.fft.rfft(x), 2 * len(x)) * 2
        self.assertEqual(len(got), len(ideal))
        self.assertGreater(snr_db(band(got, 16000, 3400), band(ideal, 16000, 3400)), 70)

    def test_agent_24k_to_mulaw(self) -> None:
        """
        The agent's voice made 24 kHz here, then -> mu-law 8 kHz, matches sox's 8 kHz clip:
        above 32 dB below 3.4 kHz, above 25 dB in all (this voice has more energy at 3.4-4 kHz,
        which sox's passband keeps and ours rolls off).
        """
        pcm16 = data_of("agent-greeting-16k-s16le.wav")
        to24 = make_transcoder(LINEAR16_16K, LINEAR16_24K)
        pcm24 = to24.convert(pcm16) + to24.flush()
        pcm24 = pcm24[round(to24.delay_ms * 24) * 2 :]
        direct = make_transcoder(LINEAR16_24K, MULAW_8K)
        got = as_linear(direct.convert(pcm24) + direct.flush(), MULAW_8K)
        got = got[round(direct.delay_ms * 8) :]
        ref = as_linear(data_of("agent-greeting-8k-mulaw.wav"), MULAW_8K)
        self.assertEqual(len(got), len(ref))
        self.assertGreater(snr_db(band(got, 8000, 3400), band(ref, 8000, 3400)), 32)
        self.assertGreater(snr_db(got, ref), 25)


def band(x: np.ndarray, rate_hz: int, top_hz: float) -> np.ndarray:
    """``x`` with everything above ``top_hz`` removed (an ideal, FFT-domain low-pass)."""
    spectrum = np.fft.rfft(x)
    spectrum[np.fft.rfftfreq(len(x), 1 / rate_hz) > top_hz] = 0
    return np.fft.irfft(spectrum, len(x))
