"""
handover: a draining process hands each live Twilio call to a healthy one (issue 17).

Twilio's ``<Connect action="URL">`` makes it possible: when the gateway closes a
``<Connect><Stream>`` WebSocket, Twilio requests the action URL and runs the TwiML it answers. The
gateway's voice webhook puts ``action`` on every ``<Connect>`` it answers, with a
``gateway_handover`` ``<Parameter>`` that marks the stream as one Twilio will come back for.

**Giving a call away** (this stage, on the draining process, on `HandoverRequested`): wait for the
call's next quiet point (the agent is not speaking: its turn is over and its audio has played, per
the Twilio marks that call_control sends; the caller is not mid-utterance, per Deepgram's
``UserStartedSpeaking``), or ``quiet_deadline_s`` at most; save the call's resumable state (the
conversation, its ``customParameters``, each stage's state, the report so far) in the handover
store under its ``CallSid``; then end the call with ``HANDED_OVER``: a normal close (1000) to
Twilio and to Deepgram. If the store fails, the call stays (the plain drain applies) and one line
says so (``HANDOVER_FAILED``).

**Taking a call up**: Twilio's action request lands on any healthy process (through the proxy),
which answers a new ``<Connect><Stream>`` carrying a signed, short-lived resume token
(``gateway_resume``, `gateway.twiml`). When that stream starts here, this stage verifies the
token, *takes* the record from the store (read and deleted at once: a call is taken up once), and
restores the call before the settings stage sees it: the same call id, the same per-call
parameters, the conversation (the settings stage sends it as ``agent.context.messages``, with no
second greeting), one call report for the whole call. A missing or expired record makes it a
fresh call, with a clear log line; never a crash.

**Raw-audio clients** (``/client``) take part when their hello said ``"handover": true`` (the
auth stage turns it into the ``gateway_handover`` parameter): a client that never heard of the
``Handover`` message drains as before. Their quiet point has no marks to wait for: the agent's
turn must be over and its audio played, which is reckoned from the bytes sent during the turn at
the client's 16 kHz playback rate. The record is saved under a random handover id (there is no
``CallSid``), and the client is sent the ``Handover`` message (`gateway.codecs.client
.handover_message`: the public ``/client`` URL and a resume token naming that id) just before the
close with 1000 ``HANDED_OVER``. Its next hello carries the resume token; the auth stage accepts
it in place of a client token and this stage takes the record up as for Twilio. A resume token
whose record is gone (already taken: a replay) is refused with 4003 ``AUTH_FAILED``.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import attrs
from twisted.plugin import IPlugin
from zope.interface import implementer

from gateway.codecs.client import handover_message
from gateway.config import GatewayConfig
from gateway.section import Section
from gateway.diagnostics import Diagnosis
from gateway.errors import AuthError, ConfigError
from gateway.events import (
    CallerError,
    CallerHandover,
    DeepgramEvent,
    HandoverRequested,
    MarkEchoed,
    SendMark,
    StreamStarted,
)
from gateway.handover import HANDOVER_PARAMETER, RESUME_PARAMETER
from gateway.handover.store import DEFAULT_STORE, HandoverStore, open_store
from gateway.plugin import IStreamPlugin, Routes, StageContext, cancel
from gateway.tokens import (
    mint_client_resume_token,
    new_handover_id,
    verify_client_resume_token,
    verify_resume_token,
)

__all__ = ["plugin", "HandoverOptions", "HandoverStage", "HANDOVER_PARAMETER", "RESUME_PARAMETER"]

#: How often the quiet point is looked for while a handover waits.
_POLL_S = 0.05

#: A /client caller plays the agent's audio at this rate (PCM s16le, 16 kHz, mono).
_CLIENT_BYTES_PER_S = 32000

#: Where a /client call's handover record is kept: a prefix and its handover id (never a CallSid).
_CLIENT_KEY = "client:"


def client_url(public_url: str | None) -> str | None:
    """The public ``wss://`` URL of ``/client`` (None without a public URL)."""
    if not public_url:
        return None
    base = public_url.rstrip("/")
    for plain, secure in (("https://", "wss://"), ("http://", "ws://")):
        if base.startswith(plain):
            base = secure + base[len(plain):]
    return base + "/client"


@attrs.frozen
class HandoverOptions:
    """``[handover]``."""

    enabled: bool = True
    store: str = DEFAULT_STORE
    store_timeout_s: float = 2.0
    record_ttl_s: float = 120.0
    quiet_deadline_s: float = 10.0
    resume_ttl_s: float = 60.0


