"""
Differential tests of gateway.codecs.deepgram_types against the SDK's own strict verdict.

The oracle is independent of the gateway's walk: pydantic validates the whole document against
``AgentV1Settings`` (strict mode, pydantic's own union choices), then the validated tree is
checked for keys the chosen models do not declare, and for Fern-discriminated unions whose
discriminant the document omits but which pydantic did not read as their first member. For the
listen options the oracle is the signature of the SDK's ``connect()``: names, required options,
and each value against the parameter's type.
"""

from __future__ import annotations

import copy
import inspect
import json
import time
import typing
from typing import Any

import pydantic
from deepgram.agent.v1.types.agent_v1settings import AgentV1Settings
from deepgram.core.unchecked_base_model import UnionMetadata
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from gateway.codecs.deepgram import DEFAULT_SETTINGS, build_listen_url
from gateway.codecs.deepgram_types import (
    SettingsChecker,
    check_listen_options,
    check_settings,
    listen_parameters,
)
from gateway.codecs.formats import MULAW_8K
from gateway.errors import ConfigError, SettingsError
from tests.test_emulator import Client, EmulatorTestCase, run_client

# --- the oracle ------------------------------------------------------------------------------------


def _tagged_first(info: Any) -> tuple[str, type] | None:
    """(discriminant, first member) of a field whose type is a Fern-discriminated union."""
    stack = [info.annotation, *info.metadata]
    metas = list(info.metadata)
    while stack:
        ann = stack.pop()
        if typing.get_origin(ann) is typing.Annotated:
            inner, *meta = typing.get_args(ann)
            metas += meta
            stack.append(inner)
        elif typing.get_origin(ann) is typing.Union:
            members = [a for a in typing.get_args(ann) if a is not type(None)]
            if all(isinstance(m, type) and issubclass(m, pydantic.BaseModel) for m in members) and len(members) > 1:
                tag = next((m.discriminant for m in metas if isinstance(m, UnionMetadata)), None)
                if tag is not None:
                    return tag, members[0]
            stack.extend(typing.get_args(ann))
    return None


def _untagged_literal_union(info: Any) -> bool:
    """Whether a field's type holds a union of models, not tagged, some of which have Literal fields."""
    if any(isinstance(m, UnionMetadata) for m in info.metadata):
        return False
    stack = [info.annotation]
    while stack:
        ann = stack.pop()
        args = typing.get_args(ann)
        if typing.get_origin(ann) is typing.Annotated:
            if any(isinstance(m, UnionMetadata) for m in args[1:]):
                continue
        elif typing.get_origin(ann) is typing.Union:
            models = [a for a in args if isinstance(a, type) and issubclass(a, pydantic.BaseModel)]
            if len(models) > 1 and any(_literal_fields(m) for m in models):
                return True
        stack.extend(a for a in args if not isinstance(a, (str, int, bool)))
    return False


def _literal_fields(model: type) -> dict[str, Any]:
    return {n: f.default for n, f in model.model_fields.items()
            if typing.get_origin(f.annotation) is typing.Literal}


def _carries_literals(instance: Any, doc: Any) -> bool:
    """Fern's own rule for such unions: the chosen member's Literal fields are in the document."""
    if isinstance(instance, (list, tuple)) and isinstance(doc, list):
        return all(_carries_literals(i, d) for i, d in zip(instance, doc))
    if isinstance(instance, pydantic.BaseModel) and isinstance(doc, dict):
        return all(doc.get(k) == v for k, v in _literal_fields(type(instance)).items())
    return True


def _undeclared(instance: Any, doc: Any) -> bool:
    if isinstance(instance, pydantic.BaseModel):
        if not isinstance(doc, dict) or instance.model_extra:
            return True
        fields = {(f.alias or n): (n, f) for n, f in type(instance).model_fields.items() if not f.exclude}
        if set(doc) - set(fields):
            return True
        for key, sub in doc.items():
            name, info = fields[key]
            value = getattr(instance, name)
            tagged = _tagged_first(info)
            if tagged and isinstance(sub, dict) and tagged[0] not in sub and type(value) is not tagged[1]:
                return True
            if _untagged_literal_union(info) and not _carries_literals(value, sub):
                return True
            if _undeclared(value, sub):
                return True
        return False
    if isinstance(instance, (list, tuple)) and isinstance(doc, list):
        return any(_undeclared(i, d) for i, d in zip(instance, doc))
    return False


