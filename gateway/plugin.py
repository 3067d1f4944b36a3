"""
The stream-plugin contract: what a plugin is, what a per-call stage is, and how both are found.

Two layers (STYLE.md §3):

- `IStreamPlugin` (zope.interface) is what start-up discovers and validates: a module-level object
  providing ``IPlugin`` and ``IStreamPlugin``, with a ``name`` and ``configure(section, gateway)``
  that validates the plugin's TOML section and returns a per-call stage factory.
- A *stage* (`Stage`, a ``typing.Protocol``) is the per-call object: ``routes()`` says which event
  classes it handles in each direction (the chain builds its dispatch table from that once per
  call, so the 20 ms audio frames visit only stages that asked for ``Audio``), and ``close()``
  cancels its timers when the call ends. A handler returns the event to pass on (the same or a
  replacement) or ``None`` to drop it; everything else (emitting, timers, logging, counting,
  ending the call) goes through its `StageContext`.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any, Callable, Mapping, Protocol

import attrs
from twisted.logger import Logger
from twisted.plugin import IPlugin, getPlugins
from zope.interface import Attribute, Interface
from zope.interface.exceptions import Invalid
from zope.interface.verify import verifyObject

from gateway.errors import PluginLoadError

__all__ = [
    "cancel",
    "IStreamPlugin",
    "Stage",
    "StageFactory",
    "Routes",
    "StageContext",
    "load_plugins",
    "Handler",
]

Handler = Callable[[Any], Any]


class IStreamPlugin(Interface):
    """
    A stream plugin: a named, configurable source of per-call stages.

    Provide it (and ``twisted.plugin.IPlugin``) on a module-level object; a class that merely
    implements it is not found by ``getPlugins``.
    """

    name = Attribute(
        "The plugin's name (a str): what the configuration's gateway.chain lists, and the name of "
        "the plugin's own TOML section."
    )

    def configure(section, gateway):  # noqa: N805 (zope interface methods take no self)
        """
        Validate this plugin's configuration and return a per-call stage factory.

        ``section`` is a `gateway.config.Section` over the plugin's TOML table (empty when
        absent); ``gateway`` the validated `gateway.config.GatewayConfig`. Raise
        `gateway.errors.ConfigError` naming the key for anything wrong. The returned factory is
        called with a `StageContext` once per call and returns a `Stage`.
        """


@attrs.frozen
class Routes:
    """Which event classes a stage handles, and with what, in each direction."""

    inbound: Mapping[type, Handler] = attrs.field(factory=dict)
    outbound: Mapping[type, Handler] = attrs.field(factory=dict)


class Stage(Protocol):
    """A per-call plugin stage (see the module docstring)."""

    def routes(self) -> Routes:
        """The handlers of this stage, by event class and direction; asked once per call."""

    def close(self) -> None:
        """The call has ended: cancel every timer, release every buffer."""


class StageFactory(Protocol):
    """What ``IStreamPlugin.configure`` returns: a callable making one `Stage` per call."""

    def __call__(self, ctx: StageContext) -> Stage: ...


class StageContext(Protocol):
    """
    What a stage may use (and the only way it affects the call).

    ``call`` is the call's shared facts (`gateway.call.CallInfo`): ids, mode, audio formats,
    Deepgram request id, last Deepgram Error and Warning, phase, counters. ``clock`` is the
    call's `IReactorTime`: every timer comes from it. ``log`` adds ``call_id`` and ``phase`` to
    every event.
    """

    call: Any
    clock: Any
    log: Logger

    def emit_inbound(self, event: object) -> None:
        """Send ``event`` towards Deepgram, through the stages after this one."""

    def emit_outbound(self, event: object) -> None:
        """Send ``event`` towards the caller, through the stages before this one."""

    def end_call(self, diagnosis: object) -> None:
        """End the call with ``diagnosis`` (a `gateway.diagnostics.Diagnosis`)."""

    def upstream_failed(self, diagnosis: object) -> None:
        """
        Give up on the current Deepgram session (e.g. it never confirmed the Settings): the call
        closes it and, if ``diagnosis`` is retryable and the reconnect budget allows, opens a new
        one with the caller kept connected; otherwise the call ends with ``diagnosis``.
        """

    def count(self, name: str, amount: int = 1, **labels: str) -> None:
        """Add ``amount`` to the per-call counter ``name`` with ``labels``."""

    def stop_handling(self, cls: type, direction: str = "inbound") -> None:
        """Take this stage off the route of ``cls`` (e.g. audio, once no longer held)."""

    def resume_handling(self, cls: type, direction: str = "inbound") -> None:
        """Put this stage back on the route of ``cls``, with the handler its routes gave."""


def cancel(delayed_call: Any) -> None:
    """Cancel a timer from ``clock.callLater`` if it is still pending (None is fine)."""
    if delayed_call is not None and delayed_call.active():
        delayed_call.cancel()


# --- discovery ----------------------------------------------------------------------------------

_log = Logger()


def _builtins() -> dict[str, Any]:
    import plugins

    return {p.name: p for p in plugins.BUILTINS}


def _check(plugin: object, where: str) -> None:
    try:
        verifyObject(IStreamPlugin, plugin)
    except Invalid as e:
        raise PluginLoadError(where, f"does not provide IStreamPlugin: {e}".replace("\n", " "))
    if not isinstance(plugin.name, str) or not plugin.name.isidentifier():  # type: ignore[attr-defined]
        raise PluginLoadError(where, f"plugin name must be an identifier, got {plugin.name!r}")  # type: ignore[attr-defined]


def _load_dropins(directories: list[str]) -> dict[str, tuple[Any, str]]:
    """
    Import every ``.py`` file of ``directories`` as a module of `gateway.dropins` and return its
    plugins by name. Strict where ``getPlugins`` is forgiving (ops-notes §2): an import error, a
    file that defines no plugin, a file name that is not an identifier, the same module name in
    two directories, and two plugins with one name each stop start-up naming the file.
    """
    import gateway.dropins as pkg

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


def load_plugins(dropin_dirs: list[str]) -> dict[str, Any]:
    """
    Every available plugin by name: the built-ins of the ``plugins`` package, then the drop-ins
    found in ``dropin_dirs``. A drop-in may not take a built-in's name.
    """
    available = _builtins()
    for name, (plugin, path) in _load_dropins(dropin_dirs).items():
        if name in available:
            raise PluginLoadError(path, f"plugin name {name!r} is a built-in plugin's name")
        available[name] = plugin
    return available
