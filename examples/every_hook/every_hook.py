"""
call_notes: an example drop-in plugin that uses every hook of `gateway.plugin` (the whole plugin
contract), each commented with when the gateway calls it.

For each call it counts the caller's turns and the agent's turns (Deepgram's ``ConversationText``),
serves a ``note`` function the agent calls to write down what someone should follow up on, and
carries both across a handover to another process. When a call ends its notes go to a
process-wide writer, which appends them to a JSON-lines file every ``flush_interval_s`` and once
more when the gateway stops. Three hooks make no sense for such a plugin (the audio formats, the
held audio, admission): they are shown as documented no-ops that give the gateway's default.

Copy this directory next to your configuration, then:

    [gateway]
    dropin_dirs = ["every_hook"]
    chain = ["auth", "handover", "settings", "empty_frames", "transcoder", "keepalive",
             "call_control", "call_notes", "close_codes"]

    [call_notes]
    notes_file = "/var/lib/gateway/call-notes.jsonl"   # one JSON object per call
    flush_interval_s = 30.0

Tested in ``tests/test_example_every_hook.py``.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import attrs
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import implementer

from gateway.codecs.formats import AudioFormat
from gateway.config import GatewayConfig
from gateway.errors import ConfigError
from gateway.events import ConversationText
from gateway.plugin import FunctionSpec, IStreamPlugin, Routes, StageContext
from gateway.section import Section

log = Logger()

#: The gateway's default hold (`gateway.assembly.DEFAULT_HOLD_AUDIO_MS`); giving it asks for no
#: change, so the settings stage's ``hold_audio_ms`` stands.
DEFAULT_HOLD_AUDIO_MS = 10_000

#: Calls' notes kept while the file cannot be written; past this, the oldest are dropped.
MAX_PENDING = 1000

NOTE = FunctionSpec(
    "Write down something the caller said that a person must follow up on after the call "
    "(a number to call back, a complaint, a promise made).",
    {
        "type": "object",
        "properties": {"text": {"type": "string", "minLength": 1, "maxLength": 500,
                                "description": "the note, in one or two sentences"}},
        "required": ["text"],
        "additionalProperties": False,
    },
)


@attrs.define
class CallNotesStage:
    """One call's turn counts and notes."""

    ctx: StageContext
    writer: CallNotesFactory
    caller_turns: int = 0
    agent_turns: int = 0
    notes: list[str] = attrs.field(factory=list)

    # Stage.routes: asked once, when the call is made. Only the event classes named here reach
    # this stage (a route for DeepgramEvent would see every Deepgram message); the 20 ms audio
    # frames never do.
    def routes(self) -> Routes:
        return Routes(outbound={ConversationText: self.on_turn})

    # Called for each ConversationText on its way from Deepgram to the caller.
    def on_turn(self, event: ConversationText) -> ConversationText:
        if event.role == "user":
            self.caller_turns += 1
        elif event.role == "assistant":
            self.agent_turns += 1
        return event  # passed on unchanged (None would drop it)

    # FunctionServer.call_function: called when the agent asks for a function the factory
    # declares (a FunctionCallRequest with client_side true), with the arguments already checked
    # against its JSON Schema. The result (a str, anything JSON-able, or a Deferred of either)
    # goes back in the FunctionCallResponse; an exception or 10 s without an answer gives the
    # agent an "Error: ..." to speak about instead.
    def call_function(self, name: str, arguments: dict[str, Any]) -> Any:
        self.notes.append(arguments["text"])
        self.ctx.count("call_notes_taken")
        return "Noted."

    # KeepsState.save_state: called when the handover stage hands this call to another process
    # (its ctx.snapshot()); what it returns travels in the call's record. None: nothing to carry.
    def save_state(self) -> Mapping[str, Any] | None:
        return {"caller_turns": self.caller_turns, "agent_turns": self.agent_turns,
                "notes": list(self.notes)}

    # KeepsState.restore_state: called in the process taking the call up, when its stream starts
    # (the handover stage's ctx.restore(record)), before the start goes on down the chain. The
    # record came over the network: check what it says.
    def restore_state(self, state: Mapping[str, Any]) -> None:
        for key in ("caller_turns", "agent_turns"):
            value = state.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                setattr(self, key, value)
        notes = state.get("notes")
        if isinstance(notes, list):
            self.notes = [note for note in notes if isinstance(note, str)]

    # Stage.close: called once, when the call has ended; cancel timers and release buffers here.
    def close(self) -> None:
        if self.ctx.call.diagnosis_code == "HANDED_OVER":
            return  # the notes went with the call: the process that took it up writes them
        self.writer.add({
            "call_id": self.ctx.call.call_id,
            "call_sid": self.ctx.call.call_sid,
            "caller_turns": self.caller_turns,
            "agent_turns": self.agent_turns,
            "notes": self.notes,
        })


