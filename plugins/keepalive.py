"""
keepalive: keep the Deepgram leg open through silence.

- Voice Agent: ``{"type": "KeepAlive"}`` every ``interval_s`` while no audio has been sent to
  Deepgram for that long (a Twilio call normally streams 50 frames a second, silence included,
  so this only fires in gaps).
- ``/v1/listen``: Deepgram closes with 1011 NET-0001 after ~10 s without *audio*, and whether a
  KeepAlive alone prevents it is contradicted by Deepgram's own pages; so while the caller sends
  nothing this stage sends real silence in the declared encoding (as much as the gap lasted, so
  Deepgram's timeline stays in step with the call), which works under both readings.
- Flux (``/v2/listen``): no KeepAlive message exists there (the SDK's Flux client messages are
  ``CloseStream``, ``Configure`` and ``ForceEndTurn``), so silence too, as for ``/v1/listen``.

Towards the caller: WebSocket pings (a caller that stops answering is dropped and the call
ended) and an idle check (no caller audio for ``caller_idle_timeout_s`` ends the call:
Twilio streams audio continuously, silence included, so a quiet socket means a stuck peer).

Timers come from the call's clock and are cancelled when the call ends.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.plugin import IPlugin
from zope.interface import implementer

from gateway.codecs.deepgram import KEEPALIVE
from gateway.config import GatewayConfig
from gateway.section import Section
from gateway.diagnostics import Diagnosis
from gateway.events import Audio, UpstreamMessage, UpstreamOpened, UpstreamReconnecting
from gateway.plugin import IStreamPlugin, Routes, StageContext, cancel

__all__ = ["plugin", "KeepaliveStage"]

#: Modes whose Deepgram endpoint is kept open with silence (audio), not a KeepAlive message.
_SILENCE_MODES = ("listen", "flux")


@attrs.frozen
class KeepaliveOptions:
    """
    ``[keepalive]``: ``interval_s`` (Voice Agent KeepAlive), ``silence_interval_s`` (listen),
    ``caller_idle_timeout_s`` (end a call whose caller sends no audio that long; 0 = never),
    ``caller_ping_interval_s`` / ``caller_ping_timeout_s`` (WebSocket pings to the caller; a
    caller that does not answer in time is dropped and the call ended).
    """

    interval_s: float
    silence_interval_s: float
    caller_idle_timeout_s: float = 60.0
    caller_ping_interval_s: float = 10.0
    caller_ping_timeout_s: float = 5.0


@attrs.define
class KeepaliveStage:
    """The per-call keepalive stage."""

    ctx: StageContext
    options: KeepaliveOptions
    _timer: Any = None
    _last_frames: int = -1
    _last_tick: float = 0.0
    _idle_timer: Any = None
    _caller_frames: int = -1

    def __attrs_post_init__(self) -> None:
        if self.options.caller_idle_timeout_s > 0:
            self._idle_timer = self.ctx.clock.callLater(
                self.options.caller_idle_timeout_s, self._check_idle
            )

    def _check_idle(self) -> None:
        frames = self.ctx.call.frames_from_caller
        if frames == self._caller_frames:
            self._idle_timer = None
            self.ctx.log.warn("no audio from the caller for {timeout_s} s; ending the call",
                              timeout_s=self.options.caller_idle_timeout_s, log_category="CALLER_IDLE")
            self.ctx.end_call(Diagnosis("CALLER_IDLE", leg="caller", phase=self.ctx.call.phase))
            return
        self._caller_frames = frames
        self._idle_timer = self.ctx.clock.callLater(self.options.caller_idle_timeout_s, self._check_idle)

    def routes(self) -> Routes:
        return Routes(outbound={UpstreamOpened: self.on_open, UpstreamReconnecting: self.on_lost})

    def on_lost(self, event: UpstreamReconnecting) -> Any:
        self._stop_keepalive()
        return event

    def on_open(self, event: UpstreamOpened) -> Any:
        self._stop_keepalive()
        self._last_frames = self.ctx.call.frames_to_upstream
        self._last_tick = self.ctx.clock.seconds()
        self._schedule()
        return event

    def _interval(self) -> float:
        if self.ctx.call.mode in _SILENCE_MODES:
            return self.options.silence_interval_s
        return self.options.interval_s

    def _schedule(self) -> None:
        self._timer = self.ctx.clock.callLater(self._interval(), self._tick)

    def _tick(self) -> None:
        now = self.ctx.clock.seconds()
        frames = self.ctx.call.frames_to_upstream
        if frames == self._last_frames:
            if self.ctx.call.mode in _SILENCE_MODES:
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

    def _stop_keepalive(self) -> None:
        cancel(self._timer)
        self._timer = None

    def close(self) -> None:
        self._stop_keepalive()
        cancel(self._idle_timer)
        self._idle_timer = None


@implementer(IPlugin, IStreamPlugin)
@attrs.frozen
class KeepalivePlugin:
    """The keepalive plugin."""

    name: str = "keepalive"

    def configure(self, section: Section, gateway: GatewayConfig) -> Any:
        options = KeepaliveOptions(
            interval_s=section.float("interval_s", 5.0, minimum=0.5),
            silence_interval_s=section.float("silence_interval_s", 2.0, minimum=0.1),
            caller_idle_timeout_s=section.float("caller_idle_timeout_s", 60.0, minimum=0),
            caller_ping_interval_s=section.float("caller_ping_interval_s", 10.0, minimum=0),
            caller_ping_timeout_s=section.float("caller_ping_timeout_s", 5.0, minimum=0.5),
        )
        if options.silence_interval_s >= 8:
            from gateway.errors import ConfigError

            raise ConfigError(
                section.key("silence_interval_s"),
                "must be under 8 s: Deepgram closes /v1/listen after ~10 s without audio",
            )
        return KeepaliveFactory(options)


@attrs.frozen
class KeepaliveFactory:
    """Makes keepalive stages; also sets the caller legs' WebSocket ping options."""

    options: KeepaliveOptions

    def caller_protocol_options(self) -> dict[str, float]:
        return {
            "autoPingInterval": self.options.caller_ping_interval_s,
            "autoPingTimeout": self.options.caller_ping_timeout_s,
        }

    def __call__(self, ctx: StageContext) -> KeepaliveStage:
        return KeepaliveStage(ctx, self.options)


plugin = KeepalivePlugin()
