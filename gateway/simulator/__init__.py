"""
The call simulator: Twilio-shaped and raw-audio-client-shaped WebSocket clients that play a clip
into the gateway, record everything that comes back, and report (console script
``gateway-call``).

Each call is one small object; many can run concurrently on one reactor::

    results = await DeferredList([TwilioCall(reactor, url, audio).run() for _ in range(n)])
"""

from __future__ import annotations

from gateway.simulator.client import ClientCall
from gateway.simulator.playback import Playback
from gateway.simulator.result import CallResult, Stats, close_code_words
from gateway.simulator.twilio import TwilioCall

__all__ = ["TwilioCall", "ClientCall", "CallResult", "Stats", "Playback", "close_code_words"]
