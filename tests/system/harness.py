"""
Running the real stack on loopback for whole-gateway tests: the emulator, the gateway (in this
process or as a real ``twistd`` child), and simulated calls.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Any, Mapping

from twisted.internet import defer, protocol, reactor
from twisted.internet.error import ProcessDone, ProcessTerminated

from gateway.codecs.wav import WavAudio, read_wav

from gateway.service import GatewayService
from gateway.testing import TEST_API_KEY, configure
from tests.system.standin import StandIn

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(os.path.dirname(HERE), "data")
DROPINS = os.path.join(os.path.dirname(HERE), "dropins")


def clip(name: str) -> WavAudio:
    """A speech clip from tests/data."""
    return read_wav(os.path.join(DATA, name))


@defer.inlineCallbacks
def start_emulator(test: Any, **options: Any) -> Any:
    """An emulator on 127.0.0.1, fast-paced, stopped when ``test`` ends."""
    from gateway.emulator import Emulator

    options.setdefault("speed", 20.0)
    emulator = Emulator(reactor, api_key=TEST_API_KEY, **options)
    yield emulator.listen("tcp:0:interface=127.0.0.1")
    test.addCleanup(emulator.stop)
    return emulator


def emulator_env(emulator: Any) -> dict[str, str]:
    return {
        "DEEPGRAM_AGENT_URL": emulator.url("agent"),
        "DEEPGRAM_LISTEN_URL": emulator.url("listen"),
        "DEEPGRAM_FLUX_URL": emulator.url("flux"),
    }


@defer.inlineCallbacks
def start_gateway(test: Any, emulator: Any, config: Mapping[str, Any] | None = None,
                  env: Mapping[str, str] | None = None) -> Any:
    """A gateway in this process, on 127.0.0.1, pointed at ``emulator``; drained at the end."""
    configured = configure(config, {**emulator_env(emulator), **(env or {})})
    service = GatewayService(configured, "tcp:0:interface=127.0.0.1", reactor)
    yield service.startService()
    test.addCleanup(service.stopService)
    service.url = f"ws://127.0.0.1:{service.port.getHost().port}"
    return service


class _Collect(protocol.ProcessProtocol):
    def __init__(self, listening: defer.Deferred, ended: defer.Deferred) -> None:
        self.output = b""
        self.listening = listening
        self.ended = ended

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if not self.listening.called:
            match = re.search(rb"gateway listening on [0-9.]+:(\d+)", self.output)
            if match:
                self.listening.callback(int(match.group(1)))

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        code = reason.value.exitCode if isinstance(reason.value, (ProcessDone, ProcessTerminated)) else None
        if not self.listening.called:
            self.listening.errback(RuntimeError(f"twistd exited ({code}) before listening:\n"
                                                + self.output.decode(errors="replace")))
        self.ended.callback((code, getattr(reason.value, "signal", None)))


def twistd_argv(*args: str) -> list[str]:
    script = os.path.join(os.path.dirname(sys.executable), "twistd")
    return [script, "-n", "--pidfile=", "gateway", *args]


class TwistdGateway:
    """A real ``twistd gateway`` child process."""

    def __init__(self, args: list[str], env: Mapping[str, str]) -> None:
        self.listening: defer.Deferred = defer.Deferred()
        self.ended: defer.Deferred = defer.Deferred()
        self.proto = _Collect(self.listening, self.ended)
        full_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        full_env.update(env)
        argv = twistd_argv(*args)
        self.process = reactor.spawnProcess(self.proto, argv[0], argv, env=full_env, path=os.getcwd())
        self.url = ""

    @property
    def output(self) -> str:
        return self.proto.output.decode(errors="replace")

    def stop(self) -> defer.Deferred:
        if not self.ended.called:
            self.process.signalProcess("TERM")
        return self.ended


@defer.inlineCallbacks
def start_twistd(test: Any, emulator: Any, args: list[str] | None = None,
                 env: Mapping[str, str] | None = None) -> Any:
    """A real twistd gateway pointed at ``emulator``; SIGTERM at the end of ``test``."""
    gw = TwistdGateway(["--port", "tcp:0:interface=127.0.0.1", *(args or [])],
                       {"DEEPGRAM_API_KEY": TEST_API_KEY, **emulator_env(emulator), **(env or {})})
    test.addCleanup(gw.stop)
    port = yield gw.listening.addTimeout(60, reactor)
    gw.url = f"ws://127.0.0.1:{port}"
    return gw


def run_twistd_to_exit(args: list[str], env: Mapping[str, str], timeout_s: float = 60) -> subprocess.CompletedProcess:
    """Run twistd expecting it to exit by itself (start-up errors)."""
    full_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    full_env.update(env)
    return subprocess.run(twistd_argv(*args), env=full_env, capture_output=True, text=True, timeout=timeout_s)


@defer.inlineCallbacks
def wait_until(predicate: Any, timeout_s: float = 10.0, step_s: float = 0.02) -> Any:
    """Poll ``predicate`` on the reactor until it is true; fail after ``timeout_s``."""
    from twisted.internet import task

    deadline = reactor.seconds() + timeout_s
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"condition not reached within {timeout_s} s")
        yield task.deferLater(reactor, step_s, lambda: None)


def autobahn_timers_pending() -> bool:
    """Whether Autobahn's txaio batched timers still hold a delayed call on the reactor."""
    return any("_notify_bucket" in repr(call) for call in reactor.getDelayedCalls())


def settle_autobahn_timers(timeout_s: float = 5.0) -> Any:
    """
    Wait until Autobahn's leftover timers have fired. After it fails a connection (1007 for
    invalid UTF-8, for example) Autobahn 26 leaves its closing-handshake timer scheduled even
    though the connection is gone; it fires harmlessly, but trial would call the reactor dirty.
    """
    return wait_until(lambda: not autobahn_timers_pending(), timeout_s)


@defer.inlineCallbacks
def start_standin(test: Any) -> Any:
    """The minimal Deepgram stand-in (`tests.system.standin`) on 127.0.0.1, stopped when ``test`` ends."""
    standin = StandIn(reactor, TEST_API_KEY)
    yield standin.listen()
    test.addCleanup(standin.stop)
    return standin


def assert_delivered_in_order(test: Any, sent: bytes, sessions: list[bytes], overlap_limit: int) -> None:
    """
    Every byte of ``sent`` reached Deepgram, in order, across ``sessions`` (what each session
    received): each session's audio is one contiguous stretch of ``sent``, the first starts at
    the beginning, the last ends at the end, and each starts no later than where the one before
    ended (nothing lost) and at most ``overlap_limit`` bytes before it (the replay window: what
    may have been in flight to a dying session is sent again).
    """
    test.assertTrue(sessions, "no Deepgram session")
    end = 0
    for index, audio in enumerate(sessions):
        if index == 0:
            start = 0
        else:
            # The session's audio starts inside the replay window before the previous end.
            lo = max(0, end - overlap_limit)
            candidates = [s for s in range(lo, end + 1) if sent.startswith(audio[:64], s)]
            test.assertTrue(candidates, f"session {index + 1} does not continue session {index}")
            start = next((s for s in candidates if sent.startswith(audio, s)), candidates[0])
        test.assertEqual(sent[start:start + len(audio)], audio,
                         f"session {index + 1} is not one stretch of what the caller sent")
        end = start + len(audio)
    test.assertEqual(end, len(sent), "the caller's last bytes did not reach Deepgram")
