"""
One call: a caller leg, a Deepgram leg, the chain of stages between them, and the lifecycle.

The lifecycle is an explicit state machine (Automat's ``TypeMachineBuilder``)::

    handshake -> authenticating -> connecting -> configuring -> live -> ending -> closed

so that "audio before Settings was applied" or "a close while connecting" are states, not flags.
The 20 ms audio frames stay out of the machine (an Automat input costs ~10 times a plain call):
they go straight into the chain, and the sinks at either end check whether their leg is open.

Lifecycle facts (a leg opened or closed, Twilio's ``stop``) are recorded by the call first, then
shown to the chain, so no stage can lose them; the close_codes stage may attach a diagnosis on
the way.
"""

from __future__ import annotations

import collections
import itertools
import os
from typing import Any, Callable, Mapping, Protocol

import attrs
from automat import TypeMachineBuilder
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.chain import Chain
from gateway.interfaces import CallerLeg, LegState, UpstreamLeg
from gateway.reconnect import GiveUp, ReconnectBudget, ReconnectPolicy
from gateway.codecs.close_codes import classify_caller_close, classify_upstream_close
from gateway.codecs.deepgram import CLOSE_STREAM
from gateway.codecs.deepgram_messages import (
    app_control_types,
    check_client_message,
    known_server_types,
    latency_figures,
)
from gateway.codecs.formats import AudioFormat, LINEAR16_16K, MULAW_8K
from gateway.config import ConfiguredGateway
from gateway.diagnostics import Diagnosis
from gateway.errors import AuthError, SettingsError
from gateway.functions import FunctionDispatcher, declarations
from gateway.latency import CallerHeardLatency
from gateway.plugin import cancel
from gateway.redact import redact
from gateway.report import TranscriptKeeper, build_report
from gateway.events import (
    Audio,
    CallerClosed,
    CallerControl,
    CallerError,
    CallerHandover,
    Clear,
    DeepgramEvent,
    Handshake,
    HandshakeRefused,
    HandoverRequested,
    OpenUpstream,
    SendMark,
    StreamStarted,
    StreamStopped,
    UpstreamClosed,
    UpstreamMessage,
    UpstreamOpened,
    UpstreamReconnecting,
)

__all__ = ["Call", "CallInfo", "CallerLeg", "UpstreamLeg", "UpstreamPort", "CALLER_FORMATS"]

#: What each caller leg sends and expects back.
CALLER_FORMATS = {"twilio": MULAW_8K, "client": LINEAR16_16K}

_ids = itertools.count(1)

#: The /client error code sent in JSON before closing with each gateway close code.
_CLIENT_ERRORS = {4500: "SESSION_SETUP_FAILED", 4501: "SESSION_FAILED", 4502: "INTERNAL_ERROR"}


@attrs.define
class CallInfo:
    """The facts of one call that stages may read (through ``ctx.call``)."""

    call_id: str
    leg: str
    mode: str
    caller_format: AudioFormat
    upstream_input: AudioFormat
    upstream_output: AudioFormat
    started_at: float
    stream_sid: str = ""
    call_sid: str = ""
    account_sid: str = ""
    custom_parameters: dict[str, str] = attrs.field(factory=dict)
    request_id: str | None = None
    request_ids: list[str | None] = attrs.field(factory=list)
    last_error: dict[str, Any] | None = None
    last_error_seen: dict[str, Any] | None = None
    last_warning: dict[str, Any] | None = None
    phase: str = "handshake"
    #: Why the call ended (a diagnosis code), once it is ending; None before.
    diagnosis_code: str | None = None
    functions: list[dict[str, Any]] = attrs.field(factory=list)
    frames_from_caller: int = 0
    bytes_from_caller: int = 0
    frames_from_upstream: int = 0
    bytes_from_upstream: int = 0
    frames_to_upstream: int = 0
    bytes_to_upstream: int = 0
    frames_to_caller: int = 0
    bytes_to_caller: int = 0
    counters: collections.Counter = attrs.field(factory=collections.Counter, repr=False)
    #: Which stage first counted each counter name (``ctx.count``), for gateway.metrics.
    counted_by: dict[str, str] = attrs.field(factory=dict, repr=False)


class _CallInputs(Protocol):
    def caller_opened(self) -> None:
        "The caller's WebSocket opened."

    def upstream_requested(self, url: str) -> None:
        "The settings stage asked for the Deepgram leg at ``url``."

    def upstream_connected(self) -> None:
        "The current Deepgram WebSocket opened."

    def settings_applied(self) -> None:
        "Deepgram confirmed the configuration (SettingsApplied; at once for /v1/listen)."

    def finish(self, diagnosis: Diagnosis, initiator: str) -> None:
        "End the call; ``initiator`` is ``caller``, ``upstream`` or ``gateway``."

    def upstream_lost(self, delay_s: float, diagnosis: Diagnosis) -> None:
        "The Deepgram session was lost for a retryable reason; a new one opens in ``delay_s``."

    def retry_due(self) -> None:
        "The backoff delay before the next Deepgram attempt has passed."

    def leg_gone(self, leg: str) -> None:
        "The ``caller`` or ``upstream`` leg is closed for good."

    def all_closed(self) -> None:
        "Both legs are closed (or abandoned at the deadline)."


