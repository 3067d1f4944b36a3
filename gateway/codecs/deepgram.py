"""
Deepgram messages: parse what the Voice Agent, ``/v1/listen`` and Flux (``/v2/listen``) send,
build what we send.

Sans-IO. Server JSON becomes `DeepgramEvent` (unknown types included: Deepgram adds message types
and the gateway must not fail on them). ``Settings`` and the listen and Flux query strings are
built here from a template plus the audio formats the transcoder decided.
"""

from __future__ import annotations

import copy
import json
from typing import Any, Mapping, Sequence
from urllib.parse import urlencode, urlsplit, urlunsplit, parse_qsl

from gateway.codecs import bounded_json
from gateway.codecs.formats import AudioFormat
from gateway.errors import UpstreamProtocolError
from gateway.events import DeepgramEvent, deepgram_event

__all__ = [
    "DEFAULT_AGENT_URL",
    "DEFAULT_LISTEN_URL",
    "DEFAULT_FLUX_URL",
    "DEFAULT_SETTINGS",
    "DEFAULT_LISTEN_PARAMS",
    "merge_template",
    "DEFAULT_FLUX_PARAMS",
    "parse_server_message",
    "build_settings",
    "build_listen_url",
    "build_flux_url",
    "encode_message",
    "KEEPALIVE",
    "CLOSE_STREAM",
    "redact_url",
]

DEFAULT_AGENT_URL = "wss://agent.deepgram.com/v1/agent/converse"
DEFAULT_LISTEN_URL = "wss://api.deepgram.com/v1/listen"
DEFAULT_FLUX_URL = "wss://api.deepgram.com/v2/listen"

#: The built-in Voice Agent template (protocols.md §2.3); ``audio`` is always derived.
DEFAULT_SETTINGS: Mapping[str, Any] = {
    "type": "Settings",
    "agent": {
        "language": "en",
        "listen": {"provider": {"type": "deepgram", "model": "nova-3"}},
        "think": {
            "provider": {"type": "open_ai", "model": "gpt-4o-mini", "temperature": 0.7},
            "prompt": "You are a helpful voice assistant on a phone call. Keep answers short.",
        },
        "speak": {"provider": {"type": "deepgram", "model": "aura-2-thalia-en"}},
        "greeting": "Hello! How can I help you today?",
    },
}

#: The built-in ``/v1/listen`` parameters; ``encoding`` and ``sample_rate`` are always derived.
DEFAULT_LISTEN_PARAMS: Mapping[str, str] = {
    "model": "nova-3",
    "language": "en",
    "interim_results": "true",
    "punctuate": "true",
    "smart_format": "true",
    "vad_events": "true",
    "utterance_end_ms": "1000",
}

#: The built-in Flux (``/v2/listen``) parameters; ``encoding`` and ``sample_rate`` are always derived.
DEFAULT_FLUX_PARAMS: Mapping[str, str] = {"model": "flux-general-en"}

KEEPALIVE: Mapping[str, Any] = {"type": "KeepAlive"}
CLOSE_STREAM: Mapping[str, Any] = {"type": "CloseStream"}


def parse_server_message(payload: bytes | str) -> DeepgramEvent:
    """
    Parse one JSON text frame from Deepgram; raise `UpstreamProtocolError` if it is not one
    (reasons ``bad_utf8``, ``too_deep``, ``bad_json``, ``no_type``). Lone surrogates in its
    strings (text a model wrote) become U+FFFD rather than losing the message.
    """
    try:
        msg = bounded_json.loads(
            payload, UpstreamProtocolError, surrogates="replace", finite_floats=False
        )
    except UpstreamProtocolError as e:
        raise UpstreamProtocolError(
            e.reason, f"Deepgram sent an unreadable text frame: {e.message}"
        )
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise UpstreamProtocolError(
            "no_type", "Deepgram sent a JSON message without a string 'type'"
        )
    return deepgram_event(msg)


