"""
Deepgram's shapes, judged by Deepgram's own SDK (``deepgram-sdk``): Settings and listen options.

The SDK's pydantic models are generated from Deepgram's API definition, so upgrading the SDK is how
the gateway follows the API; nothing here lists a Deepgram field by hand. The models are lenient
where we must be strict (they allow undeclared keys, coerce ``"8000"`` to ``8000`` and silently
rename legacy keys before sending), so this module walks a document alongside the model and
applies the SDK's types strictly:

- a key the model does not declare, or declares only as a legacy alias the SDK rewrites
  (``agent.messages``, ``language_hint``), is an ``unknown field``;
- a leaf is validated by pydantic in strict mode (no string-to-number coercion);
- a union the SDK tags with a discriminant (``UnionMetadata``: provider ``type``, listen provider
  ``version``) is read by that key, and as its first member when the key is absent: a listen
  provider without ``version`` is a v1 (Nova) provider, as Deepgram reads it, so Flux fields
  there are unknown;
- another union takes the member that fits, reporting the deepest error when none does; as in
  the SDK's own parsing, a member with literal fields (``type: "History"``) fits only a document
  that carries them.

Every refusal is a `SettingsError` naming the dotted field path. `SettingsChecker` proves the template once at start-up and
caches the verdict on each per-call variation, so a call pays only for what its parameters change
(a whole walk of the default Settings takes about 0.1 ms once warm, 1 ms the first time).

``/v1/listen`` and Flux's ``/v2/listen`` take query options named by the SDK's ``connect()``
keywords; their values are mostly typed ``Any`` there, so the few rules Deepgram enforces with an
HTTP 400 (booleans, integers, the language tag) are ours, listed in `_LISTEN_RULES`.
"""

from __future__ import annotations

import collections.abc
import difflib
import functools
import importlib
import inspect
import json
import re
import types
import typing
import warnings
from typing import Any, Collection, Hashable, Mapping, Sequence

import pydantic
from deepgram.agent.v1.types.agent_v1settings import AgentV1Settings
from deepgram.core.unchecked_base_model import UnionMetadata

from gateway.errors import SettingsError

__all__ = [
    "UnknownField",
    "check_document",
    "check_settings",
    "SettingsChecker",
    "listen_parameters",
    "check_listen_options",
    "check_listen_value",
    "listen_literals",
]

_NONE = type(None)
_UNIONS = (typing.Union, types.UnionType)


class UnknownField(SettingsError):
    """A key that Deepgram's types do not declare at that place."""


# --- the strict walk ---------------------------------------------------------------------------


def check_document(value: Any, annotation: Any, path: str) -> None:
    """Raise `SettingsError` naming the first field of ``value`` that ``annotation`` refuses."""
    _check(value, annotation, path)


def check_settings(settings: Mapping[str, Any], path: str = "Settings") -> None:
    """Check a whole ``Settings`` message against the SDK's ``AgentV1Settings``, strictly."""
    _check(settings, AgentV1Settings, path)


def _check(value: Any, ann: Any, path: str) -> None:
    if not _has_model(ann):
        return _check_leaf(value, ann, path)  # with its metadata (Strict, bounds) intact
    discriminant = None
    if typing.get_origin(ann) is typing.Annotated:
        ann, *meta = typing.get_args(ann)
        discriminant = next((m.discriminant for m in meta if isinstance(m, UnionMetadata)), None)
    if isinstance(ann, type) and issubclass(ann, pydantic.BaseModel):
        return _check_model(value, ann, path)
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin in _UNIONS:
        if value is None and _NONE in args:
            return
        members = [m for m in args if m is not _NONE]
        if discriminant is not None:
            return _check_tagged(value, members, discriminant, path)
        return _check_union(value, members, path)
    if origin in (list, collections.abc.Sequence):
        if not isinstance(value, list):
            raise SettingsError(path, f"expected array, got {_kind(value)}")
        for i, item in enumerate(value):
            _check(item, args[0], f"{path}[{i}]")
        return
    if origin in (dict, collections.abc.Mapping):
        if not isinstance(value, dict):
            raise SettingsError(path, f"expected object, got {_kind(value)}")
        for key, item in value.items():
            _check(item, args[1], f"{path}.{key}")
        return
    raise AssertionError(f"{path}: no rule for {ann!r}")  # pragma: no cover - a new SDK construct


