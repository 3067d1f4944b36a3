"""
Tests for gateway.codecs.resample: filter design, quality against exact references, no aliasing,
streaming equal to one-shot conversion, per-frame output lengths, and speech against sox.

References are computed, not recorded: a tone or a chirp is a formula, so the ideal resampled
signal is the same formula sampled at the output rate and delayed by the filter's group delay.
"""

from __future__ import annotations

import os
import random

import numpy as np
from twisted.trial.unittest import SynchronousTestCase

from gateway.codecs.resample import Resampler, design_filter
from gateway.codecs.wav import read_wav

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")

#: Every conversion the gateway makes, and the browser rates.
PAIRS = (
    (8000, 16000),
    (16000, 8000),
    (8000, 24000),
    (24000, 8000),
    (16000, 24000),
    (24000, 16000),
    (48000, 16000),
    (44100, 16000),
)


def pcm(samples: np.ndarray) -> bytes:
    """Round float samples to s16le bytes."""
    return np.round(samples).astype("<i2").tobytes()


def floats(data: bytes) -> np.ndarray:
    """s16le bytes as float samples."""
    return np.frombuffer(data, "<i2").astype(float)


def snr_db(got: np.ndarray, ref: np.ndarray) -> float:
    """Signal-to-noise ratio of ``got`` against ``ref``, in dB."""
    return float(10 * np.log10(np.sum(ref**2) / max(np.sum((got - ref) ** 2), 1e-9)))


def convert(data: bytes, in_rate_hz: int, out_rate_hz: int) -> tuple[np.ndarray, int]:
    """One-shot conversion with the tail flushed; returns the output and the delay in samples."""
    r = Resampler(in_rate_hz, out_rate_hz)
    return floats(r.process(data) + r.flush()), r.delay_samples


def clip(name: str) -> np.ndarray:
    """A linear16 test clip as floats."""
    wav = read_wav(os.path.join(DATA, name))
    assert wav.encoding == "linear16" and wav.channels == 1
    return floats(wav.data)


