"""
Call recordings: two-channel WAV files (caller left, agent right) made from timed audio frames,
their JSON side files, the retention sweep and the upload to S3-compatible storage.

`Mixer` is sans-IO: frames stamped with the call's clock in, interleaved 16-bit stereo out. The
rest does file and network IO and runs in a thread (``plugins/record.py`` calls it through
``deferToThread``), never on the reactor: the reactor only appends frames to a list.

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

import json
import os
import time
import wave
from array import array
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from gateway.codecs.formats import AudioFormat
from gateway.codecs.g711 import audioop
from gateway.codecs.transcode import make_transcoder

__all__ = [
    "Mixer", "FrameLog", "CallRecording", "CALLER", "AGENT", "CLEAR", "write_chunks", "finish_recording",
    "sweep", "S3Target", "upload",
]

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
_Decoder = Callable[[memoryview], "bytes | memoryview"]


def _decoder(source: AudioFormat, rate_hz: int) -> _Decoder:
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


class CallRecording:
    """
    One call's recording on disk: ``<base>.wav`` (two channels, linear16 at the caller's rate,
    its header rewritten after every chunk so the file is playable while the call goes on) and
    ``<base>.json`` (the side file). Made and used in a thread, one chunk at a time.

    ``caller_format`` and ``agent_format`` are what the stage sees of each side; both are
    converted to linear16 at ``rate_hz``.
    """

    def __init__(self, base: str, rate_hz: int, start_s: float, caller_format: AudioFormat,
                 agent_format: AudioFormat) -> None:
        self.base = base
        self.wav_path = base + ".wav"
        self.json_path = base + ".json"
        self.rate_hz = rate_hz
        self.mixer = Mixer(rate_hz, start_s)
        self._decode = {CALLER: _decoder(caller_format, rate_hz), AGENT: _decoder(agent_format, rate_hz)}
        self._file: Any = None
        self._wav: Any = None
        self.frames_written = 0

    def _open(self) -> None:
        """Create the WAV file, never over another: ``-2``, ``-3``... after a name already taken."""
        os.makedirs(os.path.dirname(self.base) or ".", exist_ok=True)
        base, n = self.base, 1
        while True:
            try:
                self._file = open(base + ".wav", "xb")
                break
            except FileExistsError:
                n += 1
                base = f"{self.base}-{n}"
        self.base, self.wav_path, self.json_path = base, base + ".wav", base + ".json"

    def _open_wav(self) -> None:
        if self._file is None:
            self._open()
        self._wav = wave.open(self._file, "wb")
        self._wav.setnchannels(2)
        self._wav.setsampwidth(2)
        self._wav.setframerate(self.rate_hz)

    def write(self, log: FrameLog, until_s: float | None) -> None:
        """Place the frames of ``log`` and append the audio up to ``until_s`` (None: everything placed)."""
        mixer = self.mixer
        decode = self._decode[CALLER]
        for t, payload in _frames(log.caller_audio, log.caller_times, log.caller_sizes):
            pcm = decode(payload)
            if pcm:
                mixer.caller(t, pcm)
        decode = self._decode[AGENT]
        clears = iter(log.clears)
        clear = next(clears, None)
        for index, (t, payload) in enumerate(_frames(log.agent_audio, log.agent_times, log.agent_sizes)):
            while clear is not None and clear[1] <= index:
                mixer.clear(clear[0])
                clear = next(clears, None)
            pcm = decode(payload)
            if pcm:
                mixer.agent(t, pcm)
        while clear is not None:
            mixer.clear(clear[0])
            clear = next(clears, None)
        data = mixer.take(until_s)
        if self._wav is None:
            self._open_wav()
        if data:
            self._wav.writeframes(data)
            self._file.flush()  # a playable file on disk after every chunk
            self.frames_written += len(data) // 4

    def close(self) -> float:
        """Finish the WAV file; returns its duration in seconds."""
        if self._wav is None:
            self._open_wav()
        self._wav.close()
        self._file.close()
        return self.frames_written / self.rate_hz

    def write_side_file(self, document: dict[str, Any]) -> None:
        """Write the side file (replaced whole, atomically); its ``audio.file`` names the WAV file."""
        if self._wav is None and self._file is None:
            self._open_wav()
        if isinstance(document.get("audio"), dict):
            document["audio"]["file"] = os.path.basename(self.wav_path)
        partial = self.json_path + ".part"
        with open(partial, "w") as f:
            json.dump(document, f, indent=2, default=str)
        os.replace(partial, self.json_path)


def sweep(directory: str, retention_days: float, now_s: float | None = None) -> list[str]:
    """
    Delete the recordings (``.wav``, ``.json`` and left-over ``.json.part``) in ``directory``
    and its sub-directories last modified more than ``retention_days`` ago, then the
    sub-directories left empty; returns the paths deleted. Other files are left alone.
    """
    if retention_days <= 0 or not os.path.isdir(directory):
        return []
    cutoff = (time.time() if now_s is None else now_s) - retention_days * 86400
    deleted = []
    for root, dirs, files in os.walk(directory, topdown=False):
        for name in files:
            if not name.endswith((".wav", ".json", ".json.part")):
                continue
            path = os.path.join(root, name)
            try:
                if os.stat(path).st_mtime < cutoff:
                    os.remove(path)
                    deleted.append(path)
            except FileNotFoundError:
                continue
        if root != directory:
            try:
                os.rmdir(root)  # only succeeds when empty
            except OSError:
                pass
    return deleted


class S3Target:
    """An S3-compatible bucket (boto3; credentials from the usual AWS environment variables)."""

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None,
                 region: str | None = None) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint_url = endpoint_url
        self.region = region
        self._client: Any = None

    def client(self) -> Any:
        if self._client is None:
            import boto3

            self._client = boto3.client("s3", endpoint_url=self.endpoint_url or None,
                                        region_name=self.region or None)
        return self._client

    def key(self, relative_path: str) -> str:
        return self.prefix + relative_path.replace(os.sep, "/")


def upload(target: S3Target, directory: str, paths: Iterable[str]) -> list[str]:
    """Upload ``paths`` (inside ``directory``) to ``target`` under their relative paths; returns the keys."""
    keys = []
    for path in paths:
        key = target.key(os.path.relpath(path, directory))
        content_type = "audio/wav" if path.endswith(".wav") else "application/json"
        target.client().upload_file(path, target.bucket, key, ExtraArgs={"ContentType": content_type})
        keys.append(key)
    return keys


def write_chunks(
    batch: list[tuple[CallRecording, FrameLog, float, dict[str, Any] | None]],
) -> list[tuple[int, str]]:
    """
    In a thread: each recording's chunk (and its first side file, once); returns the failures
    as ``(index, problem)``, one recording's failure never stopping the others.
    """
    failures = []
    for index, (recording, log, until_s, side_file) in enumerate(batch):
        try:
            if side_file is not None:
                recording.write_side_file(side_file)
            recording.write(log, until_s)
        except Exception as e:  # noqa: BLE001 - a full disk, a removed directory: that call stops
            failures.append((index, f"{type(e).__name__}: {e}"))
    return failures


def finish_recording(recording: CallRecording, log: FrameLog, document: dict[str, Any],
                     end_s: float | None, directory: str, target: S3Target | None = None,
                     delete_local: bool = False) -> dict[str, Any]:
    """
    In a thread, at the call's end: the last frames up to ``end_s`` (agent audio queued beyond it
    was never played), the WAV closed, the side file (``duration_s``, and ``s3`` with the keys
    when uploading), then the upload to ``target``. Returns ``path``, ``duration_s`` and
    ``keys`` or ``upload_error`` (a failed upload keeps the local files).
    """
    recording.write(log, end_s)
    duration = recording.close()
    document["duration_s"] = round(duration, 3)
    paths = [recording.wav_path, recording.json_path]
    if target is not None:
        document["s3"] = {"bucket": target.bucket,
                          "keys": [target.key(os.path.relpath(p, directory)) for p in paths]}
    recording.write_side_file(document)
    result: dict[str, Any] = {"path": recording.wav_path, "duration_s": round(duration, 3)}
    if target is not None:
        try:
            result["keys"] = upload(target, directory, paths)
        except Exception as e:  # noqa: BLE001 - any storage failure keeps the local files
            result["upload_error"] = f"{type(e).__name__}: {e}"
        else:
            if delete_local:
                for path in paths:
                    os.remove(path)
    return result
