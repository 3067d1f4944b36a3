"""
``python -m gateway.bench.hotpath``: the per-frame harness relays every frame both ways, with the
lean dispatch the service installs or (``--stock-dispatch``) Twisted's own, over ws:// or
(``--mode tls``) wss:// to the harness, and says which masker the fast lane used. Run in a child
process: it installs the epoll reactor and drives it by hand.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def hotpath(*args: str) -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT)
    done = subprocess.run([sys.executable, "-m", "gateway.bench.hotpath", "--frames", "20", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


class HotpathTests(SynchronousTestCase):
    """Every frame relayed both ways, lean or stock dispatch, the lane's masker named."""

    def test_relays_every_frame(self) -> None:
        """Two calls, 20 frames each: 40 frames reach each side, nothing reported missing."""
        for extra in ((), ("--stock-dispatch",)):
            result = hotpath("--calls", "2", *extra)
            self.assertNotIn("error", result)
            self.assertEqual((result["inbound_reads"], result["outbound_frames"]), (40, 40))
            self.assertEqual(result["stock_dispatch"], bool(extra))
            self.assertIn(result["lane_masker"], ("websockets.speedups", "python"))

    def test_relays_every_frame_over_tls(self) -> None:
        """--mode tls: the Deepgram leg over wss:// to the harness (the gateway on its own TLS
        layer, the floor on ssl sockets), every frame relayed both ways."""
        for target, stack in (("gateway", "gateway.legs.tls"), ("floor", "ssl.SSLSocket (the floor)")):
            result = hotpath("--calls", "2", "--mode", "tls", "--target", target)
            self.assertNotIn("error", result)
            self.assertEqual((result["inbound_reads"], result["outbound_frames"]), (40, 40))
            self.assertEqual(result["deepgram_tls"], stack)
