"""
Audio formats as the gateway names them: an encoding and a sample rate, always mono.

Deepgram's names are used (``mulaw``, ``linear16``); Twilio's ``audio/x-mulaw`` maps onto
``mulaw``. ``linear16`` is signed 16-bit little-endian PCM.
"""

from __future__ import annotations

import attrs

__all__ = ["AudioFormat", "MULAW_8K", "LINEAR16_8K", "LINEAR16_16K", "LINEAR16_24K", "SUPPORTED"]

_WIDTH = {"mulaw": 1, "linear16": 2}


@attrs.frozen
class AudioFormat:
    """Mono raw audio: ``encoding`` (``mulaw`` or ``linear16``) at ``sample_rate_hz``."""

    encoding: str = attrs.field(validator=attrs.validators.in_(_WIDTH))
    sample_rate_hz: int

    @property
    def sample_width(self) -> int:
        """Bytes per sample."""
        return _WIDTH[self.encoding]

    def bytes_for_ms(self, ms: int) -> int:
        """How many bytes hold ``ms`` milliseconds of audio."""
        return self.sample_rate_hz * ms // 1000 * self.sample_width

    def silence(self, ms: int) -> bytes:
        """``ms`` milliseconds of digital silence in this format."""
        n = self.sample_rate_hz * ms // 1000
        return b"\xff" * n if self.encoding == "mulaw" else b"\x00\x00" * n

    def __str__(self) -> str:
        return f"{self.encoding}/{self.sample_rate_hz}"

    @classmethod
    def parse(cls, text: str) -> AudioFormat:
        """Parse ``"mulaw/8000"`` or ``"linear16/16000"``; raise ``ValueError`` naming the problem."""
        encoding, sep, rate = text.partition("/")
        if not sep or not rate.isdigit():
            raise ValueError(f"expected ENCODING/RATE such as 'mulaw/8000', got {text!r}")
        fmt = cls(encoding, int(rate)) if encoding in _WIDTH else None
        if fmt is None or fmt not in SUPPORTED:
            choices = ", ".join(str(f) for f in SUPPORTED)
            raise ValueError(f"unsupported audio format {text!r}; choose one of {choices}")
        return fmt


MULAW_8K = AudioFormat("mulaw", 8000)
LINEAR16_8K = AudioFormat("linear16", 8000)
LINEAR16_16K = AudioFormat("linear16", 16000)
LINEAR16_24K = AudioFormat("linear16", 24000)

#: The formats the transcoder converts between, in every combination.
SUPPORTED = (MULAW_8K, LINEAR16_8K, LINEAR16_16K, LINEAR16_24K)
