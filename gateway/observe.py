"""
What a call learns from Deepgram's messages, besides forwarding them: the facts stages read
(`CallInfo`'s last Error and Warning, the request id from ``Welcome``), the latency metrics, the
transcript and conversation log, Deepgram's own latency figures, and message types newer than the
installed SDK. Also the per-call debug line. Nothing here changes what is sent anywhere.
"""

from __future__ import annotations

from typing import Any, Mapping

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from gateway.callinfo import CallInfo
from gateway.codecs.deepgram_messages import known_server_types, latency_figures
from gateway.events import Audio, DeepgramEvent
from gateway.latency import CallerHeardLatency
from gateway.redact import redact
from gateway.report import TranscriptKeeper

__all__ = ["SessionObserver", "debug_line"]

#: Deepgram events that carry what was said (kept for the report, logged when configured).
_RECORDED = frozenset({"ConversationText", "Results", "TurnInfo"})


@attrs.define
class SessionObserver:
    """One call's observer of its Deepgram sessions (the call calls it; it calls nobody)."""

    info: CallInfo
    clock: IReactorTime
    metrics: Any
    heard: CallerHeardLatency
    log: Logger
    log_conversation: bool
    count: Any
    transcript: TranscriptKeeper = attrs.field(factory=TranscriptKeeper)
    opened_at: float = 0.0
    #: When the caller's last turn ended, until the agent's first audio after it (then None).
    turn_ended_at: float | None = None

    def arrived(self, event: DeepgramEvent) -> None:
        """A message from Deepgram, before the chain sees it."""
        kind = event.type
        info = self.info
        if kind == "Error":
            info.last_error = dict(event.message)
            info.last_error_seen = info.last_error
        elif kind == "Warning":
            info.last_warning = dict(event.message)
        elif kind == "Welcome":
            # Welcome carries the session's request id: use it where the header had none.
            request_id = event.message.get("request_id")
            if info.request_id is None and isinstance(request_id, str) and request_id:
                info.request_id = request_id[:128]
                if info.request_ids:
                    info.request_ids[-1] = info.request_id
        elif kind == "SettingsApplied":
            self.metrics.settings_applied(self.clock.seconds() - self.opened_at)
        elif kind == "ConversationText" and event.message.get("role") == "user":
            self.turn_ended_at = self.clock.seconds()
            self.heard.user_turn_ended()

    def agent_answered(self) -> None:
        """The first agent audio after the caller's turn (`turn_ended_at` set): time the answer."""
        if self.turn_ended_at is not None:
            self.metrics.agent_responded(self.clock.seconds() - self.turn_ended_at)
            self.turn_ended_at = None

    def delivered(self, event: DeepgramEvent, mode: str) -> None:
        """A message from Deepgram, after the chain (as the caller gets it)."""
        kind = event.type
        if kind in _RECORDED:
            self._record(event)
        elif kind == "LatencyReport":
            # Deepgram's own latency figures, per call (report) and per process (metrics).
            for stage, seconds in latency_figures(event.message).items():
                self.count("deepgram_latency_ms", round(seconds * 1000), stage=stage)
                self.count("deepgram_latency_reports", stage=stage)
        elif kind not in known_server_types(mode):
            # Newer than the installed SDK: forwarded like any event, counted, never an error.
            self.count("upstream_messages_unknown")
            if self.info.counters[("upstream_messages_unknown", ())] == 1:
                self.log.info("Deepgram sent a message type the installed deepgram-sdk does not "
                              "know: {message_type!r:.64}; forwarded and counted",
                              message_type=kind)

    def _record(self, event: DeepgramEvent) -> None:
        """
        The one place a call's transcript and conversation are kept and logged: after the chain,
        so a stage that rewrites or redacts them changes every copy (log, report, webhook).
        """
        kind = event.type
        self.transcript.observe(kind, event.message)
        if not self.log_conversation:
            return
        if kind == "ConversationText":
            role = event.message.get("role")
            self.log.info("{speaker}: {content}", speaker="caller" if role == "user" else "agent",
                          content=event.message.get("content"))
        elif kind == "Results" and event.message.get("is_final"):
            alternatives = (event.message.get("channel") or {}).get("alternatives") or [{}]
            text = alternatives[0].get("transcript") if isinstance(alternatives[0], dict) else None
            if text:
                self.log.info("{speaker}: {content}", speaker="caller", content=text)
        elif kind == "TurnInfo" and event.message.get("event") == "EndOfTurn":
            text = event.message.get("transcript")
            if isinstance(text, str) and text:
                self.log.info("{speaker}: {content}", speaker="caller", content=text)


def debug_line(log: Logger, direction: str, event: Any) -> None:
    """The per-call debug switch: one line per control message, secrets redacted."""
    if type(event) is Audio:
        return
    message = getattr(event, "message", None)
    if isinstance(message, Mapping):
        body: Any = redact(dict(message))
    elif attrs.has(type(event)):
        body = redact(attrs.asdict(event, recurse=False))
    else:
        body = repr(event)
    log.info("debug {direction}: {event_type} {body}", direction=direction,
             event_type=type(event).__name__, body=body)
