"""
live_events: a call's transcripts and conversation turns, POSTed to a webhook as they happen.

Off unless the chain names it; put it **before** ``redact`` (``redact`` stays last): outbound
events visit the stages in reverse order, so a stage listed before ``redact`` sees only masked
text (start-up refuses ``live_events`` after ``redact``).

What is sent, one event per item (README, "Live events: payload reference"):

- ``call.started`` when the caller's stream starts, ``call.ended`` when the call is over;
- ``transcript``: ``/v1/listen`` ``Results`` (finals; interims too with ``interim_results``)
  and Flux ``TurnInfo`` (``EndOfTurn``; every turn event with ``interim_results``);
- ``conversation``: the Voice Agent's ``ConversationText`` (caller and agent turns);
- ``function_call`` / ``function_response``: the agent's function calls and their answers
  (names and ids; arguments and results only with ``function_arguments``, since the redact
  plugin leaves them unmasked: the function needs the real number).

Events are queued in the process's `gateway.webhooks.BatchSender` and POSTed in batches
(``batch_ms``, ``max_batch``), one POST at a time so each call's events arrive in order,
signed like the call report (``X-Gateway-Signature`` with ``GATEWAY_WEBHOOK_SECRET``), retried
with backoff. Bounded: at most ``max_queue`` events of a call and ``max_queue_process`` of the
process wait; past that the oldest is dropped and counted (``live_events_dropped``). A slow or
dead receiver never blocks or slows a call. Plugins see the same events in the chain.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Mapping

import attrs
from twisted.plugin import IPlugin
from zope.interface import implementer

from gateway.config import GatewayConfig
from gateway.errors import ConfigError
from gateway.section import Section
from gateway.events import DeepgramEvent, StreamStarted, UpstreamMessage
from gateway.plugin import IStreamPlugin, Routes, StageContext
from gateway.webhooks import BatchLimits, BatchSender

__all__ = ["plugin", "LiveEventsStage", "LiveEventsFactory", "LiveOptions", "event_data"]

#: The version of the payload (README, "Live events: payload reference").
PAYLOAD_VERSION = 1


@attrs.frozen
class LiveOptions:
    """``[live_events]``: where to, how batched and bounded, and what is included."""

    url: str
    limits: BatchLimits = BatchLimits()
    interim_results: bool = False
    words: bool = False
    function_arguments: bool = False


def _listen_results(message: Mapping[str, Any], options: LiveOptions) -> dict[str, Any] | None:
    final = bool(message.get("is_final"))
    if not final and not options.interim_results:
        return None
    try:
        alternative = message["channel"]["alternatives"][0]
    except (KeyError, IndexError, TypeError):
        return None
    text = alternative.get("transcript") if isinstance(alternative, dict) else None
    if not isinstance(text, str) or not text:
        return None
    data = {
        "source": "listen",
        "final": final,
        "speech_final": bool(message.get("speech_final")),
        "transcript": text,
        "confidence": alternative.get("confidence"),
        "start": message.get("start"),
        "duration": message.get("duration"),
    }
    if options.words:
        data["words"] = alternative.get("words") or []
    return data


def _flux_turn(message: Mapping[str, Any], options: LiveOptions) -> dict[str, Any] | None:
    event = message.get("event")
    final = event == "EndOfTurn"
    text = message.get("transcript")
    if final and not (isinstance(text, str) and text):
        return None
    if not final and not options.interim_results:
        return None
    data = {
        "source": "flux",
        "final": final,
        "event": event,
        "turn_index": message.get("turn_index"),
        "transcript": text if isinstance(text, str) else "",
        "end_of_turn_confidence": message.get("end_of_turn_confidence"),
        "audio_window_start": message.get("audio_window_start"),
        "audio_window_end": message.get("audio_window_end"),
    }
    if options.words:
        data["words"] = message.get("words") or []
    return data


def _function_call(message: Mapping[str, Any], options: LiveOptions) -> dict[str, Any] | None:
    functions = []
    for item in message.get("functions") or ():
        if not isinstance(item, dict):
            continue
        entry = {"id": item.get("id"), "name": item.get("name"), "client_side": item.get("client_side")}
        if options.function_arguments:
            entry["arguments"] = item.get("arguments")
        functions.append(entry)
    return {"functions": functions} if functions else None


def event_data(kind: str, message: Mapping[str, Any], options: LiveOptions) -> tuple[str, dict[str, Any]] | None:
    """
    The live event (its type and data) for a Deepgram message of type ``kind``, or None when
    it is not one (or not wanted: an interim without ``interim_results``, an empty transcript).
    """
    if kind == "Results":
        data = _listen_results(message, options)
        return None if data is None else ("transcript", data)
    if kind == "TurnInfo":
        data = _flux_turn(message, options)
        return None if data is None else ("transcript", data)
    if kind == "ConversationText":
        role, content = message.get("role"), message.get("content")
        if isinstance(role, str) and isinstance(content, str):
            return "conversation", {"role": role, "content": content}
        return None
    if kind == "FunctionCallRequest":
        data = _function_call(message, options)
        return None if data is None else ("function_call", data)
    return None


@attrs.define(eq=False)
class LiveEventsStage:
    """One call's live events: built from what passes the chain, queued in the process's sender."""

    ctx: StageContext
    factory: LiveEventsFactory
    #: This stage's queue in the sender (the call id it started with: a call taken up from
    #: another process changes its id).
    key: str = ""
    seq: int = 0
    dropped: int = 0
    #: The stream's id as the StreamStarted said (a /client call's is its call id).
    stream_sid: str = ""
    _started: bool = False
    _closed: bool = False

    def routes(self) -> Routes:
        return Routes(
            inbound={StreamStarted: self.on_started, UpstreamMessage: self.on_message},
            outbound={DeepgramEvent: self.on_event},
        )

    def on_started(self, event: StreamStarted) -> Any:
        if not self._started:
            self._started = True
            self.stream_sid = event.stream_sid
            call = self.ctx.call
            self.publish("call.started", {"leg": call.leg, "mode": call.mode, "call_sid": call.call_sid,
                                          "account_sid": call.account_sid, "started_at": call.started_at})
        return event

    def on_message(self, event: UpstreamMessage) -> Any:
        if event.type == "FunctionCallResponse":
            message = event.message
            data = {"id": message.get("id"), "name": message.get("name")}
            if self.factory.options.function_arguments:
                data["content"] = message.get("content")
            self.publish("function_response", data)
        return event

    def on_event(self, event: DeepgramEvent) -> Any:
        found = event_data(event.type, event.message, self.factory.options)
        if found is not None:
            self.publish(*found)
        return event

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        """Queue one live event of this call (never blocks; may drop the oldest waiting)."""
        if self._closed:
            return
        call = self.ctx.call
        now = self.ctx.clock.seconds()
        self.seq += 1
        item = {
            "call_id": call.call_id,
            "seq": self.seq,
            "type": kind,
            "at": round(now, 3),
            "offset_s": round(now - call.started_at, 3),
            "stream_sid": call.stream_sid or self.stream_sid,
            "data": data,
        }
        self.factory.put(self.key, item, self.ctx.clock)

    def was_dropped(self, reason: str) -> None:
        """One of this call's waiting events was dropped (the queue was full)."""
        self.dropped += 1
        self.ctx.count("live_events_dropped", reason=reason)

    def close(self) -> None:
        if self._started:
            call = self.ctx.call
            self.publish("call.ended", {
                "diagnosis": getattr(call, "diagnosis_code", None),
                "duration_s": round(self.ctx.clock.seconds() - call.started_at, 3),
                "events": self.seq + 1,
                "dropped": self.dropped,
            })
        self._closed = True
        self.factory.call_closed(self.key)


