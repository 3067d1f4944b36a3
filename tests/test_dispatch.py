"""
The lean event dispatch (`gateway.legs.dispatch`): the same log context and the same failure
handling as Twisted's own ``EPollReactor.doPoll``; only an ``EPollReactor`` is changed; the service
installs it, and calls run through it.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.internet.abstract import FileDescriptor
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.task import Clock
from twisted.python import context, log
from twisted.python.log import ILogContext
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.legs import dispatch


class Reader(FileDescriptor):
    """One end of a socket pair; each read records the log context it ran in."""

    def __init__(self, reactor: Any, sock: socket.socket, prefix: str) -> None:
        super().__init__(reactor)
        self.sock = sock
        self.prefix = prefix
        self.seen: list[dict] = []
        self.fail: BaseException | None = None
        self.fail_prefix = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:
        if self.fail_prefix:
            raise RuntimeError("no prefix")
        return self.prefix

    def doRead(self) -> None:
        self.sock.recv(4096)
        self.seen.append(dict(context.get(ILogContext)))
        log.msg("read")
        if self.fail is not None:
            raise self.fail


class _Reactors:
    """Fresh epoll reactors, stock or lean, turned by hand and closed after the test."""

    def setUp(self) -> None:
        self.events: list[dict] = []
        log.addObserver(self.events.append)
        self.addCleanup(log.removeObserver, self.events.append)

    def reactor(self, lean: bool) -> EPollReactor:
        r = EPollReactor()
        self.addCleanup(self._close, r)
        if lean:
            self.assertTrue(dispatch.install(r))
            self.assertTrue(dispatch.installed(r))
        else:
            self.assertFalse(dispatch.installed(r))
        return r

    def _close(self, r: EPollReactor) -> None:
        for selectable in r.getReaders() + r.getWriters():
            r.removeReader(selectable)
            r.removeWriter(selectable)
        r._poller.close()
        r.waker.connectionLost(None)

    def logged(self) -> list[tuple]:
        """What was logged: (message or error type, system), in order."""
        out = []
        for e in self.events:
            if e.get("isError"):
                out.append((e["failure"].type.__name__, e["system"]))
            elif e.get("message"):
                out.append((" ".join(e["message"]), e["system"]))
        return out


class LeanDispatchTests(_Reactors, SynchronousTestCase):
    """Event by event, what a handler sees and what is logged, lean against Twisted's own."""

    def run_once(self, lean: bool, fail: BaseException | None = None,
                 prefixes: tuple[str, ...] = ("TwilioProtocol,7,127.0.0.1",),
                 fail_prefix: bool = False) -> Reader:
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)
        r = self.reactor(lean)  # closed first (cleanups run last to first), the sockets after
        reader = Reader(r, ours, prefixes[0])
        reader.fail = fail
        reader.fail_prefix = fail_prefix
        r.addReader(reader)
        for prefix in prefixes:
            reader.prefix = prefix
            theirs.send(b"x")
            r.doIteration(0)
        return reader

    def both(self, **kw: Any) -> tuple[Reader, list, Reader, list]:
        stock = self.run_once(lean=False, **kw)
        stock_logged = self.logged()
        self.events.clear()
        lean = self.run_once(lean=True, **kw)
        return stock, stock_logged, lean, self.logged()

    def test_same_context_as_twisted(self) -> None:
        """A read sees the log context Twisted's dispatch gives it: system is the logPrefix."""
        stock, stock_logged, lean, lean_logged = self.both()
        self.assertEqual(lean.seen, stock.seen)
        self.assertEqual(lean.seen[0]["system"], "TwilioProtocol,7,127.0.0.1")
        self.assertEqual(lean_logged, stock_logged)
        self.assertEqual(lean_logged, [("read", "TwilioProtocol,7,127.0.0.1")])
        self.assertEqual(context.get(ILogContext)["system"], "-")  # popped again

    def test_prefix_change_is_seen(self) -> None:
        """A selectable whose logPrefix changes (a client once connected) gets a new context."""
        lean = self.run_once(lean=True, prefixes=("Uninitialized", "DeepgramProtocol,client"))
        self.assertEqual([s["system"] for s in lean.seen],
                         ["Uninitialized", "DeepgramProtocol,client"])

    def test_outer_context_is_followed(self) -> None:
        """A log context around the reactor loop reaches the handlers, as Twisted's copy does."""
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)
        r = self.reactor(lean=True)
        reader = Reader(r, ours, "P")
        r.addReader(reader)
        theirs.send(b"x")
        r.doIteration(0)
        theirs.send(b"x")
        context.call({ILogContext: {"system": "-", "extra": "around"}}, r.doIteration, 0)
        theirs.send(b"x")
        r.doIteration(0)
        self.assertEqual(reader.seen, [{"system": "P"}, {"system": "P", "extra": "around"},
                                       {"system": "P"}])

    def test_raising_handler_loses_that_connection(self) -> None:
        """
        An exception from a read handler is logged (under the selectable's system) and that
        selectable disconnected, by the reactor's own _doReadOrWrite as before.
        """
        stock, stock_logged, lean, lean_logged = self.both(fail=ValueError("boom"))
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 2)
        self.assertEqual(lean_logged, stock_logged)
        self.assertEqual(lean_logged, [("read", "TwilioProtocol,7,127.0.0.1"),
                                       ("ValueError", "TwilioProtocol,7,127.0.0.1")])
        self.assertTrue(lean.disconnected)
        self.assertEqual(stock.disconnected, lean.disconnected)
        self.assertEqual(context.get(ILogContext)["system"], "-")

    def test_buggy_log_prefix(self) -> None:
        """A logPrefix that raises is logged, and the event still dispatched, as Twisted does."""
        stock, stock_logged, lean, lean_logged = self.both(fail_prefix=True)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)
        self.assertEqual(lean_logged, stock_logged)
        self.assertEqual(lean.seen, stock.seen)
        self.assertEqual(lean.seen, [{"system": "(buggy logPrefix method)"}])

    def test_only_epoll(self) -> None:
        """Any other reactor is left alone; installing twice is harmless; uninstall restores."""
        clock = Clock()
        self.assertFalse(dispatch.install(clock))
        self.assertFalse(dispatch.installed(clock))
        r = self.reactor(lean=True)
        lean = r.doPoll
        self.assertTrue(dispatch.install(r))
        self.assertIs(r.doPoll, lean)
        self.assertIs(r.doIteration, lean)
        dispatch.uninstall(r)
        self.assertFalse(dispatch.installed(r))
        self.assertEqual(r.doPoll.__func__, EPollReactor.doPoll)


