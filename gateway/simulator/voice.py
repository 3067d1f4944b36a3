"""
A whole Twilio phone call, as Twilio runs it: the voice webhook, the ``<Connect><Stream>`` it
answers, and, when the gateway closes a stream whose ``<Connect>`` has an ``action``, the action
request and whatever TwiML that answers (a new stream carrying a resume token after a handover,
or the call's continuation).

Twilio signs every request with ``X-Twilio-Signature`` over the *public* URL it dialled; the
simulator does the same (``public_url``) while sending to ``base_url`` (the gateway, or the proxy
in front of it), rewriting the public URLs in the TwiML onto it.

The caller's clip goes on across streams: a new stream starts with the audio the previous one had
not sent yet (what the caller says during the gap, while Twilio fetches the action URL, is lost,
as on a real call; the gateway hands over at a quiet point so that little is said then). For each
handover the result records when the old stream closed, when the new one opened, and the caller-
heard gap: from the last agent audio before to the first agent audio after.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any, Mapping
from urllib.parse import urlencode

import attrs
from twisted.internet import defer

from gateway.codecs.signatures import compute_signature
from gateway.codecs.wav import WavAudio
from gateway.handover import RESUME_PARAMETER
from gateway.simulator.call import EventSink
from gateway.simulator.connection import local_url
from gateway.simulator.twilio import new_sid
from gateway.simulator.result import CallResult, Handover
from gateway.simulator.twilio import TwilioCall

__all__ = ["TwilioVoiceCall", "VoiceCallResult", "Handover", "parse_twiml"]


@attrs.define
class VoiceCallResult:
    """Every stream of the call, in order, and what came between them."""

    call_sid: str
    webhook_status: int | None = None
    streams: list[CallResult] = attrs.field(factory=list)
    handovers: list[Handover] = attrs.field(factory=list)
    action_requests: int = 0
    final_twiml: str = ""
    error: str | None = None

    @property
    def sent_audio(self) -> bytes:
        return b"".join(r.sent_audio for r in self.streams)

    @property
    def agent_audio(self) -> bytes:
        """The agent audio of every stream, in order (mu-law 8 kHz)."""
        return b"".join(r.agent_audio for r in self.streams)

    def failure(self) -> str | None:
        """
        One line saying why this call is not a success, or ``None``: the webhook answered a
        stream, every stream but the last was closed by the gateway with 1000 (handed over) and
        broke nothing, and the last one is a success as `CallResult.failure` has it.
        """
        if self.error is not None:
            return self.error
        if not self.streams:
            return "the voice webhook's TwiML has no <Connect><Stream>"
        for number, stream in enumerate(self.streams[:-1], 1):
            problem = stream.failure()
            if problem is not None:
                return f"stream {number}: {problem}"
        problem = self.streams[-1].failure()
        return None if problem is None else f"stream {len(self.streams)}: {problem}"

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (each stream as `CallResult.to_json` gives it)."""
        return {
            "call_sid": self.call_sid,
            "webhook_status": self.webhook_status,
            "streams": [s.to_json() for s in self.streams],
            "handovers": [h.to_json() for h in self.handovers],
            "action_requests": self.action_requests,
            "final_twiml": self.final_twiml,
            "error": self.error,
            "ok": self.failure() is None,
            "failure": self.failure(),
        }


@attrs.frozen
class StreamStep:
    """A ``<Connect [action]><Stream url>`` with its ``<Parameter>``s."""

    url: str
    parameters: Mapping[str, str]
    action: str | None


def parse_twiml(body: bytes) -> StreamStep | None:
    """The ``<Connect><Stream>`` of a TwiML document (None: the call does something else)."""
    root = ET.fromstring(body)
    connect = root.find("Connect")
    stream = connect.find("Stream") if connect is not None else None
    if connect is None or stream is None:
        return None
    parameters = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
    return StreamStep(stream.get("url", ""), parameters, connect.get("action"))


