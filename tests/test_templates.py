"""
A partial ``[settings.template]`` deep-merges onto the built-in one (`merge_template`), and
``gateway check-config --print`` shows what Deepgram would receive.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os

from twisted.trial.unittest import SynchronousTestCase

from gateway.cli import main
from gateway.codecs.deepgram import DEFAULT_SETTINGS, merge_template
from gateway.errors import ConfigError
from gateway.testing import TEST_API_KEY, configure, temp_path


def _settings_template(configured: object) -> dict:
    """The template the settings stage of ``configured`` will send."""
    [factory] = [f for name, f in configured.stages if name == "settings"]
    return factory.options.template


class MergeTemplateTests(SynchronousTestCase):
    """The rules: tables merge, a new provider type replaces, lists and scalars replace."""

    def test_tables_merge(self) -> None:
        """Changing one leaf keeps every other key of the default."""
        merged = merge_template(DEFAULT_SETTINGS, {"agent": {"think": {"prompt": "Be brief."}}})
        expected = copy.deepcopy(dict(DEFAULT_SETTINGS))
        expected["agent"]["think"]["prompt"] = "Be brief."
        self.assertEqual(merged, expected)

    def test_scalars_and_lists_replace(self) -> None:
        """A scalar or a list replaces the default's value, whatever its type; lists never concatenate."""
        default = {"a": {"x": 1, "items": [1, 2]}, "b": {"c": 1}}
        self.assertEqual(merge_template(default, {"a": {"items": [3]}, "b": "flat"}),
                         {"a": {"x": 1, "items": [3]}, "b": "flat"})
        self.assertEqual(merge_template(default, {"a": {"x": {"deep": True}}}),
                         {"a": {"x": {"deep": True}, "items": [1, 2]}, "b": {"c": 1}})

    def test_new_keys_are_added(self) -> None:
        """A key only in the partial is added as it is."""
        merged = merge_template(DEFAULT_SETTINGS, {"tags": ["line-7"], "agent": {"speak": {"endpoint": {"url": "u"}}}})
        self.assertEqual(merged["tags"], ["line-7"])
        self.assertEqual(merged["agent"]["speak"]["endpoint"], {"url": "u"})
        self.assertEqual(merged["agent"]["speak"]["provider"], DEFAULT_SETTINGS["agent"]["speak"]["provider"])

    def test_another_provider_type_replaces(self) -> None:
        """A table with another ``type`` replaces the default's: the old provider's model is not kept."""
        partial = {"agent": {"speak": {"provider": {"type": "eleven_labs", "model_id": "eleven_turbo_v2_5"}}}}
        merged = merge_template(DEFAULT_SETTINGS, partial)
        self.assertEqual(merged["agent"]["speak"]["provider"], {"type": "eleven_labs", "model_id": "eleven_turbo_v2_5"})
        same = merge_template(DEFAULT_SETTINGS, {"agent": {"speak": {"provider": {"type": "deepgram",
                                                                                  "model": "aura-2-orion-en"}}}})
        self.assertEqual(same["agent"]["speak"]["provider"], {"type": "deepgram", "model": "aura-2-orion-en"})

    def test_pure(self) -> None:
        """Neither argument changes, and the result shares no table with them."""
        before = copy.deepcopy(dict(DEFAULT_SETTINGS))
        partial = {"agent": {"think": {"functions": [{"name": "f"}]}}}
        merged = merge_template(DEFAULT_SETTINGS, partial)
        merged["agent"]["think"]["functions"][0]["name"] = "changed"
        merged["agent"]["listen"]["provider"]["model"] = "changed"
        self.assertEqual(dict(DEFAULT_SETTINGS), before)
        self.assertEqual(partial, {"agent": {"think": {"functions": [{"name": "f"}]}}})


class PartialTemplateTests(SynchronousTestCase):
    """The issue's case: a one-line prompt change in TOML."""

    def test_prompt_only(self) -> None:
        """[settings.template.agent.think] prompt = "..." loads and keeps the built-in rest."""
        configured = configure({"settings": {"template": {"agent": {"think": {"prompt": "You are ACME's line."}}}}})
        template = _settings_template(configured)
        self.assertEqual(template["agent"]["think"]["prompt"], "You are ACME's line.")
        self.assertEqual(template["agent"]["listen"], DEFAULT_SETTINGS["agent"]["listen"])
        self.assertEqual(template["agent"]["think"]["provider"], DEFAULT_SETTINGS["agent"]["think"]["provider"])

    def test_merged_template_is_still_checked(self) -> None:
        """A wrong field in a partial template is refused, named by its full path."""
        with self.assertRaises(ConfigError) as caught:
            configure({"settings": {"template": {"agent": {"think": {"promt": "x"}}}}})
        self.assertIn("settings.template.agent.think.promt", str(caught.exception))

    def test_template_file_is_used_whole(self) -> None:
        """A template_file is not merged: a partial one misses required fields."""
        path = temp_path(self, "partial.json")
        with open(path, "w") as f:
            json.dump({"agent": {"think": {"prompt": "x"}}}, f)
        with self.assertRaises(ConfigError) as caught:
            configure({"settings": {"template_file": path}})
        self.assertIn("required field missing", str(caught.exception))


class CheckConfigPrintTests(SynchronousTestCase):
    """``gateway check-config --print``."""

    def check_config(self, toml: str, *args: str) -> tuple[int, str]:
        path = temp_path(self, "gateway.toml")
        with open(path, "w") as f:
            f.write(toml)
        out = io.StringIO()
        env = {"DEEPGRAM_API_KEY": TEST_API_KEY}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            with contextlib.redirect_stdout(out):
                status = main(["check-config", "--config", path, "--print", *args])
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        return status, out.getvalue()

    def test_agent_settings(self) -> None:
        """Agent mode: the effective Settings as JSON, merged template, derived audio and functions."""
        status, out = self.check_config('[settings.template.agent.think]\nprompt = "Be brief."\n')
        self.assertEqual(status, 0, out)
        header = "effective Settings for a Twilio stream (before per-call [settings.parameters] values):\n"
        self.assertIn(header, out)
        settings = json.loads(out.split(header, 1)[1])
        self.assertEqual(settings["type"], "Settings")
        self.assertEqual(settings["agent"]["think"]["prompt"], "Be brief.")
        self.assertEqual(settings["agent"]["greeting"], DEFAULT_SETTINGS["agent"]["greeting"])
        self.assertEqual(settings["audio"]["input"], {"encoding": "mulaw", "sample_rate": 8000})
        self.assertIn("end_call", [f["name"] for f in settings["agent"]["think"]["functions"]])

    def test_client_leg(self) -> None:
        """--leg client: the formats a /client call would declare."""
        status, out = self.check_config("", "--leg", "client")
        self.assertEqual(status, 0, out)
        settings = json.loads(out.split("values):\n", 1)[1])
        self.assertEqual(settings["audio"]["input"], {"encoding": "linear16", "sample_rate": 16000})

    def test_listen_url(self) -> None:
        """Listen mode: the query URL, lists as repeated parameters and the derived encoding."""
        status, out = self.check_config('[gateway]\nmode = "listen"\n[settings.listen]\nkeyterm = ["refund", "order"]\n')
        self.assertEqual(status, 0, out)
        url = out.strip().splitlines()[-1]
        self.assertTrue(url.startswith("wss://api.deepgram.com/v1/listen?model=nova-3"), url)
        self.assertIn("keyterm=refund&keyterm=order", url)
        self.assertTrue(url.endswith("encoding=mulaw&sample_rate=8000&channels=1"), url)
