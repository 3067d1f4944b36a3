"""
A benchmark, not a test: many calls handed over in one rolling restart (issue 17).

Two ``twistd gateway`` processes under supervisord (deploy/supervisord.conf as shipped, through
`tests.system.test_deploy.Deployment`) behind HAProxy (deploy/haproxy.cfg, rendered as
tests/system/test_handover.py does), the Deepgram emulator at speed 1.0 (the agent speaks in real
time), and ``--calls`` whole Twilio calls from the simulator (`TwilioVoiceCall`: the voice webhook,
the stream, Twilio's ``<Connect action>`` request, the new stream), in real time, spread over both
processes by HAProxy. Then the rolling restart an operator runs: ``supervisorctl stop`` A (its calls
are handed over to B), ``supervisorctl start`` A and wait until it is ready (``/readyz`` 200 on its
port, then HAProxy's check marks it UP), stop B (its calls, those from A included, go to A), start
B. The calls then run to the end of their clip.

Run it with::

    .venv/bin/python -m tests.system.bench_handover --calls 50 [--store sqlite|redis] [--json out.json]

It prints what happened to every call: lost (a stream that never opened or closed with 1005, 1006,
1015 or no code; a call whose last stream closed otherwise than 1000, or handed over and not resumed)
or completed; a stream closed otherwise than ``1000 HANDED_OVER`` after which the call went on is
listed apart, not counted as lost. Then handovers per call, the caller-heard gap (`Handover.gap_s`:
the simulator's last agent audio before to first agent audio after; and the same over consecutive
handovers with no agent audio between), the stream gap (old stream closed to new stream open), and
how long each ``supervisorctl stop`` took against the drain deadline. From the gateways' JSON logs
(``log_conversation`` on) and the emulator's sessions it also times each handover's steps and
counts the handovers made while the agent's answer to the caller was still to come (the new
session's restored history ends with the caller's turn). ``--json`` has every call.
The exit status is 0 when no call was lost, no stream was listed apart, and every stop ended before
its drain deadline. It needs supervisord (pip), haproxy and, for ``--store redis``, redis-server.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from typing import Any, Callable, cast

import attrs
from twisted.internet import defer, task

from gateway.codecs.wav import WavAudio
from gateway.simulator.result import Stats
from gateway.simulator.voice import TwilioVoiceCall, VoiceCallResult
from gateway.testing import temp_path
from tests.system import test_deploy as deploy
from tests.system.harness import clip, start_emulator

PUBLIC = "https://gw.handover.bench"
AUTH_TOKEN = "handover-bench-twilio-token"
ORDER = clip("caller-order-8k-mulaw.wav")
#: Close codes that mean a stream was cut, never a normal end (issue 17).
ABNORMAL = (1005, 1006, 1015)
#: The log codes of a handed-over call that was not taken up as itself (plugins/handover.py).
NOT_RESUMED = ("HANDOVER_RECORD_MISSING", "HANDOVER_RESUME_REFUSED", "HANDOVER_STORE_DOWN",
               "HANDOVER_FAILED")


class Cleanups:
    """What `Deployment`, `temp_path` and `start_emulator` need of a trial TestCase: ``addCleanup``."""

    def __init__(self) -> None:
        self._cleanups: list[tuple[Callable[..., Any], tuple, dict]] = []

    def addCleanup(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self._cleanups.append((fn, args, kwargs))

    @defer.inlineCallbacks
    def run(self) -> Any:
        """Run every cleanup, last added first, as trial does; report failures and go on."""
        while self._cleanups:
            fn, args, kwargs = self._cleanups.pop()
            try:
                yield defer.maybeDeferred(fn, *args, **kwargs)
            except Exception as e:
                print(f"cleanup {getattr(fn, '__qualname__', fn)} failed: {e}", file=sys.stderr)


def caller_clip(turns: int) -> WavAudio:
    """
    The caller: 4 s of silence while the greeting plays, then ``turns`` times the order question
    (5.3 s) and 5 s of silence in which the agent answers (about 0.9 s to its turn, 2.3 s of audio)
    and the line is quiet for a while: one turn every ~10.3 s, each with a quiet point.
    """
    silence = b"\xff" * 8000
    return WavAudio("mulaw", 8000, 1, silence * 4 + (ORDER.data + silence * 5) * turns)


def store_config(test: Cleanups, store: str) -> str:
    """The ``[handover]`` section: a fresh SQLite file, or a redis-server of this run's own."""
    if store == "redis":
        from tests.test_handover_store import RedisServer

        redis = RedisServer()
        test.addCleanup(redis.stop)
        return f"[handover]\nstore = \"{redis.url}\"\n"
    return f"[handover]\nstore = \"sqlite:{temp_path(test, 'handover.sqlite')}\"\n"


