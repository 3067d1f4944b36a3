"""A drop-in plugin for the tests: it counts conversation turns with ctx.count (by role)."""

import attrs
from twisted.plugin import IPlugin
from zope.interface import implementer

from gateway.events import DeepgramEvent
from gateway.plugin import IStreamPlugin, Routes


@attrs.define
class CountTurnsStage:
    ctx: object

    def routes(self):
        return Routes(outbound={DeepgramEvent: self.on_event})

    def on_event(self, event):
        if event.type == "ConversationText":
            self.ctx.count("turns", role=event.message.get("role", "?"))
            # An unbounded label, as a careless drop-in might use: the export caps it.
            self.ctx.count("words", text=event.message.get("content", ""))
        return event

    def close(self):
        pass


@implementer(IPlugin, IStreamPlugin)
class CountTurns:
    name = "count_turns"

    def configure(self, section, gateway):
        return CountTurnsStage


count_turns = CountTurns()
