"""
`TwilioCall`: a Twilio Media Stream played into the gateway exactly as Twilio does.

It sends ``connected``, ``start``, the caller's audio as ``media`` (mu-law 8 kHz, 20 ms = 160
bytes; the last frame may be short and goes as it is) with string counters, ``dtmf`` when asked,
and ``stop``; it plays back what the gateway sends on a modelled Twilio queue, echoes ``mark``s
when playback reaches them (or at once on ``clear``), and records what Twilio would reject:
binary frames (warning 31950) and non-JSON, unknown events, missing or extra fields, a wrong
``streamSid`` (31951). See protocols.md §1.
"""

from __future__ import annotations

import binascii
import json
import uuid
from typing import Any, Iterable, Mapping

from gateway.codecs.signatures import compute_signature
from gateway.codecs.wav import WavAudio
from gateway.simulator.audio import speech_end_bytes, to_mulaw_8k
from gateway.simulator.call import EventSink, SimulatedCall
from gateway.simulator.playback import PLAYED

__all__ = ["TwilioCall", "new_sid"]

#: The fields each message to Twilio must have, and nothing else (protocols.md §1.3).
_TOP_FIELDS = {
    "media": frozenset({"event", "streamSid", "media"}),
    "mark": frozenset({"event", "streamSid", "mark"}),
    "clear": frozenset({"event", "streamSid"}),
}
_INNER_FIELDS = {"media": frozenset({"payload"}), "mark": frozenset({"name"})}


def new_sid(prefix: str) -> str:
    """A Twilio-shaped SID: two letters and 32 hex digits."""
    return prefix + uuid.uuid4().hex


def _jstr(value: str) -> str:
    return json.dumps(value)


