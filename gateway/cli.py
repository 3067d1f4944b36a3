"""
The ``gateway`` command: ``gateway demo`` (the whole thing on the local emulator; ``--handover``:
a conversation surviving a restart of the process it started on),
``gateway doctor`` (check a configuration, the key and a real Deepgram session) and
``gateway check-config`` (validate a configuration and its plugins, as start-up would;
``--print`` shows the effective Settings or listen URL).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import IO, TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

__all__ = ["main"]

_LISTEN = re.compile(r"listening on (?:ws://)?(?P<host>[0-9.:\[\]a-z]+?):(?P<port>\d+)")


def _python_entry(module: str, func: str = "main") -> list[str]:
    return [sys.executable, "-c", f"import sys; from {module} import {func}; sys.exit({func}())"]


def _twistd() -> list[str]:
    script = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.path.exists(script):
        return [script]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


class _Child:
    """A child process whose output is echoed with a prefix and scanned for its port."""

    def __init__(
        self, name: str, argv: list[str], env: dict[str, str], echo: bool,
        show: re.Pattern[str] | None = None, label: str = "",
    ) -> None:
        self.name = name
        self.label = f"[{label}] " if label else ""
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.proc = subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        self._echo = echo
        self.show = show
        #: The last lines the child printed, shown when it dies before listening.
        self.tail: collections.deque[str] = collections.deque(maxlen=5)
        threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self.tail.append(line.rstrip("\n"))
            if self._echo:
                sys.stdout.write(f"[{self.name}] {line}")
                sys.stdout.flush()
            elif self.show is not None:
                match = self.show.search(line)
                if match:
                    # Flushed at once: the simulator writes to the same stdout directly.
                    sys.stdout.write(f"  {self.label}{match.group(1)}\n")
                    sys.stdout.flush()
            self.lines.put(line)
        self.lines.put(None)

    def wait_for_port(self, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"{self.name} did not say where it listens within {timeout_s} s")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                status = self.proc.wait()
                said = "" if self._echo else "".join(f"\n  {t}" for t in self.tail if t.strip())
                raise RuntimeError(f"{self.name} exited with status {status} before listening{said}")
            match = _LISTEN.search(line)
            if match:
                return int(match.group("port"))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


def load_config(path: str | None, environ: Any = None, **options: Any) -> Any:
    """
    The assembly's `gateway.assembly.load_config` with the built-in plugins. Imported here, not
    at the top: every ``gateway`` command would otherwise pay for the plugins and Deepgram's SDK
    (about a second) even when it only spawns ``twistd`` or prints its help.
    """
    import plugins
    from gateway.assembly import load_config as assemble_config

    return assemble_config(path, environ, builtins=plugins.BUILTINS, **options)


def _demo_problem(args: argparse.Namespace, env: dict[str, str]) -> str | None:
    """What stops the demo before anything starts, in one line: the configuration or the WAV path."""
    if args.handover and (args.mode != "agent" or args.config):
        return ("demo: --handover shows the Voice Agent remembering across a restart with its own "
                "configuration; --mode listen/flux and --config do not apply")
    if args.config:
        from gateway.errors import ConfigError, PluginLoadError

        try:
            load_config(args.config, env, require_api_key=False)
        except (ConfigError, PluginLoadError) as e:
            return f"gateway: configuration error: {e}"
    if args.mode == "agent":
        folder = os.path.dirname(os.path.abspath(args.save_audio))
        if not os.path.isdir(folder):
            return f"demo: --save-audio: the folder {folder!r} does not exist"
    return None


def demo(args: argparse.Namespace) -> int:
    """
    Run the emulator, a real ``twistd gateway`` pointed at it, and one simulated call.

    Voice Agent mode: the caller waits for the greeting to play out before speaking and hangs up
    once the answer has played (``--wait-s`` bounds the wait); the agent's audio is saved. Listen
    mode has no agent audio, so nothing is saved (an existing file is left alone).
    """
    key = "demo-key-not-secret"
    env = dict(os.environ)
    env.pop("TWILIO_AUTH_TOKEN", None)
    problem = _demo_problem(args, env)
    if problem is not None:
        print(problem, file=sys.stderr)
        return 1 if problem.startswith("gateway:") else 2
    if args.handover:
        return demo_handover(args, env, key)
    children: list[_Child] = []
    try:
        emulator = _Child(
            "emulator",
            _python_entry("gateway.emulator.cli")
            + ["--port", "tcp:0:interface=127.0.0.1", "--key", key],
            env,
            args.verbose,
        )
        children.append(emulator)
        dg_port = emulator.wait_for_port(30)
        mode = args.mode
        gw_env = dict(
            env,
            DEEPGRAM_API_KEY=key,
            DEEPGRAM_AGENT_URL=f"ws://127.0.0.1:{dg_port}/v1/agent/converse",
            DEEPGRAM_LISTEN_URL=f"ws://127.0.0.1:{dg_port}/v1/listen",
            DEEPGRAM_FLUX_URL=f"ws://127.0.0.1:{dg_port}/v2/listen",
        )
        argv = _twistd() + ["-n", "--pidfile=", "gateway", "--port", "tcp:0:interface=127.0.0.1"]
        if args.config:
            argv += ["--config", args.config]
        else:
            config = os.path.join(tempfile.mkdtemp(prefix="gateway-demo-"), "demo.toml")
            with open(config, "w") as f:
                f.write(f'[gateway]\nmode = "{mode}"\nlog_conversation = true\n')
            argv += ["--config", config]
        conversation = re.compile(r"\] ((?:caller|agent): .*)$")
        gateway = _Child("gateway", argv, gw_env, args.verbose, show=conversation)
        children.append(gateway)
        gw_port = gateway.wait_for_port(60)
        print(f"demo: emulator on port {dg_port}, gateway on port {gw_port}; placing a call")
        agent = mode == "agent"
        wait_s = args.wait_s if args.wait_s is not None else (15.0 if agent else 3.0)
        call = [
            *_python_entry("gateway.simulator.cli"),
            "--url", f"ws://127.0.0.1:{gw_port}/twilio",
            "--wait-s", str(wait_s),
        ]
        if agent:
            call += ["--save-audio", args.save_audio, "--after-greeting", "--until-answered"]
        if args.fast:
            call.append("--fast")
        status = subprocess.call(call, env=env)
        saved = agent and status == 0 and os.path.exists(args.save_audio)
        print(f"demo: the call ended with status {status}"
              + (f"; agent audio saved to {args.save_audio}" if saved else ""))
        return status
    except RuntimeError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 1
    finally:
        for child in reversed(children):
            child.stop()


#: What the handover demo shows of each gateway's log: the conversation and the handover.
_HANDOVER_LINES = re.compile(
    r"\] ((?:caller|agent): .*|(?:HANDED_OVER|HANDOVER_RESUMED): .*|draining: .*|drain done: .*)$")


def _agent_answered(child: _Child, timeout_s: float) -> bool:
    """Whether ``child`` logs an ``agent:`` line after a ``caller:`` one within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    heard = False
    while time.monotonic() < deadline:
        try:
            line = child.lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return False
        if line is None:
            return False
        heard = heard or "] caller: " in line
        if heard and "] agent: " in line:
            return True
    return False


