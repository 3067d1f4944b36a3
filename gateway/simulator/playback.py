"""
Twilio's playback of outbound audio, modelled on a clock.

Twilio queues the ``media`` we receive and plays it in real time; a ``mark`` is echoed when
playback reaches it (at once when nothing is queued); ``clear`` drops the queue and echoes every
pending mark at once (protocols.md §1.3). Raw-audio clients behave alike without marks: they
queue agent audio and drop it on ``UserStartedSpeaking``.

`Playback` keeps one number, the clock time at which the queued audio ends, plus the pending
marks, and at most one timer: the next moment something becomes observable (a mark reached, the
queue running dry). That keeps it cheap enough for hundreds of concurrent calls.
"""

from __future__ import annotations

from collections import deque
from typing import Callable

import attrs
from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["Playback", "PLAYED", "CLEARED"]

#: How an echoed mark ended: its audio played out, or a ``clear`` dropped it.
PLAYED = "played"
CLEARED = "cleared"

#: Float slack when comparing clock readings with computed due times.
_EPSILON_S = 1e-6


@attrs.define(eq=False)
class Playback:
    """
    A playback queue: ``bytes_per_s`` of audio play per second of ``clock`` time.

    ``on_mark(name, how)`` is called when a mark is echoed (``how`` is `PLAYED` or `CLEARED`);
    ``on_speaking(True)`` when audio starts playing from an empty queue and ``on_speaking(False)``
    when the queue runs dry or is cleared.
    """

    clock: IReactorTime
    bytes_per_s: int
    on_mark: Callable[[str, str], None]
    on_speaking: Callable[[bool], None]
    speaking: bool = False
    _ends_at: float = 0.0
    _marks: deque = attrs.field(factory=deque)
    _timer: IDelayedCall | None = None

    def queued_s(self) -> float:
        """Seconds of audio still queued (not yet played)."""
        return max(0.0, self._ends_at - self.clock.seconds())

    def pending_marks(self) -> list[str]:
        """Names of the marks still waiting for their audio to play."""
        return [name for _, name in self._marks]

    def audio(self, n_bytes: int) -> None:
        """Queue ``n_bytes`` of audio behind whatever is queued."""
        if n_bytes <= 0:
            return
        now = self.clock.seconds()
        self._ends_at = max(now, self._ends_at) + n_bytes / self.bytes_per_s
        if not self.speaking:
            self.speaking = True
            self.on_speaking(True)
        self._schedule(now)

    def mark(self, name: str) -> None:
        """A mark after the queued audio: echoed when it has played, at once if nothing is queued."""
        now = self.clock.seconds()
        if not self._marks and self._ends_at <= now + _EPSILON_S:
            self.on_mark(name, PLAYED)
            return
        self._marks.append((self._ends_at, name))
        self._schedule(now)

    def clear(self) -> tuple[float, list[str]]:
        """Drop the queue; every pending mark is echoed as `CLEARED`. Returns (seconds dropped, marks)."""
        dropped_s = self.queued_s()
        self._ends_at = self.clock.seconds()
        marks = [name for _, name in self._marks]
        self._marks.clear()
        self._cancel()
        for name in marks:
            self.on_mark(name, CLEARED)
        if self.speaking:
            self.speaking = False
            self.on_speaking(False)
        return dropped_s, marks

    def stop(self) -> None:
        """Forget the queue without echoing anything (the stream is gone); cancel the timer."""
        self._marks.clear()
        self._cancel()
        self.speaking = False

    def _cancel(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _schedule(self, now: float) -> None:
        """Arm the timer for the next observable moment: the first pending mark or the queue's end."""
        due = self._marks[0][0] if self._marks else self._ends_at
        delay = max(0.0, due - now)
        if self._timer is not None and self._timer.active():
            if abs(self._timer.getTime() - (now + delay)) > _EPSILON_S:
                self._timer.reset(delay)
        else:
            self._timer = self.clock.callLater(delay, self._advance)

    def _advance(self) -> None:
        self._timer = None
        now = self.clock.seconds()
        while self._marks and self._marks[0][0] <= now + _EPSILON_S:
            _, name = self._marks.popleft()
            self.on_mark(name, PLAYED)
        if self.speaking and self._ends_at <= now + _EPSILON_S:
            self.speaking = False
            self.on_speaking(False)
        if self._marks or self.speaking:
            self._schedule(now)
