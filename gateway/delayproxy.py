"""
A TCP proxy that puts a wide-area path between two local programs, for tests and demos.

`DelayProxy` listens on 127.0.0.1 and forwards every accepted connection to one target, delaying
each direction by a one-way delay plus jitter. It knows TCP, not WebSocket or HTTP: no business
logic, no inspection of what passes.

The timing model, per direction of each connection:

- A chunk read at ``now`` is due at ``max(due of the previous chunk, now + one_way + jitter)``,
  the jitter drawn uniformly from ``[-jitter_ms, +jitter_ms]`` (the sum never below zero). The
  ``max`` keeps the byte order: a real path reorders packets, but TCP delivers bytes in order, so
  a late packet holds back the ones behind it.
- A clean close (the peer's FIN, seen as ``connectionLost`` with ``ConnectionDone``) is due the
  same way after the last chunk, and becomes ``loseConnection`` on the other side, which flushes
  what was written first. A half-close is folded into a full close.
- An abort (a reset, any other ``connectionLost`` reason) is due the same way and becomes
  ``abortConnection`` on the other side, one reactor turn after data due with it so that this
  data leaves first (an abort drops what Twisted has not yet written).
- Bytes for a side that is gone are dropped, as a real peer would answer them with a reset.

Determinism: the jitter of direction ``d`` of the ``n``-th connection comes from its own
``random.Random`` seeded with ``(seed, n, d)``, so a run's delays do not depend on how the
connections interleave. Everything runs on the injected reactor: with a ``MemoryReactorClock`` in
a unit test, nothing is delivered until the clock is advanced. Buffers are unbounded (no
backpressure): this is a test tool, not a production proxy.

One module of about 400 lines, on purpose: the timed pipe, the two sides, the link and the proxy
are one mechanism that the timing model above specifies as a whole; none is of use alone.
"""

from __future__ import annotations

import collections
import random
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import attrs
from twisted.internet import protocol
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import ConnectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["Delay", "DelayProxy"]

_DATA, _CLOSE, _ABORT = "data", "close", "abort"


def _non_negative(instance: object, attribute: attrs.Attribute, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"expected a number >= 0 for {attribute.name}, got {value!r}")


@attrs.frozen
class Delay:
    """One direction's delay: ``one_way_ms`` plus jitter uniform in ``[-jitter_ms, +jitter_ms]``."""

    one_way_ms: float = attrs.field(default=0.0, validator=_non_negative)
    jitter_ms: float = attrs.field(default=0.0, validator=_non_negative)

    def sample_s(self, rng: random.Random) -> float:
        """One delay in seconds, never negative."""
        jitter = rng.uniform(-self.jitter_ms, self.jitter_ms) if self.jitter_ms else 0.0
        return max(0.0, self.one_way_ms + jitter) / 1000.0

    @property
    def is_zero(self) -> bool:
        """Whether this delays nothing at all."""
        return self.one_way_ms == 0 and self.jitter_ms == 0