def _check_model(value: Any, cls: type[pydantic.BaseModel], path: str) -> None:
    if not isinstance(value, dict):
        raise SettingsError(path, f"expected object, got {_kind(value)}")
    fields = _fields(cls)
    for key in value:
        if key not in fields:
            raise UnknownField(f"{path}.{key}", _unknown("field", key, fields))
    for name, (_, required) in fields.items():
        if required and name not in value:
            raise SettingsError(f"{path}.{name}", "required field missing")
    for key, item in value.items():
        _check(item, fields[key][0], f"{path}.{key}")


def _check_tagged(value: Any, members: list[Any], discriminant: str, path: str) -> None:
    if not isinstance(value, dict):
        raise SettingsError(path, f"expected object, got {_kind(value)}")
    tags = {m.model_fields[discriminant].default: m for m in members}
    if discriminant not in value:
        return _check_model(value, members[0], path)
    tag = value[discriminant]
    member = tags.get(tag) if isinstance(tag, Hashable) else None
    if member is None:
        raise SettingsError(f"{path}.{discriminant}",
                            f"expected one of {', '.join(map(repr, tags))}, got {tag!r:.60}")
    _check_model(value, member, path)


def _check_union(value: Any, members: list[Any], path: str) -> None:
    fitting = [m for m in members if _kind(value) in _kinds(m)]
    if not fitting:
        expected = sorted({k for m in members for k in _kinds(m)})
        raise SettingsError(path, f"expected {' or '.join(expected)}, got {_kind(value)}")
    tagged = [m for m in fitting if _literals(m)]
    if tagged and isinstance(value, dict):
        # The SDK's own rule for such unions (``_literal_fields_match_strict``): a member whose
        # literal fields (``type: "History"``, ``is_dynamic: true``) are not all present and equal
        # is not a candidate.
        fitting = [m for m in fitting if m not in tagged or all(
            name in value and value[name] == want for name, want in _literals(m).items())]
        if not fitting:
            name, want = next((n, w) for n, w in _literals(tagged[0]).items() if value.get(n) != w)
            raise SettingsError(f"{path}.{name}", "required field missing" if name not in value
                                else f"expected {want!r}, got {_shown(value[name])}")
    errors = []
    for member in fitting:
        try:
            return _check(value, member, path)
        except SettingsError as e:
            errors.append(e)
    raise max(errors, key=lambda e: e.field.count(".") + e.field.count("["))


def _check_leaf(value: Any, ann: Any, path: str) -> None:
    try:
        _adapter(ann).validate_python(value, strict=True)
    except pydantic.ValidationError as e:
        errors = e.errors(include_url=False)
        where = "".join(f"[{p}]" if isinstance(p, int) else "" for p in errors[0]["loc"])
        expected = " or ".join(dict.fromkeys(_expected(err) for err in errors))
        raise SettingsError(path + where, f"expected {expected}, got {_shown(errors[0]['input'])}")


@functools.lru_cache(maxsize=None)
def _fields(cls: type[pydantic.BaseModel]) -> dict[str, tuple[Any, bool]]:
    """Wire name -> (annotation with its metadata, required); fields the SDK never sends left out."""
    fields = {}
    for name, info in cls.model_fields.items():
        if info.exclude:
            continue
        ann: Any = info.annotation
        if info.metadata:
            ann = typing.Annotated[(ann, *info.metadata)]
        fields[info.alias or name] = (ann, info.is_required())
    return fields


@functools.lru_cache(maxsize=None)
def _literals(ann: Any) -> dict[str, Any]:
    """A model's fields typed by one literal value (its tags), with that value; {} otherwise."""
    if not (isinstance(ann, type) and issubclass(ann, pydantic.BaseModel)):
        return {}
    return {info.alias or name: typing.get_args(info.annotation)[0]
            for name, info in ann.model_fields.items()
            if typing.get_origin(info.annotation) is typing.Literal and len(typing.get_args(info.annotation)) == 1}


