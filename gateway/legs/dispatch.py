"""
The epoll reactor's event dispatch without its per-event log-context rebuild.

For every ready socket, Twisted's ``EPollReactor.doPoll`` calls ``log.callWithLogger(selectable,
...)``, which asks the selectable for its ``logPrefix()``, copies the current log context into a
new dictionary, adds ``system``, wraps that in another dictionary, and pushes it on the thread's
context stack through four more Python calls, so that a legacy ``log.msg`` made while handling
the event says which connection it came from. A call's frame is one such event per leg, 50 a
second each way: counted with ``python -m gateway.bench.hotpath --callgrind``, that rebuild was
12 % of the instructions of a relayed frame pair (issue 21). Twisted knows (twisted/twisted#2534,
open since 2007: "Removing the callWithLogger usage from select reactor yields approximately 15%
reduction in CPU usage").

`install` gives one running ``EPollReactor`` a ``doPoll`` that does what Twisted's does with the
same context: each selectable's context dictionary is built once and kept on it, and built again
whenever its ``logPrefix()`` changes (as a client's does once connected) or the context around
the reactor loop changes; it is pushed on and popped off the thread's context stack as
``callWithLogger`` pushes and pops its own. Failures are handled at the same two depths as
Twisted's: an exception in a protocol callback is caught by the reactor's ``_doReadOrWrite``
(unchanged: logged, that connection lost); one escaping that (a ``connectionLost`` that raises)
is logged with ``log.err(system=<logPrefix>)`` and swallowed, the reactor going on, as
``callWithLogger`` does; a ``logPrefix()`` that raises is logged as
``"(buggy logPrefix method)"`` and the event dispatched under that name, as there.

It is installed explicitly and once per process, by `gateway.service.GatewayService` when it
starts (and by ``python -m gateway.bench.hotpath``, which measures it): nothing on a connection's
path changes the reactor. Only an exact ``EPollReactor`` (Twisted's default on Linux) whose
context tracker is Twisted's own is changed; any other reactor keeps its own loop. `uninstall`
puts Twisted's back.
"""

from __future__ import annotations

import errno
from typing import Any

from twisted.python import context, log
from twisted.python.log import ILogContext

__all__ = ["install", "uninstall", "installed"]

#: The attribute a selectable keeps its (logPrefix, context stack's top, pushed context) in.
_CACHE = "_gateway_log_context"
#: The name Twisted logs under when a selectable's logPrefix raises.
_BUGGY_PREFIX = "(buggy logPrefix method)"


def installed(reactor: Any) -> bool:
    """Whether ``reactor`` runs the lean dispatch."""
    return bool(getattr(getattr(reactor, "doPoll", None), "_gateway_lean", False))


def install(reactor: Any) -> bool:
    """
    Give ``reactor`` the lean ``doPoll`` if it is a plain ``EPollReactor``; returns whether it
    runs it. Installing twice is harmless.
    """
    from twisted.internet.epollreactor import EPollReactor

    if type(reactor) is not EPollReactor:
        return False
    if type(context.theContextTracker) is not context.ThreadedContextTracker:
        return False
    if installed(reactor):
        return True
    doPoll = _lean_do_poll(reactor)
    # Replacing this one reactor's bound method is the point (uninstall puts Twisted's back).
    reactor.doPoll = reactor.doIteration = doPoll  # type: ignore[method-assign]
    return True


def uninstall(reactor: Any) -> None:
    """Give ``reactor`` Twisted's own ``doPoll`` back (for tests)."""
    if installed(reactor):
        del reactor.doPoll
        del reactor.doIteration


def _lean_do_poll(reactor: Any) -> Any:
    """The ``doPoll`` of ``reactor`` without a log context built per event."""
    poll = reactor._poller.poll
    selectables = reactor._selectables
    drdw = reactor._doReadOrWrite
    threaded = context.ThreadedContextTracker

    def doPoll(timeout: float | None) -> None:
        """Poll, and dispatch each event as ``EPollReactor.doPoll`` does."""
        if timeout is None:
            timeout = -1
        try:
            events = poll(timeout, len(selectables))
        except OSError as e:
            if e.errno == errno.EINTR:
                return
            raise
        if not events:
            return
        tracker = context.theContextTracker
        if type(tracker) is not threaded:  # pragma: no cover - someone replaced Twisted's
            for fd, event in events:
                selectable = selectables.get(fd)
                if selectable is not None:
                    log.callWithLogger(selectable, drdw, selectable, fd, event)
            return
        # This thread's context stack. Its top stands for the log context the reactor loop runs
        # in (what callWithLogger copies for each event): the stack's dictionaries are never
        # changed in place, so while the same one is on top, the same log context is visible
        # (each cache entry holds the top it was built under, so its identity is not reused).
        contexts = tracker.currentContext().contexts
        top = contexts[-1]
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            try:
                prefix = selectable.logPrefix()
            except KeyboardInterrupt:
                raise
            except BaseException:
                prefix = _BUGGY_PREFIX
                log.err(system=prefix)
            try:
                cached = selectable.__dict__.get(_CACHE)
            except AttributeError:  # a selectable with __slots__: nowhere to keep it
                cached = None
            if cached is None or cached[1] is not top or cached[0] != prefix:
                ctx = tracker.getContext(ILogContext).copy()
                ctx["system"] = prefix
                cached = (prefix, top, {ILogContext: ctx})
                try:
                    selectable.__dict__[_CACHE] = cached
                except AttributeError:
                    pass
            contexts.append(cached[2])
            try:
                drdw(selectable, fd, event)
            except KeyboardInterrupt:
                contexts.pop()
                raise
            except BaseException:
                contexts.pop()
                log.err(system=prefix)
            else:
                contexts.pop()

    doPoll._gateway_lean = True  # type: ignore[attr-defined]
    return doPoll
