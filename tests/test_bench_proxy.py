"""
gateway-bench --mode tls-haproxy: the bench runs deploy/haproxy-deepgram-tls.cfg with only its
addresses, CA and server name swapped, so the deployment file keeps the shape the bench measures
and the settings a real Deepgram endpoint needs.
"""

from __future__ import annotations

import subprocess

from twisted.trial.unittest import SynchronousTestCase

from gateway.bench.proxy import TEMPLATE, find_haproxy, render_config
from gateway.testing import temp_path


def deployment() -> str:
    with open(TEMPLATE) as f:
        return f.read()


class DeploymentFileTests(SynchronousTestCase):
    """deploy/haproxy-deepgram-tls.cfg: TLS to api.deepgram.com:443, verified."""

    def server_line(self, text: str) -> str:
        [line] = [ln for ln in text.splitlines() if ln.strip().startswith("server ")]
        return line

    def test_verified_tls_to_deepgram(self) -> None:
        """The server is api.deepgram.com:443 over TLS, its certificate verified against the
        system CA bundle, with SNI and the name checked; Host rewritten to Deepgram's."""
        text = deployment()
        words = self.server_line(text).split()
        self.assertEqual(words[2], "api.deepgram.com:443")
        for needle in ("ssl", "verify required", "ca-file @system-ca", "sni str(api.deepgram.com)",
                       "verifyhost api.deepgram.com"):
            self.assertIn(needle, " ".join(words[3:]))
        self.assertIn("http-request set-header Host api.deepgram.com", text)
        self.assertIn("bind 127.0.0.1:8765", text)

    def test_rendered_for_the_bench(self) -> None:
        """Rendered: listening on the bench's port, the peer as server, the test CA, localhost
        as the name; verification stays required."""
        text = render_config(deployment(), 4001, 4002, "/tmp/ca.pem")
        line = self.server_line(text)
        self.assertIn("server deepgram 127.0.0.1:4002 ssl verify required ca-file /tmp/ca.pem "
                      "sni str(localhost) verifyhost localhost", line)
        self.assertIn("bind 127.0.0.1:4001", text)
        self.assertIn("set-header Host localhost", text)
        self.assertNotIn("deepgram.com", text.split("\nglobal", 1)[1])

    def test_missing_line_refused(self) -> None:
        """A deployment file without verification is not a shape the bench runs."""
        with self.assertRaises(ValueError) as caught:
            render_config(deployment().replace("verify required", "verify none"), 1, 2, "ca")
        self.assertIn("verify required", str(caught.exception))

    def test_haproxy_accepts_both(self) -> None:
        """haproxy -c accepts the deployment file and the bench's rendering (skipped without
        haproxy)."""
        haproxy = find_haproxy()
        if haproxy is None:
            raise self.skipTest("no haproxy")
        bench = temp_path(self, "bench.cfg")
        with open(bench, "w") as f:
            f.write(render_config(deployment(), 4001, 4002, "/etc/ssl/certs/ca-certificates.crt"))
        for path in (TEMPLATE, bench):
            done = subprocess.run([haproxy, "-c", "-f", path], capture_output=True, text=True,
                                  timeout=30)
            self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
