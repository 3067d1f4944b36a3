"""
The call's Deepgram side: one session at a time, opened, lost, and opened again within the
reconnect budget (`gateway.reconnect`), with the caller kept connected.

Each attempt reports to its own `gateway.upstream.UpstreamPort`; once the call is done with a
session (lost, replaced, abandoned) its port is detached and nothing the old session still says
reaches the call. What a session's end means is decided here: a retryable diagnosis within the
budget is a reconnect (the audio in flight is replayed to the next session), anything else ends
the call.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from twisted.logger import Logger

from gateway.config import GatewayConfig
from gateway.diagnostics import Diagnosis, diagnose_upstream
from gateway.events import UpstreamClosed, UpstreamOpened, UpstreamReconnecting
from gateway.interfaces import LegState, UpstreamLeg
from gateway.plugin import cancel
from gateway.reconnect import GiveUp, ReconnectBudget, ReconnectPolicy
from gateway.upstream import Connector, UpstreamPort

if TYPE_CHECKING:  # the sessions belong to one call and report to it
    from gateway.call import Call

__all__ = ["UpstreamSessions"]

_OPEN = int(LegState.OPEN)


class UpstreamSessions:
    """One call's Deepgram sessions (see the module docstring)."""

    def __init__(self, call: Call, connector: Connector) -> None:
        config = call.config
        self._call = call
        self._connector = connector
        self.config: GatewayConfig = config
        self.log: Logger = call.log
        self.count = call.count
        # The hot-path reports go straight to the call (a port copies these bound methods).
        self.upstream_audio = call.upstream_audio
        self.from_upstream = call.from_upstream
        #: The current session: its port, and its leg once open.
        self.port: UpstreamPort | None = None
        self.leg: UpstreamLeg | None = None
        self.budget = ReconnectBudget(ReconnectPolicy(
            attempts=config.reconnect_attempts,
            max_s=config.reconnect_max_s,
            backoff_s=config.reconnect_backoff_s,
            backoff_max_s=config.reconnect_backoff_max_s,
            window_s=config.reconnect_window_s,
            window_max=config.reconnect_window_max,
            per_call=config.reconnect_max_per_call,
        ))
        self.retry_timer: Any = None
        self._numbers = itertools.count(1)
        self._attempt: Deferred | None = None
        self._url = ""
        self._connect_started = 0.0

    # --- opening ---------------------------------------------------------------------------------

    def open(self, url: str) -> None:
        """Open a Deepgram session at ``url``, reporting to a new port."""
        call = self._call
        clock = call.clock
        self._url = url
        self._connect_started = clock.seconds()
        port = UpstreamPort(self, next(self._numbers))
        self.port = port
        d = self._connector(url, {"Authorization": f"Token {self.config.api_key}"}, port)
        timeout = self.config.connect_timeout_s
        remaining = self.budget.remaining_s(clock.seconds())
        if remaining is not None:
            # During an outage the attempt also stops where the outage's time runs out.
            timeout = max(0.1, min(timeout, remaining))
        d.addTimeout(timeout, clock)
        if port is self.port and not d.called:
            self._attempt = d

        def failed(failure: Failure) -> None:
            if port is self.port:
                self._attempt = None
                self.upstream_closed(UpstreamClosed(
                    code=None, reason=f"connection failed: {failure.getErrorMessage()}",
                    was_clean=False, connect_failed=True,
                ), port)

        def done(result: object) -> None:
            if port is self.port:
                self._attempt = None

        d.addCallbacks(done, failed)

    def retry(self) -> None:
        """The backoff is over: open the next session at the same URL."""
        self.open(self._url)

    @property
    def connecting(self) -> bool:
        """An attempt is under way and its leg has not opened yet."""
        return self.port is not None and self.leg is None

    # --- what a session's port reports -----------------------------------------------------------

    def upstream_opened(self, leg: UpstreamLeg, request_id: str | None, port: UpstreamPort | None = None) -> None:
        """The current session's WebSocket opened (``port`` None: the current one)."""
        if port is not None and port is not self.port:
            leg.close(1000)
            return
        call = self._call
        info = call.info
        self.leg = leg
        info.request_id = request_id
        info.request_ids.append(request_id)
        call.observer.opened_at = opened_at = call.clock.seconds()
        call.metrics.connected(info.mode, opened_at - self._connect_started)
        info.last_error = None  # the last Error belongs to the session it came with
        self.log.info("Deepgram {mode} session open, dg-request-id {request_id}",
                      mode=info.mode, request_id=request_id)
        call.machine.upstream_connected()
        if self.leg is not leg or leg.state != _OPEN:
            return  # the machine closed it (the call is ending)
        call.chain.outbound(UpstreamOpened(request_id, info.mode))
        if info.mode == "listen":
            call.machine.settings_applied()

    def upstream_closed(self, event: UpstreamClosed, port: UpstreamPort | None = None) -> None:
        """
        The current session ended (``port`` None: the current one): its leg received or sent
        a Close frame, or the connection was lost or never made. Reported once per session.
        """
        call = self._call
        call.metrics.leg_closed("deepgram", event.code)
        if port is None:
            port = self.port
        if port is None or port is not self.port:
            return
        self.detach()
        event = attrs.evolve(event, phase=call.info.phase)
        diagnosis = call.diagnosed(event) or diagnose_upstream(event, call.info.last_error)
        self._lost(diagnosis)

    def failed(self, diagnosis: Diagnosis) -> None:
        """A stage gave up on the current session (no Welcome, no SettingsApplied in time)."""
        call = self._call
        if self.port is None or call.info.phase in ("ending", "closed"):
            call.end(diagnosis, "upstream")
            return
        leg = self.leg
        self.log.warn("giving up on Deepgram session: {diagnosis_code}: {summary}",
                      diagnosis_code=diagnosis.code, summary=diagnosis.entry.summary,
                      log_category="DG_SESSION_GIVEN_UP")
        self.detach()
        if leg is not None and leg.state == _OPEN:
            leg.close(1000)
        self._lost(diagnosis)

    # --- done with a session ---------------------------------------------------------------------

    def detach(self) -> None:
        """The call is done with the current session: nothing it says reaches the call again."""
        port, self.port = self.port, None
        if port is not None:
            port.detach()
        self.leg = None
        self._call.gate.shut()
        attempt, self._attempt = self._attempt, None
        if attempt is not None and not attempt.called:
            attempt.cancel()

    def _lost(self, diagnosis: Diagnosis) -> None:
        """After the current session was detached: reconnect, or end the call."""
        call = self._call
        phase = call.info.phase
        if phase in ("ending", "closed"):
            call.machine.leg_gone("upstream")
            return
        draining = bool(getattr(call.gateway_state, "draining", False))
        if not diagnosis.retryable or phase not in ("connecting", "configuring", "live") or draining:
            call.end(diagnosis, "upstream")
            return
        decision = self.budget.lost(call.clock.seconds(), diagnosis.code)
        if isinstance(decision, GiveUp):
            self.log.warn("giving up on Deepgram: {reason}; {sessions}", reason=decision.reason,
                          sessions=self.budget.summary(), log_category="DG_RECONNECT_BUDGET_SPENT")
            if decision.unstable:
                diagnosis = attrs.evolve(diagnosis, code="DG_UNSTABLE",
                                         detail=f"{decision.reason}; {self.budget.summary()}")
            call.end(diagnosis, "upstream")
            return
        call.gate.replay()
        call.machine.upstream_lost(decision.delay_s, diagnosis)

    def schedule_retry(self, delay_s: float, diagnosis: Diagnosis) -> None:
        call = self._call
        attempt = self.budget.reconnects
        self.count("reconnects", diagnosis=diagnosis.code)
        self.log.warn(
            "Deepgram leg lost ({diagnosis_code}: {summary}); reconnect {attempt} "
            "(at most {per_call} per call) in {delay_s:.2f} s, caller kept connected",
            diagnosis_code=diagnosis.code, summary=diagnosis.entry.summary, attempt=attempt,
            per_call=self.config.reconnect_max_per_call, delay_s=delay_s,
            log_category="DG_RECONNECTING",
        )
        call.chain.outbound(UpstreamReconnecting(attempt, delay_s, diagnosis))
        self.retry_timer = call.clock.callLater(delay_s, call.machine.retry_due)

    def restored(self) -> None:
        """The session is live: an outage, if there was one, is over."""
        if self.budget.in_outage:
            self.log.info("Deepgram session restored after {reconnects} reconnect(s) in this call",
                          reconnects=self.budget.reconnects)
        self.budget.restored()

    def stop_retrying(self) -> None:
        cancel(self.retry_timer)
        self.retry_timer = None
