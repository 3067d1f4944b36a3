"""
Graceful drain of a real twistd gateway on SIGTERM: readiness turns 503, new calls are refused,
calls that end before the deadline are not cut, the rest are closed with 1001, the process exits.
"""

from __future__ import annotations

import os

import treq
from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from gateway.testing import temp_path, TEST_API_KEY
from tests.system.harness import start_standin, TwistdGateway, clip
from tests.system.twilio_client import twilio_call

AUDIO = clip("caller-yes-8k-mulaw.wav").data


class DrainTests(TestCase):
    """SIGTERM with live calls."""


    timeout = 90

    @defer.inlineCallbacks
    def setUp(self) -> None:
        self.standin = yield start_standin(self)

    @defer.inlineCallbacks
    def start(self, drain_s: float) -> defer.Deferred:
        config = temp_path(self)
        with open(config, "w") as f:
            f.write(f"[gateway]\ndrain_deadline_s = {drain_s}\n")
        gw = TwistdGateway(["--port", "tcp:0:interface=127.0.0.1", "--config", config],
                           {"DEEPGRAM_API_KEY": TEST_API_KEY,
                            "DEEPGRAM_AGENT_URL": self.standin.url("agent")})
        self.addCleanup(gw.stop)
        port = yield gw.listening.addTimeout(60, reactor)
        gw.port = port
        return gw

    @defer.inlineCallbacks
    def wait_for(self, predicate, timeout_s: float = 20) -> defer.Deferred:
        for _ in range(int(timeout_s / 0.05)):
            if predicate():
                return
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.fail("condition not reached")

    @defer.inlineCallbacks
    def test_drain(self) -> None:
        """A short call finishes untouched, a long one gets 1001 at the deadline, then exit 143."""
        gw = yield self.start(drain_s=2.0)
        base = f"127.0.0.1:{gw.port}"
        long_call = twilio_call(reactor, f"ws://{base}/twilio", AUDIO, stop_after_s=None)
        short_call = twilio_call(reactor, f"ws://{base}/twilio", AUDIO, stop_after_s=1.0)
        yield self.wait_for(lambda: len(self.standin.sessions) == 2)
        response = yield treq.get(f"http://{base}/readyz", persistent=False)
        self.assertEqual(response.code, 200)
        yield response.content()
        gw.process.signalProcess("TERM")
        yield self.wait_for(lambda: "draining" in gw.output)
        response = yield treq.get(f"http://{base}/readyz", persistent=False)
        self.assertEqual(response.code, 503)
        yield response.content()
        refused = yield twilio_call(reactor, f"ws://{base}/twilio", AUDIO).addTimeout(10, reactor)
        self.assertEqual(refused.handshake_status, 503)
        gw.process.signalProcess("TERM")  # a second SIGTERM changes nothing
        short = yield short_call.addTimeout(20, reactor)
        self.assertEqual((short.close_code, short.close_reason), (1000, "CALLER_HANGUP"))
        long = yield long_call.addTimeout(20, reactor)
        self.assertEqual((long.close_code, long.close_reason), (1001, "DRAINED"))
        code, signal = yield gw.ended.addTimeout(20, reactor)
        self.assertIn(signal, (15, None))
        self.assertIn("ended: DRAINED", gw.output)
        self.assertNotIn("Traceback", gw.output)
        self.assertEqual(len(self.standin.sessions), 2)
        for session in self.standin.sessions:
            self.assertEqual(session.close_code, 1000)
