"""
The Deepgram emulator on its own: handshake, keys, /v1/projects, the fault spec parser, the CLI.

Clients are not the gateway: the ``websockets`` sync client in a thread (its asyncio client hangs
under Twisted's reactor) and treq with a non-persistent pool. Everything is on 127.0.0.1.
Also home of the helpers the other ``test_emulator_*`` modules share.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any, Callable

import attrs
import treq
from twisted.internet import defer, reactor, threads
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from gateway.emulator import Emulator, FaultSpecError, parse_fault
from gateway.emulator.faults import REASONS, Trigger

KEY = "emulator-test-key"
AUTH = {"Authorization": f"Token {KEY}"}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data")

SETTINGS: dict[str, Any] = {
    "type": "Settings",
    "audio": {"input": {"encoding": "mulaw", "sample_rate": 8000},
              "output": {"encoding": "mulaw", "sample_rate": 8000, "container": "none"}},
    "agent": {
        "listen": {"provider": {"type": "deepgram", "model": "nova-3"}},
        "think": {"provider": {"type": "open_ai", "model": "gpt-4o-mini"}, "prompt": "Be brief."},
        "speak": {"provider": {"type": "deepgram", "model": "aura-2-thalia-en"}},
    },
}


def settings(greeting: str | None = None, **audio: Any) -> dict[str, Any]:
    """A valid Settings; ``greeting`` and audio sides (``input=``/``output=``) may be replaced."""
    result = json.loads(json.dumps(SETTINGS))
    if greeting is not None:
        result["agent"]["greeting"] = greeting
    result["audio"].update(audio)
    return result


@attrs.define
class Outcome:
    """What a client saw: every message (JSON dicts or bytes), the close, and any result."""

    messages: list[Any] = attrs.field(factory=list)
    close_code: int | None = None
    close_reason: str | None = None
    close_frame: bool = False
    subprotocol: str | None = None
    response_headers: dict[str, str] = attrs.field(factory=dict)
    value: Any = None

    @property
    def texts(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if isinstance(m, dict)]

    @property
    def types(self) -> list[str]:
        return [m["type"] for m in self.texts]

    @property
    def audio(self) -> bytes:
        return b"".join(m for m in self.messages if isinstance(m, bytes))


class Client:
    """A websockets sync connection with a recording of what it received."""

    def __init__(self, ws: ClientConnection, outcome: Outcome) -> None:
        self.ws = ws
        self.outcome = outcome

    def send_json(self, message: Any) -> None:
        self.ws.send(json.dumps(message) if not isinstance(message, str) else message)

    def send(self, data: bytes) -> None:
        self.ws.send(data)

    def recv(self, timeout: float = 5.0) -> Any:
        """The next message (a dict for JSON text); raises TimeoutError or ConnectionClosed."""
        raw = self.ws.recv(timeout=timeout)
        message = json.loads(raw) if isinstance(raw, str) else raw
        self.outcome.messages.append(message)
        return message

    def until(self, kind: str, timeout: float = 5.0) -> dict[str, Any]:
        """Read until a JSON message of type ``kind``; return it."""
        deadline = time.monotonic() + timeout
        while True:
            message = self.recv(max(0.01, deadline - time.monotonic()))
            if isinstance(message, dict) and message.get("type") == kind:
                return message

    def quiet(self, seconds: float) -> list[Any]:
        """Everything received within ``seconds`` (the connection may stay open)."""
        got = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                got.append(self.recv(left))
            except TimeoutError:
                break
        return got

    def drain(self, timeout: float = 5.0) -> None:
        """Read until the server closes; record the close."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                self.recv(max(0.01, deadline - time.monotonic()))
        except ConnectionClosed:
            pass


def _run(url: str, script: Callable[[Client], Any], headers: dict[str, str] | None,
         subprotocols: list[str] | None) -> Outcome:
    outcome = Outcome()
    with connect(url, additional_headers=headers, subprotocols=subprotocols, proxy=None,
                 compression=None, open_timeout=5, close_timeout=3, ping_interval=None) as ws:
        outcome.subprotocol = ws.subprotocol
        outcome.response_headers = {k.lower(): v for k, v in ws.response.headers.raw_items()}
        client = Client(ws, outcome)
        try:
            outcome.value = script(client)
        except ConnectionClosed:
            pass
        if ws.protocol.close_rcvd is None:
            try:
                client.drain(0.0 if ws.protocol.close_sent else 0.01)
            except TimeoutError:
                pass
    outcome.close_frame = ws.protocol.close_rcvd is not None
    if ws.protocol.close_rcvd is not None:
        outcome.close_code, outcome.close_reason = ws.protocol.close_rcvd.code, ws.protocol.close_rcvd.reason
    return outcome