@attrs.define(eq=False)
class LiveEventsFactory:
    """
    Makes live-event stages and holds the process's `BatchSender` (made on first use, on the
    first call's clock, which is the reactor).
    """

    options: LiveOptions
    secret: bytes | None = attrs.field(default=None, repr=False)
    http: Any = None
    origin: str = attrs.field(factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    sender: BatchSender | None = None
    _stages: dict[str, LiveEventsStage] = attrs.field(factory=dict)

    def _sender(self, clock: Any) -> BatchSender:
        if self.sender is None:
            self.sender = BatchSender(clock, self.options.url, self.options.limits, self._envelope,
                                      secret=self.secret, http=self.http)
        return self.sender

    def _envelope(self, batch: int, events: list[Any]) -> dict[str, Any]:
        sender = self.sender
        assert sender is not None
        return {
            "type": "gateway.live_events",
            "version": PAYLOAD_VERSION,
            "origin": self.origin,
            "batch": batch,
            "sent_at": round(sender.clock.seconds(), 3),
            "dropped_total": sum(sender.dropped.values()),
            "events": events,
        }

    def put(self, key: str, item: dict[str, Any], clock: Any) -> None:
        dropped = self._sender(clock).put(key, item)
        if dropped is not None:
            source, reason = dropped
            stage = self._stages.get(source)
            if stage is not None:
                stage.was_dropped(reason)

    def call_closed(self, key: str) -> None:
        self._stages.pop(key, None)
        if self.sender is not None:
            self.sender.flush_soon()

    def __call__(self, ctx: StageContext) -> LiveEventsStage:
        stage = LiveEventsStage(ctx, self, key=f"{ctx.call.call_id}#{id(ctx)}")
        self._stages[stage.key] = stage
        return stage

    def stop_service(self) -> Any:
        """Send what waits and stop (for the service, when the process stops)."""
        from twisted.internet import defer

        return self.sender.stop() if self.sender is not None else defer.succeed(None)


def _limits(section: Section) -> BatchLimits:
    max_queue = section.int("max_queue", 500, minimum=1)
    limits = BatchLimits(
        batch_s=section.int("batch_ms", 250, minimum=0) / 1000,
        max_batch=section.int("max_batch", 50, minimum=1),
        max_queue=max_queue,
        max_queue_total=section.int("max_queue_process", 5000, minimum=1),
        attempts=section.int("attempts", 5, minimum=1),
        backoff_s=section.float("backoff_s", 0.5, minimum=0.01),
        backoff_max_s=section.float("backoff_max_s", 8.0, minimum=0.01),
        timeout_s=section.float("timeout_s", 5.0, minimum=0.1),
    )
    if limits.max_queue_total < max_queue:
        raise ConfigError(section.key("max_queue_process"),
                          f"must be at least max_queue ({max_queue}), got {limits.max_queue_total}")
    return limits


@implementer(IPlugin, IStreamPlugin)
@attrs.frozen
class LiveEventsPlugin:
    """The live_events plugin."""

    name: str = "live_events"

    def configure(self, section: Section, gateway: GatewayConfig) -> Any:
        url = section.str("url")
        if not url.startswith(("http://", "https://")):
            raise ConfigError(section.key("url"), f"expected an http(s) URL, got {url!r}")
        chain = list(gateway.chain)
        if "redact" in chain and chain.index(self.name) > chain.index("redact"):
            raise ConfigError("gateway.chain", "live_events must come before redact: outbound events "
                              "visit the stages in reverse order, so after redact it would send the "
                              "unmasked text")
        options = LiveOptions(
            url=url,
            limits=_limits(section),
            interim_results=section.bool("interim_results", False),
            words=section.bool("words", False),
            function_arguments=section.bool("function_arguments", False),
        )
        return LiveEventsFactory(options, gateway.webhook_secret)


plugin = LiveEventsPlugin()
