"""
Tests for the keepalive plugin (Deepgram's KeepAlive and listen silence, the idle caller, the
caller legs' pings), each driven through a recording context and a Clock.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.events import UpstreamMessage, UpstreamOpened
from gateway.testing import RecordingContext, call_info, configure
from tests.stages import stage_for


class KeepaliveStageTests(SynchronousTestCase):
    """keepalive."""

    def test_agent_keepalive_only_when_idle(self) -> None:
        """KeepAlive every interval_s with no audio sent; none while audio flows."""
        ctx = RecordingContext()
        stage, _ = stage_for("keepalive", ctx, {"keepalive": {"interval_s": 5}})
        stage.routes().outbound[UpstreamOpened](UpstreamOpened("r", "agent"))
        ctx.clock.advance(5)
        self.assertEqual(ctx.inbound, [UpstreamMessage({"type": "KeepAlive"})])
        ctx.call.frames_to_upstream += 250
        ctx.clock.advance(5)
        self.assertEqual(len(ctx.inbound), 1)
        ctx.clock.advance(5)
        self.assertEqual(len(ctx.inbound), 2)
        stage.close()
        self.assertEqual(ctx.clock.getDelayedCalls(), [])

    def test_listen_sends_silence_for_30_seconds(self) -> None:
        """A silent caller on /v1/listen: real silence in the declared encoding, never a gap over 10 s."""
        ctx = RecordingContext(call=call_info(mode="listen"))
        stage, _ = stage_for("keepalive", ctx, {"gateway": {"mode": "listen"}})
        stage.routes().outbound[UpstreamOpened](UpstreamOpened("r", "listen"))
        sent_at = []
        for _ in range(300):
            ctx.clock.advance(0.1)
            while len(sent_at) < len(ctx.inbound):
                event = ctx.inbound[len(sent_at)]
                self.assertEqual(set(event.payload), {0xFF})
                ctx.call.frames_to_upstream += 1
                sent_at.append(ctx.clock.seconds())
        gaps = [b - a for a, b in zip([0.0] + sent_at, sent_at + [30.0])]
        self.assertLess(max(gaps), 10)
        self.assertGreater(len(sent_at), 5)
        stage.close()
        self.assertEqual(ctx.clock.getDelayedCalls(), [])


class KeepaliveCallerTests(SynchronousTestCase):
    """keepalive towards the caller."""

    def test_idle_caller_ends_the_call(self) -> None:
        """No caller audio for caller_idle_timeout_s ends the call with CALLER_IDLE (4408)."""
        ctx = RecordingContext()
        stage, _ = stage_for("keepalive", ctx, {"keepalive": {"caller_idle_timeout_s": 30}})
        for _ in range(3):
            ctx.call.frames_from_caller += 1500
            ctx.clock.advance(30)
        self.assertEqual(ctx.ended, [])
        ctx.clock.advance(30)
        self.assertEqual([(d.code, d.caller_close) for d in ctx.ended], [("CALLER_IDLE", 4408)])
        stage.close()
        self.assertEqual(ctx.clock.getDelayedCalls(), [])

    def test_ping_options(self) -> None:
        """The caller legs ping at the configured cadence."""
        from gateway.service import Gateway

        configured = configure({"keepalive": {"caller_ping_interval_s": 7, "caller_ping_timeout_s": 3}})
        options = Gateway(configured, None).caller_options()
        self.assertEqual((options["autoPingInterval"], options["autoPingTimeout"]), (7.0, 3.0))
        self.assertFalse(options["webStatus"])
