"""
record: each call's caller and agent audio, time-aligned, in a two-channel WAV file.

Off unless the chain names it; put it right after ``empty_frames`` (before ``transcoder``), where
both directions are in the caller's format. The file is linear16 at the caller's rate (8 kHz for
Twilio, 16 kHz for ``/client``), the caller on the left channel and the agent on the right, both
placed by the call's clock from the start of the call (`gateway.recording` says how: silence
where a side was silent, agent audio from when it was sent to the caller, cut at a barge-in).
Beside it a JSON side file: ids, times, consent and retention, the Deepgram request ids, and the
transcript only with ``transcript = true`` (what the chain left of it: masked when ``redact`` is
in the chain; ``record`` must then come before ``redact``).

Never on the hot path's critical section: a frame costs appending its bytes to the side's
bytearray and its time and size to two arrays (`gateway.recording.FrameLog`). Every ``chunk_s``
the process's writer (the factory) hands every recorded call's log to one job in a thread
(``deferToThread``) that decodes, places and appends each chunk to its file: one thread hop per
chunk for the whole process, not one per call. At a call's end the rest, the side file and the
optional upload to S3-compatible storage (boto3) happen in a thread too. When the writer falls
behind by more than ``max_pending_s``, what waits is dropped (silence in the file) and counted.

Consent: with ``require_parameter`` set, only calls whose Twilio ``customParameters`` (or
``/client`` ``parameters``) give that parameter a true value (``true``, ``yes``, ``1``, ``on``)
are recorded; the others cost nothing (the stage leaves the audio routes). Retention: with
``retention_days`` above 0, recordings older than that are deleted from ``directory`` when the
first call starts and then every day (`gateway.recording.sweep`).
"""

from __future__ import annotations

import os
import re
import time
from typing import Any, Callable

import attrs
from twisted.internet import defer
from twisted.plugin import IPlugin
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.config import GatewayConfig
from gateway.errors import ConfigError
from gateway.section import Section
from gateway.events import Audio, Clear, DeepgramEvent, StreamStarted
from gateway.plugin import IStreamPlugin, Routes, StageContext, cancel
from gateway.recording import CallRecording, FrameLog, S3Target, finish_recording, sweep, write_chunks
from gateway.report import TranscriptKeeper

__all__ = ["plugin", "RecordStage", "RecordFactory", "RecordOptions", "S3Options"]

SIDE_FILE_VERSION = 1
#: Audio newer than this stays in memory at each chunk, so that a caller frame a little late still
#: lands in place (agent audio queued beyond the present always stays, for a barge-in to cut).
_LAG_S = 0.5
_TRUE = frozenset({"1", "true", "yes", "on"})
_DAY_S = 86400.0


@attrs.frozen
class S3Options:
    """``[record.s3]``: the bucket each recording is uploaded to at the end of the call."""

    bucket: str
    prefix: str = ""
    endpoint_url: str = ""
    region: str = ""
    delete_local: bool = False


@attrs.frozen
class RecordOptions:
    """``[record]`` (see the module docstring)."""

    directory: str
    require_parameter: str = ""
    retention_days: float = 0.0
    transcript: bool = False
    chunk_s: float = 1.0
    max_duration_s: float = 4 * 3600.0
    max_pending_s: float = 60.0
    after_transcoder: bool = False
    s3: S3Options | None = None


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)) if t else ""


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:64] or "call"


