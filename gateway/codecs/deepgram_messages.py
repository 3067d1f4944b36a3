"""
Deepgram's messages both ways, as the SDK (``deepgram-sdk``) types them, per endpoint.

The client messages of an endpoint are what its SDK socket client can send (one ``send_*`` method
per message, annotated with its pydantic model); the server messages are the members of the
client's response union. Both tables are read from the SDK, so a message type Deepgram adds
arrives with an SDK upgrade. `check_client_message` judges a message with the same strict walk
as Settings (`gateway.codecs.deepgram_types`): an unknown type, an undeclared key or a wrong type
is a `SettingsError` naming the field (``message.behavior``).

Endpoints: ``agent`` (``/v1/agent/converse``), ``listen`` (``/v1/listen``), ``flux``
(``/v2/listen``).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import typing
import warnings
from typing import Any, Mapping

import pydantic

from gateway.codecs.deepgram_types import UnknownField, check_document
from gateway.errors import SettingsError

__all__ = [
    "ENDPOINTS",
    "GATEWAY_OWNED",
    "client_messages",
    "server_messages",
    "check_client_message",
    "app_control_types",
    "client_message",
    "check_server_message",
    "known_server_types",
    "latency_figures",
]

#: Endpoint -> the SDK's socket client module and class.
ENDPOINTS = {
    "agent": ("deepgram.agent.v1.socket_client", "V1SocketClient"),
    "listen": ("deepgram.listen.v1.socket_client", "V1SocketClient"),
    "flux": ("deepgram.listen.v2.socket_client", "V2SocketClient"),
}

#: Client messages the gateway itself sends and an app (a plugin or a ``/client``) may not:
#: the session's configuration, its keep-alives, its end, and the answers to function calls
#: (the gateway dispatches those to the plugins that declare the functions).
GATEWAY_OWNED = frozenset({"Settings", "KeepAlive", "CloseStream", "FunctionCallResponse"})

#: SDK-internal messages that are not part of Deepgram's documented protocol.
_INTERNAL_PREFIX = "__"


def _module(endpoint: str) -> Any:
    name, _ = ENDPOINTS[endpoint]
    # The socket client modules import deprecated websockets names; only their types are read.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return importlib.import_module(name)


def _models(ann: Any) -> list[type[pydantic.BaseModel]]:
    members = typing.get_args(ann) if typing.get_origin(ann) in (typing.Union,) else (ann,)
    return [m for m in members if isinstance(m, type) and issubclass(m, pydantic.BaseModel)]


def _type_tag(model: type[pydantic.BaseModel], method: str) -> str:
    """A message's ``type``: its model's literal default, else the ``send_*`` name in CamelCase."""
    default = model.model_fields["type"].default if "type" in model.model_fields else None
    if isinstance(default, str):
        return default
    return "".join(part.capitalize() for part in method.removeprefix("send_").split("_"))


@functools.lru_cache(maxsize=None)
def client_messages(endpoint: str) -> Mapping[str, tuple[type[pydantic.BaseModel], ...]]:
    """``type`` -> the SDK model(s) of that client message (``InjectAgentMessage`` has two)."""
    module = _module(endpoint)
    client = getattr(module, ENDPOINTS[endpoint][1])
    found: dict[str, tuple[type[pydantic.BaseModel], ...]] = {}
    for name, method in inspect.getmembers(client, inspect.isfunction):
        if not name.startswith("send_"):
            continue
        annotation = typing.get_type_hints(method, vars(module)).get("message")
        for model in _models(annotation):
            tag = _type_tag(model, name)
            if not tag.startswith(_INTERNAL_PREFIX):
                found[tag] = found.get(tag, ()) + (model,)
    return found


@functools.lru_cache(maxsize=None)
def server_messages(endpoint: str) -> Mapping[str, tuple[type[pydantic.BaseModel], ...]]:
    """``type`` -> the SDK model(s) of the messages the server sends (``History`` has two)."""
    module = _module(endpoint)
    union = next(getattr(module, n) for n in dir(module) if n.endswith("SocketClientResponse"))
    found: dict[str, tuple[type[pydantic.BaseModel], ...]] = {}
    for model in _models(union):
        tag = _type_tag(model, "")
        if tag and not tag.startswith(_INTERNAL_PREFIX):
            found[tag] = found.get(tag, ()) + (model,)
    return found


def app_control_types(endpoint: str) -> frozenset[str]:
    """The client messages an app may send through the gateway on ``endpoint``."""
    return frozenset(client_messages(endpoint)) - GATEWAY_OWNED


def check_client_message(message: Any, endpoint: str, path: str = "message",
                         allowed: frozenset[str] | None = None) -> None:
    """
    Raise `SettingsError` naming the field of ``message`` that the SDK's types refuse for
    ``endpoint``; ``allowed`` narrows the types (e.g. `app_control_types`).
    """
    if not isinstance(message, dict):
        raise SettingsError(path, f"expected object, got {type(message).__name__}")
    kind = message.get("type")
    known = client_messages(endpoint)
    permitted = sorted(known if allowed is None else set(known) & allowed)
    if kind not in permitted:
        raise UnknownField(f"{path}.type", f"expected one of {', '.join(permitted)}, got {kind!r:.60}")
    models = known[kind]
    check_document(message, models[0] if len(models) == 1 else typing.Union[models], path)


def check_server_message(message: Any, endpoint: str, path: str = "message") -> None:
    """
    Raise `SettingsError` naming the field of a server message that the SDK's types for
    ``endpoint`` refuse, strictly (the emulator's messages are judged so in its tests).
    """
    if not isinstance(message, dict):
        raise SettingsError(path, f"expected object, got {type(message).__name__}")
    known = server_messages(endpoint)
    kind = message.get("type")
    if not isinstance(kind, str) or kind not in known:
        raise UnknownField(f"{path}.type", f"expected one of {', '.join(sorted(known))}, got {kind!r:.60}")
    models = known[kind]
    check_document(message, models[0] if len(models) == 1 else typing.Union[models], path)


def client_message(message: Any, endpoint: str) -> dict[str, Any]:
    """
    A client message for ``endpoint`` as the plain dict the gateway sends, checked strictly: an
    instance of the SDK's own model (``AgentV1UpdatePrompt(prompt="...")``) is dumped as the SDK
    would send it, a dict is taken as it is; either way `check_client_message` judges it, so a
    plugin cannot send Deepgram what its types refuse (`SettingsError` naming the field).
    """
    if isinstance(message, pydantic.BaseModel):
        message = message.model_dump(mode="json", by_alias=True, exclude_none=True)
    check_client_message(message, endpoint)
    return dict(message)


@functools.lru_cache(maxsize=None)
def known_server_types(endpoint: str) -> frozenset[str]:
    """The ``type`` of every message the SDK knows the server sends on ``endpoint``."""
    return frozenset(server_messages(endpoint))


@functools.lru_cache(maxsize=None)
def _latency_fields() -> tuple[str, ...]:
    (model,) = server_messages("agent")["LatencyReport"]
    return tuple(name for name in model.model_fields if name.endswith("_latency"))


def latency_figures(message: Mapping[str, Any]) -> dict[str, float]:
    """
    Deepgram's own latency figures from a Voice Agent ``LatencyReport``, in seconds, named as the
    SDK's model names them without ``_latency`` (``{"tts": 0.21, "total": 0.9}``): only the
    fields the SDK declares, each a finite number >= 0 (a bounded set of names, fit for labels).
    """
    figures = {}
    for field in _latency_fields():
        value = message.get(field)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1e6:
            figures[field.removesuffix("_latency")] = float(value)
    return figures
