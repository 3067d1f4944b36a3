"""
Prometheus metrics of one gateway process, served at ``/metrics``.

Nothing here runs per audio frame: each call keeps plain integer counters (`gateway.call.CallInfo`)
that a custom collector adds up at scrape time, together with the totals of the calls that have
ended. Label sets are bounded: diagnosis codes, modes, legs, drop reasons and a fixed list of
close codes; never a call id.

A counter a plugin keeps with ``ctx.count(name, **labels)`` under a name this module has no metric
of (a drop-in's ``digits_masked``, say) is exported as
``gateway_plugin_events_total{plugin, name, detail}``: ``plugin`` is the stage that counted it
(``gateway`` for the call's own counters), ``detail`` its labels as ``key=value`` pairs joined by
commas (``""`` without labels). The label set is bounded: each value is cut to
`PLUGIN_LABEL_MAX_CHARS` and at most `MAX_PLUGIN_SERIES` distinct series exist per process; past
that, new ones are added up under ``plugin="other", name="other", detail="other"``.

Also here: ``prometheus_client``'s own process (``process_*``: CPU, memory, open fds, start time)
and platform (``python_info``) collectors, ``gateway_build_info{version, python, twisted,
autobahn}`` (always 1), and the latency histograms (see `GatewayMetrics`).
"""

from __future__ import annotations

import collections
import platform
from typing import Any, Iterable

import autobahn
import twisted
from prometheus_client import CollectorRegistry, Gauge, Histogram, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from gateway import __version__

__all__ = ["GatewayMetrics", "KNOWN_CLOSE_CODES", "MAX_PLUGIN_SERIES", "PLUGIN_LABEL_MAX_CHARS"]

#: Distinct ``gateway_plugin_events_total`` series per process; the rest go under "other".
MAX_PLUGIN_SERIES = 200

#: Longest value of a ``gateway_plugin_events_total`` label.
PLUGIN_LABEL_MAX_CHARS = 64

_OTHER_SERIES = ("other", "other", "other")

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
    "control_messages": ("gateway_control_messages",
                         "Control messages from /client apps sent on to Deepgram, by type", ("type",)),
    "upstream_messages_unknown": ("gateway_upstream_messages_unknown",
                                  "Deepgram messages of a type the installed SDK does not know (forwarded)", ()),
    "deepgram_latency_ms": ("gateway_deepgram_latency_ms",
                            "Deepgram's own LatencyReport figures summed, in ms, by stage "
                            "(divided by gateway_deepgram_latency_reports: the mean)", ("stage",)),
    "deepgram_latency_reports": ("gateway_deepgram_latency_reports",
                                 "Deepgram LatencyReport figures received, by stage", ("stage",)),
    "barge_ins": ("gateway_barge_ins", "Flux StartOfTurn clears of audio a plugin played", ("mode",)),
}


def _plugin_detail(labels: tuple) -> str:
    """A counter's labels as one bounded label value: ``key=value`` pairs joined by commas."""
    return ",".join(f"{k}={v}" for k, v in labels)[:PLUGIN_LABEL_MAX_CHARS]


def _versions() -> dict[str, str]:
    return {"version": __version__, "python": platform.python_version(),
            "twisted": twisted.__version__, "autobahn": autobahn.__version__}


def _code_label(code: int | None) -> str:
    if code is None:
        return "none"
    return str(code) if code in KNOWN_CLOSE_CODES else "other"


