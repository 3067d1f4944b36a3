"""
close_codes: turn every close on either leg into a diagnosis.

For a Deepgram close the stage gives the call a `gateway.diagnostics.Diagnosis` (``ctx.diagnose``,
also attached to the event for the stages after it): the stable code (from
the table in `gateway.codecs.close_codes`), the phase it happened in, the ``dg-request-id``,
``dg-error`` and the last Deepgram ``Error`` (the only explanation of a close with no status
code), and logs it in one line. That diagnosis decides what the caller gets; codes that must not
appear on the wire (1005, 1006, 1015) are never forwarded.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.plugin import IPlugin
from zope.interface import implementer

from gateway.codecs.close_codes import classify_caller_close
from gateway.config import GatewayConfig
from gateway.section import Section
from gateway.diagnostics import Diagnosis, diagnose_upstream
from gateway.events import CallerClosed, UpstreamClosed
from gateway.plugin import IStreamPlugin, Routes, StageContext

__all__ = ["plugin", "CloseCodesStage"]


@attrs.define
class CloseCodesStage:
    """The per-call close_codes stage."""

    ctx: StageContext

    def routes(self) -> Routes:
        return Routes(inbound={CallerClosed: self.on_caller}, outbound={UpstreamClosed: self.on_upstream})

    def on_upstream(self, event: UpstreamClosed) -> Any:
        diagnosis = diagnose_upstream(event, self.ctx.call.last_error)
        self.ctx.count("upstream_closes", diagnosis=diagnosis.code)
        level = self.ctx.log.info if diagnosis.code == "DG_CLOSED" else self.ctx.log.warn
        level(
            "Deepgram leg closed: {diagnosis_code} in {closed_phase}: {description} "
            "[dg-request-id {dg_request_id}]",
            diagnosis_code=diagnosis.code,
            closed_phase=diagnosis.phase,
            description=diagnosis.describe(),
            dg_request_id=diagnosis.dg_request_id or self.ctx.call.request_id,
            log_category="DG_LEG_CLOSED",
        )
        self.ctx.diagnose(diagnosis)
        return attrs.evolve(event, diagnosis=diagnosis)

    def on_caller(self, event: CallerClosed) -> Any:
        code = classify_caller_close(event.code, event.was_clean, False, event.gateway_rule)
        diagnosis = Diagnosis(code, leg="caller", phase=self.ctx.call.phase, close_code=event.code,
                              close_reason=event.reason)
        self.ctx.count("caller_closes", diagnosis=code)
        self.ctx.diagnose(diagnosis)
        return attrs.evolve(event, diagnosis=diagnosis)

    def close(self) -> None:
        pass


@implementer(IPlugin, IStreamPlugin)
@attrs.frozen
class CloseCodesPlugin:
    """The close_codes plugin."""

    name: str = "close_codes"

    def configure(self, section: Section, gateway: GatewayConfig) -> Any:
        return lambda ctx: CloseCodesStage(ctx)


plugin = CloseCodesPlugin()
