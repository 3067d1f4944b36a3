"""A drop-in plugin for the tests: it doubles every caller audio frame's bytes and counts."""

import attrs
from twisted.plugin import IPlugin
from zope.interface import implementer

from gateway.events import Audio
from gateway.plugin import IStreamPlugin, Routes


@attrs.define
class LoudStage:
    ctx: object

    def routes(self):
        return Routes(inbound={Audio: self.on_audio})

    def on_audio(self, event):
        self.ctx.count("loud_frames")
        return Audio(event.payload * 2, event.track)

    def close(self):
        pass


@implementer(IPlugin, IStreamPlugin)
class Loud:
    name = "loud"

    def configure(self, section, gateway):
        section.int("factor", 2)
        return LoudStage


loud = Loud()