def start_haproxy(test: Cleanups, dep: deploy.Deployment) -> Any:
    """HAProxy from deploy/haproxy.cfg with the deployment's ports: (its output collector, port)."""
    return deploy.start_haproxy(cast(Any, test), dep)


def proxy_says(proto: Any, port: int, state: str) -> int:
    """How many times HAProxy has logged server ``gw<port>`` as ``state`` (UP or DOWN)."""
    return proto.output.decode(errors="replace").count(f"be_gateway/gw{port} is {state}")


@defer.inlineCallbacks
def stop(dep: deploy.Deployment, port: int, drain_s: float) -> Any:
    """``supervisorctl stop`` the process on ``port``: how long it took, and what its log says."""
    live = yield dep.calls_per_port()
    started = time.monotonic()
    output, status = yield dep.ctl("stop", f"gateway:gateway-{port}", timeout_s=drain_s + 60)
    elapsed_s = time.monotonic() - started
    lines = dep.log_lines(port)
    drain = [line for line in lines if "drain done" in line]
    with open(os.path.join(dep.log_dir, "supervisord.log"), errors="replace") as f:
        sup = [line.strip() for line in f if f"stopped: gateway-{port}" in line or "SIGKILL" in line]
    return {
        "port": port, "calls_at_stop": live.get(port), "stop_s": round(elapsed_s, 3),
        "drain_deadline_s": drain_s,
        "before_deadline": "stopped" in output and elapsed_s < drain_s
                           and not any("SIGKILL" in line for line in sup),
        "supervisorctl": output.strip(), "drain_done": json.loads(drain[-1])["msg"] if drain else None,
        "supervisord": sup[-1] if sup else None,
    }


@defer.inlineCallbacks
def start(dep: deploy.Deployment, port: int, proxy: Any, proxy_wait: bool) -> Any:
    """``supervisorctl start`` the process on ``port``; wait for /readyz 200 (and HAProxy's UP)."""
    ups = proxy_says(proxy, port, "UP")
    started = time.monotonic()
    output, _ = yield dep.ctl("start", f"gateway:gateway-{port}", timeout_s=60)
    yield deploy.wait_for(lambda: deploy.http_get(f"http://127.0.0.1:{port}/readyz").addCallback(
        lambda a: a is not None and a[0] == 200), 60, f"/readyz 200 on {port}")
    ready_s = time.monotonic() - started
    if proxy_wait:
        yield deploy.wait_for(lambda: proxy_says(proxy, port, "UP") > ups, 30,
                              f"HAProxy marking gw{port} UP")
    return {"port": port, "supervisorctl": output.strip(), "ready_s": round(ready_s, 3),
            "proxy_up_s": round(time.monotonic() - started, 3) if proxy_wait else None}


#: The log lines that time a handover's steps (see `GatewayLogs.steps`).
_TIMELINE = (
    ("requested", re.compile(r"handover requested \(")),
    ("saved", re.compile(r"HANDED_OVER: call state saved")),
    ("ended", re.compile(r"call \S+ ended: HANDED_OVER")),
    ("resumed", re.compile(r"HANDOVER_RESUMED: ")),
    ("deepgram_open", re.compile(r"Deepgram agent session open")),
)


