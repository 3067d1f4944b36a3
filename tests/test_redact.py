"""
Tests for gateway.redact: masking by name and by value (issue 19, item 4), and the per-call
debug switch never logging a token, a key or a signature, whatever name it travels under.
"""

from __future__ import annotations

import json

from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from gateway.call import Call
from gateway.codecs.signatures import compute_signature
from gateway.events import ClientHello, Handshake, StreamStarted
from gateway.redact import MASK, SECRETS, SecretRegistry, redact, register_secret
from gateway.testing import FakeCallerLeg, FakeConnector, configure
from gateway.tokens import mint_token

SID = "MZ" + "4" * 32
API_KEY = "dg-key-0123456789abcdef0123456789abcdef"
TWILIO_TOKEN = "twilio-auth-token-0123456789abcdef"
TOKEN_SECRET = "token-secret-" + "x" * 24
GATEWAY_API_KEY = "gateway-api-key-0123456789"
PUBLIC_URL = "https://gw.example.com"
ENV = {"DEEPGRAM_API_KEY": API_KEY, "TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
       "GATEWAY_TOKEN_SECRET": TOKEN_SECRET, "GATEWAY_API_KEY": GATEWAY_API_KEY,
       "GATEWAY_PUBLIC_URL": PUBLIC_URL}


class RegistryTests(SynchronousTestCase):
    """A SecretRegistry masks what it knows, and token-shaped strings, as substrings too."""

    def test_by_value_as_substring(self) -> None:
        """A registered secret is masked inside a longer string; short values are not registered."""
        registry = SecretRegistry()
        registry.add("sk-0123456789")
        registry.add("short")
        self.assertEqual(registry.mask("Bearer sk-0123456789, thanks"), f"Bearer {MASK}, thanks")
        self.assertEqual(registry.mask("a short word"), "a short word")
        self.assertNotIn("short", registry)

    def test_longest_first(self) -> None:
        """A secret that contains another is masked whole."""
        registry = SecretRegistry()
        registry.add("abcdefgh")
        registry.add("abcdefgh-and-more")
        self.assertEqual(registry.mask("x abcdefgh-and-more y"), f"x {MASK} y")

    def test_bytes_secrets(self) -> None:
        """UTF-8 bytes are registered as text; random bytes are skipped."""
        registry = SecretRegistry()
        registry.add(b"bytes-secret-1")
        registry.add(b"\xff\xfe" * 16)
        self.assertEqual(registry.mask("bytes-secret-1"), MASK)
        self.assertEqual(len(registry), 1)

    def test_recent_are_bounded(self) -> None:
        """Per-call secrets are kept most recent first, at most the limit (a flood cannot grow it)."""
        registry = SecretRegistry(recent_limit=3)
        for i in range(10):
            registry.remember(f"signature-{i:04d}")
        self.assertEqual(len(registry), 3)
        self.assertEqual(registry.mask("signature-0009"), MASK)
        self.assertEqual(registry.mask("signature-0000"), "signature-0000")

    def test_forget(self) -> None:
        """A forgotten secret is shown again."""
        registry = SecretRegistry()
        registry.add("rotated-key-123")
        registry.forget("rotated-key-123")
        self.assertEqual(registry.mask("rotated-key-123"), "rotated-key-123")

    def test_token_shapes(self) -> None:
        """Gateway tokens (from any process) and JWTs are masked without being registered."""
        registry = SecretRegistry()
        token = mint_token(b"any process's secret", 1_000_000)
        self.assertEqual(registry.mask(token), MASK)
        self.assertEqual(registry.mask(f"token={token}&x=1"), f"token={MASK}&x=1")
        self.assertEqual(registry.mask(token + "junk"), MASK)
        jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJlc2lnbmF0dXJl"
        self.assertEqual(registry.mask(f"Bearer {jwt}"), f"Bearer {MASK}")
        for harmless in ("wss://agent.deepgram.com/v1/agent/converse", "MZ" + "1" * 32,
                         "version 1.0.0", "a.b"):
            self.assertEqual(registry.mask(harmless), harmless)

    def test_long_base64_is_fast(self) -> None:
        """A long base64 run is scanned in linear time (the look-behind anchors it)."""
        registry = SecretRegistry()
        registry.mask(("A" * 20 + ".") * 3000)
        registry.mask("A" * 65_000 + "." + "B" * 42)


