"""
The emulator's knobs, with their defaults and what each one means.

Timings that Deepgram documents take Deepgram's value (NET-0001 after 10 s); the others are
choices, marked as such. ``speed`` scales the agent's audio pacing and thinking pause only;
timeouts are in real seconds.
"""

from __future__ import annotations

import math

import attrs

from gateway.emulator.faults import parse_fault
from gateway.emulator.script import DEFAULT_REPLIES, DEFAULT_SCRIPT

__all__ = ["EmulatorOptions"]


def _positive(instance: object, attribute: attrs.Attribute, value: float) -> None:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0):
        raise ValueError(f"emulator option {attribute.name} must be a number > 0, got {value!r}")


def _non_negative(instance: object, attribute: attrs.Attribute, value: float) -> None:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0):
        raise ValueError(f"emulator option {attribute.name} must be a number >= 0, got {value!r}")


def _lines(value: object) -> tuple[str, ...]:
    lines = (value,) if isinstance(value, str) else tuple(value)  # type: ignore[arg-type]
    if not lines or not all(isinstance(line, str) and line.strip() for line in lines):
        raise ValueError(f"expected a non-empty list of non-empty strings, got {value!r}")
    return lines


def _fault(instance: object, attribute: attrs.Attribute, value: str | None) -> None:
    if value is not None:
        parse_fault(value)


@attrs.frozen(kw_only=True)
class EmulatorOptions:
    """Every emulator option; ``Emulator(reactor, api_key, **options)`` builds one."""

    #: Agent audio pacing and the thinking pause run this many times faster than real time
    #: (``math.inf``: no pacing at all).
    speed: float = attrs.field(default=1.0, validator=_positive)
    #: Agent audio is sent in chunks of this many milliseconds.
    chunk_ms: int = attrs.field(default=60, validator=_positive)
    #: ``/v1/listen``: close 1011 NET-0001 after this long without audio (Deepgram: 10 s).
    net0001_timeout_s: float = attrs.field(default=10.0, validator=_positive)
    #: ``/v1/listen``: False (default, the strict reading) - only audio resets the NET-0001 timer;
    #: True - any text message (KeepAlive included) resets it too, as Deepgram's KeepAlive page says.
    keepalive_counts: bool = False
    #: Voice Agent: Error ``CLIENT_MESSAGE_TIMEOUT`` after this long without a client message.
    #: Deepgram's window is unconfirmed (reports say 15-60 s); 30 s is our choice.
    client_message_timeout_s: float = attrs.field(default=30.0, validator=_positive)
    #: Voice Agent: whether KeepAlive resets that timer (True, its documented purpose).
    agent_keepalive_counts: bool = True
    #: A 20 ms frame at or above this RMS level (dB full scale) is loud.
    speech_threshold_dbfs: float = -40.0
    #: Speech starts after this much consecutive loud audio.
    speech_start_ms: int = attrs.field(default=60, validator=_positive)
    #: Voice Agent: the user's turn ends after this much quiet audio.
    agent_end_of_speech_ms: int = attrs.field(default=600, validator=_positive)
    #: ``/v1/listen``: speech ends after max(``endpointing``, this) ms of quiet audio (an energy
    #: detector needs more than Deepgram's 10 ms default to bridge gaps between words).
    endpointing_floor_ms: int = attrs.field(default=300, validator=_non_negative)
    #: ``/v1/listen``: an interim result every this much audio during speech.
    interim_every_ms: int = attrs.field(default=500, validator=_positive)
    #: ``/v1/listen``: an empty final result after this much audio without speech.
    silence_final_ms: int = attrs.field(default=3000, validator=_positive)
    #: Voice Agent: pause between the user's turn and the agent's answer (scaled by ``speed``).
    think_ms: int = attrs.field(default=300, validator=_non_negative)
    #: Voice Agent: send ``Welcome`` on open (False: wait silently for Settings).
    send_welcome: bool = True
    #: What callers are heard saying, one line per detected utterance, cycling (per session).
    script: tuple[str, ...] = attrs.field(default=DEFAULT_SCRIPT, converter=_lines)
    #: What the agent answers, cycling (per session).
    replies: tuple[str, ...] = attrs.field(default=DEFAULT_REPLIES, converter=_lines)
    #: The fault spec every session gets unless a header, query parameter or queued fault says otherwise.
    fault: str | None = attrs.field(default=None, validator=_fault)
    #: Close with DATA-0000 (listen) or a USER_AUDIO_FORMAT Error (agent) for audio that cannot
    #: be what was declared (see `gateway.emulator.speech.audio_problem`).
    check_audio: bool = True
    #: Voice Agent: issue a FunctionCallRequest when a user turn names a declared function.
    function_calls: bool = True
    #: Voice Agent: send a ``LatencyReport`` (Deepgram's own latency figures) with each agent turn.
    latency_reports: bool = False
    #: The project listed by ``GET /v1/projects``.
    project_id: str = "emulator-project-0000"

    @property
    def pacing_s(self) -> float:
        """Seconds between two agent audio chunks."""
        return 0.0 if math.isinf(self.speed) else self.chunk_ms / 1000 / self.speed

    def scaled_s(self, ms: float) -> float:
        """``ms`` milliseconds of emulated work, in real seconds at this ``speed``."""
        return 0.0 if math.isinf(self.speed) else ms / 1000 / self.speed
