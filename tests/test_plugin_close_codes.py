"""
Tests for the close_codes plugin (the diagnosis attached to a close), driven through a
recording context.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.events import UpstreamClosed
from gateway.testing import RecordingContext
from tests.stages import stage_for


class CloseCodesStageTests(SynchronousTestCase):
    """close_codes."""

    def test_attaches_diagnosis(self) -> None:
        """A no-status close after INVALID_SETTINGS is diagnosed with the Error and the phase."""
        ctx = RecordingContext()
        ctx.call.last_error = {"type": "Error", "code": "INVALID_SETTINGS", "description": "bad think"}
        stage, _ = stage_for("close_codes", ctx)
        out = stage.routes().outbound[UpstreamClosed](UpstreamClosed(None, None, True, phase="configuring"))
        self.assertEqual((out.diagnosis.code, out.diagnosis.error["code"]),
                         ("DG_SETTINGS_REJECTED", "INVALID_SETTINGS"))