class GatewayMetrics:
    """
    The metrics of one `gateway.service.Gateway` (its own registry, so tests stay apart).

    Two latency histograms answer different questions:

    - ``gateway_caller_heard_latency_seconds``: what the caller waits, as far as the gateway can
      see it: from the caller's last voiced audio frame before Deepgram ended the caller's turn
      to the first agent audio frame sent back to the caller (`gateway.latency`). Add the
      network to and from the caller and its playout buffer for what a person hears.
    - ``gateway_deepgram_response_seconds`` (called ``gateway_agent_response_seconds`` before):
      from Deepgram ending the caller's turn (``ConversationText``, role ``user``, arriving) to
      the first agent audio frame arriving from Deepgram: the agent's think-and-speak time. It
      leaves out Deepgram's end-of-turn wait, which the caller hears too, so it reads well under
      the caller-heard figure (0.30 s against 0.92 s in issue 20).
    """

    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway
        self.registry = CollectorRegistry(auto_describe=True)
        self.totals: collections.Counter = collections.Counter()
        self._plugin_keys: set[tuple[str, str, str]] = set()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        versions = _versions()
        Gauge("gateway_build_info", "The gateway's version and its main dependencies' (always 1)",
              list(versions), registry=self.registry).labels(**versions).set(1)
        self.connect_seconds = Histogram(
            "gateway_deepgram_connect_seconds", "From opening the Deepgram leg to the WebSocket open",
            ["mode"], registry=self.registry, buckets=_LATENCY_BUCKETS)
        self.settings_seconds = Histogram(
            "gateway_deepgram_settings_applied_seconds", "From the Deepgram WebSocket open to SettingsApplied",
            registry=self.registry, buckets=_LATENCY_BUCKETS)
        self.response_seconds = Histogram(
            "gateway_deepgram_response_seconds",
            "From Deepgram ending the caller's turn (ConversationText role user) to its first agent "
            "audio: think and speak time, without the end-of-turn wait the caller also hears",
            registry=self.registry, buckets=_LATENCY_BUCKETS)
        self.caller_heard_seconds = Histogram(
            "gateway_caller_heard_latency_seconds",
            "From the caller's last voiced frame before the end of their turn to the first agent "
            "audio frame sent to the caller (the wait the caller hears, at the gateway)",
            registry=self.registry, buckets=_LATENCY_BUCKETS)
        self.registry.register(self)

    # --- observations (a few per call, never per frame) ---

    def connected(self, mode: str, seconds: float) -> None:
        self.connect_seconds.labels(mode).observe(seconds)

    def settings_applied(self, seconds: float) -> None:
        self.settings_seconds.observe(seconds)

    def agent_responded(self, seconds: float) -> None:
        self.response_seconds.observe(seconds)

    def caller_heard(self, seconds: float) -> None:
        self.caller_heard_seconds.observe(seconds)

    def leg_closed(self, leg: str, code: int | None) -> None:
        self.totals[("close", (leg, _code_label(code)))] += 1

    def call_ended(self, call: Any) -> None:
        """Fold an ended call's counters into the totals."""
        info = call.info
        diagnosis = call.diagnosis.code if call.diagnosis is not None else "UNKNOWN"
        self.totals[("ended", (diagnosis, info.mode))] += 1
        for key, value in self._call_counts(call):
            if key[0] == "plugin_events":
                # Bounded as it is kept: the totals never hold more than MAX_PLUGIN_SERIES of them.
                key = ("plugin_series", self._plugin_series(*key[1]))
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
        counted_by = getattr(info, "counted_by", {})
        for (name, labels), value in info.counters.items():
            if name in _COUNTERS:
                yield (name, tuple(v for _, v in labels)), value
            else:
                yield ("plugin_events", (counted_by.get(name, "gateway"), name, labels)), value

    # --- the collector protocol ---

    def describe(self) -> list:
        return []

    def _plugin_series(self, plugin: str, name: str, labels: tuple) -> tuple[str, str, str]:
        """The bounded label values of one plugin counter (the process's first MAX_PLUGIN_SERIES)."""
        key = (plugin[:PLUGIN_LABEL_MAX_CHARS], name[:PLUGIN_LABEL_MAX_CHARS], _plugin_detail(labels))
        if key in self._plugin_keys:
            return key
        if len(self._plugin_keys) < MAX_PLUGIN_SERIES:
            self._plugin_keys.add(key)
            return key
        return _OTHER_SERIES

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
        plugin_events: collections.Counter = collections.Counter()
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
            elif name == "plugin_events":
                plugin_events[self._plugin_series(*labels)] += value
            elif name == "plugin_series":
                plugin_events[labels] += value
        yield ended
        yield frames
        yield nbytes
        yield closes
        yield from others.values()
        family = CounterMetricFamily(
            "gateway_plugin_events",
            "Counters plugins keep with ctx.count that have no metric of their own, by plugin, "
            "name and labels (bounded: the rest under other)", labels=["plugin", "name", "detail"])
        for key, value in sorted(plugin_events.items()):
            family.add_metric(list(key), value)
        yield family
