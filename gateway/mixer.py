"""
A call's two sides mixed into one timeline, sans-IO: the frames a call's record stage logs
(`FrameLog`: audio stamped with the call's clock, and clears) in, interleaved 16-bit stereo
(caller left, agent right) out (`Mixer`). `gateway.recording` writes what comes out to disk, in a
thread; nothing here touches a file, a socket or a clock.

Where a frame goes (samples since the recording's start, at the caller's rate):

- **Caller** audio is contiguous: each frame follows the previous one. A frame arriving more
  than ``gap_s`` after the end of the last one starts after silence, at its arrival time (the
  caller sent nothing meanwhile). A stream whose first frame came late, or the burst after a
  network stall, runs ahead of the clock (a frame arrives before the place its predecessors
  leave it); it is put back in step by leaving out silence: of a *silent* caller frame arriving
  more than ``ahead_s`` early, as many samples as it is early (speech is never left out). The
  caller's timeline so converges on its earliest arrivals, the delay the network cannot beat.
- **Agent** audio is placed when the gateway sent it to the caller, or right after the agent
  audio before it, whichever is later: the caller's phone plays what it is sent in order (as
  Twilio's buffer does), so a reply Deepgram sends faster than real time is laid out in real time.
- A **clear** (barge-in: Twilio ``clear``, or the caller starting to speak) drops the agent audio
  placed after that moment: the caller never heard it.
"""

from __future__ import annotations

from array import array
from typing import Callable, Iterator

import numpy as np

from gateway.codecs.formats import AudioFormat
from gateway.codecs.g711 import audioop
from gateway.codecs.transcode import make_transcoder

__all__ = ["Mixer", "FrameLog", "Decoder", "decoder", "CALLER", "AGENT", "CLEAR", "SILENT_PEAK"]

#: What a `FrameLog` entry is: caller audio, agent audio, or a clear of the caller's queue.
CALLER, AGENT, CLEAR = 0, 1, 2

#: Peak (16-bit) under which a caller frame counts as silence when catching up.
SILENT_PEAK = 256


class _Channel:
    """One channel's samples from ``base`` on (16-bit little-endian), and where the next goes."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.cursor = 0  # in samples, absolute

    def write(self, base: int, at: int, pcm: bytes | memoryview) -> None:
        buf = self.buf
        offset = (at - base) * 2
        held = len(buf)
        if offset >= held:  # the usual case: right after what is there, or after silence
            if offset > held:
                buf += bytes(offset - held)
            buf += pcm
        else:
            buf[offset:offset + len(pcm)] = pcm
        self.cursor = at + len(pcm) // 2

    def truncate(self, base: int, at: int) -> None:
        at = max(at, base)
        if self.cursor > at:
            del self.buf[(at - base) * 2:]
            self.cursor = at

    def take(self, n: int) -> bytes:
        out = bytes(self.buf[: n * 2])
        del self.buf[: n * 2]
        return out + bytes(n * 2 - len(out))


class Mixer:
    """
    Places timed mono 16-bit frames of the two sides (see the module docstring) and hands out
    interleaved stereo, in order, up to a given time. ``start_s`` is the recording's time zero.
    """

    def __init__(self, rate_hz: int, start_s: float, gap_s: float = 0.1, ahead_s: float = 0.005) -> None:
        self.rate_hz = rate_hz
        self.start_s = start_s
        self._gap = int(gap_s * rate_hz)
        self._ahead = int(ahead_s * rate_hz)
        self.base = 0  # samples handed out so far
        self._caller = _Channel()
        self._agent = _Channel()
        self.skipped_silence = 0  # caller samples left out to catch up with the clock

    def _at(self, t_s: float) -> int:
        return max(0, round((t_s - self.start_s) * self.rate_hz))

    def caller(self, t_s: float, pcm: bytes | memoryview) -> None:
        """A caller frame that arrived at ``t_s``."""
        channel = self._caller
        cursor = max(channel.cursor, self.base)
        target = self._at(t_s)
        if target > cursor + self._gap:
            cursor = target
        elif cursor > target + self._ahead and audioop.max(pcm, 2) < SILENT_PEAK:
            # Ahead of the clock: leave out as much of this silent frame as puts it back in step.
            skip = min(cursor - target, len(pcm) // 2)
            self.skipped_silence += skip
            pcm = pcm[skip * 2:]
            if not pcm:
                return
        channel.write(self.base, cursor, pcm)

    def agent(self, t_s: float, pcm: bytes | memoryview) -> None:
        """An agent frame sent to the caller at ``t_s``."""
        channel = self._agent
        channel.write(self.base, max(channel.cursor, self.base, self._at(t_s)), pcm)

    def clear(self, t_s: float) -> None:
        """The caller's queued agent audio was dropped at ``t_s``."""
        self._agent.truncate(self.base, self._at(t_s))

    @property
    def end(self) -> int:
        """The sample after the last one placed on either side."""
        return max(self.base, self._caller.cursor, self._agent.cursor)

    def place(self, log: FrameLog, decode_caller: Decoder, decode_agent: Decoder) -> None:
        """
        Place every frame of ``log``, each side's decoded to linear16 at the mixer's rate, and
        its clears between the agent frames they came after.
        """
        for t, payload in _frames(log.caller_audio, log.caller_times, log.caller_sizes):
            pcm = decode_caller(payload)
            if pcm:
                self.caller(t, pcm)
        clears = iter(log.clears)
        clear = next(clears, None)
        for index, (t, payload) in enumerate(_frames(log.agent_audio, log.agent_times, log.agent_sizes)):
            while clear is not None and clear[1] <= index:
                self.clear(clear[0])
                clear = next(clears, None)
            pcm = decode_agent(payload)
            if pcm:
                self.agent(t, pcm)
        while clear is not None:
            self.clear(clear[0])
            clear = next(clears, None)

    def take(self, until_s: float | None = None) -> bytes:
        """Interleaved stereo (caller left) from where the last take ended to ``until_s`` (None: all)."""
        until = self.end if until_s is None else self._at(until_s)
        n = until - self.base
        if n <= 0:
            return b""
        stereo = np.empty(2 * n, dtype="<i2")
        stereo[0::2] = np.frombuffer(self._caller.take(n), dtype="<i2")
        stereo[1::2] = np.frombuffer(self._agent.take(n), dtype="<i2")
        self.base = until
        return stereo.tobytes()


