"""
What /metrics exports beyond the call counters: plugin counters (bounded), process and build
information, and the two latency histograms (gateway.metrics, gateway.latency).
"""

from __future__ import annotations

import os
import types

from prometheus_client import generate_latest
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway import __version__
from gateway.call import Call, CallInfo
from gateway.codecs.formats import LINEAR16_16K, MULAW_8K
from gateway.events import Audio, DeepgramEvent, Handshake, StreamStarted, StreamStopped, UpstreamClosed
from gateway.latency import CallerHeardLatency
from gateway.metrics import MAX_PLUGIN_SERIES, GatewayMetrics
from gateway.testing import FakeCallerLeg, FakeConnector, FakeUpstreamLeg, configure

DROPINS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dropins", "counting")

#: A 20 ms mu-law frame of speech (loud) and of silence.
VOICED = b"\x10" * 160
SILENT = b"\xff" * 160


def dg(kind: str, **fields: object) -> DeepgramEvent:
    return DeepgramEvent(kind, {"type": kind, **fields})


class _Gateway:
    """What GatewayMetrics reads of its gateway."""

    def __init__(self) -> None:
        self.calls: set = set()
        self.draining = False


class _Live:
    """A call wired to fakes and to a real GatewayMetrics, up to a live Voice Agent session."""

    def __init__(self, config: dict | None = None) -> None:
        self.clock = Clock()
        self.gateway = _Gateway()
        self.metrics = GatewayMetrics(self.gateway)
        self.connector = FakeConnector()
        self.call = Call(configure(config), "twilio", self.clock, self.connector,
                         lambda call: self.metrics.call_ended(call), metrics=self.metrics)
        self.gateway.calls.add(self.call)
        self.caller = FakeCallerLeg()
        self.upstream = FakeUpstreamLeg()
        self.call.caller_handshake(Handshake("twilio", "/twilio", {}, "peer"))
        self.call.caller_opened(self.caller)
        self.call.from_caller(StreamStarted("MZ1", "CA1"))
        _, _, port, d = self.connector.attempts[-1]
        port.upstream_opened(self.upstream, "req-1")
        d.callback(self.upstream)
        self.call.from_upstream(dg("Welcome", request_id="req-1"))
        self.call.from_upstream(dg("SettingsApplied"))

    def end(self) -> None:
        self.call.from_caller(StreamStopped())
        self.call.upstream_closed(UpstreamClosed(1000, None, True))
        self.call.caller_closed(1000, None, True)
        self.gateway.calls.discard(self.call)

    def scrape(self) -> str:
        return generate_latest(self.metrics.registry).decode()

    def value(self, metric: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(metric, labels)


class PluginEventsTests(SynchronousTestCase):
    """A drop-in's ctx.count reaches /metrics, by plugin, name and labels, with a bound."""

    def config(self) -> dict:
        return {"gateway": {"dropin_dirs": [DROPINS],
                            "chain": ["auth", "settings", "close_codes", "count_turns"]}}

    def test_exported_while_live_and_after(self) -> None:
        """gateway_plugin_events_total counts a live call's counters and keeps them once it ends."""
        h = _Live(self.config())
        h.call.from_upstream(dg("ConversationText", role="user", content="Hello"))
        h.call.from_upstream(dg("ConversationText", role="assistant", content="Hi"))
        h.call.from_upstream(dg("ConversationText", role="user", content="Bye"))
        labels = {"plugin": "count_turns", "name": "turns"}
        self.assertEqual(h.value("gateway_plugin_events_total", detail="role=user", **labels), 2)
        self.assertEqual(h.value("gateway_plugin_events_total", detail="role=assistant", **labels), 1)
        h.end()
        self.assertEqual(h.value("gateway_plugin_events_total", detail="role=user", **labels), 2)
        self.assertEqual(h.value("gateway_plugin_events_total", plugin="count_turns", name="words",
                                 detail="text=Hello"), 1)

    def test_built_in_counters_keep_their_own_metric(self) -> None:
        """A counter with a metric of its own (marks, dtmf...) is not repeated as a plugin event."""
        info = CallInfo("c1", "twilio", "agent", MULAW_8K, MULAW_8K, MULAW_8K, 0.0)
        info.counters[("dtmf", ())] += 2
        info.counted_by["dtmf"] = "call_control"
        gateway = _Gateway()
        gateway.calls = [types.SimpleNamespace(info=info)]
        metrics = GatewayMetrics(gateway)
        text = generate_latest(metrics.registry).decode()
        self.assertIn("gateway_dtmf_total 2.0", text)
        self.assertNotIn('name="dtmf"', text)

    def test_label_values_are_bounded(self) -> None:
        """Past MAX_PLUGIN_SERIES distinct series, new ones add up under other; values are cut."""
        gateway = _Gateway()
        metrics = GatewayMetrics(gateway)
        for n in range(MAX_PLUGIN_SERIES + 50):
            info = CallInfo(f"c{n}", "twilio", "agent", MULAW_8K, MULAW_8K, MULAW_8K, 0.0)
            info.counters[("words", (("text", f"caller said {n} " + "x" * 100),))] += 1
            info.counted_by["words"] = "count_turns"
            metrics.call_ended(types.SimpleNamespace(info=info, diagnosis=None))
        families = [f for f in metrics.registry.collect() if f.name == "gateway_plugin_events"]
        samples = families[0].samples
        self.assertEqual(len(samples), MAX_PLUGIN_SERIES + 1)
        other = [s for s in samples if s.labels["name"] == "other"]
        self.assertEqual(other[0].value, 50)
        self.assertEqual(other[0].labels, {"plugin": "other", "name": "other", "detail": "other"})
        self.assertTrue(all(len(s.labels["detail"]) <= 64 for s in samples))
        self.assertEqual(sum(s.value for s in samples), MAX_PLUGIN_SERIES + 50)


class ProcessAndBuildTests(SynchronousTestCase):
    """prometheus_client's own collectors and the build information."""

    def test_collectors(self) -> None:
        """process_* and python_info are in the scrape, and gateway_build_info names the version."""
        metrics = GatewayMetrics(_Gateway())
        text = generate_latest(metrics.registry).decode()
        for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds",
                     "process_start_time_seconds", "python_info"):
            self.assertIn(name, text)
        info = [line for line in text.splitlines() if line.startswith("gateway_build_info{")]
        self.assertEqual(len(info), 1, text)
        self.assertIn(f'version="{__version__}"', info[0])
        self.assertTrue(info[0].endswith(" 1.0"), info[0])


