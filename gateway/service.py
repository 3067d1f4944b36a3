"""
The running gateway: the set of live calls, the listening port, and draining on stop.

`Gateway` makes calls and knows whether new ones are accepted: a caller's socket holds one of the
``max_calls`` slots only once it has authenticated, and until then lives within the budget of
unauthenticated sockets (`gateway.admission`). `GatewayService` listens on the
configured endpoint and, on ``stopService`` (SIGTERM under twistd), drains: ``/readyz`` turns 503
and new upgrades get 503 while the port stays open; live calls go on until they end or the drain
deadline passes; the rest are closed with 1001 to the caller and a normal close to Deepgram, each
with its diagnosis logged; then the port closes.
"""

from __future__ import annotations

from typing import Any, Mapping

from twisted.application import service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

from gateway.admission import AUTH_TIMEOUT_MESSAGE, Admission, AdmissionCollector
from gateway.api import make_site
from gateway.assembly import ConfiguredGateway
from gateway.call import Call
from gateway.diagnostics import Diagnosis
from gateway.legs.deepgram import connect_deepgram
from gateway.legs.caller import CallerFactory, ClientProtocol, TwilioProtocol
from gateway.legs import dispatch
from gateway.metrics import GatewayMetrics
from gateway.plugin import StartsService, StopsService, UsesAdmission
from gateway.upstream import UpstreamPort
from gateway.webhooks import ReportSender

__all__ = ["Gateway", "GatewayService", "CALLER_OPTIONS", "UPSTREAM_OPTIONS"]

#: Autobahn's defaults are unsafe for a public endpoint (perf-notes §4.4, §7.2): set them all.
CALLER_OPTIONS = dict(
    webStatus=False,
    maxFramePayloadSize=64 * 1024,
    maxMessagePayloadSize=64 * 1024,
    openHandshakeTimeout=5.0,
    closeHandshakeTimeout=2.0,
    autoPingInterval=10.0,
    autoPingTimeout=5.0,
    # A peer breaking a limit gets a Close frame saying why (1009 for a message too big),
    # then closeHandshakeTimeout bounds how long it may hold the socket.
    failByDrop=False,
)
UPSTREAM_OPTIONS = dict(
    maxFramePayloadSize=1024 * 1024,
    maxMessagePayloadSize=1024 * 1024,
    closeHandshakeTimeout=2.0,
)