def run_client(url: str, script: Callable[[Client], Any], headers: dict[str, str] | None = AUTH,
               subprotocols: list[str] | None = None, timeout: float = 15) -> defer.Deferred:
    """Run ``script(client)`` on a connection to ``url`` in a thread; fires with an `Outcome`."""
    d = threads.deferToThread(_run, url, script, headers, subprotocols)
    return d.addTimeout(timeout, reactor)


def refused(url: str, headers: dict[str, str] | None = AUTH) -> defer.Deferred:
    """Try an upgrade that should be refused; fires with (status, lower-case headers, JSON body)."""

    def attempt() -> tuple[int, dict[str, str], Any]:
        try:
            with connect(url, additional_headers=headers, proxy=None, open_timeout=5):
                pass
        except InvalidStatus as e:
            response = e.response
            headers_ = {k.lower(): v for k, v in response.headers.raw_items()}
            return response.status_code, headers_, json.loads(response.body or b"null")
        raise AssertionError("the upgrade was accepted")

    return threads.deferToThread(attempt).addTimeout(15, reactor)


def clip(name: str) -> bytes:
    """The raw audio of a tests/data clip."""
    from gateway.codecs.wav import read_wav

    return read_wav(os.path.join(DATA, name)).data


def frames(audio: bytes, size: int) -> list[bytes]:
    return [audio[i:i + size] for i in range(0, len(audio), size)]


class EmulatorTestCase(TestCase):
    """Starts an emulator with ``options`` before each test, stops it (and waits) after."""

    timeout = 30
    options: dict[str, Any] = {}

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        options = {"speed": 50.0, **self.options}
        self.emu = Emulator(reactor, api_key=KEY, **options)
        yield self.emu.listen("tcp:0:interface=127.0.0.1")
        self.addCleanup(self.emu.stop)

    def http(self) -> Any:
        pool = HTTPConnectionPool(reactor, persistent=False)
        return treq.client.HTTPClient(Agent(reactor, pool=pool))


class HandshakeTests(EmulatorTestCase):
    """Keys, refusals and request ids on the upgrade."""

    @defer.inlineCallbacks
    def test_wrong_key(self) -> None:
        """A wrong key gets 401 with dg-error, dg-request-id and a JSON body; no session."""
        status, headers, body = yield refused(self.emu.url("agent"), {"Authorization": "Token nope"})
        self.assertEqual(status, 401)
        self.assertEqual(headers["dg-error"], "Invalid credentials.")
        self.assertEqual(body["request_id"], headers["dg-request-id"])
        self.assertEqual(body["err_code"], "INVALID_AUTH")
        self.assertEqual((self.emu.upgrade_attempts, self.emu.sessions), (1, []))

    @defer.inlineCallbacks
    def test_missing_key(self) -> None:
        """No Authorization header and no subprotocol: 401 on both paths."""
        for kind in ("agent", "listen"):
            status, headers, _ = yield refused(self.emu.url(kind) + ("?encoding=mulaw&sample_rate=8000"
                                                                     if kind == "listen" else ""), None)
            self.assertEqual(status, 401)
            self.assertIn("dg-request-id", headers)
        self.assertEqual(self.emu.upgrade_attempts, 2)

    @defer.inlineCallbacks
    def test_token_header(self) -> None:
        """Authorization: Token KEY opens; the 101 carries the session's dg-request-id."""
        outcome = yield run_client(self.emu.url("agent"), lambda c: c.until("Welcome"))
        session = self.emu.sessions[0]
        self.assertEqual(outcome.response_headers["dg-request-id"], session.request_id)
        self.assertEqual(outcome.value["request_id"], session.request_id)
        self.assertEqual(session.headers["authorization"], f"Token {KEY}")
        self.assertNotIn(KEY, repr(session))
        yield session.closed

    @defer.inlineCallbacks
    def test_token_subprotocol(self) -> None:
        """The ["token", KEY] subprotocol form opens too, and the server selects "token"."""
        outcome = yield run_client(self.emu.url("agent"), lambda c: c.until("Welcome"),
                                   headers=None, subprotocols=["token", KEY])
        self.assertEqual(outcome.subprotocol, "token")
        yield self.emu.sessions[0].closed
        status, _, _ = yield refused(self.emu.url("agent"), {"Sec-WebSocket-Protocol": "token, wrong"})
        self.assertEqual(status, 401)

    @defer.inlineCallbacks
    def test_listen_query_validated(self) -> None:
        """A bad encoding, sample rate, boolean or language on /v1/listen is an HTTP 400 with dg-error."""
        for query, words in [("encoding=wav&sample_rate=8000", "encoding"),
                             ("encoding=linear16&sample_rate=abc", "sample_rate"),
                             ("encoding=linear16&sample_rate=1000", "sample_rate"),
                             ("encoding=linear16", "sample_rate is required"),
                             ("encoding=mulaw&sample_rate=8000&interim_results=yes", "interim_results"),
                             ("encoding=mulaw&sample_rate=8000&language=english", "language")]:
            status, headers, body = yield refused(self.emu.url("listen") + "?" + query)
            self.assertEqual(status, 400, query)
            self.assertIn(words, headers["dg-error"])
            self.assertEqual(body["err_msg"], headers["dg-error"])
        self.assertEqual(self.emu.sessions, [])

    @defer.inlineCallbacks
    def test_unknown_path(self) -> None:
        """Any other path is a JSON 404, still with dg-request-id."""
        response = yield self.http().get(self.emu.http_url + "/v3/listen")
        self.assertEqual(response.code, 404)
        self.assertTrue(response.headers.getRawHeaders(b"dg-request-id"))
        body = yield response.json()
        self.assertEqual(body["err_code"], "NOT_FOUND")

    def test_urls(self) -> None:
        """url() and http_url name the listening port on 127.0.0.1."""
        port = self.emu.port.getHost().port
        self.assertEqual(self.emu.url("agent"), f"ws://127.0.0.1:{port}/v1/agent/converse")
        self.assertEqual(self.emu.url("listen"), f"ws://127.0.0.1:{port}/v1/listen")
        self.assertEqual(self.emu.http_url, f"http://127.0.0.1:{port}")
        self.assertRaises(ValueError, self.emu.url, "speak")


