"""
Assembly: a configuration and its plugins made into one `ConfiguredGateway`, once, at start-up.

The layers, from the bottom: values (`gateway.section`, `gateway.config`), the plugin contract
(`gateway.plugin`), the core that runs calls (`gateway.call` and below), the plugins (the built-in
``plugins`` package and the drop-ins), and this module, which puts them together. It imports no
plugin: the built-ins are handed in by the entry points (``twistd gateway`` through
`gateway.tap`, the ``gateway`` command, `gateway.testing`), drop-ins are found in the configured
directories by ``twisted.plugin.getPlugins``.

Everything that depends only on the configuration is worked out here, once, instead of per call:
each caller leg's upstream audio formats, how much audio a call may hold, the function
declarations (their JSON schemas checked), the caller legs' protocol options.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
from typing import Any, Iterable, Mapping

import attrs
import jsonschema
from twisted.plugin import IPlugin, getPlugins
from zope.interface.exceptions import Invalid
from zope.interface.verify import verifyObject

import gateway.dropins
from gateway.codecs.formats import LINEAR16_16K, MULAW_8K, AudioFormat
from gateway.config import CORE_SECTIONS, GatewayConfig, parse_config, read_toml
from gateway.errors import ConfigError, PluginLoadError
from gateway.plugin import (
    CallerProtocolOptions,
    FunctionSpec,
    HoldsAudio,
    IStreamPlugin,
    NegotiatesFormats,
    ServesFunctions,
    StageFactory,
)
from gateway.redact import register_config
from gateway.section import Section, type_name

__all__ = [
    "CALLER_FORMATS",
    "ConfiguredGateway",
    "assemble",
    "load_config",
    "load_plugins",
]

#: Each caller leg's audio: Twilio sends µ-law 8 kHz, raw clients linear16 16 kHz.
CALLER_FORMATS: Mapping[str, AudioFormat] = {"twilio": MULAW_8K, "client": LINEAR16_16K}

#: Audio a call may hold for Deepgram when no stage says otherwise (before SettingsApplied, during
#: a reconnect).
DEFAULT_HOLD_AUDIO_MS = 10_000


@attrs.frozen
class ConfiguredGateway:
    """
    The validated configuration, each chain stage's name and per-call factory, and what follows
    from them alone (worked out once by `assemble`).
    """

    config: GatewayConfig
    stages: tuple[tuple[str, StageFactory], ...]
    #: Per caller leg: (audio towards Deepgram, audio from Deepgram).
    formats: Mapping[str, tuple[AudioFormat, AudioFormat]] = attrs.field(factory=dict)
    hold_audio_ms: int = DEFAULT_HOLD_AUDIO_MS
    #: Every function the chain serves: name -> (the plugin serving it, its spec).
    functions: Mapping[str, tuple[str, FunctionSpec]] = attrs.field(factory=dict)
    #: What the stages add to the caller legs' Autobahn options (keepalive's pings).
    caller_protocol_options: Mapping[str, Any] = attrs.field(factory=dict)

    def rebind(self, stages: Iterable[tuple[str, StageFactory]]) -> ConfiguredGateway:
        """The same assembly over replacement factories (e.g. bound to the process's admission)."""
        return assemble(self.config, tuple(stages))


def assemble(config: GatewayConfig, stages: tuple[tuple[str, StageFactory], ...]) -> ConfiguredGateway:
    """Work out, once, what the chain's stage factories declare (see the module docstring)."""
    formats = {}
    for leg, caller in CALLER_FORMATS.items():
        upstream_in, upstream_out = caller, caller
        for _, factory in stages:
            if isinstance(factory, NegotiatesFormats):
                chosen = factory.upstream_formats(caller)
                # The caller's own audio both ways is the default: no change asked, so a stage
                # saying it leaves the choice of an earlier one (the transcoder's) alone.
                if chosen != (caller, caller):
                    upstream_in, upstream_out = chosen
        formats[leg] = (upstream_in, upstream_out)
    hold_ms = DEFAULT_HOLD_AUDIO_MS
    for _, factory in stages:
        # Likewise the default hold leaves the settings stage's choice alone.
        if isinstance(factory, HoldsAudio) and factory.hold_audio_ms != DEFAULT_HOLD_AUDIO_MS:
            hold_ms = factory.hold_audio_ms
    functions: dict[str, tuple[str, FunctionSpec]] = {}
    for plugin, factory in stages:
        if not isinstance(factory, ServesFunctions):
            continue
        for name, spec in (factory.functions or {}).items():
            if name in functions:
                raise ConfigError(plugin, f"function {name!r} is already served by {functions[name][0]!r}")
            jsonschema.Draft202012Validator.check_schema(dict(spec.parameters))
            functions[name] = (plugin, spec)
    options: dict[str, Any] = {}
    for _, factory in stages:
        if isinstance(factory, CallerProtocolOptions):
            options.update(factory.caller_protocol_options())
    return ConfiguredGateway(
        config=config,
        stages=stages,
        formats=formats,
        hold_audio_ms=hold_ms,
        functions=functions,
        caller_protocol_options=options,
    )


def load_config(
    path: str | None,
    environ: Mapping[str, str] | None = None,
    *,
    builtins: Iterable[Any],
    demo: bool = False,
    require_api_key: bool = True,
) -> ConfiguredGateway:
    """
    Read ``path`` (None: every default), apply ``environ`` (default ``os.environ``), load the
    chain's plugins (``builtins``, then the drop-ins) and configure them. Raises `ConfigError`
    or `PluginLoadError` naming the key or file.
    """
    data = read_toml(path) if path is not None else {}
    config = parse_config(data, environ, path=path, demo=demo, require_api_key=require_api_key)
    register_config(config)  # the keys are masked by value in every redacted log structure
    available = load_plugins(builtins, list(config.dropin_dirs))
    for name in config.chain:
        if name not in available:
            near = difflib.get_close_matches(name, sorted(available), n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ConfigError("gateway.chain", f"unknown plugin {name!r}{hint}")
    known_sections = set(CORE_SECTIONS) | set(available)
    for name, value in data.items():
        if name not in known_sections:
            near = difflib.get_close_matches(name, sorted(known_sections), n=1)
            hint = f"; did you mean [{near[0]}]?" if near else ""
            raise ConfigError(name, f"unknown section{hint}")
        if not isinstance(value, dict):
            raise ConfigError(name, f"expected a table, got {type_name(value)}")
    stages = []
    for name in config.chain:
        section = Section(name, data.get(name, {}))
        plugin = available[name]
        try:
            factory = plugin.configure(section, config)
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001 - a drop-in's configure is user code
            raise PluginLoadError(name, f"configure() failed: {type(e).__name__}: {e}")
        section.finish()
        stages.append((name, factory))
    return assemble(config, tuple(stages))


# --- discovery ----------------------------------------------------------------------------------


def _check(plugin: Any, where: str) -> None:
    try:
        verifyObject(IStreamPlugin, plugin)
    except Invalid as e:
        raise PluginLoadError(where, f"does not provide IStreamPlugin: {e}".replace("\n", " "))
    if not isinstance(plugin.name, str) or not plugin.name.isidentifier():
        raise PluginLoadError(where, f"plugin name must be an identifier, got {plugin.name!r}")


def _load_dropins(directories: list[str]) -> dict[str, tuple[Any, str]]:
    """
    Import every ``.py`` file of ``directories`` as a module of `gateway.dropins` and return its
    plugins by name. Strict where ``getPlugins`` is forgiving (ops-notes §2): an import error, a
    file that defines no plugin, a file name that is not an identifier, the same module name in
    two directories, and two plugins with one name each stop start-up naming the file.
    """
    pkg = gateway.dropins
    found: dict[str, tuple[Any, str]] = {}
    seen_modules: dict[str, str] = {}
    for directory in directories:
        if not os.path.isdir(directory):
            raise PluginLoadError(directory, "drop-in directory does not exist")
        stale = os.path.join(directory, "dropin.cache")
        if os.path.exists(stale):
            # A stale cache hides replaced files (an older mtime after cp -p / tar x).
            try:
                os.remove(stale)
            except OSError:
                pass
        for filename in sorted(os.listdir(directory)):
            if not filename.endswith(".py") or filename.startswith("_"):
                continue
            path = os.path.join(directory, filename)
            modname = filename[:-3]
            if not modname.isidentifier():
                raise PluginLoadError(path, "file name is not a Python identifier; rename it")
            if modname in seen_modules:
                raise PluginLoadError(path, f"module name {modname!r} also in {seen_modules[modname]}")
            seen_modules[modname] = path
        if directory not in pkg.__path__:
            pkg.__path__.append(directory)
    for modname, path in seen_modules.items():
        fullname = f"{pkg.__name__}.{modname}"
        try:
            module = sys.modules.get(fullname) or importlib.import_module(fullname)
        except Exception as e:  # noqa: BLE001 - any failure of user code names the file
            raise PluginLoadError(path, f"import failed: {type(e).__name__}: {e}")
        provided = [
            v for v in vars(module).values()
            if IStreamPlugin.providedBy(v) and IPlugin.providedBy(v)
        ]
        if not provided:
            half = [v for v in vars(module).values() if IStreamPlugin.providedBy(v)]
            hint = " (it provides IStreamPlugin but not twisted.plugin.IPlugin)" if half else ""
            raise PluginLoadError(
                path, "defines no module-level object providing IPlugin and IStreamPlugin" + hint
            )
        for plugin in {id(p): p for p in provided}.values():
            _check(plugin, path)
            if plugin.name in found and found[plugin.name][0] is not plugin:
                raise PluginLoadError(
                    path, f"plugin name {plugin.name!r} already defined in {found[plugin.name][1]}"
                )
            found[plugin.name] = (plugin, path)
    # getPlugins is the documented discovery; it must agree with the strict scan above.
    if seen_modules:
        listed = {id(p) for p in getPlugins(IStreamPlugin, pkg)}
        for name, (plugin, path) in found.items():
            if id(plugin) not in listed:
                raise PluginLoadError(path, f"plugin {name!r} not found by twisted.plugin.getPlugins")
    return found


def load_plugins(builtins: Iterable[Any], dropin_dirs: list[str]) -> dict[str, Any]:
    """
    Every available plugin by name: ``builtins`` (the ``plugins`` package's ``BUILTINS``), then
    the drop-ins found in ``dropin_dirs``. A drop-in may not take a built-in's name.
    """
    available = {p.name: p for p in builtins}
    for name, (plugin, path) in _load_dropins(dropin_dirs).items():
        if name in available:
            raise PluginLoadError(path, f"plugin name {name!r} is a built-in plugin's name")
        available[name] = plugin
    return available
