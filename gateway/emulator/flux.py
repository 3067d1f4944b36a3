"""
Flux, Deepgram's turn-taking speech-to-text (``/v2/listen``), as it behaves on the wire.

``Connected`` first; then ``TurnInfo`` messages timed from the audio received (sample counts in
the declared format), following Flux's state machine: ``StartOfTurn`` when the energy detector
hears speech, ``Update`` every ``interim_every_ms`` of audio while the turn goes on, and the end
of the turn after ``agent_end_of_speech_ms`` of quiet (``EndOfTurn``, ``trigger: model``). With
``eager_eot_threshold`` set, ``EagerEndOfTurn`` comes first, after half that quiet, and speech
resuming before the end gives ``TurnResumed`` (same turn, same index). With ``eot_threshold=1``
(native detection off) only ``eot_timeout_ms`` of quiet ends a turn (``trigger: timeout``);
``ForceEndTurn`` ends it at once (``trigger: manual``). Each turn takes the next script line; its
words are spread over the detected speech. Every message carries ``sequence_id`` (0, 1, 2...).

``Configure`` (checked by the SDK's types; thresholds in Flux's ranges) answers
``ConfigureSuccess`` with the thresholds and keyterms now in effect, or ``ConfigureFailure``.
``CloseStream`` (or an empty binary frame) ends the turn in progress and closes without a status
code, as Flux does (protocols.md §3.4). A message Flux does not take (``KeepAlive`` is not a Flux
message) is a fatal ``Error`` and the same close. No audio for ``net0001_timeout_s`` closes with
1011 NET-0001 and audio that cannot be what was declared with 1008 DATA-0000, as on
``/v1/listen`` (Flux's own timeout is not documented; the emulator's choice).
"""

from __future__ import annotations

from typing import Any

from gateway.codecs.deepgram_messages import check_client_message
from gateway.emulator.faults import REASONS
from gateway.emulator.script import Script, words_for
from gateway.emulator.session import AudioTimeoutProtocol
from gateway.emulator.speech import DECODABLE, SpeechDetector, SpeechEnded, SpeechStarted, audio_problem, decode
from gateway.errors import SettingsError

__all__ = ["FluxProtocol", "THRESHOLD_RANGES"]

_WORDS_PER_S = 2.5

#: Flux's documented ranges: eot_threshold 0.5-1.0, eager_eot_threshold 0.3-0.9, eot_timeout_ms
#: a whole number of milliseconds (the SDK types these ``Any``; Deepgram refuses others).
THRESHOLD_RANGES = {"eot_threshold": (0.5, 1.0), "eager_eot_threshold": (0.3, 0.9),
                    "eot_timeout_ms": (0, 60_000)}


def threshold_problem(name: str, value: Any) -> str | None:
    """Why ``value`` is not a valid Flux ``name`` threshold, or None."""
    lo, hi = THRESHOLD_RANGES[name]
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return f"{name} must be a number, got {value!r:.40}"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        return f"{name} must be a number from {lo:g} to {hi:g}, got {value!r:.40}"
    if name == "eot_timeout_ms" and value != int(value):
        return f"{name} must be a whole number of milliseconds, got {value!r:.40}"
    return None


def _flux_words(text: str, start_s: float, end_s: float, count: int | None = None) -> list[dict[str, Any]]:
    """Flux's ``words``: punctuated and cased, with confidence and times."""
    return [{"word": w["punctuated_word"], "confidence": w["confidence"], "start": w["start"], "end": w["end"]}
            for w in words_for(text, start_s, end_s, count=count)]


