"""
Streaming sample-rate conversion of mono 16-bit PCM: polyphase FIR filters with carried state.

One `Resampler` converts one stream from ``in_rate_hz`` to ``out_rate_hz``. The rates are reduced
to ``L/M`` (up by ``L``, down by ``M``) and a single linear-phase low-pass prototype, designed at
``in_rate_hz * L``, both interpolates (removes the images of upsampling) and band-limits before
decimation (no aliasing) (protocols.md §5.3). It is a Kaiser-windowed sinc whose cut-off sits at
the lower of the two Nyquist frequencies; its transition band is centred there, so whatever
aliases lands only in the band's top edge (telephony: flat to 3.4 kHz, at least 70 dB down from
4.6 kHz). The prototype is causal, its group delay the only delay (1.1 to 1.9 ms, a whole number
of output samples), and its taps are rounded to multiples of 2**-30 and each polyphase branch
scaled to a DC gain of exactly 1.

Why integer taps: with integer samples and integer-valued float64 taps every product and sum is
exact (below 2**53), so the result does not depend on BLAS's summation order; feeding a stream in
20 ms frames or in pieces of two bytes gives output identical to the byte to a one-shot conversion.

Streaming: the last ``K - 1`` input samples (``K``: taps per branch), the position of the next
output sample and the input count are carried across calls. Each call returns every output
sample whose input has arrived: after ``n`` input samples in total, ``ceil(n * L / M)`` output
samples have been returned, so a 20 ms frame gives exactly 20 ms (160 samples at 8 kHz -> 320 at
16 kHz) and nothing is buffered beyond the filter's delay. `Resampler.flush` returns the delayed
tail (``delay_samples`` samples) and starts a new stream.

Cost: the common ratios (8 <-> 16 <-> 24 kHz, 48 -> 16 kHz) take one small BLAS product per call:
6-9 µs per 20 ms frame between 8 kHz and 16 or 24 kHz, 12-15 µs between 16 and 24 kHz, 22 µs
for 48 -> 16 kHz. Other ratios (44.1 -> 16 kHz: 160/441) gather one window per output sample,
which is correct but slower (about 200-330 µs per frame). Three things keep the common case
cheap without changing a single output byte: the taps carry the 2**-30 scale (still exact);
8 -> 16 kHz uses the half-band prototype's structure (one branch is a pure delay, so only every
other output sample is filtered); and clipping to int16 is skipped while no input sample within
the filter's reach could push an output past it (``audioop.max`` of each input against 32767
over the filter's largest branch gain), rounding straight into the int16 output.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from gateway.codecs.g711 import audioop

__all__ = ["Resampler", "FilterDesign", "design_filter"]

#: Taps are integers scaled by 2**-_Q: exact arithmetic, -180 dB rounding.
_Q = 30
_SCALE = 2.0**-_Q
_HI = np.float64(32767.0)
_LO = np.float64(-32768.0)
#: Kaiser stop-band attenuation aimed at, in dB.
_ATTENUATION_DB = 70.0


class FilterDesign:
    """
    The filter one ratio uses, designed once per ``(in_rate_hz, out_rate_hz)`` and shared.

    ``up`` (L) and ``down`` (M) are the reduced ratio; ``taps`` the prototype (length
    ``2 * delay + 1``, integer values, gain ``L * 2**30``); ``delay`` its group delay in prototype
    samples, a multiple of M; ``cutoff_hz`` and ``transition_hz`` its band edges
    (``cutoff_hz -/+ transition_hz / 2``).
    """

    def __init__(
        self, in_rate_hz: int, out_rate_hz: int, cutoff_hz: float, transition_hz: float
    ) -> None:
        g = math.gcd(in_rate_hz, out_rate_hz)
        self.in_rate_hz = in_rate_hz
        self.out_rate_hz = out_rate_hz
        self.up = up = out_rate_hz // g
        self.down = down = in_rate_hz // g
        self.cutoff_hz = cutoff_hz
        self.transition_hz = transition_hz
        proto_rate_hz = in_rate_hz * up
        # Kaiser's estimate of the length for the attenuation and transition width, then round
        # the delay up to a multiple of M (whole output samples) and, where cheap, of L as well
        # (whole input samples too).
        d_omega = 2 * math.pi * transition_hz / proto_rate_hz
        order = (_ATTENUATION_DB - 7.95) / (2.285 * d_omega)
        step = up * down if up * down <= 12 else down
        delay = step * math.ceil(order / 2 / step)
        self.delay = delay
        n = np.arange(2 * delay + 1) - delay
        beta = 0.1102 * (_ATTENUATION_DB - 8.7)
        fc = cutoff_hz / proto_rate_hz  # cycles per prototype sample
        h = 2 * fc * np.sinc(2 * fc * n) * np.kaiser(2 * delay + 1, beta)
        # Polyphase branches: branch p holds taps p, p + L, p + 2L, ... Scale each to DC gain 1
        # (a constant input stays exactly constant, no image at the input rate) and round to
        # integers, putting the rounding residue on the branch's largest tap.
        self.taps_per_branch = k = -(-len(h) // up)
        padded = np.zeros(k * up)
        padded[: len(h)] = h
        branches = padded.reshape(k, up).T.copy()  # [p, j] = h[p + j L]
        for p in range(up):
            row = branches[p]
            row *= 2.0**_Q / row.sum()
            np.rint(row, out=row)
            row[np.argmax(np.abs(row))] += 2.0**_Q - row.sum()
        self.branches = branches
        self.taps = branches.T.reshape(-1)[: len(h)].copy()
        # Windows are read oldest sample first, so the branches are applied reversed:
        # column p of ``reversed_t`` multiplies x[i - K + 1 .. i].
        self.reversed_t = np.ascontiguousarray(branches[:, ::-1].T)
        for shared in (self.branches, self.taps, self.reversed_t):
            shared.flags.writeable = False

    @property
    def delay_out_samples(self) -> int:
        """Group delay in output samples (rounded up if it is not whole)."""
        return -(-self.delay // self.down)

    @property
    def delay_ms(self) -> float:
        """Group delay in milliseconds."""
        return 1000.0 * self.delay / (self.in_rate_hz * self.up)

    def response_db(self, freqs_hz: np.ndarray) -> np.ndarray:
        """The prototype's gain at ``freqs_hz``, in dB relative to its DC gain (for tests)."""
        n = np.arange(len(self.taps))
        w = 2 * np.pi * np.asarray(freqs_hz, dtype=float).ravel() / (self.in_rate_hz * self.up)
        resp = np.empty(len(w))
        for i in range(0, len(w), 16):  # bounded memory for the 25,579-tap 44.1 kHz prototype
            resp[i : i + 16] = np.abs(np.exp(-1j * np.outer(w[i : i + 16], n)) @ self.taps)
        return 20 * np.log10(np.maximum(resp / self.taps.sum(), 1e-12))


