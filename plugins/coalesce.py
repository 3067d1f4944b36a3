"""
coalesce: send Deepgram fewer, larger audio messages (off by default).

Twilio sends a 20 ms frame 50 times a second, and by default each one goes to Deepgram as a
WebSocket message of its own. With ``coalesce`` in the chain, caller audio is joined until at
least ``ms`` milliseconds are held, then sent as one message: at ``ms = 40`` the gateway writes
half as many frames to Deepgram (10-30 % less gateway CPU per call in BENCHMARKS.md, where the
host's noise is of the same order).

The cost is latency: audio waits for the rest of its message. With 20 ms frames, ``ms = 40``
holds every other frame 20 ms (10 ms on average), ``ms = 60`` up to 40 ms. Deepgram's endpointing
and the agent's response are later by as much. Nothing is held longer than ``ms``: if the caller
sends no more audio, what is held goes out when ``ms`` has passed since its first frame. Every
byte is sent, in order: what is held goes out before any control message the gateway sends
Deepgram (``KeepAlive``, ``Finalize``, ``CloseStream``, DTMF) and when the stream stops.

Put it after ``transcoder`` and ``keepalive`` (it joins audio in Deepgram's format, silence
included), for example::

    [gateway]
    chain = ["auth", "settings", "empty_frames", "transcoder", "keepalive", "coalesce",
             "call_control", "close_codes"]

    [coalesce]
    ms = 40
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.plugin import IPlugin
from zope.interface import implementer

from gateway.config import GatewayConfig
from gateway.section import Section
from gateway.errors import ConfigError
from gateway.events import Audio, CallerClosed, StreamStopped, UpstreamMessage
from gateway.plugin import IStreamPlugin, Routes, StageContext, cancel

__all__ = ["plugin", "CoalesceStage", "MAX_MS"]

#: The most audio one message may hold (and so the most latency the stage may add), in ms.
MAX_MS = 200


@attrs.define
class CoalesceStage:
    """The per-call coalesce stage."""

    ctx: StageContext
    ms: int
    _target: int = 0
    _held: list[bytes] = attrs.field(factory=list)
    _held_bytes: int = 0
    _timer: Any = None

    def __attrs_post_init__(self) -> None:
        self._target = self.ctx.call.upstream_input.bytes_for_ms(self.ms)

    def routes(self) -> Routes:
        return Routes(
            inbound={
                Audio: self.on_audio,
                UpstreamMessage: self.on_control,
                StreamStopped: self.on_control,
                CallerClosed: self.on_control,
            }
        )

    def on_audio(self, event: Audio) -> Any:
        payload = event.payload
        if not self._held:
            if len(payload) >= self._target:
                return event
            self._timer = self.ctx.clock.callLater(self.ms / 1000.0, self._late)
        self._held.append(payload)
        self._held_bytes += len(payload)
        if self._held_bytes < self._target:
            return None
        return Audio(self._take(), event.track)

    def on_control(self, event: Any) -> Any:
        """Audio held goes out first: Deepgram must see it before what follows."""
        self._flush()
        return event

    def _late(self) -> None:
        self._timer = None
        self._flush()

    def _flush(self) -> None:
        if self._held:
            self.ctx.emit_inbound(Audio(self._take()))

    def _take(self) -> bytes:
        cancel(self._timer)
        self._timer = None
        held, self._held = self._held, []
        self._held_bytes = 0
        return b"".join(held)

    def close(self) -> None:
        cancel(self._timer)
        self._timer = None
        self._held = []


@implementer(IPlugin, IStreamPlugin)
@attrs.frozen
class CoalescePlugin:
    """The coalesce plugin. ``[coalesce] ms`` (40): audio joined into one message to Deepgram."""

    name: str = "coalesce"

    def configure(self, section: Section, gateway: GatewayConfig) -> Any:
        ms = section.int("ms", 40, minimum=20)
        if ms > MAX_MS:
            raise ConfigError(section.key("ms"), f"at most {MAX_MS} (it is added latency), got {ms}")
        return lambda ctx: CoalesceStage(ctx, ms)


plugin = CoalescePlugin()