@attrs.define
class HandoverStage:
    """The per-call handover stage."""

    ctx: StageContext
    options: HandoverOptions
    factory: HandoverFactory
    _handover_capable: bool = False
    _caller_speaking: bool = False

    @property
    def can_hand_over(self) -> bool:
        """Whether this call's caller will come back (Twilio's <Connect action>, or a /client
        whose hello said "handover": true)."""
        return self._handover_capable
    _agent_turn: bool = False
    _marks: set = attrs.field(factory=set)
    _poll: Any = None
    _deadline: Any = None
    _saving: bool = False
    _resumed_at: float | None = None
    _frames_seen: int = -1
    # /client: the agent's turn as the client hears it (when it began, the bytes sent by then,
    # and when the audio sent in it will have played).
    _turn_started_at: float = 0.0
    _turn_bytes_from: int = 0
    _played_by: float = 0.0

    def routes(self) -> Routes:
        return Routes(
            inbound={StreamStarted: self.on_start, HandoverRequested: self.on_request,
                     MarkEchoed: self.on_mark_echoed},
            outbound={DeepgramEvent: self.on_event, SendMark: self.on_mark_sent},
        )

    # --- taking a call up ------------------------------------------------------------------------

    @property
    def _client(self) -> bool:
        return self.ctx.call.leg == "client"

    def on_start(self, event: StreamStarted) -> Any:
        params = dict(event.custom_parameters)
        self._handover_capable = params.get(HANDOVER_PARAMETER) == "1"
        token = params.pop(RESUME_PARAMETER, None)
        if self._client:
            # (A Twilio stream's parameters are the call's from its start; a client's from here.)
            self.ctx.call.custom_parameters = dict(params)
        if token is None:
            return event
        fresh = attrs.evolve(event, custom_parameters=params)
        self.ctx.call.custom_parameters = dict(params)  # the token is not the call's parameter
        if not self.options.enabled:
            return fresh
        now = self.ctx.clock.seconds()
        try:
            if self._client:
                key = _CLIENT_KEY + verify_client_resume_token(self.factory.secret, token, now)["hid"]
            else:
                if event.call_sid.startswith(_CLIENT_KEY):
                    # Never a CallSid: a /client call's record is taken only with its own token.
                    raise AuthError("AUTH_FAILED", "not a Twilio CallSid")
                verify_resume_token(self.factory.secret, token, now, event.call_sid)
                key = event.call_sid
        except AuthError as e:
            self.ctx.log.warn("HANDOVER_RESUME_REFUSED: resume token refused ({why}); a fresh call",
                              why=e.message, log_category="HANDOVER_RESUME_REFUSED")
            self.ctx.count("handovers_in", result="refused")
            return fresh
        d = self.factory.get_store().take(key)
        d.addCallbacks(self._resume, self._store_failed, callbackArgs=(fresh,), errbackArgs=(fresh,))
        return None  # the start goes on once the record is read (the call holds the audio)

    def _resume(self, record: dict[str, Any] | None, fresh: StreamStarted) -> None:
        if record is None and self._client:
            # The client's resume token was good, so its record was taken already: a replay.
            self.ctx.log.warn("HANDOVER_RECORD_MISSING: no handover record for this /client resume "
                              "token (already taken, or expired); refused",
                              log_category="HANDOVER_RECORD_MISSING")
            self.ctx.count("handovers_in", result="missing")
            self.ctx.count("auth_failures", reason="auth_failed")
            self.ctx.emit_outbound(CallerError("AUTH_FAILED", "the resume token was already used"))
            self.ctx.end_call(Diagnosis("AUTH_FAILED", leg="caller", phase=self.ctx.call.phase))
            return
        if record is None:
            self.ctx.log.warn("HANDOVER_RECORD_MISSING: no handover record for CallSid {call_sid} "
                              "(expired or already taken); a fresh call",
                              call_sid=fresh.call_sid, log_category="HANDOVER_RECORD_MISSING")
            self.ctx.count("handovers_in", result="missing")
            self.ctx.emit_inbound(fresh)
            return
        self.ctx.restore(record)
        self._resumed_at = self.ctx.clock.seconds()
        self.ctx.count("handovers_in", result="resumed")
        self.ctx.log.info(
            "HANDOVER_RESUMED: call {call_id} taken up from {origin} (handover {number}); "
            "{gap_ms:.0f} ms since it was handed over",
            call_id=record.get("call_id"), origin=record.get("origin"), number=record.get("handovers"),
            gap_ms=max(0.0, time.time() - float(record.get("handed_over_at", time.time()))) * 1000,
            code="HANDOVER_RESUMED")
        params = dict(record.get("custom_parameters") or fresh.custom_parameters)
        params.pop(RESUME_PARAMETER, None)
        self._handover_capable = params.get(HANDOVER_PARAMETER) == "1"
        self.ctx.call.custom_parameters = dict(params)
        if self._client:
            # A raw-audio call's stream id is its call id, which the record brought back.
            fresh = attrs.evolve(fresh, stream_sid=self.ctx.call.call_id)
            self.ctx.call.stream_sid = self.ctx.call.call_id
        self.ctx.emit_inbound(attrs.evolve(fresh, custom_parameters=params))

    def _store_failed(self, failure: Any, fresh: StreamStarted) -> None:
        self.ctx.log.error("HANDOVER_STORE_DOWN: handover store failed ({why}); a fresh call",
                           why=failure.getErrorMessage(), log_category="HANDOVER_STORE_DOWN")
        self.ctx.count("handovers_in", result="store_down")
        self.ctx.emit_inbound(fresh)

    # --- giving a call away ----------------------------------------------------------------------

    def on_request(self, event: HandoverRequested) -> Any:
        call = self.ctx.call
        if not self.options.enabled or self._poll is not None or self._saving:
            return None
        if self._client and not self._handover_capable:
            self.ctx.log.info("call not handed over: the /client caller did not say it follows a "
                              "Handover message (\"handover\": true in its hello); the plain "
                              "drain applies")
            return None
        if not self._client and (call.leg != "twilio" or not self._handover_capable or not call.call_sid):
            self.ctx.log.info("call not handed over: its stream was not started by this gateway's "
                              "voice webhook (no <Connect action>); the plain drain applies")
            return None
        if event.reason == "operator":
            wait = event.deadline_s
        else:
            # Saved before the drain's own deadline, with the store's time to spare: a handover
            # never races the drain's 1001 for the same call.
            wait = max(0.0, min(self.options.quiet_deadline_s,
                                event.deadline_s - self.options.store_timeout_s - 0.5))
        self.ctx.log.info("handover requested ({reason}): waiting for a quiet point, at most {wait_s:.1f} s",
                          reason=event.reason, wait_s=wait)
        self._frames_seen = -1
        self._poll = self.ctx.clock.callLater(0, self._check)
        self._deadline = self.ctx.clock.callLater(wait,
                                                  self._save, "deadline")
        return None

    def _quiet(self) -> bool:
        # Agent audio still being sent (the counter moved since the last look) is not quiet; what
        # was sent before plays out at Twilio until its mark is echoed.
        frames, self._frames_seen = self._frames_seen, self.ctx.call.frames_to_caller
        playing = frames != self._frames_seen
        if self._client:
            # No marks on /client: the audio of the last turn plays out at the client's rate.
            playing = playing or self.ctx.clock.seconds() < self._played_by
        return not (self._caller_speaking or self._agent_turn or self._marks or playing)

    def _check(self) -> None:
        self._poll = None
        if self._quiet():
            self._save("quiet point")
        else:
            self._poll = self.ctx.clock.callLater(_POLL_S, self._check)

    def _save(self, why: str) -> None:
        cancel(self._poll)
        cancel(self._deadline)
        self._poll = self._deadline = None
        if self._saving:
            return
        self._saving = True
        record = self.ctx.snapshot()
        record.update(origin=self.factory.origin, handed_over_at=time.time(),
                      handovers=int(record.get("handovers", 0)) + 1, at=why)
        handover_id = new_handover_id() if self._client else ""
        key = _CLIENT_KEY + handover_id if self._client else self.ctx.call.call_sid
        d = self.factory.get_store().put(key, record, self.options.record_ttl_s)

        def saved(_: Any) -> None:
            self.ctx.count("handovers_out", result="saved")
            if self._client:
                ttl = self.options.resume_ttl_s
                token = mint_client_resume_token(self.factory.secret, self.ctx.clock.seconds(),
                                                 handover_id, ttl)
                self.ctx.emit_outbound(CallerHandover(handover_message(
                    self.factory.client_url, token, int(ttl))))
                self.ctx.log.info("HANDED_OVER: call state saved at its {why}; the /client caller "
                                  "was told where to reconnect", why=why, code="HANDED_OVER")
            else:
                self.ctx.log.info("HANDED_OVER: call state saved at its {why}; closing the stream "
                                  "for Twilio's <Connect action>", why=why, code="HANDED_OVER")
            self.ctx.end_call(Diagnosis("HANDED_OVER", leg="gateway", phase=self.ctx.call.phase))

        def failed(failure: Any) -> None:
            self.ctx.count("handovers_out", result="store_down")
            self.ctx.log.error("HANDOVER_FAILED: the handover store failed ({why}); the call stays "
                               "here and the plain drain applies", why=failure.getErrorMessage(),
                               log_category="HANDOVER_FAILED")

        d.addCallbacks(saved, failed)

    # --- what a quiet point is made of -----------------------------------------------------------

    def on_event(self, event: DeepgramEvent) -> Any:
        kind = event.type
        if kind == "UserStartedSpeaking":
            self._caller_speaking = True
        elif kind in ("AgentThinking", "AgentStartedSpeaking") or (
            kind == "ConversationText" and event.message.get("role") == "user"
        ):
            self._caller_speaking = False
            # The caller's turn is over: the agent's answer is pending from now until its audio
            # is done (handing over in between would leave the question unanswered: the next
            # session starts from a history that ends with it). quiet_deadline_s bounds an
            # answer that never comes.
            self._agent_turn = True
            if kind == "AgentStartedSpeaking":
                self._turn_started_at = self.ctx.clock.seconds()
                self._turn_bytes_from = self.ctx.call.bytes_to_caller
        elif kind == "AgentAudioDone":
            self._agent_turn = False
            if self._client:
                sent = self.ctx.call.bytes_to_caller - self._turn_bytes_from
                self._played_by = self._turn_started_at + sent / _CLIENT_BYTES_PER_S
        return event

    def on_mark_sent(self, event: SendMark) -> Any:
        if not self._client:  # a /client leg sends no marks, so none would come back
            self._marks.add(event.name)
        return event

    def on_mark_echoed(self, event: MarkEchoed) -> Any:
        self._marks.discard(event.name)
        return event

    def close(self) -> None:
        cancel(self._poll)
        cancel(self._deadline)
        self._poll = self._deadline = None


