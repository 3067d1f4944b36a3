"""A drop-in serving functions that misbehave, and one that answers later."""

import attrs
from twisted.internet import defer, task
from twisted.plugin import IPlugin
from zope.interface import implementer

from gateway.plugin import FunctionSpec
from gateway.plugin import IStreamPlugin, Routes

EMPTY = {"type": "object", "properties": {}}


@attrs.define
class FlakyStage:
    ctx: object

    def routes(self):
        return Routes()

    def call_function(self, name, arguments):
        if name == "explode":
            raise ValueError("the order database is down")
        if name == "hang":
            return defer.Deferred()
        return task.deferLater(self.ctx.clock, 1.0, lambda: {"status": "shipped"})

    def close(self):
        pass


@attrs.frozen
class FlakyFactory:
    functions = {
        "explode": FunctionSpec("Always fails.", EMPTY),
        "hang": FunctionSpec("Never answers.", EMPTY),
        "later": FunctionSpec("Answers after a second.", EMPTY),
    }

    def __call__(self, ctx):
        return FlakyStage(ctx)


@implementer(IPlugin, IStreamPlugin)
class Flaky:
    name = "flaky"

    def configure(self, section, gateway):
        return FlakyFactory()


flaky = Flaky()
