"""
Streaming conversion between two `AudioFormat`: G.711 decode, resample, G.711 encode.

One `Transcoder` per direction of a call. It is sans-IO: ``convert`` takes whatever bytes
arrived (any length: Deepgram may send an odd number of linear16 bytes, and the odd byte is kept
for the next call) and returns the audio converted so far; ``flush`` ends the stream. Every call
returns audio for every input frame: a 20 ms frame in gives 20 ms out, delayed only by the
resampling filter's group delay (1-2 ms, see `gateway.codecs.resample`).

The stages, each only when needed: mu-law -> linear16 (``audioop``, via `gateway.codecs.g711`),
`Resampler` (linear16 at the source rate -> linear16 at the target rate), linear16 -> mu-law.
When ``source == target`` the transcoder is an identity: ``convert`` returns its input
unchanged, and callers may skip it (``identity``).
"""

from __future__ import annotations

from gateway.codecs.formats import AudioFormat
from gateway.codecs.g711 import audioop, linear16_to_ulaw
from gateway.codecs.resample import Resampler

__all__ = ["Transcoder", "make_transcoder"]


class Transcoder:
    """
    Stateful streaming conversion from ``source`` to ``target`` (both mono; mu-law or linear16).

    State carried across calls: a linear16 source's odd trailing byte and the resampler's filter
    history and phase. Byte-exact whatever the chunking: converting a stream in one call, in
    20 ms frames or one byte at a time gives the same bytes.
    """

    def __init__(self, source: AudioFormat, target: AudioFormat) -> None:
        self.source = source
        self.target = target
        self._identity = source == target
        self._decode = source.encoding == "mulaw" and not self._identity
        self._encode = target.encoding == "mulaw" and not self._identity
        self._pairs = source.encoding == "linear16" and not self._identity
        self._carry = b""
        self._resampler = (
            Resampler(source.sample_rate_hz, target.sample_rate_hz)
            if source.sample_rate_hz != target.sample_rate_hz
            else None
        )

    @property
    def identity(self) -> bool:
        """Whether ``source == target``: ``convert`` returns its input unchanged."""
        return self._identity

    @property
    def delay_ms(self) -> float:
        """The delay the conversion adds: the resampling filter's group delay (0 if none)."""
        return 0.0 if self._resampler is None else self._resampler.design.delay_ms

    def convert(self, data: bytes) -> bytes:
        """
        Convert the next piece of the stream (any length, empty included); never raises for an
        odd length of linear16: the odd byte waits for the next call.
        """
        if self._identity:
            return data
        if self._pairs and (self._carry or len(data) & 1):
            if self._carry:
                data = self._carry + data
                self._carry = b""
            if len(data) & 1:
                self._carry = data[-1:]
                data = data[:-1]
        if not data:
            return b""
        # audioop itself, not g711's wrappers: a Python call fewer per frame each way.
        if self._decode:
            data = audioop.ulaw2lin(data, 2)
        if self._resampler is not None:
            data = self._resampler.process(data)
        if self._encode:
            data = audioop.lin2ulaw(data, 2)
        return data

    def flush(self) -> bytes:
        """
        End of stream: what the resampling filter still holds (its group delay's worth), in the
        target format. A lone carried byte (half a sample) is dropped. The transcoder then starts
        a new stream.
        """
        self._carry = b""
        if self._identity or self._resampler is None:
            return b""
        data = self._resampler.flush()
        return linear16_to_ulaw(data) if self._encode else data

    def reset(self) -> None:
        """Forget the stream (carried byte, filter history) without returning anything."""
        self._carry = b""
        if self._resampler is not None:
            self._resampler.reset()


def make_transcoder(source: AudioFormat, target: AudioFormat) -> Transcoder:
    """A `Transcoder` from ``source`` to ``target`` (check ``identity`` to skip the no-op one)."""
    return Transcoder(source, target)
