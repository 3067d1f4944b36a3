"""
The streaming STT endpoint (``/v1/listen``) as Deepgram behaves on the wire.

Timings come from the audio received (sample counts in the declared format): an energy detector
finds utterances, each takes the next script line, and its words are spread over the detected
span. ``Results`` are interim (``interim_results=true``) every ``interim_every_ms`` of speech and
final when speech ends (``speech_final`` unless ``endpointing=false``) or after
``silence_final_ms`` of silence (empty transcript); ``SpeechStarted`` with ``vad_events=true``;
``UtteranceEnd`` once ``utterance_end_ms`` of audio has passed after the last word. ``Finalize``
flushes (``from_finalize: true``); ``Configure`` (checked by the SDK's types) answers
``ConfigureSuccess``, or ``ConfigureFailure`` for keyterms on a model other than Nova-3 or over
500 tokens, as Deepgram documents; ``CloseStream`` or an empty binary frame flushes, sends
``Metadata`` and closes with 1000. No audio for ``net0001_timeout_s`` closes with 1011 NET-0001;
audio that cannot be what was declared closes with 1008 DATA-0000. Encodings the emulator cannot
decode (flac, opus, ...) are accepted and recorded but produce no transcripts.
"""

from __future__ import annotations

import datetime
import hashlib
import uuid
from typing import Any

from gateway.codecs.deepgram_messages import check_client_message
from gateway.emulator.faults import REASONS
from gateway.emulator.script import Script, words_for
from gateway.emulator.session import AudioTimeoutProtocol
from gateway.emulator.speech import DECODABLE, SpeechDetector, SpeechEnded, SpeechStarted, audio_problem, decode
from gateway.errors import SettingsError

__all__ = ["ListenProtocol"]

_WORDS_PER_S = 2.5


