"""
The Voice Agent ``Settings`` schema, as data, and a validator that names the field.

Written from Deepgram's published AsyncAPI description (protocols.md §2.3). It checks structure,
types, required fields and unknown keys; model and provider names are not enumerated (they change
often, and Deepgram is the judge of those), but provider objects are type-checked for the fields
they share. The audio section must use raw encodings and ``container: none`` (Twilio plays
header bytes as noise).
"""

from __future__ import annotations

from typing import Any, Mapping

from gateway.errors import SettingsError

__all__ = ["validate_settings", "INPUT_ENCODINGS", "OUTPUT_ENCODINGS"]

INPUT_ENCODINGS = ("linear16", "linear32", "flac", "alaw", "mulaw", "amr-nb", "amr-wb", "opus",
                   "ogg-opus", "speex", "g729")
OUTPUT_ENCODINGS = ("linear16", "mulaw", "alaw", "mp3", "opus", "flac", "aac")


class _Obj:
    """An object with known ``fields``; ``required`` ones; ``open``: other keys allowed."""

    def __init__(self, fields: Mapping[str, Any], required: tuple[str, ...] = (), open: bool = False):
        self.fields = fields
        self.required = required
        self.open = open


class _List:
    def __init__(self, item: Any):
        self.item = item


class _OneOf:
    def __init__(self, *choices: Any):
        self.choices = choices


class _Enum:
    def __init__(self, *values: Any):
        self.values = values


STR, INT, NUM, BOOL, ANY_OBJ = "string", "integer", "number", "boolean", "object"

_ENDPOINT = _Obj({"url": STR, "method": STR, "headers": ANY_OBJ}, required=("url",))
_PROVIDER = _Obj({"type": STR, "version": STR, "model": STR, "language": STR, "temperature": NUM,
                  "keyterms": _List(STR), "smart_format": BOOL, "language_hints": _List(STR),
                  "eot_threshold": NUM, "eager_eot_threshold": NUM, "eot_timeout_ms": INT,
                  "speed": NUM, "voice": STR}, required=("type",), open=True)
_FUNCTION = _Obj({"name": STR, "description": STR, "parameters": ANY_OBJ, "endpoint": _ENDPOINT},
                 required=("name", "description", "parameters"))
_THINK = _Obj({"provider": _PROVIDER, "endpoint": _ENDPOINT, "functions": _List(_FUNCTION),
               "prompt": STR, "context_length": _OneOf(_Enum("max"), INT)}, required=("provider",))
_SPEAK = _Obj({"provider": _PROVIDER, "endpoint": _ENDPOINT}, required=("provider",))
_HISTORY = _Obj({"type": _Enum("History"), "role": _Enum("user", "assistant"), "content": STR,
                 "function_calls": _List(ANY_OBJ)}, required=("type",))
_AGENT = _Obj({
    "language": STR,
    "context": _Obj({"messages": _List(_HISTORY)}),
    "listen": _Obj({"provider": _PROVIDER}, required=("provider",)),
    "think": _OneOf(_THINK, _List(_THINK)),
    "speak": _OneOf(_SPEAK, _List(_SPEAK)),
    "greeting": STR,
}, required=("listen", "think", "speak"))
_AUDIO = _Obj({
    "input": _Obj({"encoding": _Enum(*INPUT_ENCODINGS), "sample_rate": INT},
                  required=("encoding", "sample_rate")),
    "output": _Obj({"encoding": _Enum(*OUTPUT_ENCODINGS), "sample_rate": INT, "bitrate": INT,
                    "container": _Enum("none")}, required=("encoding", "sample_rate")),
}, required=("input", "output"))
SETTINGS = _Obj({
    "type": _Enum("Settings"),
    "tags": _List(STR),
    "experimental": BOOL,
    "flags": _Obj({"history": BOOL}),
    "mip_opt_out": BOOL,
    "audio": _AUDIO,
    "agent": _OneOf(_AGENT, STR),
}, required=("type", "audio", "agent"))

_PY = {STR: str, INT: int, NUM: (int, float), BOOL: bool, ANY_OBJ: dict}


def _type_name(value: Any) -> str:
    return {str: STR, int: INT, float: NUM, bool: BOOL, list: "array", dict: ANY_OBJ,
            type(None): "null"}.get(type(value), type(value).__name__)


def _check(value: Any, spec: Any, path: str) -> None:
    if isinstance(spec, str):
        expected = _PY[spec]
        if isinstance(value, bool) and spec != BOOL or not isinstance(value, expected):
            raise SettingsError(path, f"expected {spec}, got {_type_name(value)}")
    elif isinstance(spec, _Enum):
        if value not in spec.values:
            raise SettingsError(path, f"expected one of {', '.join(map(repr, spec.values))}, got {value!r:.60}")
    elif isinstance(spec, _List):
        if not isinstance(value, list):
            raise SettingsError(path, f"expected array, got {_type_name(value)}")
        for i, item in enumerate(value):
            _check(item, spec.item, f"{path}[{i}]")
    elif isinstance(spec, _OneOf):
        errors = []
        for choice in spec.choices:
            try:
                _check(value, choice, path)
                return
            except SettingsError as e:
                errors.append(e)
        # Report the error of the choice that got furthest (the deepest field).
        raise max(errors, key=lambda e: len(e.field))
    elif isinstance(spec, _Obj):
        if not isinstance(value, dict):
            raise SettingsError(path, f"expected object, got {_type_name(value)}")
        for key in spec.required:
            if key not in value:
                raise SettingsError(f"{path}.{key}", "required field missing")
        for key, item in value.items():
            sub = spec.fields.get(key)
            if sub is None:
                if spec.open:
                    continue
                raise SettingsError(
                    f"{path}.{key}", f"unknown field (allowed: {', '.join(sorted(spec.fields))})"
                )
            _check(item, sub, f"{path}.{key}")
    else:  # pragma: no cover - a bug in the table
        raise AssertionError(spec)


def validate_settings(settings: Mapping[str, Any], path: str = "Settings") -> None:
    """Raise `SettingsError` naming the first field of ``settings`` that breaks the schema."""
    _check(dict(settings), SETTINGS, path)