class CallerHeardLatencyTests(SynchronousTestCase):
    """From the caller's last voiced frame to the first agent audio sent after the turn ended."""

    def tracker(self, fmt: object = MULAW_8K) -> tuple[Clock, CallerHeardLatency, list]:
        clock = Clock()
        seen: list[float] = []
        return clock, CallerHeardLatency(fmt, clock, seen.append), seen

    def test_measured_from_the_last_voiced_frame(self) -> None:
        """Silence after speech does not move the end of speech; only the first agent frame counts."""
        clock, heard, seen = self.tracker()
        heard.caller_audio(VOICED)
        clock.advance(0.5)
        heard.caller_audio(VOICED)
        for _ in range(10):
            clock.advance(0.02)
            heard.caller_audio(SILENT)
        clock.advance(0.3)
        heard.user_turn_ended()
        clock.advance(0.42)
        heard.agent_audio_sent()
        heard.agent_audio_sent()
        self.assertEqual(len(seen), 1)
        self.assertAlmostEqual(seen[0], 0.2 + 0.3 + 0.42)

    def test_greeting_not_measured(self) -> None:
        """Agent audio with no caller turn before it (the greeting) is not a response."""
        clock, heard, seen = self.tracker()
        heard.agent_audio_sent()
        heard.user_turn_ended()  # no voiced caller frame yet: nothing to measure from
        heard.agent_audio_sent()
        self.assertEqual(seen, [])

    def test_linear16(self) -> None:
        """A /client caller (linear16): the threshold is on the 16-bit samples; odd lengths are fine."""
        clock, heard, seen = self.tracker(LINEAR16_16K)
        heard.caller_audio((3000).to_bytes(2, "little", signed=True) * 320)
        clock.advance(1)
        heard.caller_audio((1000).to_bytes(2, "little", signed=True) * 320 + b"\x7f")
        heard.user_turn_ended()
        clock.advance(0.25)
        heard.agent_audio_sent()
        self.assertEqual(seen, [1.25])

    def test_in_a_call(self) -> None:
        """Through a call: the caller-heard figure includes the end-of-turn wait that the Deepgram
        response figure leaves out."""
        h = _Live()
        for _ in range(50):
            h.call.caller_audio(Audio(VOICED))
            h.clock.advance(0.02)
        for _ in range(30):  # 0.6 s of silence: Deepgram's end-of-turn wait
            h.call.caller_audio(Audio(SILENT))
            h.clock.advance(0.02)
        h.call.from_upstream(dg("ConversationText", role="user", content="Where is my order?"))
        h.clock.advance(0.3)
        h.call.upstream_audio(Audio(b"\x7f" * 160, "outbound"))
        self.assertEqual(h.value("gateway_caller_heard_latency_seconds_count"), 1)
        self.assertAlmostEqual(h.value("gateway_caller_heard_latency_seconds_sum"), 0.02 + 0.6 + 0.3)
        self.assertAlmostEqual(h.value("gateway_deepgram_response_seconds_sum"), 0.3)
        h.end()


class DashboardTests(SynchronousTestCase):
    """deploy/grafana-dashboard.json is built on names the gateway exports."""

    def test_every_metric_exists(self) -> None:
        """Each metric named in a panel's query is in a gateway's /metrics (by its TYPE line)."""
        import json
        import re

        from gateway.service import Gateway

        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        with open(os.path.join(root, "deploy", "grafana-dashboard.json")) as f:
            dashboard = json.load(f)
        text = generate_latest(Gateway(configure(), Clock()).metrics.registry).decode()
        exported = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
        used = set()
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                used |= set(re.findall(r"\b((?:gateway|process|python)_[a-z0-9_]+)", target["expr"]))
        self.assertGreater(len(used), 20)
        for name in sorted(used):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            self.assertTrue(name in exported or base in exported, f"{name} is not exported")
