"""
`CallContext`: the `gateway.plugin.StageContext` each stage of a call is given, and the only way a
stage affects its call. Each verb says what the stage wants (open the Deepgram session, refuse
the upgrade, diagnose the close being handled); the call decides what follows.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from gateway.callinfo import CallInfo
from gateway.chain import Chain
from gateway.diagnostics import Diagnosis

__all__ = ["CallContext", "ContextOwner"]


class ContextOwner(Protocol):
    """What a context asks of its call (`gateway.call.Call`)."""

    chain: Chain

    def open_upstream(self, url: str) -> None: ...
    def refuse(self, http_status: int, code: str, message: str) -> None: ...
    def diagnose(self, diagnosis: Diagnosis) -> None: ...
    def end(self, diagnosis: Diagnosis, initiator: str = "gateway") -> None: ...
    def upstream_failed(self, diagnosis: Diagnosis) -> None: ...
    def snapshot(self) -> dict[str, Any]: ...
    def restore(self, record: Mapping[str, Any]) -> None: ...
    def count(self, name: str, amount: int = 1, **labels: str) -> None: ...


@attrs.define
class CallContext:
    """The `gateway.plugin.StageContext` of the stage at ``index`` in one call's chain."""

    _owner: ContextOwner
    _index: int
    call: CallInfo
    clock: IReactorTime
    log: Logger

    def emit_inbound(self, event: object) -> None:
        self._owner.chain.inbound(event, self._index)

    def emit_outbound(self, event: object) -> None:
        self._owner.chain.outbound(event, self._index)

    def open_upstream(self, url: str) -> None:
        self._owner.open_upstream(url)

    def refuse(self, http_status: int, code: str, message: str) -> None:
        self._owner.refuse(http_status, code, message)

    def diagnose(self, diagnosis: Diagnosis) -> None:
        self._owner.diagnose(diagnosis)

    def end_call(self, diagnosis: Diagnosis) -> None:
        self._owner.end(diagnosis)

    def upstream_failed(self, diagnosis: Diagnosis) -> None:
        self._owner.upstream_failed(diagnosis)

    def snapshot(self) -> dict[str, Any]:
        return self._owner.snapshot()

    def restore(self, record: Mapping[str, Any]) -> None:
        self._owner.restore(record)

    def stop_handling(self, cls: type, direction: str = "inbound") -> None:
        self._owner.chain.stop_handling(self._index, cls, direction)

    def resume_handling(self, cls: type, direction: str = "inbound") -> None:
        self._owner.chain.resume_handling(self._index, cls, direction)

    def count(self, name: str, amount: int = 1, **labels: str) -> None:
        self._owner.count(name, amount, **labels)
        if name not in self.call.counted_by:
            self.call.counted_by[name] = self.log.namespace.partition(".")[2]  # plugins.<stage>
