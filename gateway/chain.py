"""
The ordered chain of a call's stages, and dispatch by event class.

Inbound events visit the stages in configured order, outbound events in reverse; what leaves the
chain goes to a sink (the agent leg's side of the call, or the caller's). The dispatch table is
worked out once per call and event class: the handlers that asked for that class or one of its
bases (a stage routing `DeepgramEvent` gets every typed Deepgram message). An event no stage wants
goes straight to its sink, which is what keeps a 20 ms audio frame cheap.
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
        self._routes = [stage.routes() for stage in self.stages]
        #: (stage index, class, direction) taken off the route by `stop_handling`.
        self._stopped: set[tuple[int, type, str]] = set()
        #: Per direction, each event class seen -> its handlers in order, resolved once (`_resolve`).
        self._inbound: dict[type, tuple[tuple[int, Handler], ...]] = {}
        self._outbound: dict[type, tuple[tuple[int, Handler], ...]] = {}

    def _resolve(self, cls: type, direction: str) -> tuple[tuple[int, Handler], ...]:
        """
        The handlers of ``cls`` in ``direction``: each stage's handler for the most specific class
        of ``cls``'s MRO it routes (a stage routing `DeepgramEvent` sees `SettingsApplied` too).
        Worked out on the first event of a class, then a dictionary lookup.
        """
        found = []
        for index, routes in enumerate(self._routes):
            table = routes.inbound if direction == "inbound" else routes.outbound
            for base in cls.__mro__:
                handler = table.get(base)
                if handler is not None:
                    if (index, base, direction) not in self._stopped:
                        found.append((index, handler))
                    break
        if direction == "outbound":
            found.reverse()
        handlers = tuple(found)
        (self._inbound if direction == "inbound" else self._outbound)[cls] = handlers
        return handlers

    def inbound(self, event: Any, after: int = -1) -> None:
        """Pass ``event`` towards Deepgram through the stages after index ``after``."""
        handlers = self._inbound.get(type(event))
        if handlers is None:
            handlers = self._resolve(type(event), "inbound")
        for index, handler in handlers:
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
        handlers = self._outbound.get(type(event))
        if handlers is None:
            handlers = self._resolve(type(event), "outbound")
        for index, handler in handlers:
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
        self._stopped.add((index, cls, direction))
        (self._inbound if direction == "inbound" else self._outbound).clear()

    def resume_handling(self, index: int, cls: type, direction: str) -> None:
        """Stage ``index`` handles ``cls`` in ``direction`` again, with its original handler."""
        self._stopped.discard((index, cls, direction))
        (self._inbound if direction == "inbound" else self._outbound).clear()

    def close(self) -> None:
        """Close every stage (cancel timers); one failing does not stop the others."""
        for name, stage in zip(self.names, self.stages):
            try:
                stage.close()
            except Exception:
                self._on_error(name, None)