def sdk_accepts(doc: Any) -> bool:
    """The SDK's strict verdict on a Settings message."""
    try:
        instance = AgentV1Settings.model_validate(doc, strict=True)
    except pydantic.ValidationError:
        return False
    return not _undeclared(instance, doc)


def sdk_accepts_listen(options: dict[str, Any], version: str) -> bool:
    """The SDK's verdict on listen options: ``connect()`` would take them (names, types, required)."""
    from deepgram.listen.v1.client import V1Client
    from deepgram.listen.v2.client import V2Client

    client = {"v1": V1Client, "v2": V2Client}[version]
    parameters = {p.name: p for p in inspect.signature(client.connect, eval_str=True).parameters.values()
                  if p.name not in ("self", "authorization", "request_options")}
    if set(options) - set(parameters):
        return False
    if any(p.default is inspect.Parameter.empty and name not in options for name, p in parameters.items()):
        return False
    for name, value in options.items():
        try:
            pydantic.TypeAdapter(parameters[name].annotation).validate_python(value, strict=True)
        except pydantic.ValidationError:
            return False
    return True


# --- the corpus ------------------------------------------------------------------------------------

AUDIO = {"input": {"encoding": "mulaw", "sample_rate": 8000},
         "output": {"encoding": "mulaw", "sample_rate": 8000, "container": "none"}}
LISTEN = {"provider": {"type": "deepgram", "model": "nova-3"}}
THINK = {"provider": {"type": "open_ai", "model": "gpt-4o-mini"}, "prompt": "Be brief."}
SPEAK = {"provider": {"type": "deepgram", "model": "aura-2-thalia-en"}}
FUNCTION = {"name": "order_status", "description": "Look up an order.",
            "parameters": {"type": "object", "properties": {"id": {"type": "string"}}}}


def settings(audio: Any = AUDIO, **agent: Any) -> dict[str, Any]:
    """A Settings message: the default agent with ``agent`` changes (None removes a key)."""
    body = {"listen": LISTEN, "think": THINK, "speak": SPEAK, "greeting": "Hello."}
    body.update(agent)
    return copy.deepcopy({"type": "Settings", "audio": audio,
                          "agent": {k: v for k, v in body.items() if v is not None}})


def top(**fields: Any) -> dict[str, Any]:
    """The default Settings with top-level ``fields`` added."""
    return dict(settings(), **copy.deepcopy(fields))


def think(provider: dict[str, Any], **item: Any) -> dict[str, Any]:
    return dict({"provider": provider}, **item)


def speak(provider: dict[str, Any], **item: Any) -> dict[str, Any]:
    return dict({"provider": provider}, **item)


ENDPOINT = {"url": "https://tts.example.com/v1", "headers": {"authorization": "Bearer x"}}
FLUX = {"type": "deepgram", "version": "v2", "model": "flux-general-en", "eot_threshold": 0.7,
        "eager_eot_threshold": 0.4, "eot_timeout_ms": 5000, "keyterms": ["order"]}
HISTORY = [{"type": "History", "role": "user", "content": "Where is my order?"},
           {"type": "History", "role": "assistant", "content": "Let me look."},
           {"type": "History", "function_calls": [{"id": "f1", "name": "order_status", "client_side": True,
                                                   "arguments": "{\"id\": \"42\"}", "response": "shipped"}]}]

