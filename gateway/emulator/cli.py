"""
``gateway-emulator``: run the Deepgram emulator until SIGTERM or SIGINT.

Prints exactly one line on stdout when listening, ``emulator listening on ws://HOST:PORT``, for
scripts to wait on; logs go to stderr. The key is never printed.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Any

from gateway.emulator.faults import FaultSpecError, parse_fault

__all__ = ["main", "build_parser"]


def _fault(text: str) -> str:
    try:
        parse_fault(text)
    except FaultSpecError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _speed(text: str) -> float:
    value = math.inf if text in ("inf", "max") else float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"--speed must be > 0 (or 'inf'), got {text!r}")
    return value


def _milliseconds(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a number of milliseconds >= 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    p = argparse.ArgumentParser(prog="gateway-emulator", description="A local Deepgram emulator.")
    p.add_argument("--port", default="tcp:8081:interface=127.0.0.1",
                   help="server endpoint (default: tcp:8081:interface=127.0.0.1)")
    p.add_argument("--key", default=None,
                   help="the API key to accept (default: $DEEPGRAM_API_KEY, else 'emulator-key')")
    p.add_argument("--fault", type=_fault, default=None, help="default fault spec for every session")
    p.add_argument("--speed", type=_speed, default=1.0, help="agent audio pacing factor ('inf': no pacing)")
    p.add_argument("--chunk-ms", type=int, default=60, help="agent audio chunk length")
    p.add_argument("--net0001-timeout-s", type=float, default=10.0, help="/v1/listen silence timeout")
    p.add_argument("--keepalive-counts", action="store_true",
                   help="KeepAlive resets the NET-0001 timer (Deepgram's documented reading)")
    p.add_argument("--client-message-timeout-s", type=float, default=30.0,
                   help="Voice Agent CLIENT_MESSAGE_TIMEOUT window")
    p.add_argument("--no-welcome", action="store_true", help="do not send Welcome on the agent")
    p.add_argument("--script", action="append", default=None,
                   help="a line the caller is heard saying (repeatable; cycles)")
    p.add_argument("--latency-ms", type=_milliseconds, default=0.0,
                   help="one-way network delay in front of the emulator, each direction (default: 0)")
    p.add_argument("--jitter-ms", type=_milliseconds, default=0.0,
                   help="jitter added to --latency-ms, uniform in +-this; bytes never reordered")
    p.add_argument("--verbose", "-v", action="store_true", help="log to stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the emulator; return the exit status."""
    args = build_parser().parse_args(argv)
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from gateway.emulator.server import Emulator

    if args.verbose:
        globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    key = args.key or os.environ.get("DEEPGRAM_API_KEY") or "emulator-key"
    options: dict[str, Any] = dict(
        speed=args.speed, chunk_ms=args.chunk_ms, net0001_timeout_s=args.net0001_timeout_s,
        keepalive_counts=args.keepalive_counts, client_message_timeout_s=args.client_message_timeout_s,
        send_welcome=not args.no_welcome, fault=args.fault,
    )
    if args.script:
        options["script"] = tuple(args.script)
    emulator = Emulator(reactor, api_key=key, latency_ms=args.latency_ms, jitter_ms=args.jitter_ms,
                        **options)
    status = [0]

    def listening(port: Any) -> None:
        print(f"emulator listening on {emulator.url('agent').rsplit('/v1', 1)[0]}", flush=True)

    def failed(failure: Any) -> None:
        print(f"gateway-emulator: cannot listen on {args.port}: {failure.getErrorMessage()}",
              file=sys.stderr, flush=True)
        status[0] = 1
        reactor.stop()

    def start() -> None:
        emulator.listen(args.port).addCallbacks(listening, failed)

    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger("before", "shutdown", lambda: emulator.stop() if emulator.port else None)
    reactor.run()  # installs SIGINT/SIGTERM handlers that stop the reactor
    return status[0]


if __name__ == "__main__":
    raise SystemExit(main())
