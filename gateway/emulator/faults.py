"""
Faults on cue: a small spec language and its parser.

A spec is one or more faults separated by ``;``::

    SPEC    := FAULT (";" FAULT)*
    FAULT   := KIND [":" ARG (":" ARG)*] ["@" TRIGGER]
    TRIGGER := "on_open" | "after_settings" | "after_ms=" INT | "after_audio_bytes=" INT

Kinds:

``refuse:STATUS[:MESSAGE]``
    Refuse the WebSocket upgrade with HTTP ``STATUS`` (400-599), a ``dg-error`` header and a JSON
    body. Takes no trigger: it happens at the upgrade.
``close[:CODE[:REASON]]``
    Close the WebSocket. ``CODE`` is 1000-4999 (not 1004/1005/1006/1015, which never go on the
    wire) or ``none`` for a Close frame without a status code (Deepgram's close after a fatal
    ``Error``); default 1000. ``REASON`` ``NET-0000``, ``NET-0001`` or ``DATA-0000`` expands to
    Deepgram's sentence; anything else is sent as written (at most 123 UTF-8 bytes).
``drop``
    Abort the TCP connection: no Close frame.
``stall``
    Stop sending anything (replies, audio, timeout closes); what arrives is still recorded.
``slow:MS``
    Delay every message sent from then on by ``MS`` milliseconds, order kept.
``unknown-message[:TYPE]``
    Send one JSON text frame ``{"type": TYPE}`` (default ``EmulatorUnknownMessage``).
``error:CODE[:DESCRIPTION]``
    Send a fatal Voice Agent ``Error`` and close without a status code, as Deepgram does.
``warning:CODE[:DESCRIPTION]``
    Send a non-fatal ``Warning`` (agent and Flux), e.g. ``warning:SLOW_THINK_REQUEST``.
``message:TYPE``
    Send one server message of a type the SDK knows, filled in by the session as Deepgram would:
    ``LatencyReport``, ``InjectionRefused``, ``FunctionCallCancelled`` (cancels the function
    calls still waiting for their response; their late responses are then ignored), ``History``
    (with function calls), ``FrustrationDetected``, ``Warning``...; a type the endpoint does not
    send is logged and skipped.

The trigger says when a session-level fault fires; the default is ``on_open`` (at once, after the
``Welcome`` on the agent). ``after_ms`` counts from the moment the fault is armed (the open, or the
``Settings`` carrying an ``emulator-fault:`` tag); ``after_audio_bytes`` counts audio bytes received
from then on; ``after_settings`` fires right after ``SettingsApplied`` (on ``/v1/listen``, which
has no Settings, at the open). Reasons and messages cannot contain ``;`` or ``@``.

Examples: ``refuse:429``, ``close:1011:NET-0000@after_ms=2000``, ``drop@after_audio_bytes=3200``,
``stall@after_settings``, ``slow:200``, ``unknown-message``, ``error:SERVER_GOING_AWAY``,
``warning:SLOW_THINK_REQUEST@after_settings``, ``message:LatencyReport@after_ms=500``.
"""

from __future__ import annotations

import attrs

from gateway.codecs.deepgram_messages import ENDPOINTS, known_server_types

__all__ = [
    "Fault",
    "Trigger",
    "FaultSpecError",
    "parse_fault",
    "REASONS",
    "KINDS",
    "ON_OPEN",
]

#: Deepgram's close reason sentences, by short name (protocols.md §3.4). The DATA-0000 sentence
#: is composed in Deepgram's style (the real one is not recorded in our notes) and fits in 123 bytes.
REASONS = {
    "NET-0000": "Deepgram did not provide a response message within the timeout window. "
                "See https://dpgr.am/net0000",
    "NET-0001": "Deepgram did not receive audio data or a text message within the timeout window. "
                "See https://dpgr.am/net0001",
    "DATA-0000": "Deepgram could not decode the payload as audio of the declared encoding. "
                 "See https://dpgr.am/data0000",
}

KINDS = ("refuse", "close", "drop", "stall", "slow", "unknown-message", "error", "warning", "message")
_TRIGGERS = ("on_open", "after_settings", "after_ms", "after_audio_bytes")
_NEVER_SENT = (1004, 1005, 1006, 1015)


class FaultSpecError(ValueError):
    """A fault spec that does not parse; ``spec`` is the whole text, ``problem`` what is wrong."""

    def __init__(self, spec: str, problem: str) -> None:
        super().__init__(f"bad emulator fault spec {spec!r}: {problem}")
        self.spec = spec
        self.problem = problem


@attrs.frozen
class Trigger:
    """When a fault fires: ``kind`` is one of on_open, after_settings, after_ms, after_audio_bytes."""

    kind: str = "on_open"
    value: int = 0

    def __str__(self) -> str:
        return self.kind if self.kind in ("on_open", "after_settings") else f"{self.kind}={self.value}"


ON_OPEN = Trigger()


