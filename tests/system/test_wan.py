"""
Latency as a test dimension: the same whole-gateway scenarios at zero latency and over a WAN-like
path.

`LoopbackScenarioTests` connects everything directly on loopback. `WanScenarioTests` puts a
`gateway.delayproxy.DelayProxy` on both legs: the emulator sits 40 ms +- 10 ms away each way
(through its ``latency_ms`` option, 80 ms round trip) and the simulated caller 30 ms +- 10 ms
away from the gateway. The proxies never reorder bytes and their jitter is seeded, and every
assertion is about outcomes (close codes and reasons, bytes, the order of events), never about
durations, so both classes are deterministic; a failure in the WAN class only is a race that
zero-latency loopback hides.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from gateway.codecs.deepgram import DEFAULT_SETTINGS
from gateway.delayproxy import DelayProxy
from gateway.diagnostics import entry
from gateway.simulator import TwilioCall
from tests.system.harness import (
    assert_delivered_in_order,
    clip,
    settle_autobahn_timers,
    start_emulator,
    start_gateway,
    wait_until,
)
from tests.system.test_spine import capture_logs

YES = clip("caller-yes-8k-mulaw.wav")
ORDER = clip("caller-order-8k-mulaw.wav")

#: Close codes a caller must never see: 1005/1006/1015 are never on the wire, so seeing them
#: means a close frame without a code or no close frame at all.
NOT_SENT = (1005, 1006, 1015)

#: Log text of the race the lifecycle redesign removes (a send after the leg closed).
SEND_ON_CLOSED = "Attempt to send on a closed protocol"


class _CueCall(TwilioCall):
    """A Twilio stream that says ``stop`` when the test tells it to (``wait_s=None``)."""

    def hang_up(self) -> None:
        """Send ``stop`` now, as Twilio does when the caller hangs up."""
        self._ending = True  # no more media after the stop
        self._end_stream()


def _describe(result: Any, events: list[str]) -> str:
    """What the caller saw and what the gateway said about the call's end, for failure messages."""
    interesting = [line for line in events
                   if " ended: " in line or "Deepgram leg" in line or SEND_ON_CLOSED in line
                   or "Traceback" in line or "giving up" in line]
    tail = [(round(t, 3), kind) for t, kind, _ in result.events[-8:]]
    return (f"caller: opened={result.opened} close={result.close_code} {result.close_reason!r} "
            f"clean={result.was_clean} by={result.closed_by}; last events {tail}; gateway log:\n  "
            + "\n  ".join(interesting))


