"""
G.711 mu-law <-> 16-bit linear PCM, the phone network's codec.

Uses the C module ``audioop``: the standard library's on Python 3.11 and 3.12 and the
``audioop-lts`` package (the same C code) from 3.13 on. It is 10-100 times faster than numpy or
pure Python for 160-sample frames (perf-notes §2c) and byte-exact with every other G.711 user.
"""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

__all__ = ["ulaw_to_linear16", "linear16_to_ulaw", "ULAW_SILENCE", "audioop"]

#: One mu-law byte of digital silence (decodes to 0).
ULAW_SILENCE = b"\xff"


def ulaw_to_linear16(data: bytes) -> bytes:
    """Decode mu-law bytes to little-endian signed 16-bit samples (twice as many bytes)."""
    return audioop.ulaw2lin(data, 2)


def linear16_to_ulaw(data: bytes) -> bytes:
    """Encode little-endian signed 16-bit samples (an even number of bytes) to mu-law."""
    return audioop.lin2ulaw(data, 2)
