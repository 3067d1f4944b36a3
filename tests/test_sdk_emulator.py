"""
Deepgram's official Python SDK against the emulator (issue 16): its agent, listen and Flux clients
complete their flows (tests/sdk_flows.py, run in a subprocess with a timeout, since the SDK's
socket clients are synchronous), the agent one with an access token from the emulator's
``POST /v1/auth/grant``. Every server message parses into one of the SDK's models, and every
client message the SDK sent validates strictly against its own types.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from twisted.internet import defer, threads

from gateway.codecs.deepgram_messages import check_client_message, check_server_message
from gateway.testing import temp_path
from tests.test_emulator import KEY, EmulatorTestCase, clip

FLOWS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sdk_flows.py")


class SdkFlowTests(EmulatorTestCase):
    """The SDK's three WebSocket clients, start to finish, on the emulator."""

    timeout = 120

    @defer.inlineCallbacks
    def run_flow(self, flow: str) -> Any:
        audio = temp_path(self, "caller.ulaw")
        with open(audio, "wb") as f:
            f.write(clip("caller-order-8k-mulaw.wav"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPGRAM_")}
        done = yield threads.deferToThread(
            subprocess.run, [sys.executable, FLOWS, self.emu.http_url, KEY, flow, audio],
            capture_output=True, text=True, timeout=90, env=env, stdin=subprocess.DEVNULL)
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        self.assertNotIn("Skipping unknown WebSocket message", done.stderr)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        for session in self.emu.sessions:
            yield session.closed
        return result

    def assertParsed(self, result: dict[str, Any], endpoint: str) -> list[str]:
        """Every server message became an SDK model, and validates strictly; returns the types."""
        kinds = []
        for seen in result["seen"]:
            if seen["class"] == "bytes":
                continue
            self.assertNotEqual(seen["class"], "dict", f"the SDK did not parse {seen}")
            kinds.append(seen["type"])
        for session in self.emu.sessions:
            for kind, payload in session.received:
                if kind == "text":
                    check_client_message(payload, endpoint)
        return kinds

    @defer.inlineCallbacks
    def test_agent(self) -> None:
        """Grant, Bearer, Settings, greeting, UpdatePrompt, InjectAgentMessage, audio, a turn."""
        result = yield self.run_flow("agent")
        kinds = self.assertParsed(result, "agent")
        for kind in ("Welcome", "SettingsApplied", "ConversationText", "PromptUpdated", "AgentAudioDone",
                     "UserStartedSpeaking", "History"):
            self.assertIn(kind, kinds)
        self.assertEqual(result["expires_in"], 120)
        session = self.emu.sessions[0]
        scheme, _, token = session.headers["authorization"].partition(" ")
        self.assertEqual((scheme.lower(), token.count(".")), ("bearer", 2), "the SDK sent the granted JWT")
        sent = [p["type"] for k, p in session.received if k == "text"]
        self.assertEqual(sent[:3], ["Settings", "UpdatePrompt", "InjectAgentMessage"])
        self.assertIn("ForceEndTurn", sent)
        self.assertEqual(self.emu.grants.issued, 1)

    @defer.inlineCallbacks
    def test_listen(self) -> None:
        """Query options as the SDK sends them, Configure, Results, Finalize, CloseStream, Metadata."""
        result = yield self.run_flow("listen")
        kinds = self.assertParsed(result, "listen")
        for kind in ("ConfigureSuccess", "Results", "SpeechStarted", "Metadata"):
            self.assertIn(kind, kinds)
        session = self.emu.sessions[0]
        self.assertEqual(session.path, "/v1/listen")
        self.assertEqual([p["type"] for k, p in session.received if k == "text"],
                         ["Configure", "KeepAlive", "Finalize", "CloseStream"])
        self.assertEqual(session.close_code, 1000)

    @defer.inlineCallbacks
    def test_flux(self) -> None:
        """Flux: Connected, Configure, the turn's TurnInfo events, ForceEndTurn, CloseStream."""
        result = yield self.run_flow("flux")
        kinds = self.assertParsed(result, "flux")
        self.assertEqual(kinds[0], "Connected")
        self.assertIn("ConfigureSuccess", kinds)
        events = [s["fields"]["event"] for s in result["seen"] if s["type"] == "TurnInfo"]
        self.assertEqual(events[0], "StartOfTurn")
        self.assertIn("EagerEndOfTurn", events)
        self.assertIn("EndOfTurn", events)
        session = self.emu.sessions[0]
        self.assertEqual(session.path, "/v2/listen")
        self.assertEqual((session.query["model"], session.query["eot_threshold"]), ("flux-general-en", "0.7"))
        self.assertEqual([p["type"] for k, p in session.received if k == "text"],
                         ["Configure", "ForceEndTurn", "CloseStream"])
        for seen in result["seen"]:
            if seen["class"] != "bytes":
                check_server_message({k: v for k, v in seen["fields"].items() if v is not None}, "flux")
