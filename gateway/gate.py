"""
The gate at the end of the chain: what goes towards Deepgram is sent only while the call is
``live`` (the session confirmed its configuration) on a leg that is ``OPEN``.

Everything else is *held*, in order, with the audio bounded by ``hold_audio_ms``: before the
first session is ready, while a Deepgram Close frame is on its way back (a round trip over the
internet), and during a reconnect. The last ``replay_ms`` of audio sent is kept, and put back in
front of the held audio when a session is lost: what was in flight to a dying session is not
lost (the new session may hear a few frames twice, which speech tolerates; a gap it does not).
"""

from __future__ import annotations

import collections
from typing import Any, Callable, Mapping

from gateway.callinfo import CallInfo
from gateway.interfaces import LegState, UpstreamLeg

__all__ = ["UpstreamGate", "HELD_MESSAGES"]

#: The leg state in which the gate may send (a plain int: the hot path compares with it).
_OPEN = int(LegState.OPEN)
#: Control messages held at most while the Deepgram session is not live (beyond: dropped, counted).
HELD_MESSAGES = 256


class UpstreamGate:
    """One call's gate (see the module docstring); ``count`` is the call's per-call counter."""

    def __init__(
        self, info: CallInfo, count: Callable[..., None], hold_bytes: int, replay_bytes: int
    ) -> None:
        self._info = info
        self._count = count
        #: The live session's leg: set on entering ``live``, cleared on leaving it.
        self.leg: UpstreamLeg | None = None
        # What waits for a live session: (is_audio, payload or message), in arrival order.
        self._held: collections.deque[tuple[bool, Any]] = collections.deque()
        self._held_bytes = 0
        self._held_messages = 0
        self._hold_limit = hold_bytes
        # The last audio sent, for replay after a lost session.
        self._recent: collections.deque[bytes] = collections.deque()
        self._recent_bytes = 0
        self._replay_limit = replay_bytes

    @property
    def holding(self) -> bool:
        return bool(self._held)

    # --- the way through -------------------------------------------------------------------------

    def audio(self, payload: bytes) -> None:
        """The hot path: one frame of audio towards Deepgram."""
        leg = self.leg
        if leg is not None and leg.state == _OPEN:
            if leg.congested:
                self._count("frames_dropped", reason="deepgram_backpressure")
                return
            if self._held:
                self.hold(True, payload)
                self.release()
                return
            self.send_audio(leg, payload)
        else:
            self.hold(True, payload)

    def message(self, kind: str, message: Mapping[str, Any]) -> None:
        """A JSON message (not ``Settings``) towards Deepgram; a ``KeepAlive`` is never held."""
        leg = self.leg
        if leg is not None and leg.state == _OPEN:
            if self._held:
                self.hold(False, message)
                self.release()
            else:
                leg.send_message(message)
        elif kind == "KeepAlive":
            self._count("control_dropped", type=kind, reason="not_live")
        else:
            self.hold(False, message)

    def send_audio(self, leg: UpstreamLeg, payload: bytes) -> None:
        leg.send_audio(payload)
        info = self._info
        info.frames_to_upstream += 1
        info.bytes_to_upstream += len(payload)
        if self._replay_limit:
            recent = self._recent
            recent.append(payload)
            self._recent_bytes += len(payload)
            while self._recent_bytes > self._replay_limit:
                self._recent_bytes -= len(recent.popleft())

    # --- the session's lifecycle -----------------------------------------------------------------

    def open(self, leg: UpstreamLeg | None) -> None:
        """The session on ``leg`` is live: send what was held, then let everything through."""
        self.leg = leg
        self.release()

    def shut(self) -> None:
        """The session is no longer live: hold from now on."""
        self.leg = None

    def hold(self, is_audio: bool, item: Any) -> None:
        if self._info.phase in ("ending", "closed"):
            self._count("frames_dropped" if is_audio else "control_dropped", reason="call_ending")
            return
        if is_audio:
            size = len(item)
            if self._held_bytes + size > self._hold_limit:
                self._count("frames_dropped", reason="held_over_limit")
                return
            self._held_bytes += size
        else:
            if self._held_messages >= HELD_MESSAGES:
                self._count("control_dropped", reason="held_over_limit")
                return
            self._held_messages += 1
        self._held.append((is_audio, item))

    def release(self) -> None:
        """Send what was held, in order, while the live session's leg stays open."""
        leg = self.leg
        held = self._held
        while held and leg is not None and self.leg is leg and leg.state == _OPEN:
            is_audio, item = held.popleft()
            if is_audio:
                self._held_bytes -= len(item)
                self.send_audio(leg, item)
            else:
                self._held_messages -= 1
                leg.send_message(item)

    def replay(self) -> None:
        """Put the audio last sent to a lost session back in front of what is held."""
        if not self._recent:
            return
        replay = self._recent
        self._recent = collections.deque()
        self._count("frames_replayed", amount=len(replay))
        self._held_bytes += self._recent_bytes
        self._recent_bytes = 0
        for payload in reversed(replay):
            self._held.appendleft((True, payload))

    def flush_audio(self, leg: UpstreamLeg) -> None:
        """The held audio to ``leg`` before its CloseStream (a transcription's caller hung up)."""
        while self._held and leg.state == _OPEN:
            is_audio, item = self._held.popleft()
            if is_audio:
                self.send_audio(leg, item)
        self.drop()

    def drop(self) -> None:
        """Forget what is held (the call is ending), counting the audio frames."""
        self._count("frames_dropped", amount=sum(1 for a, _ in self._held if a), reason="call_ending")
        self._held.clear()
        self._held_bytes = self._held_messages = 0

    def forget_recent(self) -> None:
        self._recent.clear()
        self._recent_bytes = 0