class ProjectsTests(EmulatorTestCase):
    """GET /v1/projects, the key check of `gateway doctor`."""

    @defer.inlineCallbacks
    def test_right_key(self) -> None:
        """The right key: 200 and a JSON list of projects."""
        response = yield self.http().get(self.emu.http_url + "/v1/projects", headers=AUTH)
        self.assertEqual(response.code, 200)
        body = yield response.json()
        self.assertEqual([p["project_id"] for p in body["projects"]], ["emulator-project-0000"])
        self.assertTrue(response.headers.getRawHeaders(b"dg-request-id"))

    @defer.inlineCallbacks
    def test_wrong_key(self) -> None:
        """A wrong or missing key: 401 with a JSON error and dg-error."""
        for headers in ({"Authorization": "Token other"}, {}):
            response = yield self.http().get(self.emu.http_url + "/v1/projects", headers=headers)
            self.assertEqual(response.code, 401)
            body = yield response.json()
            self.assertEqual(body["err_code"], "INVALID_AUTH")
            self.assertEqual(response.headers.getRawHeaders(b"dg-error"), [b"Invalid credentials."])
        self.assertEqual(self.emu.upgrade_attempts, 0)


class StopTests(EmulatorTestCase):
    """stop() with sessions still open."""

    @defer.inlineCallbacks
    def test_stop_closes_sessions(self) -> None:
        """An open session gets a 1001 close and stop() fires once it is gone."""
        started = defer.Deferred()

        def script(client: Client) -> None:
            client.until("Welcome")
            reactor.callFromThread(started.callback, None)
            client.drain(10)

        outcome_d = run_client(self.emu.url("agent"), script)
        yield started
        yield self.emu.stop()
        outcome = yield outcome_d
        self.assertEqual((outcome.close_code, outcome.close_reason), (1001, "emulator stopping"))
        self.assertTrue(self.emu.sessions[0].closed.called)