class Gateway:
    """The calls of this process, and how to make new ones."""

    log = Logger()

    def __init__(self, configured: ConfiguredGateway, reactor: Any) -> None:
        self.configured = configured
        self.config = configured.config
        self.reactor = reactor
        self.calls: set[Call] = set()
        self.draining = False
        self.calls_total = 0
        options = dict(UPSTREAM_OPTIONS, openHandshakeTimeout=self.config.connect_timeout_s)
        self._upstream_options = options
        self.metrics = GatewayMetrics(self)
        self.site: Any = None
        self.admission = Admission(
            self.config.admission,
            self.config.max_calls,
            reactor,
            self._close_unauthenticated,
            draining=lambda: self.draining,
        )
        self.metrics.registry.register(AdmissionCollector(
            self.admission, lambda: self.site.refusals if self.site is not None else {}))
        # The auth stage tells admission when a call has authenticated (it then takes a slot).
        stages = []
        self._admission_aware = False
        for name, factory in configured.stages:
            if isinstance(factory, UsesAdmission):
                factory = factory.with_admission(self.admission)
                self._admission_aware = True
            stages.append((name, factory))
        self.configured = configured.rebind(stages)
        self.reports: ReportSender | None = None
        if self.config.webhook_url:
            self.reports = ReportSender(
                reactor,
                self.config.webhook_url,
                timeout_s=self.config.webhook_timeout_s,
                attempts=self.config.webhook_attempts,
                secret=self.config.webhook_secret,
            )

    @property
    def handover(self) -> Any:
        """The handover stage's factory (its options and the store), if handover is on."""
        for name, factory in self.configured.stages:
            options = getattr(factory, "options", None)
            if name == "handover" and options is not None:
                return factory if options.enabled else None
        return None

    @property
    def handover_enabled(self) -> bool:
        return self.handover is not None

    def refuse_new_call(self) -> str | None:
        """
        Why a new call would be refused now (None: it is accepted): ``draining``, or ``full``
        when every ``max_calls`` slot is held by an authenticated call.
        """
        return self.admission.refusal()

    def refuse_upgrade(self) -> str | None:
        """`refuse_new_call`, counted as a refused call when it refuses (a caller's upgrade)."""
        refusal = self.admission.refusal()
        if refusal is not None:
            self.admission.refused[refusal] += 1
        return refusal

    @property
    def live_calls(self) -> int:
        """Authenticated calls (those holding a slot)."""
        return self.admission.live

    def source_address(self, peer: Any, headers: Mapping[str, str]) -> str:
        """The address an upgrade from ``peer`` (an `IAddress`) is budgeted under."""
        host = getattr(peer, "host", None)
        return self.admission.source(host if isinstance(host, str) else str(peer), headers)

    def new_call(self, leg: str, address: str = "") -> Call:
        """A call for a caller's upgrade from ``address``; it holds nothing until `caller_upgraded`."""
        call = Call(self.configured, leg, self.reactor, self._connect, self._closed,
                    gateway_state=self, metrics=self.metrics)
        self.calls.add(call)
        self.calls_total += 1
        self.admission.arrive(call.info.call_id, call, address)
        return call

    def caller_upgraded(self, call: Call) -> str | None:
        """
        ``call``'s upgrade passed the chain. Unless it has already authenticated (a signed
        Twilio stream), it joins the budget of unauthenticated sockets, with its deadline.
        Returns why the upgrade must be refused (``busy``: the budget is full of sockets too
        young to close), or None.
        """
        if self._admission_aware:
            return self.admission.hold(call.info.call_id)
        # A chain whose auth stage does not report authentication: the old rule, a slot from
        # the upgrade on.
        return self.admission.authenticate(call.info.call_id)

    def _close_unauthenticated(self, call: Call, reason: str) -> None:
        """Admission closes an unauthenticated socket: ``evicted``, ``timeout`` or ``drained``."""
        if reason == "drained":
            diagnosis = Diagnosis("DRAINED", leg="gateway", phase=call.phase)
        else:
            diagnosis = Diagnosis("AUTH_TIMEOUT", leg="caller", phase=call.phase)
            call.count("auth_failures", reason="auth_timeout")
            if call.info.leg == "client" and call.caller is not None:
                call.caller.send_error("AUTH_TIMEOUT", AUTH_TIMEOUT_MESSAGE)
        # The call's own end line says AUTH_TIMEOUT; /metrics counts the reasons. During a flood
        # this runs once per socket, so only at debug.
        call.log.debug("unauthenticated {leg} socket closed by admission: {reason}",
                       leg=call.info.leg, reason=reason)
        call.end(diagnosis)

    def _connect(self, url: str, headers: dict, port: UpstreamPort) -> defer.Deferred:
        return connect_deepgram(self.reactor, url, headers, port, self._upstream_options)

    def _closed(self, call: Call) -> None:
        self.calls.discard(call)
        self.admission.leave(call.info.call_id)
        self.metrics.call_ended(call)
        if call.diagnosis is not None and call.diagnosis.code == "HANDED_OVER":
            return  # the process that takes the call up reports the whole call
        if self.reports is not None and call.report is not None:
            key = "conversation" if call.info.mode == "agent" else "transcript"
            self.reports.send({**call.report, key: call.transcript.items})

    def caller_options(self) -> dict[str, Any]:
        """Autobahn options of the caller legs; stage factories may contribute (keepalive's pings)."""
        return {**CALLER_OPTIONS, **self.configured.caller_protocol_options}

    def make_site(self) -> Any:
        options = self.caller_options()
        twilio = CallerFactory(self, TwilioProtocol)
        twilio.setProtocolOptions(**options)
        client = CallerFactory(self, ClientProtocol)
        client.setProtocolOptions(**options)
        self.site = make_site(self, twilio, client, self.config.http)
        return self.site

    @defer.inlineCallbacks
    def drain(self, deadline_s: float) -> Any:
        """
        Refuse new calls and close unauthenticated sockets; wait up to ``deadline_s`` for live
        calls; close the rest (1001).
        """
        self.draining = True
        self.admission.close_pending("drained")
        live = list(self.calls)
        self.log.info(
            "draining: {count} live calls, deadline {deadline_s} s",
            count=len(live),
            deadline_s=deadline_s,
        )
        if live and self.handover_enabled:
            # Each call that Twilio will come back for goes to another process at its next
            # quiet point; the others (and any whose handover fails) drain as before.
            for call in live:
                call.request_handover(deadline_s)
        if live:
            waiting = defer.DeferredList([c.when_closed() for c in live], consumeErrors=True)
            timer = self.reactor.callLater(deadline_s, waiting.cancel)
            try:
                yield waiting
            except defer.CancelledError:
                pass
            if timer.active():
                timer.cancel()
        rest = list(self.calls)
        for call in rest:
            call.end(Diagnosis("DRAINED", leg="gateway", phase=call.phase))
        if rest:
            yield defer.DeferredList([c.when_closed() for c in rest], consumeErrors=True)
        self.log.info("drain done: {closed} calls closed at the deadline", closed=len(rest))


