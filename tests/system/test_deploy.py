"""
The production deployment, run for real on loopback: supervisord (from PyPI) started with
deploy/supervisord.conf exactly as shipped (its ``%(ENV_...)s`` variables point it at this test's
ports and temporary directories), several ``twistd gateway`` processes pointed at the in-process
Deepgram emulator, simulated calls on each process, a crash and a drain, and the same calls
through nginx and HAProxy rendered from deploy/nginx.conf and deploy/haproxy.cfg. The Kubernetes
manifests, the systemd unit and the Dockerfile are checked for consistency with the gateway's
numbers (drain deadline, grace period, probes).

In CI (``CI=true``) a missing supervisord, nginx or haproxy fails the test; elsewhere it skips,
saying what to install.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import socket
import sys
from typing import Any, Callable, Iterable

import treq
from twisted.internet import defer, protocol, reactor, task
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.trial.unittest import SkipTest, TestCase

from gateway.simulator import ClientCall, TwilioCall
from gateway.testing import TEST_API_KEY, temp_path
from tests.system.harness import clip, emulator_env, start_emulator

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(ROOT, "deploy")
BIN = os.path.dirname(sys.executable)
VENV = os.path.dirname(BIN)

YES = clip("caller-yes-8k-mulaw.wav")
YES_16K = clip("caller-yes-16k-s16le.wav")

#: Secrets given to the processes; none may appear in any log line.
API_KEY = "deploy-test-api-key-4f2a91"
TOKEN_SECRET = "deploy-test-token-secret-9b7c3e"
SECRETS = (TEST_API_KEY, API_KEY, TOKEN_SECRET)

#: The drain deadline of the test configuration (the shipped stopwaitsecs, 45 s, exceeds it).
DRAIN_S = 8.0


def read(*parts: str) -> str:
    with open(os.path.join(ROOT, *parts)) as f:
        return f.read()


def require_tool(name: str, candidates: Iterable[str], install: str) -> str:
    """The tool's path; a failure in CI when it is missing, a skip (saying why) elsewhere."""
    for candidate in candidates:
        path = shutil.which(candidate) or (candidate if os.access(candidate, os.X_OK) else None)
        if path:
            return path
    message = f"{name} is not installed ({install})"
    if os.environ.get("CI") == "true":
        raise AssertionError(f"{message}: CI must provide it (.ci/run installs it)")
    raise SkipTest(message)


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive ports that are free on 127.0.0.1."""
    for _ in range(200):
        base = random.randint(20000, 60000 - count)
        held = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                held.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise RuntimeError("no free range of ports on 127.0.0.1")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Collect(protocol.ProcessProtocol):
    """Collects a child's output; ``ended`` fires with (exit code, signal)."""

    def __init__(self) -> None:
        self.output = b""
        self.ended: defer.Deferred = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        value = reason.value
        code = value.exitCode if isinstance(value, (ProcessDone, ProcessTerminated)) else None
        self.ended.callback((code, getattr(value, "signal", None)))


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(extra)
    return env


