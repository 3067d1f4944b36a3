"""Tests for drop-in plugin discovery: a good one runs, a broken one stops start-up naming it."""

from __future__ import annotations

import os
import sys

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.call import Call
from gateway.errors import PluginLoadError
from gateway.events import Audio, DeepgramEvent, Handshake, StreamStarted
from gateway.testing import FakeCallerLeg, FakeConnector, FakeUpstreamLeg, configure

HERE = os.path.dirname(os.path.abspath(__file__))


def dropins(name: str) -> str:
    return os.path.join(HERE, "dropins", name)


class DropinTests(SynchronousTestCase):
    """Drop-ins from configured directories."""

    def setUp(self) -> None:
        import gateway.dropins

        saved = list(gateway.dropins.__path__)
        modules = set(sys.modules)

        def restore() -> None:
            gateway.dropins.__path__[:] = saved
            for name in set(sys.modules) - modules:
                if name.startswith("gateway.dropins."):
                    del sys.modules[name]

        self.addCleanup(restore)

    def load(self, *dirs: str, chain: list | None = None):
        return configure({"gateway": {"dropin_dirs": [dropins(d) for d in dirs],
                                      "chain": chain or ["auth", "settings", "loud"]}})

    def test_good_dropin_runs_in_the_chain(self) -> None:
        """A drop-in named in the chain sees the caller's audio in its place."""
        configured = self.load("good")
        self.assertEqual([name for name, _ in configured.stages], ["auth", "settings", "loud"])
        connector = FakeConnector()
        call = Call(configured, "twilio", Clock(), connector)
        call.caller_handshake(Handshake("twilio", "/twilio", {}, ""))
        call.caller_opened(FakeCallerLeg())
        call.from_caller(StreamStarted("MZ1"))
        up = FakeUpstreamLeg()
        call.upstream_opened(up, "r")
        call.from_upstream(DeepgramEvent("SettingsApplied", {"type": "SettingsApplied"}))
        call.caller_audio(Audio(b"ab"))
        self.assertEqual(up.audio(), b"abab")
        self.assertEqual(call.info.counters[("loud_frames", ())], 1)

    def test_dropin_section_validated(self) -> None:
        """A drop-in's own section is validated like any other."""
        from gateway.errors import ConfigError

        with self.assertRaises(ConfigError) as cm:
            configure({"gateway": {"dropin_dirs": [dropins("good")], "chain": ["auth", "settings", "loud"]},
                       "loud": {"factr": 3}})
        self.assertEqual(cm.exception.key, "loud.factr")

    def assertLoadError(self, directory: str, file: str, contains: str) -> None:
        with self.assertRaises(PluginLoadError) as cm:
            self.load(directory, chain=["auth", "settings"])
        self.assertEqual(os.path.basename(cm.exception.path), file)
        self.assertIn(contains, str(cm.exception))

    def test_import_error(self) -> None:
        """An import error names the file and the error."""
        self.assertLoadError("broken", "broken.py", "ModuleNotFoundError")

    def test_no_plugin(self) -> None:
        """A .py file defining no plugin names the file."""
        self.assertLoadError("empty", "nothing.py", "defines no module-level object")

    def test_missing_iplugin(self) -> None:
        """Providing IStreamPlugin but not IPlugin is called out."""
        self.assertLoadError("halfway", "half.py", "not twisted.plugin.IPlugin")

    def test_duplicate_name(self) -> None:
        """Two plugins with one name: the second file is named, with the first."""
        with self.assertRaises(PluginLoadError) as cm:
            self.load("good", "dup", chain=["auth", "settings"])
        self.assertIn("already defined in", str(cm.exception))

    def test_missing_directory(self) -> None:
        """A drop-in directory that does not exist."""
        with self.assertRaises(PluginLoadError):
            self.load("nope", chain=["auth", "settings"])
