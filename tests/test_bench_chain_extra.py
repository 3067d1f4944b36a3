"""gateway-bench --chain-extra: the bench's gateway config with extra built-in plugins in the chain."""

from __future__ import annotations

import contextlib
import io
import os

from twisted.trial.unittest import SynchronousTestCase

from gateway.bench.cli import main
from gateway.bench.orchestrate import gateway_config
from gateway.config import DEFAULT_CHAIN
from gateway.testing import load_config
from gateway.testing import temp_path


class ChainExtraTests(SynchronousTestCase):
    """The extras go where the built-in registry puts them, with the sections they need."""

    def load(self, text: str) -> object:
        path = temp_path(self, "gateway.toml")
        with open(path, "w") as f:
            f.write(text)
        return load_config(path, {"DEEPGRAM_API_KEY": "k"})

    def test_default_unchanged(self) -> None:
        """No extras: the default chain, as before."""
        self.assertEqual(self.load(gateway_config(False)).config.chain, DEFAULT_CHAIN)

    def test_record(self) -> None:
        """record: after empty_frames, recording under the bench's directory."""
        directory = os.path.dirname(temp_path(self))
        configured = self.load(gateway_config(False, chain_extra=["record"], directory=directory))
        chain = list(DEFAULT_CHAIN)
        chain.insert(chain.index("empty_frames") + 1, "record")
        self.assertEqual(list(configured.config.chain), chain)
        self.assertEqual(dict(configured.stages)["record"].options.directory, os.path.join(directory, "recordings"))

    def test_with_coalesce_and_redact(self) -> None:
        """Together with --coalesce-ms: coalesce after keepalive, redact last."""
        chain = self.load(gateway_config(True, coalesce_ms=40, chain_extra=["record", "redact"],
                                         directory=os.path.dirname(temp_path(self)))).config.chain
        self.assertEqual(chain[-1], "redact")
        self.assertEqual(chain[chain.index("keepalive") + 1], "coalesce")
        self.assertEqual(chain[chain.index("empty_frames") + 1], "record")

    def test_unknown_refused(self) -> None:
        """An extra the bench cannot configure is a usage error (status 2), named."""
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            self.assertEqual(main(["--chain-extra", "live_events"]), 2)
        self.assertIn("--chain-extra takes record, redact, got 'live_events'", err.getvalue())