class _Pipe:
    """
    One direction of one connection: what was read from one side, each item released to the
    other side's transport at its due time, in arrival order.

    The sink is attached once the receiving side is connected (the target may still be
    connecting); until then items wait. `discard` is for a receiving side that is gone: the queue
    is dropped and further input ignored.
    """

    def __init__(self, clock: Any, delay: Delay, rng: random.Random) -> None:
        self._clock = clock
        self._delay = delay
        self._rng = rng
        self._queue: collections.deque[tuple[float, str, bytes]] = collections.deque()
        self._last_due = float("-inf")
        self._call: Any = None
        self._sink: Any = None
        self._ended = False  # a close or an abort went in: nothing more comes
        self._dead = False  # the receiving side is gone

    def attach(self, transport: Any) -> None:
        """The receiving side is connected: deliver to ``transport`` from now on."""
        self._sink = transport
        self._schedule()

    def push(self, data: bytes) -> None:
        """Bytes read from the sending side."""
        self._enqueue(_DATA, data)

    def close(self) -> None:
        """The sending side closed cleanly."""
        self._enqueue(_CLOSE)
        self._ended = True

    def abort(self) -> None:
        """The sending side was reset (or could not be reached)."""
        self._enqueue(_ABORT)
        self._ended = True

    def discard(self) -> None:
        """The receiving side is gone: drop what waits, ignore what comes."""
        self._dead = True
        self._queue.clear()
        self._cancel()

    def _cancel(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _enqueue(self, kind: str, data: bytes = b"") -> None:
        if self._dead or self._ended:
            return
        due = max(self._last_due, self._clock.seconds() + self._delay.sample_s(self._rng))
        self._last_due = due
        self._queue.append((due, kind, data))
        self._schedule()

    def _schedule(self) -> None:
        if self._call is not None or not self._queue or self._sink is None or self._dead:
            return
        wait_s = max(0.0, self._queue[0][0] - self._clock.seconds())
        self._call = self._clock.callLater(wait_s, self._release)

    def _release(self) -> None:
        self._call = None
        now = self._clock.seconds()
        wrote = False
        while self._queue and self._queue[0][0] <= now and not self._dead:
            due, kind, data = self._queue[0]
            if kind == _ABORT and wrote:
                # The reactor writes what was just written on its next turn; abort after that.
                self._call = self._clock.callLater(0, self._release)
                return
            self._queue.popleft()
            if kind == _DATA:
                self._sink.write(data)
                wrote = True
            elif kind == _CLOSE:
                self._sink.loseConnection()
            else:
                self._sink.abortConnection()
        self._schedule()


class _Side(protocol.Protocol):
    """
    Either end of a proxied connection (``role`` is ``client`` or ``target``); forwards
    everything to its `_Link` in one line each.
    """

    def __init__(self, link: _Link, role: str) -> None:
        self.link = link
        self.role = role

    def connectionMade(self) -> None:
        nodelay = getattr(self.transport, "setTcpNoDelay", None)
        if nodelay is not None:
            nodelay(True)
        self.link.side_connected(self)

    def dataReceived(self, data: bytes) -> None:
        self.link.side_data(self, data)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.link.side_lost(self, reason)


class _TargetFactory(protocol.ClientFactory):
    """Connects one link to the target; a failed connect aborts the client side."""

    noisy = False

    def __init__(self, link: _Link) -> None:
        self.link = link

    def buildProtocol(self, addr: Any) -> _Side:
        return _Side(self.link, "target")

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.link.target_failed(reason)


class _Link:
    """
    One proxied connection: the accepted client side, the target side, and a pipe each way.

    ``gone`` fires once neither side is connected any more (the target side counts as gone if it
    never connected).
    """

    def __init__(self, proxy: DelayProxy, index: int) -> None:
        self.proxy = proxy
        self.index = index
        clock = proxy.reactor
        self.to_target = _Pipe(clock, proxy.to_target, random.Random(f"{proxy.seed}/{index}/to_target"))
        self.to_client = _Pipe(clock, proxy.to_client, random.Random(f"{proxy.seed}/{index}/to_client"))
        self.client: _Side | None = None
        self.target: _Side | None = None
        self._connector: Any = None
        self._client_gone = False
        self._target_gone = False
        self.gone: Deferred = Deferred()

    def side_connected(self, side: _Side) -> None:
        if side.role == "client":
            # Accepted: deliver to it, and only now dial the target (what the client sends
            # meanwhile waits in the pipe).
            self.client = side
            self.to_client.attach(side.transport)
            host, port = self.proxy.target
            self._connector = self.proxy.reactor.connectTCP(host, port, _TargetFactory(self))
        else:
            self.target = side
            self.to_target.attach(side.transport)

    def side_data(self, side: _Side, data: bytes) -> None:
        (self.to_target if side is self.client else self.to_client).push(data)

    def side_lost(self, side: _Side, reason: Failure) -> None:
        forward, back = (self.to_target, self.to_client) if side is self.client else (self.to_client, self.to_target)
        back.discard()
        if reason.check(ConnectionDone):
            forward.close()
        else:
            forward.abort()
        if side is self.client:
            self._client_gone = True
        else:
            self._target_gone = True
        self._check_gone()

    def target_failed(self, reason: Failure) -> None:
        """No connection to the target: reset the client, after the delay back to it."""
        self.proxy.log.info("delay proxy: cannot reach {host}:{port}: {why}", host=self.proxy.target[0],
                            port=self.proxy.target[1], why=reason.getErrorMessage())
        self.to_target.discard()
        self.to_client.abort()
        self._target_gone = True
        self._check_gone()

    def abort(self) -> Deferred:
        """Reset both sides now (the proxy is stopping); fires once both are gone."""
        self.to_target.discard()
        self.to_client.discard()
        for side in (self.client, self.target):
            transport = side.transport if side is not None else None
            # TCP transports abort, though ITransport does not declare it.
            abort = getattr(transport, "abortConnection", None)
            if abort is not None:
                abort()
            elif transport is not None:
                transport.loseConnection()
        if self.target is None and not self._target_gone and self._connector is not None:
            self._connector.disconnect()
        return _observe(self.gone)

    def _check_gone(self) -> None:
        if self._client_gone and self._target_gone and not self.gone.called:
            self.proxy._links.discard(self)
            self.gone.callback(None)


class _AcceptFactory(protocol.Factory):
    """Makes a `_Link` for every accepted connection."""

    noisy = False

    def __init__(self, proxy: DelayProxy) -> None:
        self.proxy = proxy

    def buildProtocol(self, addr: Any) -> _Side:
        return _Side(self.proxy._new_link(), "client")


def _observe(d: Deferred) -> Deferred:
    """A Deferred that fires when ``d`` does, without taking its result."""
    mine: Deferred = Deferred()

    def fire(result: Any) -> Any:
        mine.callback(None)
        return result

    d.addBoth(fire)
    return mine


class DelayProxy:
    """
    A delaying TCP proxy in front of ``target`` (``(host, port)``).

    ``one_way_ms`` and ``jitter_ms`` apply to both directions unless ``to_target`` (what clients
    send) or ``to_client`` (what the target sends back) give a direction its own `Delay`. ``seed``
    makes the jitter reproducible. `listen` starts it; `url_for` turns a target URL into the
    same URL through the proxy; `stop` resets every connection and stops listening::

        proxy = DelayProxy(reactor, target=("127.0.0.1", 8081), one_way_ms=40, jitter_ms=10)
        yield proxy.listen()
        url = proxy.url_for("ws://127.0.0.1:8081/v1/agent/converse")
        ...
        yield proxy.stop()
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        target: tuple[str, int],
        one_way_ms: float = 40.0,
        jitter_ms: float = 10.0,
        seed: int = 0,
        to_target: Delay | None = None,
        to_client: Delay | None = None,
    ) -> None:
        host, port = target
        if not isinstance(host, str) or not isinstance(port, int) or isinstance(port, bool):
            raise ValueError(f"expected target as (host: str, port: int), got {target!r}")
        both = Delay(one_way_ms, jitter_ms)
        self.reactor = reactor
        self.target = (host, port)
        self.seed = seed
        self.to_target = to_target if to_target is not None else both
        self.to_client = to_client if to_client is not None else both
        self.port: Any = None
        self._listening: Any = None
        self._links: set[_Link] = set()
        self._accepted = 0

    def __repr__(self) -> str:
        where = self.port.getHost().port if self.port is not None else None
        return (f"<DelayProxy port={where} -> {self.target[0]}:{self.target[1]} "
                f"{self.to_target} / {self.to_client} connections={len(self._links)}>")

    @property
    def connections(self) -> int:
        """How many proxied connections have a side still open."""
        return len(self._links)

    def _new_link(self) -> _Link:
        link = _Link(self, self._accepted)
        self._accepted += 1
        self._links.add(link)
        return link

    def listen(self, endpoint: str = "tcp:0:interface=127.0.0.1") -> Deferred:
        """Listen on a server endpoint string; the Deferred fires with the IListeningPort."""

        def listening(port: Any) -> Any:
            self.port = self._listening = port
            self.log.info("delay proxy on {port} -> {host}:{target_port} ({to_target} / {to_client})",
                          port=port.getHost().port, host=self.target[0], target_port=self.target[1],
                          to_target=self.to_target, to_client=self.to_client)
            return port

        return serverFromString(self.reactor, endpoint).listen(_AcceptFactory(self)).addCallback(listening)

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` to connect to instead of the target."""
        if self.port is None:
            raise RuntimeError("the delay proxy is not listening yet: call listen() first")
        address = self.port.getHost()
        host = "127.0.0.1" if address.host in ("0.0.0.0", "::", "") else address.host
        return host, address.port

    def url_for(self, url: str) -> str:
        """
        ``url`` (``ws://``/``http://`` to the target) rewritten to go through the proxy; raise
        `ValueError` if ``url`` does not point at the target (TLS URLs are refused too: the
        certificate would not match 127.0.0.1).
        """
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "http"):
            raise ValueError(f"expected a ws:// or http:// URL, got {url!r}")
        default = 80
        if (parts.hostname, parts.port or default) != self.target:
            raise ValueError(
                f"expected a URL of the target {self.target[0]}:{self.target[1]}, got {url!r}"
            )
        host, port = self.address
        netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if parts.username is not None:
            netloc = parts.netloc.rpartition("@")[0] + "@" + netloc
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))

    def stop(self) -> Deferred:
        """Stop listening and reset every connection; fires once all are gone."""
        port, self._listening = self._listening, None
        waits = [maybeDeferred(port.stopListening) if port is not None else succeed(None)]
        waits.extend(link.abort() for link in list(self._links))
        return DeferredList(waits, consumeErrors=True).addCallback(lambda _: None)

