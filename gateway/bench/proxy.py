"""
``--mode tls-haproxy``: TLS to the Deepgram side offloaded to a real HAProxy, in the shape of
``deploy/haproxy-deepgram-tls.cfg`` (gateway -> ws://127.0.0.1 -> HAProxy -> wss:// peer).

The bench runs that very file with only what must change for its test peer swapped: the listening
port, the server's address (the peer's), the CA file (the bench's test CA instead of the system
bundle) and the name sent as SNI, checked in the certificate and put in ``Host`` (``localhost``
instead of ``api.deepgram.com``). HAProxy runs on the measured CPU and its CPU time counts in the
per-call cost.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from typing import IO

from gateway.bench.workers import child_setup, free_port

__all__ = ["HAProxy", "find_haproxy", "render_config", "TEMPLATE"]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEMPLATE = os.path.join(ROOT, "deploy", "haproxy-deepgram-tls.cfg")
#: What the deployment file names, and what the bench puts instead.
_LISTEN = "bind 127.0.0.1:8765"
_SERVER = "api.deepgram.com:443"
_CA = "ca-file @system-ca"
_NAME = "api.deepgram.com"


def find_haproxy() -> str | None:
    """The haproxy binary (PATH, then /usr/sbin), or None."""
    return shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if os.access("/usr/sbin/haproxy", os.X_OK) else None)


def render_config(template: str, listen_port: int, peer_port: int, ca_file: str,
                  name: str = "localhost") -> str:
    """The deployment file with the bench's addresses, CA and server name (see the docstring);
    raises ``ValueError`` when the file no longer has a line the bench relies on."""
    for needle in (_LISTEN, _SERVER, _CA, f"sni str({_NAME})", f"verifyhost {_NAME}",
                   "verify required", f"set-header Host {_NAME}"):
        if needle not in template:
            raise ValueError(f"{TEMPLATE} has no {needle!r}: the bench cannot run its shape")
    text = template.replace(_LISTEN, f"bind 127.0.0.1:{listen_port}")
    text = text.replace(_SERVER, f"127.0.0.1:{peer_port}")
    text = text.replace(_CA, f"ca-file {ca_file}")
    return text.replace(_NAME, name)


class HAProxy:
    """A foreground HAProxy (``-db``) from `render_config`, pinned to ``cpu`` when given."""

    def __init__(self, binary: str, directory: str, peer_port: int, ca_file: str,
                 cpu: int | None, nice: int = 0) -> None:
        with open(TEMPLATE) as f:
            template = f.read()
        self.port = free_port()
        self.config_path = os.path.join(directory, "haproxy-deepgram-tls.cfg")
        with open(self.config_path, "w") as f:
            f.write(render_config(template, self.port, peer_port, ca_file))
        self.log_path = os.path.join(directory, "haproxy.log")
        log: IO[bytes]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([binary, "-db", "-f", self.config_path], stdout=log,
                                         stderr=subprocess.STDOUT, preexec_fn=child_setup(cpu, nice))
        deadline = time.monotonic() + 10
        while not self._listening():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("haproxy did not start:\n" + self.log()[-2000:])
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self) -> int | None:
        """Stop it (SIGUSR1, a soft stop; then SIGKILL after 5 s); its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
