"""
Reading and writing the WAV files the gateway uses for tests, demos and the emulator.

Python's ``wave`` module refuses format 7 (mu-law), and the shipped mu-law clips carry an 18-byte
``fmt `` chunk and a ``fact`` chunk, so this module walks the RIFF chunks itself.
"""

from __future__ import annotations

import struct

import attrs

__all__ = ["WavAudio", "read_wav", "parse_wav", "write_wav"]

_FORMAT_NAMES = {1: "linear16", 7: "mulaw", 6: "alaw"}


@attrs.frozen
class WavAudio:
    """The raw audio of a WAV file and what it is: ``encoding`` is ``linear16`` or ``mulaw``."""

    encoding: str
    sample_rate: int
    channels: int
    data: bytes = attrs.field(repr=lambda d: f"<{len(d)} bytes>")

    @property
    def duration_s(self) -> float:
        width = 2 if self.encoding == "linear16" else 1
        return len(self.data) / (width * self.channels * self.sample_rate)


def parse_wav(blob: bytes) -> WavAudio:
    """Parse a RIFF/WAVE file held in memory; raise ``ValueError`` naming what is wrong."""
    if len(blob) < 12 or blob[:4] != b"RIFF" or blob[8:12] != b"WAVE":
        raise ValueError("not a RIFF/WAVE file (expected 'RIFF....WAVE' at the start)")
    pos = 12
    fmt = None
    data = None
    while pos + 8 <= len(blob):
        chunk_id, size = struct.unpack_from("<4sI", blob, pos)
        body = blob[pos + 8 : pos + 8 + size]
        if chunk_id == b"fmt ":
            if len(body) < 16:
                raise ValueError(f"fmt chunk of {len(body)} bytes, expected at least 16")
            fmt = struct.unpack_from("<HHIIHH", body)
        elif chunk_id == b"data":
            data = body
        pos += 8 + size + (size & 1)
    if fmt is None or data is None:
        raise ValueError("WAV file without a 'fmt ' or a 'data' chunk")
    tag, channels, rate, _, _, bits = fmt
    encoding = _FORMAT_NAMES.get(tag)
    if encoding is None or (encoding == "linear16" and bits != 16):
        raise ValueError(f"unsupported WAV format tag {tag} with {bits} bits per sample")
    return WavAudio(encoding=encoding, sample_rate=rate, channels=channels, data=bytes(data))


def read_wav(path: str) -> WavAudio:
    """Read a WAV file from disk (see `parse_wav`)."""
    with open(path, "rb") as f:
        return parse_wav(f.read())


def write_wav(path: str, audio: WavAudio) -> None:
    """Write mono or multi-channel linear16 or mu-law audio as a WAV file."""
    tag = {v: k for k, v in _FORMAT_NAMES.items()}[audio.encoding]
    width = 2 if audio.encoding == "linear16" else 1
    fmt = struct.pack(
        "<HHIIHH",
        tag,
        audio.channels,
        audio.sample_rate,
        audio.sample_rate * width * audio.channels,
        width * audio.channels,
        8 * width,
    )
    if tag != 1:
        fmt += b"\x00\x00"
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    if tag != 1:
        body += b"fact" + struct.pack("<II", 4, len(audio.data) // width)
    body += b"data" + struct.pack("<I", len(audio.data)) + audio.data
    if len(audio.data) & 1:
        body += b"\x00"
    with open(path, "wb") as f:
        f.write(b"RIFF" + struct.pack("<I", len(body)) + body)
