"""
Calls survive a rolling deploy, for real: two gateway processes under supervisord
(deploy/supervisord.conf as shipped) behind HAProxy (deploy/haproxy.cfg), a whole Twilio call
played by the simulator (the voice webhook, the stream, Twilio's ``<Connect action>`` request,
the new stream), and SIGTERM to the process the call is on.

Done when, as the issue says: the call continues on the other process; the agent remembers the
conversation (the restored ``agent.context.messages`` reach the emulator) and does not greet
again; the caller's stream is closed with a normal code, never 1005/1006/1015; the stopped
process exits before its drain deadline; one call report covers the whole call. The handover
store is the embedded SQLite file in one variant and a real ``redis-server`` in the other; and
the same with Deepgram 40 ms away each way.
"""

from __future__ import annotations

import json
import re
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from gateway.codecs.wav import WavAudio
from gateway.simulator.voice import TwilioVoiceCall
from gateway.testing import temp_path
from tests.system.harness import clip, start_emulator
from tests.system.test_deploy import DRAIN_S, Deployment, require_tool, start_haproxy, wait_for
from tests.test_handover_store import RedisServer

PUBLIC = "https://gw.handover.test"
AUTH_TOKEN = "handover-test-twilio-token"
ORDER = clip("caller-order-8k-mulaw.wav")


def conversation_clip() -> WavAudio:
    """The caller: silence while the greeting plays, the order question, then a long pause."""
    silence = b"\xff" * 8000
    return WavAudio("mulaw", 8000, 1, silence * 4 + ORDER.data + silence * 12)


class _HandoverScenario:
    """The scenario; subclasses choose the store and how far away Deepgram is."""

    timeout = 150
    latency_ms = 0.0

    def store_config(self) -> str:
        raise NotImplementedError

    @defer.inlineCallbacks
    def call_then_sigterm(self, before_stop=None) -> Any:
        """
        Two processes behind HAProxy, a whole Twilio call, SIGTERM to the call's process once the
        agent has answered: (emulator, deployment, port of the stopped process, the call's result).
        """
        require_tool("haproxy", ["haproxy", "/usr/sbin/haproxy"], "apt-get install haproxy")
        emulator = yield start_emulator(self, speed=1.0, latency_ms=self.latency_ms,
                                        jitter_ms=self.latency_ms / 4)
        dep = Deployment(self, emulator, processes=2,
                         extra_config=f"log_conversation = true\n{self.store_config()}",
                         env={"TWILIO_AUTH_TOKEN": AUTH_TOKEN, "GATEWAY_PUBLIC_URL": PUBLIC})
        yield dep.start()
        _, listen_port = yield start_haproxy(self, dep)

        call = TwilioVoiceCall(reactor, f"http://127.0.0.1:{listen_port}", PUBLIC, conversation_clip(),
                               auth_token=AUTH_TOKEN, realtime=True, wait_s=1.0)
        running = call.run()
        # Once the agent has answered the caller's question, stop the process the call is on.
        yield wait_for(lambda: call.current is not None and sum(
            1 for _, kind, _ in call.current.result.events if kind == "media") > 50 and any(
            kind == "sim.speech_end" for _, kind, _ in call.current.result.events), 40,
            "the agent answering on the first process")
        per_port = yield dep.calls_per_port()
        [port_a] = [p for p, n in per_port.items() if n]
        if before_stop is not None:
            yield before_stop()
        stopped = dep.ctl("stop", f"gateway:gateway-{port_a}", timeout_s=DRAIN_S + 30)
        try:
            result = yield running.addTimeout(90, reactor)
        except defer.TimeoutError:
            raise AssertionError(f"the call did not end; streams so far {call.result}\n" + dep.all_logs()[-20000:])
        output, _ = yield stopped
        self.assertIn("stopped", output)
        return emulator, dep, port_a, result

    @defer.inlineCallbacks
    def test_call_survives_sigterm(self) -> None:
        """SIGTERM to the call's process: the call goes on in the other, remembered, one report."""
        emulator, dep, port_a, result = yield self.call_then_sigterm()

        self.assertEqual(result.webhook_status, 200)
        self.assertEqual(len(result.streams), 2, result)
        first, second = result.streams
        self.assertEqual((first.close_code, first.close_reason, first.was_clean), (1000, "HANDED_OVER", True))
        self.assertNotIn(second.close_code, (1005, 1006, 1015))
        self.assertTrue(second.opened)
        self.assertEqual(len(result.handovers), 1)
        # The agent remembers and does not greet again.
        self.assertEqual(len(emulator.sessions), 2)
        s1, s2 = emulator.sessions
        self.assertIn("greeting", s1.settings["agent"])
        self.assertNotIn("greeting", s2.settings["agent"])
        remembered = s2.settings["agent"]["context"]["messages"]
        greeting = s1.settings["agent"]["greeting"]
        self.assertIn({"type": "History", "role": "assistant", "content": greeting}, remembered)
        self.assertTrue(any(m.get("role") == "user" for m in remembered), remembered)
        # The stopped process is gone before its deadline; the other reports the whole call.
        ended_a = [line for line in dep.log_lines(port_a) if "HANDED_OVER" in line and "ended" in line]
        self.assertTrue(ended_a, "process A logged the handover")
        port_b = [p for p in dep.ports if p != port_a][0]
        yield wait_for(lambda: any("call_report" in line and '"handovers"' in line
                                   for line in dep.log_lines(port_b)), 30, "B's call report")
        report = next(json.loads(line) for line in dep.log_lines(port_b)
                      if "call_report" in line and '"handovers"' in line)["call_report"]
        if isinstance(report, str):
            self.assertIn("'handovers': 1", report)
        else:
            self.assertEqual(report["handovers"], 1)
            self.assertEqual(len(report["segments"]), 1)
            self.assertEqual(report["segments"][0]["call_id"], report["call_id"])
        drain_lines = [line for line in dep.log_lines(port_a) if re.search("drain done", line)]
        self.assertTrue(drain_lines)
        self.assertIn("0 calls closed at the deadline", drain_lines[-1])


