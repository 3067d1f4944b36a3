"""
Admission: which WebSockets may wait to authenticate, and which hold one of the ``max_calls``
call slots.

A caller socket is *unauthenticated* from its upgrade until the auth stage accepts it (Twilio: the
signature at the upgrade, or the stream token in ``start`` when one is required; ``/client``: a
valid token in the first message). Unauthenticated sockets never count against ``max_calls``;
they have a budget of their own (``[admission]``):

- at most ``max_pending`` at once, and at most ``max_pending_per_address`` from one source
  address. A newcomer over a budget does not wait for room: the *oldest* unauthenticated socket
  of that address (over the per-address budget), or of the address holding the most (over the
  total), is closed to make room. A legitimate caller authenticates within a round trip of its
  upgrade, so it is never the oldest for long; a flood of silent sockets only displaces itself
  and costs its sender one upgrade per socket.
- a socket younger than ``eviction_grace_s`` is never closed to make room, so a burst of real
  callers (a proxy's, or Twilio's from one of its addresses) is not cut before its first
  message is read; when only such sockets fill the budget, the newcomer is refused (HTTP 503
  ``busy``) instead, unless its address holds fewer than the heaviest address by more than one:
  then that address's oldest gives way, young or not (the grace protects a burst from one
  address against itself, never a flood from other addresses against a fresh one).
- each must authenticate within ``pending_timeout_s`` of its upgrade, else it is closed.

A socket the budget closes gets the AUTH_TIMEOUT diagnosis (4001 to a ``/client``, after its JSON
error); a drain closes them all at once (DRAINED). A call takes a slot only when it authenticates,
and is refused then if the gateway is full or draining.

This module is sans-IO: a clock for the deadlines, a callback to close a socket.
"""

from __future__ import annotations

import collections
import ipaddress
from typing import Any, Callable, Iterable, Mapping

import attrs
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from gateway.errors import ConfigError

__all__ = [
    "AdmissionOptions",
    "admission_options",
    "Admission",
    "AdmissionCollector",
    "REFUSAL_DIAGNOSES",
    "AUTH_TIMEOUT_MESSAGE",
]

#: The diagnosis of a call refused when it authenticates, by reason.
REFUSAL_DIAGNOSES = {"draining": "DRAINED", "full": "GATEWAY_FULL"}

#: What a ``/client`` is told (JSON error) when its time to authenticate is over.
AUTH_TIMEOUT_MESSAGE = 'no {"token": ...} message in time'


@attrs.frozen
class AdmissionOptions:
    """``[admission]``: the budget of unauthenticated sockets (see the module docstring)."""

    max_pending: int = 128
    max_pending_per_address: int = 16
    pending_timeout_s: float = 10.0
    eviction_grace_s: float = 1.0
    #: Peers (reverse proxies) whose ``X-Forwarded-For`` names the real source address.
    trusted_proxies: frozenset[str] = frozenset()


def admission_options(section: Any) -> AdmissionOptions:
    """Validate the ``[admission]`` section (a `gateway.section.Section`)."""
    max_pending = section.int("max_pending", 128, minimum=1)
    per_address = section.int("max_pending_per_address", 16, minimum=1)
    if per_address > max_pending:
        raise ConfigError(section.key("max_pending_per_address"),
                          f"expected at most max_pending ({max_pending}), got {per_address}")
    proxies = set()
    for i, text in enumerate(section.str_list("trusted_proxies", [])):
        try:
            proxies.add(str(ipaddress.ip_address(text.strip())))
        except ValueError:
            raise ConfigError(f"{section.key('trusted_proxies')}[{i}]",
                              f"expected an IP address, got {text!r}")
    timeout = section.float("pending_timeout_s", 10.0, minimum=0.1)
    # 1 s by default, or half a (shorter) pending timeout.
    grace = section.float("eviction_grace_s", min(1.0, timeout / 2), minimum=0)
    if grace >= timeout:
        raise ConfigError(section.key("eviction_grace_s"),
                          f"expected less than pending_timeout_s ({timeout:g}), got {grace:g}")
    return AdmissionOptions(
        max_pending=max_pending,
        max_pending_per_address=per_address,
        pending_timeout_s=timeout,
        eviction_grace_s=grace,
        trusted_proxies=frozenset(proxies),
    )