class FaultSpecTests(SynchronousTestCase):
    """The fault spec parser."""

    def test_good_specs(self) -> None:
        """Each kind parses into its fields; triggers default to on_open."""
        (refuse,) = parse_fault("refuse:429")
        self.assertEqual((refuse.kind, refuse.status, refuse.reason), ("refuse", 429, None))
        (close,) = parse_fault("close:1011:NET-0000@after_ms=2000")
        self.assertEqual((close.code, close.reason, close.trigger),
                         (1011, REASONS["NET-0000"], Trigger("after_ms", 2000)))
        (close,) = parse_fault("close:4001:my reason: with colon")
        self.assertEqual(close.reason, "my reason: with colon")
        self.assertIsNone(parse_fault("close:none")[0].code)
        self.assertEqual(parse_fault("close")[0].code, 1000)
        (drop,) = parse_fault("drop@after_audio_bytes=3200")
        self.assertEqual(drop.trigger, Trigger("after_audio_bytes", 3200))
        self.assertEqual(parse_fault("stall@after_settings")[0].trigger, Trigger("after_settings"))
        self.assertEqual(parse_fault("slow:200")[0].delay_ms, 200)
        self.assertEqual(parse_fault("unknown-message")[0].message_type, "EmulatorUnknownMessage")
        self.assertEqual(parse_fault("unknown-message:Surprise")[0].message_type, "Surprise")
        self.assertEqual(parse_fault("error:SERVER_GOING_AWAY")[0].error_code, "SERVER_GOING_AWAY")
        self.assertEqual([f.kind for f in parse_fault("slow:50; close:1000@after_ms=10")], ["slow", "close"])

    def test_bad_specs(self) -> None:
        """A bad spec raises FaultSpecError saying what is wrong."""
        cases = {
            "": "empty fault",
            "explode": "unknown fault kind 'explode'",
            "refuse": "refuse needs an HTTP status",
            "refuse:200": "refuse status must be 400-599, got 200",
            "refuse:abc": "refuse status must be a non-negative integer, got 'abc'",
            "refuse:429@after_ms=5": "takes no '@' trigger",
            "close:1005": "not 1004/1005/1006/1015",
            "close:999": "close code must be 1000-4999",
            "close:none:why": "close:none cannot carry a reason",
            "close:4000:" + "x" * 130: "at most 123",
            "drop:now": "drop takes no arguments",
            "slow": "slow needs one argument",
            "slow:fast": "slow delay must be a non-negative integer",
            "stall@later": "unknown trigger 'later'",
            "stall@after_ms": "trigger 'after_ms' needs a value",
            "stall@after_settings=3": "takes no value",
            "error": "error needs an error code",
            "slow:10;;drop": "empty fault",
        }
        for spec, message in cases.items():
            with self.assertRaises(FaultSpecError, msg=spec) as caught:
                parse_fault(spec)
            self.assertIn(message, str(caught.exception), spec)
            self.assertEqual(caught.exception.spec, spec)

    def test_bad_default_and_queue(self) -> None:
        """A bad default fault fails the constructor; a bad queued one fails queue_fault."""
        self.assertRaises(FaultSpecError, Emulator, reactor, api_key=KEY, fault="nope")
        emu = Emulator(reactor, api_key=KEY)
        self.assertRaises(FaultSpecError, emu.queue_fault, "close:1006")
        self.assertRaises(TypeError, Emulator, reactor, api_key=KEY, no_such_option=1)
        self.assertRaises(ValueError, Emulator, reactor, api_key=KEY, speed=0)


class CommandLineTests(TestCase):
    """gateway-emulator as a process."""

    timeout = 30

    def test_listening_line_and_sigterm(self) -> None:
        """One stable line when listening, the key never printed, exit 0 on SIGTERM."""

        def run() -> tuple[str, str, int]:
            env = {k: v for k, v in os.environ.items() if k != "DEEPGRAM_API_KEY"}
            proc = subprocess.Popen(
                [sys.executable, "-c", "import sys; from gateway.emulator.cli import main; sys.exit(main())",
                 "--port", "tcp:0:interface=127.0.0.1", "--key", "secret-cli-key", "-v"],
                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                line = proc.stdout.readline()
                proc.send_signal(signal.SIGTERM)
                out, err = proc.communicate(timeout=15)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            return line + out, err, proc.returncode

        def check(result: tuple[str, str, int]) -> None:
            out, err, code = result
            self.assertRegex(out, r"^emulator listening on ws://127\.0\.0\.1:\d+\n$")
            self.assertEqual(code, 0)
            self.assertNotIn("secret-cli-key", out + err)

        return threads.deferToThread(run).addTimeout(25, reactor).addCallback(check)

    def test_bad_fault_flag(self) -> None:
        """A bad --fault is a usage error naming the problem."""
        from gateway.emulator.cli import build_parser

        with self.assertRaises(SystemExit):
            build_parser().parse_args(["--fault", "close:1006"])