class RecordStage:
    """One call's recording: frames appended on the reactor, written in a thread."""

    def __init__(self, ctx: StageContext, factory: RecordFactory) -> None:
        self.ctx = ctx
        self.factory = factory
        self.options = factory.options
        self._now = ctx.clock.seconds
        #: The frames since the last chunk went to the writer.
        self._log = FrameLog()
        self._decided = False
        self.recording: CallRecording | None = None
        self.consent: dict[str, Any] | None = None
        self.transcript = TranscriptKeeper() if self.options.transcript else None
        #: The stream's id as the StreamStarted said (a /client call's is its call id).
        self.stream_sid = ""
        self.stopped = ""
        self._stopped_at: float | None = None
        self.frames_dropped = 0
        self._first_side_file: dict[str, Any] | None = None
        info = ctx.call
        after = self.options.after_transcoder
        self._formats = (info.upstream_input if after else info.caller_format,
                         info.upstream_output if after else info.caller_format)
        # Frames of both sides that may wait when the writer falls behind (50 per second each).
        self._max_pending = int(self.options.max_pending_s * 100)

    def routes(self) -> Routes:
        return Routes(
            inbound={StreamStarted: self.on_started, Audio: self.on_caller},
            outbound={Audio: self.on_agent, Clear: self.on_clear, DeepgramEvent: self.on_event},
        )

    # --- the hot path: appends to memory, nothing else (FrameLog.add, inlined) ------------------

    def on_caller(self, event: Audio) -> Any:
        log = self._log
        payload = event.payload
        log.caller_audio += payload
        log.caller_times.append(self._now())
        log.caller_sizes.append(len(payload))
        return event

    def on_agent(self, event: Audio) -> Any:
        log = self._log
        payload = event.payload
        log.agent_audio += payload
        log.agent_times.append(self._now())
        log.agent_sizes.append(len(payload))
        return event

    @property
    def pending_frames(self) -> int:
        """Frames waiting for the writer."""
        return len(self._log)

    # --- control -------------------------------------------------------------------------------

    def _clear(self) -> None:
        log = self._log
        log.clears.append((self._now(), len(log.agent_times)))

    def on_clear(self, event: Clear) -> Any:
        self._clear()
        return event

    def on_event(self, event: DeepgramEvent) -> Any:
        if event.type == "UserStartedSpeaking":
            # The call clears Twilio's queue on it (a /client app drops its own): a barge-in.
            self._clear()
        elif self.transcript is not None:
            self.transcript.observe(event.type, event.message)
        return event

    def _consent_of(self, parameters: Any) -> dict[str, Any] | None:
        name = self.options.require_parameter
        if not name:
            return {"basis": "configuration"}
        value = str(parameters.get(name, ""))
        if value.strip().lower() in _TRUE:
            return {"basis": "parameter", "parameter": name, "value": value}
        return None

    def on_started(self, event: StreamStarted) -> Any:
        if self._decided:
            return event
        self._decided = True
        self.stream_sid = event.stream_sid
        self.consent = self._consent_of(event.custom_parameters)
        if self.consent is None:
            self._log = FrameLog()
            self._leave_routes()
            self.ctx.count("recordings", outcome="no_consent")
            return event
        info = self.ctx.call
        started = info.started_at
        name = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(started))}-{_safe(info.call_id)}"
        base = os.path.join(self.options.directory, time.strftime("%Y-%m-%d", time.gmtime(started)), name)
        self.recording = CallRecording(base, info.caller_format.sample_rate_hz, started, *self._formats)
        self._first_side_file = self.side_document(complete=False)
        self.ctx.count("recordings", outcome="started")
        self.factory.activate(self, self.ctx.clock)
        return event

    def _leave_routes(self) -> None:
        for cls, direction in ((Audio, "inbound"), (Audio, "outbound"), (Clear, "outbound"),
                               (DeepgramEvent, "outbound")):
            self.ctx.stop_handling(cls, direction)

    # --- the process's writer asks, on the reactor ---------------------------------------------

    def take(self, until_s: float) -> tuple[CallRecording, FrameLog, float, dict[str, Any] | None]:
        """This chunk for the writer: the frames so far (a new log takes their place)."""
        log, self._log = self._log, FrameLog()
        first, self._first_side_file = self._first_side_file, None
        assert self.recording is not None
        return self.recording, log, until_s, first

    def check(self, now: float, writer_busy: bool) -> None:
        """At each chunk: the writer's lag and the call's length, against their bounds."""
        if writer_busy and len(self._log) > self._max_pending:
            # The writer is that far behind: what waits goes (a silence in the file), counted.
            dropped = len(self._log)
            self._log = FrameLog()
            self.frames_dropped += dropped
            self.ctx.count("record_frames_dropped", dropped, reason="writer_behind")
        if now - self.ctx.call.started_at >= self.options.max_duration_s:
            self._stop("max_duration")

    def write_failed(self, problem: str) -> None:
        """Writing this recording failed in the writer: stop recording the call, say why."""
        if not self.stopped:
            self.ctx.log.error("recording {path} failed ({problem}); the call goes on unrecorded",
                               path=self.recording.wav_path if self.recording else "", problem=problem,
                               log_category="RECORDING_WRITE_FAILED")
            self._stop("write_failed")

    def _stop(self, reason: str) -> None:
        """Stop recording this call here (the file keeps what came before)."""
        self.stopped = reason
        self._stopped_at = self._now()
        if reason == "write_failed":
            self._log = FrameLog()
        self._leave_routes()
        self.factory.deactivate(self)
        self.ctx.count("recordings", outcome=reason)

    def side_document(self, complete: bool) -> dict[str, Any]:
        """The side file's content (README, "Recording calls")."""
        info = self.ctx.call
        recording = self.recording
        assert recording is not None
        retention = self.options.retention_days
        document: dict[str, Any] = {
            "version": SIDE_FILE_VERSION,
            "complete": complete,
            "call_id": info.call_id,
            "stream_sid": info.stream_sid or self.stream_sid,
            "call_sid": info.call_sid,
            "account_sid": info.account_sid,
            "leg": info.leg,
            "mode": info.mode,
            "started_at": _iso(info.started_at),
            "started_at_unix": round(info.started_at, 3),
            "audio": {
                "file": os.path.basename(recording.wav_path),
                "encoding": "linear16",
                "sample_rate": recording.rate_hz,
                "channels": ["caller", "agent"],
                "time_zero": "started_at",
            },
            "consent": self.consent,
            "retention": {
                "retention_days": retention or None,
                "delete_after": _iso(info.started_at + retention * _DAY_S) if retention else None,
            },
            "dg_request_ids": list(info.request_ids),
        }
        if complete:
            document["ended_at"] = _iso(self._now())
            document["stopped"] = self.stopped or None
            document["frames_dropped"] = self.frames_dropped
        if self.transcript is not None:
            document["transcript"] = list(self.transcript.items)
        return document

    def close(self) -> None:
        if self.recording is None:
            return
        self.factory.deactivate(self)
        log, self._log = self._log, FrameLog()
        end = self._stopped_at if self._stopped_at is not None else self._now()
        d = self.factory.finish_later(self.recording, log, self.side_document(complete=True), end)
        d.addCallbacks(self._finished, self._finish_failed)

    def _finished(self, result: dict[str, Any]) -> None:
        self.ctx.log.info("call recorded: {path} ({duration_s} s)", path=result["path"],
                          duration_s=result["duration_s"])
        if result.get("upload_error"):
            self.ctx.log.warn("recording {path} not uploaded to S3: {problem}", path=result["path"],
                              problem=result["upload_error"], log_category="RECORDING_UPLOAD_FAILED")

    def _finish_failed(self, failure: Failure) -> None:
        self.ctx.log.failure("finishing the recording {path} failed", failure,
                             path=self.recording.wav_path if self.recording else "",
                             log_category="RECORDING_FINISH_FAILED")


