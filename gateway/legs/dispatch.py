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

`lean_dispatch` replaces the ``doPoll`` of one running ``EPollReactor`` with the same loop that
keeps the same context: each selectable's context dictionary is built once (again whenever its
``logPrefix()`` changes, as a client's does once connected) and pushed and popped as it was, and
a failure escaping the handler is logged with ``log.err(system=...)`` and swallowed, as
``callWithLogger`` does. Only an exact ``EPollReactor`` (Twisted's default on Linux) is changed;
any other reactor keeps its own loop.
"""

from __future__ import annotations

import errno
from typing import Any

from twisted.python import context, log
from twisted.python.log import ILogContext

__all__ = ["lean_dispatch"]

#: The attribute a selectable keeps its (logPrefix, context) pair in.
_CACHE = "_gateway_log_context"
#: Set on a reactor whose doPoll is the lean one.
_INSTALLED = "_gateway_lean_dispatch"


def lean_dispatch(reactor: Any) -> bool:
    """
    Give ``reactor`` (if it is a plain ``EPollReactor``) the lean ``doPoll``; call it from the
    reactor's thread. Returns whether it is in place (installing twice is harmless).
    """
    from twisted.internet.epollreactor import EPollReactor

    if type(reactor) is not EPollReactor:
        return False
    if getattr(reactor, _INSTALLED, False):
        return True
    poll = reactor._poller.poll
    selectables = reactor._selectables
    drdw = reactor._doReadOrWrite
    # The reactor thread's context stack (context trackers are per thread).
    contexts = context.theContextTracker.currentContext().contexts

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
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            try:
                prefix = selectable.logPrefix()
                cached = selectable.__dict__.get(_CACHE)
            except BaseException:
                # A buggy logPrefix (or a selectable without a __dict__): Twisted's own way.
                log.callWithLogger(selectable, drdw, selectable, fd, event)
                continue
            if cached is None or cached[0] != prefix:
                ctx = dict(context.get(ILogContext))
                ctx["system"] = prefix
                cached = (prefix, {ILogContext: ctx})
                selectable.__dict__[_CACHE] = cached
            contexts.append(cached[1])
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

    reactor.doPoll = reactor.doIteration = doPoll
    setattr(reactor, _INSTALLED, True)
    return True
