"""Tests for gateway.config: every problem names its key."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.testing import load_config
from gateway.errors import ConfigError
from gateway.testing import configure


class ConfigTests(SynchronousTestCase):
    """Validation of the TOML file and the environment."""

    def assertConfigError(self, key: str, config: dict | None = None, env: dict | None = None,
                          contains: str = "") -> ConfigError:
        with self.assertRaises(ConfigError) as cm:
            configure(config, env)
        self.assertEqual(cm.exception.key, key)
        self.assertIn(contains, str(cm.exception))
        return cm.exception

    def test_defaults(self) -> None:
        """No file: every default; a working Voice Agent gateway with the default chain."""
        c = configure().config
        self.assertEqual((c.mode, c.chain[0], c.chain[-1]), ("agent", "auth", "close_codes"))
        self.assertEqual(c.upstream_url, "wss://agent.deepgram.com/v1/agent/converse")

    def test_missing_key(self) -> None:
        """DEEPGRAM_API_KEY is required."""
        with self.assertRaises(ConfigError) as cm:
            load_config(None, {})
        self.assertEqual(cm.exception.key, "DEEPGRAM_API_KEY")

    def test_unknown_key_suggests(self) -> None:
        """A typo names the full key path and the nearest valid key."""
        self.assertConfigError("gateway.mdoe", {"gateway": {"mdoe": "listen"}}, contains="did you mean 'mode'")
        self.assertConfigError("keepalive.interval", {"keepalive": {"interval": 3}}, contains="interval_s")

    def test_unknown_section(self) -> None:
        """An unknown section is refused."""
        self.assertConfigError("deepgrm", {"deepgrm": {}}, contains="[deepgram]")

    def test_wrong_types(self) -> None:
        """Wrong types say what was expected and what came."""
        self.assertConfigError("gateway.mode", {"gateway": {"mode": 3}}, contains="expected a string, got integer")
        self.assertConfigError("gateway.mode", {"gateway": {"mode": "shout"}}, contains="'agent', 'listen'")
        self.assertConfigError("keepalive.interval_s", {"keepalive": {"interval_s": "5"}}, contains="number")
        self.assertConfigError("gateway.chain[1]", {"gateway": {"chain": ["auth", 2, "settings"]}})

    def test_chain(self) -> None:
        """auth and settings are required; unknown plugins are named."""
        self.assertConfigError("gateway.chain", {"gateway": {"chain": ["settings"]}}, contains="'auth'")
        self.assertConfigError("gateway.chain", {"gateway": {"chain": ["auth", "settings", "keepalvie"]}},
                               contains="did you mean 'keepalive'")

    def test_env_overrides_urls(self) -> None:
        """DEEPGRAM_AGENT_URL and DEEPGRAM_LISTEN_URL override, and must be ws(s) URLs."""
        c = configure(env={"DEEPGRAM_AGENT_URL": "ws://127.0.0.1:9/v1/agent/converse"}).config
        self.assertEqual(c.agent_url, "ws://127.0.0.1:9/v1/agent/converse")
        self.assertConfigError("DEEPGRAM_LISTEN_URL", env={"DEEPGRAM_LISTEN_URL": "http://x"})

    def test_signature_settings(self) -> None:
        """TWILIO_AUTH_TOKEN needs GATEWAY_PUBLIC_URL; require_signature needs the token."""
        self.assertConfigError("GATEWAY_PUBLIC_URL", env={"TWILIO_AUTH_TOKEN": "t"})
        self.assertConfigError("TWILIO_AUTH_TOKEN", {"gateway": {"require_signature": True}})
        c = configure(env={"TWILIO_AUTH_TOKEN": "t", "GATEWAY_PUBLIC_URL": "https://gw.example.com:8443/p/"}).config
        self.assertEqual(c.stream_url, "wss://gw.example.com:8443/p/twilio")

    def test_settings_audio_is_derived(self) -> None:
        """A hand-typed audio section or encoding is refused."""
        self.assertConfigError(
            "settings.template.audio",
            {"settings": {"template": {"audio": {}, "agent": {"listen": {}, "think": {}, "speak": {}}}}},
        )
        self.assertConfigError("settings.listen.encoding", {"settings": {"listen": {"encoding": "mulaw"}}})

    def test_secrets_not_in_repr(self) -> None:
        """Secrets never appear in the config's repr."""
        c = configure(env={"TWILIO_AUTH_TOKEN": "tw-secret", "GATEWAY_PUBLIC_URL": "https://x",
                           "GATEWAY_TOKEN_SECRET": "tok-secret"}).config
        text = repr(c)
        for secret in ("tw-secret", "tok-secret", "test-deepgram-key"):
            self.assertNotIn(secret, text)
