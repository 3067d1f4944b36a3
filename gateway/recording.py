"""
Call recordings on disk: two-channel WAV files (caller left, agent right), their JSON side files,
the retention sweep and the upload to S3-compatible storage.

All of it does file and network IO and runs in a thread (``plugins/record.py`` calls it through
``deferToThread``), never on the reactor: the reactor only appends frames to a `FrameLog`. Where
each frame goes in the file is `gateway.mixer`'s job (sans-IO); `CallRecording` feeds it and
writes what it hands out.
"""

from __future__ import annotations

import json
import os
import time
import wave
from typing import Any, Iterable

from gateway.codecs.formats import AudioFormat
# FrameLog and the side constants are re-exported: the record plugin and its tests take the
# whole recording API from this module.
from gateway.mixer import AGENT, CALLER, CLEAR, SILENT_PEAK, FrameLog, Mixer, decoder

__all__ = [
    "Mixer", "FrameLog", "CallRecording", "CALLER", "AGENT", "CLEAR", "SILENT_PEAK", "write_chunks",
    "finish_recording", "sweep", "S3Target", "upload",
]


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
        self._decode_caller = decoder(caller_format, rate_hz)
        self._decode_agent = decoder(agent_format, rate_hz)
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
        self.mixer.place(log, self._decode_caller, self._decode_agent)
        data = self.mixer.take(until_s)
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
