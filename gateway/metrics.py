"""
Prometheus metrics of one gateway process, served at ``/metrics``.

Nothing here runs per audio frame: each call keeps plain integer counters (`gateway.call.CallInfo`)
that a custom collector adds up at scrape time, together with the totals of the calls that have
ended. Label sets are bounded: diagnosis codes, modes, legs, drop reasons and a fixed list of
close codes; never a call id.
"""

from __future__ import annotations

import collections
from typing import Any, Iterable

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

__all__ = ["GatewayMetrics", "KNOWN_CLOSE_CODES"]

#: Close codes reported as themselves; any other is reported as "other".
KNOWN_CLOSE_CODES = frozenset(
    {1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 1009, 1011, 1012, 1013, 1015,
     4001, 4002, 4003, 4408, 4500, 4501, 4502}
)

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)

# per-call counter name -> (metric name, help, label names)
_COUNTERS = {
    "frames_dropped": ("gateway_frames_dropped", "Audio frames dropped, by reason", ("reason",)),
    "caller_messages_rejected": ("gateway_caller_messages_rejected",
                                 "Caller messages rejected, by reason", ("reason",)),
    "upstream_messages_rejected": ("gateway_upstream_messages_rejected",
                                   "Deepgram messages the gateway could not parse", ("reason",)),
    "reconnects": ("gateway_reconnects", "Deepgram reconnect attempts, by the diagnosis that caused them",
                   ("diagnosis",)),
    "auth_failures": ("gateway_auth_failures", "Authentication failures, by reason", ("reason",)),
    "keepalive_sent": ("gateway_keepalives_sent", "KeepAlive messages or silence sent to Deepgram",
                       ("kind",)),
    "plugin_errors": ("gateway_plugin_errors", "Plugin exceptions, by plugin", ("plugin",)),
    "function_calls": ("gateway_function_calls", "Client-side function calls, by function and outcome",
                       ("function", "outcome")),
    "marks": ("gateway_marks", "Twilio marks echoed, played or cleared by a barge-in", ("outcome",)),
    "transfers": ("gateway_transfers", "Calls transferred with transfer_call", ()),
    "dtmf": ("gateway_dtmf", "DTMF key presses", ()),
}


def _code_label(code: int | None) -> str:
    if code is None:
        return "none"
    return str(code) if code in KNOWN_CLOSE_CODES else "other"


class GatewayMetrics:
    """The metrics of one `gateway.service.Gateway` (its own registry, so tests stay apart)."""

    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway
        self.registry = CollectorRegistry(auto_describe=True)
        self.totals: collections.Counter = collections.Counter()
        self.connect_seconds = Histogram(
            "gateway_deepgram_connect_seconds", "From opening the Deepgram leg to the WebSocket open",
            ["mode"], registry=self.registry, buckets=_LATENCY_BUCKETS)
        self.settings_seconds = Histogram(
            "gateway_deepgram_settings_applied_seconds", "From the Deepgram WebSocket open to SettingsApplied",
            registry=self.registry, buckets=_LATENCY_BUCKETS)
        self.response_seconds = Histogram(
            "gateway_agent_response_seconds",
            "From the end of the caller's turn (ConversationText, role user) to the first agent audio",
            registry=self.registry, buckets=_LATENCY_BUCKETS)
        self.registry.register(self)

    # --- observations (a few per call, never per frame) ---

    def connected(self, mode: str, seconds: float) -> None:
        self.connect_seconds.labels(mode).observe(seconds)

    def settings_applied(self, seconds: float) -> None:
        self.settings_seconds.observe(seconds)

    def agent_responded(self, seconds: float) -> None:
        self.response_seconds.observe(seconds)

    def leg_closed(self, leg: str, code: int | None) -> None:
        self.totals[("close", (leg, _code_label(code)))] += 1

    def call_ended(self, call: Any) -> None:
        """Fold an ended call's counters into the totals."""
        info = call.info
        diagnosis = call.diagnosis.code if call.diagnosis is not None else "UNKNOWN"
        self.totals[("ended", (diagnosis, info.mode))] += 1
        for key, value in self._call_counts(call):
            self.totals[key] += value

    @staticmethod
    def _call_counts(call: Any) -> Iterable[tuple[tuple, int]]:
        info = call.info
        yield ("frames", ("caller", "in")), info.frames_from_caller
        yield ("frames", ("caller", "out")), info.frames_to_caller
        yield ("frames", ("deepgram", "in")), info.frames_from_upstream
        yield ("frames", ("deepgram", "out")), info.frames_to_upstream
        yield ("bytes", ("caller", "in")), info.bytes_from_caller
        yield ("bytes", ("caller", "out")), info.bytes_to_caller
        yield ("bytes", ("deepgram", "in")), info.bytes_from_upstream
        yield ("bytes", ("deepgram", "out")), info.bytes_to_upstream
        for (name, labels), value in info.counters.items():
            if name in _COUNTERS:
                yield (name, tuple(v for _, v in labels)), value

    # --- the collector protocol ---

    def describe(self) -> list:
        return []

    def collect(self) -> Iterable[Any]:
        live = list(self.gateway.calls)
        counts = collections.Counter(self.totals)
        for call in live:
            for key, value in self._call_counts(call):
                counts[key] += value
        yield GaugeMetricFamily("gateway_active_calls", "Calls in progress", value=len(live))
        yield GaugeMetricFamily("gateway_draining", "1 while draining", value=int(self.gateway.draining))
        ended = CounterMetricFamily("gateway_calls_ended", "Calls ended, by diagnosis and mode",
                                    labels=["diagnosis", "mode"])
        frames = CounterMetricFamily("gateway_frames", "Frames per leg and direction", labels=["leg", "direction"])
        nbytes = CounterMetricFamily("gateway_audio_bytes", "Audio bytes per leg and direction", labels=["leg", "direction"])
        closes = CounterMetricFamily("gateway_leg_closes", "Leg closes by close code", labels=["leg", "code"])
        others = {name: CounterMetricFamily(metric, help_, labels=list(labels))
                  for name, (metric, help_, labels) in _COUNTERS.items()}
        for (name, labels), value in counts.items():
            if name == "ended":
                ended.add_metric(list(labels), value)
            elif name == "frames":
                frames.add_metric(list(labels), value)
            elif name == "bytes":
                nbytes.add_metric(list(labels), value)
            elif name == "close":
                closes.add_metric(list(labels), value)
            elif name in others:
                others[name].add_metric(list(labels), value)
        yield ended
        yield frames
        yield nbytes
        yield closes
        yield from others.values()