@defer.inlineCallbacks
def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Poll ``predicate`` (which may return a Deferred) every 50 ms until it is true."""
    deadline = reactor.seconds() + timeout_s
    while True:
        value = yield defer.maybeDeferred(predicate)
        if value:
            return value
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        yield task.deferLater(reactor, 0.05, lambda: None)


@defer.inlineCallbacks
def http_get(url: str) -> Any:
    """``(status, parsed JSON body)``, or ``None`` when nothing answers."""
    try:
        response = yield treq.get(url, persistent=False).addTimeout(5, reactor)
        body = yield response.content()
    except Exception:
        return None
    try:
        return response.code, json.loads(body)
    except ValueError:
        return response.code, body


class Deployment:
    """supervisord running deploy/supervisord.conf, with ``processes`` gateways on loopback."""

    def __init__(self, test: TestCase, emulator: Any, processes: int = 3, extra_config: str = "",
                 env: dict[str, str] | None = None) -> None:
        self.test = test
        self.processes = processes
        self.first_port = free_ports(processes)
        self.ports = list(range(self.first_port, self.first_port + processes))
        self.dir = os.path.dirname(temp_path(test, "x"))
        self.run_dir = os.path.join(self.dir, "run")
        self.log_dir = os.path.join(self.dir, "log")
        os.mkdir(self.run_dir)
        os.mkdir(self.log_dir)
        config = os.path.join(self.dir, "gateway.toml")
        with open(config, "w") as f:
            f.write(f"[gateway]\ndrain_deadline_s = {DRAIN_S}\n{extra_config}")
        # The one documented substitution step: the variables supervisord expands itself.
        self.env = clean_env({
            "GATEWAY_VENV": VENV,
            "GATEWAY_CONFIG": config,
            "GATEWAY_RUN_DIR": self.run_dir,
            "GATEWAY_LOG_DIR": self.log_dir,
            "GATEWAY_FIRST_PORT": str(self.first_port),
            "GATEWAY_PROCESSES": str(processes),
            # inherited by every program: the emulator and the secrets
            "DEEPGRAM_API_KEY": TEST_API_KEY,
            "GATEWAY_API_KEY": API_KEY,
            "GATEWAY_TOKEN_SECRET": TOKEN_SECRET,
            **emulator_env(emulator),
            **(env or {}),
        })
        self.conf = os.path.join(DEPLOY, "supervisord.conf")
        self.pids: set[int] = set()
        self.proto: _Collect | None = None

    @defer.inlineCallbacks
    def start(self) -> Any:
        supervisord = require_tool(
            "supervisord", [os.path.join(BIN, "supervisord")], "pip install supervisor")
        self.proto = _Collect()
        argv = [supervisord, "-c", self.conf]
        self.process = reactor.spawnProcess(self.proto, argv[0], argv, env=self.env, path=self.dir)
        self.test.addCleanup(self.stop)
        for port in self.ports:
            yield self.pid_on(port)

    @defer.inlineCallbacks
    def pid_on(self, port: int, other_than: int | None = None, timeout_s: float = 30) -> Any:
        """The pid that answers /healthz on ``port`` (waiting for one other than ``other_than``)."""

        @defer.inlineCallbacks
        def check() -> Any:
            if self.proto is not None and self.proto.ended.called:
                raise AssertionError("supervisord exited:\n" + self.output)
            answer = yield http_get(f"http://127.0.0.1:{port}/healthz")
            if answer is None or answer[0] != 200 or answer[1]["pid"] == other_than:
                return None
            return answer[1]["pid"]

        pid = yield wait_for(check, timeout_s, f"a gateway on port {port}")
        self.pids.add(pid)
        return pid

    def wait_running(self, port: int, pid: int | None = None) -> defer.Deferred:
        """Wait until ``supervisorctl status`` says the process on ``port`` is RUNNING."""
        expected = rf"gateway:gateway-{port}\s+RUNNING\s+pid {pid or ''}"
        return wait_for(lambda: self.ctl("status").addCallback(lambda out: re.search(expected, out[0])),
                        15, f"gateway-{port} RUNNING")

    @property
    def output(self) -> str:
        return self.proto.output.decode(errors="replace") if self.proto else ""

    def ctl(self, *args: str, timeout_s: float = 30) -> defer.Deferred:
        """``supervisorctl -c deploy/supervisord.conf ARGS``: (output, exit status)."""
        proto = _Collect()
        argv = [os.path.join(BIN, "supervisorctl"), "-c", self.conf, *args]
        reactor.spawnProcess(proto, argv[0], argv, env=self.env, path=self.dir)
        d = proto.ended.addCallback(lambda ended: (proto.output.decode(errors="replace"), ended[0]))
        return d.addTimeout(timeout_s, reactor)

    def log_lines(self, port: int) -> list[str]:
        """The JSON log of the process on ``port`` (all of its rotations' current file)."""
        with open(os.path.join(self.log_dir, f"gateway-{port}.log")) as f:
            return f.read().splitlines()

    def all_logs(self) -> str:
        text = []
        for name in sorted(os.listdir(self.log_dir)):
            with open(os.path.join(self.log_dir, name), errors="replace") as f:
                text.append(f.read())
        return "\n".join(text)

    @defer.inlineCallbacks
    def calls_per_port(self) -> Any:
        """{port: live calls} from each process's own /readyz."""
        out = {}
        for port in self.ports:
            answer = yield http_get(f"http://127.0.0.1:{port}/readyz")
            out[port] = answer[1]["calls"] if answer and isinstance(answer[1], dict) else None
        return out

    @defer.inlineCallbacks
    def stop(self) -> Any:
        """``supervisorctl shutdown``; SIGKILL to supervisord and every gateway pid as a fallback."""
        if self.proto is None or self.proto.ended.called:
            self._kill_leftovers()
            return
        try:
            yield self.ctl("shutdown", timeout_s=20)
            yield self.proto.ended.addTimeout(60, reactor)
        except Exception:
            self.process.signalProcess("KILL")
            yield self.proto.ended
        finally:
            self._kill_leftovers()

    def _kill_leftovers(self) -> None:
        for pid in self.pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def twilio(url: str, wait_s: float = 1.0) -> TwilioCall:
    return TwilioCall(reactor, url=url + "/twilio", audio=YES, realtime=False, wait_s=wait_s)


def check_calls(test: TestCase, results: list) -> None:
    for result in results:
        test.assertTrue(result.ok, result.failure())


class SupervisordTests(TestCase):
    """Several gateway processes under supervisord with deploy/supervisord.conf."""

    timeout = 90

    @defer.inlineCallbacks
    def setUp(self) -> None:
        self.emulator = yield start_emulator(self)
        self.deployment = Deployment(self, self.emulator, processes=3)
        yield self.deployment.start()

    @defer.inlineCallbacks
    def test_crash_leaves_other_calls_and_is_restarted(self) -> None:
        """
        A call on each of three processes; SIGKILL one mid-call: the other two calls end normally
        with every byte relayed, and supervisord restarts the killed process on its port.
        """
        dep = self.deployment
        for port in dep.ports:
            yield dep.wait_running(port)
        calls = [twilio(f"ws://127.0.0.1:{port}", wait_s=3.0) for port in dep.ports]
        done = [call.run().addTimeout(30, reactor) for call in calls]
        live = yield wait_for(
            lambda: dep.calls_per_port().addCallback(lambda c: c if all(c.values()) else None),
            15, "a live call on every process")
        self.assertEqual(set(live.values()), {1})
        victim = dep.ports[1]
        output, _ = yield dep.ctl("pid", f"gateway:gateway-{victim}")
        old_pid = int(output.strip())
        os.kill(old_pid, signal.SIGKILL)
        results = yield defer.gatherResults(done)
        cut, survivors = results[1], [results[0], results[2]]
        check_calls(self, survivors)
        self.assertNotEqual(cut.close_code, 1000)
        yield wait_for(lambda: len(self.emulator.sessions) == 3, 10, "three Deepgram sessions")
        yield defer.DeferredList([s.closed for s in self.emulator.sessions])
        relayed = [s.audio for s in self.emulator.sessions]
        for result in survivors:
            self.assertIn(result.sent_audio, relayed)
        new_pid = yield dep.pid_on(victim, other_than=old_pid)
        self.assertNotEqual(new_pid, old_pid)
        yield dep.wait_running(victim, new_pid)
        # The restarted process takes calls again.
        again = yield twilio(f"ws://127.0.0.1:{victim}").run().addTimeout(30, reactor)
        check_calls(self, [again])

    @defer.inlineCallbacks
    def test_supervisorctl_stop_drains(self) -> None:
        """
        ``supervisorctl stop`` during a call that ends before the drain deadline: /readyz turns
        503, the call ends normally (not cut), then the process exits on SIGTERM (not SIGKILL).
        The process's log is JSON lines; every per-call line has the call id; no secret anywhere.
        """
        dep = self.deployment
        port = dep.ports[0]
        call = twilio(f"ws://127.0.0.1:{port}", wait_s=2.5).run().addTimeout(30, reactor)
        yield wait_for(lambda: dep.calls_per_port().addCallback(lambda c: c[port] == 1),
                       15, "the call to start")
        started = reactor.seconds()
        stopping = dep.ctl("stop", f"gateway:gateway-{port}", timeout_s=60)
        readyz = yield wait_for(
            lambda: http_get(f"http://127.0.0.1:{port}/readyz").addCallback(
                lambda a: a if a and a[0] == 503 else None), 10, "/readyz 503")
        self.assertEqual(readyz[1]["reason"], "draining")
        result = yield call
        self.assertEqual((result.close_code, result.close_reason), (1000, "CALLER_HANGUP"))
        output, _ = yield stopping
        self.assertIn(f"gateway-{port}: stopped", output)
        self.assertLess(reactor.seconds() - started, DRAIN_S)
        sup_log = read_file(os.path.join(dep.log_dir, "supervisord.log"))
        self.assertIn(f"stopped: gateway-{port} (terminated by SIGTERM)", sup_log)
        self.assertNotIn("SIGKILL", sup_log)
        # The other processes were not touched.
        for other in dep.ports[1:]:
            answer = yield http_get(f"http://127.0.0.1:{other}/readyz")
            self.assertEqual(answer[0], 200)

        lines = dep.log_lines(port)
        events = [json.loads(line) for line in lines]  # every line is one JSON object
        self.assertTrue(any("drain done: 0 calls closed at the deadline" in e["msg"] for e in events))
        ended = [e for e in events if " ended: " in e["msg"]]
        self.assertEqual(len(ended), 1, lines)
        call_id = ended[0]["call_id"]
        per_call = [e for e in events if call_id in e["msg"] or e.get("call_id") is not None
                    or (e.get("ns") or "").startswith(("gateway.call", "gateway.legs", "plugins."))]
        self.assertGreater(len(per_call), 1)
        for event in per_call:
            self.assertEqual(event.get("call_id"), call_id, event)
        logs = dep.all_logs()
        for secret in SECRETS:
            self.assertNotIn(secret, logs)

    @defer.inlineCallbacks
    def test_token_from_one_process_verifies_on_another(self) -> None:
        """POST /v1/tokens on one process; a raw-audio client uses the token on another."""
        dep = self.deployment
        response = yield treq.post(f"http://127.0.0.1:{dep.ports[0]}/v1/tokens",
                                   headers={"Authorization": f"Bearer {API_KEY}"},
                                   persistent=False).addTimeout(10, reactor)
        self.assertEqual(response.code, 200)
        token = (yield response.json())["token"]
        results = []
        for port in dep.ports[1:]:
            call = ClientCall(reactor, f"ws://127.0.0.1:{port}/client", YES_16K, token=token,
                              realtime=False, wait_s=0.5)
            results.append((yield call.run().addTimeout(30, reactor)))
        check_calls(self, results)
        self.assertEqual(len(self.emulator.sessions), 2)


def read_file(path: str) -> str:
    with open(path, errors="replace") as f:
        return f.read()


def render_upstreams(text: str, pattern: str, make: Callable[[int], str], ports: list[int]) -> str:
    """Replace the shipped upstream lines (8101..8104) with one line per test port."""
    lines = text.splitlines(keepends=True)
    found = [i for i, line in enumerate(lines) if re.search(pattern, line)]
    if not found or found != list(range(found[0], found[0] + len(found))):
        raise AssertionError(f"expected one block of upstream lines matching {pattern!r}")
    indent = re.match(r"\s*", lines[found[0]]).group(0)
    block = [f"{indent}{make(port)}\n" for port in ports]
    return "".join(lines[: found[0]] + block + lines[found[-1] + 1:])


@defer.inlineCallbacks
def start_haproxy(test: Any, dep: Deployment) -> Any:
    """HAProxy from deploy/haproxy.cfg with the deployment's ports: (its output collector, port)."""
    haproxy = require_tool("haproxy", ["haproxy", "/usr/sbin/haproxy"], "apt-get install haproxy")
    listen_port = free_ports(1)
    text = render_upstreams(read("deploy", "haproxy.cfg"), r"^\s*server gw\d+ 127\.0\.0\.1:\d+ check",
                            lambda p: f"server gw{p} 127.0.0.1:{p} check", dep.ports)
    text = text.replace("bind 127.0.0.1:8080", f"bind 127.0.0.1:{listen_port}")
    conf = os.path.join(dep.dir, "haproxy.cfg")
    with open(conf, "w") as f:
        f.write(text)
    proto = yield ProxyTests.start_proxy(test, "haproxy", [haproxy, "-f", conf], dep, listen_port)
    return proto, listen_port


class ProxyTests(TestCase):
    """The same calls through the front proxies, rendered from deploy/nginx.conf and haproxy.cfg."""

    timeout = 90

    @defer.inlineCallbacks
    def start_proxy(self, name: str, argv: list[str], dep: Deployment, listen_port: int) -> Any:
        proto = _Collect()
        process = reactor.spawnProcess(proto, argv[0], argv, env=clean_env({}), path=dep.dir)

        @defer.inlineCallbacks
        def stop() -> Any:
            if not proto.ended.called:
                process.signalProcess("TERM")
                try:
                    yield proto.ended.addTimeout(10, reactor)
                except defer.TimeoutError:
                    process.signalProcess("KILL")
                    yield proto.ended

        self.addCleanup(stop)

        def ready() -> Any:
            if proto.ended.called:
                raise AssertionError(f"{name} exited:\n" + proto.output.decode(errors="replace"))
            return http_get(f"http://127.0.0.1:{listen_port}/readyz").addCallback(
                lambda a: a and a[0] == 200)

        yield wait_for(ready, 15, f"{name} answering /readyz")
        return proto

    @defer.inlineCallbacks
    def through_proxy(self, dep: Deployment, listen_port: int, emulator: Any,
                      after_stop: Callable[[], Any] | None = None) -> Any:
        """Calls through the proxy spread over the processes; tokens; one process stopped."""
        base = f"ws://127.0.0.1:{listen_port}"
        calls = [twilio(base, wait_s=2.0).run().addTimeout(30, reactor) for _ in range(3)]
        spread = yield wait_for(
            lambda: dep.calls_per_port().addCallback(
                lambda c: c if sum(n or 0 for n in c.values()) == 3 else None),
            15, "three live calls")
        self.assertGreaterEqual(len([n for n in spread.values() if n]), 2, spread)
        check_calls(self, (yield defer.gatherResults(calls)))

        response = yield treq.post(f"http://127.0.0.1:{listen_port}/v1/tokens",
                                   headers={"Authorization": f"Bearer {API_KEY}"},
                                   persistent=False).addTimeout(10, reactor)
        self.assertEqual(response.code, 200)
        token = (yield response.json())["token"]
        client = ClientCall(reactor, base + "/client", YES_16K, token=token, realtime=False,
                            wait_s=0.5)
        check_calls(self, [(yield client.run().addTimeout(30, reactor))])
        metrics = yield treq.get(f"http://127.0.0.1:{listen_port}/metrics", persistent=False)
        yield metrics.content()
        self.assertEqual(metrics.code, 404)

        # One process stopped (as a crash or a finished drain leaves it): calls still get through.
        gone = dep.ports[0]
        output, _ = yield dep.ctl("stop", f"gateway:gateway-{gone}")
        self.assertIn("stopped", output)
        if after_stop is not None:
            yield after_stop()
        calls = [twilio(base, wait_s=0.2).run().addTimeout(30, reactor) for _ in range(3)]
        check_calls(self, (yield defer.gatherResults(calls)))

    @defer.inlineCallbacks
    def test_nginx(self) -> None:
        """nginx: WebSocket calls spread over the processes, tokens, and a stopped process skipped."""
        nginx = require_tool("nginx", ["nginx", "/usr/sbin/nginx"], "apt-get install nginx-light")
        emulator = yield start_emulator(self)
        dep = Deployment(self, emulator, processes=3)
        yield dep.start()
        listen_port = free_ports(1)
        text = read("deploy", "nginx.conf")
        text = render_upstreams(text, r"^\s*server 127\.0\.0\.1:\d+ ",
                                lambda p: f"server 127.0.0.1:{p} max_fails=1 fail_timeout=5s;",
                                dep.ports)
        text = text.replace("listen 127.0.0.1:8080;", f"listen 127.0.0.1:{listen_port};")
        prefix = os.path.join(dep.dir, "nginx")
        os.makedirs(os.path.join(prefix, "tmp"))
        for path in (dep.dir, prefix, os.path.join(prefix, "tmp")):
            os.chmod(path, 0o755)  # nginx workers may run as an unprivileged user
        conf = os.path.join(prefix, "nginx.conf")
        with open(conf, "w") as f:
            f.write(text)
        yield self.start_proxy("nginx", [nginx, "-p", prefix + "/", "-c", conf, "-g", "daemon off;"],
                               dep, listen_port)
        yield self.through_proxy(dep, listen_port, emulator)

    @defer.inlineCallbacks
    def test_haproxy(self) -> None:
        """HAProxy: calls spread, tokens, and /readyz checks take a stopped process out."""
        require_tool("haproxy", ["haproxy", "/usr/sbin/haproxy"], "apt-get install haproxy")
        emulator = yield start_emulator(self)
        dep = Deployment(self, emulator, processes=3)
        yield dep.start()
        proto, listen_port = yield start_haproxy(self, dep)
        gone = dep.ports[0]

        def marked_down() -> Any:
            return wait_for(lambda: f"be_gateway/gw{gone} is DOWN" in proto.output.decode(errors="replace"),
                            15, f"HAProxy's /readyz check to mark gw{gone} DOWN")

        yield self.through_proxy(dep, listen_port, emulator, after_stop=marked_down)


class ManifestTests(TestCase):
    """The shipped deployment files agree with each other and with the gateway's numbers."""

    def number(self, pattern: str, text: str) -> float:
        match = re.search(pattern, text, re.M)
        self.assertIsNotNone(match, pattern)
        return float(match.group(1))

    def test_supervisord_outlasts_the_drain(self) -> None:
        """stopwaitsecs exceeds the example's drain deadline plus the legs' end timeout."""
        conf = read("deploy", "supervisord.conf")
        example = read("deploy", "gateway.example.toml")
        drain = self.number(r"^drain_deadline_s = ([\d.]+)", example)
        end = self.number(r"^end_timeout_s = ([\d.]+)", example)
        self.assertGreater(self.number(r"^stopwaitsecs=(\d+)", conf), drain + end)
        self.assertIn("--logger gateway.logs.json_observer gateway", conf)
        self.assertRegex(conf, r"(?m)^stopsignal=TERM$")
        unit = read("deploy", "gateway.service")
        self.assertGreater(self.number(r"^TimeoutStopSec=(\d+)", unit), drain + end)
        self.assertIn("SuccessExitStatus=143", unit)
        self.assertIn("--logger gateway.logs.json_observer gateway", unit)

    def test_proxy_timeouts_exceed_ping_and_idle(self) -> None:
        """Proxy idle timeouts of upgraded connections exceed the caller ping and idle timeouts."""
        example = read("deploy", "gateway.example.toml")
        longest = max(self.number(r"^caller_ping_interval_s = ([\d.]+)", example)
                      + self.number(r"^caller_ping_timeout_s = ([\d.]+)", example),
                      self.number(r"^caller_idle_timeout_s = ([\d.]+)", example))
        nginx = read("deploy", "nginx.conf")
        self.assertGreater(self.number(r"proxy_read_timeout (\d+)s;", nginx), longest)
        self.assertGreater(self.number(r"proxy_send_timeout (\d+)s;", nginx), longest)
        haproxy = read("deploy", "haproxy.cfg")
        self.assertGreater(self.number(r"timeout tunnel (\d+)s", haproxy), longest)
        self.assertIn("option httpchk GET /readyz", haproxy)
        self.assertIn("proxy_set_header Upgrade $http_upgrade;", nginx)

    def test_dockerfile(self) -> None:
        """The image runs twistd with JSON logs as a non-root user, stops on SIGTERM, checks /healthz."""
        docker = read("deploy", "Dockerfile")
        self.assertIn('"twistd", "-n", "--pidfile=", "--logger", "gateway.logs.json_observer", "gateway"',
                      docker)
        self.assertRegex(docker, r"(?m)^STOPSIGNAL SIGTERM$")
        self.assertRegex(docker, r"(?m)^USER \d+")
        self.assertRegex(docker, r"(?m)^HEALTHCHECK (.*\\\n)*.*/healthz")

    def k8s_text(self) -> dict[str, str]:
        folder = os.path.join(DEPLOY, "k8s")
        return {name: read_file(os.path.join(folder, name))
                for name in sorted(os.listdir(folder)) if name.endswith(".yaml")}

    def test_kubernetes_numbers(self) -> None:
        """The grace period covers preStop + the drain deadline + the end timeout; probes as documented."""
        texts = self.k8s_text()
        deployment = texts["deployment.yaml"]
        config = texts["configmap.yaml"]
        drain = self.number(r"^\s*drain_deadline_s = ([\d.]+)", config)
        end = self.number(r"^\s*end_timeout_s = ([\d.]+)", config)
        pre_stop = self.number(r"\"sleep\", \"(\d+)\"", deployment)
        grace = self.number(r"terminationGracePeriodSeconds: (\d+)", deployment)
        self.assertGreaterEqual(grace, pre_stop + drain + end + 5)
        self.assertRegex(deployment, r"readinessProbe:\s+httpGet:\s+path: /readyz")
        self.assertRegex(deployment, r"livenessProbe:\s+httpGet:\s+path: /healthz")
        self.assertIn("gateway.logs.json_observer", deployment)
        self.assertIn("gateway_admitted_calls", texts["hpa.yaml"])

    def test_kubernetes_config_loads(self) -> None:
        """The ConfigMap's gateway.toml is a valid gateway configuration (with the secrets set)."""
        from gateway.testing import load_config

        text = self.k8s_text()["configmap.yaml"]
        block = text.split("gateway.toml: |\n", 1)[1]
        toml = "".join(line[4:] + "\n" for line in block.splitlines() if line.startswith("    ") or not line)
        path = temp_path(self, "gateway.toml")
        with open(path, "w") as f:
            f.write(toml)
        configured = load_config(path, environ={
            "DEEPGRAM_API_KEY": TEST_API_KEY, "TWILIO_AUTH_TOKEN": "twilio-token-x",
            "GATEWAY_PUBLIC_URL": "https://gateway.example.com", "GATEWAY_TOKEN_SECRET": TOKEN_SECRET})
        self.assertTrue(configured.config.require_signature)
        self.assertEqual(configured.config.drain_deadline_s,
                         self.number(r"^\s*drain_deadline_s = ([\d.]+)", text))

    def test_kubernetes_yaml_parses(self) -> None:
        """Every manifest parses, and the Service selects the Deployment's pods (needs PyYAML)."""
        try:
            import yaml
        except ImportError:
            raise SkipTest("PyYAML is not installed; the project does not depend on it")
        docs = {}
        named = {}
        for name, text in self.k8s_text().items():
            for doc in yaml.safe_load_all(text):
                self.assertIn("apiVersion", doc, name)
                named[(doc["kind"], doc["metadata"]["name"])] = doc
                if doc["metadata"]["name"] == "gateway" or doc["kind"] not in ("Deployment", "Service"):
                    docs[doc["kind"]] = doc
        # Each Service (the gateway's, the handover store's) selects its Deployment's pods.
        for (kind, name), service in named.items():
            if kind == "Service":
                labels = named[("Deployment", name)]["spec"]["template"]["metadata"]["labels"]
                for key, value in service["spec"]["selector"].items():
                    self.assertEqual(labels.get(key), value, name)
        pod = docs["Deployment"]["spec"]["template"]
        container = pod["spec"]["containers"][0]
        self.assertEqual(container["readinessProbe"]["httpGet"]["path"], "/readyz")
        self.assertEqual(container["livenessProbe"]["httpGet"]["path"], "/healthz")
        self.assertEqual(docs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"],
                         docs["Deployment"]["metadata"]["name"])