class _Scenarios:
    """
    The scenarios; a subclass (also a trial `TestCase`) says how far away Deepgram and the caller
    are. Not a TestCase itself, so neither runner collects it.
    """

    timeout = 60
    #: One-way delay and jitter between the gateway and Deepgram (0, 0: direct).
    deepgram_ms = (0.0, 0.0)
    #: One-way delay and jitter between the caller and the gateway (0, 0: direct).
    caller_ms = (0.0, 0.0)

    # --- the topology ---------------------------------------------------------------------------

    @defer.inlineCallbacks
    def start(self, config: dict | None = None, **emulator_options: Any) -> Any:
        """Emulator, gateway and the caller's path; returns (emulator, gateway, caller base URL)."""
        # Last of the cleanups: a connection Autobahn failed leaves a harmless timer behind.
        self.addCleanup(settle_autobahn_timers)
        latency_ms, jitter_ms = self.deepgram_ms
        emulator = yield start_emulator(self, latency_ms=latency_ms, jitter_ms=jitter_ms,
                                        latency_seed=11, **emulator_options)
        gateway = yield start_gateway(self, emulator, config)
        url = gateway.url
        one_way_ms, jitter_ms = self.caller_ms
        if one_way_ms or jitter_ms:
            proxy = DelayProxy(reactor, ("127.0.0.1", gateway.port.getHost().port),
                               one_way_ms=one_way_ms, jitter_ms=jitter_ms, seed=23)
            yield proxy.listen()
            self.addCleanup(proxy.stop)
            url = proxy.url_for(url)
        return emulator, gateway, url

    # --- assertions -----------------------------------------------------------------------------

    def assertClosedWith(self, result: Any, events: list[str], code: int, reason: str) -> None:
        """The gateway closed the caller with a legal close frame carrying ``code`` and ``reason``."""
        why = _describe(result, events)
        self.assertTrue(result.opened, why)
        self.assertNotIn(result.close_code, NOT_SENT, why)
        self.assertTrue(result.was_clean, why)
        self.assertEqual((result.close_code, result.close_reason), (code, reason), why)
        self.assertEqual(result.violations, [], why)
        self.assertNoSendOnClosed(events)

    def assertNoSendOnClosed(self, events: list[str]) -> None:
        """Nothing was sent on a leg that was already closed."""
        self.assertEqual([line for line in events if SEND_ON_CLOSED in line], [])

    @defer.inlineCallbacks
    def sessions_closed(self, emulator: Any) -> Any:
        """Wait for every emulator session to be gone (their closes cross the delayed path)."""
        for session in emulator.sessions:
            yield session.closed

    # --- (a) a reconnect while the caller talks ---------------------------------------------------

    @defer.inlineCallbacks
    def test_reconnect_while_talking(self) -> None:
        """
        1011 NET-0000 after 2 s of caller audio, the caller talking in real time: a second
        session takes over, every caller byte reaches Deepgram in order across the two (what
        may have been in flight to the dying session, the replay window, goes again; nothing
        is lost), and the call ends normally.
        """
        events = capture_logs(self)
        emulator, gateway, url = yield self.start({"deepgram": {"reconnect_backoff_s": 0.05}})
        emulator.queue_fault("close:1011:NET-0000@after_audio_bytes=16000")
        call = TwilioCall(reactor, url=url + "/twilio", audio=YES, realtime=True, wait_s=2.5)
        result = yield call.run().addTimeout(30, reactor)
        yield self.sessions_closed(emulator)
        self.assertClosedWith(result, events, 1000, "CALLER_HANGUP")
        self.assertEqual(len(emulator.sessions), 2, _describe(result, events))
        first, second = emulator.sessions
        self.assertEqual(first.sent_close[0], 1011)
        self.assertGreaterEqual(len(first.audio), 16000)
        replay_bytes = 8 * gateway.gateway.config.replay_ms  # mu-law 8 kHz: 8 bytes a millisecond
        assert_delivered_in_order(self, result.sent_audio, [first.audio, second.audio], replay_bytes)

    @defer.inlineCallbacks
    def test_ten_drops_lose_nothing(self) -> None:
        """
        Ten Deepgram sessions in a row close mid-sentence (1011 NET-0000) while the caller talks in
        real time: eleven sessions, every caller byte delivered in order across them (the replay
        window may repeat, never skip), the call ends normally.
        """
        events = capture_logs(self)
        emulator, gateway, url = yield self.start({"deepgram": {
            "reconnect_backoff_s": 0.02, "reconnect_backoff_max_s": 0.05,
            "reconnect_window_max": 20, "reconnect_max_per_call": 20}})
        emulator.queue_fault("close:1011:NET-0000@after_audio_bytes=6400", count=10)
        audio = attrs.evolve(ORDER, data=ORDER.data * 2)  # 10.5 s
        call = TwilioCall(reactor, url=url + "/twilio", audio=audio, realtime=True, wait_s=1.0)
        result = yield call.run().addTimeout(45, reactor)
        yield self.sessions_closed(emulator)
        self.assertClosedWith(result, events, 1000, "CALLER_HANGUP")
        self.assertEqual(len(emulator.sessions), 11, _describe(result, events))
        replay_bytes = 8 * gateway.gateway.config.replay_ms
        assert_delivered_in_order(self, result.sent_audio, [s.audio for s in emulator.sessions],
                                  replay_bytes)

    @defer.inlineCallbacks
    def test_flapping_deepgram_is_bounded(self) -> None:
        """
        A Deepgram that closes every session 300 ms after it opens: reconnected at most
        reconnect_window_max times, then the caller gets 4501 DG_UNSTABLE (a legal close frame).
        """
        events = capture_logs(self)
        emulator, gateway, url = yield self.start({"deepgram": {
            "reconnect_backoff_s": 0.02, "reconnect_window_max": 3}})
        emulator.queue_fault("close:1011:NET-0000@after_ms=300", count=20)
        audio = attrs.evolve(ORDER, data=ORDER.data * 2)
        call = TwilioCall(reactor, url=url + "/twilio", audio=audio, realtime=True, wait_s=None)
        result = yield call.run().addTimeout(45, reactor)
        yield self.sessions_closed(emulator)
        self.assertClosedWith(result, events, 4501, "DG_UNSTABLE")
        self.assertEqual(len(emulator.sessions), 4, _describe(result, events))
        ended = [line for line in events if " ended: DG_UNSTABLE " in line]
        self.assertEqual(len(ended), 1, _describe(result, events))
        self.assertIn("DG_NET_0000 x4", ended[0])

    @defer.inlineCallbacks
    def test_message_order_with_slow_settings_applied(self) -> None:
        """
        Deepgram's order, against a SettingsApplied that takes 1.5 s: the first message is
        Settings, sent only after Welcome; before SettingsApplied left Deepgram nothing else
        arrived; a DTMF pressed meanwhile reaches Deepgram after it, as InjectUserMessage, and
        every caller byte arrives once, in order.
        """
        events = capture_logs(self)
        emulator, gateway, url = yield self.start()
        emulator.queue_fault("slow:1500")
        call = TwilioCall(reactor, url=url + "/twilio", audio=YES, realtime=True, dtmf=[(0.1, "5")],
                          wait_s=2.5)
        result = yield call.run().addTimeout(30, reactor)
        yield self.sessions_closed(emulator)
        self.assertClosedWith(result, events, 1000, "CALLER_HANGUP")
        [session] = emulator.sessions
        self.assertEqual(session.sent[0], (0, "Welcome"), "Welcome before anything arrived")
        applied_at = next(n for n, kind in session.sent if kind == "SettingsApplied")
        before = session.received[:applied_at]
        self.assertEqual([(kind, body.get("type")) for kind, body in before], [("text", "Settings")])
        injected = [body for kind, body in session.received[applied_at:]
                    if kind == "text" and body.get("type") == "InjectUserMessage"]
        self.assertEqual(len(injected), 1)
        self.assertIn("5", injected[0]["content"])
        self.assertEqual(session.audio, result.sent_audio)

    # --- (b) every Deepgram close the gateway diagnoses, mid-call ---------------------------------

    @defer.inlineCallbacks
    def deepgram_ends_call(self, fault: str, diagnosis: str) -> Any:
        """
        With reconnection off, Deepgram ends the session with ``fault`` after half a second of
        caller audio while the caller goes on talking in real time: the caller gets a close frame
        with the code and reason of ``diagnosis`` (gateway.diagnostics), and nothing else.
        """
        events = capture_logs(self)
        emulator, gateway, url = yield self.start({"deepgram": {"reconnect_attempts": 0}})
        emulator.queue_fault(f"{fault}@after_audio_bytes=4000")
        call = TwilioCall(reactor, url=url + "/twilio", audio=YES, realtime=True, wait_s=None)
        result = yield call.run().addTimeout(30, reactor)
        yield self.sessions_closed(emulator)
        self.assertClosedWith(result, events, entry(diagnosis).caller_close, diagnosis)
        self.assertEqual(len(emulator.sessions), 1)
        ended = [line for line in events if f" ended: {diagnosis} " in line]
        self.assertEqual(len(ended), 1, _describe(result, events))

    def test_deepgram_close_1000(self) -> None:
        """1000 mid-call: DG_CLOSED, the caller gets 1000."""
        return self.deepgram_ends_call("close:1000", "DG_CLOSED")

    def test_deepgram_close_1001(self) -> None:
        """1001 mid-call: DG_GOING_AWAY, 4501."""
        return self.deepgram_ends_call("close:1001", "DG_GOING_AWAY")

    def test_deepgram_close_1008_data0000(self) -> None:
        """1008 DATA-0000 mid-call: DG_DATA_0000, 4501."""
        return self.deepgram_ends_call("close:1008:DATA-0000", "DG_DATA_0000")

    def test_deepgram_close_1011_net0001(self) -> None:
        """1011 NET-0001 mid-call: DG_NET_0001, 4501."""
        return self.deepgram_ends_call("close:1011:NET-0001", "DG_NET_0001")

    def test_deepgram_close_1011_other(self) -> None:
        """1011 with another reason mid-call: DG_INTERNAL_ERROR, 4501."""
        return self.deepgram_ends_call("close:1011:internal failure", "DG_INTERNAL_ERROR")

    def test_deepgram_close_1012(self) -> None:
        """1012 (service restart) mid-call: DG_GOING_AWAY, 4501."""
        return self.deepgram_ends_call("close:1012", "DG_GOING_AWAY")

    def test_deepgram_error_then_no_status(self) -> None:
        """A fatal Error, then a close without a status code: DG_FATAL_ERROR, 4501."""
        return self.deepgram_ends_call("error:FAILED_TO_THINK:The think provider failed.", "DG_FATAL_ERROR")

    def test_deepgram_no_status(self) -> None:
        """A close without a status code and no Error: DG_NO_STATUS, 4501."""
        return self.deepgram_ends_call("close:none", "DG_NO_STATUS")

    def test_deepgram_tcp_drop(self) -> None:
        """The Deepgram connection reset without a close frame: DG_DROPPED, 4501."""
        return self.deepgram_ends_call("drop", "DG_DROPPED")

    # --- (c) Settings rejected --------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_settings_rejected(self) -> None:
        """Deepgram refuses the Settings (an INVALID_SETTINGS Error, a no-status close): 4500."""
        events = capture_logs(self)
        # A fault tag the emulator cannot parse makes it reject the Settings as Deepgram would.
        template = dict(DEFAULT_SETTINGS, tags=["emulator-fault:explode"])
        emulator, gateway, url = yield self.start({"settings": {"template": template}})
        call = TwilioCall(reactor, url=url + "/twilio", audio=YES, realtime=True, wait_s=None)
        result = yield call.run().addTimeout(30, reactor)
        yield self.sessions_closed(emulator)
        self.assertClosedWith(result, events, 4500, "DG_SETTINGS_REJECTED")
        self.assertEqual(len(emulator.sessions), 1, "a rejected Settings is not retried")
        self.assertIsNone(emulator.sessions[0].settings)
        ended = [line for line in events if " ended: DG_SETTINGS_REJECTED " in line]
        self.assertEqual(len(ended), 1, _describe(result, events))
        self.assertIn("INVALID_SETTINGS", ended[0])

    # --- (d) drain ------------------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_drain(self) -> None:
        """
        Draining with two live calls: a new call gets 503, the call that hangs up during the
        drain ends normally, the other gets 1001 DRAINED at the deadline; Deepgram sees normal
        closes.
        """
        events = capture_logs(self)
        emulator, gateway, url = yield self.start({"gateway": {"drain_deadline_s": 3.0}})
        long_call = TwilioCall(reactor, url=url + "/twilio", audio=YES, realtime=True, wait_s=None)
        short_call = _CueCall(reactor, url=url + "/twilio", audio=YES, realtime=True, wait_s=None)
        long_done = long_call.run()
        short_done = short_call.run()
        yield wait_until(lambda: len(emulator.sessions) == 2
                         and all(s.settings is not None for s in emulator.sessions))
        drained = gateway.stopService()
        refused = yield TwilioCall(reactor, url=url + "/twilio", audio=YES, wait_s=0.0
                                   ).run().addTimeout(30, reactor)
        self.assertEqual(refused.handshake_status, 503)
        short_call.hang_up()
        short = yield short_done.addTimeout(30, reactor)
        self.assertClosedWith(short, events, 1000, "CALLER_HANGUP")
        long = yield long_done.addTimeout(30, reactor)
        self.assertClosedWith(long, events, 1001, "DRAINED")
        yield drained
        yield self.sessions_closed(emulator)
        self.assertEqual(len(emulator.sessions), 2)
        self.assertEqual([s.close_code for s in emulator.sessions], [1000, 1000])

    # --- (e) end_call after the goodbye -----------------------------------------------------------

    @defer.inlineCallbacks
    def test_end_call_after_goodbye(self) -> None:
        """The agent calls end_call: the stream ends with 1000 AGENT_ENDED_CALL after the goodbye was played."""
        events = capture_logs(self)
        emulator, gateway, url = yield self.start(
            script=["Thank you, that's all, please end call."], replies=["Goodbye, have a nice day!"])
        call = TwilioCall(reactor, url=url + "/twilio", audio=YES, realtime=True, wait_s=None)
        result = yield call.run().addTimeout(30, reactor)
        yield self.sessions_closed(emulator)
        self.assertClosedWith(result, events, 1000, "AGENT_ENDED_CALL")
        session = emulator.sessions[0]
        responses = [m for kind, m in session.received if kind == "text" and m.get("type") == "FunctionCallResponse"]
        self.assertEqual([r["name"] for r in responses], ["end_call"])
        kinds = [kind for _, kind, _ in result.events]
        echoed = [m for _, kind, m in result.events if kind == "sim.mark_echoed"]
        self.assertTrue(echoed, _describe(result, events))
        self.assertEqual(echoed[-1]["how"], "played")
        last_echo = max(i for i, kind in enumerate(kinds) if kind == "sim.mark_echoed")
        self.assertLess(last_echo, kinds.index("sim.closed"))
        self.assertEqual(len(emulator.sessions), 1)

    # --- (f) barge-in -----------------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_barge_in_clear(self) -> None:
        """The caller talks over the greeting: a clear reaches the caller after the agent's audio."""
        events = capture_logs(self)
        emulator, gateway, url = yield self.start()
        call = TwilioCall(reactor, url=url + "/twilio", audio=YES, realtime=True, wait_s=1.5)
        result = yield call.run().addTimeout(30, reactor)
        yield self.sessions_closed(emulator)
        self.assertClosedWith(result, events, 1000, "CALLER_HANGUP")
        kinds = [kind for _, kind, _ in result.events]
        self.assertGreaterEqual(result.clears, 1, _describe(result, events))
        self.assertIn("sim.cleared", kinds)
        self.assertLess(kinds.index("media"), kinds.index("clear"))


class LoopbackScenarioTests(_Scenarios, TestCase):
    """The scenarios with everything directly on loopback."""


class WanScenarioTests(_Scenarios, TestCase):
    """The scenarios with Deepgram 40 +- 10 ms and the caller 30 +- 10 ms away, each way."""

    deepgram_ms = (40.0, 10.0)
    caller_ms = (30.0, 10.0)