def _build_machine() -> Callable[[Call], _CallInputs]:
    b = TypeMachineBuilder(_CallInputs, Call)
    handshake = b.state("handshake")
    authenticating = b.state("authenticating")
    connecting = b.state("connecting")
    configuring = b.state("configuring")
    live = b.state("live")
    reconnecting = b.state("reconnecting")
    ending = b.state("ending")
    closed = b.state("closed")
    I = _CallInputs

    def entering(name: str) -> Callable[..., None]:
        def enter(inputs: _CallInputs, core: Call, *args: object) -> None:
            core.info.phase = name

        return enter

    handshake.upon(I.caller_opened).to(authenticating)(entering("authenticating"))

    @authenticating.upon(I.upstream_requested).to(connecting)
    def _open(inputs: _CallInputs, core: Call, url: str) -> None:
        core.info.phase = "connecting"
        core._open_upstream(url)

    connecting.upon(I.upstream_connected).to(configuring)(entering("configuring"))

    @configuring.upon(I.settings_applied).to(live)
    def _live(inputs: _CallInputs, core: Call) -> None:
        core.info.phase = "live"
        core._enter_live()

    live.upon(I.settings_applied).loop().returns(None)
    for state in (connecting, configuring, live):

        @state.upon(I.upstream_lost).to(reconnecting)
        def _lost(inputs: _CallInputs, core: Call, delay_s: float, diagnosis: Diagnosis) -> None:
            core._live_leg = None
            core.info.phase = "reconnecting"
            core._schedule_retry(delay_s, diagnosis)

    @reconnecting.upon(I.retry_due).to(connecting)
    def _retry(inputs: _CallInputs, core: Call) -> None:
        core.info.phase = "connecting"
        core._open_upstream(core._upstream_url)

    for input_ in (I.caller_opened, I.upstream_requested, I.settings_applied, I.upstream_connected):
        reconnecting.upon(input_).loop().returns(None)
    for state in (handshake, authenticating, connecting, configuring, live, reconnecting):

        @state.upon(I.finish).to(ending)
        def _finish(inputs: _CallInputs, core: Call, diagnosis: Diagnosis, initiator: str) -> None:
            phase = core.info.phase
            core._live_leg = None
            core.info.phase = "ending"
            core._begin_ending(diagnosis, initiator, phase)

    for state in (live, configuring, connecting, authenticating):
        state.upon(I.caller_opened).loop().returns(None)
    for state in (connecting, configuring, live):
        state.upon(I.upstream_requested).loop().returns(None)

    ending.upon(I.finish).loop().returns(None)
    ending.upon(I.upstream_lost).loop().returns(None)
    ending.upon(I.retry_due).loop().returns(None)
    ending.upon(I.caller_opened).loop().returns(None)
    ending.upon(I.upstream_requested).loop().returns(None)
    ending.upon(I.settings_applied).loop().returns(None)

    @ending.upon(I.upstream_connected).loop()
    def _late(inputs: _CallInputs, core: Call) -> None:
        core._close_upstream()

    @ending.upon(I.leg_gone).loop()
    def _gone(inputs: _CallInputs, core: Call, leg: str) -> None:
        core._leg_gone(leg, inputs)

    @ending.upon(I.all_closed).to(closed)
    def _closed(inputs: _CallInputs, core: Call) -> None:
        core.info.phase = "closed"
        core._cleanup()

    for input_ in (I.caller_opened, I.upstream_connected, I.settings_applied, I.all_closed):
        closed.upon(input_).loop().returns(None)
    closed.upon(I.upstream_requested).loop().returns(None)
    closed.upon(I.finish).loop().returns(None)
    closed.upon(I.leg_gone).loop().returns(None)
    closed.upon(I.upstream_lost).loop().returns(None)
    closed.upon(I.retry_due).loop().returns(None)
    return b.build()


class _NoMetrics:
    """Metrics that go nowhere (a call made without a gateway, in tests)."""

    def connected(self, mode: str, seconds: float) -> None: ...
    def settings_applied(self, seconds: float) -> None: ...
    def agent_responded(self, seconds: float) -> None: ...
    def caller_heard(self, seconds: float) -> None: ...
    def leg_closed(self, leg: str, code: int | None) -> None: ...


