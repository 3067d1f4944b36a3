"""Tests for gateway.chain: order, dispatch by class, pass/drop/replace/emit, errors."""

from __future__ import annotations

from typing import Any

import attrs
from twisted.trial.unittest import SynchronousTestCase

from gateway.chain import Chain
from gateway.events import Audio, Clear, DeepgramEvent, StreamStopped, UpstreamMessage
from gateway.plugin import Routes


@attrs.define
class Tag:
    """A stage that appends its name to every Audio it sees, in either direction."""

    name: str
    seen: list = attrs.field(factory=list)

    def routes(self) -> Routes:
        return Routes(inbound={Audio: self.on}, outbound={Audio: self.on})

    def on(self, event: Audio) -> Any:
        self.seen.append(event.payload)
        return Audio(event.payload + self.name.encode(), event.track)

    def close(self) -> None:
        pass


def build(*stages: Any, errors: list | None = None) -> tuple[Chain, list, list]:
    inbound: list = []
    outbound: list = []
    chain = Chain([getattr(s, "name", "s") for s in stages], stages, inbound.append, outbound.append,
                  lambda name, event: (errors if errors is not None else []).append((name, event)))
    return chain, inbound, outbound


class ChainTests(SynchronousTestCase):
    """The chain's contract."""

    def test_order(self) -> None:
        """Inbound visits stages in order, outbound in reverse."""
        chain, inbound, outbound = build(Tag("a"), Tag("b"), Tag("c"))
        chain.inbound(Audio(b"<"))
        chain.outbound(Audio(b">"))
        self.assertEqual(inbound, [Audio(b"<abc")])
        self.assertEqual(outbound, [Audio(b">cba")])

    def test_unrouted_goes_straight_to_sink(self) -> None:
        """An event class no stage asked for reaches the sink untouched."""
        a = Tag("a")
        chain, inbound, _ = build(a)
        chain.inbound(StreamStopped())
        self.assertEqual(inbound, [StreamStopped()])
        self.assertEqual(a.seen, [])

    def test_drop(self) -> None:
        """A handler returning None drops the event."""

        @attrs.define
        class Drop:
            def routes(self) -> Routes:
                return Routes(inbound={Audio: lambda e: None})

            def close(self) -> None:
                pass

        b = Tag("b")
        chain, inbound, _ = build(Drop(), b)
        chain.inbound(Audio(b"x"))
        self.assertEqual((inbound, b.seen), ([], []))

    def test_replace_with_other_class(self) -> None:
        """A replacement of another class continues with that class's handlers."""

        @attrs.define
        class ToClear:
            def routes(self) -> Routes:
                return Routes(outbound={DeepgramEvent: lambda e: Clear()})

            def close(self) -> None:
                pass

        seen = []

        @attrs.define
        class SeeClear:
            def routes(self) -> Routes:
                return Routes(outbound={Clear: lambda e: seen.append(e) or e})

            def close(self) -> None:
                pass

        chain, _, outbound = build(SeeClear(), ToClear())
        chain.outbound(DeepgramEvent("UserStartedSpeaking", {}))
        self.assertEqual((seen, outbound), ([Clear()], [Clear()]))

    def test_emit_from_position(self) -> None:
        """Emitting inbound from stage i visits only the stages after i."""
        a, b, c = Tag("a"), Tag("b"), Tag("c")
        chain, inbound, outbound = build(a, b, c)
        chain.inbound(Audio(b"1"), after=1)
        chain.outbound(Audio(b"2"), before=1)
        self.assertEqual(inbound, [Audio(b"1c")])
        self.assertEqual(outbound, [Audio(b"2a")])

    def test_stop_handling(self) -> None:
        """A stage can take itself off a route."""
        a, b = Tag("a"), Tag("b")
        chain, inbound, _ = build(a, b)
        chain.stop_handling(0, Audio, "inbound")
        chain.inbound(Audio(b""))
        chain.stop_handling(1, Audio, "inbound")
        chain.inbound(Audio(b""))
        self.assertEqual(inbound, [Audio(b"b"), Audio(b"")])

    def test_error_is_reported_and_stops_the_event(self) -> None:
        """A raising handler is reported with its stage's name; the event goes no further."""

        @attrs.define
        class Boom:
            name: str = "boom"

            def routes(self) -> Routes:
                return Routes(inbound={UpstreamMessage: self.on})

            def on(self, e: Any) -> Any:
                raise ValueError("boom")

            def close(self) -> None:
                raise ValueError("close")

        errors: list = []
        chain, inbound, _ = build(Boom(), errors=errors)
        chain.inbound(UpstreamMessage({"type": "KeepAlive"}))
        chain.close()
        self.assertEqual(inbound, [])
        self.assertEqual([name for name, _ in errors], ["boom", "boom"])


