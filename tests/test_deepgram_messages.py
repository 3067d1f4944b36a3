"""
Client and server messages of each Deepgram endpoint, read from the SDK, and the strict check of
client messages against the SDK's own verdict (gateway.codecs.deepgram_messages).
"""

from __future__ import annotations

from typing import Any

import pydantic
from twisted.trial.unittest import SynchronousTestCase

from gateway.codecs.deepgram_messages import (
    GATEWAY_OWNED,
    app_control_types,
    check_client_message,
    client_messages,
    server_messages,
)
from gateway.errors import SettingsError
from tests.test_deepgram_types import FLUX, SPEAK, THINK, _literal_fields, _undeclared


def sdk_accepts(message: dict[str, Any], endpoint: str) -> bool:
    """The SDK's strict verdict: a model of that type validates strictly, declaring every key."""
    models = client_messages(endpoint).get(message.get("type"), ())
    for model in models:
        if not all(message.get(k) == v for k, v in _literal_fields(model).items()):
            continue  # Fern's rule for a union of tagged models (InjectAgentMessage has two)
        try:
            instance = model.model_validate(message, strict=True)
        except pydantic.ValidationError:
            continue
        if not _undeclared(instance, message):
            return True
    return False


#: (endpoint, message, the field a refusal names or None).
CLIENT_CORPUS: list[tuple[str, dict[str, Any], str | None]] = [
    ("agent", {"type": "UpdatePrompt", "prompt": "Be brief."}, None),
    ("agent", {"type": "UpdateSpeak", "speak": SPEAK}, None),
    ("agent", {"type": "UpdateSpeak", "speak": [SPEAK, SPEAK]}, None),
    ("agent", {"type": "UpdateThink", "think": THINK}, None),
    ("agent", {"type": "UpdateListen", "listen": {"provider": FLUX}}, None),
    ("agent", {"type": "UpdateThink_Live", "think_live": {"provider": {"type": "deepgram"}}}, None),
    ("agent", {"type": "InjectAgentMessage", "message": "One moment.", "behavior": "queue"}, None),
    ("agent", {"type": "InjectAgentMessage", "is_dynamic": True, "behavior": "interrupt"}, None),
    ("agent", {"type": "InjectUserMessage", "content": "What are your hours?"}, None),
    ("agent", {"type": "ForceEndTurn"}, None),
    ("agent", {"type": "FunctionCallResponse", "id": "f1", "name": "order_status", "content": "shipped"}, None),
    ("listen", {"type": "Finalize"}, None),
    ("listen", {"type": "Configure", "keyterms": ["refund"], "features": {"numerals": True}}, None),
    ("listen", {"type": "CloseStream"}, None),
    ("flux", {"type": "Configure", "thresholds": {"eot_threshold": 0.8}, "keyterms": ["order"]}, None),
    ("flux", {"type": "ForceEndTurn"}, None),
    ("agent", {"type": "UpdatePrompt", "prompt": 5}, "message.prompt"),
    ("agent", {"type": "UpdatePrompt", "prompt": "x", "append": True}, "message.append"),
    ("agent", {"type": "UpdatePrompt"}, "message.prompt"),
    ("agent", {"type": "UpdateSpeak", "speak": {"provider": {"type": "deepgram"}}}, "message.speak.provider.model"),
    ("agent", {"type": "InjectAgentMessage"}, "message.message"),
    ("agent", {"type": "InjectAgentMessage", "content": "Hi"}, "message.content"),
    ("agent", {"type": "InjectAgentMessage", "is_dynamic": False}, "message.is_dynamic"),
    ("agent", {"type": "UpdateListen", "listen": {"provider": {"type": "deepgram", "version": "v2"}}},
     "message.listen.provider.model"),
    ("agent", {"type": "Finalize"}, "message.type"),
    ("listen", {"type": "Finalize", "channel": 0}, "message.channel"),
    ("listen", {"type": "ForceEndTurn"}, "message.type"),
    ("flux", {"type": "Configure", "thresholds": {"eot": 0.8}}, "message.thresholds.eot"),
    ("flux", {"type": "Configure", "numerals": "yes"}, "message.numerals"),
    ("flux", {"type": "KeepAlive"}, "message.type"),
]


class ClientMessageTests(SynchronousTestCase):
    """Client messages: typed by the SDK, checked strictly, each refusal named."""

    def test_corpus_agrees(self) -> None:
        """The gateway's verdict is the SDK's on every message, and a refusal names the field."""
        for endpoint, message, field in CLIENT_CORPUS:
            with self.subTest(f"{endpoint} {message}"):
                self.assertEqual(sdk_accepts(message, endpoint), field is None, message)
                if field is None:
                    check_client_message(message, endpoint)
                else:
                    with self.assertRaises(SettingsError) as cm:
                        check_client_message(message, endpoint)
                    self.assertEqual(cm.exception.field, field, message)

    def test_types_per_endpoint(self) -> None:
        """Issue 16's client messages are all known, on the right endpoint."""
        self.assertLessEqual({"UpdatePrompt", "UpdateSpeak", "UpdateThink", "UpdateListen", "UpdateThink_Live",
                              "InjectAgentMessage", "InjectUserMessage", "ForceEndTurn"},
                             set(client_messages("agent")))
        self.assertLessEqual({"Finalize", "Configure"}, set(client_messages("listen")))
        self.assertLessEqual({"Configure", "ForceEndTurn"}, set(client_messages("flux")))
        self.assertEqual(len(client_messages("agent")["InjectAgentMessage"]), 2)

    def test_app_may_not_send_what_the_gateway_owns(self) -> None:
        """Settings, KeepAlive, CloseStream and function answers are the gateway's."""
        self.assertFalse(app_control_types("agent") & GATEWAY_OWNED)
        self.assertIn("UpdatePrompt", app_control_types("agent"))
        with self.assertRaises(SettingsError) as cm:
            check_client_message({"type": "Settings"}, "agent", allowed=app_control_types("agent"))
        self.assertEqual(cm.exception.field, "message.type")


class ServerMessageTests(SynchronousTestCase):
    """Server messages: the SDK's table per endpoint."""

    def test_issue_16_server_messages_are_known(self) -> None:
        """Every server message issue 16 names is in the SDK's tables."""
        self.assertLessEqual({"PromptUpdated", "SpeakUpdated", "ThinkUpdated", "ListenUpdated", "InjectionRefused",
                              "LatencyReport", "FunctionCallResponse", "FunctionCallCancelled",
                              "ThinkLiveUpdated", "FrustrationDetected", "History", "Warning", "Error"},
                             set(server_messages("agent")))
        self.assertLessEqual({"ConfigureSuccess", "ConfigureFailure", "Results", "Metadata"},
                             set(server_messages("listen")))
        self.assertLessEqual({"Connected", "TurnInfo", "ConfigureSuccess"}, set(server_messages("flux")))
        self.assertEqual(len(server_messages("agent")["History"]), 2)
