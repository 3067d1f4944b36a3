"""Per-call sequence tracking: frames received, lost, duplicated, reordered, misrouted."""

from __future__ import annotations

import struct

__all__ = ["SeqTrack", "STAMP", "stamp", "unstamp"]

#: magic (2 bytes: b"BI" inbound, b"BO" outbound), call index, frame sequence, CLOCK_MONOTONIC ns.
STAMP = struct.Struct("<2sIIQ")


def stamp(magic: bytes, call: int, seq: int, t_ns: int, size: int, fill: bytes) -> bytes:
    return STAMP.pack(magic, call, seq, t_ns) + fill * (size - STAMP.size)


def unstamp(data: bytes) -> tuple[bytes, int, int, int]:
    return STAMP.unpack_from(data)


class SeqTrack:
    """What a receiver saw of one call's sequence (0, 1, 2 ...)."""

    __slots__ = ("next", "missing", "unique", "dup", "reorder", "misrouted", "bad")

    def __init__(self) -> None:
        self.next = 0
        self.missing: set[int] = set()
        self.unique = 0
        self.dup = 0
        self.reorder = 0
        self.misrouted = 0
        self.bad = 0

    def see(self, seq: int) -> None:
        nxt = self.next
        if seq == nxt:
            self.next = nxt + 1
            self.unique += 1
        elif seq > nxt:
            self.missing.update(range(nxt, seq))
            self.next = seq + 1
            self.unique += 1
        elif seq in self.missing:
            self.missing.discard(seq)
            self.reorder += 1
            self.unique += 1
        else:
            self.dup += 1

    def as_dict(self) -> dict[str, int]:
        return {"unique": self.unique, "dup": self.dup, "reorder": self.reorder,
                "gaps": len(self.missing), "misrouted": self.misrouted, "bad": self.bad}