@attrs.define
class Sees:
    """A stage that records the Deepgram events of ``cls`` it is given (outbound)."""

    cls: type
    name: str = "sees"
    seen: list = attrs.field(factory=list)

    def routes(self) -> Routes:
        return Routes(outbound={self.cls: self.on})

    def on(self, event: Any) -> Any:
        self.seen.append(event.type)
        return event

    def close(self) -> None:
        pass


class TypedEventTests(SynchronousTestCase):
    """Dispatch along the class hierarchy of the typed Deepgram events."""

    def test_base_route_sees_every_typed_event(self) -> None:
        """A stage routing DeepgramEvent gets SettingsApplied and the rest; a typed route only its own."""
        from gateway.events import SettingsApplied, deepgram_event

        every, applied = Sees(DeepgramEvent), Sees(SettingsApplied)
        chain, _, outbound = build(every, applied)
        for kind in ("Welcome", "SettingsApplied", "ConversationText"):
            chain.outbound(deepgram_event({"type": kind}))
        self.assertEqual(every.seen, ["Welcome", "SettingsApplied", "ConversationText"])
        self.assertEqual(applied.seen, ["SettingsApplied"])
        self.assertEqual([type(e).__name__ for e in outbound],
                         ["DeepgramEvent", "SettingsApplied", "ConversationText"])

    def test_stop_handling_the_base_stops_the_subclasses(self) -> None:
        """stop_handling(DeepgramEvent) takes the stage off every typed event too, until resumed."""
        from gateway.events import deepgram_event

        every = Sees(DeepgramEvent)
        chain, _, _ = build(every)
        chain.outbound(deepgram_event({"type": "UserStartedSpeaking"}))
        chain.stop_handling(0, DeepgramEvent, "outbound")
        chain.outbound(deepgram_event({"type": "UserStartedSpeaking"}))
        chain.resume_handling(0, DeepgramEvent, "outbound")
        chain.outbound(deepgram_event({"type": "AgentAudioDone"}))
        self.assertEqual(every.seen, ["UserStartedSpeaking", "AgentAudioDone"])

    def test_typed_fields_and_equality(self) -> None:
        """Typed accessors read the message; equality is by type and message, not class."""
        from gateway.events import FunctionCallCancelled, FunctionCallRequest, deepgram_event, typed

        request = deepgram_event({"type": "FunctionCallRequest", "functions": [
            {"id": "1", "name": "a", "client_side": True}, {"id": "2", "name": "b"}, "junk"]})
        self.assertIsInstance(request, FunctionCallRequest)
        self.assertEqual([f["id"] for f in request.client_side], ["1"])
        cancelled = deepgram_event({"type": "FunctionCallCancelled", "functions": [{"id": "1", "name": "a"}]})
        self.assertEqual(cancelled.cancelled, [("1", "a")])
        plain = DeepgramEvent("FunctionCallCancelled", {"type": "FunctionCallCancelled", "functions": [
            {"id": "1", "name": "a"}]})
        self.assertEqual(plain, cancelled)
        self.assertIsInstance(typed(plain), FunctionCallCancelled)