#: (name, Settings, the field a refusal names or None when valid).
SETTINGS_CORPUS: list[tuple[str, dict[str, Any], str | None]] = [
    # valid: every provider type, functions, context, fallbacks, think_live, Flux
    ("default template", settings(), None),
    ("listen v1 in full", settings(listen={"provider": {"type": "deepgram", "version": "v1", "model": "nova-3",
                                                        "language": "en-US", "keyterms": ["refund"],
                                                        "smart_format": True}}), None),
    ("listen Flux v2", settings(listen={"provider": FLUX}), None),
    ("listen Flux multi with hints", settings(listen={"provider": {"type": "deepgram", "version": "v2",
                                                                   "model": "flux-general-multi",
                                                                   "language_hints": ["en", "es"]}}), None),
    ("no listen", settings(listen=None), None),
    ("think anthropic", settings(think=think({"type": "anthropic", "model": "claude-3-5-haiku-latest",
                                              "temperature": 0.5})), None),
    ("think google", settings(think=think({"type": "google", "version": "v1beta", "model": "gemini-2.5-flash"},
                                          endpoint=ENDPOINT)), None),
    ("think groq", settings(think=think({"type": "groq", "model": "openai/gpt-oss-20b",
                                         "reasoning_mode": "low"})), None),
    ("think aws_bedrock", settings(think=think({"type": "aws_bedrock", "model": "anthropic/claude-3-5-haiku",
                                                "credentials": {"type": "iam", "region": "us-east-1",
                                                                "access_key_id": "a", "secret_access_key": "b"}},
                                               endpoint=ENDPOINT)), None),
    ("think deepgram", settings(think=think({"type": "deepgram", "model": "think-fast"})), None),
    ("think open_ai reasoning", settings(think=think({"type": "open_ai", "model": "gpt-5-mini",
                                                      "reasoning_mode": "minimal", "temperature": 1})), None),
    ("think fallbacks as a list", settings(think=[THINK, think({"type": "anthropic",
                                                                "model": "claude-3-5-haiku-latest"})]), None),
    ("client-side function", settings(think=dict(THINK, functions=[FUNCTION])), None),
    ("server-side function", settings(think=dict(THINK, functions=[dict(FUNCTION, endpoint={
        "url": "https://api.example.com/orders", "method": "post", "headers": {"x-key": "k"}})])), None),
    ("function without parameters", settings(think=dict(THINK, functions=[
        {"name": "hang_up", "description": "End the call."}])), None),
    ("function deferred until end of turn", settings(think=dict(THINK, functions=[
        dict(FUNCTION, defer_until_eot=True)])), None),
    ("think_live with filler", settings(think_live={"provider": {"type": "deepgram", "version": "v1",
                                                                 "agent_backchannel_sensitivity": 0.5}},
                                        think=dict(THINK, functions=[dict(FUNCTION, initial_agent_filler=True,
                                                                          agent_filler_max_count=2,
                                                                          agent_filler_interval_ms=3000)])), None),
    ("context_length max", settings(think=dict(THINK, endpoint=ENDPOINT, context_length="max")), None),
    ("context_length number", settings(think=dict(THINK, endpoint=ENDPOINT, context_length=4000)), None),
    ("context with history", settings(context={"messages": HISTORY}), None),
    ("speak deepgram speed", settings(speak=speak({"type": "deepgram", "model": "aura-2-thalia-en",
                                                   "speed": 1.2})), None),
    ("speak eleven_labs", settings(speak=speak({"type": "eleven_labs", "model_id": "eleven_turbo_v2_5",
                                                "language_code": "en-US"}, endpoint=ENDPOINT)), None),
    ("speak cartesia voice object", settings(speak=speak({"type": "cartesia", "model_id": "sonic-2",
                                                          "voice": {"mode": "id", "id": "a0e99841"},
                                                          "language": "en"}, endpoint=ENDPOINT)), None),
    ("speak open_ai", settings(speak=speak({"type": "open_ai", "model": "tts-1", "voice": "alloy"},
                                           endpoint=ENDPOINT)), None),
    ("speak aws_polly", settings(speak=speak({"type": "aws_polly", "voice": "Joanna", "language": "en-US",
                                              "engine": "neural",
                                              "credentials": {"type": "iam", "region": "us-east-1",
                                                              "access_key_id": "a", "secret_access_key": "b"}},
                                             endpoint=ENDPOINT)), None),
    ("speak fallbacks as a list", settings(speak=[SPEAK, speak({"type": "open_ai", "model": "tts-1",
                                                                "voice": "nova"}, endpoint=ENDPOINT)]), None),
    ("speak Flux TTS v2", settings(speak=speak({"type": "deepgram", "version": "v2",
                                                "model": "flux-alexis-en"})), None),
    ("audio without output", settings(audio={"input": {"encoding": "linear16", "sample_rate": 24000}}), None),
    ("audio output with bitrate and container", settings(audio={
        "input": {"encoding": "opus", "sample_rate": 48000},
        "output": {"encoding": "mp3", "sample_rate": 24000, "bitrate": 48000, "container": "wav"}}), None),
    ("stored agent id", dict(settings(), agent="3f0e7c52-a7f4-4c57-9a4e-0a3c0d6f1e11"), None),
    ("top-level options", top(tags=["support"], experimental=False, flags={"history": True},
                              mip_opt_out=True), None),
    ("deprecated agent.language", settings(language="en"), None),
    # refused: what the hand-written schema let through, and plain mistakes
    ("STT option in the agent listen provider", settings(listen={"provider": dict(LISTEN["provider"],
                                                                                  endpointing=300)}),
     "agent.listen.provider.endpointing"),
    ("unknown think provider key", settings(think=think({"type": "open_ai", "model": "gpt-4o",
                                                         "max_tokens": 200})), "agent.think.provider.max_tokens"),
    ("listen provider type openai", settings(listen={"provider": {"type": "openai", "model": "whisper"}}),
     "agent.listen.provider.type"),
    ("think provider type openai", settings(think=think({"type": "openai", "model": "gpt-4o"})),
     "agent.think.provider.type"),
    ("think provider without model", settings(think=think({"type": "open_ai"})), "agent.think.provider.model"),
    ("deepgram speak without model", settings(speak=speak({"type": "deepgram"})), "agent.speak.provider.model"),
    ("Flux without model", settings(listen={"provider": {"type": "deepgram", "version": "v2"}}),
     "agent.listen.provider.model"),
    ("Flux fields without version v2", settings(listen={"provider": {"type": "deepgram", "model": "flux-general-en",
                                                                     "eot_threshold": 0.7}}),
     "agent.listen.provider.eot_threshold"),
    ("legacy language_hint", settings(listen={"provider": {"type": "deepgram", "version": "v2",
                                                           "model": "flux-general-multi", "language_hint": "en"}}),
     "agent.listen.provider.language_hint"),
    ("legacy agent.messages", settings(messages=HISTORY[:1]), "agent.messages"),
    ("unknown top-level key", top(tagz=[]), "tagz"),
    ("unknown agent key", settings(speek=SPEAK), "agent.speek"),
    ("greeting not a string", settings(greeting=5), "agent.greeting"),
    ("sample rate as a string", settings(audio={"input": {"encoding": "mulaw", "sample_rate": "8000"}}),
     "audio.input.sample_rate"),
    ("audio input without encoding", settings(audio={"input": {"sample_rate": 8000}}), "audio.input.encoding"),
    ("Settings without audio", {"type": "Settings", "agent": settings()["agent"]}, "audio"),
    ("wrong type", dict(settings(), type="Setting"), "type"),
    ("second fallback broken", settings(think=[THINK, {"provider": {"type": 3}}]), "agent.think[1].provider.type"),
    ("context_length min", settings(think=dict(THINK, context_length="min")), "agent.think.context_length"),
    ("cartesia voice without id", settings(speak=speak({"type": "cartesia", "model_id": "sonic-2",
                                                        "voice": {"mode": "id"}})),
     "agent.speak.provider.voice.id"),
    ("function with an unknown key", settings(think=dict(THINK, functions=[dict(FUNCTION, strict=True)])),
     "agent.think.functions[0].strict"),
    ("history item with an unknown key", settings(context={"messages": [dict(HISTORY[0], name="Ann")]}),
     "agent.context.messages[0].name"),
    ("history item without its type", settings(context={"messages": [{"role": "user", "content": "Hi"}]}),
     "agent.context.messages[0].type"),
    ("think_live unknown key", settings(think_live={"provider": {"type": "deepgram", "speed": 2}}),
     "agent.think_live.provider.speed"),
    ("expressivity not an integer", settings(speak=speak({"type": "deepgram", "model": "aura-2-thalia-en",
                                                          "expressivity": 1.5})),
     "agent.speak.provider.expressivity"),
    ("temperature as a string", settings(think=think({"type": "open_ai", "model": "gpt-4o",
                                                      "temperature": "0.7"})), "agent.think.provider.temperature"),
    ("agent neither object nor id", dict(settings(), agent=5), "agent"),
]

