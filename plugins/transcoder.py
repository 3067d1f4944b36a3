"""
transcoder: convert audio between the caller's format and Deepgram's, both ways, streaming.

Twilio speaks mu-law 8 kHz, raw-audio clients linear16 16 kHz. ``[transcoder] deepgram_input`` and
``deepgram_output`` say what Deepgram receives and sends (``"caller"``, the default, means the
caller's own format: no conversion at all, the cheapest and best-sounding choice). The formats
chosen here are what the settings stage declares to Deepgram, so the declaration and the audio
can never disagree. A direction with nothing to convert costs nothing: the stage does not even
register for it.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.plugin import IPlugin
from zope.interface import implementer

from gateway.codecs.formats import AudioFormat
from gateway.codecs.transcode import make_transcoder

from gateway.config import GatewayConfig
from gateway.errors import ConfigError
from gateway.section import Section
from gateway.events import Audio
from gateway.plugin import IStreamPlugin, Routes, StageContext

__all__ = ["plugin", "TranscoderStage", "TranscoderFactory"]


@attrs.define
class TranscoderStage:
    """The per-call transcoder stage."""

    ctx: StageContext
    _inbound: Any = None
    _outbound: Any = None

    def __attrs_post_init__(self) -> None:
        call = self.ctx.call
        if call.caller_format != call.upstream_input:
            self._inbound = make_transcoder(call.caller_format, call.upstream_input)
        if call.upstream_output != call.caller_format:
            self._outbound = make_transcoder(call.upstream_output, call.caller_format)

    def routes(self) -> Routes:
        return Routes(
            inbound={Audio: self.on_inbound} if self._inbound is not None else {},
            outbound={Audio: self.on_outbound} if self._outbound is not None else {},
        )

    def on_inbound(self, event: Audio) -> Any:
        out = self._inbound.convert(event.payload)
        return Audio(out, event.track) if out else None

    def on_outbound(self, event: Audio) -> Any:
        out = self._outbound.convert(event.payload)
        return Audio(out, event.track) if out else None

    def close(self) -> None:
        self._inbound = self._outbound = None


def _format(section: Section, key: str) -> AudioFormat | None:
    text = section.str(key, "caller")
    if text == "caller":
        return None
    try:
        return AudioFormat.parse(text)
    except ValueError as e:
        raise ConfigError(section.key(key), str(e))


@attrs.frozen
class TranscoderFactory:
    """Makes transcoder stages; also tells a call which formats Deepgram gets and sends."""

    deepgram_input: AudioFormat | None
    deepgram_output: AudioFormat | None

    def upstream_formats(self, caller: AudioFormat) -> tuple[AudioFormat, AudioFormat]:
        return (self.deepgram_input or caller, self.deepgram_output or caller)

    def __call__(self, ctx: StageContext) -> TranscoderStage:
        return TranscoderStage(ctx)


@implementer(IPlugin, IStreamPlugin)
@attrs.frozen
class TranscoderPlugin:
    """The transcoder plugin."""

    name: str = "transcoder"

    def configure(self, section: Section, gateway: GatewayConfig) -> Any:
        return TranscoderFactory(_format(section, "deepgram_input"), _format(section, "deepgram_output"))


plugin = TranscoderPlugin()
