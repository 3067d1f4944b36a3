"""
The voice webhook (``/twilio/voice``), the TwiML it answers, the ``[twiml]`` configuration and
the demo's HTTP resources, through the gateway's real resource tree with `treq.testing.StubTreq`.

The official ``twilio`` package is the oracle: `RequestValidator` signs the requests and
``twilio.twiml.voice_response`` builds the TwiML each answer is compared with, element by element.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from typing import Any, Mapping
from urllib.parse import urlencode

from treq.testing import StubTreq
from twilio.request_validator import RequestValidator
from twilio.twiml.voice_response import Connect, VoiceResponse
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from gateway.errors import ConfigError
from gateway.service import Gateway
from gateway.testing import configure
from gateway.tokens import verify_token

TOKEN = "twilio-auth-token-for-tests"
PUBLIC = "https://gw.example.com"
FORM = {
    "CallSid": "CA0123456789abcdef0123456789abcdef",
    "AccountSid": "AC0123456789abcdef0123456789abcdef",
    "From": "+15005550006",
    "To": "+15005550001",
    "CallStatus": "ringing",
    "Direction": "inbound",
}
#: Where the stub sends requests: deliberately not the public host, which alone is signed.
LOCAL = "http://10.1.2.3:8080"


def categories(events: list[dict[str, Any]]) -> list[str]:
    """The ``log_category`` of each captured event that has one, in order."""
    return [e["log_category"] for e in events if "log_category" in e]


def expected_twiml(stream_url: str, parameters: list[tuple[str, str]], after: Any = None) -> bytes:
    """What the twilio package builds for the same document."""
    response = VoiceResponse()
    connect = Connect()
    stream = connect.stream(url=stream_url)
    for name, value in parameters:
        stream.parameter(name=name, value=value)
    response.append(connect)
    if after is not None:
        after(response)
    return response.to_xml().encode()


class Harness:
    """A gateway's resource tree behind a StubTreq."""

    def __init__(self, config: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> None:
        self.gateway = Gateway(configure(config, env), Clock())
        self.stub = StubTreq(self.gateway.make_site().resource)


class WebhookTestsMixin:
    """Request helpers."""

    def post(self, harness: Harness, form: Mapping[str, str], signature: str | None,
             path: str = "/twilio/voice") -> tuple[Any, bytes]:
        headers = {b"Content-Type": [b"application/x-www-form-urlencoded"]}
        if signature is not None:
            headers[b"X-Twilio-Signature"] = [signature.encode()]
        response = self.successResultOf(harness.stub.post(
            LOCAL + path, data=urlencode(form).encode(), headers=headers))
        body = self.successResultOf(response.content())
        return response, body

    def assertSameXML(self, got: bytes, expected: bytes) -> None:
        """Same declaration, then the same elements, attributes and text in the same order."""
        self.assertTrue(got.startswith(b'<?xml version="1.0" encoding="UTF-8"?>'), got)
        self.assertElementsEqual(ET.fromstring(got), ET.fromstring(expected))

    def assertElementsEqual(self, got: ET.Element, expected: ET.Element, path: str = "") -> None:
        where = f"{path}/{expected.tag}"
        self.assertEqual(got.tag, expected.tag, where)
        self.assertEqual(got.attrib, expected.attrib, where)
        self.assertEqual((got.text or "").strip(), (expected.text or "").strip(), where)
        self.assertEqual([c.tag for c in got], [c.tag for c in expected], where)
        for g, e in zip(got, expected):
            self.assertElementsEqual(g, e, where)


class VoiceWebhookTests(WebhookTestsMixin, SynchronousTestCase):
    """``POST /twilio/voice``: signatures over the public URL, TwiML out."""

    def harness(self, config: Mapping[str, Any] | None = None, public: str = PUBLIC,
                token: str | None = TOKEN) -> Harness:
        """A gateway with handover off: the plain <Connect><Stream> (HandoverTwimlTests: on)."""
        env = {"GATEWAY_PUBLIC_URL": public} if public else {}
        if token:
            env["TWILIO_AUTH_TOKEN"] = token
        return Harness({"handover": {"enabled": False}, **(config or {})}, env)

    def sign(self, url: str, form: Mapping[str, str]) -> str:
        return RequestValidator(TOKEN).compute_signature(url, dict(form))

    def test_valid_signature_connects_the_stream(self) -> None:
        """A signed webhook gets 200 text/xml: <Connect><Stream> with From, To and CallSid."""
        h = self.harness()
        response, body = self.post(h, FORM, self.sign(PUBLIC + "/twilio/voice", FORM))
        self.assertEqual(response.code, 200)
        self.assertTrue(response.headers.getRawHeaders(b"content-type")[0].startswith(b"text/xml"))
        self.assertSameXML(body, expected_twiml("wss://gw.example.com/twilio", [
            ("From", FORM["From"]), ("To", FORM["To"]), ("CallSid", FORM["CallSid"])]))

    def test_oracle_accepts_what_gateway_accepts(self) -> None:
        """The signature the gateway accepted is one Twilio's validator accepts for the public URL."""
        h = self.harness()
        signature = self.sign(PUBLIC + "/twilio/voice", FORM)
        self.assertTrue(RequestValidator(TOKEN).validate(PUBLIC + "/twilio/voice", FORM, signature))
        response, _ = self.post(h, FORM, signature)
        self.assertEqual(response.code, 200)

    def test_port_form_accepted(self) -> None:
        """A signature over the URL with :443 added is accepted, as Twilio's validator does."""
        h = self.harness()
        response, _ = self.post(h, FORM, self.sign("https://gw.example.com:443/twilio/voice", FORM))
        self.assertEqual(response.code, 200)

    def test_invalid_signature_403(self) -> None:
        """A wrong signature gets a bare 403: no TwiML, no URL, nothing to learn from."""
        h = self.harness()
        with capturedLogs() as events:
            response, body = self.post(h, FORM, self.sign(PUBLIC + "/twilio/voice", {**FORM, "From": "+1"}))
        self.assertEqual(response.code, 403)
        self.assertEqual(body, b"Forbidden\n")
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"text/plain; charset=utf-8"])
        self.assertEqual(categories(events), ["TWILIO_SIGNATURE_REFUSED"])

    def test_missing_signature_403(self) -> None:
        """No X-Twilio-Signature at all is refused the same way."""
        h = self.harness()
        response, body = self.post(h, FORM, None)
        self.assertEqual((response.code, body), (403, b"Forbidden\n"))

    def test_signature_over_request_host_refused(self) -> None:
        """A signature over the URL the request reached (its Host), not the public one, is refused."""
        h = self.harness()
        response, _ = self.post(h, FORM, self.sign(LOCAL + "/twilio/voice", FORM))
        self.assertEqual(response.code, 403)

    def test_other_token_refused(self) -> None:
        """A signature made with another auth token is refused."""
        h = self.harness()
        signature = RequestValidator("not-the-token").compute_signature(PUBLIC + "/twilio/voice", FORM)
        response, _ = self.post(h, FORM, signature)
        self.assertEqual(response.code, 403)

    def test_extra_parameters_and_after_connect(self) -> None:
        """Configured <Parameter>s follow the forwarded fields; after_connect follows </Connect>."""
        h = self.harness({"twiml": {
            "parameters": {"greeting": "Hi, this is the order line.", "prompt": "Be brief & kind"},
            "forward": ["From", "CallSid", "CallerCity"],
            "after_connect": '<Say voice="alice">Goodbye &amp; thanks.</Say><Hangup/>',
        }})
        form = {**FORM, "CallerCity": "SAN FRANCISCO"}
        response, body = self.post(h, form, self.sign(PUBLIC + "/twilio/voice", form))
        self.assertEqual(response.code, 200)

        def after(r: VoiceResponse) -> None:
            r.say("Goodbye & thanks.", voice="alice")
            r.hangup()

        self.assertSameXML(body, expected_twiml("wss://gw.example.com/twilio", [
            ("From", FORM["From"]), ("CallSid", FORM["CallSid"]), ("CallerCity", "SAN FRANCISCO"),
            ("greeting", "Hi, this is the order line."), ("prompt", "Be brief & kind")], after))

    def test_absent_fields_not_forwarded(self) -> None:
        """A forwarded field missing from the form gets no <Parameter>; nothing else is forwarded."""
        h = self.harness()
        form = {"CallSid": FORM["CallSid"], "CallStatus": "ringing"}
        response, body = self.post(h, form, self.sign(PUBLIC + "/twilio/voice", form))
        self.assertSameXML(body, expected_twiml("wss://gw.example.com/twilio", [("CallSid", FORM["CallSid"])]))

    def test_hostile_values_escaped(self) -> None:
        """Markup in a form value stays a value: the XML parses back to the very same string."""
        h = self.harness()
        evil = '"/><Hangup/><Parameter name="x" value="&amp;<\'>'
        form = {**FORM, "From": evil}
        response, body = self.post(h, form, self.sign(PUBLIC + "/twilio/voice", form))
        self.assertEqual(response.code, 200)
        stream = ET.fromstring(body).find("Connect/Stream")
        self.assertEqual(stream.find("Parameter").get("value"), evil)
        self.assertEqual(len(list(ET.fromstring(body))), 1)
        self.assertSameXML(body, expected_twiml("wss://gw.example.com/twilio", [
            ("From", evil), ("To", FORM["To"]), ("CallSid", FORM["CallSid"])]))

    def test_behind_a_path_prefix(self) -> None:
        """GATEWAY_PUBLIC_URL=https://host/prefix: signed over /prefix/twilio/voice, streams to /prefix/twilio."""
        public = "https://gw.example.com/prefix"
        h = self.harness(public=public)
        response, body = self.post(h, FORM, self.sign(public + "/twilio/voice", FORM))
        self.assertEqual(response.code, 200)
        self.assertSameXML(body, expected_twiml("wss://gw.example.com/prefix/twilio", [
            ("From", FORM["From"]), ("To", FORM["To"]), ("CallSid", FORM["CallSid"])]))
        refused, _ = self.post(h, FORM, self.sign(PUBLIC + "/twilio/voice", FORM))
        self.assertEqual(refused.code, 403)

    def test_query_string_is_signed(self) -> None:
        """A webhook URL with a query string is signed with it; the query is not a form parameter."""
        h = self.harness()
        signature = self.sign(PUBLIC + "/twilio/voice?line=sales", FORM)
        response, _ = self.post(h, FORM, signature, path="/twilio/voice?line=sales")
        self.assertEqual(response.code, 200)
        refused, _ = self.post(h, FORM, self.sign(PUBLIC + "/twilio/voice", FORM), path="/twilio/voice?line=sales")
        self.assertEqual(refused.code, 403)

    def test_get_webhook(self) -> None:
        """A GET webhook is signed over the URL with its query and forwards fields from the query."""
        h = self.harness()
        url = PUBLIC + "/twilio/voice?" + urlencode(FORM)
        signature = RequestValidator(TOKEN).compute_signature(url, {})
        response = self.successResultOf(h.stub.get(
            LOCAL + "/twilio/voice?" + urlencode(FORM), headers={b"X-Twilio-Signature": [signature.encode()]}))
        body = self.successResultOf(response.content())
        self.assertEqual(response.code, 200)
        self.assertSameXML(body, expected_twiml("wss://gw.example.com/twilio", [
            ("From", FORM["From"]), ("To", FORM["To"]), ("CallSid", FORM["CallSid"])]))

    def test_unsigned_when_no_token(self) -> None:
        """Without TWILIO_AUTH_TOKEN signatures are not checked (the start-up warning says so)."""
        h = self.harness(token=None)
        response, body = self.post(h, FORM, None)
        self.assertEqual(response.code, 200)
        self.assertIn(b'url="wss://gw.example.com/twilio"', body)
        self.assertTrue(any("TWILIO_AUTH_TOKEN is not set" in w for w in h.gateway.config.warnings))

    def test_no_public_url_503(self) -> None:
        """Without a public URL there is no stream URL: 503 naming GATEWAY_PUBLIC_URL, logged."""
        h = self.harness(public="", token=None)
        with capturedLogs() as events:
            response, body = self.post(h, FORM, None)
        self.assertEqual(response.code, 503)
        self.assertIn("GATEWAY_PUBLIC_URL", json.loads(body)["error"])
        self.assertEqual(categories(events), ["TWILIO_WEBHOOK_NO_PUBLIC_URL"])

    def test_stream_url_is_exact_path(self) -> None:
        """/twilio/voice does not shadow /twilio: other children are 404 and the stream stays a leaf."""
        h = self.harness()
        response = self.successResultOf(h.stub.get(LOCAL + "/twilio/other"))
        self.assertEqual(response.code, 404)


