"""
``gateway doctor``: check a configuration against the real Deepgram (or the emulator) and say
in plain words what happened.

It validates the configuration and plugins as start-up does, checks the key over HTTP
(``GET <REST base>/v1/projects``: 200 valid, 401 not; the REST base is `key_check_base`: the
``DEEPGRAM_API_URL`` environment variable when set, else Deepgram's ``https://api.deepgram.com``
when the mode's configured WebSocket URL is on ``deepgram.com``, else that URL's own host with
``ws`` -> ``http``, so a gateway pointed at the emulator or a self-hosted Deepgram checks the key
there), then places one probe call through
the gateway's own machinery — the configured chain, the real Deepgram leg — sending the
configured ``Settings`` (or listen parameters) and a short silence, and prints either OK with the
``dg-request-id`` or the diagnosis: a bad key with ``dg-error``, Settings rejected with the
``Error`` and the field, a close with no status after Settings, a network failure. The last
line is ``result: OK`` only when nothing failed; the exit status is 0 only then.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

import attrs
from twisted.internet import defer, task

from gateway.call import Call
from gateway.codecs.signatures import compute_signature
from gateway.assembly import ConfiguredGateway
from gateway.events import Audio, DeepgramEvent, Handshake, StreamStarted, StreamStopped
from gateway.interfaces import LegState
from gateway.legs.deepgram import connect_deepgram
from gateway.service import UPSTREAM_OPTIONS
from gateway.upstream import UpstreamPort

__all__ = ["run_doctor", "key_check_base", "DEFAULT_API_URL", "KEY_OK", "KEY_REFUSED",
           "KEY_UNREACHABLE", "KEY_INCONCLUSIVE"]

DEFAULT_API_URL = "https://api.deepgram.com"

#: The key check's verdicts.
KEY_OK = "ok"
KEY_REFUSED = "refused"
KEY_UNREACHABLE = "unreachable"
KEY_INCONCLUSIVE = "inconclusive"


def key_check_base(upstream_url: str, environ: Mapping[str, str]) -> str:
    """
    The REST base URL of the key check, for a gateway whose mode connects to ``upstream_url``.

    ``DEEPGRAM_API_URL`` wins when set. Deepgram's own hosts (``*.deepgram.com``, where the
    WebSocket APIs live on ``agent.`` and ``api.``) answer ``/v1/projects`` on
    ``https://api.deepgram.com``; any other host (the emulator, a self-hosted Deepgram, a test
    double) is asked itself, over ``http`` for ``ws://`` and ``https`` for ``wss://``.
    """
    explicit = environ.get("DEEPGRAM_API_URL")
    if explicit:
        return explicit.rstrip("/")
    parts = urlsplit(upstream_url)
    host = (parts.hostname or "").lower()
    if host == "deepgram.com" or host.endswith(".deepgram.com"):
        return DEFAULT_API_URL
    scheme = "https" if parts.scheme == "wss" else "http"
    return f"{scheme}://{parts.netloc}"


@attrs.define
class _ProbeCaller:
    """The probe call's caller leg: it only watches."""

    configured: defer.Deferred = attrs.field(factory=defer.Deferred)
    events: list[str] = attrs.field(factory=list)
    closed_with: tuple[int, str] | None = None
    congested: bool = False
    state: int = LegState.OPEN  # CallerLeg.state is an int; LegState's values are ints

    def send_audio(self, payload: bytes) -> None:
        pass

    def send_clear(self) -> None:
        pass

    def send_mark(self, name: str) -> None:
        pass

    def send_event(self, event: DeepgramEvent) -> None:
        self.events.append(event.type)
        if event.type == "SettingsApplied" and not self.configured.called:
            self.configured.callback(True)

    def send_error(self, code: str, message: str) -> None:
        pass

    def close(self, code: int, reason: str) -> None:
        self.closed_with = (code, reason)
        self.state = LegState.CLOSED

    def abort(self) -> None:
        self.state = LegState.CLOSED


