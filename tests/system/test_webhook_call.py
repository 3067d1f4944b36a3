"""
A signed Twilio call end to end, the way a real one arrives: Twilio POSTs the voice webhook,
reads the TwiML, and dials the ``<Stream url>`` it names with the ``<Parameter>``s as
``customParameters``, signing both requests with the auth token over the *public* URLs.

The gateway sits behind an imagined proxy at ``https://gw.example.test/prefix``: the test maps
that public URL onto the local port (as the proxy would, stripping ``/prefix``) and signs with the
public URL, with the official ``twilio`` package's `RequestValidator`.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from urllib.parse import urlencode

import treq
from twilio.request_validator import RequestValidator
from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from gateway.simulator import TwilioCall
from tests.system.harness import clip, start_emulator, start_gateway

TOKEN = "auth-token-of-the-test-account"
PUBLIC = "https://gw.example.test/prefix"
ORDER = clip("caller-order-8k-mulaw.wav")


class SignedWebhookCallTests(TestCase):
    """From the webhook's TwiML to a finished Voice Agent call."""

    timeout = 120

    @defer.inlineCallbacks
    def start(self) -> defer.Deferred:
        emulator = yield start_emulator(self)
        gateway = yield start_gateway(
            self, emulator,
            {"twiml": {"parameters": {"greeting": "Thanks for calling the order line."}},
             "settings": {"parameters": {"greeting": "agent.greeting", "From": "agent.think.prompt"}}},
            {"TWILIO_AUTH_TOKEN": TOKEN, "GATEWAY_PUBLIC_URL": PUBLIC},
        )
        local = f"http://127.0.0.1:{gateway.port.getHost().port}"
        return emulator, gateway, local

    def to_local(self, public_url: str, local: str) -> str:
        """What the proxy does: the public URL's scheme, host and prefix become the local port."""
        ws_public = PUBLIC.replace("https://", "wss://", 1)
        self.assertTrue(public_url.startswith(ws_public + "/"), public_url)
        return local.replace("http://", "ws://", 1) + public_url[len(ws_public):]

    @defer.inlineCallbacks
    def test_signed_call_from_the_webhook(self) -> None:
        """Webhook TwiML -> signed stream at the URL it names -> Settings from its Parameters -> 1000."""
        emulator, gateway, local = yield self.start()
        form = {"CallSid": "CA" + "1" * 32, "AccountSid": "AC" + "2" * 32,
                "From": "+15005550006", "To": "+15005550001", "CallStatus": "ringing"}
        webhook = PUBLIC + "/twilio/voice"
        signature = RequestValidator(TOKEN).compute_signature(webhook, form)
        response = yield treq.post(
            local + "/twilio/voice", data=urlencode(form).encode(), persistent=False,
            headers={"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": signature})
        body = yield response.content()
        self.assertEqual(response.code, 200, body)
        stream = ET.fromstring(body).find("Connect/Stream")
        stream_url = stream.get("url")
        self.assertEqual(stream_url, "wss://gw.example.test/prefix/twilio")
        parameters = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
        # gateway_handover marks a stream Twilio will come back for (<Connect action>: handover).
        self.assertEqual(parameters, {"From": form["From"], "To": form["To"], "CallSid": form["CallSid"],
                                      "greeting": "Thanks for calling the order line.",
                                      "gateway_handover": "1"})
        self.assertEqual(ET.fromstring(body).find("Connect").get("action"),
                         "https://gw.example.test/prefix/twilio/handover")

        call = TwilioCall(reactor, url=self.to_local(stream_url, local), audio=ORDER,
                          call_sid=form["CallSid"], account_sid=form["AccountSid"],
                          custom_parameters=parameters, auth_token=TOKEN, signed_url=stream_url,
                          realtime=False, wait_s=3.0)
        result = yield call.run().addTimeout(90, reactor)
        session = emulator.sessions[0]
        yield session.closed
        self.assertEqual(emulator.upgrade_attempts, 1)
        self.assertEqual(session.settings["agent"]["greeting"], "Thanks for calling the order line.")
        self.assertEqual(session.settings["agent"]["think"]["prompt"], form["From"])
        self.assertEqual(session.audio[: len(ORDER.data)], ORDER.data)
        self.assertGreater(len(result.agent_audio), 0)
        self.assertEqual(result.violations, [])
        self.assertEqual((result.close_code, session.close_code), (1000, 1000))

    @defer.inlineCallbacks
    def test_unsigned_webhook_and_stream_refused(self) -> None:
        """A webhook signed over the local URL gets 403; a stream signed over it gets 403 too, and
        Deepgram sees no connection."""
        emulator, gateway, local = yield self.start()
        form = {"CallSid": "CA" + "3" * 32, "From": "+15005550006"}
        signature = RequestValidator(TOKEN).compute_signature(local + "/twilio/voice", form)
        response = yield treq.post(
            local + "/twilio/voice", data=urlencode(form).encode(), persistent=False,
            headers={"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": signature})
        body = yield response.content()
        self.assertEqual((response.code, body), (403, b"Forbidden\n"))

        call = TwilioCall(reactor, url=local.replace("http://", "ws://") + "/twilio", audio=ORDER,
                          auth_token=TOKEN, signed_url=local.replace("http://", "ws://") + "/twilio",
                          realtime=False, wait_s=0.5)
        result = yield call.run().addTimeout(60, reactor)
        self.assertEqual(result.handshake_status, 403)
        self.assertEqual(emulator.upgrade_attempts, 0)