@attrs.define(eq=False)
class RecordFactory:
    """
    Makes record stages and is the process's writer: every ``chunk_s`` while calls are recorded,
    one job in a thread (``run``: `deferToThread` unless a test gives another) writes every
    recorded call's chunk, so the thread hops are one per chunk for the process, not per call.
    It also runs the retention sweep (at the first call, then every day on its clock).
    """

    options: RecordOptions
    run: Callable[..., defer.Deferred] = attrs.field(default=None)
    pending: set = attrs.field(factory=set)
    last_sweep: list = attrs.field(factory=list)
    _sweep_timer: Any = None
    _clock: Any = None
    _s3: S3Target | None = None
    #: The stages being recorded (insertion-ordered), the chunk timer, the job in the thread.
    _active: dict = attrs.field(factory=dict)
    _tick_timer: Any = None
    _tick_clock: Any = None
    _job: defer.Deferred | None = None

    def __attrs_post_init__(self) -> None:
        if self.run is None:
            from twisted.internet.threads import deferToThread

            self.run = deferToThread

    def s3_target(self) -> S3Target:
        if self._s3 is None:
            s3 = self.options.s3
            assert s3 is not None
            self._s3 = S3Target(s3.bucket, s3.prefix, s3.endpoint_url or None, s3.region or None)
        return self._s3

    def __call__(self, ctx: StageContext) -> RecordStage:
        if self._clock is None:
            self.start_service(ctx.clock)
        return RecordStage(ctx, self)

    # --- retention -----------------------------------------------------------------------------

    def start_service(self, clock: Any) -> None:
        """
        Sweep now and every day after (only with ``retention_days``); idempotent. The first call
        starts it; a service that calls it at start-up (with its reactor) sweeps before any call.
        """
        if self._clock is not None:
            return
        self._clock = clock
        if self.options.retention_days > 0:
            self._sweep()

    def _sweep(self) -> None:
        self._sweep_timer = self._clock.callLater(_DAY_S, self._sweep)
        d = self.run(sweep, self.options.directory, self.options.retention_days)
        d.addCallback(self.last_sweep.append)
        d.addErrback(_log_failure)
        self.track(d)

    def stop_service(self) -> defer.Deferred:
        """Stop the daily sweep; fires when every recording being written is finished."""
        if self._sweep_timer is not None and self._sweep_timer.active():
            self._sweep_timer.cancel()
        self._sweep_timer = None
        return self.idle()

    # --- the writer ------------------------------------------------------------------------------

    def activate(self, stage: RecordStage, clock: Any) -> None:
        """``stage`` records from now on: its chunks go with every writer job."""
        self._active[stage] = None
        if self._tick_timer is None:
            self._tick_clock = clock
            self._tick_timer = clock.callLater(self.options.chunk_s, self._tick)

    def deactivate(self, stage: RecordStage) -> None:
        self._active.pop(stage, None)
        if not self._active and self._tick_timer is not None:
            cancel(self._tick_timer)
            self._tick_timer = None

    def _tick(self) -> None:
        self._tick_timer = None
        now = self._tick_clock.seconds()
        for stage in list(self._active):
            stage.check(now, self._job is not None)
        if self._job is None and self._active:
            stages = list(self._active)
            batch = [stage.take(now - _LAG_S) for stage in stages]
            job = self._job = self.run(write_chunks, batch)
            job.addBoth(self._written, stages)
            self.track(job)
        if self._active:
            self._tick_timer = self._tick_clock.callLater(self.options.chunk_s, self._tick)

    def _written(self, result: Any, stages: list[RecordStage]) -> None:
        self._job = None
        if isinstance(result, Failure):
            _log_failure(result, "the recordings' writer failed")
            return
        for index, problem in result:
            stages[index].write_failed(problem)

    def finish_later(self, recording: CallRecording, log: FrameLog, document: dict[str, Any],
                     end_s: float) -> defer.Deferred:
        """After the job in flight (it may hold this recording's chunk): `finish` in a thread."""
        done: defer.Deferred = defer.Deferred()
        (self._job if self._job is not None else defer.succeed(None)).addBoth(lambda _: done.callback(None))
        done.addCallback(lambda _: self.run(self.finish, recording, log, document, end_s))
        self.track(done)
        return done

    # --- finishing -----------------------------------------------------------------------------

    def track(self, d: defer.Deferred) -> None:
        self.pending.add(d)
        def forget(result: Any) -> Any:
            self.pending.discard(d)
            return result

        d.addBoth(forget)

    def idle(self) -> defer.Deferred:
        """Fires once every recording job started so far is over."""
        return defer.DeferredList(list(self.pending), consumeErrors=True).addCallback(lambda _: None)

    def finish(self, recording: CallRecording, log: FrameLog, document: dict[str, Any],
               end_s: float | None = None) -> dict[str, Any]:
        """In a thread: `gateway.recording.finish_recording` with this plugin's storage."""
        s3 = self.options.s3
        return finish_recording(recording, log, document, end_s, self.options.directory,
                                self.s3_target() if s3 is not None else None,
                                s3 is not None and s3.delete_local)


