"""
Running a benchmark: the measured processes (one or ``procs`` real ``twistd`` gateways, or as many
floor relays, `gateway.bench.floor`; with ``--mode tls-haproxy`` also a HAProxy), the peer and
the load generator as processes, kept up across a mode's steps (`Bench`). What one step does is
`gateway.bench.step`; how the processes are started, `gateway.bench.workers`; the gateway's
configuration, `gateway.bench.configs`; the figures over repeats, `gateway.bench.summary`.

Several processes (``procs``) listen on one port with ``SO_REUSEPORT`` (the gateway's
``reuseport:`` endpoint; the floor's own listener), so the kernel spreads the calls over them;
their CPU time and memory are summed. With ``pin``, process *i* runs on CPU *i* (modulo the CPUs)
and the load side on CPU 1, as with one process.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Sequence

from gateway.bench import procstat
from gateway.bench.certificates import make_certificates
from gateway.bench.configs import CHAIN_EXTRAS, MODES, gateway_config
from gateway.bench.proxy import HAProxy, find_haproxy
from gateway.bench.step import run_step
from gateway.bench.summary import StepResult, median_step, versus_floor
from gateway.bench.workers import (GATEWAY_CPU, LOAD_CPU, Worker, child_env, child_setup,
                                   free_port)

# gateway_config, median_step, versus_floor and StepResult are re-exported: callers (the CLI,
# gateway.bench.hotpath, tests) import them from here.
__all__ = ["Bench", "MODES", "TARGETS", "CHAIN_EXTRAS", "StepResult", "gateway_config",
           "median_step", "versus_floor"]

LISTENING = re.compile(r"gateway listening on [0-9.]+:(\d+)")
#: What a run measures on the gateway's CPU: the gateway, or the floor relay on the same traffic.
TARGETS = ("gateway", "floor")


class Bench:
    """
    One mode: ``procs`` gateways (or, with ``target="floor"``, floor relays), a peer and a load
    generator, kept up across that mode's steps. ``mask`` ("random" or "zero") and ``burst`` shape
    the load generator's traffic; ``legacy_config`` runs the gateway with the bench's old config;
    ``chain_extra`` adds plugins to its chain (`CHAIN_EXTRAS`); ``nice`` is every child's
    niceness (`gateway.bench.workers.child_setup`).
    """

    def __init__(self, mode: str, pin: bool = False, profile: str | None = None,
                 workdir: str | None = None, say: Callable[[str], None] | None = None,
                 coalesce_ms: int = 0, sample_dir: str | None = None, py_spy: str | None = None,
                 target: str = "gateway", mask: str = "random", burst: bool = False,
                 legacy_config: bool = False, chain_extra: Sequence[str] = (),
                 procs: int = 1, nice: int = 0) -> None:
        self.mode = mode
        self.chain_extra = tuple(chain_extra)
        self.target = target
        self.mask = mask
        self.burst = burst
        self.legacy_config = legacy_config
        self.procs = procs
        self.nice = nice
        self.coalesce_ms = coalesce_ms
        self.sample_dir = sample_dir
        self.py_spy = py_spy
        self._samples = 0
        self.transcode, self.tls, self.offload = MODES[mode]
        self.pin = pin
        self.profile = profile
        self.say: Callable[[str], None] = say or (lambda text: None)
        self._own_dir = workdir is None
        self.dir = workdir or tempfile.mkdtemp(prefix="gateway-bench-")
        os.makedirs(self.dir, exist_ok=True)
        self.gateways: list[subprocess.Popen] = []
        self.floors: list[Worker] = []
        self._floor_errors: dict[int, int] = {}
        self.proxy: HAProxy | None = None
        self.peer: Worker | None = None
        self.loadgen: Worker | None = None
        self.baseline_rss_kb = 0
        self.gateway_port = 0
        self.log_paths: list[str] = []
        self._next_index = 0

    # -- what a step needs
    def workers(self) -> tuple[Worker, Worker]:
        """The peer and the load generator (started)."""
        if self.peer is None or self.loadgen is None:
            raise RuntimeError("the bench is not started")
        return self.peer, self.loadgen

    def measured_pids(self) -> list[int]:
        """The processes whose CPU and memory are the figures: gateways or floors, and HAProxy."""
        pids = [p.pid for p in self.gateways] + [w.pid for w in self.floors]
        return pids + ([self.proxy.pid] if self.proxy is not None else [])

    def take_indices(self, calls: int) -> int:
        """The first of ``calls`` fresh call indices (a call's index is unique per bench)."""
        first = self._next_index
        self._next_index += calls
        return first

    def next_sample(self) -> int:
        self._samples += 1
        return self._samples

    def floor_errors(self) -> list[str]:
        """The floors' errors since the last call."""
        new: list[str] = []
        for worker in self.floors:
            status = worker.ask({"cmd": "status"})
            count = status["error_count"] - self._floor_errors.get(worker.pid, 0)
            if count:
                new += status["errors"][-count:]
            self._floor_errors[worker.pid] = status["error_count"]
        return new

    def _cpu(self, i: int) -> int | None:
        return (GATEWAY_CPU + i) % (os.cpu_count() or 1) if self.pin else None

    # -- processes
    def start(self) -> None:
        load_cpu = LOAD_CPU if self.pin else None
        py = sys.executable
        peer_argv = [py, "-m", "gateway.bench.peer"]
        env: dict[str, str] = {}
        ca = ""
        if self.tls:
            ca, cert, key = make_certificates(self.dir)
            peer_argv += ["--cert", cert, "--key", key]
            env["SSL_CERT_FILE"] = ca
        self.peer = Worker("peer", peer_argv, load_cpu, nice=self.nice)
        port = self.peer.hello["port"]
        scheme = "wss" if self.tls else "ws"
        if self.offload:
            haproxy = find_haproxy()
            if haproxy is None:
                raise RuntimeError("--mode tls-haproxy needs haproxy (apt-get install haproxy)")
            self.proxy = HAProxy(haproxy, self.dir, port, ca, self._cpu(0), self.nice)
            scheme, port = "ws", self.proxy.port
        upstream = f"{scheme}://127.0.0.1:{port}"
        if self.target == "floor":
            self._start_floors(upstream + "/v1/agent/converse", env)
        else:
            self._start_gateways(upstream, env)
        self._prime()

    def _start_gateways(self, upstream: str, env: dict[str, str]) -> None:
        config = os.path.join(self.dir, f"gateway-{self.mode}.toml")
        with open(config, "w") as f:
            f.write(gateway_config(self.transcode, self.legacy_config, self.coalesce_ms,
                                   self.chain_extra, self.dir))
        env.update(DEEPGRAM_API_KEY="bench-key",
                   DEEPGRAM_AGENT_URL=f"{upstream}/v1/agent/converse",
                   DEEPGRAM_LISTEN_URL=f"{upstream}/v1/listen")
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        endpoint = "tcp:0:interface=127.0.0.1"
        if self.procs > 1:
            endpoint = f"reuseport:{free_port()}:interface=127.0.0.1"
        for i in range(self.procs):
            argv = [twistd, "-n", "--pidfile="]
            if self.profile and i == 0:
                argv += [f"--profile={self.profile}", "--profiler=cprofile", "--savestats"]
            argv += ["gateway", "--config", config, "--port", endpoint]
            log_path = os.path.join(self.dir, f"gateway-{self.mode}-{i}.log")
            self.log_paths.append(log_path)
            with open(log_path, "wb") as log:
                self.gateways.append(subprocess.Popen(
                    argv, stdout=log, stderr=subprocess.STDOUT, env=child_env(env),
                    preexec_fn=child_setup(self._cpu(i), self.nice)))
        for proc, log_path in zip(self.gateways, self.log_paths):
            self.gateway_port = self._listening(proc, log_path)

    def _listening(self, proc: subprocess.Popen, log_path: str) -> int:
        deadline = time.monotonic() + 60
        while True:
            with open(log_path, errors="replace") as f:
                match = LISTENING.search(f.read())
            if match:
                return int(match.group(1))
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the gateway did not start:\n" + self.gateway_log()[-3000:])
            time.sleep(0.1)

    def _start_floors(self, upstream: str, env: dict[str, str]) -> None:
        """The floor relay where the gateway would run (same CPU, same peer, same load)."""
        argv = [sys.executable, "-m", "gateway.bench.floor", "--upstream", upstream]
        if self.transcode:
            argv.append("--transcode")
        if self.procs > 1:
            argv += ["--reuseport", str(free_port())]
        for i in range(self.procs):
            log_path = os.path.join(self.dir, f"floor-{self.mode}-{i}.log")
            self.log_paths.append(log_path)
            with open(log_path, "wb") as log:
                self.floors.append(Worker("floor", argv, self._cpu(i), stderr=log, env=env,
                                          nice=self.nice))
        self.gateway_port = self.floors[0].hello["port"]

    def _prime(self) -> None:
        self.loadgen = Worker("loadgen", [sys.executable, "-m", "gateway.bench.loadgen"],
                              LOAD_CPU if self.pin else None, nice=self.nice)
        # Primer calls (a pair per process, the kernel's spread permitting), so that what the
        # first call imports or builds is in the baseline.
        primer = self.run_step(2 * self.procs, warmup_s=0.5, window_s=0.5, primer=True)
        if primer["failed"] or primer["ready"] < 2 * self.procs:
            raise RuntimeError(f"primer calls failed: {primer['errors']}\n" + self.gateway_log()[-3000:])
        time.sleep(1.0)
        self.baseline_rss_kb = sum(procstat.rss_kb(pid) for pid in self.measured_pids())
        pids = " ".join(str(p) for p in self.measured_pids())
        self.say(f"[{self.mode}] {self.target} pid {pids} on port {self.gateway_port}, "
                 f"idle RSS {self.baseline_rss_kb} kB")

    def gateway_log(self) -> str:
        text = ""
        for path in self.log_paths:
            try:
                with open(path, errors="replace") as f:
                    text += f.read()
            except OSError:
                pass
        return text + (self.proxy.log() if self.proxy is not None else "")

    def close(self) -> dict:
        """Stop everything; returns what the shutdown left (exit codes, tracebacks in the logs)."""
        out: dict[str, Any] = {}
        for worker in (self.loadgen, self.peer, *self.floors):
            if worker is not None:
                worker.stop()
        exits = [w.proc.returncode for w in self.floors]
        for proc in self.gateways:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.gateways:
            try:
                exits.append(proc.wait(30))
            except subprocess.TimeoutExpired:
                proc.kill()
                exits.append(proc.wait())
        # One figure per run, as before several processes: the worst exit status.
        out["gateway_exit"] = max(exits, key=lambda code: (code != 0, abs(code or 0))) if exits else None
        if self.proxy is not None:
            out["proxy_exit"] = self.proxy.stop()
        out["gateway_tracebacks"] = self.gateway_log().count("Traceback")
        if self._own_dir and not self.profile:
            shutil.rmtree(self.dir, ignore_errors=True)
        return out

    # -- one step
    def run_step(self, calls: int, warmup_s: float = 3.0, window_s: float = 20.0,
                 ramp_rate: float = 100.0, primer: bool = False) -> StepResult:
        """One step of ``calls`` calls (`gateway.bench.step.run_step`)."""
        return run_step(self, calls, warmup_s, window_s, ramp_rate, primer)