@defer.inlineCallbacks
def check_key(reactor: Any, api_url: str, api_key: str, say: Callable[[str], None]) -> Any:
    """
    Fire with `KEY_OK` when Deepgram accepts the key, `KEY_REFUSED` when it refuses it,
    `KEY_UNREACHABLE` when the REST URL could not be reached, `KEY_INCONCLUSIVE` for any other
    answer (a host without ``/v1/projects``, say).
    """
    import treq

    url = api_url.rstrip("/") + "/v1/projects"
    try:
        headers: dict[bytes | str, bytes | str] = {"Authorization": f"Token {api_key}"}
        response = yield treq.get(url, headers=headers, timeout=10, persistent=False, reactor=reactor)
        body = yield response.text()
    except Exception as e:  # noqa: BLE001 - any network failure is reported in plain words
        say(f"key check: FAILED: could not reach {url}: {type(e).__name__}: {e}"
            " (set DEEPGRAM_API_URL to Deepgram's REST base if it is elsewhere)")
        return KEY_UNREACHABLE
    request_id = response.headers.getRawHeaders(b"dg-request-id", [b"?"])[0].decode()
    if response.code == 200:
        say(f"key check: OK (GET {url} answered 200, dg-request-id {request_id})")
        return KEY_OK
    dg_error = response.headers.getRawHeaders(b"dg-error", [b""])[0].decode()
    detail = dg_error or body.strip()[:200]
    if response.code in (401, 403):
        say(f"key check: FAILED: Deepgram refused DEEPGRAM_API_KEY with HTTP {response.code}"
            f" ({detail}); dg-request-id {request_id}")
        return KEY_REFUSED
    say(f"key check: inconclusive: GET {url} answered HTTP {response.code} ({detail})")
    return KEY_INCONCLUSIVE


@defer.inlineCallbacks
def probe_session(reactor: Any, configured: ConfiguredGateway, say: Callable[[str], None],
                  silence_ms: int = 1000) -> Any:
    """Place one probe call; True when Deepgram configured a session."""
    config = attrs.evolve(configured.config, reconnect_attempts=0)
    configured = attrs.evolve(configured, config=config)
    options = dict(UPSTREAM_OPTIONS, openHandshakeTimeout=config.connect_timeout_s)

    def connector(url: str, headers: dict, port: UpstreamPort) -> defer.Deferred:
        say(f"session: connecting to {config.upstream_url} ({config.mode} mode)")
        return connect_deepgram(reactor, url, headers, port, options)

    call = Call(configured, "twilio", reactor, connector, call_id="doctor")
    headers: dict[str, str] = {}
    if config.twilio_auth_token and config.stream_url:
        headers["x-twilio-signature"] = compute_signature(config.twilio_auth_token, config.stream_url)
    caller = _ProbeCaller()
    call.caller_handshake(Handshake("twilio", "/twilio", headers, "doctor"))
    call.caller_opened(caller)
    call.from_caller(StreamStarted("MZdoctor", "CAdoctor"))
    frame = call.info.caller_format.silence(20)
    for _ in range(max(1, silence_ms // 20)):
        call.caller_audio(Audio(frame))
    configured_ok = False
    if config.mode == "agent":
        waiting = defer.DeferredList([caller.configured, call.when_closed()], fireOnOneCallback=True,
                                     consumeErrors=True)
        yield waiting.addTimeout(config.connect_timeout_s + 15, reactor)
        configured_ok = caller.configured.called
    else:
        for _ in range(int((config.connect_timeout_s + 5) / 0.05)):
            if call.phase in ("live", "ending", "closed"):
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        configured_ok = call.phase == "live"
        if configured_ok:
            yield task.deferLater(reactor, 0.5, lambda: None)
            configured_ok = call.phase == "live"
    if not call.is_closed:
        call.from_caller(StreamStopped())
        call.caller_closed(1000, None, True)
    yield call.when_closed().addTimeout(config.end_timeout_s + 5, reactor)
    d = call.diagnosis
    if configured_ok:
        say(f"session: OK: Deepgram configured a {config.mode} session "
            f"(dg-request-id {call.info.request_id})")
        return True
    assert d is not None
    say(f"session: FAILED: {d.code}: {d.describe()}")
    if d.dg_request_id or call.info.request_id:
        say(f"session: dg-request-id {d.dg_request_id or call.info.request_id}")
    return False


@defer.inlineCallbacks
def run_doctor(reactor: Any, configured: ConfiguredGateway, environ: Mapping[str, str] | None = None,
               say: Callable[[str], None] = print) -> Any:
    """
    The whole check; fires with the exit status: 0 when every check passed (an inconclusive key
    check is not a failure), else 1. The last line is ``result: OK`` or ``result: FAILED: ...``.
    """
    env = os.environ if environ is None else environ
    config = configured.config
    say(f"configuration: OK (mode {config.mode}, chain {' -> '.join(config.chain)})")
    for warning in config.warnings:
        say(f"configuration: warning: {warning}")
    key = yield check_key(reactor, key_check_base(config.upstream_url, env), config.api_key, say)
    if key == KEY_REFUSED:
        say("result: FAILED: fix DEEPGRAM_API_KEY")
        return 1
    ok = yield probe_session(reactor, configured, say)
    failed = [what for what, bad in (("the key check", key == KEY_UNREACHABLE),
                                     ("the probe session", not ok)) if bad]
    if failed:
        say(f"result: FAILED: {' and '.join(failed)} (see above)")
        return 1
    say("result: OK")
    return 0
