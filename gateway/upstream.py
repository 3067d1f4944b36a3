"""
`UpstreamPort`: what one Deepgram connection attempt reports to, so that a session can never act
on its call after its time.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

from twisted.internet.defer import Deferred

from gateway.events import Audio, UpstreamClosed
from gateway.interfaces import UpstreamLeg

__all__ = ["UpstreamPort", "Connector", "SessionOwner"]


class SessionOwner(Protocol):
    """What a port reports to (`gateway.call.Call`)."""

    config: Any
    log: Any

    def count(self, name: str, amount: int = 1, **labels: str) -> None: ...
    def upstream_audio(self, event: Audio) -> None: ...
    def from_upstream(self, event: Any) -> None: ...
    def upstream_opened(self, leg: UpstreamLeg, request_id: str | None, port: UpstreamPort | None = None) -> None: ...
    def upstream_closed(self, event: UpstreamClosed, port: UpstreamPort | None = None) -> None: ...

#: ``connector(url, headers, port)`` opens a Deepgram leg reporting to ``port``; the Deferred
#: fires when the attempt is over (errback: the connection was never made).
Connector = Callable[[str, dict, "UpstreamPort"], Deferred]


def _ignore(*args: Any, **kwargs: Any) -> None:
    """What a detached port does with a late report."""


class UpstreamPort:
    """
    What one Deepgram connection attempt reports to: the ``call`` its leg talks to.

    The call makes a port for every attempt and hands it to the connector. While the port is
    the call's current one, its reports reach the call; once the call is done with that session
    (it was lost, replaced or abandoned) the port is *detached* and whatever its leg still says
    (a late ``SettingsApplied``, the close of a socket the call already gave up on, the rest of
    a closing handshake) goes nowhere. So a session can never act on the call after its time,
    and the call needs no flags to tell its sessions apart.

    The hot-path reports (agent audio and messages) are the call's own bound methods, so a port
    costs nothing per frame.
    """

    upstream_audio: Callable[[Audio], None]
    from_upstream: Callable[[Any], None]
    count: Callable[..., None]

    def __init__(self, call: SessionOwner, number: int) -> None:
        self.number = number
        self.config = call.config
        self.log = call.log
        self.count = call.count
        self.upstream_audio = call.upstream_audio
        self.from_upstream = call.from_upstream
        self._call: SessionOwner | None = call

    def upstream_opened(self, leg: UpstreamLeg, request_id: str | None) -> None:
        if self._call is None:
            # An attempt the call gave up on opened anyway: close it at once.
            leg.close(1000)
            return
        self._call.upstream_opened(leg, request_id, self)

    def upstream_closed(self, event: UpstreamClosed) -> None:
        if self._call is not None:
            self._call.upstream_closed(event, self)

    def detach(self) -> None:
        self._call = None
        self.upstream_audio = _ignore
        self.from_upstream = _ignore
        self.count = _ignore
