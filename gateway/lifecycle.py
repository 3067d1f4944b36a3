"""
A call's lifecycle, as an explicit state machine (Automat's ``TypeMachineBuilder``)::

    handshake -> authenticating -> connecting -> configuring -> live -> ending -> closed
                                        ^                                |
                                        +--------- reconnecting <--------+ (a session lost)

so that "audio before Settings was applied" or "a close while connecting" are states, not flags.
The inputs (`CallInputs`) are facts from the legs and the stages; the outputs are the actions of
a `LifecycleCore` (the `gateway.call.Call`). The 20 ms audio frames stay out of the machine (an
Automat input costs ~10 times a plain call): the call's gate reads the state the machine leaves.
"""

from __future__ import annotations

from typing import Callable, Protocol

from automat import TypeMachineBuilder

from gateway.callinfo import CallInfo
from gateway.diagnostics import Diagnosis

__all__ = ["CallInputs", "LifecycleCore", "build_machine"]


class LifecycleCore(Protocol):
    """What the machine does on its transitions (the call implements it)."""

    info: CallInfo

    def open_session(self, url: str) -> None: ...
    def retry_session(self) -> None: ...
    def enter_live(self) -> None: ...
    def leave_live(self) -> None: ...
    def schedule_retry(self, delay_s: float, diagnosis: Diagnosis) -> None: ...
    def begin_ending(self, diagnosis: Diagnosis, initiator: str, phase: str) -> None: ...
    def close_upstream(self) -> None: ...
    def leg_gone(self, leg: str, inputs: CallInputs) -> None: ...
    def cleanup(self) -> None: ...


class CallInputs(Protocol):
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


def build_machine() -> Callable[[LifecycleCore], CallInputs]:
    b = TypeMachineBuilder(CallInputs, LifecycleCore)  # type: ignore[type-abstract]  # a Protocol: any core that acts
    handshake = b.state("handshake")
    authenticating = b.state("authenticating")
    connecting = b.state("connecting")
    configuring = b.state("configuring")
    live = b.state("live")
    reconnecting = b.state("reconnecting")
    ending = b.state("ending")
    closed = b.state("closed")
    I = CallInputs

    def entering(name: str) -> Callable[..., None]:
        def enter(inputs: CallInputs, core: LifecycleCore, *args: object) -> None:
            core.info.phase = name

        return enter

    handshake.upon(I.caller_opened).to(authenticating)(entering("authenticating"))

    @authenticating.upon(I.upstream_requested).to(connecting)
    def _open(inputs: CallInputs, core: LifecycleCore, url: str) -> None:
        core.info.phase = "connecting"
        core.open_session(url)

    connecting.upon(I.upstream_connected).to(configuring)(entering("configuring"))

    @configuring.upon(I.settings_applied).to(live)
    def _live(inputs: CallInputs, core: LifecycleCore) -> None:
        core.info.phase = "live"
        core.enter_live()

    live.upon(I.settings_applied).loop().returns(None)
    for state in (connecting, configuring, live):

        @state.upon(I.upstream_lost).to(reconnecting)
        def _lost(inputs: CallInputs, core: LifecycleCore, delay_s: float, diagnosis: Diagnosis) -> None:
            core.leave_live()
            core.info.phase = "reconnecting"
            core.schedule_retry(delay_s, diagnosis)

    @reconnecting.upon(I.retry_due).to(connecting)
    def _retry(inputs: CallInputs, core: LifecycleCore) -> None:
        core.info.phase = "connecting"
        core.retry_session()

    for input_ in (I.caller_opened, I.upstream_requested, I.settings_applied, I.upstream_connected):
        reconnecting.upon(input_).loop().returns(None)
    for state in (handshake, authenticating, connecting, configuring, live, reconnecting):

        @state.upon(I.finish).to(ending)
        def _finish(inputs: CallInputs, core: LifecycleCore, diagnosis: Diagnosis, initiator: str) -> None:
            phase = core.info.phase
            core.leave_live()
            core.info.phase = "ending"
            core.begin_ending(diagnosis, initiator, phase)

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
    def _late(inputs: CallInputs, core: LifecycleCore) -> None:
        core.close_upstream()

    @ending.upon(I.leg_gone).loop()
    def _gone(inputs: CallInputs, core: LifecycleCore, leg: str) -> None:
        core.leg_gone(leg, inputs)

    @ending.upon(I.all_closed).to(closed)
    def _closed(inputs: CallInputs, core: LifecycleCore) -> None:
        core.info.phase = "closed"
        core.cleanup()

    for input_ in (I.caller_opened, I.upstream_connected, I.settings_applied, I.all_closed):
        closed.upon(input_).loop().returns(None)
    closed.upon(I.upstream_requested).loop().returns(None)
    closed.upon(I.finish).loop().returns(None)
    closed.upon(I.leg_gone).loop().returns(None)
    closed.upon(I.upstream_lost).loop().returns(None)
    closed.upon(I.retry_due).loop().returns(None)
    return b.build()