class TwilioCall(SimulatedCall):
    """
    One Twilio Media Stream (``<Connect><Stream>``, bidirectional) against ``url``.

    ``audio`` is any WAV clip (converted to mu-law 8 kHz if needed). ``auth_token`` signs the
    upgrade: ``X-Twilio-Signature`` = base64(HMAC-SHA1(token, ``signed_url``)), where
    ``signed_url`` is the public ``wss://`` URL Twilio would have dialled (defaults to ``url``).
    ``dtmf`` is a list of ``(at_s, digit)`` in stream time. ``wait_s`` seconds of silence follow
    the clip so the agent can answer (``None``: until the gateway closes); then ``stop`` (unless
    ``send_stop`` is false: the caller drops and we close ourselves), and the gateway has
    ``close_timeout_s`` to close before we do. ``after_greeting`` and ``until_answered`` are
    described in `gateway.simulator.call`; a mark echoed as played ends an agent turn.
    """

    mode = "twilio"
    _silence_byte = b"\xff"
    _agent_bytes_per_s = 8000

    def __init__(
        self,
        reactor: Any,
        url: str,
        audio: WavAudio,
        stream_sid: str | None = None,
        call_sid: str | None = None,
        account_sid: str | None = None,
        custom_parameters: Mapping[str, str] | None = None,
        auth_token: str | None = None,
        signed_url: str | None = None,
        realtime: bool = True,
        frame_ms: int = 20,
        dtmf: Iterable[tuple[float, str]] = (),
        wait_s: float | None = 8.0,
        send_stop: bool = True,
        echo_marks: bool = True,
        extra_headers: Mapping[str, str] | None = None,
        on_event: EventSink | None = None,
        keep_media: bool = True,
        close_timeout_s: float = 5.0,
        after_greeting: bool = False,
        greeting_timeout_s: float = 5.0,
        until_answered: bool = False,
    ) -> None:
        self.stream_sid = stream_sid or new_sid("MZ")
        self.call_sid = call_sid or new_sid("CA")
        self.account_sid = account_sid or new_sid("AC")
        self.custom_parameters = dict(custom_parameters or {})
        self.signed_url = signed_url or url
        self.send_stop = send_stop
        self.echo_marks = echo_marks
        self.dtmf = sorted((float(at), str(digit)) for at, digit in dtmf)
        headers = dict(extra_headers or {})
        if auth_token is not None:
            headers["X-Twilio-Signature"] = compute_signature(auth_token, self.signed_url)
        clip = to_mulaw_8k(audio)
        frame_bytes = 8 * frame_ms
        super().__init__(reactor, url, clip, frame_bytes, frame_ms, realtime, wait_s, headers,
                         on_event, keep_media, close_timeout_s, after_greeting=after_greeting,
                         greeting_timeout_s=greeting_timeout_s, until_answered=until_answered)
        self.result.stream_sid, self.result.call_sid = self.stream_sid, self.call_sid
        self._speech_end_frame = -(-speech_end_bytes(clip, "mulaw", frame_bytes) // frame_bytes) - 1
        self._seq = 0
        self._dtmf_next = 0
        self._sid_json = _jstr(self.stream_sid).encode()

    # -- sending -------------------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _send_json(self, message: dict) -> None:
        self.send_text(json.dumps(message).encode())

    def _start_stream(self) -> None:
        self._send_json({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        self._send_json({
            "event": "start",
            "sequenceNumber": str(self._next_seq()),
            "start": {
                "accountSid": self.account_sid,
                "streamSid": self.stream_sid,
                "callSid": self.call_sid,
                "tracks": ["inbound"],
                "customParameters": self.custom_parameters,
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
            "streamSid": self.stream_sid,
        })

    def _send_frame(self, index: int, chunk: bytes) -> None:
        # Built by hand: this runs 50 times a second per call.
        self.send_text(b"".join((
            b'{"event":"media","sequenceNumber":"%d","media":{"track":"inbound","chunk":"%d",'
            b'"timestamp":"%d","payload":"' % (self._next_seq(), index + 1, index * self.frame_ms),
            binascii.b2a_base64(chunk, newline=False),
            b'"},"streamSid":',
            self._sid_json,
            b"}",
        )))

    def _before_frame(self, stream_s: float) -> None:
        while self._dtmf_next < len(self.dtmf) and self.dtmf[self._dtmf_next][0] <= stream_s + 1e-9:
            self._send_dtmf(self.dtmf[self._dtmf_next][1])
            self._dtmf_next += 1

    def _send_dtmf(self, digit: str) -> None:
        self._send_json({
            "event": "dtmf",
            "streamSid": self.stream_sid,
            "sequenceNumber": str(self._next_seq()),
            "dtmf": {"track": "inbound_track", "digit": digit},
        })
        self.result.dtmf_sent.append((self.now_s(), digit))
        self.record("sim.dtmf_sent", {"digit": digit})

    def _end_stream(self) -> None:
        while self._dtmf_next < len(self.dtmf):
            self._send_dtmf(self.dtmf[self._dtmf_next][1])
            self._dtmf_next += 1
        if not self.send_stop:
            self.record("sim.hangup", {"stop": False})
            self.close("caller hung up")
            return
        self._send_json({
            "event": "stop",
            "sequenceNumber": str(self._next_seq()),
            "stop": {"accountSid": self.account_sid, "callSid": self.call_sid},
            "streamSid": self.stream_sid,
        })
        self.result.stop_sent = True
        self.record("sim.stop_sent", {})
        self._close_call = self.reactor.callLater(self.close_timeout_s, self._stop_unanswered)

    def _stop_unanswered(self) -> None:
        self._close_call = None
        self.result.stop_unanswered = True
        self.record("sim.stop_unanswered", {"after_s": self.close_timeout_s})
        self.close("no close after stop")

    def _mark_played(self, name: str, how: str) -> None:
        if how == PLAYED:
            self._turn_done()
        if self.echo_marks and not self.result.stop_sent:
            self._send_json({
                "event": "mark",
                "sequenceNumber": str(self._next_seq()),
                "streamSid": self.stream_sid,
                "mark": {"name": name},
            })
            self.result.marks_echoed.append((name, how))
        self.record("sim.mark_echoed", {"name": name, "how": how, "sent": self.echo_marks})

    # -- receiving -----------------------------------------------------------------------------

    def _on_binary(self, t: float, payload: bytes) -> None:
        self.record("binary", len(payload), t)
        self.result.violation(f"31950 binary frame of {len(payload)} bytes (Twilio takes text only)")

    def _on_text(self, t: float, payload: bytes) -> None:
        result = self.result
        try:
            message = json.loads(payload)
        except ValueError:
            self.record("invalid", payload[:200].decode("utf-8", "replace"), t)
            result.violation(f"31951 a text frame that is not JSON: {payload[:40]!r}")
            return
        if not isinstance(message, dict):
            self.record("invalid", message, t)
            result.violation(f"31951 a JSON {type(message).__name__}, not an object")
            return
        event = message.get("event")
        if event not in _TOP_FIELDS:
            self.record(event if isinstance(event, str) else "invalid", message, t)
            result.violation(f"31951 unknown event {event!r:.40}")
            return
        if event != "media" or self._keep_media:
            self.record(event, message, t)
        self._check_fields(event, message)
        if event == "media":
            media = message.get("media")
            payload_b64 = media.get("payload") if isinstance(media, dict) else None
            if not isinstance(payload_b64, str):
                return
            try:
                audio = binascii.a2b_base64(payload_b64)
            except binascii.Error:
                result.violation("31951 media.payload is not base64")
                return
            self._agent_audio(t, audio)
        elif event == "mark":
            mark = message.get("mark")
            name = mark.get("name") if isinstance(mark, dict) else None
            if not isinstance(name, str):
                return
            result.marks_received.append(name)
            self.playback.mark(name)
        else:
            result.clears += 1
            dropped_s, marks = self.playback.clear()
            self.record("sim.cleared", {"dropped_s": dropped_s, "marks": marks})

    def _check_fields(self, event: str, message: dict) -> None:
        """Twilio's 31951: a wrong or missing streamSid, a missing or an extra field."""
        result = self.result
        sid = message.get("streamSid")
        if sid != self.stream_sid:
            got = "no streamSid" if sid is None else f"streamSid {sid!r:.40}"
            result.violation(f"31951 {event} with {got}, expected {self.stream_sid}")
        fields = set(message) | {"streamSid"}  # a missing streamSid is reported above
        if fields != _TOP_FIELDS[event]:
            self._field_violation(event, "", _TOP_FIELDS[event], fields)
        inner_fields = _INNER_FIELDS.get(event)
        if inner_fields is None or event not in message:
            return
        inner = message[event]
        if not isinstance(inner, dict):
            result.violation(f"31951 {event}.{event} is a {type(inner).__name__}, not an object")
            return
        if set(inner) != inner_fields:
            self._field_violation(event, f"{event}.", inner_fields, set(inner))
        value = inner.get(next(iter(inner_fields)))
        if value is not None and not isinstance(value, str):
            result.violation(f"31951 {event}.{next(iter(inner_fields))} is not a string")

    def _field_violation(self, event: str, prefix: str, expected: frozenset, got: set) -> None:
        missing = sorted(expected - got)
        extra = sorted(got - expected)
        if missing:
            self.result.violation(f"31951 {event} without {', '.join(prefix + m for m in missing)}")
        if extra:
            self.result.violation(f"31951 {event} with unexpected {', '.join(prefix + e for e in extra)}")