class SqliteHandoverTests(_HandoverScenario, TestCase):
    """One host: the embedded SQLite store."""

    def store_config(self) -> str:
        return f"[handover]\nstore = \"sqlite:{temp_path(self, 'handover.sqlite')}\"\n"


class RedisHandoverTests(_HandoverScenario, TestCase):
    """Several hosts: a real redis-server."""

    def store_config(self) -> str:
        self.redis = RedisServer()
        self.addCleanup(self.redis.stop)
        return f"[handover]\nstore = \"{self.redis.url}\"\n"

    @defer.inlineCallbacks
    def test_redis_down_drains_plainly(self) -> None:
        """
        Redis down when the drain starts: the call is not handed over but drains as before (1001
        DRAINED at the deadline, Twilio's action request gets the continuation), with one
        HANDOVER_FAILED line for it; nothing crashes.
        """
        def redis_down() -> None:
            self.redis.stop()
            self.redis.stop = lambda: None

        emulator, dep, port_a, result = yield self.call_then_sigterm(before_stop=redis_down)
        self.assertEqual(len(result.streams), 1, result)
        [stream] = result.streams
        self.assertEqual((stream.close_code, stream.close_reason, stream.was_clean), (1001, "DRAINED", True))
        self.assertIn("<Hangup", result.final_twiml)
        failed = [line for line in dep.log_lines(port_a) if "HANDOVER_FAILED" in line]
        self.assertEqual(len(failed), 1, failed)
        self.assertIn("redis://127.0.0.1", failed[0])
        self.assertEqual(len(emulator.sessions), 1)


class WanHandoverTests(_HandoverScenario, TestCase):
    """One host, Deepgram 40 ms (+- 10) away each way."""

    latency_ms = 40.0

    def store_config(self) -> str:
        return f"[handover]\nstore = \"sqlite:{temp_path(self, 'handover.sqlite')}\"\n"

