"""
`ClientCall`: a raw-audio client on the gateway's ``/client`` path (CONTRACT.md).

First a text frame ``{"token": "...", "parameters": {...}, "handover": true}``, then PCM s16le
16 kHz mono in binary frames (20 ms = 640 bytes). Binary frames back are agent audio; text frames
are JSON events (Deepgram's, forwarded) or the gateway's ``{"type": "Error", "code": ...}`` before
a 4xxx close. On ``UserStartedSpeaking`` a client drops its queued agent audio, the /client
analogue of Twilio's ``clear``.

A handover (the gateway process is draining): the gateway sends ``{"type": "Handover", "url":
..., "token": ..., "expires_in": ..., "retry_after_ms": ...}`` and closes with 1000
``HANDED_OVER``. The client stops sending at the message (what it has not sent goes on the new
socket: a person's words are not lost, only delayed by the gap), keeps playing the agent audio it
has queued, opens ``url`` (or its own URL when ``url`` is null) after ``retry_after_ms`` and sends
``{"token": <the resume token>}``; an upgrade refused on the way (a proxy may pick a process that
is still draining: HTTP 503) is tried again a few times while the token lasts. The result keeps
one record across the sockets, with a `Handover` entry for each move.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from gateway.codecs.wav import WavAudio
from gateway.simulator.audio import speech_end_bytes, to_linear16_16k
from gateway.simulator.call import EventSink, SimulatedCall
from gateway.simulator.connection import local_url
from gateway.simulator.result import Handover

__all__ = ["ClientCall", "RECONNECT_ATTEMPTS"]

#: How many times a handover's new socket is tried (a refused upgrade, a failed connect).
RECONNECT_ATTEMPTS = 5
#: The wait before trying again, times the attempt number.
RECONNECT_BACKOFF_S = 0.25


class ClientCall(SimulatedCall):
    """
    One raw-audio client call against ``url``.

    ``audio`` is any WAV clip (converted to linear16 16 kHz if needed). With ``token=None`` the
    client sends nothing at all (no token, no audio) and waits ``wait_s`` for the gateway's
    verdict. After the clip, ``wait_s`` seconds of silence (``None``: until the gateway closes),
    then the client closes with 1000. ``after_greeting`` and ``until_answered`` are described in
    `gateway.simulator.call`; ``AgentAudioDone`` ends an agent turn. With ``follow_handover``
    (the default) the hello says ``"handover": true`` and a ``Handover`` message is followed to
    the new socket; ``public_url`` and ``base_url`` move the URL it names onto where the gateway
    really listens (as `gateway.simulator.voice.TwilioVoiceCall` does for TwiML).
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
        follow_handover: bool = True,
        public_url: str | None = None,
        base_url: str | None = None,
    ) -> None:
        self.token = token
        self.parameters = dict(parameters or {})
        self.follow_handover = follow_handover
        self.public_url = public_url
        self.base_url = base_url
        # The Handover message of the socket now closing, and the move it started.
        self._offer: dict[str, Any] | None = None
        self._moving: Handover | None = None
        self._arrived: Handover | None = None
        self._attempts = 0
        self._resume_token = ""
        self._target = ""
        self._refused: tuple[int | None, str] = (None, "the socket closed before it opened")
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
        hello: dict[str, Any] = {"token": self.token, "parameters": self.parameters}
        if self.follow_handover:
            hello["handover"] = True
        self.send_text(json.dumps(hello).encode())

    def _resume_stream(self) -> None:
        assert self._moving is not None
        moved, self._moving = self._moving, None
        moved.opened_at = self.now_s()
        self._arrived = moved
        self._attempts = 0
        self.send_text(json.dumps({"token": self._resume_token}).encode())

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
        if self._arrived is not None:
            self._arrived.first_agent_audio_at = t
            self._arrived = None
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
        self.record(kind, {**message, "token": "<resume token>"} if kind == "Handover" else message, t)
        if kind == "Handover":
            self._handover_offered(message)
        elif kind == "Error":
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


    # -- following a handover ------------------------------------------------------------------

    def _handover_offered(self, message: dict) -> None:
        """A ``Handover`` message: stop sending; the close that follows starts the move."""
        token, url = message.get("token"), message.get("url")
        retry = message.get("retry_after_ms", 0)
        if not isinstance(token, str) or not token \
                or not (url is None or isinstance(url, str) and url.startswith(("ws://", "wss://"))) \
                or not isinstance(retry, int) or isinstance(retry, bool) or retry < 0:
            self.result.violation("a Handover message without a string token, a ws:// or wss:// "
                                  "(or null) url and a whole retry_after_ms >= 0")
            return
        if not self.follow_handover or self._ending:
            return
        self._offer = message
        self._pause()

    def _closed(self, was_clean: bool, code: int | None, reason: str | None) -> None:
        offer, self._offer = self._offer, None
        if self._moving is not None:
            # A new socket for the handover never opened: try again while the token lasts.
            self._retry_move()
            return
        if offer is None or self._ending or code != 1000:
            if offer is not None:
                self._paused = False
            super()._closed(was_clean, code, reason)
            return
        # The gateway handed the call over: this socket is done, the call is not.
        self.record("sim.closed", {"code": code, "reason": reason, "clean": was_clean, "by": "gateway"})
        last = self._agent_times[-1] if self._agent_times else None
        self._moving = Handover(closed_at=self.now_s(), opened_at=None, last_agent_audio_at=last)
        self.result.handovers.append(self._moving)
        self._resume_token = offer["token"]
        target = offer.get("url") or self.url
        self._target = local_url(target, self.public_url, self.base_url)
        self.record("sim.handover", {"url": self._target, "retry_after_ms": offer.get("retry_after_ms", 0)})
        self._reconnect(self._target, offer.get("retry_after_ms", 0) / 1000.0)

    def _handshake_failed(self, status: int | None, reason: str) -> None:
        if self._moving is None:
            super()._handshake_failed(status, reason)
            return
        self._refused = (status, reason)

    def _connect_failed(self, message: str) -> None:
        if self._moving is None:
            super()._connect_failed(message)
            return
        self._refused = (None, message)
        self._retry_move()

    def _retry_move(self) -> None:
        self._attempts += 1
        status, why = self._refused
        self.record("sim.reconnect_failed", {"attempt": self._attempts, "status": status, "why": why})
        if self._attempts < RECONNECT_ATTEMPTS:
            self._reconnect(self._target, RECONNECT_BACKOFF_S * self._attempts)
            return
        # Out of attempts: the call ends here, saying why.
        self._moving = None
        if status is not None:
            self.result.handshake_status = status
        else:
            self.result.connect_error = f"{why} (after a handover, {self._attempts} attempts)"
        self._finish()


def _final_transcript(message: dict) -> str:
    """The transcript of a final listen-mode ``Results`` message, or ``""``."""
    if not message.get("is_final"):
        return ""
    try:
        return str(message["channel"]["alternatives"][0]["transcript"]).strip()
    except (KeyError, IndexError, TypeError):
        return ""
