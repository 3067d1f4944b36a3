"""Tests for the close-code table and the diagnoses."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.codecs.close_codes import classify_caller_close, classify_upstream_close, sendable
from gateway.diagnostics import DIAGNOSES, Diagnosis

NET0001 = ("Deepgram did not receive audio data or a text message within the timeout window. "
           "See https://dpgr.am/net0001")
NET0000 = "Deepgram did not provide a response message within the timeout window. See https://dpgr.am/net0000"


class UpstreamTableTests(SynchronousTestCase):
    """Each way the Deepgram leg ends maps onto one diagnosis code."""

    def check(self, expected: str, code, reason=None, http=None, phase="live", error=None) -> None:
        self.assertEqual(classify_upstream_close(code, reason, http, phase, error), expected)

    def test_settings_rejected(self) -> None:
        """No status after an INVALID_SETTINGS Error is a rejected Settings (the '1005')."""
        error = {"code": "INVALID_SETTINGS", "description": "bad"}
        self.check("DG_SETTINGS_REJECTED", None, phase="configuring", error=error)
        self.check("DG_SETTINGS_REJECTED", 1005, phase="configuring", error=error)

    def test_no_status_before_applied_without_error(self) -> None:
        """No status right after Settings with no Error is still diagnosed as Settings."""
        self.check("DG_SETTINGS_REJECTED_NO_ERROR", None, phase="configuring")

    def test_no_status_live(self) -> None:
        """No status mid-call: after a fatal Error, or with none."""
        self.check("DG_FATAL_ERROR", None, error={"code": "FAILED_TO_THINK"})
        self.check("DG_NO_STATUS", None)

    def test_net_and_data_reasons_are_sentences(self) -> None:
        """NET-0001, NET-0000 and DATA-0000 are matched inside the reason sentence."""
        self.check("DG_NET_0001", 1011, NET0001)
        self.check("DG_NET_0000", 1011, NET0000)
        self.check("DG_DATA_0000", 1008, "DATA-0000: could not decode. See https://dpgr.am/data0000")
        self.check("DG_INTERNAL_ERROR", 1011, "something else")
        self.check("DG_POLICY", 1008, "other")

    def test_other_codes(self) -> None:
        """1000, 1001, 1006, 1009 and unknown codes."""
        self.check("DG_CLOSED", 1000)
        self.check("DG_SETTINGS_REJECTED_NO_ERROR", 1000, phase="configuring")
        self.check("DG_GOING_AWAY", 1001)
        self.check("DG_DROPPED", 1006)
        self.check("DG_MESSAGE_TOO_BIG", 1009)
        self.check("DG_CLOSE_OTHER", 4321)
        self.check("DG_GOING_AWAY", None, error={"code": "SERVER_GOING_AWAY"})

    def test_bad_gateway_and_old_data_pairing(self) -> None:
        """1014 is Deepgram's bad gateway (retryable); 1002 with DATA-0000 is a DATA-0000."""
        self.check("DG_BAD_GATEWAY", 1014)
        self.assertTrue(DIAGNOSES["DG_BAD_GATEWAY"].retryable)
        self.check("DG_DATA_0000", 1002, "DATA-0000. See https://dpgr.am/data0000")
        self.check("DG_CLOSE_OTHER", 1002, "protocol error")

    def test_diagnoses_without_a_close_claim_none(self) -> None:
        """A timeout or a budget spent is not described as a close with no status."""
        for code in ("DG_SETUP_TIMEOUT", "DG_NO_WELCOME", "DG_UNSTABLE"):
            self.assertNotIn("close", Diagnosis(code, leg="upstream").describe().split(" -> ")[0], code)
        self.assertIn("close no-status", Diagnosis("DG_NO_STATUS", leg="upstream").describe())

    def test_failed_upgrades(self) -> None:
        """Refused upgrades by HTTP status."""
        for status, code in [(400, "DG_BAD_REQUEST"), (401, "DG_AUTH_FAILED"), (403, "DG_FORBIDDEN"),
                             (429, "DG_RATE_LIMITED"), (503, "DG_UNAVAILABLE"), (418, "DG_UPGRADE_REFUSED")]:
            self.check(code, 1006, "connection was closed uncleanly", http=status, phase="connecting")

    def test_every_caller_close_is_sendable(self) -> None:
        """No diagnosis ever sends 1005, 1006 or 1015 (or anything else unsendable)."""
        for entry in DIAGNOSES.values():
            self.assertTrue(sendable(entry.caller_close), entry.code)
        for code in (1004, 1005, 1006, 1015, 999, 2000, 5000):
            self.assertFalse(sendable(code))

    def test_diagnosis_describes_error(self) -> None:
        """The one-line description carries the Error's code and description."""
        d = Diagnosis("DG_SETTINGS_REJECTED", "upstream", "configuring", None,
                      error={"code": "INVALID_SETTINGS", "description": "agent.think.provider"})
        self.assertIn("INVALID_SETTINGS", d.describe())
        self.assertIn("agent.think.provider", d.describe())
        self.assertEqual(d.caller_close, 4500)


class CallerTableTests(SynchronousTestCase):
    """How the caller's leg ended."""

    def test_caller(self) -> None:
        """stop, a clean close, and a drop."""
        self.assertEqual(classify_caller_close(1000, True, True), "CALLER_HANGUP")
        self.assertEqual(classify_caller_close(1000, True, False), "CALLER_CLOSED")
        self.assertEqual(classify_caller_close(1006, False, False), "CALLER_DROPPED")