CORPUS = {name: doc for name, doc, _ in SETTINGS_CORPUS}

#: (name, version, options, the field a refusal names or None, a gateway rule beyond the SDK).
#: Deepgram refuses some values with HTTP 400 that the SDK types ``Any``; those rows say why.
LISTEN_CORPUS: list[tuple[str, str, dict[str, Any], str | None, str]] = [
    ("gateway defaults", "v1", {"model": "nova-3", "language": "en", "interim_results": "true",
                                "punctuate": "true", "smart_format": "true", "vad_events": "true",
                                "utterance_end_ms": "1000"}, None, ""),
    ("keyterms repeated", "v1", {"model": "nova-3", "keyterm": ["refund", "order number"]}, None, ""),
    ("tags repeated", "v1", {"model": "nova-3", "tag": ["support", "eu"]}, None, ""),
    ("redact repeated", "v1", {"model": "nova-3", "redact": ["pci", "ssn"]}, None, ""),
    ("endpointing off", "v1", {"model": "nova-3", "endpointing": "false"}, None, ""),
    ("endpointing ms", "v1", {"model": "nova-2-phonecall", "endpointing": "300"}, None, ""),
    ("multilingual", "v1", {"model": "nova-3", "language": "multi"}, None, ""),
    ("diarize model and extras", "v1", {"model": "nova-3", "diarize_model": "latest",
                                        "extra": ["team:support"], "search": "refund",
                                        "replace": "colour:color", "version": "latest"}, None, ""),
    ("unknown option", "v1", {"model": "nova-3", "foo_bar": "1"}, "listen.foo_bar", ""),
    ("Flux option on v1", "v1", {"model": "nova-3", "eot_threshold": "0.7"}, "listen.eot_threshold", ""),
    ("not an SDK option", "v1", {"model": "nova-3", "filler_words": "true"}, "listen.filler_words", ""),
    ("no model", "v1", {"language": "en"}, "listen.model", ""),
    ("language as a word", "v1", {"model": "nova-3", "language": "english"}, "listen.language",
     "Deepgram answers HTTP 400 to language=english (livekit/agents#3519)"),
    ("boolean spelled yes", "v1", {"model": "nova-3", "interim_results": "yes"}, "listen.interim_results",
     "the SDK lists 'true'/'false' only; a boolean is nothing else"),
    ("utterance_end_ms not a number", "v1", {"model": "nova-3", "utterance_end_ms": "soon"},
     "listen.utterance_end_ms", "an integer of milliseconds (protocols.md 3.1)"),
    ("endpointing true", "v1", {"model": "nova-3", "endpointing": "true"}, "listen.endpointing",
     "an integer of milliseconds or false (protocols.md 3.1)"),
    ("Flux defaults", "v2", {"model": "flux-general-en", "encoding": "mulaw", "sample_rate": "8000"}, None, ""),
    ("Flux turn options", "v2", {"model": "flux-general-en", "eot_threshold": "0.7",
                                 "eager_eot_threshold": "0.4", "eot_timeout_ms": "5000"}, None, ""),
    ("Flux keyterms and tags", "v2", {"model": "flux-general-en", "keyterm": ["refund", "order"],
                                      "tag": "support"}, None, ""),
    ("Flux multi hints", "v2", {"model": "flux-general-multi", "language_hint": ["en", "de"]}, None, ""),
    ("v1 option on Flux", "v2", {"model": "flux-general-en", "endpointing": "300"}, "listen.endpointing", ""),
    ("interim results on Flux", "v2", {"model": "flux-general-en", "interim_results": "true"},
     "listen.interim_results", ""),
    ("Flux without model", "v2", {"eot_threshold": "0.7"}, "listen.model", ""),
    ("Flux threshold not a number", "v2", {"model": "flux-general-en", "eot_threshold": "high"},
     "listen.eot_threshold", "a number between 0.5 and 1 in Deepgram's documentation"),
]


