"""
Client-side function calls: the Voice Agent asks, a plugin answers.

A stage factory declares the functions its stages serve with a ``functions`` mapping (name ->
`gateway.plugin.FunctionSpec`, schemas checked once by `gateway.assembly`); its stages implement ``call_function(name, arguments)``, returning the result
(a string, or anything JSON-serialisable) or a Deferred of it. The settings stage adds every
declaration to ``agent.think.functions``; when Deepgram sends a ``FunctionCallRequest`` item with
``client_side: true``, the call dispatches it here and sends the ``FunctionCallResponse`` with
the same ``id`` and ``name``. An unknown function, arguments that are not JSON or break the
declared schema, an exception and a timeout each give a response the agent can speak about, a
log line and a counter; the call goes on.

Deepgram may take a request back with ``FunctionCallCancelled`` (the caller spoke again, the
turn moved on): the running function's Deferred is cancelled (a plugin that gave its Deferred a
canceller, treq's requests for example, stops its work) and no response is sent for that id,
whatever the function does afterwards.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Mapping

import attrs
import jsonschema
from twisted.internet import defer

# The contract's FunctionSpec, re-exported for drop-ins written against this module.
from gateway.plugin import FunctionSpec

__all__ = ["FunctionSpec", "FunctionDispatcher"]


@attrs.define
class FunctionDispatcher:
    """Runs one call's function requests. ``servers`` maps a plugin name to its stage."""

    functions: Mapping[str, tuple[str, FunctionSpec]]
    servers: Mapping[str, Any]
    clock: Any
    respond: Callable[[dict[str, Any]], None]
    count: Callable[..., None]
    log: Any
    timeout_s: float = 10.0
    #: The requests still running: id -> the Deferred of the plugin's work.
    running: dict[str, defer.Deferred] = attrs.field(factory=dict)
    #: Ids Deepgram cancelled while they ran: whatever they produce is never sent.
    _cancelled: set[str] = attrs.field(factory=set)

    def dispatch(self, item: Mapping[str, Any]) -> defer.Deferred:
        """Answer one ``FunctionCallRequest`` item; fires when the response has been sent."""
        call_id, name = str(item.get("id", "")), str(item.get("name", ""))
        known = self.functions.get(name)
        label = name if known else "unknown"
        if known is None:
            return self._done(call_id, name, label, "unknown_function",
                              f"Error: there is no function named {name!r} here.")
        plugin, spec = known
        raw = item.get("arguments", "{}")
        try:
            arguments = json.loads(raw) if isinstance(raw, str) else raw
            if not isinstance(arguments, dict):
                raise ValueError("arguments must be a JSON object")
        except ValueError as e:
            return self._done(call_id, name, label, "bad_arguments",
                              f"Error: the arguments of {name} are not a JSON object ({e}).")
        try:
            jsonschema.validate(arguments, dict(spec.parameters))
        except jsonschema.ValidationError as e:
            where = "/".join(str(p) for p in e.absolute_path) or "(top)"
            return self._done(call_id, name, label, "invalid_arguments",
                              f"Error: invalid arguments for {name} at {where}: {e.message}")
        stage = self.servers[plugin]
        d = defer.maybeDeferred(stage.call_function, name, arguments)
        d.addTimeout(self.timeout_s, self.clock)
        if not d.called:
            self.running[call_id] = d

        def ok(result: Any) -> defer.Deferred:
            self.running.pop(call_id, None)
            if call_id in self._cancelled:
                return self._dropped(call_id, name, label)
            content = result if isinstance(result, str) else json.dumps(result, default=str)
            return self._done(call_id, name, label, "ok", content)

        def failed(failure: Any) -> defer.Deferred:
            self.running.pop(call_id, None)
            if call_id in self._cancelled:
                return self._dropped(call_id, name, label)
            if failure.check(defer.TimeoutError):
                return self._done(call_id, name, label, "timeout",
                                  f"Error: {name} did not answer within {self.timeout_s:g} seconds.")
            self.log.failure("function {function} failed", failure, function=name,
                             log_category="FUNCTION_FAILED")
            return self._done(call_id, name, label, "exception",
                              f"Error: {name} failed: {failure.getErrorMessage()}")

        return d.addCallbacks(ok, failed)

    def cancel(self, call_id: str, name: str = "") -> bool:
        """
        Deepgram cancelled request ``call_id`` (``FunctionCallCancelled``): cancel its work if it
        is still running and never send its response. False when it is not running (already
        answered, or unknown): nothing to do then.
        """
        d = self.running.get(call_id)
        if d is None:
            return False
        self._cancelled.add(call_id)
        self.log.info("function call {function} ({call_id}) cancelled by Deepgram; its response "
                      "will not be sent", function=name, call_id=call_id)
        d.cancel()
        return True

    def _dropped(self, call_id: str, name: str, label: str) -> defer.Deferred:
        self._cancelled.discard(call_id)
        self.count("function_calls", function=label, outcome="cancelled")
        return defer.succeed(None)

    def _done(self, call_id: str, name: str, label: str, outcome: str, content: str) -> defer.Deferred:
        self.count("function_calls", function=label, outcome=outcome)
        if outcome != "ok":
            self.log.warn("function call {function} ({call_id}): {outcome}: {content}",
                          function=name, call_id=call_id, outcome=outcome, content=content,
                          log_category="FUNCTION_CALL_NOT_OK")
        self.respond({"type": "FunctionCallResponse", "id": call_id, "name": name, "content": content})
        return defer.succeed(None)