class ListenProtocol(AudioTimeoutProtocol):
    """One ``/v1/listen`` session."""

    _detector: SpeechDetector | None = None

    def opened(self) -> None:
        query = self.session.query
        self._encoding = query.get("encoding")
        self._channels = int(query.get("channels", "1"))
        self._interim = query.get("interim_results") == "true"
        self._vad_events = query.get("vad_events") == "true"
        ue = query.get("utterance_end_ms")
        self._utterance_end_s = int(ue) / 1000 if ue else None
        endpointing = query.get("endpointing", "10")
        self._speech_final = endpointing != "false"
        end_ms = max(int(endpointing) if endpointing.isdigit() else 10, self.options.endpointing_floor_ms)
        model = query.get("model", "nova-3")
        self._model = {"name": f"general-{model}", "version": "2025-01-01.0", "arch": model}
        self._model_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"emulator-model:{model}"))
        self._created = datetime.datetime.now(datetime.timezone.utc)
        self._script = Script(self.options.script)
        if self._encoding in DECODABLE:
            self._detector = SpeechDetector(
                int(query["sample_rate"]),
                threshold_dbfs=self.options.speech_threshold_dbfs,
                start_ms=self.options.speech_start_ms,
                end_ms=end_ms,
            )
        self._segment_start = 0.0
        self._utterance = ""
        self._last_interim = 0.0
        self._last_word_end: float | None = None
        self._restart_timer()

    # --- frames -----------------------------------------------------------------------------------

    def on_text(self, message: Any) -> None:
        if self._finished:
            return
        kind = message.get("type") if isinstance(message, dict) else None
        if self.options.keepalive_counts:
            self._restart_timer()
        if kind == "Finalize":
            self._flush(from_finalize=True)
        elif kind == "CloseStream":
            self._finish()
        elif kind == "Configure":
            self._configure(message)
        # KeepAlive needs no answer; anything else is recorded and ignored.

    def on_binary(self, payload: bytes) -> None:
        if self._finished:
            return
        self._restart_timer()
        if not payload:
            self._finish()  # the legacy end-of-stream signal
            return
        if self.options.check_audio and self._encoding is not None:
            problem = audio_problem(payload, self._encoding, self._channels, self._audio_bytes == len(payload))
            if problem is not None:
                self.log.info("emulator session {request_id}: DATA-0000 ({problem})",
                              request_id=self.session.request_id, problem=problem)
                self._stop_answering()
                self.close_with(1008, REASONS["DATA-0000"])
                return
        detector, encoding = self._detector, self._encoding
        if detector is None or encoding is None:  # a detector only for a decodable encoding
            return
        for event in detector.feed(decode(payload, encoding, self._channels)):
            if isinstance(event, SpeechStarted):
                self._utterance = self._script.next()
                self._last_interim = event.start_s
                self._last_word_end = None
                if self._vad_events:
                    self.send_json({"type": "SpeechStarted", "channel": [0], "timestamp": round(event.start_s, 3)})
            elif isinstance(event, SpeechEnded):
                self._final(event, speech_final=self._speech_final)
        now = detector.now_s
        if detector.in_speech:
            if self._interim and now - self._last_interim >= self.options.interim_every_ms / 1000:
                self._last_interim = now
                start = detector.speech_start_s
                count = max(1, int((now - start) * _WORDS_PER_S))
                words = words_for(self._utterance, start, now, count=count)
                self._send_results(now, words, is_final=False)
        else:
            if (self._utterance_end_s is not None and self._last_word_end is not None
                    and now - self._last_word_end >= self._utterance_end_s):
                self.send_json({"type": "UtteranceEnd", "channel": [0, self._channels],
                                "last_word_end": round(self._last_word_end, 3)})
                self._last_word_end = None
            if now - self._segment_start >= self.options.silence_final_ms / 1000:
                self._send_results(now, [], is_final=True)

    def _configure(self, message: dict[str, Any]) -> None:
        try:
            check_client_message(message, "listen")
        except SettingsError as e:
            return self._configure_failed("CONFIGURE_INTERNAL_ERROR", f"{e.field}: {e.message}")
        keyterms = message.get("keyterms")
        if keyterms is not None:
            if not self._model["arch"].startswith("nova-3"):
                return self._configure_failed("CONFIGURE_KEYTERMS_NOT_SUPPORTED",
                                              f"Keyterms cannot be updated on model {self._model['arch']}.")
            if sum(len(term.split()) for term in keyterms) > 500:
                return self._configure_failed("CONFIGURE_KEYTERM_LIMIT_EXCEEDED",
                                              "The keyterms exceed the 500-token limit.")
        reply: dict[str, Any] = {"type": "ConfigureSuccess", "request_id": self.session.request_id}
        if keyterms is not None:
            reply["keyterms"] = keyterms
        self.send_json(reply)

    def _configure_failed(self, code: str, description: str) -> None:
        self.send_json({"type": "ConfigureFailure", "request_id": self.session.request_id,
                        "code": code, "description": description})

    # --- results ----------------------------------------------------------------------------------

    def _send_results(self, end_s: float, words: list[dict[str, Any]], is_final: bool,
                 speech_final: bool = False, from_finalize: bool = False) -> None:
        start = self._segment_start
        message = {
            "type": "Results",
            "channel_index": [0, self._channels],
            "duration": round(end_s - start, 3),
            "start": round(start, 3),
            "is_final": is_final,
            "speech_final": speech_final,
            "from_finalize": from_finalize,
            "channel": {"alternatives": [{
                "transcript": " ".join(w["punctuated_word"] for w in words),
                "confidence": 0.99 if words else 0.0,
                "words": words,
            }]},
            "metadata": {"request_id": self.session.request_id, "model_info": self._model,
                         "model_uuid": self._model_uuid},
        }
        self.send_json(message)
        if is_final:
            self._segment_start = end_s

    def _final(self, event: SpeechEnded, speech_final: bool, from_finalize: bool = False) -> None:
        words = words_for(self._utterance or self._script.next(), event.start_s, event.end_s)
        self._send_results(event.detected_s, words, is_final=True, speech_final=speech_final,
                      from_finalize=from_finalize)
        self._last_word_end = event.end_s
        self._utterance = ""

    def _flush(self, from_finalize: bool) -> None:
        """Finalize: whatever is pending becomes a final result now."""
        if self._detector is None:
            return
        ended = self._detector.force_end()
        if ended is not None:
            self._final(ended, speech_final=False, from_finalize=from_finalize)
        elif from_finalize or self._detector.now_s > self._segment_start:
            self._send_results(self._detector.now_s, [], is_final=True, from_finalize=from_finalize)

    def _finish(self) -> None:
        """CloseStream: flush, Metadata, then a normal close."""
        self._stop_answering()
        self._flush(from_finalize=False)
        audio = self.session.audio
        self.send_json({
            "type": "Metadata",
            "transaction_key": "deprecated",
            "request_id": self.session.request_id,
            "sha256": hashlib.sha256(audio).hexdigest(),
            "created": self._created.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "duration": round(self._detector.now_s, 3) if self._detector else 0.0,
            "channels": self._channels,
            "models": [self._model_uuid],
            "model_info": {self._model_uuid: self._model},
        })
        self.close_with(1000)
