"""
POSTing JSON to configured webhooks, with treq: bounded time, bounded retries, never holding up a
call. Two senders share one signed POST:

- `ReportSender`: one document per call, the call report (the call is already over when it is
  sent; a failure is only logged and counted).
- `BatchSender`: live events while calls go on (``plugins/live_events.py``), queued per call,
  sent in batches, one POST at a time so that each call's events arrive in order, retried with
  backoff. The queue is bounded per call and per process: past a bound the oldest waiting event
  is dropped and counted. Putting an event never blocks and never fails.

With ``GATEWAY_WEBHOOK_SECRET`` set, each POST carries ``X-Gateway-Signature: sha256=<hex>``,
the HMAC-SHA256 of the body, so the receiver can tell the report is ours.
"""

from __future__ import annotations

import collections
import hashlib
import heapq
import hmac
import json
from typing import Any, Callable

import attrs
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.errors import GatewayError

__all__ = ["ReportSender", "BatchSender", "BatchLimits", "WebhookFailed", "sign", "post_signed"]


def sign(secret: bytes, body: bytes) -> str:
    """The ``X-Gateway-Signature`` value of ``body``: ``sha256=`` and the hex HMAC-SHA256."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class WebhookFailed(GatewayError):
    """One POST to a webhook did not get a 2xx answer; ``problem`` says what it got instead."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


@defer.inlineCallbacks
def post_signed(http: Any, url: str, body: bytes, secret: bytes | None, timeout_s: float) -> Any:
    """
    POST ``body`` (JSON) to ``url`` once, signed with ``secret`` if given; fires with None on a
    2xx answer, fails with `WebhookFailed` otherwise (any network failure included).
    """
    headers = {b"Content-Type": [b"application/json"]}
    if secret:
        headers[b"X-Gateway-Signature"] = [sign(secret, body).encode()]
    try:
        response = yield http.post(url, data=body, headers=headers, timeout=timeout_s, persistent=False)
        yield response.content()
    except Exception as e:  # noqa: BLE001 - any network failure is the receiver's problem, retried
        raise WebhookFailed(f"{type(e).__name__}: {e}")
    if not 200 <= response.code < 300:
        raise WebhookFailed(f"HTTP {response.code}")


def _treq() -> Any:
    import treq

    return treq


@attrs.define
class ReportSender:
    """Sends one JSON document per call to ``url``."""

    reactor: Any
    url: str
    timeout_s: float = 5.0
    attempts: int = 3
    backoff_s: float = 1.0
    secret: bytes | None = attrs.field(default=None, repr=False)
    http: Any = None
    sent: int = 0
    failed: int = 0
    log = Logger()

    def _client(self) -> Any:
        if self.http is None:
            self.http = _treq()
        return self.http

    @defer.inlineCallbacks
    def send(self, document: dict[str, Any]) -> Any:
        """Deliver ``document``; fires with True on a 2xx answer, False when every attempt failed."""
        body = json.dumps(document, default=str).encode()
        problem = ""
        for attempt in range(1, self.attempts + 1):
            try:
                yield post_signed(self._client(), self.url, body, self.secret, self.timeout_s)
                self.sent += 1
                return True
            except WebhookFailed as e:
                problem = e.problem
            if attempt < self.attempts:
                yield task.deferLater(self.reactor, self.backoff_s * 2 ** (attempt - 1), lambda: None)
        self.failed += 1
        self.log.warn(
            "call report for {report_call_id} not delivered to the webhook after {attempts} "
            "attempts: {problem}",
            report_call_id=document.get("call_id"),
            attempts=self.attempts,
            problem=problem,
            log_category="CALL_REPORT_NOT_DELIVERED",
        )
        return False


