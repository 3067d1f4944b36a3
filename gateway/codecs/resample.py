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

Cost: the ratios that only go up or only go down (8 <-> 16 kHz, 8 <-> 24 kHz, 48 -> 16 kHz) take
one small BLAS product per call, over blocks (`_block_filter`): the stream, kept per resampler in a
float64 buffer, is read as rows of B samples, each row with the next one (2B samples, a strided
view), and one (rows, 2B) x (2B, outputs per row) product gives every output of the call; the
matrix holds each output's taps where its window lies in the two rows, zeros elsewhere. That
multiplies about 2B/K times more than the filter needs, but numpy copies only rows x 2B samples
before BLAS reads them, where a window per output sample (K wide, overlapping) made it copy K
samples per output; with the views kept per frame size, 4.0-4.9 µs per 20 ms frame between 8 and 16
kHz, against 7.8-10.2 for a window per output (BENCHMARKS.md, "Transcoding, session 5"). 16 <-> 24
kHz (up by 3 and down by 2, or the reverse) take one product over all L branches per input sample,
12-15 µs per frame; other ratios (44.1 -> 16 kHz: 160/441) gather one window per output sample,
which is correct but slower (about 200-330 µs per frame). Every path computes the same exact sums,
hence the same bytes (tests check each against the textbook definition). Clipping to int16 is
skipped while no input sample within the filter's reach could push an output past it
(``audioop.max`` of each input against 32767 over the filter's largest branch gain); rounding is in
place, then a cast.
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
    """
    Round ``y`` to the nearest integer (half to even) into int16 ``out``, clipped unless safe.
    In place, then a plain cast (exact: the values are whole and in range): a rounding ufunc
    writing int16 itself costs more than both.
    """
    if not safe:
        np.minimum(y, _HI, out=y)
        np.maximum(y, _LO, out=y)
    np.rint(y, out=y)
    out[...] = y


def _bounds(size: int) -> tuple[np.ndarray, np.ndarray]:
    """32767 and -32768 as arrays of ``size`` (shared, read-only): cheaper than a scalar operand."""
    hi, lo = _bound_arrays(1 << (size - 1).bit_length())
    return hi[:size], lo[:size]


@lru_cache(maxsize=None)
def _bound_arrays(size: int) -> tuple[np.ndarray, np.ndarray]:
    """`_bounds` for a power of two: at most twice the largest output piece, shared."""
    hi, lo = np.full(size, 32767.0), np.full(size, -32768.0)
    hi.flags.writeable = lo.flags.writeable = False
    return hi, lo


#: The block path converts longer inputs in pieces of this many samples (the same bytes: the
#: conversion does not depend on chunking), so that a stream's buffer stays small (at most about
#: 20 KB) whatever size of chunk it was once given.
_PIECE_SAMPLES = 2048


@lru_cache(maxsize=None)
def _block_filter(in_rate_hz: int, out_rate_hz: int) -> tuple[int, int, np.ndarray]:
    """
    The block form of a ratio that only goes up (by L) or only down (by M): ``(B, R, taps)``.

    The stream is read in rows of ``B`` input samples (a multiple of 32 and of M, at least
    ``K - 1``: a 20 ms frame at 8, 16, 24 or 48 kHz is a whole number of rows), and row ``b``
    gives the ``R = B * L / M`` output samples whose windows start in it. Output ``r`` of a row
    is input sample ``i = (r // L) * M`` of the row, branch ``r % L``; its window (K samples,
    oldest first) starts at ``i`` and ends at most at ``2B - 1``, inside the row and the next one.
    ``taps`` (2B, R) holds each output's branch at its window's place and zeros elsewhere, so
    (rows, 2B) windows of two rows each, times ``taps``, is every output at once. The zeros add
    exact zeros: the sums are the ones the other paths compute, hence the same bytes.
    """
    design = design_filter(in_rate_hz, out_rate_hz)
    up, down, k = design.up, design.down, design.taps_per_branch
    unit = 32 * down // math.gcd(32, down)
    block = unit * max(1, -(-(k - 1) // unit))
    outs = block * up // down
    coefs = design.reversed_t * _SCALE
    taps = np.zeros((2 * block, outs))
    for r in range(outs):
        i = r // up * down
        taps[i : i + k, r] = coefs[:, r % up]
    taps.flags.writeable = False
    return block, outs, taps


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
        # Only up or only down (8 <-> 16 <-> 48 kHz, 8 <-> 24 kHz): one product over blocks.
        self._blocks = not self._identity and (design.up == 1 or design.down == 1)
        # Up by L then keep every M-th (M = 2, 3: 16 <-> 24 kHz): all L branches over every
        # input sample.
        self._poly = not self._blocks and design.up > 1 and design.down <= 3
        if self._blocks:
            self._block, self._block_outs, self._block_taps = _block_filter(
                in_rate_hz, out_rate_hz
            )
            # A few plans (views and output arrays) per input length and phase (`_plan`).
            self._plans: dict[tuple[int, int], tuple] = {}
            self._store = np.zeros(0)
        elif not (self._identity or self._poly):
            self._branches_rev = np.ascontiguousarray(design.branches[:, ::-1]) * _SCALE  # (L, K)
        # Clipping is skipped while no input sample in the filter's reach exceeds this: an output
        # is at most (sum of |taps| of its branch) times the largest input sample.
        gain = float(np.abs(design.branches).sum(axis=1).max()) * _SCALE
        self._safe_peak = int(32767 / gain)
        self._reset()

    def _reset(self) -> None:
        self._history = np.zeros(self._k - 1)
        if self._blocks:
            self._store[: self._k - 1] = 0.0
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
        if not self._blocks:
            return self._process_other(samples)
        # The block path (`_block_filter`). The stream lives in ``_store``: the last K - 1 input
        # samples (the history), then this call's.
        n = len(samples) >> 1
        if not n:
            return b""
        if n > _PIECE_SAMPLES:
            step = 2 * _PIECE_SAMPLES
            return b"".join(
                [self.process(samples[i : i + step]) for i in range(0, len(samples), step)]
            )
        plan = self._plans.get((n, self._offset))
        if plan is None:
            plan = self._plan(n)
        fill, history, recent, windows, part, hi, lo, offset = plan
        fill[...] = np.frombuffer(samples, "<i2")
        quiet = audioop.max(samples, 2) <= self._safe_peak
        safe = quiet and self._history_safe
        self._history_safe = quiet and (n >= self._k - 1 or self._history_safe)
        self._offset = offset
        if windows is None:  # decimation, and no output sample's newest input in this piece
            history[...] = recent
            return b""
        # The product and the int16 output are made per call: kept, they would add 5 KB per
        # call of the gateway (two streams) for 0.1-0.2 µs per frame.
        y = windows.dot(self._block_taps)
        history[...] = recent
        if part:  # not whole rows: the outputs are the first ``part``
            y = y.reshape(-1)[:part]
        if not safe:
            np.minimum(y, hi, out=y)
            np.maximum(y, lo, out=y)
        np.rint(y, out=y)
        return y.astype("<i2").tobytes()

    def _plan(self, n: int) -> tuple:
        """
        The views for ``n`` input samples at the current phase, kept for the next call of the
        same shape (a stream's frames are mostly one size): where the input goes, the history's
        move, the two-row windows, how many outputs if not whole rows (else 0), the clipping
        bounds; and the phase after the call.
        """
        k, up, down, block, outs = self._k, self._up, self._down, self._block, self._block_outs
        off = self._offset
        if down == 1:
            count, offset = n * up, 0
        else:
            count = (n - off + down - 1) // down if n > off else 0
            offset = off + count * down - n
        rows = -(-count // outs)
        need = max(k - 1 + n, off + (rows + 1) * block)
        if len(self._plans) >= 8:
            self._plans.clear()
        if need > len(self._store):
            # Grow (finite values everywhere: a window's zero taps must multiply numbers).
            store = np.zeros(need)
            store[: k - 1] = self._store[: k - 1] if len(self._store) else 0.0
            self._store = store
            self._plans.clear()
        store = self._store
        fill = store[k - 1 : k - 1 + n]
        history, recent = store[: k - 1], store[n : n + k - 1]
        windows = hi = lo = None
        part = 0 if count == rows * outs else count
        if rows:
            windows = np.ndarray(
                (rows, 2 * block), buffer=store, offset=8 * off, strides=(8 * block, 8)
            )
            hi, lo = _bounds(count)
            if not part:  # shaped as the product: a 20 ms frame is whole rows
                hi, lo = hi.reshape(rows, outs), lo.reshape(rows, outs)
        plan = (fill, history, recent, windows, part, hi, lo, offset)
        self._plans[(n, off)] = plan
        return plan

    def _process_other(self, samples: bytes) -> bytes:
        """The ratios that go up and down (16 <-> 24 kHz, 44.1 -> 16 kHz), and equal rates."""
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
        if self._poly:
            windows = np.ndarray((n, k), buffer=buf, strides=(8, 8))
            y = windows.dot(self._coefs).ravel()
            off = self._offset
            total = n * self._up
            m = self._down
            count = (total - off + m - 1) // m if total > off else 0
            self._offset = off + count * m - total
            y = y[off::m]
        else:
            y = self._general(buf, n)
        out = np.empty(len(y), dtype="<i2")
        _round(y, out, safe)
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
