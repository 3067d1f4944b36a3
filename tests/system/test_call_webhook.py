"""
``gateway-call --webhook``: a whole Twilio call played by the simulator's `TwilioVoiceCall`
against a gateway on loopback (the voice webhook, the stream, Twilio's ``<Connect action>``
request and the new stream), printed stream by stream with the handover's gaps. An operator hands
the call over mid-call (``request_handover``, as ``POST /v1/calls/<id>/handover`` does): the same
process answers the action request with a resume stream and takes the call up again.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from gateway.testing import temp_path
from tests.system.harness import start_emulator, start_gateway, wait_until

PUBLIC = "https://gw.webhook-call.test"
AUTH_TOKEN = "webhook-call-twilio-token"


def gateway_call(*args: str) -> defer.Deferred:
    """``gateway-call ARGS`` in a subprocess: fires with (stdout, stderr, status)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TWILIO_AUTH_TOKEN")}
    script = "import sys; from gateway.simulator.cli import main; sys.exit(main())"
    return getProcessOutputAndValue(sys.executable, ["-c", script, *args], env=env)


class WebhookCallTests(TestCase):
    """The whole call, handed over once, ends normally; the output says what happened."""

    timeout = 120

    @defer.inlineCallbacks
    def start(self) -> Any:
        emulator = yield start_emulator(self)
        store = temp_path(self, "handover.sqlite")
        gateway = yield start_gateway(
            self, emulator, {"handover": {"store": f"sqlite:{store}"}},
            {"GATEWAY_PUBLIC_URL": PUBLIC, "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "GATEWAY_TOKEN_SECRET": "w" * 32})
        self.addCleanup(lambda: defer.maybeDeferred(gateway.stopService).addCallback(
            lambda _: gateway.gateway.handover.close_store()))
        return emulator, gateway

    @defer.inlineCallbacks
    def test_handed_over_call(self) -> None:
        emulator, gateway = yield self.start()
        port = gateway.port.getHost().port
        running = gateway_call("--webhook", PUBLIC, "--via", f"http://127.0.0.1:{port}", "--auth-token",
                               AUTH_TOKEN, "--after-greeting", "--wait-s", "4")
        yield wait_until(lambda: any(c.phase == "live" and c.info.frames_to_caller > 20
                                     for c in gateway.gateway.calls), 40)
        [call] = list(gateway.gateway.calls)
        call_id = call.info.call_id
        call.request_handover(5, "operator")
        out, err, status = yield running
        out, err = out.decode(), err.decode()
        self.assertEqual(status, 0, out + err)
        self.assertIn(f"voice webhook {PUBLIC}/twilio/voice: HTTP 200", out)
        self.assertIn("stream 1: <Connect action><Stream url=wss://gw.webhook-call.test/twilio>", out)
        self.assertIn("closed by the gateway: 1000 (normal closure) 'HANDED_OVER'", out)
        self.assertIn("Twilio requests the <Connect action> URL: HTTP 200, a new <Connect><Stream>", out)
        self.assertIn("stream 2: <Connect action><Stream url=wss://gw.webhook-call.test/twilio>, "
                      "carrying a resume token", out)
        self.assertIn("2 stream(s), 1 action request(s)", out)
        self.assertIn("handover 1: new socket", out)
        # Both streams were one call on the gateway, the second without a greeting.
        self.assertEqual(len(emulator.sessions), 2)
        self.assertNotIn("greeting", emulator.sessions[1].settings["agent"])
        yield wait_until(lambda: not gateway.gateway.calls, 10)
        self.assertEqual(len([s for s in emulator.sessions if s.settings]), 2)
        self.assertTrue(call_id)

    @defer.inlineCallbacks
    def test_json(self) -> None:
        """--json: the VoiceCallResult, streams and handovers included; one stream when none happens."""
        import json

        _, gateway = yield self.start()
        port = gateway.port.getHost().port
        out, err, status = yield gateway_call("--webhook", PUBLIC, "--via", f"http://127.0.0.1:{port}",
                                              "--auth-token", AUTH_TOKEN, "--fast", "--wait-s", "1", "--json")
        self.assertEqual(status, 0, out + err)
        result = json.loads(out)
        self.assertEqual((result["webhook_status"], len(result["streams"]), result["handovers"], result["ok"]),
                         (200, 1, [], True))
        self.assertEqual(result["streams"][0]["close_code"], 1000)

    @defer.inlineCallbacks
    def test_unsigned_is_refused(self) -> None:
        """Without the auth token the webhook answers 403: status 1, the reason on stderr."""
        _, gateway = yield self.start()
        port = gateway.port.getHost().port
        out, err, status = yield gateway_call("--webhook", PUBLIC, "--via", f"http://127.0.0.1:{port}",
                                              "--fast", "--wait-s", "0")
        self.assertEqual(status, 1, out + err)
        self.assertIn("voice webhook answered 403", err.decode())
