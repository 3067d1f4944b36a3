"""
Call control through the whole gateway: end_call waits for the goodbye to be played; transfer_call
redirects the call through a local stand-in for Twilio's REST API.
"""

from __future__ import annotations

import base64
import json
from urllib.parse import parse_qs

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase
from twisted.web import resource, server

from gateway.simulator import TwilioCall
from tests.system.harness import clip, start_emulator, start_gateway
from tests.system.test_spine import capture_logs

ORDER = clip("caller-order-8k-mulaw.wav")


class FakeTwilioApi(resource.Resource):
    """Records requests to the Calls resource and answers like Twilio."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[dict] = []

    def render_POST(self, request) -> bytes:
        self.requests.append({
            "path": request.path.decode(),
            "authorization": (request.getHeader(b"authorization") or b"").decode(),
            "form": {k.decode(): [v.decode() for v in vs] for k, vs in request.args.items()},
        })
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"sid": "CA" + "0" * 32, "status": "in-progress"}).encode()


class CallControlTests(TestCase):
    """The agent ends and transfers calls."""

    timeout = 90

    @defer.inlineCallbacks
    def test_end_call_after_goodbye(self) -> None:
        """The emulator calls end_call; the stream ends only after the goodbye's mark was echoed."""
        emulator = yield start_emulator(self, script=["Thank you, that's all, please end call."],
                                        replies=["Goodbye, have a nice day!"])
        gateway = yield start_gateway(self, emulator)
        call = TwilioCall(reactor, url=gateway.url + "/twilio", audio=ORDER, realtime=False, wait_s=None)
        result = yield call.run().addTimeout(60, reactor)
        self.assertEqual((result.close_code, result.close_reason), (1000, "AGENT_ENDED_CALL"))
        session = emulator.sessions[0]
        responses = [m for kind, m in session.received if kind == "text" and m.get("type") == "FunctionCallResponse"]
        self.assertEqual([r["name"] for r in responses], ["end_call"])
        echoed = [(t, m) for t, kind, m in result.events if kind == "sim.mark_echoed"]
        closed = [t for t, kind, m in result.events if kind == "sim.closed"]
        self.assertTrue(echoed, result.events)
        last_t, last = echoed[-1]
        self.assertEqual(last["how"], "played")
        self.assertLessEqual(last_t, closed[0])

    @defer.inlineCallbacks
    def test_transfer_call(self) -> None:
        """transfer_call updates the call with <Dial> TwiML, authenticated, through the REST API."""
        api = FakeTwilioApi()
        port = reactor.listenTCP(0, server.Site(api), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        env = {"TWILIO_AUTH_TOKEN": "tw-token", "GATEWAY_PUBLIC_URL": "https://gw.example.com",
               "TWILIO_ACCOUNT_SID": "AC" + "1" * 32, "TWILIO_API_URL": f"http://127.0.0.1:{port.getHost().port}"}
        import os

        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        self.addCleanup(lambda: [os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
                                 for k, v in saved.items()])
        events = capture_logs(self)
        emulator = yield start_emulator(self, script=["Can you transfer call to a person?"])
        gateway = yield start_gateway(self, emulator, {"call_control": {"transfer_to": "+15551230000"}}, env=env)
        call = TwilioCall(reactor, url=gateway.url + "/twilio", audio=ORDER, realtime=False, wait_s=3.0,
                          auth_token="tw-token", signed_url="wss://gw.example.com/twilio")
        result = yield call.run().addTimeout(60, reactor)
        self.assertEqual(result.close_code, 1000)
        self.assertEqual(len(api.requests), 1, events)
        sent = api.requests[0]
        self.assertEqual(sent["path"], f"/2010-04-01/Accounts/{env['TWILIO_ACCOUNT_SID']}/Calls/{call.call_sid}.json")
        user, _, password = base64.b64decode(sent["authorization"].split()[1]).decode().partition(":")
        self.assertEqual((user, password), (env["TWILIO_ACCOUNT_SID"], "tw-token"))
        self.assertEqual(sent["form"]["Twiml"], ["<Response><Dial>+15551230000</Dial></Response>"])
        session = emulator.sessions[0]
        answers = [m for kind, m in session.received if kind == "text" and m.get("type") == "FunctionCallResponse"]
        self.assertEqual(answers[0]["content"], "The caller is being transferred now.")
        _ = parse_qs
