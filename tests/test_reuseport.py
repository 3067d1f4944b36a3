"""
The ``reuseport:`` server endpoint (gateway/reuseport.py, registered by
twisted/plugins/gateway_reuseport.py): several listeners, in one process or in several twistd
processes, share one port and the kernel spreads connections over them.
"""

from __future__ import annotations

import os

from twisted.internet import defer, protocol, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, serverFromString
from twisted.internet.error import CannotListenError
from twisted.trial.unittest import TestCase

from gateway.reuseport import ReusePortEndpoint, parse_reuseport
from gateway.testing import TEST_API_KEY


class _Count(protocol.Factory):
    def __init__(self) -> None:
        self.accepted = 0

    def buildProtocol(self, addr: object) -> protocol.Protocol:
        self.accepted += 1
        return protocol.Protocol()


class ReusePortTests(TestCase):
    """SO_REUSEPORT listeners through the endpoint-string plugin."""

    timeout = 60

    @defer.inlineCallbacks
    def test_two_listeners_share_a_port(self) -> None:
        """Two ``reuseport:`` listeners bind one port and both accept; a plain ``tcp:`` bind fails."""
        first, second = _Count(), _Count()
        port_a = yield serverFromString(reactor, "reuseport:0:interface=127.0.0.1").listen(first)
        self.addCleanup(port_a.stopListening)
        number = port_a.getHost().port
        port_b = yield serverFromString(reactor, f"reuseport:{number}:interface=127.0.0.1").listen(second)
        self.addCleanup(port_b.stopListening)
        self.assertEqual(port_b.getHost().port, number)
        with self.assertRaises(CannotListenError):
            yield serverFromString(reactor, f"tcp:{number}:interface=127.0.0.1").listen(_Count())
        for _ in range(40):
            client = yield TCP4ClientEndpoint(reactor, "127.0.0.1", number).connect(
                protocol.Factory.forProtocol(protocol.Protocol))
            client.transport.loseConnection()
        for _ in range(100):  # the server side accepts a moment after the client connects
            if first.accepted + second.accepted == 40:
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(first.accepted + second.accepted, 40)
        self.assertGreater(first.accepted, 0)
        self.assertGreater(second.accepted, 0)

    def test_parser_arguments(self) -> None:
        """Port, interface and backlog are parsed; a bad port is a ValueError naming it."""
        endpoint = parse_reuseport(reactor, "8080", interface="127.0.0.1", backlog="64")
        self.assertIsInstance(endpoint, ReusePortEndpoint)
        self.assertEqual((endpoint.port, endpoint.interface, endpoint.backlog), (8080, "127.0.0.1", 64))
        with self.assertRaises(ValueError) as caught:
            parse_reuseport(reactor, "http")
        self.assertIn("'http'", str(caught.exception))
        with self.assertRaises(ValueError):
            parse_reuseport(reactor, "70000")

    @defer.inlineCallbacks
    def test_two_twistd_gateways_on_one_port(self) -> None:
        """``twistd gateway --port reuseport:P`` twice: both listen on P and both answer /healthz."""
        import treq

        from tests.system.harness import TwistdGateway

        probe = yield serverFromString(reactor, "reuseport:0:interface=127.0.0.1").listen(_Count())
        number = probe.getHost().port
        yield probe.stopListening()
        env = {"DEEPGRAM_API_KEY": TEST_API_KEY}
        gateways = [TwistdGateway(["--port", f"reuseport:{number}:interface=127.0.0.1"], env)
                    for _ in range(2)]
        for gw in gateways:
            self.addCleanup(gw.stop)
        ports = yield defer.gatherResults([gw.listening.addTimeout(30, reactor) for gw in gateways])
        self.assertEqual(ports, [number, number])
        pids = set()
        for _ in range(40):
            response = yield treq.get(f"http://127.0.0.1:{number}/healthz", persistent=False
                                      ).addTimeout(10, reactor)
            pids.add((yield response.json())["pid"])
        self.assertEqual(len(pids), 2)
        self.assertNotIn(os.getpid(), pids)
