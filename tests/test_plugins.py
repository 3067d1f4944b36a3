"""
Tests for the built-in plugins, each driven through a recording context and a Clock.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.codecs.formats import LINEAR16_16K, MULAW_8K
from gateway.codecs.signatures import compute_signature
from gateway.section import Section
from gateway.events import (
    Audio,
    CallerError,
    ClientHello,
    DeepgramEvent,
    Handshake,
    StreamStarted,
    UpstreamClosed,
    UpstreamMessage,
    UpstreamOpened,
)
from gateway.testing import RecordingContext, call_info, configure
from gateway.tokens import mint_token

SECRET_ENV = {"GATEWAY_TOKEN_SECRET": "k" * 32}


def stage_for(name: str, ctx: RecordingContext, config: dict | None = None, env: dict | None = None):
    configured = configure(config, {**SECRET_ENV, **(env or {})})
    factory = dict(configured.stages)[name]
    return factory(ctx), configured.config


class AuthStageTests(SynchronousTestCase):
    """auth."""

    def client(self) -> tuple:
        ctx = RecordingContext(call=call_info(leg="client", caller_format=LINEAR16_16K))
        stage, config = stage_for("auth", ctx)
        routes = stage.routes().inbound
        routes[Handshake](Handshake("client", "/client", {}, ""))
        return ctx, stage, routes, config

    def test_client_timeout(self) -> None:
        """No token in 10 s: AUTH_TIMEOUT error then 4001."""
        ctx, stage, routes, _ = self.client()
        ctx.clock.advance(9.9)
        self.assertEqual(ctx.ended, [])
        ctx.clock.advance(0.1)
        self.assertEqual(ctx.outbound, [CallerError("AUTH_TIMEOUT", 'no {"token": ...} message in time')])
        self.assertEqual([(d.code, d.caller_close) for d in ctx.ended], [("AUTH_TIMEOUT", 4001)])

    def test_client_invalid_first_message(self) -> None:
        """A first message that is not a token: INVALID_AUTH, 4002, timer cancelled."""
        ctx, stage, routes, _ = self.client()
        self.assertIsNone(routes[ClientHello](ClientHello("", problem="not JSON")))
        self.assertEqual([(d.code, d.caller_close) for d in ctx.ended], [("INVALID_AUTH", 4002)])
        self.assertEqual(ctx.clock.getDelayedCalls(), [])

    def test_client_bad_and_expired_token(self) -> None:
        """A forged or expired token: AUTH_FAILED, 4003."""
        for token in ("forged.token", mint_token(b"k" * 32, -1000.0)):
            ctx, stage, routes, _ = self.client()
            self.assertIsNone(routes[ClientHello](ClientHello(token)))
            self.assertEqual([(d.code, d.caller_close) for d in ctx.ended], [("AUTH_FAILED", 4003)])

    def test_client_good_token(self) -> None:
        """A valid token becomes a StreamStarted for linear16 16 kHz with the parameters."""
        ctx, stage, routes, config = self.client()
        token = mint_token(config.token_secret, ctx.clock.seconds())
        started = routes[ClientHello](ClientHello(token, {"greeting": "hi"}))
        self.assertEqual(started, StreamStarted("call-1", media_format=LINEAR16_16K,
                                                custom_parameters={"greeting": "hi"}))
        self.assertEqual(ctx.clock.getDelayedCalls(), [])

    def test_twilio_signature(self) -> None:
        """The signature of the public wss:// URL passes; anything else is refused with 403."""
        env = {"TWILIO_AUTH_TOKEN": "tw", "GATEWAY_PUBLIC_URL": "https://gw.example.com"}
        ctx = RecordingContext()
        stage, _ = stage_for("auth", ctx, env=env)
        on = stage.routes().inbound[Handshake]
        good = compute_signature("tw", "wss://gw.example.com/twilio")
        ok = Handshake("twilio", "/twilio", {"x-twilio-signature": good}, "")
        self.assertIs(on(ok), ok)
        for headers in ({}, {"x-twilio-signature": compute_signature("tw", "https://gw.example.com/twilio")}):
            self.assertIsNone(on(Handshake("twilio", "/twilio", headers, "")))
            self.assertEqual(ctx.refused[-1][:2], (403, "AUTH_FAILED"))
        self.assertEqual(len(ctx.refused), 2)

    def test_twilio_token_parameter(self) -> None:
        """With token_parameter set, start needs a valid token in customParameters."""
        ctx = RecordingContext()
        stage, config = stage_for("auth", ctx, {"auth": {"token_parameter": "token"}})
        on = stage.routes().inbound[StreamStarted]
        self.assertIsNone(on(StreamStarted("MZ1", custom_parameters={})))
        self.assertEqual(ctx.ended[0].code, "AUTH_FAILED")
        good = StreamStarted("MZ1", custom_parameters={"token": mint_token(config.token_secret, 0)})
        self.assertIs(on(good), good)


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


