"""
``gateway-call``: place one simulated call against a running gateway and report.

Prints one line per event with a timestamp (barge-ins, agent speaking, marks; in client mode the
transcripts as ``caller:``/``agent:``: a Twilio Media Stream carries no text, so in Twilio mode
the conversation is only in the gateway's log) and a summary; ``--json`` prints the `CallResult`
as JSON instead. Exit status 0 only for a call that ended with a normal close (1000) and no
protocol violation; otherwise 1, with one line on stderr saying why; 2 for a usage error (a bad
argument, a URL that is not ``ws://``/``wss://``, an unreadable clip, a ``--save-audio`` path in
a folder that does not exist), reported in one line before anything is sent.

``--webhook https://PUBLIC`` runs a whole Twilio phone call instead of one stream
(`gateway.simulator.voice.TwilioVoiceCall`): the signed voice webhook, the ``<Connect><Stream>``
it answers, and, each time the gateway closes a stream whose ``<Connect>`` has an ``action``,
Twilio's signed request of that URL and the TwiML it answers (a new stream with a resume token
after a handover). Each stream's events are printed in the call's time, then the handovers' gaps.
``--via http://HOST:PORT`` sends the requests and streams there (the gateway or its proxy, where
the public name does not resolve) while signing the public URLs, as Twilio does. The exit status
is 0 when every stream but the last was handed over with 1000 and the last ended normally.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

from autobahn.websocket.util import parse_url
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import react
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)

from gateway.codecs.wav import WavAudio, read_wav, write_wav
from gateway.simulator.audio import default_clip_path
from gateway.simulator.client import ClientCall
from gateway.simulator.report import format_event, summary_lines, voice_summary_lines
from gateway.simulator.result import CallResult
from gateway.simulator.twilio import TwilioCall
from gateway.simulator.voice import TwilioVoiceCall, VoiceCallResult

__all__ = ["main", "build_parser"]

_DEFAULT_URLS = {"twilio": "ws://127.0.0.1:8080/twilio", "client": "ws://127.0.0.1:8080/client"}


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key, value


def _dtmf(text: str) -> tuple[float, str]:
    digit, sep, at = text.partition("@")
    try:
        at_s = float(at)
    except ValueError:
        at_s = -1.0
    if not sep or len(digit) != 1 or digit not in "0123456789*#ABCD" or at_s < 0:
        raise argparse.ArgumentTypeError(f"expected DIGIT@SECONDS such as 5@2.5, got {text!r}")
    return at_s, digit


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``gateway-call``."""
    p = argparse.ArgumentParser(
        prog="gateway-call",
        description="Play a WAV clip into the gateway as Twilio (or a raw-audio client) would, and report.",
    )
    p.add_argument("--url", help="WebSocket URL to connect to (default ws://127.0.0.1:8080/twilio or /client)")
    p.add_argument("--mode", choices=("twilio", "client"), default="twilio")
    p.add_argument("--webhook", metavar="https://PUBLIC",
                   help="run a whole Twilio call: the voice webhook at PUBLIC/twilio/voice, its stream, "
                        "and Twilio's <Connect action> requests (a handover's new stream); signed with "
                        "--auth-token over the public URLs")
    p.add_argument("--via", metavar="http://HOST:PORT",
                   help="with --webhook: send the requests and streams here (the gateway or its proxy) "
                        "instead of the public address; the public URLs in the TwiML are moved onto it")
    p.add_argument("--audio", metavar="PATH", help="WAV clip to play (default: the packaged caller clip)")
    p.add_argument("--token", help="client mode: the token sent first; twilio mode: customParameters.token")
    p.add_argument("--auth-token", default=os.environ.get("TWILIO_AUTH_TOKEN"),
                   help="sign the upgrade with X-Twilio-Signature (default: $TWILIO_AUTH_TOKEN)")
    p.add_argument("--signed-url", metavar="URL",
                   help="the public wss:// URL to sign (default: --url); differs behind a proxy")
    p.add_argument("--param", action="append", type=_key_value, default=[], metavar="KEY=VALUE",
                   help="a custom parameter (twilio: customParameters; client: parameters; with --webhook: "
                        "a field of the webhook's form, such as From=+15005550006); repeatable")
    p.add_argument("--dtmf", action="append", type=_dtmf, default=[], metavar="DIGIT@SECONDS",
                   help="send a DTMF digit at this stream time (twilio mode); repeatable")
    p.add_argument("--fast", action="store_true", help="send the clip as fast as possible, not in real time")
    p.add_argument("--wait-s", type=float, default=8.0,
                   help="seconds of silence after the clip while the agent answers (default 8)")
    p.add_argument("--until-close", action="store_true",
                   help="keep streaming silence until the gateway closes (ignores --wait-s)")
    p.add_argument("--after-greeting", action="store_true",
                   help="start the clip once the agent's greeting has played out (silence until then)")
    p.add_argument("--greeting-timeout-s", type=float, default=5.0,
                   help="with --after-greeting: start anyway when no agent audio came by then (default 5)")
    p.add_argument("--until-answered", action="store_true",
                   help="end the call once the agent's answer has played out (at most --wait-s)")
    p.add_argument("--no-stop", action="store_true", help="twilio mode: hang up without sending stop")
    p.add_argument("--save-audio", metavar="PATH", help="write the agent's audio to this WAV file")
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of lines")
    return p


