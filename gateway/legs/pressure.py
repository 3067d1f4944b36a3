"""
Backpressure on a leg: know when a peer reads slower than we write.

A `Pressure` is registered as the streaming producer of a leg's transport, and the transport's
send-buffer check is given the leg's budget. Twisted pauses the producer when more than that is
waiting to be written and resumes it once the buffer has drained; the call then drops audio
towards that peer (real-time audio cannot be slowed down at its source: pausing Twilio's reads
would not make the caller speak slower) and counts it, while control messages still go. So what
a slow peer can cost is bounded by the budget plus one message per leg.

The budget is far above Twisted's 64 KiB default on purpose: Twisted checks the limit when data
is *queued*, before it tries to send, so a legitimate burst in one reactor turn (the audio held
until ``SettingsApplied`` released at once, or a second of agent speech) would otherwise look like
a stuck peer. Only a peer that does not read for a long time fills a megabyte.

The budget applies to the write side only. Twisted keeps one limit, ``bufferSize``, for both:
above it a streaming producer is paused, and it is also the size of every ``recv``. Raising it to
a megabyte made every read of the leg ask for a 1 MiB buffer, above glibc's mmap threshold, so
each 20 ms frame could cost an mmap and a munmap (the trap the bench itself fell in, commit
ea384e4). So ``bufferSize`` keeps Twisted's 64 KiB and the transport's ``_isSendBufferFull`` (the
one place Twisted compares what waits to be written with a limit) compares it with the budget.

On ``wss://`` the leg's transport is `gateway.legs.tls.TLSClientProtocol`; the budget and the
producer go to the TCP transport under it. (Under Twisted's TLS, which the leg used before, the
budget never applied: that wrapper has no send buffer of its own to compare.)
"""

from __future__ import annotations

from typing import Any

from zope.interface import implementer
from twisted.internet.interfaces import IPushProducer

__all__ = ["Pressure", "attach"]


@implementer(IPushProducer)
class Pressure:
    """
    ``congested`` is true while the transport's write buffer is over its limit. With a ``leg``,
    the leg's own ``congested`` attribute mirrors it: the call reads it for every frame, and a
    plain attribute costs less than a property.
    """

    congested = False

    def __init__(self, leg: Any = None) -> None:
        self._leg = leg

    def _set(self, congested: bool) -> None:
        self.congested = congested
        if self._leg is not None:
            self._leg.congested = congested

    def pauseProducing(self) -> None:
        self._set(True)

    def resumeProducing(self) -> None:
        self._set(False)

    def stopProducing(self) -> None:
        self._set(True)


#: Bytes that may wait on one leg's socket before audio towards that peer is dropped.
DEFAULT_BUDGET_BYTES = 1024 * 1024


class _SendBudget:
    """
    A transport's ``_isSendBufferFull`` with the send budget as its limit (Twisted's own compares
    with ``bufferSize``, which is also the transport's read size): more than ``budget_bytes``
    waiting to be written, counted as Twisted counts it.
    """

    __slots__ = ("_transport", "budget_bytes")

    def __init__(self, transport: Any, budget_bytes: int) -> None:
        self._transport = transport
        self.budget_bytes = budget_bytes

    def __call__(self) -> bool:
        t = self._transport
        return len(t.dataBuffer) + t._tempDataLen > self.budget_bytes


def attach(transport: Any, budget_bytes: int = DEFAULT_BUDGET_BYTES, leg: Any = None) -> Pressure:
    """
    Register a new `Pressure` on ``transport`` (replacing a producer left by twisted.web), whose
    state ``leg.congested`` mirrors if ``leg`` is given.
    """
    pressure = Pressure(leg)
    if transport is None:
        return pressure
    # Under the Deepgram leg's TLS layer (`gateway.legs.tls`) what waits to be sent waits in
    # the TCP transport beneath it (the layer encrypts each write at once), which also gets the
    # producer: the budget counts ciphertext there (22 bytes more per record than the frames).
    buffered = getattr(transport, "tcp_transport", transport)
    if hasattr(buffered, "_isSendBufferFull") and hasattr(buffered, "dataBuffer"):
        buffered._isSendBufferFull = _SendBudget(buffered, budget_bytes)
    if getattr(transport, "producer", None) is not None:
        # After a WebSocket upgrade through twisted.web the HTTP channel is still registered.
        transport.unregisterProducer()
    transport.registerProducer(pressure, True)
    return pressure