@attrs.frozen
class Fault:
    """One parsed fault. Only the fields of its ``kind`` are set; ``text`` is its source."""

    kind: str
    text: str
    trigger: Trigger = ON_OPEN
    status: int | None = None
    code: int | None = None
    reason: str | None = None
    delay_ms: int | None = None
    message_type: str | None = None
    error_code: str | None = None


def _int(spec: str, what: str, text: str) -> int:
    if not text.isdigit():
        raise FaultSpecError(spec, f"{what} must be a non-negative integer, got {text!r}")
    return int(text)


def _trigger(spec: str, text: str) -> Trigger:
    name, eq, value = text.partition("=")
    if name not in _TRIGGERS:
        raise FaultSpecError(
            spec, f"unknown trigger {name!r}; expected one of {', '.join(_TRIGGERS)}"
        )
    if name in ("on_open", "after_settings"):
        if eq:
            raise FaultSpecError(spec, f"trigger {name!r} takes no value, got {text!r}")
        return Trigger(name)
    if not eq:
        raise FaultSpecError(spec, f"trigger {name!r} needs a value, e.g. {name}=1000")
    return Trigger(name, _int(spec, f"trigger {name}", value))


def _one(spec: str, text: str) -> Fault:
    body, at, trigger_text = text.partition("@")
    body = body.strip()
    kind, _, rest = body.partition(":")
    args = rest.split(":") if rest else []
    if kind not in KINDS:
        raise FaultSpecError(spec, f"unknown fault kind {kind!r}; expected one of {', '.join(KINDS)}")
    trigger = _trigger(spec, trigger_text.strip()) if at else ON_OPEN

    if kind == "refuse":
        if at:
            raise FaultSpecError(spec, "refuse happens at the upgrade and takes no '@' trigger")
        if not args:
            raise FaultSpecError(spec, "refuse needs an HTTP status, e.g. refuse:429")
        status = _int(spec, "refuse status", args[0])
        if not 400 <= status <= 599:
            raise FaultSpecError(spec, f"refuse status must be 400-599, got {status}")
        message = ":".join(args[1:]) or None
        return Fault(kind, text, status=status, reason=message)

    if kind == "close":
        code: int | None = 1000
        if args and args[0] != "none":
            code = _int(spec, "close code", args[0])
            if not 1000 <= code <= 4999 or code in _NEVER_SENT:
                raise FaultSpecError(
                    spec, f"close code must be 1000-4999 and not 1004/1005/1006/1015 "
                    f"(use close:none for a close frame without a code), got {code}"
                )
        elif args:
            code = None
        reason = ":".join(args[1:]) or None
        if reason is not None:
            if code is None:
                raise FaultSpecError(spec, "close:none cannot carry a reason")
            reason = REASONS.get(reason.upper(), reason)
            if len(reason.encode("utf-8")) > 123:
                raise FaultSpecError(spec, f"close reason is {len(reason.encode())} bytes, at most 123")
        return Fault(kind, text, trigger, code=code, reason=reason)

    if kind in ("drop", "stall"):
        if args:
            raise FaultSpecError(spec, f"{kind} takes no arguments, got {rest!r}")
        return Fault(kind, text, trigger)

    if kind == "slow":
        if len(args) != 1:
            raise FaultSpecError(spec, "slow needs one argument, the delay in ms, e.g. slow:200")
        return Fault(kind, text, trigger, delay_ms=_int(spec, "slow delay", args[0]))

    if kind == "unknown-message":
        message_type = ":".join(args) or "EmulatorUnknownMessage"
        return Fault(kind, text, trigger, message_type=message_type)

    if kind == "warning":
        if not args or not args[0]:
            raise FaultSpecError(spec, "warning needs a warning code, e.g. warning:SLOW_THINK_REQUEST")
        description = ":".join(args[1:]) or f"Emulated warning {args[0]}."
        return Fault(kind, text, trigger, error_code=args[0], reason=description)

    if kind == "message":
        known = frozenset().union(*(known_server_types(e) for e in ENDPOINTS))
        if len(args) != 1 or args[0] not in known:
            raise FaultSpecError(spec, f"message needs one server message type, one of {', '.join(sorted(known))}")
        return Fault(kind, text, trigger, message_type=args[0])

    # error
    if not args or not args[0]:
        raise FaultSpecError(spec, "error needs an error code, e.g. error:SERVER_GOING_AWAY")
    description = ":".join(args[1:]) or f"Emulated fatal error {args[0]}."
    return Fault(kind, text, trigger, error_code=args[0], reason=description)


def parse_fault(spec: str) -> tuple[Fault, ...]:
    """Parse a fault spec (see the module docstring); raise `FaultSpecError` naming the problem."""
    if not isinstance(spec, str):
        raise FaultSpecError(repr(spec), f"expected a string, got {type(spec).__name__}")
    parts = [p.strip() for p in spec.split(";")]
    if not spec.strip() or any(not p for p in parts):
        raise FaultSpecError(spec, "empty fault; expected e.g. 'refuse:429' or 'close:1011:NET-0000'")
    return tuple(_one(spec, p) for p in parts)
