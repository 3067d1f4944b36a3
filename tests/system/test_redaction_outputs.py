"""
The redact plugin's rule holds in the recording's side file and the live events too: a whole call
through the emulator (whose caller says an order number and a card number, and whose agent
repeats them) with ``record`` (transcript on) and ``live_events`` before ``redact``; the side file
and every webhook body are searched for the raw digits: none is found, the masked text is there.
"""

from __future__ import annotations

import glob
import os
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase
from twisted.web import resource, server

from gateway.simulator import TwilioCall
from gateway.testing import temp_path
from tests.system.harness import clip, start_emulator, start_gateway, wait_until
from tests.system.test_redaction import AGENT_SAYS, CALLER_SAYS, raw_digit_hits

CHAIN = ["auth", "settings", "empty_frames", "record", "transcoder", "keepalive", "call_control", "close_codes",
         "live_events", "redact"]
CALLER_MASKED = "My order number is ##### and my card is #### #### #### ####."
AGENT_MASKED = "Order ##### is on its way, card ending ####."


class Receiver(resource.Resource):
    """The live-events webhook: records every body."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[str] = []

    def render_POST(self, request: Any) -> bytes:
        self.bodies.append(request.content.read().decode())
        return b"ok"


class RedactionInRecordingsAndLiveEventsTests(TestCase):
    """0 hits for the raw digits in the side file and the live events."""

    timeout = 90

    @defer.inlineCallbacks
    def run_call(self, mode: str) -> Any:
        receiver = Receiver()
        port = reactor.listenTCP(0, server.Site(receiver), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        directory = temp_path(self, "recordings")
        emulator = yield start_emulator(self, script=(CALLER_SAYS,), replies=(AGENT_SAYS,))
        gateway = yield start_gateway(self, emulator, {
            "gateway": {"mode": mode, "chain": CHAIN},
            "record": {"directory": directory, "transcript": True},
            "live_events": {"url": f"http://127.0.0.1:{port.getHost().port}/live", "batch_ms": 100}})
        factory = dict(gateway.gateway.configured.stages)["record"]
        self.addCleanup(factory.stop_service)
        call = TwilioCall(reactor, url=gateway.url + "/twilio", audio=clip("caller-order-8k-mulaw.wav"),
                          realtime=False, wait_s=3.0)
        yield call.run().addTimeout(60, reactor)
        yield wait_until(lambda: not gateway.gateway.calls, 10)
        yield factory.idle()
        yield wait_until(lambda: receiver.bodies and '"call.ended"' in receiver.bodies[-1], 10)
        side_files = glob.glob(os.path.join(directory, "*", "*.json"))
        self.assertEqual(len(side_files), 1)
        with open(side_files[0]) as f:
            side = f.read()
        return side, receiver.bodies

    def assertNoRawDigits(self, where: str, texts: list[str]) -> None:
        self.assertEqual(raw_digit_hits(texts), [], f"raw digits in {where}")

    @defer.inlineCallbacks
    def test_voice_agent(self) -> None:
        """Both sides of the conversation masked in the side file's transcript and the live turns."""
        side, bodies = yield self.run_call("agent")
        self.assertIn(CALLER_MASKED, side)
        self.assertIn(AGENT_MASKED, side)
        self.assertTrue(any(CALLER_MASKED in body for body in bodies))
        self.assertTrue(any(AGENT_MASKED in body for body in bodies))
        self.assertNoRawDigits("the recording's side file", [side])
        self.assertNoRawDigits("the live events", bodies)

    @defer.inlineCallbacks
    def test_listen(self) -> None:
        """/v1/listen transcripts masked in the side file and the live transcripts."""
        side, bodies = yield self.run_call("listen")
        self.assertIn("#####", side)
        self.assertTrue(any("####" in body and '"transcript"' in body for body in bodies))
        self.assertNoRawDigits("the recording's side file", [side])
        self.assertNoRawDigits("the live events", bodies)