@attrs.define(eq=False)
class _Ticket:
    """One caller socket from its upgrade on: ``new`` -> ``pending`` -> ``admitted`` or closed."""

    key: str
    call: Any
    address: str
    state: str = "new"
    since: float = 0.0
    timer: Any = None


class Admission:
    """
    The unauthenticated-socket budget and the call slots of one gateway.

    ``close(call, reason)`` must end ``call`` (reason ``evicted``, ``timeout`` or ``drained``);
    it is called after the socket has left the budget, so it may re-enter. ``draining()`` says
    whether the gateway is draining.
    """

    def __init__(
        self,
        options: AdmissionOptions,
        max_calls: int,
        clock: Any,
        close: Callable[[Any, str], None],
        draining: Callable[[], bool] = lambda: False,
    ) -> None:
        self.options = options
        self.max_calls = max_calls
        self.clock = clock
        self._close = close
        self._draining = draining
        self._tickets: dict[str, _Ticket] = {}
        # Both in arrival order, so the first entry is the oldest.
        self._pending: dict[str, _Ticket] = {}
        self._by_address: dict[str, dict[str, _Ticket]] = {}
        #: Calls holding a slot.
        self.live = 0
        #: Unauthenticated sockets closed, by reason; calls refused at authentication, by reason.
        self.closed: collections.Counter = collections.Counter()
        self.refused: collections.Counter = collections.Counter()

    @property
    def pending(self) -> int:
        """Unauthenticated sockets held now."""
        return len(self._pending)

    def pending_from(self, address: str) -> int:
        return len(self._by_address.get(address, ()))

    def source(self, peer_host: str, headers: Mapping[str, str]) -> str:
        """
        The address a socket is budgeted under: the peer's, or, when the peer is a trusted proxy,
        the last address its ``X-Forwarded-For`` names (the one that proxy saw).
        """
        if peer_host in self.options.trusted_proxies:
            forwarded = headers.get("x-forwarded-for", "")
            last = forwarded.rsplit(",", 1)[-1].strip()
            if last:
                return last
        return peer_host

    def refusal(self) -> str | None:
        """Why a call could not take a slot now (``draining``, ``full``), or None."""
        if self._draining():
            return "draining"
        if self.live >= self.max_calls:
            return "full"
        return None

    # --- one socket's way through ---

    def arrive(self, key: str, call: Any, address: str) -> None:
        """A caller's upgrade is being handled: track it (it holds nothing yet)."""
        self._tickets[key] = _Ticket(key, call, address, since=self.clock.seconds())

    def hold(self, key: str) -> str | None:
        """
        The upgrade was accepted and the socket has not authenticated: it joins the budget,
        making room by closing the oldest over-budget socket, and gets its deadline. Returns
        ``busy`` (and the socket is not held) when the budget is full of sockets too young to
        close; None otherwise.
        """
        ticket = self._tickets.get(key)
        if ticket is None or ticket.state != "new":
            return None
        options = self.options
        now = self.clock.seconds()
        victim = None
        mine = self._by_address.get(ticket.address, {})
        address_full = len(mine) >= options.max_pending_per_address
        if address_full or len(self._pending) >= options.max_pending:
            victim = self._evictable([mine] if address_full else self._by_address.values(), now)
            if victim is None and not address_full:
                victim = self._fair_share(len(mine))
            if victim is None:
                self.refused["busy"] += 1
                return "busy"
        ticket.state = "pending"
        ticket.since = now
        self._pending[key] = ticket
        self._by_address.setdefault(ticket.address, {})[key] = ticket
        ticket.timer = self.clock.callLater(options.pending_timeout_s, self._expire, key)
        if victim is not None:
            self._drop(victim, "evicted")
        return None

    def authenticate(self, key: str) -> str | None:
        """
        The socket authenticated: take a call slot. Returns why it may not (``draining``,
        ``full``; ``closed`` when the budget already closed it), or None.
        """
        ticket = self._tickets.get(key)
        if ticket is None or ticket.state == "admitted":
            return None
        if ticket.state == "closed":
            return "closed"
        refusal = self.refusal()
        if refusal is not None:
            self.refused[refusal] += 1
            return refusal
        self._unpend(ticket)
        ticket.state = "admitted"
        self.live += 1
        return None

    def leave(self, key: str) -> None:
        """The call is over: release whatever it held."""
        ticket = self._tickets.pop(key, None)
        if ticket is None:
            return
        if ticket.state == "admitted":
            self.live -= 1
        self._unpend(ticket)
        ticket.state = "closed"

    def close_pending(self, reason: str) -> None:
        """Close every unauthenticated socket (a drain)."""
        for ticket in list(self._pending.values()):
            self._drop(ticket, reason)

    # --- internals ---

    def _evictable(self, groups: Iterable[dict[str, _Ticket]], now: float) -> _Ticket | None:
        """
        Of the oldest socket of each address in ``groups``, one past the grace: the one of the
        address holding the most (the oldest on a tie); None if all are too young.
        """
        grace = self.options.eviction_grace_s
        best = None
        for tickets in groups:
            oldest = next(iter(tickets.values()))
            if now - oldest.since < grace:
                continue
            rank = (len(tickets), -oldest.since)
            if best is None or rank > best[0]:
                best = (rank, oldest)
        return best[1] if best is not None else None

    def _fair_share(self, holding: int) -> _Ticket | None:
        """
        The budget is full of young sockets: the grace protects a burst from one address against
        itself, not a flooding address against another. A newcomer whose address holds fewer
        than the heaviest one by more than one takes the heaviest address's oldest socket, young
        or not; so a flood from some addresses can never lock a fresh address (Twilio's, a real
        client's) out.
        """
        heaviest = max(self._by_address.values(), key=len, default=None)
        if heaviest is None or len(heaviest) <= holding + 1:
            return None
        return next(iter(heaviest.values()))

    def _unpend(self, ticket: _Ticket) -> None:
        if self._pending.pop(ticket.key, None) is None:
            return
        mine = self._by_address.get(ticket.address)
        if mine is not None:
            mine.pop(ticket.key, None)
            if not mine:
                del self._by_address[ticket.address]
        if ticket.timer is not None and ticket.timer.active():
            ticket.timer.cancel()
        ticket.timer = None

    def _expire(self, key: str) -> None:
        ticket = self._tickets.get(key)
        if ticket is not None and ticket.state == "pending":
            ticket.timer = None
            self._drop(ticket, "timeout")

    def _drop(self, ticket: _Ticket, reason: str) -> None:
        self._unpend(ticket)
        ticket.state = "closed"
        self.closed[reason] += 1
        self._close(ticket.call, reason)