class _Pairs:
    """linear16 as it comes, whole samples only: an odd trailing byte waits for the next frame."""

    def __init__(self) -> None:
        self._carry: bytes | memoryview = b""

    def __call__(self, data: bytes | memoryview) -> bytes | memoryview:
        if self._carry:
            data, self._carry = bytes(self._carry) + data, b""
        if len(data) & 1:
            data, self._carry = data[:-1], data[-1:]
        return data


#: A side's frame (a view into the `FrameLog`) to linear16 at the recording's rate.
Decoder = Callable[[memoryview], "bytes | memoryview"]


def decoder(source: AudioFormat, rate_hz: int) -> Decoder:
    """Frames of ``source`` to linear16 at ``rate_hz``: one C call for mu-law at that rate."""
    if source.sample_rate_hz == rate_hz:
        if source.encoding == "mulaw":
            return lambda payload: audioop.ulaw2lin(payload, 2)
        return _Pairs()
    convert = make_transcoder(source, AudioFormat("linear16", rate_hz)).convert
    return lambda payload: convert(bytes(payload))


class FrameLog:
    """
    A call's frames since the last chunk, as the reactor appends them: each side's audio in one
    bytearray, each frame's arrival time and size in arrays (no object kept per frame), and each
    clear with its time and how many agent frames came before it (the order that matters).
    """

    __slots__ = ("caller_audio", "caller_times", "caller_sizes", "agent_audio", "agent_times",
                 "agent_sizes", "clears")

    def __init__(self) -> None:
        self.caller_audio = bytearray()
        self.caller_times = array("d")
        self.caller_sizes = array("I")
        self.agent_audio = bytearray()
        self.agent_times = array("d")
        self.agent_sizes = array("I")
        self.clears: list[tuple[float, int]] = []

    def __len__(self) -> int:
        """Frames held, both sides."""
        return len(self.caller_times) + len(self.agent_times)

    def add(self, t_s: float, side: int, payload: bytes = b"") -> None:
        """Append one frame (or a ``CLEAR``); the stage inlines this on its hot path."""
        if side == CALLER:
            self.caller_audio += payload
            self.caller_times.append(t_s)
            self.caller_sizes.append(len(payload))
        elif side == AGENT:
            self.agent_audio += payload
            self.agent_times.append(t_s)
            self.agent_sizes.append(len(payload))
        else:
            self.clears.append((t_s, len(self.agent_times)))


def _frames(audio: bytearray, times: array, sizes: array) -> Iterator[tuple[float, memoryview]]:
    view = memoryview(audio)
    at = 0
    for t, n in zip(times, sizes):
        yield t, view[at:at + n]
        at += n
