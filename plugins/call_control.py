"""
call_control: what a voice bot on the phone needs to *do* — marks, hanging up, transferring, DTMF.

- **Marks**: after each agent turn (``AgentAudioDone``) a Twilio ``mark`` is sent and its echo
  tracked, so the call knows when the caller has actually heard the agent. Twilio echoes every
  pending mark at once on ``clear``, so a mark echoed after a barge-in (``UserStartedSpeaking``)
  is recognised as cleared, not played.
- **end_call** (a client-side function, on by default): when the agent calls it, the stage waits
  until the agent's last audio has been played — its mark echoed — bounded by
  ``end_call_timeout_s``, then ends the stream (1000, ``AGENT_ENDED_CALL``), so that Twilio goes
  on with the next TwiML verb or hangs up. Nobody is cut off mid-goodbye.
- **transfer_call** (off unless ``transfer_to`` is set): redirects the live call with Twilio's
  REST API (``Calls`` update with ``<Dial>`` TwiML), credentials from ``TWILIO_ACCOUNT_SID`` and
  ``TWILIO_AUTH_TOKEN``, through treq.
- **DTMF**: each key press is injected as ``InjectUserMessage`` with ``dtmf_message`` (for
  example "The caller pressed 5."); a plugin placed before this one can take them instead.
- **Flux barge-in**: in Flux mode Deepgram sends no agent audio, but a plugin may play audio to
  the caller (its own TTS, a prompt); when Flux says the caller started a turn (``TurnInfo``
  ``StartOfTurn``) and audio went to the caller since the last turn started, Twilio gets
  ``clear`` so the caller is not talked over (a ``/client`` app gets the ``TurnInfo`` itself).
"""

from __future__ import annotations

import os
from typing import Any
from xml.sax.saxutils import escape

import attrs
from twisted.internet import defer
from twisted.plugin import IPlugin
from zope.interface import implementer

from gateway.config import GatewayConfig
from gateway.section import Section
from gateway.diagnostics import Diagnosis
from gateway.errors import ConfigError
from gateway.events import Clear, DeepgramEvent, Dtmf, MarkEchoed, SendMark, UpstreamMessage
from gateway.plugin import FunctionSpec
from gateway.plugin import IStreamPlugin, Routes, StageContext, cancel

__all__ = ["plugin", "CallControlStage", "CallControlOptions"]

END_CALL = FunctionSpec(
    "Hang up the phone call. Call it once you have said goodbye; the call ends when your last "
    "words have been played to the caller.",
    {"type": "object", "properties": {"reason": {"type": "string"}}, "additionalProperties": False},
)
TRANSFER_CALL = FunctionSpec(
    "Transfer the caller to a human agent. Tell the caller you are transferring them first.",
    {"type": "object", "properties": {"reason": {"type": "string"}}, "additionalProperties": False},
)


@attrs.frozen
class CallControlOptions:
    """The validated ``[call_control]`` section."""

    end_call: bool
    end_call_timeout_s: float
    end_call_grace_s: float
    transfer_to: str
    transfer_caller_id: str
    twilio_api_url: str
    account_sid: str
    auth_token: str | None = attrs.field(repr=False)
    dtmf_message: str
    mode: str


