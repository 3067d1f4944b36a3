"""
Running a benchmark: the gateway (a real ``twistd``) or the floor (`gateway.bench.floor`), the
peer and the load generator as processes; steps of K calls; the figures of each step.

One step: reset the peer, open K calls at ``ramp_rate`` calls/s, wait until every call receives
agent audio, warm up, then measure a fixed window (gateway CPU from /proc, the load side's own CPU
and scheduling lateness, one-way latencies), then read VmRSS, stop both audio sources, let frames in
flight land, count what was sent against what arrived (for the whole step, not just the window),
and end every call with Twilio ``stop`` (the gateway closes Deepgram, then the caller, with 1000).
"""

from __future__ import annotations

import ctypes
import json
import os
import pickle
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Sequence

from gateway.bench import procstat
from gateway.bench import sampling
from gateway.bench.loop import percentiles
from gateway.config import DEFAULT_CHAIN

__all__ = ["Bench", "MODES", "TARGETS", "StepResult", "gateway_config"]

#: mode -> (transcoding?, TLS on the Deepgram leg?)
MODES = {"relay": (False, False), "transcode": (True, False), "tls": (False, True),
         "tls-transcode": (True, True)}
LISTENING = re.compile(r"gateway listening on [0-9.]+:(\d+)")
GATEWAY_CPU, LOAD_CPU = 0, 1
#: What a run measures on the gateway's CPU: the gateway, or the floor relay on the same traffic.
TARGETS = ("gateway", "floor")
SATURATED_CPU_PCT = 85.0
SATURATED_LATENESS_MS = 4.0
GATEWAY_SATURATED_PCT = 97.0

StepResult = dict


def _child_setup(cpu: int | None) -> Any:
    def setup() -> None:
        # Die with the orchestrator (PR_SET_PDEATHSIG = 1), so that nothing outlives a killed run.
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
        except OSError:
            pass
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
    return setup


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root
    return env


