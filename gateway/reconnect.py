"""
The reconnect budget of one call: how often, and how soon, a lost Deepgram session is replaced.

Three limits, each with its own reason to exist:

- **per outage** (``reconnect_attempts`` within ``reconnect_max_s``): consecutive attempts that
  did not give a working session. Beyond it, the call ends with the last loss's diagnosis.
- **per rolling window** (``reconnect_window_max`` within ``reconnect_window_s``) and **per call**
  (``reconnect_max_per_call``): sessions that did come up and were lost again. A Deepgram that
  closes every session half a second in would otherwise be reconnected forever, since each
  restored session ends the outage. Beyond either, the call ends with ``DG_UNSTABLE``.

The backoff grows with the losses in the window, not with the attempts of one outage only, so
a flapping upstream is retried more and more slowly instead of at the first step every time.
Equal jitter (half fixed, half random) keeps calls that lost Deepgram together apart.

Pure logic over times given by the caller: tests drive it with numbers, no reactor.
"""

from __future__ import annotations

import collections
import random
from typing import Callable

import attrs

__all__ = ["ReconnectPolicy", "ReconnectBudget", "Retry", "GiveUp"]


@attrs.frozen
class ReconnectPolicy:
    """The configured limits (``[deepgram]`` options)."""

    attempts: int = 3
    max_s: float = 20.0
    backoff_s: float = 0.5
    backoff_max_s: float = 8.0
    window_s: float = 60.0
    window_max: int = 5
    per_call: int = 10


@attrs.frozen
class Retry:
    """Open a new session after ``delay_s``; this is attempt ``attempt`` of the outage."""

    delay_s: float
    attempt: int


@attrs.frozen
class GiveUp:
    """
    No more attempts. ``unstable`` is true when the window or per-call limit was reached (the
    call ends with ``DG_UNSTABLE``); false when one outage used its attempts or time (the call
    ends with the last loss's diagnosis). ``reason`` is one line for the log.
    """

    reason: str
    unstable: bool


@attrs.define
class ReconnectBudget:
    """The reconnect state of one call."""

    policy: ReconnectPolicy
    random: Callable[[], float] = random.random
    #: Diagnosis codes of every session loss, in order (for DG_UNSTABLE's explanation).
    losses: list[str] = attrs.field(factory=list)
    #: Sessions opened and confirmed in this call.
    sessions: int = 0
    reconnects: int = 0
    _window: collections.deque = attrs.field(factory=collections.deque)
    _outage_started: float | None = None
    _outage_attempts: int = 0

    @property
    def in_outage(self) -> bool:
        return self._outage_started is not None

    @property
    def outage_started(self) -> float | None:
        return self._outage_started

    def lost(self, now: float, diagnosis_code: str) -> Retry | GiveUp:
        """A session (or an attempt at one) was lost for a retryable reason at ``now``."""
        p = self.policy
        self.losses.append(diagnosis_code)
        while self._window and now - self._window[0] >= p.window_s:
            self._window.popleft()
        if self._outage_started is None:
            self._outage_started = now
            # A new outage after a working session: the window and call limits apply.
            if self.reconnects >= p.per_call:
                return GiveUp(f"{self.reconnects} reconnects in this call (limit {p.per_call})", True)
            if len(self._window) >= p.window_max:
                return GiveUp(
                    f"{len(self._window)} reconnects within {p.window_s:g} s "
                    f"(limit {p.window_max})",
                    True,
                )
        if self._outage_attempts >= p.attempts:
            return GiveUp(f"{self._outage_attempts} reconnect attempts failed", False)
        elapsed = now - self._outage_started
        if elapsed >= p.max_s:
            return GiveUp(f"{elapsed:.1f} s of reconnecting", False)
        self._outage_attempts += 1
        self.reconnects += 1
        self._window.append(now)
        steps = len(self._window) - 1 + self._outage_attempts - 1
        base = min(p.backoff_s * 2**steps, p.backoff_max_s)
        delay = base * (0.5 + 0.5 * self.random())
        return Retry(max(0.0, min(delay, p.max_s - elapsed)), self._outage_attempts)

    def restored(self) -> None:
        """A session was confirmed (``SettingsApplied``, or open for ``/v1/listen``)."""
        self.sessions += 1
        self._outage_started = None
        self._outage_attempts = 0

    def remaining_s(self, now: float) -> float | None:
        """Time left in the current outage (None outside one)."""
        if self._outage_started is None:
            return None
        return self.policy.max_s - (now - self._outage_started)

    def summary(self) -> str:
        """The story for DG_UNSTABLE: sessions and the closes that ended them."""
        counts = collections.Counter(self.losses)
        closes = ", ".join(f"{code} x{n}" for code, n in counts.most_common())
        return f"{self.sessions} sessions, {len(self.losses)} losses ({closes})"
