"""
Words for a simulated call: one line per event as it happens, and a summary at the end.

`describe_event` turns a recorded event into a line (or ``None`` for events not worth a line,
such as each ``media`` message); `summary_lines` reads a finished `CallResult`.
"""

from __future__ import annotations

from typing import Any

from gateway.simulator.result import CallResult, Stats, close_code_words

__all__ = ["describe_event", "format_event", "summary_lines", "voice_summary_lines", "TWILIO_NO_TEXT"]

#: What a Twilio-mode call says about the conversation: a Media Stream carries audio, marks and
#: clears to Twilio, never text, so the words are only in the gateway's log.
TWILIO_NO_TEXT = ("a Twilio stream carries no text; the gateway logs it with [gateway] "
                  "log_conversation = true (gateway demo shows those lines); --mode client prints it")

_ROLES = {"user": "caller", "assistant": "agent"}

#: Deepgram events forwarded to /client, in words.
_DEEPGRAM_WORDS = {
    "Welcome": "Deepgram session opened (Welcome)",
    "SettingsApplied": "settings applied",
    "UserStartedSpeaking": "caller started speaking (UserStartedSpeaking)",
    "AgentThinking": "agent thinking",
    "AgentStartedSpeaking": "agent started speaking (AgentStartedSpeaking)",
    "AgentAudioDone": "agent audio done (AgentAudioDone)",
    "SpeechStarted": "speech started",
    "UtteranceEnd": "utterance end",
}


def describe_event(kind: str, message: Any) -> str | None:
    """The words for one event, without its timestamp; ``None`` to print nothing."""
    m = message if isinstance(message, dict) else {}
    if kind == "sim.open":
        if m.get("resumed"):
            return f"connected to {m.get('url')} (resume token sent as the hello)"
        return f"connected to {m.get('url')}"
    if kind == "Handover":
        where = m.get("url") or "the same URL"
        return (f"the gateway hands the call over: reconnect to {where} with a resume token "
                f"(valid {m.get('expires_in')} s)")
    if kind == "sim.handover":
        return f"handed over: reconnecting to {m.get('url')}"
    if kind == "sim.reconnect_failed":
        why = f"HTTP {m.get('status')}" if m.get("status") else m.get("why")
        return f"reconnect attempt {m.get('attempt')} failed: {why}"
    if kind == "sim.webhook":
        return f"voice webhook {m.get('url')}: HTTP {m.get('status')}"
    if kind == "sim.stream":
        action = " action" if m.get("action") else ""
        resume = ", carrying a resume token" if m.get("resume") else ""
        return f"stream {m.get('number')}: <Connect{action}><Stream url={m.get('url')}>{resume}"
    if kind == "sim.action":
        answer = m.get("answer")
        said = ("a new <Connect><Stream>" if answer == "stream"
                else "no TwiML" if answer is None else f"TwiML {str(answer)[:120]}")
        return f"the stream ended; Twilio requests the <Connect action> URL: HTTP {m.get('status')}, {said}"
    if kind == "sim.agent_started":
        return "agent speaking"
    if kind == "sim.agent_stopped":
        return "agent stopped speaking"
    if kind == "sim.cleared":
        marks = m.get("marks") or []
        extra = f", {len(marks)} mark(s) returned" if marks else ""
        return f"barge-in: queued agent audio dropped ({m.get('dropped_s', 0.0):.2f} s{extra})"
    if kind == "sim.mark_echoed":
        verb = "echoed" if m.get("sent") else "reached (not echoed)"
        return f"mark {m.get('name')!r} {verb}: {m.get('how')}"
    if kind == "sim.speech_end":
        return "caller's speech ends (last speech frame sent)"
    if kind == "sim.greeting_waited":
        return (f"caller starts speaking ({m.get('why')}; {m.get('after_s', 0.0):.2f} s of silence "
                "sent first)")
    if kind == "sim.answered":
        return "the agent's answer has played out; ending the call"
    if kind == "sim.clip_sent":
        return f"clip sent ({m.get('frames')} frames); silence follows while waiting"
    if kind == "sim.dtmf_sent":
        return f"dtmf {m.get('digit')} sent"
    if kind == "sim.stop_sent":
        return "stop sent"
    if kind == "sim.stop_unanswered":
        return f"no close from the gateway {m.get('after_s')} s after stop; closing ourselves"
    if kind == "sim.hangup":
        return "hanging up (closing the WebSocket)"
    if kind == "sim.closed":
        reason = f" {m.get('reason')!r}" if m.get("reason") else ""
        return (f"closed by the {m.get('by')}: {m.get('code')} ({close_code_words(m.get('code'))})"
                f"{reason}")
    if kind == "mark":
        return f"mark {(m.get('mark') or {}).get('name')!r} received"
    if kind == "clear":
        return None  # the sim.cleared line that follows says what it dropped
    if kind in _DEEPGRAM_WORDS:
        return _DEEPGRAM_WORDS[kind]
    if kind == "Warning":
        return f"warning {m.get('code')}: {m.get('description') or m.get('message')}"
    if kind == "ConversationText":
        role = str(m.get("role"))
        return f"{_ROLES.get(role, role)}: {m.get('content')}"
    if kind == "Results":
        alternatives = (m.get("channel") or {}).get("alternatives") or [{}]
        text = alternatives[0].get("transcript", "") if isinstance(alternatives[0], dict) else ""
        return f"caller: {text}" if m.get("is_final") and text else None
    if kind == "Error":
        return f"error {m.get('code')}: {m.get('message') or m.get('description')}"
    if kind in ("media", "binary"):
        return None
    if kind == "invalid":
        return f"invalid message: {str(message)[:80]}"
    if kind.startswith("sim."):
        return kind[4:]
    return f"{kind} received" if m else kind


