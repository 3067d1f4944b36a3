"""
The stream-plugin contract, whole, in one module: what a plugin is, what a per-call stage is, what
a stage may ask of its call, and every optional hook. A drop-in author reads this module and
``examples/every_hook/every_hook.py`` (a drop-in that uses every hook, each commented with when the
gateway calls it). Finding and loading plugins is `gateway.assembly`'s job.

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

Optional hooks, each a ``typing.Protocol`` below; a factory or stage has a hook when it has the
attribute (they are checked with ``isinstance`` once, at assembly or when the call is made):

- on the factory: `NegotiatesFormats` (``upstream_formats``: the audio towards and from Deepgram),
  `HoldsAudio` (``hold_audio_ms``), `ServesFunctions` (``functions``: the client-side functions
  its stages answer), `CallerProtocolOptions` (Autobahn options for the caller legs),
  `StartsService` / `StopsService` (process-wide work), `UsesAdmission`
  (``with_admission``: a factory bound to the process's admission control);
- on the stage: `FunctionServer` (``call_function``), `KeepsState` (``save_state`` /
  ``restore_state``: what a call handed over to another process carries).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Protocol, runtime_checkable

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import Attribute, Interface

from gateway.callinfo import CallInfo
from gateway.codecs.formats import AudioFormat
from gateway.diagnostics import Diagnosis

__all__ = [
    "cancel",
    "IStreamPlugin",
    "Stage",
    "StageFactory",
    "Routes",
    "StageContext",
    "Handler",
    "FunctionSpec",
    "NegotiatesFormats",
    "HoldsAudio",
    "ServesFunctions",
    "CallerProtocolOptions",
    "StartsService",
    "StopsService",
    "UsesAdmission",
    "FunctionServer",
    "KeepsState",
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

        ``section`` is a `gateway.section.Section` over the plugin's TOML table (empty when
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
    What a stage may use, and the only way it affects the call.

    ``call`` is the call's shared facts (`gateway.callinfo.CallInfo`): ids, mode, audio formats,
    Deepgram request id, last Deepgram Error and Warning, phase, counters. ``clock`` is the
    call's `IReactorTime`: every timer comes from it. ``log`` adds ``call_id`` and ``phase`` to
    every event.
    """

    call: CallInfo
    clock: IReactorTime
    log: Logger

    def emit_inbound(self, event: object) -> None:
        """Send ``event`` towards Deepgram, through the stages after this one."""

    def emit_outbound(self, event: object) -> None:
        """Send ``event`` towards the caller, through the stages before this one."""

    def open_upstream(self, url: str) -> None:
        """Open the Deepgram session at ``url`` (the settings stage, once the caller is known)."""

    def refuse(self, http_status: int, code: str, message: str) -> None:
        """
        Refuse the caller's WebSocket upgrade (only while handling the `Handshake`): the leg
        answers ``http_status`` with ``code`` and ``message``, and the call ends with ``code``.
        """

    def diagnose(self, diagnosis: Diagnosis) -> None:
        """
        The diagnosis of the close being handled (a `CallerClosed`, `StreamStopped` or
        `UpstreamClosed`): it decides what the call does next and what the caller is told.
        """

    def end_call(self, diagnosis: Diagnosis) -> None:
        """End the call with ``diagnosis``."""

    def upstream_failed(self, diagnosis: Diagnosis) -> None:
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

    def snapshot(self) -> dict[str, Any]:
        """What another process needs to take this call up (the handover stage)."""

    def restore(self, record: Mapping[str, Any]) -> None:
        """Become the call ``record`` describes (the handover stage, taking a call up)."""


# --- optional hooks ------------------------------------------------------------------------------


@attrs.frozen
class FunctionSpec:
    """One function a plugin serves: its description and the JSON Schema of its parameters."""

    description: str
    parameters: Mapping[str, Any] = attrs.field(factory=lambda: {"type": "object", "properties": {}})

    def declaration(self, name: str) -> dict[str, Any]:
        """The ``agent.think.functions`` item (no ``endpoint``: it runs here, client-side)."""
        return {"name": name, "description": self.description, "parameters": dict(self.parameters)}


@runtime_checkable
class NegotiatesFormats(Protocol):
    """A factory that changes the audio Deepgram gets and sends (the transcoder)."""

    def upstream_formats(self, caller: AudioFormat) -> tuple[AudioFormat, AudioFormat]:
        """
        (audio towards Deepgram, audio from Deepgram) for a caller leg sending ``caller``.
        ``(caller, caller)``, the default, asks for no change; of the factories asking for one,
        the last in the chain decides.
        """


@runtime_checkable
class HoldsAudio(Protocol):
    """
    A factory that bounds the audio a call holds before its session is live (settings). The
    default, ``gateway.assembly.DEFAULT_HOLD_AUDIO_MS``, asks for no change; of the factories
    asking for one, the last in the chain decides.
    """

    hold_audio_ms: int


@runtime_checkable
class ServesFunctions(Protocol):
    """A factory whose stages answer client-side function calls (they are `FunctionServer`s)."""

    @property
    def functions(self) -> Mapping[str, FunctionSpec]:
        """Name -> spec; the settings stage declares them in ``agent.think.functions``."""


@runtime_checkable
class FunctionServer(Protocol):
    """A stage that answers the functions its factory declares."""

    def call_function(self, name: str, arguments: dict[str, Any]) -> Any:
        """The result (a str, or anything JSON-serialisable), or a Deferred of it."""


@runtime_checkable
class CallerProtocolOptions(Protocol):
    """A factory that sets Autobahn options of the caller legs (keepalive's pings)."""

    def caller_protocol_options(self) -> Mapping[str, Any]: ...


@runtime_checkable
class StartsService(Protocol):
    """A factory with process-wide work, started with the service (the recordings' sweep)."""

    def start_service(self, reactor: Any) -> None: ...


@runtime_checkable
class StopsService(Protocol):
    """A factory with process-wide work to finish at the service's stop (queued events)."""

    def stop_service(self) -> Any:
        """None, or a Deferred the service waits for (bounded) after the drain."""


@runtime_checkable
class UsesAdmission(Protocol):
    """A factory told when calls authenticate (auth): bound to the process's admission once."""

    def with_admission(self, admission: Any) -> StageFactory: ...


@runtime_checkable
class KeepsState(Protocol):
    """A stage whose state a handed-over call carries to the next process."""

    def save_state(self) -> Mapping[str, Any] | None: ...

    def restore_state(self, state: Mapping[str, Any]) -> None: ...


def cancel(delayed_call: Any) -> None:
    """Cancel a timer from ``clock.callLater`` if it is still pending (None is fine)."""
    if delayed_call is not None and delayed_call.active():
        delayed_call.cancel()
