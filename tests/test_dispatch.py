"""
The lean event dispatch (`gateway.legs.dispatch`): the same log context, failures handled the same
way, as Twisted's own ``EPollReactor.doPoll``; only an ``EPollReactor`` is changed.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.abstract import FileDescriptor
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.task import Clock
from twisted.python import context, log
from twisted.python.log import ILogContext
from twisted.trial.unittest import SynchronousTestCase

from gateway.legs.dispatch import lean_dispatch


class Reader(FileDescriptor):
    """One end of a socket pair; each read records the log context it ran in."""

    def __init__(self, reactor: Any, sock: socket.socket, prefix: str) -> None:
        super().__init__(reactor)
        self.sock = sock
        self.prefix = prefix
        self.seen: list[dict] = []
        self.fail: BaseException | None = None

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:
        return self.prefix

    def doRead(self) -> None:
        self.sock.recv(4096)
        self.seen.append(dict(context.get(ILogContext)))
        log.msg("read")
        if self.fail is not None:
            raise self.fail


class LeanDispatchTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.events: list[dict] = []
        log.addObserver(self.events.append)
        self.addCleanup(log.removeObserver, self.events.append)

    def reactor(self, lean: bool) -> EPollReactor:
        reactor = EPollReactor()
        self.addCleanup(self._close, reactor)
        if lean:
            self.assertTrue(lean_dispatch(reactor))
        return reactor

    def _close(self, reactor: EPollReactor) -> None:
        reactor._poller.close()
        reactor.waker.connectionLost(None)

    def reader(self, reactor: EPollReactor, prefix: str = "TwilioProtocol,7,127.0.0.1") -> tuple:
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)
        reader = Reader(reactor, ours, prefix)
        reactor.addReader(reader)
        self.addCleanup(reactor.removeReader, reader)
        return reader, theirs

    def run_once(self, lean: bool, fail: BaseException | None = None,
                 prefixes: tuple[str, ...] = ("TwilioProtocol,7,127.0.0.1",)) -> tuple[Reader, list]:
        reactor = self.reactor(lean)
        reader, theirs = self.reader(reactor, prefixes[0])
        reader.fail = fail
        for prefix in prefixes:
            reader.prefix = prefix
            theirs.send(b"x")
            reactor.doIteration(0)
        return reader, [e for e in self.events if e.get("message") == ("read",) or e.get("isError")]

    def test_same_context_as_twisted(self) -> None:
        """A read sees the log context Twisted's dispatch gives it: system is the logPrefix."""
        stock, stock_events = self.run_once(lean=False)
        self.events.clear()
        lean, lean_events = self.run_once(lean=True)
        self.assertEqual(lean.seen, stock.seen)
        self.assertEqual(lean.seen[0]["system"], "TwilioProtocol,7,127.0.0.1")
        self.assertEqual([e["system"] for e in lean_events], [e["system"] for e in stock_events])
        self.assertEqual(context.get(ILogContext)["system"], "-")   # popped again

    def test_prefix_change_is_seen(self) -> None:
        """A selectable whose logPrefix changes (a client once connected) gets a new context."""
        lean, _ = self.run_once(lean=True, prefixes=("Uninitialized", "DeepgramProtocol,client"))
        self.assertEqual([s["system"] for s in lean.seen], ["Uninitialized", "DeepgramProtocol,client"])

    def test_failure_logged_and_swallowed(self) -> None:
        """An exception from the handler is logged with the selectable's system, as Twisted does."""
        stock, stock_events = self.run_once(lean=False, fail=ValueError("boom"))
        self.flushLoggedErrors(ValueError)
        self.events.clear()
        lean, lean_events = self.run_once(lean=True, fail=ValueError("boom"))
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertEqual([(e.get("isError"), e["system"]) for e in lean_events],
                         [(e.get("isError"), e["system"]) for e in stock_events])
        self.assertEqual(context.get(ILogContext)["system"], "-")

    def test_only_epoll(self) -> None:
        """Any other reactor is left alone; installing twice is harmless."""
        clock = Clock()
        self.assertFalse(lean_dispatch(clock))
        reactor = self.reactor(lean=True)
        lean = reactor.doPoll
        self.assertTrue(lean_dispatch(reactor))
        self.assertIs(reactor.doPoll, lean)
        self.assertIs(reactor.doIteration, lean)
