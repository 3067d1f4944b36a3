"""
settings: the Deepgram configuration of each call, sent before any audio.

- Voice Agent: a ``Settings`` message built from a template (``[settings.template]`` in TOML, or
  a JSON file named by ``template_file``; the built-in default otherwise) with per-call values
  from an allow-list of ``customParameters`` (``[settings.parameters]``: parameter name ->
  dotted Settings path), validated before the Deepgram leg opens. The ``audio`` section is always
  derived from the formats the transcoder sends and expects, never typed by hand.
- ``/v1/listen``: the query string from ``[settings.listen]`` plus allowed parameters, with
  ``encoding`` and ``sample_rate`` derived the same way.
- Flux (``/v2/listen``): the query string from ``[settings.flux]`` (``model``, ``eot_threshold``,
  ``eager_eot_threshold``, ``eot_timeout_ms``, ``keyterm``...) plus allowed parameters, checked
  as the SDK names Flux's options; the session is confirmed by Flux's ``Connected``.

The stage opens the Deepgram leg (``ctx.open_upstream``) when an authenticated `StreamStarted` reaches
it and, on the Voice Agent, sends ``Settings`` once Deepgram's ``Welcome`` has arrived. The call
holds the caller's audio and every other message (bounded by ``hold_audio_ms``, counted when
over) until the session is confirmed (``SettingsApplied``, Flux's ``Connected``, or the open
socket for listen), then releases it in order. A session that sends no ``Welcome`` within
``welcome_timeout_s`` or no ``SettingsApplied`` (Flux: ``Connected``) within
``applied_timeout_s`` is given up and, within the call's reconnect budget, replaced.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import attrs
from twisted.plugin import IPlugin
from zope.interface import implementer

from gateway.codecs.deepgram import (
    DEFAULT_FLUX_PARAMS,
    DEFAULT_LISTEN_PARAMS,
    DEFAULT_SETTINGS,
    build_flux_url,
    build_listen_url,
    build_settings,
    merge_template,
)
from gateway.codecs.formats import MULAW_8K
from gateway.codecs.deepgram_types import (
    SettingsChecker,
    UnknownField,
    check_listen_options,
    check_listen_value,
    check_settings,
    listen_parameters,
)
from gateway.config import GatewayConfig
from gateway.section import Section
from gateway.diagnostics import Diagnosis
from gateway.errors import ConfigError, SettingsError
from gateway.events import (
    DeepgramEvent,
    StreamStarted,
    UpstreamMessage,
    UpstreamOpened,
    UpstreamReconnecting,
)
from gateway.plugin import IStreamPlugin, Routes, StageContext, cancel

__all__ = ["plugin", "SettingsOptions", "SettingsStage", "SettingsFactory", "validate_template"]

def validate_template(template: Mapping[str, Any], where: str) -> None:
    """
    Check a Settings template against Deepgram's SDK types (strictly: no undeclared key), naming
    the field on error; the audio section may not be typed by hand (it is derived from the
    transcoder's formats).
    """
    if "audio" in template:
        raise SettingsError(
            f"{where}.audio",
            "must not be set: the audio section is derived from the transcoder's formats",
        )
    probe = build_settings(template, MULAW_8K, MULAW_8K)
    try:
        check_settings(probe, "Settings")
    except SettingsError as e:
        raise SettingsError(where + e.field[len("Settings"):], e.message)


def _unknown_target(template: Mapping[str, Any], target: str) -> str | None:
    """Why a per-call value at ``target`` would add a key Deepgram's types do not declare, or None."""
    try:
        check_settings(build_settings(template, MULAW_8K, MULAW_8K, {target: "probe"}))
    except UnknownField as e:
        return f"{e.field.removeprefix('Settings.')}: {e.message}"
    except (SettingsError, AttributeError, TypeError):
        pass  # a type that a per-call string may not fit: the call's own check decides
    return None


@attrs.frozen
class SettingsOptions:
    """The validated ``[settings]`` section."""

    mode: str
    agent_url: str
    listen_url: str
    template: Mapping[str, Any]
    listen_params: Mapping[str, str | tuple[str, ...]]
    parameters: Mapping[str, str]
    applied_timeout_s: float
    hold_audio_ms: int
    welcome_timeout_s: float = 5.0
    flux_url: str = ""
    flux_params: Mapping[str, str | tuple[str, ...]] = attrs.field(factory=dict)
    #: Cached verdicts on the per-call variations of ``template`` (proved whole at start-up).
    checker: SettingsChecker = attrs.field(factory=SettingsChecker, eq=False, repr=False)


@attrs.define
class SettingsStage:
    """
    The per-call settings stage.

    Deepgram's order for the Voice Agent: ``Welcome`` first (bounded by ``welcome_timeout_s``),
    then our ``Settings``, then ``SettingsApplied`` (bounded by ``applied_timeout_s``); nothing
    else may go before it. The call holds every other message and the audio until the session
    is live; this stage only says what the session is and how long to wait for each step. A
    session that misses a step is given up through ``ctx.upstream_failed`` with a retryable
    diagnosis, so the call replaces it within its reconnect budget.
    """

    ctx: StageContext
    options: SettingsOptions
    _timer: Any = None
    _welcomed: bool = False
    _applied: bool = False
    _sessions: int = 0
    _restored: bool = False
    settings: dict[str, Any] | None = None
    history: list[dict[str, Any]] = attrs.field(factory=list)

    def routes(self) -> Routes:
        return Routes(
            inbound={StreamStarted: self.on_start},
            outbound={
                UpstreamOpened: self.on_open,
                DeepgramEvent: self.on_event,
                UpstreamReconnecting: self.on_reconnecting,
            },
        )

    def on_start(self, event: StreamStarted) -> Any:
        call = self.ctx.call
        try:
            overrides = self._per_call_values(event.custom_parameters)
            if self.options.mode == "agent":
                self.settings = build_settings(
                    self.options.template, call.upstream_input, call.upstream_output, overrides
                )
                _add_functions(self.settings, call.functions)
                self.options.checker.check(self.settings, overrides, call.functions)
                url = self.options.agent_url
            elif self.options.mode == "flux":
                params = dict(self.options.flux_params)
                params.update(overrides)
                url = build_flux_url(self.options.flux_url, params, call.upstream_input)
            else:
                params = dict(self.options.listen_params)
                params.update(overrides)
                url = build_listen_url(self.options.listen_url, params, call.upstream_input)
        except SettingsError as e:
            self.ctx.log.error("per-call settings invalid: {field}: {message}",
                               field=e.field, message=e.message, log_category="SETTINGS_PER_CALL_INVALID")
            self.ctx.end_call(Diagnosis("SESSION_SETUP_FAILED", leg="gateway", phase=call.phase))
            return None
        self.ctx.emit_inbound(event)
        self.ctx.open_upstream(url)
        return None

    def _per_call_values(self, custom: Mapping[str, str]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, target in self.options.parameters.items():
            if name in custom:
                value = custom[name]
                if len(value) > 25_000:
                    raise SettingsError(f"customParameters.{name}", "longer than 25000 characters")
                if self.options.mode in _QUERY_VERSIONS:
                    # The same check as the configured value: language=english is refused here too.
                    try:
                        check_listen_value(target, value, _QUERY_VERSIONS[self.options.mode])
                    except SettingsError as e:
                        raise SettingsError(f"customParameters.{name}", f"for {e.field}: {e.message}")
                values[target] = value
        return values

    def on_open(self, event: UpstreamOpened) -> Any:
        self._sessions += 1
        self._welcomed = self._applied = False
        if self.options.mode == "agent":
            self._wait(self.options.welcome_timeout_s, self._no_welcome)
        elif self.options.mode == "flux":
            # Flux confirms the session with Connected (the call goes live on it).
            self._wait(self.options.applied_timeout_s, self._not_applied)
        return event

    def on_event(self, event: DeepgramEvent) -> Any:
        kind = event.type
        if kind == "Welcome" and self.options.mode == "agent" and not self._welcomed:
            self._welcomed = True
            self._send_settings()
        elif (kind == "SettingsApplied" or kind == "Connected" and self.options.mode == "flux") \
                and not self._applied:
            self._applied = True
            self._cancel()
        elif kind in ("ConversationText", "History"):
            self._remember(event.message)
        return event

    def _send_settings(self) -> None:
        assert self.settings is not None
        settings = self.settings
        if self._sessions > 1 or self._restored:
            settings = self._restoring(settings)
        self.ctx.emit_inbound(UpstreamMessage(settings))
        self._wait(self.options.applied_timeout_s, self._not_applied)

    def save_state(self) -> dict[str, Any]:
        """For a handover: the conversation so far (the next process restores it)."""
        return {"history": list(self.history)}

    def restore_state(self, state: Mapping[str, Any]) -> None:
        """A call taken up from another process: its first session restores the conversation."""
        history = state.get("history")
        if isinstance(history, list):
            self.history = [item for item in history if isinstance(item, dict)]
        self._restored = True

    def on_reconnecting(self, event: UpstreamReconnecting) -> Any:
        """The Deepgram session is being replaced: its timers mean nothing any more."""
        self._cancel()
        return event

    def _remember(self, message: Mapping[str, Any]) -> None:
        role, content = message.get("role"), message.get("content")
        if role in ("user", "assistant") and isinstance(content, str):
            item = {"type": "History", "role": role, "content": content}
            # History (when flags.history is on) repeats ConversationText: keep one copy.
            if not self.history or self.history[-1] != item:
                self.history.append(item)
        elif isinstance(message.get("function_calls"), list):
            self.history.append({"type": "History", "function_calls": message["function_calls"]})

    def _restoring(self, settings: dict[str, Any]) -> dict[str, Any]:
        """Settings for a replacement session: the conversation so far, and no second greeting."""
        restored = json.loads(json.dumps(settings))
        agent = restored.get("agent")
        if isinstance(agent, dict):
            agent.pop("greeting", None)
            if self.history:
                context = agent.setdefault("context", {})
                context["messages"] = list(context.get("messages", [])) + self.history
        return restored

    def _wait(self, seconds: float, then: Any) -> None:
        self._cancel()
        self._timer = self.ctx.clock.callLater(seconds, then)

    def _no_welcome(self) -> None:
        self._timer = None
        self.ctx.log.error("Deepgram sent no Welcome within {timeout_s} s of opening the session",
                           timeout_s=self.options.welcome_timeout_s, log_category="DG_NO_WELCOME")
        self.ctx.upstream_failed(Diagnosis("DG_NO_WELCOME", leg="upstream", phase=self.ctx.call.phase))

    def _not_applied(self) -> None:
        self._timer = None
        self.ctx.log.error(
            "Deepgram sent no {confirmation} within {timeout_s} s",
            confirmation="Connected" if self.options.mode == "flux" else "SettingsApplied",
            timeout_s=self.options.applied_timeout_s,
            log_category="DG_NO_SETTINGS_APPLIED",
        )
        self.ctx.upstream_failed(Diagnosis("DG_SETUP_TIMEOUT", leg="upstream", phase=self.ctx.call.phase))

    def _cancel(self) -> None:
        cancel(self._timer)
        self._timer = None

    def close(self) -> None:
        self._cancel()


@attrs.frozen
class SettingsFactory:
    """
    Makes settings stages. ``hold_audio_ms`` is how much caller audio the call holds while no
    Deepgram session is live (before the first is confirmed, and during a reconnect).
    """

    options: SettingsOptions

    @property
    def hold_audio_ms(self) -> int:
        return self.options.hold_audio_ms

    def __call__(self, ctx: StageContext) -> SettingsStage:
        return SettingsStage(ctx, self.options)


#: /v1/listen and /v2/listen options derived from the transcoder's formats, never configured.
_DERIVED = ("encoding", "sample_rate", "channels")

#: The listen API version of each query-string mode.
_QUERY_VERSIONS = {"listen": "v1", "flux": "v2"}


def _add_functions(settings: dict[str, Any], functions: list[dict[str, Any]]) -> None:
    """Declare the plugins' client-side functions in ``agent.think`` (each item of a fallback list)."""
    agent = settings.get("agent")
    if not functions or not isinstance(agent, dict):
        return
    think = agent.get("think")
    for item in think if isinstance(think, list) else [think]:
        if isinstance(item, dict):
            declared = item.setdefault("functions", [])
            names = {f.get("name") for f in declared if isinstance(f, dict)}
            declared.extend(f for f in functions if f["name"] not in names)


def _listen_value(key: str, value: Any) -> str | tuple[str, ...]:
    """
    A configured ``/v1/listen`` option in its wire form: a string, or for a list (``keyterm``,
    ``tag``, ``redact``...) a tuple sent as repeated parameters. `check_listen_options` then
    checks it exactly as it checks a per-call value.
    """
    if isinstance(value, list) and value and all(not isinstance(v, (list, dict)) for v in value):
        return tuple(str(_listen_value(key, item)) for item in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    raise ConfigError(key, f"expected a string, number, boolean or a list of them, got {type(value).__name__}")


def _query_options(section: Section, key: str, defaults: Mapping[str, str]) -> dict[str, Any]:
    """``[settings.listen]`` or ``[settings.flux]`` over its defaults, in wire form."""
    options: dict[str, Any] = dict(defaults)
    for name, value in section.table(key, {}).items():
        if name in _DERIVED:
            raise ConfigError(
                section.key(f"{key}.{name}"),
                "must not be set: it is derived from the transcoder's formats",
            )
        options[name] = _listen_value(section.key(f"{key}.{name}"), value)
    return options


@implementer(IPlugin, IStreamPlugin)
@attrs.frozen
class SettingsPlugin:
    """The settings plugin."""

    name: str = "settings"

    def configure(self, section: Section, gateway: GatewayConfig) -> Any:
        template_file = section.str("template_file", "")
        inline = section.table("template", {})
        if template_file and inline:
            raise ConfigError(section.key("template"), "give template or template_file, not both")
        if template_file:
            template_file = os.path.join(gateway.config_dir, template_file)
            try:
                with open(template_file, encoding="utf-8") as f:
                    template = json.load(f)
            except OSError as e:
                raise ConfigError(section.key("template_file"), f"cannot read: {e}")
            except ValueError as e:
                raise ConfigError(section.key("template_file"), f"not valid JSON: {e}")
            where = section.key("template_file")
        else:
            # A partial inline template deep-merges onto the built-in one (merge_template's rules);
            # a template_file above is used as it is.
            template = merge_template(DEFAULT_SETTINGS, inline)
            where = section.key("template")
        if not isinstance(template, dict):
            raise ConfigError(where, "expected a JSON object")
        try:
            validate_template(template, where)
        except SettingsError as e:
            raise ConfigError(e.field, e.message)
        listen = _query_options(section, "listen", DEFAULT_LISTEN_PARAMS)
        flux = _query_options(section, "flux", DEFAULT_FLUX_PARAMS)
        if gateway.mode in _QUERY_VERSIONS:
            # The section of the mode is checked as Deepgram will read it (the other is unused).
            try:
                check_listen_options({"listen": listen, "flux": flux}[gateway.mode],
                                     _QUERY_VERSIONS[gateway.mode], section.key(gateway.mode))
            except SettingsError as e:
                raise ConfigError(e.field, e.message)
        parameters = section.table("parameters", {})
        for name, target in parameters.items():
            if not isinstance(target, str) or not target:
                raise ConfigError(section.key(f"parameters.{name}"), "expected a non-empty string")
            if gateway.mode == "agent" and (target == "audio" or target.startswith("audio.")):
                raise ConfigError(section.key(f"parameters.{name}"), "may not target the audio section")
            problem = _unknown_target(template, target) if gateway.mode == "agent" else None
            version = _QUERY_VERSIONS.get(gateway.mode)
            if version is not None and (target not in listen_parameters(version) or target in _DERIVED):
                problem = f"{target!r} is not a /{version}/listen option a call may set"
            if problem is not None:
                raise ConfigError(section.key(f"parameters.{name}"), problem)
        options = SettingsOptions(
            mode=gateway.mode,
            agent_url=gateway.agent_url,
            listen_url=gateway.listen_url,
            template=template,
            listen_params=listen,
            flux_url=gateway.flux_url,
            flux_params=flux,
            parameters=parameters,
            applied_timeout_s=section.float("applied_timeout_s", 10.0, minimum=0.1),
            hold_audio_ms=section.int("hold_audio_ms", 10_000, minimum=20),
            welcome_timeout_s=section.float("welcome_timeout_s", 5.0, minimum=0.1),
        )
        return SettingsFactory(options)


plugin = SettingsPlugin()
