"""Tests for gateway.latency: which caller frames count as voiced."""

from __future__ import annotations

import random

from twisted.trial.unittest import SynchronousTestCase

from gateway.codecs.g711 import audioop
from gateway.latency import VOICED_PEAK, _linear16_voiced, _mulaw_voiced


def decoded_peak_voiced(payload: bytes) -> bool:
    """The definition: the frame decoded to 16-bit samples has one of magnitude VOICED_PEAK or more."""
    return bool(payload) and audioop.max(audioop.ulaw2lin(payload, 2), 2) >= VOICED_PEAK


class MulawVoicedTests(SynchronousTestCase):
    """The mu-law check by table gives the verdict of decoding the frame and taking its peak."""

    def test_every_code(self) -> None:
        """Each of the 256 codes alone, and each in a frame of silence."""
        for code in range(256):
            one = bytes((code,))
            self.assertEqual(_mulaw_voiced(one), decoded_peak_voiced(one), code)
            frame = b"\xff" * 80 + one + b"\xff" * 79
            self.assertEqual(_mulaw_voiced(frame), decoded_peak_voiced(frame), code)

    def test_random_frames(self) -> None:
        """Frames of quiet and loud codes mixed, of every length up to two frames."""
        rng = random.Random(21)
        quiet = [c for c in range(256) if not decoded_peak_voiced(bytes((c,)))]
        loud = [c for c in range(256) if decoded_peak_voiced(bytes((c,)))]
        self.assertTrue(quiet and loud)
        for n in range(2000):
            size = rng.randrange(0, 321)
            codes = [rng.choice(quiet) for _ in range(size)]
            if size and n % 2:
                codes[rng.randrange(size)] = rng.choice(loud)
            frame = bytes(codes)
            self.assertEqual(_mulaw_voiced(frame), decoded_peak_voiced(frame))

    def test_empty(self) -> None:
        """An empty frame is not voiced (either format)."""
        self.assertFalse(_mulaw_voiced(b""))
        self.assertFalse(_linear16_voiced(b""))
