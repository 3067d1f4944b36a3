"""
One call: a caller leg, a Deepgram leg, the chain of stages between them, and the lifecycle.

The media path, both ways, is `Call.caller_audio` -> the chain -> `Call._inbound_sink` -> the
gate (`gateway.gate`) -> the Deepgram leg, and `Call.upstream_audio` -> the chain ->
`Call._outbound_sink` -> the caller leg. The lifecycle is an explicit state machine
(`gateway.lifecycle`); the 20 ms audio frames stay out of it.

Lifecycle facts (a leg opened or closed, Twilio's ``stop``) are recorded by the call first, then
shown to the chain, so no stage can lose them; the close_codes stage diagnoses them on the way
(``ctx.diagnose``). Around the call: `gateway.callinfo` (its facts), `gateway.context` (what a
stage may ask), `gateway.upstream` (a Deepgram attempt's port), `gateway.observe` (what the call
learns from Deepgram), `gateway.reconnect` (the reconnect budget).
"""

from __future__ import annotations

import itertools
import os
from typing import Any, Callable, Mapping

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from gateway.assembly import CALLER_FORMATS, ConfiguredGateway
from gateway.callinfo import CallInfo, CallLogger, NoMetrics
from gateway.chain import Chain
from gateway.codecs.close_codes import classify_caller_close
from gateway.codecs.deepgram import CLOSE_STREAM
from gateway.codecs.deepgram_messages import app_control_types, check_client_message
from gateway.config import GatewayConfig
from gateway.context import CallContext
from gateway.diagnostics import Diagnosis
from gateway.errors import AuthError, SettingsError
from gateway.events import (
    Audio,
    CallerClosed,
    CallerControl,
    CallerError,
    CallerHandover,
    Clear,
    DeepgramEvent,
    FunctionCallCancelled,
    FunctionCallRequest,
    Handshake,
    HandoverRequested,
    SendMark,
    SettingsApplied,
    StreamStarted,
    StreamStopped,
    UpstreamClosed,
    UpstreamMessage,
    UserStartedSpeaking,
    typed,
)
from gateway.functions import FunctionDispatcher
from gateway.gate import UpstreamGate
from gateway.handover import record as handover_record
from gateway.interfaces import CallerLeg, LegState, UpstreamLeg
from gateway.latency import CallerHeardLatency
from gateway.lifecycle import CallInputs, build_machine
from gateway.observe import SessionObserver, debug_line
from gateway.plugin import cancel
from gateway.report import build_report
from gateway.sessions import UpstreamSessions
from gateway.upstream import Connector, UpstreamPort

__all__ = ["Call", "CallInfo", "CallerLeg", "UpstreamLeg", "UpstreamPort", "CALLER_FORMATS"]

_ids = itertools.count(1)

#: The /client error code sent in JSON before closing with each gateway close code.
_CLIENT_ERRORS = {4500: "SESSION_SETUP_FAILED", 4501: "SESSION_FAILED", 4502: "INTERNAL_ERROR"}

#: The leg state in which the call may send (a plain int: the hot path compares with it).
_OPEN = int(LegState.OPEN)

_Machine: Callable[[Call], CallInputs] | None = None


def _ignore(seconds: float) -> None:
    """Metrics that go nowhere (a call made without a gateway)."""


@attrs.frozen
class _Refusal:
    http_status: int
    code: str
    message: str


