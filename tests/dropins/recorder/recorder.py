"""A drop-in for the whole-gateway tests: records every event class it sees, per call."""

import attrs
from twisted.plugin import IPlugin
from zope.interface import implementer

from gateway.events import DeepgramEvent, StreamStarted, UpstreamOpened
from gateway.plugin import IStreamPlugin, Routes

#: call_id -> list of (direction, description)
SEEN: dict = {}


@attrs.define
class RecorderStage:
    ctx: object

    def routes(self):
        return Routes(
            inbound={StreamStarted: self.inbound},
            outbound={DeepgramEvent: self.outbound, UpstreamOpened: self.outbound},
        )

    def inbound(self, event):
        SEEN.setdefault(self.ctx.call.call_id, []).append(("in", type(event).__name__))
        return event

    def outbound(self, event):
        name = event.type if isinstance(event, DeepgramEvent) else type(event).__name__
        SEEN.setdefault(self.ctx.call.call_id, []).append(("out", name))
        return event

    def close(self):
        pass


@implementer(IPlugin, IStreamPlugin)
class Recorder:
    name = "recorder"

    def configure(self, section, gateway):
        return RecorderStage


recorder = Recorder()
