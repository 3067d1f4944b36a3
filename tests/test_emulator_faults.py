"""
Faults on cue: each kind, each trigger, and the three ways to choose them (default, queue, header or
query parameter, Settings tag).
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from gateway.emulator import Emulator
from gateway.emulator.faults import REASONS
from tests.test_emulator import KEY, Client, EmulatorTestCase, refused, run_client, settings

LISTEN = "?encoding=mulaw&sample_rate=8000"


class RefuseTests(EmulatorTestCase):
    """Refused upgrades."""

    @defer.inlineCallbacks
    def test_queued_refusals(self) -> None:
        """Queued faults apply to the next attempts in turn; then sessions open normally."""
        self.emu.queue_fault("refuse:429")
        self.emu.queue_fault("refuse:503:Down for maintenance", count=2)
        status, headers, body = yield refused(self.emu.url("agent"))
        self.assertEqual((status, body["err_code"]), (429, "TOO_MANY_REQUESTS"))
        self.assertEqual(headers["dg-error"], body["err_msg"])
        for _ in range(2):
            status, headers, _ = yield refused(self.emu.url("listen") + LISTEN)
            self.assertEqual((status, headers["dg-error"]), (503, "Down for maintenance"))
        outcome = yield run_client(self.emu.url("agent"), lambda c: c.until("Welcome"))
        self.assertEqual(outcome.types, ["Welcome"])
        self.assertEqual((self.emu.upgrade_attempts, len(self.emu.sessions)), (4, 1))

    @defer.inlineCallbacks
    def test_header_and_query(self) -> None:
        """X-Emulator-Fault or ?emulator_fault= picks the fault for that session only."""
        status, _, _ = yield refused(self.emu.url("agent"),
                                     {"Authorization": f"Token {KEY}", "X-Emulator-Fault": "refuse:401"})
        self.assertEqual(status, 401)
        status, _, _ = yield refused(self.emu.url("listen") + LISTEN + "&emulator_fault=refuse:403")
        self.assertEqual(status, 403)
        status, headers, body = yield refused(self.emu.url("agent"),
                                              {"Authorization": f"Token {KEY}", "X-Emulator-Fault": "boom"})
        self.assertEqual((status, body["err_code"]), (400, "BAD_EMULATOR_FAULT"))
        self.assertIn("unknown fault kind 'boom'", headers["dg-error"])
        self.assertEqual(self.emu.sessions, [])


class DefaultFaultTests(TestCase):
    """The constructor's fault applies to every session."""

    timeout = 20

    @defer.inlineCallbacks
    def test_default_refusal(self) -> None:
        """fault='refuse:503' refuses every upgrade, even with the right key."""
        emu = Emulator(reactor, api_key=KEY, fault="refuse:503")
        yield emu.listen("tcp:0:interface=127.0.0.1")
        self.addCleanup(emu.stop)
        for _ in range(2):
            status, headers, _ = yield refused(emu.url("agent"))
            self.assertEqual(status, 503)
            self.assertIn("dg-request-id", headers)
        self.assertEqual(emu.upgrade_attempts, 2)