@attrs.define
class GatewayLogs:
    """
    What the gateways' JSON logs say: how often each handover code appears (``codes``) and, per
    stream (by ``streamSid``), its Deepgram request id (``request_ids``) and what was said on it
    and when it was handed over (``lines``: ``(ts, "caller" | "agent" | "HANDED_OVER <why>")``).
    """

    codes: dict[str, int] = attrs.field(factory=dict)
    request_ids: dict[str, str] = attrs.field(factory=dict)
    lines: dict[str, list[tuple[float, str]]] = attrs.field(factory=dict)
    #: Per stream: when the handover was requested, the state saved, the stream ended, the call
    #: taken up (on the new stream) and its Deepgram session opened.
    times: dict[str, dict[str, float]] = attrs.field(factory=dict)
    #: Per CallSid: when a process answered Twilio's action request with a new stream.
    actions: dict[str, list[float]] = attrs.field(factory=dict)

    @classmethod
    def read(cls, dep: deploy.Deployment) -> GatewayLogs:
        logs = cls()
        for port in dep.ports:
            for line in dep.log_lines(port):
                event = json.loads(line)
                code, msg, sid = event.get("code"), event.get("msg", ""), event.get("stream_sid")
                if isinstance(code, str) and code.startswith(("HANDOVER", "HANDED_OVER")):
                    logs.codes[code] = logs.codes.get(code, 0) + 1
                if msg.startswith("handover action: call ") and "goes on" in msg:
                    logs.actions.setdefault(event.get("call_sid", ""), []).append(event["ts"])
                if not isinstance(sid, str):
                    continue
                for mark, pattern in _TIMELINE:
                    if pattern.match(msg):
                        logs.times.setdefault(sid, {}).setdefault(mark, event["ts"])
                said = re.match(r"(caller|agent): ", msg)
                saved = re.match(r"HANDED_OVER: call state saved at its (.+?);", msg)
                if said:
                    logs.lines.setdefault(sid, []).append((event["ts"], said.group(1)))
                elif saved:
                    logs.lines.setdefault(sid, []).append((event["ts"], "HANDED_OVER " + saved.group(1)))
                elif msg.startswith("Deepgram agent session open") and event.get("request_id"):
                    logs.request_ids[sid] = event["request_id"]
        for lines in logs.lines.values():
            lines.sort()
        for times in logs.actions.values():
            times.sort()
        return logs

    def steps(self, call_sid: str, old_sid: str, new_sid: str) -> dict[str, float | None]:
        """One handover's steps, in seconds, from the gateways' clocks (one host)."""
        old, new = self.times.get(old_sid, {}), self.times.get(new_sid, {})
        ended = old.get("ended")
        action = next((t for t in self.actions.get(call_sid, []) if ended is not None and t >= ended), None)

        def between(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else b - a

        return {
            "quiet_wait_s": between(old.get("requested"), old.get("saved")),
            "saved_to_ended_s": between(old.get("saved"), ended),
            "ended_to_action_s": between(ended, action),
            "action_to_resumed_s": between(action, new.get("resumed")),
            "resumed_to_deepgram_open_s": between(new.get("resumed"), new.get("deepgram_open")),
        }


def handovers_of(result: VoiceCallResult, logs: GatewayLogs,
                 sessions: dict[str, Any]) -> list[dict[str, Any]]:
    """
    Each handover of a call: the simulator's ``gap_s`` and ``stream_gap_s`` (which ends when the
    simulator *starts* the new stream, before it connects); ``open_gap_s``, from the old stream's
    close to the new WebSocket's open (the simulator's ``sim.open``); ``span_gap_s``, the
    silence the caller heard around it even when the stream in between carried no agent audio
    (last agent audio before its close to the first after its new stream opened, over every
    stream); where it was handed over (``at``: quiet point or deadline); ``after_caller``: the
    last thing said on the old stream before it was handed over was the caller's (the logs);
    ``answer_pending``: the new Deepgram session's restored history ends with the caller's turn,
    which the agent had not answered (the emulator's session, found by its request id);
    ``span_answer_pending``: the same for the last handover of a run with no agent audio between.
    """
    starts = [h.closed_at - s.duration_s for h, s in zip(result.handovers, result.streams)]
    if result.handovers and result.handovers[-1].opened_at is not None:
        starts.append(result.handovers[-1].opened_at)
    agent = sorted(start + t for start, stream in zip(starts, result.streams)
                   for t, kind, _ in stream.events if kind == "media")
    out = []
    opens = [next((start + t for t, kind, _ in stream.events if kind == "sim.open"), None)
             for start, stream in zip(starts, result.streams)]
    for i, h in enumerate(result.handovers):
        before = [t for t in agent if t <= h.closed_at]
        after = [t for t in agent if h.opened_at is not None and t >= h.opened_at]
        lines = logs.lines.get(result.streams[i].stream_sid or "", [])
        saved = next(((ts, what) for ts, what in lines if what.startswith("HANDED_OVER")), None)
        said = [what for ts, what in lines if saved and ts <= saved[0] and what in ("caller", "agent")]
        pending = None
        if i + 1 < len(result.streams):
            session = sessions.get(logs.request_ids.get(result.streams[i + 1].stream_sid or "", ""))
            agent_settings = (session.settings or {}).get("agent", {}) if session else {}
            history = (agent_settings.get("context") or {}).get("messages") or []
            pending = bool(history) and history[-1].get("role") == "user" if session else None
        new_sid = result.streams[i + 1].stream_sid if i + 1 < len(result.streams) else None
        opened = opens[i + 1] if i + 1 < len(opens) else None
        out.append({
            **logs.steps(result.call_sid, result.streams[i].stream_sid or "", new_sid or ""),
            "gap_s": h.gap_s, "stream_gap_s": h.stream_gap_s,
            "open_gap_s": None if opened is None else opened - h.closed_at,
            "span_gap_s": after[0] - before[-1] if before and after else None,
            "at": saved[1][len("HANDED_OVER "):] if saved else None,
            "after_caller": bool(said) and said[-1] == "caller",
            "answer_pending": pending,
        })
    for i in reversed(range(len(out))):
        silent_next = i + 1 < len(out) and result.streams[i + 1].agent_audio_s == 0
        out[i]["span_answer_pending"] = out[i + 1]["span_answer_pending"] if silent_next \
            else out[i]["answer_pending"]
    return out


def lost_why(result: VoiceCallResult | None) -> str | None:
    """Why a call counts as lost (None: it went on to its normal end)."""
    if result is None:
        return "the call did not end in time"
    if result.error:
        return result.error
    if not result.streams:
        return f"no stream (webhook {result.webhook_status})"
    for i, stream in enumerate(result.streams):
        if not stream.opened:
            return f"stream {i + 1} never opened: {stream.failure()}"
        if stream.close_code in ABNORMAL or stream.close_code is None:
            return f"stream {i + 1} closed with {stream.close_code}"
    last = result.streams[-1]
    if (last.close_code, last.close_reason) == (1000, "HANDED_OVER"):
        return "handed over but not resumed (no new stream)"
    if last.close_code != 1000:
        return f"the last stream closed with {last.close_code} {last.close_reason}"
    return None


def oddities(result: VoiceCallResult | None) -> list[str]:
    """Streams that ended otherwise than ``1000 HANDED_OVER`` and yet the call went on (not lost)."""
    if result is None:
        return []
    return [f"{result.call_sid}: stream {i + 1} closed {s.close_code} {s.close_reason} and the call went on"
            for i, s in enumerate(result.streams[:-1])
            if (s.close_code, s.close_reason) != (1000, "HANDED_OVER")]


def stats(values_s: list[float]) -> dict[str, Any] | None:
    """p50/p99/max of ``values_s``, in milliseconds (nearest rank)."""
    s = Stats.of(values_s)
    return None if s is None else {"count": s.count, "p50_ms": round(s.p50_ms, 1),
                                   "p99_ms": round(s.p99_ms, 1), "max_ms": round(s.max_ms, 1)}


def turn_gaps(result: VoiceCallResult) -> list[float]:
    """Quiet between two agent turns inside one stream (the conversation's own rhythm)."""
    gaps = []
    for stream in result.streams:
        times = [t for t, kind, _ in stream.events if kind == "media"]
        gaps += [b - a for a, b in zip(times, times[1:]) if b - a > 1.0]
    return gaps


def unanswered(emulator: Any) -> int:
    """
    Resumed sessions whose restored history ends with the caller's turn: the call was handed over
    after that turn was recognised and before the agent answered it, and the new session does not
    answer it (the caller hears nothing until they speak again).
    """
    n = 0
    for session in emulator.sessions:
        agent = (session.settings or {}).get("agent", {})
        messages = (agent.get("context") or {}).get("messages") or []
        if "greeting" not in agent and messages and messages[-1].get("role") == "user":
            n += 1
    return n


def closes(sessions: list[Any]) -> dict[str, int]:
    """How the emulator's sessions ended: ``code reason`` -> count."""
    out: dict[str, int] = {}
    for session in sessions:
        key = f"{session.close_code} {session.close_reason}"
        out[key] = out.get(key, 0) + 1
    return out


def detail(result: VoiceCallResult | None, handovers: list[dict[str, Any]]) -> dict[str, Any] | None:
    """One call, for the JSON report: its streams' closes and its handovers."""
    if result is None:
        return None
    return {
        "call_sid": result.call_sid,
        "streams": [{"stream_sid": s.stream_sid, "close": [s.close_code, s.close_reason],
                     "duration_s": round(s.duration_s, 3), "agent_audio_s": round(s.agent_audio_s, 2)}
                    for s in result.streams],
        "handovers": handovers,
    }


@defer.inlineCallbacks
def settings_applied_mean(reactor: Any, port: int) -> Any:
    """From the process's /metrics: its sessions' mean time from the Deepgram open to SettingsApplied."""
    import treq

    response = yield treq.get(f"http://127.0.0.1:{port}/metrics", persistent=False).addTimeout(10, reactor)
    text = (yield response.content()).decode()
    total = re.search(r"^gateway_deepgram_settings_applied_seconds_sum (\S+)", text, re.M)
    count = re.search(r"^gateway_deepgram_settings_applied_seconds_count (\S+)", text, re.M)
    if not (total and count and float(count.group(1))):
        return None
    return {"sessions": int(float(count.group(1))),
            "mean_ms": round(1000 * float(total.group(1)) / float(count.group(1)), 1)}


def summarise(results: list[VoiceCallResult | None], dep: deploy.Deployment, emulator: Any,
              steps: list[dict[str, Any]], args: argparse.Namespace, wall_s: float,
              cpu_s: float) -> dict[str, Any]:
    logs = GatewayLogs.read(dep)
    codes = logs.codes
    by_request = {s.request_id: s for s in emulator.sessions}
    lost = {}
    per_call: dict[int, int] = {}
    details: list[dict[str, Any] | None] = []
    handovers: list[dict[str, Any]] = []
    lateness: list[float] = []
    lateness_p99: list[float] = []
    for i, result in enumerate(results):
        why = lost_why(result)
        if why is not None:
            lost[result.call_sid if result else f"call {i}"] = why
        if result is None:
            details.append(None)
            continue
        per_call[len(result.handovers)] = per_call.get(len(result.handovers), 0) + 1
        mine = handovers_of(result, logs, by_request)
        handovers += mine
        details.append(detail(result, mine))
        lateness += [s.send_lateness.max_ms / 1000 for s in result.streams if s.send_lateness]
        lateness_p99 += [s.send_lateness.p99_ms / 1000 for s in result.streams if s.send_lateness]
    rhythm = [g for r in results if r is not None for g in turn_gaps(r)]
    rhythm_stats = Stats.of(rhythm)
    rhythm_p50_s = rhythm_stats.p50_ms / 1000 if rhythm_stats else 0.0
    kept = [h for h in handovers if h["span_answer_pending"] is False]
    cut = [h for h in handovers if h["span_answer_pending"]]
    at: dict[str, int] = {}
    for h in handovers:
        at[str(h["at"])] = at.get(str(h["at"]), 0) + 1
    sessions = emulator.sessions
    return {
        "calls": args.calls, "store": args.store, "drain_deadline_s": args.drain_deadline,
        "turns": args.turns, "wall_s": round(wall_s, 1),
        "bench_process_cpu_percent": round(100 * cpu_s / wall_s, 1),
        "completed": len(results) - len(lost), "lost": len(lost), "lost_calls": lost,
        "went_on_after_another_close": [o for r in results for o in oddities(r)],
        "handovers_per_call": {str(k): v for k, v in sorted(per_call.items())},
        "handovers": len(handovers), "handed_over_at": at,
        "caller_heard_gap": stats([h["gap_s"] for h in handovers if h["gap_s"] is not None]),
        "gap_not_measurable": sum(1 for h in handovers if h["gap_s"] is None),
        "span_gap": stats([h["span_gap_s"] for h in handovers if h["span_gap_s"] is not None]),
        "span_gap_answer_kept": stats([h["span_gap_s"] for h in kept if h["span_gap_s"] is not None]),
        "span_gap_answer_pending": stats([h["span_gap_s"] for h in cut if h["span_gap_s"] is not None]),
        "added_to_turn_gap_answer_kept": stats([h["span_gap_s"] - rhythm_p50_s for h in kept
                                                if h["span_gap_s"] is not None]),
        "handovers_with_answer_pending": sum(1 for h in handovers if h["answer_pending"]),
        "handovers_right_after_caller_turn": sum(1 for h in handovers if h["after_caller"]),
        "handovers_pending_unknown": sum(1 for h in handovers if h["answer_pending"] is None),
        "stream_gap": stats([h["stream_gap_s"] for h in handovers if h["stream_gap_s"] is not None]),
        "open_gap": stats([h["open_gap_s"] for h in handovers if h["open_gap_s"] is not None]),
        "turn_gap_without_handover": stats(rhythm),
        "steps_from_logs": {key: stats([h[key] for h in handovers if h.get(key) is not None])
                            for key in ("quiet_wait_s", "saved_to_ended_s", "ended_to_action_s",
                                        "action_to_resumed_s", "resumed_to_deepgram_open_s")},
        "log_codes": codes,
        "not_resumed_log_lines": {c: codes[c] for c in NOT_RESUMED if codes.get(c)},
        "emulator_sessions": len(sessions),
        "emulator_closes": closes(sessions),
        "greeted_sessions": sum(1 for s in sessions if "greeting" in ((s.settings or {}).get("agent") or {})),
        "resumed_with_caller_turn_unanswered": unanswered(emulator),
        "send_lateness_worst_per_stream": stats(lateness),
        "send_lateness_p99_per_stream": stats(lateness_p99),
        "steps": steps, "loadavg_end": os.getloadavg(),
        "per_call": details,
    }


def print_report(report: dict[str, Any]) -> None:
    def fmt(s: dict[str, Any] | None) -> str:
        return "n/a" if s is None else f"p50 {s['p50_ms']:.0f} ms, p99 {s['p99_ms']:.0f} ms, " \
                                       f"max {s['max_ms']:.0f} ms (n={s['count']})"

    print(f"\n{report['calls']} calls, store {report['store']}, drain deadline "
          f"{report['drain_deadline_s']} s, {report['wall_s']} s")
    print(f"completed {report['completed']}, lost {report['lost']}")
    for sid, why in report["lost_calls"].items():
        print(f"  lost {sid}: {why}")
    for line in report["went_on_after_another_close"]:
        print(f"  not lost, but {line}")
    print(f"handovers per call {report['handovers_per_call']} ({report['handovers']} in all), "
          f"handed over at {report['handed_over_at']}")
    print(f"caller-heard gap (Handover.gap_s): {fmt(report['caller_heard_gap'])}; not measurable: "
          f"{report['gap_not_measurable']}")
    print(f"caller-heard gap over consecutive handovers: {fmt(report['span_gap'])}")
    print(f"  the agent's answer already given: {fmt(report['span_gap_answer_kept'])}")
    print(f"  the agent's answer pending: {fmt(report['span_gap_answer_pending'])}")
    print(f"  added to the turn gap, answer given: {fmt(report['added_to_turn_gap_answer_kept'])}")
    print(f"handovers with the agent's answer pending {report['handovers_with_answer_pending']} "
          f"(unknown {report['handovers_pending_unknown']}); handed over right after the caller's "
          f"turn (logs): {report['handovers_right_after_caller_turn']}")
    print(f"agent turn to turn within a stream: {fmt(report['turn_gap_without_handover'])}")
    print(f"stream gap (Handover.stream_gap_s): {fmt(report['stream_gap'])}")
    print(f"old stream closed to the new WebSocket open: {fmt(report['open_gap'])}")
    for key, value in report["steps_from_logs"].items():
        print(f"  {key}: {fmt(value)}")
    print(f"SettingsApplied after the Deepgram open, resumed sessions (metrics): "
          f"{report.get('settings_applied')}")
    print(f"emulator sessions {report['emulator_sessions']} (greeted {report['greeted_sessions']}; "
          f"resumed with the caller's last turn unanswered {report['resumed_with_caller_turn_unanswered']}); "
          f"closes {report['emulator_closes']}")
    print(f"log codes {report['log_codes']}")
    print(f"simulator send lateness, worst per stream: {fmt(report['send_lateness_worst_per_stream'])}; "
          f"p99 per stream: {fmt(report['send_lateness_p99_per_stream'])}; "
          f"this process used {report['bench_process_cpu_percent']} % of a core")
    for step in report["steps"]:
        print(f"  {step}")
    print(f"load average at the start {report['loadavg_start']}, at the end {report['loadavg_end']}")


@defer.inlineCallbacks
def bench(reactor: Any, args: argparse.Namespace, test: Cleanups) -> Any:
    deploy.DRAIN_S = args.drain_deadline  # Deployment writes it into the gateways' config
    emulator = yield start_emulator(test, speed=1.0)
    # The conversation lines say what was pending when each call was handed over.
    config = "log_conversation = true\n" + store_config(test, args.store)
    dep = deploy.Deployment(cast(Any, test), emulator, processes=2, extra_config=config,
                            env={"TWILIO_AUTH_TOKEN": AUTH_TOKEN, "GATEWAY_PUBLIC_URL": PUBLIC})
    yield dep.start()
    proxy, listen_port = yield start_haproxy(test, dep)
    print(f"gateways on {dep.ports}, HAProxy on {listen_port}, logs in {dep.log_dir}", flush=True)

    audio = caller_clip(args.turns)
    calls = [TwilioVoiceCall(reactor, f"http://127.0.0.1:{listen_port}", PUBLIC, audio,
                             auth_token=AUTH_TOKEN, realtime=True, wait_s=1.0)
             for _ in range(args.calls)]
    began, cpu = reactor.seconds(), os.times()
    load_start = os.getloadavg()
    running = []

    def gave_up(failure: Any, i: int) -> None:
        print(f"call {i}: {failure.getErrorMessage()}", flush=True)  # counted as lost

    for i, call in enumerate(calls):
        running.append(call.run().addTimeout(len(audio.data) / 8000 + 120, reactor).addErrback(gave_up, i))
        yield task.deferLater(reactor, args.ramp_s / args.calls, lambda: None)
    done = defer.gatherResults(running)
    # Every call talking (its greeting heard, or already over) before the restart begins.
    def greeted(call: TwilioVoiceCall, running: defer.Deferred) -> bool:
        return running.called or bool(call.current and call.current.result.first_agent_audio_s)

    yield deploy.wait_for(lambda: all(greeted(c, d) for c, d in zip(calls, running)), 60,
                          "every call's greeting")
    spread = yield dep.calls_per_port()
    steps: list[dict[str, Any]] = [{"live_calls": spread}]
    print(f"live calls per process {spread}", flush=True)
    yield task.deferLater(reactor, args.settle_s, lambda: None)
    a, b = dep.ports
    for port in (a, b):
        step = yield stop(dep, port, args.drain_deadline)
        steps.append({"stop": step})
        print(f"stop: {step}", flush=True)
        step = yield start(dep, port, proxy, args.proxy_wait)
        steps.append({"start": step})
        print(f"start: {step}", flush=True)
    results = yield done
    # The process that took the second wave has served only resumed sessions since its restart.
    settings_applied = yield settings_applied_mean(reactor, a)
    wall_s = reactor.seconds() - began
    cpu_s = sum(os.times()[:2]) - sum(cpu[:2])
    yield defer.DeferredList([s.closed for s in emulator.sessions])
    report = summarise(results, dep, emulator, steps, args, wall_s, cpu_s)
    report["loadavg_start"] = load_start
    report["settings_applied"] = settings_applied
    with open(os.path.join(dep.log_dir, "haproxy.log"), "wb") as f:
        f.write(proxy.output)
    if args.logs:
        shutil.copytree(dep.log_dir, args.logs, dirs_exist_ok=True)
    return report


@defer.inlineCallbacks
def main(reactor: Any, argv: list[str]) -> Any:
    parser = argparse.ArgumentParser(prog="python -m tests.system.bench_handover",
                                     description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--store", choices=("sqlite", "redis"), default="sqlite")
    parser.add_argument("--turns", type=int, default=7, help="caller turns per call (~10.3 s each)")
    parser.add_argument("--ramp-s", type=float, default=10.5,
                        help="calls start spread over this (one caller turn: the restart finds the "
                             "calls at every point of their conversation)")
    parser.add_argument("--settle-s", type=float, default=2.0, help="talking time before the restart")
    parser.add_argument("--drain-deadline", type=float, default=30.0,
                        help="[gateway] drain_deadline_s (30 s as in deploy/gateway.example.toml)")
    parser.add_argument("--no-proxy-wait", dest="proxy_wait", action="store_false",
                        help="stop the second process once the first answers /readyz 200, without "
                             "waiting for HAProxy's check to mark it UP")
    parser.add_argument("--json", help="write the report here")
    parser.add_argument("--logs", help="copy the gateways' and supervisord's logs here")
    args = parser.parse_args(argv)
    test = Cleanups()
    try:
        report = yield bench(reactor, args, test)
    finally:
        yield test.run()
    print_report(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2, default=str)
    stops_ok = all(s["stop"]["before_deadline"] for s in report["steps"] if "stop" in s)
    ok = stops_ok and not report["lost"] and not report["went_on_after_another_close"]
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    task.react(main, [sys.argv[1:]])