class FluxProtocol(AudioTimeoutProtocol):
    """One ``/v2/listen`` session."""

    _detector: SpeechDetector | None = None
    _sequence = 0

    def opened(self) -> None:
        query = self.session.query
        self._encoding = query.get("encoding")
        self._thresholds: dict[str, Any] = {
            "eot_threshold": float(query.get("eot_threshold", "0.7")),
            "eager_eot_threshold": float(query["eager_eot_threshold"]) if "eager_eot_threshold" in query else None,
            "eot_timeout_ms": int(query.get("eot_timeout_ms", "5000")),
        }
        self._keyterms: list[str] = list(self.http_request_params.get("keyterm", []))
        self._script = Script(self.options.script)
        if self._encoding in DECODABLE:
            self._detector = SpeechDetector(
                int(query["sample_rate"]),
                threshold_dbfs=self.options.speech_threshold_dbfs,
                start_ms=self.options.speech_start_ms,
                end_ms=self._quiet_ms(),
            )
        self._turn_index = 0
        self._in_turn = False
        self._awaiting_end_since: float | None = None  # audio time speech last ended in this turn
        self._eager_sent = False
        self._turn_start = 0.0
        self._utterance = ""
        self._last_update = 0.0
        self.send_json({"type": "Connected", "request_id": self.session.request_id})
        self._restart_timer()

    # --- the wire --------------------------------------------------------------------------------

    def send_json(self, message: dict[str, Any]) -> None:
        """Every Flux message is numbered: ``sequence_id`` counts from 0 across all types."""
        super().send_json({**message, "sequence_id": self._sequence})
        self._sequence += 1

    def warning_message(self, code: str, description: str) -> dict[str, Any]:
        return {"type": "Warning", "request_id": self.session.request_id, "code": code,
                "description": description}

    def fatal_error(self, code: str, description: str) -> None:
        """Flux's ``Error`` (``FatalError`` in the SDK), then a close without a status code."""
        self.log.info("emulator session {request_id}: fatal {code}",
                      request_id=self.session.request_id, code=code)
        self._stop_answering()
        self.send_json({"type": "Error", "code": code, "description": description})
        self.close_with(None)

    def canned_message(self, kind: str) -> dict[str, Any] | None:
        if kind == "Warning":
            return self.warning_message("EMULATED_WARNING", "An emulated Flux warning.")
        if kind == "ConfigureSuccess":
            return self._configured()
        return None

    # --- frames ----------------------------------------------------------------------------------

    def on_text(self, message: Any) -> None:
        if self._finished:
            return
        try:
            check_client_message(message, "flux")
        except SettingsError as e:
            if e.field == "message.type":
                return self.fatal_error("UNPARSABLE_CLIENT_MESSAGE",
                                        "Text message received from client did not match any of "
                                        "the formats we expect.")
            if message.get("type") == "Configure":
                return self._configure_failed(f"{e.field}: {e.message}")
            return self.fatal_error("UNPARSABLE_CLIENT_MESSAGE", f"Error parsing client message: {e.field}.")
        kind = message["type"]
        if kind == "CloseStream":
            self._finish()
        elif kind == "ForceEndTurn":
            if self._in_turn:
                self._end_turn("manual")
        elif kind == "Configure":
            self._configure(message)

    def on_binary(self, payload: bytes) -> None:
        if self._finished:
            return
        self._restart_timer()
        if not payload:
            self._finish()
            return
        if self.options.check_audio and self._encoding is not None:
            problem = audio_problem(payload, self._encoding, 1, self._audio_bytes == len(payload))
            if problem is not None:
                self.log.info("emulator session {request_id}: DATA-0000 ({problem})",
                              request_id=self.session.request_id, problem=problem)
                self._stop_answering()
                self.close_with(1008, REASONS["DATA-0000"])
                return
        detector, encoding = self._detector, self._encoding
        if detector is None or encoding is None:  # a detector only for a decodable encoding
            return
        for event in detector.feed(decode(payload, encoding)):
            if isinstance(event, SpeechStarted):
                self._speech_started(event.start_s)
            elif isinstance(event, SpeechEnded):
                self._speech_ended(event)
        now = detector.now_s
        if self._in_turn and detector.in_speech:
            if now - self._last_update >= self.options.interim_every_ms / 1000:
                self._last_update = now
                self._turn_info("Update", now, self._partial(now), confidence=0.1)
        elif self._in_turn and self._awaiting_end_since is not None:
            quiet_s = now - self._awaiting_end_since
            if self._thresholds["eot_threshold"] >= 1.0:
                if quiet_s >= self._thresholds["eot_timeout_ms"] / 1000:
                    self._end_turn("timeout")
            elif quiet_s >= self.options.agent_end_of_speech_ms / 1000:
                self._end_turn("model")

    # --- turns -----------------------------------------------------------------------------------

    def _quiet_ms(self) -> int:
        """How much quiet the detector needs to call speech ended (eager: half the end of turn)."""
        if self._thresholds["eager_eot_threshold"] is not None:
            return max(self.options.agent_end_of_speech_ms // 2, 20)
        return self.options.agent_end_of_speech_ms

    def _speech_started(self, start_s: float) -> None:
        if not self._in_turn:
            self._in_turn = True
            self._turn_start = start_s
            self._utterance = self._script.next()
            self._last_update = start_s
            self._eager_sent = False
            self._awaiting_end_since = None
            self._turn_info("StartOfTurn", start_s, _flux_words(self._utterance, start_s, start_s + 0.4, 1),
                            confidence=0.0)
        elif self._awaiting_end_since is not None:
            self._awaiting_end_since = None
            if self._eager_sent:
                self._eager_sent = False
                now = self._detector.now_s if self._detector else start_s
                self._turn_info("TurnResumed", now, self._partial(now), confidence=0.2)

    def _speech_ended(self, event: SpeechEnded) -> None:
        if not self._in_turn:
            return
        self._awaiting_end_since = event.end_s
        if self._thresholds["eager_eot_threshold"] is not None and self._thresholds["eot_threshold"] < 1.0:
            self._eager_sent = True
            self._turn_info("EagerEndOfTurn", event.detected_s, self._words(event.end_s),
                            confidence=float(self._thresholds["eager_eot_threshold"]))

    def _words(self, end_s: float) -> list[dict[str, Any]]:
        return _flux_words(self._utterance, self._turn_start, max(end_s, self._turn_start + 0.1))

    def _partial(self, now: float) -> list[dict[str, Any]]:
        count = max(1, int((now - self._turn_start) * _WORDS_PER_S))
        return _flux_words(self._utterance, self._turn_start, now, count)

    def _end_turn(self, trigger: str) -> None:
        detector = self._detector
        now = detector.now_s if detector is not None else self._turn_start
        if detector is not None and detector.in_speech:
            ended = detector.force_end()
            end_s = ended.end_s if ended is not None else now
        else:
            end_s = self._awaiting_end_since if self._awaiting_end_since is not None else now
        self._turn_info("EndOfTurn", now, self._words(end_s), confidence=0.9 if trigger == "model" else 0.5,
                        trigger=trigger)
        self._in_turn = False
        self._awaiting_end_since = None
        self._eager_sent = False
        self._turn_index += 1

    def _turn_info(self, event: str, window_end_s: float, words: list[dict[str, Any]], confidence: float,
                   trigger: str | None = None) -> None:
        message: dict[str, Any] = {
            "type": "TurnInfo",
            "request_id": self.session.request_id,
            "event": event,
            "turn_index": self._turn_index,
            "audio_window_start": round(self._turn_start, 3),
            "audio_window_end": round(max(window_end_s, self._turn_start), 3),
            "transcript": " ".join(w["word"] for w in words),
            "words": words,
            "end_of_turn_confidence": round(confidence, 3),
        }
        if trigger is not None:
            message["trigger"] = trigger
        self.send_json(message)

    # --- Configure and the end -------------------------------------------------------------------

    def _configure(self, message: dict[str, Any]) -> None:
        thresholds = dict(message.get("thresholds") or {})
        for name, value in thresholds.items():
            if value is None:
                continue
            problem = threshold_problem(name, value)
            if problem is not None:
                return self._configure_failed(problem)
        for name, value in thresholds.items():
            if value is not None:
                self._thresholds[name] = value
        if message.get("keyterms") is not None:
            keyterms = message["keyterms"]
            self._keyterms = [keyterms] if isinstance(keyterms, str) else list(keyterms)
        if self._detector is not None:
            self._detector.end_ms = self._quiet_ms()
        self.send_json(self._configured())

    def _configured(self) -> dict[str, Any]:
        return {"type": "ConfigureSuccess", "request_id": self.session.request_id,
                "thresholds": {k: v for k, v in self._thresholds.items() if v is not None},
                "keyterms": list(self._keyterms)}

    def _configure_failed(self, description: str) -> None:
        self.send_json({"type": "ConfigureFailure", "request_id": self.session.request_id,
                        "code": "INVALID_CONFIGURE", "description": description})

    def _finish(self) -> None:
        """CloseStream: the turn in progress ends, then a close without a status code."""
        if self._in_turn:
            self._end_turn("model")
        self._stop_answering()
        self.close_with(None)