def _load_audio(args: argparse.Namespace) -> WavAudio:
    return read_wav(args.audio or default_clip_path(args.mode))


def _http_problem(option: str, url: str) -> str | None:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("http", "https") or not rest.strip("/"):
        return f"{option}: expected an http:// or https:// URL, got {url!r}"
    return None


def usage_problem(args: argparse.Namespace) -> str | None:
    """What makes these arguments unusable before any connection, in one line (``None``: fine)."""
    if args.webhook is not None:
        if args.mode != "twilio" or args.url:
            return "--webhook: a whole Twilio call; --mode client and --url do not apply"
        problem = _http_problem("--webhook", args.webhook) or (
            _http_problem("--via", args.via) if args.via is not None else None)
        if problem is not None:
            return problem
    elif args.via is not None:
        return "--via: only with --webhook"
    url = args.url or _DEFAULT_URLS[args.mode]
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("ws", "wss") or not rest.strip("/"):
        hint = ""
        if scheme.lower() in ("http", "https") and sep:
            hint = f" (did you mean {'wss' if scheme.lower() == 'https' else 'ws'}://{rest}?)"
        return f"--url: expected a ws:// or wss:// URL, got {url!r}{hint}"
    try:
        parse_url(url)
    except ValueError as e:
        return f"--url: {url!r} is not a usable WebSocket URL: {e}"
    if args.save_audio:
        folder = os.path.dirname(os.path.abspath(args.save_audio))
        if os.path.isdir(args.save_audio):
            return f"--save-audio: {args.save_audio!r} is a directory; name a .wav file"
        if not os.path.isdir(folder):
            return f"--save-audio: the folder {folder!r} does not exist"
        if not os.access(folder, os.W_OK):
            return f"--save-audio: the folder {folder!r} is not writable"
    if args.wait_s < 0:
        return f"--wait-s: expected a number of seconds >= 0, got {args.wait_s:g}"
    if args.greeting_timeout_s < 0:
        return f"--greeting-timeout-s: expected a number of seconds >= 0, got {args.greeting_timeout_s:g}"
    return None


