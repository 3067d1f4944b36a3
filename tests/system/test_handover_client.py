"""
A raw-audio ``/client`` call survives the drain of the process it is on, over loopback: two
gateways in this process sharing an SQLite handover store and ``GATEWAY_TOKEN_SECRET``, the
emulator as Deepgram, and the simulator's `ClientCall`, which follows the ``Handover`` message to
the other gateway (its public URL moved onto that gateway's port, as a proxy would route it).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from gateway.codecs.wav import WavAudio
from gateway.simulator.client import ClientCall
from gateway.testing import temp_path
from gateway.tokens import mint_token
from tests.system.harness import clip, start_emulator, start_gateway, wait_until

SECRET = "client-handover-secret-" + "x" * 16
PUBLIC = "https://gw.client-handover.test"


def order_then_pause() -> WavAudio:
    """The caller asks about the order, then says nothing for a while (2 s at the end)."""
    order = clip("caller-order-16k-s16le.wav")
    return WavAudio("linear16", 16000, 1, order.data + b"\x00" * 64000)


class ClientHandoverTests(TestCase):
    """Process A drains mid-call; the client reconnects to B with its resume token."""

    timeout = 120

    @defer.inlineCallbacks
    def two_gateways(self) -> Any:
        emulator = yield start_emulator(self)
        store = temp_path(self, "handover.sqlite")
        config = {"gateway": {"log_conversation": True}, "handover": {"store": f"sqlite:{store}"}}
        env = {"GATEWAY_TOKEN_SECRET": SECRET, "GATEWAY_PUBLIC_URL": PUBLIC}
        a = yield start_gateway(self, emulator, config, env)
        b = yield start_gateway(self, emulator, config, env)
        for gateway in (a, b):
            # The store's threads stop with the reactor under twistd; here, after the drain.
            self.addCleanup(lambda g=gateway: defer.maybeDeferred(g.stopService).addCallback(
                lambda _: g.gateway.handover.close_store()))
        return emulator, a, b

    def capture_reports(self) -> list[dict]:
        reports: list[dict] = []

        def observe(event: dict) -> None:
            if isinstance(event.get("call_report"), dict):
                reports.append(event["call_report"])

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        return reports

    @defer.inlineCallbacks
    def test_call_moves_to_the_other_process(self) -> None:
        """Handover message, 1000 HANDED_OVER, the resume hello on B, the history restored there."""
        emulator, a, b = yield self.two_gateways()
        reports = self.capture_reports()
        token = mint_token(SECRET.encode(), reactor.seconds())
        call = ClientCall(reactor, a.url + "/client", order_then_pause(), token=token,
                          realtime=True, wait_s=12.0, after_greeting=True,
                          public_url=PUBLIC, base_url=b.url.replace("ws://", "http://"))
        running = call.run()

        def answered() -> bool:
            kinds = [kind for _, kind, _ in call.result.events]
            return "sim.speech_end" in kinds and "AgentAudioDone" in kinds[kinds.index("sim.speech_end"):]

        yield wait_until(answered, 40)
        stopping = a.stopService()  # SIGTERM's drain: A hands the call over at its quiet point
        result = yield running.addTimeout(60, reactor)
        yield stopping

        self.assertIsNone(result.failure(), result.failure())
        self.assertEqual((result.close_code, result.closed_by), (1000, "simulator"))
        kinds = [kind for _, kind, _ in result.events]
        offered = kinds.index("Handover")
        [closed_a, closed_b] = [m for _, kind, m in result.events if kind == "sim.closed"]
        self.assertEqual((closed_a["code"], closed_a["reason"], closed_a["by"]), (1000, "HANDED_OVER", "gateway"))
        self.assertEqual(closed_b["code"], 1000)
        self.assertLess(offered, kinds.index("sim.handover"))
        [moved] = result.handovers
        self.assertIsNotNone(moved.opened_at)
        [_, reopened] = [m for _, kind, m in result.events if kind == "sim.open"]
        self.assertEqual(reopened["url"], b.url + "/client")
        self.assertNotIn("Error", kinds)

        # Deepgram (the emulator) saw two sessions: the second without a greeting, remembering.
        yield wait_until(lambda: len(emulator.sessions) == 2 and emulator.sessions[1].audio, 10)
        s1, s2 = emulator.sessions
        self.assertIn("greeting", s1.settings["agent"])
        self.assertNotIn("greeting", s2.settings["agent"])
        remembered = s2.settings["agent"]["context"]["messages"]
        self.assertIn({"type": "History", "role": "assistant", "content": s1.settings["agent"]["greeting"]},
                      remembered)
        self.assertTrue(any(m.get("role") == "user" for m in remembered), remembered)
        # What the caller sent after the move reached the new session.
        self.assertGreater(len(s2.audio), 0)

        # One report for the whole call, from B, with A's part as a segment.
        yield wait_until(lambda: any(r.get("handovers") for r in reports), 10)
        [report] = [r for r in reports if r.get("handovers")]
        self.assertEqual(report["handovers"], 1)
        self.assertEqual(len(report["segments"]), 1)
        self.assertEqual(report["segments"][0]["call_id"], report["call_id"])
        # A logged its part (HANDED_OVER) and nothing else; B's report is the call's.
        [a_part] = [r for r in reports if r.get("call_id") == report["call_id"] and not r.get("handovers")]
        self.assertEqual(a_part["diagnosis"]["code"], "HANDED_OVER")
        self.assertEqual(report["diagnosis"]["code"], "CALLER_CLOSED")

    @defer.inlineCallbacks
    def test_client_without_handover_drains_plainly(self) -> None:
        """A client that does not follow Handover messages: 1001 DRAINED at the deadline, as before."""
        emulator, a, b = yield self.two_gateways()
        token = mint_token(SECRET.encode(), reactor.seconds())
        call = ClientCall(reactor, a.url + "/client", order_then_pause(), token=token, realtime=False,
                          wait_s=None, follow_handover=False)
        running = call.run()
        yield wait_until(lambda: any(kind == "SettingsApplied" for _, kind, _ in call.result.events), 20)
        drained = a.gateway.drain(0.5)
        result = yield running.addTimeout(30, reactor)
        yield drained
        self.assertEqual((result.close_code, result.close_reason), (1001, "DRAINED"))
        self.assertNotIn("Handover", [kind for _, kind, _ in result.events])
        self.assertEqual(result.handovers, [])