def _log_failure(failure: Failure, what: str = "recording retention sweep failed") -> None:
    from twisted.logger import Logger

    Logger(namespace="plugins.record").failure(what, failure, log_category="RECORDING_JOB_FAILED")


def _s3_options(section: Section) -> S3Options | None:
    if "s3" not in section.data:
        return None
    s3 = section.section("s3")
    options = S3Options(
        bucket=s3.str("bucket"),
        prefix=s3.str("prefix", ""),
        endpoint_url=s3.str("endpoint_url", ""),
        region=s3.str("region", ""),
        delete_local=s3.bool("delete_local", False),
    )
    s3.finish()
    if not options.bucket:
        raise ConfigError(s3.key("bucket"), "must name a bucket")
    if options.endpoint_url and not options.endpoint_url.startswith(("http://", "https://")):
        raise ConfigError(s3.key("endpoint_url"), f"expected an http(s) URL, got {options.endpoint_url!r}")
    try:
        import boto3  # noqa: F401
    except ImportError:
        raise ConfigError(section.key("s3"), "needs boto3: pip install 'deepgram-twilio-gateway[s3]'")
    return options


@implementer(IPlugin, IStreamPlugin)
@attrs.frozen
class RecordPlugin:
    """The record plugin."""

    name: str = "record"

    def configure(self, section: Section, gateway: GatewayConfig) -> Any:
        directory = os.path.normpath(os.path.join(gateway.config_dir, section.str("directory")))
        chain = list(gateway.chain)
        options = RecordOptions(
            directory=directory,
            require_parameter=section.str("require_parameter", ""),
            retention_days=section.float("retention_days", 0.0, minimum=0),
            transcript=section.bool("transcript", False),
            chunk_s=section.float("chunk_s", 1.0, minimum=0.1),
            max_duration_s=section.float("max_duration_s", 4 * 3600.0, minimum=1),
            max_pending_s=section.float("max_pending_s", 60.0, minimum=1),
            after_transcoder="transcoder" in chain and chain.index(self.name) > chain.index("transcoder"),
            s3=_s3_options(section),
        )
        if options.transcript and "redact" in chain and chain.index(self.name) > chain.index("redact"):
            raise ConfigError("gateway.chain", "record must come before redact when [record] transcript "
                              "is on: outbound events visit the stages in reverse order, so after redact "
                              "it would keep the unmasked text")
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as e:
            raise ConfigError(section.key("directory"), f"cannot create {directory}: {e.strerror}")
        if not os.access(directory, os.W_OK):
            raise ConfigError(section.key("directory"), f"{directory} is not writable")
        return RecordFactory(options)


plugin = RecordPlugin()
