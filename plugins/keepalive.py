"""
keepalive: keep the Deepgram leg open through silence.

- Voice Agent: ``{"type": "KeepAlive"}`` every ``interval_s`` while no audio has been sent to
  Deepgram for that long (a Twilio call normally streams 50 frames a second, silence included,
  so this only fires in gaps).
- ``/v1/listen``: Deepgram closes with 1011 NET-0001 after ~10 s without *audio*, and whether a
  KeepAlive alone prevents it is contradicted by Deepgram's own pages; so while the caller sends
  nothing this stage sends real silence in the declared encoding (as much as the gap lasted, so
  Deepgram's timeline stays in step with the call), which works under both readings.

Timers come from the call's clock and are cancelled when the call ends.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.plugin import IPlugin
from zope.interface import implementer

from gateway.codecs.deepgram import KEEPALIVE
from gateway.config import GatewayConfig, Section
from gateway.events import Audio, UpstreamMessage, UpstreamOpened, UpstreamReconnecting
from gateway.plugin import IStreamPlugin, Routes, StageContext

__all__ = ["plugin", "KeepaliveStage"]


@attrs.frozen
class KeepaliveOptions:
    """``[keepalive]``: ``interval_s`` (Voice Agent KeepAlive), ``silence_interval_s`` (listen)."""

    interval_s: float
    silence_interval_s: float


@attrs.define
class KeepaliveStage:
    """The per-call keepalive stage."""

    ctx: StageContext
    options: KeepaliveOptions
    _timer: Any = None
    _last_frames: int = -1
    _last_tick: float = 0.0

    def routes(self) -> Routes:
        return Routes(outbound={UpstreamOpened: self.on_open, UpstreamReconnecting: self.on_lost})

    def on_lost(self, event: UpstreamReconnecting) -> Any:
        self.close()
        return event

    def on_open(self, event: UpstreamOpened) -> Any:
        self.close()
        self._last_frames = self.ctx.call.frames_to_upstream
        self._last_tick = self.ctx.clock.seconds()
        self._schedule()
        return event

    def _interval(self) -> float:
        if self.ctx.call.mode == "listen":
            return self.options.silence_interval_s
        return self.options.interval_s

    def _schedule(self) -> None:
        self._timer = self.ctx.clock.callLater(self._interval(), self._tick)

    def _tick(self) -> None:
        now = self.ctx.clock.seconds()
        frames = self.ctx.call.frames_to_upstream
        if frames == self._last_frames:
            if self.ctx.call.mode == "listen":
                gap_ms = int(min(now - self._last_tick, 2 * self._interval()) * 1000)
                silence = self.ctx.call.upstream_input.silence(max(gap_ms, 20))
                self.ctx.count("keepalive_sent", kind="silence")
                self.ctx.emit_inbound(Audio(silence))
            else:
                self.ctx.count("keepalive_sent", kind="KeepAlive")
                self.ctx.emit_inbound(UpstreamMessage(KEEPALIVE))
        self._last_frames = self.ctx.call.frames_to_upstream
        self._last_tick = now
        self._schedule()

    def close(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


@implementer(IPlugin, IStreamPlugin)
@attrs.frozen
class KeepalivePlugin:
    """The keepalive plugin."""

    name: str = "keepalive"

    def configure(self, section: Section, gateway: GatewayConfig) -> Any:
        options = KeepaliveOptions(
            interval_s=section.float("interval_s", 5.0, minimum=0.5),
            silence_interval_s=section.float("silence_interval_s", 2.0, minimum=0.1),
        )
        if options.silence_interval_s >= 8:
            from gateway.errors import ConfigError

            raise ConfigError(
                section.key("silence_interval_s"),
                "must be under 8 s: Deepgram closes /v1/listen after ~10 s without audio",
            )
        return lambda ctx: KeepaliveStage(ctx, options)


plugin = KeepalivePlugin()
