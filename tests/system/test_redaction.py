"""
The redact plugin's rule holds everywhere a transcript goes: a whole call through the emulator
(whose caller says an order number and a card number, and whose agent repeats them), with the
conversation logged, the call report logged and POSTed to a webhook, and a /client caller that
receives the conversation. Every output is searched for the raw digits: none is found.
"""

from __future__ import annotations

import json
import re

from twisted.internet import defer, reactor
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase
from twisted.web import resource, server

from gateway.logs import render_json
from gateway.simulator import ClientCall, TwilioCall
from gateway.tokens import mint_token
from tests.system.harness import clip, start_emulator, start_gateway, wait_until

SECRET = "redaction-test-token-secret-0123456789"
#: What the caller says and the agent answers, in the emulator's script.
CALLER_SAYS = "My order number is 12345 and my card is 4111 1111 1111 1111."
AGENT_SAYS = "Order 12345 is on its way, card ending 1111."
RAW = ("12345", "4111", "1111")
# A raw number as it would be spoken in a transcript: not part of a longer number, a decimal
# fraction (a timestamp such as 1796418726.4111) or an identifier (a call id such as "4111-23").
RAW_SPOKEN = re.compile(r"(?<![\w.-])(?:" + "|".join(RAW) + r")(?![\w-])")


def strings_in(text: str) -> list[str]:
    """The text a body or log line carries: every string in it when it is JSON (numbers such as
    timestamps and byte counts are not text anyone said), else the whole line."""
    try:
        value = json.loads(text)
    except ValueError:
        return [text]
    found: list[str] = []
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            found.extend(strings_in(item) if item[:1] in "{[" else [item])
        elif isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return found


def raw_digit_hits(texts: list[str]) -> list[tuple[str, str]]:
    """Each raw number found in what was said inside ``texts``, with the string it was found in."""
    return [(match.group(), string[:200]) for text in texts for string in strings_in(text)
            for match in RAW_SPOKEN.finditer(string)]
CHAIN = ["auth", "settings", "empty_frames", "transcoder", "keepalive", "call_control", "close_codes",
         "redact"]


class Receiver(resource.Resource):
    """The report webhook: records every body."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[bytes] = []

    def render_POST(self, request) -> bytes:
        self.bodies.append(request.content.read())
        return b"ok"


class RedactionEverywhereTests(TestCase):
    """0 hits for the raw digits in logs, reports, webhook bodies and what the caller receives."""

    timeout = 90

    @defer.inlineCallbacks
    def start(self, mode: str) -> defer.Deferred:
        lines: list[str] = []

        def observe(event: dict) -> None:
            # Everything the gateway logs, rendered as the JSON logger would (every field), but
            # not the emulator's own lines: it is the far end, it heard the real digits.
            if not str(event.get("log_namespace", "")).startswith("gateway.emulator"):
                lines.append(render_json(event, lambda text: text))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        receiver = Receiver()
        port = reactor.listenTCP(0, server.Site(receiver), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        emulator = yield start_emulator(self, script=(CALLER_SAYS,), replies=(AGENT_SAYS,))
        gateway = yield start_gateway(
            self, emulator,
            {"gateway": {"mode": mode, "chain": CHAIN, "log_conversation": True},
             "report": {"webhook_url": f"http://127.0.0.1:{port.getHost().port}/calls"}},
            {"GATEWAY_TOKEN_SECRET": SECRET})
        return emulator, gateway, receiver, lines

    def assertNoRawDigits(self, where: str, texts: list[str]) -> None:
        self.assertEqual(raw_digit_hits(texts), [], f"raw digits in {where}")

    @defer.inlineCallbacks
    def finish(self, gateway, receiver, calls: int) -> defer.Deferred:
        yield wait_until(lambda: len(receiver.bodies) >= calls and not gateway.gateway.calls, 30)
        return [body.decode() for body in receiver.bodies]

    @defer.inlineCallbacks
    def test_voice_agent(self) -> None:
        """A Twilio call and a /client call: conversation log lines, the call reports (logged and
        POSTed) and the /client caller's events are masked."""
        emulator, gateway, receiver, lines = yield self.start("agent")
        twilio = TwilioCall(reactor, url=gateway.url + "/twilio", audio=clip("caller-order-8k-mulaw.wav"),
                            realtime=False, wait_s=3.0)
        yield twilio.run().addTimeout(60, reactor)
        token = mint_token(SECRET.encode(), reactor.seconds())
        client = ClientCall(reactor, url=gateway.url + "/client", audio=clip("caller-order-16k-s16le.wav"),
                            token=token, realtime=False, wait_s=3.0)
        result = yield client.run().addTimeout(60, reactor)
        bodies = yield self.finish(gateway, receiver, 2)

        reports = [json.loads(body) for body in bodies]
        for report in reports:
            said = [item["content"] for item in report["conversation"]]
            self.assertIn("My order number is ##### and my card is #### #### #### ####.", said)
            self.assertIn("Order ##### is on its way, card ending ####.", said)
        conversation_lines = [line for line in lines if '"speaker"' in line]
        self.assertGreaterEqual(len(conversation_lines), 4)
        self.assertTrue([line for line in lines if "call_report" in line])
        client_texts = [json.dumps(message) for _, kind, message in result.events
                        if kind in ("ConversationText", "History")]
        self.assertTrue(client_texts)
        self.assertNoRawDigits("the webhook bodies", bodies)
        self.assertNoRawDigits("the gateway's log", lines)
        self.assertNoRawDigits("what the /client caller received", client_texts)
        counted = gateway.gateway.metrics.registry.get_sample_value(
            "gateway_plugin_events_total", {"plugin": "redact", "name": "redacted", "detail": "rule=card"})
        self.assertGreaterEqual(counted, 2)

    @defer.inlineCallbacks
    def test_listen(self) -> None:
        """/v1/listen: Results transcripts and words, in the log, the report and the webhook."""
        emulator, gateway, receiver, lines = yield self.start("listen")
        call = TwilioCall(reactor, url=gateway.url + "/twilio", audio=clip("caller-order-8k-mulaw.wav"),
                          realtime=False, wait_s=3.0)
        yield call.run().addTimeout(60, reactor)
        bodies = yield self.finish(gateway, receiver, 1)
        report = json.loads(bodies[0])
        self.assertIn("My order number is ##### and my card is #### #### #### ####.", json.dumps(report))
        self.assertNoRawDigits("the webhook bodies", bodies)
        self.assertNoRawDigits("the gateway's log", lines)
