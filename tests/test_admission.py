"""
Tests for admission (gateway.admission) and for the auth stage reporting to it: unauthenticated
sockets hold no call slot, have a budget of their own, and a deadline; all on a Clock.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.admission import Admission, AdmissionOptions, admission_options
from gateway.codecs.signatures import compute_signature
from gateway.section import Section
from gateway.errors import ConfigError
from gateway.events import CallerError, ClientHello, Handshake, StreamStarted
from gateway.service import Gateway
from gateway.testing import FakeCallerLeg, FakeConnector, RecordingContext, call_info, configure
from gateway.tokens import STREAM_TOKEN_PARAMETER, mint_stream_token, mint_token

SECRET = "k" * 32
ENV = {"GATEWAY_TOKEN_SECRET": SECRET}


class Recorder:
    """An Admission over a Clock, recording the sockets it closes."""

    def __init__(self, max_calls: int = 2, **options) -> None:
        self.clock = Clock()
        self.closed: list[tuple[str, str]] = []
        self.draining = False
        self.admission = Admission(AdmissionOptions(**options), max_calls, self.clock,
                                   lambda call, reason: self.closed.append((call, reason)),
                                   draining=lambda: self.draining)

    def pend(self, key: str, address: str = "10.0.0.1") -> str | None:
        self.admission.arrive(key, key, address)
        return self.admission.hold(key)


class AdmissionTests(SynchronousTestCase):
    """The budget of unauthenticated sockets and the call slots."""

    def test_unauthenticated_sockets_hold_no_slot(self) -> None:
        """Any number within the budget wait; max_calls counts only authenticated calls."""
        r = Recorder(max_calls=2, max_pending=50, max_pending_per_address=50)
        for i in range(20):
            r.pend(f"c{i}")
        self.assertEqual((r.admission.pending, r.admission.live), (20, 0))
        self.assertIsNone(r.admission.refusal())
        self.assertIsNone(r.admission.authenticate("c0"))
        self.assertIsNone(r.admission.authenticate("c1"))
        self.assertEqual((r.admission.pending, r.admission.live), (18, 2))
        self.assertEqual(r.admission.refusal(), "full")
        self.assertEqual(r.admission.authenticate("c2"), "full")
        r.admission.leave("c0")
        self.assertIsNone(r.admission.authenticate("c2"))
        self.assertEqual(r.closed, [])
        self.assertEqual(r.admission.refused["full"], 1)

    def test_per_address_budget_evicts_that_address_oldest(self) -> None:
        """Over max_pending_per_address, the oldest socket of that address makes room."""
        r = Recorder(max_pending=10, max_pending_per_address=3)
        r.pend("other", "10.0.0.9")
        for i in range(5):
            r.clock.advance(1)
            self.assertIsNone(r.pend(f"a{i}", "10.0.0.1"))
        self.assertEqual(r.closed, [("a0", "evicted"), ("a1", "evicted")])
        self.assertEqual(r.admission.pending_from("10.0.0.1"), 3)
        self.assertEqual(r.admission.pending_from("10.0.0.9"), 1)
        self.assertEqual(r.admission.authenticate("a0"), "closed")

    def test_total_budget_evicts_from_the_heaviest_address(self) -> None:
        """Over max_pending, the oldest socket of the address holding the most makes room."""
        r = Recorder(max_pending=4, max_pending_per_address=3)
        r.pend("lone", "10.0.0.9")
        r.clock.advance(1)
        for i in range(3):
            r.pend(f"a{i}", "10.0.0.1")
        r.clock.advance(1)
        r.pend("new", "10.0.0.5")
        self.assertEqual(r.closed, [("a0", "evicted")])
        self.assertEqual(r.admission.pending, 4)

    def test_grace(self) -> None:
        """A socket younger than eviction_grace_s is never closed for room: the newcomer gets busy."""
        r = Recorder(max_pending=4, max_pending_per_address=2, eviction_grace_s=1.0)
        self.assertEqual([r.pend(k) for k in ("a", "b", "c")], [None, None, "busy"])
        r.clock.advance(1.0)
        self.assertIsNone(r.pend("d"))
        self.assertEqual(r.closed, [("a", "evicted")])
        self.assertEqual(r.admission.refused["busy"], 1)

    def test_grace_over_the_total(self) -> None:
        """Over max_pending, an address whose oldest is past the grace gives way, even if not the heaviest."""
        r = Recorder(max_pending=3, max_pending_per_address=3, eviction_grace_s=1.0)
        r.pend("old", "10.0.0.9")
        r.clock.advance(1.0)
        r.pend("n1", "10.0.0.1")
        r.pend("n2", "10.0.0.1")
        self.assertIsNone(r.pend("z", "10.0.0.4"))
        self.assertEqual(r.closed, [("old", "evicted")])
        # All young now; a fresh address still gets in: the heaviest address (two) gives way.
        self.assertIsNone(r.pend("w", "10.0.0.5"))
        self.assertEqual(r.closed, [("old", "evicted"), ("n1", "evicted")])
        # An address holding as many as the heaviest less one does not: busy.
        self.assertEqual(r.pend("v", "10.0.0.4"), "busy")
        self.assertEqual(r.admission.pending, 3)

    def test_flood_cannot_lock_a_fresh_address_out(self) -> None:
        """
        A flood re-opening young sockets from many addresses fills the total budget; a caller
        from an address holding none is still admitted (the heaviest flooding address gives way).
        """
        r = Recorder(max_pending=32, max_pending_per_address=16, eviction_grace_s=1.0)
        for i in range(32):
            self.assertIsNone(r.pend(f"f{i}", f"10.0.1.{i % 8}"))
        for n in range(5):
            self.assertIsNone(r.pend(f"legit{n}", f"10.9.9.{n}"), n)
        self.assertEqual(r.admission.pending, 32)
        self.assertEqual(len(r.closed), 5)

    def test_deadline(self) -> None:
        """A socket not authenticated within pending_timeout_s is closed; an authenticated one is not."""
        r = Recorder(pending_timeout_s=5.0)
        r.pend("slow")
        r.pend("quick")
        r.clock.advance(4.9)
        self.assertIsNone(r.admission.authenticate("quick"))
        r.clock.advance(0.1)
        self.assertEqual(r.closed, [("slow", "timeout")])
        self.assertEqual(r.clock.getDelayedCalls(), [])
        r.admission.leave("slow")
        r.admission.leave("quick")
        self.assertEqual((r.admission.pending, r.admission.live), (0, 0))

    def test_draining(self) -> None:
        """While draining, authenticating is refused and close_pending closes every waiting socket."""
        r = Recorder()
        r.pend("a")
        r.pend("b")
        r.draining = True
        self.assertEqual(r.admission.authenticate("a"), "draining")
        r.admission.close_pending("drained")
        self.assertEqual(sorted(r.closed), [("a", "drained"), ("b", "drained")])
        self.assertEqual(r.clock.getDelayedCalls(), [])

    def test_authenticated_at_the_upgrade(self) -> None:
        """A socket authenticated before hold (a signed Twilio stream) never enters the budget."""
        r = Recorder(max_pending=1, max_pending_per_address=1)
        r.pend("waiting")
        r.admission.arrive("signed", "signed", "10.0.0.1")
        r.clock.advance(5)
        self.assertIsNone(r.admission.authenticate("signed"))
        r.admission.hold("signed")
        self.assertEqual((r.admission.pending, r.admission.live, r.closed), (1, 1, []))

    def test_source_address(self) -> None:
        """X-Forwarded-For counts only from a trusted proxy, and only its last address."""
        r = Recorder(trusted_proxies=frozenset({"127.0.0.1"}))
        headers = {"x-forwarded-for": "6.6.6.6, 203.0.113.7"}
        self.assertEqual(r.admission.source("127.0.0.1", headers), "203.0.113.7")
        self.assertEqual(r.admission.source("198.51.100.1", headers), "198.51.100.1")
        self.assertEqual(r.admission.source("127.0.0.1", {}), "127.0.0.1")

    def test_config(self) -> None:
        """[admission] defaults and checks, naming the key."""
        self.assertEqual(admission_options(Section("admission", {})), AdmissionOptions())
        with self.assertRaises(ConfigError) as e:
            admission_options(Section("admission", {"max_pending": 4, "max_pending_per_address": 5}))
        self.assertIn("admission.max_pending_per_address", str(e.exception))
        with self.assertRaises(ConfigError) as e:
            admission_options(Section("admission", {"pending_timeout_s": 1, "eviction_grace_s": 1}))
        self.assertIn("admission.eviction_grace_s", str(e.exception))
        with self.assertRaises(ConfigError) as e:
            admission_options(Section("admission", {"trusted_proxies": ["nginx"]}))
        self.assertIn("admission.trusted_proxies[0]", str(e.exception))
        options = admission_options(Section("admission", {"trusted_proxies": ["::1", "127.0.0.1"]}))
        self.assertEqual(options.trusted_proxies, frozenset({"::1", "127.0.0.1"}))


class GatewayAdmissionTests(SynchronousTestCase):
    """The gateway's side: calls made for upgrades, the auth stage reporting authentication."""

    def gateway(self, config: dict | None = None, env: dict | None = None) -> Gateway:
        clock = Clock()
        clock.advance(1_000_000)
        gateway = Gateway(configure(config, {**ENV, **(env or {})}), clock)
        # An authenticated call goes on to open its Deepgram leg: record it, never dial it.
        self.connector = FakeConnector()
        gateway._connect = self.connector
        return gateway

    def client(self, gateway: Gateway, address: str = "10.0.0.1"):
        call = gateway.new_call("client", address)
        call.caller_handshake(Handshake("client", "/client", {}, address))
        gateway.caller_upgraded(call)
        leg = FakeCallerLeg()
        call.caller_opened(leg)
        return call, leg

    def test_silent_clients_do_not_fill_the_gateway(self) -> None:
        """More silent /client sockets than max_calls: the gateway is still ready."""
        gateway = self.gateway({"gateway": {"max_calls": 2}})
        for i in range(10):
            self.client(gateway, f"10.0.0.{i}")
        self.assertEqual((gateway.admission.pending, gateway.live_calls), (10, 0))
        self.assertIsNone(gateway.refuse_new_call())

    def test_token_takes_a_slot(self) -> None:
        """A valid token moves the socket from the budget to a call slot."""
        gateway = self.gateway({"gateway": {"max_calls": 1}})
        call, leg = self.client(gateway)
        token = mint_token(SECRET.encode(), gateway.reactor.seconds())
        call.from_caller(ClientHello(token))
        self.assertEqual((gateway.admission.pending, gateway.live_calls), (0, 1))
        self.assertEqual(gateway.refuse_new_call(), "full")
        self.assertEqual(len(self.connector.attempts), 1)

    def test_full_when_the_token_arrives(self) -> None:
        """Slots filled while a socket was authenticating: it is refused then, with an error."""
        gateway = self.gateway({"gateway": {"max_calls": 1}})
        first, _ = self.client(gateway)
        second, leg = self.client(gateway)
        now = gateway.reactor.seconds()
        first.from_caller(ClientHello(mint_token(SECRET.encode(), now)))
        second.from_caller(ClientHello(mint_token(SECRET.encode(), now)))
        self.assertEqual(second.diagnosis.code, "GATEWAY_FULL")
        self.assertEqual(len(self.connector.attempts), 1)  # the first call only
        self.assertEqual([kind for kind, _ in leg.sent], ["error"], "one Error, then the close")
        self.assertEqual(leg.closed_with, (1013, "GATEWAY_FULL"))
        self.assertEqual(gateway.live_calls, 1)
        self.assertEqual(gateway.admission.refused["full"], 1)

    def test_deadline_closes_with_auth_timeout(self) -> None:
        """A socket past pending_timeout_s gets the AUTH_TIMEOUT error and 4001."""
        gateway = self.gateway({"admission": {"pending_timeout_s": 2.0}})
        call, leg = self.client(gateway)
        gateway.reactor.advance(2.0)
        self.assertEqual(call.diagnosis.code, "AUTH_TIMEOUT")
        self.assertIn(("error", "AUTH_TIMEOUT"), leg.sent)
        self.assertEqual(leg.closed_with[0], 4001)

    def test_eviction(self) -> None:
        """Over the per-address budget, the oldest socket of that address is closed (4001)."""
        gateway = self.gateway({"admission": {"max_pending_per_address": 2}})
        legs = []
        for _ in range(3):
            legs.append(self.client(gateway, "10.0.0.1")[1])
            gateway.reactor.advance(1.0)  # past the eviction grace
        self.assertEqual([leg.closed_with and leg.closed_with[0] for leg in legs], [4001, None, None])
        self.assertEqual(gateway.admission.closed["evicted"], 1)

    def test_busy(self) -> None:
        """A budget full of sockets within the grace: the upgrade is refused (busy), nothing closed."""
        gateway = self.gateway({"admission": {"max_pending_per_address": 2}})
        self.client(gateway, "10.0.0.1")
        self.client(gateway, "10.0.0.1")
        call = gateway.new_call("client", "10.0.0.1")
        call.caller_handshake(Handshake("client", "/client", {}, "10.0.0.1"))
        self.assertEqual(gateway.caller_upgraded(call), "busy")
        self.assertEqual((gateway.admission.pending, gateway.admission.closed["evicted"]), (2, 0))

    def test_drain_closes_unauthenticated(self) -> None:
        """A drain closes the sockets still authenticating (1001), at once."""
        gateway = self.gateway()
        call, leg = self.client(gateway)
        gateway.drain(30)
        self.assertEqual(call.diagnosis.code, "DRAINED")
        self.assertEqual(leg.closed_with[0], 1001)

    def test_signed_twilio_takes_a_slot_at_the_upgrade(self) -> None:
        """A signed stream (no stream token required) is authenticated by its signature."""
        env = {"TWILIO_AUTH_TOKEN": "tw", "GATEWAY_PUBLIC_URL": "https://gw.example.com"}
        gateway = self.gateway(env=env)
        call = gateway.new_call("twilio", "10.0.0.1")
        signature = compute_signature("tw", "wss://gw.example.com/twilio")
        call.caller_handshake(Handshake("twilio", "/twilio", {"x-twilio-signature": signature}, ""))
        gateway.caller_upgraded(call)
        self.assertEqual((gateway.admission.pending, gateway.live_calls), (0, 1))

    def test_stream_token_twilio_waits_for_start(self) -> None:
        """With require_stream_token, a signed stream is unauthenticated until its start."""
        env = {"TWILIO_AUTH_TOKEN": "tw", "GATEWAY_PUBLIC_URL": "https://gw.example.com"}
        gateway = self.gateway({"gateway": {"require_stream_token": True}}, env)
        call = gateway.new_call("twilio", "10.0.0.1")
        signature = compute_signature("tw", "wss://gw.example.com/twilio")
        call.caller_handshake(Handshake("twilio", "/twilio", {"x-twilio-signature": signature}, ""))
        gateway.caller_upgraded(call)
        call.caller_opened(FakeCallerLeg())
        self.assertEqual((gateway.admission.pending, gateway.live_calls), (1, 0))
        token = mint_stream_token(SECRET.encode(), gateway.reactor.seconds(), "CA1", 60)
        call.from_caller(StreamStarted("MZ1", call_sid="CA1", custom_parameters={STREAM_TOKEN_PARAMETER: token}))
        self.assertEqual((gateway.admission.pending, gateway.live_calls), (0, 1))
        self.assertNotIn(STREAM_TOKEN_PARAMETER, call.info.custom_parameters)