def encode_message(message: Mapping[str, Any]) -> bytes:
    """
    Serialise a message for Deepgram (compact JSON, UTF-8).

    The codecs refuse lone surrogates at parse time, so none should get here; one that does
    anyway (a plugin's own string) is written as U+FFFD instead of ending the call: escaping it
    as ``\\ud800`` would only make Deepgram refuse the message.
    """
    text = json.dumps(message, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # Pairs split across code points are joined; lone ones replaced.
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode("utf-8")


def merge_template(default: Mapping[str, Any], partial: Mapping[str, Any]) -> dict[str, Any]:
    """
    ``partial`` (a ``[settings.template]`` table) laid over ``default`` (`DEFAULT_SETTINGS`):
    the effective template. Pure; neither argument is changed.

    The rules, applied key by key:

    - a table (dict) present on both sides merges recursively, so
      ``[settings.template.agent.think] prompt = "..."`` changes the prompt and keeps the rest;
    - except that a table whose ``type`` differs from the default's replaces it whole: another
      provider (``agent.speak.provider.type = "eleven_labs"``) does not inherit the old one's
      options (``model``);
    - a list or a scalar replaces the default's value (``agent.think.functions``, a fallback list
      of providers, ``agent.greeting``); lists are never concatenated;
    - a key only on one side is kept as it is.

    A key cannot be removed this way: give a whole template in ``template_file`` (JSON, used as
    it is, never merged) instead.
    """
    merged: dict[str, Any] = copy.deepcopy(dict(default))
    for key, value in partial.items():
        base = merged.get(key)
        if (
            isinstance(base, Mapping)
            and isinstance(value, Mapping)
            and ("type" not in value or value.get("type") == base.get("type"))
        ):
            merged[key] = merge_template(base, value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def build_settings(
    template: Mapping[str, Any],
    input_format: AudioFormat,
    output_format: AudioFormat,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """
    The ``Settings`` message for one call: ``template`` deep-copied, ``overrides`` (dotted paths
    such as ``agent.greeting``) applied, and the ``audio`` section derived from the formats the
    transcoder actually sends and expects (never typed by hand; ``container`` is ``none``
    because Twilio plays header bytes as noise).
    """
    settings = copy.deepcopy(dict(template))
    settings["type"] = "Settings"
    for path, value in (overrides or {}).items():
        node = settings
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    settings["audio"] = {
        "input": {"encoding": input_format.encoding, "sample_rate": input_format.sample_rate_hz},
        "output": {
            "encoding": output_format.encoding,
            "sample_rate": output_format.sample_rate_hz,
            "container": "none",
        },
    }
    return settings


def build_listen_url(
    base_url: str, params: Mapping[str, str | Sequence[str]], input_format: AudioFormat
) -> str:
    """
    The ``/v1/listen`` URL for one call: ``params`` as the query string (a list value becomes
    repeated parameters, as the SDK sends ``keyterm``), with ``encoding``, ``sample_rate`` and
    ``channels`` derived from the audio the transcoder sends.
    """
    parts = urlsplit(base_url)
    query: dict[str, str | Sequence[str]] = dict(parse_qsl(parts.query))
    query.update(params)
    query["encoding"] = input_format.encoding
    query["sample_rate"] = str(input_format.sample_rate_hz)
    query["channels"] = "1"
    return urlunsplit(parts._replace(query=urlencode(query, doseq=True)))


def build_flux_url(
    base_url: str, params: Mapping[str, str | Sequence[str]], input_format: AudioFormat
) -> str:
    """
    The Flux (``/v2/listen``) URL for one call: ``params`` as the query string (lists as repeated
    parameters), with ``encoding`` and ``sample_rate`` derived from the audio the transcoder
    sends. Flux is mono and has no ``channels`` option.
    """
    parts = urlsplit(base_url)
    query: dict[str, Any] = dict(parse_qsl(parts.query))
    query.update(params)
    query["encoding"] = input_format.encoding
    query["sample_rate"] = str(input_format.sample_rate_hz)
    return urlunsplit(parts._replace(query=urlencode(query, doseq=True)))


def redact_url(url: str) -> str:
    """``url`` without user info (a key must never reach a log through a URL)."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        parts = parts._replace(netloc=host)
    return urlunsplit(parts)