class StreamTokenTwimlTests(WebhookTestsMixin, SynchronousTestCase):
    """``[gateway] require_stream_token``: the TwiML carries a stream token for the CallSid."""

    def test_stream_token_parameter(self) -> None:
        """The token is the last <Parameter>, bound to the webhook's CallSid, and fresh each time."""
        from gateway.tokens import STREAM_TOKEN_PARAMETER, verify_stream_token

        env = {"GATEWAY_PUBLIC_URL": PUBLIC, "TWILIO_AUTH_TOKEN": TOKEN, "GATEWAY_TOKEN_SECRET": "t" * 32}
        h = Harness({"gateway": {"require_stream_token": True, "stream_token_ttl_s": 30},
                     "handover": {"enabled": False}}, env)
        signature = RequestValidator(TOKEN).compute_signature(PUBLIC + "/twilio/voice", dict(FORM))
        tokens = []
        for _ in range(2):
            response, body = self.post(h, FORM, signature)
            self.assertEqual(response.code, 200)
            names = [p.get("name") for p in ET.fromstring(body).iter("Parameter")]
            self.assertEqual(names, ["From", "To", "CallSid", STREAM_TOKEN_PARAMETER])
            tokens.append(ET.fromstring(body).findall(".//Parameter")[-1].get("value"))
        self.assertNotEqual(tokens[0], tokens[1])
        now = h.gateway.reactor.seconds()
        claims = verify_stream_token(b"t" * 32, tokens[0], now + 29, FORM["CallSid"])
        self.assertEqual(claims["sid"], FORM["CallSid"])