def format_event(t_s: float, kind: str, message: Any) -> str | None:
    """``describe_event`` with a timestamp column."""
    words = describe_event(kind, message)
    return None if words is None else f"{t_s:8.3f}  {words}"


def _stats(stats: Stats | None) -> str:
    if stats is None:
        return "n/a"
    return (f"mean {stats.mean_ms:.1f} ms, p50 {stats.p50_ms:.1f} ms, p99 {stats.p99_ms:.1f} ms, "
            f"max {stats.max_ms:.1f} ms over {stats.count}")


def summary_lines(result: CallResult) -> list[str]:
    """A short human summary of a finished call."""
    lines = ["summary:"]
    if result.connect_error is not None or result.handshake_status is not None or not result.opened:
        lines.append(f"  {result.failure()}")
        return lines
    frame_audio_s = len(result.sent_audio) / (8000 if result.mode == "twilio" else 32000)
    lines.append(f"  caller audio sent: {result.frames_sent} frames, {frame_audio_s:.2f} s")
    lines.append(f"  agent audio received: {result.agent_audio_s:.2f} s in {result.media_events} messages")
    if result.mode == "twilio":
        played = sum(1 for _, how in result.marks_echoed if how == "played")
        cleared = len(result.marks_echoed) - played
        lines.append(f"  marks: {len(result.marks_received)} received, {played} echoed as played, "
                     f"{cleared} as cleared")
        lines.append(f"  barge-ins (clear): {result.clears}")
    else:
        lines.append(f"  barge-ins (UserStartedSpeaking): {result.clears}")
        if result.errors:
            lines.append(f"  errors: {', '.join(str(e.get('code')) for e in result.errors)}")
    if result.dtmf_sent:
        lines.append(f"  dtmf sent: {''.join(d for _, d in result.dtmf_sent)}")
    if result.mode == "twilio":
        lines.append(f"  conversation: {TWILIO_NO_TEXT}")
    if result.first_agent_audio_after_speech_s is not None:
        lines.append(f"  latency: first agent audio {result.first_agent_audio_after_speech_s * 1000:.0f} ms "
                     "after the caller's speech ended")
    elif result.speech_end_s is not None:
        lines.append("  latency: no agent audio after the caller's speech ended")
    if result.first_agent_audio_s is not None:
        lines.append(f"  first agent audio at {result.first_agent_audio_s:.3f} s")
    lines.append(f"  frame send lateness: {_stats(result.send_lateness)}")
    lines.append(f"  agent media inter-arrival: {_stats(result.agent_media_gaps)}")
    reason = f" {result.close_reason!r}" if result.close_reason else ""
    lines.append(f"  close: {result.close_code} ({close_code_words(result.close_code)}){reason}, "
                 f"by the {result.closed_by}, {'clean' if result.was_clean else 'not clean'}")
    if result.violation_count:
        lines.append(f"  protocol violations: {result.violation_count}")
        lines.extend(f"    {v}" for v in result.violations[:10])
    lines.extend(_handover_lines(result.handovers))
    lines.append(f"  duration: {result.duration_s:.2f} s")
    return lines


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.0f} ms"


def _handover_lines(handovers: list) -> list[str]:
    lines = []
    for number, h in enumerate(handovers, 1):
        lines.append(f"  handover {number}: new socket {_ms(h.stream_gap_s)} after the close; caller-heard "
                     f"gap {_ms(h.gap_s)} (last agent audio before to first after)")
    return lines


def voice_summary_lines(result: Any) -> list[str]:
    """A short human summary of a whole Twilio call (`gateway.simulator.voice.VoiceCallResult`)."""
    lines = ["summary:", f"  call {result.call_sid}: voice webhook HTTP {result.webhook_status}, "
                         f"{len(result.streams)} stream(s), {result.action_requests} action request(s)"]
    for number, stream in enumerate(result.streams, 1):
        reason = f" {stream.close_reason!r}" if stream.close_reason else ""
        lines.append(f"  stream {number}: {stream.frames_sent} frames sent, {stream.agent_audio_s:.2f} s of "
                     f"agent audio, closed {stream.close_code} ({close_code_words(stream.close_code)}){reason} "
                     f"by the {stream.closed_by}")
    lines.extend(_handover_lines(result.handovers))
    if result.final_twiml:
        lines.append(f"  then: {result.final_twiml[:200]}")
    lines.append(f"  conversation: {TWILIO_NO_TEXT}")
    return lines