@lru_cache(maxsize=None)
def design_filter(in_rate_hz: int, out_rate_hz: int) -> FilterDesign:
    """
    The filter for one conversion (cached: designs are immutable and shared by every call).

    Cut-off at the lower Nyquist frequency. Transition band: 30 % of that Nyquist frequency
    between the gateway's rates (up to 24 kHz: 3.4-4.6 kHz or 6.8-9.2 kHz), 15 % from higher
    rates (48 and 44.1 -> 16 kHz: 7.4-8.6 kHz), where a longer filter costs less in relative
    terms.
    """
    if in_rate_hz <= 0 or out_rate_hz <= 0:
        raise ValueError(f"sample rates must be positive, got {in_rate_hz} -> {out_rate_hz}")
    nyquist_hz = min(in_rate_hz, out_rate_hz) / 2
    fraction = 0.3 if max(in_rate_hz, out_rate_hz) <= 24000 else 0.15
    return FilterDesign(in_rate_hz, out_rate_hz, nyquist_hz, fraction * nyquist_hz)


def _round(y: np.ndarray, out: np.ndarray, safe: bool) -> None:
    """Round ``y`` to the nearest integer (half to even) into int16 ``out``, clipped unless safe."""
    if not safe:
        np.minimum(y, _HI, out=y)
        np.maximum(y, _LO, out=y)
    np.rint(y, out=out, casting="unsafe")