class GatewayService(service.Service):
    """Listens on ``endpoint`` and drains on stop."""

    log = Logger()

    def __init__(
        self,
        configured: ConfiguredGateway,
        endpoint: str,
        reactor: Any = None,
        handle_second_signal: bool = False,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.reactor = reactor
        self.endpoint = endpoint
        self.gateway = Gateway(configured, reactor)
        self.port: Any = None
        self._stopping: defer.Deferred | None = None
        self._handle_second_signal = handle_second_signal

    @defer.inlineCallbacks
    def startService(self) -> Any:
        service.Service.startService(self)
        dispatch.install(self.reactor)  # epoll: no log context rebuilt per event (issue 21)
        config = self.gateway.config
        for warning in config.warnings:
            self.log.warn("{startup_warning}", startup_warning=warning, log_category="STARTUP_WARNING")
        site = self.gateway.make_site()
        try:
            self.port = yield serverFromString(self.reactor, self.endpoint).listen(site)
        except Exception as e:  # noqa: BLE001 - any reason not to listen ends the process
            self.log.critical("cannot listen on {endpoint}: {error}", endpoint=self.endpoint,
                              error=f"{type(e).__name__}: {e}", log_category="LISTEN_FAILED")
            if self._handle_second_signal:
                # Under twistd a service that cannot listen must not look alive to supervisord
                # or systemd: exit with status 1 as any start-up error does.
                import os
                import sys

                sys.stderr.write(f"gateway: cannot listen on {self.endpoint}: {e}\n")
                sys.stderr.flush()
                sys.stdout.flush()
                os._exit(1)
            raise
        # Stage factories with process-wide work (the recording's retention sweep, the live
        # events' sender) start it now and finish it on stop.
        for _, factory in self.gateway.configured.stages:
            if isinstance(factory, StartsService):
                factory.start_service(self.reactor)
        address = self.port.getHost()
        self.log.info(
            "gateway listening on {host}:{port} (mode {mode}, chain {chain})",
            host=address.host,
            port=address.port,
            mode=config.mode,
            chain=" -> ".join(config.chain),
        )

    def stopService(self) -> Any:
        if self._stopping is None:
            self._stopping = self._stop()
        return self._stopping

    def _ignore_further_signals(self) -> None:
        """
        twistd answers a second SIGTERM during the drain with a 'reactor not running'
        traceback; say plainly instead that the drain goes on.
        """
        import signal

        def again(signum: int, frame: Any) -> None:
            self.reactor.callFromThread(
                self.log.warn, "signal {signum} again: still draining, exiting when calls end",
                signum=signum, log_category="SIGNAL_WHILE_DRAINING",
            )

        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, again)

    @defer.inlineCallbacks
    def _stop(self) -> Any:
        service.Service.stopService(self)
        if self._handle_second_signal:
            self._ignore_further_signals()
        yield self.gateway.drain(self.gateway.config.drain_deadline_s)
        finishing = []
        for _, factory in self.gateway.configured.stages:
            if isinstance(factory, StopsService):
                finishing.append(defer.maybeDeferred(factory.stop_service))
        if finishing:
            # Queued live events and recordings still being written get a bounded moment.
            waiting = defer.DeferredList(finishing, consumeErrors=True)
            waiting.addTimeout(10, self.reactor)
            try:
                yield waiting
            except defer.TimeoutError:
                self.log.warn("plugins still finishing 10 s after the drain; stopping anyway",
                              log_category="PLUGINS_STILL_FINISHING")
        if self.port is not None:
            yield self.port.stopListening()