@attrs.define
class HandoverFactory:
    """Makes handover stages and holds the process's store (opened on first use)."""

    options: HandoverOptions
    secret: bytes
    #: Where a /client caller reconnects (``wss://PUBLIC/client``; None: where it is connected).
    client_url: str | None = None
    origin: str = attrs.field(factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    _store: HandoverStore | None = None

    def get_store(self) -> HandoverStore:
        if self._store is None:
            from twisted.internet import reactor

            self._store = open_store(self.options.store, reactor, self.options.store_timeout_s)
        return self._store

    def close_store(self) -> None:
        """Close the store if it was opened (its threads stop; the next use opens it again)."""
        store, self._store = self._store, None
        if store is not None:
            store.close()

    def stop_service(self) -> None:
        """The service stops (after its drain): the store's threads go with it."""
        self.close_store()

    def __call__(self, ctx: StageContext) -> HandoverStage:
        return HandoverStage(ctx, self.options, self)


@implementer(IPlugin, IStreamPlugin)
@attrs.frozen
class HandoverPlugin:
    """The handover plugin."""

    name: str = "handover"

    def configure(self, section: Section, gateway: GatewayConfig) -> Any:
        store = section.str("store", DEFAULT_STORE)
        if not store.startswith(("sqlite:", "redis://", "rediss://", "unix://")) or store == "sqlite:":
            raise ConfigError(section.key("store"), "expected sqlite:PATH or redis://HOST:PORT/DB")
        options = HandoverOptions(
            enabled=section.bool("enabled", True),
            store=store,
            store_timeout_s=section.float("store_timeout_s", 2.0, minimum=0.1),
            record_ttl_s=section.float("record_ttl_s", 120.0, minimum=5),
            quiet_deadline_s=section.float("quiet_deadline_s", 10.0, minimum=0),
            resume_ttl_s=section.float("resume_ttl_s", 60.0, minimum=5),
        )
        return HandoverFactory(options, gateway.token_secret, client_url(gateway.public_url))


plugin = HandoverPlugin()