@attrs.define(eq=False)
class CallNotesFactory:
    """Makes one `CallNotesStage` per call; writes every ended call's notes, process-wide."""

    notes_file: str
    flush_interval_s: float
    pending: list[dict[str, Any]] = attrs.field(factory=list, init=False)
    _flushing: LoopingCall | None = attrs.field(default=None, init=False)

    # StageFactory: called once per call, when the call is made (before its handshake is seen).
    def __call__(self, ctx: StageContext) -> CallNotesStage:
        return CallNotesStage(ctx, self)

    # ServesFunctions.functions: read once, at start-up (gateway.assembly checks each JSON
    # Schema then); the settings stage declares them in agent.think.functions, and the call
    # sends each FunctionCallRequest for them to this factory's stage (call_function above).
    @property
    def functions(self) -> Mapping[str, FunctionSpec]:
        return {"note": NOTE}

    # CallerProtocolOptions.caller_protocol_options: read once, at start-up; Autobahn options
    # for the caller legs (keepalive sets its pings here). call_notes has none to set: an empty
    # mapping changes nothing.
    def caller_protocol_options(self) -> Mapping[str, Any]:
        return {}

    # StartsService.start_service: called once, when the gateway service is listening, with
    # its reactor: start process-wide work here (timers from that reactor).
    def start_service(self, reactor: Any) -> None:
        if self._flushing is None:
            self._flushing = LoopingCall(self.flush)
            self._flushing.clock = reactor
            self._flushing.start(self.flush_interval_s, now=False)

    # StopsService.stop_service: called once, when the gateway stops, after the drain (its calls
    # ended, or told to at the drain's deadline). A Deferred returned here is waited for, at
    # most 10 s.
    def stop_service(self) -> Any:
        if self._flushing is not None and self._flushing.running:
            self._flushing.stop()
        self._flushing = None
        self.flush()
        return None

    # NegotiatesFormats.upstream_formats: called once per caller leg at start-up. It changes
    # the audio Deepgram gets and sends, which is the transcoder's job: a no-op here. The
    # caller's own format both ways is the gateway's default and asks for no change, so the
    # transcoder's choice stands wherever this plugin sits in the chain.
    def upstream_formats(self, caller: AudioFormat) -> tuple[AudioFormat, AudioFormat]:
        return (caller, caller)

    # HoldsAudio.hold_audio_ms: read once, at start-up: how much caller audio a call holds
    # while no Deepgram session is live. The settings stage's business: a no-op here, the
    # gateway's default, which asks for no change.
    @property
    def hold_audio_ms(self) -> int:
        return DEFAULT_HOLD_AUDIO_MS

    # UsesAdmission.with_admission: called once, when the gateway is made, with the process's
    # admission control; the factory it returns replaces this one. Only auth needs it (it tells
    # admission when a call has authenticated): a no-op here, this factory unchanged.
    def with_admission(self, admission: Any) -> CallNotesFactory:
        return self

    def add(self, record: dict[str, Any]) -> None:
        """One ended call's notes, written at the next flush."""
        self.pending.append(record)
        del self.pending[:-MAX_PENDING]

    def flush(self) -> None:
        """Append the pending notes to the file; kept for the next flush if it cannot be written."""
        if not self.pending:
            return
        lines = "".join(json.dumps(record) + "\n" for record in self.pending)
        try:
            # A few lines once per interval: small enough for the reactor thread. A plugin writing
            # more would hand it to a thread, as plugins/record.py does.
            with open(self.notes_file, "a", encoding="utf-8") as f:
                f.write(lines)
        except OSError as e:
            log.warn("call notes not written to {path}: {error}; {count} calls' notes kept",
                     path=self.notes_file, error=str(e), count=len(self.pending),
                     log_category="CALL_NOTES_NOT_WRITTEN")
            return
        self.pending.clear()


@implementer(IPlugin, IStreamPlugin)
class CallNotesPlugin:
    """The call_notes plugin."""

    # IStreamPlugin.name: what [gateway] chain lists, and the name of this plugin's TOML table.
    name = "call_notes"

    # IStreamPlugin.configure: called once, at start-up, with the [call_notes] table. Raise
    # ConfigError naming the key for anything wrong; the gateway rejects keys nobody asked for
    # once this returns.
    def configure(self, section: Section, gateway: GatewayConfig) -> CallNotesFactory:
        notes_file = section.str("notes_file")
        directory = os.path.dirname(os.path.abspath(notes_file))
        if not os.path.isdir(directory):
            raise ConfigError(section.key("notes_file"), f"directory {directory!r} does not exist")
        return CallNotesFactory(notes_file, section.float("flush_interval_s", 30.0, minimum=1.0))


# The module-level object the gateway finds (a class that merely implements the interfaces is not).
call_notes = CallNotesPlugin()
