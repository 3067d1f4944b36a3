"""
Tests for the empty_frames plugin (which caller frames are dropped, counted by reason), driven
through a recording context.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.codecs.formats import LINEAR16_16K, MULAW_8K
from gateway.events import Audio
from gateway.testing import RecordingContext, call_info
from tests.stages import stage_for


class EmptyFramesStageTests(SynchronousTestCase):
    """empty_frames."""

    def test_drops_by_reason(self) -> None:
        """Empty, bad base64, odd-length linear16 and wrong-track frames are dropped and counted."""
        ctx = RecordingContext(call=call_info(leg="client", caller_format=LINEAR16_16K))
        stage, _ = stage_for("empty_frames", ctx)
        on = stage.routes().inbound[Audio]
        self.assertEqual(on(Audio(b"\x00\x01")), Audio(b"\x00\x01"))
        for frame, reason in [(Audio(b""), "empty"), (Audio(b"", defect="bad_base64"), "bad_base64"),
                              (Audio(b"\x00"), "odd_length"), (Audio(b"\x00\x00", track="outbound"), "wrong_track")]:
            self.assertIsNone(on(frame))
            self.assertEqual(ctx.counted("frames_dropped", reason=reason), 1, reason)

    def test_mulaw_odd_length_passes(self) -> None:
        """One byte is a whole mu-law sample."""
        ctx = RecordingContext(call=call_info(caller_format=MULAW_8K))
        stage, _ = stage_for("empty_frames", ctx)
        self.assertEqual(stage.routes().inbound[Audio](Audio(b"\xff")), Audio(b"\xff"))