class TwimlConfigTests(SynchronousTestCase):
    """The ``[twiml]`` section is validated like every other."""

    def test_defaults(self) -> None:
        """Without [twiml]: forward From, To, CallSid; no extras; nothing after </Connect>."""
        config = configure().config
        self.assertEqual(config.twiml_forward, ("From", "To", "CallSid"))
        self.assertEqual(dict(config.twiml_parameters), {})
        self.assertEqual(config.twiml_after_connect, "")

    def assertConfigError(self, twiml: Mapping[str, Any], key: str, words: str) -> None:
        error = self.assertRaises(ConfigError, configure, {"twiml": twiml})
        self.assertIn(key, str(error))
        self.assertIn(words, str(error))

    def test_unknown_key(self) -> None:
        """A misspelt key is named with the nearest valid one."""
        self.assertConfigError({"paramters": {}}, "twiml.paramters", "did you mean 'parameters'")

    def test_parameter_not_a_string(self) -> None:
        """Parameter values must be strings."""
        self.assertConfigError({"parameters": {"n": 3}}, "twiml.parameters.n", "expected a string")

    def test_parameter_too_long(self) -> None:
        """Twilio's limit: name and value under 500 characters."""
        self.assertConfigError({"parameters": {"p": "x" * 499}}, "twiml.parameters.p", "500")

    def test_parameter_also_forwarded(self) -> None:
        """A name both forwarded and configured is ambiguous and refused."""
        self.assertConfigError({"parameters": {"From": "x"}}, "twiml.parameters.From", "twiml.forward")

    def test_after_connect_must_be_xml(self) -> None:
        """after_connect must be well-formed TwiML."""
        self.assertConfigError({"after_connect": "<Say>unclosed"}, "twiml.after_connect", "well-formed")


