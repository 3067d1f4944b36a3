"""
`ClientCall`: a raw-audio client on the gateway's ``/client`` path (CONTRACT.md).

First a text frame ``{"token": "...", "parameters": {...}}``, then PCM s16le 16 kHz mono in
binary frames (20 ms = 640 bytes). Binary frames back are agent audio; text frames are JSON
events (Deepgram's, forwarded) or the gateway's ``{"type": "Error", "code": ...}`` before a 4xxx
close. On ``UserStartedSpeaking`` a client drops its queued agent audio, the /client analogue of
Twilio's ``clear``.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from gateway.codecs.wav import WavAudio
from gateway.simulator.audio import speech_end_bytes, to_linear16_16k
from gateway.simulator.call import EventSink, SimulatedCall

__all__ = ["ClientCall"]


class ClientCall(SimulatedCall):
    """
    One raw-audio client call against ``url``.

    ``audio`` is any WAV clip (converted to linear16 16 kHz if needed). With ``token=None`` the
    client sends nothing at all (no token, no audio) and waits ``wait_s`` for the gateway's
    verdict. After the clip, ``wait_s`` seconds of silence (``None``: until the gateway closes),
    then the client closes with 1000. ``after_greeting`` and ``until_answered`` are described in
    `gateway.simulator.call`; ``AgentAudioDone`` ends an agent turn.
    """

    mode = "client"
    _silence_byte = b"\x00"
    _agent_bytes_per_s = 32000

    def __init__(
        self,
        reactor: Any,
        url: str,
        audio: WavAudio,
        token: str | None = None,
        parameters: Mapping[str, str] | None = None,
        realtime: bool = True,
        frame_ms: int = 20,
        wait_s: float | None = 8.0,
        extra_headers: Mapping[str, str] | None = None,
        on_event: EventSink | None = None,
        keep_media: bool = True,
        close_timeout_s: float = 5.0,
        after_greeting: bool = False,
        greeting_timeout_s: float = 5.0,
        until_answered: bool = False,
    ) -> None:
        self.token = token
        self.parameters = dict(parameters or {})
        clip = to_linear16_16k(audio) if token is not None else b""
        frame_bytes = 32 * frame_ms
        super().__init__(reactor, url, clip, frame_bytes, frame_ms, realtime, wait_s,
                         extra_headers or {}, on_event, keep_media, close_timeout_s,
                         after_greeting=after_greeting and token is not None,
                         greeting_timeout_s=greeting_timeout_s, until_answered=until_answered)
        self.result.agent_encoding, self.result.agent_sample_rate_hz = "linear16", 16000
        if clip:
            self._speech_end_frame = -(-speech_end_bytes(clip, "linear16", frame_bytes) // frame_bytes) - 1

    def _start_stream(self) -> None:
        if self.token is None:
            # Nothing to send: no pacing, only the wait for the gateway's verdict.
            self._ending = True
            if self.wait_s is not None:
                self._close_call = self.reactor.callLater(self.wait_s, self._end_stream)
            return
        self.send_text(json.dumps({"token": self.token, "parameters": self.parameters}).encode())

    def _send_frame(self, index: int, chunk: bytes) -> None:
        self.send_binary(chunk)

    def _end_stream(self) -> None:
        self._close_call = None
        self.record("sim.hangup", {})
        self.close("client done")

    def _on_binary(self, t: float, payload: bytes) -> None:
        if self._keep_media:
            self.record("binary", len(payload), t)
        if len(payload) % 2:
            self.result.violation(f"an agent audio frame of {len(payload)} bytes (not whole 16-bit samples)")
        self._agent_audio(t, payload)

    def _on_text(self, t: float, payload: bytes) -> None:
        result = self.result
        try:
            message = json.loads(payload)
        except ValueError:
            self.record("invalid", payload[:200].decode("utf-8", "replace"), t)
            result.violation(f"a text frame that is not JSON: {payload[:40]!r}")
            return
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            self.record("invalid", message, t)
            result.violation("a JSON text frame without a string 'type'")
            return
        kind = message["type"]
        self.record(kind, message, t)
        if kind == "Error":
            result.errors.append(message)
        elif kind == "ConversationText":
            role, content = message.get("role"), message.get("content")
            if isinstance(role, str) and isinstance(content, str):
                result.transcript.append((t, role, content))
        elif kind == "Results":
            text = _final_transcript(message)
            if text:
                result.transcript.append((t, "user", text))
        elif kind == "AgentAudioDone":
            self._turn_done()
        elif kind == "UserStartedSpeaking":
            result.clears += 1
            dropped_s, _ = self.playback.clear()
            self.record("sim.cleared", {"dropped_s": dropped_s, "marks": []})


def _final_transcript(message: dict) -> str:
    """The transcript of a final listen-mode ``Results`` message, or ``""``."""
    if not message.get("is_final"):
        return ""
    try:
        return str(message["channel"]["alternatives"][0]["transcript"]).strip()
    except (KeyError, IndexError, TypeError):
        return ""
