"""
The Voice Agent endpoint (``/v1/agent/converse``) as Deepgram behaves on the wire.

``Welcome``, one validated ``Settings`` and ``SettingsApplied``; then the greeting, and a turn for
every utterance the energy detector finds in the caller's audio: ``UserStartedSpeaking``,
``ConversationText`` (user), ``AgentThinking``, ``AgentStartedSpeaking``, ``ConversationText``
(assistant), the agent clip in the output format paced in real time (scaled by ``speed``), then
``AgentAudioDone``. Speech while the agent talks stops its audio (barge-in). Ordering and schema
violations end the session as Deepgram does: a fatal ``Error``, then a Close with no status code.

Every client message the SDK types is accepted (checked by those types): the ``Update*`` messages
are acknowledged (``PromptUpdated``...), ``InjectAgentMessage`` speaks (plain, or a reply standing
in for Think Live's line when dynamic; ``InjectionRefused`` when the default behaviour meets a
turn in progress), ``ForceEndTurn`` ends the caller's turn now. A turn that names a declared
function asks for it (``FunctionCallRequest``; a server-side one, with an ``endpoint``, is
answered by the emulator's own ``FunctionCallResponse``); its response is recorded in ``History``
with the function call; the caller speaking again first cancels it (``FunctionCallCancelled``),
and a late response is ignored. ``ConversationText`` carries ``conversational_behavior``. With
``latency_reports`` each agent turn is followed by a ``LatencyReport``; ``message:TYPE`` faults
send any of these on cue.

One module of about 400 lines, on purpose: it is one session's state machine (turns, speaking,
pending functions, faults armed by Settings) whose handlers all read and change the same state;
the shared protocol, speech detection, scripts and voice audio are already modules of their own.
"""

from __future__ import annotations

import re
import uuid
from collections import deque
from typing import Any

from gateway.codecs.deepgram_messages import check_client_message
from gateway.codecs.deepgram_types import check_settings
from gateway.codecs.settings_schema import INPUT_ENCODINGS
from gateway.emulator.faults import Fault, FaultSpecError, parse_fault
from gateway.emulator.script import Script
from gateway.emulator.session import EmulatorProtocol
from gateway.emulator.speech import DECODABLE, SpeechDetector, SpeechEnded, SpeechStarted, audio_problem, decode
from gateway.emulator.voice import OUTPUT_ENCODINGS, agent_audio, chunks
from gateway.errors import SettingsError

__all__ = ["AgentProtocol", "DESCRIPTIONS", "FAULT_TAG"]

FAULT_TAG = "emulator-fault:"

#: Error descriptions; the first two are Deepgram's own words (protocols.md §2.2, §2.5).
DESCRIPTIONS = {
    "CLIENT_MESSAGE_TIMEOUT": "We waited too long for a websocket message. Please ensure that "
                              "you're sending binary messages containing user speech.",
    "UNPARSABLE_CLIENT_MESSAGE": "Text message received from client did not match any of the "
                                 "formats we expect.",
    "NON_SETTINGS_MESSAGE_BEFORE_SETTINGS": "The first message must be a Settings message.",
    "SETTINGS_ALREADY_APPLIED": "Settings were already applied to this session; send Update* "
                                "messages to change them.",
    "USER_AUDIO_FORMAT": "The audio received does not match the declared audio.input encoding "
                         "and sample rate.",
}

#: Client messages are checked by the SDK's types (`gateway.codecs.deepgram_messages`); these
#: are acknowledged at once.
_ACKS = {"UpdatePrompt": "PromptUpdated", "UpdateSpeak": "SpeakUpdated",
         "UpdateThink": "ThinkUpdated", "UpdateListen": "ListenUpdated",
         "UpdateThink_Live": "ThinkLiveUpdated"}