def demo_handover(args: argparse.Namespace, env: dict[str, str], key: str) -> int:
    """
    ``gateway demo --handover``: a conversation survives a restart of the process it started on.

    The emulator; two ``twistd gateway`` processes, A and B, sharing a temporary SQLite handover
    store and ``GATEWAY_TOKEN_SECRET``; and a tiny local front (`gateway.front.LocalFront`: each
    connection to the first process whose ``/readyz`` says 200, the proxy's part in a
    deployment) whose address is the gateways' ``GATEWAY_PUBLIC_URL``. A whole Twilio call
    (``gateway-call --webhook``: the webhook, the stream, Twilio's ``<Connect action>`` request)
    starts on A; the caller asks a question, and once A's agent has answered, A gets SIGTERM as in
    a rolling restart. A hands the call over at its next quiet point; the action request and the
    new stream go through the front to B, which takes the call up with the conversation so far:
    no second greeting, and the caller's next question is answered as the next turn of the same
    conversation. The caller speaks in real time (``--fast`` does not apply).
    """
    import secrets
    import shutil

    from gateway.codecs.wav import WavAudio, read_wav, write_wav
    from gateway.front import LocalFront
    from gateway.simulator.audio import default_clip_path

    workdir = tempfile.mkdtemp(prefix="gateway-demo-handover-")
    front = LocalFront()
    children: list[_Child] = []
    try:
        emulator = _Child("emulator", _python_entry("gateway.emulator.cli")
                          + ["--port", "tcp:0:interface=127.0.0.1", "--key", key], env, args.verbose)
        children.append(emulator)
        dg_port = emulator.wait_for_port(30)
        config = os.path.join(workdir, "demo.toml")
        with open(config, "w") as f:
            f.write('[gateway]\nmode = "agent"\nlog_conversation = true\n'
                    f'[handover]\nstore = "sqlite:{os.path.join(workdir, "handover.sqlite")}"\n')
        gw_env = dict(env, DEEPGRAM_API_KEY=key,
                      DEEPGRAM_AGENT_URL=f"ws://127.0.0.1:{dg_port}/v1/agent/converse",
                      GATEWAY_PUBLIC_URL=front.url, GATEWAY_TOKEN_SECRET=secrets.token_hex(32))
        argv = _twistd() + ["-n", "--pidfile=", "gateway", "--port", "tcp:0:interface=127.0.0.1",
                            "--config", config]
        gateway_a = _Child("gateway A", argv, gw_env, args.verbose, show=_HANDOVER_LINES, label="A")
        children.append(gateway_a)
        port_a = gateway_a.wait_for_port(60)
        gateway_b = _Child("gateway B", argv, gw_env, args.verbose, show=_HANDOVER_LINES, label="B")
        children.append(gateway_b)
        port_b = gateway_b.wait_for_port(60)
        front.backends = [port_a, port_b]
        print(f"demo: emulator on port {dg_port}; gateway A on port {port_a} and B on port {port_b}, "
              f"sharing a handover store, behind a local front at {front.url} (their "
              "GATEWAY_PUBLIC_URL); placing a call, which lands on A")
        # The caller asks, waits for the answer (and the restart), then asks again.
        order = read_wav(default_clip_path("twilio"))
        clip = os.path.join(workdir, "caller.wav")
        write_wav(clip, WavAudio("mulaw", 8000, 1, order.data + b"\xff" * 8000 * 8 + order.data))
        wait_s = args.wait_s if args.wait_s is not None else 15.0
        caller = subprocess.Popen(
            [*_python_entry("gateway.simulator.cli"), "--webhook", front.url, "--audio", clip,
             "--after-greeting", "--until-answered", "--wait-s", str(wait_s),
             "--save-audio", args.save_audio], env=env)
        try:
            if _agent_answered(gateway_a, 60):
                print("demo: the agent has answered on A; SIGTERM to A, as in a rolling restart: A "
                      "hands the call over at its next quiet point", flush=True)
                gateway_a.proc.send_signal(signal.SIGTERM)
            else:
                print("demo: the agent did not answer on A in time; A is not restarted", flush=True)
            status = caller.wait(timeout=120)
        except BaseException:
            caller.kill()
            raise
        try:
            code = gateway_a.proc.wait(timeout=40)
            # twistd ends a drain by re-raising SIGTERM (status 143 in a shell).
            a_status = "after its drain, on SIGTERM" if code == -signal.SIGTERM else f"with status {code}"
        except subprocess.TimeoutExpired:
            a_status = "not yet: still draining"
        print(f"demo: the call ended with status {status}; gateway A exited {a_status}, having handed "
              "the call over, and B carried the conversation on"
              + (f"; agent audio saved to {args.save_audio}" if status == 0 else ""))
        return status
    except RuntimeError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 1
    finally:
        for child in reversed(children):
            child.stop()
        front.close()
        shutil.rmtree(workdir, ignore_errors=True)


