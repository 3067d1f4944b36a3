"""
POSTing call reports to a configured webhook, with treq: bounded time, bounded retries, never
holding up a call (the call is already over when its report is sent, and a failure is only
logged and counted).

With ``GATEWAY_WEBHOOK_SECRET`` set, each POST carries ``X-Gateway-Signature: sha256=<hex>``,
the HMAC-SHA256 of the body, so the receiver can tell the report is ours.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import attrs
from twisted.internet import defer, task
from twisted.logger import Logger

__all__ = ["ReportSender"]


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
            import treq

            self.http = treq
        return self.http

    @defer.inlineCallbacks
    def send(self, document: dict[str, Any]) -> Any:
        """Deliver ``document``; fires with True on a 2xx answer, False when every attempt failed."""
        body = json.dumps(document, default=str).encode()
        headers = {b"Content-Type": [b"application/json"]}
        if self.secret:
            digest = hmac.new(self.secret, body, hashlib.sha256).hexdigest()
            headers[b"X-Gateway-Signature"] = [f"sha256={digest}".encode()]
        problem = ""
        for attempt in range(1, self.attempts + 1):
            try:
                response = yield self._client().post(
                    self.url, data=body, headers=headers, timeout=self.timeout_s, persistent=False
                )
                yield response.content()
                if 200 <= response.code < 300:
                    self.sent += 1
                    return True
                problem = f"HTTP {response.code}"
            except Exception as e:  # noqa: BLE001 - any network failure is retried, then logged
                problem = f"{type(e).__name__}: {e}"
            if attempt < self.attempts:
                yield task.deferLater(self.reactor, self.backoff_s * 2 ** (attempt - 1), lambda: None)
        self.failed += 1
        self.log.warn(
            "call report for {report_call_id} not delivered to the webhook after {attempts} "
            "attempts: {problem}",
            report_call_id=document.get("call_id"),
            attempts=self.attempts,
            problem=problem,
        )
        return False