class AgentProtocol(EmulatorProtocol):
    """One Voice Agent session."""

    _fatal = False
    _settings: dict[str, Any] | None = None
    _detector: SpeechDetector | None = None
    _audio_in: dict[str, Any] | None = None  # audio.input with Deepgram's defaults, once applied
    _speaking: Any = None  # the pending chunk call while the agent talks, or True between chunks
    _idle: Any = None

    def opened(self) -> None:
        self._users = Script(self.options.script)
        self._replies = Script(self.options.replies)
        self._queue: deque[tuple[str, str]] = deque()
        self._functions: dict[str, tuple[str, str]] = {}  # id -> (name, arguments), awaiting a response
        self._frustration = 0
        self._chunks: list[bytes] = []
        if self.options.send_welcome:
            self.send_json({"type": "Welcome", "request_id": self.session.request_id})
        self._touch()

    # --- the idle timer ---------------------------------------------------------------------------

    def _touch(self) -> None:
        self.cancel_call(self._idle)
        self._idle = self.call_later(self.options.client_message_timeout_s, self._timed_out)

    def _timed_out(self) -> None:
        self._fail("CLIENT_MESSAGE_TIMEOUT")

    def _fail(self, code: str, description: str | None = None) -> None:
        if self._fatal:
            return
        self.cancel_call(self._idle)
        self._stop_speaking()
        self.fatal_error(code, description or DESCRIPTIONS[code])

    # --- frames -----------------------------------------------------------------------------------

    def on_text(self, message: Any) -> None:
        if self._fatal:
            return
        kind = message.get("type") if isinstance(message, dict) else None
        if kind != "KeepAlive" or self.options.agent_keepalive_counts:
            self._touch()
        if not isinstance(kind, str):
            return self._fail("UNPARSABLE_CLIENT_MESSAGE")
        if self._settings is None and kind != "Settings":
            return self._fail("NON_SETTINGS_MESSAGE_BEFORE_SETTINGS")
        if kind == "Settings":
            if self._settings is not None:
                return self._fail("SETTINGS_ALREADY_APPLIED")
            return self._apply(message)
        try:
            check_client_message(message, "agent")
        except SettingsError as e:
            if e.field == "message.type":
                return self._fail("UNPARSABLE_CLIENT_MESSAGE")
            return self._fail("UNPARSABLE_CLIENT_MESSAGE", _parse_error(kind + e.field.removeprefix("message")))
        if kind in _ACKS:
            self.send_json({"type": _ACKS[kind]})
        elif kind == "InjectUserMessage":
            self._stop_speaking()
            self._user_turn(message["content"])
        elif kind == "InjectAgentMessage":
            # A dynamic injection (is_dynamic) has no text: Think Live would write it; a reply stands in.
            dynamic = "message" not in message
            text = self._replies.next() if dynamic else message["message"]
            self._inject_agent(text, message.get("behavior") or "default", "filler" if dynamic else "default")
        elif kind == "ForceEndTurn":
            ended = self._detector.force_end() if self._detector is not None else None
            if ended is not None:
                self._user_turn(self._users.next())
        elif kind == "FunctionCallResponse":
            pending = self._functions.pop(str(message.get("id")), None)
            if pending is not None:
                self._function_history(str(message["id"]), *pending, message["content"], client_side=True)
                self._think(self._replies.next())

    def on_binary(self, payload: bytes) -> None:
        if self._fatal:
            return
        self._touch()
        audio_in = self._audio_in  # applied with the Settings
        if audio_in is None:
            return self._fail("NON_SETTINGS_MESSAGE_BEFORE_SETTINGS")
        if not payload:
            # An empty frame is the legacy end-of-stream signal: end the session normally.
            self._stop_speaking()
            self.cancel_call(self._idle)
            self.close_with(1000)
            return
        if self.options.check_audio:
            problem = audio_problem(payload, audio_in["encoding"], 1, self._audio_bytes == len(payload))
            if problem is not None:
                return self._fail("USER_AUDIO_FORMAT", f"{DESCRIPTIONS['USER_AUDIO_FORMAT']} ({problem})")
        if self._detector is None:
            return
        for event in self._detector.feed(decode(payload, audio_in["encoding"])):
            if isinstance(event, SpeechStarted):
                self._stop_speaking()
                self.send_json({"type": "UserStartedSpeaking"})
                if self._functions:
                    # The caller spoke again: the requests still waiting are no longer wanted.
                    self.send_json(self._cancelled())
            elif isinstance(event, SpeechEnded):
                self._user_turn(self._users.next())

    # --- Settings ---------------------------------------------------------------------------------

    def _apply(self, settings: dict[str, Any]) -> None:
        try:
            check_settings(settings)
        except SettingsError as e:
            field = e.field.removeprefix("Settings.")
            return self._fail("UNPARSABLE_CLIENT_MESSAGE", _parse_error(field))
        problem = _invalid(settings)
        faults: list[Fault] = []
        for tag in settings.get("tags", []):
            if tag.startswith(FAULT_TAG):
                try:
                    parsed = parse_fault(tag[len(FAULT_TAG):])
                except FaultSpecError as e:
                    problem = problem or f"tags: {e}"
                    continue
                if any(f.kind == "refuse" for f in parsed):
                    problem = problem or "tags: a refuse fault applies only to the upgrade"
                faults.extend(parsed)
        if problem is not None:
            return self._fail("INVALID_SETTINGS", f"Invalid Settings: {problem}")
        self._settings = settings
        self.session.settings = settings
        # A conversation carried over (agent.context.messages: a reconnect, or a call taken up
        # after a handover): the script goes on from where it was, as a model given the history
        # would, one reply per user turn.
        context = (settings.get("agent") or {}).get("context") or {}
        turns = sum(1 for m in context.get("messages") or () if isinstance(m, dict) and m.get("role") == "user")
        for _ in range(turns):
            self._users.next()
            self._replies.next()
        audio_in, output = _audio(settings)
        self._audio_in = audio_in
        if audio_in["encoding"] in DECODABLE:
            self._detector = SpeechDetector(
                audio_in["sample_rate"],
                threshold_dbfs=self.options.speech_threshold_dbfs,
                start_ms=self.options.speech_start_ms,
                end_ms=self.options.agent_end_of_speech_ms,
            )
        self._chunks_for = (output["encoding"], output["sample_rate"])
        self.send_json({"type": "SettingsApplied"})
        self.arm_faults(tuple(faults))
        self.settings_applied()
        agent = settings["agent"]
        if isinstance(agent, dict) and agent.get("greeting"):
            self._speak(agent["greeting"])

    # --- turns ------------------------------------------------------------------------------------

    def _history(self, role: str, content: str) -> None:
        if (self._settings or {}).get("flags", {}).get("history", True):
            self.send_json({"type": "History", "role": role, "content": content})

    def _function_history(self, call_id: str, name: str, arguments: str, response: str,
                          client_side: bool) -> None:
        if (self._settings or {}).get("flags", {}).get("history", True):
            self.send_json({"type": "History", "function_calls": [
                {"id": call_id, "name": name, "client_side": client_side, "arguments": arguments,
                 "response": response}]})

    def _cancelled(self) -> dict[str, Any]:
        """``FunctionCallCancelled`` for every request still waiting; their responses are then ignored."""
        functions = [{"id": call_id, "name": name} for call_id, (name, _) in self._functions.items()]
        self._functions.clear()
        return {"type": "FunctionCallCancelled", "functions": functions}

    def _user_turn(self, text: str) -> None:
        self.send_json({"type": "ConversationText", "role": "user", "content": text,
                        "conversational_behavior": "default"})
        self._history("user", text)
        named = self._function_named_in(text)
        if named is not None:
            name, client_side = named
            call_id = f"emulator-fc-{uuid.uuid4().hex[:12]}"
            self.send_json({"type": "AgentThinking", "content": f"I should call {name}."})
            self.send_json({"type": "FunctionCallRequest", "functions": [
                {"id": call_id, "name": name, "arguments": "{}", "client_side": client_side}]})
            if client_side:
                self._functions[call_id] = (name, "{}")
                return
            # A server-side function (it has an endpoint): Deepgram calls it and says what it got.
            content = f"{name} completed."
            self.send_json({"type": "FunctionCallResponse", "id": call_id, "name": name, "content": content})
            self._function_history(call_id, name, "{}", content, client_side=False)
            self._think(self._replies.next())
            return
        self.send_json({"type": "AgentThinking", "content": "Thinking about the answer."})
        self._think(self._replies.next())

    def _think(self, reply: str) -> None:
        self.call_later(self.options.scaled_s(self.options.think_ms), self._speak, reply)

    def _function_named_in(self, text: str) -> tuple[str, bool] | None:
        """The declared function the caller's words name, and whether it runs client-side."""
        if not self.options.function_calls:
            return None
        think = (self._settings or {}).get("agent", {}).get("think", [])
        lowered = re.sub(r"[^a-z0-9]+", " ", text.lower())
        for item in think if isinstance(think, list) else [think]:
            for function in item.get("functions", []):
                name = function["name"]
                if re.sub(r"[^a-z0-9]+", " ", name.lower()).strip() in lowered:
                    return name, "endpoint" not in function
        return None

    def _inject_agent(self, text: str, behavior: str, conversational_behavior: str = "default") -> None:
        busy = self._speaking is not None or (self._detector is not None and self._detector.in_speech)
        if behavior == "interrupt":
            self._stop_speaking()
            self._speak(text, conversational_behavior)
        elif behavior == "queue" or not busy:
            self._speak(text, conversational_behavior)
        else:
            self.send_json(self._refused())

    @staticmethod
    def _refused() -> dict[str, Any]:
        return {"type": "InjectionRefused",
                "message": "The agent or the user is speaking; message not injected."}

    # --- the agent's voice ------------------------------------------------------------------------

    def _speak(self, text: str, conversational_behavior: str = "default") -> None:
        self._queue.append((text, conversational_behavior))
        if self._speaking is None:
            self._next_utterance()

    def _next_utterance(self) -> None:
        if not self._queue or self._fatal:
            self._speaking = None
            return
        text, behavior = self._queue.popleft()
        latency = round(self.options.scaled_s(self.options.think_ms), 3)
        self.send_json({"type": "AgentStartedSpeaking", "total_latency": latency,
                        "tts_latency": round(latency / 3, 3), "ttt_latency": round(2 * latency / 3, 3)})
        if self.options.latency_reports:
            self.send_json(self._latency_report())
        self.send_json({"type": "ConversationText", "role": "assistant", "content": text,
                        "conversational_behavior": behavior})
        self._history("assistant", text)
        encoding, rate = self._chunks_for
        self._chunks = chunks(agent_audio(encoding, rate), encoding, rate, self.options.chunk_ms)
        self._speaking = True
        self._speech_t0 = self.factory.emulator.reactor.seconds()
        self._sent = 0
        self._send_chunks()

    def _send_chunks(self) -> None:
        pacing = self.options.pacing_s
        now = self.factory.emulator.reactor.seconds()
        while self._chunks:
            due = self._speech_t0 + self._sent * pacing
            if due > now:
                self._speaking = self.call_later(due - now, self._send_chunks)
                return
            self.send_audio(self._chunks.pop(0))
            self._sent += 1
        self.send_json({"type": "AgentAudioDone"})
        self._speaking = None
        self._next_utterance()

    def _latency_report(self) -> dict[str, Any]:
        """Deepgram's own latency figures for the turn (seconds), from the emulated thinking pause."""
        think = max(self.options.scaled_s(self.options.think_ms), 0.001)
        return {"type": "LatencyReport", "stt_latency": 0.05, "ttt_token_latency": round(think / 2, 3),
                "ttt_text_latency": round(2 * think / 3, 3), "tts_latency": round(think / 3, 3),
                "total_latency": round(think + 0.05, 3)}

    def canned_message(self, kind: str) -> dict[str, Any] | None:
        """What a ``message:TYPE`` fault sends on the Voice Agent."""
        if kind == "LatencyReport":
            return self._latency_report()
        if kind == "InjectionRefused":
            return self._refused()
        if kind == "FunctionCallCancelled":
            return self._cancelled()
        if kind == "History":
            return {"type": "History", "function_calls": [
                {"id": f"emulator-fc-{uuid.uuid4().hex[:12]}", "name": "emulator_lookup",
                 "client_side": False, "arguments": "{}", "response": "emulator_lookup completed."}]}
        if kind == "FrustrationDetected":
            self._frustration += 1
            return {"type": "FrustrationDetected", "count": self._frustration, "escalated": False}
        if kind in _ACKS.values() or kind in ("UserStartedSpeaking", "AgentAudioDone", "SettingsApplied"):
            return {"type": kind}
        if kind == "Warning":
            return self.warning_message("SLOW_THINK_REQUEST", "The think provider is slow to answer.")
        return None

    def _stop_speaking(self) -> None:
        """Barge-in: drop the rest of the agent's audio and anything queued."""
        if self._speaking is not None:
            if self._speaking is not True:
                self.cancel_call(self._speaking)
            self._speaking = None
        self._chunks = []
        self._queue.clear()