class SessionFaultTests(EmulatorTestCase):
    """Faults inside an open session."""

    @defer.inlineCallbacks
    def test_close_after_ms(self) -> None:
        """close:1011:NET-0000@after_ms=100: that code with Deepgram's sentence."""
        self.emu.queue_fault("close:1011:NET-0000@after_ms=100")
        outcome = yield run_client(self.emu.url("agent"), lambda c: c.drain())
        self.assertEqual((outcome.close_code, outcome.close_reason), (1011, REASONS["NET-0000"]))
        self.assertEqual(outcome.types, ["Welcome"])

    @defer.inlineCallbacks
    def test_close_after_audio_bytes(self) -> None:
        """close:4000:enough@after_audio_bytes=3200 via the query string, after that much audio."""

        def script(client: Client) -> None:
            for _ in range(40):
                client.send(b"\xff" * 160)
            client.drain()

        url = self.emu.url("listen") + LISTEN + "&emulator_fault=close:4000:enough@after_audio_bytes=3200"
        outcome = yield run_client(url, script)
        self.assertEqual((outcome.close_code, outcome.close_reason), (4000, "enough"))
        self.assertGreaterEqual(len(self.emu.sessions[0].audio), 3200)
        self.assertEqual(self.emu.sessions[0].query["emulator_fault"], "close:4000:enough@after_audio_bytes=3200")

    @defer.inlineCallbacks
    def test_close_without_code_after_settings(self) -> None:
        """close:none@after_settings: a Close frame with no code right after SettingsApplied."""
        self.emu.queue_fault("close:none@after_settings")

        def script(client: Client) -> None:
            client.send_json(settings(greeting="Hi"))
            client.drain()

        outcome = yield run_client(self.emu.url("agent"), script)
        self.assertEqual(outcome.types, ["Welcome", "SettingsApplied"])
        self.assertEqual(outcome.close_code, 1005)

    @defer.inlineCallbacks
    def test_drop(self) -> None:
        """drop@after_audio_bytes=1: the TCP connection goes without a Close frame."""

        def script(client: Client) -> None:
            client.send_json(settings())
            client.until("SettingsApplied")
            client.send(b"\xff" * 160)
            client.drain()

        outcome = yield run_client(self.emu.url("agent"), script,
                                   headers={"Authorization": f"Token {KEY}",
                                            "X-Emulator-Fault": "drop@after_audio_bytes=1"})
        self.assertFalse(outcome.close_frame)
        session = yield self.emu.sessions[0].closed
        self.assertEqual((session.close_code, session.was_clean), (1006, False))

    @defer.inlineCallbacks
    def test_stall_from_settings_tag(self) -> None:
        """A Settings tag emulator-fault:stall: SettingsApplied, then nothing at all."""

        def script(client: Client) -> list[Any]:
            client.send_json(dict(settings(greeting="Hello"), tags=["call-1", "emulator-fault:stall"]))
            client.until("SettingsApplied")
            client.send_json({"type": "UpdatePrompt", "prompt": "x"})
            return client.quiet(0.4)

        outcome = yield run_client(self.emu.url("agent"), script)
        self.assertEqual(outcome.value, [])
        self.assertEqual(self.emu.sessions[0].texts[-1], {"type": "UpdatePrompt", "prompt": "x"})

    @defer.inlineCallbacks
    def test_slow(self) -> None:
        """slow:300: each reply arrives at least 0.3 s late, in order."""
        self.emu.queue_fault("slow:300")

        def script(client: Client) -> float:
            client.until("Welcome")
            sent = time.monotonic()
            client.send_json(settings())
            client.until("SettingsApplied")
            return time.monotonic() - sent

        outcome = yield run_client(self.emu.url("agent"), script)
        self.assertGreaterEqual(outcome.value, 0.29)
        self.assertEqual(outcome.types, ["Welcome", "SettingsApplied"])

    @defer.inlineCallbacks
    def test_unknown_message(self) -> None:
        """unknown-message: a JSON frame of a type Deepgram never documented."""
        self.emu.queue_fault("unknown-message:FutureThing")
        outcome = yield run_client(self.emu.url("agent"), lambda c: [c.recv(), c.recv()])
        self.assertEqual(outcome.types, ["Welcome", "FutureThing"])

    @defer.inlineCallbacks
    def test_error(self) -> None:
        """error:SERVER_GOING_AWAY@after_settings: a fatal Error, then a close with no code."""
        self.emu.queue_fault("error:SERVER_GOING_AWAY@after_settings")

        def script(client: Client) -> None:
            client.send_json(settings())
            client.drain()

        outcome = yield run_client(self.emu.url("agent"), script)
        self.assertEqual(outcome.types, ["Welcome", "SettingsApplied", "Error"])
        self.assertEqual(outcome.texts[-1]["code"], "SERVER_GOING_AWAY")
        self.assertEqual(outcome.close_code, 1005)

    @defer.inlineCallbacks
    def test_header_beats_queue(self) -> None:
        """A header fault wins over the queued one, which is still used up."""
        self.emu.queue_fault("refuse:429")
        outcome = yield run_client(self.emu.url("agent"), lambda c: c.drain(),
                                   headers={"Authorization": f"Token {KEY}",
                                            "X-Emulator-Fault": "close:4001:picked"})
        self.assertEqual(outcome.close_code, 4001)
        outcome = yield run_client(self.emu.url("agent"), lambda c: c.until("Welcome"))
        self.assertEqual(outcome.types, ["Welcome"])
