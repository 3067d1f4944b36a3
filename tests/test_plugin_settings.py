"""
Tests for the settings plugin (when the Deepgram session is opened and configured, the schema
checks on the template and the per-call values, where the template comes from), each driven
through a recording context and a Clock.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.codecs.formats import LINEAR16_16K
from gateway.events import Audio, DeepgramEvent, StreamStarted, UpstreamOpened
from gateway.testing import RecordingContext, call_info, configure
from tests.stages import stage_for


class SettingsStageTests(SynchronousTestCase):
    """settings."""

    def test_agent_flow(self) -> None:
        """Open upstream on start; Settings only after Welcome; SettingsApplied stops the wait."""
        ctx = RecordingContext()
        stage, _ = stage_for("settings", ctx, {"settings": {"parameters": {"greeting": "agent.greeting"}}})
        r = stage.routes()
        self.assertNotIn(Audio, r.inbound, "the call holds audio, not this stage")
        started = StreamStarted("MZ1", custom_parameters={"greeting": "Hi there", "other": "x"})
        self.assertIsNone(r.inbound[StreamStarted](started))
        self.assertEqual(ctx.inbound, [started])
        self.assertEqual(ctx.opened, ["wss://agent.deepgram.com/v1/agent/converse"])
        r.outbound[UpstreamOpened](UpstreamOpened("req", "agent"))
        self.assertEqual(len(ctx.inbound), 1, "nothing before Welcome")
        r.outbound[DeepgramEvent](DeepgramEvent("Welcome", {"type": "Welcome", "request_id": "req"}))
        settings = ctx.inbound[1].message
        self.assertEqual(settings["agent"]["greeting"], "Hi there")
        self.assertEqual(settings["audio"]["input"], {"encoding": "mulaw", "sample_rate": 8000})
        r.outbound[DeepgramEvent](DeepgramEvent("Welcome", {"type": "Welcome"}))
        self.assertEqual(len(ctx.inbound), 2, "one Settings per session")
        r.outbound[DeepgramEvent](DeepgramEvent("SettingsApplied", {}))
        self.assertEqual(ctx.clock.getDelayedCalls(), [])
        self.assertEqual((ctx.failed, ctx.ended), ([], []))

    def test_no_welcome(self) -> None:
        """No Welcome within welcome_timeout_s: the session is given up (retryable), no Settings sent."""
        ctx = RecordingContext()
        stage, _ = stage_for("settings", ctx, {"settings": {"welcome_timeout_s": 2}})
        r = stage.routes()
        r.inbound[StreamStarted](StreamStarted("MZ1"))
        r.outbound[UpstreamOpened](UpstreamOpened("req", "agent"))
        ctx.clock.advance(2)
        self.assertEqual([d.code for d in ctx.failed], ["DG_NO_WELCOME"])
        self.assertTrue(ctx.failed[0].retryable)
        self.assertEqual(len(ctx.inbound), 1)

    def test_applied_timeout(self) -> None:
        """No SettingsApplied within applied_timeout_s: the session is given up (retryable)."""
        ctx = RecordingContext()
        stage, _ = stage_for("settings", ctx, {"settings": {"applied_timeout_s": 3}})
        r = stage.routes()
        r.inbound[StreamStarted](StreamStarted("MZ1"))
        r.outbound[UpstreamOpened](UpstreamOpened("req", "agent"))
        r.outbound[DeepgramEvent](DeepgramEvent("Welcome", {"type": "Welcome"}))
        ctx.clock.advance(3)
        self.assertEqual([d.code for d in ctx.failed], ["DG_SETUP_TIMEOUT"])
        self.assertTrue(ctx.failed[0].retryable)
        self.assertEqual(ctx.ended, [])

    def test_transcoded_formats_are_declared(self) -> None:
        """The audio section is what the transcoder sends and expects."""
        from gateway.codecs.formats import LINEAR16_24K

        ctx = RecordingContext(call=call_info(upstream_input=LINEAR16_16K, upstream_output=LINEAR16_24K))
        stage, _ = stage_for("settings", ctx)
        r = stage.routes()
        r.inbound[StreamStarted](StreamStarted("MZ1"))
        r.outbound[UpstreamOpened](UpstreamOpened("req", "agent"))
        r.outbound[DeepgramEvent](DeepgramEvent("Welcome", {"type": "Welcome"}))
        audio = ctx.inbound[1].message["audio"]
        self.assertEqual(audio["input"], {"encoding": "linear16", "sample_rate": 16000})
        self.assertEqual(audio["output"], {"encoding": "linear16", "sample_rate": 24000, "container": "none"})


class SettingsSchemaTests(SynchronousTestCase):
    """The template and the per-call Settings are checked against the schema, naming the field."""

    def assertField(self, template: dict, field: str, contains: str = "") -> None:
        from gateway.errors import ConfigError

        with self.assertRaises(ConfigError) as cm:
            configure({"settings": {"template": template}})
        self.assertEqual(cm.exception.key, field)
        self.assertIn(contains, cm.exception.message)

    def test_schema(self) -> None:
        """Types, required fields, unknown keys, fallback lists."""
        from gateway.codecs.deepgram import DEFAULT_SETTINGS
        import copy

        def agent(**changes):
            t = copy.deepcopy(dict(DEFAULT_SETTINGS))
            t["agent"].update(changes)
            return t

        self.assertField(agent(greeting=5), "settings.template.agent.greeting", "expected string, got integer")
        self.assertField(agent(speek={}), "settings.template.agent.speek", "unknown field")
        # An inline template merges onto the default (merge_template): a list replaces, a table
        # with another provider type replaces the default's provider.
        self.assertField(agent(think=[{"prompt": "x"}]), "settings.template.agent.think[0].provider", "required")
        self.assertField(agent(listen={"provider": {"type": "deepgram", "model": "nova-3", "endpointing": 300}}),
                         "settings.template.agent.listen.provider.endpointing", "unknown field")
        self.assertField(agent(think={"provider": {"type": "anthropic"}}),
                         "settings.template.agent.think.provider.model", "required")
        self.assertField(agent(think=[{"provider": {"type": "open_ai", "model": "gpt-4o-mini"}},
                                      {"provider": {"type": 3}}]),
                         "settings.template.agent.think[1].provider.type")
        self.assertField({"agent": "uuid", "tagz": []}, "settings.template.tagz", "unknown field")
        configure({"settings": {"template": agent(think=[{"provider": {"type": "open_ai", "model": "gpt-4o-mini"}},
                                                         {"provider": {"type": "anthropic",
                                                                       "model": "claude-3-5-haiku-latest"}}])}})

    def test_per_call_value_type_checked(self) -> None:
        """A per-call value that breaks the schema ends the call before Deepgram is contacted."""
        ctx = RecordingContext()
        stage, _ = stage_for("settings", ctx, {"settings": {"parameters": {"t": "agent.think.provider.temperature"}}})
        self.assertIsNone(stage.routes().inbound[StreamStarted](StreamStarted("MZ1", custom_parameters={"t": "hot"})))
        self.assertEqual(ctx.inbound, [])
        self.assertEqual(ctx.ended[0].code, "SESSION_SETUP_FAILED")


class SettingsSourcesTests(SynchronousTestCase):
    """Where the template comes from, and the listen parameters' types."""

    def test_template_file(self) -> None:
        """A JSON file named by template_file is the template; its errors name the file's field."""
        import json

        from gateway.codecs.deepgram import DEFAULT_SETTINGS
        from gateway.errors import ConfigError
        from gateway.testing import temp_path

        path = temp_path(self, "settings.json")
        template = json.loads(json.dumps(DEFAULT_SETTINGS))
        template["agent"]["greeting"] = "From the file."
        with open(path, "w") as f:
            json.dump(template, f)
        ctx = RecordingContext()
        stage, _ = stage_for("settings", ctx, {"settings": {"template_file": path}})
        r = stage.routes()
        r.inbound[StreamStarted](StreamStarted("MZ1"))
        r.outbound[UpstreamOpened](UpstreamOpened("req", "agent"))
        r.outbound[DeepgramEvent](DeepgramEvent("Welcome", {"type": "Welcome"}))
        self.assertEqual(ctx.inbound[1].message["agent"]["greeting"], "From the file.")
        template["agent"]["greeting"] = ["not", "a", "string"]
        with open(path, "w") as f:
            json.dump(template, f)
        with self.assertRaises(ConfigError) as cm:
            configure({"settings": {"template_file": path}})
        self.assertEqual(cm.exception.key, "settings.template_file.agent.greeting")
        with open(path, "w") as f:
            f.write("{nope")
        with self.assertRaises(ConfigError) as cm:
            configure({"settings": {"template_file": path}})
        self.assertIn("not valid JSON", str(cm.exception))

    def test_listen_types(self) -> None:
        """Booleans, integers and the language code are checked at start-up."""
        from gateway.errors import ConfigError

        for listen, key in [({"interim_results": "yes"}, "settings.listen.interim_results"),
                            ({"utterance_end_ms": "soon"}, "settings.listen.utterance_end_ms"),
                            ({"foo_bar": 1}, "settings.listen.foo_bar"),
                            ({"endpointing": True}, "settings.listen.endpointing"),
                            ({"language": "english"}, "settings.listen.language")]:
            with self.assertRaises(ConfigError) as cm:
                configure({"gateway": {"mode": "listen"}, "settings": {"listen": listen}})
            self.assertEqual(cm.exception.key, key)
        configure({"gateway": {"mode": "listen"}, "settings": {"listen": {"endpointing": False, "keyterm": "order"}}})