def _make_call(reactor: Any, args: argparse.Namespace, audio: WavAudio, on_event: Any) -> Any:
    url = args.url or _DEFAULT_URLS[args.mode]
    wait_s = None if args.until_close else args.wait_s
    params = dict(args.param)
    polite = dict(after_greeting=args.after_greeting, greeting_timeout_s=args.greeting_timeout_s,
                  until_answered=args.until_answered)
    if args.webhook is not None:
        return TwilioVoiceCall(reactor, args.via or args.webhook, args.webhook, audio,
                               auth_token=args.auth_token or None, form=params, on_event=on_event,
                               realtime=not args.fast, dtmf=args.dtmf, wait_s=wait_s,
                               send_stop=not args.no_stop, **polite)
    if args.mode == "client":
        return ClientCall(reactor, url=url, audio=audio, token=args.token, parameters=params,
                          realtime=not args.fast, wait_s=wait_s, on_event=on_event, **polite)
    if args.token is not None:
        params["token"] = args.token
    return TwilioCall(reactor, url=url, audio=audio, custom_parameters=params,
                      auth_token=args.auth_token or None, signed_url=args.signed_url,
                      realtime=not args.fast, dtmf=args.dtmf, wait_s=wait_s,
                      send_stop=not args.no_stop, on_event=on_event, **polite)


def _print_event(t_s: float, kind: str, message: Any) -> None:
    line = format_event(t_s, kind, message)
    if line is not None:
        print(line, flush=True)


def _save_audio(result: CallResult, path: str) -> tuple[bool, str]:
    """Write the agent's audio to ``path``; (saved, one line saying what happened)."""
    if not result.agent_audio:
        return False, f"no agent audio received: {path} not written"
    try:
        write_wav(path, WavAudio(result.agent_encoding, result.agent_sample_rate_hz, 1, result.agent_audio))
    except OSError as e:
        return False, f"could not save the agent audio to {path}: {e.strerror or e}"
    return True, f"agent audio saved to {path} ({result.agent_audio_s:.2f} s)"


def _voice_audio(result: VoiceCallResult) -> CallResult:
    """The agent audio of a whole call's streams, as one result for `_save_audio`."""
    return CallResult(agent_audio=result.agent_audio)


def _report(result: CallResult | VoiceCallResult, args: argparse.Namespace) -> int:
    audio = _voice_audio(result) if isinstance(result, VoiceCallResult) else result
    saved, save_line = _save_audio(audio, args.save_audio) if args.save_audio else (True, "")
    if args.json:
        print(json.dumps(result.to_json()), flush=True)
    else:
        lines = voice_summary_lines(result) if isinstance(result, VoiceCallResult) else summary_lines(result)
        print("\n".join(lines), flush=True)
        if save_line and saved:
            print(save_line, flush=True)
    if save_line and not saved:
        print(f"gateway-call: {save_line}", file=sys.stderr, flush=True)
    failure = result.failure()
    if failure is not None:
        print(f"gateway-call: {failure}", file=sys.stderr, flush=True)
        return 1
    if save_line and not saved and audio.agent_audio:
        return 1
    return 0


def _run(reactor: Any, args: argparse.Namespace, audio: WavAudio) -> Deferred:
    call = _make_call(reactor, args, audio, None if args.json else _print_event)
    done = call.run()
    # Ctrl-C: abort the call rather than leave the Deferred hanging.
    reactor.addSystemEventTrigger("before", "shutdown", lambda: None if done.called else done.cancel())

    def finished(result: CallResult) -> None:
        code = _report(result, args)
        if code:
            raise SystemExit(code)

    def interrupted(failure: Any) -> None:
        failure.trap(CancelledError)
        print("gateway-call: interrupted", file=sys.stderr, flush=True)
        raise SystemExit(130)

    return done.addCallbacks(finished, interrupted)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``gateway-call`` with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    problem = usage_problem(args)
    if problem is not None:
        print(f"gateway-call: {problem}", file=sys.stderr)
        return 2
    try:
        audio = _load_audio(args)
    except (OSError, ValueError) as e:
        print(f"gateway-call: cannot read the audio clip: {e}", file=sys.stderr)
        return 2
    # Only warnings and errors (a bug in a callback, say) reach stderr; Autobahn's chatter does not.
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)
    # Autobahn warns about the connection it drops after a refused upgrade; the result says it.
    predicate.setLogLevelForNamespace("autobahn", LogLevel.error)
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(sys.stderr), [predicate])],
        redirectStandardIO=False,
    )
    try:
        react(_run, (args, audio))
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