class Worker:
    """A load-side process spoken to in JSON lines."""

    def __init__(self, name: str, argv: list[str], cpu: int | None, stderr: Any = None,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=stderr, env={**_env(), **(env or {})},
                                     preexec_fn=_child_setup(cpu))
        self._buf = b""
        self.hello = self.read(30)

    def read(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.name}: no answer within {timeout} s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise RuntimeError(f"{self.name} exited ({self.proc.wait()})")
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def send(self, cmd: dict) -> None:
        self.proc.stdin.write(json.dumps(cmd).encode() + b"\n")
        self.proc.stdin.flush()

    def ask(self, cmd: dict, timeout: float = 30.0) -> dict:
        self.send(cmd)
        return self.read(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.ask({"cmd": "exit"}, 5)
            except (OSError, TimeoutError, RuntimeError, ValueError):
                pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def make_certificates(directory: str) -> tuple[str, str, str]:
    """A test CA and a server certificate for 127.0.0.1 / localhost: (ca.pem, cert.pem, key.pem)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gateway-bench test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = [os.path.join(directory, n) for n in ("ca.pem", "cert.pem", "key.pem")]
    pem = serialization.Encoding.PEM
    with open(paths[0], "wb") as f:
        f.write(ca.public_bytes(pem))
    with open(paths[1], "wb") as f:
        f.write(cert.public_bytes(pem))
    with open(paths[2], "wb") as f:
        f.write(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return paths[0], paths[1], paths[2]


#: The gateway's configuration in the bench: the default one (idle timer, caller pings, every
#: default stage), with only ``max_calls`` raised so that admission never refuses a step.
CONFIG = """\
# written by gateway-bench: the default configuration, max_calls raised
[gateway]
max_calls = 100000
{gateway_extra}{chain}
"""

#: Transcoding modes: Deepgram's side in linear16 16 kHz. Transcoded audio carries no stamps, so
#: the peer learns which call a connection is from the Settings greeting, which the load
#: generator's ``customParameters.greeting`` ("bench-<index>") sets (once per call, at start).
TRANSCODE = """
[settings]
parameters = { greeting = "agent.greeting" }

[transcoder]
deepgram_input = "linear16/16000"
deepgram_output = "linear16/16000"
"""

#: ``--legacy-config``: the bench's configuration before issue 21 (issue 8's and 15's figures):
#: no caller idle timer, the greeting mapped in every mode, a 5 s drain.
LEGACY_GATEWAY = "drain_deadline_s = 5.0\n"
LEGACY = """
[settings]
parameters = { greeting = "agent.greeting" }

[keepalive]
caller_idle_timeout_s = 0
"""
LEGACY_TRANSCODE = """
[transcoder]
deepgram_input = "linear16/16000"
deepgram_output = "linear16/16000"
"""

#: Appended with --coalesce-ms: the coalesce stage after keepalive (see plugins/coalesce.py).
COALESCE = """
[coalesce]
ms = {ms}
"""
_CHAIN = list(DEFAULT_CHAIN)
CHAIN_WITH_COALESCE = "chain = {}\n".format(json.dumps(
    _CHAIN[:_CHAIN.index("keepalive") + 1] + ["coalesce"] + _CHAIN[_CHAIN.index("keepalive") + 1:]))


#: ``--chain-extra``: the built-in plugins, off by default, that the bench can add to the chain,
#: and the section each gets (record writes into the bench's directory).
CHAIN_EXTRAS = {"record": '\n[record]\ndirectory = "{dir}/recordings"\n', "redact": ""}


def _chain_line(coalesce_ms: int, chain_extra: Sequence[str]) -> str:
    """The ``chain =`` line: the default chain plus coalesce and the extras, each where the
    built-in registry (``plugins.BUILTINS``, in chain order) puts it; "" for the default."""
    if not chain_extra:
        return CHAIN_WITH_COALESCE if coalesce_ms else ""
    from plugins import BUILTINS

    wanted = set(DEFAULT_CHAIN) | set(chain_extra) | ({"coalesce"} if coalesce_ms else set())
    return "chain = {}\n".format(json.dumps([p.name for p in BUILTINS if p.name in wanted]))


def gateway_config(transcode: bool, legacy: bool = False, coalesce_ms: int = 0,
                   chain_extra: Sequence[str] = (), directory: str = ".") -> str:
    """The TOML the bench's gateway runs with (see `CONFIG`)."""
    text = CONFIG.format(gateway_extra=LEGACY_GATEWAY if legacy else "",
                         chain=_chain_line(coalesce_ms, chain_extra))
    for name in chain_extra:
        text += CHAIN_EXTRAS[name].format(dir=directory)
    if legacy:
        text += LEGACY + (LEGACY_TRANSCODE if transcode else "")
    elif transcode:
        text += TRANSCODE
    if coalesce_ms:
        text += COALESCE.format(ms=coalesce_ms)
    return text


class Bench:
    """
    One mode: a gateway (or, with ``target="floor"``, the floor relay), a peer and a load
    generator, kept up across that mode's steps. ``mask`` ("random" or "zero") and ``burst`` shape
    the load generator's traffic; ``legacy_config`` runs the gateway with the bench's old config;
    ``chain_extra`` adds plugins to its chain (`CHAIN_EXTRAS`).
    """

    def __init__(self, mode: str, pin: bool = False, profile: str | None = None,
                 workdir: str | None = None, say: Any = None, coalesce_ms: int = 0,
                 sample_dir: str | None = None, py_spy: str | None = None,
                 target: str = "gateway", mask: str = "random", burst: bool = False,
                 legacy_config: bool = False, chain_extra: Sequence[str] = ()) -> None:
        self.mode = mode
        self.chain_extra = tuple(chain_extra)
        self.target = target
        self.mask = mask
        self.burst = burst
        self.legacy_config = legacy_config
        self.floor: Worker | None = None
        self._floor_errors = 0
        self.coalesce_ms = coalesce_ms
        self.sample_dir = sample_dir
        self.py_spy = py_spy
        self._samples = 0
        self.transcode, self.tls = MODES[mode]
        self.pin = pin
        self.profile = profile
        self.say = say or (lambda text: None)
        self._own_dir = workdir is None
        self.dir = workdir or tempfile.mkdtemp(prefix="gateway-bench-")
        os.makedirs(self.dir, exist_ok=True)
        self.gateway: subprocess.Popen | None = None
        self.peer: Worker | None = None
        self.loadgen: Worker | None = None
        self.baseline_rss_kb = 0
        self._next_index = 0

    # -- processes
    def start(self) -> None:
        load_cpu = LOAD_CPU if self.pin else None
        py = sys.executable
        peer_argv = [py, "-m", "gateway.bench.peer"]
        env = {}
        if self.tls:
            ca, cert, key = make_certificates(self.dir)
            peer_argv += ["--cert", cert, "--key", key]
            env["SSL_CERT_FILE"] = ca
        self.peer = Worker("peer", peer_argv, load_cpu)
        port = self.peer.hello["port"]
        scheme = "wss" if self.tls else "ws"
        if self.target == "floor":
            self._start_floor(f"{scheme}://127.0.0.1:{port}/v1/agent/converse", env)
            return
        config = os.path.join(self.dir, f"gateway-{self.mode}.toml")
        with open(config, "w") as f:
            f.write(gateway_config(self.transcode, self.legacy_config, self.coalesce_ms,
                                   self.chain_extra, self.dir))
        env.update(DEEPGRAM_API_KEY="bench-key",
                   DEEPGRAM_AGENT_URL=f"{scheme}://127.0.0.1:{port}/v1/agent/converse",
                   DEEPGRAM_LISTEN_URL=f"{scheme}://127.0.0.1:{port}/v1/listen")
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        argv = [twistd, "-n", "--pidfile="]
        if self.profile:
            argv += [f"--profile={self.profile}", "--profiler=cprofile", "--savestats"]
        argv += ["gateway", "--config", config, "--port", "tcp:0:interface=127.0.0.1"]
        self.log_path = os.path.join(self.dir, f"gateway-{self.mode}.log")
        log = open(self.log_path, "wb")
        self.gateway = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                        env={**_env(), **env},
                                        preexec_fn=_child_setup(GATEWAY_CPU if self.pin else None))
        log.close()
        deadline = time.monotonic() + 60
        while True:
            with open(self.log_path, errors="replace") as f:
                match = LISTENING.search(f.read())
            if match:
                self.gateway_port = int(match.group(1))
                break
            if self.gateway.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the gateway did not start:\n" + self.gateway_log()[-3000:])
            time.sleep(0.1)
        self._prime()

    def _start_floor(self, upstream: str, env: dict[str, str]) -> None:
        """The floor relay where the gateway would run (same CPU, same peer, same load)."""
        argv = [sys.executable, "-m", "gateway.bench.floor", "--upstream", upstream]
        if self.transcode:
            argv.append("--transcode")
        self.log_path = os.path.join(self.dir, f"floor-{self.mode}.log")
        with open(self.log_path, "wb") as log:
            self.floor = Worker("floor", argv, GATEWAY_CPU if self.pin else None, stderr=log,
                                env=env)
        self.gateway = self.floor.proc
        self.gateway_port = self.floor.hello["port"]
        self._prime()

    def _prime(self) -> None:
        self.loadgen = Worker("loadgen", [sys.executable, "-m", "gateway.bench.loadgen"],
                              LOAD_CPU if self.pin else None)
        # A primer call pair, so that what the first call imports or builds is in the baseline.
        primer = self.run_step(2, warmup_s=0.5, window_s=0.5, primer=True)
        if primer["failed"] or primer["ready"] < 2:
            raise RuntimeError(f"primer calls failed: {primer['errors']}\n" + self.gateway_log()[-3000:])
        time.sleep(1.0)
        self.baseline_rss_kb = procstat.rss_kb(self.gateway.pid)
        self.say(f"[{self.mode}] {self.target} pid {self.gateway.pid} on port {self.gateway_port}, "
                 f"idle RSS {self.baseline_rss_kb} kB")

    def gateway_log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def close(self) -> dict:
        """Stop everything; returns what the gateway's shutdown left (exit code, log errors)."""
        out: dict = {}
        for worker in (self.loadgen, self.peer, self.floor):
            if worker is not None:
                worker.stop()
        if self.floor is not None:
            out["gateway_exit"] = self.floor.proc.returncode
        if self.gateway is not None and self.gateway.poll() is None:
            self.gateway.send_signal(signal.SIGTERM)
            try:
                out["gateway_exit"] = self.gateway.wait(30)
            except subprocess.TimeoutExpired:
                self.gateway.kill()
                out["gateway_exit"] = self.gateway.wait()
        log = self.gateway_log()
        out["gateway_tracebacks"] = log.count("Traceback")
        if self._own_dir and not self.profile:
            shutil.rmtree(self.dir, ignore_errors=True)
        return out

    # -- one step
    def run_step(self, calls: int, warmup_s: float = 3.0, window_s: float = 20.0,
                 ramp_rate: float = 100.0, primer: bool = False) -> StepResult:
        joined = self.transcode
        pid = self.gateway.pid
        first = self._next_index
        self._next_index += calls
        self.peer.ask({"cmd": "reset", "joined": joined, "in_unit": 640, "out_unit": 640,
                       "burst": self.burst})
        self.loadgen.send({"cmd": "start", "calls": calls, "host": "127.0.0.1",
                           "port": self.gateway_port, "joined": joined, "ramp_rate": ramp_rate,
                           "first_index": first, "timeout_s": calls / ramp_rate + 20,
                           "mask": self.mask, "burst": self.burst})
        ready = self.loadgen.read(calls / ramp_rate + 40)
        result: StepResult = {"mode": self.mode, "target": self.target, "calls": calls,
                              "ready": ready["ready"], "failed": ready["failed"],
                              "errors": list(ready["errors"])}
        time.sleep(warmup_s)
        us0 = procstat.user_system_seconds(pid)
        cpu0, sched0, w0 = sum(us0), procstat.schedstat_seconds(pid), time.monotonic_ns()
        self.loadgen.ask({"cmd": "mark"})
        self.peer.ask({"cmd": "mark"})
        sampler = None
        if self.sample_dir and self.py_spy and not primer and self.target == "gateway":
            self._samples += 1
            name = os.path.join(self.sample_dir, f"{self.mode}-{calls}-{self._samples}")
            sampler = sampling.Sampler(self.py_spy, pid, window_s, name + ".raw",
                                       preexec_fn=_child_setup(LOAD_CPU if self.pin else None))
        time.sleep(window_s)
        lg = self.loadgen.ask({"cmd": "endwindow"})
        pr = self.peer.ask({"cmd": "endwindow"})
        us1 = procstat.user_system_seconds(pid)
        cpu1, sched1, w1 = sum(us1), procstat.schedstat_seconds(pid), time.monotonic_ns()
        rss = procstat.rss_kb(pid)
        wall = (w1 - w0) / 1e9
        if sampler is not None:
            problem = sampler.wait()
            if problem:
                self.say(f"[{self.mode}] no sample at {calls} calls: {problem}")
            else:
                with open(name + ".txt", "w") as f:
                    f.write(sampling.render(sampling.summarise(sampler.path)))
                self.say(f"[{self.mode}] py-spy sample of {calls} calls in {name}.txt")
        # Stop both audio sources, let what is in flight land, then count everything.
        self.peer.ask({"cmd": "quiesce"})
        self.loadgen.ask({"cmd": "quiesce"})
        # A saturated gateway holds a backlog: wait (up to 60 s) until the counts stop moving.
        time.sleep(0.5)
        lt, pt, last, settle_deadline = None, None, None, time.monotonic() + 60
        while True:
            lt = self.loadgen.ask({"cmd": "totals"}, 60)
            pt = self.peer.ask({"cmd": "totals"}, 60)
            seen = (sum(c["out"]["unique"] + c["out_units"] for c in lt["calls"].values()),
                    sum(c["in"]["unique"] + c["in_units"] for c in pt["calls"].values()))
            if seen == last or time.monotonic() > settle_deadline:
                break
            last = seen
            time.sleep(0.5)
        latency_in, latency_out = pr["in_latency"], lg["out_latency"]
        if joined:
            latency_in, latency_out = self._joined_latency(w0, w1)
        self.loadgen.send({"cmd": "stop", "timeout_s": 15})
        closed = self.loadgen.read(30)
        deadline = time.monotonic() + 10
        status = self.peer.ask({"cmd": "status"})
        while status["open"] and time.monotonic() < deadline:
            time.sleep(0.1)
            status = self.peer.ask({"cmd": "status"})
        time.sleep(0.2)
        result.update(self._counts(lt, pt, joined))
        load_cpu = lg["cpu_pct"] + pr["cpu_pct"]
        lateness = max(lg["lateness"]["p99"] or 0.0, pr["lateness"]["p99"] or 0.0)
        cpu_s = sched1 - sched0
        result.update({
            "window_s": round(wall, 3),
            "gateway_cpu_s": round(cpu_s, 4),
            "gateway_cpu_s_stat": round(cpu1 - cpu0, 3),
            # the kernel's share (system calls: recv, send, epoll; loopback TCP on both ends)
            "gateway_cpu_user_s": round(us1[0] - us0[0], 3),
            "gateway_cpu_system_s": round(us1[1] - us0[1], 3),
            "gateway_cpu_pct": round(100 * cpu_s / wall, 2),
            "cpu_ms_per_call_s": round(1000 * cpu_s / (calls * wall), 3),
            "rss_kb": rss,
            "baseline_rss_kb": self.baseline_rss_kb,
            "rss_kb_per_call": round((rss - self.baseline_rss_kb) / calls, 2) if self.baseline_rss_kb else None,
            "latency_in_ms": latency_in,
            "latency_out_ms": latency_out,
            "load_cpu_pct": {"loadgen": round(lg["cpu_pct"], 2), "peer": round(pr["cpu_pct"], 2),
                             "total": round(load_cpu, 2)},
            "load_lateness_ms": {"loadgen": lg["lateness"], "peer": pr["lateness"]},
            "teardown": {"closed": closed.get("closed"), "forced": closed.get("forced"),
                         "peer_open_after": status["open"]},
        })
        errors = result["errors"] + lt["errors"] + pt["errors"] + closed.get("errors", [])
        result["error_count"] = (lt["error_count"] + pt["error_count"] + closed.get("error_count", 0)
                                 + len(ready["errors"]))
        if self.floor is not None:
            fs = self.floor.ask({"cmd": "status"})
            new = fs["error_count"] - self._floor_errors
            if new:
                errors += fs["errors"][-new:]
            result["error_count"] += new
            self._floor_errors = fs["error_count"]
        result["errors"] = errors[:20]
        self.peer.ask({"cmd": "reset"})
        per_core = SATURATED_CPU_PCT if self.pin else SATURATED_CPU_PCT * 2
        flags = []
        if load_cpu > per_core or max(lg["cpu_pct"], pr["cpu_pct"]) > SATURATED_CPU_PCT:
            flags.append("load side saturated (CPU)")
        if lateness > SATURATED_LATENESS_MS:
            flags.append(f"load side late (p99 {lateness:.1f} ms)")
        if result["ready"] < calls or result["failed"]:
            flags.append("calls failed")
        result["flags"] = flags
        result["valid"] = not flags
        # Not a fault of the measurement, but it changes what the figures mean: a saturated
        # gateway queues (latency grows) and its CPU per call-second is only 1 core / K.
        result["gateway_saturated"] = result["gateway_cpu_pct"] >= GATEWAY_SATURATED_PCT
        return result

    def _counts(self, lt: dict, pt: dict, joined: bool) -> dict:
        lcalls = {int(k): v for k, v in lt["calls"].items()}
        pcalls = {int(k): v for k, v in pt["calls"].items()}
        inbound = {"sent": 0, "received": 0, "lost": 0, "duplicated": 0, "reordered": 0,
                   "misrouted": 0}
        outbound = dict(inbound)
        for index, lc in lcalls.items():
            pc = pcalls.get(index)
            inbound["sent"] += lc["in_sent"]
            if pc is None:
                inbound["lost"] += lc["in_sent"]
                continue
            outbound["sent"] += pc["out_sent"]
            if joined:
                got_in, got_out = pc["in_units"], lc["out_units"]
                inbound["received"] += got_in
                outbound["received"] += got_out
                inbound["lost"] += max(0, lc["in_sent"] - got_in)
                inbound["duplicated"] += max(0, got_in - lc["in_sent"])
                outbound["lost"] += max(0, pc["out_sent"] - got_out)
                outbound["duplicated"] += max(0, got_out - pc["out_sent"])
            else:
                for (side, track, sent) in ((inbound, pc["in"], lc["in_sent"]),
                                            (outbound, lc["out"], pc["out_sent"])):
                    side["received"] += track["unique"] + track["dup"]
                    side["lost"] += max(0, sent - track["unique"])
                    side["duplicated"] += track["dup"]
                    side["reordered"] += track["reorder"]
                    side["misrouted"] += track["misrouted"] + track["bad"]
        if joined:
            inbound["reordered"] = outbound["reordered"] = None   # not observable: see BENCHMARKS.md
        return {"inbound": inbound, "outbound": outbound,
                "method": "frame index (counts)" if joined else "stamped payloads"}

    def _joined_latency(self, w0: int, w1: int) -> tuple[dict, dict]:
        """Transcoding: the n-th 20 ms out of the gateway is the n-th 20 ms in, per call."""
        lpath = os.path.join(self.dir, "loadgen.pickle")
        ppath = os.path.join(self.dir, "peer.pickle")
        self.loadgen.ask({"cmd": "dump", "path": lpath}, 60)
        self.peer.ask({"cmd": "dump", "path": ppath}, 60)
        with open(lpath, "rb") as f:
            lg = pickle.load(f)
        with open(ppath, "rb") as f:
            pr = pickle.load(f)
        os.unlink(lpath)
        os.unlink(ppath)
        import numpy as np
        ins, outs = [], []
        for index, (in_send, out_recv) in lg.items():
            if index not in pr:
                continue
            in_recv, out_send = pr[index]
            for sent, got, bucket in ((in_send, in_recv, ins), (out_send, out_recv, outs)):
                n = min(len(sent), len(got))
                s = np.frombuffer(sent, dtype=np.int64)[:n]
                g = np.frombuffer(got, dtype=np.int64)[:n]
                keep = (s >= w0) & (s <= w1)
                bucket.append(g[keep] - s[keep])
        def summary(chunks: list) -> dict:
            data = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)
            return percentiles(data.tolist())
        return summary(ins), summary(outs)