class EmptyFramesStageTests(SynchronousTestCase):
    """empty_frames."""

    def test_drops_by_reason(self) -> None:
        """Empty, bad base64, odd-length linear16 and wrong-track frames are dropped and counted."""
        ctx = RecordingContext(call=call_info(leg="client", caller_format=LINEAR16_16K))
        stage, _ = stage_for("empty_frames", ctx)
        on = stage.routes().inbound[Audio]
        self.assertEqual(on(Audio(b"\x00\x01")), Audio(b"\x00\x01"))
        for frame, reason in [(Audio(b""), "empty"), (Audio(b"", defect="bad_base64"), "bad_base64"),
                              (Audio(b"\x00"), "odd_length"), (Audio(b"\x00\x00", track="outbound"), "wrong_track")]:
            self.assertIsNone(on(frame))
            self.assertEqual(ctx.counted("frames_dropped", reason=reason), 1, reason)

    def test_mulaw_odd_length_passes(self) -> None:
        """One byte is a whole mu-law sample."""
        ctx = RecordingContext(call=call_info(caller_format=MULAW_8K))
        stage, _ = stage_for("empty_frames", ctx)
        self.assertEqual(stage.routes().inbound[Audio](Audio(b"\xff")), Audio(b"\xff"))


class KeepaliveStageTests(SynchronousTestCase):
    """keepalive."""

    def test_agent_keepalive_only_when_idle(self) -> None:
        """KeepAlive every interval_s with no audio sent; none while audio flows."""
        ctx = RecordingContext()
        stage, _ = stage_for("keepalive", ctx, {"keepalive": {"interval_s": 5}})
        stage.routes().outbound[UpstreamOpened](UpstreamOpened("r", "agent"))
        ctx.clock.advance(5)
        self.assertEqual(ctx.inbound, [UpstreamMessage({"type": "KeepAlive"})])
        ctx.call.frames_to_upstream += 250
        ctx.clock.advance(5)
        self.assertEqual(len(ctx.inbound), 1)
        ctx.clock.advance(5)
        self.assertEqual(len(ctx.inbound), 2)
        stage.close()
        self.assertEqual(ctx.clock.getDelayedCalls(), [])

    def test_listen_sends_silence_for_30_seconds(self) -> None:
        """A silent caller on /v1/listen: real silence in the declared encoding, never a gap over 10 s."""
        ctx = RecordingContext(call=call_info(mode="listen"))
        stage, _ = stage_for("keepalive", ctx, {"gateway": {"mode": "listen"}})
        stage.routes().outbound[UpstreamOpened](UpstreamOpened("r", "listen"))
        sent_at = []
        for _ in range(300):
            ctx.clock.advance(0.1)
            while len(sent_at) < len(ctx.inbound):
                event = ctx.inbound[len(sent_at)]
                self.assertEqual(set(event.payload), {0xFF})
                ctx.call.frames_to_upstream += 1
                sent_at.append(ctx.clock.seconds())
        gaps = [b - a for a, b in zip([0.0] + sent_at, sent_at + [30.0])]
        self.assertLess(max(gaps), 10)
        self.assertGreater(len(sent_at), 5)
        stage.close()
        self.assertEqual(ctx.clock.getDelayedCalls(), [])


class CloseCodesStageTests(SynchronousTestCase):
    """close_codes."""

    def test_attaches_diagnosis(self) -> None:
        """A no-status close after INVALID_SETTINGS is diagnosed with the Error and the phase."""
        ctx = RecordingContext()
        ctx.call.last_error = {"type": "Error", "code": "INVALID_SETTINGS", "description": "bad think"}
        stage, _ = stage_for("close_codes", ctx)
        out = stage.routes().outbound[UpstreamClosed](UpstreamClosed(None, None, True, phase="configuring"))
        self.assertEqual((out.diagnosis.code, out.diagnosis.error["code"]),
                         ("DG_SETTINGS_REJECTED", "INVALID_SETTINGS"))


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


class KeepaliveCallerTests(SynchronousTestCase):
    """keepalive towards the caller."""

    def test_idle_caller_ends_the_call(self) -> None:
        """No caller audio for caller_idle_timeout_s ends the call with CALLER_IDLE (4408)."""
        ctx = RecordingContext()
        stage, _ = stage_for("keepalive", ctx, {"keepalive": {"caller_idle_timeout_s": 30}})
        for _ in range(3):
            ctx.call.frames_from_caller += 1500
            ctx.clock.advance(30)
        self.assertEqual(ctx.ended, [])
        ctx.clock.advance(30)
        self.assertEqual([(d.code, d.caller_close) for d in ctx.ended], [("CALLER_IDLE", 4408)])
        stage.close()
        self.assertEqual(ctx.clock.getDelayedCalls(), [])

    def test_ping_options(self) -> None:
        """The caller legs ping at the configured cadence."""
        from gateway.service import Gateway

        configured = configure({"keepalive": {"caller_ping_interval_s": 7, "caller_ping_timeout_s": 3}})
        options = Gateway(configured, None).caller_options()
        self.assertEqual((options["autoPingInterval"], options["autoPingTimeout"]), (7.0, 3.0))
        self.assertFalse(options["webStatus"])


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
