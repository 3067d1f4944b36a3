"""
Fakes for testing stages, calls and whole gateways, shared by the project's tests and by users
writing drop-in plugins.

- `RecordingContext`: a `StageContext` that records what a stage emits, counts and ends, over a
  `twisted.internet.task.Clock`.
- `FakeCallerLeg`, `FakeUpstreamLeg` and `FakeConnector`: stand-ins for the two legs, so that a
  `gateway.call.Call` runs with no sockets.
- `configure`: a `ConfiguredGateway` from a dict shaped like the TOML file; `load_config`: the
  assembly's `gateway.assembly.load_config` with the built-in plugins.
"""

from __future__ import annotations

import collections
import os
import tempfile
from typing import Any, Mapping

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import Logger

import plugins
from gateway import assembly
from gateway.assembly import ConfiguredGateway
from gateway.callinfo import CallInfo
from gateway.codecs.formats import AudioFormat, MULAW_8K
from gateway.diagnostics import Diagnosis
from gateway.events import DeepgramEvent
from gateway.interfaces import LegState

__all__ = [
    "temp_path",
    "RecordingContext",
    "FakeCallerLeg",
    "FakeUpstreamLeg",
    "FakeConnector",
    "configure",
    "load_config",
    "call_info",
    "TEST_API_KEY",
]

TEST_API_KEY = "test-deepgram-key"


def temp_path(test: Any, name: str = "file") -> str:
    """
    A path in a fresh temporary directory removed when ``test`` ends. (trial's ``mktemp``
    writes into the working directory, which under pytest is the checkout.)
    """
    import shutil

    directory = tempfile.mkdtemp(prefix="gw-test-")
    test.addCleanup(shutil.rmtree, directory, True)
    return os.path.join(directory, name)


def call_info(
    leg: str = "twilio",
    mode: str = "agent",
    caller_format: AudioFormat = MULAW_8K,
    upstream_input: AudioFormat | None = None,
    upstream_output: AudioFormat | None = None,
    call_id: str = "call-1",
) -> CallInfo:
    """A `CallInfo` for a stage under test."""
    return CallInfo(
        call_id=call_id,
        leg=leg,
        mode=mode,
        caller_format=caller_format,
        upstream_input=upstream_input or caller_format,
        upstream_output=upstream_output or caller_format,
        started_at=0.0,
    )


@attrs.define
class RecordingContext:
    """A `gateway.plugin.StageContext` that records everything a stage does."""

    call: CallInfo = attrs.field(factory=call_info)
    clock: Clock = attrs.field(factory=Clock)
    log: Logger = attrs.field(factory=lambda: Logger(namespace="plugins.test"))
    inbound: list[Any] = attrs.field(factory=list)
    outbound: list[Any] = attrs.field(factory=list)
    ended: list[Any] = attrs.field(factory=list)
    failed: list[Any] = attrs.field(factory=list)
    counters: collections.Counter = attrs.field(factory=collections.Counter)
    unrouted: list[tuple[type, str]] = attrs.field(factory=list)
    rerouted: list[tuple[type, str]] = attrs.field(factory=list)
    #: ``ctx.open_upstream`` URLs, ``ctx.refuse`` verdicts, ``ctx.diagnose`` diagnoses, in order.
    opened: list[str] = attrs.field(factory=list)
    refused: list[tuple[int, str, str]] = attrs.field(factory=list)
    diagnosed: list[Diagnosis] = attrs.field(factory=list)

    def emit_inbound(self, event: object) -> None:
        self.inbound.append(event)

    def open_upstream(self, url: str) -> None:
        self.opened.append(url)

    def refuse(self, http_status: int, code: str, message: str) -> None:
        self.refused.append((http_status, code, message))

    def diagnose(self, diagnosis: Diagnosis) -> None:
        self.diagnosed.append(diagnosis)

    def snapshot(self) -> dict[str, Any]:
        return {}

    def restore(self, record: Mapping[str, Any]) -> None:
        pass

    def emit_outbound(self, event: object) -> None:
        self.outbound.append(event)

    def end_call(self, diagnosis: object) -> None:
        self.ended.append(diagnosis)

    def upstream_failed(self, diagnosis: object) -> None:
        self.failed.append(diagnosis)

    def count(self, name: str, amount: int = 1, **labels: str) -> None:
        self.counters[(name, tuple(sorted(labels.items())))] += amount

    def stop_handling(self, cls: type, direction: str = "inbound") -> None:
        self.unrouted.append((cls, direction))

    def resume_handling(self, cls: type, direction: str = "inbound") -> None:
        self.rerouted.append((cls, direction))

    def counted(self, name: str, **labels: str) -> int:
        """The value of one counter."""
        return self.counters[(name, tuple(sorted(labels.items())))]