class AuthStageTokenTests(SynchronousTestCase):
    """The auth stage's stream tokens and single-use tokens, on a recording context."""

    def stage(self, leg: str = "twilio", auth: dict | None = None, gateway: dict | None = None):
        ctx = RecordingContext(call=call_info(leg=leg))
        configured = configure({"auth": auth or {}, "gateway": gateway or {}}, ENV)
        stage = dict(configured.stages)["auth"](ctx)
        return ctx, stage, stage.routes().inbound, configured.config

    def test_stream_token_required(self) -> None:
        """A start without the stream token, with another call's, or with a used one: AUTH_FAILED."""
        ctx, stage, routes, cfg = self.stage(gateway={"require_stream_token": True})
        self.assertIs(type(routes[Handshake](Handshake("twilio", "/twilio", {}, ""))), Handshake)
        token = mint_stream_token(cfg.token_secret, 0, "CA1", 60)
        self.assertIsNone(routes[StreamStarted](StreamStarted("MZ1", call_sid="CA1")))
        self.assertIsNone(routes[StreamStarted](StreamStarted(
            "MZ1", call_sid="CA2", custom_parameters={STREAM_TOKEN_PARAMETER: token})))
        good = StreamStarted("MZ1", call_sid="CA1", custom_parameters={STREAM_TOKEN_PARAMETER: token, "a": "b"})
        passed = routes[StreamStarted](good)
        self.assertEqual(passed.custom_parameters, {"a": "b"})
        self.assertIsNone(routes[StreamStarted](good))
        self.assertEqual([d.code for d in ctx.ended], ["AUTH_FAILED"] * 3)
        self.assertEqual(ctx.counted("auth_failures", reason="auth_failed"), 3)

    def test_expired_stream_token(self) -> None:
        """A stream token past its lifetime is refused."""
        ctx, stage, routes, cfg = self.stage(gateway={"require_stream_token": True})
        token = mint_stream_token(cfg.token_secret, 0, "CA1", 60)
        ctx.clock.advance(62)
        self.assertIsNone(routes[StreamStarted](StreamStarted(
            "MZ1", call_sid="CA1", custom_parameters={STREAM_TOKEN_PARAMETER: token})))
        self.assertEqual(ctx.ended[0].code, "AUTH_FAILED")

    def test_client_token_is_not_a_stream_token(self) -> None:
        """A client token in the stream token's place is refused, and the other way round."""
        ctx, stage, routes, cfg = self.stage(gateway={"require_stream_token": True})
        self.assertIsNone(routes[StreamStarted](StreamStarted(
            "MZ1", call_sid="CA1", custom_parameters={STREAM_TOKEN_PARAMETER: mint_token(cfg.token_secret, 0)})))
        ctx, stage, routes, cfg = self.stage(leg="client")
        routes[Handshake](Handshake("client", "/client", {}, ""))
        self.assertIsNone(routes[ClientHello](ClientHello(mint_stream_token(cfg.token_secret, 0, "CA1", 60))))
        self.assertEqual(ctx.outbound, [CallerError("AUTH_FAILED", "the token is invalid or expired")])

    def test_single_use_client_token(self) -> None:
        """A token minted single-use is accepted once per process (per auth factory)."""
        configured = configure(None, ENV)
        factory = dict(configured.stages)["auth"]
        token = mint_token(configured.config.token_secret, 0, single_use=True)
        outcomes = []
        for _ in range(2):
            ctx = RecordingContext(call=call_info(leg="client"))
            routes = factory(ctx).routes().inbound
            routes[Handshake](Handshake("client", "/client", {}, ""))
            outcomes.append(type(routes[ClientHello](ClientHello(token))).__name__)
        self.assertEqual(outcomes, ["StreamStarted", "NoneType"])

    def test_reusable_unless_configured(self) -> None:
        """An ordinary token is reusable until it expires, unless single_use_tokens is on."""
        for single_use, expected in ((False, ["StreamStarted", "StreamStarted"]),
                                     (True, ["StreamStarted", "NoneType"])):
            configured = configure({"auth": {"single_use_tokens": single_use}}, ENV)
            factory = dict(configured.stages)["auth"]
            token = mint_token(configured.config.token_secret, 0)
            outcomes = []
            for _ in range(2):
                ctx = RecordingContext(call=call_info(leg="client"))
                routes = factory(ctx).routes().inbound
                routes[Handshake](Handshake("client", "/client", {}, ""))
                outcomes.append(type(routes[ClientHello](ClientHello(token))).__name__)
            self.assertEqual(outcomes, expected)

    def test_refused_handshake_when_full(self) -> None:
        """Bound to an admission that refuses, a signed stream's upgrade gets 503."""

        class Full:
            def authenticate(self, key: str) -> str:
                return "full"

        configured = configure(None, ENV)
        factory = dict(configured.stages)["auth"].with_admission(Full())
        ctx = RecordingContext()
        refused = factory(ctx).routes().inbound[Handshake](Handshake("twilio", "/twilio", {}, ""))
        self.assertIsNone(refused)
        self.assertEqual(ctx.refused[0][0], 503)