def effective_upstream(configured: Any, leg: str = "twilio") -> tuple[str, Any]:
    """
    What a call on ``leg`` (``twilio`` or ``client``) would send Deepgram before any per-call
    value: ``("settings", the Settings message)`` in agent mode (the merged template, the audio
    section the transcoder derives, the plugins' functions), else ``("url", the query URL)``.
    The same functions the settings stage uses build it.
    """
    from gateway.codecs import deepgram
    from plugins.settings import _add_functions

    upstream_in, upstream_out = configured.formats[leg]
    options = None
    for name, factory in configured.stages:
        if name == "settings":
            options = factory.options
    if options is None:
        raise ValueError("the chain has no settings stage")
    mode = configured.config.mode
    if mode == "agent":
        settings = deepgram.build_settings(options.template, upstream_in, upstream_out)
        _add_functions(settings, [spec.declaration(n) for n, (_, spec) in configured.functions.items()])
        return "settings", settings
    # listen_url/listen_params, flux_url/flux_params...: one builder per query-string mode.
    build = getattr(deepgram, f"build_{mode}_url")
    url = build(getattr(options, f"{mode}_url"), getattr(options, f"{mode}_params"), upstream_in)
    return "url", deepgram.redact_url(url)


def check_config(args: argparse.Namespace) -> int:
    """
    Validate a configuration and its plugins; print the result in one line. With ``--print``,
    also what Deepgram would receive: the effective Settings (agent mode) or query URL.
    """
    from gateway.errors import ConfigError, PluginLoadError

    try:
        configured = load_config(args.config, require_api_key=False)
    except (ConfigError, PluginLoadError) as e:
        print(f"gateway: configuration error: {e}", file=sys.stderr)
        return 1
    config = configured.config
    for warning in config.warnings:
        print(f"warning: {warning}")
    if not config.api_key:
        print("warning: DEEPGRAM_API_KEY is not set (the gateway will refuse to start)")
    print(f"ok: mode {config.mode}, chain {' -> '.join(config.chain)}")
    if args.print:
        kind, value = effective_upstream(configured, args.leg)
        caller = {"twilio": "a Twilio stream", "client": "a /client caller"}[args.leg]
        if kind == "settings":
            print(f"effective Settings for {caller} (before per-call [settings.parameters] values):")
            print(json.dumps(value, indent=2))
        else:
            print(f"effective {config.mode} URL for {caller} (before per-call [settings.parameters] values):")
            print(value)
    return 0


