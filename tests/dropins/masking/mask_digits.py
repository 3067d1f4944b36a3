"""A drop-in plugin for the tests: it masks digits in what Deepgram says was said."""

import re

import attrs
from twisted.plugin import IPlugin
from zope.interface import implementer

from gateway.events import DeepgramEvent
from gateway.plugin import IStreamPlugin, Routes


@attrs.define
class MaskDigitsStage:
    ctx: object

    def routes(self):
        return Routes(outbound={DeepgramEvent: self.on_event})

    def on_event(self, event):
        if event.type != "ConversationText":
            return event
        message = dict(event.message)
        message["content"] = re.sub(r"\d", "#", message.get("content") or "")
        return DeepgramEvent(event.type, message)

    def close(self):
        pass


@implementer(IPlugin, IStreamPlugin)
class MaskDigits:
    name = "mask_digits"

    def configure(self, section, gateway):
        return MaskDigitsStage


mask_digits = MaskDigits()