def _parse_error(field: str) -> str:
    return f"Error parsing client message. Check the {field} field against the API spec."


#: What Deepgram assumes for an ``audio`` side, or a field of it, that Settings leaves out (the SDK's
#: documentation of ``AgentV1SettingsAudio``: linear16 at 24000 Hz).
AUDIO_DEFAULTS = {"encoding": "linear16", "sample_rate": 24000}


def _audio(settings: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The input and output audio of valid ``settings``, with Deepgram's defaults filled in."""
    audio = settings["audio"]
    return tuple(dict(AUDIO_DEFAULTS, **{k: v for k, v in (audio.get(side) or {}).items() if v is not None})
                 for side in ("input", "output"))  # type: ignore[return-value]


def _invalid(settings: dict[str, Any]) -> str | None:
    """What makes schema-valid ``settings`` unusable, or None (INVALID_SETTINGS)."""
    audio_in, output = _audio(settings)
    for side, audio in (("input", audio_in), ("output", output)):
        rate = audio["sample_rate"]
        if not 8000 <= rate <= 48000:
            return f"audio.{side}.sample_rate {rate} is outside 8000-48000"
    if audio_in["encoding"] not in INPUT_ENCODINGS:
        return (f"audio.input.encoding {audio_in['encoding']!r} is not an encoding Deepgram lists; "
                f"use one of {', '.join(INPUT_ENCODINGS)}")
    if output["encoding"] not in OUTPUT_ENCODINGS:
        return (f"audio.output.encoding {output['encoding']!r} is not produced by the "
                f"emulator; use one of {', '.join(OUTPUT_ENCODINGS)}")
    if isinstance(settings["agent"], str):
        return "agent: stored agent configurations (agent ids) are not available on the emulator"
    return None