class _FakeLeg:
    """What both fake legs share: sending on a leg that is not open raises, as Autobahn does."""

    state: LegState

    def _check_open(self, what: str) -> None:
        if self.state != LegState.OPEN:
            raise AssertionError(f"{what} on a leg that is {self.state.name}")


@attrs.define
class FakeCallerLeg(_FakeLeg):
    """Records what the call sends to the caller."""

    sent: list[tuple[str, Any]] = attrs.field(factory=list)
    closed_with: tuple[int, str] | None = None
    aborted: bool = False
    congested: bool = False
    #: The leg's `gateway.interfaces.LegState`: closing it makes it CLOSING, as Autobahn does.
    state: LegState = LegState.OPEN

    def send_audio(self, payload: bytes) -> None:
        self._check_open("send_audio")
        self.sent.append(("audio", payload))

    def send_clear(self) -> None:
        self._check_open("send_clear")
        self.sent.append(("clear", None))

    def send_mark(self, name: str) -> None:
        self._check_open("send_mark")
        self.sent.append(("mark", name))

    def send_event(self, event: DeepgramEvent) -> None:
        self._check_open("send_event")
        self.sent.append(("event", event.type))

    def send_error(self, code: str, message: str) -> None:
        self._check_open("send_error")
        self.sent.append(("error", code))

    def close(self, code: int, reason: str) -> None:
        if self.state != LegState.OPEN:
            return  # Autobahn ignores a close on a closing leg
        self.closed_with = (code, reason)
        self.state = LegState.CLOSING

    def abort(self) -> None:
        self.aborted = True
        self.state = LegState.CLOSED


@attrs.define
class FakeUpstreamLeg(_FakeLeg):
    """Records what the call sends to Deepgram."""

    sent: list[tuple[str, Any]] = attrs.field(factory=list)
    closed_with: int | None = None
    aborted: bool = False
    congested: bool = False
    #: The leg's `gateway.interfaces.LegState`: closing it makes it CLOSING, as Autobahn does.
    state: LegState = LegState.OPEN

    def send_audio(self, payload: bytes) -> None:
        self._check_open("send_audio")
        self.sent.append(("audio", payload))

    def send_message(self, message: Mapping[str, Any]) -> None:
        self._check_open("send_message")
        self.sent.append(("json", dict(message)))

    def close(self, code: int = 1000) -> None:
        if self.state != LegState.OPEN:
            return  # Autobahn ignores a close on a closing leg
        self.closed_with = code
        self.state = LegState.CLOSING

    def abort(self) -> None:
        self.aborted = True
        self.state = LegState.CLOSED

    def audio(self) -> bytes:
        return b"".join(p for kind, p in self.sent if kind == "audio")

    def messages(self) -> list[dict]:
        return [p for kind, p in self.sent if kind == "json"]


@attrs.define
class FakeConnector:
    """Records each Deepgram connection attempt; its Deferred is left to the test to fire."""

    attempts: list[tuple[str, dict, Any, Deferred]] = attrs.field(factory=list)

    def __call__(self, url: str, headers: dict, call: Any) -> Deferred:
        d: Deferred = Deferred()
        self.attempts.append((url, headers, call, d))
        return d


def load_config(
    path: str | None, environ: Mapping[str, str] | None = None, **options: Any
) -> ConfiguredGateway:
    """`gateway.assembly.load_config` with the built-in plugins (``plugins.BUILTINS``)."""
    return assembly.load_config(path, environ, builtins=plugins.BUILTINS, **options)


def configure(
    config: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> ConfiguredGateway:
    """Validate ``config`` (shaped like the TOML file) as the service would."""
    import tomllib  # noqa: F401 (documenting the shape: a TOML document)

    environ = {"DEEPGRAM_API_KEY": TEST_API_KEY}
    environ.update(env or {})
    if not config:
        return load_config(None, environ)
    fd, path = tempfile.mkstemp(suffix=".toml")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(_to_toml(config))
        return load_config(path, environ)
    finally:
        os.unlink(path)


def _toml_value(value: Any) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _to_toml(config: Mapping[str, Any]) -> str:
    lines = []
    for section, table in config.items():
        if not isinstance(table, dict):
            lines.append(f"{section} = {_toml_value(table)}")
            continue
        lines.append(f"[{section}]")
        for key, value in table.items():
            lines.append(f"{_toml_value(key) if not key.isidentifier() else key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"
