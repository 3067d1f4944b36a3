"""
A Deepgram emulator for running, demonstrating and testing the gateway with no network and no key.

It serves the Voice Agent (``/v1/agent/converse``), streaming STT (``/v1/listen``) and
``GET /v1/projects`` on one port, behaves like Deepgram on the wire (including its failures),
and injects faults on cue (see `gateway.emulator.faults`)::

    emu = Emulator(reactor, api_key="test-key", speed=20.0)
    port = yield emu.listen("tcp:0:interface=127.0.0.1")
    emu.url("agent"), emu.url("listen"), emu.http_url
    emu.queue_fault("refuse:401")
    yield emu.stop()
"""

from __future__ import annotations

from gateway.emulator.faults import Fault, FaultSpecError, Trigger, parse_fault
from gateway.emulator.options import EmulatorOptions
from gateway.emulator.server import Emulator
from gateway.emulator.session import Session

__all__ = [
    "Emulator",
    "EmulatorOptions",
    "Session",
    "Fault",
    "Trigger",
    "FaultSpecError",
    "parse_fault",
]