@attrs.frozen
class BatchLimits:
    """
    How a `BatchSender` batches, bounds and retries.

    A batch goes out when ``max_batch`` events wait, or ``batch_s`` after the oldest waiting
    event arrived. At most ``max_queue`` events of one call and ``max_queue_total`` of the process
    wait (not counting the batch in flight); past either bound the oldest is dropped. A batch
    that fails is tried ``attempts`` times in all, ``backoff_s * 2**(n-1)`` apart (at most
    ``backoff_max_s``), each POST given ``timeout_s``; then it is dropped and counted.
    """

    batch_s: float = 0.25
    max_batch: int = 50
    max_queue: int = 500
    max_queue_total: int = 5000
    attempts: int = 5
    backoff_s: float = 0.5
    backoff_max_s: float = 8.0
    timeout_s: float = 5.0


class BatchSender:
    """
    Live events to one webhook (see the module docstring). ``clock`` times the batches and the
    retries; ``http`` is treq (or a fake with its ``post``); ``envelope(batch_number, events)``
    builds the JSON document of one batch. Counters: ``sent_events``, ``sent_batches``,
    ``failed_events``, ``failed_batches``, ``dropped`` (by reason: ``call_queue_full``,
    ``process_queue_full``), ``queued`` (waiting now).
    """

    log = Logger()

    def __init__(
        self,
        clock: Any,
        url: str,
        limits: BatchLimits,
        envelope: Callable[[int, list[Any]], dict[str, Any]],
        secret: bytes | None = None,
        http: Any = None,
    ) -> None:
        self.clock = clock
        self.url = url
        self.limits = limits
        self._envelope = envelope
        self._secret = secret
        self._http = http
        # Per call: a deque of (arrival number, arrival time, event); arrival numbers order the
        # calls' queues against each other.
        self._queues: dict[str, collections.deque[tuple[int, float, Any]]] = {}
        self._arrivals = 0
        self.queued = 0
        self._timer: Any = None
        self._in_flight: defer.Deferred | None = None
        self._backoff: defer.Deferred | None = None
        self._batches = 0
        self._stopped = False
        self.sent_events = 0
        self.sent_batches = 0
        self.failed_events = 0
        self.failed_batches = 0
        self.dropped: collections.Counter[str] = collections.Counter()
        self._warned = False

    # --- putting (on a call's event: O(1), never blocks) ---------------------------------------

    def put(self, source: str, event: Any) -> tuple[str, str] | None:
        """
        Queue ``event`` of call ``source``. When a bound made room by dropping the oldest waiting
        event, returns whose it was and why: ``(source, "call_queue_full")`` (this call's own)
        or ``(other, "process_queue_full")``; otherwise None.
        """
        queue = self._queues.get(source)
        if queue is None:
            queue = self._queues[source] = collections.deque()
        self._arrivals += 1
        queue.append((self._arrivals, self.clock.seconds(), event))
        self.queued += 1
        dropped = None
        if len(queue) > self.limits.max_queue:
            queue.popleft()
            self.queued -= 1
            dropped = (source, "call_queue_full")
        elif self.queued > self.limits.max_queue_total:
            dropped = (self._drop_oldest(), "process_queue_full")
        if dropped is not None:
            self.dropped[dropped[1]] += 1
            if not self._warned:
                self._warned = True
                self.log.warn("live events: the webhook queue is full ({reason}); the oldest events "
                              "are dropped and counted (the receiver is slow or down)", reason=dropped[1],
                              log_category="LIVE_EVENTS_QUEUE_FULL")
        self._schedule()
        return dropped

    def _drop_oldest(self) -> str:
        """Drop the oldest waiting event of the process; returns whose it was."""
        source = min(self._queues, key=lambda s: self._queues[s][0][0])
        queue = self._queues[source]
        queue.popleft()
        if not queue:
            del self._queues[source]
        self.queued -= 1
        return source

    def flush_soon(self) -> None:
        """Send what waits now, without waiting for ``batch_s`` (a call has ended)."""
        if self.queued and self._in_flight is None and not self._stopped:
            self._cancel_timer()
            self._send_next()

    # --- sending -------------------------------------------------------------------------------

    def _oldest_time(self) -> float | None:
        heads = [q[0] for q in self._queues.values() if q]
        return min(heads)[1] if heads else None

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _schedule(self) -> None:
        """Arm the batch timer, or send at once when a full batch waits."""
        if self._in_flight is not None or self._stopped or not self.queued:
            return
        if self.queued >= self.limits.max_batch:
            self._cancel_timer()
            self._send_next()
            return
        if self._timer is None:
            oldest = self._oldest_time()
            assert oldest is not None
            delay = max(0.0, oldest + self.limits.batch_s - self.clock.seconds())
            self._timer = self.clock.callLater(delay, self._due)

    def _due(self) -> None:
        self._timer = None
        if self._in_flight is None and self.queued:
            self._send_next()

    def _take(self) -> list[Any]:
        """The oldest ``max_batch`` waiting events, in arrival order, off their queues."""
        heads = heapq.merge(*(iter(q) for q in self._queues.values()))
        taken = [item for _, item in zip(range(self.limits.max_batch), heads)]
        numbers = {number for number, _, _ in taken}
        for source in list(self._queues):
            queue = self._queues[source]
            while queue and queue[0][0] in numbers:
                queue.popleft()
            if not queue:
                del self._queues[source]
        self.queued -= len(taken)
        return [event for _, _, event in taken]

    def _send_next(self) -> None:
        events = self._take()
        if not events:
            return
        self._batches += 1
        body = json.dumps(self._envelope(self._batches, events), default=str).encode()
        self._in_flight = self._deliver(body, len(events))
        self._in_flight.addBoth(self._delivered)

    def _delivered(self, result: Any) -> None:
        self._in_flight = None
        if isinstance(result, Failure):
            self.log.failure("live events: sending a batch failed", result,
                             log_category="LIVE_EVENTS_SEND_FAILED")
        self._schedule()

    @defer.inlineCallbacks
    def _deliver(self, body: bytes, count: int) -> Any:
        limits = self.limits
        problem = ""
        for attempt in range(1, limits.attempts + 1):
            try:
                yield post_signed(self._client(), self.url, body, self._secret, limits.timeout_s)
                self.sent_events += count
                self.sent_batches += 1
                return
            except WebhookFailed as e:
                problem = e.problem
            if attempt == limits.attempts or self._stopped:
                break
            delay = min(limits.backoff_max_s, limits.backoff_s * 2 ** (attempt - 1))
            self._backoff = task.deferLater(self.clock, delay, lambda: None)
            try:
                yield self._backoff
            except defer.CancelledError:
                break  # stopping: no more retries
            finally:
                self._backoff = None
        self.failed_events += count
        self.failed_batches += 1
        self.log.warn("live events: a batch of {count} events not delivered to the webhook after "
                      "{attempts} attempts: {problem}", count=count, attempts=limits.attempts,
                      problem=problem, log_category="LIVE_EVENTS_NOT_DELIVERED")

    def _client(self) -> Any:
        if self._http is None:
            self._http = _treq()
        return self._http

    @defer.inlineCallbacks
    def stop(self) -> Any:
        """
        Stop batching and retrying: wait for the POST in flight (a retry's wait is cut short),
        then send what waits, one attempt per batch, in order; fires when the last POST is over.
        """
        self._cancel_timer()
        self._stopped = True
        if self._backoff is not None:
            self._backoff.cancel()
        if self._in_flight is not None:
            yield self._in_flight
        while self.queued:
            events = self._take()
            self._batches += 1
            body = json.dumps(self._envelope(self._batches, events), default=str).encode()
            try:
                yield post_signed(self._client(), self.url, body, self._secret, self.limits.timeout_s)
                self.sent_events += len(events)
                self.sent_batches += 1
            except WebhookFailed:
                self.failed_events += len(events)
                self.failed_batches += 1