class RedactTests(SynchronousTestCase):
    """redact() by name and by value, at any depth."""

    def setUp(self) -> None:
        self.registry = SecretRegistry()
        self.registry.add(API_KEY)

    def test_by_name_and_by_value(self) -> None:
        """Secret-looking names are masked whole; secrets under other names are masked in place."""
        token = mint_token(b"k" * 32, 1_000_000)
        value = {
            "token": "anything",
            "auth": token,
            "prompt": f"the key is {API_KEY}.",
            "nested": [{"x": [f"<{API_KEY}>"]}],
            API_KEY: "as a key",
            "n": 5,
            "headers": {"x": "y"},
        }
        out = redact(value, registry=self.registry)
        self.assertEqual(out["token"], MASK)
        self.assertEqual(out["auth"], MASK)
        self.assertEqual(out["prompt"], f"the key is {MASK}.")
        self.assertEqual(out["nested"], [{"x": [f"<{MASK}>"]}])
        self.assertEqual(out[MASK], "as a key")
        self.assertEqual(out["n"], 5)
        self.assertEqual(out["headers"], MASK)
        self.assertNotIn(API_KEY, json.dumps(out))
        self.assertNotIn(token, json.dumps(out))

    def test_other_leaves(self) -> None:
        """A leaf that is no JSON value is kept, unless its repr shows a secret."""
        hello = ClientHello("t", {"a": API_KEY})
        self.assertEqual(redact([b"plain", 1.5, None], registry=self.registry), [b"plain", 1.5, None])
        self.assertEqual(redact([API_KEY.encode()], registry=self.registry), [f"b'{MASK}'"])
        self.assertNotIn(API_KEY, str(redact(hello, registry=self.registry)))

    def test_process_registry_is_the_default(self) -> None:
        """redact() without a registry uses SECRETS, fed by register_secret."""
        register_secret("process-wide-secret-1")
        self.addCleanup(SECRETS.forget, "process-wide-secret-1")
        self.assertEqual(redact({"a": "process-wide-secret-1"}), {"a": MASK})


class _Logs:
    """Every log event, formatted and with all its fields, while the test runs."""

    def __init__(self, case: SynchronousTestCase) -> None:
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        case.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def text(self) -> str:
        return "\n".join(formatEvent(e) + " " + repr({k: v for k, v in e.items() if k != "log_logger"})
                         for e in self.events)


class DebugCallTests(SynchronousTestCase):
    """With debug_calls on, no secret reaches the log under any name."""

    def setUp(self) -> None:
        self.logs = _Logs(self)
        self.clock = Clock()
        for secret in ENV.values():
            self.addCleanup(SECRETS.forget, secret)

    def call(self, leg: str) -> Call:
        configured = configure({"gateway": {"debug_calls": True}, "auth": {"token_parameter": "auth"}},
                               ENV)
        return Call(configured, leg, self.clock, FakeConnector())

    def test_config_registers_the_keys(self) -> None:
        """Loading the configuration registers every secret from the environment."""
        self.call("twilio")
        for secret in ENV.values():
            if secret != PUBLIC_URL:
                self.assertIn(secret, SECRETS)
        self.assertNotIn(PUBLIC_URL, SECRETS)

    def test_twilio_token_under_innocent_name(self) -> None:
        """A minted token in <Parameter name="auth">, keys and the signature in parameters: masked."""
        call = self.call("twilio")
        signature = compute_signature(TWILIO_TOKEN, "wss://gw.example.com/twilio")
        call.caller_handshake(Handshake("twilio", "/twilio", {"x-twilio-signature": signature}, "peer"))
        call.caller_opened(FakeCallerLeg())
        token = mint_token(TOKEN_SECRET.encode(), self.clock.seconds())
        call.from_caller(StreamStarted(SID, "CA1", custom_parameters={
            "auth": token,
            "note": f"key {API_KEY} and {TWILIO_TOKEN}",
            "echo": signature,
            "other": f"{GATEWAY_API_KEY}/{TOKEN_SECRET}",
        }))
        text = self.logs.text()
        self.assertIn("caller -> gateway: StreamStarted", text)
        self.assertEqual(call.phase, "connecting", "the token verified: the call went on")
        for secret in (token, API_KEY, TWILIO_TOKEN, signature, GATEWAY_API_KEY, TOKEN_SECRET):
            self.assertNotIn(secret, text)

    def test_client_token_in_parameters(self) -> None:
        """A /client hello's token, and a token copied into its parameters: masked."""
        call = self.call("client")
        call.caller_handshake(Handshake("client", "/client", {}, "peer"))
        call.caller_opened(FakeCallerLeg())
        token = mint_token(TOKEN_SECRET.encode(), self.clock.seconds())
        call.from_caller(ClientHello(token, {"auth": token, "greeting": "hi"}))
        text = self.logs.text()
        self.assertIn("caller -> gateway: ClientHello", text)
        self.assertNotIn(token, text)