def doctor(args: argparse.Namespace) -> int:
    """Check the configuration, the key and a real session; exit 0 only if one was configured."""
    from twisted.internet import task

    from gateway.doctor import run_doctor
    from gateway.errors import ConfigError, PluginLoadError

    try:
        configured = load_config(args.config)
    except (ConfigError, PluginLoadError) as e:
        print(f"configuration: FAILED: {e}")
        return 1
    status: list[int] = []

    def main(reactor: Any) -> Deferred[None]:
        return run_doctor(reactor, configured).addCallback(status.append)

    try:
        task.react(main)
    except SystemExit as e:
        if e.code not in (0, None):
            return int(e.code)
    return status[0] if status else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="run the emulator, the gateway and one simulated call")
    p.add_argument("--mode", choices=("agent", "listen", "flux"), default="agent",
                   help="the Voice Agent, streaming speech-to-text, or Flux's turn-taking STT")
    p.add_argument("--config", help="a gateway configuration to use instead of the defaults")
    p.add_argument("--save-audio", default="demo-agent.wav",
                   help="where to write the agent's audio (agent mode; listen mode has none)")
    p.add_argument("--wait-s", type=float, default=None,
                   help="the longest the caller stays after speaking (default: 15 s for the agent's "
                        "answer to play out, 3 s in listen mode)")
    p.add_argument("--fast", action="store_true",
                   help="send the caller's clip at once instead of in real time (not with --handover)")
    p.add_argument("--handover", action="store_true",
                   help="two gateway processes behind a local front; the one the call starts on is "
                        "restarted mid-call and the conversation goes on in the other")
    p.add_argument("--verbose", "-v", action="store_true", help="show the emulator's and gateway's logs")
    p.set_defaults(func=demo)
    p = sub.add_parser("doctor", help="check the configuration, the Deepgram key and a real session")
    p.add_argument("--config", help="the TOML file (none: the defaults)")
    p.set_defaults(func=doctor)
    p = sub.add_parser("check-config", help="validate a configuration file and its plugins")
    p.add_argument("--config", help="the TOML file (none: the defaults)")
    p.add_argument("--print", action="store_true",
                   help="also print the effective Settings (agent mode) or query URL (listen modes)")
    p.add_argument("--leg", choices=("twilio", "client"), default="twilio",
                   help="with --print: the caller whose audio formats to show (default twilio)")
    p.set_defaults(func=check_config)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