class _Raising(protocol.Protocol):
    """A protocol whose callbacks raise: in dataReceived, or in connectionLost."""

    def __init__(self, where: str, lost: list) -> None:
        self.where = where
        self.lost = lost

    def dataReceived(self, data: bytes) -> None:
        if self.where == "dataReceived":
            raise ValueError("in dataReceived")

    def connectionLost(self, reason: Any) -> None:
        self.lost.append(reason.type.__name__)
        if self.where == "connectionLost":
            raise KeyError("in connectionLost")


class ProtocolFailureTests(_Reactors, SynchronousTestCase):
    """An exception in a TCP protocol's callback, on a real connection: handled as Twisted does."""

    def serve(self, lean: bool, where: str) -> tuple[list, list, EPollReactor]:
        r = self.reactor(lean)
        lost: list[str] = []
        factory = protocol.Factory.forProtocol(lambda: _Raising(where, lost))
        port = r.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.connectionLost, None)
        client = socket.create_connection(("127.0.0.1", port.getHost().port))
        self.addCleanup(client.close)
        for _ in range(50):  # accept
            r.doIteration(0.01)
            if [s for s in r.getReaders() if s is not port and s is not r.waker]:
                break
        client.send(b"hello")
        if where == "connectionLost":
            client.close()
        for _ in range(50):
            r.doIteration(0.01)
            if lost:
                break
        # The reactor goes on: another connection is still served.
        other = socket.create_connection(("127.0.0.1", port.getHost().port))
        self.addCleanup(other.close)
        for _ in range(50):
            r.doIteration(0.01)
            if len([s for s in r.getReaders() if s is not port and s is not r.waker]) >= 1:
                break
        served = [s for s in r.getReaders() if s is not port and s is not r.waker]
        self.assertEqual(len(served), 1)
        errors = [(e["failure"].type.__name__, e["system"].split(",")[0]) for e in self.events
                  if e.get("isError")]
        self.events.clear()
        return lost, errors, r

    def test_data_received_raises(self) -> None:
        """Logged, that connection lost (ValueError as its reason); the reactor goes on."""
        stock = self.serve(False, "dataReceived")[:2]
        lean = self.serve(True, "dataReceived")[:2]
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 2)
        self.assertEqual(lean, stock)
        self.assertEqual(lean, (["ValueError"], [("ValueError", "_Raising")]))

    def test_connection_lost_raises(self) -> None:
        """Escaping the reactor's handler: logged under the connection's system and swallowed."""
        stock = self.serve(False, "connectionLost")[:2]
        lean = self.serve(True, "connectionLost")[:2]
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 2)
        self.assertEqual(lean, stock)
        self.assertEqual(lean, (["ConnectionDone"], [("KeyError", "_Raising")]))


class ServiceInstallsTests(TestCase):
    """The service installs the lean dispatch at start-up, and whole calls run through it."""

    timeout = 60

    @defer.inlineCallbacks
    def test_calls_through_it(self) -> None:
        """Two Twilio calls relayed byte-exact and closed cleanly with the lean dispatch running."""
        from gateway.service import GatewayService
        from gateway.testing import configure
        from tests.system.harness import clip, start_standin
        from tests.system.twilio_client import twilio_call

        if not isinstance(reactor, EPollReactor):
            self.skipTest("the lean dispatch is for the epoll reactor only")
        if not dispatch.installed(reactor):
            # Leave the test runner's reactor as this test found it.
            self.addCleanup(dispatch.uninstall, reactor)
        calls: list[int] = []
        lean_poll = []

        standin = yield start_standin(self)
        service = GatewayService(
            configure(None, {"DEEPGRAM_AGENT_URL": standin.url("agent")}),
            "tcp:0:interface=127.0.0.1", reactor)
        yield service.startService()
        self.addCleanup(service.stopService)
        self.assertTrue(dispatch.installed(reactor))
        lean_poll.append(reactor.doPoll)
        url = f"ws://127.0.0.1:{service.port.getHost().port}/twilio"
        order = clip("caller-order-8k-mulaw.wav").data
        results = yield defer.gatherResults([
            twilio_call(reactor, url, order).addTimeout(30, reactor) for _ in range(2)])
        for session in standin.sessions:
            yield session.closed
            calls.append(len(session.audio))
            self.assertEqual(session.audio, order)
        self.assertEqual(len(calls), 2)
        for result in results:
            self.assertEqual(result.close_code, 1000)
            self.assertGreater(len([e for e in result.events if e["event"] == "media"]), 0)
        self.assertIs(reactor.doPoll, lean_poll[0])  # still the lean one: nothing swapped it