class DemoResourceTests(WebhookTestsMixin, SynchronousTestCase):
    """``/demo/`` and ``POST /demo/token`` exist only while the demo is enabled."""

    def test_off_by_default(self) -> None:
        """Without demo the page and the credential-free token endpoint are 404."""
        h = Harness()
        for method, path in (("get", "/demo/"), ("get", "/demo/app.js"), ("post", "/demo/token")):
            response = self.successResultOf(getattr(h.stub, method)(LOCAL + path))
            self.assertEqual(response.code, 404, path)

    def test_page_and_modules_served(self) -> None:
        """With demo on, the page, its ES modules (JavaScript type) and the stylesheet are served."""
        h = Harness({"gateway": {"demo": True}})
        for path, kind in (("/demo/", b"text/html"), ("/demo/app.js", b"text/javascript"),
                           ("/demo/worklet.js", b"text/javascript"), ("/demo/style.css", b"text/css")):
            d = h.stub.get(LOCAL + path)
            h.stub.flush()  # static files are written by a producer
            response = self.successResultOf(d)
            self.assertEqual(response.code, 200, path)
            self.assertTrue(response.headers.getRawHeaders(b"content-type")[0].startswith(kind), path)
            self.assertIn(b"default-src 'self'", response.headers.getRawHeaders(b"content-security-policy")[0])
            content = response.content()
            h.stub.flush()
            self.assertGreater(len(self.successResultOf(content)), 100)

    def test_no_listing_and_no_escape(self) -> None:
        """Unknown names are 404 and .. cannot leave the demo directory."""
        h = Harness({"gateway": {"demo": True}})
        for path in ("/demo/nothing.js", "/demo/../twiml.py", "/demo/%2e%2e/twiml.py"):
            response = self.successResultOf(h.stub.get(LOCAL + path))
            self.assertEqual(response.code, 404, path)

    def test_redirect_keeps_prefix(self) -> None:
        """/demo redirects to the relative demo/, so a proxy's path prefix survives."""
        h = Harness({"gateway": {"demo": True}})
        response = self.successResultOf(h.stub.get(LOCAL + "/demo?rate=44100", allow_redirects=False))
        self.assertEqual(response.code, 302)
        self.assertEqual(response.headers.getRawHeaders(b"location"), [b"demo/?rate=44100"])

    def test_demo_token(self) -> None:
        """POST /demo/token mints a token the gateway verifies; GET is not allowed."""
        h = Harness({"gateway": {"demo": True}})
        response = self.successResultOf(h.stub.post(LOCAL + "/demo/token"))
        self.assertEqual(response.code, 200)
        body = json.loads(self.successResultOf(response.content()))
        self.assertEqual(body["expires_in"], 300)
        verify_token(h.gateway.config.token_secret, body["token"], h.gateway.reactor.seconds())
        response = self.successResultOf(h.stub.get(LOCAL + "/demo/token"))
        self.assertEqual(response.code, 405)