# --- tests -----------------------------------------------------------------------------------------


class SettingsDifferentialTests(SynchronousTestCase):
    """The gateway's walk and the SDK's strict verdict agree on every Settings of the corpus."""

    def test_corpus_size(self) -> None:
        """At least 40 Settings and 20 listen option sets, valid and invalid ones."""
        self.assertGreaterEqual(len(SETTINGS_CORPUS), 40)
        self.assertGreaterEqual(len(LISTEN_CORPUS), 20)
        self.assertGreater(sum(field is None for _, _, field in SETTINGS_CORPUS), 20)
        self.assertGreater(sum(field is not None for _, _, field in SETTINGS_CORPUS), 20)

    def test_settings_agree(self) -> None:
        """Each verdict matches the SDK's, and each refusal names the field at fault."""
        for name, doc, field in SETTINGS_CORPUS:
            with self.subTest(name):
                self.assertEqual(sdk_accepts(doc), field is None, f"{name}: the corpus disagrees with the SDK")
                if field is None:
                    check_settings(doc)
                else:
                    with self.assertRaises(SettingsError) as cm:
                        check_settings(doc)
                    self.assertEqual(cm.exception.field, f"Settings.{field}", name)
                    self.assertTrue(cm.exception.message, name)

    def test_templates_agree(self) -> None:
        """Through the settings plugin, a template (no audio) gets the same verdict, named in the config."""
        from plugins.settings import validate_template

        for name, doc, field in SETTINGS_CORPUS:
            if doc.get("audio") != AUDIO or field in ("type", "audio"):
                continue
            template = {k: v for k, v in doc.items() if k != "audio"}
            with self.subTest(name):
                if field is None:
                    validate_template(template, "settings.template")
                else:
                    with self.assertRaises(SettingsError) as cm:
                        validate_template(template, "settings.template")
                    self.assertEqual(cm.exception.field, f"settings.template.{field}", name)

    def test_messages(self) -> None:
        """Refusals say what was expected and what came."""
        cases = {"unknown think provider key": "unknown field (allowed: type, version, model, temperature",
                 "think provider type openai": "expected one of 'open_ai', 'aws_bedrock'",
                 "greeting not a string": "expected string, got integer 5",
                 "sample rate as a string": "expected integer, got string '8000'",
                 "context_length min": "expected 'max' or number, got string 'min'",
                 "agent neither object nor id": "expected object or string, got integer"}
        corpus = {name: doc for name, doc, _ in SETTINGS_CORPUS}
        for name, words in cases.items():
            with self.assertRaises(SettingsError) as cm:
                check_settings(corpus[name])
            self.assertIn(words, cm.exception.message)