class Resampler:
    """
    Stateful sample-rate converter for one mono int16 stream (see the module docstring).

    ``process`` takes little-endian signed 16-bit samples (an even number of bytes; the
    `gateway.codecs.transcode.Transcoder` carries odd bytes) and returns the same format at the
    new rate. Equal rates pass samples through unchanged.
    """

    def __init__(self, in_rate_hz: int, out_rate_hz: int) -> None:
        self.in_rate_hz = in_rate_hz
        self.out_rate_hz = out_rate_hz
        self.design = design = design_filter(in_rate_hz, out_rate_hz)
        self._up = design.up
        self._down = design.down
        self._k = design.taps_per_branch
        # Taps scaled by 2**-30 here rather than each output afterwards: still exact (a tap is an
        # integer over 2**30, a sample 16 bits, so every product and sum is a multiple of 2**-30
        # well inside float64's 53 bits), one operation fewer per call.
        self._coefs = design.reversed_t * _SCALE  # (K, L)
        self._identity = design.up == design.down == 1
        # Decimation only: one window per output, read with a row stride of M.
        self._decimate = design.up == 1 and not self._identity
        # Up by L then keep every M-th (M small): all L branches over every input sample.
        self._poly = design.up > 1 and design.down <= 3
        # Up by 2 with a half-band prototype (8 -> 16 kHz): one branch is a single tap of gain 1,
        # a pure delay, so half the outputs are input samples and only the other branch filters.
        self._delay_branch = None
        if self._poly and design.up == 2 and design.down == 1:
            for p in range(2):
                nonzero = np.flatnonzero(design.reversed_t[:, p])
                if len(nonzero) == 1 and design.reversed_t[nonzero[0], p] == 2.0**_Q:
                    self._delay_branch = (p, int(nonzero[0]))
                    self._filter_column = np.ascontiguousarray(self._coefs[:, 1 - p])
        if not (self._identity or self._decimate or self._poly):
            self._branches_rev = np.ascontiguousarray(design.branches[:, ::-1]) * _SCALE  # (L, K)
        # Clipping is skipped while no input sample in the filter's reach exceeds this: an output
        # is at most (sum of |taps| of its branch) times the largest input sample.
        gain = float(np.abs(design.branches).sum(axis=1).max()) * _SCALE
        self._safe_peak = int(32767 / gain)
        self._reset()

    def _reset(self) -> None:
        self._history = np.zeros(self._k - 1)
        # Whether every sample in the history is within ``_safe_peak`` (zeros are).
        self._history_safe = True
        # Offset of the next output sample in the candidate sequence of the next call: for
        # decimation, input samples (from the start of the next call's input); for the others,
        # prototype-rate samples (``L`` per input sample).
        self._offset = 0
        self._consumed = 0  # input samples taken (general path only needs it)

    @property
    def delay_samples(self) -> int:
        """Group delay in output samples: what `flush` returns at the end of a stream."""
        return 0 if self._identity else self.design.delay_out_samples

    def process(self, samples: bytes) -> bytes:
        """Convert the next piece of the stream; raise ``ValueError`` for an odd byte count."""
        if len(samples) & 1:
            raise ValueError(f"linear16 input must have an even length, got {len(samples)} bytes")
        if self._identity or not samples:
            return bytes(samples)
        x = np.frombuffer(samples, dtype="<i2")
        n = len(x)
        k = self._k
        buf = np.concatenate((self._history, x))
        self._history = buf[n:]
        quiet = audioop.max(samples, 2) <= self._safe_peak
        safe = quiet and self._history_safe
        self._history_safe = quiet and (n >= k - 1 or self._history_safe)
        if self._delay_branch is not None:
            return self._double(buf, n, safe)
        if self._decimate:
            m = self._down
            off = self._offset
            count = (n - off + m - 1) // m if n > off else 0
            self._offset = off + count * m - n
            if not count:
                return b""
            windows = np.ndarray((count, k), buffer=buf, offset=8 * off, strides=(8 * m, 8))
            y = windows.dot(self._coefs[:, 0])
        elif self._poly:
            windows = np.ndarray((n, k), buffer=buf, strides=(8, 8))
            y = windows.dot(self._coefs).ravel()
            m = self._down
            if m > 1:
                off = self._offset
                total = n * self._up
                count = (total - off + m - 1) // m if total > off else 0
                self._offset = off + count * m - total
                y = y[off::m]
        else:
            y = self._general(buf, n)
        out = np.empty(len(y), dtype="<i2")
        _round(y, out, safe)
        return out.tobytes()

    def _double(self, buf: np.ndarray, n: int, safe: bool) -> bytes:
        """Up by 2, half-band: the delay branch copies input samples, the other one filters."""
        delay_branch, tap = self._delay_branch  # type: ignore[misc]
        windows = np.ndarray((n, self._k), buffer=buf, strides=(8, 8))
        y = windows.dot(self._filter_column)
        out = np.empty((n, 2), dtype="<i2")
        out[:, delay_branch] = buf[tap : tap + n]
        _round(y, out[:, 1 - delay_branch], safe)
        return out.tobytes()

    def _general(self, buf: np.ndarray, n: int) -> np.ndarray:
        """Any ratio: gather the window and the branch of each output sample."""
        up, down = self._up, self._down
        # Prototype-rate positions j = m * M of the outputs whose newest input sample arrived:
        # j // L < consumed + n. ``_offset`` is the next j relative to consumed * L.
        base = self._consumed * up
        first = base + self._offset
        end = (self._consumed + n) * up
        self._consumed += n
        if first >= end:
            self._offset = first - end
            return np.zeros(0)
        js = np.arange(first, end, down, dtype=np.int64)
        self._offset = int(js[-1]) + down - end
        rows = js // up - (self._consumed - n)  # window start in ``buf``
        phases = js % up
        windows = np.ndarray((n, self._k), buffer=buf, strides=(8, 8))
        return np.einsum("ij,ij->i", windows[rows], self._branches_rev[phases])

    def flush(self) -> bytes:
        """
        End of stream: the last ``delay_samples`` output samples, which the filter still holds
        (computed by feeding silence). The resampler then starts a new stream.
        """
        if self._identity:
            return b""
        want = self.delay_samples
        zeros = -(-want * self._down // self._up) + 1
        tail = self.process(b"\x00\x00" * zeros)[: 2 * want]
        self._reset()
        return tail

    def reset(self) -> None:
        """Forget the stream (history and phase) without returning the tail."""
        self._reset()