@functools.lru_cache(maxsize=None)
def _adapter(ann: Any) -> pydantic.TypeAdapter:
    return pydantic.TypeAdapter(ann)


@functools.lru_cache(maxsize=None)
def _has_model(ann: Any) -> bool:
    if isinstance(ann, type) and issubclass(ann, pydantic.BaseModel):
        return True
    return any(_has_model(a) for a in typing.get_args(ann) if not isinstance(a, (str, int, float, bool)))


@functools.lru_cache(maxsize=None)
def _kinds(ann: Any) -> frozenset[str]:
    """The JSON kinds an annotation may accept (a coarse filter for union members)."""
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is typing.Annotated:
        return _kinds(args[0])
    if ann is Any:
        return frozenset(_KINDS.values())
    if origin in _UNIONS:
        return frozenset().union(*(_kinds(a) for a in args))
    if origin is typing.Literal:
        return frozenset(_kind(a) for a in args)
    if isinstance(ann, type) and issubclass(ann, pydantic.BaseModel) or origin in (dict, collections.abc.Mapping):
        return frozenset({"object"})
    if origin in (list, collections.abc.Sequence):
        return frozenset({"array"})
    return frozenset({_KINDS.get(ann, "value")}) | ({"integer"} if ann is float else set())


_KINDS = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array",
          dict: "object", _NONE: "null"}
_EXPECTED = {"string_type": "string", "int_type": "integer", "float_type": "number",
             "bool_type": "boolean", "list_type": "array", "dict_type": "object",
             "model_type": "object", "none_required": "null"}


def _unknown(what: str, key: Any, allowed: Collection[str]) -> str:
    near = difflib.get_close_matches(str(key), allowed, n=1)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    return f"unknown {what} (allowed: {', '.join(allowed)}){hint}"


def _kind(value: Any) -> str:
    return _KINDS.get(type(value), type(value).__name__)


def _expected(error: Any) -> str:
    if error["type"] == "literal_error":
        expected = error["ctx"]["expected"]
        return f"one of {expected}" if " or " in expected else expected
    return _EXPECTED.get(error["type"], error["msg"])


def _shown(value: Any) -> str:
    return f"{_kind(value)} {value!r:.60}" if isinstance(value, (str, int, float)) else _kind(value)


# --- per-call verdicts, cached ---------------------------------------------------------------------


class SettingsChecker:
    """
    Verdicts on the per-call variations of a Settings template, cached.

    The template was proved whole at start-up; a call whose overrides and declared functions were
    seen before pays one dict look-up, and one without overrides or functions pays nothing.
    ``limit`` bounds the cache (per-call values come from callers).
    """

    def __init__(self, limit: int = 1024) -> None:
        self._verdicts: dict[Hashable, SettingsError | None] = {}
        self._limit = limit

    def check(self, settings: Mapping[str, Any], overrides: Mapping[str, Any],
              functions: Sequence[Mapping[str, Any]] = ()) -> None:
        """Raise the `SettingsError` of ``settings`` (the template with these changes), if any."""
        if not overrides and not functions:
            return
        key = (tuple(sorted(overrides.items())), json.dumps(functions, sort_keys=True) if functions else "")
        try:
            verdict = self._verdicts[key]
        except KeyError:
            try:
                check_settings(settings)
                verdict = None
            except SettingsError as e:
                verdict = e
            if len(self._verdicts) >= self._limit:
                self._verdicts.clear()
            self._verdicts[key] = verdict
        if verdict is not None:
            raise verdict


# --- /v1/listen and /v2/listen query options -------------------------------------------------------