class Call:
    """
    One stream from the caller's handshake to its last close.

    ``connector(url, headers, port)`` opens a Deepgram leg that reports to ``port`` (an
    `UpstreamPort`); it returns a Deferred that fires when the attempt is over.
    ``on_closed(call)`` is called once, when the call is over. What goes towards Deepgram
    passes one gate at the end of the chain (`gateway.gate.UpstreamGate`).
    """

    def __init__(
        self,
        configured: ConfiguredGateway,
        leg: str,
        clock: IReactorTime,
        connector: Connector,
        on_closed: Callable[[Call], None] = lambda call: None,
        call_id: str | None = None,
        gateway_state: Any = None,
        metrics: Any = None,
    ) -> None:
        global _Machine
        if _Machine is None:
            _Machine = build_machine()
        self.config: GatewayConfig = configured.config
        config = self.config
        self.clock = clock
        self._on_closed = on_closed
        caller_format = CALLER_FORMATS[leg]
        upstream_in, upstream_out = configured.formats[leg]
        self.info = info = CallInfo(
            call_id=call_id or f"{os.getpid():x}-{next(_ids)}",
            leg=leg,
            mode=config.mode,
            caller_format=caller_format,
            upstream_input=upstream_in,
            upstream_output=upstream_out,
            started_at=clock.seconds(),
        )
        self.log: CallLogger = CallLogger("gateway.call", info)
        self.diagnosis: Diagnosis | None = None
        self.caller: CallerLeg | None = None
        self._caller_gone = False
        self._initiator = ""
        self._ending_timer: Any = None
        self._stopped = False
        self._pending_diagnosis: Diagnosis | None = None
        self._refusal: _Refusal | None = None
        self.gateway_state = gateway_state
        self._waiters: list[Deferred] = []
        self.metrics = metrics if metrics is not None else NoMetrics()
        self.heard = CallerHeardLatency(caller_format, clock, getattr(self.metrics, "caller_heard", _ignore))
        self.gate = UpstreamGate(
            info, self.count, upstream_in.bytes_for_ms(configured.hold_audio_ms),
            upstream_in.bytes_for_ms(config.replay_ms) if config.replay_ms else 0,
        )
        self.observer = SessionObserver(info, clock, self.metrics, self.heard, self.log,
                                        config.log_conversation, self.count)
        self.transcript = self.observer.transcript
        self.debug = config.debug_calls
        self.report: dict[str, Any] | None = None
        self.is_closed = False
        names = [name for name, _ in configured.stages]
        stages = [
            factory(CallContext(self, index, info, clock, CallLogger(f"plugins.{name}", info)))
            for index, (name, factory) in enumerate(configured.stages)
        ]
        self.chain = Chain(names, stages, self._inbound_sink, self._outbound_sink, self._stage_failed)
        self._stages = dict(zip(names, stages))
        # A call handed over from other processes: their reports, oldest first, and the count.
        self._segments: list[dict[str, Any]] = []
        self._handovers = 0
        info.functions = [spec.declaration(name) for name, (_, spec) in configured.functions.items()]
        self._functions = FunctionDispatcher(
            configured.functions,
            {plugin: self._stages[plugin] for plugin, _ in configured.functions.values()},
            clock,
            respond=lambda message: self.chain.inbound(UpstreamMessage(message)),
            count=self.count,
            log=self.log,
        )
        self.sessions = UpstreamSessions(self, connector)
        self.machine = _Machine(self)

    # --- facts for stages and the service --------------------------------------------------------

    @property
    def phase(self) -> str:
        return self.info.phase

    def count(self, name: str, amount: int = 1, **labels: str) -> None:
        """Add to a per-call counter (exported as metrics)."""
        self.info.counters[(name, tuple(sorted(labels.items())))] += amount

    # --- the media path, both ways ---------------------------------------------------------------

    def caller_audio(self, event: Audio) -> None:
        """The hot path: one caller audio frame into the chain."""
        info = self.info
        info.frames_from_caller += 1
        info.bytes_from_caller += len(event.payload)
        self.heard.caller_audio(event.payload)
        self.chain.inbound(event)

    def _inbound_sink(self, event: Any) -> None:
        """What leaves the chain towards Deepgram: through the gate."""
        kind = type(event)
        if kind is Audio:
            if event.payload:
                self.gate.audio(event.payload)
            else:
                self.count("frames_dropped", reason="empty_at_leg")
        elif kind is UpstreamMessage:
            if self.debug:
                debug_line(self.log, "gateway -> deepgram", event)
            self._send_message(event)
        elif kind is CallerControl:
            self._caller_control(event)

    def upstream_audio(self, event: Audio) -> None:
        """The hot path: one agent audio frame into the chain."""
        info = self.info
        info.frames_from_upstream += 1
        info.bytes_from_upstream += len(event.payload)
        if self.observer.turn_ended_at is not None:  # per frame: an attribute read, not a call
            self.observer.agent_answered()
        self.chain.outbound(event)

    def _outbound_sink(self, event: Any) -> None:
        """What leaves the chain towards the caller: to the caller's leg while it is open."""
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
            debug_line(self.log, "gateway -> caller", event)
        if isinstance(event, DeepgramEvent):
            event = typed(event)
            self._deepgram_event(event)
            caller = self._caller_sendable()
            if caller is not None:
                if type(event) is UserStartedSpeaking:
                    # Barge-in: drop the agent audio queued at Twilio (clients do it themselves).
                    caller.send_clear()
                caller.send_event(event)
            return
        caller = self._caller_sendable()
        if caller is None:
            return
        if kind is Clear:
            caller.send_clear()
        elif kind is SendMark:
            caller.send_mark(event.name)
        elif kind is CallerError:
            caller.send_error(event.code, event.message)
        elif kind is CallerHandover:
            caller.send_event(event)  # a JSON message to /client; Twilio's leg sends none

    def _send_message(self, event: UpstreamMessage) -> None:
        """A JSON message towards Deepgram: ``Settings`` while configuring, the rest by the gate."""
        if event.type == "Settings":
            leg = self.upstream
            if leg is not None and leg.state == _OPEN and self.info.phase == "configuring":
                leg.send_message(event.message)
            else:
                self.count("control_dropped", type="Settings", reason="no_session")
            return
        self.gate.message(event.type, event.message)

    def _caller_control(self, event: CallerControl) -> None:
        """
        A /client app's control message: a client message of this mode's endpoint that an app may
        send (not the gateway's own Settings, KeepAlive, CloseStream or function answers), judged
        strictly by the SDK's types; then through the gate. A refusal is one Error naming the field.
        """
        message = dict(event.message)
        endpoint = self.info.mode
        try:
            check_client_message(message, endpoint, allowed=app_control_types(endpoint))
        except SettingsError as e:
            unknown = e.field == "message.type"
            self.count("caller_messages_rejected", reason="unknown_message" if unknown else "invalid_message")
            caller = self._caller_sendable()
            if caller is not None:
                caller.send_error("UNKNOWN_MESSAGE" if unknown else "INVALID_MESSAGE", f"{e.field}: {e.message}")
            return
        self.count("control_messages", type=message["type"])
        self._send_message(UpstreamMessage(message))

    def _deepgram_event(self, event: DeepgramEvent) -> None:
        """A Deepgram message as it leaves the chain: what the call itself acts on."""
        if isinstance(event, SettingsApplied) or (event.type == "Connected" and self.info.mode == "flux"):
            # Flux's Connected is its confirmation of the session: the call goes live.
            self.machine.settings_applied()
        elif isinstance(event, FunctionCallRequest):
            for item in event.client_side:
                self._functions.dispatch(item)
        elif isinstance(event, FunctionCallCancelled):
            # Deepgram took these requests back: stop them, and never send their responses.
            for call_id, name in event.cancelled:
                self._functions.cancel(call_id, name)
        else:
            self.observer.delivered(event, self.info.mode)

    # --- what stages ask (gateway.context) -------------------------------------------------------

    def open_upstream(self, url: str) -> None:
        self.machine.upstream_requested(url)

    def refuse(self, http_status: int, code: str, message: str) -> None:
        self._refusal = _Refusal(http_status, code, message)

    def diagnose(self, diagnosis: Diagnosis) -> None:
        self._pending_diagnosis = diagnosis

    def diagnosed(self, event: CallerClosed | StreamStopped | UpstreamClosed) -> Diagnosis | None:
        """Show a close to the chain; the diagnosis a stage gave it (``ctx.diagnose``), if any."""
        self._pending_diagnosis = None
        if type(event) is UpstreamClosed:
            self.chain.outbound(event)
        else:
            self.chain.inbound(event)
        diagnosis, self._pending_diagnosis = self._pending_diagnosis, None
        return diagnosis

    def _stage_failed(self, name: str, event: object) -> None:
        self.log.failure("plugin {plugin} failed on {event_type}; ending the call",
                         plugin=name, event_type=type(event).__name__, log_category="PLUGIN_FAILED")
        self.count("plugin_errors", plugin=name)
        self.end(Diagnosis("PLUGIN_ERROR", leg="gateway", phase=self.info.phase))

    # --- handing over and taking up (gateway.handover) -------------------------------------------

    def request_handover(self, deadline_s: float, reason: str = "drain") -> None:
        """Ask the chain (the handover stage) to hand this call to another process."""
        if self.info.phase not in ("ending", "closed"):
            self.chain.inbound(HandoverRequested(deadline_s, reason))

    def snapshot(self) -> dict[str, Any]:
        """What another process needs to take this call up (`gateway.handover.record`)."""
        segments = self._segments + [build_report(self, self.clock.seconds())]
        return handover_record.take(self.info, self._stages, self.transcript.items, segments, self._handovers)

    def restore(self, record: Mapping[str, Any]) -> None:
        """Become the call ``record`` (a `snapshot` from another process) describes."""
        self._segments, self._handovers = handover_record.restore(
            record, self.info, self._stages, self.transcript.items)

    # --- from the caller leg ---------------------------------------------------------------------

    def caller_handshake(self, event: Handshake) -> None:
        """
        Run the chain on the upgrade request. A stage refuses it with ``ctx.refuse``; this raises
        the matching `AuthError`, which the leg turns into an HTTP error.
        """
        self._refusal = None
        self.chain.inbound(event)
        refusal = self._refusal
        if refusal is not None:
            self.diagnosis = Diagnosis(refusal.code, leg="caller", phase="handshake")
            raise AuthError(refusal.code, refusal.message, http_status=refusal.http_status)

    def caller_opened(self, leg: CallerLeg) -> None:
        self.caller = leg
        self.machine.caller_opened()

    def from_caller(self, event: Any) -> None:
        """An event parsed from the caller's leg (audio goes through `caller_audio`)."""
        if type(event) is StreamStarted:
            info = self.info
            info.stream_sid, info.call_sid, info.account_sid = event.stream_sid, event.call_sid, event.account_sid
            info.custom_parameters = dict(event.custom_parameters)
            flag = event.custom_parameters.get(self.config.debug_parameter, "")
            if flag.lower() in ("1", "true", "yes", "on"):
                self.debug = True
        if self.debug:
            debug_line(self.log, "caller -> gateway", event)
        if type(event) is StreamStopped:
            self._stopped = True
            self.log.info("Twilio sent stop")
            self.end(self.diagnosed(event) or self._caller_diagnosis(1000, True), "caller")
            return
        self.chain.inbound(event)

    def caller_closed(
        self, code: int | None, reason: str | None, was_clean: bool, gateway_rule: str | None = None
    ) -> None:
        """The caller's leg closed; ``gateway_rule`` names the rule if the gateway ended it."""
        self.metrics.leg_closed("caller", code)
        self._caller_gone = True
        diagnosed = self.diagnosed(CallerClosed(code, reason, was_clean, gateway_rule=gateway_rule))
        # A refusal at the handshake already decided the diagnosis.
        diagnosis = self.diagnosis or diagnosed or self._caller_diagnosis(
            code, was_clean, gateway_rule
        )
        self.end(diagnosis, "caller")
        self.machine.leg_gone("caller")

    def _caller_diagnosis(self, code: int | None, was_clean: bool, gateway_rule: str | None = None) -> Diagnosis:
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

    # --- from the Deepgram leg (through the current session's port) ------------------------------

    @property
    def upstream(self) -> UpstreamLeg | None:
        """The current Deepgram session's leg, once open."""
        return self.sessions.leg

    def upstream_opened(self, leg: UpstreamLeg, request_id: str | None, port: UpstreamPort | None = None) -> None:
        self.sessions.upstream_opened(leg, request_id, port)

    def upstream_closed(self, event: UpstreamClosed, port: UpstreamPort | None = None) -> None:
        self.sessions.upstream_closed(event, port)

    def upstream_failed(self, diagnosis: Diagnosis) -> None:
        self.sessions.failed(diagnosis)

    def from_upstream(self, event: Any) -> None:
        """An event from Deepgram (agent audio goes through `upstream_audio`)."""
        if self.debug:
            debug_line(self.log, "deepgram -> gateway", event)
        if isinstance(event, DeepgramEvent):
            self.observer.arrived(event)
        self.chain.outbound(event)

    # --- the lifecycle's actions (gateway.lifecycle.LifecycleCore) -------------------------------

    def open_session(self, url: str) -> None:
        self.sessions.open(url)

    def retry_session(self) -> None:
        self.sessions.retry()

    def enter_live(self) -> None:
        self.sessions.restored()
        self.gate.open(self.sessions.leg)

    def leave_live(self) -> None:
        self.gate.shut()

    def schedule_retry(self, delay_s: float, diagnosis: Diagnosis) -> None:
        self.sessions.schedule_retry(delay_s, diagnosis)

    def begin_ending(self, diagnosis: Diagnosis, initiator: str, phase: str) -> None:
        self.diagnosis = diagnosis
        self.info.diagnosis_code = diagnosis.code
        self._initiator = initiator
        self._ending_timer = self.clock.callLater(self.config.end_timeout_s, self._deadline)
        self.sessions.stop_retrying()
        # A caller who hangs up on a transcription (listen, Flux) still wants what they said
        # transcribed: the held audio goes to the session (once it is open) before CloseStream.
        # A voice bot's caller who has gone needs no answer: what is held is dropped.
        sessions = self.sessions
        finish_transcript = self._finishing_transcript() and sessions.port is not None
        if self.gate.holding and not finish_transcript:
            self.gate.drop()
        if sessions.connecting and not finish_transcript:
            sessions.detach()  # still connecting: abandon the attempt
        if sessions.port is None:
            self.machine.leg_gone("upstream")
        else:
            self.close_upstream()
        if self._caller_gone:
            self.machine.leg_gone("caller")
        elif initiator != "caller" or sessions.port is None:
            self._close_caller()

    def close_upstream(self) -> None:
        leg = self.upstream
        if leg is None or leg.state != _OPEN:
            return
        if self._finishing_transcript():
            # The audio held for this session first (it is all the caller said), then: let
            # Deepgram finish: last Results, Metadata, then its own 1000 close (Flux: the last
            # turn, then a close without a status code).
            self.gate.flush_audio(leg)
            leg.send_message(CLOSE_STREAM)
        else:
            leg.close(1000)

    def leg_gone(self, leg: str, inputs: CallInputs) -> None:
        if leg == "upstream" and not self._caller_gone:
            self._close_caller()
        if self.sessions.port is None and self._caller_gone:
            inputs.all_closed()

    def cleanup(self) -> None:
        cancel(self._ending_timer)
        self._ending_timer = None
        self.sessions.detach()
        self.gate.forget_recent()
        self.chain.close()
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
            code=d.code, ended_phase=d.phase, description=d.describe(),
            dg_request_id=self.info.request_id or d.dg_request_id, call_report=self.report,
        )
        self.is_closed = True
        self._on_closed(self)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(self)

    # --- ending ----------------------------------------------------------------------------------

    def end(self, diagnosis: Diagnosis, initiator: str = "gateway") -> None:
        """End the call with ``diagnosis`` (the first diagnosis given wins)."""
        self.machine.finish(diagnosis, initiator)

    def when_closed(self) -> Deferred:
        """A new Deferred that fires with the call once it is closed (cancelling it is harmless)."""
        d: Deferred = Deferred()
        if self.is_closed:
            d.callback(self)
        else:
            self._waiters.append(d)
        return d

    def _finishing_transcript(self) -> bool:
        return self.info.mode in ("listen", "flux") and self._initiator == "caller"

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

    def _deadline(self) -> None:
        self._ending_timer = None
        self.log.warn("legs still open {timeout_s} s after the end began; aborting them",
                      timeout_s=self.config.end_timeout_s, log_category="CALL_END_DEADLINE")
        if self.upstream is not None:
            self.upstream.abort()
        self.sessions.detach()
        if self.caller is not None and not self._caller_gone:
            self.caller.abort()
        self._caller_gone = True
        self.machine.all_closed()