@attrs.define
class CallControlStage:
    """The per-call call_control stage."""

    ctx: StageContext
    options: CallControlOptions
    http: Any = None
    pending: dict[str, str] = attrs.field(factory=dict)
    played: list[str] = attrs.field(factory=list)
    cleared: list[str] = attrs.field(factory=list)
    _turns: int = 0
    _speaking: bool = False
    _ending: bool = False
    _awaiting_speech: bool = False
    _timers: list[Any] = attrs.field(factory=list)
    #: Audio frames sent to the caller when the last Flux turn started (see `_turn_started`).
    _frames_at_turn: int = 0

    def routes(self) -> Routes:
        inbound: dict[type, Any] = {MarkEchoed: self.on_mark}
        if self.options.dtmf_message and self.options.mode == "agent":
            inbound[Dtmf] = self.on_dtmf
        return Routes(inbound=inbound, outbound={DeepgramEvent: self.on_event})

    # --- marks ---

    def on_event(self, event: DeepgramEvent) -> Any:
        kind = event.type
        if kind == "AgentStartedSpeaking":
            self._speaking = True
            self._awaiting_speech = False
        elif kind == "AgentAudioDone":
            self._speaking = False
            self._turns += 1
            name = f"agent-turn-{self._turns}"
            self.pending[name] = "pending"
            self.ctx.emit_outbound(SendMark(name))
        elif kind == "UserStartedSpeaking":
            # The call clears Twilio's queue: every pending mark comes back at once, unplayed.
            self._speaking = False
            self._marks_cleared()
        elif kind == "TurnInfo" and event.message.get("event") == "StartOfTurn":
            self._turn_started()
        return event

    def _marks_cleared(self) -> None:
        for name in self.pending:
            self.pending[name] = "cleared"

    def _turn_started(self) -> None:
        """Flux barge-in: clear what a plugin was playing to the caller when the caller speaks."""
        sent = self.ctx.call.frames_to_caller
        if sent != self._frames_at_turn:
            self._marks_cleared()
            self.ctx.count("barge_ins", mode="flux")
            self.ctx.emit_outbound(Clear())
        self._frames_at_turn = sent

    def on_mark(self, event: MarkEchoed) -> Any:
        state = self.pending.pop(event.name, None)
        if state is None:
            return event
        if state == "cleared":
            self.cleared.append(event.name)
            self.ctx.count("marks", outcome="cleared")
        else:
            self.played.append(event.name)
            self.ctx.count("marks", outcome="played")
        self._maybe_end()
        return None

    # --- functions ---

    def call_function(self, name: str, arguments: dict) -> Any:
        if name == "end_call":
            return self._end_call(arguments)
        if name == "transfer_call":
            return self._transfer(arguments)
        raise KeyError(name)

    def _end_call(self, arguments: dict) -> str:
        if not self._ending:
            self._ending = True
            self._awaiting_speech = not self._speaking
            self.ctx.log.info("the agent ended the call ({reason}); waiting for its last words to play",
                              reason=arguments.get("reason", "no reason given"))
            clock = self.ctx.clock
            self._timers.append(clock.callLater(self.options.end_call_grace_s, self._grace_over))
            self._timers.append(clock.callLater(self.options.end_call_timeout_s, self._end_now, "timeout"))
        return "The call will end once your last words have been played. Say goodbye now if you have not."

    def _grace_over(self) -> None:
        self._awaiting_speech = False
        self._maybe_end()

    def _maybe_end(self) -> None:
        if self._ending and not self._awaiting_speech and not self._speaking and not self.pending:
            self._end_now("played")

    def _end_now(self, why: str) -> None:
        if not self._ending:
            return
        self._ending = False
        self.close()
        if why == "timeout":
            self.ctx.log.warn("ending the call: the agent's last audio was not confirmed played in time",
                              log_category="END_CALL_AUDIO_UNCONFIRMED")
        self.ctx.end_call(Diagnosis("AGENT_ENDED_CALL", leg="gateway", phase=self.ctx.call.phase))

    @defer.inlineCallbacks
    def _transfer(self, arguments: dict) -> Any:
        call = self.ctx.call
        options = self.options
        if not call.call_sid:
            return "Error: this call has no Twilio call SID; it cannot be transferred."
        account = options.account_sid or call.account_sid
        url = f"{options.twilio_api_url.rstrip('/')}/2010-04-01/Accounts/{account}/Calls/{call.call_sid}.json"
        caller_id = f' callerId="{escape(options.transfer_caller_id)}"' if options.transfer_caller_id else ""
        twiml = f"<Response><Dial{caller_id}>{escape(options.transfer_to)}</Dial></Response>"
        http = self.http
        if http is None:
            import treq as http
        response = yield http.post(url, data={"Twiml": twiml}, auth=(account, options.auth_token or ""),
                                   timeout=8, persistent=False)
        body = yield response.text()
        if not 200 <= response.code < 300:
            self.ctx.log.error("transfer_call: Twilio answered {status}: {body}", status=response.code,
                               body=body[:300], log_category="TRANSFER_FAILED")
            return f"Error: the transfer failed (Twilio answered {response.code}). Apologise to the caller."
        self.ctx.count("transfers")
        self.ctx.log.info("transfer_call: the call was redirected to {destination}",
                          destination=options.transfer_to)
        return "The caller is being transferred now."

    # --- DTMF ---

    def on_dtmf(self, event: Dtmf) -> Any:
        self.ctx.count("dtmf")
        self.ctx.emit_inbound(
            UpstreamMessage({"type": "InjectUserMessage",
                             "content": self.options.dtmf_message.format(digit=event.digit)})
        )
        return None

    def close(self) -> None:
        for timer in self._timers:
            cancel(timer)
        self._timers.clear()


def _functions(options: CallControlOptions) -> dict[str, FunctionSpec]:
    functions = {}
    if options.mode == "agent":
        if options.end_call:
            functions["end_call"] = END_CALL
        if options.transfer_to:
            functions["transfer_call"] = TRANSFER_CALL
    return functions


@attrs.frozen
class CallControlFactory:
    """Makes call_control stages and declares their functions."""

    options: CallControlOptions

    @property
    def functions(self) -> dict[str, FunctionSpec]:
        return _functions(self.options)

    def __call__(self, ctx: StageContext) -> CallControlStage:
        return CallControlStage(ctx, self.options)


@implementer(IPlugin, IStreamPlugin)
@attrs.frozen
class CallControlPlugin:
    """The call_control plugin."""

    name: str = "call_control"

    def configure(self, section: Section, gateway: GatewayConfig) -> Any:
        env = os.environ
        transfer_to = section.str("transfer_to", "")
        options = CallControlOptions(
            end_call=section.bool("end_call", True),
            end_call_timeout_s=section.float("end_call_timeout_s", 15.0, minimum=0.5),
            end_call_grace_s=section.float("end_call_grace_s", 3.0, minimum=0.0),
            transfer_to=transfer_to,
            transfer_caller_id=section.str("transfer_caller_id", ""),
            twilio_api_url=env.get("TWILIO_API_URL") or "https://api.twilio.com",
            account_sid=env.get("TWILIO_ACCOUNT_SID", ""),
            auth_token=gateway.twilio_auth_token,
            dtmf_message=section.str("dtmf_message", "The caller pressed {digit}."),
            mode=gateway.mode,
        )
        if transfer_to and not gateway.twilio_auth_token:
            raise ConfigError(section.key("transfer_to"),
                              "transfer_call needs TWILIO_AUTH_TOKEN (and TWILIO_ACCOUNT_SID) in the environment")
        try:
            options.dtmf_message.format(digit="5")
        except (KeyError, IndexError, ValueError) as e:
            raise ConfigError(section.key("dtmf_message"), f"may only use {{digit}}: {e}")
        return CallControlFactory(options)


plugin = CallControlPlugin()