class ListenDifferentialTests(SynchronousTestCase):
    """``/v1/listen`` and Flux ``/v2/listen`` options against the SDK's ``connect()``."""

    def test_listen_agree(self) -> None:
        """The SDK's refusals are ours, naming the option; our extra rules are listed with a reason."""
        for name, version, options, field, rule in LISTEN_CORPUS:
            with self.subTest(name):
                self.assertEqual(sdk_accepts_listen(options, version), field is None or bool(rule), name)
                if field is None:
                    check_listen_options(options, version)
                else:
                    with self.assertRaises(SettingsError) as cm:
                        check_listen_options(options, version)
                    self.assertEqual(cm.exception.field, field, name)

    def test_names_are_the_sdks(self) -> None:
        """The option names are the SDK's, per version; Flux has no endpointing, v1 no eot_threshold."""
        self.assertIn("keyterm", listen_parameters("v1"))
        self.assertNotIn("eot_threshold", listen_parameters("v1"))
        self.assertIn("eot_threshold", listen_parameters("v2"))
        self.assertNotIn("endpointing", listen_parameters("v2"))
        self.assertTrue(listen_parameters("v2")["model"][1], "model is required")

    def test_lists_are_repeated_parameters(self) -> None:
        """A list goes out as repeated parameters, as the SDK sends it."""
        url = build_listen_url("wss://api.deepgram.com/v1/listen",
                               {"model": "nova-3", "keyterm": ("refund", "order number")}, MULAW_8K)
        self.assertIn("keyterm=refund&keyterm=order+number", url)


