"""The coalesce plugin: fewer, larger audio messages to Deepgram, every byte in order."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.errors import ConfigError
from gateway.events import Audio, CallerClosed, StreamStopped, UpstreamMessage
from gateway.testing import RecordingContext, configure

CHAIN = ["auth", "settings", "empty_frames", "transcoder", "keepalive", "coalesce",
         "call_control", "close_codes"]


def coalescer(ctx: RecordingContext, ms: int | None = None):
    config: dict = {"gateway": {"chain": CHAIN}}
    if ms is not None:
        config["coalesce"] = {"ms": ms}
    configured = configure(config, {"GATEWAY_TOKEN_SECRET": "k" * 32})
    return dict(configured.stages)["coalesce"](ctx)


def frame(i: int) -> Audio:
    """20 ms of mu-law 8 kHz whose bytes say which frame they are."""
    return Audio(bytes([i % 256]) * 160)


class CoalesceStageTests(SynchronousTestCase):
    """coalesce."""

    def test_joins_frames_in_order(self) -> None:
        """At 40 ms, every second frame carries the pair; the bytes are the frames', in order."""
        ctx = RecordingContext()
        stage = coalescer(ctx)
        on_audio = stage.routes().inbound[Audio]
        out = []
        for i in range(10):
            result = on_audio(frame(i))
            if result is not None:
                out.append(result)
            ctx.clock.advance(0.02)
        self.assertEqual([len(a.payload) for a in out], [320] * 5)
        self.assertEqual(b"".join(a.payload for a in out), b"".join(frame(i).payload for i in range(10)))
        self.assertEqual(ctx.inbound, [])
        stage.close()
        self.assertEqual(ctx.clock.getDelayedCalls(), [])

    def test_never_holds_longer_than_ms(self) -> None:
        """A caller that stops: what is held goes out when ms have passed since its first frame."""
        ctx = RecordingContext()
        stage = coalescer(ctx, ms=60)
        on_audio = stage.routes().inbound[Audio]
        self.assertIsNone(on_audio(frame(1)))
        ctx.clock.advance(0.02)
        self.assertIsNone(on_audio(frame(2)))
        ctx.clock.advance(0.039)
        self.assertEqual(ctx.inbound, [])
        ctx.clock.advance(0.001)
        self.assertEqual(ctx.inbound, [Audio(frame(1).payload + frame(2).payload)])
        self.assertEqual(ctx.clock.getDelayedCalls(), [])

    def test_held_audio_goes_before_control_and_stop(self) -> None:
        """KeepAlive, Finalize, stop and close never overtake audio already received."""
        for control in (UpstreamMessage({"type": "Finalize"}), StreamStopped(),
                        CallerClosed(1000, "", True)):
            ctx = RecordingContext()
            stage = coalescer(ctx)
            routes = stage.routes().inbound
            self.assertIsNone(routes[Audio](frame(7)))
            self.assertIs(routes[type(control)](control), control)
            self.assertEqual(ctx.inbound, [frame(7)])
            self.assertEqual(ctx.clock.getDelayedCalls(), [])

    def test_large_frames_pass_untouched(self) -> None:
        """A frame already as long as ms goes on as it is, with nothing held."""
        ctx = RecordingContext()
        stage = coalescer(ctx, ms=20)
        big = Audio(b"\x01" * 400)
        self.assertIs(stage.routes().inbound[Audio](big), big)
        self.assertEqual(ctx.clock.getDelayedCalls(), [])

    def test_ms_is_bounded(self) -> None:
        """Below one frame or above 200 ms is a start-up error naming the key."""
        for ms in (10, 500):
            with self.assertRaises(ConfigError) as caught:
                coalescer(RecordingContext(), ms=ms)
            self.assertEqual(caught.exception.key, "coalesce.ms")

    def test_off_by_default(self) -> None:
        """The default chain does not coalesce."""
        configured = configure({}, {"GATEWAY_TOKEN_SECRET": "k" * 32})
        self.assertNotIn("coalesce", dict(configured.stages))