def saturating(rng: np.random.Generator, n: int) -> np.ndarray:
    """A full-scale square wave plus noise, ``n`` samples: its filtered overshoot saturates."""
    x = np.tile(np.repeat([32767.0, -32768.0], 30), n // 60 + 1)[:n]
    return np.clip(x + rng.normal(0, 3000, len(x)), -32768, 32767).round()


def direct_form(x: np.ndarray, in_rate_hz: int, out_rate_hz: int, count: int) -> np.ndarray:
    """
    The first ``count`` output samples by the textbook definition: zero-stuff by L, convolve with
    the prototype, keep every M-th sample, round, saturate.
    """
    d = design_filter(in_rate_hz, out_rate_hz)
    stuffed = np.zeros((len(x) + d.delay) * d.up)
    stuffed[:: d.up][: len(x)] = x
    taps = d.taps[::-1]
    expected = []
    for m in range(count):
        j = m * d.down  # output m is prototype-rate sample j; taps reach back to j - 2D
        lo = max(0, j - len(taps) + 1)
        expected.append(np.dot(stuffed[lo : j + 1], taps[len(taps) - (j + 1 - lo) :]))
    return np.clip(np.rint(np.array(expected) * 2.0**-30), -32768, 32767)


class DesignTests(SynchronousTestCase):
    """The filters meet their specification."""

    def test_delay(self) -> None:
        """The group delay is at most 2 ms and a whole number of output samples."""
        for a, b in PAIRS:
            d = design_filter(a, b)
            self.assertLessEqual(d.delay_ms, 2.0, (a, b))
            self.assertEqual(d.delay % d.down, 0, (a, b))
            self.assertEqual(Resampler(a, b).delay_samples, d.delay // d.down)

    def test_passband_and_stopband(self) -> None:
        """Flat within 0.01 dB to the passband edge, at least 68 dB down from the stop edge."""
        for a, b in PAIRS:
            d = design_filter(a, b)
            edge_pass = d.cutoff_hz - d.transition_hz / 2
            edge_stop = d.cutoff_hz + d.transition_hz / 2
            self.assertEqual(d.cutoff_hz, min(a, b) / 2)
            passband = d.response_db(np.linspace(0, edge_pass, 60))
            stopband = d.response_db(np.linspace(edge_stop, a * d.up / 2, 300))
            self.assertLess(np.ptp(passband), 0.01, (a, b))
            self.assertLess(stopband.max(), -68, (a, b))

    def test_branches_exact_dc_gain(self) -> None:
        """Each polyphase branch has integer taps summing to exactly 2**30 (gain 1)."""
        for a, b in PAIRS:
            d = design_filter(a, b)
            self.assertTrue(np.all(d.branches == np.round(d.branches)), (a, b))
            self.assertEqual(list(d.branches.sum(axis=1)), [2.0**30] * d.up, (a, b))

    def test_telephony_band(self) -> None:
        """16 -> 8 kHz passes 3.4 kHz and stops 4.6 kHz (aliases only land above 3.4 kHz)."""
        d = design_filter(16000, 8000)
        self.assertEqual((d.cutoff_hz - d.transition_hz / 2, d.cutoff_hz + d.transition_hz / 2),
                         (3400.0, 4600.0))

    def test_cached(self) -> None:
        """A design is computed once and shared by every resampler of the same ratio."""
        self.assertIs(Resampler(16000, 8000).design, Resampler(16000, 8000).design)

    def test_bad_rate(self) -> None:
        """A rate that is not positive is refused with a message naming both rates."""
        e = self.assertRaises(ValueError, Resampler, 0, 8000)
        self.assertIn("0 -> 8000", str(e))


class QualityTests(SynchronousTestCase):
    """Output against mathematically exact references, aligned for the group delay."""

    def check_formula(self, a: int, b: int, wave, threshold_db: float) -> float:
        seconds = 0.5
        t = np.arange(int(a * seconds)) / a
        got, delay = convert(pcm(wave(t)), a, b)
        m = np.arange(len(got))
        ref = wave((m - delay) / b)
        # Skip the filter's start-up and end (the ideal signal is not zero before t = 0).
        window = slice(2 * delay + 8, int(b * seconds))
        snr = snr_db(got[window], ref[window])
        self.assertGreater(snr, threshold_db, (a, b))
        return snr

    def test_tone(self) -> None:
        """A 1 kHz tone (3 kHz between wider rates) comes out with an SNR above 70 dB."""
        for a, b in PAIRS:
            f = 1000.0 if min(a, b) == 8000 else 3000.0
            self.check_formula(a, b, lambda t: 12000 * np.sin(2 * np.pi * f * t + 0.3), 70)

    def test_sweep(self) -> None:
        """A chirp from 50 Hz to the passband edge comes out with an SNR above 65 dB."""
        for a, b in PAIRS:
            d = design_filter(a, b)
            f0, f1, seconds = 50.0, d.cutoff_hz - d.transition_hz / 2, 0.5

            def chirp(t: np.ndarray) -> np.ndarray:
                return 12000 * np.sin(2 * np.pi * (f0 * t + (f1 - f0) / (2 * seconds) * t**2))

            self.check_formula(a, b, chirp, 65)

    def test_constant(self) -> None:
        """A constant input gives exactly the same constant once the filter has filled."""
        for a, b in PAIRS:
            got, delay = convert(pcm(np.full(a // 10, 1234.0)), a, b)
            self.assertEqual(set(got[2 * delay : b // 10]), {1234.0}, (a, b))

    def test_matches_direct_form(self) -> None:
        """
        Output equals the textbook definition computed directly: zero-stuff by L, convolve with
        the prototype, keep every M-th sample, round, saturate. The input is a full-scale square
        wave plus noise, so the overshoot saturates at the int16 limits instead of wrapping.
        """
        rng = np.random.default_rng(5)
        for a, b in PAIRS:
            x = saturating(rng, a // 20)
            r = Resampler(a, b)
            got = floats(r.process(pcm(x)) + r.flush())
            expected = direct_form(x, a, b, len(got))
            self.assertEqual(got.tolist(), expected.tolist(), (a, b))
            self.assertEqual((got.max(), got.min()), (32767.0, -32768.0), (a, b))


class AliasingTests(SynchronousTestCase):
    """Downsampling filters first; upsampling leaves no images."""

    def residual_db(self, a: int, b: int, f: float) -> float:
        t = np.arange(a // 5) / a
        got, delay = convert(pcm(12000 * np.sin(2 * np.pi * f * t)), a, b)
        rms = np.sqrt(np.mean(got[2 * delay : b // 5] ** 2))
        return float(20 * np.log10(max(rms, 1e-9) / (12000 / np.sqrt(2))))

    def test_16k_to_8k(self) -> None:
        """5, 6 and 7 kHz tones (would alias to 3, 2, 1 kHz) come out at least 65 dB down."""
        for f in (5000, 6000, 7000, 7900):
            self.assertLess(self.residual_db(16000, 8000, f), -65, f)

    def test_other_downsampling(self) -> None:
        """Every tone above the stop edge and below the input Nyquist is at least 65 dB down."""
        for a, b in PAIRS:
            if b >= a:
                continue
            d = design_filter(a, b)
            start = d.cutoff_hz + d.transition_hz / 2
            for f in np.arange(start, a / 2, 1100):
                self.assertLess(self.residual_db(a, b, f), -65, (a, b, f))

    def test_no_images(self) -> None:
        """Upsampling a 3 kHz (8 kHz rate) or 7 kHz tone leaves < -65 dB above the input band."""
        for a, b in PAIRS:
            if b <= a:
                continue
            f = 3000.0 if a == 8000 else 6500.0
            t = np.arange(a // 2) / a
            got, delay = convert(pcm(12000 * np.sin(2 * np.pi * f * t)), a, b)
            seg = got[2 * delay : 2 * delay + b // 4]
            spectrum = np.abs(np.fft.rfft(seg * np.hanning(len(seg)))) ** 2
            freqs = np.fft.rfftfreq(len(seg), 1 / b)
            image = spectrum[freqs > a / 2 + 600].sum() / spectrum.sum()
            self.assertLess(10 * np.log10(image), -65, (a, b))


class StreamingTests(SynchronousTestCase):
    """State carried across calls: chunking never changes the output."""

    def signal(self, rate_hz: int, seconds: float = 0.3) -> bytes:
        rng = np.random.default_rng(rate_hz)
        t = np.arange(int(rate_hz * seconds)) / rate_hz
        x = 9000 * np.sin(2 * np.pi * 440 * t) + rng.normal(0, 2000, len(t))
        return pcm(np.clip(x, -32768, 32767))

    def test_frames_equal_one_shot(self) -> None:
        """20 ms frames give byte-identical output to one call, tail included."""
        for a, b in PAIRS:
            data = self.signal(a)
            one = Resampler(a, b)
            expected = one.process(data) + one.flush()
            r = Resampler(a, b)
            frame = a // 50 * 2
            got = b"".join(r.process(data[i : i + frame]) for i in range(0, len(data), frame))
            self.assertEqual(got + r.flush(), expected, (a, b))

    def test_random_pieces_equal_one_shot(self) -> None:
        """Random pieces from 0 to 300 samples, many of one sample, give identical output."""
        rnd = random.Random(7)
        for a, b in PAIRS:
            data = self.signal(a, 0.1)
            one = Resampler(a, b)
            expected = one.process(data) + one.flush()
            r = Resampler(a, b)
            out, i = [], 0
            while i < len(data):
                n = 2 * rnd.choice((0, 1, 1, 2, 3, rnd.randrange(300)))
                out.append(r.process(data[i : i + n]))
                i += n
            self.assertEqual(b"".join(out) + r.flush(), expected, (a, b))

    def test_frame_lengths(self) -> None:
        """Every 20 ms frame gives exactly 20 ms of output, from the first frame on."""
        for a, b in PAIRS:
            data = self.signal(a)
            r = Resampler(a, b)
            frame = a // 50 * 2
            lengths = {len(r.process(data[i : i + frame])) for i in range(0, len(data), frame)}
            self.assertEqual(lengths, {b // 50 * 2}, (a, b))

    def test_output_count_follows_input(self) -> None:
        """After n input samples in total, exactly ceil(n * out / in) samples have come out."""
        rnd = random.Random(3)
        for a, b in PAIRS:
            data = self.signal(a, 0.1)
            r = Resampler(a, b)
            taken = given = 0
            while taken < len(data) // 2:
                n = min(rnd.randrange(1, 200), len(data) // 2 - taken)
                out = r.process(data[2 * taken : 2 * (taken + n)])
                taken += n
                given += len(out) // 2
                self.assertEqual(given, -(-taken * b // a), (a, b))
                # Within one sample of the exact share of this piece.
                self.assertLessEqual(abs(len(out) // 2 - n * b / a), 1 + 1e-9, (a, b))

    def test_flush_returns_delay_and_restarts(self) -> None:
        """flush returns the group delay's worth, then the resampler is like a new one."""
        for a, b in PAIRS:
            data = self.signal(a, 0.05)
            r = Resampler(a, b)
            first = r.process(data)
            self.assertEqual(len(r.flush()), 2 * r.delay_samples, (a, b))
            self.assertEqual(r.process(data), first, (a, b))

    def test_reset(self) -> None:
        """reset forgets the stream without output."""
        r = Resampler(16000, 8000)
        first = r.process(self.signal(16000, 0.05))
        r.process(self.signal(16000, 0.05)[:-6])
        r.reset()
        self.assertEqual(r.process(self.signal(16000, 0.05)), first)

    def test_empty_and_odd(self) -> None:
        """Empty input gives empty output; an odd byte count is refused (the Transcoder carries)."""
        r = Resampler(8000, 16000)
        self.assertEqual(r.process(b""), b"")
        e = self.assertRaises(ValueError, r.process, b"\x00\x00\x00")
        self.assertIn("3 bytes", str(e))

    def test_same_rate(self) -> None:
        """Equal rates pass samples through, with no delay and nothing to flush."""
        r = Resampler(16000, 16000)
        self.assertEqual(r.process(b"\x01\x02\x03\x04"), b"\x01\x02\x03\x04")
        self.assertEqual((r.flush(), r.delay_samples), (b"", 0))


class BlockPathTests(SynchronousTestCase):
    """
    The ratios that only go up or only go down run as one product over blocks of the stream,
    with views and buffers kept per input length and phase: any sizes, in any order, give the
    textbook's bytes.
    """

    #: The block path's ratios, 48 kHz both ways included (up by 6, down by 3 and 6).
    RATIOS = ((8000, 16000), (16000, 8000), (8000, 24000), (24000, 8000), (48000, 16000),
              (16000, 48000), (8000, 48000), (48000, 8000))

    def test_every_piece_length(self) -> None:
        """Pieces of every length from 1 to 160 samples, then longer, give the textbook's output."""
        rng = np.random.default_rng(11)
        lengths = [*range(1, 161), 257, 320, 400, 961]
        for a, b in self.RATIOS:
            x = saturating(rng, sum(lengths))
            data = pcm(x)
            r = Resampler(a, b)
            out, i = [], 0
            for n in lengths:
                out.append(r.process(data[2 * i : 2 * (i + n)]))
                i += n
            got = floats(b"".join(out) + r.flush())
            self.assertEqual(got.tolist(), direct_form(x, a, b, len(got)).tolist(), (a, b))

    def test_long_piece_between_frames(self) -> None:
        """20 ms frames, one 2 s piece (the buffer grows), frames again: one-shot's bytes."""
        rng = np.random.default_rng(12)
        for a, b in self.RATIOS:
            frame = a // 50
            x = saturating(rng, 5 * frame + 2 * a + 5 * frame + 7)
            data = pcm(x)
            one = Resampler(a, b)
            expected = one.process(data) + one.flush()
            cuts = [0, *range(frame, 6 * frame, frame), 5 * frame + 2 * a]
            cuts += range(cuts[-1] + frame, len(x), frame)
            cuts.append(len(x))
            r = Resampler(a, b)
            got = b"".join(r.process(data[2 * p : 2 * q]) for p, q in zip(cuts, cuts[1:]))
            self.assertEqual(got + r.flush(), expected, (a, b))

    def test_quiet_and_loud(self) -> None:
        """
        Clipping is skipped only while no output can overflow: quiet frames after loud ones (the
        history still loud), loud after quiet, give the textbook's saturated output.
        """
        rng = np.random.default_rng(13)
        for a, b in self.RATIOS:
            frame = a // 50
            quiet = rng.normal(0, 300, 4 * frame).round()
            x = np.concatenate((quiet, saturating(rng, 3), quiet, saturating(rng, frame), quiet))
            r = Resampler(a, b)
            data = pcm(x)
            step = 2 * frame
            got = b"".join(r.process(data[i : i + step]) for i in range(0, len(data), step))
            got_f = floats(got + r.flush())
            self.assertEqual(got_f.tolist(), direct_form(x, a, b, len(got_f)).tolist(), (a, b))


class SpeechTests(SynchronousTestCase):
    """The shipped clips, made from one recording with sox's very-high-quality resampler."""

    def test_48k_to_16k_against_sox(self) -> None:
        """caller-order at 48 kHz converted to 16 kHz matches sox's 16 kHz clip above 40 dB."""
        got, delay = convert(pcm(clip("caller-order-48k-s16le.wav")), 48000, 16000)
        ref = clip("caller-order-16k-s16le.wav")
        self.assertEqual(len(got) - delay, len(ref))
        self.assertGreater(snr_db(got[delay:], ref), 40)

    def test_44k1_to_16k_against_sox(self) -> None:
        """caller-order at 44.1 kHz (ratio 160/441) matches sox's 16 kHz clip above 40 dB."""
        got, delay = convert(pcm(clip("caller-order-44k1-s16le.wav")), 44100, 16000)
        ref = clip("caller-order-16k-s16le.wav")
        self.assertEqual(len(got) - delay, len(ref))
        self.assertGreater(snr_db(got[delay:], ref), 40)

    def test_16k_to_8k_to_16k_in_band(self) -> None:
        """Down then up again keeps the telephone band (below 3.4 kHz) above 60 dB."""
        ref = clip("caller-order-16k-s16le.wav")
        down, d1 = convert(pcm(ref), 16000, 8000)
        up, d2 = convert(pcm(down[d1:]), 8000, 16000)
        up = up[d2 : d2 + len(ref)]
        self.assertGreater(snr_db(band(up, 16000, 3400), band(ref, 16000, 3400)), 60)


def band(x: np.ndarray, rate_hz: int, top_hz: float) -> np.ndarray:
    """``x`` with everything above ``top_hz`` removed (an ideal, FFT-domain low-pass)."""
    spectrum = np.fft.rfft(x)
    spectrum[np.fft.rfftfreq(len(x), 1 / rate_hz) > top_hz] = 0
    return np.fft.irfft(spectrum, len(x))