class ConfiguredListenTests(SynchronousTestCase):
    """The settings plugin checks configured and per-call listen values the same way."""

    def test_configured(self) -> None:
        """Lists are accepted as repeated parameters; unknown names are refused with the key."""
        from gateway.testing import configure

        configure({"gateway": {"mode": "listen"}, "settings": {"listen": {"keyterm": ["a", "b"], "tag": "x"}}})
        for listen, key in [({"foo_bar": "1"}, "settings.listen.foo_bar"),
                            ({"eot_threshold": 0.7}, "settings.listen.eot_threshold"),
                            ({"language": "english"}, "settings.listen.language")]:
            with self.assertRaises(ConfigError) as cm:
                configure({"gateway": {"mode": "listen"}, "settings": {"listen": listen}})
            self.assertEqual(cm.exception.key, key)

    def test_parameter_targets(self) -> None:
        """A per-call parameter must target a known option (listen) or a declared field (agent)."""
        from gateway.testing import configure

        with self.assertRaises(ConfigError) as cm:
            configure({"gateway": {"mode": "listen"}, "settings": {"parameters": {"x": "foo_bar"}}})
        self.assertEqual(cm.exception.key, "settings.parameters.x")
        with self.assertRaises(ConfigError) as cm:
            configure({"settings": {"parameters": {"x": "agent.listen.provider.endpointing"}}})
        self.assertEqual(cm.exception.key, "settings.parameters.x")
        self.assertIn("agent.listen.provider.endpointing: unknown field", cm.exception.message)
        configure({"settings": {"parameters": {"voice": "agent.speak.provider.model",
                                               "temp": "agent.think.provider.temperature"}}})

    def test_per_call_language_refused(self) -> None:
        """language=english from a <Parameter> ends the call before Deepgram is contacted."""
        from gateway.events import StreamStarted
        from gateway.testing import RecordingContext
        from tests.stages import stage_for

        ctx = RecordingContext()
        stage, _ = stage_for("settings", ctx, {"gateway": {"mode": "listen"},
                                               "settings": {"parameters": {"lang": "language"}}})
        stage.routes().inbound[StreamStarted](StreamStarted("MZ1", custom_parameters={"lang": "english"}))
        self.assertEqual([d.code for d in ctx.ended], ["SESSION_SETUP_FAILED"])
        ctx = RecordingContext()
        stage, _ = stage_for("settings", ctx, {"gateway": {"mode": "listen"},
                                               "settings": {"parameters": {"lang": "language"}}})
        stage.routes().inbound[StreamStarted](StreamStarted("MZ1", custom_parameters={"lang": "en-GB"}))
        self.assertEqual(ctx.ended, [])
        self.assertIn("language=en-GB", ctx.opened[-1])