_LISTEN_CLIENTS = {"v1": "deepgram.listen.v1.client.V1Client", "v2": "deepgram.listen.v2.client.V2Client"}
_NOT_OPTIONS = ("self", "authorization", "request_options")
_LANGUAGE = re.compile(r"^(multi|[a-z]{2,3}(-[A-Za-z0-9]{2,8})*)$")
_INTEGER = re.compile(r"^[0-9]+$")
_NUMBER = re.compile(r"^[0-9]+(\.[0-9]+)?$")

#: What Deepgram refuses with HTTP 400 where the SDK types the option ``Any`` (protocols.md §3.1;
#: ``language=english`` was refused, livekit/agents#3519). Options whose SDK type is the literal
#: pair "true"/"false" are booleans by the SDK's own word and need no entry here.
_LISTEN_RULES: dict[str, tuple[re.Pattern[str], str]] = {
    "language": (_LANGUAGE, "a BCP-47 code such as 'en' or 'en-US' (Deepgram refuses 'english')"),
    "utterance_end_ms": (_INTEGER, "an integer (milliseconds)"),
    "endpointing": (re.compile(r"^([0-9]+|false)$"), "an integer (milliseconds) or false"),
    "channels": (_INTEGER, "an integer"),
    "sample_rate": (_INTEGER, "an integer (Hz)"),
    "eot_timeout_ms": (_INTEGER, "an integer (milliseconds)"),
    "eot_threshold": (_NUMBER, "a number"),
    "eager_eot_threshold": (_NUMBER, "a number"),
}


@functools.lru_cache(maxsize=None)
def listen_parameters(version: str = "v1") -> Mapping[str, tuple[Any, bool]]:
    """The options of ``/{version}/listen``: name -> (the SDK's type, required), from ``connect()``."""
    module, _, name = _LISTEN_CLIENTS[version].rpartition(".")
    # Imported here, since the client modules pull httpx and websockets (agent mode never needs
    # them); only the signature is read, so the deprecated websockets names they import are moot.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        client = getattr(importlib.import_module(module), name)
    signature = inspect.signature(client.connect, eval_str=True)
    return {p.name: (p.annotation, p.default is inspect.Parameter.empty)
            for p in signature.parameters.values() if p.name not in _NOT_OPTIONS}


@functools.lru_cache(maxsize=None)
def listen_literals(name: str, version: str = "v1") -> tuple[Any, ...]:
    """The values the SDK lists for option ``name`` (its type is ``Literal[...]`` or ``Any``)."""
    ann = listen_parameters(version)[name][0]
    members = typing.get_args(ann) if typing.get_origin(ann) in _UNIONS else (ann,)
    return tuple(v for m in members if typing.get_origin(m) is typing.Literal for v in typing.get_args(m))


def check_listen_value(name: str, value: object, version: str = "v1", path: str = "listen") -> None:
    """Check one query-string value (a string, as on the wire) of a known option ``name``."""
    field = f"{path}.{name}"
    if not isinstance(value, str):
        raise SettingsError(field, f"expected a string, got {_kind(value)}")
    if set(listen_literals(name, version)) == {"true", "false"} and value not in ("true", "false"):
        raise SettingsError(field, f"expected true or false, got {value!r:.60}")
    rule = _LISTEN_RULES.get(name)
    if rule is not None and not rule[0].match(value):
        raise SettingsError(field, f"expected {rule[1]}, got {value!r:.60}")


def check_listen_options(options: Mapping[str, str | Sequence[str]], version: str = "v1",
                         path: str = "listen", complete: bool = True) -> None:
    """
    Check ``/{version}/listen`` query options, wire-typed: each value a string, or a list of
    strings sent as repeated parameters (``keyterm``, ``tag``, ``redact``...). Unknown names are
    refused; ``complete`` also requires the options the SDK requires (``model``).
    """
    known = listen_parameters(version)
    for name, value in options.items():
        if name not in known:
            raise UnknownField(f"{path}.{name}", _unknown(f"option for /{version}/listen", name, sorted(known)))
        for item in value if isinstance(value, (list, tuple)) else [value]:
            check_listen_value(name, item, version, path)
    if complete:
        for name, (_, required) in known.items():
            if required and name not in options:
                raise SettingsError(f"{path}.{name}", "required option missing")