class AdmissionCollector:
    """Prometheus metrics of admission and of the HTTP limits, read at scrape time."""

    def __init__(self, admission: Admission, http_refusals: Callable[[], Mapping[int, int]]) -> None:
        self.admission = admission
        self.http_refusals = http_refusals

    def describe(self) -> list:
        return []

    def collect(self) -> Iterable[Any]:
        a = self.admission
        yield GaugeMetricFamily("gateway_unauthenticated_sockets",
                                "Caller WebSockets open and not yet authenticated", value=a.pending)
        yield GaugeMetricFamily("gateway_admitted_calls",
                                "Authenticated calls holding one of the max_calls slots", value=a.live)
        closed = CounterMetricFamily("gateway_unauthenticated_closed",
                                     "Unauthenticated sockets closed by the admission budget, by reason",
                                     labels=["reason"])
        for reason in ("evicted", "timeout", "drained"):
            closed.add_metric([reason], a.closed[reason])
        yield closed
        refused = CounterMetricFamily("gateway_calls_refused",
                                      "Calls refused for want of a slot (at the upgrade or on "
                                      "authenticating: full, draining) or of room in the "
                                      "unauthenticated budget (busy)", labels=["reason"])
        for reason in ("full", "draining", "busy"):
            refused.add_metric([reason], a.refused[reason])
        yield refused
        http = CounterMetricFamily("gateway_http_refused", "HTTP requests refused by a limit, by status",
                                   labels=["status"])
        counts = self.http_refusals()
        for status in (408, 413, 414, 431):
            http.add_metric([str(status)], counts.get(status, 0))
        yield http