class CallLogger(Logger):
    """A `Logger` that adds the call's ``call_id``, ``stream_sid`` and ``phase`` to every event."""

    def __init__(self, namespace: str, info: CallInfo) -> None:
        super().__init__(namespace=namespace)
        self._info = info

    def emit(self, level: Any, format: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("call_id", self._info.call_id)
        kwargs.setdefault("stream_sid", self._info.stream_sid)
        kwargs.setdefault("phase", self._info.phase)
        super().emit(level, format, **kwargs)


@attrs.define
class _Context:
    """The `gateway.plugin.StageContext` of one stage of one call."""

    _owner: Call
    _index: int
    call: CallInfo
    clock: Any
    log: Logger

    def emit_inbound(self, event: object) -> None:
        self._owner._chain.inbound(event, self._index)

    def emit_outbound(self, event: object) -> None:
        self._owner._chain.outbound(event, self._index)

    def end_call(self, diagnosis: Diagnosis) -> None:
        self._owner.end(diagnosis)

    def upstream_failed(self, diagnosis: Diagnosis) -> None:
        self._owner.upstream_failed(diagnosis)

    def snapshot(self) -> dict[str, Any]:
        return self._owner.snapshot()

    def restore(self, record: Mapping[str, Any]) -> None:
        self._owner.restore(record)

    def stop_handling(self, cls: type, direction: str = "inbound") -> None:
        self._owner._chain.stop_handling(self._index, cls, direction)

    def resume_handling(self, cls: type, direction: str = "inbound") -> None:
        self._owner._chain.resume_handling(self._index, cls, direction)

    def count(self, name: str, amount: int = 1, **labels: str) -> None:
        self._owner.count(name, amount, **labels)
        if name not in self.call.counted_by:
            self.call.counted_by[name] = self.log.namespace.partition(".")[2]  # plugins.<stage>


def _ignore(*args: Any, **kwargs: Any) -> None:
    """What a detached port does with a late report."""


class UpstreamPort:
    """
    What one Deepgram connection attempt reports to: the ``call`` its leg talks to.

    The call makes a port for every attempt and hands it to the connector. While the port is
    the call's current one, its reports reach the call; once the call is done with that session
    (it was lost, replaced or abandoned) the port is *detached* and whatever its leg still says
    (a late ``SettingsApplied``, the close of a socket the call already gave up on, the rest of
    a closing handshake) goes nowhere. So a session can never act on the call after its time,
    and the call needs no flags to tell its sessions apart.

    The hot-path reports (agent audio and messages) are the call's own bound methods, so a port
    costs nothing per frame.
    """

    def __init__(self, call: Call, number: int) -> None:
        self.number = number
        self.config = call.config
        self.log = call.log
        self.count = call.count
        self.upstream_audio = call.upstream_audio
        self.from_upstream = call.from_upstream
        self._call: Call | None = call

    def upstream_opened(self, leg: UpstreamLeg, request_id: str | None) -> None:
        if self._call is None:
            # An attempt the call gave up on opened anyway: close it at once.
            leg.close(1000)
            return
        self._call.upstream_opened(leg, request_id, self)

    def upstream_closed(self, event: UpstreamClosed) -> None:
        if self._call is not None:
            self._call.upstream_closed(event, self)

    def detach(self) -> None:
        self._call = None
        self.upstream_audio = _ignore
        self.from_upstream = _ignore
        self.count = _ignore


Connector = Callable[[str, dict, Any], Deferred]

_Machine = None

#: The leg state in which the call may send (a plain int: the hot path compares with it).
_OPEN = int(LegState.OPEN)
#: Deepgram events that carry what was said (kept for the report, logged when configured).
_RECORDED = frozenset({"ConversationText", "Results", "TurnInfo"})
#: Control messages held at most while the Deepgram session is not live (beyond: dropped, counted).
_HELD_MESSAGES = 256


class Call:
    """
    One stream from the caller's handshake to its last close.

    ``connector(url, headers, port)`` opens a Deepgram leg that reports to ``port`` (an
    `UpstreamPort`); it returns a Deferred that fires when the attempt is over.
    ``on_closed(call)`` is called once, when the call is over.

    What goes towards Deepgram passes one gate at the end of the chain: it is sent only while
    the call is ``live`` (the session confirmed its configuration) on a leg that is ``OPEN``.
    Everything else is *held*, in order, with the audio bounded by ``hold_audio_ms``: before the
    first session is ready, while a Deepgram Close frame is on its way back (a round trip over
    the internet), and during a reconnect. The session's own ``Settings`` goes out while it is
    ``configuring``; a ``KeepAlive`` means nothing to a session that is not live and is dropped.
    The last ``replay_ms`` of audio sent is kept, and put back in front of the held audio when
    a session is lost: what was in flight to a dying session is not lost (the new session may
    hear a few frames twice, which speech tolerates; a gap it does not).
    """

    def __init__(
        self,
        configured: ConfiguredGateway,
        leg: str,
        clock: Any,
        connector: Connector,
        on_closed: Callable[[Call], None] = lambda call: None,
        call_id: str | None = None,
        gateway_state: Any = None,
        metrics: Any = None,
    ) -> None:
        global _Machine
        if _Machine is None:
            _Machine = _build_machine()
        self.config = config = configured.config
        self.clock = clock
        self._connector = connector
        self._on_closed = on_closed
        caller_format = CALLER_FORMATS[leg]
        upstream_in, upstream_out = caller_format, caller_format
        hold_ms = 10_000
        for _, factory in configured.stages:
            negotiate = getattr(factory, "upstream_formats", None)
            if negotiate is not None:
                upstream_in, upstream_out = negotiate(caller_format)
            hold_ms = getattr(factory, "hold_audio_ms", hold_ms)
        self.info = CallInfo(
            call_id=call_id or f"{os.getpid():x}-{next(_ids)}",
            leg=leg,
            mode=config.mode,
            caller_format=caller_format,
            upstream_input=upstream_in,
            upstream_output=upstream_out,
            started_at=clock.seconds(),
        )
        self.log = CallLogger("gateway.call", self.info)
        self.diagnosis: Diagnosis | None = None
        self.caller: CallerLeg | None = None
        #: The current Deepgram session: its port, and its leg once open.
        self._port: UpstreamPort | None = None
        self.upstream: UpstreamLeg | None = None
        #: The ``live`` state's leg: set on entering live, cleared on leaving it.
        self._live_leg: UpstreamLeg | None = None
        self._sessions = itertools.count(1)
        self._caller_gone = False
        self._initiator = ""
        self._attempt: Deferred | None = None
        self._ending_timer: Any = None
        self._stopped = False
        self._pending_diagnosis: Diagnosis | None = None
        self._refusal: Any = None
        self._budget = ReconnectBudget(
            ReconnectPolicy(
                attempts=config.reconnect_attempts,
                max_s=config.reconnect_max_s,
                backoff_s=config.reconnect_backoff_s,
                backoff_max_s=config.reconnect_backoff_max_s,
                window_s=config.reconnect_window_s,
                window_max=config.reconnect_window_max,
                per_call=config.reconnect_max_per_call,
            )
        )
        self._retry_timer: Any = None
        self._upstream_url = ""
        self._gateway_state = gateway_state
        self._waiters: list[Deferred] = []
        self.metrics = metrics if metrics is not None else _NoMetrics()
        self.heard = CallerHeardLatency(caller_format, clock, getattr(self.metrics, "caller_heard", _ignore))
        self._connect_started = 0.0
        self._opened_at = 0.0
        self._turn_ended_at: float | None = None
        # What waits for a live session: (is_audio, payload or message), in arrival order.
        self._held: collections.deque[tuple[bool, Any]] = collections.deque()
        self._held_bytes = 0
        self._held_messages = 0
        self._hold_limit = upstream_in.bytes_for_ms(hold_ms)
        # The last audio sent, for replay after a lost session.
        self._recent: collections.deque[bytes] = collections.deque()
        self._recent_bytes = 0
        self._replay_limit = upstream_in.bytes_for_ms(config.replay_ms) if config.replay_ms else 0
        self.transcript = TranscriptKeeper()
        self.debug = config.debug_calls
        self.report: dict[str, Any] | None = None
        self.is_closed = False
        stages = []
        names = []
        self._chain = None  # type: ignore[assignment]
        for index, (name, factory) in enumerate(configured.stages):
            ctx = _Context(self, index, self.info, clock, CallLogger(f"plugins.{name}", self.info))
            stages.append(factory(ctx))
            names.append(name)
        self._chain = Chain(names, stages, self._inbound_sink, self._outbound_sink, self._stage_failed)
        self._stages = dict(zip(names, stages))
        # A call handed over from other processes: their reports, oldest first, and the count.
        self._segments: list[dict[str, Any]] = []
        self._handovers = 0
        functions = declarations(dict(configured.stages))
        self.info.functions = [spec.declaration(name) for name, (_, spec) in functions.items()]
        self._functions = FunctionDispatcher(
            functions,
            {name: stage for name, stage in zip(names, stages)},
            clock,
            respond=lambda message: self._chain.inbound(UpstreamMessage(message)),
            count=self.count,
            log=self.log,
        )
        self._machine = _Machine(self)

    # --- facts for stages and the service --------------------------------------------------------

    @property
    def phase(self) -> str:
        return self.info.phase

    def count(self, name: str, amount: int = 1, **labels: str) -> None:
        """Add to a per-call counter (issue 7 exports these as metrics)."""
        self.info.counters[(name, tuple(sorted(labels.items())))] += amount

    # --- handing over and taking up (gateway.handover) -------------------------------------------

    def request_handover(self, deadline_s: float, reason: str = "drain") -> None:
        """Ask the chain (the handover stage) to hand this call to another process."""
        if self.info.phase in ("ending", "closed"):
            return
        self._chain.inbound(HandoverRequested(deadline_s, reason))

    def snapshot(self) -> dict[str, Any]:
        """
        What another process needs to take this call up: its identity and parameters, each
        stage's ``save_state()``, the transcript, and the report so far (one segment per process).
        """
        states = {}
        for name, stage in self._stages.items():
            save = getattr(stage, "save_state", None)
            if save is not None:
                state = save()
                if state is not None:
                    states[name] = state
        info = self.info
        return {
            "v": 1,
            "call_id": info.call_id,
            "call_sid": info.call_sid,
            "account_sid": info.account_sid,
            "stream_sid": info.stream_sid,
            "custom_parameters": dict(info.custom_parameters),
            "states": states,
            "transcript": list(self.transcript.items),
            "segments": self._segments + [build_report(self, self.clock.seconds())],
            "handovers": self._handovers,
        }

    def restore(self, record: Mapping[str, Any]) -> None:
        """Become the call ``record`` (a `snapshot` from another process) describes."""
        call_id = record.get("call_id")
        if isinstance(call_id, str) and call_id:
            self.info.call_id = call_id[:64]
        self._segments = [s for s in record.get("segments") or () if isinstance(s, dict)]
        self._handovers = int(record.get("handovers") or 0)
        for item in record.get("transcript") or ():
            if isinstance(item, dict):
                self.transcript.items.append(item)
        states = record.get("states") or {}
        for name, stage in self._stages.items():
            restore = getattr(stage, "restore_state", None)
            if restore is not None and isinstance(states.get(name), dict):
                restore(states[name])

    # --- from the caller leg ---------------------------------------------------------------------

    def caller_handshake(self, event: Handshake) -> None:
        """
        Run the chain on the upgrade request. A stage refuses it by replacing the `Handshake`
        with a `HandshakeRefused`; this raises the matching `AuthError`, which the leg turns
        into an HTTP error.
        """
        self._refusal = None
        self._chain.inbound(event)
        refusal = self._refusal
        if refusal is not None:
            self.diagnosis = Diagnosis(refusal.code, leg="caller", phase="handshake")
            raise AuthError(refusal.code, refusal.message, http_status=refusal.http_status)

    def caller_opened(self, leg: CallerLeg) -> None:
        self.caller = leg
        self._machine.caller_opened()

    def from_caller(self, event: Any) -> None:
        """An event parsed from the caller's leg (audio goes through `caller_audio`)."""
        if type(event) is StreamStarted:
            self.info.stream_sid = event.stream_sid
            self.info.call_sid = event.call_sid
            self.info.account_sid = event.account_sid
            self.info.custom_parameters = dict(event.custom_parameters)
            flag = event.custom_parameters.get(self.config.debug_parameter, "")
            if flag.lower() in ("1", "true", "yes", "on"):
                self.debug = True
        if self.debug:
            self._debug("caller -> gateway", event)
        if type(event) is StreamStopped:
            self._stopped = True
            self.log.info("Twilio sent stop")
            self._pending_diagnosis = None
            self._chain.inbound(event)
            self.end(self._pending_diagnosis or self._caller_diagnosis(1000, True), "caller")
            return
        self._chain.inbound(event)

    def caller_audio(self, event: Audio) -> None:
        """The hot path: one caller audio frame into the chain."""
        info = self.info
        info.frames_from_caller += 1
        info.bytes_from_caller += len(event.payload)
        self.heard.caller_audio(event.payload)
        self._chain.inbound(event)

    def caller_closed(
        self, code: int | None, reason: str | None, was_clean: bool, gateway_rule: str | None = None
    ) -> None:
        """The caller's leg closed; ``gateway_rule`` names the rule if the gateway ended it."""
        self.metrics.leg_closed("caller", code)
        self._caller_gone = True
        event = CallerClosed(code, reason, was_clean, gateway_rule=gateway_rule)
        self._pending_diagnosis = None
        self._chain.inbound(event)
        # A refusal at the handshake already decided the diagnosis.
        diagnosis = self.diagnosis or self._pending_diagnosis or self._caller_diagnosis(
            code, was_clean, gateway_rule
        )
        self.end(diagnosis, "caller")
        self._machine.leg_gone("caller")

    def _caller_diagnosis(
        self, code: int | None, was_clean: bool, gateway_rule: str | None = None
    ) -> Diagnosis:
        return Diagnosis(
            code=classify_caller_close(code, was_clean, self._stopped, gateway_rule),
            leg="caller",
            phase=self.info.phase,
            close_code=code,
        )

    def _caller_sendable(self) -> CallerLeg | None:
        caller = self.caller
        if caller is not None and caller.state == _OPEN:
            return caller
        return None

    # --- from the Deepgram leg -------------------------------------------------------------------

    def upstream_opened(
        self, leg: UpstreamLeg, request_id: str | None, port: UpstreamPort | None = None
    ) -> None:
        """The current session's WebSocket opened (``port`` None: the current one)."""
        if port is not None and port is not self._port:
            leg.close(1000)
            return
        self.upstream = leg
        self.info.request_id = request_id
        self.info.request_ids.append(request_id)
        self._opened_at = self.clock.seconds()
        self.metrics.connected(self.info.mode, self._opened_at - self._connect_started)
        # The last Error belongs to the session it came with.
        self.info.last_error = None
        self.log.info(
            "Deepgram {mode} session open, dg-request-id {request_id}",
            mode=self.info.mode,
            request_id=request_id,
        )
        self._machine.upstream_connected()
        if self.upstream is not leg or leg.state != _OPEN:
            return  # the machine closed it (the call is ending)
        self._chain.outbound(UpstreamOpened(request_id, self.info.mode))
        if self.info.mode == "listen":
            self._machine.settings_applied()

    def from_upstream(self, event: Any) -> None:
        """An event from Deepgram (agent audio goes through `upstream_audio`)."""
        if self.debug:
            self._debug("deepgram -> gateway", event)
        if type(event) is DeepgramEvent:
            kind = event.type
            if kind == "Error":
                self.info.last_error = dict(event.message)
                self.info.last_error_seen = self.info.last_error
            elif kind == "Warning":
                self.info.last_warning = dict(event.message)
            elif kind == "Welcome":
                self._welcomed(event.message)
            elif kind == "SettingsApplied":
                self.metrics.settings_applied(self.clock.seconds() - self._opened_at)
            elif kind == "ConversationText" and event.message.get("role") == "user":
                self._turn_ended_at = self.clock.seconds()
                self.heard.user_turn_ended()
        self._chain.outbound(event)

    def _record(self, event: DeepgramEvent) -> None:
        """
        The one place a call's transcript and conversation are kept and logged: after the chain,
        so a stage that rewrites or redacts them changes every copy (log, report, webhook).
        """
        kind = event.type
        self.transcript.observe(kind, event.message)
        if not self.config.log_conversation:
            return
        if kind == "ConversationText":
            role = event.message.get("role")
            self.log.info("{speaker}: {content}", speaker="caller" if role == "user" else "agent",
                          content=event.message.get("content"))
        elif kind == "Results" and event.message.get("is_final"):
            alternatives = (event.message.get("channel") or {}).get("alternatives") or [{}]
            text = alternatives[0].get("transcript") if isinstance(alternatives[0], dict) else None
            if text:
                self.log.info("{speaker}: {content}", speaker="caller", content=text)
        elif kind == "TurnInfo" and event.message.get("event") == "EndOfTurn":
            text = event.message.get("transcript")
            if isinstance(text, str) and text:
                self.log.info("{speaker}: {content}", speaker="caller", content=text)

    def _welcomed(self, message: Any) -> None:
        """Welcome carries the session's request id: use it where the header had none."""
        request_id = message.get("request_id")
        if self.info.request_id is None and isinstance(request_id, str) and request_id:
            self.info.request_id = request_id[:128]
            if self.info.request_ids:
                self.info.request_ids[-1] = self.info.request_id

    def upstream_audio(self, event: Audio) -> None:
        """The hot path: one agent audio frame into the chain."""
        info = self.info
        info.frames_from_upstream += 1
        info.bytes_from_upstream += len(event.payload)
        if self._turn_ended_at is not None:
            self.metrics.agent_responded(self.clock.seconds() - self._turn_ended_at)
            self._turn_ended_at = None
        self._chain.outbound(event)

    def upstream_closed(self, event: UpstreamClosed, port: UpstreamPort | None = None) -> None:
        """
        The current session ended (``port`` None: the current one): its leg received or sent
        a Close frame, or the connection was lost or never made. Reported once per session.
        """
        self.metrics.leg_closed("deepgram", event.code)
        if port is None:
            port = self._port
        if port is None or port is not self._port:
            return
        self._detach_upstream()
        event = attrs.evolve(event, phase=self.info.phase)
        self._pending_diagnosis = None
        self._chain.outbound(event)
        diagnosis = self._pending_diagnosis or diagnose_upstream(event, self.info.last_error)
        self._session_lost(diagnosis)

    def upstream_failed(self, diagnosis: Diagnosis) -> None:
        """A stage gave up on the current session (no Welcome, no SettingsApplied in time)."""
        port = self._port
        if port is None or self.info.phase in ("ending", "closed"):
            self.end(diagnosis, "upstream")
            return
        leg = self.upstream
        self.log.warn("giving up on Deepgram session: {diagnosis_code}: {summary}",
                      diagnosis_code=diagnosis.code, summary=diagnosis.entry.summary)
        self._detach_upstream()
        if leg is not None and leg.state == _OPEN:
            leg.close(1000)
        self._session_lost(diagnosis)

    def _detach_upstream(self) -> None:
        """The call is done with the current session: nothing it says reaches the call again."""
        port, self._port = self._port, None
        if port is not None:
            port.detach()
        self.upstream = None
        self._live_leg = None
        attempt, self._attempt = self._attempt, None
        if attempt is not None and not attempt.called:
            attempt.cancel()

    def _session_lost(self, diagnosis: Diagnosis) -> None:
        """After the current session was detached: reconnect, or end the call."""
        if self.info.phase in ("ending", "closed"):
            self._machine.leg_gone("upstream")
            return
        if not diagnosis.retryable or self.info.phase not in ("connecting", "configuring", "live"):
            self.end(diagnosis, "upstream")
            return
        if self._draining():
            self.end(diagnosis, "upstream")
            return
        decision = self._budget.lost(self.clock.seconds(), diagnosis.code)
        if isinstance(decision, GiveUp):
            self.log.warn("giving up on Deepgram: {reason}; {sessions}", reason=decision.reason,
                          sessions=self._budget.summary())
            if decision.unstable:
                diagnosis = attrs.evolve(
                    diagnosis, code="DG_UNSTABLE",
                    detail=f"{decision.reason}; {self._budget.summary()}",
                )
            self.end(diagnosis, "upstream")
            return
        self._replay_recent()
        self._machine.upstream_lost(decision.delay_s, diagnosis)

    # --- reconnecting ----------------------------------------------------------------------------

    def _schedule_retry(self, delay: float, diagnosis: Diagnosis) -> None:
        attempt = self._budget.reconnects
        self.count("reconnects", diagnosis=diagnosis.code)
        self.log.warn(
            "Deepgram leg lost ({diagnosis_code}: {summary}); reconnect {attempt} "
            "(at most {per_call} per call) in {delay_s:.2f} s, caller kept connected",
            diagnosis_code=diagnosis.code,
            summary=diagnosis.entry.summary,
            attempt=attempt,
            per_call=self.config.reconnect_max_per_call,
            delay_s=delay,
        )
        self._chain.outbound(UpstreamReconnecting(attempt, delay, diagnosis))
        self._retry_timer = self.clock.callLater(delay, self._machine.retry_due)

    def _enter_live(self) -> None:
        if self._budget.in_outage:
            self.log.info("Deepgram session restored after {reconnects} reconnect(s) in this call",
                          reconnects=self._budget.reconnects)
        self._budget.restored()
        self._live_leg = self.upstream
        self._release_held()

    def _draining(self) -> bool:
        return bool(getattr(self._gateway_state, "draining", False))

    # --- holding and replaying what goes to Deepgram ---------------------------------------------

    def _hold(self, is_audio: bool, item: Any) -> None:
        if self.info.phase in ("ending", "closed"):
            self.count("frames_dropped" if is_audio else "control_dropped", reason="call_ending")
            return
        if is_audio:
            size = len(item)
            if self._held_bytes + size > self._hold_limit:
                self.count("frames_dropped", reason="held_over_limit")
                return
            self._held_bytes += size
        else:
            if self._held_messages >= _HELD_MESSAGES:
                self.count("control_dropped", reason="held_over_limit")
                return
            self._held_messages += 1
        self._held.append((is_audio, item))

    def _release_held(self) -> None:
        """Send what was held, in order, while the live session's leg stays open."""
        leg = self._live_leg
        held = self._held
        while held and leg is not None and self._live_leg is leg and leg.state == _OPEN:
            is_audio, item = held.popleft()
            if is_audio:
                self._held_bytes -= len(item)
                self._send_audio(leg, item)
            else:
                self._held_messages -= 1
                leg.send_message(item)

    def _send_audio(self, leg: UpstreamLeg, payload: bytes) -> None:
        leg.send_audio(payload)
        info = self.info
        info.frames_to_upstream += 1
        info.bytes_to_upstream += len(payload)
        if self._replay_limit:
            recent = self._recent
            recent.append(payload)
            self._recent_bytes += len(payload)
            while self._recent_bytes > self._replay_limit:
                self._recent_bytes -= len(recent.popleft())

    def _replay_recent(self) -> None:
        """Put the audio last sent to a lost session back in front of what is held."""
        if not self._recent:
            return
        replay = self._recent
        self._recent = collections.deque()
        self.count("frames_replayed", amount=len(replay))
        self._held_bytes += self._recent_bytes
        self._recent_bytes = 0
        for payload in reversed(replay):
            self._held.appendleft((True, payload))

    # --- ending ----------------------------------------------------------------------------------

    def end(self, diagnosis: Diagnosis, initiator: str = "gateway") -> None:
        """End the call with ``diagnosis`` (the first diagnosis given wins)."""
        self._machine.finish(diagnosis, initiator)

    def _begin_ending(self, diagnosis: Diagnosis, initiator: str, phase: str) -> None:
        self.diagnosis = diagnosis
        self.info.diagnosis_code = diagnosis.code
        self._initiator = initiator
        self._ending_timer = self.clock.callLater(self.config.end_timeout_s, self._deadline)
        cancel(self._retry_timer)
        self._retry_timer = None
        # A caller who hangs up on a transcription (listen, Flux) still wants what they said
        # transcribed: the held audio goes to the session (once it is open) before CloseStream.
        # A voice bot's caller who has gone needs no answer: what is held is dropped.
        finish_transcript = self._finishing_transcript() and self._port is not None
        if self._held and not finish_transcript:
            self._drop_held()
        if self._port is not None and self.upstream is None and not finish_transcript:
            # Still connecting: abandon the attempt.
            self._detach_upstream()
        if self._port is None:
            self._machine.leg_gone("upstream")
        else:
            self._close_upstream()
        if self._caller_gone:
            self._machine.leg_gone("caller")
        elif initiator != "caller" or self._port is None:
            self._close_caller()

    def _finishing_transcript(self) -> bool:
        return self.info.mode in ("listen", "flux") and self._initiator == "caller"

    def _drop_held(self) -> None:
        self.count("frames_dropped", amount=sum(1 for a, _ in self._held if a), reason="call_ending")
        self._held.clear()
        self._held_bytes = self._held_messages = 0

    def _close_upstream(self) -> None:
        leg = self.upstream
        if leg is None or leg.state != _OPEN:
            return
        if self._finishing_transcript():
            # The audio held for this session first (it is all the caller said), then: let
            # Deepgram finish: last Results, Metadata, then its own 1000 close (Flux: the last
            # turn, then a close without a status code).
            while self._held and leg.state == _OPEN:
                is_audio, item = self._held.popleft()
                if is_audio:
                    self._send_audio(leg, item)
            self._drop_held()
            leg.send_message(CLOSE_STREAM)
        else:
            leg.close(1000)

    def _close_caller(self) -> None:
        caller = self._caller_sendable()
        if caller is None:
            return
        assert self.diagnosis is not None
        code = 1000 if self._initiator == "caller" else self.diagnosis.caller_close
        if self.info.leg == "client" and code in _CLIENT_ERRORS:
            # Raw clients get the JSON error before the close (auth errors are sent by auth).
            caller.send_error(_CLIENT_ERRORS[code], f"{self.diagnosis.code}: {self.diagnosis.entry.summary}")
        caller.close(code, self.diagnosis.code)

    def _leg_gone(self, leg: str, inputs: _CallInputs) -> None:
        if leg == "upstream" and not self._caller_gone:
            self._close_caller()
        if self._port is None and self._caller_gone:
            inputs.all_closed()

    def _deadline(self) -> None:
        self._ending_timer = None
        self.log.warn("legs still open {timeout_s} s after the end began; aborting them",
                      timeout_s=self.config.end_timeout_s)
        if self.upstream is not None:
            self.upstream.abort()
        self._detach_upstream()
        if self.caller is not None and not self._caller_gone:
            self.caller.abort()
        self._caller_gone = True
        self._machine.all_closed()

    def _cleanup(self) -> None:
        cancel(self._ending_timer)
        self._ending_timer = None
        self._detach_upstream()
        self._recent.clear()
        self._chain.close()
        d = self.diagnosis
        assert d is not None
        self.report = build_report(self, self.clock.seconds())
        if self._segments:
            # One report for the whole call: the earlier processes' parts, then this one.
            self.report["segments"] = self._segments
            self.report["handovers"] = self._handovers
        self.log.info(
            "call {call_id} ended: {code} in {ended_phase}; {description}; "
            "stream {stream_sid}, dg-request-id {dg_request_id}",
            code=d.code,
            ended_phase=d.phase,
            description=d.describe(),
            dg_request_id=self.info.request_id or d.dg_request_id,
            call_report=self.report,
        )
        self.is_closed = True
        self._on_closed(self)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(self)

    def when_closed(self) -> Deferred:
        """A new Deferred that fires with the call once it is closed (cancelling it is harmless)."""
        d: Deferred = Deferred()
        if self.is_closed:
            d.callback(self)
        else:
            self._waiters.append(d)
        return d

    # --- the sinks at either end of the chain ----------------------------------------------------

    def _inbound_sink(self, event: Any) -> None:
        kind = type(event)
        if kind is Audio:
            payload = event.payload
            if not payload:
                self.count("frames_dropped", reason="empty_at_leg")
                return
            leg = self._live_leg
            if leg is not None and leg.state == _OPEN:
                if leg.congested:
                    self.count("frames_dropped", reason="deepgram_backpressure")
                    return
                if self._held:
                    self._hold(True, payload)
                    self._release_held()
                    return
                self._send_audio(leg, payload)
            else:
                self._hold(True, payload)
        elif kind is UpstreamMessage:
            if self.debug:
                self._debug("gateway -> deepgram", event)
            self._send_message(event)
        elif kind is OpenUpstream:
            self._machine.upstream_requested(event.url)
        elif kind is HandshakeRefused:
            self._refusal = event
        elif kind is CallerClosed or kind is StreamStopped:
            diagnosis = getattr(event, "diagnosis", None)
            if diagnosis is not None:
                self._pending_diagnosis = diagnosis
        elif kind is CallerControl:
            # A /client app's control message: a client message of this mode's endpoint that an
            # app may send (not the gateway's own Settings, KeepAlive, CloseStream or function
            # answers), judged strictly by the SDK's types; then through the gate, which holds it
            # in order until the session is live. A refusal is one Error naming the field.
            message = dict(event.message)
            endpoint = self.info.mode
            try:
                check_client_message(message, endpoint, allowed=app_control_types(endpoint))
            except SettingsError as e:
                unknown = e.field == "message.type"
                self.count("caller_messages_rejected",
                           reason="unknown_message" if unknown else "invalid_message")
                caller = self._caller_sendable()
                if caller is not None:
                    caller.send_error("UNKNOWN_MESSAGE" if unknown else "INVALID_MESSAGE",
                                      f"{e.field}: {e.message}")
                return
            self.count("control_messages", type=message["type"])
            self._send_message(UpstreamMessage(message))

    def _send_message(self, event: UpstreamMessage) -> None:
        """A JSON message towards Deepgram, through the gate (see the class docstring)."""
        kind = event.type
        if kind == "Settings":
            leg = self.upstream
            if leg is not None and leg.state == _OPEN and self.info.phase == "configuring":
                leg.send_message(event.message)
            else:
                self.count("control_dropped", type=kind, reason="no_session")
            return
        leg = self._live_leg
        if leg is not None and leg.state == _OPEN:
            if self._held:
                self._hold(False, event.message)
                self._release_held()
            else:
                leg.send_message(event.message)
        elif kind == "KeepAlive":
            self.count("control_dropped", type=kind, reason="not_live")
        else:
            self._hold(False, event.message)

    def _outbound_sink(self, event: Any) -> None:
        kind = type(event)
        caller = self.caller
        if kind is Audio:
            if caller is not None and caller.state == _OPEN and event.payload:
                if caller.congested:
                    self.count("frames_dropped", reason="caller_backpressure")
                    return
                caller.send_audio(event.payload)
                if self.heard.armed:
                    self.heard.agent_audio_sent()
                info = self.info
                info.frames_to_caller += 1
                info.bytes_to_caller += len(event.payload)
            return
        if self.debug:
            self._debug("gateway -> caller", event)
        caller = self._caller_sendable()
        if kind is DeepgramEvent:
            if event.type in _RECORDED:
                self._record(event)
            if event.type == "SettingsApplied":
                self._machine.settings_applied()
            elif event.type == "FunctionCallRequest":
                for item in event.message.get("functions") or ():
                    if isinstance(item, dict) and item.get("client_side"):
                        self._functions.dispatch(item)
            elif event.type == "FunctionCallCancelled":
                # Deepgram took these requests back: stop them, and never send their responses.
                for item in event.message.get("functions") or ():
                    if isinstance(item, dict):
                        self._functions.cancel(str(item.get("id", "")), str(item.get("name", "")))
            elif event.type == "Connected" and self.info.mode == "flux":
                # Flux's confirmation of the session (its SettingsApplied): the call goes live.
                self._machine.settings_applied()
            elif event.type == "LatencyReport":
                # Deepgram's own latency figures, per call (report) and per process (metrics).
                for stage, seconds in latency_figures(event.message).items():
                    self.count("deepgram_latency_ms", round(seconds * 1000), stage=stage)
                    self.count("deepgram_latency_reports", stage=stage)
            elif event.type not in known_server_types(self.info.mode):
                # Newer than the installed SDK: forwarded like any event, counted, never an error.
                self.count("upstream_messages_unknown")
                if self.info.counters[("upstream_messages_unknown", ())] == 1:
                    self.log.info("Deepgram sent a message type the installed deepgram-sdk does not "
                                  "know: {message_type!r:.64}; forwarded and counted",
                                  message_type=event.type)
            caller = self._caller_sendable()
            if caller is not None:
                if event.type == "UserStartedSpeaking":
                    # Barge-in: drop the agent audio queued at Twilio (clients do it themselves).
                    caller.send_clear()
                caller.send_event(event)
        elif kind is Clear:
            if caller is not None:
                caller.send_clear()
        elif kind is SendMark:
            if caller is not None:
                caller.send_mark(event.name)
        elif kind is CallerError:
            if caller is not None:
                caller.send_error(event.code, event.message)
        elif kind is CallerHandover:
            if caller is not None:
                caller.send_event(event)  # a JSON message to /client; Twilio's leg sends none
        elif kind is UpstreamClosed:
            if event.diagnosis is not None:
                self._pending_diagnosis = event.diagnosis

    def _debug(self, direction: str, event: Any) -> None:
        """The per-call debug switch: one line per control message, secrets redacted."""
        if type(event) is Audio:
            return
        message = getattr(event, "message", None)
        if isinstance(message, Mapping):
            body: Any = redact(dict(message))
        elif attrs.has(type(event)):
            body = redact(attrs.asdict(event, recurse=False))
        else:
            body = repr(event)
        self.log.info("debug {direction}: {event_type} {body}", direction=direction,
                      event_type=type(event).__name__, body=body)

    def _stage_failed(self, name: str, event: object) -> None:
        self.log.failure(
            "plugin {plugin} failed on {event_type}; ending the call",
            plugin=name,
            event_type=type(event).__name__,
        )
        self.count("plugin_errors", plugin=name)
        self.end(Diagnosis("PLUGIN_ERROR", leg="gateway", phase=self.info.phase))

    # --- opening the Deepgram leg ----------------------------------------------------------------

    def _open_upstream(self, url: str) -> None:
        self._upstream_url = url
        self._connect_started = self.clock.seconds()
        port = UpstreamPort(self, next(self._sessions))
        self._port = port
        headers = {"Authorization": f"Token {self.config.api_key}"}
        d = self._connector(url, headers, port)
        timeout = self.config.connect_timeout_s
        remaining = self._budget.remaining_s(self.clock.seconds())
        if remaining is not None:
            # During an outage the attempt also stops where the outage's time runs out.
            timeout = max(0.1, min(timeout, remaining))
        d.addTimeout(timeout, self.clock)
        if port is self._port and not d.called:
            self._attempt = d

        def failed(failure: Failure) -> None:
            if port is not self._port:
                return None
            self._attempt = None
            self.upstream_closed(
                UpstreamClosed(
                    code=None,
                    reason=f"connection failed: {failure.getErrorMessage()}",
                    was_clean=False,
                    connect_failed=True,
                ),
                port,
            )
            return None

        def done(result: object) -> None:
            if port is self._port:
                self._attempt = None

        d.addCallbacks(done, failed)


def diagnose_upstream(event: UpstreamClosed, last_error: dict[str, Any] | None) -> Diagnosis:
    """The diagnosis of a Deepgram leg that ended as ``event`` says."""
    if event.connect_failed:
        code = "DG_UNREACHABLE"
    else:
        code = classify_upstream_close(
            event.code, event.reason, event.http_status, event.phase, last_error
        )
    return Diagnosis(
        code=code,
        leg="upstream",
        phase=event.phase,
        close_code=event.code,
        close_reason=event.reason,
        http_status=event.http_status,
        dg_error=event.dg_error,
        dg_request_id=event.dg_request_id,
        error=(
            {"code": str(last_error.get("code")), "description": str(last_error.get("description"))}
            if last_error
            else None
        ),
    )