class TwilioVoiceCall:
    """
    One phone call against the gateway's voice webhook. ``form`` adds to (or overrides) the
    webhook's standard parameters; ``stream_options`` go to each `TwilioCall`. ``on_event`` is
    told every stream's events (in the call's time, seconds since `run`) and the call's own:
    ``sim.webhook``, ``sim.stream`` (a stream begins) and ``sim.action`` (Twilio's request of the
    ``<Connect action>`` URL).
    """

    def __init__(
        self,
        reactor: Any,
        base_url: str,
        public_url: str,
        audio: WavAudio,
        auth_token: str | None = None,
        form: Mapping[str, str] | None = None,
        max_streams: int = 10,
        on_event: EventSink | None = None,
        **stream_options: Any,
    ) -> None:
        self.reactor = reactor
        self.on_event = on_event
        self._t0 = 0.0
        self.base_url = base_url.rstrip("/")
        self.public_url = public_url.rstrip("/")
        self.audio = audio
        self.auth_token = auth_token
        self.call_sid = new_sid("CA")
        self.form = {
            "CallSid": self.call_sid,
            "AccountSid": new_sid("AC"),
            "From": "+15005550006",
            "To": "+15005550001",
            "CallStatus": "in-progress",
            "Direction": "inbound",
            **dict(form or {}),
        }
        self.call_sid = self.form["CallSid"]
        self.max_streams = max_streams
        self.stream_options = stream_options
        self.result = VoiceCallResult(self.call_sid)
        #: The stream now running (tests may watch it).
        self.current: TwilioCall | None = None

    def _local(self, url: str) -> str:
        """A public URL from the TwiML, onto ``base_url`` (ws for wss, http for https)."""
        return local_url(url, self.public_url, self.base_url)

    @defer.inlineCallbacks
    def _post(self, public: str, form: Mapping[str, str]) -> Any:
        import treq

        headers: dict[bytes | str, list[bytes | str]] = {
            "Content-Type": ["application/x-www-form-urlencoded"]}
        if self.auth_token is not None:
            headers["X-Twilio-Signature"] = [compute_signature(self.auth_token, public, dict(form))]
        response = yield treq.post(self._local(public), data=urlencode(form).encode(), headers=headers,
                                   timeout=10, persistent=False)
        body = yield response.content()
        return response.code, body

    def _emit(self, kind: str, message: Any) -> None:
        if self.on_event is not None:
            self.on_event(self.reactor.seconds() - self._t0, kind, message)

    def _stream_sink(self, started: float) -> EventSink | None:
        """The ``on_event`` of one stream: its times moved onto the call's."""
        sink = self.on_event
        if sink is None:
            return None
        offset = started - self._t0
        return lambda t, kind, message: sink(offset + t, kind, message)

    @defer.inlineCallbacks
    def run(self) -> Any:
        """Fire with the `VoiceCallResult` once the call has no stream left."""
        result = self.result
        self._t0 = self.reactor.seconds()
        webhook = self.public_url + "/twilio/voice"
        status, body = yield self._post(webhook, self.form)
        result.webhook_status = status
        self._emit("sim.webhook", {"url": webhook, "status": status})
        if status != 200:
            result.error = f"voice webhook answered {status}"
            return result
        step = parse_twiml(body)
        clip = self.audio
        sent = 0
        pending: Handover | None = None
        while step is not None and len(result.streams) < self.max_streams:
            rest = attrs.evolve(clip, data=clip.data[sent:]) if sent else clip
            first = not result.streams
            options = dict(self.stream_options)
            if not first:
                # A resumed call has no greeting to wait for.
                options["after_greeting"] = False
            started = self.reactor.seconds()
            self._emit("sim.stream", {"number": len(result.streams) + 1, "url": step.url,
                                      "action": step.action, "resume": RESUME_PARAMETER in step.parameters})
            call = TwilioCall(self.reactor, url=self._local(step.url), audio=rest, call_sid=self.call_sid,
                              account_sid=self.form["AccountSid"], custom_parameters=step.parameters,
                              auth_token=self.auth_token, signed_url=step.url,
                              on_event=self._stream_sink(started), **options)
            self.current = call
            stream = yield call.run()
            result.streams.append(stream)
            sent += len(stream.sent_audio)
            agent = [t for t, kind, _ in stream.events if kind == "media"]  # agent audio (keep_media)
            if pending is not None:
                # When the new stream was open (its WebSocket up), not when it began to connect.
                opened = [t for t, kind, _ in stream.events if kind == "sim.open"]
                pending.opened_at = started + opened[0] if stream.opened and opened else None
                pending.first_agent_audio_at = started + agent[0] if agent else None
                pending = None
            if stream.closed_by != "gateway" or stream.stop_sent or not step.action:
                # The caller hung up (the simulator's stop), or no <Connect action>: the call is over.
                break
            result.action_requests += 1
            action = step.action
            status, body = yield self._post(action, {**self.form, "StreamSid": stream.stream_sid or ""})
            if status != 200:
                self._emit("sim.action", {"url": action, "status": status, "answer": None})
                result.error = f"action URL answered {status}"
                break
            step = parse_twiml(body)
            self._emit("sim.action", {"url": action, "status": status,
                                      "answer": "stream" if step is not None else body.decode("utf-8", "replace")})
            if step is None:
                result.final_twiml = body.decode("utf-8", "replace")
                break
            pending = Handover(closed_at=started + stream.duration_s, opened_at=None,
                               last_agent_audio_at=started + agent[-1] if agent else None)
            result.handovers.append(pending)
        self.current = None
        return result