class HandoverTwimlTests(WebhookTestsMixin, SynchronousTestCase):
    """``[handover]`` on (the default): ``<Connect action>`` and the action URL's answers."""

    SECRET = "h" * 32

    def harness(self, config: Mapping[str, Any] | None = None) -> Harness:
        from gateway.handover.store import MemoryStore

        env = {"GATEWAY_PUBLIC_URL": PUBLIC, "TWILIO_AUTH_TOKEN": TOKEN, "GATEWAY_TOKEN_SECRET": self.SECRET}
        h = Harness(config, env)
        h.store = MemoryStore(h.gateway.reactor)
        h.gateway.handover._store = h.store
        return h

    def sign(self, url: str, form: Mapping[str, str]) -> str:
        return RequestValidator(TOKEN).compute_signature(url, dict(form))

    def test_webhook_connects_with_action(self) -> None:
        """<Connect action=.../twilio/handover>, the stream marked as one Twilio comes back for."""
        h = self.harness({"twiml": {"after_connect": "<Say>Goodbye.</Say>"}})
        response, body = self.post(h, FORM, self.sign(PUBLIC + "/twilio/voice", FORM))
        self.assertEqual(response.code, 200)
        expected = VoiceResponse()
        connect = Connect(action=PUBLIC + "/twilio/handover")
        stream = connect.stream(url="wss://gw.example.com/twilio")
        for name in ("From", "To", "CallSid"):
            stream.parameter(name=name, value=FORM[name])
        stream.parameter(name="gateway_handover", value="1")
        expected.append(connect)
        self.assertSameXML(body, expected.to_xml().encode())

    def test_action_without_record_continues(self) -> None:
        """A stream that ended for good: the call's continuation (after_connect, else a hang-up)."""
        action = PUBLIC + "/twilio/handover"
        form = {**FORM, "CallStatus": "in-progress"}
        h = self.harness({"twiml": {"after_connect": "<Say>Goodbye.</Say>"}})
        response, body = self.post(h, form, self.sign(action, form), path="/twilio/handover")
        self.assertEqual(response.code, 200)
        self.assertEqual([e.tag for e in ET.fromstring(body)], ["Say"])
        response, body = self.post(self.harness(), form, self.sign(action, form), path="/twilio/handover")
        self.assertEqual([e.tag for e in ET.fromstring(body)], ["Hangup"])

    def test_action_with_record_resumes(self) -> None:
        """A handed-over call: a new <Connect action><Stream> whose resume token names its CallSid."""
        from gateway.tokens import verify_resume_token

        h = self.harness()
        h.store.records[FORM["CallSid"]] = ({"call_id": "c-1"}, h.gateway.reactor.seconds() + 60)
        action = PUBLIC + "/twilio/handover"
        response, body = self.post(h, FORM, self.sign(action, FORM), path="/twilio/handover")
        self.assertEqual(response.code, 200)
        root = ET.fromstring(body)
        connect = root.find("Connect")
        self.assertEqual(connect.get("action"), action)
        self.assertEqual(connect.find("Stream").get("url"), "wss://gw.example.com/twilio")
        params = {p.get("name"): p.get("value") for p in root.iter("Parameter")}
        self.assertEqual(params["gateway_handover"], "1")
        claims = verify_resume_token(self.SECRET.encode(), params["gateway_resume"],
                                     h.gateway.reactor.seconds(), FORM["CallSid"])
        self.assertEqual(claims["typ"], "resume")
        self.assertLess(len("gateway_resume") + len(params["gateway_resume"]), 500, "Twilio's limit")
        self.assertIn(FORM["CallSid"], h.store.records, "the record waits for the process taking it up")

    def test_action_unsigned_refused(self) -> None:
        """The action URL is signed like the webhook: 403 without a valid signature."""
        response, _ = self.post(self.harness(), FORM, "bad", path="/twilio/handover")
        self.assertEqual(response.code, 403)

    def test_store_down_continues(self) -> None:
        """A store that is down: the continuation, never an error page to Twilio."""
        h = self.harness()
        h.store.down = True
        action = PUBLIC + "/twilio/handover"
        with capturedLogs() as events:
            response, body = self.post(h, FORM, self.sign(action, FORM), path="/twilio/handover")
        self.assertEqual((response.code, [e.tag for e in ET.fromstring(body)]), (200, ["Hangup"]))
        self.assertEqual(categories(events), ["HANDOVER_ACTION_STORE_FAILED"])


class WebhookMethodTests(WebhookTestsMixin, SynchronousTestCase):
    """Methods the webhook does not take: 405 with Allow, not Twisted's 501."""

    def test_other_methods_405(self) -> None:
        """PUT, DELETE, PATCH, OPTIONS: 405, Allow: GET, HEAD, POST, a JSON error."""
        h = Harness({}, {"GATEWAY_PUBLIC_URL": PUBLIC})
        for method in ("PUT", "DELETE", "PATCH", "OPTIONS"):
            response = self.successResultOf(h.stub.request(method, LOCAL + "/twilio/voice"))
            body = json.loads(self.successResultOf(response.content()))
            self.assertEqual(response.code, 405, method)
            self.assertEqual(response.headers.getRawHeaders(b"allow"), [b"GET, HEAD, POST"], method)
            self.assertEqual(body["error"], "method_not_allowed", method)

    def test_head_still_answers(self) -> None:
        """HEAD is GET without a body, as Twisted serves it."""
        h = Harness({}, {"GATEWAY_PUBLIC_URL": PUBLIC})
        response = self.successResultOf(h.stub.head(LOCAL + "/twilio/voice"))
        self.assertEqual(response.code, 200)
