"""
empty_frames: never send Deepgram an empty or undecodable audio frame.

An empty binary frame closes a Deepgram stream (it was the legacy end-of-stream signal). This
stage drops, and counts by reason: empty payloads (``empty``), payloads that were not valid base64
(``bad_base64``), linear16 frames of odd length (``odd_length``), and audio on a track the call is
not listening to (``wrong_track``). The first drop of each reason on a call is logged.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.plugin import IPlugin
from zope.interface import implementer

from gateway.config import GatewayConfig
from gateway.section import Section
from gateway.events import Audio
from gateway.plugin import IStreamPlugin, Routes, StageContext

__all__ = ["plugin", "EmptyFramesStage"]


@attrs.define
class EmptyFramesStage:
    """The per-call empty_frames stage."""

    ctx: StageContext
    tracks: frozenset[str]
    _even: bool = False
    _logged: set[str] = attrs.field(factory=set)

    def __attrs_post_init__(self) -> None:
        self._even = self.ctx.call.caller_format.sample_width == 2

    def routes(self) -> Routes:
        return Routes(inbound={Audio: self.on_audio})

    def on_audio(self, event: Audio) -> Any:
        payload = event.payload
        if payload and event.defect is None and event.track in self.tracks:
            if not (self._even and len(payload) & 1):
                return event
        if event.defect is not None:
            reason = event.defect
        elif not payload:
            reason = "empty"
        elif event.track not in self.tracks:
            reason = "wrong_track"
        else:
            reason = "odd_length"
        self.ctx.count("frames_dropped", reason=reason)
        if reason not in self._logged:
            self._logged.add(reason)
            self.ctx.log.warn(
                "dropped a caller audio frame ({reason}); further drops of this kind are only counted",
                reason=reason,
                log_category="CALLER_FRAME_DROPPED",
            )
        return None

    def close(self) -> None:
        pass


@implementer(IPlugin, IStreamPlugin)
@attrs.frozen
class EmptyFramesPlugin:
    """The empty_frames plugin. ``[empty_frames] tracks`` lists the tracks relayed (inbound)."""

    name: str = "empty_frames"

    def configure(self, section: Section, gateway: GatewayConfig) -> Any:
        tracks = frozenset(section.str_list("tracks", ["inbound"]))
        return lambda ctx: EmptyFramesStage(ctx, tracks)


plugin = EmptyFramesPlugin()