class CachingTests(SynchronousTestCase):
    """A call pays only for what its parameters change, once per distinct change."""

    def test_checker_caches_verdicts(self) -> None:
        """Same overrides: one walk; none: no walk; a refusal is cached and raised again."""
        from gateway.codecs import deepgram_types

        walks = []
        original = deepgram_types.check_settings
        self.patch(deepgram_types, "check_settings", lambda s, path="Settings": walks.append(1) or original(s))
        checker = SettingsChecker()
        good = settings(greeting="Hi Ann.")
        checker.check(good, {})
        self.assertEqual(walks, [])
        for _ in range(3):
            checker.check(good, {"agent.greeting": "Hi Ann."})
        self.assertEqual(len(walks), 1)
        bad = settings(think=think({"type": "open_ai", "model": "gpt-4o", "temperature": "hot"}))
        for _ in range(2):
            with self.assertRaises(SettingsError) as cm:
                checker.check(bad, {"agent.think.provider.temperature": "hot"})
            self.assertEqual(cm.exception.field, "Settings.agent.think.provider.temperature")
        self.assertEqual(len(walks), 2)
        checker.check(good, {}, [FUNCTION])
        checker.check(good, {}, [json.loads(json.dumps(FUNCTION))])
        self.assertEqual(len(walks), 3)

    def test_cost(self) -> None:
        """A whole walk of the default Settings stays well under a millisecond once warm."""
        doc = settings()
        check_settings(doc)
        start = time.perf_counter()
        for _ in range(50):
            check_settings(doc)
        self.assertLess((time.perf_counter() - start) / 50, 0.005)


class EmulatorTests(SynchronousTestCase):
    """The emulator judges with the same types."""

    def test_listen_query(self) -> None:
        """Repeated options pass; unknown names and refused values are a 400 naming the option."""
        from gateway.emulator.server import HandshakeRefused, check_listen_query

        check_listen_query([("model", "nova-3"), ("keyterm", "a"), ("keyterm", "b"),
                            ("encoding", "mulaw"), ("sample_rate", "8000"), ("emulator_fault", "x")])
        for pairs, words in [([("foo_bar", "1")], "foo_bar: unknown option"),
                             ([("language", "english")], "language: expected a BCP-47 code")]:
            with self.assertRaises(HandshakeRefused) as cm:
                check_listen_query(pairs)
            self.assertEqual(cm.exception.status, 400)
            self.assertIn(words, cm.exception.message)

    def test_default_template_is_valid(self) -> None:
        """The built-in template passes, as it did."""
        from plugins.settings import validate_template

        validate_template(DEFAULT_SETTINGS, "settings.template")


class EmulatorWireTests(EmulatorTestCase):
    """On the wire, the emulator accepts what the SDK types accept and names what they refuse."""

    @defer.inlineCallbacks
    def test_sdk_shapes_applied(self) -> None:
        """Audio without output (the SDK README's example), think_live and Flux are applied."""
        for name in ("audio without output", "think_live with filler", "listen Flux v2",
                     "speak cartesia voice object", "function without parameters"):
            doc = dict(CORPUS[name], agent=dict(CORPUS[name]["agent"], greeting="Hi"))

            def script(client: Client, doc: dict[str, Any] = doc) -> None:
                client.send_json(doc)
                client.until("AgentAudioDone")

            outcome = yield run_client(self.emu.url("agent"), script)
            self.assertEqual(outcome.types[:2], ["Welcome", "SettingsApplied"], name)

    @defer.inlineCallbacks
    def test_refusal_names_the_field(self) -> None:
        """A field the SDK does not declare: UNPARSABLE_CLIENT_MESSAGE naming it, then no status."""
        doc = CORPUS["unknown think provider key"]

        def script(client: Client) -> None:
            client.until("Welcome")
            client.send_json(doc)
            client.drain()

        outcome = yield run_client(self.emu.url("agent"), script)
        error = [m for m in outcome.texts if m["type"] == "Error"][0]
        self.assertEqual(error["code"], "UNPARSABLE_CLIENT_MESSAGE")
        self.assertIn("agent.think.provider.max_tokens", error["description"])
