"""
What every simulated call shares: connecting, pacing caller frames on the reactor's clock,
ending the stream, and recording into a `CallResult`.

Frame ``i`` of the stream (the clip's frames, then silence while waiting for the agent) is due at
``base + (i - base_index) * frame_s``. In real time the base is the moment the WebSocket opened;
with ``realtime=False`` the clip goes out at once and the base moves to the clip's end, so the
wait for the agent is still real time. One timer per call, re-armed for the next due frame;
frames that fell behind are sent together at once (their lateness is measured).

Two options make the caller polite, as a person on the phone is:

- ``after_greeting``: the clip waits until the agent's greeting has played out (its turn's end:
  a Twilio ``mark`` echoed as played, a ``/client`` ``AgentAudioDone``, or ``settle_s`` of
  quiet after agent audio). Meanwhile silence goes out in real time, as a phone line sends it;
  with no agent audio at all within ``greeting_timeout_s`` the clip starts anyway. Those lead
  frames come before the clip on the wire (frame numbers and timestamps count them), while DTMF
  times and the speech-end figure stay relative to the clip's start.
- ``until_answered``: after the clip, the call ends as soon as the agent's answer has played out
  in the same sense, instead of waiting the whole ``wait_s`` (still the upper bound).

One module of about 450 lines, on purpose: `SimulatedCall` is one call's state machine (pacing,
the polite-caller options, reconnecting across a handover, ending) whose parts share its timer
and its clock; the connection, playback, result and protocol dialects are modules of their own.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from gateway.simulator.connection import SimulatorFactory, SimulatorProtocol, connect
from gateway.simulator.playback import Playback
from gateway.simulator.result import CallResult, Stats

__all__ = ["SimulatedCall", "EventSink"]

#: Called with ``(t_s, kind, message)`` as each event is recorded.
EventSink = Callable[[float, str, Any], None]

_EPSILON_S = 1e-6

#: Quiet after agent audio that counts as the end of the agent's turn when no explicit end
#: (a mark played, ``AgentAudioDone``) arrives.
SETTLE_S = 1.0


class SimulatedCall:
    """
    The shared machinery of `TwilioCall` and `ClientCall`; not used on its own.

    Subclasses set ``mode``, ``_frame_bytes``, ``_clip``, the playback rate and the three hooks
    `_start_stream`, `_send_frame`, `_end_stream`, and the receiving hooks `_on_text` and
    `_on_binary`.
    """

    log = Logger()
    mode = "?"
    _silence_byte = b"\x00"
    _agent_bytes_per_s = 8000

    def __init__(
        self,
        reactor: Any,
        url: str,
        clip: bytes,
        frame_bytes: int,
        frame_ms: int,
        realtime: bool,
        wait_s: float | None,
        headers: Mapping[str, str],
        on_event: EventSink | None,
        keep_media: bool,
        close_timeout_s: float,
        after_greeting: bool = False,
        greeting_timeout_s: float = 5.0,
        until_answered: bool = False,
        settle_s: float = SETTLE_S,
    ) -> None:
        if frame_ms <= 0:
            raise ValueError(f"frame_ms must be positive, got {frame_ms}")
        if wait_s is not None and wait_s < 0:
            raise ValueError(f"wait_s must be >= 0 or None, got {wait_s}")
        self.reactor = reactor
        self.url = url
        self.realtime = realtime
        self.wait_s = wait_s
        self.frame_ms = frame_ms
        self.close_timeout_s = close_timeout_s
        self._clip = clip
        self._frame_bytes = frame_bytes
        self._frame_s = frame_ms / 1000.0
        self._clip_frames = -(-len(clip) // frame_bytes)
        self._wait_frames = None if wait_s is None else int(round(wait_s / self._frame_s))
        self._silence = self._silence_byte * frame_bytes
        self._headers = dict(headers)
        self._on_event = on_event
        self._keep_media = keep_media
        self.result = CallResult(mode=self.mode, url=url)
        self._sent = bytearray()
        self._agent = bytearray()
        self._lateness: list[float] = []
        self._agent_times: list[float] = []
        self._speech_end_frame = -1
        self._proto: SimulatorProtocol | None = None
        self._done: Deferred[CallResult] | None = None
        self._t0 = 0.0
        self._next = 0
        self._base_time = 0.0
        self._base_index = 0
        self._tick_call: IDelayedCall | None = None
        self._close_call: IDelayedCall | None = None
        self._ending = False
        self._connector: Any = None
        # Moving to a new socket (a /client handover): sending paused, the next open resumes.
        self._paused = False
        self._resuming = False
        self._reconnect_call: IDelayedCall | None = None
        self.after_greeting = after_greeting
        self.greeting_timeout_s = greeting_timeout_s
        self.until_answered = until_answered
        self.settle_s = settle_s
        # While holding (after_greeting) silence goes out before the clip; _lead counts it.
        self._holding = after_greeting
        self._hold_started = 0.0
        self._lead = 0
        # The agent's turns as the caller perceives them (seconds since run()).
        self._first_agent_audio: float | None = None
        self._quiet_since: float | None = None
        self._turn_done_at: float | None = None
        self.playback = Playback(reactor, self._agent_bytes_per_s, self._mark_played, self._speaking)

    # -- running -------------------------------------------------------------------------------

    def run(self) -> Deferred[CallResult]:
        """
        Place the call. The Deferred fires with the `CallResult` once the WebSocket is closed; a
        refused upgrade or a failed connect is recorded in the result, not raised. Cancelling it
        aborts the connection.
        """
        if self._done is not None:
            raise RuntimeError("run() was already called on this call object")
        self._done = Deferred(self._cancel)
        self._t0 = self.reactor.seconds()
        factory = SimulatorFactory(self, self.url, self._headers, self.reactor)
        self._connector = connect(factory)
        return self._done

    def now_s(self) -> float:
        """Seconds since `run` was called."""
        return self.reactor.seconds() - self._t0

    def record(self, kind: str, message: Any, t_s: float | None = None) -> None:
        """Append an event to the result (and tell the ``on_event`` sink)."""
        t = self.now_s() if t_s is None else t_s
        self.result.events.append((t, kind, message))
        if self._on_event is not None:
            self._on_event(t, kind, message)

    def send_text(self, data: bytes) -> None:
        """Send one text frame if the WebSocket is open."""
        proto = self._proto
        if proto is not None and proto.state == proto.STATE_OPEN:
            proto.sendMessage(data, False)

    def send_binary(self, data: bytes) -> None:
        """Send one binary frame if the WebSocket is open."""
        proto = self._proto
        if proto is not None and proto.state == proto.STATE_OPEN:
            proto.sendMessage(data, True)

    def close(self, reason: str, code: int = 1000) -> None:
        """Start the closing handshake ourselves."""
        proto = self._proto
        self._stop_timers()
        if proto is not None and proto.state == proto.STATE_OPEN:
            if self.result.closed_by is None:
                self.result.closed_by = "simulator"
            proto.sendClose(code=code, reason=reason)

    # -- hooks for subclasses ------------------------------------------------------------------

    def _start_stream(self) -> None:
        """Send what goes before the first frame."""

    def _resume_stream(self) -> None:
        """Send what goes before the first frame on a new socket after a handover."""

    def _send_frame(self, index: int, chunk: bytes) -> None:
        """Send frame ``index`` (0-based) carrying ``chunk``."""
        raise NotImplementedError

    def _before_frame(self, stream_s: float) -> None:
        """Called before each frame with its stream time (for DTMF)."""

    def _end_stream(self) -> None:
        """The clip and the wait are over: send ``stop`` or close."""
        raise NotImplementedError

    def _on_text(self, t: float, payload: bytes) -> None:
        raise NotImplementedError

    def _on_binary(self, t: float, payload: bytes) -> None:
        raise NotImplementedError

    # -- pacing --------------------------------------------------------------------------------

    def _due(self, index: int) -> float:
        if not self.realtime and index < self._clip_frames:
            return self._base_time
        return self._base_time + (index - self._base_index) * self._frame_s

    def _total_frames(self) -> int | None:
        return None if self._wait_frames is None else self._clip_frames + self._wait_frames

    def _hold_tick(self) -> None:
        """Before the clip (``after_greeting``): silence in real time until the greeting is over."""
        self._tick_call = None
        if self._ending or self._paused:
            return
        now = self.reactor.seconds()
        while self._hold_started + self._lead * self._frame_s <= now + _EPSILON_S:
            self._lateness.append(max(0.0, now - (self._hold_started + self._lead * self._frame_s)))
            self._send_frame(self._lead, self._silence)
            self._sent += self._silence
            self._lead += 1
            if self._proto is None or self._proto.state != self._proto.STATE_OPEN:
                return
        t = now - self._t0
        why = None
        if self._first_agent_audio is None:
            if now - self._hold_started >= self.greeting_timeout_s - _EPSILON_S:
                why = f"no greeting within {self.greeting_timeout_s:g} s"
        elif self._turn_over(t, self._hold_started - self._t0):
            why = "greeting over"
        if why is None:
            due = self._hold_started + self._lead * self._frame_s
            self._tick_call = self.reactor.callLater(max(0.0, due - now), self._hold_tick)
            return
        self._holding = False
        self.record("sim.greeting_waited", {"why": why, "after_s": now - self._hold_started,
                                            "frames": self._lead})
        self._base_time, self._base_index = now, 0
        self._tick()

    def _turn_over(self, t: float, since: float) -> bool:
        """Whether an agent turn that began after ``since`` has played out by ``t``."""
        if self.playback.speaking or self._first_agent_audio is None:
            return False
        if self._turn_done_at is not None and self._turn_done_at >= since:
            return True
        return self._quiet_since is not None and self._quiet_since >= since and \
            t - self._quiet_since >= self.settle_s - _EPSILON_S

    def _answered(self, t: float) -> bool:
        """``until_answered``: agent audio came after the speech ended and has played out."""
        speech_end = self.result.speech_end_s
        if speech_end is None or self.result.first_agent_audio_after_speech_s is None:
            return False
        return self._turn_over(t, speech_end)

    def _tick(self) -> None:
        self._tick_call = None
        if self._ending or self._paused:
            return
        now = self.reactor.seconds()
        total = self._total_frames()
        clip_frames = self._clip_frames
        while (total is None or self._next < total) and self._due(self._next) <= now + _EPSILON_S:
            index = self._next
            if self.realtime or index >= clip_frames:
                self._lateness.append(max(0.0, now - self._due(index)))
            self._before_frame(index * self._frame_s)
            if index < clip_frames:
                chunk = self._clip[index * self._frame_bytes : (index + 1) * self._frame_bytes]
            else:
                chunk = self._silence
            self._send_frame(self._lead + index, chunk)
            self._sent += chunk
            self._next = index + 1
            if index == self._speech_end_frame:
                self.result.speech_end_s = now - self._t0
                self.record("sim.speech_end", {"frame": index + 1})
            if self._next == clip_frames:
                self.record("sim.clip_sent", {"frames": clip_frames})
                if not self.realtime:
                    self._base_time, self._base_index = now, clip_frames
            if self._proto is None or self._proto.state != self._proto.STATE_OPEN:
                return
        if total is not None and self._next >= total and self._due(total) <= now + _EPSILON_S:
            self._ending = True
            self._end_stream()
            return
        if self.until_answered and self._next > clip_frames and self._answered(now - self._t0):
            self.record("sim.answered", {})
            self._ending = True
            self._end_stream()
            return
        upcoming = self._next if total is None or self._next < total else total
        self._tick_call = self.reactor.callLater(max(0.0, self._due(upcoming) - now), self._tick)

    # -- from the protocol ---------------------------------------------------------------------

    # -- moving to another socket (a handover) ---------------------------------------------

    def _pause(self) -> None:
        """Stop sending caller audio: this socket is about to close (what is unsent goes on later)."""
        self._paused = True
        if self._tick_call is not None and self._tick_call.active():
            self._tick_call.cancel()
        self._tick_call = None

    def _reconnect(self, url: str, delay_s: float = 0.0) -> None:
        """After ``delay_s``, open a new WebSocket to ``url`` and go on where the call was."""
        self._proto = None
        self._resuming = True

        def connect_now() -> None:
            self._reconnect_call = None
            self.url = url
            try:
                factory = SimulatorFactory(self, url, self._headers, self.reactor)
            except ValueError as e:  # not a usable WebSocket URL
                self._connect_failed(str(e))
                return
            self._connector = connect(factory)

        self._reconnect_call = self.reactor.callLater(max(0.0, delay_s), connect_now)

    def _opened(self, proto: SimulatorProtocol) -> None:
        if self._resuming:
            self._reopened(proto)
            return
        self._proto = proto
        self.result.opened = True
        now = self.reactor.seconds()
        self.record("sim.open", {"url": self.url})
        self._base_time, self._base_index = now, 0
        self._start_stream()
        if self._holding and not self._ending:
            self._hold_started = now
            self._hold_tick()
        else:
            self._tick()

    def _reopened(self, proto: SimulatorProtocol) -> None:
        """The new socket after a handover is open: the clip (or the wait) goes on from where it was."""
        self._resuming = False
        self._paused = False
        self._proto = proto
        now = self.reactor.seconds()
        self.record("sim.open", {"url": self.url, "resumed": True})
        self._resume_stream()
        # No second greeting comes on a resumed call: stop holding the clip for one.
        self._holding = False
        self._base_time, self._base_index = now, self._next
        self._tick()

    def _received(self, payload: bytes, is_binary: bool) -> None:
        t = self.now_s()
        if is_binary:
            self.result.binary_frames += 1
            self._on_binary(t, payload)
        else:
            self._on_text(t, payload)

    def _agent_audio(self, t: float, audio: bytes) -> None:
        """Account for agent audio received at ``t``: bytes, counters, latency, playback."""
        result = self.result
        result.media_events += 1
        self._agent += audio
        self._agent_times.append(t)
        if self._first_agent_audio is None:
            self._first_agent_audio = t
        if result.first_agent_audio_s is None:
            result.first_agent_audio_s = t
        if result.speech_end_s is not None and result.first_agent_audio_after_speech_s is None:
            result.first_agent_audio_after_speech_s = max(0.0, t - result.speech_end_s)
        self.playback.audio(len(audio))

    def _mark_played(self, name: str, how: str) -> None:
        """Playback reached a mark (or a clear dropped it)."""

    def _turn_done(self) -> None:
        """The agent's turn ended explicitly (a mark played out, ``AgentAudioDone``)."""
        self._turn_done_at = self.now_s()

    def _speaking(self, speaking: bool) -> None:
        if speaking:
            self._quiet_since = None
            self.record("sim.agent_started", {})
        else:
            self._quiet_since = self.now_s()
            self.record("sim.agent_stopped", {})

    def _handshake_failed(self, status: int | None, reason: str) -> None:
        self.result.handshake_status = status
        self.result.close_reason = reason

    def _connect_failed(self, message: str) -> None:
        self.result.connect_error = message
        self._finish()

    def _closed(self, was_clean: bool, code: int | None, reason: str | None) -> None:
        result = self.result
        if result.opened:
            result.close_code, result.close_reason = code, reason
            if result.closed_by is None:
                result.closed_by = "gateway" if code is not None and code != 1006 else "dropped"
            self.record("sim.closed", {"code": code, "reason": reason, "clean": was_clean,
                                       "by": result.closed_by})
        elif result.close_reason is None:
            result.close_reason = reason
        result.was_clean = bool(was_clean) and result.opened
        self._finish()

    # -- the end -------------------------------------------------------------------------------

    def _stop_timers(self) -> None:
        for name in ("_tick_call", "_close_call", "_reconnect_call"):
            call = getattr(self, name)
            if call is not None and call.active():
                call.cancel()
            setattr(self, name, None)

    def _finish(self) -> None:
        self._ending = True
        self._stop_timers()
        self.playback.stop()
        result = self.result
        result.sent_audio = bytes(self._sent)
        result.frames_sent = self._lead + self._next if result.opened else 0
        result.agent_audio = bytes(self._agent)
        result.send_lateness = Stats.of(self._lateness)
        gaps = [b - a for a, b in zip(self._agent_times, self._agent_times[1:])]
        result.agent_media_gaps = Stats.of(gaps)
        result.duration_s = self.now_s()
        done, self._done = self._done, None
        self._proto = None
        if done is not None and not done.called:
            done.callback(result)

    def _cancel(self, d: Deferred) -> None:
        """The caller gave up on the Deferred: abort the connection and stop every timer."""
        self._done = None
        self._ending = True
        self._stop_timers()
        self.playback.stop()
        if self._proto is not None and self._proto.transport is not None:
            self._proto.dropConnection(abort=True)
        elif self._connector is not None:
            self._connector.disconnect()
