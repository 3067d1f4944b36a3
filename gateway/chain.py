"""
The ordered chain of a call's stages, and dispatch by event class.

Inbound events visit the stages in configured order, outbound events in reverse; what leaves the
chain goes to a sink (the agent leg's side of the call, or the caller's). The dispatch table is
built once per call: for each event class, the handlers that asked for it. An event no stage
wants goes straight to its sink, which is what keeps a 20 ms audio frame cheap.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from gateway.plugin import Handler, Stage

__all__ = ["Chain"]

Sink = Callable[[Any], None]


class Chain:
    """
    The stages of one call.

    ``names[i]`` names ``stages[i]`` (for logs). ``on_error(name, event)`` is called inside the
    ``except`` block when a handler raises, and the event goes no further.
    """

    def __init__(
        self,
        names: Sequence[str],
        stages: Sequence[Stage],
        inbound_sink: Sink,
        outbound_sink: Sink,
        on_error: Callable[[str, object], None],
    ) -> None:
        self.names = tuple(names)
        self.stages = tuple(stages)
        self._inbound_sink = inbound_sink
        self._outbound_sink = outbound_sink
        self._on_error = on_error
        inbound: dict[type, list[tuple[int, Handler]]] = {}
        outbound: dict[type, list[tuple[int, Handler]]] = {}
        self._routes = [stage.routes() for stage in self.stages]
        for index, routes in enumerate(self._routes):
            for cls, handler in routes.inbound.items():
                inbound.setdefault(cls, []).append((index, handler))
            for cls, handler in routes.outbound.items():
                outbound.setdefault(cls, []).append((index, handler))
        self._inbound = {cls: tuple(hs) for cls, hs in inbound.items()}
        self._outbound = {cls: tuple(reversed(hs)) for cls, hs in outbound.items()}

    def inbound(self, event: Any, after: int = -1) -> None:
        """Pass ``event`` towards Deepgram through the stages after index ``after``."""
        for index, handler in self._inbound.get(type(event), ()):
            if index <= after:
                continue
            try:
                result = handler(event)
            except Exception:
                self._on_error(self.names[index], event)
                return
            if result is None:
                return
            if type(result) is not type(event):
                return self.inbound(result, index)
            event = result
        self._inbound_sink(event)

    def outbound(self, event: Any, before: int | None = None) -> None:
        """Pass ``event`` towards the caller through the stages before index ``before``."""
        limit = len(self.stages) if before is None else before
        for index, handler in self._outbound.get(type(event), ()):
            if index >= limit:
                continue
            try:
                result = handler(event)
            except Exception:
                self._on_error(self.names[index], event)
                return
            if result is None:
                return
            if type(result) is not type(event):
                return self.outbound(result, index)
            event = result
        self._outbound_sink(event)

    def stop_handling(self, index: int, cls: type, direction: str) -> None:
        """
        Stage ``index`` no longer handles ``cls`` in ``direction`` (``inbound``/``outbound``):
        a stage that only needed audio for a while (holding it before Settings are applied)
        takes itself off the hot path.
        """
        table = self._inbound if direction == "inbound" else self._outbound
        remaining = tuple(h for h in table.get(cls, ()) if h[0] != index)
        if remaining:
            table[cls] = remaining
        else:
            table.pop(cls, None)

    def resume_handling(self, index: int, cls: type, direction: str) -> None:
        """Stage ``index`` handles ``cls`` in ``direction`` again, with its original handler."""
        routes = self._routes[index]
        handler = (routes.inbound if direction == "inbound" else routes.outbound).get(cls)
        if handler is None:
            return
        table = self._inbound if direction == "inbound" else self._outbound
        entries = [h for h in table.get(cls, ()) if h[0] != index] + [(index, handler)]
        entries.sort(key=lambda h: h[0], reverse=direction == "outbound")
        table[cls] = tuple(entries)

    def close(self) -> None:
        """Close every stage (cancel timers); one failing does not stop the others."""
        for name, stage in zip(self.names, self.stages):
            try:
                stage.close()
            except Exception:
                self._on_error(name, None)
