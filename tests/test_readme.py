"""The README documents every diagnosis code and every configuration key."""

from __future__ import annotations

import os
import re

from twisted.trial.unittest import SynchronousTestCase

from gateway.diagnostics import DIAGNOSES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class DocumentationTests(SynchronousTestCase):
    """Docs that must not drift from the code."""

    def test_every_diagnosis_in_readme(self) -> None:
        """Each diagnosis code has a row in the README's table."""
        with open(os.path.join(ROOT, "README.md")) as f:
            readme = f.read()
        for code, entry in DIAGNOSES.items():
            self.assertIn(f"| `{code}` |", readme)

    def test_example_config_is_valid_and_complete(self) -> None:
        """deploy/gateway.example.toml loads, and sets every key the gateway reads."""
        from gateway.config import Section, load_config

        path = os.path.join(ROOT, "deploy", "gateway.example.toml")
        env = {"DEEPGRAM_API_KEY": "k", "TWILIO_AUTH_TOKEN": "t", "GATEWAY_PUBLIC_URL": "https://gw.example.com"}
        seen: dict[str, set] = {}
        original = Section._get

        def recording(self, name, *args, **kwargs):
            seen.setdefault(self.path, set()).add(name)
            return original(self, name, *args, **kwargs)

        Section._get = recording
        try:
            load_config(path, env)
        finally:
            Section._get = original
        with open(path) as f:
            text = f.read()
        for section, keys in seen.items():
            for key in keys:
                if section == "" or key in ("template",):
                    continue
                self.assertTrue(re.search(rf"^#? ?{re.escape(key)} =|^\[{re.escape(section)}\.{re.escape(key)}\]",
                                          text, re.M) or f"[{section}.{key}]" in text,
                                f"{section}.{key} is not documented in the example")
