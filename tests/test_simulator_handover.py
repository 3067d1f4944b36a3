"""
The client simulator follows a ``/client`` handover (`gateway.simulator.client.ClientCall`)
against fake gateways on loopback: the ``Handover`` message, the 1000 ``HANDED_OVER`` close, the
resume token as the new socket's hello, the clip going on there from where it stopped, and a
refused upgrade tried again.
"""

from __future__ import annotations

from typing import Any

from autobahn.websocket.types import ConnectionDeny
from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from gateway.codecs.wav import WavAudio
from gateway.simulator import ClientCall
from tests.test_simulator import FakeClientGateway, FakeServer, frames, kinds

PUBLIC = "https://gw.public.test/prefix"
PUBLIC_WS = "wss://gw.public.test/prefix"
#: Two seconds of a recognisable caller clip (each 20 ms frame is its own byte value).
CLIP = WavAudio("linear16", 16000, 1, b"".join(bytes([i % 250 + 1]) * 640 for i in range(100)))


class RefusingOnce(FakeClientGateway):
    """Refuses its first upgrade with 503 (a process still draining), then accepts."""

    def onConnect(self, request: Any) -> None:
        self.factory.requests.append(request)
        if len(self.factory.requests) == 1:
            raise ConnectionDeny(503, "draining")


class ClientHandoverTests(TestCase):
    """ClientCall across two fake gateways."""

    timeout = 20

    def servers(self, second: type = FakeClientGateway, frames_before: int = 10) -> tuple[FakeServer, FakeServer]:
        b = FakeServer(self, protocol=second, path="/client")

        def hand_over(session: FakeClientGateway, message: Any) -> None:
            if len(session.binaries()) == frames_before:
                session.send_json({"type": "Handover", "url": PUBLIC_WS + "/client", "token": "resume-tok",
                                   "expires_in": 60, "retry_after_ms": 0})
                session.sendClose(1000, "HANDED_OVER")

        a = FakeServer(self, protocol=FakeClientGateway, on_message=hand_over, path="/client")
        return a, b

    @defer.inlineCallbacks
    def run_call(self, a: FakeServer, b: FakeServer) -> Any:
        base = b.url.rsplit("/client", 1)[0].replace("ws://", "http://")
        call = ClientCall(reactor, a.url, CLIP, token="tok", realtime=False, wait_s=0.1,
                          public_url=PUBLIC, base_url=base)
        result = yield call.run().addTimeout(15, reactor)
        yield a.all_closed().addTimeout(10, reactor)
        yield b.all_closed().addTimeout(10, reactor)
        return result

    @defer.inlineCallbacks
    def test_follows_the_handover(self) -> None:
        """The resume token is the new hello; nothing sent twice; the call ends normally there."""
        a, b = self.servers()
        result = yield self.run_call(a, b)
        self.assertIsNone(result.failure())
        [old], [new] = a.factory.sessions, b.factory.sessions
        self.assertEqual(old.texts()[0], {"token": "tok", "parameters": {}, "handover": True})
        self.assertEqual(new.texts()[0], {"token": "resume-tok"})
        sent = old.binaries() + new.binaries()
        # What went to A before it said Handover, then the rest on B, in order: nothing lost or repeated.
        self.assertEqual(sent[: len(frames(CLIP.data, 640))], frames(CLIP.data, 640))
        self.assertEqual(b"".join(sent), result.sent_audio)
        self.assertEqual(len(result.handovers), 1)
        self.assertIsNotNone(result.handovers[0].opened_at)
        closes = [m for _, kind, m in result.events if kind == "sim.closed"]
        self.assertEqual([(c["code"], c["by"]) for c in closes], [(1000, "gateway"), (1000, "simulator")])
        self.assertEqual(closes[0]["reason"], "HANDED_OVER")
        opens = [m["url"] for _, kind, m in result.events if kind == "sim.open"]
        self.assertEqual(opens, [a.url, b.url])
        # The token is not kept in the recorded message.
        [offer] = [m for _, kind, m in result.events if kind == "Handover"]
        self.assertNotIn("resume-tok", repr(offer))

    @defer.inlineCallbacks
    def test_refused_upgrade_is_tried_again(self) -> None:
        """A 503 on the way (a draining process behind the proxy): tried again, then it goes on."""
        a, b = self.servers(second=RefusingOnce)
        result = yield self.run_call(a, b)
        self.assertIsNone(result.failure())
        self.assertEqual(len(b.factory.requests), 2)
        self.assertIn("sim.reconnect_failed", kinds(result))
        self.assertEqual(b.factory.sessions[0].texts()[0], {"token": "resume-tok"})

    @defer.inlineCallbacks
    def test_gives_up_after_the_attempts(self) -> None:
        """Refused every time: the call ends with the refusal as its failure."""
        a, _ = self.servers()
        b = FakeServer(self, protocol=FakeClientGateway, refuse=503, path="/client")
        base = b.url.rsplit("/client", 1)[0].replace("ws://", "http://")
        call = ClientCall(reactor, a.url, CLIP, token="tok", realtime=False, wait_s=0.1,
                          public_url=PUBLIC, base_url=base)
        result = yield call.run().addTimeout(15, reactor)
        yield a.all_closed().addTimeout(10, reactor)
        self.assertEqual(result.handshake_status, 503)
        self.assertIn("503", result.failure())
        self.assertEqual(len(b.factory.requests), 5)

    @defer.inlineCallbacks
    def test_not_following(self) -> None:
        """follow_handover=False: no "handover" in the hello, and the close ends the call."""
        a, b = self.servers()
        call = ClientCall(reactor, a.url, CLIP, token="tok", realtime=False, wait_s=0.1, follow_handover=False)
        result = yield call.run().addTimeout(15, reactor)
        yield a.all_closed().addTimeout(10, reactor)
        self.assertEqual(a.factory.sessions[0].texts()[0], {"token": "tok", "parameters": {}})
        self.assertEqual((result.close_code, result.close_reason), (1000, "HANDED_OVER"))
        self.assertEqual((result.handovers, b.factory.requests), ([], []))

    @defer.inlineCallbacks
    def test_a_bad_url_is_a_violation(self) -> None:
        """A Handover naming an http:// URL breaks the protocol: recorded, not followed."""
        def hand_over(session: FakeClientGateway, message: Any) -> None:
            if len(session.binaries()) == 3:
                session.send_json({"type": "Handover", "url": "https://elsewhere/client", "token": "t",
                                   "expires_in": 60, "retry_after_ms": 0})
                session.sendClose(1000, "HANDED_OVER")

        a = FakeServer(self, protocol=FakeClientGateway, on_message=hand_over, path="/client")
        call = ClientCall(reactor, a.url, CLIP, token="tok", realtime=False, wait_s=0.1)
        result = yield call.run().addTimeout(15, reactor)
        yield a.all_closed().addTimeout(10, reactor)
        self.assertIn("Handover", result.failure())
        self.assertEqual(result.handovers, [])