def median_step(runs: list[StepResult]) -> StepResult:
    """The median of each figure over repeated runs of one step, with the spread."""
    def med(get: Any) -> Any:
        values = [v for v in (get(r) for r in runs) if v is not None]
        return round(statistics.median(values), 3) if values else None

    def spread(get: Any) -> Any:
        values = [v for v in (get(r) for r in runs) if v is not None]
        return [round(min(values), 3), round(max(values), 3)] if values else None

    first = runs[0]
    out = {"mode": first["mode"], "calls": first["calls"], "repeats": len(runs)}
    for key, get in {
        "gateway_cpu_pct": lambda r: r["gateway_cpu_pct"],
        "cpu_ms_per_call_s": lambda r: r["cpu_ms_per_call_s"],
        "rss_kb_per_call": lambda r: r["rss_kb_per_call"],
        "in_p50_ms": lambda r: r["latency_in_ms"]["p50"],
        "in_p99_ms": lambda r: r["latency_in_ms"]["p99"],
        "out_p50_ms": lambda r: r["latency_out_ms"]["p50"],
        "out_p99_ms": lambda r: r["latency_out_ms"]["p99"],
        "load_cpu_pct": lambda r: r["load_cpu_pct"]["total"],
        "kernel_pct_of_cpu": lambda r: (round(100 * r["gateway_cpu_system_s"] / r["gateway_cpu_s_stat"], 1)
                                        if r.get("gateway_cpu_s_stat") else None),
    }.items():
        out[key] = med(get)
        out[key + "_range"] = spread(get)
    for direction in ("inbound", "outbound"):
        out[direction] = {k: (sum(r[direction][k] for r in runs) if first[direction][k] is not None else None)
                          for k in first[direction]}
    out["method"] = first["method"]
    out["flags"] = sorted({f for r in runs for f in r["flags"]})
    out["valid"] = all(r["valid"] for r in runs)
    out["gateway_saturated"] = any(r.get("gateway_saturated") for r in runs)
    out["error_count"] = sum(r["error_count"] for r in runs)
    return out


#: The figures compared with the floor's (step medians).
_VERSUS = ("cpu_ms_per_call_s", "rss_kb_per_call", "in_p50_ms", "in_p99_ms", "out_p50_ms",
           "out_p99_ms")


def versus_floor(runs: list[StepResult], floor_runs: list[StepResult], step: dict,
                 floor_step: dict) -> dict:
    """
    The gateway's figures over the floor's, from the same minutes: the ratio of the medians, and
    CPU per call run by run (each gateway run with the floor run next to it). A saturated gateway
    (or floor) shows only 1 core / K as its CPU per call: the ratio is then not its cost
    (``saturated``).
    """
    def ratio(a: Any, b: Any) -> Any:
        return round(a / b, 2) if a is not None and b else None

    out: dict[str, Any] = {key: ratio(step[key], floor_step[key]) for key in _VERSUS}
    out["cpu_ms_per_call_s_runs"] = [ratio(g["cpu_ms_per_call_s"], f["cpu_ms_per_call_s"])
                                     for g, f in zip(runs, floor_runs)]
    out["saturated"] = bool(step.get("gateway_saturated") or floor_step.get("gateway_saturated"))
    return out
